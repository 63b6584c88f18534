// SPDX-License-Identifier: MIT
#pragma once
// Windows backend: one I/O completion port per context, as in the seed tutorial
// (CreateIoCompletionPort(INVALID_HANDLE_VALUE, NULL, 0, 0)); every thread in run() waits on it with
// GetQueuedCompletionStatusEx. A packet is one of:
//   key_io    an overlapped I/O completion on an associated handle: lpOverlapped is the first member of an
//             `operation`, whose coroutine is resumed;
//   key_work  a work item (posted callable, schedule(), an operation the library completes itself):
//             lpOverlapped carries the work_item pointer and is never read as an OVERLAPPED;
//   key_wake  nothing: makes a waiting thread look again at the stop flag, the timers and run_until.
// Timers wait in one heap per context under a mutex; a thread about to wait bounds its wait by the
// earliest deadline, and a timer that becomes the earliest posts a wake packet.
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
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <system_error>
#include <type_traits>

namespace coport::detail::iocp {

class context;

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
/// LPOVERLAPPED of a packet back into the operation (COMPILERS.md rule 3). Awaiters derive from it and
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
    work_item m_node; // resumes it through the port when the library completes it (post_completion)

    static operation* from_overlapped(OVERLAPPED* ov) noexcept { return reinterpret_cast<operation*>(ov); }

