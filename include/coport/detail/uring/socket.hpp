// SPDX-License-Identifier: MIT
#pragma once
// io_uring backend: sockets and their operations (connect, accept, send, recv, sendmsg, recvmsg).
//
// A socket keeps a list of its operations in flight so that close() can cancel them: io_uring holds its
// own reference to the file, so closing the fd alone would leave a pending recv waiting for data. The
// cancellation is by user_data (the operation's address), never by fd, because fd numbers are reused as
// soon as close() returns.
//
// Accept on the io_uring engine: a listener's first accept creates its acceptor, which keeps one multishot
// accept (IORING_ACCEPT_MULTISHOT; a one-shot accept per waiting accept() where the kernel refuses it) in
// flight on one worker, the listener's home, while the listener is accepted from. accept() operations
// wait there (parked, not in the kernel) and each takes the next accepted descriptor; descriptors that
// arrive while nobody waits are queued (up to acceptor::queue_limit, then the multishot is cancelled and
// armed again when an accept() comes). close() closes the queued descriptors.
//
// send_all / recv_exact are one operation each (transfer_all_op) that resubmits the remainder from its own
// completion, on the worker, without resuming the coroutine in between.
#if !defined(__linux__)
#error "coport/detail/uring is the Linux backend"
#endif

#include <coport/buffer.hpp>
#include <coport/detail/uring/context.hpp>
#include <coport/detail/uring/os.hpp>
#include <coport/net/address.hpp>
#include <coport/result.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <span>
#include <vector>

namespace coport::detail::uring {

using native_handle_type = int;
inline constexpr native_handle_type invalid_handle = -1;

class socket_op;
class socket_impl;
class acceptor;
class accept_op;
class transfer_all_op;

/// Deletes a socket_impl once no operation refers to it any more (see socket_impl::release).
struct socket_deleter {
    void operator()(socket_impl* s) const noexcept;
};
using socket_ptr = std::unique_ptr<socket_impl, socket_deleter>;

/// What is shared by a socket object and its operations.
class socket_impl {
public:
    /// stream.hpp's send_all / recv_exact use it (on this backend: one operation, no coroutine).
    using transfer_all_op = uring::transfer_all_op;

    socket_impl(context& ctx, native_handle_type fd) noexcept : m_ctx(ctx), m_fd(fd) {}
    socket_impl(const socket_impl&) = delete;
    socket_impl& operator=(const socket_impl&) = delete;
    ~socket_impl();

    /// The owner lets go: close (cancelling what is in flight) and delete, at once if nothing is in
    /// flight, else when the last operation has resumed and detached. So destroying a socket with
    /// operations pending never leaves them pointing at freed memory.
    void release() noexcept {
        bool now;
        {
            std::lock_guard lock(m_mutex);
            close_locked();
            now = m_ops == nullptr;
            m_orphaned = !now;
        }
        if (now) delete this;
    }

    /// A new socket: `family` AF_INET, AF_INET6 or AF_UNIX; `type` SOCK_STREAM or SOCK_DGRAM.
    static result<socket_ptr> open(context& ctx, int family, int type) {
        // epoll: non-blocking, so that connect and accept never block a worker.
        const int flags = SOCK_CLOEXEC | (ctx.uses_epoll() ? SOCK_NONBLOCK : 0);
        int fd = ::socket(family, type | flags, 0);
        if (fd < 0) return unexpected(last_error());
        return socket_ptr(new socket_impl(ctx, fd));
    }
    /// Adopts an accepted fd.
    static socket_ptr adopt(context& ctx, native_handle_type fd, int /*family*/) {
        return socket_ptr(new socket_impl(ctx, fd));
    }

    context& ctx() noexcept { return m_ctx; }
    [[nodiscard]] native_handle_type handle() const noexcept { return m_fd; }
    [[nodiscard]] bool is_open() const noexcept { return m_fd != invalid_handle; }

    /// Cancels every operation in flight (they resume with operation_aborted) and closes the fd.
    void close() noexcept;

