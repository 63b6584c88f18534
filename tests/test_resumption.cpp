// SPDX-License-Identifier: MIT
// The resumption rule, on every backend (io_context.hpp): a coroutine, and the children it awaits through
// when_all / when_any / with_timeout, resume on the thread that started it; two children of one when_all
// never run at the same time, so they may share state without a lock. Also where its thread left run():
// the others service its worker one at a time.
#include <coport/coport.hpp>

#include "support.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coport::endpoint;
using coport::io_context;
using coport::ip_address;
using coport::task;
using coport::tcp_listener;
using coport::tcp_socket;

namespace {

/// What every resumption of a family (a parent and its children) checks: that it runs on the family's
/// thread, and that no other member of the family runs at the same moment.
struct family {
    std::thread::id home;                    // the thread that started the parent
    std::atomic<int> busy{0};                // 1 while a member runs
    std::atomic<long> wrong_thread{0}, overlaps{0};
    bool check_thread = true;                // false where the family may move between servicers
    void enter() {
        if (busy.exchange(1, std::memory_order_acq_rel) != 0) overlaps.fetch_add(1);
        if (check_thread && current_thread_id() != home) wrong_thread.fetch_add(1);
    }
    void leave() { busy.store(0, std::memory_order_release); }
};

struct totals {
    std::atomic<long> children_started{0}, children_resumed{0}, failures{0}, wrong_thread{0}, overlaps{0};
    std::atomic<long> parents_done{0};
    void absorb(const family& f) {
        wrong_thread.fetch_add(f.wrong_thread.load());
        overlaps.fetch_add(f.overlaps.load());
    }
};

// The pattern that corrupted memory on IOCP before the rule: the accept and the connect of one loopback
// pair, children of one when_all, both push into one vector (no lock). On IOCP their completions are two
// packets that two threads may take at once.
task<void> accept_child(tcp_listener& l, family& f, std::vector<tcp_socket>& shared, totals& t) {
    f.enter();
    t.children_started.fetch_add(1);
    f.leave();
    auto r = co_await l.accept();
    f.enter();
    t.children_resumed.fetch_add(1);
    if (r) shared.push_back(std::move(*r));
    else t.failures.fetch_add(1);
    f.leave();
}

task<void> connect_child(io_context& ctx, std::uint16_t port, family& f, std::vector<tcp_socket>& shared, totals& t) {
    f.enter();
    t.children_started.fetch_add(1);
    tcp_socket s(ctx);
    f.leave();
    auto r = co_await s.connect(endpoint(ip_address::loopback_v4(), port));
    f.enter();
    t.children_resumed.fetch_add(1);
    if (r) shared.push_back(std::move(s));
    else t.failures.fetch_add(1);
    f.leave();
}

// One byte each way through a with_timeout and a when_any, appending to one string (no lock).
task<void> echo_child(io_context& ctx, tcp_socket& s, char tag, family& f, std::string& log, totals& t) {
    f.enter();
    t.children_started.fetch_add(1);
    f.leave();
    auto sent = co_await s.send(coport::buffer(&tag, 1));
    f.enter();
    if (!sent) t.failures.fetch_add(1);
    log.push_back(tag);
    f.leave();
    char in = 0;
    auto got = co_await coport::with_timeout(ctx, 30s, [&](std::stop_token st) { return s.recv(coport::buffer(&in, 1), st); });
    f.enter();
    if (!got || *got != 1) t.failures.fetch_add(1);
    log.push_back(in);
    f.leave();
    auto raced = co_await coport::when_any([&](std::stop_token st) { return ctx.sleep_for(1ms, st); },
                                           [&](std::stop_token st) { return ctx.sleep_for(30s, st); });
    f.enter();
    t.children_resumed.fetch_add(1);
    if (raced.index != 0) t.failures.fetch_add(1);
    log.push_back('.');
    f.leave();
}

// `l` was first accepted on by another thread (on io_uring its accepts wait on that thread's ring): they
// still resume here.
task<void> parent(io_context& ctx, tcp_listener& l, int rounds, totals& t) {
    family f;
    f.home = current_thread_id();
    const std::uint16_t port = l.local_endpoint()->port();
    std::vector<tcp_socket> shared;
    std::string log;
    for (int i = 0; i < rounds; ++i) {
        auto a = accept_child(l, f, shared, t);
        auto c = connect_child(ctx, port, f, shared, t);
        co_await coport::when_all(std::move(a), std::move(c));
        f.enter();
        if (shared.size() != 2) t.failures.fetch_add(1);
        f.leave();
        if (shared.size() == 2) {
            auto e0 = echo_child(ctx, shared[0], 'a', f, log, t);
            auto e1 = echo_child(ctx, shared[1], 'b', f, log, t);
            co_await coport::when_all(std::move(e0), std::move(e1));
        }
        f.enter();
        if (log.size() != 6) t.failures.fetch_add(1);
        log.clear();
        shared.clear();
        f.leave();
    }
    t.absorb(f);
    t.parents_done.fetch_add(1);
}

} // namespace

