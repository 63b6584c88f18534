// SPDX-License-Identifier: MIT
// Built with coport as a subdirectory; run by the CTest test packaging.add_subdirectory.
#if __has_include(<coport/coport.hpp>)
#include <coport/coport.hpp>
#endif

static_assert(__cplusplus >= 202002L, "coport::coport must bring C++20");

int main() { return 0; }