    std::error_code set_option(int level, int name, int value) noexcept {
        if (::setsockopt(m_fd, level, name, &value, sizeof value) != 0) return last_error();
        return {};
    }
    result<int> get_option(int level, int name) const noexcept {
        int v = 0;
        socklen_t n = sizeof v;
        if (::getsockopt(m_fd, level, name, &v, &n) != 0) return unexpected(last_error());
        return v;
    }
    std::error_code set_linger(bool on, int seconds) noexcept {
        ::linger l{on ? 1 : 0, seconds};
        if (::setsockopt(m_fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) != 0) return last_error();
        return {};
    }
    std::error_code set_reuse_address(bool on) noexcept { return set_option(SOL_SOCKET, SO_REUSEADDR, on ? 1 : 0); }
    std::error_code set_reuse_port(bool on) noexcept { return set_option(SOL_SOCKET, SO_REUSEPORT, on ? 1 : 0); }
    std::error_code set_v6_only(bool on) noexcept { return set_option(IPPROTO_IPV6, IPV6_V6ONLY, on ? 1 : 0); }
    std::error_code set_option_raw(int level, int name, const void* v, int len) noexcept {
        if (::setsockopt(m_fd, level, name, v, static_cast<socklen_t>(len)) != 0) return last_error();
        return {};
    }
    std::error_code bind(const sockaddr_storage& ss, int len) noexcept {
        if (::bind(m_fd, reinterpret_cast<const sockaddr*>(&ss), static_cast<socklen_t>(len)) != 0) return last_error();
        return {};
    }
    /// Immediate connect (datagram sockets: sets the default peer).
    std::error_code connect_now(const sockaddr_storage& ss, int len) noexcept {
        if (::connect(m_fd, reinterpret_cast<const sockaddr*>(&ss), static_cast<socklen_t>(len)) != 0) return last_error();
        return {};
    }
    /// The raw local / peer address (any family).
    std::error_code address(bool peer, sockaddr_storage& ss, int& len) const noexcept {
        socklen_t n = sizeof ss;
        int r = peer ? ::getpeername(m_fd, reinterpret_cast<sockaddr*>(&ss), &n)
                     : ::getsockname(m_fd, reinterpret_cast<sockaddr*>(&ss), &n);
        if (r != 0) return last_error();
        len = static_cast<int>(n);
        return {};
    }
    std::error_code listen(int backlog) noexcept {
        if (::listen(m_fd, backlog) != 0) return last_error();
        return {};
    }
    /// 0: receive side, 1: send side, 2: both.
    std::error_code shutdown(int what) noexcept {
        static constexpr int how[] = {SHUT_RD, SHUT_WR, SHUT_RDWR};
        if (::shutdown(m_fd, how[what]) != 0) return last_error();
        return {};
    }

    /// io_uring engine: this listener's acceptor, made by the first accept (null if closed or out of memory).
    acceptor* get_acceptor() noexcept;

private:
    friend class socket_op;
    friend class acceptor;
    friend class accept_op;
    bool attach(socket_op* op) noexcept;
    bool attach_locked(socket_op* op) noexcept;
    bool detach(socket_op* op) noexcept;
    void close_locked() noexcept;

    context& m_ctx;
    native_handle_type m_fd;
    std::mutex m_mutex;
    socket_op* m_ops = nullptr; // in flight, intrusive doubly-linked
    bool m_closed = false;      // closed by the user: failures read as operation_aborted
    bool m_orphaned = false;    // released by its owner while operations were in flight
    std::atomic<acceptor*> m_acceptor{nullptr}; // owned; set once, under m_mutex
};

inline void socket_deleter::operator()(socket_impl* s) const noexcept { s->release(); }

/// Common part of socket operations: stop token, the socket's in-flight list, publication.
class socket_op : public operation {
public:
    socket_op(const vtable* vt, socket_impl* s, std::stop_token st) noexcept
        : operation(vt), m_sock(s), m_stop(std::move(st)) {}

    bool await_ready() const noexcept { return false; }
    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> h) noexcept { return publish(h, nullptr); }

protected:
    /// Starts the operation on `home` (null: the calling thread's worker, or any running one). False: it
    /// failed or was cancelled before it started (m_res says how) and the coroutine goes on at once.
    COPORT_DECL bool publish(std::coroutine_handle<> h, worker* home) noexcept;

    /// Call first in await_resume: after it the result is final. Returns the CQE result (-errno on error).
    COPORT_DECL int finish() noexcept;
    /// For byte-count operations: the bytes transferred, or the error.
    result<std::size_t> finish_bytes() noexcept {
        int r = finish();
        if (r < 0) return unexpected(error_of(r));
        return static_cast<std::size_t>(r);
    }
    int fd() const noexcept { return m_sock->handle(); }
    static int fd_of(const operation* op) noexcept { return static_cast<const socket_op*>(op)->fd(); }
    static std::error_code error_of(int res) noexcept { return native_error(-res); }
    /// A syscall's return as a CQE-style result (EWOULDBLOCK reads as EAGAIN: "park and wait").
    static int sys(ssize_t r) noexcept {
        if (r >= 0) return static_cast<int>(r);
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }

