// SPDX-License-Identifier: MIT
// Built against an installed coport (find_package); run by the CTest test packaging.find_package.
#if __has_include(<coport/coport.hpp>)
#include <coport/coport.hpp>
#endif

static_assert(__cplusplus >= 202002L, "coport::coport must bring C++20");

int main() { return 0; }
