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
#include <coport/result.hpp>
#include <coport/task.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <stop_token>
#include <string_view>
#include <utility>

namespace coport {

/// Which direction(s) `shutdown` closes.
enum class shutdown_type { receive = 0, send = 1, both = 2 };

class tcp_listener;

/// A TCP connection.
class tcp_socket {
    using impl = detail::backend::socket_impl;

public:
    using native_handle_type = detail::backend::native_handle_type;

    /// A closed socket (assign a connected one to it).
    tcp_socket() noexcept = default;
    tcp_socket(tcp_socket&&) noexcept = default;
    tcp_socket& operator=(tcp_socket&&) noexcept = default;
    ~tcp_socket() = default;

    /// Resolves `host`, then connects to each address in turn (the order getaddrinfo gives, IPv6 and
    /// IPv4) until one accepts. Errors: the resolver's (`host_not_found`, ...) or the last address's
    /// connect error (`connection_refused`, `timed_out`, ...); `operation_aborted` if `st` is stopped.
    static task<result<tcp_socket>> connect(io_context& ctx, std::string host, std::uint16_t port,
                                           std::stop_token st = {});

    /// Awaiter of connect(endpoint).
    class connect_awaiter : public detail::backend::connect_op {
    public:
        /// `s` is null when the socket could not be opened: then `pre` is the error.
        connect_awaiter(impl* s, const endpoint& ep, std::stop_token st, std::error_code pre)
            : connect_op(s, ep, std::move(st)), m_pre(pre) {}
        bool await_ready() const noexcept { return static_cast<bool>(m_pre); }
        result<void> await_resume() noexcept {
            if (m_pre) return unexpected(m_pre);
            return finish_void();
        }

    private:
        std::error_code m_pre;
    };
    /// Connects to `ep`, opening the socket (of the endpoint's family) first if it is not open.
    /// Must not be used on a socket that another coroutine is using.
    [[nodiscard]] connect_awaiter connect(const endpoint& ep, std::stop_token st = {}) {
        std::error_code pre;
        if (!m_impl) {
            auto s = impl::open(ctx_of(), ep.is_v6(), true);
            if (s) m_impl = std::move(*s);
            else pre = s.error();
        }
        return connect_awaiter(m_impl.get(), ep, std::move(st), pre);
    }

    /// Awaiter of recv/send: the number of bytes transferred.
    template <class Op>
    class bytes_awaiter : public Op {
    public:
        using Op::Op;
        result<std::size_t> await_resume() noexcept { return this->finish_bytes(); }
    };
    using recv_awaiter = bytes_awaiter<detail::backend::recv_op>;
    using send_awaiter = bytes_awaiter<detail::backend::send_op>;
    using msg_awaiter = bytes_awaiter<detail::backend::msg_op>;

    /// Receives up to `buf.size` bytes. 0 bytes: the peer shut down (EOF).
    [[nodiscard]] recv_awaiter recv(mutable_buffer buf, std::stop_token st = {}) {
        return recv_awaiter(&checked(), buf, std::move(st));
    }
    /// Receives into several buffers in order (scatter). `bufs` must outlive the operation.
    [[nodiscard]] msg_awaiter recv(std::span<const mutable_buffer> bufs, std::stop_token st = {}) {
        return msg_awaiter(&checked(), bufs, false, std::move(st));
    }
    /// Sends up to `buf.size` bytes; may send fewer (see send_all).
    [[nodiscard]] send_awaiter send(const_buffer buf, std::stop_token st = {}) {
        return send_awaiter(&checked(), buf, std::move(st));
    }
    /// Sends from several buffers in order (gather). `bufs` must outlive the operation.
    [[nodiscard]] msg_awaiter send(std::span<const const_buffer> bufs, std::stop_token st = {}) {
        return msg_awaiter(&checked(), bufs, true, std::move(st));
    }

    /// Sends every byte of `buf` (looping over partial sends). On error, the error; the bytes sent
    /// before it are in `*sent` when given.
    task<result<std::size_t>> send_all(const_buffer buf, std::stop_token st = {}, std::size_t* sent = nullptr);
    /// Receives exactly `buf.size` bytes. EOF before that: `errc::eof` (the bytes received so far are
    /// in `*received` when given).
    task<result<std::size_t>> recv_exact(mutable_buffer buf, std::stop_token st = {}, std::size_t* received = nullptr);

    /// Shuts down one or both directions (send: the peer's recv then sees EOF).
    result<void> shutdown(shutdown_type what) {
        if (!m_impl) return unexpected(detail::not_open());
        return detail::make_result(m_impl->shutdown(static_cast<int>(what)));
    }
    /// Cancels pending operations (they resume with operation_aborted) and closes the socket.
    void close() noexcept {
        if (m_impl) m_impl->close();
    }
    [[nodiscard]] bool is_open() const noexcept { return m_impl && m_impl->is_open(); }
    [[nodiscard]] native_handle_type native_handle() const noexcept {
        return m_impl ? m_impl->handle() : detail::backend::invalid_handle;
    }
    [[nodiscard]] result<endpoint> local_endpoint() const {
        if (!m_impl) return unexpected(detail::not_open());
        return m_impl->local_endpoint();
    }
    [[nodiscard]] result<endpoint> remote_endpoint() const {
        if (!m_impl) return unexpected(detail::not_open());
        return m_impl->remote_endpoint();
    }