    socket_impl* m_sock;

private:
    friend class socket_impl;
    friend class acceptor;
    std::stop_token m_stop;
    stop_registration m_reg;
    socket_op* m_prev = nullptr;
    socket_op* m_next = nullptr;
    bool m_attached = false;
};

inline bool socket_impl::attach(socket_op* op) noexcept {
    std::lock_guard lock(m_mutex);
    return attach_locked(op);
}

inline bool socket_impl::attach_locked(socket_op* op) noexcept {
    if (m_closed || m_fd == invalid_handle) return false;
    op->m_next = m_ops;
    op->m_prev = nullptr;
    if (m_ops) m_ops->m_prev = op;
    m_ops = op;
    return true;
}

inline bool socket_impl::detach(socket_op* op) noexcept {
    bool closed, last;
    {
        std::lock_guard lock(m_mutex);
        if (op->m_prev) op->m_prev->m_next = op->m_next;
        else m_ops = op->m_next;
        if (op->m_next) op->m_next->m_prev = op->m_prev;
        closed = m_closed;
        last = m_orphaned && m_ops == nullptr;
    }
    if (last) delete this;
    return closed;
}

inline void socket_impl::close() noexcept {
    std::lock_guard lock(m_mutex);
    close_locked();
}


/// recv into one buffer. Result: bytes received; 0 means the peer shut down its side (EOF).
class recv_op : public socket_op {
public:
    recv_op(socket_impl* s, mutable_buffer b, std::stop_token st) noexcept
        : socket_op(&s_vtable, s, std::move(st)), m_buf(b) {}

private:
    static void prep(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<recv_op*>(op);
        io_uring_prep_recv(sqe, self->fd(), self->m_buf.data, self->m_buf.size, 0);
    }
    static int perform(operation* op) noexcept {
        auto* self = static_cast<recv_op*>(op);
        return sys(::recv(self->fd(), self->m_buf.data, self->m_buf.size, MSG_DONTWAIT));
    }
    static constexpr vtable s_vtable{&prep, &perform, &fd_of, EPOLLIN, nullptr, nullptr};
    mutable_buffer m_buf;
};

/// send from one buffer. Result: bytes sent (may be fewer than asked; see send_all).
class send_op : public socket_op {
public:
    send_op(socket_impl* s, const_buffer b, std::stop_token st) noexcept
        : socket_op(&s_vtable, s, std::move(st)), m_buf(b) {}

private:
    static void prep(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<send_op*>(op);
        io_uring_prep_send(sqe, self->fd(), self->m_buf.data, self->m_buf.size, MSG_NOSIGNAL);
    }
    static int perform(operation* op) noexcept {
        auto* self = static_cast<send_op*>(op);
        return sys(::send(self->fd(), self->m_buf.data, self->m_buf.size, MSG_NOSIGNAL | MSG_DONTWAIT));
    }
    static constexpr vtable s_vtable{&prep, &perform, &fd_of, EPOLLOUT, nullptr, nullptr};
    const_buffer m_buf;
};

/// sendmsg/recvmsg over a buffer sequence: scatter/gather on streams, and one datagram with its address
/// (send_to / recv_from).
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
        : socket_op(is_send ? &s_send_vtable : &s_recv_vtable, s, std::move(st)) {
        if (bufs.size() > m_inline.size()) m_heap.resize(bufs.size());
        iovec* iov = bufs.size() > m_inline.size() ? m_heap.data() : m_inline.data();
        for (std::size_t i = 0; i < bufs.size(); ++i)
            iov[i] = iovec{const_cast<void*>(static_cast<const void*>(bufs[i].data)), bufs[i].size};
        m_msg.msg_iov = iov;
        m_msg.msg_iovlen = bufs.size();
        if (to) m_addr = *to;
        if (to || !is_send) {
            m_msg.msg_name = &m_addr;
            m_msg.msg_namelen = static_cast<socklen_t>(to ? to_len : sizeof m_addr);
        }
    }
    struct datagram {
        std::size_t bytes;
        bool truncated;
        sockaddr_storage from;
    };
    result<datagram> finish_datagram() noexcept {
        int r = finish();
        if (r < 0) return unexpected(error_of(r));
        return datagram{static_cast<std::size_t>(r), (m_msg.msg_flags & MSG_TRUNC) != 0, m_addr};
    }

