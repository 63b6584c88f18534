// SPDX-License-Identifier: MIT
#pragma once
// Backend-neutral pieces of an io_context: queued work items, the timer heap, the per-thread slot that
// carries an exception out of a detached coroutine to run().

#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <exception>
#include <utility>
#include <vector>
#include <atomic>
#include <cstdio>
#include <mutex>

namespace coport::detail {

using clock = std::chrono::steady_clock;

/// An intrusive node of a run queue: posted callables, schedule() resumptions, and backend control
/// messages (start this operation, cancel that one) all travel as work items.
struct work_item {
    using run_fn = void (*)(work_item*) noexcept;
    explicit work_item(run_fn fn) noexcept : m_run(fn) {}
    work_item* m_next = nullptr;
    run_fn m_run;
    bool m_counted = false; // set by io_context::post: finishing it ends one unit of outstanding work
    void run() noexcept { m_run(this); }
};

/// Intrusive FIFO. Not thread-safe.
class work_queue {
public:
    work_queue() noexcept = default;
    work_queue(work_queue&& o) noexcept : m_head(std::exchange(o.m_head, nullptr)), m_tail(std::exchange(o.m_tail, nullptr)) {}
    work_queue& operator=(work_queue&& o) noexcept {
        m_head = std::exchange(o.m_head, nullptr);
        m_tail = std::exchange(o.m_tail, nullptr);
        return *this;
    }
    [[nodiscard]] bool empty() const noexcept { return m_head == nullptr; }
    void push(work_item* w) noexcept {
        w->m_next = nullptr;
        if (m_tail) m_tail->m_next = w;
        else m_head = w;
        m_tail = w;
    }
    void splice(work_queue& o) noexcept {
        if (o.empty()) return;
        if (m_tail) m_tail->m_next = o.m_head;
        else m_head = o.m_head;
        m_tail = o.m_tail;
        o.m_head = o.m_tail = nullptr;
    }
    work_item* pop() noexcept {
        work_item* w = m_head;
        if (w) {
            m_head = w->m_next;
            if (!m_head) m_tail = nullptr;
            w->m_next = nullptr;
        }
        return w;
    }

private:
    work_item* m_head = nullptr;
    work_item* m_tail = nullptr;
};

/// Runs the items in `q` now, at most `budget` of them, each through `run(item)`; items that these queue wait
/// for the next call (after the backend has looked at its I/O), and what the budget left stays first in line.
/// Returns how many ran. Both backends' run loops use it for their worker's local queue.
template <class Run>
std::size_t run_batch(work_queue& q, std::size_t budget, Run run) noexcept {
    std::size_t n = 0;
    work_queue batch = std::move(q);
    while (n < budget) {
        work_item* w = batch.pop();
        if (!w) break;
        ++n;
        run(w);
    }
    if (!batch.empty()) {
        batch.splice(q);
        q = std::move(batch);
    }
    return n;
}

/// A heap-allocated posted callable.
template <class F>
struct posted_callable final : work_item {
    explicit posted_callable(F&& f) : work_item(&invoke), m_fn(std::move(f)) {}
    static void invoke(work_item* w) noexcept {
        auto* self = static_cast<posted_callable*>(w);
        F fn = std::move(self->m_fn);
        delete self;
        try {
            fn();
        } catch (...) {
            report_exception(std::current_exception());
        }
    }
    F m_fn;
    static void report_exception(std::exception_ptr e) noexcept;
};

/// Exceptions that must leave run() on this thread (from a detached coroutine or a posted callable),
/// oldest first. noinline + asm barrier: clang 14 may cache thread-local addresses across a coroutine's
/// suspension (LLVM #47177); the queue is only ever reached through this function.
/// The thread_local itself is a plain pointer (trivially destructible), the queue exists only while an
/// exception is pending: mingw-w64 frees a thread_local's emutls storage before running its destructor
/// at thread exit (mingw-w64 bug 527, GCC PR 80816), so a thread_local std::deque corrupts the heap
/// whenever a thread that ran a loop exits.
[[gnu::noinline]] inline std::deque<std::exception_ptr>*& pending_exceptions_slot() noexcept {
    static thread_local std::deque<std::exception_ptr>* q = nullptr;
    asm volatile("" ::: "memory");
    return q;
}
template <class F>
void posted_callable<F>::report_exception(std::exception_ptr e) noexcept {
    try {
        auto*& q = pending_exceptions_slot();
        if (!q) q = new std::deque<std::exception_ptr>;
        q->push_back(std::move(e));
    } catch (...) {
        std::terminate(); // out of memory while reporting an exception
    }
}
/// Called by run loops between turns: rethrows the oldest pending exception out of run().
inline void rethrow_pending_exception() {
    auto*& q = pending_exceptions_slot();
    if (q) [[unlikely]] {
        std::exception_ptr e = std::move(q->front());
        q->pop_front();
        if (q->empty()) {
            delete q;
            q = nullptr;
        }
        std::rethrow_exception(e);
    }
}

/// A timer waiting in a heap. `m_index` is its position (for O(log n) removal on cancel).
/// Where coport::timer::cancel() reaches the timer's wait in progress. The wait attaches itself before it
/// starts and detaches before it returns its result; cancel() holds the lock while it asks the operation
/// to cancel, so it never touches a finished operation. A backend's request_cancel never resumes the
/// coroutine inline (it queues or posts the completion), so it never re-enters this lock.
class cancel_slot {
public:
    using cancel_fn = void (*)(void*) noexcept;
    void attach(void* op, cancel_fn fn) noexcept {
        std::lock_guard lock(m_mutex);
        m_op = op;
        m_fn = fn;
    }
    void detach() noexcept {
        std::lock_guard lock(m_mutex);
        m_op = nullptr;
    }
    /// 1 if a wait was attached (it is now asked to cancel), else 0.
    std::size_t cancel() noexcept {
        std::lock_guard lock(m_mutex);
        if (!m_op) return 0;
        m_fn(std::exchange(m_op, nullptr));
        return 1;
    }

private:
    std::mutex m_mutex;
    void* m_op = nullptr;
    cancel_fn m_fn = nullptr;
};

struct timer_node {
    clock::time_point m_deadline;
    std::uint64_t m_seq = 0; // ties broken by start order: equal deadlines fire in order
    std::size_t m_index = npos;
    static constexpr std::size_t npos = static_cast<std::size_t>(-1);
    [[nodiscard]] bool queued() const noexcept { return m_index != npos; }
};

/// Min-heap of timers by (deadline, start order). Not thread-safe.
class timer_heap {
public:
    [[nodiscard]] bool empty() const noexcept { return m_heap.empty(); }
    [[nodiscard]] std::size_t size() const noexcept { return m_heap.size(); }
    [[nodiscard]] timer_node* top() const noexcept { return m_heap.empty() ? nullptr : m_heap.front(); }
    void push(timer_node* t) {
        t->m_seq = m_next_seq++;
        t->m_index = m_heap.size();
        m_heap.push_back(t);
        up(t->m_index);
    }
    void remove(timer_node* t) noexcept {
        std::size_t i = t->m_index;
        std::size_t last = m_heap.size() - 1;
        if (i != last) {
            place(i, m_heap[last]);
            m_heap.pop_back();
            if (!up(i)) down(i);
        } else {
            m_heap.pop_back();
        }
        t->m_index = timer_node::npos;
    }
    timer_node* pop() noexcept {
        timer_node* t = top();
        if (t) remove(t);
        return t;
    }

private:
    static bool less(const timer_node* a, const timer_node* b) noexcept {
        return a->m_deadline < b->m_deadline || (a->m_deadline == b->m_deadline && a->m_seq < b->m_seq);
    }
    void place(std::size_t i, timer_node* t) noexcept {
        m_heap[i] = t;
        t->m_index = i;
    }
    bool up(std::size_t i) noexcept {
        timer_node* t = m_heap[i];
        std::size_t start = i;
        while (i > 0) {
            std::size_t p = (i - 1) / 2;
            if (!less(t, m_heap[p])) break;
            place(i, m_heap[p]);
            i = p;
        }
        place(i, t);
        return i != start;
    }
    void down(std::size_t i) noexcept {
        timer_node* t = m_heap[i];
        std::size_t n = m_heap.size();
        for (;;) {
            std::size_t c = 2 * i + 1;
            if (c >= n) break;
            if (c + 1 < n && less(m_heap[c + 1], m_heap[c])) ++c;
            if (!less(m_heap[c], t)) break;
            place(i, m_heap[c]);
            i = c;
        }
        place(i, t);
    }
    std::vector<timer_node*> m_heap;
    std::uint64_t m_next_seq = 0;
};

/// Resumes a coroutine as a work item (schedule(), and timers' and operations' completions).
struct resume_item final : work_item {
    resume_item() noexcept : work_item(&invoke) {}
    std::coroutine_handle<> m_handle;
    static void invoke(work_item* w) noexcept { static_cast<resume_item*>(w)->m_handle.resume(); }
};

} // namespace coport::detail

