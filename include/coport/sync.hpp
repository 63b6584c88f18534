// SPDX-License-Identifier: MIT
#pragma once
/// \file sync.hpp
/// Coordinating coroutines: `async_mutex`, `async_semaphore`, `async_event` and `channel<T>`.
///
/// Common contract (every backend, any thread running or not running the context):
/// - **Resumes on** the thread that started the wait (the resumption rule, io_context.hpp). A wait that can
///   be satisfied at once does not suspend. A release (`unlock`, `release`, `set`, a `send` or `recv` that
///   frees a waiter, `close`) never resumes a waiter inside the call: it queues the waiter's resumption on
///   that waiter's thread.
/// - **FIFO**: waiters are served in the order they began to wait, and a release hands the resource to the
///   first waiter directly, so a later `try_*` or wait cannot take it first.
/// - **Cancel**: each wait takes a `std::stop_token`. A stop while the wait is queued takes it out of the
///   queue and resumes it with `errc::operation_aborted`: it never took the resource (no lock held, no
///   permit taken, no value sent or received). A stop after the resource was handed to it changes nothing:
///   the wait succeeds. A token already stopped fails the wait at once.
/// - A wait in progress is not outstanding work of the io_context (as with cppcoro's primitives): run() may
///   return while coroutines wait here with nothing else to do. Its resumption, once queued, is.
/// - The object must outlive every wait on it; it is neither copyable nor movable.

#include <coport/detail/context_base.hpp>
#include <coport/detail/stop_registration.hpp>
#include <coport/error.hpp>
#include <coport/io_context.hpp>
#include <coport/result.hpp>

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <utility>

namespace coport {

namespace detail {

/// A wait queued in one of the primitives. Its fields are guarded by the primitive's mutex.
struct sync_waiter {
    enum : std::uint8_t { idle, queued, granted, cancelled };
    resume_item m_resume; // queued on m_home's thread to resume the waiting coroutine
    io_context* m_ctx = nullptr;
    backend::worker* m_home = nullptr;
    sync_waiter* m_prev = nullptr;
    sync_waiter* m_next = nullptr;
    std::uint8_t m_state = idle;
    std::error_code m_error; // why it ended without the resource (cancelled, channel closed)
};

/// Intrusive FIFO of waiters, doubly linked so that a cancelled one leaves in O(1). Not thread-safe.
class waiter_list {
public:
    [[nodiscard]] bool empty() const noexcept { return m_head == nullptr; }
    void push_back(sync_waiter* w) noexcept {
        w->m_next = nullptr;
        w->m_prev = m_tail;
        if (m_tail) m_tail->m_next = w;
        else m_head = w;
        m_tail = w;
    }
    sync_waiter* pop_front() noexcept {
        sync_waiter* w = m_head;
        if (w) remove(w);
        return w;
    }
    void remove(sync_waiter* w) noexcept {
        if (w->m_prev) w->m_prev->m_next = w->m_next;
        else m_head = w->m_next;
        if (w->m_next) w->m_next->m_prev = w->m_prev;
        else m_tail = w->m_prev;
        w->m_prev = w->m_next = nullptr;
    }

private:
    sync_waiter* m_head = nullptr;
    sync_waiter* m_tail = nullptr;
};

/// Queues the resumption of a waiter that was granted or failed, on the thread that started its wait.
/// Outside the primitive's lock; *w may be gone once this returns.
inline void resume_waiter(sync_waiter* w) noexcept {
    io_context* c = w->m_ctx;
    c->native().post_to(*w->m_home, &w->m_resume);
}

/// Waiters granted under a lock, resumed after it is released.
class wake_list {
public:
    void add(sync_waiter* w) noexcept { m_list.push_back(w); }
    ~wake_list() { run(); }
    void run() noexcept {
        while (sync_waiter* w = m_list.pop_front()) resume_waiter(w);
    }

private:
    waiter_list m_list;
};

/// The awaiter of every wait: `Derived` supplies, under the primitive's mutex,
///   bool take_now(wake_list&)   finish now if possible (granted, or failed with m_error set);
///   waiter_list& queue()        where to wait otherwise.
/// `Prim` has `m_mutex` and `m_ctx`.
template <class Prim, class Derived>
class sync_awaiter : public sync_waiter {
public:
    sync_awaiter(Prim& p, std::stop_token st) noexcept : m_prim(&p), m_stop(std::move(st)) {}
    sync_awaiter(const sync_awaiter&) = delete;
    sync_awaiter& operator=(const sync_awaiter&) = delete;