TEST_CASE("when_all children share state without a lock: they resume on the parent's thread, never at once, on 4 threads",
          "[resumption]") {
    io_context ctx;
    constexpr int parents = 8;
    const int rounds = 40; // x 2 when_alls x 2 children: 1,280 children, each 1-3 resumptions
    totals t;
    {
        coport::thread_pool_runner pool(ctx, 4);
        coport::async_scope scope;
        std::vector<std::unique_ptr<tcp_listener>> listeners;
        auto all = [&]() -> task<void> {
            for (int p = 0; p < parents; ++p) { // each accepted on once here, on this thread
                auto lr = tcp_listener::bind(ctx, endpoint(ip_address::loopback_v4(), 0));
                if (!lr) co_return;
                auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", lr->local_endpoint()->port());
                auto a = co_await lr->accept();
                if (!c || !a) co_return;
                listeners.push_back(std::make_unique<tcp_listener>(std::move(*lr)));
            }
            for (int p = 0; p < parents; ++p) scope.spawn(ctx, parent(ctx, *listeners[static_cast<std::size_t>(p)], rounds, t));
            co_await scope.join();
        };
        ctx.block_on(all());
        pool.join();
    }
    const long children = 4L * parents * rounds;
    CHECK(t.parents_done.load() == parents);
    CHECK(t.children_started.load() == children);
    CHECK(t.children_resumed.load() == children);
    CHECK(t.failures.load() == 0);
    CHECK(t.overlaps.load() == 0);
    CHECK(t.wrong_thread.load() == 0);
#if defined(_WIN32)
    const auto s = ctx.native().stats();
    std::printf("iocp: %llu I/O packets, %llu handed to the owner's thread, %llu wake-ups\n",
                static_cast<unsigned long long>(s.io_packets), static_cast<unsigned long long>(s.handoffs),
                static_cast<unsigned long long>(s.wakes));
#endif
}

TEST_CASE("block_on starts its awaitable on the calling thread", "[resumption]") {
    io_context ctx;
    coport::thread_pool_runner pool(ctx, 3);
    for (int i = 0; i < 50; ++i) {
        const auto me = current_thread_id();
        auto where = [&]() -> task<bool> {
            const bool first = current_thread_id() == me;
            co_await ctx.sleep_for(100us);
            co_return first && current_thread_id() == me;
        };
        REQUIRE(ctx.block_on(where()));
    }
}

