// SPDX-License-Identifier: MIT
// async_mutex, async_semaphore, async_event and channel<T> (sync.hpp), on every backend, with the context
// run by 4 threads: the invariants under load, each side of a cancel race forced, and random-moment
// cancellations with the exactly-once invariant.
#include <coport/coport.hpp>
#include <coport/sync.hpp>

#include "support.hpp"

#include <atomic>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coport::io_context;
using coport::task;

namespace {

/// Runs `make(i)` for i in [0, n) spread over the threads of a context run by `threads` threads (and the
/// calling thread, in block_on), and waits for all of them.
template <class Make>
void run_spread(io_context& ctx, unsigned threads, int n, Make make) {
    coport::thread_pool_runner pool(ctx, threads);
    coport::async_scope scope;
    auto all = [&]() -> task<void> {
        for (int i = 0; i < n; ++i) scope.spawn(ctx, make(i));
        co_await scope.join();
    };
    ctx.block_on(all());
    pool.join();
}

bool is_iocp(io_context& ctx) { return std::string(ctx.backend_name()) == "iocp"; }

} // namespace

TEST_CASE("async_mutex: lock/unlock from 4 threads keeps a plain counter exact", "[sync][mutex]") {
    io_context ctx;
    coport::async_mutex m(ctx);
    const int workers = 16;
    const int each = is_iocp(ctx) ? 2500 : 6250; // 100,000 natively
    long counter = 0;                            // guarded by m only
    std::atomic<int> inside{0}, overlaps{0};
    auto worker = [&](int) -> task<void> {
        for (int i = 0; i < each; ++i) {
            auto g = co_await m.scoped_lock();
            if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
            ++counter;
            if (i % 64 == 0) co_await ctx.schedule(); // hold it across a suspension sometimes
            inside.fetch_sub(1);
        }
    };
    run_spread(ctx, 4, workers, worker);
    CHECK(counter == long(workers) * each);
    CHECK(overlaps.load() == 0);
    CHECK(m.try_lock());
    m.unlock();
}

TEST_CASE("async_mutex: FIFO, try_lock, and a cancelled wait never takes the lock", "[sync][mutex]") {
    io_context ctx;
    coport::async_mutex m(ctx);
    std::vector<int> order;
    auto body = [&]() -> task<void> {
        REQUIRE(m.try_lock());
        CHECK_FALSE(m.try_lock());
        coport::async_scope scope;
        auto waiter = [&](int id) -> task<void> {
            auto r = co_await m.lock();
            order.push_back(id);
            m.unlock();
            (void)r;
        };
        for (int i = 0; i < 5; ++i) scope.spawn(waiter(i)); // each waits in turn, in this order
        // A wait stopped while queued: aborted, without the lock; the queue behind it is unaffected.
        std::stop_source stop;
        auto cancelled = [&]() -> task<void> {
            auto r = co_await m.scoped_lock(stop.get_token());
            CHECK_FALSE(r);
            CHECK(r.error() == coport::errc::operation_aborted);
            order.push_back(-1);
        };
        scope.spawn(cancelled());
        stop.request_stop();
        co_await ctx.schedule();
        m.unlock(); // to waiter 0, which passes it on
        co_await scope.join();
        // A token stopped before the wait: fails at once even though the lock is free.
        std::stop_source pre;
        pre.request_stop();
        auto r = co_await m.lock(pre.get_token());
        CHECK(r.error() == coport::errc::operation_aborted);
        CHECK(m.try_lock());
        m.unlock();
    };
    ctx.block_on(body());
    CHECK(order == std::vector<int>{-1, 0, 1, 2, 3, 4});
}

TEST_CASE("async_semaphore: never more than N holders, on 4 threads", "[sync][semaphore]") {
    io_context ctx;
    constexpr std::size_t permits = 3;
    coport::async_semaphore sem(ctx, permits);
    std::atomic<int> holders{0}, most{0}, passes{0};
    const int each = is_iocp(ctx) ? 300 : 2000;
    auto worker = [&](int) -> task<void> {
        for (int i = 0; i < each; ++i) {
            auto r = co_await sem.acquire();
            if (!r) co_return;
            int now = holders.fetch_add(1) + 1;
            int seen = most.load();
            while (now > seen && !most.compare_exchange_weak(seen, now)) {}
            if (i % 16 == 0) co_await ctx.sleep_for(50us);
            holders.fetch_sub(1);
            passes.fetch_add(1);
            sem.release();
        }
    };
    run_spread(ctx, 4, 12, worker);
    CHECK(passes.load() == 12 * each);
    CHECK(most.load() <= int(permits));
    CHECK(most.load() >= 1);
    CHECK(sem.available() == permits);
    CHECK(sem.try_acquire());
    sem.release(1);
}

