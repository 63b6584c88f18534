// SPDX-License-Identifier: MIT
// micro: runtime micro-benchmarks, each coport figure next to the Asio equivalent (standalone Asio 1.22,
// C++20 coroutines), in one process. Each figure is the median of --reps runs, coport and Asio alternating.
//   post       cross-thread post: 1 and 4 threads post into a context run by 1 thread (posts/s)
//   schedule   a coroutine yielding through the run queue: co_await ctx.schedule() vs
//              co_await asio::post(ex, use_awaitable) (per s)
//   timer      schedule+cancel: 64 coroutines each wait 1 h; a driver cancels them round-robin and each
//              re-arms at once. coport: coport::timer::cancel(), and sleep_for with a fresh stop_source per
//              wait (the form with_timeout uses); Asio: steady_timer
//              expires_after + async_wait(use_awaitable), cancel() (and Asio with plain callbacks, for scale)
//   ready      co_await of a task that completes at once: coport::task<int> vs asio::awaitable<int> (ns)
// Run: micro [--reps 5] [--scale 1.0] [--only NAME]   (a Markdown table; ratio > 1: coport is faster)
#include <coport/coport.hpp>

#include <asio.hpp>
#include <asio/experimental/as_tuple.hpp> // Asio 1.22: as_tuple is still experimental

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace {

using steady = std::chrono::steady_clock;
constexpr auto use_nothrow_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

double seconds_since(steady::time_point t0, steady::time_point t1) { return std::chrono::duration<double>(t1 - t0).count(); }

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "micro: FAIL %s\n", what);
    std::exit(1);
}

// --- cross-thread post ------------------------------------------------------------------------------------

// Every posted callable counts; the last one stops the clock and lets run() return.
struct post_counter {
    long executed = 0; // runner thread only
    long total = 0;
    steady::time_point end;
};

double coport_post(int posters, long per_poster) {
    coport::io_context ctx;
    post_counter pc;
    pc.total = posters * per_poster;
    std::optional<coport::io_context::work_guard> guard;
    guard.emplace(ctx);
    std::atomic<bool> running{false}, go{false};
    ctx.post([&running] { running.store(true); });
    std::thread runner([&ctx] { ctx.run(); });
    while (!running.load()) std::this_thread::yield();
    std::vector<std::thread> ts;
    for (int p = 0; p < posters; ++p)
        ts.emplace_back([&] {
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            for (long i = 0; i < per_poster; ++i)
                ctx.post([c = &pc, g = &guard] {
                    if (++c->executed == c->total) {
                        c->end = steady::now();
                        g->reset();
                    }
                });
        });
    const auto t0 = steady::now();
    go.store(true, std::memory_order_release);
    for (auto& t : ts) t.join();
    runner.join();
    if (pc.executed != pc.total) fail("coport post: lost posts");
    return static_cast<double>(pc.total) / seconds_since(t0, pc.end);
}

double asio_post(int posters, long per_poster) {
    asio::io_context io(1);
    post_counter pc;
    pc.total = posters * per_poster;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard;
    guard.emplace(io.get_executor());
    std::atomic<bool> running{false}, go{false};
    asio::post(io, [&running] { running.store(true); });
    std::thread runner([&io] { io.run(); });
    while (!running.load()) std::this_thread::yield();
    std::vector<std::thread> ts;
    for (int p = 0; p < posters; ++p)
        ts.emplace_back([&] {
            while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
            for (long i = 0; i < per_poster; ++i)
                asio::post(io, [c = &pc, g = &guard] {
                    if (++c->executed == c->total) {
                        c->end = steady::now();
                        g->reset();
                    }
                });
        });
    const auto t0 = steady::now();
    go.store(true, std::memory_order_release);
    for (auto& t : ts) t.join();
    runner.join();
    if (pc.executed != pc.total) fail("asio post: lost posts");
    return static_cast<double>(pc.total) / seconds_since(t0, pc.end);
}

// --- schedule(): yield through the run queue ----------------------------------------------------------------

coport::task<void> coport_yielder(coport::io_context& ctx, long n) {
    for (long i = 0; i < n; ++i) co_await ctx.schedule();
}

