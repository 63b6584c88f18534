// SPDX-License-Identifier: MIT
#pragma once
// IOCP backend: timers wait in the context's heap; the threads' GQCS waits are bounded by the earliest
// deadline. A cancelled timer is taken out of the heap by the stop callback and resumed through the port.
#if !defined(_WIN32)
#error "coport/detail/iocp is the Windows backend"
#endif

#include <coport/detail/iocp/context.hpp>
#include <coport/result.hpp>

namespace coport::detail::iocp {

class sleep_awaiter final : public timer_op {
public:
    sleep_awaiter(context& ctx, clock::time_point deadline, std::stop_token st, cancel_slot* slot = nullptr) noexcept
        : m_stop(std::move(st)), m_slot(slot) {
        m_ctx = &ctx;
        m_deadline = deadline;
    }
    bool await_ready() const noexcept { return false; }
    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> h) noexcept {
        if (m_stop.stop_requested()) {
            m_error = ERROR_OPERATION_ABORTED;
            return false;
        }
        m_handle = h;
        context& ctx = *m_ctx;
        // May run the callback at once (stop requested just now): the timer then ends without waiting.
        if (m_stop.stop_possible()) m_reg.emplace(m_stop, cancel_callback{this});
        if (m_slot) m_slot->attach(this, [](void* op) noexcept { static_cast<sleep_awaiter*>(op)->request_cancel(); });
        ctx.start_timer(this); // published: *this may already be resumed on another thread
        return true;
    }
    result<void> await_resume() noexcept {
        m_reg.reset(); // waits for a stop callback running on another thread
        if (m_slot) m_slot->detach();
        if (m_error) return unexpected(native_error(static_cast<int>(m_error)));
        return {};
    }

private:
    std::stop_token m_stop;
    stop_registration m_reg;
    cancel_slot* m_slot;
};

} // namespace coport::detail::iocp