TEST_CASE("async_semaphore: release(n) wakes n waiters in order; a cancelled acquire takes no permit", "[sync][semaphore]") {
    io_context ctx;
    coport::async_semaphore sem(ctx, 0);
    std::vector<int> order;
    auto body = [&]() -> task<void> {
        coport::async_scope scope;
        std::stop_source stop;
        auto waiter = [&](int id, std::stop_token st) -> task<void> {
            auto r = co_await sem.acquire(st);
            order.push_back(r ? id : -id);
        };
        scope.spawn(waiter(1, {}));
        scope.spawn(waiter(2, stop.get_token()));
        scope.spawn(waiter(3, {}));
        stop.request_stop(); // 2 leaves the queue
        sem.release(2);      // to 1 and 3
        co_await scope.join();
        CHECK(sem.available() == 0);
        sem.release(1);
        CHECK(sem.available() == 1);
    };
    ctx.block_on(body());
    CHECK(order == std::vector<int>{-2, 1, 3});
}

namespace {
// `n` waits on `ev` spread over the threads of `ctx`; once they have started, `fire()` (on this thread), then
// joined. Each wait that succeeded adds 1 to `released`.
template <class Fire>
task<void> wait_and_fire(io_context& ctx, coport::async_event& ev, int n, std::atomic<int>& released, Fire fire) {
    std::atomic<int> started{0};
    coport::async_scope scope;
    auto w = [&]() -> task<void> {
        started.fetch_add(1);
        auto r = co_await ev.wait();
        if (r) released.fetch_add(1);
    };
    for (int i = 0; i < n; ++i) scope.spawn(ctx, w());
    while (started.load() < n) co_await ctx.sleep_for(1ms);
    fire();
    co_await scope.join();
}
} // namespace

TEST_CASE("async_event: every waiter released exactly once (manual and auto reset), on 4 threads", "[sync][event]") {
    io_context ctx;
    constexpr int waiters = 200;
    std::atomic<int> released{0};
    coport::thread_pool_runner pool(ctx, 4);
    SECTION("manual reset: one set() releases all, later waits pass") {
        coport::async_event ev(ctx);
        auto body = [&]() -> task<void> {
            co_await wait_and_fire(ctx, ev, waiters, released, [&] { ev.set(); });
            auto again = co_await ev.wait(); // set: passes at once
            if (again) released.fetch_add(1);
        };
        ctx.block_on(body());
        CHECK(released.load() == waiters + 1);
        CHECK(ev.is_set());
        ev.reset();
        CHECK_FALSE(ev.is_set());
    }
    SECTION("auto reset: each set() releases one") {
        coport::async_event ev(ctx, coport::event_mode::auto_reset);
        auto body = [&]() -> task<void> {
            co_await wait_and_fire(ctx, ev, waiters, released, [&] {
                for (int i = 0; i < waiters; ++i) ev.set();
            });
            if (ev.is_set()) released.fetch_add(1000); // each set() went to a waiter: not set now
            ev.set();                                    // none waiting: the next wait passes, once
            auto once = co_await ev.wait();
            if (once && !ev.is_set()) released.fetch_add(1);
        };
        ctx.block_on(body());
        CHECK(released.load() == waiters + 1);
    }
    pool.join();
}

