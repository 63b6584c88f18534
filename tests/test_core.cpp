// SPDX-License-Identifier: MIT
// The coroutine core and the io_context: task, when_all, sync_wait, async_scope, spawn, post/schedule,
// timers, stop and shutdown. Runs on every backend.
#include <coport/coport.hpp>

#include <catch2/catch.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using coport::io_context;
using coport::task;

namespace {

task<int> ready_int(int v) { co_return v; }
task<void> ready_void() { co_return; }
task<std::unique_ptr<int>> move_only(int v) { co_return std::make_unique<int>(v); }
task<int&> ref_to(int& x) { co_return x; }
task<int> throws_after_await() {
    int v = co_await ready_int(1);
    if (v == 1) throw std::runtime_error("boom");
    co_return v;
}

task<long> long_chain(int n) {
    long sum = 0;
    for (int i = 0; i < n; ++i) {
        int v = co_await ready_int(1);
        sum += v;
    }
    co_return sum;
}

} // namespace

TEST_CASE("task returns values, references, move-only values and void", "[task]") {
    CHECK(coport::sync_wait(ready_int(42)) == 42);
    coport::sync_wait(ready_void());
    auto p = coport::sync_wait(move_only(7));
    REQUIRE(p);
    CHECK(*p == 7);
    int x = 5;
    int& r = coport::sync_wait(ref_to(x));
    CHECK(&r == &x);
}

TEST_CASE("task propagates exceptions to the awaiter", "[task]") {
    CHECK_THROWS_WITH(coport::sync_wait(throws_after_await()), "boom");
}

TEST_CASE("a never-awaited task destroys its frame", "[task]") {
    auto flag = std::make_shared<int>(0);
    {
        auto t = [](std::shared_ptr<int> f) -> task<void> {
            *f = 1;
            co_return;
        }(flag);
        CHECK(flag.use_count() == 2); // the frame holds a copy
    }
    CHECK(flag.use_count() == 1);
    CHECK(*flag == 0);
}

TEST_CASE("1,000,000 synchronously completing co_awaits run in constant stack", "[task][stack]") {
    CHECK(coport::sync_wait(long_chain(1'000'000)) == 1'000'000);
}

TEST_CASE("when_all over a pack and over a range", "[when_all]") {
    auto [a, b, c] = coport::sync_wait(coport::when_all(ready_int(1), ready_void(), ready_int(3)));
    CHECK(a == 1);
    CHECK(c == 3);
    (void)b;

    std::vector<task<int>> ts;
    for (int i = 0; i < 100; ++i) ts.push_back(ready_int(i));
    auto v = coport::sync_wait(coport::when_all(std::move(ts)));
    REQUIRE(v.size() == 100);
    for (int i = 0; i < 100; ++i) CHECK(v[i] == i);

    std::vector<task<void>> vs;
    vs.push_back(ready_void());
    coport::sync_wait(coport::when_all(std::move(vs)));
    CHECK(coport::sync_wait(coport::when_all(std::vector<task<int>>{})).empty());
}

TEST_CASE("when_all rethrows the first exception after every child finished", "[when_all]") {
    std::atomic<int> finished{0};
    auto counted = [](std::atomic<int>& f) -> task<int> {
        f.fetch_add(1);
        co_return 1;
    };
    auto t1 = counted(finished);
    auto t2 = throws_after_await();
    auto t3 = counted(finished);
    CHECK_THROWS_WITH(coport::sync_wait(coport::when_all(std::move(t1), std::move(t2), std::move(t3))), "boom");
    CHECK(finished.load() == 2);
}

TEST_CASE("when_all children suspended on the io_context resume the parent once", "[when_all][io_context]") {
    io_context ctx;
    auto sleeper = [](io_context& c, int ms) -> task<int> {
        auto r = co_await c.sleep_for(std::chrono::milliseconds(ms));
        co_return r ? ms : -1;
    };
    auto t1 = sleeper(ctx, 20);
    auto t2 = sleeper(ctx, 5);
    auto t3 = sleeper(ctx, 10);
    auto res = ctx.block_on(coport::when_all(std::move(t1), std::move(t2), std::move(t3)));
    CHECK(res == std::tuple<int, int, int>{20, 5, 10});
}

