// SPDX-License-Identifier: MIT
#pragma once
// Windows system headers used by the IOCP backend and by the address types. The only place coport
// includes them; the macros are defined only if the user has not chosen already.
#if !defined(_WIN32)
#error "coport/detail/iocp is the Windows backend"
#endif

#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#ifndef NOMINMAX
#define NOMINMAX
#endif

// winsock2.h first, in a block of its own (include sorting must not move it): windows.h would otherwise
// pull in the old winsock.h, which clashes with it.
#include <winsock2.h>

#include <afunix.h> // sockaddr_un (AF_UNIX: Windows 10 1803+)
#include <mswsock.h>
#include <windows.h>
#include <ws2tcpip.h>

#if defined(_WIN32_WINNT) && _WIN32_WINNT < 0x0600
#error "coport needs Windows Vista APIs (GetQueuedCompletionStatusEx, CancelIoEx): define _WIN32_WINNT >= 0x0600"
#endif

namespace coport::detail::iocp {
/// local::listen_options::unlink_existing: removes `path` if it names a socket file (nothing else).
/// Windows marks an AF_UNIX socket file as a reparse point with the tag IO_REPARSE_TAG_AF_UNIX, which
/// FindFirstFile reports in dwReserved0.
inline void remove_socket_file(const char* path) noexcept {
    constexpr DWORD reparse_tag_af_unix = 0x80000023; // IO_REPARSE_TAG_AF_UNIX (not in every SDK's headers)
    WIN32_FIND_DATAA fd;
    HANDLE h = ::FindFirstFileA(path, &fd);
    if (h == INVALID_HANDLE_VALUE) return;
    ::FindClose(h);
    if ((fd.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT) && fd.dwReserved0 == reparse_tag_af_unix)
        ::DeleteFileA(path);
}
} // namespace coport::detail::iocp
