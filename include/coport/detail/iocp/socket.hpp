// SPDX-License-Identifier: MIT
#pragma once
// IOCP backend: sockets and their operations (WSARecv/WSASend, WSARecvFrom/WSASendTo, ConnectEx, AcceptEx).
//
// A socket is opened with WSA_FLAG_OVERLAPPED, associated with its context's port once, and registered with
// the context (whose destruction cancels what is still pending on it). Each operation is an awaiter whose
// OVERLAPPED is the first member of its iocp::operation; it is started with the starter protocol of
// context.hpp, under the socket's mutex. Holding that mutex while the I/O is issued is what makes close()
// safe from any thread: close() (same mutex) sees every operation either not started yet (it then fails
// with operation_aborted) or already issued, so CancelIoEx(h, NULL) + closesocket end all of them, and no
// operation is ever issued on a handle value that closesocket has freed (Windows reuses them at once).
//
// Results are the Win32/WSA codes in the native category (error.hpp). A socket closed by its owner makes
// every failure of its operations read as operation_aborted: closesocket completes a pending operation
// with 64 (ERROR_NETNAME_DELETED) on Windows and 676 (STATUS_HANDLES_CLOSED) under Wine.
#if !defined(_WIN32)
#error "coport/detail/iocp is the Windows backend"
#endif

#include <coport/buffer.hpp>
#include <coport/detail/iocp/context.hpp>
#include <coport/detail/iocp/error.hpp>
#include <coport/detail/iocp/os.hpp>
#include <coport/net/address.hpp>
#include <coport/result.hpp>

#include <array>
#include <atomic>
#include <climits>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <stop_token>
#include <utility>
#include <vector>

