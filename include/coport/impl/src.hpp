// SPDX-License-Identifier: MIT
#pragma once
// The separately compiled part of coport: include this in exactly one .cpp file of a program built with
// COPORT_SEPARATE_COMPILATION defined in every translation unit (see coport/detail/config.hpp).
#if !defined(COPORT_SEPARATE_COMPILATION)
#error "<coport/impl/src.hpp> needs COPORT_SEPARATE_COMPILATION defined (for every file of the program)"
#endif
#if defined(COPORT_DECL)
#error "<coport/impl/src.hpp> must come before any other coport header in its file"
#endif
#define COPORT_COMPILING_SOURCE 1
#include <coport/coport.hpp>
