// SPDX-License-Identifier: MIT
#pragma once
/// \file buffer.hpp
/// Buffers are views: coport never copies or owns the bytes. The memory must stay valid and untouched
/// until the operation that uses it has resumed its coroutine (also when it was cancelled: the kernel
/// may write to a receive buffer until the cancellation is confirmed).

#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

namespace coport {

/// A writable byte range (receive into it).
struct mutable_buffer {
    void* data = nullptr;
    std::size_t size = 0;
    mutable_buffer() noexcept = default;
    mutable_buffer(void* d, std::size_t n) noexcept : data(d), size(n) {}
    template <class T, std::size_t N>
        requires std::is_trivially_copyable_v<T>
    mutable_buffer(std::span<T, N> s) noexcept : data(s.data()), size(s.size_bytes()) {}
};

/// A read-only byte range (send from it).
struct const_buffer {
    const void* data = nullptr;
    std::size_t size = 0;
    const_buffer() noexcept = default;
    const_buffer(const void* d, std::size_t n) noexcept : data(d), size(n) {}
    const_buffer(mutable_buffer b) noexcept : data(b.data), size(b.size) {}
    template <class T, std::size_t N>
        requires std::is_trivially_copyable_v<T>
    const_buffer(std::span<T, N> s) noexcept : data(s.data()), size(s.size_bytes()) {}
    const_buffer(std::string_view s) noexcept : data(s.data()), size(s.size()) {}
};

/// Views of common containers.
inline mutable_buffer buffer(void* d, std::size_t n) noexcept { return {d, n}; }
inline const_buffer buffer(const void* d, std::size_t n) noexcept { return {d, n}; }
inline const_buffer buffer(std::string_view s) noexcept { return {s.data(), s.size()}; }
inline mutable_buffer buffer(std::string& s) noexcept { return {s.data(), s.size()}; }
template <class T>
    requires std::is_trivially_copyable_v<T>
mutable_buffer buffer(std::vector<T>& v) noexcept {
    return {v.data(), v.size() * sizeof(T)};
}
template <class T>
    requires std::is_trivially_copyable_v<T>
const_buffer buffer(const std::vector<T>& v) noexcept {
    return {v.data(), v.size() * sizeof(T)};
}
template <class T, std::size_t N>
    requires std::is_trivially_copyable_v<T>
mutable_buffer buffer(T (&a)[N]) noexcept {
    return {a, sizeof a};
}

template <class T, std::size_t N>
    requires std::is_trivially_copyable_v<T>
mutable_buffer buffer(std::array<T, N>& a) noexcept {
    return {a.data(), sizeof(T) * N};
}
template <class T, std::size_t N>
    requires std::is_trivially_copyable_v<T>
const_buffer buffer(const std::array<T, N>& a) noexcept {
    return {a.data(), sizeof(T) * N};
}

/// Total bytes of a buffer sequence.
template <class B>
std::size_t buffer_size(std::span<const B> bufs) noexcept {
    std::size_t n = 0;
    for (const auto& b : bufs) n += b.size;
    return n;
}

} // namespace coport
