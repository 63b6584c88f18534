# SPDX-License-Identifier: MIT
# Cross build for 64-bit Windows with mingw-w64 (Debian: g++-mingw-w64-x86-64-posix); programs run under
# Wine (Debian: wine wine64).   cmake -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-mingw-w64.cmake ...
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(COPORT_MINGW_TRIPLE x86_64-w64-mingw32)
# The -posix variants: std::thread/std::jthread need the posix threading model.
set(CMAKE_C_COMPILER ${COPORT_MINGW_TRIPLE}-gcc-posix)
set(CMAKE_CXX_COMPILER ${COPORT_MINGW_TRIPLE}-g++-posix)
set(CMAKE_RC_COMPILER ${COPORT_MINGW_TRIPLE}-windres)

set(CMAKE_FIND_ROOT_PATH /usr/${COPORT_MINGW_TRIPLE})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# Fully static: with only -static-libgcc -static-libstdc++ the .exe needs libwinpthread-1.dll (Wine: exit 53).
set(CMAKE_EXE_LINKER_FLAGS_INIT -static)
# Catch2 and coroutine-heavy test objects exceed the 2^15 section limit of plain COFF at -O0.
set(CMAKE_C_FLAGS_INIT -Wa,-mbig-obj)
set(CMAKE_CXX_FLAGS_INIT -Wa,-mbig-obj)

# add_test(), the examples' tests and the Catch2 test listing run .exe files through this. The Wine prefix is
# private to the build directory (created on first use; scripts/test also keeps a wineserver running).
if(NOT CMAKE_CROSSCOMPILING_EMULATOR)
    set(CMAKE_CROSSCOMPILING_EMULATOR /bin/sh "${CMAKE_CURRENT_LIST_DIR}/wine-run.sh" "${CMAKE_BINARY_DIR}/wineprefix")
endif()
