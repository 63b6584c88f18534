// SPDX-License-Identifier: MIT
#pragma once
/// \file when_all.hpp
/// `co_await when_all(a, b, ...)` runs every awaitable concurrently and resumes when all have finished,
/// with a `std::tuple` of their results (`void` becomes `void_value`). `when_all(std::vector<task<T>>)`
/// gives a `std::vector<T>` (or nothing for `task<void>`).
/// - The children start in order on the awaiting thread, and they and the caller resume on it (the
///   resumption rule, io_context.hpp): two children never run at the same time, so they may share state
///   without a lock. (A child that moves on purpose, e.g. `co_await ctx.schedule()`, takes the rest of its
///   own run elsewhere; the caller then resumes on the thread that finishes the last child.)
/// - If children throw, all still run to completion; then the first exception (by position) is rethrown.
/// - Cancellation: pass the same `std::stop_token` to the children; when_all itself cancels nothing
///   (see when_any for first-wins with cancellation).

#include <coport/detail/child.hpp>
#include <coport/task.hpp>

#include <tuple>
#include <vector>

namespace coport {
namespace detail {

class parent_latch : public latch {
public:
    explicit parent_latch(std::size_t n) noexcept : latch(n + 1, &on_done) {}
    std::coroutine_handle<> m_parent;

private:
    static void on_done(latch* l) noexcept { static_cast<parent_latch*>(l)->m_parent.resume(); }
};

template <class... Rs>
class when_all_awaiter {
public:
    template <class... As>
    explicit when_all_awaiter(As&&... as) : m_children(make_child<stored_t<As&&>, Rs>(std::forward<As>(as))...) {}

    bool await_ready() const noexcept { return sizeof...(Rs) == 0; }
    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> parent) noexcept {
        m_latch.m_parent = parent;
        std::apply([this](auto&... c) { (c.start(m_latch), ...); }, m_children);
        return !m_latch.arrive(); // last arrival: every child is done, do not suspend
    }
    std::tuple<non_void_t<Rs>...> await_resume() {
        std::apply([](auto&... c) { (rethrow(c), ...); }, m_children);
        return std::apply([](auto&... c) { return std::tuple<non_void_t<Rs>...>{take(c)...}; }, m_children);
    }

private:
    template <class C>
    static void rethrow(C& c) {
        if (c.result().has_exception()) (void)c.result().take();
    }
    template <class R>
    static non_void_t<R> take(child<R>& c) {
        if constexpr (std::is_void_v<R>) return c.result().take_non_void();
        else return c.result().take();
    }
    std::tuple<child<Rs>...> m_children;
    parent_latch m_latch{sizeof...(Rs)};
};

template <class R>
class when_all_range_awaiter {
public:
    template <class A>
    explicit when_all_range_awaiter(std::vector<A> as) : m_latch(as.size()) {
        m_children.reserve(as.size());
        for (auto& a : as) m_children.push_back(make_child<A, R>(std::move(a)));
    }
    bool await_ready() const noexcept { return m_children.empty(); }
    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> parent) noexcept {
        m_latch.m_parent = parent;
        for (auto& c : m_children) c.start(m_latch);
        return !m_latch.arrive();
    }
    auto await_resume() {
        for (auto& c : m_children)
            if (c.result().has_exception()) (void)c.result().take();
        if constexpr (std::is_void_v<R>) {
            return;
        } else {
            std::vector<R> out;
            out.reserve(m_children.size());
            for (auto& c : m_children) out.push_back(c.result().take());
            return out;
        }
    }

private:
    std::vector<child<R>> m_children;
    parent_latch m_latch;
};
} // namespace detail

/// Awaits all of `as` concurrently; see the file comment.
template <awaitable... As>
[[nodiscard]] detail::when_all_awaiter<await_result_t<As>...> when_all(As&&... as) {
    return detail::when_all_awaiter<await_result_t<As>...>(std::forward<As>(as)...);
}

/// Awaits every task in `tasks` concurrently; results in the same order.
template <class T>
[[nodiscard]] detail::when_all_range_awaiter<T> when_all(std::vector<task<T>> tasks) {
    return detail::when_all_range_awaiter<T>(std::move(tasks));
}

} // namespace coport
