// SPDX-License-Identifier: MIT
// Guard-page coroutine frames: every frame gets its own pages, and a freed frame is made inaccessible and
// never reused. Code that touches a frame after handing it to another thread (clang 14 may, when an
// await_suspend is inlined: LLVM #56301; or a library bug) then faults deterministically instead of
// corrupting memory silently. Runs cross-thread schedule(), timers cancelled from other threads, and TCP
// on several threads under that allocator.
#include <coport/coport.hpp>

#include "ready_tasks.hpp"
#include "support.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstdint>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#if defined(_WIN32)
#include <windows.h>
#else
#include <sys/mman.h>
#include <unistd.h>
#endif

using namespace std::chrono_literals;
using coport::io_context;
using coport::task;

namespace {

std::atomic<long> g_frames{0}, g_live{0};

std::size_t page_size() {
#if defined(_WIN32)
    SYSTEM_INFO si;
    GetSystemInfo(&si);
    return si.dwPageSize;
#else
    return static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
#endif
}

// The frame sits at the end of its pages (an overrun hits the next mapping's guard); 16-byte aligned.
void* guard_allocate(std::size_t n) {
    const std::size_t ps = page_size();
    const std::size_t need = (n + 15) & ~std::size_t(15);
    const std::size_t len = (need + ps - 1) / ps * ps;
#if defined(_WIN32)
    void* p = VirtualAlloc(nullptr, len, MEM_RESERVE | MEM_COMMIT, PAGE_READWRITE);
    if (!p) throw std::bad_alloc();
#else
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
#endif
    g_frames.fetch_add(1);
    g_live.fetch_add(1);
    return static_cast<char*>(p) + (len - need);
}

void guard_deallocate(void* q, std::size_t n) noexcept {
    const std::size_t ps = page_size();
    const std::size_t need = (n + 15) & ~std::size_t(15);
    const std::size_t len = (need + ps - 1) / ps * ps;
    void* p = static_cast<char*>(q) - (len - need);
#if defined(_WIN32)
    DWORD old;
    VirtualFree(p, len, MEM_DECOMMIT); // reserved, never handed out again: any touch faults
    (void)old;
#else
    madvise(p, len, MADV_DONTNEED);
    mprotect(p, len, PROT_NONE); // kept mapped so the address is never reused: any touch faults
#endif
    g_live.fetch_sub(1);
}

const coport::detail::frame_allocator g_guard{&guard_allocate, &guard_deallocate};

struct guard_frames {
    guard_frames() { coport::detail::frame_allocator_slot().store(&g_guard); }
    ~guard_frames() { coport::detail::frame_allocator_slot().store(nullptr); }
};

task<void> hopper(io_context& ctx, int hops, std::atomic<int>& done) {
    for (int i = 0; i < hops; ++i) co_await ctx.schedule();
    done.fetch_add(1);
}

task<int> leaf(io_context& ctx, int i) {
    co_await ctx.schedule(); // resumed on whichever thread: the parent's frame is published meanwhile
    co_return i;
}

task<void> parent(io_context& ctx, int n, std::atomic<long>& sum) {
    for (int i = 0; i < n; ++i) {
        int v = co_await leaf(ctx, i);
        sum.fetch_add(v);
    }
}

task<void> cancelled_sleeps(io_context& ctx, int n, std::atomic<int>& aborted) {
    for (int i = 0; i < n; ++i) {
        std::stop_source stop;
        std::thread t([&] { stop.request_stop(); }); // from a thread that does not run the context
        auto r = co_await ctx.sleep_for(10s, stop.get_token());
        t.join();
        if (r.error() == coport::errc::operation_aborted) aborted.fetch_add(1);
    }
}

task<bool> tcp_round_trips(io_context& ctx, int n) {
    auto l = coport::tcp_listener::bind(ctx, coport::endpoint(coport::ip_address::loopback_v4(), 0));
    if (!l) co_return false;
    auto c = co_await coport::tcp_socket::connect(ctx, "127.0.0.1", l->local_endpoint()->port());
    auto s = co_await l->accept();
    if (!c || !s) co_return false;
    char b[8] = {};
    for (int i = 0; i < n; ++i) {
        auto w = co_await c->send_all(coport::buffer("12345678", 8));
        auto r = co_await s->recv_exact(coport::buffer(b, 8));
        if (!w || !r) co_return false;
        co_await ctx.schedule();
    }
    co_return true;
}

} // namespace

