#!/usr/bin/env bash
# Runs a TideMQ node. Until the broker lands, a node is the embedded storage
# engine: this runs its embedding example against ./data/embed, which writes,
# reads back, reopens and verifies. Extra arguments go to the program.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_system_deps

exec cargo run --release -p tidemq-examples --example embed_storage -- "$@"
