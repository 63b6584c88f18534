// SPDX-License-Identifier: MIT
#pragma once
// Windows: native errors are Win32 codes (GetLastError, the WSA* codes, and the Win32 form of the NTSTATUS
// an overlapped completion carries) in one category, "win32"; this maps them to coport::errc.
#if !defined(_WIN32)
#error "coport/detail/iocp is the Windows backend"
#endif

#include <coport/detail/iocp/os.hpp>
#include <coport/error.hpp>

#include <string>
#include <system_error>

namespace coport::detail {

namespace iocp {
// Codes that overlapped socket completions report (the Win32 form of their NTSTATUS) and that older
// headers may lack.
inline constexpr int error_handles_closed = 676; // STATUS_HANDLES_CLOSED: Wine, local closesocket with I/O pending
inline constexpr int error_netname_deleted = 64; // STATUS_CONNECTION_RESET etc.: peer reset during a pending op
inline constexpr int error_connection_refused = 1225;
inline constexpr int error_connection_aborted = 1236;
inline constexpr int error_network_unreachable = 1231;
inline constexpr int error_host_unreachable = 1232;
inline constexpr int error_port_unreachable = 1234; // UDP: ICMP port unreachable

class win32_category final : public std::error_category {
public:
    const char* name() const noexcept override { return "win32"; }
    std::string message(int code) const override {
        char* buf = nullptr;
        DWORD n = ::FormatMessageA(FORMAT_MESSAGE_ALLOCATE_BUFFER | FORMAT_MESSAGE_FROM_SYSTEM |
                                       FORMAT_MESSAGE_IGNORE_INSERTS,
                                   nullptr, static_cast<DWORD>(code), 0, reinterpret_cast<LPSTR>(&buf), 0, nullptr);
        std::string s;
        if (n && buf) s.assign(buf, n);
        if (buf) ::LocalFree(buf);
        while (!s.empty() && (s.back() == '\r' || s.back() == '\n' || s.back() == ' ')) s.pop_back();
        if (s.empty()) { // no message table entry (Wine has none for the WSA codes)
            s = "win32 error " + std::to_string(code);
            if (int cond = native_condition(code)) s = condition_category().message(cond) + " (" + s + ")";
        }
        return s;
    }
    std::error_condition default_error_condition(int code) const noexcept override {
        const std::errc g = generic(code);
        if (g == std::errc{}) return {code, *this};
        return std::make_error_condition(g);
    }

private:
    // The std::errc a Win32/WSA code corresponds to (std::errc{} if none): libstdc++ 12's system_category()
    // has no Windows mapping, so `ec == std::errc::connection_reset` works only through this.
    static std::errc generic(int code) noexcept {
        using e = std::errc;
        switch (code) {
        case WSAECONNRESET: case error_netname_deleted: case WSAENETRESET: return e::connection_reset;
        case WSAECONNREFUSED: case error_connection_refused: case error_port_unreachable: return e::connection_refused;
        case WSAECONNABORTED: case error_connection_aborted: return e::connection_aborted;
        case WSAETIMEDOUT: case ERROR_SEM_TIMEOUT: return e::timed_out;
        case ERROR_OPERATION_ABORTED: case error_handles_closed: case WSAECANCELLED: return e::operation_canceled;
        case WSAEADDRINUSE: case ERROR_ADDRESS_ALREADY_ASSOCIATED: return e::address_in_use;
        case WSAEADDRNOTAVAIL: return e::address_not_available;
        case WSAENETUNREACH: case error_network_unreachable: return e::network_unreachable;
        case WSAEHOSTUNREACH: case error_host_unreachable: return e::host_unreachable;
        case WSAENETDOWN: return e::network_down;
        case WSAENOTCONN: return e::not_connected;
        case WSAESHUTDOWN: case WSAEDISCON: case ERROR_BROKEN_PIPE: return e::broken_pipe;
        case WSAENOTSOCK: case ERROR_INVALID_HANDLE: return e::not_a_socket;
        case WSAEFAULT: return e::bad_address;
        case WSAEINVAL: case ERROR_INVALID_PARAMETER: return e::invalid_argument;
        case WSAEMSGSIZE: case ERROR_MORE_DATA: return e::message_size;
        case WSAEISCONN: return e::already_connected;
        case WSAEMFILE: case ERROR_TOO_MANY_OPEN_FILES: return e::too_many_files_open;
        case WSAEOPNOTSUPP: case ERROR_NOT_SUPPORTED: return e::operation_not_supported;
        case WSAEAFNOSUPPORT: case WSAEPFNOSUPPORT: return e::address_family_not_supported;
        case WSAEPROTONOSUPPORT: return e::protocol_not_supported;
        case WSAEACCES: case ERROR_ACCESS_DENIED: return e::permission_denied;
        case WSAEWOULDBLOCK: return e::operation_would_block;
        case WSAEINPROGRESS: return e::operation_in_progress;
        case WSAEALREADY: return e::connection_already_in_progress;
        case WSAENOBUFS: return e::no_buffer_space;
        case ERROR_NOT_ENOUGH_MEMORY: case ERROR_OUTOFMEMORY: return e::not_enough_memory;
        case WSAEINTR: return e::interrupted;
        default: return std::errc{};
        }
    }
};
} // namespace iocp

inline const std::error_category& native_category() noexcept {
    static const iocp::win32_category c;
    return c;
}

inline int native_condition(int e) noexcept {
    using namespace iocp;
    switch (e) {
    case WSAECONNRESET: case error_netname_deleted: case WSAENETRESET: return int(errc::connection_reset);
    case WSAECONNREFUSED: case error_connection_refused: case error_port_unreachable:
        return int(errc::connection_refused);
    case WSAECONNABORTED: case error_connection_aborted: return int(errc::connection_aborted);
    case WSAETIMEDOUT: case ERROR_SEM_TIMEOUT: return int(errc::timed_out);
    case ERROR_OPERATION_ABORTED: case error_handles_closed: case WSAECANCELLED: return int(errc::operation_aborted);
    case WSAEADDRINUSE: case ERROR_ADDRESS_ALREADY_ASSOCIATED: return int(errc::address_in_use);
    case WSAEADDRNOTAVAIL: return int(errc::address_not_available);
    case WSAHOST_NOT_FOUND: case WSANO_DATA: return int(errc::host_not_found);
    case WSATRY_AGAIN: return int(errc::host_not_found_try_again);
    case WSATYPE_NOT_FOUND: return int(errc::service_not_found);
    case WSAENETUNREACH: case error_network_unreachable: return int(errc::network_unreachable);
    case WSAEHOSTUNREACH: case error_host_unreachable: return int(errc::host_unreachable);
    case WSAENOTCONN: return int(errc::not_connected);
    case WSAESHUTDOWN: case WSAEDISCON: case ERROR_BROKEN_PIPE: return int(errc::broken_pipe);
    case WSAENOTSOCK: case ERROR_INVALID_HANDLE: return int(errc::not_a_socket);
    case WSAEFAULT: return int(errc::bad_address);
    case WSAEINVAL: case ERROR_INVALID_PARAMETER: return int(errc::invalid_argument);
    case WSAEMSGSIZE: case ERROR_MORE_DATA: return int(errc::message_truncated);
    case WSAEISCONN: return int(errc::already_connected);
    case WSAEMFILE: case ERROR_TOO_MANY_OPEN_FILES: return int(errc::too_many_files);
    case WSAEOPNOTSUPP: case WSAEAFNOSUPPORT: case WSAEPFNOSUPPORT: case WSAEPROTONOSUPPORT:
    case WSAESOCKTNOSUPPORT: case ERROR_NOT_SUPPORTED: return int(errc::not_supported);
    case WSAEACCES: case ERROR_ACCESS_DENIED: return int(errc::permission_denied);
    default: return 0;
    }
}

/// GetLastError() of the calling thread as an error_code.
inline std::error_code last_error() noexcept { return native_error(static_cast<int>(::GetLastError())); }
/// WSAGetLastError() of the calling thread as an error_code.
inline std::error_code wsa_last_error() noexcept { return native_error(::WSAGetLastError()); }

/// The error of an operation on a socket that is not open.
inline std::error_code not_open() noexcept { return native_error(WSAENOTSOCK); }

/// getaddrinfo's results (on Windows, WSA codes: EAI_NONAME is WSAHOST_NOT_FOUND, EAI_AGAIN WSATRY_AGAIN...).
inline std::error_code resolver_error(int rc) noexcept {
    switch (rc) {
    case WSAHOST_NOT_FOUND: case WSANO_DATA: return make_error_code(error::host_not_found);
    case WSATRY_AGAIN: return make_error_code(error::host_not_found_try_again);
    case WSATYPE_NOT_FOUND: return make_error_code(error::service_not_found);
    case WSAEAFNOSUPPORT: return make_error_code(error::address_family_not_supported);
    case WSANO_RECOVERY: return make_error_code(error::no_recovery);
    default: return native_error(rc); // a real Win32 code (e.g. WSA_NOT_ENOUGH_MEMORY, WSANOTINITIALISED)
    }
}

} // namespace coport::detail