    bool await_ready() const noexcept { return false; }
    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> h) noexcept {
        if (m_stop.stop_requested()) {
            m_state = cancelled;
            m_error = make_error_code(error::operation_aborted);
            return false;
        }
        m_resume.m_handle = h;
        m_ctx = m_prim->m_ctx;
        m_home = &m_ctx->native().home();
        // Registered before the wait is queued: a stop that comes first marks it (idle -> cancelled), and
        // the lock below sees that.
        if (m_stop.stop_possible()) m_reg.emplace(m_stop, on_stop{this});
        Prim& p = *m_prim;
        wake_list wake; // after the lock (declared first: destroyed last)
        std::lock_guard lock(p.m_mutex);
        if (m_state == cancelled) return false;
        if (static_cast<Derived*>(this)->take_now(wake)) {
            m_state = granted;
            return false;
        }
        m_state = queued;
        static_cast<Derived*>(this)->queue().push_back(this);
        return true; // published: a release may resume it on its thread as soon as the lock is released
    }

protected:
    /// Call first in await_resume: no stop callback runs or will run after it. The error, if any.
    std::error_code settle() noexcept {
        m_reg.reset();
        return m_error;
    }
    Prim* m_prim;

private:
    struct on_stop {
        sync_awaiter* m_self;
        void operator()() const noexcept { m_self->cancel(); }
    };
    void cancel() noexcept {
        Prim& p = *m_prim;
        std::unique_lock lock(p.m_mutex);
        if (m_state == queued) {
            static_cast<Derived*>(this)->queue().remove(this);
            m_state = cancelled;
            m_error = make_error_code(error::operation_aborted);
            lock.unlock();
            resume_waiter(this); // the coroutine waits in settle() for this callback to return
        } else if (m_state == idle) {
            m_state = cancelled; // before it was queued: await_suspend sees it under the lock
            m_error = make_error_code(error::operation_aborted);
        }
    }

    std::stop_token m_stop;
    stop_registration<on_stop> m_reg;
};

} // namespace detail

class async_mutex;

/// Owns a lock of an async_mutex; unlocks it when destroyed. Movable.
class async_lock {
public:
    async_lock() noexcept = default;
    explicit async_lock(async_mutex& m) noexcept : m_mutex(&m) {}
    async_lock(async_lock&& o) noexcept : m_mutex(std::exchange(o.m_mutex, nullptr)) {}
    async_lock& operator=(async_lock&& o) noexcept {
        if (this != &o) {
            unlock();
            m_mutex = std::exchange(o.m_mutex, nullptr);
        }
        return *this;
    }
    ~async_lock() { unlock(); }
    /// Unlocks now (once).
    void unlock() noexcept;
    [[nodiscard]] bool owns_lock() const noexcept { return m_mutex != nullptr; }

private:
    async_mutex* m_mutex = nullptr;
};

/// A mutex for coroutines: waiting for it suspends the coroutine, not the thread. Not recursive. FIFO: unlock
/// hands the lock to the first waiter.
class async_mutex {
public:
    explicit async_mutex(io_context& ctx) noexcept : m_ctx(&ctx) {}
    async_mutex(const async_mutex&) = delete;
    async_mutex& operator=(const async_mutex&) = delete;

    /// Takes the lock if it is free and nobody waits for it.
    [[nodiscard]] bool try_lock() noexcept {
        std::lock_guard lock(m_mutex);
        if (m_locked) return false;
        m_locked = true;
        return true;
    }
    /// Releases the lock, to the first waiter if there is one. Precondition: held (by anyone: a lock is
    /// not tied to a thread or coroutine).
    void unlock() noexcept {
        detail::wake_list wake;
        std::lock_guard lock(m_mutex);
        if (detail::sync_waiter* w = m_waiters.pop_front()) {
            w->m_state = detail::sync_waiter::granted; // the lock passes to it: m_locked stays true
            wake.add(w);
        } else {
            m_locked = false;
        }
    }

