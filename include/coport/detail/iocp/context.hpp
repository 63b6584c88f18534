// SPDX-License-Identifier: MIT
#pragma once
// Windows backend: one I/O completion port per context, as in the seed tutorial
// (CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0)); every thread in run() waits on it with
// GetQueuedCompletionStatusEx. A packet is one of:
//   key_io    an overlapped I/O completion on an associated handle: lpOverlapped is the first member of an
//             `operation`;
//   key_work  a work item posted to whichever thread takes it (post(), schedule(), spawn()):
//             lpOverlapped carries the work_item pointer and is never read as an OVERLAPPED;
//   key_wake  nothing (kept for compatibility: nothing posts it any more).
//
// The resumption rule (the same as Linux's): an operation is owned by the worker of the thread that started
// it, and only that worker's thread resumes it. A thread that runs the context holds one `worker` (a slot,
// like an io_uring ring on Linux) for as long as it is inside run(). A completion that a thread takes from
// the port for an operation of another worker is handed to that worker's queue, and its thread is woken
// with a user APC (the waits are alertable): so two children of one when_all, started on one thread, never
// run at the same time on two threads, as on Linux. Timers wait in their owner's heap. A worker whose thread
// left run() with operations pending (an orphan) is serviced by the other threads: one at a time, holding
// it as its own thread did, so its coroutines still never run in parallel.
#if !defined(_WIN32)
#error "coport/detail/iocp is the Windows backend"
#endif

#include <coport/detail/config.hpp>
#include <coport/detail/context_base.hpp>
#include <coport/detail/stop_registration.hpp>
#include <coport/detail/iocp/error.hpp>
#include <coport/detail/iocp/os.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <type_traits>

namespace coport::detail::iocp {

class context;
class worker;

inline constexpr ULONG_PTR key_io = 0;   // handles are associated with this key
inline constexpr ULONG_PTR key_work = 1; // lpOverlapped is a work_item*
inline constexpr ULONG_PTR key_wake = 2; // no payload

/// States of an operation (see operation::request_cancel and the starter protocol below).
enum : std::uint8_t {
    op_idle,            // constructed, not started
    op_starting,        // its starter is issuing the I/O; a completion that arrives now is left to the starter
    op_starting_cancel, // the same, and a stop request came meanwhile: the starter cancels once issued
    op_published,       // the kernel (or the timer heap) owns it; a stop request cancels it directly
    op_done,            // its completion has been taken; nothing may cancel it any more
    op_cancel_early,    // a stop request came before it started: it must not start
};

/// Base of every IOCP operation. The OVERLAPPED is its first member, so the worker loop turns the
/// LPOVERLAPPED of a packet back into the operation. Awaiters derive from it and
/// stay put (non-copyable, non-movable) while it is in flight.
///
/// Starter protocol of an I/O awaiter (await_suspend), all on the starting thread:
///   1. stop already requested -> m_error = ERROR_OPERATION_ABORTED, return false;
///   2. m_handle = h; register the stop callback (it may run at once: the state becomes op_cancel_early);
///   3. begin_start(ctx): false -> do not issue (cancelled early, or the context is shutting down;
///      m_error is set), return false;
///   4. issue the I/O with &m_ov (zeroed first):
///      - pending (or success without skip-on-success): return publish();
///      - finished without a packet (success with FILE_SKIP_COMPLETION_PORT_ON_SUCCESS, or an immediate
///        failure): set m_bytes/m_error, return complete_inline().
///   await_resume resets the stop registration first (it waits for a callback running on another thread,
///   so the OVERLAPPED outlives a concurrent CancelIoEx), then reads m_bytes/m_error.
class operation {
public:
    using cancel_fn = void (*)(operation*) noexcept;
    explicit operation(cancel_fn cancel) noexcept : m_cancel(cancel), m_node(&run_node) {}
    operation(const operation&) = delete;
    operation& operator=(const operation&) = delete;

    OVERLAPPED m_ov{};
    std::coroutine_handle<> m_handle;
    DWORD m_bytes = 0; // bytes transferred
    DWORD m_error = 0; // Win32 error (the NTSTATUS of the completion, converted), 0 on success
    std::atomic<std::uint8_t> m_state{op_idle};
    cancel_fn m_cancel; // asks whatever owns it to give it back: CancelIoEx(h, &m_ov), or the timer heap
    context* m_ctx = nullptr;
    worker* m_owner = nullptr; // whose thread resumes it: the worker of the thread that started it
    work_item m_node; // resumes it from its owner's queue (a completion handed over, post_completion)

    static operation* from_overlapped(OVERLAPPED* ov) noexcept { return reinterpret_cast<operation*>(ov); }

