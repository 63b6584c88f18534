// SPDX-License-Identifier: MIT
// Temporary: proves the build and test pipeline until the real tests exist. Delete it then.
#if __has_include(<coport/coport.hpp>)
#include <coport/coport.hpp>
#endif
#include <catch2/catch.hpp>

TEST_CASE("build smoke: the test binary runs", "[smoke]") { CHECK(__cplusplus >= 202002L); }