    template <bool Scoped>
    class lock_awaiter : public detail::sync_awaiter<async_mutex, lock_awaiter<Scoped>> {
        using base = detail::sync_awaiter<async_mutex, lock_awaiter<Scoped>>;

    public:
        lock_awaiter(async_mutex& m, std::stop_token st) noexcept : base(m, std::move(st)) {}
        auto await_resume() noexcept {
            std::error_code e = this->settle();
            if constexpr (Scoped) {
                if (e) return result<async_lock>(unexpected(e));
                return result<async_lock>(async_lock(*this->m_prim));
            } else {
                if (e) return result<void>(unexpected(e));
                return result<void>();
            }
        }
        bool take_now(detail::wake_list&) noexcept {
            async_mutex& m = *this->m_prim;
            if (m.m_locked) return false;
            m.m_locked = true;
            return true;
        }
        detail::waiter_list& queue() noexcept { return this->m_prim->m_waiters; }
    };
    /// `co_await m.lock(st)` → `result<void>`: the lock is held (release it with unlock()), or
    /// `errc::operation_aborted` if `st` was stopped first.
    [[nodiscard]] lock_awaiter<false> lock(std::stop_token st = {}) noexcept { return {*this, std::move(st)}; }
    /// `auto g = co_await m.scoped_lock(st)` → `result<async_lock>`: the guard unlocks when destroyed.
    /// Without a token it cannot fail.
    [[nodiscard]] lock_awaiter<true> scoped_lock(std::stop_token st = {}) noexcept { return {*this, std::move(st)}; }

private:
    template <class, class>
    friend class detail::sync_awaiter;
    io_context* m_ctx;
    std::mutex m_mutex;
    bool m_locked = false;
    detail::waiter_list m_waiters;
};

inline void async_lock::unlock() noexcept {
    if (m_mutex) std::exchange(m_mutex, nullptr)->unlock();
}

/// A counting semaphore for coroutines. FIFO: release() hands permits to the waiters in order.
class async_semaphore {
public:
    async_semaphore(io_context& ctx, std::size_t initial) noexcept : m_ctx(&ctx), m_count(initial) {}
    async_semaphore(const async_semaphore&) = delete;
    async_semaphore& operator=(const async_semaphore&) = delete;

    /// Takes a permit if one is free and nobody waits.
    [[nodiscard]] bool try_acquire() noexcept {
        std::lock_guard lock(m_mutex);
        if (m_count == 0 || !m_waiters.empty()) return false;
        --m_count;
        return true;
    }
    /// Returns `n` permits: to the first `n` waiters, the rest to the count.
    void release(std::size_t n = 1) noexcept {
        detail::wake_list wake;
        std::lock_guard lock(m_mutex);
        for (; n > 0; --n) {
            detail::sync_waiter* w = m_waiters.pop_front();
            if (!w) break;
            w->m_state = detail::sync_waiter::granted;
            wake.add(w);
        }
        m_count += n;
    }
    /// Permits free now (a snapshot).
    [[nodiscard]] std::size_t available() noexcept {
        std::lock_guard lock(m_mutex);
        return m_count;
    }

    class acquire_awaiter : public detail::sync_awaiter<async_semaphore, acquire_awaiter> {
        using base = detail::sync_awaiter<async_semaphore, acquire_awaiter>;

    public:
        acquire_awaiter(async_semaphore& s, std::stop_token st) noexcept : base(s, std::move(st)) {}
        result<void> await_resume() noexcept {
            if (std::error_code e = this->settle()) return unexpected(e);
            return {};
        }
        bool take_now(detail::wake_list&) noexcept {
            async_semaphore& s = *this->m_prim;
            if (s.m_count == 0 || !s.m_waiters.empty()) return false;
            --s.m_count;
            return true;
        }
        detail::waiter_list& queue() noexcept { return this->m_prim->m_waiters; }
    };
    /// `co_await s.acquire(st)` → `result<void>`: a permit is taken, or `errc::operation_aborted`.
    [[nodiscard]] acquire_awaiter acquire(std::stop_token st = {}) noexcept { return {*this, std::move(st)}; }

private:
    template <class, class>
    friend class detail::sync_awaiter;
    io_context* m_ctx;
    std::mutex m_mutex;
    std::size_t m_count;
    detail::waiter_list m_waiters;
};

