// SPDX-License-Identifier: MIT
#pragma once
/// \file stream.hpp
/// `stream_socket`: what every connected byte-stream socket offers (TCP, local). See tcp.hpp for the
/// contracts common to all socket operations (resuming thread, buffer lifetime, cancel, close, errors).

#include <coport/buffer.hpp>
#include <coport/error.hpp>
#include <coport/io_context.hpp>
#include <coport/result.hpp>
#include <coport/task.hpp>

#include <chrono>
#include <cstddef>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace coport {

/// Which direction(s) `shutdown` closes.
enum class shutdown_type { receive = 0, send = 1, both = 2 };

class stream_socket;

namespace detail {
/// A backend whose socket has one operation for send_all / recv_exact (io_uring and epoll); the others
/// loop over send / recv in a coroutine.
template <class Impl>
concept has_transfer_all_op = requires { typename Impl::transfer_all_op; };

/// Awaits a task it owns.
template <class T>
class owned_task_awaiter {
public:
    explicit owned_task_awaiter(task<T> t) noexcept : m_task(std::move(t)), m_awaiter(m_task.operator co_await()) {}
    owned_task_awaiter(const owned_task_awaiter&) = delete;
    owned_task_awaiter& operator=(const owned_task_awaiter&) = delete;
    bool await_ready() const noexcept { return m_awaiter.await_ready(); }
    [[gnu::noinline]] bool await_suspend(std::coroutine_handle<> h) noexcept { return m_awaiter.await_suspend(h); }
    T await_resume() { return m_awaiter.await_resume(); }

private:
    task<T> m_task;
    typename task<T>::awaiter m_awaiter;
};

/// What send_all (Send) and recv_exact return: an awaitable of `result<std::size_t>`, lazy like a task
/// (nothing happens until it is awaited) and convertible to `task<result<std::size_t>>`.
template <class Impl, bool Send>
class [[nodiscard]] transfer_all {
public:
    using buffer_type = std::conditional_t<Send, const_buffer, mutable_buffer>;
    transfer_all(stream_socket* s, buffer_type buf, std::stop_token st, std::size_t* count) noexcept
        : m_sock(s), m_buf(buf), m_stop(std::move(st)), m_count(count) {}

    auto operator co_await() && { return make(std::move(m_stop)); }
    auto operator co_await() & { return make(m_stop); }
    /// The same as a task (one coroutine frame).
    operator task<result<std::size_t>>() && { return as_task(std::move(*this)); } // NOLINT: implicit on purpose

private:
    auto make(std::stop_token st);
    static task<result<std::size_t>> as_task(transfer_all self) {
        auto r = co_await std::move(self);
        co_return r;
    }
    static task<result<std::size_t>> loop(stream_socket* s, buffer_type buf, std::stop_token st, std::size_t* count);

    stream_socket* m_sock;
    buffer_type m_buf;
    std::stop_token m_stop;
    std::size_t* m_count;
};
} // namespace detail

/// A connected byte stream (base of tcp_socket and local::stream_socket).
class stream_socket {
protected:
    using impl = detail::backend::socket_impl;

public:
    using native_handle_type = detail::backend::native_handle_type;

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

    /// What send_all / recv_exact return: awaitables of `result<std::size_t>`, lazy like a task and
    /// convertible to `task<result<std::size_t>>`. On Linux one operation that sends (receives) the
    /// remainder from its own completion: no coroutine frame. On Windows a coroutine over send / recv.
    using send_all_awaitable = detail::transfer_all<impl, true>;
    using recv_exact_awaitable = detail::transfer_all<impl, false>;

    /// Sends every byte of `buf` (looping over partial sends). On error, the error; the bytes sent
    /// before it are in `*sent` when given (also when cancelled: what a cancel leaves behind).
    send_all_awaitable send_all(const_buffer buf, std::stop_token st = {}, std::size_t* sent = nullptr) noexcept {
        return send_all_awaitable(this, buf, std::move(st), sent);
    }
    /// Receives exactly `buf.size` bytes. EOF before that: `errc::eof` (the bytes received so far are
    /// in `*received` when given).
    recv_exact_awaitable recv_exact(mutable_buffer buf, std::stop_token st = {}, std::size_t* received = nullptr) noexcept {
        return recv_exact_awaitable(this, buf, std::move(st), received);
    }

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
    /// The context this socket's operations complete on.
    [[nodiscard]] io_context* context() const noexcept { return m_ctx; }

