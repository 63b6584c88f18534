// SPDX-License-Identifier: MIT
#pragma once
// Header-only (the default) or separately compiled.
//
// coport is header-only: every function is defined in the headers, and a program needs nothing but
// `#include <coport/coport.hpp>`. Its engine (the run loop, context set-up and shutdown, the epoll engine,
// the listener's accept machinery, the error categories, ...) is then compiled and optimised again in
// every translation unit that includes the headers. A program with many such files, or one that wants
// short rebuilds, may compile the engine once instead (as with Asio's ASIO_SEPARATE_COMPILATION):
//
//   1. define COPORT_SEPARATE_COMPILATION for every translation unit of the program (-DCOPORT_SEPARATE_COMPILATION);
//   2. in exactly one .cpp file, `#include <coport/impl/src.hpp>` (and nothing else of coport before it).
//
// The headers then only declare the engine's functions (COPORT_DECL without `inline`); src.hpp defines
// them. Templates, awaiters and the small functions every operation calls stay in the headers either way.
// Behaviour is the same in both modes.

#if defined(COPORT_SEPARATE_COMPILATION)
#define COPORT_DECL
#if defined(COPORT_COMPILING_SOURCE)
#define COPORT_DEFINE_ENGINE 1
#else
#define COPORT_DEFINE_ENGINE 0
#endif
#else
#if defined(COPORT_COMPILING_SOURCE)
#error "<coport/impl/src.hpp> is for programs built with COPORT_SEPARATE_COMPILATION defined"
#endif
#define COPORT_DECL inline
#define COPORT_DEFINE_ENGINE 1
#endif
