// SPDX-License-Identifier: MIT
#pragma once
// Linux io_uring backend: the completion port of coport on Linux.
//
// One context owns worker slots; each slot is an io_uring ring plus its queues (or, where io_uring is
// refused, an epoll instance: the same operations then run as readiness-driven syscalls; see
// detail/epoll/context.hpp). A thread that calls run()
// claims a free slot and is its only user until it returns, so every ring has one issuer at a time.
// An operation is started on the slot of the thread that starts it; a thread that does not run the
// context hands the operation to a running slot through that slot's locked queue and wakes it with an
// eventfd whose read is kept in flight in the ring. The operation's address is the SQE's user_data.
//
// Setup flags, probed at construction (a kernel that refuses one gets the next set, quietly):
// CQSIZE | CLAMP | SUBMIT_ALL always. With io_context_options::single_thread, also SINGLE_ISSUER |
// DEFER_TASKRUN | TASKRUN_FLAG (else COOP_TASKRUN | TASKRUN_FLAG): completions are run only when the loop
// enters the kernel for them (flush() does when IORING_SQ_TASKRUN says work waits), with no
// inter-processor interrupt. Not for contexts that several threads may run: there a slot's ring is
// claimed by whichever thread calls run() next and orphaned rings are serviced by other workers, so the
// task that submitted an operation is often not the one waiting on its ring. A deferred-task-run ring
// completes nothing unless its creator enters it; with COOP_TASKRUN the completion waits for the
// submitting thread's next system call, and that thread may have left run() (block_on returned) to
// compute for seconds while another worker waits on the ring. Without these flags the kernel interrupts
// the submitting thread to run its task work at once.
#if !defined(__linux__)
#error "coport/detail/uring is the Linux backend"
#endif

#include <coport/detail/config.hpp>
#include <coport/detail/context_base.hpp>
#include <coport/detail/uring/error.hpp>

#include <liburing.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace coport::detail::uring {

class worker;
class context;

enum : std::uint8_t { cancel_idle, cancel_queued, cancel_closed };

/// Base of every io_uring operation (an awaiter derives from it and stays put while it is in flight).
/// Lifecycle, all on the owning worker's thread except request_cancel():
///   start -> (kernel owns it) -> CQE -> complete -> resume the coroutine.
/// Cancellation (any thread): request_cancel() moves m_cancel idle->queued and queues m_cancel_node on
/// the owning worker; the worker then asks the kernel (ASYNC_CANCEL) and the coroutine resumes only with
/// the operation's own CQE. While the cancel node is queued the operation is not resumed, so the queue
/// never holds a dangling pointer.
class operation {
public:
    /// I/O operations fill in prep/perform/fd/events; timers fill in arm/disarm instead. The last three are
    /// optional (null when absent).
    struct vtable {
        void (*prep)(operation*, io_uring_sqe*) noexcept; // io_uring: fill the SQE
        int (*perform)(operation*) noexcept;              // epoll: the non-blocking syscall; -EAGAIN: wait
        int (*fd)(const operation*) noexcept;             // epoll: the descriptor to wait on
        std::uint32_t events;                             // epoll: EPOLLIN or EPOLLOUT
        void (*arm)(operation*, worker&) noexcept;        // timers: start waiting
        void (*disarm)(operation*, worker&) noexcept;     // timers: stop waiting (and complete)
        /// A result arrived (m_res set; either engine), before the operation is completed: true if the
        /// operation took it and stays in flight (it resubmitted itself: send_all's remainder), false to
        /// complete it now. Called once per result, never for a completion a cancel request held back.
        bool (*on_result)(operation*, worker&) noexcept = nullptr;
        /// io_uring engine, instead of an SQE of the operation's own: start it (e.g. wait for a listener's
        /// multishot accept) and cancel it. Whatever park starts ends in complete()/complete_later().
        void (*park)(operation*, worker&) noexcept = nullptr;
        void (*unpark)(operation*, worker&) noexcept = nullptr;
    };
    explicit operation(const vtable* vt) noexcept : m_vt(vt) {}
    operation(const operation&) = delete;
    operation& operator=(const operation&) = delete;

    void request_cancel() noexcept;

    std::coroutine_handle<> m_handle;
    int m_res = 0;
    std::uint32_t m_cqe_flags = 0;
    worker* m_worker = nullptr;
    /// Where the coroutine resumes, if not on m_worker: an operation that waits on another worker (a
    /// listener's accept waits on its acceptor's) still resumes on the thread that started it (the
    /// resumption rule). Null: m_worker.
    worker* m_resume_on = nullptr;
    std::atomic<std::uint8_t> m_cancel{cancel_idle};
    bool m_started = false;
    bool m_done = false;
    bool m_cancelled_early = false;
    int m_parked_fd = -1; // epoll: the descriptor whose queue holds this operation

    struct node final : work_item {
        node(run_fn fn, operation* op) noexcept : work_item(fn), m_op(op) {}
        operation* m_op;
    };
    node m_start_node{&run_start, this};
    node m_cancel_node{&run_cancel, this};
    node m_resume_node{&run_resume, this}; // resumes it on m_resume_on
    const vtable* m_vt;

private:
    static void run_start(work_item* w) noexcept;
    static void run_cancel(work_item* w) noexcept;
    static void run_resume(work_item* w) noexcept { static_cast<node*>(w)->m_op->m_handle.resume(); }
};

