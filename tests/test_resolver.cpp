// SPDX-License-Identifier: MIT
// Name lookups that outlast a stop request or their io_context. A slow getaddrinfo comes from the
// LD_PRELOAD library tests/slow_getaddrinfo.c (Linux): these test cases are hidden ([.]) and run only from
// their own CTest entries ("... [slow getaddrinfo]"), which preload it; without it they skip.
#include <coport/coport.hpp>

#include "support.hpp"

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <memory>
#include <stop_token>
#include <system_error>
#include <thread>

#if defined(__linux__)
#include <dlfcn.h>
#endif

using namespace std::chrono_literals;
using coport::io_context;
using coport::task;

namespace {

constexpr const char* slow_host = "slow.coport.invalid";

/// The preloaded library's counters of slow lookups begun and ended, and its delay.
struct slow_getaddrinfo {
    const int* started = nullptr;
    const int* finished = nullptr;
    std::chrono::milliseconds delay{0};

    static slow_getaddrinfo find() {
        slow_getaddrinfo s;
#if defined(__linux__)
        s.started = static_cast<const int*>(::dlsym(RTLD_DEFAULT, "coport_slow_getaddrinfo_started"));
        s.finished = static_cast<const int*>(::dlsym(RTLD_DEFAULT, "coport_slow_getaddrinfo_finished"));
        if (void* f = ::dlsym(RTLD_DEFAULT, "coport_slow_getaddrinfo_delay_ms"))
            s.delay = std::chrono::milliseconds(reinterpret_cast<int (*)()>(f)());
#endif
        return s;
    }
    explicit operator bool() const noexcept { return started && finished; }
    int begun() const noexcept { return __atomic_load_n(started, __ATOMIC_SEQ_CST); }
    int ended() const noexcept { return __atomic_load_n(finished, __ATOMIC_SEQ_CST); }
    // Waits (up to a minute: a generous bound, not a margin) until `counter()` exceeds `before`.
    template <class F>
    static bool wait_past(F counter, int before) {
        auto give_up = std::chrono::steady_clock::now() + 60s;
        while (counter() <= before) {
            if (std::chrono::steady_clock::now() > give_up) return false;
            std::this_thread::sleep_for(1ms);
        }
        return true;
    }
};

slow_getaddrinfo require_slow_getaddrinfo() {
    auto s = slow_getaddrinfo::find();
#if defined(__linux__)
    if (!s)
        COPORT_SKIP("needs the LD_PRELOAD library slow_getaddrinfo (run by its CTest entries \"... [slow getaddrinfo]\")");
#else
    COPORT_SKIP("the slow getaddrinfo is an LD_PRELOAD library: Linux only");
#endif
    REQUIRE(s.delay >= 1s); // "far less than the lookup" below needs a lookup of seconds
    return s;
}

task<void> resolve_slow(io_context& ctx, std::stop_token st, std::atomic<int>& resumed, std::error_code& ec) {
    auto r = co_await coport::resolve(ctx, slow_host, "80", std::move(st));
    if (r) ec = std::error_code{};
    else ec = r.error();
    resumed.fetch_add(1);
}

// After the test proper: the abandoned getaddrinfo returns and its pool thread drops the answer while this
// process still runs, so that a sanitizer sees whatever that thread touches.
void outlive_lookup(const slow_getaddrinfo& slow, int ended_before) {
    REQUIRE(slow_getaddrinfo::wait_past([&] { return slow.ended(); }, ended_before));
    std::this_thread::sleep_for(200ms); // the thread's last steps after getaddrinfo returned (not observable)
}

} // namespace

TEST_CASE("resolve: destroying the io_context during a slow lookup resumes it at once with operation_aborted",
          "[.][resolve][shutdown][slow_getaddrinfo]") {
    auto slow = require_slow_getaddrinfo();
    const int begun = slow.begun(), ended = slow.ended();
    std::atomic<int> resumed{0};
    std::error_code ec = make_error_code(std::errc::io_error); // overwritten by the resumption
    auto ctx = std::make_unique<io_context>();
    io_context& c = *ctx;
    coport::spawn(c, resolve_slow(c, {}, resumed, ec));
    std::thread runner([&c] { c.run(); });
    REQUIRE(slow_getaddrinfo::wait_past([&] { return slow.begun(); }, begun)); // the lookup is in getaddrinfo
    c.stop();
    runner.join();
    CHECK(resumed.load() == 0);

    auto t0 = std::chrono::steady_clock::now();
    ctx.reset();
    auto took = std::chrono::steady_clock::now() - t0;
    const bool lookup_still_running = slow.ended() == ended;

    INFO("destruction took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                             << " ms; the lookup takes " << slow.delay.count() << " ms");
    CHECK(took < slow.delay / 2);
    CHECK(lookup_still_running);
    CHECK(resumed.load() == 1);
    CHECK(ec == coport::errc::operation_aborted);

    outlive_lookup(slow, ended);
    CHECK(resumed.load() == 1);
}

TEST_CASE("resolve: a stop request during a slow lookup resumes it at once with operation_aborted",
          "[.][resolve][cancel][slow_getaddrinfo]") {
    auto slow = require_slow_getaddrinfo();
    const int begun = slow.begun(), ended = slow.ended();
    std::atomic<int> resumed{0};
    std::error_code ec = make_error_code(std::errc::io_error);
    std::chrono::steady_clock::duration took{};
    {
        io_context ctx;
        std::stop_source src;
        std::thread stopper([&] {
            if (slow_getaddrinfo::wait_past([&] { return slow.begun(); }, begun)) src.request_stop();
        });
        auto t0 = std::chrono::steady_clock::now();
        ctx.block_on(resolve_slow(ctx, src.get_token(), resumed, ec));
        took = std::chrono::steady_clock::now() - t0;
        stopper.join();
        CHECK(slow.begun() == begun + 1);
        CHECK(slow.ended() == ended);
        // The context is destroyed with the lookup still in getaddrinfo, its coroutine long resumed.
    }
    INFO("the wait took " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                          << " ms; the lookup takes " << slow.delay.count() << " ms");
    CHECK(took < slow.delay / 2);
    CHECK(resumed.load() == 1);
    CHECK(ec == coport::errc::operation_aborted);

    outlive_lookup(slow, ended);
    CHECK(resumed.load() == 1);
}