    /// From a stop callback or a close(), any thread. Never resumes the coroutine itself.
    void request_cancel() noexcept;
    /// Starter protocol step 3: counts the operation as outstanding work and makes the calling thread's
    /// worker its owner. False: do not issue it.
    bool begin_start(context& ctx) noexcept;
    /// Starter protocol, I/O pending. True: suspend, and touch nothing of *this any more. False: the
    /// completion was already taken by a worker (results are in): continue inline.
    bool publish() noexcept;
    /// Starter protocol, finished without a packet. False: continue inline. True: suspend; it resumes
    /// through the port (this thread completed too many operations inline in a row).
    bool complete_inline() noexcept;

private:
    static void run_node(work_item* w) noexcept;
};
static_assert(std::is_standard_layout_v<operation>);
static_assert(offsetof(operation, m_ov) == 0, "the OVERLAPPED must be the first member");

/// What a stop request does to an operation: request_cancel().
struct cancel_callback {
    operation* m_op;
    void operator()() const noexcept { m_op->request_cancel(); }
};

/// The stop callback of an operation: `emplace(token, cancel_callback{op})` in await_suspend, `reset()` first
/// in await_resume; after reset() no callback runs or is running, so the operation may go. Not
/// std::stop_callback directly: see detail/stop_registration.hpp (mingw-w64's ~stop_callback can hang).
using stop_registration = detail::stop_registration<cancel_callback>;

/// An operation that waits in the context's timer heap instead of the kernel.
class timer_op : public operation, public timer_node {
public:
    timer_op() noexcept : operation(&cancel) {}

private:
    static void cancel(operation* op) noexcept;
};

/// A handle whose pending I/O the context cancels when it is destroyed (sockets embed one).
struct registered_handle {
    HANDLE m_handle = INVALID_HANDLE_VALUE;
    registered_handle* m_prev = nullptr;
    registered_handle* m_next = nullptr;
};

/// WSAStartup(2,2) while at least one context exists; WSACleanup when the last one goes.
class winsock_guard {
public:
    winsock_guard() {
        std::lock_guard lock(mutex());
        if (count() == 0) {
            WSADATA data;
            if (int rc = ::WSAStartup(MAKEWORD(2, 2), &data); rc != 0)
                throw std::system_error(native_error(rc), "WSAStartup");
        }
        ++count();
    }
    ~winsock_guard() {
        std::lock_guard lock(mutex());
        if (--count() == 0) ::WSACleanup();
    }
    winsock_guard(const winsock_guard&) = delete;
    winsock_guard& operator=(const winsock_guard&) = delete;

private:
    static std::mutex& mutex() noexcept {
        static std::mutex m;
        return m;
    }
    static std::size_t& count() noexcept {
        static std::size_t n = 0;
        return n;
    }
};

// Per-thread state, reached only through noinline accessors with a compiler barrier: clang 14 may keep a
// thread-local's address across a coroutine's suspension and resumption on another thread (LLVM #47177).
[[gnu::noinline]] inline worker*& current_worker_slot() noexcept {
    static thread_local worker* slot = nullptr;
    asm volatile("" ::: "memory");
    return slot;
}
[[gnu::noinline]] inline unsigned& inline_completion_count() noexcept {
    static thread_local unsigned n = 0;
    asm volatile("" ::: "memory");
    return n;
}

/// The Win32 error of a completed OVERLAPPED's NTSTATUS, as GetQueuedCompletionStatus would report it
/// (GetQueuedCompletionStatusEx leaves the status in OVERLAPPED::Internal). Resolved from ntdll at run time
/// so that users need not link it.
inline DWORD ntstatus_to_win32(LONG status) noexcept {
    if (status >= 0) return 0; // success and informational codes
    using fn_t = ULONG(WINAPI*)(LONG);
    static const fn_t fn = [] {
        HMODULE ntdll = ::GetModuleHandleW(L"ntdll.dll");
        return ntdll ? reinterpret_cast<fn_t>(reinterpret_cast<void*>(::GetProcAddress(ntdll, "RtlNtStatusToDosError")))
                     : nullptr;
    }();
    if (fn) return fn(status);
    return status == static_cast<LONG>(0xC0000120) ? ERROR_OPERATION_ABORTED : ERROR_GEN_FAILURE; // STATUS_CANCELLED
}

inline constexpr clock::rep no_deadline = std::numeric_limits<clock::rep>::max();

/// Counters of the resumption rule's cost (relaxed; for tests and measurements, not for control).
struct context_stats {
    std::uint64_t io_packets = 0; // I/O completions taken from the port
    std::uint64_t handoffs = 0;   // completions (and lookup answers) handed to another worker's thread
    std::uint64_t wakes = 0;      // user APCs queued to wake a worker's thread
};

/// A slot of the context: held by one thread at a time (the thread inside run(), or a thread servicing it
/// while it is an orphan). Operations started on its thread are owned by it and resumed only by its holder.
class worker {
public:
    explicit worker(context& ctx) noexcept : m_ctx(ctx) {}
    worker(const worker&) = delete;
    worker& operator=(const worker&) = delete;

    context& ctx() noexcept { return m_ctx; }
    /// Queue `w` to run on this worker's thread (any thread; not counted as work). On the holder's own
    /// thread it goes to the local queue; from another thread to the locked one, waking the holder.
    void push(work_item* w) noexcept {
        if (current_worker_slot() == this) m_local.push(w);
        else push_remote(w);
    }
    void push_remote(work_item* w) noexcept;
    /// Makes the holder's thread look again at its queues, timers and the stop flag (any thread).
    void wake() noexcept {
        std::lock_guard lock(m_mutex);
        alert_locked();
    }
    /// wake(), and if no thread holds this worker, a thread that services orphans.
    void notify() noexcept;