/// Registers a stop callback for an operation; destroyed before the operation's result is read
/// (std::stop_callback's destructor waits for a callback running on another thread).
struct cancel_callback {
    operation* m_op;
    void operator()() const noexcept { m_op->request_cancel(); }
};
using stop_registration = std::optional<std::stop_callback<cancel_callback>>;

/// Something that lives on one worker beyond a single operation (a listener's multishot accept), told at
/// every shutdown turn of that worker (until it removes itself) so that nothing of it outlives the context.
struct resident {
    using shutdown_fn = void (*)(resident*, worker&) noexcept;
    explicit resident(shutdown_fn fn) noexcept : m_shutdown(fn) {}
    shutdown_fn m_shutdown;
    resident* m_prev = nullptr;
    resident* m_next = nullptr;
    bool m_listed = false;
};

/// An operation that waits in a worker's timer heap instead of the kernel.
class timer_op : public operation, public timer_node {
public:
    using operation::operation;
};

[[gnu::noinline]] inline worker*& current_worker_slot() noexcept {
    static thread_local worker* slot = nullptr;
    asm volatile("" ::: "memory");
    return slot;
}

// Sentinel user_data values (operations are at least 8-aligned, so these never collide).
inline constexpr std::uint64_t udata_ignore = 1; // cancel requests and other fire-and-forget SQEs

class worker {
public:
    worker(context& ctx, unsigned index);
    ~worker();
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    context& ctx() noexcept { return m_ctx; }
    io_uring& ring() noexcept { return m_ring; }

    /// Next free SQE; flushes the queue to the kernel when it is full. Worker thread only.
    io_uring_sqe* get_sqe() {
        for (;;) {
            if (io_uring_sqe* sqe = io_uring_get_sqe(&m_ring)) return sqe;
            submit_pending();
        }
    }
    /// Preps one SQE for `op` (the kernel now owns it until its CQE). Worker thread only.
    template <class Prep>
    void submit(operation* op, Prep&& prep) {
        io_uring_sqe* sqe = get_sqe();
        prep(sqe);
        io_uring_sqe_set_data(sqe, op);
        ++m_inflight;
    }
    /// Submits `op`'s own SQE (io_uring engine; the op is started). Worker thread only.
    void submit_op(operation* op) {
        submit(op, [op](io_uring_sqe* sqe) { op->m_vt->prep(op, sqe); });
    }
    /// Starts `op` again from its on_result hook (its remainder): an SQE, or the epoll engine's syscall.
    void resubmit(operation* op) noexcept { dispatch(op); }
    /// An SQE whose CQE will never be read (single_thread context destroyed on another thread).
    void forget_inflight() noexcept { --m_inflight; }
    /// Residents (worker thread only).
    void add_resident(resident* r) noexcept {
        if (r->m_listed) return;
        r->m_prev = nullptr;
        r->m_next = m_residents;
        if (m_residents) m_residents->m_prev = r;
        m_residents = r;
        r->m_listed = true;
    }
    void remove_resident(resident* r) noexcept {
        if (!r->m_listed) return;
        if (r->m_prev) r->m_prev->m_next = r->m_next;
        else m_residents = r->m_next;
        if (r->m_next) r->m_next->m_prev = r->m_prev;
        r->m_listed = false;
    }
    /// Asks the kernel to cancel `op` (the op's own CQE still follows). Worker thread only.
    void submit_cancel(operation* op) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel(sqe, op, 0);
        io_uring_sqe_set_data64(sqe, udata_ignore);
    }

    /// Starts `op` on this worker (worker thread only).
    void start(operation* op) noexcept;
    /// Asks whatever holds `op` (kernel, timer heap, epoll queue) to give it back (worker thread only).
    void cancel(operation* op) noexcept;
    [[nodiscard]] bool uses_epoll() const noexcept { return m_epfd >= 0; }
    /// Completes an operation that never reached the kernel, from the run loop (not inline).
    void complete_later(operation* op, int res) noexcept;
    /// The CQE (or timer expiry) of `op` arrived: resume it unless a cancel request is queued for it.
    void complete(operation* op) noexcept;

    /// From any thread: queue a work item here and wake the worker if it sleeps.
    void post_remote(work_item* w) noexcept;
    /// Worker thread only: queue a work item for this loop turn.
    void post_local(work_item* w) noexcept { m_local.push(w); }

    enum class mode { run, run_one, poll };
    std::size_t loop(mode m);
    /// Shutdown: cancel everything and complete it; true while anything is left.
    bool drain_turn();
    /// Shutdown: every timer still waiting resumes with ECANCELED.
    void abort_timers() noexcept;

    timer_heap& timers() noexcept { return m_timers; }

    /// Outstanding work started (+) and finished (-) by the thread that runs this worker, not yet added to
    /// the context's shared count (Asio's private_outstanding_work): a completion that starts the next
    /// operation (recv done, send started) nets to zero and never touches the shared counter. Touched only
    /// by the thread that holds this worker (its run loop, an orphan servicer, shutdown); published by
    /// publish_work() at the end of every turn, before the loop looks at the shared count. The shared count
    /// never reads zero too early: a finished unit leaves it only when the turn that finished it publishes,
    /// and every unit started in that turn was started while such a unit was still in it.
    std::ptrdiff_t m_private_work = 0;
    void publish_work() noexcept;

    std::atomic<bool> m_claimed{false};
    unsigned m_index;
    const std::atomic<bool>* m_until = nullptr; // run_until: leave the loop once this is set

