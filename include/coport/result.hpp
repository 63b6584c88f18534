// SPDX-License-Identifier: MIT
#pragma once
/// \file result.hpp
/// `result<T>`: a value or a `std::error_code`. Its interface is a subset of C++23
/// `std::expected<T, std::error_code>` so that it can become an alias later:
/// construct a failure with `coport::unexpected(ec)`, test with `has_value()` / `operator bool`,
/// read with `*r`, `r->`, `value()` (throws `std::system_error` on failure) and `error()`.
/// End of stream (a peer's orderly shutdown) is a value (0 bytes) or `errc::eof`, never an exception.

#include <new>
#include <system_error>
#include <type_traits>
#include <utility>

namespace coport {

/// Wraps the error of a failed `result`, like `std::unexpected`.
template <class E = std::error_code>
class unexpected {
public:
    explicit unexpected(E e) noexcept(std::is_nothrow_move_constructible_v<E>) : m_error(std::move(e)) {}
    [[nodiscard]] const E& error() const& noexcept { return m_error; }
    [[nodiscard]] E& error() & noexcept { return m_error; }
    [[nodiscard]] E&& error() && noexcept { return std::move(m_error); }

private:
    E m_error;
};
template <class E>
unexpected(E) -> unexpected<E>;

/// A value of type T, or the `std::error_code` of why there is none.
template <class T>
class [[nodiscard]] result {
    static_assert(!std::is_reference_v<T>, "result<T&> is not supported; use result<std::reference_wrapper<T>>");

public:
    using value_type = T;
    using error_type = std::error_code;

    result() requires std::is_default_constructible_v<T> : m_has(true) { ::new (&m_value) T(); }
    template <class U = T>
        requires(std::is_constructible_v<T, U &&> && !std::is_same_v<std::remove_cvref_t<U>, result> &&
                 !std::is_same_v<std::remove_cvref_t<U>, unexpected<std::error_code>>)
    result(U&& v) : m_has(true) {
        ::new (&m_value) T(std::forward<U>(v));
    }
    template <class G>
        requires std::is_convertible_v<const G&, std::error_code>
    result(const unexpected<G>& u) : m_has(false) {
        ::new (&m_error) std::error_code(u.error());
    }
    result(const result& o) requires std::is_copy_constructible_v<T> : m_has(o.m_has) {
        if (m_has) ::new (&m_value) T(o.m_value);
        else ::new (&m_error) std::error_code(o.m_error);
    }
    result(result&& o) noexcept(std::is_nothrow_move_constructible_v<T>) : m_has(o.m_has) {
        if (m_has) ::new (&m_value) T(std::move(o.m_value));
        else ::new (&m_error) std::error_code(o.m_error);
    }
    result& operator=(result o) noexcept(std::is_nothrow_move_constructible_v<T>) {
        if (this != &o) {
            destroy();
            m_has = o.m_has;
            if (m_has) ::new (&m_value) T(std::move(o.m_value));
            else ::new (&m_error) std::error_code(o.m_error);
        }
        return *this;
    }
    ~result() { destroy(); }

    [[nodiscard]] bool has_value() const noexcept { return m_has; }
    explicit operator bool() const noexcept { return m_has; }

    /// The value; throws `std::system_error(error())` when there is none.
    T& value() & { check(); return m_value; }
    const T& value() const& { check(); return m_value; }
    T&& value() && { check(); return std::move(m_value); }
    /// The error; `std::error_code{}` when there is a value (std::expected makes that UB).
    [[nodiscard]] std::error_code error() const noexcept { return m_has ? std::error_code{} : m_error; }

    T& operator*() & noexcept { return m_value; }
    const T& operator*() const& noexcept { return m_value; }
    T&& operator*() && noexcept { return std::move(m_value); }
    T* operator->() noexcept { return &m_value; }
    const T* operator->() const noexcept { return &m_value; }

    template <class U>
    T value_or(U&& alt) const& { return m_has ? m_value : static_cast<T>(std::forward<U>(alt)); }
    template <class U>
    T value_or(U&& alt) && { return m_has ? std::move(m_value) : static_cast<T>(std::forward<U>(alt)); }

private:
    void check() const {
        if (!m_has) throw std::system_error(m_error);
    }
    void destroy() noexcept {
        if (m_has) m_value.~T();
    }
    union {
        T m_value;
        std::error_code m_error;
    };
    bool m_has;
};

/// Success or the `std::error_code` of a failure.
template <>
class [[nodiscard]] result<void> {
public:
    using value_type = void;
    using error_type = std::error_code;
    result() noexcept = default;
    template <class G>
        requires std::is_convertible_v<const G&, std::error_code>
    result(const unexpected<G>& u) noexcept : m_error(u.error()) {}

    [[nodiscard]] bool has_value() const noexcept { return !m_error; }
    explicit operator bool() const noexcept { return !m_error; }
    void value() const {
        if (m_error) throw std::system_error(m_error);
    }
    void operator*() const noexcept {}
    [[nodiscard]] std::error_code error() const noexcept { return m_error; }

private:
    std::error_code m_error;
};

namespace detail {
/// Makes a `result<T>` from a filled-in error code: the error when set, else `v`.
template <class T>
result<T> make_result(std::error_code ec, T v) {
    if (ec) return unexpected(ec);
    return result<T>(std::move(v));
}
inline result<void> make_result(std::error_code ec) {
    if (ec) return unexpected(ec);
    return {};
}
} // namespace detail
} // namespace coport