namespace coport::detail::iocp {

using native_handle_type = SOCKET;
inline constexpr native_handle_type invalid_handle = INVALID_SOCKET;

class socket_op;
class socket_impl;

/// Deletes a socket_impl once no operation refers to it any more (see socket_impl::release).
struct socket_deleter {
    void operator()(socket_impl* s) const noexcept;
};
using socket_ptr = std::unique_ptr<socket_impl, socket_deleter>;

// ---------------------------------------------------------------------------------------------------------
// Winsock extension functions (ConnectEx, AcceptEx, GetAcceptExSockaddrs): looked up once per process and
// address family with WSAIoctl(SIO_GET_EXTENSION_FUNCTION_POINTER), as Microsoft asks (a layered provider
// may supply its own).

enum class extension { connect_ex, accept_ex, get_accept_ex_sockaddrs };

inline void* extension_function(SOCKET s, int family, extension which) noexcept {
    static std::atomic<void*> cache[3][3] = {};
    const int f = family == AF_INET ? 0 : family == AF_INET6 ? 1 : 2;
    std::atomic<void*>& slot = cache[f][static_cast<int>(which)];
    if (void* p = slot.load(std::memory_order_acquire)) return p;
    GUID connect_id = WSAID_CONNECTEX, accept_id = WSAID_ACCEPTEX, sockaddrs_id = WSAID_GETACCEPTEXSOCKADDRS;
    GUID* id = which == extension::connect_ex ? &connect_id : which == extension::accept_ex ? &accept_id : &sockaddrs_id;
    void* fn = nullptr;
    DWORD n = 0;
    if (::WSAIoctl(s, SIO_GET_EXTENSION_FUNCTION_POINTER, id, sizeof *id, &fn, sizeof fn, &n, nullptr, nullptr) != 0)
        return nullptr; // WSAGetLastError() tells why
    slot.store(fn, std::memory_order_release);
    return fn;
}

/// A new overlapped socket (not yet associated with a port). INVALID_SOCKET: WSAGetLastError() tells why.
inline SOCKET new_overlapped_socket(int family, int type) noexcept {
    SOCKET s = ::WSASocketW(family, type, 0, nullptr, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
    if (s == INVALID_SOCKET && ::WSAGetLastError() == WSAEINVAL) // before Windows 7 SP1: no such flag
        s = ::WSASocketW(family, type, 0, nullptr, 0, WSA_FLAG_OVERLAPPED);
    return s;
}

/// What issuing an overlapped call returned: 0 (finished at once), WSA_IO_PENDING, or an error.
struct issue_result {
    DWORD error = 0;
    DWORD bytes = 0;           // when finished at once
    bool synchronous = false; // no overlapped I/O was issued: never a packet, whatever the error
};

inline bool is_truncation(DWORD e) noexcept { return e == WSAEMSGSIZE || e == ERROR_MORE_DATA; }
inline bool is_reset(DWORD e) noexcept { return e == error_netname_deleted || e == WSAECONNRESET; }

// ---------------------------------------------------------------------------------------------------------

/// What is shared by a socket object and its operations.
class socket_impl {
public:
    socket_impl(context& ctx, SOCKET s, int family, int type, bool skip_on_success) noexcept
        : m_ctx(ctx), m_sock(s), m_family(family), m_type(type), m_skip_on_success(skip_on_success) {
        m_registered.m_handle = reinterpret_cast<HANDLE>(s);
        ctx.register_handle(&m_registered);
    }
    socket_impl(const socket_impl&) = delete;
    socket_impl& operator=(const socket_impl&) = delete;
    ~socket_impl() { close(); }

    /// The owner lets go: close (cancelling what is in flight) and delete, at once if nothing is in
    /// flight, else when the last operation has resumed and detached. So destroying a socket with
    /// operations pending never leaves them pointing at freed memory.
    void release() noexcept {
        bool now;
        {
            std::lock_guard lock(m_mutex);
            close_locked();
            now = m_ops == 0;
            m_orphaned = !now;
        }
        if (now) delete this;
    }

    /// A new socket: `family` AF_INET, AF_INET6 or AF_UNIX; `type` SOCK_STREAM or SOCK_DGRAM.
    static result<socket_ptr> open(context& ctx, int family, int type) {
        SOCKET s = new_overlapped_socket(family, type);
        if (s == INVALID_SOCKET) return unexpected(wsa_last_error());
        bool skip = false;
        std::error_code ec;
        if (type == SOCK_DGRAM) {
            // An ICMP port unreachable (after a send_to to a closed port) would make the next WSARecvFrom
            // fail with WSAECONNRESET: not on an unconnected socket (udp.hpp).
            BOOL report = FALSE;
            DWORD n = 0;
            (void)::WSAIoctl(s, SIO_UDP_CONNRESET, &report, sizeof report, nullptr, 0, &n, nullptr, nullptr);
            // No skip-on-success for datagrams: a receive that truncates finishes at once with WSAEMSGSIZE
            // and no byte count (seen under Wine), while without skipping its packet still comes (the
            // status is a warning, not an error) and carries the bytes stored.
            ec = ctx.associate(reinterpret_cast<HANDLE>(s), skip, false);
        } else {
            ec = ctx.associate_socket(s, skip);
        }
        if (ec) {
            ::closesocket(s);
            return unexpected(ec);
        }
        auto* p = new (std::nothrow) socket_impl(ctx, s, family, type, skip);
        if (!p) {
            ::closesocket(s);
            return unexpected(native_error(ERROR_NOT_ENOUGH_MEMORY));
        }
        return socket_ptr(p);
    }
    /// Adopts a connected stream socket (e.g. an accepted one): associates it with the port. If that fails,
    /// its operations fail with the error.
    static socket_ptr adopt(context& ctx, native_handle_type s, int family) {
        int type = SOCK_STREAM, len = sizeof type;
        (void)::getsockopt(s, SOL_SOCKET, SO_TYPE, reinterpret_cast<char*>(&type), &len);
        bool skip = false;
        std::error_code ec = type == SOCK_DGRAM ? ctx.associate(reinterpret_cast<HANDLE>(s), skip, false)
                                                : ctx.associate_socket(s, skip);
        socket_impl* p;
        try {
            p = new socket_impl(ctx, s, family, type, skip);
        } catch (...) {
            ::closesocket(s);
            throw;
        }
        p->m_broken = static_cast<DWORD>(ec.value());
        p->m_bound = true;
        return socket_ptr(p);
    }

    context& ctx() noexcept { return m_ctx; }
    [[nodiscard]] native_handle_type handle() const noexcept { return m_sock; }
    [[nodiscard]] bool is_open() const noexcept { return m_sock != invalid_handle; }
    [[nodiscard]] int family() const noexcept { return m_family; }
    [[nodiscard]] int type() const noexcept { return m_type; }

    /// Cancels every operation in flight (they resume with operation_aborted) and closes the socket.
    void close() noexcept {
        std::lock_guard lock(m_mutex);
        close_locked();
    }

    std::error_code set_option(int level, int name, int value) noexcept {
        return set_option_raw(level, name, &value, sizeof value);
    }
    result<int> get_option(int level, int name) const noexcept {
        int v = 0; // some options are BOOL, some a single byte: zero first
        int n = sizeof v;
        if (::getsockopt(m_sock, level, name, reinterpret_cast<char*>(&v), &n) != 0) return unexpected(wsa_last_error());
        return v;
    }
    std::error_code set_linger(bool on, int seconds) noexcept {
        ::linger l{};
        l.l_onoff = static_cast<u_short>(on ? 1 : 0);
        l.l_linger = static_cast<u_short>(seconds < 0 ? 0 : seconds > 65535 ? 65535 : seconds);
        return set_option_raw(SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    /// Streams: a no-op (Windows rebinds a port in TIME_WAIT by default, and SO_REUSEADDR would let another
    /// socket steal a bound port; see listen_options). Datagrams: SO_REUSEADDR (several multicast receivers).
    std::error_code set_reuse_address(bool on) noexcept {
        if (m_type == SOCK_STREAM) return {};
        return set_option(SOL_SOCKET, SO_REUSEADDR, on ? 1 : 0);
    }
    /// Windows has no SO_REUSEPORT: asking for it is not_supported.
    std::error_code set_reuse_port(bool on) noexcept {
        if (on) return native_error(WSAEOPNOTSUPP);
        return {};
    }
    std::error_code set_v6_only(bool on) noexcept { return set_option(IPPROTO_IPV6, IPV6_V6ONLY, on ? 1 : 0); }
    std::error_code set_option_raw(int level, int name, const void* v, int len) noexcept {
        if (::setsockopt(m_sock, level, name, static_cast<const char*>(v), len) != 0) return wsa_last_error();
        return {};
    }
    std::error_code bind(const sockaddr_storage& ss, int len) noexcept {
        if (::bind(m_sock, reinterpret_cast<const sockaddr*>(&ss), len) != 0) return wsa_last_error();
        m_bound = true;
        return {};
    }
    /// Immediate connect (datagram sockets: sets the default peer).
    std::error_code connect_now(const sockaddr_storage& ss, int len) noexcept {
        if (::connect(m_sock, reinterpret_cast<const sockaddr*>(&ss), len) != 0) return wsa_last_error();
        m_bound = true;
        return {};
    }
    /// The raw local / peer address (any family).
    std::error_code address(bool peer, sockaddr_storage& ss, int& len) const noexcept {
        int n = sizeof ss;
        int r = peer ? ::getpeername(m_sock, reinterpret_cast<sockaddr*>(&ss), &n)
                     : ::getsockname(m_sock, reinterpret_cast<sockaddr*>(&ss), &n);
        if (r != 0) return wsa_last_error();
        len = n;
        return {};
    }
    std::error_code listen(int backlog) noexcept {
        if (::listen(m_sock, backlog) != 0) return wsa_last_error();
        return {};
    }
    /// 0: receive side, 1: send side, 2: both.
    std::error_code shutdown(int what) noexcept {
        static constexpr int how[] = {SD_RECEIVE, SD_SEND, SD_BOTH};
        if (what < 0 || what > 2) return native_error(WSAEINVAL);
        if (::shutdown(m_sock, how[what]) != 0) return wsa_last_error();
        return {};
    }

private:
    friend class socket_op;
    friend class connect_op;
    friend class accept_op;

    /// The starter protocol (context.hpp) from step 3 on, under the mutex. True: suspend (published, or
    /// finished and resumed through the port); *op must not be touched any more. False: continue inline;
    /// the result is in op->m_error / m_bytes.
    bool start(socket_op* op) noexcept;
    /// An operation is done with this socket. True if the owner closed it. May delete *this.
    bool detach() noexcept {
        bool closed, last;
        {
            std::lock_guard lock(m_mutex);
            --m_ops;
            closed = m_closed;
            last = m_orphaned && m_ops == 0;
        }
        if (last) delete this;
        return closed;
    }
    /// After ConnectEx: lets getpeername, shutdown etc. work. 0 or the error (the owner closed it: aborted).
    DWORD update_connect_context() noexcept {
        std::lock_guard lock(m_mutex);
        if (m_sock == INVALID_SOCKET) return ERROR_OPERATION_ABORTED;
        if (::setsockopt(m_sock, SOL_SOCKET, SO_UPDATE_CONNECT_CONTEXT, nullptr, 0) != 0)
            return static_cast<DWORD>(::WSAGetLastError());
        return 0;
    }
    /// After AcceptEx: the accepted socket inherits the listener's properties.
    DWORD update_accept_context(SOCKET accepted) noexcept {
        std::lock_guard lock(m_mutex);
        if (m_sock == INVALID_SOCKET) return ERROR_OPERATION_ABORTED;
        SOCKET listener = m_sock;
        if (::setsockopt(accepted, SOL_SOCKET, SO_UPDATE_ACCEPT_CONTEXT, reinterpret_cast<const char*>(&listener),
                         sizeof listener) != 0)
            return static_cast<DWORD>(::WSAGetLastError());
        return 0;
    }
    void close_locked() noexcept {
        if (m_sock == INVALID_SOCKET) return;
        m_closed = true;
        m_ctx.unregister_handle(&m_registered);
        // Every operation of this socket has been issued (they are issued under this mutex): cancel them all.
        // closesocket would end them too, but with 64 or 676 instead of ERROR_OPERATION_ABORTED.
        ::CancelIoEx(reinterpret_cast<HANDLE>(m_sock), nullptr);
        ::closesocket(m_sock);
        m_sock = INVALID_SOCKET;
    }

    context& m_ctx;
    SOCKET m_sock;
    const int m_family;
    const int m_type;
    const bool m_skip_on_success; // FILE_SKIP_COMPLETION_PORT_ON_SUCCESS is in force
    bool m_bound = false;         // ConnectEx needs a bound socket
    DWORD m_broken = 0;           // adopt() could not associate it: its operations fail with this
    registered_handle m_registered;
    std::mutex m_mutex;
    std::size_t m_ops = 0;   // operations attached (started and not yet finished)
    bool m_closed = false;   // closed by the owner: failures read as operation_aborted
    bool m_orphaned = false; // released by its owner while operations were in flight
};

inline void socket_deleter::operator()(socket_impl* s) const noexcept { s->release(); }

// ---------------------------------------------------------------------------------------------------------

/// Common part of socket operations: stop token, attachment to the socket, the starter protocol.
class socket_op : public operation {
public:
    /// Issues the I/O on `s` with &op->m_ov (zeroed). Called under the socket's mutex.
    using issue_fn = issue_result (*)(socket_op* op, SOCKET s) noexcept;

    socket_op(socket_impl* s, std::stop_token st, issue_fn issue) noexcept
        : operation(&cancel), m_sock(s), m_stop(std::move(st)), m_issue(issue) {}
    socket_op(const socket_op&) = delete;
    socket_op& operator=(const socket_op&) = delete;

    bool await_ready() const noexcept { return false; }
    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> h) noexcept { return begin(h); }

protected:
    /// Starter protocol steps 1-2, then the socket does the rest. `h` is what the completion resumes.
    bool begin(std::coroutine_handle<> h) noexcept {
        if (m_stop.stop_requested()) {
            m_error = ERROR_OPERATION_ABORTED;
            return false;
        }
        m_handle = h;
        // May run the callback at once (a stop requested just now): the operation then never starts.
        if (m_stop.stop_possible()) m_reg.emplace(m_stop, cancel_callback{this});
        socket_impl* s = m_sock;
        return s->start(this); // true: published, *this may already be resumed on another thread
    }
    /// Call first in await_resume: after it the result is final. The Win32 error (0: success).
    DWORD finish() noexcept { return detach_result(settle()); }
    /// The stop callback is gone (reset() waits for one running on another thread): the result is final
    /// and the OVERLAPPED free. The Win32 error; the operation stays attached to its socket.
    DWORD settle() noexcept {
        m_reg.reset();
        return m_error;
    }
    [[nodiscard]] bool attached() const noexcept { return m_attached; }
    /// Detaches from the socket (which may be deleted then) and applies the "closed by its owner" rule.
    DWORD detach_result(DWORD e) noexcept {
        if (!m_attached) return e;
        m_attached = false;
        const bool closed = m_sock->detach();
        if (closed && e && !is_truncation(e)) return ERROR_OPERATION_ABORTED;
        return e;
    }
    /// For byte-count operations: the bytes transferred, or the error.
    result<std::size_t> finish_bytes() noexcept {
        const DWORD e = finish();
        if (e && !is_truncation(e)) return unexpected(error_of(e));
        return static_cast<std::size_t>(m_bytes);
    }
    static std::error_code error_of(DWORD e) noexcept { return native_error(static_cast<int>(e)); }
    /// After the call (`bytes` must be read after it: not an argument next to the call itself).
    static issue_result wsa_result(int rc, DWORD bytes) noexcept {
        if (rc == 0) return {0, bytes};
        return {static_cast<DWORD>(::WSAGetLastError()), 0};
    }
    static ULONG clamp(std::size_t n) noexcept { return n > 0x7fffffffu ? 0x7fffffffu : static_cast<ULONG>(n); }

    socket_impl* m_sock;
    std::stop_token m_stop;

private:
    friend class socket_impl;
    static void cancel(operation* op) noexcept {
        auto* self = static_cast<socket_op*>(op);
        ::CancelIoEx(reinterpret_cast<HANDLE>(self->m_target), &op->m_ov);
    }

    issue_fn m_issue;
    stop_registration m_reg;
    SOCKET m_target = INVALID_SOCKET; // the handle it was issued on (what a stop request cancels)
    bool m_attached = false;
};

inline bool socket_impl::start(socket_op* op) noexcept {
    std::lock_guard lock(m_mutex);
    if (m_sock == INVALID_SOCKET) {
        op->m_error = m_closed ? ERROR_OPERATION_ABORTED : static_cast<DWORD>(WSAENOTSOCK);
        return false;
    }
    if (m_broken) {
        op->m_error = m_broken;
        return false;
    }
    if (!op->m_attached) {
        op->m_attached = true;
        ++m_ops;
    }
    if (!op->begin_start(m_ctx)) return false; // cancelled early or the context shuts down (m_error set)
    op->m_ov = OVERLAPPED{};
    op->m_target = m_sock;
    const issue_result r = op->m_issue(op, m_sock);
    // A packet comes for what is pending, for what succeeded at once unless skip-on-success is in force,
    // and for a truncated datagram (STATUS_BUFFER_OVERFLOW is a warning; datagram sockets never skip).
    if (!r.synchronous && (r.error == WSA_IO_PENDING || ((r.error == 0 || is_truncation(r.error)) && !m_skip_on_success)))
        return op->publish();
    op->m_bytes = r.bytes;
    op->m_error = r.error;
    return op->complete_inline();
}

/// recv into one buffer. Result: bytes received; 0 means the peer shut down its side (EOF).
class recv_op : public socket_op {
public:
    recv_op(socket_impl* s, mutable_buffer b, std::stop_token st) noexcept
        : socket_op(s, std::move(st), &issue), m_buf(b) {}
    using socket_op::finish_bytes;

private:
    static issue_result issue(socket_op* op, SOCKET s) noexcept {
        auto* self = static_cast<recv_op*>(op);
        WSABUF b{clamp(self->m_buf.size), static_cast<char*>(self->m_buf.data)};
        self->m_flags = 0;
        DWORD n = 0;
        const int rc = ::WSARecv(s, &b, 1, &n, &self->m_flags, &op->m_ov, nullptr);
        return wsa_result(rc, n);
    }
    mutable_buffer m_buf;
    DWORD m_flags = 0;
};

/// send from one buffer. Result: bytes sent.
class send_op : public socket_op {
public:
    send_op(socket_impl* s, const_buffer b, std::stop_token st) noexcept
        : socket_op(s, std::move(st), &issue), m_buf(b) {}
    using socket_op::finish_bytes;

private:
    static issue_result issue(socket_op* op, SOCKET s) noexcept {
        auto* self = static_cast<send_op*>(op);
        WSABUF b{clamp(self->m_buf.size), const_cast<char*>(static_cast<const char*>(self->m_buf.data))};
        DWORD n = 0;
        const int rc = ::WSASend(s, &b, 1, &n, 0, &op->m_ov, nullptr);
        return wsa_result(rc, n);
    }
    const_buffer m_buf;
};

/// Several buffers at once: scatter/gather on streams (WSARecv/WSASend), and one datagram with its
/// address on datagram sockets (WSARecvFrom / WSASendTo).
class datagram_op : public socket_op {
public:
    /// Streams: no address.
    template <class B>
    datagram_op(socket_impl* s, std::span<const B> bufs, bool is_send, std::stop_token st)
        : datagram_op(s, bufs, nullptr, 0, is_send, std::move(st)) {}
    /// Receive: `to` is null. Send: the destination (null on a connected socket).
    template <class B>
    datagram_op(socket_impl* s, std::span<const B> bufs, const sockaddr_storage* to, int to_len, bool is_send,
                std::stop_token st)
        : socket_op(s, std::move(st), is_send ? &issue_send : &issue_recv), m_dgram(s->type() == SOCK_DGRAM) {
        if (bufs.size() > m_inline.size()) m_heap.resize(bufs.size());
        WSABUF* w = bufs.size() > m_inline.size() ? m_heap.data() : m_inline.data();
        for (std::size_t i = 0; i < bufs.size(); ++i) {
            w[i].buf = const_cast<char*>(static_cast<const char*>(bufs[i].data));
            w[i].len = clamp(bufs[i].size);
        }
        m_bufs = w;
        m_count = static_cast<DWORD>(bufs.size());
        if (to) {
            m_addr = *to;
            m_addr_len = to_len;
            m_has_to = true;
        }
    }
    struct datagram {
        std::size_t bytes;
        bool truncated;
        sockaddr_storage from;
    };
    using socket_op::finish_bytes;
    /// A datagram larger than the buffers is truncated: the bytes stored and `truncated`, not an error.
    result<datagram> finish_datagram() noexcept {
        DWORD e = finish();
        // On a datagram socket a "reset" is an ICMP port unreachable (connected mode): connection_refused.
        if (e == WSAECONNRESET && m_dgram) e = WSAECONNREFUSED;
        if (e && !is_truncation(e)) return unexpected(error_of(e));
        return datagram{static_cast<std::size_t>(m_bytes), e != 0, m_addr};
    }

private:
    static issue_result issue_send(socket_op* op, SOCKET s) noexcept {
        auto* self = static_cast<datagram_op*>(op);
        DWORD n = 0;
        int rc;
        if (self->m_has_to && self->m_dgram)
            rc = ::WSASendTo(s, self->m_bufs, self->m_count, &n, 0, reinterpret_cast<const sockaddr*>(&self->m_addr),
                             self->m_addr_len, &op->m_ov, nullptr);
        else
            rc = ::WSASend(s, self->m_bufs, self->m_count, &n, 0, &op->m_ov, nullptr);
        return wsa_result(rc, n);
    }
    static issue_result issue_recv(socket_op* op, SOCKET s) noexcept {
        auto* self = static_cast<datagram_op*>(op);
        DWORD n = 0;
        self->m_flags = 0;
        int rc;
        if (self->m_dgram) {
            self->m_addr_len = sizeof self->m_addr;
            rc = ::WSARecvFrom(s, self->m_bufs, self->m_count, &n, &self->m_flags,
                               reinterpret_cast<sockaddr*>(&self->m_addr), &self->m_addr_len, &op->m_ov, nullptr);
        } else {
            rc = ::WSARecv(s, self->m_bufs, self->m_count, &n, &self->m_flags, &op->m_ov, nullptr);
        }
        return wsa_result(rc, n);
    }

    WSABUF* m_bufs = nullptr;
    DWORD m_count = 0;
    DWORD m_flags = 0;
    sockaddr_storage m_addr{};
    INT m_addr_len = 0; // written by the completion of WSARecvFrom
    bool m_has_to = false;
    bool m_dgram;
    std::array<WSABUF, 4> m_inline{};
    std::vector<WSABUF> m_heap;
};

using msg_op = datagram_op;

/// connect to one endpoint with ConnectEx (the socket is bound to the family's any-address first).
class connect_op : public socket_op {
public:
    /// `s` may be null (the public awaiter then completes with its own error and never starts this).
    connect_op(socket_impl* s, const sockaddr_storage& addr, int len, std::stop_token st) noexcept
        : socket_op(s, std::move(st), &issue), m_addr(addr), m_len(len) {}
    result<void> finish_void() noexcept {
        DWORD e = settle();
        if (e == 0 && attached() && m_connect_ex) e = m_sock->update_connect_context(); // before detaching
        e = detach_result(e);
        if (e) return unexpected(error_of(e));
        return {};
    }

private:
    static issue_result issue(socket_op* op, SOCKET s) noexcept {
        auto* self = static_cast<connect_op*>(op);
        socket_impl& sock = *self->m_sock;
        if (sock.family() != AF_INET && sock.family() != AF_INET6) {
            // AF_UNIX: a plain connect, which a local socket completes at once (Go and Asio do the same;
            // ConnectEx is documented for connection-oriented IP sockets). The socket is in blocking mode.
            self->m_connect_ex = false;
            if (::connect(s, reinterpret_cast<const sockaddr*>(&self->m_addr), self->m_len) == 0) return {0, 0, true};
            return {static_cast<DWORD>(::WSAGetLastError()), 0, true};
        }
        self->m_connect_ex = true;
        if (!sock.m_bound) {
            sockaddr_storage any{};
            int any_len = sizeof(sockaddr_in);
            any.ss_family = static_cast<ADDRESS_FAMILY>(sock.family());
            if (sock.family() == AF_INET6) any_len = sizeof(sockaddr_in6); // in6addr_any / INADDR_ANY, port 0
            if (::bind(s, reinterpret_cast<const sockaddr*>(&any), any_len) != 0)
                return {static_cast<DWORD>(::WSAGetLastError()), 0};
            sock.m_bound = true;
        }
        auto fn = reinterpret_cast<LPFN_CONNECTEX>(extension_function(s, sock.family(), extension::connect_ex));
        if (!fn) return {static_cast<DWORD>(::WSAGetLastError()), 0};
        DWORD n = 0;
        if (fn(s, reinterpret_cast<const sockaddr*>(&self->m_addr), self->m_len, nullptr, 0, &n, &op->m_ov))
            return {0, 0};
        return {static_cast<DWORD>(::WSAGetLastError()), 0};
    }
    sockaddr_storage m_addr;
    int m_len;
    bool m_connect_ex = false; // connected by ConnectEx: needs SO_UPDATE_CONNECT_CONTEXT
};

/// accept one connection with AcceptEx into a socket created for it. A client that reset before the
/// accept completed (ERROR_NETNAME_DELETED / WSAECONNRESET) is skipped: its socket is closed and a new
/// AcceptEx started, transparently. For that the completion resumes a small relay coroutine of this
/// operation, which either starts the next AcceptEx or transfers to the awaiting coroutine.
class accept_op : public socket_op {
public:
    accept_op(socket_impl* listener, std::stop_token st)
        : socket_op(listener, std::move(st), &issue), m_relay(run_relay(this).m_handle) {}
    ~accept_op() {
        if (m_relay) m_relay.destroy();
        if (m_accept != INVALID_SOCKET) ::closesocket(m_accept);
    }
    struct accepted {
        socket_ptr socket;
        sockaddr_storage peer;
    };

    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> h) noexcept {
        m_user = h;
        return begin(m_relay); // completions resume the relay
    }

    result<accepted> finish_accept() {
        DWORD e = settle();
        SOCKET a = std::exchange(m_accept, INVALID_SOCKET);
        if (e == 0 && attached()) e = m_sock->update_accept_context(a); // before detaching
        context& ctx = m_sock->ctx();
        const int family = m_sock->family();
        e = detach_result(e);
        if (e) {
            if (a != INVALID_SOCKET) ::closesocket(a);
            return unexpected(error_of(e));
        }
        accepted out{};
        auto get = reinterpret_cast<LPFN_GETACCEPTEXSOCKADDRS>(
            extension_function(a, family, extension::get_accept_ex_sockaddrs));
        if (get) {
            sockaddr* local = nullptr;
            sockaddr* remote = nullptr;
            int llen = 0, rlen = 0;
            get(m_buf, 0, addr_len, addr_len, &local, &llen, &remote, &rlen);
            if (remote && rlen > 0 && rlen <= static_cast<int>(sizeof out.peer))
                std::memcpy(&out.peer, remote, static_cast<std::size_t>(rlen));
        } else {
            int len = sizeof out.peer;
            (void)::getpeername(a, reinterpret_cast<sockaddr*>(&out.peer), &len);
        }
        out.socket = socket_impl::adopt(ctx, a, family);
        return out;
    }

private:
    static constexpr DWORD addr_len = sizeof(sockaddr_storage) + 16;

    // The relay: a coroutine that completions of this operation resume instead of the awaiting one.
    struct relay {
        struct promise_type {
            relay get_return_object() noexcept {
                return relay{std::coroutine_handle<promise_type>::from_promise(*this)};
            }
            std::suspend_always initial_suspend() noexcept { return {}; }
            std::suspend_always final_suspend() noexcept { return {}; }
            void return_void() noexcept {}
            void unhandled_exception() noexcept { std::terminate(); }
        };
        explicit relay(std::coroutine_handle<promise_type> h) noexcept : m_handle(h) {}
        std::coroutine_handle<promise_type> m_handle;
    };
    struct next_step {
        accept_op* m_op;
        next_step(accept_op* op) noexcept : m_op(op) {}
        bool await_ready() const noexcept { return false; }
        [[gnu::noinline]] std::coroutine_handle<> await_suspend(std::coroutine_handle<>) const noexcept {
            return m_op->on_completion();
        }
        void await_resume() const noexcept {}
    };
    static relay run_relay(accept_op* op) {
        for (;;) co_await next_step(op);
    }

    /// In the relay, after a completion: the coroutine to continue (the awaiting one when the result is
    /// final; noop when a new AcceptEx is pending — then nothing of *this may be touched any more).
    std::coroutine_handle<> on_completion() noexcept {
        const std::coroutine_handle<> user = m_user;
        if (!is_reset(m_error)) return user;
        // The client reset before we got it: start over with a new socket (unless stopped or closed: the
        // owner's closesocket may complete AcceptEx with ERROR_NETNAME_DELETED on Windows too).
        if (m_accept != INVALID_SOCKET) {
            ::closesocket(m_accept);
            m_accept = INVALID_SOCKET;
        }
        m_state.store(op_idle, std::memory_order_release);
        // Checked after the reset: a stop request that saw op_done did nothing, one that sees op_idle makes
        // begin_start refuse.
        if (m_stop.stop_requested()) {
            m_error = ERROR_OPERATION_ABORTED;
            return user;
        }
        m_error = 0;
        m_bytes = 0;
        socket_impl* s = m_sock;
        if (s->start(this)) return std::noop_coroutine(); // published
        return user;                                      // finished inline (a final result)
    }

    static issue_result issue(socket_op* op, SOCKET s) noexcept {
        auto* self = static_cast<accept_op*>(op);
        const int family = self->m_sock->family();
        auto fn = reinterpret_cast<LPFN_ACCEPTEX>(extension_function(s, family, extension::accept_ex));
        if (!fn) return {static_cast<DWORD>(::WSAGetLastError()), 0};
        for (;;) {
            if (self->m_accept == INVALID_SOCKET) {
                self->m_accept = new_overlapped_socket(family, SOCK_STREAM);
                if (self->m_accept == INVALID_SOCKET) return {static_cast<DWORD>(::WSAGetLastError()), 0};
            }
            DWORD n = 0;
            if (fn(s, self->m_accept, self->m_buf, 0, addr_len, addr_len, &n, &op->m_ov)) return {0, 0};
            const DWORD e = static_cast<DWORD>(::WSAGetLastError());
            if (!is_reset(e)) return {e, 0};
            // A queued client that reset: skip it.
            ::closesocket(self->m_accept);
            self->m_accept = INVALID_SOCKET;
            op->m_ov = OVERLAPPED{};
        }
    }

    std::coroutine_handle<> m_relay;
    std::coroutine_handle<> m_user;
    SOCKET m_accept = INVALID_SOCKET;
    char m_buf[2 * addr_len] = {};
};

} // namespace coport::detail::iocp
