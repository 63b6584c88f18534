// SPDX-License-Identifier: MIT
// coport_frame_cache_tests: the per-thread frame cache never loses a block. A binary of its own because it
// replaces the global operator new/delete with counting ones: after threads that created, ran and destroyed
// frames (often on another thread than the one that made them) have exited, the number of live allocations
// is back where it was. With the cache off (the sanitizer builds, where LSan checks leaks instead, or
// COPORT_NO_FRAME_CACHE) the global operators are left alone and these cases skip.
#include <coport/coport.hpp>

#include "ready_tasks.hpp"
#include "support.hpp"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <new>
#include <optional>
#include <thread>
#include <vector>

using coport::task;
using coport::detail::frame_cache_blocks;

#if COPORT_DETAIL_FRAME_CACHE
namespace {
std::atomic<long> g_live{0};
}
// noinline: g++ would otherwise see the free() of a pointer from operator new once inlined (-Wmismatched-new-delete).
[[gnu::noinline]] void* operator new(std::size_t n) {
    void* p = std::malloc(n ? n : 1);
    if (!p) throw std::bad_alloc();
    g_live.fetch_add(1, std::memory_order_relaxed);
    return p;
}
[[gnu::noinline]] void operator delete(void* p) noexcept {
    if (!p) return;
    g_live.fetch_sub(1, std::memory_order_relaxed);
    std::free(p);
}
void operator delete(void* p, std::size_t) noexcept { ::operator delete(p); }
#define SKIP_WITHOUT_CACHE() (void)0
#else
#define SKIP_WITHOUT_CACHE()                                                                                 \
    COPORT_SKIP("the frame cache is off in this build (sanitizer or COPORT_NO_FRAME_CACHE)")
#endif

namespace {

using coport_test::add_one;
using coport_test::ready_sum;

long live_allocations() {
#if COPORT_DETAIL_FRAME_CACHE
    return g_live.load();
#else
    return 0;
#endif
}

// Producers make batches of tasks; consumers run them (sync_wait: frames of their own too) and destroy
// them; "destroyers" only destroy tasks (they never allocate a frame, so they never cache). Returns the sum
// of the results.
long churn(int pairs, int rounds) {
    constexpr int batch = 8;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::vector<task<int>>> to_run, to_destroy;
    int producers_left = pairs;
    std::atomic<long> sum{0};
    // The next batch of a queue, or nothing once it is empty and every producer has finished.
    auto pop = [&](std::deque<std::vector<task<int>>>& q) -> std::optional<std::vector<task<int>>> {
        std::unique_lock lock(m);
        cv.wait(lock, [&] { return !q.empty() || producers_left == 0; });
        if (q.empty()) return std::nullopt;
        std::vector<task<int>> b = std::move(q.front());
        q.pop_front();
        return b;
    };
    std::vector<std::thread> threads;
    for (int p = 0; p < pairs; ++p) {
        threads.emplace_back([&] {
            for (int r = 0; r < rounds; ++r) {
                std::vector<task<int>> b, d;
                for (int i = 0; i < batch; ++i) b.push_back(add_one(i));
                for (int i = 0; i < batch; ++i) d.push_back(add_one(i)); // never run
                std::lock_guard lock(m);
                to_run.push_back(std::move(b));
                to_destroy.push_back(std::move(d));
                cv.notify_all();
            }
            std::lock_guard lock(m);
            --producers_left;
            cv.notify_all();
        });
        threads.emplace_back([&] {
            while (auto b = pop(to_run)) {
                for (auto& t : *b) sum.fetch_add(coport::sync_wait(std::move(t)));
                sum.fetch_add(coport::sync_wait(ready_sum(3))); // and some frames of this thread's own
            }
        });
    }
    threads.emplace_back([&] {
        while (pop(to_destroy)) {
            // each batch (the optional pop returned) is destroyed here, outside the lock, never run
        }
    });
    for (auto& t : threads) t.join();
    return sum.load();
}

} // namespace

TEST_CASE("frame cache: a thread that exits with cached blocks frees them", "[frames][cache][alloc]") {
    SKIP_WITHOUT_CACHE();
    std::size_t held = 0;
    long sum = 0;
    std::thread([] { (void)coport::sync_wait(ready_sum(10)); }).join(); // warm-up: one-time allocations
    const long base = live_allocations();
    std::thread([&] {
        sum = coport::sync_wait(ready_sum(1000));
        held = frame_cache_blocks();
    }).join();
    const long after = live_allocations();
    CHECK(sum == 1000L * 1001 / 2);
    REQUIRE(held > 0);
    CHECK(after == base); // held more if the blocks stayed behind with the thread
}

TEST_CASE("frame cache: frames made, run and destroyed on different threads lose no block",
          "[frames][cache][alloc]") {
    SKIP_WITHOUT_CACHE();
    constexpr int pairs = 3, rounds = 2000;
    (void)churn(1, 10); // warm-up: one-time allocations
    const long base = live_allocations();
    const long sum = churn(pairs, rounds);
    const long after = live_allocations();
    CHECK(sum == pairs * rounds * (36L + 6));
    CHECK(frame_cache_blocks() == 0); // the main thread made no frame
    CHECK(after == base);
}