private:
    friend class context;
    void submit_pending();
    std::size_t reap(std::size_t budget);
    std::size_t fire_timers(std::size_t budget);
    std::size_t run_local(std::size_t budget);
    void take_remote();
    void arm_wake();
    void wake() noexcept;
    void wait(bool block, bool orphans);
    std::size_t turn();
    [[nodiscard]] bool has_work() const noexcept;
    [[nodiscard]] bool leave_requested() const noexcept; // what makes loop() return (mode::run)
    void dispatch(operation* op) noexcept; // hand an I/O operation to the engine
    void flush();                          // io_uring: submit what is prepped

    // epoll engine (detail/epoll/context.hpp)
    struct epoll_entry {
        std::vector<operation*> readers, writers; // parked, oldest first
    };
    void epoll_init();
    void epoll_start(operation* op) noexcept;
    bool epoll_cancel(operation* op) noexcept;
    std::size_t epoll_reap(std::size_t budget);
    void epoll_wait_events(int timeout_ms);
    void epoll_abort_all() noexcept;
    std::size_t epoll_run_queue(int fd, bool writers, std::size_t budget);

    context& m_ctx;
    io_uring m_ring{};
    int m_wake_fd = -1;
    std::uint64_t m_wake_buf = 0;
    bool m_wake_armed = false;
    bool m_cancel_all_sent = false;
    unsigned m_cq_capacity = 0;
    std::size_t m_inflight = 0; // operations whose CQE is still due (the wake read excluded)
    resident* m_residents = nullptr;
    work_queue m_local;
    work_queue m_backlog; // operations waiting for room in the completion queue
    timer_heap m_timers;

    std::mutex m_mutex; // guards m_remote and m_sleeping
    work_queue m_remote;
    bool m_sleeping = false;
    std::atomic<bool> m_remote_hint{false};

    // epoll engine state (m_epfd < 0: io_uring)
    int m_epfd = -1;
    std::vector<epoll_entry> m_entries; // by descriptor
    std::array<epoll_event, 64> m_events{};
    int m_nevents = 0, m_next_event = 0;
};

/// The Linux io_context: io_uring, or epoll where io_uring is refused.
class context {
public:
    static constexpr unsigned max_workers = 256;

    explicit context(const io_context_options& opts);
    ~context();
    context(const context&) = delete;
    context& operator=(const context&) = delete;

    std::size_t run() { return run_loop(worker::mode::run, nullptr); }
    std::size_t run_one() { return run_loop(worker::mode::run_one, nullptr); }
    std::size_t poll() { return run_loop(worker::mode::poll, nullptr); }
    /// Runs until `done` is set (whoever sets it calls wake_all()), even when stopped or out of work.
    /// `first`, if given, runs first on this thread (block_on starts its awaitable with it).
    std::size_t run_until(const std::atomic<bool>& done, work_item* first = nullptr) {
        return run_loop(worker::mode::run, &done, first);
    }
    void wake_all() noexcept {
        unsigned n = m_nworkers.load(std::memory_order_acquire);
        for (unsigned i = 0; i < n; ++i) m_workers[i]->wake();
    }
    void stop() noexcept;
    [[nodiscard]] bool stopped() const noexcept { return m_stopped.load(std::memory_order_acquire); }
    void restart() noexcept { m_stopped.store(false, std::memory_order_release); }
    [[nodiscard]] const char* name() const noexcept { return m_use_epoll ? "epoll" : "io_uring"; }
    [[nodiscard]] std::string features() const;
    [[nodiscard]] bool uses_epoll() const noexcept { return m_use_epoll; }

    /// The worker the calling thread runs for this context, or null.
    worker* this_worker() noexcept {
        worker* w = current_worker_slot();
        return (w && &w->ctx() == this) ? w : nullptr;
    }
    [[nodiscard]] bool running_in_this_thread() noexcept { return this_worker() != nullptr; }

    /// Queue a work item (any thread). Counts as outstanding work until it has run.
    void post(work_item* w) noexcept {
        w->m_counted = true;
        if (worker* self = this_worker()) {
            ++self->m_private_work;
            self->post_local(w);
        } else {
            work_started();
            pick_worker().post_remote(w);
        }
    }
    /// Like post(), on the threads running the context in turn (spawn: a server's sessions spread over
    /// them; each then stays on the ring of the thread that started it).
    void post_spread(work_item* w) noexcept {
        w->m_counted = true;
        worker& target = pick_worker();
        if (&target == this_worker()) {
            ++target.m_private_work;
            target.post_local(w);
        } else {
            work_started();
            target.post_remote(w);
        }
    }
    /// Start an operation (any thread). The caller has set op->m_handle; counts as work until resumed.
    void start(operation* op) noexcept {
        worker& w = home();
        op->m_worker = &w;
        start_on(w, op);
    }
    /// The worker that owns what the calling thread starts (the resumption rule): its own, or, on a thread
    /// that does not run the context, the first worker held by a thread (the same one for every start while
    /// those threads run), so that what one foreign thread starts never completes on two threads at once.
    worker& home() noexcept {
        if (worker* self = this_worker()) return *self;
        return foreign_home();
    }
    /// Picks the worker an operation will run on, before it is published (to register a stop callback).
    worker& owner_for_new_op() noexcept { return home(); }
    /// Queue a work item to run on `owner`'s thread (any thread). Counts as outstanding work until it has run.
    void post_to(worker& owner, work_item* w) noexcept {
        w->m_counted = true;
        if (&owner == this_worker()) {
            ++owner.m_private_work;
            owner.post_local(w);
        } else {
            work_started();
            owner.post_remote(w);
        }
    }
    /// Start an operation on the worker chosen by owner_for_new_op(); the caller has set op->m_worker
    /// (before registering its stop callback, which reads it).
    void start_on(worker& w, operation* op) noexcept {
        if (&w == this_worker()) {
            ++w.m_private_work;
            w.start(op);
        } else {
            work_started();
            w.post_remote(&op->m_start_node);
        }
    }

