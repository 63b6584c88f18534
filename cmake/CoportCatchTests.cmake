# SPDX-License-Identifier: MIT
# Catch2 v2 for coport's test binaries, native and cross (mingw + Wine).
#
#   coport_link_catch2(<target>)
#       Natively: Catch2::Catch2 from find_package(Catch2 2). Cross: only the single header, copied from the
#       build machine's package into the build tree (the native package would add -isystem /usr/include).
#
#   coport_add_catch_tests(<target> [ENV <var=value>...] [NAME_SUFFIX <sfx>] [TIMEOUT <seconds, 300>])
#       One CTest test per TEST_CASE, named "<TEST_CASE name><sfx>". Call it again with another ENV and
#       NAME_SUFFIX to run the same binary in another configuration, e.g.
#           coport_add_catch_tests(coport_tests ENV COPORT_BACKEND=epoll NAME_SUFFIX " [epoll]")
#       The cases are listed when ctest starts (through the emulator when cross-compiling), cached until the
#       binary changes. Not Catch2's catch_discover_tests: 2.13.10's splits names at ';' into tests that
#       match nothing, and Catch2 v2 exits 0 when nothing matches, so those cases silently never ran; and
#       listing at build time would need Wine (and a wineserver) during the build.
#       Each test runs with --warn NoTests, so a name that matches no TEST_CASE fails instead of passing.
#       A test whose output contains "COPORT_SKIP:" is reported by CTest as skipped, e.g.
#           WARN("COPORT_SKIP: io_uring_setup refused (EPERM)"); return;
#
#   coport_add_catch_test(<target> <TEST_CASE name> [ENV <var=value>...] [ENV_MODIFICATION <var=op:value>...]
#                         [NAME_SUFFIX <sfx>] [TIMEOUT <seconds, 300>])
#       One CTest test "<name><sfx>" for one TEST_CASE, with the same settings as above: for a hidden case
#       ("[.]" tag: not listed, so not registered by coport_add_catch_tests) that needs an environment of its
#       own. ENV_MODIFICATION is CTest's ENVIRONMENT_MODIFICATION (e.g. ASAN_OPTIONS=string_append:...).

set(_COPORT_CATCH_DISCOVER_SCRIPT "${CMAKE_CURRENT_LIST_DIR}/CoportCatchDiscover.cmake")

function(coport_link_catch2 target)
    if(CMAKE_CROSSCOMPILING)
        find_file(COPORT_CATCH2_HEADER NAMES catch2/catch.hpp
            PATHS /usr/include /usr/local/include
            NO_DEFAULT_PATH NO_CMAKE_FIND_ROOT_PATH
            DOC "catch2/catch.hpp (Catch2 v2 single header) from the build machine")
        if(NOT COPORT_CATCH2_HEADER)
            message(FATAL_ERROR "catch2/catch.hpp not found: install Catch2 v2 (Debian: catch2) "
                                "or set COPORT_CATCH2_HEADER")
        endif()
        set(dir "${CMAKE_BINARY_DIR}/catch2-include")
        configure_file("${COPORT_CATCH2_HEADER}" "${dir}/catch2/catch.hpp" COPYONLY)
        target_include_directories(${target} SYSTEM PRIVATE "${dir}")
    else()
        find_package(Catch2 2 REQUIRED)
        target_link_libraries(${target} PRIVATE Catch2::Catch2)
    endif()
endfunction()

function(coport_add_catch_tests target)
    cmake_parse_arguments(PARSE_ARGV 1 arg "" "NAME_SUFFIX;TIMEOUT" "ENV")
    if(arg_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "coport_add_catch_tests: unknown arguments ${arg_UNPARSED_ARGUMENTS}")
    endif()
    if(NOT arg_TIMEOUT)
        set(arg_TIMEOUT 300)
    endif()
    string(MAKE_C_IDENTIFIER "${target}${arg_NAME_SUFFIX}" id)
    set(emulator "")
    if(CMAKE_CROSSCOMPILING)
        get_target_property(emulator ${target} CROSSCOMPILING_EMULATOR)
        if(NOT emulator)
            set(emulator "")
        endif()
    endif()
    set(script "${CMAKE_CURRENT_BINARY_DIR}/${id}_discover.cmake")
    file(GENERATE OUTPUT "${script}" CONTENT
"set(COPORT_CATCH_TARGET [==[${target}]==])
set(COPORT_CATCH_EXE [==[$<TARGET_FILE:${target}>]==])
set(COPORT_CATCH_EMULATOR [==[${emulator}]==])
set(COPORT_CATCH_SUFFIX [==[${arg_NAME_SUFFIX}]==])
set(COPORT_CATCH_ENV [==[${arg_ENV}]==])
set(COPORT_CATCH_TIMEOUT [==[${arg_TIMEOUT}]==])
set(COPORT_CATCH_CACHE [==[${CMAKE_CURRENT_BINARY_DIR}/${id}_names.txt]==])
set(COPORT_CATCH_WORKDIR [==[${CMAKE_CURRENT_BINARY_DIR}]==])
set(COPORT_CMAKE_COMMAND [==[${CMAKE_COMMAND}]==])
include([==[${_COPORT_CATCH_DISCOVER_SCRIPT}]==])
")
    set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${script}")
endfunction()

function(coport_add_catch_test target name)
    cmake_parse_arguments(PARSE_ARGV 2 arg "" "NAME_SUFFIX;TIMEOUT" "ENV;ENV_MODIFICATION")
    if(arg_UNPARSED_ARGUMENTS)
        message(FATAL_ERROR "coport_add_catch_test: unknown arguments ${arg_UNPARSED_ARGUMENTS}")
    endif()
    if(NOT arg_TIMEOUT)
        set(arg_TIMEOUT 300)
    endif()
    set(spec "${name}")
    foreach(char , [ ]) # as in CoportCatchDiscover.cmake
        string(REPLACE "${char}" "\\${char}" spec "${spec}")
    endforeach()
    set(test "${name}${arg_NAME_SUFFIX}")
    add_test(NAME "${test}" COMMAND ${target} "${spec}" --warn NoTests)
    set_tests_properties("${test}" PROPERTIES TIMEOUT "${arg_TIMEOUT}" SKIP_REGULAR_EXPRESSION "COPORT_SKIP:")
    if(arg_ENV)
        set_tests_properties("${test}" PROPERTIES ENVIRONMENT "${arg_ENV}")
    endif()
    if(arg_ENV_MODIFICATION)
        set_tests_properties("${test}" PROPERTIES ENVIRONMENT_MODIFICATION "${arg_ENV_MODIFICATION}")
    endif()
endfunction()
