// SPDX-License-Identifier: MIT
#pragma once
/// \file address.hpp
/// IPv4/IPv6 addresses and endpoints (address + port). Values; parse from and format to text.

#include <coport/error.hpp>
#include <coport/result.hpp>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace coport {

/// An IPv4 or IPv6 address (with the IPv6 scope id).
class ip_address {
public:
    /// 0.0.0.0
    ip_address() noexcept = default;

    static ip_address v4(std::array<std::uint8_t, 4> b) noexcept {
        ip_address a;
        a.m_v6 = false;
        std::memcpy(a.m_bytes.data(), b.data(), 4);
        return a;
    }
    static ip_address v6(const std::array<std::uint8_t, 16>& b, std::uint32_t scope_id = 0) noexcept {
        ip_address a;
        a.m_v6 = true;
        a.m_bytes = b;
        a.m_scope = scope_id;
        return a;
    }
    static ip_address loopback_v4() noexcept { return v4({127, 0, 0, 1}); }
    static ip_address loopback_v6() noexcept { return v6({0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}); }
    static ip_address any_v4() noexcept { return v4({0, 0, 0, 0}); }
    static ip_address any_v6() noexcept { return v6({}); }

    /// "127.0.0.1", "::1", "fe80::1%3" (numeric scope). Errors: `errc::bad_address`.
    static result<ip_address> parse(std::string_view text);

    [[nodiscard]] bool is_v4() const noexcept { return !m_v6; }
    [[nodiscard]] bool is_v6() const noexcept { return m_v6; }
    [[nodiscard]] bool is_loopback() const noexcept {
        if (!m_v6) return m_bytes[0] == 127;
        return *this == loopback_v6();
    }
    [[nodiscard]] bool is_unspecified() const noexcept {
        for (std::size_t i = 0; i < (m_v6 ? 16u : 4u); ++i)
            if (m_bytes[i]) return false;
        return true;
    }
    /// The 4 (IPv4) or 16 (IPv6) address bytes, network order.
    [[nodiscard]] const std::uint8_t* bytes() const noexcept { return m_bytes.data(); }
    [[nodiscard]] std::uint32_t scope_id() const noexcept { return m_scope; }
    [[nodiscard]] std::string to_string() const;

    friend bool operator==(const ip_address& a, const ip_address& b) noexcept {
        if (a.m_v6 != b.m_v6 || a.m_scope != b.m_scope) return false;
        return std::memcmp(a.m_bytes.data(), b.m_bytes.data(), a.m_v6 ? 16 : 4) == 0;
    }

private:
    std::array<std::uint8_t, 16> m_bytes{};
    std::uint32_t m_scope = 0;
    bool m_v6 = false;
};

/// An address and a port.
class endpoint {
public:
    endpoint() noexcept = default;
    endpoint(ip_address a, std::uint16_t port) noexcept : m_addr(a), m_port(port) {}

    /// "127.0.0.1:8080" or "[::1]:8080". Errors: `errc::bad_address`.
    static result<endpoint> parse(std::string_view text);

    [[nodiscard]] const ip_address& address() const noexcept { return m_addr; }
    [[nodiscard]] std::uint16_t port() const noexcept { return m_port; }
    [[nodiscard]] bool is_v6() const noexcept { return m_addr.is_v6(); }
    /// "127.0.0.1:8080" / "[::1]:8080"
    [[nodiscard]] std::string to_string() const;

    friend bool operator==(const endpoint& a, const endpoint& b) noexcept {
        return a.m_port == b.m_port && a.m_addr == b.m_addr;
    }

    /// Internal: to and from the OS's sockaddr_in / sockaddr_in6 (both platforms use the BSD layout).
    int to_sockaddr(sockaddr_storage& ss) const noexcept;
    static endpoint from_sockaddr(const sockaddr* sa) noexcept;

private:
    ip_address m_addr;
    std::uint16_t m_port = 0;
};

// ---------------------------------------------------------------------------------------------------------

