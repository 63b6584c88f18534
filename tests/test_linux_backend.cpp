// SPDX-License-Identifier: MIT
// Linux only: choosing between io_uring and epoll, and the automatic fallback when io_uring is refused.
#if defined(__linux__)
#include <coport/coport.hpp>

#include "support.hpp"

#include <liburing.h>

#include <atomic>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {
std::string g_logged;
int g_log_calls = 0;

coport::task<bool> echo_once(coport::io_context& ctx) {
    auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
    if (!l) co_return false;
    auto c = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", l->local_endpoint()->port());
    auto s = co_await l->accept();
    if (!c || !s) co_return false;
    co_await c->send_all(coport::buffer("ping", 4));
    char b[4];
    auto r = co_await s->recv_exact(coport::buffer(b, 4));
    co_return r && std::string(b, 4) == "ping";
}
} // namespace

TEST_CASE("io_uring refused: construction falls back to epoll, says so once, and works", "[uring][epoll]") {
    ::setenv("COPORT_DISABLE_IO_URING", "1", 1);
    ::unsetenv("COPORT_BACKEND");
    auto prev = coport::set_fallback_logger([](const char* m) {
        g_logged = m;
        ++g_log_calls;
    });
    {
        coport::io_context ctx;
        CHECK(std::string(ctx.backend_name()) == "epoll");
        CHECK(ctx.block_on(echo_once(ctx)));
    }
    { coport::io_context again; } // logged once per process, not per context
    // Asking for io_uring explicitly does not fall back: it fails, naming the reason.
    coport::io_context_options o;
    o.backend = coport::backend_kind::io_uring;
    try {
        coport::io_context ctx(o);
        FAIL("io_context constructed although io_uring was disabled");
    } catch (const std::system_error& e) {
        CHECK(std::string(e.what()).find("COPORT_DISABLE_IO_URING") != std::string::npos);
        CHECK(e.code() == coport::errc::not_supported);
    }
    ::unsetenv("COPORT_DISABLE_IO_URING");
    coport::set_fallback_logger(prev);
    if (g_log_calls == 0) COPORT_SKIP("the fallback was already logged earlier in this process");
    CHECK(g_log_calls == 1);
    CHECK(g_logged.find("epoll") != std::string::npos);
}

TEST_CASE("the backend can be chosen by option and by COPORT_BACKEND", "[uring][epoll]") {
    coport::io_context_options o;
    o.backend = coport::backend_kind::epoll;
    coport::io_context e(o);
    CHECK(std::string(e.backend_name()) == "epoll");
    CHECK(e.block_on(echo_once(e)));
    o.backend = coport::backend_kind::io_uring;
    try {
        coport::io_context u(o);
        CHECK(std::string(u.backend_name()) == "io_uring");
        CHECK(u.block_on(echo_once(u)));
    } catch (const std::system_error& err) {
        COPORT_SKIP("io_uring unavailable here: " << err.what());
    }
}

namespace {
/// Whether this kernel takes a ring with the single-issuer flags (independently of coport).
bool kernel_takes_single_issuer() {
    io_uring ring;
    io_uring_params p{};
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    if (io_uring_queue_init_params(8, &ring, &p) < 0) return false;
    io_uring_queue_exit(&ring);
    return true;
}
} // namespace

TEST_CASE("single_thread io_context: one issuer, deferred completions, other threads still post and cancel",
          "[uring][epoll]") {
    coport::io_context_options o;
    o.single_thread = true;
    coport::io_context ctx(o);
    const std::string features = ctx.backend_features();
    INFO("backend " << ctx.backend_name() << ": " << features);
    if (std::string(ctx.backend_name()) == "io_uring") {
        if (kernel_takes_single_issuer()) {
            CHECK(features.find("SINGLE_ISSUER") != std::string::npos);
            CHECK(features.find("DEFER_TASKRUN") != std::string::npos);
        } else {
            WARN("this kernel refuses SINGLE_ISSUER|DEFER_TASKRUN; the ring runs without them");
        }
    }

    // run() from any other thread is refused, before it touches the ring.
    bool refused = false;
    std::thread([&] {
        try {
            ctx.run();
        } catch (const std::logic_error&) {
            refused = true;
        }
    }).join();
    CHECK(refused);

    // 1 MiB each way while 2,000 posts arrive from another thread and a recv times out: every completion
    // is deferred until the loop asks for it, including while it is busy with local work.
    std::atomic<int> posted{0};
    std::vector<char> out(1 << 20), in(1 << 20);
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>(i * 31 + 7);
    coport::result<std::size_t> timed = 0;
    auto run = [&]() -> coport::task<bool> {
        auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
        if (!l) co_return false;
        auto c = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", l->local_endpoint()->port());
        auto s = co_await l->accept();
        if (!c || !s) co_return false;
        std::thread poster([&] {
            for (int i = 0; i < 2000; ++i) ctx.post([&] { posted.fetch_add(1, std::memory_order_relaxed); });
        });
        auto [sent, got] = co_await coport::when_all(c->send_all(coport::buffer(out.data(), out.size())),
                                                     s->recv_exact(coport::buffer(in.data(), in.size())));
        poster.join();
        char b[4];
        timed = co_await coport::with_timeout(ctx, 50ms, [&](std::stop_token st) {
            return s->recv(coport::buffer(b, sizeof b), st);
        });
        co_return sent && got && *got == in.size();
    };
    CHECK(ctx.block_on(run()));
    CHECK(in == out);
    CHECK(!timed);
    if (!timed) CHECK(timed.error() == coport::errc::timed_out);
    while (posted.load() < 2000) ctx.run_one();
    CHECK(posted.load() == 2000);
}

TEST_CASE("single_thread io_context: destruction cancels what is in flight and resumes it", "[uring][epoll]") {
    coport::result<std::size_t> received = 0;
    bool connected = false, resumed = false;
    {
        coport::io_context_options o;
        o.single_thread = true;
        coport::io_context ctx(o);
        auto session = [](coport::io_context& ctx, coport::result<std::size_t>& received, bool& connected,
                          bool& resumed) -> coport::task<void> {
            auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
            if (!l) co_return;
            auto c = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", l->local_endpoint()->port());
            auto s = co_await l->accept();
            if (!c || !s) co_return;
            connected = true;
            char b[4];
            received = co_await c->recv(coport::buffer(b, sizeof b)); // nobody sends: in the kernel until the end
            resumed = true;
        };
        coport::spawn(ctx, session(ctx, received, connected, resumed));
        for (int i = 0; i < 1000 && !connected; ++i) ctx.run_one();
        REQUIRE(connected);
        ctx.poll();
        CHECK(!resumed);
    }
    CHECK(resumed);
    REQUIRE(!received);
    CHECK(received.error() == coport::errc::operation_aborted);
}
#endif