    void work_started() noexcept { m_work.fetch_add(1, std::memory_order_relaxed); }
    /// The last unit of work wakes every thread in run() so that they return (the context is not
    /// stopped: new work and run() carry on).
    void work_finished() noexcept {
        if (m_work.fetch_sub(1, std::memory_order_acq_rel) == 1) wake_all();
    }
    [[nodiscard]] bool shutting_down() const noexcept { return m_shutdown.load(std::memory_order_acquire); }
    /// Shutdown of a single-issuer ring on a thread that may not enter it: nothing in flight can be reaped.
    [[nodiscard]] bool foreign_shutdown() const noexcept { return m_foreign_shutdown; }

private:
    friend class worker;
    std::size_t run_loop(worker::mode m, const std::atomic<bool>* until, work_item* first = nullptr);
    worker& pick_worker() noexcept;
    worker& foreign_home() noexcept;
    worker* claim_worker();
    bool service_orphans(worker& self);
    void shutdown() noexcept;

    io_context_options m_opts;
    std::array<std::unique_ptr<worker>, max_workers> m_workers{};
    std::atomic<unsigned> m_nworkers{0};
    std::atomic<unsigned> m_round_robin{0};
    std::mutex m_create_mutex;
    std::atomic<std::size_t> m_work{0};
    std::atomic<bool> m_stopped{false};
    std::atomic<bool> m_shutdown{false};
    unsigned m_setup_flags = 0;
    bool m_use_epoll = false;
    std::thread::id m_creator = std::this_thread::get_id(); // the single issuer of SINGLE_ISSUER rings
    bool m_foreign_shutdown = false; // single-issuer ring destroyed on another thread: do not enter it
    std::error_code m_uring_error;
    std::string try_io_uring();
};

#if COPORT_DEFINE_ENGINE // the engine: compiled in every file (header-only) or once (coport/impl/src.hpp)

// ---------------------------------------------------------------------------------------------------------
// operation

COPORT_DECL void operation::request_cancel() noexcept {
    std::uint8_t expected = cancel_idle;
    if (m_cancel.compare_exchange_strong(expected, cancel_queued, std::memory_order_acq_rel)) {
        // On the owning worker's own thread (the common case: a coroutine cancels its sibling) the local
        // queue does, without the lock and the wake-up of the remote queue.
        if (current_worker_slot() == m_worker) m_worker->post_local(&m_cancel_node);
        else m_worker->post_remote(&m_cancel_node);
    }
}

COPORT_DECL void operation::run_start(work_item* w) noexcept {
    operation* op = static_cast<node*>(w)->m_op;
    op->m_worker->start(op);
}

COPORT_DECL void operation::run_cancel(work_item* w) noexcept {
    operation* op = static_cast<node*>(w)->m_op;
    worker& wk = *op->m_worker;
    if (op->m_done) {
        // The completion arrived while this request was queued and was held back: deliver it now.
        op->m_cancel.store(cancel_closed, std::memory_order_release);
        wk.complete(op);
    } else if (!op->m_started) {
        op->m_cancelled_early = true; // its start item (or the backlog) completes it with ECANCELED
        op->m_cancel.store(cancel_closed, std::memory_order_release);
    } else {
        op->m_cancel.store(cancel_closed, std::memory_order_release); // before: disarm may complete it now
        wk.cancel(op);
    }
}

// ---------------------------------------------------------------------------------------------------------
// worker

COPORT_DECL worker::worker(context& ctx, unsigned index) : m_index(index), m_ctx(ctx) {
    m_wake_fd = ::eventfd(0, EFD_CLOEXEC);
    if (m_wake_fd < 0) throw std::system_error(last_error(), "eventfd");
    if (ctx.m_use_epoll) {
        try {
            epoll_init();
        } catch (...) {
            ::close(m_wake_fd);
            throw;
        }
        m_cq_capacity = static_cast<unsigned>(-1);
        return;
    }
    io_uring_params p{};
    p.flags = ctx.m_setup_flags;
    p.cq_entries = ctx.m_opts.completion_entries;
    int r = io_uring_queue_init_params(ctx.m_opts.queue_entries, &m_ring, &p);
    if (r < 0) {
        ::close(m_wake_fd);
        throw std::system_error(native_error(-r), "io_uring_queue_init_params");
    }
    m_cq_capacity = p.cq_entries;
}

COPORT_DECL worker::~worker() {
    if (uses_epoll()) ::close(m_epfd);
    else io_uring_queue_exit(&m_ring);
    ::close(m_wake_fd);
}

COPORT_DECL void worker::arm_wake() {
    if (m_wake_armed || uses_epoll()) return; // epoll: the eventfd is in the interest set for good
    io_uring_sqe* sqe = get_sqe();
    io_uring_prep_read(sqe, m_wake_fd, &m_wake_buf, sizeof m_wake_buf, 0);
    io_uring_sqe_set_data(sqe, this); // a worker is never an operation: its address tags the wake read
    m_wake_armed = true;
}

