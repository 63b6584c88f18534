# SPDX-License-Identifier: MIT
# Sourced by scripts/test, scripts/soak and scripts/demo: packages and the CMake settings of each build flavour,
# building one, and a persistent wineserver for the Windows flavours' tests.

COPORT_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COPORT_FLAVOURS=(gcc-release gcc-debug-asan clang-release clang-tsan mingw-debug mingw-release)

# Debian packages a flavour needs (ninja-build: cmake's Debian package does not even recommend a build tool).
coport_flavour_packages() {
    local pkgs=(cmake ninja-build g++ pkg-config liburing-dev catch2)
    case $1 in
        clang-*) pkgs+=(clang libclang-rt-14-dev) ;;
        mingw-*) pkgs+=(g++-mingw-w64-x86-64-posix wine wine64) ;;
    esac
    case $1 in # the examples' end-to-end tests talk to curl and Python peers (native flavours only)
        gcc-* | clang-*) pkgs+=(curl python3) ;;
    esac
    printf '%s\n' "${pkgs[@]}"
}

# coport_ensure_packages pkg... : installs what is missing when root, otherwise says what to run.
coport_ensure_packages() {
    command -v dpkg-query >/dev/null || return 0 # not Debian: trust the machine
    local p missing=()
    for p in "$@"; do
        [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) == installed ]] || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    if ((EUID != 0)); then
        echo "missing packages: ${missing[*]}" >&2
        echo "run as root: apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
        exit 1
    fi
    echo "== installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

# coport_ensure_flavour_packages flavour... : coport_ensure_packages for what those flavours need.
coport_ensure_flavour_packages() {
    local f packages=()
    for f in "$@"; do
        mapfile -t -O "${#packages[@]}" packages < <(coport_flavour_packages "$f")
    done
    mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
    coport_ensure_packages "${packages[@]}"
}

# coport_flavour_args <flavour> : sets COPORT_CMAKE_ARGS to its configure arguments.
coport_flavour_args() {
    COPORT_CMAKE_ARGS=(-G Ninja -DCMAKE_EXPORT_COMPILE_COMMANDS=ON -DCOPORT_BUILD_EXAMPLES=ON)
    case $1 in
        gcc-release)
            COPORT_CMAKE_ARGS+=(-DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Release
                "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" -DCOPORT_SANITIZE=) ;;
        gcc-debug-asan)
            COPORT_CMAKE_ARGS+=(-DCMAKE_CXX_COMPILER=g++ -DCMAKE_BUILD_TYPE=Debug
                "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g" -DCOPORT_SANITIZE=address,undefined) ;;
        clang-release)
            COPORT_CMAKE_ARGS+=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Release
                "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" -DCOPORT_SANITIZE= -DCOPORT_SEPARATE_COMPILATION=ON) ;;
        clang-tsan)
            COPORT_CMAKE_ARGS+=(-DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=Debug
                "-DCMAKE_CXX_FLAGS_DEBUG=-O1 -g" -DCOPORT_SANITIZE=thread) ;;
        mingw-debug)
            COPORT_CMAKE_ARGS+=("-DCMAKE_TOOLCHAIN_FILE=$COPORT_REPO/cmake/toolchain-mingw-w64.cmake"
                -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_CXX_FLAGS_DEBUG=-O0 -g") ;;
        mingw-release)
            COPORT_CMAKE_ARGS+=("-DCMAKE_TOOLCHAIN_FILE=$COPORT_REPO/cmake/toolchain-mingw-w64.cmake"
                -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG" -DCOPORT_SEPARATE_COMPILATION=ON) ;;
        *)
            echo "unknown flavour '$1' (known: ${COPORT_FLAVOURS[*]})" >&2
            return 1 ;;
    esac
}

# coport_build_flavour <flavour> : configures and builds build/<flavour> (relative to the current directory,
# the repository for the scripts). On failure returns 1 with COPORT_BUILD_ERROR "configure failed" or
# "build failed".
coport_build_flavour() {
    local f=$1 dir=build/$1
    COPORT_BUILD_ERROR=""
    coport_flavour_args "$f" || { COPORT_BUILD_ERROR="unknown flavour"; return 1; }
    mkdir -p "$dir"
    echo "== $f: configure"
    if ! cmake -S . -B "$dir" --log-level=WARNING "${COPORT_CMAKE_ARGS[@]}" </dev/null; then
        COPORT_BUILD_ERROR="configure failed"
        return 1
    fi
    echo "== $f: build"
    if ! cmake --build "$dir" -j2 </dev/null; then
        COPORT_BUILD_ERROR="build failed"
        return 1
    fi
}

# --- Wine: one persistent wineserver per prefix while tests run; only the ones started here are stopped ------
# The caller stops them: trap coport_wine_stop_all EXIT.
COPORT_WINESERVER=/usr/lib/wine/wineserver64
[[ -x $COPORT_WINESERVER ]] || COPORT_WINESERVER=$(command -v wineserver || echo wineserver)
COPORT_WINE_STARTED=()

coport_wine_start() { # <prefix>
    local prefix=$1 rc=0
    mkdir -p "$prefix"
    WINEPREFIX=$prefix WINEDEBUG=-all "$COPORT_WINESERVER" -p </dev/null >/dev/null 2>&1 || rc=$?
    if ((rc == 0)); then
        COPORT_WINE_STARTED+=("$prefix")
    else
        echo "note: wineserver for $prefix not started here (exit $rc; one may already be running)"
    fi
    if [[ ! -f $prefix/.coport-wineboot-done ]]; then
        echo "== creating the Wine prefix $prefix (once per build directory, ~10 s)"
    fi
    # Creates the prefix if needed and starts Wine's system processes away from the tests' output pipes.
    sh "$COPORT_REPO/cmake/wine-run.sh" "$prefix" || return 1
}

coport_wine_stop() { # <prefix>
    WINEPREFIX=$1 "$COPORT_WINESERVER" -k >/dev/null 2>&1 || true
    WINEPREFIX=$1 "$COPORT_WINESERVER" -w >/dev/null 2>&1 || true
}

coport_wine_stop_all() {
    local p
    for p in "${COPORT_WINE_STARTED[@]}"; do
        coport_wine_stop "$p"
    done
    COPORT_WINE_STARTED=()
}