private:
    static void prep_send(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<datagram_op*>(op);
        io_uring_prep_sendmsg(sqe, self->fd(), &self->m_msg, MSG_NOSIGNAL);
    }
    static void prep_recv(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<datagram_op*>(op);
        io_uring_prep_recvmsg(sqe, self->fd(), &self->m_msg, 0);
    }
    static int perform_send(operation* op) noexcept {
        auto* self = static_cast<datagram_op*>(op);
        return sys(::sendmsg(self->fd(), &self->m_msg, MSG_NOSIGNAL | MSG_DONTWAIT));
    }
    static int perform_recv(operation* op) noexcept {
        auto* self = static_cast<datagram_op*>(op);
        self->m_msg.msg_namelen = sizeof self->m_addr;
        return sys(::recvmsg(self->fd(), &self->m_msg, MSG_DONTWAIT));
    }
    static constexpr vtable s_send_vtable{&prep_send, &perform_send, &fd_of, EPOLLOUT, nullptr, nullptr};
    static constexpr vtable s_recv_vtable{&prep_recv, &perform_recv, &fd_of, EPOLLIN, nullptr, nullptr};
    msghdr m_msg{};
    sockaddr_storage m_addr{};
    std::array<iovec, 4> m_inline{};
    std::vector<iovec> m_heap;
};

using msg_op = datagram_op;

/// connect to one endpoint.
class connect_op : public socket_op {
public:
    connect_op(socket_impl* s, const sockaddr_storage& addr, int len, std::stop_token st) noexcept
        : socket_op(&s_vtable, s, std::move(st)), m_addr(addr), m_len(static_cast<socklen_t>(len)) {}
    /// For an operation that failed before it started (e.g. the socket could not be opened).
    void fail(std::error_code ec) noexcept { m_res = -(ec.value() ? ec.value() : EINVAL); }
    result<void> finish_void() noexcept {
        int r = finish();
        if (r < 0) return unexpected(error_of(r));
        return {};
    }

private:
    static void prep(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<connect_op*>(op);
        io_uring_prep_connect(sqe, self->fd(), reinterpret_cast<sockaddr*>(&self->m_addr), self->m_len);
    }
    // epoll: start the connect; once the socket turns writable, SO_ERROR holds the outcome.
    static int perform(operation* op) noexcept {
        auto* self = static_cast<connect_op*>(op);
        if (!self->m_in_progress) {
            if (::connect(self->fd(), reinterpret_cast<sockaddr*>(&self->m_addr), self->m_len) == 0) return 0;
            if (errno != EINPROGRESS && errno != EINTR) return -errno;
            self->m_in_progress = true;
            return -EAGAIN;
        }
        int err = 0;
        socklen_t n = sizeof err;
        if (::getsockopt(self->fd(), SOL_SOCKET, SO_ERROR, &err, &n) != 0) return -errno;
        return -err;
    }
    static constexpr vtable s_vtable{&prep, &perform, &fd_of, EPOLLOUT, nullptr, nullptr};
    sockaddr_storage m_addr;
    socklen_t m_len;
    bool m_in_progress = false;
};

/// accept one connection. io_uring engine: waits at the listener's acceptor for the next descriptor its
/// multishot accept delivers (see the file comment); epoll engine: accept4 once the listener is readable.
class accept_op : public socket_op {
public:
    accept_op(socket_impl* listener, std::stop_token st) noexcept : socket_op(&s_vtable, listener, std::move(st)) {}
    // noinline: see socket_op::await_suspend (clang 14 may touch the frame after publishing when inlined)
    [[gnu::noinline]] COPORT_DECL bool await_suspend(std::coroutine_handle<> h) noexcept;
    struct accepted {
        socket_ptr socket;
        sockaddr_storage peer; // not filled in by the io_uring engine (nothing in coport reads it)
    };
    result<accepted> finish_accept() {
        int r = finish();
        if (r < 0) return unexpected(error_of(r));
        accepted a{socket_impl::adopt(m_sock->ctx(), r, m_addr.ss_family), m_addr};
        return a;
    }

private:
    friend class acceptor;
    static worker& acceptor_home(acceptor* a) noexcept;
    static void park(operation* op, worker& w) noexcept;
    static void unpark(operation* op, worker& w) noexcept;
    // A one-shot accept of its own: the epoll engine's syscall, and io_uring only when the listener has no
    // acceptor on this worker (it could not be allocated).
    static void prep(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<accept_op*>(op);
        io_uring_prep_accept(sqe, self->fd(), reinterpret_cast<sockaddr*>(&self->m_addr), &self->m_len, SOCK_CLOEXEC);
    }
    static int perform(operation* op) noexcept {
        auto* self = static_cast<accept_op*>(op);
        self->m_len = sizeof(sockaddr_storage);
        return sys(::accept4(self->fd(), reinterpret_cast<sockaddr*>(&self->m_addr), &self->m_len,
                             SOCK_CLOEXEC | SOCK_NONBLOCK));
    }
    static constexpr vtable s_vtable{&prep, &perform, &fd_of, EPOLLIN, nullptr, nullptr, nullptr, &park, &unpark};

