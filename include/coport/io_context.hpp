// SPDX-License-Identifier: MIT
#pragma once
/// \file io_context.hpp
/// `io_context`: the completion port. Operations (I/O, timers, schedule()) are started from coroutines
/// and complete on the threads that call `run()`.
///
/// Threads: `run()`, `run_one()` and `poll()` may be called from several threads at once (Windows: all
/// wait on one completion port; Linux: each thread drives its own io_uring ring). `post()`, `schedule()` and
/// `stop()` may be called from any thread.
///
/// The resumption rule, the same on every backend: a coroutine resumes on the thread that started the
/// operation it awaits. So a coroutine, and the children it awaits through `when_all`, `when_any` and
/// `with_timeout`, stay on the thread that started them, and two such children never run at the same time:
/// they may share state without a lock. A coroutine moves to another thread only on purpose: `co_await
/// ctx.schedule()`, `ctx.post()`, `spawn(ctx, t)`, `async_scope::spawn(ctx, t)` (each may start it on any
/// thread running the context; `spawn` takes them in turn), and `async_scope::join()` (resumes on the thread
/// that finished the last task). More precisely, each thread inside `run()` holds a worker of the context
/// while it is there, and an operation is owned by the worker of the thread that started it:
/// - Windows: any thread may take a completion from the port; one that is not the owner's hands it to the
///   owner's thread (and wakes it). Linux: the operation is on the owner's ring; nobody else sees it.
/// - A thread that leaves run() (block_on returned, run_one, poll) leaves its operations pending; the other
///   threads in run() resume them, one thread at a time, as if they were the owner (so the rule that no two
///   children run at once holds; which thread it is may change). With no thread in run(), they wait for the
///   next one. On Linux with io_uring, a thread that *ends* while operations it started are in flight has
///   them cancelled by the kernel: they complete with `errc::operation_aborted`. Keep threads that start
///   operations alive until they finish (thread_pool_runner's threads do).
/// - An operation started on a thread that does not run the context (a plain thread, sync_wait) is owned by
///   the first worker held by a thread, the same one for all such starts while the threads in run() stay.
/// Cost: on Linux nothing (a completion is already on its owner's ring), except an accept awaited away from
/// the thread whose ring holds the listener's multishot accept: handed over like a post. On Windows a
/// completion taken by another thread costs a lock and, when the owner sleeps, a user APC;
/// tests/test_resumption.cpp prints how many (docs/guide.md, "Threads", has the figures).
///
/// Outstanding work: every started operation, posted callable and `work_guard` counts. `run()` returns
/// when there is none left, or after `stop()`. Running out of work does not stop the context: post more
/// and run() again. After `stop()`, `restart()` is needed before run() does anything.
///
/// Destruction (and nothing else) ends operations for good: every operation still in flight is cancelled,
/// its completion is awaited, and its coroutine is resumed on the destroying thread with
/// `errc::operation_aborted`; operations started during that drain complete at once with the same error,
/// and queued work runs. No coroutine frame is destroyed by the context and none is leaked: frames belong
/// to their tasks. Precondition: no thread is inside `run()` for this context.
///
/// Exceptions: an exception thrown by a posted callable or a detached coroutine (`spawn`) leaves the
/// `run()` call of the thread that ran it.

#include <coport/detail/blocking_pool.hpp>
#include <coport/detail/stop_registration.hpp>
#include <coport/detail/child.hpp>
#include <coport/detail/context_base.hpp>
#include <coport/error.hpp>
#include <coport/result.hpp>
#include <coport/task.hpp>

#include <chrono>
#include <concepts>
#include <exception>
#include <memory>
#include <mutex>
#include <coroutine>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace coport {

namespace detail {
template <class F>
class run_blocking_awaiter;
/// What every backend's context provides (checked below for the chosen one).
template <class C>
concept backend_context = requires(C& c, const C& cc, work_item* w, const std::atomic<bool>& done) {
    { c.run() } -> std::same_as<std::size_t>;
    { c.run_one() } -> std::same_as<std::size_t>;
    { c.poll() } -> std::same_as<std::size_t>;
    { c.run_until(done) } -> std::same_as<std::size_t>;
    { c.run_until(done, w) } -> std::same_as<std::size_t>;
    c.stop();
    c.restart();
    c.wake_all();
    { cc.stopped() } -> std::same_as<bool>;
    c.post(w);
    c.post_spread(w);
    c.post_to(c.home(), w);
    c.work_started();
    c.work_finished();
    { c.running_in_this_thread() } -> std::same_as<bool>;
    { cc.name() } -> std::convertible_to<const char*>;
    { cc.features() } -> std::convertible_to<std::string>;
};
static_assert(backend_context<backend::context>);
} // namespace detail

