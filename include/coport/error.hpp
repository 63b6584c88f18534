// SPDX-License-Identifier: MIT
#pragma once
/// \file error.hpp
/// Errors are `std::error_code` values. Native codes (errno on Linux; Win32/WSA codes on Windows) keep
/// their native category and value, so a message or a log line shows exactly what the OS said.
/// Portable checks compare against a condition:
///
///     if (r.error() == coport::errc::connection_reset) ...   // ECONNRESET, WSAECONNRESET, ERROR_NETNAME_DELETED
///
/// `coport::error` holds the codes that the library itself produces (end of stream, resolver failures,
/// a cancelled or timed-out operation); each of them also compares equal to its `errc` condition.

#include <coport/detail/config.hpp>

#include <string>
#include <system_error>

namespace coport {

/// Portable error conditions: compare any `std::error_code` from coport against these.
enum class errc {
    connection_reset = 1,  ///< the peer reset the connection (ECONNRESET, WSAECONNRESET, ERROR_NETNAME_DELETED)
    connection_refused,    ///< nothing listens there (ECONNREFUSED, WSAECONNREFUSED, ERROR_CONNECTION_REFUSED)
    connection_aborted,    ///< the connection was aborted locally (ECONNABORTED, WSAECONNABORTED)
    eof,                   ///< the peer shut down its sending side before the bytes asked for arrived
    timed_out,             ///< an operation's timeout expired (ETIMEDOUT, WSAETIMEDOUT, coport::error::timed_out)
    operation_aborted,     ///< the operation was cancelled or its socket/context closed (ECANCELED, 995)
    address_in_use,        ///< bind: the address is taken (EADDRINUSE, WSAEADDRINUSE)
    address_not_available, ///< bind/connect: the address is not local or not valid here
    host_not_found,        ///< the name does not resolve (EAI_NONAME, WSAHOST_NOT_FOUND)
    host_not_found_try_again, ///< temporary resolver failure (EAI_AGAIN, WSATRY_AGAIN)
    service_not_found,     ///< the service (port name) is unknown (EAI_SERVICE, WSATYPE_NOT_FOUND)
    network_unreachable,   ///< ENETUNREACH, WSAENETUNREACH
    host_unreachable,      ///< EHOSTUNREACH, WSAEHOSTUNREACH
    not_connected,         ///< ENOTCONN, WSAENOTCONN
    broken_pipe,           ///< writing after the connection is gone (EPIPE, WSAESHUTDOWN, WSAEDISCON)
    not_a_socket,          ///< ENOTSOCK, WSAENOTSOCK, EBADF on a closed socket
    bad_address,           ///< an invalid address or buffer (EFAULT, WSAEFAULT, unparsable address text)
    invalid_argument,      ///< EINVAL, WSAEINVAL
    message_truncated,     ///< a datagram larger than the buffer (EMSGSIZE, WSAEMSGSIZE)
    already_connected,     ///< EISCONN, WSAEISCONN
    too_many_files,        ///< EMFILE, ENFILE, WSAEMFILE
    not_supported,         ///< the OS or kernel lacks the feature (EOPNOTSUPP, ENOSYS, WSAEOPNOTSUPP)
    permission_denied,     ///< EACCES, EPERM, WSAEACCES
    channel_closed,        ///< a channel was closed (and, for a receive, drained): coport::error::channel_closed
};

/// Codes produced by coport itself (category `coport::error_category()`).
enum class error {
    eof = 1,                  ///< end of stream before the requested bytes (recv_exact and friends)
    operation_aborted,        ///< cancelled before reaching the OS, or the io_context shut down
    timed_out,                ///< with_timeout / a deadline expired (the operation was cancelled first)
    host_not_found,           ///< resolver: no such host
    host_not_found_try_again, ///< resolver: temporary failure
    service_not_found,        ///< resolver: no such service
    no_recovery,              ///< resolver: unrecoverable failure
    address_family_not_supported, ///< resolver or socket: unsupported family
    bad_address,              ///< an address string that does not parse
    backend_unavailable,      ///< the requested I/O backend cannot be set up here (see message/log)
    channel_closed,           ///< channel<T>: send after close(), or receive after close() once drained
};

const std::error_category& error_category() noexcept;
const std::error_category& condition_category() noexcept;

inline std::error_code make_error_code(error e) noexcept { return {static_cast<int>(e), error_category()}; }
inline std::error_condition make_error_condition(errc e) noexcept {
    return {static_cast<int>(e), condition_category()};
}

namespace detail {
// Defined once per backend, in detail/<backend>/error.hpp.
/// The category of the OS's own error numbers (std::system_category() on Linux).
inline const std::error_category& native_category() noexcept;
/// The portable condition of a native error number, or 0 if none applies.
inline int native_condition(int native) noexcept;
/// A native error number as an error_code.
inline std::error_code native_error(int native) noexcept { return {native, native_category()}; }
} // namespace detail
} // namespace coport

template <>
struct std::is_error_code_enum<coport::error> : std::true_type {};
template <>
struct std::is_error_condition_enum<coport::errc> : std::true_type {};

