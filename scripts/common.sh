# SPDX-License-Identifier: MIT
# Sourced by scripts/test and scripts/demo: packages and the CMake settings of each build flavour.

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