class io_context {
public:
    using clock = std::chrono::steady_clock;

    /// Opens the completion port. Throws `std::system_error` if the OS refuses (e.g. io_uring blocked:
    /// the message names the reason; the code compares equal to `errc::not_supported` or
    /// `errc::permission_denied`).
    io_context() : io_context(io_context_options{}) {}
    explicit io_context(const io_context_options& opts)
        : m_impl(opts), m_owner(opts.single_thread ? std::this_thread::get_id() : std::thread::id{}) {}
    io_context(const io_context&) = delete;
    io_context& operator=(const io_context&) = delete;

    /// Runs handlers until out of work or stopped; returns how many ran.
    std::size_t run() { return check_thread(), m_impl.run(); }
    /// Blocks until at least one handler ran (runs at most one); 0 if out of work or stopped.
    std::size_t run_one() { return check_thread(), m_impl.run_one(); }
    /// Runs the handlers that are ready, without blocking.
    std::size_t poll() { return check_thread(), m_impl.poll(); }
    /// Makes every run() return as soon as possible. Operations stay pending (see the file comment).
    void stop() noexcept { m_impl.stop(); }
    [[nodiscard]] bool stopped() const noexcept { return m_impl.stopped(); }
    /// Clears the stopped state so that run() may be called again.
    void restart() noexcept { m_impl.restart(); }
    /// True if the calling thread is inside run()/run_one()/poll() of this context.
    [[nodiscard]] bool running_in_this_thread() noexcept { return m_impl.running_in_this_thread(); }
    /// "io_uring", "epoll" or "iocp".
    [[nodiscard]] const char* backend_name() const noexcept { return m_impl.name(); }
    /// What the backend runs with, for logs: io_uring's setup flags that the kernel took (e.g.
    /// "SUBMIT_ALL TASKRUN_FLAG SINGLE_ISSUER DEFER_TASKRUN"), or how epoll/IOCP wait.
    [[nodiscard]] std::string backend_features() const { return m_impl.features(); }

    /// Awaiter of schedule(): resumes the coroutine on a thread running this context.
    class schedule_awaiter {
    public:
        explicit schedule_awaiter(io_context& ctx) noexcept : m_ctx(&ctx) {}
        bool await_ready() const noexcept { return false; }
        [[gnu::noinline]] void await_suspend(std::coroutine_handle<> h) noexcept {
            m_item.m_handle = h;
            m_ctx->m_impl.post(&m_item); // published: do not touch *this any more
        }
        void await_resume() const noexcept {}

    private:
        io_context* m_ctx;
        detail::resume_item m_item;
    };
    /// `co_await ctx.schedule()` continues the coroutine on a thread running this context, after the
    /// work already queued. Callable from any thread. Never fails; during destruction it still resumes.
    [[nodiscard]] schedule_awaiter schedule() noexcept { return schedule_awaiter{*this}; }

    /// Queues `f()` to run on a thread running this context. Callable from any thread. An exception
    /// thrown by `f` leaves that thread's run().
    template <class F>
        requires std::invocable<std::decay_t<F>&>
    void post(F&& f) {
        m_impl.post(new detail::posted_callable<std::decay_t<F>>(std::forward<F>(f)));
    }

    /// `co_await ctx.sleep_for(d, st)`: resumes after `d` on a thread running this context, or earlier
    /// with `errc::operation_aborted` if `st` is stopped first (the timer is removed before the resume).
    /// Timers with equal deadlines started on the same thread fire in the order they were started.
    [[nodiscard]] detail::backend::sleep_awaiter sleep_for(clock::duration d, std::stop_token st = {}) noexcept {
        return detail::backend::sleep_awaiter(m_impl, clock::now() + d, std::move(st));
    }
    /// Like sleep_for, until the deadline `tp`.
    [[nodiscard]] detail::backend::sleep_awaiter sleep_until(clock::time_point tp, std::stop_token st = {}) noexcept {
        return detail::backend::sleep_awaiter(m_impl, tp, std::move(st));
    }