    // Timers waiting for this worker (any thread, under m_timer_mutex).
    std::mutex m_timer_mutex;
    timer_heap m_timers;
    std::atomic<clock::rep> m_earliest{no_deadline}; // the heap top's deadline, readable without the lock
    void update_earliest() noexcept {                // under m_timer_mutex
        timer_node* t = m_timers.top();
        m_earliest.store(t ? t->m_deadline.time_since_epoch().count() : no_deadline);
    }

private:
    friend class context;
    enum class mode { run, run_one, poll };
    std::size_t loop(mode m);
    std::size_t run_queue(std::size_t budget) noexcept;
    std::size_t fire_timers(std::size_t budget) noexcept;
    void abort_timers() noexcept;
    void attach_thread() noexcept;
    void detach_thread() noexcept;
    bool alert_locked() noexcept; // under m_mutex: an APC to the holder's thread if it sleeps
    void stash_local() noexcept;  // the local queue's items into the locked one, for the next holder
    bool leave_requested() const noexcept;
    // Sequentially consistent, like the stores of m_remote_hint, m_earliest and m_claimed: a holder that
    // lets go (m_claimed = false, then has_pending()) and a thread that queues work for it (the hint, then
    // a servicer's claim) must not both miss the other.
    [[nodiscard]] bool has_pending() const noexcept { return m_remote_hint.load() || m_earliest.load() != no_deadline; }

    context& m_ctx;
    std::atomic<bool> m_claimed{false};
    const std::atomic<bool>* m_until = nullptr; // run_until: leave the loop once this is set
    work_queue m_local;                         // the holder's thread only

    std::mutex m_mutex; // guards m_remote, m_sleeping and m_thread
    work_queue m_remote;
    std::atomic<bool> m_remote_hint{false};
    bool m_sleeping = false;   // the holder waits in an alertable GQCS: wake it with an APC
    HANDLE m_thread = nullptr; // the thread inside run() (null while an orphan or serviced)

    // context_stats, counted where a lock is held anyway or by the holder alone: no shared counter on the
    // completion path.
    std::uint64_t m_handoffs = 0;                // under m_mutex
    std::uint64_t m_wakes = 0;                   // under m_mutex
    std::atomic<std::uint64_t> m_io_packets{0}; // written by the holder only
};

/// The Windows io_context: one I/O completion port, shared by the workers of the threads that run it.
class context {
public:
    /// Entries taken from the port per wait.
    static constexpr ULONG max_batch = 64;
    /// Operations one thread may complete inline in a row before one is resumed through its queue.
    static constexpr unsigned max_inline_completions = 16;
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
    /// Wakes every thread in run() (each worker's thread is addressed: an APC to the ones that sleep).
    void wake_all() noexcept {
        const unsigned n = m_nworkers.load(std::memory_order_acquire);
        for (unsigned i = 0; i < n; ++i) m_workers[i]->wake();
    }
    void stop() noexcept {
        m_stopped.store(true, std::memory_order_release);
        wake_all();
    }
    [[nodiscard]] bool stopped() const noexcept { return m_stopped.load(std::memory_order_acquire); }
    void restart() noexcept { m_stopped.store(false, std::memory_order_release); }
    [[nodiscard]] static const char* name() noexcept { return "iocp"; }
    [[nodiscard]] static std::string features() {
        return "GetQueuedCompletionStatusEx FILE_SKIP_COMPLETION_PORT_ON_SUCCESS, completions resumed on the "
               "starting thread";
    }
    /// The worker the calling thread holds for this context, or null.
    worker* this_worker() noexcept {
        worker* w = current_worker_slot();
        return (w && &w->ctx() == this) ? w : nullptr;
    }
    [[nodiscard]] bool running_in_this_thread() noexcept { return this_worker() != nullptr; }
    /// The worker that owns what the calling thread starts: its own, or, on a thread that does not run the
    /// context, the first worker held by a thread (the same one for every start while those threads run).
    worker& home() noexcept {
        if (worker* w = this_worker()) return *w;
        return foreign_home();
    }

    /// Queue a work item for whichever thread takes it from the port (any thread). Counts as outstanding
    /// work until it has run.
    void post(work_item* w) noexcept {
        work_started();
        w->m_counted = true;
        enqueue(w); // published: *w may already have run
    }
    /// post(): the port already hands each packet to whichever thread waits (spawn spreads by itself).
    void post_spread(work_item* w) noexcept { post(w); }
    /// Queue a work item to run on `owner`'s thread (any thread). Counts as outstanding work until it has run.
    void post_to(worker& owner, work_item* w) noexcept {
        work_started();
        w->m_counted = true;
        owner.push(w);
    }

    void work_started() noexcept { m_work.fetch_add(1, std::memory_order_relaxed); }
    /// The last unit of work wakes every thread in run() so that they return (the context is not
    /// stopped: new work and run() carry on).
    void work_finished() noexcept {
        if (m_work.fetch_sub(1, std::memory_order_acq_rel) == 1) wake_all();
    }
    [[nodiscard]] bool shutting_down() const noexcept { return m_shutdown.load(std::memory_order_acquire); }

    // --- for operations --------------------------------------------------------------------------------
    [[nodiscard]] HANDLE port() const noexcept { return m_port; }

    /// Binds `h` to the port (once, when it is opened) and, if `try_skip`, asks for
    /// FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE. `skip_on_success` tells
    /// whether that is in force: only then may an operation that succeeds at once complete inline
    /// (an immediate success of a handle without it still queues a packet); otherwise its packet still arrives.
    std::error_code associate(HANDLE h, bool& skip_on_success, bool try_skip = true) noexcept {
        skip_on_success = false;
        if (!::CreateIoCompletionPort(h, m_port, key_io, 0)) return last_error();
        if (try_skip &&
            ::SetFileCompletionNotificationModes(h, FILE_SKIP_COMPLETION_PORT_ON_SUCCESS | FILE_SKIP_SET_EVENT_ON_HANDLE))
            skip_on_success = true;
        return {};
    }
    /// associate() for a socket: skip-on-success only for IFS providers, since a non-IFS layered provider
    /// (LSP) may still queue a packet for an operation that succeeded at once.
    std::error_code associate_socket(SOCKET s, bool& skip_on_success) noexcept {
        return associate(reinterpret_cast<HANDLE>(s), skip_on_success, is_ifs_socket(s));
    }
    static bool is_ifs_socket(SOCKET s) noexcept {
        WSAPROTOCOL_INFOW info{};
        int len = sizeof info;
        if (::getsockopt(s, SOL_SOCKET, SO_PROTOCOL_INFOW, reinterpret_cast<char*>(&info), &len) != 0) return false;
        return (info.dwServiceFlags1 & XP1_IFS_HANDLES) != 0;
    }

