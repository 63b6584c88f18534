// SPDX-License-Identifier: MIT
// Test support: skipping a test case for a missing OS/kernel feature.
#pragma once

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <sstream>

/// Ends this test process, printing "COPORT_SKIP: <reason>", which CTest reports as "Skipped" (the tests'
/// SKIP_REGULAR_EXPRESSION; exit code 77 for SKIP_RETURN_CODE too): every CTest test runs one test case,
/// so a skip is never counted as a pass.
#define COPORT_SKIP(reason)                                                                            \
    do {                                                                                               \
        std::ostringstream coport_skip_os;                                                             \
        coport_skip_os << reason;                                                                      \
        std::fprintf(stdout, "COPORT_SKIP: %s\n", coport_skip_os.str().c_str());                           \
        std::fflush(stdout);                                                                           \
        std::exit(77);                                                                                 \
    } while (0)

#include <thread>

/// The calling thread's id, read afresh after every suspension: clang 14 at -O1+ may reuse a thread
/// identity read before a co_await after the coroutine resumed on another thread (LLVM #47177, #63022);
/// noinline alone is not enough (clang marks the call readnone), the asm barrier is.
[[gnu::noinline]] inline std::thread::id current_thread_id() noexcept {
    asm volatile("" ::: "memory");
    return std::this_thread::get_id();
}
