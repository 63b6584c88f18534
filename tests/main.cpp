// SPDX-License-Identifier: MIT
// Catch2 v2 main of coport_tests; the test cases are in tests/test_*.cpp.
#if defined(_WIN32)
#define CATCH_CONFIG_WINDOWS_SEH // a crash is reported with the running test's name
#endif
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
