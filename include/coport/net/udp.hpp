// SPDX-License-Identifier: MIT
#pragma once
/// \file udp.hpp
/// UDP: `udp_socket` with send_to / recv_from, a connected mode (connect + send / recv), buffer
/// sequences, broadcast and multicast.
///
/// Contracts (besides those of tcp.hpp: resuming thread, buffer lifetime, cancel, close):
/// - One datagram per operation. A datagram larger than the receive buffer is cut: the result says
///   `truncated` and `bytes` is what was stored (the rest is lost) — it is not an error.
/// - ICMP "port unreachable" after a send_to to a closed port does not break an unconnected socket on any
///   platform (on Windows coport turns off SIO_UDP_CONNRESET, which would otherwise make the next
///   recv_from fail with WSAECONNRESET). On a connected socket the next recv or send may report
///   `errc::connection_refused`, as the OS says.
/// - A cancelled recv_from consumed nothing; a cancelled send_to sent nothing (datagrams are atomic).

#include <coport/buffer.hpp>
#include <coport/error.hpp>
#include <coport/io_context.hpp>
#include <coport/net/address.hpp>
#include <coport/result.hpp>

#include <cstring>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <utility>

namespace coport {

/// What recv_from / recv of a datagram returns.
struct datagram_info {
    std::size_t bytes = 0;  ///< bytes stored in the buffer(s)
    endpoint from;          ///< the sender
    bool truncated = false; ///< the datagram was larger than the buffer(s): the rest was dropped
};

/// Options of udp_socket::bind.
struct udp_options {
    bool reuse_address = false; ///< SO_REUSEADDR (several receivers of one multicast port)
    bool v6_only = false;       ///< IPv6 sockets: IPv6 only (true) or dual-stack (false, where the OS allows)
    bool broadcast = false;     ///< SO_BROADCAST
};

class udp_socket {
    using impl = detail::backend::socket_impl;

public:
    using native_handle_type = detail::backend::native_handle_type;

    udp_socket() noexcept = default;
    udp_socket(udp_socket&&) noexcept = default;
    udp_socket& operator=(udp_socket&&) noexcept = default;

    /// A socket bound to `ep` (port 0: any free port; read it back with local_endpoint()).
    static result<udp_socket> bind(io_context& ctx, const endpoint& ep, udp_options opts = {}) {
        auto s = open(ctx, ep.is_v6());
        if (!s) return s;
        impl& i = *s->m_impl;
        if (opts.reuse_address) {
            if (auto ec = i.set_reuse_address(true)) return unexpected(ec);
        }
        if (ep.is_v6()) {
            if (auto ec = i.set_v6_only(opts.v6_only)) return unexpected(ec);
        }
        if (opts.broadcast) {
            if (auto ec = i.set_option(SOL_SOCKET, SO_BROADCAST, 1)) return unexpected(ec);
        }
        sockaddr_storage ss;
        int len = ep.to_sockaddr(ss);
        if (auto ec = i.bind(ss, len)) return unexpected(ec);
        return s;
    }
    /// An unbound socket (the OS picks the local port at the first send).
    static result<udp_socket> open(io_context& ctx, bool v6 = false) {
        auto s = impl::open(ctx.native(), v6 ? AF_INET6 : AF_INET, SOCK_DGRAM);
        if (!s) return unexpected(s.error());
        udp_socket u;
        u.m_ctx = &ctx;
        u.m_impl = std::move(*s);
        return u;
    }