TEST_CASE("channel: 8 producers and 8 consumers on 4 threads, every value received exactly once", "[sync][channel]") {
    io_context ctx;
    constexpr int producers = 8, consumers = 8;
    const int total = is_iocp(ctx) ? 40000 : 100000;
    const int each = total / producers;
    coport::channel<int> ch(ctx, 16);
    std::vector<std::atomic<int>> seen(static_cast<std::size_t>(total));
    std::atomic<int> invented{0}, received{0}, producers_left{producers};
    auto producer = [&](int p) -> task<void> {
        for (int i = 0; i < each; ++i) {
            auto r = co_await ch.send(p * each + i);
            if (!r) co_return;
        }
        if (producers_left.fetch_sub(1) == 1) ch.close();
    };
    auto consumer = [&](int) -> task<void> {
        for (;;) {
            auto v = co_await ch.recv();
            if (!v) {
                if (v.error() != coport::errc::channel_closed) invented.fetch_add(1);
                co_return;
            }
            if (*v < 0 || *v >= total) invented.fetch_add(1);
            else seen[static_cast<std::size_t>(*v)].fetch_add(1);
            received.fetch_add(1);
        }
    };
    run_spread(ctx, 4, producers + consumers, [&](int i) { return i < producers ? producer(i) : consumer(i); });
    CHECK(received.load() == total);
    CHECK(invented.load() == 0);
    int wrong = 0;
    for (auto& s : seen)
        if (s.load() != 1) ++wrong;
    CHECK(wrong == 0);
}

TEST_CASE("channel: close while full and while empty; try_send/try_recv", "[sync][channel]") {
    io_context ctx;
    auto body = [&]() -> task<void> {
        coport::channel<std::string> ch(ctx, 2);
        std::string a = "a", b = "b", c = "c";
        CHECK(ch.try_send(a));
        CHECK(a.empty()); // moved from
        CHECK(ch.try_send(b));
        CHECK_FALSE(ch.try_send(c)); // full: untouched
        CHECK(c == "c");
        // A send waiting on a full channel ends with channel_closed at close(), its value not delivered.
        coport::async_scope scope;
        coport::result<void> blocked_send;
        auto sender = [&]() -> task<void> {
            std::string d = "d"; // named: see the run_blocking test
            blocked_send = co_await ch.send(std::move(d));
        };
        scope.spawn(sender());
        ch.close();
        co_await scope.join();
        CHECK(blocked_send.error() == coport::errc::channel_closed);
        // What was in it stays receivable; then channel_closed.
        auto x = co_await ch.recv();
        auto y = co_await ch.recv();
        auto z = co_await ch.recv();
        CHECK((x && *x == "a"));
        CHECK((y && *y == "b"));
        CHECK(z.error() == coport::errc::channel_closed);
        std::string e = "e";
        auto late = co_await ch.send(std::move(e));
        CHECK(late.error() == coport::errc::channel_closed);
        CHECK_FALSE(ch.try_recv().has_value());

        // A recv waiting on an empty channel ends with channel_closed.
        coport::channel<int> empty(ctx, 1);
        coport::result<int> blocked_recv = 0;
        auto receiver = [&]() -> task<void> { blocked_recv = co_await empty.recv(); };
        coport::async_scope scope2;
        scope2.spawn(receiver());
        empty.close();
        co_await scope2.join();
        CHECK(blocked_recv.error() == coport::errc::channel_closed);
    };
    ctx.block_on(body());
    CHECK_THROWS_AS(coport::channel<int>(ctx, 0), std::invalid_argument);
}

TEST_CASE("channel: a cancelled send never delivers, a cancelled recv never loses a value", "[sync][channel][cancel]") {
    io_context ctx;
    auto body = [&]() -> task<void> {
        coport::channel<int> ch(ctx, 1);
        auto first = co_await ch.send(1);
        CHECK(first.has_value());
        // Full: this send waits; stopped while queued, it fails and 2 is never delivered.
        std::stop_source s1;
        coport::async_scope scope;
        coport::result<void> stopped_send;
        auto sender = [&]() -> task<void> { stopped_send = co_await ch.send(2, s1.get_token()); };
        scope.spawn(sender());
        s1.request_stop();
        co_await scope.join();
        CHECK(stopped_send.error() == coport::errc::operation_aborted);
        auto one = co_await ch.recv();
        CHECK((one && *one == 1));
        CHECK_FALSE(ch.try_recv().has_value()); // 2 was not delivered
        // Empty: this recv waits; stopped while queued, it takes nothing, and 3 is there for the next.
        std::stop_source s2;
        coport::result<int> stopped_recv = 0;
        auto receiver = [&]() -> task<void> { stopped_recv = co_await ch.recv(s2.get_token()); };
        coport::async_scope scope2; // a scope is joined once
        scope2.spawn(receiver());
        s2.request_stop();
        auto sent3 = co_await ch.send(3);
        CHECK(sent3.has_value());
        auto three = co_await ch.recv();
        co_await scope2.join();
        CHECK(stopped_recv.error() == coport::errc::operation_aborted);
        CHECK((three && *three == 3));
        // A stop after the value was handed over changes nothing.
        std::stop_source s3;
        coport::result<int> got = 0;
        auto late = [&]() -> task<void> { got = co_await ch.recv(s3.get_token()); };
        coport::async_scope scope3;
        scope3.spawn(late());
        auto sent4 = co_await ch.send(4); // handed to the waiting recv
        CHECK(sent4.has_value());
        s3.request_stop();
        co_await scope3.join();
        CHECK((got && *got == 4));
    };
    ctx.block_on(body());
}