    /// Runs this context on the calling thread until `a` has finished, and returns its result (or
    /// rethrows its exception). Other threads may run the context at the same time. The awaitable starts
    /// on the calling thread, inside the run loop, and (by the resumption rule) its operations resume there
    /// while block_on runs. Works after stop() or when out of work.
    template <awaitable A>
    await_result_t<A> block_on(A&& a) {
        using R = await_result_t<A>;
        check_thread();
        struct done_latch final : detail::latch {
            explicit done_latch(io_context& c) noexcept : detail::latch(1, &on_done), ctx(c) {}
            io_context& ctx;
            std::atomic<bool> done{false};
            static void on_done(detail::latch* l) noexcept {
                auto* self = static_cast<done_latch*>(l);
                io_context& c = self->ctx;
                self->done.store(true, std::memory_order_release);
                c.m_impl.wake_all();
            }
        };
        detail::child<R> c = detail::make_child<A&&, R>(std::forward<A>(a)); // synchronous: a outlives c
        done_latch l(*this);
        struct starter final : detail::work_item {
            starter(detail::child<R>& c, done_latch& l) noexcept : work_item(&invoke), m_child(c), m_latch(l) {}
            static void invoke(detail::work_item* w) noexcept {
                auto* s = static_cast<starter*>(w);
                s->m_child.start(s->m_latch);
            }
            detail::child<R>& m_child;
            done_latch& m_latch;
        } start_item(c, l);
        // The starter runs first on this thread, inside its run loop: what the awaitable starts belongs to
        // this thread (the resumption rule) until block_on returns.
        m_impl.run_until(l.done, &start_item);
        while (!l.done.load(std::memory_order_acquire)) m_impl.run_until(l.done);
        return c.result().take();
    }

    /// `co_await ctx.run_blocking(f, st)` → `result<R>` (R: what `f()` returns; if that is a `result<X>`
    /// already, that `result<X>`, its errors beside `operation_aborted`): runs `f()` on the context's
    /// blocking pool (the threads name lookups use, at most 4: a call that blocks for long holds one of them)
    /// and resumes the coroutine on the thread that awaited it (the resumption rule) with its value. An
    /// exception thrown by `f` is rethrown by the co_await. Cancel: a stop request, or the context's
    /// destruction, resumes it at once with `errc::operation_aborted`; `f` itself cannot be interrupted and
    /// finishes in the background, its result dropped (so `f` must not refer to what the coroutine frees).
    template <class F>
        requires std::invocable<std::decay_t<F>&>
    [[nodiscard]] detail::run_blocking_awaiter<std::decay_t<F>> run_blocking(F&& f, std::stop_token st = {});

    /// The backend object (for the library's awaitables).
    detail::backend::context& native() noexcept { return m_impl; }
    /// Threads for blocking calls such as name resolution (for the library's awaitables).
    detail::blocking_pool& blocking() noexcept { return m_blocking; }

    /// Keeps run() from returning for lack of work while it exists (e.g. while other threads will post).
    class work_guard {
    public:
        explicit work_guard(io_context& ctx) noexcept : m_ctx(&ctx) { ctx.m_impl.work_started(); }
        work_guard(work_guard&& o) noexcept : m_ctx(std::exchange(o.m_ctx, nullptr)) {}
        work_guard& operator=(work_guard&&) = delete;
        ~work_guard() { reset(); }
        /// Drops the guard early.
        void reset() noexcept {
            if (m_ctx) std::exchange(m_ctx, nullptr)->m_impl.work_finished();
        }

    private:
        io_context* m_ctx;
    };
    [[nodiscard]] work_guard make_work_guard() noexcept { return work_guard{*this}; }

private:
    /// io_context_options::single_thread: only the constructing thread may run the context.
    void check_thread() const {
        if (m_owner != std::thread::id{} && m_owner != std::this_thread::get_id())
            throw std::logic_error("coport: a single_thread io_context runs only on the thread that constructed it");
    }

    detail::backend::context m_impl;
    std::thread::id m_owner; // single_thread: the constructing thread; otherwise none
    detail::blocking_pool m_blocking; // destroyed first: its unfinished jobs still post into m_impl
};

