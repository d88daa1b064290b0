#!/usr/bin/env bash
# Regenerates docs/BENCHMARKS.md (and docs/bench/results.json, the PNG plot and
# docs/bench/micro.txt):
#   1. builds the release binary,
#   2. runs the criterion micro-benchmarks (keygen, coordinator) and the storage
#      benchmark, keeping their result lines in docs/bench/micro.txt,
#   3. runs `alldata bench --matrix --repeat 3` (about 13 minutes: three rounds
#      of 64 runs of 1 s warm-up + 3 s measurement, each on a fresh 3-node
#      cluster on 127.0.0.1; each cell reports its median run).
# The hand-written analysis lives in docs/bench/analysis.md and is included.
#
# Environment: DURATION (measured seconds per run, default 3), WARMUP (default 1),
# REPEAT (rounds, default 3),
# SKIP_MICRO=1 (keep the existing docs/bench/micro.txt), CARGO_TARGET_DIR.
# Extra arguments go to `alldata bench --matrix` (e.g. --client-threads 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
# The plot's labels need a TrueType font.
if [ ! -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && command -v apt-get >/dev/null; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get install -y -qq fonts-dejavu-core >/dev/null || echo "fonts-dejavu-core not installed; the plot will fail" >&2
fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p alldata-cli --bin alldata
mkdir -p docs/bench

if [ "${SKIP_MICRO:-0}" != 1 ]; then
    echo "micro-benchmarks -> docs/bench/micro.txt" >&2
    tmp="$(mktemp)"
    {
        for p in alldata-keygen alldata-coordinator; do
            # Keep the benchmark names and their time/throughput lines.
            cargo bench -q -p "$p" -- --warm-up-time 1 --measurement-time 3 2>/dev/null |
                grep -Ev '^(Found |  [0-9]+ \(|Benchmarking|$)|change:|%|No change|Change within|Performance has' || true
        done
        echo
        ALLDATA_BENCH_PUTS="${STORAGE_PUTS:-10000}" ALLDATA_BENCH_SCAN_EVENTS="${STORAGE_SCAN_EVENTS:-200000}" \
            cargo bench -q -p alldata-storage-leveldb 2>/dev/null || echo "(storage benchmark failed)"
    } >"$tmp"
    mv "$tmp" docs/bench/micro.txt
fi

exec "$target/release/alldata" bench --matrix \
    --duration-secs "${DURATION:-3}" --warmup-secs "${WARMUP:-1}" --repeat "${REPEAT:-3}" \
    --docs-dir docs "$@"