    /// Handles whose pending I/O the context's destruction cancels (CancelIoEx(h, NULL)). Any thread.
    void register_handle(registered_handle* e) noexcept {
        std::lock_guard lock(m_handles_mutex);
        e->m_prev = nullptr;
        e->m_next = m_handles;
        if (m_handles) m_handles->m_prev = e;
        m_handles = e;
    }
    void unregister_handle(registered_handle* e) noexcept {
        std::lock_guard lock(m_handles_mutex);
        if (e->m_prev) e->m_prev->m_next = e->m_next;
        else if (m_handles == e) m_handles = e->m_next;
        if (e->m_next) e->m_next->m_prev = e->m_prev;
        e->m_prev = e->m_next = nullptr;
    }

    /// Resumes `op` on its owner's thread (its m_bytes/m_error already set) and ends its unit of work.
    void post_completion(operation* op) noexcept { op->m_owner->push(&op->m_node); }

    /// For an operation that completed inline: true if its awaiter may continue at once; false once this
    /// thread has completed max_inline_completions in a row without going back to the port (then it must
    /// suspend and be resumed from its queue, so that a fast socket cannot starve the others).
    static bool allow_inline_completion() noexcept {
        unsigned& n = inline_completion_count();
        if (++n <= max_inline_completions) return true;
        n = 0;
        return false;
    }

    /// Timers (timer.hpp). The caller has set m_handle and m_deadline; counts as work until resumed.
    void start_timer(timer_op* t) noexcept;
    void cancel_timer(timer_op* t) noexcept;

    /// Counts since construction (see context_stats).
    [[nodiscard]] context_stats stats() noexcept {
        context_stats s;
        const unsigned n = m_nworkers.load(std::memory_order_acquire);
        for (unsigned i = 0; i < n; ++i) {
            worker& w = *m_workers[i];
            s.io_packets += w.m_io_packets.load(std::memory_order_relaxed);
            std::lock_guard lock(w.m_mutex);
            s.handoffs += w.m_handoffs;
            s.wakes += w.m_wakes;
        }
        return s;
    }

private:
    friend class worker;
    static constexpr std::size_t unlimited = static_cast<std::size_t>(-1);
    // Longest wait without a timer: a thread wakes this often even when idle, so that work kept in the
    // fallback queue (PostQueuedCompletionStatus failed: out of resources) is never stranded. asio's
    // win_iocp_io_context does the same (default_gqcs_timeout = 500 ms).
    static constexpr DWORD heartbeat_ms = 500;
    // Longest wait while an orphan worker has timers or queued work: its holder is whoever looks.
    static constexpr DWORD orphan_poll_ms = 1;
    // Longest wait of the shutdown drain between two rounds of cancellation.
    static constexpr DWORD drain_ms = 10;

    std::size_t run_loop(worker::mode m, const std::atomic<bool>* until, work_item* first = nullptr);
    std::size_t dispatch(const OVERLAPPED_ENTRY* e, ULONG n) noexcept;
    bool complete_io(operation* op, DWORD bytes) noexcept;
    std::size_t run_fallback(std::size_t budget) noexcept;
    DWORD wait_timeout(const worker& w, bool orphans) const noexcept;
    void enqueue(work_item* w) noexcept;
    worker& foreign_home() noexcept;
    worker* claim_worker();
    void release_worker(worker& w) noexcept;
    struct orphan_turn {
        std::size_t ran = 0;
        bool pending = false; // an orphan still has timers or queued work
    };
    orphan_turn service_orphans(worker& self) noexcept;
    void wake_servicer(const worker* orphan) noexcept;
    void shutdown() noexcept;
    void cancel_registered_handles() noexcept;

    winsock_guard m_winsock; // first: outlives the port and everything that may hold a socket
    HANDLE m_port = nullptr;
    std::atomic<std::size_t> m_work{0};
    std::atomic<bool> m_stopped{false};
    std::atomic<bool> m_shutdown{false};

    std::array<std::unique_ptr<worker>, max_workers> m_workers{};
    std::atomic<unsigned> m_nworkers{0};
    std::mutex m_create_mutex;

    std::mutex m_fallback_mutex;
    work_queue m_fallback;
    std::atomic<bool> m_fallback_pending{false};