    result<void> set_send_buffer_size(int bytes) { return set_int(SOL_SOCKET, SO_SNDBUF, bytes); }
    result<void> set_receive_buffer_size(int bytes) { return set_int(SOL_SOCKET, SO_RCVBUF, bytes); }
    [[nodiscard]] result<int> receive_buffer_size() const { return get_int(SOL_SOCKET, SO_RCVBUF); }
    [[nodiscard]] result<int> send_buffer_size() const { return get_int(SOL_SOCKET, SO_SNDBUF); }
    /// SO_LINGER. `set_linger(true, 0s)` makes close() send a reset (RST) instead of FIN.
    result<void> set_linger(bool on, std::chrono::seconds timeout) {
        if (!m_impl) return unexpected(detail::not_open());
        return detail::make_result(m_impl->set_linger(on, static_cast<int>(timeout.count())));
    }

protected:
    template <class, bool>
    friend class detail::transfer_all;

    stream_socket() noexcept = default;
    explicit stream_socket(io_context& ctx) noexcept : m_ctx(&ctx) {}
    stream_socket(io_context& ctx, detail::backend::socket_ptr s) noexcept : m_ctx(&ctx), m_impl(std::move(s)) {}
    stream_socket(stream_socket&&) noexcept = default;
    stream_socket& operator=(stream_socket&&) noexcept = default;
    ~stream_socket() = default;

    detail::backend::context& ctx_of() {
        if (!m_ctx) throw std::logic_error("coport: socket has no io_context (construct it with one)");
        return m_ctx->native();
    }
    impl& checked() {
        if (!m_impl) throw std::logic_error("coport: operation on a socket that is not open");
        return *m_impl;
    }
    result<void> set_int(int level, int name, int v) {
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

namespace detail {
template <class Impl, bool Send>
auto transfer_all<Impl, Send>::make(std::stop_token st) {
    if constexpr (has_transfer_all_op<Impl>) {
        // A buffer of 0 bytes touches nothing, not even the socket (as the loop never did).
        Impl* impl = m_buf.size ? &m_sock->checked() : nullptr;
        return typename Impl::transfer_all_op(impl, const_cast<void*>(static_cast<const void*>(m_buf.data)), m_buf.size,
                                              Send, std::move(st), m_count);
    } else {
        return owned_task_awaiter<result<std::size_t>>(loop(m_sock, m_buf, std::move(st), m_count));
    }
}

template <class Impl, bool Send>
task<result<std::size_t>> transfer_all<Impl, Send>::loop(stream_socket* s, buffer_type buf, std::stop_token st,
                                                         std::size_t* count) {
    std::size_t done = 0;
    auto* p = static_cast<std::conditional_t<Send, const std::byte, std::byte>*>(buf.data);
    while (done < buf.size) {
        result<std::size_t> r = std::size_t{0};
        if constexpr (Send) r = co_await s->send(const_buffer(p + done, buf.size - done), st);
        else r = co_await s->recv(mutable_buffer(p + done, buf.size - done), st);
        if (!r || *r == 0) {
            if (!Send && r) { // EOF
                if (count) *count = done;
                co_return unexpected(make_error_code(error::eof));
            }
            if (!r) {
                if (count) *count = done;
                co_return unexpected(r.error());
            }
        }
        done += *r;
    }
    if (count) *count = done;
    co_return done;
}

/// Awaiter of connect(): opens the socket first if needed; an open failure completes it at once.
class connect_awaiter : public backend::connect_op {
public:
    /// `s` is null when the socket could not be opened: then `pre` is the error.
    connect_awaiter(backend::socket_impl* s, const sockaddr_storage& addr, int len, std::stop_token st,
                    std::error_code pre) noexcept
        : connect_op(s, addr, len, std::move(st)), m_pre(pre) {}
    bool await_ready() const noexcept { return static_cast<bool>(m_pre); }
    result<void> await_resume() noexcept {
        if (m_pre) return unexpected(m_pre);
        return finish_void();
    }

private:
    std::error_code m_pre;
};

/// Accepts on a listening socket and wraps the result as `Socket` (tcp_socket, local::stream_socket).
template <class Socket>
class accept_awaiter : public backend::accept_op {
public:
    accept_awaiter(io_context& ctx, backend::socket_impl* s, std::stop_token st) : accept_op(s, std::move(st)), m_ctx(ctx) {}
    result<Socket> await_resume() {
        auto r = finish_accept();
        if (!r) return unexpected(r.error());
        return Socket(m_ctx, std::move(r->socket));
    }

private:
    io_context& m_ctx;
};
} // namespace detail

} // namespace coport