TEST_CASE("async_scope joins everything it started and rethrows the first exception", "[scope]") {
    io_context ctx;
    std::atomic<int> done{0};
    auto body = [](io_context& c, std::atomic<int>& d, int i) -> task<void> {
        auto r = co_await c.sleep_for(std::chrono::milliseconds(i % 7));
        if (r) d.fetch_add(1);
    };
    auto main_task = [&](io_context& c) -> task<void> {
        coport::async_scope scope;
        for (int i = 0; i < 50; ++i) scope.spawn(body(c, done, i));
        co_await scope.join();
    };
    ctx.block_on(main_task(ctx));
    CHECK(done.load() == 50);

    auto failing = [](io_context& c) -> task<void> {
        co_await c.schedule();
        throw std::runtime_error("scoped failure");
    };
    auto main2 = [&](io_context& c) -> task<void> {
        coport::async_scope scope;
        scope.spawn(failing(c));
        scope.spawn(body(c, done, 3));
        co_await scope.join();
    };
    CHECK_THROWS_WITH(ctx.block_on(main2(ctx)), "scoped failure");
    CHECK(done.load() == 51);
}

TEST_CASE("spawn: an exception from a detached coroutine leaves run()", "[spawn][io_context]") {
    io_context ctx;
    auto f = [](io_context& c) -> task<void> {
        co_await c.sleep_for(1ms);
        throw std::runtime_error("detached failure");
    };
    coport::spawn(ctx, f(ctx));
    CHECK_THROWS_WITH(ctx.run(), "detached failure");
}

TEST_CASE("run() returns when out of work and runs again; after stop(), only restart() does", "[io_context]") {
    io_context ctx;
    int n = 0;
    ctx.post([&] { ++n; });
    ctx.post([&] { ++n; });
    CHECK(ctx.run() == 2);
    CHECK(n == 2);
    CHECK_FALSE(ctx.stopped()); // out of work is not stopped
    ctx.post([&] { ++n; });
    CHECK(ctx.run() == 1);
    CHECK(n == 3);
    ctx.post([&] { ++n; });
    ctx.stop();
    CHECK(ctx.stopped());
    CHECK(ctx.run() == 0); // stopped until restart()
    ctx.restart();
    CHECK(ctx.run() == 1);
    CHECK(n == 4);
}

TEST_CASE("run_one runs one handler; poll runs the ready ones without blocking", "[io_context]") {
    io_context ctx;
    int n = 0;
    for (int i = 0; i < 3; ++i) ctx.post([&] { ++n; });
    CHECK(ctx.run_one() == 1);
    CHECK(n == 1);
    CHECK(ctx.poll() == 2);
    CHECK(n == 3);
    auto guard = ctx.make_work_guard();
    CHECK(ctx.poll() == 0); // nothing ready: returns at once although work is outstanding
    guard.reset();
}

TEST_CASE("100,000 schedule() and post() from 4 foreign threads into 4 running threads: each resumed once",
          "[io_context][threads]") {
    io_context ctx;
    constexpr int per_thread = 12'500; // x 4 threads x 2 kinds = 100,000
    std::vector<std::atomic<int>> hits(4 * per_thread * 2);
    std::atomic<int> pending_coroutines{0};
    auto guard = std::make_unique<io_context::work_guard>(ctx);
    std::vector<std::thread> runners;
    for (int i = 0; i < 4; ++i) runners.emplace_back([&] { ctx.run(); });

    auto hop = [](io_context& c, std::atomic<int>& hit, std::atomic<int>& pend) -> task<void> {
        co_await c.schedule();
        hit.fetch_add(1, std::memory_order_relaxed);
        pend.fetch_sub(1);
    };
    std::vector<std::thread> producers;
    for (int t = 0; t < 4; ++t)
        producers.emplace_back([&, t] {
            for (int i = 0; i < per_thread; ++i) {
                int base = (t * per_thread + i) * 2;
                ctx.post([&hits, base] { hits[base].fetch_add(1, std::memory_order_relaxed); });
                pending_coroutines.fetch_add(1);
                coport::spawn(ctx, hop(ctx, hits[base + 1], pending_coroutines));
            }
        });
    for (auto& p : producers) p.join();
    guard.reset(); // run() returns once everything queued has run
    for (auto& r : runners) r.join();
    int wrong = 0;
    for (auto& h : hits) wrong += h.load() != 1;
    CHECK(wrong == 0);
    CHECK(pending_coroutines.load() == 0);
}