    sockaddr_storage m_addr{};
    socklen_t m_len = sizeof(sockaddr_storage);
    enum class where : std::uint8_t { nowhere, waiting, in_kernel };
    where m_where = where::nowhere;      // home worker only
    accept_op* m_wait_prev = nullptr;     // in the acceptor's list of waiting accepts
    accept_op* m_wait_next = nullptr;
};

#if COPORT_DEFINE_ENGINE // see coport/detail/config.hpp: publication and the accept machinery are part of the engine

/// A listener's accept side on the io_uring engine (see the file comment). Made by the first accept, owned
/// by the socket_impl; everything but the queue of accepted descriptors is touched only on its home worker.
/// While it has an SQE in flight, or may arm one, it is attached to the socket (so close() cancels it, and
/// the socket_impl lives on until it is done) and listed as a resident of its worker (so a shutdown ends
/// it). Its CQEs never resume anything directly: on_result hands each descriptor (or error) to the oldest
/// waiting accept, or queues it.
class acceptor final : public socket_op, public resident {
public:
    /// Descriptors accepted for nobody before the multishot accept is cancelled (a few more may arrive
    /// while the cancel is on its way).
    static constexpr std::size_t queue_limit = 32;

    acceptor(socket_impl* listener, worker& home) noexcept : socket_op(&s_vtable, listener, {}), resident(&on_shutdown) {
        m_worker = &home;
        m_started = true; // a cancel request (close) reaches on_close
    }
    [[nodiscard]] worker& home() const noexcept { return *m_worker; }