inline result<ip_address> ip_address::parse(std::string_view text) {
    std::string s(text);
    std::uint32_t scope = 0;
    if (auto pct = s.find('%'); pct != std::string::npos) {
        std::string sc = s.substr(pct + 1);
        s.resize(pct);
        if (sc.empty()) return unexpected(make_error_code(error::bad_address));
        for (char c : sc) {
            if (c < '0' || c > '9') return unexpected(make_error_code(error::bad_address));
            scope = scope * 10 + static_cast<std::uint32_t>(c - '0');
        }
    }
    std::array<std::uint8_t, 16> b{};
    if (s.find(':') == std::string::npos) {
        if (scope == 0 && ::inet_pton(AF_INET, s.c_str(), b.data()) == 1) return v4({b[0], b[1], b[2], b[3]});
    } else if (::inet_pton(AF_INET6, s.c_str(), b.data()) == 1) {
        return v6(b, scope);
    }
    return unexpected(make_error_code(error::bad_address));
}

inline std::string ip_address::to_string() const {
    char buf[64] = {};
    ::inet_ntop(m_v6 ? AF_INET6 : AF_INET, const_cast<std::uint8_t*>(m_bytes.data()), buf, sizeof buf);
    std::string s(buf);
    if (m_v6 && m_scope) {
        s += '%';
        s += std::to_string(m_scope);
    }
    return s;
}

inline result<endpoint> endpoint::parse(std::string_view text) {
    std::string_view host, port;
    if (!text.empty() && text.front() == '[') {
        auto close = text.find(']');
        if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':')
            return unexpected(make_error_code(error::bad_address));
        host = text.substr(1, close - 1);
        port = text.substr(close + 2);
    } else {
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos || text.find(':') != colon)
            return unexpected(make_error_code(error::bad_address));
        host = text.substr(0, colon);
        port = text.substr(colon + 1);
    }
    if (port.empty() || port.size() > 5) return unexpected(make_error_code(error::bad_address));
    std::uint32_t p = 0;
    for (char c : port) {
        if (c < '0' || c > '9') return unexpected(make_error_code(error::bad_address));
        p = p * 10 + static_cast<std::uint32_t>(c - '0');
    }
    if (p > 65535) return unexpected(make_error_code(error::bad_address));
    auto a = ip_address::parse(host);
    if (!a) return unexpected(a.error());
    return endpoint(*a, static_cast<std::uint16_t>(p));
}

inline std::string endpoint::to_string() const {
    // Appends, not operator+ chains: GCC 12 -O3 warns -Wrestrict (a false positive) on those.
    std::string s;
    s.reserve(64);
    if (m_addr.is_v6()) s += '[';
    s += m_addr.to_string();
    if (m_addr.is_v6()) s += ']';
    s += ':';
    s += std::to_string(m_port);
    return s;
}

inline int endpoint::to_sockaddr(sockaddr_storage& ss) const noexcept {
    std::memset(&ss, 0, sizeof ss);
    if (m_addr.is_v6()) {
        auto* sa = reinterpret_cast<sockaddr_in6*>(&ss);
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons(m_port);
        std::memcpy(&sa->sin6_addr, m_addr.bytes(), 16);
        sa->sin6_scope_id = m_addr.scope_id();
        return static_cast<int>(sizeof(sockaddr_in6));
    }
    auto* sa = reinterpret_cast<sockaddr_in*>(&ss);
    sa->sin_family = AF_INET;
    sa->sin_port = htons(m_port);
    std::memcpy(&sa->sin_addr, m_addr.bytes(), 4);
    return static_cast<int>(sizeof(sockaddr_in));
}

inline endpoint endpoint::from_sockaddr(const sockaddr* sa) noexcept {
    if (sa->sa_family == AF_INET6) {
        auto* s6 = reinterpret_cast<const sockaddr_in6*>(sa);
        std::array<std::uint8_t, 16> b;
        std::memcpy(b.data(), &s6->sin6_addr, 16);
        return endpoint(ip_address::v6(b, s6->sin6_scope_id), ntohs(s6->sin6_port));
    }
    if (sa->sa_family == AF_INET) {
        auto* s4 = reinterpret_cast<const sockaddr_in*>(sa);
        std::array<std::uint8_t, 4> b;
        std::memcpy(b.data(), &s4->sin_addr, 4);
        return endpoint(ip_address::v4(b), ntohs(s4->sin_port));
    }
    return {};
}

} // namespace coport