double coport_schedule(long n) {
    coport::io_context ctx;
    const auto t0 = steady::now();
    ctx.block_on(coport_yielder(ctx, n));
    return static_cast<double>(n) / seconds_since(t0, steady::now());
}

asio::awaitable<void> asio_yielder(long n) {
    auto ex = co_await asio::this_coro::executor;
    for (long i = 0; i < n; ++i) co_await asio::post(ex, asio::use_awaitable);
}

double asio_schedule(long n) {
    asio::io_context io(1);
    const auto t0 = steady::now();
    asio::co_spawn(io, asio_yielder(n), asio::detached);
    io.run();
    return static_cast<double>(n) / seconds_since(t0, steady::now());
}

// --- timer schedule + cancel ------------------------------------------------------------------------------

constexpr std::size_t timer_slots = 64;

struct timer_shared {
    long armed = 0;
    long cancelled = 0;
    bool stop = false;
    steady::time_point t0, t1;
};

coport::task<void> coport_timer_waiter(coport::io_context& ctx, std::stop_source& src, timer_shared& sh) {
    for (;;) {
        src = std::stop_source{}; // a stop_source cannot be reset: one per cancellable wait
        std::stop_token token = src.get_token();
        auto r = co_await ctx.sleep_for(std::chrono::hours(1), token);
        if (r) fail("coport timer fired instead of being cancelled");
        ++sh.cancelled;
        if (sh.stop) co_return;
    }
}

coport::task<void> coport_timer_driver(coport::io_context& ctx, long total, timer_shared& sh) {
    std::vector<std::stop_source> srcs(timer_slots);
    coport::async_scope scope;
    for (auto& s : srcs) scope.spawn(coport_timer_waiter(ctx, s, sh)); // runs until its sleep is armed
    long done = 0;
    sh.t0 = steady::now();
    while (done < total) {
        for (auto& s : srcs) s.request_stop();
        done += static_cast<long>(srcs.size());
        while (sh.cancelled < done) co_await ctx.schedule(); // every waiter has resumed and re-armed
    }
    sh.t1 = steady::now();
    sh.stop = true;
    for (auto& s : srcs) s.request_stop();
    co_await scope.join();
}

double coport_timer(long total) {
    coport::io_context ctx;
    timer_shared sh;
    ctx.block_on(coport_timer_driver(ctx, total, sh));
    return static_cast<double>(sh.cancelled - static_cast<long>(timer_slots)) / seconds_since(sh.t0, sh.t1);
}

// The same with coport::timer, cancelled by timer::cancel() like Asio's steady_timer.
coport::task<void> coport_cancel_timer_waiter(coport::timer& t, timer_shared& sh) {
    for (;;) {
        auto r = co_await t.wait_for(std::chrono::hours(1));
        if (r) fail("coport timer fired instead of being cancelled");
        ++sh.cancelled;
        if (sh.stop) co_return;
    }
}

coport::task<void> coport_cancel_timer_driver(coport::io_context& ctx, long total, timer_shared& sh) {
    std::vector<std::unique_ptr<coport::timer>> timers;
    coport::async_scope scope;
    for (std::size_t i = 0; i < timer_slots; ++i) {
        timers.push_back(std::make_unique<coport::timer>(ctx));
        scope.spawn(coport_cancel_timer_waiter(*timers.back(), sh)); // runs until its wait is armed
    }
    long done = 0;
    sh.t0 = steady::now();
    while (done < total) {
        for (auto& t : timers)
            if (t->cancel() != 1) fail("coport timer::cancel found no wait");
        done += static_cast<long>(timers.size());
        while (sh.cancelled < done) co_await ctx.schedule(); // every waiter has resumed and re-armed
    }
    sh.t1 = steady::now();
    sh.stop = true;
    for (auto& t : timers) t->cancel();
    co_await scope.join();
}

double coport_cancel_timer(long total) {
    coport::io_context ctx;
    timer_shared sh;
    ctx.block_on(coport_cancel_timer_driver(ctx, total, sh));
    return static_cast<double>(sh.cancelled - static_cast<long>(timer_slots)) / seconds_since(sh.t0, sh.t1);
}