    std::mutex m_handles_mutex;
    registered_handle* m_handles = nullptr;

};

// ---------------------------------------------------------------------------------------------------------
// operation

inline void operation::request_cancel() noexcept {
    std::uint8_t s = m_state.load(std::memory_order_acquire);
    for (;;) {
        switch (s) {
        case op_idle:
            if (m_state.compare_exchange_weak(s, op_cancel_early, std::memory_order_acq_rel)) return;
            break;
        case op_starting:
            if (m_state.compare_exchange_weak(s, op_starting_cancel, std::memory_order_acq_rel)) return;
            break;
        case op_published:
            // CancelIoEx is thread-safe, and *this lives until the callback returns (see the class comment).
            // Its own completion (ERROR_OPERATION_ABORTED, or the result if it won) still comes as a packet.
            m_cancel(this);
            return;
        default: return; // done, or already asked
        }
    }
}

inline bool operation::begin_start(context& ctx) noexcept {
    m_ctx = &ctx;
    std::uint8_t s = op_idle;
    if (!m_state.compare_exchange_strong(s, op_starting, std::memory_order_acq_rel)) {
        m_error = ERROR_OPERATION_ABORTED;
        return false;
    }
    if (ctx.shutting_down()) { // the destroying thread drains: operations started now end at once
        m_state.store(op_done, std::memory_order_release);
        m_error = ERROR_OPERATION_ABORTED;
        return false;
    }
    m_owner = &ctx.home();
    ctx.work_started();
    return true;
}

inline bool operation::publish() noexcept {
    std::uint8_t s = op_starting;
    if (m_state.compare_exchange_strong(s, op_published, std::memory_order_acq_rel)) return true;
    if (s == op_starting_cancel) {
        // A stop request came while the I/O was being issued. A completion taken meanwhile is left to us
        // (complete_io does not resume while the starter has not published), so *this is alive here.
        m_cancel(this);
        if (m_state.compare_exchange_strong(s, op_published, std::memory_order_acq_rel)) return true;
    }
    return false; // op_done: a worker took the completion before we published; the results are in
}

inline bool operation::complete_inline() noexcept {
    m_state.store(op_done, std::memory_order_release);
    context& ctx = *m_ctx;
    if (context::allow_inline_completion()) {
        ctx.work_finished();
        return false;
    }
    ctx.post_completion(this); // published: touch nothing of *this any more
    return true;
}

inline void operation::run_node(work_item* w) noexcept {
    auto* op = reinterpret_cast<operation*>(reinterpret_cast<char*>(w) - offsetof(operation, m_node));
    context& ctx = *op->m_ctx;
    op->m_handle.resume(); // the awaiter (and op) may be gone after this
    ctx.work_finished();
}

inline void timer_op::cancel(operation* op) noexcept { op->m_ctx->cancel_timer(static_cast<timer_op*>(op)); }

#if COPORT_DEFINE_ENGINE // the engine: compiled in every file (header-only) or once (coport/impl/src.hpp)

// ---------------------------------------------------------------------------------------------------------
// worker

// The user APC that wakes a worker's thread from its alertable wait: the wait returning is the point.
static void CALLBACK wake_apc(ULONG_PTR) noexcept {}

COPORT_DECL bool worker::alert_locked() noexcept {
    if (!m_sleeping || !m_thread) return false;
    m_sleeping = false;
    ::QueueUserAPC(&wake_apc, m_thread, 0);
    ++m_wakes;
    return true;
}

COPORT_DECL void worker::push_remote(work_item* w) noexcept {
    bool orphan;
    {
        std::lock_guard lock(m_mutex);
        m_remote.push(w);
        m_remote_hint.store(true);
        ++m_handoffs;
        orphan = m_thread == nullptr;
        alert_locked();
    }
    if (orphan) m_ctx.wake_servicer(this);
}

COPORT_DECL void worker::notify() noexcept {
    bool orphan;
    {
        std::lock_guard lock(m_mutex);
        orphan = m_thread == nullptr;
        alert_locked();
    }
    if (orphan) m_ctx.wake_servicer(this);
}

COPORT_DECL void worker::stash_local() noexcept {
    if (m_local.empty()) return;
    std::lock_guard lock(m_mutex);
    m_remote.splice(m_local);
    m_remote_hint.store(true);
}

COPORT_DECL void worker::attach_thread() noexcept {
    HANDLE h = nullptr;
    // A real handle (GetCurrentThread() is a pseudo-handle that means "the caller" to whoever uses it).
    if (!::DuplicateHandle(::GetCurrentProcess(), ::GetCurrentThread(), ::GetCurrentProcess(), &h, 0, FALSE,
                           DUPLICATE_SAME_ACCESS))
        h = nullptr; // then this worker is woken like an orphan: by a servicer, or its heartbeat
    std::lock_guard lock(m_mutex);
    m_thread = h;
    m_sleeping = false;
}

COPORT_DECL void worker::detach_thread() noexcept {
    stash_local(); // what the local queue still holds goes where a servicer (or the next holder) finds it
    HANDLE h;
    {
        std::lock_guard lock(m_mutex);
        h = std::exchange(m_thread, nullptr);
        m_sleeping = false;
    }
    if (h) ::CloseHandle(h); // an APC queued before this runs in the thread's next alertable wait
}

COPORT_DECL std::size_t worker::run_queue(std::size_t budget) noexcept {
    if (m_remote_hint.load(std::memory_order_acquire)) {
        std::lock_guard lock(m_mutex);
        m_local.splice(m_remote);
        m_remote_hint.store(false, std::memory_order_relaxed);
    }
    return run_batch(m_local, budget, [this](work_item* w) noexcept {
        inline_completion_count() = 0;
        const bool counted = w->m_counted; // read first: running the item may free it
        w->run();
        if (counted) m_ctx.work_finished();
    });
}

COPORT_DECL std::size_t worker::fire_timers(std::size_t budget) noexcept {
    if (m_earliest.load(std::memory_order_acquire) > clock::now().time_since_epoch().count()) return 0;
    std::array<timer_op*, context::max_batch> due;
    std::size_t n = 0;
    {
        std::lock_guard lock(m_timer_mutex);
        const auto now = clock::now();
        const std::size_t limit = std::min<std::size_t>(budget, due.size());
        while (n < limit) {
            timer_node* t = m_timers.top();
            if (!t || t->m_deadline > now) break;
            m_timers.pop();
            due[n++] = static_cast<timer_op*>(t);
        }
        update_earliest();
    }
    // Resumed outside the lock: a resumed coroutine may start or cancel timers.
    for (std::size_t i = 0; i < n; ++i) {
        inline_completion_count() = 0;
        timer_op* t = due[i];
        t->m_error = 0;
        t->m_handle.resume(); // *t may be gone after this
        m_ctx.work_finished();
    }
    return n;
}

COPORT_DECL void worker::abort_timers() noexcept {
    for (;;) {
        std::array<timer_op*, context::max_batch> due;
        std::size_t n = 0;
        {
            std::lock_guard lock(m_timer_mutex);
            while (n < due.size()) {
                timer_node* t = m_timers.pop();
                if (!t) break;
                due[n++] = static_cast<timer_op*>(t);
            }
            update_earliest();
        }
        if (n == 0) return;
        for (std::size_t i = 0; i < n; ++i) {
            timer_op* t = due[i];
            t->m_error = ERROR_OPERATION_ABORTED;
            t->m_handle.resume();
            m_ctx.work_finished();
        }
    }
}

COPORT_DECL bool worker::leave_requested() const noexcept {
    if (m_until) return m_until->load(std::memory_order_acquire);
    return m_ctx.stopped() || m_ctx.m_work.load(std::memory_order_acquire) == 0;
}

COPORT_DECL std::size_t worker::loop(mode m) {
    context& ctx = m_ctx;
    const std::size_t budget = m == mode::run_one ? 1 : context::unlimited;
    const ULONG batch = m == mode::run_one ? 1 : context::max_batch;
    std::array<OVERLAPPED_ENTRY, context::max_batch> entries;
    std::size_t total = 0;
    for (;;) {
        if (m_until ? m_until->load(std::memory_order_acquire) : ctx.stopped()) break;
        std::size_t n = run_queue(budget);
        if (n < budget) n += fire_timers(budget - n);
        if (n < budget) n += ctx.run_fallback(budget - n);
        total += n;
        rethrow_pending_exception();
        if (m == mode::run_one && total > 0) break;
        if (!m_until && ctx.m_work.load(std::memory_order_acquire) == 0) break; // out of work
        if (m_until && m_until->load(std::memory_order_acquire)) break;

        bool block = m != mode::poll && n == 0 && m_local.empty();
        bool announced = false; // m_sleeping set: cleared after the wait
        if (block) {
            // The reasons to leave (run_until's flag, stop(), out of work) are set without this lock and then
            // announced by wake(), which queues an APC only to a thread it finds sleeping: read them again
            // after m_sleeping is set under the lock. An APC queued before the wait starts ends it at once.
            std::lock_guard lock(m_mutex);
            if (!m_remote.empty() || leave_requested()) block = false;
            else m_sleeping = announced = true;
        }
        // After m_sleeping is set: work pushed to an orphan from now on wakes this thread (wake_servicer).
        context::orphan_turn orphans;
        if (m != mode::run_one && ctx.m_nworkers.load(std::memory_order_acquire) > 1) orphans = ctx.service_orphans(*this);
        if (orphans.ran > 0) {
            total += orphans.ran;
            block = false;
        }
        const DWORD timeout = block ? ctx.wait_timeout(*this, orphans.pending) : 0;
        ULONG got = 0;
        const BOOL ok = ::GetQueuedCompletionStatusEx(ctx.m_port, entries.data(), batch, &got, timeout, TRUE);
        const DWORD err = ok ? 0 : ::GetLastError();
        if (announced) {
            std::lock_guard lock(m_mutex);
            m_sleeping = false;
        }
        if (!ok) {
            // WAIT_IO_COMPLETION: woken by an APC. Wine sets the count to 1 when it returns FALSE: no entry.
            if (err != WAIT_TIMEOUT && err != WAIT_IO_COMPLETION)
                throw std::system_error(native_error(static_cast<int>(err)), "GetQueuedCompletionStatusEx");
            if (m == mode::poll && n == 0 && orphans.ran == 0) break; // nothing ready
            continue;
        }
        total += ctx.dispatch(entries.data(), got);
        rethrow_pending_exception(); // after the whole batch: the entries taken must all be handled
        if (m == mode::run_one && total > 0) break;
    }
    return total;
}

// ---------------------------------------------------------------------------------------------------------
// context

COPORT_DECL context::context(const io_context_options& opts) {
    if (opts.backend == backend_kind::io_uring || opts.backend == backend_kind::epoll)
        throw std::system_error(make_error_code(error::backend_unavailable),
                                "io_uring and epoll are Linux backends; Windows uses IOCP");
    m_port = ::CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 0);
    if (!m_port) throw std::system_error(last_error(), "CreateIoCompletionPort");
    // Worker 0 exists from the start: operations started before any thread runs the context belong to it.
    m_workers[0] = std::make_unique<worker>(*this);
    m_nworkers.store(1, std::memory_order_release);
}