TEST_CASE("guard-page frames: nothing touches a frame after publishing it to another thread", "[frames][threads]") {
    std::atomic<int> hopped{0}, aborted{0};
    std::atomic<long> sum{0};
    bool tcp_ok = false;
    {
        guard_frames guard;
        {
            io_context ctx;
            auto all = [&]() -> task<void> {
                coport::async_scope scope;
                for (int i = 0; i < 64; ++i) scope.spawn(hopper(ctx, 50, hopped));
                for (int i = 0; i < 8; ++i) scope.spawn(parent(ctx, 200, sum));
                scope.spawn(cancelled_sleeps(ctx, 100, aborted));
                co_await scope.join();
                tcp_ok = co_await tcp_round_trips(ctx, 500);
            };
            coport::thread_pool_runner pool(ctx, 3);
            auto g = ctx.make_work_guard();
            ctx.block_on(all());
            g.reset();
            pool.join();
        }
        CHECK(g_live.load() == 0); // every frame freed
    }
    INFO("frames allocated through the guard allocator: " << g_frames.load());
    CHECK(g_frames.load() > 1500); // the tasks above really went through it (send_all/recv_exact: no frame on Linux)
    CHECK(hopped.load() == 64);
    CHECK(sum.load() == 8L * (199 * 200 / 2));
    CHECK(aborted.load() == 100);
    CHECK(tcp_ok);
}

// --- the per-thread frame cache (detail/frame_cache.hpp) ------------------------------------------------
// Each scenario runs on a fresh thread (an empty cache) and reports back: Catch2 v2 assertions are for the
// main thread only. With the cache off (sanitizers, COPORT_NO_FRAME_CACHE) no thread ever holds a block.

namespace {

using coport::detail::frame_allocation;
using coport::detail::frame_cache;
using coport::detail::frame_cache_blocks;
using coport::detail::frame_cache_enabled;

using coport_test::add_one;
using coport_test::ready_sum;

// Out of line: a frame created and destroyed in one function may live on the stack (clang's coroutine heap
// allocation elision) and never reach the allocator.
[[gnu::noinline]] void destroy_frame(std::coroutine_handle<> h) { h.destroy(); }

// The address of a new add_one frame, destroyed at once.
void* add_one_frame_address(int x) {
    std::coroutine_handle<> h = add_one(x).release();
    void* a = h.address();
    destroy_frame(h);
    return a;
}

template <class F>
void on_new_thread(F f) {
    std::thread(f).join();
}

std::size_t exit_releases() { return coport::detail::frame_cache_exit_releases().load(); }

} // namespace

TEST_CASE("frame cache: a frame freed on a thread is reused by that thread's next frame of its size class",
          "[frames][cache]") {
    static_assert(frame_cache::size_class(200) == frame_cache::size_class(196));
    static_assert(frame_cache::size_class(200) != frame_cache::size_class(180));
    std::size_t fresh = 99, after_free = 99, after_reuse = 99, after_two = 99;
    bool same_block = false, other_class_same_block = true, same_frame = false;
    long sum = 0;
    std::size_t after_loop = 99;
    on_new_thread([&] {
        fresh = frame_cache_blocks();
        void* a = frame_allocation::operator new(200);
        frame_allocation::operator delete(a, 200);
        after_free = frame_cache_blocks();
        void* b = frame_allocation::operator new(196); // the same class: a's block
        same_block = a == b;
        after_reuse = frame_cache_blocks();
        void* c = frame_allocation::operator new(200); // nothing cached any more: a new block
        frame_allocation::operator delete(b, 196);
        void* d = frame_allocation::operator new(180); // another class: never b's block
        other_class_same_block = d == b;
        frame_allocation::operator delete(c, 200);
        frame_allocation::operator delete(d, 180);
        after_two = frame_cache_blocks();

        // Coroutine frames: the second add_one frame lives where the first one did.
        void* f1 = add_one_frame_address(1);
        void* f2 = add_one_frame_address(2);
        same_frame = f1 == f2;
        sum = coport::sync_wait(ready_sum(10000));
        after_loop = frame_cache_blocks();
    });
    CHECK(fresh == 0);
    CHECK(sum == 10000L * 10001 / 2);
    CHECK(after_loop <= frame_cache::slots);
    if (frame_cache_enabled) {
        CHECK_FALSE(other_class_same_block);
        CHECK(after_free == 1);
        CHECK(same_block);
        CHECK(after_reuse == 0);
        CHECK(after_two == 3); // b, c (class 208) and d (class 192)
        CHECK(same_frame);
        CHECK(after_loop >= 2); // at least the add_one and ready_sum frames' blocks
    } else {
        CHECK(after_free == 0);
        CHECK(after_two == 0);
        CHECK(after_loop == 0);
    }
}