TEST_CASE("3 threads, no work guard: no run() returns while a chain of operations is still going",
          "[io_context][threads]") {
    // Each step of a chain finishes one unit of work and starts the next on the same thread: the count of
    // outstanding work must never read zero in between, or a run() would return early.
    for (int round = 0; round < 50; ++round) {
        io_context ctx;
        constexpr int chains = 6, steps = 300;
        std::atomic<int> done{0};
        auto chain = [](io_context& c, std::atomic<int>& d) -> task<void> {
            for (int i = 0; i < steps; ++i) {
                co_await c.schedule();
                co_await c.sleep_for(i % 3 == 0 ? std::chrono::microseconds(20) : std::chrono::microseconds(0));
            }
            d.fetch_add(1);
        };
        ctx.post([&] {
            for (int i = 0; i < chains; ++i) coport::spawn(ctx, chain(ctx, done));
        });
        std::vector<int> seen_at_return(3, -1);
        std::vector<std::thread> runners;
        for (int t = 0; t < 3; ++t)
            runners.emplace_back([&, t] {
                ctx.run();
                seen_at_return[static_cast<std::size_t>(t)] = done.load();
            });
        for (auto& r : runners) r.join();
        INFO("round " << round);
        CHECK(done.load() == chains);
        for (int seen : seen_at_return) CHECK(seen == chains);
    }
}

TEST_CASE("schedule() from inside a handler moves on after queued work", "[io_context]") {
    io_context ctx;
    std::vector<int> order;
    auto a = [](io_context& c, std::vector<int>& o) -> task<void> {
        o.push_back(1);
        co_await c.schedule();
        o.push_back(3);
    };
    ctx.post([&] {
        coport::spawn(ctx, a(ctx, order));
    });
    ctx.post([&] { order.push_back(0); });
    ctx.run();
    // the spawned coroutine starts after the second post, then yields behind nothing
    CHECK(order == std::vector<int>{0, 1, 3});
}

TEST_CASE("10,000 timers fire in deadline order; cancelling half resumes those with operation_aborted",
          "[timer][io_context]") {
    io_context ctx;
    constexpr int n = 10'000;
    std::mt19937 rng(12345);
    std::uniform_int_distribution<int> dist(0, 300);
    struct rec {
        io_context::clock::time_point deadline;
        io_context::clock::time_point fired;
        std::error_code ec;
        bool resumed = false;
    };
    std::vector<rec> recs(n);
    std::vector<std::stop_source> stops(n);
    std::vector<int> fire_order;
    fire_order.reserve(n);
    auto t0 = io_context::clock::now();
    for (int i = 0; i < n; ++i) recs[i].deadline = t0 + std::chrono::milliseconds(dist(rng)) + 1s; // setup (10k spawns, slow under TSan) ends first

    auto one = [](io_context& c, rec& r, std::stop_token st, std::vector<int>& order, int i) -> task<void> {
        auto res = co_await c.sleep_until(r.deadline, std::move(st));
        r.fired = io_context::clock::now();
        r.ec = res.error();
        r.resumed = true;
        order.push_back(i);
    };
    auto all = [&](io_context& c) -> task<void> {
        coport::async_scope scope;
        for (int i = 0; i < n; ++i) scope.spawn(one(c, recs[i], stops[i].get_token(), fire_order, i));
        // cancel the odd ones from inside the context, before any deadline
        for (int i = 1; i < n; i += 2) stops[i].request_stop();
        co_await scope.join();
    };
    ctx.block_on(all(ctx));

    int aborted = 0, on_time = 0, early = 0, very_late = 0, unresumed = 0;
    for (int i = 0; i < n; ++i) {
        const rec& r = recs[i];
        unresumed += !r.resumed;
        if (i % 2) {
            aborted += r.ec == coport::errc::operation_aborted;
        } else if (!r.ec) {
            ++on_time;
            early += r.fired < r.deadline;
            very_late += r.fired > r.deadline + 2s; // generous: a loaded CI machine
        }
    }
    CHECK(unresumed == 0);
    CHECK(aborted == n / 2);
    CHECK(on_time == n / 2);
    CHECK(early == 0);
    CHECK(very_late == 0);
    // The uncancelled ones fired in deadline order (single thread: a total order).
    std::vector<int> fired_even;
    for (int i : fire_order)
        if (i % 2 == 0) fired_even.push_back(i);
    REQUIRE(fired_even.size() == n / 2);
    bool ordered = std::is_sorted(fired_even.begin(), fired_even.end(), [&](int a, int b) {
        return recs[a].deadline < recs[b].deadline;
    });
    CHECK(ordered);
}

