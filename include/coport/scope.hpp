// SPDX-License-Identifier: MIT
#pragma once
/// \file scope.hpp
/// `async_scope`: structured concurrency for coroutines started without being awaited.
///
///     async_scope scope;
///     scope.spawn(handle(std::move(conn)));   // starts now, runs concurrently
///     ...
///     co_await scope.join();                   // resumes when every spawned task has finished
///
/// - `spawn` runs the task on the calling thread until its first suspension, then wherever it resumes.
/// - `join()` may be awaited once; spawning after join() has been awaited is a precondition violation.
/// - The first exception thrown by a spawned task is kept and rethrown by `join()`; later ones are dropped
///   (count them with `exceptions()`).
/// - The scope must outlive its tasks: destroying it before `join()` completed is a bug (asserted).
/// - Stopping: the scope owns a `std::stop_source`. Give `get_stop_token()` to what its tasks wait on
///   (every coport operation takes a token); `request_stop()` then ends those waits with
///   `errc::operation_aborted`, and `join()` resumes once the tasks have returned.

#include <coport/detail/context_base.hpp>
#include <coport/task.hpp>

#include <atomic>
#include <cassert>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <mutex>
#include <stop_token>

namespace coport {

class async_scope {
public:
    async_scope() noexcept = default;
    async_scope(const async_scope&) = delete;
    async_scope& operator=(const async_scope&) = delete;
    ~async_scope() { assert(m_count.load(std::memory_order_acquire) == (m_joined ? 0u : 1u)); }

    /// Starts `t` now, on this thread; it keeps the scope open until it finishes.
    void spawn(task<void> t) {
        m_count.fetch_add(1, std::memory_order_relaxed);
        run(this, std::move(t)).m_handle.resume();
    }
    /// Starts `t` on a thread running `ctx` (an io_context), the threads taken in turn like
    /// coport::spawn(ctx, t), so that a server's sessions spread over the threads of one context; it
    /// keeps the scope open until it finishes. Returns before `t` runs.
    template <class Context>
    void spawn(Context& ctx, task<void> t) {
        m_count.fetch_add(1, std::memory_order_relaxed);
        auto h = run(this, std::move(t)).m_handle;
        h.promise().m_start.m_handle = h;
        ctx.native().post_spread(&h.promise().m_start);
    }

    class join_awaiter {
    public:
        explicit join_awaiter(async_scope& s) noexcept : m_scope(&s) {}
        bool await_ready() const noexcept { return false; }
        [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> h) noexcept {
            async_scope* s = m_scope;
            s->m_joined = true;
            s->m_joiner = h;
            return s->m_count.fetch_sub(1, std::memory_order_acq_rel) != 1;
        }
        void await_resume() const {
            if (m_scope->m_exception) std::rethrow_exception(m_scope->m_exception);
        }

    private:
        async_scope* m_scope;
    };
    /// Resumes when every spawned task has finished (on the thread that finished the last one).
    [[nodiscard]] join_awaiter join() noexcept { return join_awaiter{*this}; }

    /// The token that request_stop() stops: pass it to the spawned tasks' operations.
    [[nodiscard]] std::stop_token get_stop_token() const noexcept { return m_stop.get_token(); }
    /// Asks every task holding get_stop_token() to stop (any thread). True if this call made the request.
    bool request_stop() noexcept { return m_stop.request_stop(); }
    [[nodiscard]] bool stop_requested() const noexcept { return m_stop.stop_requested(); }

    /// Number of tasks still running.
    [[nodiscard]] std::size_t active() const noexcept {
        std::size_t n = m_count.load(std::memory_order_acquire);
        return m_joined ? n : n - 1;
    }
    /// Number of spawned tasks that ended with an exception.
    [[nodiscard]] std::size_t exceptions() const noexcept { return m_exception_count.load(); }

private:
    struct detached {
        struct promise_type : detail::frame_allocation {
            promise_type(async_scope* s, task<void>&) noexcept : m_scope(s) {}
            async_scope* m_scope;
            detail::resume_item m_start; // spawn(ctx, t): its first resumption, queued on ctx
            detached get_return_object() noexcept {
                return detached{std::coroutine_handle<promise_type>::from_promise(*this)};
            }
            std::suspend_always initial_suspend() const noexcept { return {}; }
            struct final_awaiter {
                bool await_ready() const noexcept { return false; }
                [[gnu::noinline]] void await_suspend(std::coroutine_handle<promise_type> h) noexcept {
                    async_scope* s = h.promise().m_scope;
                    h.destroy();
                    s->arrive();
                }
                void await_resume() const noexcept {}
            };
            final_awaiter final_suspend() const noexcept { return {}; }
            void unhandled_exception() noexcept { m_scope->record(std::current_exception()); }
            void return_void() noexcept {}
        };
        std::coroutine_handle<promise_type> m_handle;
    };

    static detached run([[maybe_unused]] async_scope* self, task<void> t) { // self: for promise_type
        co_await std::move(t);
    }
    void arrive() noexcept {
        if (m_count.fetch_sub(1, std::memory_order_acq_rel) == 1) m_joiner.resume();
    }
    void record(std::exception_ptr e) noexcept {
        m_exception_count.fetch_add(1, std::memory_order_relaxed);
        std::lock_guard lock(m_mutex);
        if (!m_exception) m_exception = std::move(e);
    }

    std::atomic<std::size_t> m_count{1};
    std::atomic<std::size_t> m_exception_count{0};
    std::coroutine_handle<> m_joiner;
    bool m_joined = false;
    std::mutex m_mutex;
    std::exception_ptr m_exception;
    std::stop_source m_stop;
};

} // namespace coport