#if COPORT_DEFINE_ENGINE // see coport/detail/config.hpp
namespace coport {
namespace detail {
class coport_error_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "coport"; }
    std::string message(int v) const override {
        switch (static_cast<error>(v)) {
        case error::eof: return "end of stream";
        case error::operation_aborted: return "operation aborted";
        case error::timed_out: return "operation timed out";
        case error::host_not_found: return "host not found";
        case error::host_not_found_try_again: return "host not found (temporary failure, try again)";
        case error::service_not_found: return "service not found";
        case error::no_recovery: return "unrecoverable resolver failure";
        case error::address_family_not_supported: return "address family not supported";
        case error::bad_address: return "bad address";
        case error::backend_unavailable: return "I/O backend unavailable";
        case error::channel_closed: return "channel closed";
        }
        return "unknown coport error " + std::to_string(v);
    }
    std::error_condition default_error_condition(int v) const noexcept override {
        switch (static_cast<error>(v)) {
        case error::eof: return errc::eof;
        case error::operation_aborted: return errc::operation_aborted;
        case error::timed_out: return errc::timed_out;
        case error::host_not_found: return errc::host_not_found;
        case error::host_not_found_try_again: return errc::host_not_found_try_again;
        case error::service_not_found: return errc::service_not_found;
        case error::no_recovery: return errc::host_not_found;
        case error::address_family_not_supported: return errc::not_supported;
        case error::bad_address: return errc::bad_address;
        case error::backend_unavailable: return errc::not_supported;
        case error::channel_closed: return errc::channel_closed;
        }
        return {v, *this};
    }
};

class coport_condition_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "coport.condition"; }
    std::string message(int v) const override {
        switch (static_cast<errc>(v)) {
        case errc::connection_reset: return "connection reset by peer";
        case errc::connection_refused: return "connection refused";
        case errc::connection_aborted: return "connection aborted";
        case errc::eof: return "end of stream";
        case errc::timed_out: return "timed out";
        case errc::operation_aborted: return "operation aborted";
        case errc::address_in_use: return "address in use";
        case errc::address_not_available: return "address not available";
        case errc::host_not_found: return "host not found";
        case errc::host_not_found_try_again: return "host not found (try again)";
        case errc::service_not_found: return "service not found";
        case errc::network_unreachable: return "network unreachable";
        case errc::host_unreachable: return "host unreachable";
        case errc::not_connected: return "not connected";
        case errc::broken_pipe: return "broken pipe";
        case errc::not_a_socket: return "not a socket";
        case errc::bad_address: return "bad address";
        case errc::invalid_argument: return "invalid argument";
        case errc::message_truncated: return "message truncated";
        case errc::already_connected: return "already connected";
        case errc::too_many_files: return "too many open files";
        case errc::not_supported: return "operation not supported";
        case errc::permission_denied: return "permission denied";
        case errc::channel_closed: return "channel closed";
        }
        return "unknown condition " + std::to_string(v);
    }
    bool equivalent(const std::error_code& code, int cond) const noexcept override {
        if (code.category() == native_category()) return native_condition(code.value()) == cond;
        if (code.category() == coport::error_category()) return code.default_error_condition().value() == cond;
        if (code.category() == std::generic_category()) return generic_condition(code.value()) == cond;
        return false;
    }

    static int generic_condition(int e) noexcept {
        switch (static_cast<std::errc>(e)) {
        case std::errc::connection_reset: return int(errc::connection_reset);
        case std::errc::connection_refused: return int(errc::connection_refused);
        case std::errc::connection_aborted: return int(errc::connection_aborted);
        case std::errc::timed_out: return int(errc::timed_out);
        case std::errc::operation_canceled: return int(errc::operation_aborted);
        case std::errc::address_in_use: return int(errc::address_in_use);
        case std::errc::address_not_available: return int(errc::address_not_available);
        case std::errc::network_unreachable: return int(errc::network_unreachable);
        case std::errc::host_unreachable: return int(errc::host_unreachable);
        case std::errc::not_connected: return int(errc::not_connected);
        case std::errc::broken_pipe: return int(errc::broken_pipe);
        case std::errc::not_a_socket: return int(errc::not_a_socket);
        case std::errc::bad_address: return int(errc::bad_address);
        case std::errc::invalid_argument: return int(errc::invalid_argument);
        case std::errc::message_size: return int(errc::message_truncated);
        case std::errc::already_connected: return int(errc::already_connected);
        case std::errc::too_many_files_open: return int(errc::too_many_files);
        case std::errc::operation_not_supported: return int(errc::not_supported);
        case std::errc::permission_denied: return int(errc::permission_denied);
        default: return 0;
        }
    }
};
} // namespace detail

COPORT_DECL const std::error_category& error_category() noexcept {
    static const detail::coport_error_category c;
    return c;
}
COPORT_DECL const std::error_category& condition_category() noexcept {
    static const detail::coport_condition_category c;
    return c;
}
} // namespace coport
#endif // COPORT_DEFINE_ENGINE

// The backend's native mapping (detail::native_category / native_condition) completes this header.
#include <coport/detail/backend.hpp>
