// SPDX-License-Identifier: MIT
#pragma once
/// \file timer.hpp
/// `timer`: a reusable timer whose wait is cancelled by calling `cancel()` (Asio's `steady_timer`), for
/// code that keeps a timer per connection or per job and re-arms it. `io_context::sleep_for` with a
/// `std::stop_token` does the same for one wait; with_timeout and when_any use that form.
///
///     coport::timer t(ctx);
///     auto r = co_await t.wait_for(30s);   // r: result<void>
///     if (!r && r.error() == coport::errc::operation_aborted) { /* somebody called t.cancel() */ }
///
/// Contracts:
/// - At most one wait per timer at a time (start the next one after the previous has returned).
/// - `cancel()` may be called from any thread; it ends the wait in progress, if any: that wait resumes
///   with `errc::operation_aborted` on a thread running the context, never inside cancel(). A wait that
///   has already fired (its completion is on its way) is not turned into an error. cancel() with no wait
///   in progress does nothing: it does not affect the next wait. Returns 1 if a wait was in progress (it
///   was asked to end; it may still succeed if it had fired already), else 0.
/// - The timer must outlive its wait; destroying the io_context ends a wait in progress with
///   `errc::operation_aborted`, like every operation.
/// - The wait resumes on a thread running the context (the one that started it, on io_uring/epoll).

#include <coport/io_context.hpp>

#include <chrono>
#include <cstddef>
#include <stop_token>

namespace coport {

class timer {
public:
    using clock = io_context::clock;

    explicit timer(io_context& ctx) noexcept : m_ctx(&ctx) {}
    timer(const timer&) = delete;
    timer& operator=(const timer&) = delete;

    /// `co_await t.wait_for(d)`: `result<void>`, ok after `d`; `errc::operation_aborted` if cancel() was
    /// called or `st` was stopped first.
    [[nodiscard]] detail::backend::sleep_awaiter wait_for(clock::duration d, std::stop_token st = {}) noexcept {
        return wait_until(clock::now() + d, std::move(st));
    }
    /// Like wait_for, until the deadline `tp`.
    [[nodiscard]] detail::backend::sleep_awaiter wait_until(clock::time_point tp, std::stop_token st = {}) noexcept {
        return detail::backend::sleep_awaiter(m_ctx->native(), tp, std::move(st), &m_slot);
    }
    /// Ends the wait in progress (any thread); returns 1 if there was one (it may have fired already), else 0.
    std::size_t cancel() noexcept { return m_slot.cancel(); }

    [[nodiscard]] io_context& context() const noexcept { return *m_ctx; }

private:
    io_context* m_ctx;
    detail::cancel_slot m_slot;
};

} // namespace coport
