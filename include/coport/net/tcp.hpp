// SPDX-License-Identifier: MIT
#pragma once
/// \file tcp.hpp
/// TCP: `tcp_socket` (connect, send, recv) and `tcp_listener` (bind, listen, accept).
///
/// Contracts common to every operation here:
/// - Each operation is an awaitable returned by a `[[nodiscard]]` function; nothing happens until it is
///   awaited. It resumes on a thread running the socket's io_context (never inside the co_await call
///   when it had to wait).
/// - Buffers are the caller's: they must stay valid until the operation resumes (see buffer.hpp).
/// - At most one receive and one send may be pending on a socket at a time (like Asio/Winsock streams).
///   Other calls (options, endpoints, close) may come from any thread.
/// - Cancel: every operation takes an optional `std::stop_token`. A stop request cancels just that
///   operation in the kernel; the coroutine resumes after the kernel confirmed, with
///   `errc::operation_aborted` — or with the operation's real result if it completed first.
///   What a cancel leaves behind: a cancelled recv consumed nothing; a cancelled send may have sent
///   some bytes (send_all reports how many); a cancelled accept accepted nothing; a cancelled connect
///   leaves the socket unconnected (close it).
/// - `close()` cancels every pending operation on the socket (they resume with operation_aborted) and
///   releases the handle. Destroying a socket closes it the same way; the library's own state lives on
///   until the cancelled operations have resumed, so that is safe for the library — but a coroutine that
///   resumes must not touch the destroyed socket object any more.
/// - Errors are values: `result<T>`; compare with `coport::errc` (connection_reset, connection_refused,
///   eof, timed_out, operation_aborted, ...). A recv of 0 bytes is end of stream, not an error.

#include <coport/buffer.hpp>
#include <coport/error.hpp>
#include <coport/io_context.hpp>
#include <coport/net/address.hpp>
#include <coport/net/resolver.hpp>
#include <coport/net/stream.hpp>
#include <coport/result.hpp>
#include <coport/task.hpp>

#include <cstdint>
#include <stop_token>
#include <string>
#include <utility>

namespace coport {

class tcp_listener;

/// A TCP connection. recv/send/send_all/recv_exact/shutdown/close: see stream_socket.
class tcp_socket : public stream_socket {
public:
    /// A closed socket (assign a connected one to it).
    tcp_socket() noexcept = default;
    /// A socket that belongs to `ctx` and is not open yet (connect(endpoint) opens it).
    explicit tcp_socket(io_context& ctx) noexcept : stream_socket(ctx) {}
    /// Internal: adopts an accepted socket.
    tcp_socket(io_context& ctx, detail::backend::socket_ptr s) noexcept : stream_socket(ctx, std::move(s)) {}
    tcp_socket(tcp_socket&&) noexcept = default;
    tcp_socket& operator=(tcp_socket&&) noexcept = default;

    /// Resolves `host`, then connects to each address in turn (the order getaddrinfo gives, IPv6 and
    /// IPv4) until one accepts. Errors: the resolver's (`host_not_found`, ...) or the last address's
    /// connect error (`connection_refused`, `timed_out`, ...); `operation_aborted` if `st` is stopped.
    static task<result<tcp_socket>> connect(io_context& ctx, std::string host, std::uint16_t port,
                                           std::stop_token st = {});

    using connect_awaiter = detail::connect_awaiter;
    /// Connects to `ep`, opening the socket (of the endpoint's family) first if it is not open.
    /// Errors: `connection_refused`, `timed_out`, `network_unreachable`, `operation_aborted`, ...
    [[nodiscard]] connect_awaiter connect(const endpoint& ep, std::stop_token st = {}) {
        std::error_code pre;
        if (!m_impl) {
            auto s = impl::open(ctx_of(), ep.is_v6() ? AF_INET6 : AF_INET, SOCK_STREAM);
            if (s) m_impl = std::move(*s);
            else pre = s.error();
        }
        sockaddr_storage ss;
        int len = ep.to_sockaddr(ss);
        return connect_awaiter(m_impl.get(), ss, len, std::move(st), pre);
    }

    [[nodiscard]] result<endpoint> local_endpoint() const { return address(false); }
    [[nodiscard]] result<endpoint> remote_endpoint() const { return address(true); }

    result<void> set_no_delay(bool on) { return set_int(IPPROTO_TCP, TCP_NODELAY, on); }
    result<void> set_keep_alive(bool on) { return set_int(SOL_SOCKET, SO_KEEPALIVE, on); }
    [[nodiscard]] result<bool> no_delay() const { return get_bool(IPPROTO_TCP, TCP_NODELAY); }
    [[nodiscard]] result<bool> keep_alive() const { return get_bool(SOL_SOCKET, SO_KEEPALIVE); }

private:
    result<endpoint> address(bool peer) const {
        if (!m_impl) return unexpected(detail::not_open());
        sockaddr_storage ss{};
        int len = 0;
        if (auto ec = m_impl->address(peer, ss, len)) return unexpected(ec);
        return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss));
    }
};