namespace {
// Waits for a byte on each of two sockets (children of one when_all) and a timer, `rounds` times; the
// bytes come from another thread's coroutine. Started by a thread that then leaves run().
task<void> orphaned_parent(io_context& ctx, tcp_socket& x, tcp_socket& y, int rounds, family& f, totals& t) {
    auto wait_byte = [](tcp_socket& s, family& fam, std::string& log, totals& tt) -> task<void> {
        fam.enter();
        tt.children_started.fetch_add(1);
        fam.leave();
        char c = 0;
        auto r = co_await s.recv(coport::buffer(&c, 1));
        fam.enter();
        tt.children_resumed.fetch_add(1);
        if (!r || *r != 1) {
            tt.failures.fetch_add(1);
            std::fprintf(stderr, "recv: %s\n", r ? "0 bytes" : r.error().message().c_str());
        }
        log.push_back(c);
        fam.leave();
    };
    auto nap = [](io_context& cx, family& fam, std::string& log, totals& tt) -> task<void> {
        fam.enter();
        tt.children_started.fetch_add(1);
        fam.leave();
        co_await cx.sleep_for(2ms);
        fam.enter();
        tt.children_resumed.fetch_add(1);
        log.push_back('t');
        fam.leave();
    };
    std::string log;
    for (int i = 0; i < rounds; ++i) {
        auto wx = wait_byte(x, f, log, t);
        auto wy = wait_byte(y, f, log, t);
        auto nt = nap(ctx, f, log, t);
        co_await coport::when_all(std::move(wx), std::move(wy), std::move(nt));
        f.enter();
        if (log.size() != 3) t.failures.fetch_add(1);
        log.clear();
        f.leave();
    }
    t.parents_done.fetch_add(1);
}
} // namespace

TEST_CASE("operations of a thread that left run() complete on the others, exactly once, never at once",
          "[resumption]") {
    io_context ctx;
    constexpr int pairs = 4, rounds = 50;
    totals t;
    auto lr = tcp_listener::bind(ctx, endpoint(ip_address::loopback_v4(), 0));
    REQUIRE(lr);
    const auto port = lr->local_endpoint()->port();
    std::vector<tcp_socket> waiting, feeding; // the parents wait on `waiting`; `feeding` sends to them
    auto connect_all = [&]() -> task<bool> {
        for (int i = 0; i < 2 * pairs; ++i) {
            auto c = co_await tcp_socket::connect(ctx, "127.0.0.1", port);
            auto a = co_await lr->accept();
            if (!c || !a) co_return false;
            waiting.push_back(std::move(*a));
            feeding.push_back(std::move(*c));
        }
        co_return true;
    };
    REQUIRE(ctx.block_on(connect_all()));
    std::vector<family> families(pairs);
    coport::async_scope scope;
    {
        coport::thread_pool_runner pool(ctx, 2);
        // A thread starts the parents inside block_on (scope.spawn runs each until its first suspension,
        // on that thread) and returns from block_on: its worker is left with every operation pending. The
        // thread stays alive meanwhile (on Linux the kernel cancels the io_uring requests of a thread that
        // ends: that is another case, see io_context.hpp).
        std::atomic<bool> started{false}, finished{false};
        std::thread starter([&] {
            auto start = [&]() -> task<void> {
                for (int p = 0; p < pairs; ++p) {
                    families[p].check_thread = false; // serviced by whichever thread looks: never two at once
                    scope.spawn(orphaned_parent(ctx, waiting[2 * p], waiting[2 * p + 1], rounds, families[p], t));
                }
                co_return;
            };
            ctx.block_on(start());
            started.store(true);
            while (!finished.load()) std::this_thread::sleep_for(1ms);
        });
        while (!started.load()) std::this_thread::sleep_for(1ms);
        // The bytes, from the pool's threads: one per socket per round, paced so that rounds overlap.
        auto feed = [&]() -> task<bool> {
            for (int i = 0; i < rounds; ++i) {
                for (auto& s : feeding) {
                    char c = static_cast<char>('a' + i % 26);
                    auto r = co_await s.send(coport::buffer(&c, 1));
                    if (!r) co_return false;
                }
                co_await ctx.sleep_for(1ms);
            }
            co_return true;
        };
        CHECK(ctx.block_on(feed()));
        auto join = [&]() -> task<void> { co_await scope.join(); };
        ctx.block_on(join());
        finished.store(true);
        starter.join();
        pool.join();
    }
    for (auto& f : families) t.absorb(f);
    CHECK(t.parents_done.load() == pairs);
    CHECK(t.children_started.load() == 3L * pairs * rounds);
    CHECK(t.children_resumed.load() == t.children_started.load());
    CHECK(t.failures.load() == 0);
    CHECK(t.overlaps.load() == 0);
}