    /// park hook of accept_op: the next queued result, or wait for one.
    void add(accept_op* op, worker& w) noexcept {
        if (m_closing) {
            w.complete_later(op, -ECANCELED);
            return;
        }
        if (m_unread > 0) { // something may be queued (only this thread queues; close() may have emptied it)
            int r = 0;
            bool got = false;
            {
                std::lock_guard lock(m_sock->m_mutex);
                if (m_head < m_queue.size()) {
                    r = m_queue[m_head++];
                    got = true;
                }
                if (m_head == m_queue.size()) {
                    m_queue.clear();
                    m_head = 0;
                }
                m_unread = m_queue.size() - m_head;
            }
            if (got) {
                w.complete_later(op, r);
                if (!m_armed && m_multishot && !m_hold && m_unread < queue_limit) arm(w); // keep accepting ahead
                return;
            }
        }
        m_hold = false; // someone waits: a fresh attempt, whatever failed before
        op->m_where = accept_op::where::waiting;
        op->m_wait_next = nullptr;
        op->m_wait_prev = m_last;
        if (m_last) m_last->m_wait_next = op;
        else m_first = op;
        m_last = op;
        if (!m_armed && !arm(w)) { // closed, or shutting down
            unlink(op);
            w.complete_later(op, -ECANCELED);
        }
    }
    /// unpark hook of accept_op: a waiting accept is cancelled.
    void remove(accept_op* op, worker& w) noexcept {
        if (op->m_where != accept_op::where::waiting) return; // its result is on its way already
        unlink(op);
        op->m_res = -ECANCELED;
        w.complete(op);
    }
    /// close() of the listener, its mutex held: stop listening at once (the multishot accept holds its own
    /// reference to the file) and close what was accepted for nobody.
    void close_queued_locked(int listen_fd) noexcept {
        ::shutdown(listen_fd, SHUT_RD); // a listening socket stops listening; its accepts end with EINVAL
        for (std::size_t i = m_head; i < m_queue.size(); ++i) ::close(m_queue[i]);
        m_queue.clear();
        m_head = 0;
    }

private:
    static void prep(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<acceptor*>(op);
        if (self->m_multishot) io_uring_prep_multishot_accept(sqe, self->m_listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        else io_uring_prep_accept(sqe, self->m_listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
    }
    static bool on_result(operation* op, worker& w) noexcept {
        static_cast<acceptor*>(op)->handle(w);
        return true; // never completed: it is nobody's awaiter
    }
    /// unpark hook of the acceptor itself: close() asked to cancel it (m_cancel is closed now).
    static void on_close(operation* op, worker& w) noexcept {
        auto* self = static_cast<acceptor*>(op);
        self->m_closing = true;
        if (!self->m_armed) {
            self->finalize(w);
        } else if (!self->m_cancelling) {
            w.submit_cancel(self); // its last CQE finalizes
            self->m_cancelling = true;
        }
    }
    static void on_shutdown(resident* r, worker& w) noexcept {
        auto* self = static_cast<acceptor*>(r);
        if (self->m_armed && w.ctx().foreign_shutdown()) { // the ring cannot be entered: its CQEs are never read
            self->m_armed = false;
            w.forget_inflight();
        }
        if (!self->m_armed) self->try_finalize(w); // armed: the drain's cancel brings its last CQE
    }
    static constexpr vtable s_vtable{&prep, nullptr, &fd_of, 0, nullptr, nullptr, &on_result, nullptr, &on_close};

    void handle(worker& w) noexcept {
        const int res = m_res;
        const bool last = !(m_cqe_flags & IORING_CQE_F_MORE);
        if (last) {
            m_armed = false;
            m_cancelling = false;
        }
        if (res >= 0) {
            m_delivered = true;
            deliver(res, w);
        } else if (res == -ECANCELED) {
            // Our own cancel (queue full, close, shutdown), or the kernel's when the thread that submitted
            // it exited: nothing to deliver; armed again below if an accept waits.
        } else if (res == -EINVAL && m_multishot && !m_delivered && !m_closing) {
            m_multishot = false; // a kernel before 5.19: a one-shot accept per waiting accept() from now on
        } else {
            fail(res, w); // EMFILE, ENFILE, ...
        }
        if (!last) {
            if (m_unread >= queue_limit && !m_cancelling && !m_closing) { // nobody accepts: stop for now
                w.submit_cancel(this);
                m_cancelling = true;
            }
            return;
        }
        after_last(w);
    }
    /// No SQE in flight any more: arm again, stay idle, or end.
    void after_last(worker& w) noexcept {
        if (m_armed) return; // an accept delivered to re-armed it already
        if (m_closing) finalize(w);
        else if (w.ctx().shutting_down()) try_finalize(w);
        else if (m_first || (m_multishot && !m_hold && m_unread < queue_limit)) arm(w);
    }
    /// An accepted descriptor: to the oldest waiting accept, else queued.
    void deliver(int fd, worker& w) noexcept {
        if (!m_closing) {
            if (accept_op* op = m_first) {
                unlink(op);
                op->m_res = fd;
                w.complete(op); // resumes it here (this acceptor stays: it is attached)
                return;
            }
            std::lock_guard lock(m_sock->m_mutex);
            if (!m_sock->m_closed) {
                m_queue.push_back(fd);
                m_unread = m_queue.size() - m_head;
                return;
            }
        }
        ::close(fd); // accepted after close()
    }
    /// An error ends the multishot accept: the oldest waiting accept gets it. With nobody waiting it is not
    /// kept (it may be gone by the next accept(), e.g. EMFILE), but nothing is accepted ahead until an
    /// accept() comes and tries afresh.
    void fail(int res, worker& w) noexcept {
        if (m_closing) return;
        if (accept_op* op = m_first) {
            unlink(op);
            op->m_res = res;
            w.complete(op);
            return;
        }
        m_hold = true;
    }
    /// Arms the accept SQE (attaching and listing itself first). False if the listener is closed or the
    /// context shuts down.
    bool arm(worker& w) noexcept {
        if (m_closing || w.ctx().shutting_down()) return false;
        {
            std::lock_guard lock(m_sock->m_mutex);
            if (m_sock->m_closed || m_sock->m_fd == invalid_handle) return false;
            if (!m_in_ops) {
                m_sock->attach_locked(this);
                m_in_ops = true;
            }
            m_listen_fd = m_sock->m_fd;
        }
        w.add_resident(this);
        w.submit_op(this);
        m_armed = true;
        return true;
    }
    /// Shutdown: end now unless close() has a cancel request queued for it (its on_close ends it then).
    void try_finalize(worker& w) noexcept {
        std::uint8_t s = cancel_idle;
        if (m_cancel.compare_exchange_strong(s, cancel_closed, std::memory_order_acq_rel) || s == cancel_closed)
            finalize(w);
    }
    /// Nothing in flight and no cancel request queued: resume the waiting accepts with operation_aborted,
    /// close the queued descriptors and let go of the socket (which may delete it, and this with it).
    void finalize(worker& w) noexcept {
        m_closing = true;
        while (accept_op* op = m_first) {
            unlink(op);
            w.complete_later(op, -ECANCELED);
        }
        {
            std::lock_guard lock(m_sock->m_mutex);
            for (std::size_t i = m_head; i < m_queue.size(); ++i) ::close(m_queue[i]);
            m_queue.clear();
            m_head = 0;
        }
        m_unread = 0;
        w.remove_resident(this);
        if (m_in_ops) {
            m_in_ops = false;
            m_sock->detach(this); // last: may delete the socket_impl, which owns this
        }
    }
    void unlink(accept_op* op) noexcept {
        if (op->m_wait_prev) op->m_wait_prev->m_wait_next = op->m_wait_next;
        else m_first = op->m_wait_next;
        if (op->m_wait_next) op->m_wait_next->m_wait_prev = op->m_wait_prev;
        else m_last = op->m_wait_prev;
        op->m_wait_prev = op->m_wait_next = nullptr;
        op->m_where = accept_op::where::nowhere;
    }

    // home worker only
    accept_op* m_first = nullptr; // waiting accepts, oldest first
    accept_op* m_last = nullptr;
    std::size_t m_unread = 0;     // queued results as this thread last saw them (close() may drop them)
    int m_listen_fd = -1;         // the fd the SQE was prepared with
    bool m_armed = false;         // an accept SQE is in flight
    bool m_multishot = true;      // false once the kernel refused IORING_ACCEPT_MULTISHOT
    bool m_cancelling = false;    // an ASYNC_CANCEL of the armed SQE is on its way
    bool m_closing = false;       // close() or shutdown: no more arming, descriptors are closed
    bool m_delivered = false;     // the kernel has accepted at least once (so EINVAL is not "no multishot")
    bool m_hold = false;          // the last attempt failed with nobody waiting: arm only for an accept()
    bool m_in_ops = false;        // attached to the socket
    // guarded by the socket's mutex
    std::vector<int> m_queue;     // descriptors accepted for nobody yet, from m_head on
    std::size_t m_head = 0;
};

COPORT_DECL bool socket_op::publish(std::coroutine_handle<> h, worker* home) noexcept {
    if (m_res < 0) return false; // failed before reaching the kernel (e.g. could not open the socket)
    if (m_stop.stop_requested()) {
        m_res = -ECANCELED;
        return false;
    }
    m_handle = h;
    context& ctx = m_sock->ctx();
    worker& w = home ? *home : ctx.owner_for_new_op();
    m_worker = &w; // before attach(): close() may cancel from now on, which needs the worker
    if (!m_sock->attach(this)) {
        m_res = -ECANCELED;
        return false;
    }
    m_attached = true;
    if (m_stop.stop_possible()) m_reg.emplace(m_stop, cancel_callback{this});
    ctx.start_on(w, this); // published: *this may already be resumed on another thread
    return true;
}

COPORT_DECL int socket_op::finish() noexcept {
    m_reg.reset();
    bool closed = m_attached && m_sock->detach(this);
    if (closed && m_res < 0) return -ECANCELED;
    return m_res;
}

// (inline in header-only mode through its declaration: repeating it here would contradict its noinline)
bool accept_op::await_suspend(std::coroutine_handle<> h) noexcept {
    worker* home = nullptr; // the acceptor's worker: every accept of a listener waits there
    if (!m_sock->ctx().uses_epoll())
        if (acceptor* a = m_sock->get_acceptor()) home = &acceptor_home(a);
    m_resume_on = &m_sock->ctx().home(); // and resumes on the thread that awaits it (the resumption rule)
    return publish(h, home);
}

COPORT_DECL worker& accept_op::acceptor_home(acceptor* a) noexcept { return a->home(); }

COPORT_DECL void accept_op::park(operation* op, worker& w) noexcept {
    auto* self = static_cast<accept_op*>(op);
    acceptor* a = self->m_sock->m_acceptor.load(std::memory_order_acquire);
    if (a && &a->home() == &w) {
        a->add(self, w);
    } else { // no acceptor on this worker: a one-shot accept of its own
        self->m_where = where::in_kernel;
        w.submit_op(op);
    }
}

COPORT_DECL void accept_op::unpark(operation* op, worker& w) noexcept {
    auto* self = static_cast<accept_op*>(op);
    if (self->m_where == where::waiting) self->m_sock->m_acceptor.load(std::memory_order_acquire)->remove(self, w);
    else if (self->m_where == where::in_kernel) w.submit_cancel(op);
    // nowhere: its result was handed to it already and is on its way
}

COPORT_DECL acceptor* socket_impl::get_acceptor() noexcept {
    if (acceptor* a = m_acceptor.load(std::memory_order_acquire)) return a;
    std::lock_guard lock(m_mutex);
    acceptor* a = m_acceptor.load(std::memory_order_relaxed);
    if (!a && !m_closed && m_fd != invalid_handle) {
        a = new (std::nothrow) acceptor(this, m_ctx.owner_for_new_op());
        m_acceptor.store(a, std::memory_order_release);
    }
    return a;
}

COPORT_DECL socket_impl::~socket_impl() {
    close();
    delete m_acceptor.load(std::memory_order_relaxed);
}

COPORT_DECL void socket_impl::close_locked() noexcept {
    if (m_fd == invalid_handle) return;
    m_closed = true;
    // Each op stays alive until it detaches under this lock, so request_cancel() is safe here.
    for (socket_op* op = m_ops; op; op = op->m_next) op->request_cancel();
    if (acceptor* a = m_acceptor.load(std::memory_order_relaxed)) a->close_queued_locked(m_fd);
    ::close(m_fd); // io_uring holds its own file reference for what is in flight; the cancels end those
    m_fd = invalid_handle;
}

#endif // COPORT_DEFINE_ENGINE

/// send_all / recv_exact: every byte of one buffer, in one operation that resubmits the remainder from its
/// own completion (on the worker; the coroutine resumes once, at the end). The bytes transferred go to
/// `*count` (when given) in every outcome. A cancel request stops it after the transfer in flight:
/// operation_aborted unless that completed the buffer.
class transfer_all_op : public socket_op {
public:
    transfer_all_op(socket_impl* s, void* data, std::size_t size, bool is_send, std::stop_token st,
                    std::size_t* count) noexcept
        : socket_op(is_send ? &s_send_vtable : &s_recv_vtable, s, std::move(st)),
          m_data(static_cast<std::byte*>(data)), m_size(size), m_count(count) {}
    bool await_ready() const noexcept { return m_size == 0; }
    result<std::size_t> await_resume() noexcept {
        const int r = finish();
        if (m_count) *m_count = m_done;
        if (m_done == m_size) return m_size;
        if (r < 0) return unexpected(error_of(r));
        if (r == 0 && m_vt == &s_recv_vtable) return unexpected(make_error_code(coport::error::eof));
        return unexpected(error_of(-ECANCELED)); // stopped by a cancel request with bytes left
    }

private:
    [[nodiscard]] unsigned chunk() const noexcept {
        return static_cast<unsigned>(std::min<std::size_t>(m_size - m_done, std::size_t{1} << 30));
    }
    static void prep_send(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<transfer_all_op*>(op);
        io_uring_prep_send(sqe, self->fd(), self->m_data + self->m_done, self->chunk(), MSG_NOSIGNAL);
    }
    static void prep_recv(operation* op, io_uring_sqe* sqe) noexcept {
        auto* self = static_cast<transfer_all_op*>(op);
        io_uring_prep_recv(sqe, self->fd(), self->m_data + self->m_done, self->chunk(), 0);
    }
    static int perform_send(operation* op) noexcept {
        auto* self = static_cast<transfer_all_op*>(op);
        return sys(::send(self->fd(), self->m_data + self->m_done, self->chunk(), MSG_NOSIGNAL | MSG_DONTWAIT));
    }
    static int perform_recv(operation* op) noexcept {
        auto* self = static_cast<transfer_all_op*>(op);
        return sys(::recv(self->fd(), self->m_data + self->m_done, self->chunk(), MSG_DONTWAIT));
    }
    static bool on_result(operation* op, worker& w) noexcept {
        auto* self = static_cast<transfer_all_op*>(op);
        const int r = self->m_res;
        if (r > 0) self->m_done += static_cast<std::size_t>(r);
        if (r < 0 || self->m_done == self->m_size) return false;
        if (r == 0 && self->m_vt == &s_recv_vtable) return false; // EOF
        if (self->m_cancel.load(std::memory_order_acquire) != cancel_idle) return false; // cancel (or close) asked
        w.resubmit(self);
        return true;
    }
    static constexpr vtable s_send_vtable{&prep_send, &perform_send, &fd_of, EPOLLOUT, nullptr, nullptr, &on_result};
    static constexpr vtable s_recv_vtable{&prep_recv, &perform_recv, &fd_of, EPOLLIN, nullptr, nullptr, &on_result};

    std::byte* m_data;
    std::size_t m_size;
    std::size_t m_done = 0;
    std::size_t* m_count;
};

} // namespace coport::detail::uring