namespace detail {
struct detached_task {
    struct promise_type : frame_allocation {
        resume_item m_start;
        detached_task get_return_object() noexcept {
            return detached_task{std::coroutine_handle<promise_type>::from_promise(*this)};
        }
        std::suspend_always initial_suspend() const noexcept { return {}; }
        std::suspend_never final_suspend() const noexcept { return {}; }
        void unhandled_exception() noexcept {
            posted_callable<void (*)()>::report_exception(std::current_exception());
        }
        void return_void() noexcept {}
    };
    std::coroutine_handle<promise_type> m_handle;
};
inline detached_task run_detached(task<void> t) { co_await std::move(t); }
} // namespace detail

/// Starts `t` on a thread running `ctx` and forgets it. If `t` ends with an exception, that exception
/// leaves the run() call of the thread that finished it. For coroutines you need to wait for, use
/// async_scope (scope.hpp) instead. Successive spawns start on the threads running `ctx` in turn, so
/// that the coroutines (a server's sessions) spread over them; on io_uring/epoll a coroutine's
/// operations then complete on the thread it started on.
inline void spawn(io_context& ctx, task<void> t) {
    auto h = detail::run_detached(std::move(t)).m_handle;
    h.promise().m_start.m_handle = h;
    ctx.native().post_spread(&h.promise().m_start);
}

/// Runs `ctx.run()` on N threads. Until join() (or destruction) it holds a work_guard on `ctx`, so its
/// threads do not return for lack of work before there is any (Asio's thread_pool does the same); join()
/// releases it and waits until every thread's run() has returned (the remaining work done, or stop()).
/// The first exception that leaves a thread's run() is kept and rethrown by join().
class thread_pool_runner {
public:
    /// The seed's default: two threads per processor.
    static unsigned default_threads() noexcept {
        unsigned n = std::thread::hardware_concurrency();
        return n ? 2 * n : 2;
    }
    explicit thread_pool_runner(io_context& ctx, unsigned threads = default_threads());
    thread_pool_runner(const thread_pool_runner&) = delete;
    thread_pool_runner& operator=(const thread_pool_runner&) = delete;
    ~thread_pool_runner();
    /// Releases the pool's work_guard and waits for every thread's run() to return; rethrows the first
    /// exception one of them threw.
    void join();
    [[nodiscard]] std::size_t size() const noexcept { return m_threads.size(); }

private:
    void release_and_join() noexcept; // drops the guard and joins every thread

    std::optional<io_context::work_guard> m_guard;
    std::vector<std::thread> m_threads;
    std::mutex m_mutex;
    std::exception_ptr m_exception;
};

#if COPORT_DEFINE_ENGINE // see coport/detail/config.hpp
COPORT_DECL thread_pool_runner::thread_pool_runner(io_context& ctx, unsigned threads) : m_guard(std::in_place, ctx) {
    m_threads.reserve(threads);
    for (unsigned i = 0; i < threads; ++i)
        m_threads.emplace_back([this, &ctx] {
            try {
                ctx.run();
            } catch (...) {
                std::lock_guard lock(m_mutex);
                if (!m_exception) m_exception = std::current_exception();
            }
        });
}

COPORT_DECL thread_pool_runner::~thread_pool_runner() { release_and_join(); }

COPORT_DECL void thread_pool_runner::join() {
    release_and_join();
    if (m_exception) std::rethrow_exception(std::exchange(m_exception, nullptr));
}

COPORT_DECL void thread_pool_runner::release_and_join() noexcept {
    m_guard.reset();
    for (auto& t : m_threads)
        if (t.joinable()) t.join();
}
#endif // COPORT_DEFINE_ENGINE

