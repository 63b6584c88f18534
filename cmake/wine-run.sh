#!/bin/sh
# SPDX-License-Identifier: MIT
# Usage: wine-run.sh <wineprefix> [<program.exe> [args...]]
# The CMAKE_CROSSCOMPILING_EMULATOR of cmake/toolchain-mingw-w64.cmake: runs a Windows program under 64-bit
# Wine, headless, in a private prefix, and returns its exit code. The prefix is created on first use (~10 s,
# ~700 MB).
# Without a program: creates the prefix if needed and starts its Wine system processes (services.exe,
# explorer.exe, ...) with stdio on /dev/null. Do that right after starting a persistent `wineserver -p`
# (scripts/test does): otherwise the first test starts them, they inherit that test's output pipe and live
# as long as the server, and ctest waits for the pipe to close until the test times out. With the persistent
# server a run costs ~0.1-0.5 s instead of 3-5 s.
set -eu
prefix=$1
shift

# Debian 12 does not put wine64 on PATH, and /usr/bin/wine insists on wine32.
wine64=${COPORT_WINE64:-/usr/lib/wine/wine64}
[ -x "$wine64" ] || wine64=$(command -v wine64 || command -v wine)

export WINEPREFIX="$prefix"
export WINEDEBUG=-all
unset DISPLAY WAYLAND_DISPLAY

# A marker of our own: a running wineserver writes system.reg only when it exits.
if [ ! -f "$prefix/.coport-wineboot-done" ]; then
    mkdir -p "$prefix"
    # ctest -j starts several programs at once: one creates the prefix, the others wait. No Mono/Gecko.
    (
        flock 9
        if [ ! -f "$prefix/.coport-wineboot-done" ]; then
            WINEDLLOVERRIDES="mscoree,mshtml=" "$wine64" wineboot --init </dev/null >/dev/null 2>&1
            : >"$prefix/.coport-wineboot-done"
        fi
    ) 9>"$prefix.lock"
fi

# No crash debugger: with winedbg attaching, a crashed program's exit code is racy (often 0, a false pass);
# without it a crash reliably exits with the exception code's low byte (access violation: 5).
export WINEDLLOVERRIDES="winedbg.exe=d${WINEDLLOVERRIDES:+;$WINEDLLOVERRIDES}"

if [ $# -eq 0 ]; then
    exec "$wine64" cmd.exe /c exit 0 </dev/null >/dev/null 2>&1
fi
exec "$wine64" "$@"
