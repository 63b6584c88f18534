// SPDX-License-Identifier: MIT
#pragma once
/// \file resolver.hpp
/// `co_await resolve(ctx, host, service)`: every address `getaddrinfo` gives for a TCP connection, in
/// its order (IPv6 and IPv4). Numeric hosts and ports resolve at once without suspending; names are
/// looked up on a separate thread, so a slow DNS answer never holds up the threads running `ctx`.
/// - Resumes on the thread that awaited it, if that thread runs `ctx` (the resumption rule, io_context.hpp);
///   otherwise on a thread running `ctx`.
/// - Errors: `errc::host_not_found`, `errc::host_not_found_try_again`, `errc::service_not_found`, ...
/// - Cancel: a stop request resumes the coroutine at once with `errc::operation_aborted`; the lookup
///   itself cannot be interrupted and finishes in the background, its answer dropped.
/// - Destroying `ctx` does not wait for a lookup in progress either: its coroutine is resumed at once (on
///   the destroying thread) with `errc::operation_aborted`, and the lookup finishes in the background.

#include <coport/error.hpp>
#include <coport/io_context.hpp>
#include <coport/net/address.hpp>
#include <coport/result.hpp>

#include <charconv>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

namespace coport {

namespace detail {
/// Blocking getaddrinfo for a stream socket; `passive` asks for bind addresses.
inline result<std::vector<endpoint>> getaddrinfo_blocking(const std::string& host, const std::string& service,
                                                          bool passive = false) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    if (passive) hints.ai_flags |= AI_PASSIVE;
    addrinfo* res = nullptr;
    int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
    if (rc != 0) return unexpected(resolver_error(rc));
    std::vector<endpoint> out;
    for (addrinfo* p = res; p; p = p->ai_next)
        if (p->ai_family == AF_INET || p->ai_family == AF_INET6) out.push_back(endpoint::from_sockaddr(p->ai_addr));
    ::freeaddrinfo(res);
    if (out.empty()) return unexpected(make_error_code(error::host_not_found));
    return out;
}
} // namespace detail

class resolve_awaiter {
public:
    resolve_awaiter(io_context& ctx, std::string host, std::string service, std::stop_token st)
        : m_ctx(ctx), m_host(std::move(host)), m_service(std::move(service)), m_stop(std::move(st)) {}
    resolve_awaiter(const resolve_awaiter&) = delete;

    bool await_ready() {
        std::uint16_t port = 0;
        auto [p, ec] = std::from_chars(m_service.data(), m_service.data() + m_service.size(), port);
        if (ec == std::errc{} && p == m_service.data() + m_service.size()) {
            std::string_view h = m_host;
            if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
            if (auto a = ip_address::parse(h)) {
                m_ready.emplace(std::vector<endpoint>{endpoint(*a, port)});
                return true;
            }
        }
        // A name: getaddrinfo on the blocking pool, as run_blocking does (stop, destruction, the thread that
        // resumes: its contract).
        m_call.emplace(m_ctx, lookup{std::move(m_host), std::move(m_service)}, std::move(m_stop));
        return m_call->await_ready();
    }
    [[gnu::noinline]] void await_suspend(std::coroutine_handle<> h) { m_call->await_suspend(h); }
    result<std::vector<endpoint>> await_resume() {
        if (m_ready) return std::move(*m_ready);
        return m_call->await_resume();
    }

private:
    /// The getaddrinfo call, on a pool thread.
    struct lookup {
        std::string host, service;
        result<std::vector<endpoint>> operator()() const { return detail::getaddrinfo_blocking(host, service); }
    };
    io_context& m_ctx;
    std::string m_host, m_service;
    std::stop_token m_stop;
    std::optional<result<std::vector<endpoint>>> m_ready;
    std::optional<detail::run_blocking_awaiter<lookup>> m_call;
};

/// Resolves `host` (a name or a numeric address) and `service` (a port number or name).
[[nodiscard]] inline resolve_awaiter resolve(io_context& ctx, std::string_view host, std::string_view service,
                                             std::stop_token st = {}) {
    return resolve_awaiter(ctx, std::string(host), std::string(service), std::move(st));
}

} // namespace coport
