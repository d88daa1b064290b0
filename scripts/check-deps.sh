#!/usr/bin/env bash
# Checks the dependency arrows that must never exist (see README, "Crates"):
#   the coordinator on any I/O crate, the peer client on the peer server (or
#   axum), the client API on the peer client, the coordinator and the
#   membership crate on each other, and a facade without default features
#   pulling anything but keygen and the coordinator.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0

# `cargo tree -e normal -p P -i X` prints the paths by which P's normal
# (non-dev) dependencies reach X: nothing, or "did not match any packages"
# when X is not in P's graph at all, is the passing case.
absent() { # package, forbidden dependency
    local out
    if ! out=$(cargo tree -q -e normal -p "$1" -i "$2" 2>&1); then
        if grep -q "did not match any packages" <<<"$out"; then
            echo "ok: $1 does not depend on $2"
        else
            echo "cargo tree failed for $1 -i $2: $out" >&2
            fail=1
        fi
    elif [ -n "$out" ]; then
        echo "FORBIDDEN: $1 depends on $2:" >&2
        echo "$out" >&2
        fail=1
    else
        echo "ok: $1 does not depend on $2"
    fi
}

for io in axum hyper leveldb-rs-binding alldata-peer-wire alldata-storage-leveldb; do
    absent alldata-coordinator "$io"
done
absent alldata-peer-client-http axum
absent alldata-peer-client-http alldata-peer-server-http
absent alldata-peer-server-http alldata-peer-client-http
absent alldata-server-http alldata-peer-client-http
absent alldata-server-http alldata-peer-wire
absent alldata-storage-leveldb hyper
absent alldata-coordinator alldata-membership
absent alldata-membership alldata-coordinator
absent alldata-membership hyper

# The facade without default features: keygen and the coordinator only.
direct=$(cargo tree -q -e normal -p alldata --no-default-features --depth 1 --prefix none |
    tail -n +2 | awk '{print $1}' | sort | paste -sd' ')
if [ "$direct" != "alldata-coordinator alldata-keygen" ]; then
    echo "FORBIDDEN: alldata --no-default-features depends on: $direct" >&2
    fail=1
else
    echo "ok: alldata --no-default-features depends on $direct"
fi
for io in axum hyper leveldb-rs-binding; do
    out=$(cargo tree -q -e normal -p alldata --no-default-features -i "$io" 2>/dev/null || true)
    if [ -n "$out" ]; then
        echo "FORBIDDEN: alldata --no-default-features pulls $io:" >&2
        echo "$out" >&2
        fail=1
    else
        echo "ok: alldata --no-default-features does not pull $io"
    fi
done
exit "$fail"