    /// Awaiter of the send operations: bytes sent (the whole datagram).
    class send_awaiter : public detail::backend::datagram_op {
    public:
        using datagram_op::datagram_op;
        result<std::size_t> await_resume() noexcept {
            auto r = finish_datagram();
            if (!r) return unexpected(r.error());
            return r->bytes;
        }
    };
    /// Awaiter of the receive operations.
    class recv_awaiter : public detail::backend::datagram_op {
    public:
        using datagram_op::datagram_op;
        result<datagram_info> await_resume() noexcept {
            auto r = finish_datagram();
            if (!r) return unexpected(r.error());
            datagram_info d;
            d.bytes = r->bytes;
            d.truncated = r->truncated;
            if (r->from.ss_family == AF_INET || r->from.ss_family == AF_INET6)
                d.from = endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&r->from));
            return d;
        }
    };

    /// Sends one datagram to `to`.
    [[nodiscard]] send_awaiter send_to(const_buffer buf, const endpoint& to, std::stop_token st = {}) {
        return send_to(std::span<const const_buffer>(&buf, 1), to, std::move(st));
    }
    /// Sends one datagram made of several buffers to `to`.
    [[nodiscard]] send_awaiter send_to(std::span<const const_buffer> bufs, const endpoint& to, std::stop_token st = {}) {
        sockaddr_storage ss;
        int len = to.to_sockaddr(ss);
        return send_awaiter(&checked(), bufs, &ss, len, true, std::move(st));
    }
    /// Receives one datagram and its sender.
    [[nodiscard]] recv_awaiter recv_from(mutable_buffer buf, std::stop_token st = {}) {
        return recv_from(std::span<const mutable_buffer>(&buf, 1), std::move(st));
    }
    /// Receives one datagram into several buffers (scatter).
    [[nodiscard]] recv_awaiter recv_from(std::span<const mutable_buffer> bufs, std::stop_token st = {}) {
        return recv_awaiter(&checked(), bufs, nullptr, 0, false, std::move(st));
    }

    /// Connected mode: sets the default peer (datagrams from others are then filtered out by the OS).
    result<void> connect(const endpoint& peer) {
        sockaddr_storage ss;
        int len = peer.to_sockaddr(ss);
        return detail::make_result(checked().connect_now(ss, len));
    }
    /// Connected mode: sends one datagram to the peer.
    [[nodiscard]] send_awaiter send(const_buffer buf, std::stop_token st = {}) {
        return send_awaiter(&checked(), std::span<const const_buffer>(&buf, 1), nullptr, 0, true, std::move(st));
    }
    /// Connected mode: receives one datagram from the peer.
    [[nodiscard]] recv_awaiter recv(mutable_buffer buf, std::stop_token st = {}) { return recv_from(buf, std::move(st)); }

    result<void> set_broadcast(bool on) { return opt(SOL_SOCKET, SO_BROADCAST, on); }
    result<void> set_receive_buffer_size(int bytes) { return opt(SOL_SOCKET, SO_RCVBUF, bytes); }
    result<void> set_send_buffer_size(int bytes) { return opt(SOL_SOCKET, SO_SNDBUF, bytes); }
    /// Joins the multicast `group` on the interface with index `interface_index` (0: the default).
    /// Errors: `invalid_argument` for a non-multicast group, `not_supported` where the OS has no multicast.
    result<void> join_group(const ip_address& group, unsigned interface_index = 0) { return membership(group, interface_index, true); }
    result<void> leave_group(const ip_address& group, unsigned interface_index = 0) { return membership(group, interface_index, false); }
    /// IP_MULTICAST_LOOP / IPV6_MULTICAST_LOOP: receive our own multicast datagrams.
    result<void> set_multicast_loopback(bool on) {
        if (!m_impl) return unexpected(detail::not_open());
        auto ep = local_endpoint();
        if (ep && ep->is_v6()) return opt(IPPROTO_IPV6, IPV6_MULTICAST_LOOP, on);
        return opt(IPPROTO_IP, IP_MULTICAST_LOOP, on);
    }

    [[nodiscard]] result<endpoint> local_endpoint() const { return address(false); }
    [[nodiscard]] result<endpoint> remote_endpoint() const { return address(true); }
    /// Cancels pending operations (operation_aborted) and closes the socket.
    void close() noexcept {
        if (m_impl) m_impl->close();
    }
    [[nodiscard]] bool is_open() const noexcept { return m_impl && m_impl->is_open(); }
    [[nodiscard]] native_handle_type native_handle() const noexcept {
        return m_impl ? m_impl->handle() : detail::backend::invalid_handle;
    }

private:
    impl& checked() {
        if (!m_impl) throw std::logic_error("coport::udp_socket: operation on a socket that is not open");
        return *m_impl;
    }
    result<void> opt(int level, int name, int v) {
        if (!m_impl) return unexpected(detail::not_open());
        return detail::make_result(m_impl->set_option(level, name, v));
    }
    result<endpoint> address(bool peer) const {
        if (!m_impl) return unexpected(detail::not_open());
        sockaddr_storage ss{};
        int len = 0;
        if (auto ec = m_impl->address(peer, ss, len)) return unexpected(ec);
        return endpoint::from_sockaddr(reinterpret_cast<const sockaddr*>(&ss));
    }
    result<void> membership(const ip_address& group, unsigned interface_index, bool join) {
        if (!m_impl) return unexpected(detail::not_open());
        if (group.is_v4()) {
            if ((group.bytes()[0] & 0xf0) != 0xe0) return unexpected(std::make_error_code(std::errc::invalid_argument));
            ip_mreq m{};
            std::memcpy(&m.imr_multiaddr, group.bytes(), 4);
            m.imr_interface.s_addr = htonl(INADDR_ANY);
            (void)interface_index; // IPv4 picks the interface by address; the default route's here
            return detail::make_result(
                m_impl->set_option_raw(IPPROTO_IP, join ? IP_ADD_MEMBERSHIP : IP_DROP_MEMBERSHIP, &m, sizeof m));
        }
        if (group.bytes()[0] != 0xff) return unexpected(std::make_error_code(std::errc::invalid_argument));
        ipv6_mreq m{};
        std::memcpy(&m.ipv6mr_multiaddr, group.bytes(), 16);
        m.ipv6mr_interface = interface_index;
        return detail::make_result(
            m_impl->set_option_raw(IPPROTO_IPV6, join ? IPV6_JOIN_GROUP : IPV6_LEAVE_GROUP, &m, sizeof m));
    }

    io_context* m_ctx = nullptr;
    detail::backend::socket_ptr m_impl;
};

} // namespace coport