COPORT_DECL void worker::post_remote(work_item* w) noexcept {
    bool wake;
    {
        std::lock_guard lock(m_mutex);
        m_remote.push(w);
        m_remote_hint.store(true, std::memory_order_relaxed);
        wake = m_sleeping;
        m_sleeping = false;
    }
    if (wake) {
        std::uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(m_wake_fd, &one, sizeof one);
    }
}

COPORT_DECL void worker::take_remote() {
    if (!m_remote_hint.load(std::memory_order_relaxed)) return;
    std::lock_guard lock(m_mutex);
    m_local.splice(m_remote);
    m_remote_hint.store(false, std::memory_order_relaxed);
}

COPORT_DECL void worker::start(operation* op) noexcept {
    if (op->m_cancelled_early || m_ctx.shutting_down()) {
        complete_later(op, -ECANCELED);
        return;
    }
    if (m_inflight >= m_cq_capacity) { // backpressure: never more in flight than the CQ holds
        m_backlog.push(&op->m_start_node);
        return;
    }
    op->m_started = true;
    dispatch(op);
}

COPORT_DECL void worker::dispatch(operation* op) noexcept {
    if (op->m_vt->arm) op->m_vt->arm(op, *this);
    else if (uses_epoll()) epoll_start(op);
    else if (op->m_vt->park) op->m_vt->park(op, *this);
    else submit_op(op);
}

COPORT_DECL void worker::cancel(operation* op) noexcept {
    if (op->m_vt->disarm) op->m_vt->disarm(op, *this);
    else if (uses_epoll()) epoll_cancel(op);
    else if (op->m_vt->unpark) op->m_vt->unpark(op, *this);
    else submit_cancel(op);
}

COPORT_DECL void worker::complete_later(operation* op, int res) noexcept {
    op->m_res = res;
    op->m_started = true;
    op->m_start_node.m_run = [](work_item* w) noexcept {
        operation* o = static_cast<operation::node*>(w)->m_op;
        o->m_worker->complete(o);
    };
    m_local.push(&op->m_start_node);
}

COPORT_DECL void worker::complete(operation* op) noexcept {
    if (op->m_vt->on_result && !op->m_done && op->m_vt->on_result(op, *this)) return; // still in flight
    op->m_done = true;
    std::uint8_t s = op->m_cancel.load(std::memory_order_acquire);
    if (s == cancel_idle && !op->m_cancel.compare_exchange_strong(s, cancel_closed, std::memory_order_acq_rel)) {
        // lost to a stop callback: it queued a cancel request that will deliver this completion
    }
    if (s == cancel_queued) return;
    --m_private_work; // before resuming: the coroutine may start the next operation (+1: nets to zero)
    if (op->m_resume_on && op->m_resume_on != this) {
        m_ctx.post_to(*op->m_resume_on, &op->m_resume_node); // its own thread resumes it
        return;
    }
    op->m_handle.resume(); // the awaiter (and op) may be gone after this
}

COPORT_DECL void worker::publish_work() noexcept {
    const std::ptrdiff_t d = std::exchange(m_private_work, 0);
    if (d > 0) m_ctx.m_work.fetch_add(static_cast<std::size_t>(d), std::memory_order_relaxed);
    else if (d < 0) {
        const auto n = static_cast<std::size_t>(-d);
        if (m_ctx.m_work.fetch_sub(n, std::memory_order_acq_rel) == n) m_ctx.wake_all(); // see work_finished
    }
}

COPORT_DECL void worker::submit_pending() {
    if (uses_epoll()) return;
    for (;;) {
        int r = io_uring_submit(&m_ring);
        if (r >= 0) return;
        if (r == -EINTR) continue;
        if (r == -EBUSY || r == -EAGAIN) { // CQ overflow backlog in the kernel: reap, then retry
            reap(static_cast<std::size_t>(-1));
            continue;
        }
        // Any other error leaves SQEs unsubmitted: not recoverable without losing operations.
        std::fprintf(stderr, "coport: io_uring_submit failed: %s\n", std::strerror(-r));
        std::abort();
    }
}

COPORT_DECL std::size_t worker::reap(std::size_t budget) {
    if (uses_epoll()) return epoll_reap(budget);
    struct entry {
        std::uint64_t data;
        int res;
        std::uint32_t flags;
    };
    std::size_t handled = 0;
    while (handled < budget) {
        // Copy a batch out and free the CQ slots first: resumed coroutines may submit and reap again.
        std::array<entry, 64> batch;
        unsigned n = 0, head;
        io_uring_cqe* cqe;
        io_uring_for_each_cqe(&m_ring, head, cqe) {
            batch[n++] = {cqe->user_data, cqe->res, cqe->flags};
            if (n == batch.size() || n >= budget - handled) break;
        }
        if (n == 0) break;
        io_uring_cq_advance(&m_ring, n);
        for (unsigned i = 0; i < n; ++i) {
            const entry& e = batch[i];
            if (e.data == udata_ignore || e.data == LIBURING_UDATA_TIMEOUT) continue;
            if (e.data == reinterpret_cast<std::uintptr_t>(this)) {
                m_wake_armed = false;
                if (!m_ctx.shutting_down()) arm_wake();
                continue;
            }
            auto* op = reinterpret_cast<operation*>(e.data);
            if (!(e.flags & IORING_CQE_F_MORE)) --m_inflight;
            op->m_res = e.res;
            op->m_cqe_flags = e.flags;
            complete(op);
            ++handled;
        }
        while (!m_backlog.empty() && m_inflight < m_cq_capacity) {
            operation* op = static_cast<operation::node*>(m_backlog.pop())->m_op;
            op->m_started = true;
            if (op->m_cancelled_early || m_ctx.shutting_down()) complete_later(op, -ECANCELED);
            else dispatch(op);
        }
    }
    return handled;
}