TEST_CASE("frame cache: at most `slots` blocks per thread, none above max_size; a full miss frees one block",
          "[frames][cache]") {
    constexpr std::size_t g = frame_cache::granule;
    std::size_t after_five = 99, after_miss = 99, after_refill = 99, after_hit = 99, after_big = 99;
    bool hit_is_cached_block = false;
    on_new_thread([&] {
        void* p[frame_cache::slots + 1];
        constexpr std::size_t n = frame_cache::slots + 1;
        for (std::size_t i = 0; i < n; ++i) p[i] = frame_allocation::operator new((i + 1) * g);
        for (std::size_t i = 0; i < n; ++i) frame_allocation::operator delete(p[i], (i + 1) * g);
        after_five = frame_cache_blocks(); // the last one found every slot taken: freed
        void* q = frame_allocation::operator new(10 * g); // a miss with every slot taken
        after_miss = frame_cache_blocks();
        frame_allocation::operator delete(q, 10 * g);
        after_refill = frame_cache_blocks();
        // q's block is served again; then, with a slot free, a miss would leave the count alone. One block of
        // classes 1..slots was given up for q's (in turn from slot 0: class 1's), the others are still kept.
        void* q2 = frame_allocation::operator new(10 * g);
        hit_is_cached_block = q2 == q;
        void* r = frame_allocation::operator new(2 * g);
        hit_is_cached_block = hit_is_cached_block && r == p[1];
        after_hit = frame_cache_blocks();
        frame_allocation::operator delete(r, 2 * g);
        frame_allocation::operator delete(q2, 10 * g);
        void* big = frame_allocation::operator new(frame_cache::max_size + 1);
        frame_allocation::operator delete(big, frame_cache::max_size + 1);
        after_big = frame_cache_blocks();
    });
    if (frame_cache_enabled) {
        CHECK(after_five == frame_cache::slots);
        CHECK(after_miss == frame_cache::slots - 1);
        CHECK(after_refill == frame_cache::slots);
        CHECK(after_hit == frame_cache::slots - 2);
        CHECK(hit_is_cached_block);
        CHECK(after_big == frame_cache::slots); // the block above max_size was not kept
    } else {
        CHECK(after_five + after_miss + after_refill + after_hit + after_big == 0);
    }
}

TEST_CASE("frame cache: tasks made on one thread, run and destroyed on another; exiting threads free blocks",
          "[frames][cache][threads]") {
    constexpr int rounds = 2000, batch = 8;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::vector<task<int>>> queue;
    bool produced_all = false;
    std::size_t producer_blocks = 99, consumer_blocks = 99, consumer_max = 0;
    long sum = 0;
    const std::size_t released_before = exit_releases();
    std::thread producer([&] {
        for (int r = 0; r < rounds; ++r) {
            std::vector<task<int>> b;
            for (int i = 0; i < batch; ++i) b.push_back(add_one(i));
            std::lock_guard lock(m);
            queue.push_back(std::move(b));
            cv.notify_one();
        }
        {
            std::lock_guard lock(m);
            produced_all = true;
            cv.notify_one();
        }
        producer_blocks = frame_cache_blocks(); // it allocates, never frees: nothing to keep
    });
    std::thread consumer([&] {
        // A thread caches from its first frame allocation on; sync_wait's own frame may be elided (clang).
        sum += coport::sync_wait(ready_sum(1));
        for (;;) {
            std::vector<task<int>> b;
            {
                std::unique_lock lock(m);
                cv.wait(lock, [&] { return !queue.empty() || produced_all; });
                if (queue.empty()) break;
                b = std::move(queue.front());
                queue.pop_front();
            }
            for (auto& t : b) sum += coport::sync_wait(std::move(t));
            b.clear(); // the frames made by the producer are freed here
            consumer_max = std::max(consumer_max, frame_cache_blocks());
        }
        consumer_blocks = frame_cache_blocks();
    });
    producer.join();
    consumer.join();
    const std::size_t released = exit_releases() - released_before;
    CHECK(sum == 1 + rounds * (batch * (batch + 1) / 2));
    CHECK(producer_blocks == 0);
    CHECK(consumer_max <= frame_cache::slots);
    if (frame_cache_enabled) {
        CHECK(consumer_blocks > 0); // the producer's frames ended in the consumer's cache
        // Each exiting thread handed its blocks back (more if another thread of the process exited meanwhile)
        CHECK(released >= producer_blocks + consumer_blocks);
    } else {
        CHECK(consumer_blocks == 0);
        CHECK(released == 0);
    }
}