asio::awaitable<void> asio_timer_waiter(asio::steady_timer& t, timer_shared& sh) {
    for (;;) {
        t.expires_after(std::chrono::hours(1));
        ++sh.armed;
        auto [ec] = co_await t.async_wait(use_nothrow_awaitable);
        if (!ec) fail("asio timer fired instead of being cancelled");
        ++sh.cancelled;
        if (sh.stop) co_return;
    }
}

asio::awaitable<void> asio_timer_driver(long total, timer_shared& sh) {
    auto ex = co_await asio::this_coro::executor;
    std::vector<std::unique_ptr<asio::steady_timer>> timers;
    for (std::size_t i = 0; i < timer_slots; ++i) {
        timers.push_back(std::make_unique<asio::steady_timer>(ex));
        asio::co_spawn(ex, asio_timer_waiter(*timers.back(), sh), asio::detached);
    }
    while (sh.armed < static_cast<long>(timer_slots)) co_await asio::post(ex, asio::use_awaitable);
    long done = 0;
    sh.t0 = steady::now();
    while (done < total) {
        for (auto& t : timers) t->cancel();
        done += static_cast<long>(timers.size());
        while (sh.cancelled < done) co_await asio::post(ex, asio::use_awaitable);
    }
    sh.t1 = steady::now();
    sh.stop = true;
    for (auto& t : timers) t->cancel();
    while (sh.cancelled < done + static_cast<long>(timer_slots)) co_await asio::post(ex, asio::use_awaitable);
}

double asio_timer(long total) {
    asio::io_context io(1);
    timer_shared sh;
    asio::co_spawn(io, asio_timer_driver(total, sh), asio::detached);
    io.run();
    return static_cast<double>(sh.cancelled - static_cast<long>(timer_slots)) / seconds_since(sh.t0, sh.t1);
}

// Asio's cheapest form: completion handlers, no coroutines.
struct callback_timer {
    asio::steady_timer t;
    timer_shared* sh;
    explicit callback_timer(asio::io_context& io, timer_shared* s) : t(io), sh(s) {}
    void arm() {
        t.expires_after(std::chrono::hours(1));
        t.async_wait([this](std::error_code ec) {
            if (!ec) fail("asio timer fired instead of being cancelled");
            ++sh->cancelled;
            if (!sh->stop) arm();
        });
    }
};

double asio_callback_timer(long total) {
    asio::io_context io(1);
    timer_shared sh;
    std::vector<std::unique_ptr<callback_timer>> timers;
    for (std::size_t i = 0; i < timer_slots; ++i) {
        timers.push_back(std::make_unique<callback_timer>(io, &sh));
        timers.back()->arm();
    }
    long done = 0;
    sh.t0 = steady::now();
    while (done < total) {
        for (auto& t : timers) t->t.cancel();
        done += static_cast<long>(timers.size());
        while (sh.cancelled < done) io.run_one();
    }
    sh.t1 = steady::now();
    sh.stop = true;
    for (auto& t : timers) t->t.cancel();
    io.run();
    return static_cast<double>(sh.cancelled - static_cast<long>(timer_slots)) / seconds_since(sh.t0, sh.t1);
}

// --- co_await of a ready task -----------------------------------------------------------------------------

coport::task<int> coport_ready_value(int x) { co_return x + 1; }

coport::task<long> coport_ready_loop(long n) {
    long sum = 0;
    for (long i = 0; i < n; ++i) sum += co_await coport_ready_value(static_cast<int>(i));
    co_return sum;
}

volatile long g_sink;

double coport_ready(long n) {
    const auto t0 = steady::now();
    g_sink = coport::sync_wait(coport_ready_loop(n));
    return seconds_since(t0, steady::now()) * 1e9 / static_cast<double>(n);
}

asio::awaitable<int> asio_ready_value(int x) { co_return x + 1; }

asio::awaitable<long> asio_ready_loop(long n) {
    long sum = 0;
    for (long i = 0; i < n; ++i) sum += co_await asio_ready_value(static_cast<int>(i));
    co_return sum;
}