COPORT_DECL std::size_t worker::run_local(std::size_t budget) {
    return run_batch(m_local, budget, [this](work_item* w) noexcept {
        const bool counted = w->m_counted; // read first: running the item may free it
        w->run();
        if (counted) --m_private_work;
    });
}

COPORT_DECL std::size_t worker::fire_timers(std::size_t budget) {
    if (m_timers.empty()) return 0;
    std::size_t n = 0;
    const auto now = clock::now();
    while (n < budget) {
        timer_node* t = m_timers.top();
        if (!t || t->m_deadline > now) break;
        m_timers.pop();
        auto* op = static_cast<timer_op*>(t);
        op->m_res = 0;
        complete(op);
        ++n;
    }
    return n;
}

COPORT_DECL void worker::wake() noexcept {
    bool wake;
    {
        std::lock_guard lock(m_mutex);
        wake = m_sleeping;
        m_sleeping = false;
    }
    if (wake) {
        std::uint64_t one = 1;
        [[maybe_unused]] ssize_t n = ::write(m_wake_fd, &one, sizeof one);
    }
}

COPORT_DECL void worker::flush() {
    if (uses_epoll()) return;
    if (io_uring_sq_ready(&m_ring)) submit_pending(); // liburing adds GETEVENTS when task work waits
    else if (IO_URING_READ_ONCE(*m_ring.sq.kflags) & IORING_SQ_TASKRUN) io_uring_get_events(&m_ring);
}

COPORT_DECL void worker::wait(bool block, bool orphans) {
    clock::duration timeout = clock::duration::max();
    if (block) {
        if (timer_node* t = m_timers.top()) timeout = std::max(t->m_deadline - clock::now(), clock::duration::zero());
        if (orphans) timeout = std::min<clock::duration>(timeout, std::chrono::milliseconds(1));
        std::lock_guard lock(m_mutex);
        // The loop's reasons to leave (run_until's flag, stop(), out of work) are set without this lock
        // and then announced by wake(), which writes the eventfd only to a worker it finds sleeping. So
        // they are read again here, after m_sleeping is set under the lock: a flag set before the waker
        // looked at m_sleeping is visible now; one set after it finds m_sleeping and writes the eventfd.
        if (!m_remote.empty() || leave_requested()) block = false;
        else m_sleeping = true;
    }
    if (!block) {
        if (uses_epoll()) epoll_wait_events(0);
        else flush();
        return;
    }
    if (uses_epoll()) {
        int ms = -1;
        if (timeout != clock::duration::max()) // round up: waking early would spin until the deadline
            ms = static_cast<int>(std::min<long long>(
                std::chrono::duration_cast<std::chrono::milliseconds>(timeout + std::chrono::microseconds(999)).count(),
                1 << 30));
        epoll_wait_events(ms);
    } else {
        __kernel_timespec ts{};
        __kernel_timespec* pts = nullptr;
        if (timeout != clock::duration::max()) {
            auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
            ts.tv_sec = ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pts = &ts;
        }
        io_uring_cqe* cqe = nullptr;
        int r = io_uring_submit_and_wait_timeout(&m_ring, &cqe, 1, pts, nullptr);
        if (r == -EBUSY || r == -EAGAIN) reap(static_cast<std::size_t>(-1));
    }
    std::lock_guard lock(m_mutex);
    m_sleeping = false;
}

COPORT_DECL bool worker::leave_requested() const noexcept {
    if (m_until) return m_until->load(std::memory_order_acquire);
    return m_ctx.stopped() || m_ctx.m_work.load(std::memory_order_acquire) == 0;
}

COPORT_DECL std::size_t worker::loop(mode m) {
    constexpr std::size_t unlimited = static_cast<std::size_t>(-1);
    const std::size_t budget = m == mode::run_one ? 1 : unlimited;
    std::size_t total = 0;
    arm_wake();
    for (;;) {
        if (m_until ? m_until->load(std::memory_order_acquire) : m_ctx.stopped()) break;
        take_remote();
        std::size_t n = reap(budget);
        if (n < budget) n += fire_timers(budget - n);
        if (n < budget) n += run_local(budget - n);
        publish_work(); // before anything reads the shared count (and before an exception leaves)
        total += n;
        rethrow_pending_exception();
        if (m_until && m_until->load(std::memory_order_acquire)) break;
        if (m == mode::run_one && total > 0) break;
        if (!m_until && m_ctx.m_work.load(std::memory_order_acquire) == 0) break; // out of work
        if (m == mode::poll && n == 0 && m_local.empty()) break;
        bool orphans = m_ctx.m_nworkers.load(std::memory_order_acquire) > 1 && m_ctx.service_orphans(*this);
        // Also after a turn that handled completions: submit-and-wait returns at once when a CQE is ready
        // (the kernel runs pending task work first), so a turn costs one io_uring_enter, not a submit and
        // then a wait.
        wait(m != mode::poll && m_local.empty(), orphans);
    }
    flush(); // nothing prepped may stay unsubmitted
    return total;
}