COPORT_DECL context::~context() {
    shutdown();
    ::CloseHandle(m_port);
}

COPORT_DECL void context::enqueue(work_item* w) noexcept {
    if (::PostQueuedCompletionStatus(m_port, 0, key_work, reinterpret_cast<LPOVERLAPPED>(w))) return;
    // Out of resources: keep the item; threads drain this queue on every turn (and wake for it within
    // heartbeat_ms at the latest).
    std::lock_guard lock(m_fallback_mutex);
    m_fallback.push(w);
    m_fallback_pending.store(true, std::memory_order_release);
}

COPORT_DECL std::size_t context::run_fallback(std::size_t budget) noexcept {
    if (!m_fallback_pending.load(std::memory_order_acquire)) return 0;
    work_queue batch;
    {
        std::lock_guard lock(m_fallback_mutex);
        for (std::size_t taken = 0; taken < budget; ++taken) {
            work_item* w = m_fallback.pop();
            if (!w) break;
            batch.push(w);
        }
        m_fallback_pending.store(!m_fallback.empty(), std::memory_order_release);
    }
    std::size_t n = 0;
    while (work_item* w = batch.pop()) {
        inline_completion_count() = 0;
        const bool counted = w->m_counted; // read first: running the item may free it
        w->run();
        if (counted) work_finished();
        ++n;
    }
    return n;
}

