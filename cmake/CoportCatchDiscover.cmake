# SPDX-License-Identifier: MIT
# Runs inside ctest (a TEST_INCLUDE_FILES entry written by coport_add_catch_tests): lists the TEST_CASEs of
# a Catch2 v2 binary (through the emulator when cross-compiling) and registers one CTest test per TEST_CASE.
# The list is cached next to the binary and refreshed only when the binary is newer. Names may contain ';':
# every name is kept in quoted arguments and never goes through a CMake list.

if(NOT EXISTS "${COPORT_CATCH_EXE}")
    add_test("${COPORT_CATCH_TARGET}_NOT_BUILT${COPORT_CATCH_SUFFIX}" "${COPORT_CATCH_TARGET}_NOT_BUILT")
    return()
endif()

if(NOT EXISTS "${COPORT_CATCH_CACHE}" OR "${COPORT_CATCH_EXE}" IS_NEWER_THAN "${COPORT_CATCH_CACHE}")
    execute_process(
        COMMAND ${COPORT_CATCH_EMULATOR} "${COPORT_CATCH_EXE}" --list-test-names-only
        WORKING_DIRECTORY "${COPORT_CATCH_WORKDIR}"
        INPUT_FILE /dev/null
        OUTPUT_VARIABLE _coport_out
        ERROR_VARIABLE _coport_err
        RESULT_VARIABLE _coport_rc)
    # Catch2 v2 exits with the number of listed tests (mod 256), so only "not a number" means failure.
    string(REPLACE "\r" "" _coport_out "${_coport_out}") # Windows text-mode stdout
    string(STRIP "${_coport_out}" _coport_out)
    if(NOT _coport_rc MATCHES "^[0-9]+$" OR _coport_out STREQUAL "")
        message(WARNING "Listing the tests of ${COPORT_CATCH_EXE} failed (${_coport_rc}):\n"
                        "${_coport_out}\n${_coport_err}")
        add_test("${COPORT_CATCH_TARGET}_LISTING_FAILED${COPORT_CATCH_SUFFIX}" "${COPORT_CMAKE_COMMAND}" -E false)
        return()
    endif()
    file(WRITE "${COPORT_CATCH_CACHE}" "${_coport_out}\n")
endif()

file(READ "${COPORT_CATCH_CACHE}" _coport_out)
string(ASCII 31 _coport_us)
string(REPLACE ";" "${_coport_us}" _coport_out "${_coport_out}")
string(REPLACE "\n" ";" _coport_lines "${_coport_out}")
foreach(_coport_line IN LISTS _coport_lines)
    string(REPLACE "${_coport_us}" ";" _coport_name "${_coport_line}")
    if(_coport_name STREQUAL "")
        continue()
    endif()
    # In a Catch test spec , [ ] are syntax; a backslash makes them literal.
    set(_coport_spec "${_coport_name}")
    foreach(_coport_char , [ ])
        string(REPLACE "${_coport_char}" "\\${_coport_char}" _coport_spec "${_coport_spec}")
    endforeach()
    set(_coport_test "${_coport_name}${COPORT_CATCH_SUFFIX}")
    add_test("${_coport_test}" ${COPORT_CATCH_EMULATOR} "${COPORT_CATCH_EXE}" "${_coport_spec}" --warn NoTests)
    set_tests_properties("${_coport_test}" PROPERTIES
        WORKING_DIRECTORY "${COPORT_CATCH_WORKDIR}"
        TIMEOUT "${COPORT_CATCH_TIMEOUT}"
        SKIP_REGULAR_EXPRESSION "COPORT_SKIP:")
    if(NOT COPORT_CATCH_ENV STREQUAL "")
        set_tests_properties("${_coport_test}" PROPERTIES ENVIRONMENT "${COPORT_CATCH_ENV}")
    endif()
endforeach()