namespace coport {
/// Which I/O backend an io_context uses.
enum class backend_kind {
    automatic, ///< Windows: IOCP. Linux: io_uring, or epoll where io_uring is refused (env COPORT_BACKEND overrides)
    io_uring,  ///< Linux io_uring; construction fails if the kernel refuses it
    epoll,     ///< Linux epoll readiness backend
    iocp,      ///< Windows I/O completion port
};

/// Receives the one line coport logs when it falls back from the backend it wanted (io_uring refused ->
/// epoll). Called at most once per process, from the constructing thread. Default: write it to stderr.
/// Pass nullptr to silence it.
using fallback_logger = void (*)(const char* message);
inline std::atomic<fallback_logger>& fallback_logger_slot() noexcept {
    static std::atomic<fallback_logger> slot{[](const char* m) { std::fprintf(stderr, "coport: %s\n", m); }};
    return slot;
}
/// Replaces the fallback logger (see fallback_logger); returns the previous one.
inline fallback_logger set_fallback_logger(fallback_logger f) noexcept { return fallback_logger_slot().exchange(f); }

/// Construction options of an io_context (an aggregate: `io_context_options o; o.backend = ...;`).
struct io_context_options {
    backend_kind backend = backend_kind::automatic;
    /// io_uring: submission queue entries per ring (a worker's batch size before it must submit).
    unsigned queue_entries = 256;
    /// io_uring: completion queue entries per ring; also the most operations one worker keeps in flight
    /// (more wait in a backlog until completions make room).
    unsigned completion_entries = 32768;
    /// The context runs on one thread only: the one that constructs it (Asio's concurrency hint 1).
    /// run(), run_one(), poll() and block_on() from any other thread throw std::logic_error; destroy the
    /// context on that thread too. Every other call (post, schedule, spawn, starting operations from a
    /// coroutine running elsewhere, stop) stays callable from any thread.
    /// io_uring uses it to make the ring single-issuer (IORING_SETUP_SINGLE_ISSUER | DEFER_TASKRUN where the
    /// kernel takes them): completions are then processed only when the loop asks for them, without
    /// inter-processor interrupts. epoll and IOCP only enforce the rule.
    bool single_thread = false;
};
namespace detail {
inline void report_fallback(const std::string& message) {
    static std::once_flag once;
    std::call_once(once, [&] {
        if (fallback_logger f = fallback_logger_slot().load()) f(message.c_str());
    });
}
} // namespace detail
} // namespace coport
