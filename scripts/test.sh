#!/usr/bin/env bash
# Quick start, command 2: every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
exec cargo test --workspace "$@"