TEST_CASE("channel: 100,000 random-moment cancellations of send and recv, each value received at most once and "
          "only if its send succeeded",
          "[sync][channel][cancel][stress]") {
    io_context ctx;
    const int rounds = is_iocp(ctx) ? 4000 : 12500; // x 8 operations (4 sends, 4 recvs)
    coport::channel<long> ch(ctx, 2);
    constexpr int lanes = 4;
    std::vector<std::atomic<int>> delivered(static_cast<std::size_t>(rounds) * lanes * 2);
    std::atomic<long> sends_ok{0}, sends_aborted{0}, recvs_ok{0}, recvs_aborted{0}, resumed{0}, other{0};
    std::atomic<long> invented{0};
    auto lane = [&](int id) -> task<void> {
        std::mt19937 rng(static_cast<unsigned>(1000 + id));
        for (int i = 0; i < rounds; ++i) {
            std::stop_source stop;
            const long value = (static_cast<long>(id) * rounds + i) * 2;
            auto snd = [&](long v, std::stop_token st) -> task<void> {
                auto r = co_await ch.send(v, st);
                resumed.fetch_add(1);
                if (r) {
                    sends_ok.fetch_add(1);
                    delivered[static_cast<std::size_t>(v)].fetch_add(1000); // sent: may be received once
                } else if (r.error() == coport::errc::operation_aborted) sends_aborted.fetch_add(1);
                else other.fetch_add(1);
            };
            auto rcv = [&](std::stop_token st) -> task<void> {
                auto r = co_await ch.recv(st);
                resumed.fetch_add(1);
                if (r) {
                    recvs_ok.fetch_add(1);
                    if (*r < 0 || *r >= long(delivered.size())) invented.fetch_add(1);
                    else delivered[static_cast<std::size_t>(*r)].fetch_add(1);
                } else if (r.error() == coport::errc::operation_aborted) recvs_aborted.fetch_add(1);
                else other.fetch_add(1);
            };
            auto stopper = [&](std::chrono::microseconds d) -> task<void> {
                co_await ctx.sleep_for(d);
                stop.request_stop();
            };
            auto a = snd(value, stop.get_token());
            auto b = rcv(stop.get_token());
            auto c = snd(value + 1, stop.get_token());
            auto d = rcv(stop.get_token());
            auto e = stopper(std::chrono::microseconds(rng() % 50));
            co_await coport::when_all(std::move(a), std::move(b), std::move(c), std::move(d), std::move(e));
        }
    };
    run_spread(ctx, 4, lanes, lane);
    // Values still in the channel were sent and not received: drain them.
    while (auto v = ch.try_recv()) {
        if (*v < 0 || *v >= long(delivered.size())) invented.fetch_add(1);
        else delivered[static_cast<std::size_t>(*v)].fetch_add(1);
    }
    const long ops = 4L * lanes * rounds;
    CHECK(resumed.load() == ops);
    CHECK(sends_ok.load() + sends_aborted.load() + recvs_ok.load() + recvs_aborted.load() == ops);
    CHECK(other.load() == 0);
    CHECK(invented.load() == 0);
    // Each value: sent and received exactly once (1001), or never sent and never received (0).
    long bad = 0;
    for (auto& d : delivered) {
        const int v = d.load();
        if (v != 0 && v != 1001) ++bad;
    }
    CHECK(bad == 0);
}

