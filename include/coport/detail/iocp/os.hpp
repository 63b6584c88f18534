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

// winsock2.h before windows.h: otherwise windows.h pulls in the old winsock.h and the two clash.
#include <winsock2.h>
#include <ws2tcpip.h>
#include <mswsock.h>
#include <windows.h>

#if defined(_WIN32_WINNT) && _WIN32_WINNT < 0x0600
#error "coport needs Windows Vista APIs (GetQueuedCompletionStatusEx, CancelIoEx): define _WIN32_WINNT >= 0x0600"
#endif
