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