double asio_ready(long n) {
    asio::io_context io(1);
    const auto t0 = steady::now();
    asio::co_spawn(io, asio_ready_loop(n), [](std::exception_ptr e, long sum) {
        if (e) fail("asio ready loop threw");
        g_sink = sum;
    });
    io.run();
    return seconds_since(t0, steady::now()) * 1e9 / static_cast<double>(n);
}

// ---------------------------------------------------------------------------------------------------------

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

struct row {
    std::string name, unit;
    double coport, asio;
    bool lower_is_better;
};

} // namespace

int main(int argc, char** argv) {
    int reps = 5;
    double scale = 1.0;
    std::string only; // a substring of the benchmark names (for profiling one of them)
    for (int i = 1; i + 1 < argc; i += 2) {
        if (std::strcmp(argv[i], "--reps") == 0) reps = std::max(1, std::atoi(argv[i + 1]));
        else if (std::strcmp(argv[i], "--scale") == 0) scale = std::atof(argv[i + 1]);
        else if (std::strcmp(argv[i], "--only") == 0) only = argv[i + 1];
        else {
            std::fprintf(stderr, "usage: micro [--reps N] [--scale X] [--only NAME-SUBSTRING]\n");
            return 2;
        }
    }
    auto n = [scale](double base) { return std::max(1000L, static_cast<long>(base * scale)); };
    // Every real coport or Asio program has threads (runners, the resolver's pool), and libstdc++ takes other
    // paths once a process has started one (e.g. std::stop_source::request_stop then makes a futex wake
    // call per callback). Start one now so that every figure is measured in that state, whatever --only picks.
    std::thread([] {}).join();

    std::vector<row> rows;
    auto measure = [&](const char* name, const char* unit, bool lower, const std::function<double()>& c,
                       const std::function<double()>& a) {
        if (!only.empty() && std::string(name).find(only) == std::string::npos) return;
        std::vector<double> cv, av;
        for (int r = 0; r < reps; ++r) {
            cv.push_back(c());
            av.push_back(a());
        }
        rows.push_back({name, unit, median(cv), median(av), lower});
    };
    measure("cross-thread post, 1 posting thread", "posts/s", false, [&] { return coport_post(1, n(1e6)); },
            [&] { return asio_post(1, n(1e6)); });
    measure("cross-thread post, 4 posting threads", "posts/s", false, [&] { return coport_post(4, n(2.5e5)); },
            [&] { return asio_post(4, n(2.5e5)); });
    measure("schedule() (vs asio::post(ex, use_awaitable))", "resumptions/s", false,
            [&] { return coport_schedule(n(2e6)); }, [&] { return asio_schedule(n(2e6)); });
    measure("timer schedule+cancel: coport::timer (vs steady_timer, awaitable)", "timers/s", false,
            [&] { return coport_cancel_timer(n(1e6)); }, [&] { return asio_timer(n(1e6)); });
    measure("timer schedule+cancel: coport::timer (vs steady_timer, callback)", "timers/s", false,
            [&] { return coport_cancel_timer(n(1e6)); }, [&] { return asio_callback_timer(n(1e6)); });
    measure("timer schedule+cancel: sleep_for + stop_source (vs steady_timer, awaitable)", "timers/s", false,
            [&] { return coport_timer(n(1e6)); }, [&] { return asio_timer(n(1e6)); });
    measure("co_await ready task<int> (vs awaitable<int>)", "ns", true, [&] { return coport_ready(n(1e7)); },
            [&] { return asio_ready(n(1e7)); });

    std::printf("| micro-benchmark | unit | coport | Asio | coport speed / Asio speed |\n");
    std::printf("|---|---|---:|---:|---:|\n");
    for (const row& r : rows) {
        const double ratio = r.lower_is_better ? r.asio / r.coport : r.coport / r.asio;
        if (r.lower_is_better)
            std::printf("| %s | %s | %.1f | %.1f | %.2f |\n", r.name.c_str(), r.unit.c_str(), r.coport, r.asio, ratio);
        else
            std::printf("| %s | %s | %.3g | %.3g | %.2f |\n", r.name.c_str(), r.unit.c_str(), r.coport, r.asio, ratio);
    }
    std::printf("\n(median of %d runs each, coport and Asio alternating; 1 thread runs each context)\n", reps);
    return 0;
}
