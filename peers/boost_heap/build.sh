#!/usr/bin/env bash
# Builds the Boost.Interprocess peer benchmark into peers/boost_heap/target/.
# Installs g++ and the Boost headers (libboost-dev) with apt-get if missing.
# Prints the path of the binary on its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

missing=()
command -v g++ >/dev/null 2>&1 || missing+=(g++)
[[ -f /usr/include/boost/interprocess/managed_shared_memory.hpp ]] || missing+=(libboost-dev)
if ((${#missing[@]} > 0)); then
    sudo=()
    [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
    echo "build.sh: installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$here/target"
# Boost.Interprocess is header-only; -lrt is for shm_open on older glibc.
g++ -O2 -std=c++17 -pthread -o "$here/target/boost_heap_bench" "$here/bench.cpp" -lrt
echo "$here/target/boost_heap_bench"
