#!/usr/bin/env bash
# Runs a TideMQ node: the `tidemq` binary in release mode. With no
# arguments it serves MQTT 3.1/3.1.1/5.0 on 127.0.0.1:1883 (anonymous
# clients allowed on loopback only). Extra arguments go to tidemq
# (`--config config/tidemq.toml`, `--bind`, `--password-file`, `--acl-file`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_system_deps

exec cargo run --release -p tidemq-broker --bin tidemq -- "$@"