COPORT_DECL void context::start_timer(timer_op* t) noexcept {
    t->m_ctx = this;
    worker& owner = home();
    t->m_owner = &owner;
    work_started();
    bool aborted = false, earliest = false;
    {
        std::lock_guard lock(owner.m_timer_mutex);
        std::uint8_t s = op_idle;
        // Published under the lock: a stop callback either saw op_idle (then this CAS fails) or takes the
        // lock after the push and finds the timer queued.
        if (shutting_down() || !t->m_state.compare_exchange_strong(s, op_published, std::memory_order_acq_rel)) {
            aborted = true;
        } else {
            owner.m_timers.push(t);
            earliest = owner.m_timers.top() == t;
            if (earliest) owner.update_earliest();
        }
    }
    // From here on the owner's thread may fire the timer and resume its coroutine: only locals are used.
    if (aborted) {
        t->m_error = ERROR_OPERATION_ABORTED; // never queued: nobody else can complete it
        post_completion(t);
        return;
    }
    // The owner's thread may sleep past the new deadline: make it recompute (its own thread does before
    // it waits; an orphan's servicer polls while it has timers).
    if (earliest && &owner != this_worker()) owner.notify();
}

COPORT_DECL void context::cancel_timer(timer_op* t) noexcept {
    worker& owner = *t->m_owner;
    {
        std::lock_guard lock(owner.m_timer_mutex);
        if (!t->queued()) return; // fired (being resumed) or aborted by the shutdown drain
        owner.m_timers.remove(t);
        owner.update_earliest();
    }
    t->m_error = ERROR_OPERATION_ABORTED;
    post_completion(t); // resumed from its owner's queue, never inside the stop callback
}

COPORT_DECL DWORD context::wait_timeout(const worker& w, bool orphans) const noexcept {
    if (m_fallback_pending.load(std::memory_order_acquire)) return 0;
    DWORD ms = orphans ? orphan_poll_ms : heartbeat_ms;
    const clock::rep e = w.m_earliest.load(std::memory_order_acquire);
    if (e != no_deadline) {
        const auto left = clock::duration(e) - clock::now().time_since_epoch();
        if (left <= clock::duration::zero()) return 0;
        // Rounded up: waking before the deadline would only wait again.
        const auto up = std::chrono::ceil<std::chrono::milliseconds>(left).count();
        ms = static_cast<DWORD>(std::min<long long>(ms, up));
    }
    return ms;
}

COPORT_DECL bool context::complete_io(operation* op, DWORD bytes) noexcept {
    op->m_bytes = bytes;
    op->m_error = ntstatus_to_win32(static_cast<LONG>(op->m_ov.Internal));
    const std::uint8_t s = op->m_state.exchange(op_done, std::memory_order_acq_rel);
    if (s == op_starting || s == op_starting_cancel) {
        // Taken before its starter published it: the starter sees op_done in publish() and continues
        // inline; resuming here too would resume the coroutine twice.
        work_finished();
        return false;
    }
    worker& owner = *op->m_owner;
    if (&owner != this_worker()) {
        // Another thread's operation: its thread resumes it (the resumption rule). Its unit of work ends
        // when its node has run there.
        owner.push_remote(&op->m_node);
        return false;
    }
    op->m_handle.resume(); // the awaiter (and op) may be gone after this
    work_finished();
    return true;
}

