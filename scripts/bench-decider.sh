#!/usr/bin/env bash
# What the decider (write-once across the cluster) costs on the hot path,
# measured in one binary so that nothing else differs:
#   1. builds `alldata` with the coordinator's `bench-no-decider` feature
#      (into target/bench-decider; never use that binary to store data),
#   2. runs `alldata bench` (3 nodes, RF 3, QUORUM, single events) ROUNDS
#      times each way, interleaved: ALLDATA_BENCH_NO_DECIDER=0 (the decider as
#      shipped: appends take the fast path, the answer waits for the decider's
#      copy, the guard checks every local write) and =1 (no decider: an
#      append answers at any quorum, the guard passes every write), each run
#      on a fresh cluster,
#   3. prints every run, the two medians and their ratio.
# Environment: ROUNDS (default 5), DURABILITY (buffered|sync, default
# buffered), CONCURRENCY (default 64), DURATION (measured seconds, default 4),
# WARMUP (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
rounds="${ROUNDS:-5}"
target=target/bench-decider
cargo build -q --release -p alldata-cli --bin alldata \
    --features alldata-coordinator/bench-no-decider --target-dir "$target"
bin="$target/release/alldata"
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT

run() { # ALLDATA_BENCH_NO_DECIDER value; prints events/s
    local line
    line=$(ALLDATA_BENCH_NO_DECIDER="$1" "$bin" bench --nodes 3 --rf 3 --commit quorum \
        --durability "${DURABILITY:-buffered}" --batch 1 --concurrency "${CONCURRENCY:-64}" \
        --duration-secs "${DURATION:-4}" --warmup-secs "${WARMUP:-1}" --no-baselines \
        --data-dir "$data" 2>&1 | grep -E '^  alldata RF3' | tail -1)
    if [ -z "$line" ]; then
        echo "bench run failed (ALLDATA_BENCH_NO_DECIDER=$1)" >&2
        exit 1
    fi
    echo "$line" >&2
    awk '{for (i = 1; i < NF; i++) if ($(i + 1) == "events/s") print $i}' <<<"$line"
}

median() { sort -n | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

with=() without=()
for r in $(seq 1 "$rounds"); do
    echo "round $r of $rounds" >&2
    with+=("$(run 0)")
    without+=("$(run 1)")
done
m_with=$(printf '%s\n' "${with[@]}" | median)
m_without=$(printf '%s\n' "${without[@]}" | median)
echo "durability ${DURABILITY:-buffered}, concurrency ${CONCURRENCY:-64}, $rounds rounds:"
echo "  with the decider:    median $m_with events/s (${with[*]})"
echo "  without the decider: median $m_without events/s (${without[*]})"
awk -v a="$m_with" -v b="$m_without" 'BEGIN {printf "  ratio: %.3f (%+.1f %%)\n", a / b, (a / b - 1) * 100}'