    /// From a stop callback or a close(), any thread. Never resumes the coroutine itself.
    void request_cancel() noexcept;
    /// Starter protocol step 3: counts the operation as outstanding work. False: do not issue it.
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
[[gnu::noinline]] inline context*& current_context_slot() noexcept {
    static thread_local context* slot = nullptr;
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

/// The Windows io_context: one I/O completion port.
class context {
public:
    /// Entries taken from the port per wait.
    static constexpr ULONG max_batch = 64;
    /// Operations one thread may complete inline in a row before one is resumed through the port.
    static constexpr unsigned max_inline_completions = 16;

    explicit context(const io_context_options& opts);
    ~context();
    context(const context&) = delete;
    context& operator=(const context&) = delete;

    std::size_t run() { return run_loop(mode::run, nullptr); }
    std::size_t run_one() { return run_loop(mode::run_one, nullptr); }
    std::size_t poll() { return run_loop(mode::poll, nullptr); }
    /// Runs until `done` is set (whoever sets it calls wake_all()), even when stopped or out of work.
    std::size_t run_until(const std::atomic<bool>& done) { return run_loop(mode::run, &done); }
    /// One wake packet per thread in run(). A thread in run_until may miss it (another thread can take
    /// several packets in one batch): run_until bounds its waits by 10 ms.
    void wake_all() noexcept {
        for (unsigned n = m_threads.load(std::memory_order_acquire); n > 0; --n) post_wake();
    }
    /// CloseHandle(port) does not wake threads in GQCS under Wine: stop() posts one wake packet per thread.
    void stop() noexcept {
        m_stopped.store(true, std::memory_order_release);
        wake_all();
    }
    [[nodiscard]] bool stopped() const noexcept { return m_stopped.load(std::memory_order_acquire); }
    void restart() noexcept { m_stopped.store(false, std::memory_order_release); }
    [[nodiscard]] static const char* name() noexcept { return "iocp"; }
    [[nodiscard]] static std::string features() {
        return "GetQueuedCompletionStatusEx FILE_SKIP_COMPLETION_PORT_ON_SUCCESS";
    }
    [[nodiscard]] bool running_in_this_thread() noexcept { return current_context_slot() == this; }

    /// Queue a work item (any thread). Counts as outstanding work until it has run.
    void post(work_item* w) noexcept {
        work_started();
        w->m_counted = true;
        enqueue(w); // published: *w may already have run
    }
    /// post(): the port already hands each packet to whichever thread waits (spawn spreads by itself).
    void post_spread(work_item* w) noexcept { post(w); }

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
    /// (COMPILERS.md rule 4); otherwise its packet still arrives.
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

    /// Resumes `op` from the port (its m_bytes/m_error already set) and ends its unit of work.
    void post_completion(operation* op) noexcept { enqueue(&op->m_node); }

    /// For an operation that completed inline: true if its awaiter may continue at once; false once this
    /// thread has completed max_inline_completions in a row without going back to the port (then it must
    /// suspend and be resumed through the port, so that a fast socket cannot starve the others).
    static bool allow_inline_completion() noexcept {
        unsigned& n = inline_completion_count();
        if (++n <= max_inline_completions) return true;
        n = 0;
        return false;
    }

    /// Timers (timer.hpp). The caller has set m_handle and m_deadline; counts as work until resumed.
    void start_timer(timer_op* t) noexcept;
    void cancel_timer(timer_op* t) noexcept;

private:
    enum class mode { run, run_one, poll };
    static constexpr std::size_t unlimited = static_cast<std::size_t>(-1);
    static constexpr clock::rep no_deadline = std::numeric_limits<clock::rep>::max();
    // Longest wait without a timer: a thread wakes this often even when idle, so that work kept in the
    // fallback queue (PostQueuedCompletionStatus failed: out of resources) is never stranded. asio's
    // win_iocp_io_context does the same (default_gqcs_timeout = 500 ms).
    static constexpr DWORD heartbeat_ms = 500;
    // Longest wait in run_until: wake_all() cannot address that one thread (see wake_all).
    static constexpr DWORD run_until_ms = 10;

    std::size_t run_loop(mode m, const std::atomic<bool>* until);
    std::size_t dispatch(const OVERLAPPED_ENTRY* e, ULONG n) noexcept;
    void complete_io(operation* op, DWORD bytes) noexcept;
    std::size_t fire_timers(std::size_t budget) noexcept;
    std::size_t run_fallback(std::size_t budget) noexcept;
    DWORD wait_timeout(bool until) const noexcept;
    void post_wake() noexcept { ::PostQueuedCompletionStatus(m_port, 0, key_wake, nullptr); }
    void enqueue(work_item* w) noexcept;
    void update_earliest() noexcept; // under m_timer_mutex
    void shutdown() noexcept;
    void abort_timers() noexcept;
    void cancel_registered_handles() noexcept;

    winsock_guard m_winsock; // first: outlives the port and everything that may hold a socket
    HANDLE m_port = nullptr;
    std::atomic<std::size_t> m_work{0};
    std::atomic<unsigned> m_threads{0}; // threads inside run()/run_one()/poll()/run_until()
    std::atomic<bool> m_stopped{false};
    std::atomic<bool> m_shutdown{false};

    std::mutex m_timer_mutex;
    timer_heap m_timers;
    std::atomic<clock::rep> m_earliest{no_deadline}; // deadline of the heap's top, readable without the lock

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
// context

COPORT_DECL context::context(const io_context_options& opts) {
    if (opts.backend == backend_kind::io_uring || opts.backend == backend_kind::epoll)
        throw std::system_error(make_error_code(error::backend_unavailable),
                                "io_uring and epoll are Linux backends; Windows uses IOCP");
    m_port = ::CreateIoCompletionPort(INVALID_HANDLE_VALUE, nullptr, 0, 0);
    if (!m_port) throw std::system_error(last_error(), "CreateIoCompletionPort");
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

COPORT_DECL void context::update_earliest() noexcept {
    timer_node* t = m_timers.top();
    m_earliest.store(t ? t->m_deadline.time_since_epoch().count() : no_deadline, std::memory_order_release);
}

COPORT_DECL void context::start_timer(timer_op* t) noexcept {
    t->m_ctx = this;
    work_started();
    bool aborted = false, earliest = false;
    {
        std::lock_guard lock(m_timer_mutex);
        std::uint8_t s = op_idle;
        // Published under the lock: a stop callback either saw op_idle (then this CAS fails) or takes the
        // lock after the push and finds the timer queued.
        if (shutting_down() || !t->m_state.compare_exchange_strong(s, op_published, std::memory_order_acq_rel)) {
            aborted = true;
        } else {
            m_timers.push(t);
            earliest = m_timers.top() == t;
            if (earliest) update_earliest();
        }
    }
    // From here on another thread may fire the timer and resume its coroutine: only locals are used.
    if (aborted) {
        t->m_error = ERROR_OPERATION_ABORTED; // never queued: nobody else can complete it
        post_completion(t);
        return;
    }
    // A thread waiting in GQCS may sleep past the new deadline: wake one to recompute. Not needed when the
    // caller is the only thread in run(): it recomputes before it waits.
    if (earliest && m_threads.load(std::memory_order_acquire) > (running_in_this_thread() ? 1u : 0u)) post_wake();
}

COPORT_DECL void context::cancel_timer(timer_op* t) noexcept {
    {
        std::lock_guard lock(m_timer_mutex);
        if (!t->queued()) return; // fired (being resumed) or aborted by the shutdown drain
        m_timers.remove(t);
        update_earliest();
    }
    t->m_error = ERROR_OPERATION_ABORTED;
    post_completion(t); // resumed from the port, never inside the stop callback
}

COPORT_DECL std::size_t context::fire_timers(std::size_t budget) noexcept {
    if (m_earliest.load(std::memory_order_acquire) > clock::now().time_since_epoch().count()) return 0;
    std::array<timer_op*, max_batch> due;
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
        work_finished();
    }
    return n;
}

COPORT_DECL DWORD context::wait_timeout(bool until) const noexcept {
    if (m_fallback_pending.load(std::memory_order_acquire)) return 0;
    DWORD ms = until ? run_until_ms : heartbeat_ms;
    const clock::rep e = m_earliest.load(std::memory_order_acquire);
    if (e != no_deadline) {
        const auto left = clock::duration(e) - clock::now().time_since_epoch();
        if (left <= clock::duration::zero()) return 0;
        // Rounded up: waking before the deadline would only wait again.
        const auto up = std::chrono::ceil<std::chrono::milliseconds>(left).count();
        ms = static_cast<DWORD>(std::min<long long>(ms, up));
    }
    return ms;
}

COPORT_DECL void context::complete_io(operation* op, DWORD bytes) noexcept {
    op->m_bytes = bytes;
    op->m_error = ntstatus_to_win32(static_cast<LONG>(op->m_ov.Internal));
    const std::uint8_t s = op->m_state.exchange(op_done, std::memory_order_acq_rel);
    if (s == op_starting || s == op_starting_cancel) {
        // Taken before its starter published it: the starter sees op_done in publish() and continues
        // inline; resuming here too would resume the coroutine twice.
        work_finished();
        return;
    }
    op->m_handle.resume(); // the awaiter (and op) may be gone after this
    work_finished();
}

COPORT_DECL std::size_t context::dispatch(const OVERLAPPED_ENTRY* e, ULONG n) noexcept {
    std::size_t handled = 0;
    unsigned wakes = 0;
    for (ULONG i = 0; i < n; ++i) {
        inline_completion_count() = 0;
        switch (e[i].lpCompletionKey) {
        case key_wake: ++wakes; break;
        case key_work: {
            auto* w = reinterpret_cast<work_item*>(e[i].lpOverlapped);
            const bool counted = w->m_counted; // read first: running the item may free it
            w->run();
            if (counted) work_finished();
            ++handled;
            break;
        }
        default:
            complete_io(operation::from_overlapped(e[i].lpOverlapped), e[i].dwNumberOfBytesTransferred);
            ++handled;
            break;
        }
    }
    // One batch may hold several wake packets meant for different threads (stop(), wake_all()): this
    // thread needs one; the others go back to the port.
    for (; wakes > 1; --wakes) post_wake();
    return handled;
}

COPORT_DECL std::size_t context::run_loop(mode m, const std::atomic<bool>* until) {
    context*& slot = current_context_slot();
    if (slot == this) throw std::logic_error("coport: io_context::run() called from one of its own handlers");
    m_threads.fetch_add(1, std::memory_order_acq_rel); // before reading the stop flag: stop() must count us
    struct leave {
        context& ctx;
        context*& slot;
        context* prev;
        ~leave() {
            slot = prev;
            const unsigned left = ctx.m_threads.fetch_sub(1, std::memory_order_acq_rel) - 1;
            // Pass the wake on: another thread may have taken this thread's packet in its batch.
            if (left > 0 && (ctx.stopped() || ctx.m_work.load(std::memory_order_acquire) == 0)) ctx.post_wake();
        }
    } guard{*this, slot, slot};
    slot = this;
    if (!until && stopped()) return 0;

    const std::size_t budget = m == mode::run_one ? 1 : unlimited;
    const ULONG batch = m == mode::run_one ? 1 : max_batch;
    std::array<OVERLAPPED_ENTRY, max_batch> entries;
    std::size_t total = 0;
    for (;;) {
        if (until ? until->load(std::memory_order_acquire) : stopped()) break;
        std::size_t n = run_fallback(budget);
        if (n < budget) n += fire_timers(budget - n);
        total += n;
        rethrow_pending_exception();
        if (m == mode::run_one && total > 0) break;
        if (!until && m_work.load(std::memory_order_acquire) == 0) break; // out of work
        if (until && until->load(std::memory_order_acquire)) break;

        const DWORD timeout = (m == mode::poll || n > 0) ? 0 : wait_timeout(until != nullptr);
        ULONG got = 0;
        if (!::GetQueuedCompletionStatusEx(m_port, entries.data(), batch, &got, timeout, FALSE)) {
            const DWORD err = ::GetLastError();
            if (err != WAIT_TIMEOUT) throw std::system_error(native_error(static_cast<int>(err)), "GetQueuedCompletionStatusEx");
            // Wine sets the count to 1 when it returns FALSE: it is not an entry.
            if (m == mode::poll && n == 0) break; // nothing ready
            continue;
        }
        total += dispatch(entries.data(), got);
        rethrow_pending_exception(); // after the whole batch: the entries taken must all be handled
        if (m == mode::run_one && total > 0) break;
    }
    return total;
}

COPORT_DECL void context::abort_timers() noexcept {
    for (;;) {
        std::array<timer_op*, max_batch> due;
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
            work_finished();
        }
    }
}

COPORT_DECL void context::cancel_registered_handles() noexcept {
    std::lock_guard lock(m_handles_mutex);
    for (registered_handle* e = m_handles; e; e = e->m_next) ::CancelIoEx(e->m_handle, nullptr);
}

COPORT_DECL void context::shutdown() noexcept {
    m_shutdown.store(true, std::memory_order_release);
    context*& slot = current_context_slot();
    context* prev = slot;
    slot = this;
    std::array<OVERLAPPED_ENTRY, max_batch> entries;
    bool ask = true;
    // Every outstanding unit of work ends with a packet, a timer or a fallback item, all handled here;
    // operations started meanwhile see shutting_down() and end at once.
    while (m_work.load(std::memory_order_acquire) > 0) {
        abort_timers();
        if (ask) cancel_registered_handles();
        run_fallback(unlimited);
        if (m_work.load(std::memory_order_acquire) == 0) break;
        ULONG got = 0;
        if (!::GetQueuedCompletionStatusEx(m_port, entries.data(), max_batch, &got, run_until_ms, FALSE)) got = 0;
        dispatch(entries.data(), got);
        ask = got == 0; // quiet: cancel again, in case I/O was issued on a handle after the last round
    }
    slot = prev;
}

#endif // COPORT_DEFINE_ENGINE

} // namespace coport::detail::iocp