COPORT_DECL std::size_t context::dispatch(const OVERLAPPED_ENTRY* e, ULONG n) noexcept {
    std::size_t handled = 0;
    for (ULONG i = 0; i < n; ++i) {
        inline_completion_count() = 0;
        switch (e[i].lpCompletionKey) {
        case key_wake: break;
        case key_work: {
            auto* w = reinterpret_cast<work_item*>(e[i].lpOverlapped);
            const bool counted = w->m_counted; // read first: running the item may free it
            w->run();
            if (counted) work_finished();
            ++handled;
            break;
        }
        default:
            if (worker* self = this_worker()) // its holder's count (the shutdown drain is not counted)
                self->m_io_packets.store(self->m_io_packets.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
            if (complete_io(operation::from_overlapped(e[i].lpOverlapped), e[i].dwNumberOfBytesTransferred))
                ++handled;
            break;
        }
    }
    return handled;
}

COPORT_DECL worker& context::foreign_home() noexcept {
    const unsigned n = m_nworkers.load(std::memory_order_acquire);
    for (unsigned i = 0; i < n; ++i)
        if (m_workers[i]->m_claimed.load(std::memory_order_acquire)) return *m_workers[i];
    return *m_workers[0]; // nobody runs the context now: the next run() (or the drain) takes it
}

COPORT_DECL worker* context::claim_worker() {
    unsigned n = m_nworkers.load(std::memory_order_acquire);
    // First a worker with something waiting (an orphan), then any free one, then a new one.
    for (int pass = 0; pass < 2; ++pass) {
        for (unsigned i = 0; i < n; ++i) {
            worker& w = *m_workers[i];
            if (pass == 0 && !w.has_pending()) continue;
            if (w.m_claimed.load(std::memory_order_relaxed)) continue;
            bool expected = false;
            if (w.m_claimed.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) return &w;
        }
    }
    std::lock_guard lock(m_create_mutex);
    n = m_nworkers.load(std::memory_order_acquire);
    if (n == max_workers) throw std::runtime_error("coport: too many threads running one io_context");
    m_workers[n] = std::make_unique<worker>(*this);
    m_workers[n]->m_claimed.store(true, std::memory_order_relaxed);
    m_nworkers.store(n + 1, std::memory_order_release);
    return m_workers[n].get();
}

COPORT_DECL void context::release_worker(worker& w) noexcept {
    w.m_until = nullptr;
    w.detach_thread();
    w.m_claimed.store(false); // then has_pending(): see has_pending
    if (w.has_pending()) wake_servicer(&w); // its timers and queued items now wait for another thread
}

COPORT_DECL context::orphan_turn context::service_orphans(worker& self) noexcept {
    orphan_turn out;
    const unsigned n = m_nworkers.load(std::memory_order_acquire);
    worker*& slot = current_worker_slot();
    for (unsigned i = 0; i < n; ++i) {
        worker& w = *m_workers[i];
        if (&w == &self || !w.has_pending() || w.m_claimed.load(std::memory_order_relaxed)) continue;
        bool expected = false;
        if (!w.m_claimed.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) continue;
        // Held as its own thread held it: what its coroutines start stays its own, so they never run in
        // parallel with each other (on this thread now, on another servicer's later, never on two at once).
        slot = &w;
        out.ran += w.run_queue(unlimited);
        out.ran += w.fire_timers(unlimited);
        slot = &self;
        w.stash_local(); // queued by those handlers: where the next holder looks
        w.m_claimed.store(false); // then has_pending(): see has_pending
        out.pending = out.pending || w.has_pending();
    }
    return out;
}

COPORT_DECL void context::wake_servicer(const worker* orphan) noexcept {
    // One sleeping thread is enough: a thread that is not sleeping services orphans before it sleeps.
    const unsigned n = m_nworkers.load(std::memory_order_acquire);
    for (unsigned i = 0; i < n; ++i) {
        worker& w = *m_workers[i];
        if (&w == orphan) continue;
        std::lock_guard lock(w.m_mutex);
        if (w.alert_locked()) return;
    }
}

COPORT_DECL std::size_t context::run_loop(worker::mode m, const std::atomic<bool>* until, work_item* first) {
    if (this_worker()) throw std::logic_error("coport: io_context::run() called from one of its own handlers");
    if (!until && stopped()) return 0;
    worker* w = claim_worker();
    worker*& slot = current_worker_slot();
    struct release {
        context& ctx;
        worker*& slot;
        worker* prev;
        worker* w;
        ~release() {
            slot = prev;
            ctx.release_worker(*w);
        }
    } guard{*this, slot, slot, w};
    slot = w;
    w->m_until = until;
    w->attach_thread();
    if (first) {
        work_started();
        first->m_counted = true;
        w->m_local.push(first);
    }
    return w->loop(m);
}

COPORT_DECL void context::cancel_registered_handles() noexcept {
    std::lock_guard lock(m_handles_mutex);
    for (registered_handle* e = m_handles; e; e = e->m_next) ::CancelIoEx(e->m_handle, nullptr);
}

COPORT_DECL void context::shutdown() noexcept {
    m_shutdown.store(true, std::memory_order_release);
    worker*& slot = current_worker_slot();
    worker* prev = slot;
    std::array<OVERLAPPED_ENTRY, max_batch> entries;
    bool ask = true;
    // Every outstanding unit of work ends with a packet, a timer, a queued item or a fallback item, all
    // handled here, each worker's on its behalf; operations started meanwhile see shutting_down() and end
    // at once.
    while (m_work.load(std::memory_order_acquire) > 0) {
        const unsigned n = m_nworkers.load(std::memory_order_acquire);
        for (unsigned i = 0; i < n; ++i) {
            worker& w = *m_workers[i];
            slot = &w;
            w.abort_timers();
            w.run_queue(unlimited);
            w.stash_local(); // queued by those handlers: the next round
        }
        slot = nullptr; // completions taken below go to their owners' queues: the next round runs them
        if (ask) cancel_registered_handles();
        run_fallback(unlimited);
        if (m_work.load(std::memory_order_acquire) == 0) break;
        ULONG got = 0;
        if (!::GetQueuedCompletionStatusEx(m_port, entries.data(), max_batch, &got, drain_ms, FALSE)) got = 0;
        dispatch(entries.data(), got);
        ask = got == 0; // quiet: cancel again, in case I/O was issued on a handle after the last round
    }
    slot = prev;
}

#endif // COPORT_DEFINE_ENGINE

} // namespace coport::detail::iocp