COPORT_DECL bool worker::has_work() const noexcept {
    return m_inflight > 0 || !m_timers.empty() || !m_local.empty() || !m_backlog.empty() ||
           m_remote_hint.load(std::memory_order_relaxed);
}

COPORT_DECL std::size_t worker::turn() {
    take_remote();
    std::size_t n = reap(static_cast<std::size_t>(-1));
    n += fire_timers(static_cast<std::size_t>(-1));
    n += run_local(static_cast<std::size_t>(-1));
    publish_work();
    if (uses_epoll()) epoll_wait_events(0);
    else flush();
    return n;
}

COPORT_DECL void worker::abort_timers() noexcept {
    while (timer_node* t = m_timers.pop()) {
        auto* op = static_cast<timer_op*>(t);
        op->m_res = -ECANCELED;
        complete(op);
    }
}

COPORT_DECL bool worker::drain_turn() {
    for (resident* r = m_residents; r;) {
        resident* next = r->m_next; // the hook may remove r (and free it)
        r->m_shutdown(r, *this);
        r = next;
    }
    if (uses_epoll()) {
        epoll_abort_all();
        abort_timers();
        turn();
        return has_work();
    }
    if (m_ctx.m_foreign_shutdown) {
        // Only the ring's creator may enter a SINGLE_ISSUER ring. Nothing of ours may be left in flight;
        // the wake read is cancelled by the kernel when the ring is closed (it copies nothing then).
        if (m_inflight > 0) {
            std::fprintf(stderr, "coport: a single_thread io_context was destroyed on another thread than "
                                 "the one that constructed it, with operations in flight\n");
            std::abort();
        }
        m_wake_armed = false;
        abort_timers();
        turn();
        return has_work();
    }
    if (m_inflight > 0 && !m_cancel_all_sent) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel(sqe, nullptr, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
        io_uring_sqe_set_data64(sqe, udata_ignore);
        m_cancel_all_sent = true;
    }
    if (m_wake_armed && !m_cancel_all_sent) {
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_cancel(sqe, this, 0);
        io_uring_sqe_set_data64(sqe, udata_ignore);
        m_cancel_all_sent = true;
    }
    abort_timers();
    turn();
    bool more = has_work() || m_wake_armed;
    if (more && m_local.empty() && (m_inflight > 0 || m_wake_armed)) {
        __kernel_timespec ts{0, 10 * 1000 * 1000};
        io_uring_cqe* cqe = nullptr;
        io_uring_submit_and_wait_timeout(&m_ring, &cqe, 1, &ts, nullptr);
        m_cancel_all_sent = false; // ask again: operations started meanwhile are completed early, but be sure
    }
    return more;
}

// ---------------------------------------------------------------------------------------------------------
// context

COPORT_DECL context::context(const io_context_options& opts) : m_opts(opts) {
    backend_kind want = opts.backend;
    if (want == backend_kind::automatic) {
        if (const char* e = std::getenv("COPORT_BACKEND"); e && std::strcmp(e, "epoll") == 0) want = backend_kind::epoll;
        else if (e && std::strcmp(e, "io_uring") == 0) want = backend_kind::io_uring;
    }
    if (want == backend_kind::iocp) throw std::system_error(make_error_code(error::backend_unavailable), "IOCP is Windows only");
    if (want != backend_kind::epoll) {
        std::string why = try_io_uring();
        if (why.empty()) {
            m_nworkers.store(1, std::memory_order_release);
            return;
        }
        if (want == backend_kind::io_uring) throw std::system_error(m_uring_error, why);
        report_fallback(why + "; using epoll");
    }
    m_use_epoll = true;
    m_workers[0] = std::make_unique<worker>(*this, 0);
    m_nworkers.store(1, std::memory_order_release);
}

COPORT_DECL std::string context::try_io_uring() {
    if (const char* e = std::getenv("COPORT_DISABLE_IO_URING"); e && *e && std::strcmp(e, "0") != 0) {
        m_uring_error = make_error_code(error::backend_unavailable);
        return "io_uring refused: disabled by the environment variable COPORT_DISABLE_IO_URING";
    }
    // Probe the setup flags this kernel takes; fall back quietly to fewer (see the file comment).
    constexpr unsigned base = IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP | IORING_SETUP_SUBMIT_ALL;
    constexpr unsigned coop = IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    constexpr unsigned single = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG;
    const unsigned candidates[] = {base | single, base | coop, base, IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP, 0};
    int last = 0;
    // Shared rings (several threads may run the context) start at `base`: see the file comment.
    for (unsigned flags : std::span(candidates).subspan(m_opts.single_thread ? 0 : 2)) {
        m_setup_flags = flags;
        try {
            m_workers[0] = std::make_unique<worker>(*this, 0);
            return {};
        } catch (const std::system_error& e) {
            last = e.code().value();
            if (last != EINVAL) break;
        }
    }
    m_setup_flags = 0;
    m_uring_error = native_error(last);
    std::string why = "io_uring refused: io_uring_setup failed with " + std::string(std::strerror(last));
    if (last == EPERM) why += " (blocked by a seccomp profile, or /proc/sys/kernel/io_uring_disabled)";
    else if (last == ENOSYS) why += " (this kernel has no io_uring)";
    else if (last == ENOMEM) why += " (locked-memory limit too low for the ring)";
    return why;
}

