// SPDX-License-Identifier: MIT
#pragma once
/// \file local.hpp
/// Local (Unix-domain) stream sockets, by filesystem path; on Linux also abstract names (a path that
/// starts with '@' or '\0' lives in the abstract namespace and leaves no file). Windows 10 1803+ has
/// AF_UNIX too. Same operations and contracts as TCP (see stream.hpp and tcp.hpp).
/// Stale socket files: a socket file left by a process that died makes bind fail with
/// `errc::address_in_use`; `listen_options::unlink_existing` removes an existing *socket* file first.

#include <coport/error.hpp>
#include <coport/io_context.hpp>
#include <coport/net/stream.hpp>
#include <coport/result.hpp>

#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <utility>

namespace coport::local {

/// A local socket address: a filesystem path, or "@name" for a Linux abstract name.
class endpoint {
public:
    endpoint() = default;
    endpoint(std::string path) : m_path(std::move(path)) {}
    endpoint(const char* path) : m_path(path) {}
    [[nodiscard]] const std::string& path() const noexcept { return m_path; }
    [[nodiscard]] bool is_abstract() const noexcept { return !m_path.empty() && (m_path[0] == '@' || m_path[0] == '\0'); }

    /// Internal: to sockaddr_un. Errors: `errc::bad_address` if the path is empty or too long.
    result<int> to_sockaddr(sockaddr_storage& ss) const {
        std::memset(&ss, 0, sizeof ss);
        auto* sa = reinterpret_cast<sockaddr_un*>(&ss);
        sa->sun_family = AF_UNIX;
        if (m_path.empty() || m_path.size() >= sizeof sa->sun_path) return unexpected(make_error_code(error::bad_address));
        std::memcpy(sa->sun_path, m_path.data(), m_path.size());
        if (is_abstract()) {
            sa->sun_path[0] = '\0';
            return static_cast<int>(offsetof(sockaddr_un, sun_path) + m_path.size());
        }
        return static_cast<int>(offsetof(sockaddr_un, sun_path) + m_path.size() + 1);
    }

private:
    std::string m_path;
};

/// A connected local stream socket.
class stream_socket : public coport::stream_socket {
public:
    stream_socket() noexcept = default;
    explicit stream_socket(io_context& ctx) noexcept : coport::stream_socket(ctx) {}
    /// Internal: adopts an accepted socket.
    stream_socket(io_context& ctx, detail::backend::socket_ptr s) noexcept : coport::stream_socket(ctx, std::move(s)) {}
    stream_socket(stream_socket&&) noexcept = default;
    stream_socket& operator=(stream_socket&&) noexcept = default;

    using connect_awaiter = detail::connect_awaiter;
    /// Connects to the socket at `ep`. Errors: `errc::connection_refused` (nothing listens there, or a
    /// stale file), a missing path is ENOENT (`std::errc::no_such_file_or_directory`), `bad_address`.
    [[nodiscard]] connect_awaiter connect(const endpoint& ep, std::stop_token st = {}) {
        std::error_code pre;
        sockaddr_storage ss{};
        int len = 0;
        auto l = ep.to_sockaddr(ss);
        if (!l) pre = l.error();
        else len = *l;
        if (!pre && !m_impl) {
            auto s = impl::open(ctx_of(), AF_UNIX, SOCK_STREAM);
            if (s) m_impl = std::move(*s);
            else pre = s.error();
        }
        return connect_awaiter(pre ? nullptr : m_impl.get(), ss, len, std::move(st), pre);
    }
};

/// Options of listener::bind.
struct listen_options {
    int backlog = 128;
    /// Remove an existing socket file at the path before binding (a stale one from a dead process).
    /// Only a socket file is removed; any other file makes bind fail with address_in_use.
    bool unlink_existing = false;
};

/// A listening local socket.
class listener {
    using impl = detail::backend::socket_impl;

public:
    listener() noexcept = default;
    listener(listener&&) noexcept = default;
    listener& operator=(listener&&) noexcept = default;

    static result<listener> bind(io_context& ctx, const endpoint& ep, listen_options opts = {}) {
        sockaddr_storage ss;
        auto len = ep.to_sockaddr(ss);
        if (!len) return unexpected(len.error());
        if (opts.unlink_existing && !ep.is_abstract()) detail::backend::remove_socket_file(ep.path().c_str());
        auto s = impl::open(ctx.native(), AF_UNIX, SOCK_STREAM);
        if (!s) return unexpected(s.error());
        if (auto ec = (*s)->bind(ss, *len)) return unexpected(ec);
        if (auto ec = (*s)->listen(opts.backlog)) return unexpected(ec);
        listener l;
        l.m_ctx = &ctx;
        l.m_impl = std::move(*s);
        l.m_endpoint = ep;
        return l;
    }

    using accept_awaiter = detail::accept_awaiter<stream_socket>;
    /// Accepts the next connection. Errors: `operation_aborted` (cancelled or closed).
    [[nodiscard]] accept_awaiter accept(std::stop_token st = {}) {
        if (!m_impl) throw std::logic_error("coport::local::listener: accept on a listener that is not open");
        return accept_awaiter(*m_ctx, m_impl.get(), std::move(st));
    }
    [[nodiscard]] const endpoint& local_endpoint() const noexcept { return m_endpoint; }
    /// Cancels a pending accept and closes the socket (the socket file stays; remove it if you wish).
    void close() noexcept {
        if (m_impl) m_impl->close();
    }
    [[nodiscard]] bool is_open() const noexcept { return m_impl && m_impl->is_open(); }

private:
    io_context* m_ctx = nullptr;
    detail::backend::socket_ptr m_impl;
    endpoint m_endpoint;
};

} // namespace coport::local
