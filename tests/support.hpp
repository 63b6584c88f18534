// SPDX-License-Identifier: MIT
// Test support: skipping a test case for a missing OS/kernel feature.
#pragma once

#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <sstream>

/// Ends this test process with exit code 77, which CTest reports as "Skipped" (SKIP_RETURN_CODE): every
/// CTest test runs one test case, so a skip is never counted as a pass. The reason is printed.
#define COPORT_SKIP(reason)                                                                            \
    do {                                                                                               \
        std::ostringstream coport_skip_os;                                                             \
        coport_skip_os << reason;                                                                      \
        std::fprintf(stderr, "SKIPPED: %s\n", coport_skip_os.str().c_str());                           \
        std::fflush(stderr);                                                                           \
        std::exit(77);                                                                                 \
    } while (0)
