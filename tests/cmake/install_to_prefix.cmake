# SPDX-License-Identifier: MIT
# cmake -DBUILD_DIR=<coport build> -DPREFIX=<dir> -P install_to_prefix.cmake
# A fresh install of coport into PREFIX, for the find_package consumer test.
file(REMOVE_RECURSE "${PREFIX}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}"
                COMMAND_ERROR_IS_FATAL ANY)