/// How an async_event behaves when set.
enum class event_mode {
    manual_reset, ///< set() releases every waiter and stays set until reset()
    auto_reset,   ///< set() releases one waiter; with none waiting it stays set until one wait takes it
};

/// An event for coroutines.
class async_event {
public:
    explicit async_event(io_context& ctx, event_mode mode = event_mode::manual_reset, bool initially_set = false) noexcept
        : m_ctx(&ctx), m_mode(mode), m_set(initially_set) {}
    async_event(const async_event&) = delete;
    async_event& operator=(const async_event&) = delete;

    /// manual_reset: releases every waiter, and later waits pass until reset(). auto_reset: releases the first
    /// waiter, or, with none, lets the next wait pass (once).
    void set() noexcept {
        detail::wake_list wake;
        std::lock_guard lock(m_mutex);
        if (m_mode == event_mode::manual_reset) {
            m_set = true;
            while (detail::sync_waiter* w = m_waiters.pop_front()) {
                w->m_state = detail::sync_waiter::granted;
                wake.add(w);
            }
        } else if (detail::sync_waiter* w = m_waiters.pop_front()) {
            w->m_state = detail::sync_waiter::granted;
            wake.add(w);
        } else {
            m_set = true;
        }
    }
    void reset() noexcept {
        std::lock_guard lock(m_mutex);
        m_set = false;
    }
    [[nodiscard]] bool is_set() noexcept {
        std::lock_guard lock(m_mutex);
        return m_set;
    }

    class wait_awaiter : public detail::sync_awaiter<async_event, wait_awaiter> {
        using base = detail::sync_awaiter<async_event, wait_awaiter>;

    public:
        wait_awaiter(async_event& e, std::stop_token st) noexcept : base(e, std::move(st)) {}
        result<void> await_resume() noexcept {
            if (std::error_code e = this->settle()) return unexpected(e);
            return {};
        }
        bool take_now(detail::wake_list&) noexcept {
            async_event& e = *this->m_prim;
            if (!e.m_set) return false;
            if (e.m_mode == event_mode::auto_reset) e.m_set = false;
            return true;
        }
        detail::waiter_list& queue() noexcept { return this->m_prim->m_waiters; }
    };
    /// `co_await e.wait(st)` → `result<void>`: the event was set, or `errc::operation_aborted`.
    [[nodiscard]] wait_awaiter wait(std::stop_token st = {}) noexcept { return {*this, std::move(st)}; }

private:
    template <class, class>
    friend class detail::sync_awaiter;
    io_context* m_ctx;
    std::mutex m_mutex;
    event_mode m_mode;
    bool m_set;
    detail::waiter_list m_waiters;
};

/// A bounded multi-producer multi-consumer channel of `T` (movable). Values are received in the order they
/// were sent (FIFO, by the order in which sends completed or began to wait).
/// - send: waits while the channel holds `capacity` values. `errc::channel_closed` after close() (the value
///   is not delivered). Cancelled: the value was not delivered and never will be.
/// - recv: waits while the channel is empty. `errc::channel_closed` once close() was called and every value
///   sent before it has been received. Cancelled: no value was taken (none is lost).
/// - close(): ends every waiting send and recv with `errc::channel_closed` (values already in the channel
///   stay receivable); later sends fail at once. Idempotent.
template <class T>
class channel {
public:
    /// `capacity` ≥ 1 (std::invalid_argument otherwise).
    channel(io_context& ctx, std::size_t capacity) : m_ctx(&ctx), m_capacity(capacity) {
        if (capacity == 0) throw std::invalid_argument("coport::channel: capacity must be at least 1");
    }
    channel(const channel&) = delete;
    channel& operator=(const channel&) = delete;

    /// Sends without waiting: true if `v` was taken (moved from), false if the channel is full or closed
    /// (`v` untouched).
    [[nodiscard]] bool try_send(T& v) {
        detail::wake_list wake;
        std::lock_guard lock(m_mutex);
        if (m_closed) return false;
        return put(v, wake);
    }
    /// Receives without waiting: a value, or nothing if the channel is empty (or closed and drained).
    [[nodiscard]] std::optional<T> try_recv() {
        detail::wake_list wake;
        std::lock_guard lock(m_mutex);
        return take(wake);
    }
    void close() noexcept {
        detail::wake_list wake;
        std::lock_guard lock(m_mutex);
        m_closed = true;
        for (detail::waiter_list* q : {&m_receivers, &m_senders})
            while (detail::sync_waiter* w = q->pop_front()) {
                w->m_state = detail::sync_waiter::granted;
                w->m_error = make_error_code(error::channel_closed);
                wake.add(w);
            }
    }
    [[nodiscard]] bool closed() noexcept {
        std::lock_guard lock(m_mutex);
        return m_closed;
    }
    /// Values in the channel now (a snapshot).
    [[nodiscard]] std::size_t size() noexcept {
        std::lock_guard lock(m_mutex);
        return m_buffer.size();
    }
    [[nodiscard]] std::size_t capacity() const noexcept { return m_capacity; }

