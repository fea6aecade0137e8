#!/usr/bin/env bash
# Runs the whole test suite: every crate's unit, integration and doc tests.
# Installs missing system packages first. Extra arguments go to the runner.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_system_deps

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
    cargo test --workspace --all-targets --no-fail-fast "$@"
fi
cargo test --workspace --doc
