#!/usr/bin/env bash
# Export throughput: a local 3-node cluster (RF 3, QUORUM, buffered), N events
# written through the batch API, then `alldata export` of everything,
# cluster-wide and local, as NDJSON and Parquet. Prints the CLI's summary
# lines (events, bytes, seconds, events/s, MiB/s).
#   scripts/bench-export.sh [EVENTS] [EVENT_BYTES]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-100000}
size=${2:-256}
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p alldata-cli
bin="$target/release/alldata"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
echo bench-export-secret >"$work/secret"
base=$((21000 + RANDOM % 2000))
for i in 1 2 3; do
    peers=()
    for j in 1 2 3; do
        [ "$i" = "$j" ] || peers+=(--peer "n$j=127.0.0.1:$((base + 100 + j))@eu/z$j")
    done
    RUST_LOG=warn "$bin" node --id "n$i" --listen "127.0.0.1:$((base + i))" \
        --peer-listen "127.0.0.1:$((base + 100 + i))" --data-dir "$work/n$i" \
        --region eu --zone "z$i" "${peers[@]}" --replication-factor 3 \
        --durability buffered --cluster-secret-file "$work/secret" >/dev/null &
    pids+=($!)
done
for i in 1 2 3; do
    until curl -sf "http://127.0.0.1:$((base + i))/health" >/dev/null; do sleep 0.1; done
done
# Random hex padding, so that Parquet's compression does not flatter it.
python3 - "$events" "$size" >"$work/batch.ndjson" <<'PY'
import random, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(14)
for i in range(n):
    print('{"i":%d,"pad":"%s"}' % (i, "%0*x" % (size, rng.getrandbits(4 * size))))
PY
split -l 5000 "$work/batch.ndjson" "$work/part."
for f in "$work"/part.*; do
    curl -sf -X POST --data-binary @"$f" "http://127.0.0.1:$((base + 1))/events/batch" >/dev/null
done
echo "$events events of about $((size + 16)) bytes written; exports from n1 (3 rounds):"
# n1's anonymous (heap) memory is sampled every 50 ms during the exports:
# what they add on the node that merges them. (File-backed pages of LevelDB's
# memory-mapped tables also count in RSS, so RSS alone would overstate it.)
grep -E 'RssAnon|RssFile' "/proc/${pids[0]}/status" | sed 's/^/n1 before the exports: /'
(
    peak=0
    while kill -0 "${pids[0]}" 2>/dev/null && [ ! -e "$work/done" ]; do
        kb=$(awk '/RssAnon/ {print $2}' "/proc/${pids[0]}/status" 2>/dev/null || echo 0)
        [ "${kb:-0}" -gt "$peak" ] && peak=$kb && echo "$peak" >"$work/peak"
        sleep 0.05
    done
) &
sampler=$!
for round in 1 2 3; do
for scope in cluster local; do
    for format in ndjson parquet; do
        printf '%-8s %-8s ' "$scope" "$format"
        "$bin" export --node "http://127.0.0.1:$((base + 1))" --scope "$scope" \
            --from 1970-01-01T00:00:00Z --to 2100-01-01T00:00:00Z \
            --format "$format" --out "$work/out.$format"
    done
done
done
touch "$work/done"
wait "$sampler" || true
ls -l "$work"/out.*
echo "n1 peak RssAnon during the exports: $(cat "$work/peak") kB"
grep -E 'RssAnon|RssFile' "/proc/${pids[0]}/status" | sed 's/^/n1 after the exports: /'
