// SPDX-License-Identifier: MIT
#pragma once
// stop_registration<Fn>: a std::stop_callback that is safe to deregister on every platform coport builds
// for. `emplace(token, fn)` registers (runs fn at once, on this thread, if a stop was requested already);
// `reset()` deregisters, and after it fn neither runs nor is running, so whatever fn uses may go.
//
// Why not std::optional<std::stop_callback<Fn>>: with mingw-w64's libstdc++ 12, ~stop_callback can sleep
// forever when it must wait for its callback running on another thread. That wait is a
// std::binary_semaphore, and without futexes libstdc++ 12 waits on a condition variable that the release
// notifies without holding its mutex, so the wake-up can be lost (seen under Wine: a worker stuck in
// ~stop_callback while no thread ran the callback). So a callback that has been or will be called is
// destroyed by the callback itself, on the requesting thread, where ~stop_callback never waits; the owner
// waits for it with its own spin. libstdc++'s semaphore is left only for a stop requested in the instant
// between reset()'s check and its removal of the callback; that callback then returns at once.
//
// Used by the IOCP operations, by with_timeout/when_any (linking an outer token) and by resolve. The io_uring
// and epoll operations use std::stop_callback directly (glibc has futexes; it is their hot path).

#include <atomic>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <thread>
#include <utility>

namespace coport::detail {

template <class Fn>
class stop_registration {
public:
    stop_registration() noexcept = default;
    stop_registration(const stop_registration&) = delete;
    stop_registration& operator=(const stop_registration&) = delete;
    ~stop_registration() { reset(); }

    /// Registers `fn`; runs it at once, on this thread, if a stop was requested already.
    void emplace(const std::stop_token& st, Fn fn) noexcept {
        m_token = st;
        m_fn.emplace(std::move(fn));
        m_state.store(reg_emplacing, std::memory_order_relaxed);
        m_cb.emplace(st, body{this});
        std::uint8_t s = reg_emplacing;
        m_state.compare_exchange_strong(s, reg_armed, std::memory_order_acq_rel); // fails: it ran (or runs) already
    }
    /// Deregisters; if the callback is running or about to run on another thread, waits until it is done.
    void reset() noexcept {
        std::uint8_t s = m_state.load(std::memory_order_acquire);
        for (;;) {
            switch (s) {
            case reg_empty: return;
            case reg_armed:
                if (m_token.stop_requested()) {
                    // Registered before the stop: request_stop() calls it now or soon. Let it remove itself.
                    if (!m_state.compare_exchange_weak(s, reg_handoff, std::memory_order_acq_rel)) continue;
                    wait_while(reg_handoff);
                } else {
                    if (!m_state.compare_exchange_weak(s, reg_closing, std::memory_order_acq_rel)) continue;
                    m_cb.reset();
                }
                break;
            case reg_running: // it uses fn
                wait_while(reg_running);
                s = m_state.load(std::memory_order_acquire);
                continue;
            case reg_ran_keep: m_cb.reset(); break;
            default: break; // reg_ran_destroyed
            }
            m_cb.reset(); // engaged only if never registered (destroyed by its callback otherwise: a no-op then)
            m_fn.reset();
            m_token = {};
            m_state.store(reg_empty, std::memory_order_relaxed);
            return;
        }
    }

private:
    enum : std::uint8_t {
        reg_empty,
        reg_emplacing,     // inside emplace(): a callback now runs inline or races it; the owner destroys it
        reg_armed,         // registered, not called
        reg_running,       // the callback is running fn
        reg_ran_keep,      // it ran during emplace(): the owner destroys it
        reg_ran_destroyed, // it ran and destroyed its std::stop_callback
        reg_closing,       // the owner removes it (a callback called now returns at once)
        reg_handoff,       // the owner is done with fn and waits for the callback to remove itself
    };
    void wait_while(std::uint8_t s) const noexcept {
        while (m_state.load(std::memory_order_acquire) == s) std::this_thread::yield();
    }
    struct body {
        stop_registration* m_self;
        void operator()() const noexcept {
            stop_registration* self = m_self; // a local: *this is destroyed below
            std::uint8_t s = self->m_state.load(std::memory_order_acquire);
            for (;;) {
                if (s == reg_handoff) {
                    self->m_cb.reset(); // the requesting thread: libstdc++ neither waits nor touches it after
                    self->m_state.store(reg_ran_destroyed, std::memory_order_release);
                    return;
                }
                if (s != reg_armed && s != reg_emplacing) return; // reg_closing: the owner removes it
                if (self->m_state.compare_exchange_weak(s, reg_running, std::memory_order_acq_rel)) break;
            }
            (*self->m_fn)();
            if (s == reg_emplacing) {
                self->m_state.store(reg_ran_keep, std::memory_order_release);
                return;
            }
            self->m_cb.reset();
            self->m_state.store(reg_ran_destroyed, std::memory_order_release); // the owner may free it all now
        }
    };
    std::optional<std::stop_callback<body>> m_cb;
    std::optional<Fn> m_fn;
    std::stop_token m_token;
    std::atomic<std::uint8_t> m_state{reg_empty};
};

} // namespace coport::detail