    class send_awaiter : public detail::sync_awaiter<channel, send_awaiter> {
        using base = detail::sync_awaiter<channel, send_awaiter>;

    public:
        send_awaiter(channel& c, T v, std::stop_token st) : base(c, std::move(st)), m_value(std::move(v)) {}
        result<void> await_resume() noexcept {
            if (std::error_code e = this->settle()) return unexpected(e);
            return {};
        }
        bool take_now(detail::wake_list& wake) {
            channel& c = *this->m_prim;
            if (c.m_closed) {
                this->m_error = make_error_code(error::channel_closed);
                return true;
            }
            return c.put(*m_value, wake);
        }
        detail::waiter_list& queue() noexcept { return this->m_prim->m_senders; }

    private:
        friend class channel;
        std::optional<T> m_value; // moved into the channel (or to a receiver) when the send completes
    };
    class recv_awaiter : public detail::sync_awaiter<channel, recv_awaiter> {
        using base = detail::sync_awaiter<channel, recv_awaiter>;

    public:
        recv_awaiter(channel& c, std::stop_token st) noexcept : base(c, std::move(st)) {}
        result<T> await_resume() {
            if (std::error_code e = this->settle()) return unexpected(e);
            return std::move(*m_value);
        }
        bool take_now(detail::wake_list& wake) {
            channel& c = *this->m_prim;
            if (auto v = c.take(wake)) {
                m_value.emplace(std::move(*v));
                return true;
            }
            if (c.m_closed) {
                this->m_error = make_error_code(error::channel_closed);
                return true;
            }
            return false;
        }
        detail::waiter_list& queue() noexcept { return this->m_prim->m_receivers; }

    private:
        friend class channel;
        std::optional<T> m_value;
    };
    /// `co_await ch.send(v, st)` → `result<void>` (see the class comment).
    [[nodiscard]] send_awaiter send(T v, std::stop_token st = {}) { return send_awaiter(*this, std::move(v), std::move(st)); }
    /// `co_await ch.recv(st)` → `result<T>` (see the class comment).
    [[nodiscard]] recv_awaiter recv(std::stop_token st = {}) noexcept { return recv_awaiter(*this, std::move(st)); }

private:
    template <class, class>
    friend class detail::sync_awaiter;
    // Under m_mutex. A waiting receiver means the buffer is empty: hand the value over directly.
    bool put(T& v, detail::wake_list& wake) {
        if (detail::sync_waiter* w = m_receivers.pop_front()) {
            auto* r = static_cast<recv_awaiter*>(w);
            r->m_value.emplace(std::move(v));
            r->m_state = detail::sync_waiter::granted;
            wake.add(r);
            return true;
        }
        if (m_buffer.size() >= m_capacity) return false;
        m_buffer.push_back(std::move(v));
        return true;
    }
    // Under m_mutex. Taking a value makes room: the first waiting sender's value moves in.
    std::optional<T> take(detail::wake_list& wake) {
        if (m_buffer.empty()) return std::nullopt;
        std::optional<T> v(std::move(m_buffer.front()));
        m_buffer.pop_front();
        if (detail::sync_waiter* w = m_senders.pop_front()) {
            auto* s = static_cast<send_awaiter*>(w);
            m_buffer.push_back(std::move(*s->m_value));
            s->m_state = detail::sync_waiter::granted;
            wake.add(s);
        }
        return v;
    }

    io_context* m_ctx;
    std::size_t m_capacity;
    std::mutex m_mutex;
    std::deque<T> m_buffer;
    bool m_closed = false;
    detail::waiter_list m_senders, m_receivers;
};

} // namespace coport
