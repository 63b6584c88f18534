// SPDX-License-Identifier: MIT
#pragma once
// A child coroutine that awaits one awaitable, keeps its outcome, and reports to a latch when done.
// Used by sync_wait, when_all and when_any: a counter that starts at N+1, children started by .resume(),
// the last arrival notifies (no reliance on symmetric transfer being a tail call: g++ 12 makes it one only
// with -foptimize-sibling-calls, GCC PR 100897).

#include <coport/detail/awaitable.hpp>
#include <coport/task.hpp>

#include <atomic>
#include <cstddef>
#include <coroutine>

namespace coport::detail {

class latch {
public:
    using notify_fn = void (*)(latch*) noexcept;
    latch(std::size_t count, notify_fn fn) noexcept : m_count(count), m_notify(fn) {}
    /// Only before anything arrived (awaiters holding a latch are moved before they are awaited).
    latch(latch&& o) noexcept : m_count(o.m_count.load(std::memory_order_relaxed)), m_notify(o.m_notify) {}
    /// Returns true for the last arrival (which must then notify or proceed itself).
    bool arrive() noexcept { return m_count.fetch_sub(1, std::memory_order_acq_rel) == 1; }
    void notify() noexcept { m_notify(this); }

private:
    std::atomic<std::size_t> m_count;
    notify_fn m_notify;
};

template <class T>
class child;

template <class T>
class child_promise_base : public frame_allocation {
public:
    std::suspend_always initial_suspend() const noexcept { return {}; }
    struct final_awaiter {
        bool await_ready() const noexcept { return false; }
        template <class P>
        [[gnu::noinline]] void await_suspend(std::coroutine_handle<P> h) noexcept {
            latch* l = h.promise().m_latch; // the latch owner may destroy this frame once notified
            if (l->arrive()) l->notify();
        }
        void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() const noexcept { return {}; }
    void unhandled_exception() noexcept { m_outcome.set_exception(std::current_exception()); }

    latch* m_latch = nullptr;
    outcome<T> m_outcome;
};

template <class T>
class child_promise : public child_promise_base<T> {
public:
    child<T> get_return_object() noexcept;
    template <class U>
    void return_value(U&& v) {
        this->m_outcome.set_value(std::forward<U>(v));
    }
};
template <>
class child_promise<void> : public child_promise_base<void> {
public:
    child<void> get_return_object() noexcept;
    void return_void() noexcept {}
};

template <class T>
class child {
public:
    using promise_type = child_promise<T>;
    explicit child(std::coroutine_handle<promise_type> h) noexcept : m_handle(h) {}
    child(child&& o) noexcept : m_handle(std::exchange(o.m_handle, nullptr)) {}
    child& operator=(child&&) = delete;
    ~child() {
        if (m_handle) m_handle.destroy();
    }
    /// Runs the child until its first suspension; `l` is told when it finishes.
    void start(latch& l) noexcept {
        m_handle.promise().m_latch = &l;
        m_handle.resume();
    }
    outcome<T>& result() noexcept { return m_handle.promise().m_outcome; }

private:
    std::coroutine_handle<promise_type> m_handle;
};

template <class T>
child<T> child_promise<T>::get_return_object() noexcept {
    return child<T>{std::coroutine_handle<child_promise>::from_promise(*this)};
}
inline child<void> child_promise<void>::get_return_object() noexcept {
    return child<void>{std::coroutine_handle<child_promise>::from_promise(*this)};
}

/// How a child keeps its awaitable: lvalues by reference; movable rvalues moved into the child's frame (so
/// temporaries are safe); non-movable rvalues (I/O awaiters) by reference, which is valid while the
/// full-expression that created them lasts (`co_await when_all(a(), b())`).
template <class A>
using stored_t = std::conditional_t<std::is_lvalue_reference_v<A>, A,
                                    std::conditional_t<std::is_move_constructible_v<std::remove_cvref_t<A>>,
                                                       std::remove_cvref_t<A>, std::remove_reference_t<A>&&>>;

/// A child that awaits `a`. `Stored` is a value type (moved into the frame) or a reference type.
template <class Stored, class R = await_result_t<Stored>>
child<R> make_child(Stored a) {
    if constexpr (std::is_void_v<R>) {
        co_await static_cast<Stored&&>(a);
    } else {
        co_return co_await static_cast<Stored&&>(a);
    }
}

} // namespace coport::detail
