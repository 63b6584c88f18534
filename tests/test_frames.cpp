// SPDX-License-Identifier: MIT
// Guard-page coroutine frames: every frame gets its own pages, and a freed frame is made inaccessible and
// never reused. Code that touches a frame after handing it to another thread (the clang 14 bug of
// COMPILERS.md, LLVM #56301, or a library bug breaking its rule 2) then faults deterministically instead of
// corrupting memory silently. Runs cross-thread schedule(), timers cancelled from other threads, and TCP
// on several threads under that allocator.
#include <coport/coport.hpp>

#include "support.hpp"

#include <atomic>
#include <chrono>
#include <cstdint>
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