    // Options.
    result<void> set_no_delay(bool on) { return opt(IPPROTO_TCP, TCP_NODELAY, on); }
    result<void> set_keep_alive(bool on) { return opt(SOL_SOCKET, SO_KEEPALIVE, on); }
    result<void> set_send_buffer_size(int bytes) { return opt(SOL_SOCKET, SO_SNDBUF, bytes); }
    result<void> set_receive_buffer_size(int bytes) { return opt(SOL_SOCKET, SO_RCVBUF, bytes); }
    /// SO_LINGER. `set_linger(true, 0)` makes close() send a reset (RST) instead of FIN.
    result<void> set_linger(bool on, std::chrono::seconds timeout) {
        if (!m_impl) return unexpected(detail::not_open());
        return detail::make_result(m_impl->set_linger(on, static_cast<int>(timeout.count())));
    }
    [[nodiscard]] result<bool> no_delay() const { return get_bool(IPPROTO_TCP, TCP_NODELAY); }
    [[nodiscard]] result<bool> keep_alive() const { return get_bool(SOL_SOCKET, SO_KEEPALIVE); }
    [[nodiscard]] result<int> receive_buffer_size() const { return get_int(SOL_SOCKET, SO_RCVBUF); }
    [[nodiscard]] result<int> send_buffer_size() const { return get_int(SOL_SOCKET, SO_SNDBUF); }

    /// A socket that belongs to `ctx` and is not open yet (connect(endpoint) opens it).
    explicit tcp_socket(io_context& ctx) noexcept : m_ctx(&ctx) {}
    /// The context this socket's operations complete on.
    [[nodiscard]] io_context* context() const noexcept { return m_ctx; }

private:
    friend class tcp_listener;
    tcp_socket(io_context& ctx, detail::backend::socket_ptr s) noexcept : m_ctx(&ctx), m_impl(std::move(s)) {}

    detail::backend::context& ctx_of() {
        if (!m_ctx) throw std::logic_error("coport::tcp_socket: no io_context (construct with tcp_socket(ctx))");
        return m_ctx->native();
    }
    impl& checked() {
        if (!m_impl) throw std::logic_error("coport::tcp_socket: operation on a socket that is not open");
        return *m_impl;
    }
    result<void> opt(int level, int name, int v) {
        if (!m_impl) return unexpected(detail::not_open());
        return detail::make_result(m_impl->set_option(level, name, v));
    }
    result<int> get_int(int level, int name) const {
        if (!m_impl) return unexpected(detail::not_open());
        return m_impl->get_option(level, name);
    }
    result<bool> get_bool(int level, int name) const {
        auto r = get_int(level, name);
        if (!r) return unexpected(r.error());
        return *r != 0;
    }

    io_context* m_ctx = nullptr;
    detail::backend::socket_ptr m_impl;
};

/// Options of tcp_listener::bind.
struct listen_options {
    int backlog = 1024;
    /// Linux: SO_REUSEADDR (rebinding a port in TIME_WAIT). Windows: ignored, where rebinding is the
    /// default and SO_REUSEADDR would let other processes steal the port.
    bool reuse_address = true;
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
        auto s = impl::open(ctx.native(), ep.is_v6(), true);
        if (!s) return unexpected(s.error());
        impl& i = **s;
        if (opts.reuse_address) {
            if (auto ec = i.set_reuse_address(true)) return unexpected(ec);
        }
        if (ep.is_v6()) {
            if (auto ec = i.set_v6_only(opts.v6_only)) return unexpected(ec);
        }
        if (auto ec = i.bind(ep)) return unexpected(ec);
        if (auto ec = i.listen(opts.backlog)) return unexpected(ec);
        tcp_listener l;
        l.m_ctx = &ctx;
        l.m_impl = std::move(*s);
        return l;
    }

    /// Awaiter of accept(): the connected socket (on the listener's io_context).
    class accept_awaiter : public detail::backend::accept_op {
    public:
        accept_awaiter(io_context& ctx, impl* s, std::stop_token st) : accept_op(s, std::move(st)), m_ctx(ctx) {}
        result<tcp_socket> await_resume() {
            auto r = finish_accept();
            if (!r) return unexpected(r.error());
            return tcp_socket(m_ctx, std::move(r->socket));
        }

    private:
        io_context& m_ctx;
    };
    /// Accepts the next connection. Errors: `operation_aborted` (cancelled or closed), `too_many_files`.
    /// A client that resets before its connection is accepted is skipped, not reported.
    [[nodiscard]] accept_awaiter accept(std::stop_token st = {}) {
        if (!m_impl) throw std::logic_error("coport::tcp_listener: accept on a listener that is not open");
        return accept_awaiter(*m_ctx, m_impl.get(), std::move(st));
    }

    [[nodiscard]] result<endpoint> local_endpoint() const {
        if (!m_impl) return unexpected(detail::not_open());
        return m_impl->local_endpoint();
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

inline task<result<std::size_t>> tcp_socket::send_all(const_buffer buf, std::stop_token st, std::size_t* sent) {
    std::size_t done = 0;
    const auto* p = static_cast<const std::byte*>(buf.data);
    while (done < buf.size) {
        auto r = co_await send(const_buffer(p + done, buf.size - done), st);
        if (!r) {
            if (sent) *sent = done;
            co_return unexpected(r.error());
        }
        done += *r;
    }
    if (sent) *sent = done;
    co_return done;
}

inline task<result<std::size_t>> tcp_socket::recv_exact(mutable_buffer buf, std::stop_token st, std::size_t* received) {
    std::size_t done = 0;
    auto* p = static_cast<std::byte*>(buf.data);
    while (done < buf.size) {
        auto r = co_await recv(mutable_buffer(p + done, buf.size - done), st);
        if (!r || *r == 0) {
            if (received) *received = done;
            if (!r) co_return unexpected(r.error());
            co_return unexpected(make_error_code(error::eof));
        }
        done += *r;
    }
    if (received) *received = done;
    co_return done;
}

} // namespace coport
