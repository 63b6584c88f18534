// SPDX-License-Identifier: MIT
#pragma once
/// \file sync_wait.hpp
/// `sync_wait(awaitable)`: blocks the calling thread until the awaitable completes and returns its
/// result (or rethrows its exception). The awaitable starts on the calling thread; whatever it waits
/// for must be driven by someone else (an io_context running on other threads). To drive an
/// io_context on the calling thread while waiting, use `io_context::block_on`.
/// Never call it from a thread that runs the io_context the awaitable needs: that deadlocks.

#include <coport/detail/child.hpp>

#include <condition_variable>
#include <mutex>

namespace coport {
namespace detail {
class blocking_latch : public latch {
public:
    blocking_latch() noexcept : latch(1, &on_done) {}
    void wait() {
        std::unique_lock lock(m_mutex);
        m_cv.wait(lock, [this] { return m_done; });
    }

private:
    static void on_done(latch* l) noexcept {
        auto* self = static_cast<blocking_latch*>(l);
        std::lock_guard lock(self->m_mutex);
        self->m_done = true;
        self->m_cv.notify_one(); // under the lock: the waiter may destroy *self as soon as it sees m_done
    }
    std::mutex m_mutex;
    std::condition_variable m_cv;
    bool m_done = false;
};
} // namespace detail

template <awaitable A>
await_result_t<A> sync_wait(A&& a) {
    using R = await_result_t<A>;
    detail::child<R> c = detail::make_child<A&&, R>(std::forward<A>(a)); // synchronous: a outlives c
    detail::blocking_latch l;
    c.start(l);
    l.wait();
    return c.result().take();
}

} // namespace coport