TEST_CASE("a stop requested before the wait never suspends; one requested from another thread cancels", "[timer]") {
    io_context ctx;
    std::stop_source early;
    early.request_stop();
    auto r1 = ctx.block_on(ctx.sleep_for(1h, early.get_token()));
    CHECK(r1.error() == coport::errc::operation_aborted);

    std::stop_source later;
    std::thread canceller([&] {
        std::this_thread::sleep_for(50ms);
        later.request_stop();
    });
    auto start = io_context::clock::now();
    auto r2 = ctx.block_on(ctx.sleep_for(1h, later.get_token()));
    canceller.join();
    CHECK(r2.error() == coport::errc::operation_aborted);
    CHECK(io_context::clock::now() - start < 30s);
}

TEST_CASE("coport::timer: fires, cancel() ends the wait in progress only, from this thread or another",
          "[timer]") {
    io_context ctx;
    coport::timer t(ctx);
    // Fires after its duration.
    auto start = io_context::clock::now();
    auto fired = ctx.block_on(t.wait_for(20ms));
    CHECK(fired);
    CHECK(io_context::clock::now() - start >= 20ms);
    // cancel() with no wait in progress does nothing, and does not affect the next wait.
    CHECK(t.cancel() == 0);
    CHECK(ctx.block_on(t.wait_for(1ms)));
    // Cancelled by a sibling coroutine on the same thread: operation_aborted, cancel() counts it.
    std::size_t counted = 0;
    auto waiter = [&]() -> task<coport::result<void>> { co_return co_await t.wait_for(1h); };
    auto canceller = [&]() -> task<void> {
        co_await ctx.schedule(); // the waiter is suspended by now
        counted = t.cancel();
    };
    auto [r, ignored] = ctx.block_on(coport::when_all(waiter(), canceller()));
    (void)ignored;
    CHECK(counted == 1);
    REQUIRE(!r);
    CHECK(r.error() == coport::errc::operation_aborted);
    // Cancelled from a thread that does not run the context.
    std::atomic<std::size_t> from_thread{0};
    std::thread other([&] {
        while (from_thread.load() == 0) {
            std::this_thread::sleep_for(5ms);
            from_thread.store(t.cancel());
        }
    });
    start = io_context::clock::now();
    auto r2 = ctx.block_on(t.wait_for(1h));
    other.join();
    CHECK(from_thread.load() == 1);
    REQUIRE(!r2);
    CHECK(r2.error() == coport::errc::operation_aborted);
    CHECK(io_context::clock::now() - start < 30s);
    // The stop token of one wait works as with sleep_for.
    std::stop_source src;
    src.request_stop();
    CHECK(ctx.block_on(t.wait_for(1h, src.get_token())).error() == coport::errc::operation_aborted);
}

