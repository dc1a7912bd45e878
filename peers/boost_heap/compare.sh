#!/usr/bin/env bash
# Side-by-side, same run: Boost.Interprocess managed_shared_memory vs shmkit's heap
# (and glibc malloc as the in-process reference), alloc+free pairs at 16 B, 256 B,
# 4 KiB and 64 KiB, in 1 thread, 2 threads and 2 processes. Alternates A B A B
# (ROUNDS times, default 2) and prints the median of each case's medians, with
# throughput ratios: shmkit/boost (goal >= 5) and shmkit/malloc (goal >= 0.5).
#
#   bash peers/boost_heap/compare.sh [--batches N]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rounds="${ROUNDS:-2}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

bash "$here/build.sh" >&2
(cd "$here/.." && cargo build --release --bin heap_pairs >&2)
boost="$here/target/boost_heap_bench"
ours="$here/../target/release/heap_pairs"

for r in $(seq "$rounds"); do
  echo "round $r: boost" >&2
  "$boost" "$@" >>"$out/results" 2>/dev/null
  echo "round $r: shmkit + malloc" >&2
  "$ours" "$@" >>"$out/results" 2>/dev/null
done

python3 - "$out/results" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) size=(\d+) mode=(\S+) ns_per_pair=([\d.]+)", line)
    if m:
        runs.setdefault((m[1], int(m[2]), m[3]), []).append(float(m[4]))
med = {k: statistics.median(v) for k, v in runs.items()}
print(f"{'size':>6} {'mode':>4} {'shmkit ns':>10} {'boost ns':>9} {'malloc ns':>10} {'x boost':>8} {'x malloc':>9}")
for size in sorted({k[1] for k in med}):
    for mode in ("1t", "2t", "2p"):
        s = med.get(("shmkit", size, mode))
        if s is None:
            continue
        b = med.get(("boost_ipc", size, mode))
        m = med.get(("malloc", size, mode))
        xb = f"{b / s:8.1f}" if b else f"{'-':>8}"
        xm = f"{m / s:9.2f}" if m else f"{'-':>9}"
        bs = f"{b:9.1f}" if b else f"{'-':>9}"
        ms = f"{m:10.1f}" if m else f"{'-':>10}"
        print(f"{size:>6} {mode:>4} {s:10.1f} {bs} {ms} {xb} {xm}")
print("(ns per pair per worker, median over rounds; x = throughput ratio shmkit / peer)")
PY