namespace detail {
/// What a call on the blocking pool shares between the awaiting coroutine and the pool thread. The first
/// of {the call's answer, a stop request, the pool's abandon()} resumes the coroutine; the others are
/// dropped. `T` is a result<...>.
template <class T>
struct blocking_state {
    std::mutex mutex;
    std::optional<T> value;
    std::exception_ptr exception;
    resume_item item;
    io_context* ctx = nullptr;
    backend::worker* owner = nullptr; // resumes it: the thread that awaited (the resumption rule)
    bool armed = false;               // submitted: a stop may now resume the coroutine
    bool stop_pending = false;        // a stop came before that
    void on_stop() {
        {
            std::lock_guard lock(mutex);
            if (!armed) {
                stop_pending = true;
                return;
            }
        }
        finish(unexpected(make_error_code(error::operation_aborted)));
    }
    void arm() {
        bool stop;
        {
            std::lock_guard lock(mutex);
            armed = true;
            stop = stop_pending;
        }
        if (stop) finish(unexpected(make_error_code(error::operation_aborted)));
    }
    void finish(T v, std::exception_ptr e = nullptr) {
        {
            std::lock_guard lock(mutex);
            if (value) return;
            value.emplace(std::move(v));
            exception = std::move(e);
        }
        io_context* c = ctx;
        c->native().post_to(*owner, &item);
        c->native().work_finished();
    }
};

/// The pool job of run_blocking: `run()` makes the call; `abandon()` (the context is being destroyed) ends
/// the wait at once, after which a call still running drops its answer and touches nothing of the context.
template <class T, class F>
struct blocking_call final : blocking_job {
    blocking_call(std::shared_ptr<blocking_state<T>> st, F f) : m_st(std::move(st)), m_fn(std::move(f)) {}
    void run() override {
        std::optional<T> r;
        std::exception_ptr e;
        try {
            if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
                m_fn();
                r.emplace();
            } else {
                r.emplace(m_fn());
            }
        } catch (...) {
            e = std::current_exception();
            r.emplace(unexpected(make_error_code(error::operation_aborted))); // unused: await_resume rethrows e
        }
        std::lock_guard lock(m_mutex); // held across finish(): abandon() must not see it half done
        if (!m_abandoned) m_st->finish(std::move(*r), std::move(e));
    }
    void abandon() noexcept override {
        std::lock_guard lock(m_mutex);
        m_abandoned = true;
        m_st->finish(unexpected(make_error_code(error::operation_aborted)));
    }
    std::shared_ptr<blocking_state<T>> m_st;
    F m_fn;
    std::mutex m_mutex;
    bool m_abandoned = false;
};

/// What run_blocking gives for a function returning R: result<R>, or R itself when R is a result<X> already.
template <class R>
struct blocking_result {
    using type = result<R>;
};
template <class X>
struct blocking_result<result<X>> {
    using type = result<X>;
};

template <class F>
class run_blocking_awaiter {
    using R = std::invoke_result_t<F&>;
    using T = typename blocking_result<R>::type;

public:
    run_blocking_awaiter(io_context& ctx, F f, std::stop_token st)
        : m_ctx(&ctx), m_fn(std::move(f)), m_stop(std::move(st)) {}
    run_blocking_awaiter(const run_blocking_awaiter&) = delete;
    run_blocking_awaiter& operator=(const run_blocking_awaiter&) = delete;

    bool await_ready() const noexcept { return m_stop.stop_requested(); }
    [[gnu::noinline]] void await_suspend(std::coroutine_handle<> h) {
        auto st = std::make_shared<blocking_state<T>>();
        st->ctx = m_ctx;
        st->owner = &m_ctx->native().home();
        st->item.m_handle = h;
        m_state = st;
        io_context& ctx = *m_ctx;
        if (m_stop.stop_possible()) m_reg.emplace(m_stop, on_stop_fn{st.get()});
        ctx.native().work_started(); // the call is outstanding work: run() must not return meanwhile
        ctx.blocking().submit(std::make_unique<blocking_call<T, F>>(st, std::move(m_fn)));
        st->arm(); // published: only the local `st` from here
    }
    T await_resume() {
        if (!m_state) return unexpected(make_error_code(error::operation_aborted)); // stopped before it began
        m_reg.reset();
        std::lock_guard lock(m_state->mutex);
        if (m_state->exception) std::rethrow_exception(m_state->exception);
        return std::move(*m_state->value);
    }

private:
    struct on_stop_fn {
        blocking_state<T>* m_state;
        void operator()() const noexcept { m_state->on_stop(); }
    };
    io_context* m_ctx;
    F m_fn;
    std::stop_token m_stop;
    std::shared_ptr<blocking_state<T>> m_state;
    stop_registration<on_stop_fn> m_reg;
};
} // namespace detail

template <class F>
    requires std::invocable<std::decay_t<F>&>
detail::run_blocking_awaiter<std::decay_t<F>> io_context::run_blocking(F&& f, std::stop_token st) {
    return detail::run_blocking_awaiter<std::decay_t<F>>(*this, std::forward<F>(f), std::move(st));
}

} // namespace coport