TEST_CASE("coport::timer: 2,000 cancel() calls from another thread race 2,000 expiries; each wait resumes once",
          "[timer][threads]") {
    io_context ctx;
    coport::thread_pool_runner runners(ctx, 1); // a second thread runs the context too
    auto guard = ctx.make_work_guard();
    coport::timer t(ctx);
    constexpr int rounds = 2000;
    std::atomic<int> round{0};
    std::atomic<bool> done{false};
    int ok = 0, aborted = 0;
    std::thread canceller([&] {
        std::mt19937 rng(42);
        while (!done.load()) {
            t.cancel();
            for (int spin = static_cast<int>(rng() % 2000); spin > 0; --spin) std::atomic_signal_fence(std::memory_order_seq_cst);
        }
    });
    auto run = [&]() -> task<void> {
        for (int i = 0; i < rounds; ++i) {
            auto r = co_await t.wait_for(std::chrono::microseconds(i % 50));
            if (r) ++ok;
            else if (r.error() == coport::errc::operation_aborted) ++aborted;
            round.store(i + 1);
        }
    };
    ctx.block_on(run());
    done.store(true);
    canceller.join();
    guard.reset();
    runners.join();
    // Which side wins each round is up to the scheduler (under strace every timer fired first): only the
    // invariants are checked here; each outcome is forced in the next test case.
    CHECK(round.load() == rounds);
    CHECK(ok + aborted == rounds);
}

TEST_CASE("coport::timer: a cancel() while the wait is surely pending aborts it; after the expiry it changes nothing",
          "[timer]") {
    io_context ctx;
    coport::timer t(ctx);
    SECTION("cancel first: the wait (1 h) is pending when cancel() comes") {
        auto waiter = [](coport::timer& tm) -> task<coport::result<void>> {
            auto r = co_await tm.wait_for(1h);
            co_return r;
        };
        // when_all starts its children in order on this thread: the wait is in progress before this runs.
        auto canceller = [](io_context& c, coport::timer& tm) -> task<std::size_t> {
            co_await c.schedule();
            co_return tm.cancel();
        };
        auto both = [](task<coport::result<void>> w, task<std::size_t> c) -> task<bool> {
            auto [r, n] = co_await coport::when_all(std::move(w), std::move(c));
            co_return n == 1 && !r && r.error() == coport::errc::operation_aborted;
        };
        auto w = waiter(t);
        auto c = canceller(ctx, t);
        CHECK(ctx.block_on(both(std::move(w), std::move(c))));
        // The cancel ended that wait only: the next one runs to its deadline.
        CHECK(ctx.block_on(t.wait_for(1ms)));
    }
    SECTION("expiry first: the deadline has passed, nobody cancels; cancel() afterwards returns 0") {
        auto r = ctx.block_on(t.wait_until(io_context::clock::now() - 1s));
        CHECK(r);
        CHECK(t.cancel() == 0);
        CHECK(r); // the result stays a success
        // ... and the late cancel() did not carry over to the next wait.
        CHECK(ctx.block_on(t.wait_for(1ms)));
    }
}

TEST_CASE("coport::timer: destroying the context ends a wait in progress with operation_aborted",
          "[timer][shutdown]") {
    coport::result<void> r;
    bool resumed = false;
    {
        std::optional<coport::timer> t; // declared first: outlives the context, as its wait requires
        io_context ctx;
        t.emplace(ctx);
        coport::spawn(ctx, [](coport::timer& t, coport::result<void>& r, bool& resumed) -> task<void> {
            r = co_await t.wait_for(1h);
            resumed = true;
        }(*t, r, resumed));
        ctx.poll();
        CHECK(!resumed);
    }
    CHECK(resumed);
    REQUIRE(!r);
    CHECK(r.error() == coport::errc::operation_aborted);
}

TEST_CASE("stop() leaves timers pending; destruction resumes 1,000 of them with operation_aborted",
          "[io_context][shutdown]") {
    std::atomic<int> resumed{0}, aborted{0};
    {
        io_context ctx;
        auto sleeper = [](io_context& c, std::atomic<int>& res, std::atomic<int>& ab) -> task<void> {
            auto r = co_await c.sleep_for(1h);
            res.fetch_add(1);
            if (r.error() == coport::errc::operation_aborted) ab.fetch_add(1);
        };
        for (int i = 0; i < 1000; ++i) coport::spawn(ctx, sleeper(ctx, resumed, aborted));
        std::thread runner([&] { ctx.run(); });
        std::this_thread::sleep_for(50ms);
        ctx.stop();
        runner.join();
        CHECK(resumed.load() == 0);
    }
    CHECK(resumed.load() == 1000);
    CHECK(aborted.load() == 1000);
}