/// Options of tcp_listener::bind.
struct listen_options {
    int backlog = 1024;
    /// Linux: SO_REUSEADDR (rebinding a port in TIME_WAIT). Windows: ignored, where rebinding is the
    /// default and SO_REUSEADDR would let other processes steal the port.
    bool reuse_address = true;
    /// Linux: SO_REUSEPORT, so that several listeners (one io_context per core) share one port and the
    /// kernel spreads connections over them. Not supported on Windows (bind fails with not_supported).
    bool reuse_port = false;
    /// IPv6 listeners: accept IPv6 only (true) or IPv4-mapped too (false, where the OS allows).
    bool v6_only = false;
};

/// A listening TCP socket.
class tcp_listener {
    using impl = detail::backend::socket_impl;

public:
    tcp_listener() noexcept = default;
    tcp_listener(tcp_listener&&) noexcept = default;
    tcp_listener& operator=(tcp_listener&&) noexcept = default;

    /// Opens, binds and listens. Port 0 picks a free port: read it back with local_endpoint().
    /// Errors: `address_in_use`, `address_not_available`, `permission_denied`, ...
    static result<tcp_listener> bind(io_context& ctx, const endpoint& ep, listen_options opts = {}) {
        auto s = impl::open(ctx.native(), ep.is_v6() ? AF_INET6 : AF_INET, SOCK_STREAM);
        if (!s) return unexpected(s.error());
        impl& i = **s;
        if (opts.reuse_address) {
            if (auto ec = i.set_reuse_address(true)) return unexpected(ec);
        }
        if (opts.reuse_port) {
            if (auto ec = i.set_reuse_port(true)) return unexpected(ec);
        }
        if (ep.is_v6()) {
            if (auto ec = i.set_v6_only(opts.v6_only)) return unexpected(ec);
        }
        sockaddr_storage ss;
        int len = ep.to_sockaddr(ss);
        if (auto ec = i.bind(ss, len)) return unexpected(ec);
        if (auto ec = i.listen(opts.backlog)) return unexpected(ec);
        tcp_listener l;
        l.m_ctx = &ctx;
        l.m_impl = std::move(*s);
        return l;
    }

    using accept_awaiter = detail::accept_awaiter<tcp_socket>;
    /// True for the accept errors that pass by themselves: out of descriptors (`errc::too_many_files`:
    /// EMFILE, ENFILE, WSAEMFILE), out of buffer space or memory (ENOBUFS, ENOMEM, WSAENOBUFS), and a client
    /// gone before it was accepted (`errc::connection_aborted`). A server pauses (descriptors come back as
    /// connections close) and accepts again; ending the accept loop on them stops the server for good.
    [[nodiscard]] static bool is_transient_accept_error(const std::error_code& ec) noexcept {
        return ec == errc::too_many_files || ec == errc::connection_aborted || ec == std::errc::no_buffer_space ||
               ec == std::errc::not_enough_memory;
    }
    /// Accepts the next connection (on the listener's io_context). Errors: `operation_aborted`
    /// (cancelled or closed), `too_many_files`, and the others is_transient_accept_error() names: an accept
    /// loop should wait those out and go on (see examples/echo_server.cpp), not end on them. A client that
    /// resets before it is accepted is skipped.
    [[nodiscard]] accept_awaiter accept(std::stop_token st = {}) {
        if (!m_impl) throw std::logic_error("coport::tcp_listener: accept on a listener that is not open");
        return accept_awaiter(*m_ctx, m_impl.get(), std::move(st));
    }

    [[nodiscard]] result<endpoint> local_endpoint() const {
        if (!m_impl) return unexpected(detail::not_open());
        sockaddr_storage ss{};
        int len = 0;
        if (auto ec = m_impl->address(false, ss, len)) return unexpected(ec);
        return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss));
    }
    /// Cancels a pending accept (operation_aborted) and closes the listening socket.
    void close() noexcept {
        if (m_impl) m_impl->close();
    }
    [[nodiscard]] bool is_open() const noexcept { return m_impl && m_impl->is_open(); }
    [[nodiscard]] detail::backend::native_handle_type native_handle() const noexcept {
        return m_impl ? m_impl->handle() : detail::backend::invalid_handle;
    }

private:
    io_context* m_ctx = nullptr;
    detail::backend::socket_ptr m_impl;
};

// ---------------------------------------------------------------------------------------------------------

inline task<result<tcp_socket>> tcp_socket::connect(io_context& ctx, std::string host, std::uint16_t port,
                                                    std::stop_token st) {
    auto addrs = co_await resolve(ctx, host, std::to_string(port), st);
    if (!addrs) co_return unexpected(addrs.error());
    std::error_code last = make_error_code(error::host_not_found);
    for (const endpoint& ep : *addrs) {
        tcp_socket s(ctx);
        auto r = co_await s.connect(ep, st);
        if (r) co_return std::move(s);
        last = r.error();
        if (last == errc::operation_aborted) break;
    }
    co_return unexpected(last);
}

} // namespace coport