namespace {
// A thread_local constructed before the thread's first frame: destroyed after the cache's reaper (Linux),
// or, with mingw-w64, before the FLS callback that empties the cache. It destroys a frame then and makes
// one more. No members: mingw-w64 frees a thread_local's storage before its destructor runs (bug 527).
std::coroutine_handle<> g_late_frame;
std::size_t g_late_after_destroy = 99, g_late_after_new = 99;
struct late_frame_owner {
    late_frame_owner() noexcept {}
    ~late_frame_owner() {
        if (g_late_frame) destroy_frame(g_late_frame);
        g_late_after_destroy = frame_cache_blocks();
        destroy_frame(add_one(1).release());
        g_late_after_new = frame_cache_blocks();
    }
};
[[gnu::noinline]] void construct_late_frame_owner() {
    static thread_local late_frame_owner owner;
    asm volatile("" ::: "memory");
}
} // namespace

TEST_CASE("frame cache: frames freed by thread_local destructors after the cache was emptied: freed at once",
          "[frames][cache][threads]") {
    std::size_t before_exit = 99;
    const std::size_t released_before = exit_releases();
    on_new_thread([&] {
        construct_late_frame_owner(); // before any frame: its destructor runs after the reaper's
        long sum = coport::sync_wait(ready_sum(100));
        g_late_frame = add_one(sum > 0 ? 2 : 3).release(); // destroyed by late_frame_owner at thread exit
        before_exit = frame_cache_blocks();
    });
    const std::size_t released = exit_releases() - released_before;
    INFO("blocks before exit " << before_exit << ", in the late destructor " << g_late_after_destroy << " / "
                               << g_late_after_new << ", released at exit " << released);
    if (!frame_cache_enabled) {
        CHECK(before_exit + g_late_after_destroy + g_late_after_new + released == 0);
        return;
    }
    CHECK(before_exit > 0);
#if defined(_WIN32)
    // The FLS callback runs after the thread_local destructors and frees what they left.
    CHECK(g_late_after_destroy == std::min(before_exit + 1, frame_cache::slots));
    CHECK(released >= g_late_after_new);
#else
    // The reaper ran first and marked the cache dead: both frames went to operator delete.
    CHECK(released >= before_exit);
    CHECK(g_late_after_destroy == 0);
    CHECK(g_late_after_new == 0);
#endif
}

namespace {
std::atomic<long> g_hook_allocs{0}, g_hook_frees{0};
void* counting_allocate(std::size_t n) {
    g_hook_allocs.fetch_add(1);
    return ::operator new(n);
}
void counting_deallocate(void* p, std::size_t) noexcept {
    g_hook_frees.fetch_add(1);
    ::operator delete(p);
}
const coport::detail::frame_allocator g_counting{&counting_allocate, &counting_deallocate};
} // namespace

TEST_CASE("frame cache: an installed frame_allocator hook gets every frame; the cache is bypassed",
          "[frames][cache]") {
    std::size_t before = 99, after = 99;
    long sum = 0;
    on_new_thread([&] {
        sum = coport::sync_wait(ready_sum(10)); // fills this thread's cache
        before = frame_cache_blocks();
        coport::detail::frame_allocator_slot().store(&g_counting);
        sum += coport::sync_wait(ready_sum(1000));
        coport::detail::frame_allocator_slot().store(nullptr);
        after = frame_cache_blocks();
    });
    CHECK(sum == 55 + 1000L * 1001 / 2);
    CHECK(g_hook_allocs.load() >= 1001); // 1,000 add_one frames, ready_sum's (sync_wait's may be elided)
    CHECK(g_hook_frees.load() == g_hook_allocs.load());
    CHECK(after == before); // untouched while the hook was installed
    if (frame_cache_enabled) CHECK(before > 0);
}