COPORT_DECL context::~context() { shutdown(); }

COPORT_DECL std::string context::features() const {
    if (m_use_epoll) return "edge-triggered epoll_wait";
    static constexpr std::pair<unsigned, const char*> names[] = {
        {IORING_SETUP_SUBMIT_ALL, "SUBMIT_ALL"},       {IORING_SETUP_COOP_TASKRUN, "COOP_TASKRUN"},
        {IORING_SETUP_TASKRUN_FLAG, "TASKRUN_FLAG"},   {IORING_SETUP_SINGLE_ISSUER, "SINGLE_ISSUER"},
        {IORING_SETUP_DEFER_TASKRUN, "DEFER_TASKRUN"},
    };
    std::string s;
    for (auto [flag, name] : names)
        if (m_setup_flags & flag) {
            if (!s.empty()) s += ' ';
            s += name;
        }
    return s;
}

COPORT_DECL void context::stop() noexcept {
    m_stopped.store(true, std::memory_order_release);
    unsigned n = m_nworkers.load(std::memory_order_acquire);
    for (unsigned i = 0; i < n; ++i) m_workers[i]->wake();
}

COPORT_DECL worker& context::pick_worker() noexcept {
    unsigned n = m_nworkers.load(std::memory_order_acquire);
    unsigned start = m_round_robin.fetch_add(1, std::memory_order_relaxed);
    for (unsigned i = 0; i < n; ++i) {
        worker& w = *m_workers[(start + i) % n];
        if (w.m_claimed.load(std::memory_order_relaxed)) return w;
    }
    return *m_workers[0]; // nobody runs the context now: the next run() (or drain) takes it
}

COPORT_DECL worker& context::foreign_home() noexcept {
    const unsigned n = m_nworkers.load(std::memory_order_acquire);
    for (unsigned i = 0; i < n; ++i)
        if (m_workers[i]->m_claimed.load(std::memory_order_acquire)) return *m_workers[i];
    return *m_workers[0]; // nobody runs the context now: the next run() (or drain) takes it
}

COPORT_DECL worker* context::claim_worker() {
    unsigned n = m_nworkers.load(std::memory_order_acquire);
    for (int pass = 0; pass < 2; ++pass) {
        for (unsigned i = 0; i < n; ++i) {
            worker& w = *m_workers[i];
            if (pass == 0 && !w.m_remote_hint.load(std::memory_order_relaxed) && i != 0) continue;
            bool expected = false;
            if (w.m_claimed.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) return &w;
        }
    }
    std::lock_guard lock(m_create_mutex);
    n = m_nworkers.load(std::memory_order_acquire);
    if (n == max_workers) throw std::runtime_error("coport: too many threads running one io_context");
    m_workers[n] = std::make_unique<worker>(*this, n);
    m_workers[n]->m_claimed.store(true, std::memory_order_relaxed);
    m_nworkers.store(n + 1, std::memory_order_release);
    return m_workers[n].get();
}

COPORT_DECL bool context::service_orphans(worker& self) {
    bool any = false;
    unsigned n = m_nworkers.load(std::memory_order_acquire);
    worker*& slot = current_worker_slot();
    for (unsigned i = 0; i < n; ++i) {
        worker& w = *m_workers[i];
        if (&w == &self) continue;
        bool expected = false;
        if (!w.m_claimed.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) continue;
        if (w.has_work()) {
            // Held as its own thread held it: what its coroutines start stays on its ring, so they never run
            // in parallel with each other (the resumption rule), whichever thread services it.
            slot = &w;
            w.turn();
            slot = &self;
            any = any || w.has_work();
        }
        w.m_claimed.store(false, std::memory_order_release);
    }
    return any;
}

COPORT_DECL std::size_t context::run_loop(worker::mode m, const std::atomic<bool>* until, work_item* first) {
    if (this_worker()) throw std::logic_error("coport: io_context::run() called from one of its own handlers");
    if (stopped() && !until) return 0;
    worker* w = claim_worker();
    worker*& slot = current_worker_slot();
    struct release {
        worker*& slot;
        worker* prev;
        worker* w;
        ~release() {
            slot = prev;
            w->m_until = nullptr;
            w->m_claimed.store(false, std::memory_order_release);
        }
    } guard{slot, slot, w};
    slot = w;
    w->m_until = until;
    if (first) {
        first->m_counted = true;
        ++w->m_private_work;
        w->post_local(first);
    }
    return w->loop(m);
}

COPORT_DECL void context::shutdown() noexcept {
    m_shutdown.store(true, std::memory_order_release);
    m_foreign_shutdown = (m_setup_flags & IORING_SETUP_SINGLE_ISSUER) && std::this_thread::get_id() != m_creator;
    unsigned n = m_nworkers.load(std::memory_order_acquire);
    worker*& slot = current_worker_slot();
    worker* prev = slot;
    for (bool more = true; more;) {
        more = false;
        for (unsigned i = 0; i < n; ++i) {
            worker& w = *m_workers[i];
            slot = &w;
            try {
                more = w.drain_turn() || more;
            } catch (...) {
                // an exception from a handler during shutdown has nowhere to go
                more = true;
            }
        }
    }
    slot = prev;
}

#endif // COPORT_DEFINE_ENGINE

} // namespace coport::detail::uring
