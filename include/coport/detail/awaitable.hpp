// SPDX-License-Identifier: MIT
#pragma once
// Awaitable traits and the small value holder shared by sync_wait, when_all and when_any.

#include <concepts>
#include <coroutine>
#include <exception>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

namespace coport {
namespace detail {

template <class T>
concept awaiter = requires(T& a, std::coroutine_handle<> h) {
    { a.await_ready() } -> std::convertible_to<bool>;
    a.await_suspend(h);
    a.await_resume();
};

template <class T>
concept has_member_co_await = requires(T&& t) {
    { static_cast<T&&>(t).operator co_await() } -> awaiter;
};

template <class T>
decltype(auto) get_awaiter(T&& t) {
    if constexpr (has_member_co_await<T>) return static_cast<T&&>(t).operator co_await();
    else return static_cast<T&&>(t);
}

} // namespace detail

/// Anything `co_await` accepts in a coport task (an awaiter, or a type with member operator co_await).
template <class T>
concept awaitable = detail::awaiter<std::remove_reference_t<T>> || detail::has_member_co_await<T>;

template <awaitable A>
using await_result_t = decltype(std::declval<decltype(detail::get_awaiter(std::declval<A>()))&>().await_resume());

/// `void` results become `std::monostate`-like `void_value` in tuples of results.
struct void_value {
    friend constexpr bool operator==(void_value, void_value) noexcept { return true; }
};

namespace detail {
template <class T>
using non_void_t = std::conditional_t<std::is_void_v<T>, void_value, T>;

/// Holds the outcome of an awaited expression: a value (or reference), or an exception.
template <class T>
class outcome {
public:
    template <class U>
    void set_value(U&& v) {
        m_value.emplace(std::forward<U>(v));
    }
    void set_exception(std::exception_ptr e) noexcept { m_exception = std::move(e); }
    [[nodiscard]] bool has_exception() const noexcept { return static_cast<bool>(m_exception); }
    T take() {
        if (m_exception) std::rethrow_exception(m_exception);
        return std::move(*m_value);
    }

private:
    std::optional<T> m_value;
    std::exception_ptr m_exception;
};
template <class T>
class outcome<T&> {
public:
    void set_value(T& v) noexcept { m_value = std::addressof(v); }
    void set_exception(std::exception_ptr e) noexcept { m_exception = std::move(e); }
    [[nodiscard]] bool has_exception() const noexcept { return static_cast<bool>(m_exception); }
    T& take() {
        if (m_exception) std::rethrow_exception(m_exception);
        return *m_value;
    }

private:
    T* m_value = nullptr;
    std::exception_ptr m_exception;
};
template <>
class outcome<void> {
public:
    void set_exception(std::exception_ptr e) noexcept { m_exception = std::move(e); }
    [[nodiscard]] bool has_exception() const noexcept { return static_cast<bool>(m_exception); }
    void take() {
        if (m_exception) std::rethrow_exception(m_exception);
    }
    void_value take_non_void() {
        take();
        return {};
    }

private:
    std::exception_ptr m_exception;
};

} // namespace detail
} // namespace coport
