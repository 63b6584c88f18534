// SPDX-License-Identifier: MIT
#pragma once
// io_uring backend: timers wait in the worker's heap; the ring's wait is bounded by the earliest deadline.
#if !defined(__linux__)
#error "coport/detail/uring is the Linux backend"
#endif

#include <coport/detail/uring/context.hpp>
#include <coport/result.hpp>

namespace coport::detail::uring {

class sleep_awaiter final : public timer_op {
public:
    sleep_awaiter(context& ctx, clock::time_point deadline, std::stop_token st, cancel_slot* slot = nullptr) noexcept
        : timer_op(&s_vtable), m_ctx(ctx), m_stop(std::move(st)), m_slot(slot) {
        m_deadline = deadline;
    }
    bool await_ready() const noexcept { return false; }
    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> h) noexcept {
        if (m_stop.stop_requested()) {
            m_res = -ECANCELED;
            return false;
        }
        m_handle = h;
        context& ctx = m_ctx;
        worker& w = ctx.owner_for_new_op();
        m_worker = &w;
        if (m_stop.stop_possible()) m_reg.emplace(m_stop, cancel_callback{this});
        if (m_slot) m_slot->attach(this, [](void* op) noexcept { static_cast<sleep_awaiter*>(op)->request_cancel(); });
        ctx.start_on(w, this); // published: *this may already be resumed on another thread
        return true;
    }
    result<void> await_resume() noexcept {
        m_reg.reset();
        if (m_slot) m_slot->detach();
        if (m_res < 0) return unexpected(native_error(-m_res));
        return {};
    }

private:
    static void arm(operation* op, worker& w) noexcept { w.timers().push(static_cast<sleep_awaiter*>(op)); }
    static void disarm(operation* op, worker& w) noexcept {
        auto* self = static_cast<sleep_awaiter*>(op);
        if (!self->queued()) return; // fired already; its completion is on its way
        w.timers().remove(self);
        self->m_res = -ECANCELED;
        w.complete(self);
    }
    static constexpr vtable s_vtable{nullptr, nullptr, nullptr, 0, &arm, &disarm};

    context& m_ctx;
    std::stop_token m_stop;
    stop_registration m_reg;
    cancel_slot* m_slot;
};

} // namespace coport::detail::uring