TEST_CASE("destroying a never-run context with queued work runs it", "[io_context][shutdown]") {
    std::atomic<int> ran{0};
    {
        io_context ctx;
        for (int i = 0; i < 1000; ++i) ctx.post([&] { ran.fetch_add(1); });
    }
    CHECK(ran.load() == 1000);
}

TEST_CASE("thread_pool_runner runs a context on N threads", "[io_context][threads]") {
    io_context ctx;
    std::atomic<int> n{0};
    std::mutex m;
    std::vector<std::thread::id> ids;
    for (int i = 0; i < 1000; ++i)
        ctx.post([&] {
            n.fetch_add(1);
            std::lock_guard lock(m);
            ids.push_back(std::this_thread::get_id());
        });
    coport::thread_pool_runner pool(ctx, 4);
    pool.join();
    CHECK(n.load() == 1000);
    CHECK(coport::thread_pool_runner::default_threads() >= 2);
}

TEST_CASE("spawn and async_scope::spawn(ctx, t) spread coroutines over the threads running the context",
          "[io_context][threads][scope]") {
    io_context ctx;
    coport::thread_pool_runner pool(ctx, 2);
    auto guard = ctx.make_work_guard();
    std::mutex m;
    std::vector<std::thread::id> scoped, detached;
    std::atomic<int> detached_done{0};
    auto record = [&](std::vector<std::thread::id>& where) -> task<void> {
        {
            std::lock_guard lock(m);
            where.push_back(std::this_thread::get_id());
        }
        co_await ctx.sleep_for(1ms); // an operation: it completes on the thread that started it
    };
    auto detached_one = [&]() -> task<void> { // named: a coroutine lambda's captures live in the lambda
        co_await record(detached);
        detached_done.fetch_add(1);
    };
    auto run = [&]() -> task<void> {
        co_await ctx.sleep_for(100ms); // the pool's threads are in run() by now
        coport::async_scope scope;
        for (int i = 0; i < 64; ++i) scope.spawn(ctx, record(scoped));
        for (int i = 0; i < 64; ++i) coport::spawn(ctx, detached_one());
        co_await scope.join();
        while (detached_done.load() < 64) co_await ctx.sleep_for(1ms);
    };
    ctx.block_on(run());
    guard.reset();
    pool.join();
    REQUIRE(scoped.size() == 64);
    REQUIRE(detached.size() == 64);
    auto distinct = [](std::vector<std::thread::id> v) {
        std::sort(v.begin(), v.end());
        return static_cast<std::size_t>(std::unique(v.begin(), v.end()) - v.begin());
    };
    INFO("backend " << ctx.backend_name() << ": threads used " << distinct(scoped) << " / " << distinct(detached));
    // io_uring/epoll deal them out in turn over the 3 threads in run(); the IOCP port gives each start to
    // whichever thread waits in GetQueuedCompletionStatusEx, which may take a whole batch.
    if (std::string(ctx.backend_name()) != "iocp") {
        CHECK(distinct(scoped) >= 2);
        CHECK(distinct(detached) >= 2);
    }
}

TEST_CASE("error conditions compare across categories", "[error]") {
    std::error_code eof = coport::error::eof;
    CHECK(eof == coport::errc::eof);
    CHECK(eof.message() == "end of stream");
    std::error_code aborted = coport::error::operation_aborted;
    CHECK(aborted == coport::errc::operation_aborted);
    CHECK(std::make_error_code(std::errc::connection_reset) == coport::errc::connection_reset);
    coport::result<int> bad = coport::unexpected(std::error_code(coport::error::timed_out));
    CHECK(!bad);
    CHECK(bad.error() == coport::errc::timed_out);
    CHECK_THROWS_AS(bad.value(), std::system_error);
    coport::result<int> good = 3;
    CHECK(good.value() == 3);
    CHECK(good.value_or(9) == 3);
    CHECK(bad.value_or(9) == 9);
}