TEST_CASE("async_scope::request_stop ends 10,000 children blocked in recv, timers and channel waits; join returns",
          "[sync][scope]") {
    io_context ctx;
    constexpr int pairs = 100; // a socket has one recv in flight at a time: 100 connections, one reader each
    const int per_kind = is_iocp(ctx) ? 1000 : (10000 - pairs) / 2;
    auto lr = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
    REQUIRE(lr);
    const auto port = lr->local_endpoint()->port();
    coport::channel<int> ch(ctx, 1);
    std::atomic<int> aborted{0}, other{0}, started{0};
    std::vector<coport::tcp_socket> ends;
    auto body = [&]() -> task<void> {
        for (int i = 0; i < pairs; ++i) {
            auto c = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", port);
            auto s = co_await lr->accept();
            if (!c || !s) co_return;
            ends.push_back(std::move(*c));
            ends.push_back(std::move(*s));
        }
        coport::async_scope scope;
        auto count = [&](const std::error_code& ec) {
            if (ec == coport::errc::operation_aborted) aborted.fetch_add(1);
            else other.fetch_add(1);
        };
        auto sleeper = [&](std::stop_token st) -> task<void> {
            started.fetch_add(1);
            auto r = co_await ctx.sleep_for(1h, st);
            count(r.error());
        };
        auto receiver = [&](std::stop_token st) -> task<void> {
            started.fetch_add(1);
            auto r = co_await ch.recv(st);
            count(r.error());
        };
        auto reader = [&](coport::tcp_socket& sock, std::stop_token st) -> task<void> {
            started.fetch_add(1);
            char x;
            auto r = co_await sock.recv(coport::buffer(&x, 1), st);
            count(r.error());
        };
        for (int i = 0; i < per_kind; ++i) scope.spawn(ctx, sleeper(scope.get_stop_token()));
        for (int i = 0; i < per_kind; ++i) scope.spawn(ctx, receiver(scope.get_stop_token()));
        for (int i = 0; i < pairs; ++i) scope.spawn(ctx, reader(ends[static_cast<std::size_t>(2 * i)], scope.get_stop_token()));
        while (started.load() < 2 * per_kind + pairs) co_await ctx.sleep_for(1ms);
        co_await ctx.sleep_for(10ms); // let them reach their waits
        CHECK(scope.request_stop());
        co_await scope.join();
    };
    {
        coport::thread_pool_runner pool(ctx, 4);
        ctx.block_on(body());
        pool.join();
    }
    CHECK(aborted.load() == 2 * per_kind + pairs);
    CHECK(other.load() == 0);
}

TEST_CASE("io_context::run_blocking: the value on the awaiting thread, exceptions rethrown, a stop aborts at once",
          "[sync][blocking]") {
    io_context ctx;
    coport::thread_pool_runner pool(ctx, 2);
    auto body = [&]() -> task<int> {
        int score = 0;
        const auto me = current_thread_id();
        std::thread::id ran_on;
        auto v = co_await ctx.run_blocking([&] {
            ran_on = std::this_thread::get_id();
            return 41;
        });
        if (v && *v == 41 && ran_on != me && current_thread_id() == me) score += 1;
        auto none = co_await ctx.run_blocking([] {});
        if (none) score += 10;
        try {
            auto t = co_await ctx.run_blocking([]() -> int { throw std::runtime_error("thrown"); });
            (void)t;
        } catch (const std::runtime_error& e) {
            if (std::string(e.what()) == "thrown") score += 100;
        }
        std::stop_source stop;
        // Shared with the call, which goes on after the abort and may outlive this frame.
        auto release = std::make_shared<std::atomic<bool>>(false);
        auto returned = std::make_shared<std::atomic<bool>>(false);
        auto stopper = [&]() -> task<void> {
            co_await ctx.sleep_for(20ms);
            stop.request_stop();
        };
        coport::async_scope scope;
        scope.spawn(stopper());
        // Named first: a temporary with a non-trivial destructor in a co_await full-expression is one of the
        // shapes g++ 12 miscompiles (a double destruction, GCC PR 100611 and kin).
        auto spin = [release, returned] {
            while (!release->load()) std::this_thread::sleep_for(1ms);
            returned->store(true);
        };
        std::stop_token token = stop.get_token();
        auto slow = co_await ctx.run_blocking(spin, token);
        if (!slow && slow.error() == coport::errc::operation_aborted) score += 1000;
        release->store(true);
        while (!returned->load()) co_await ctx.sleep_for(1ms);
        co_await scope.join();
        co_return score;
    };
    CHECK(ctx.block_on(body()) == 1111);
}
