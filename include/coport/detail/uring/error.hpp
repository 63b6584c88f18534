// SPDX-License-Identifier: MIT
#pragma once
// Linux: native errors are errno values in std::system_category(); this maps them to coport::errc.
#if !defined(__linux__)
#error "coport/detail/uring is the Linux backend"
#endif

#include <coport/detail/uring/os.hpp>
#include <coport/error.hpp>

#include <cerrno>
#include <netdb.h>

namespace coport::detail {

inline const std::error_category& native_category() noexcept { return std::system_category(); }

inline int native_condition(int e) noexcept {
    switch (e) {
    case ECONNRESET: return int(errc::connection_reset);
    case ECONNREFUSED: return int(errc::connection_refused);
    case ECONNABORTED: return int(errc::connection_aborted);
    case ETIMEDOUT: return int(errc::timed_out);
    case ECANCELED: return int(errc::operation_aborted);
    case EADDRINUSE: return int(errc::address_in_use);
    case EADDRNOTAVAIL: return int(errc::address_not_available);
    case ENETUNREACH: return int(errc::network_unreachable);
    case EHOSTUNREACH: return int(errc::host_unreachable);
    case ENOTCONN: return int(errc::not_connected);
    case EPIPE: case ESHUTDOWN: return int(errc::broken_pipe);
    case ENOTSOCK: case EBADF: return int(errc::not_a_socket);
    case EFAULT: return int(errc::bad_address);
    case EINVAL: return int(errc::invalid_argument);
    case EMSGSIZE: return int(errc::message_truncated);
    case EISCONN: return int(errc::already_connected);
    case EMFILE: case ENFILE: return int(errc::too_many_files);
    case EOPNOTSUPP: case ENOSYS: case EAFNOSUPPORT: case EPROTONOSUPPORT: return int(errc::not_supported);
    case EACCES: case EPERM: return int(errc::permission_denied);
    default: return 0;
    }
}

/// errno of the calling thread as an error_code.
inline std::error_code last_error() noexcept { return native_error(errno); }

/// The error of an operation on a socket that is not open.
inline std::error_code not_open() noexcept { return native_error(EBADF); }

/// getaddrinfo's EAI_* codes.
inline std::error_code resolver_error(int eai) noexcept {
    switch (eai) {
    case EAI_NONAME:
#ifdef EAI_NODATA
    case EAI_NODATA:
#endif
        return make_error_code(error::host_not_found);
    case EAI_AGAIN: return make_error_code(error::host_not_found_try_again);
    case EAI_SERVICE: return make_error_code(error::service_not_found);
    case EAI_FAMILY: return make_error_code(error::address_family_not_supported);
    case EAI_MEMORY: return native_error(ENOMEM);
    case EAI_SYSTEM: return last_error();
    default: return make_error_code(error::no_recovery);
    }
}

} // namespace coport::detail
