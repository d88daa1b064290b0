#!/usr/bin/env bash
# Quick start, command 1: a local multi-zone cluster doing real work.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
exec cargo run --release --example cluster -- "$@"
