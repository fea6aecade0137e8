#!/usr/bin/env bash
# Runs a TideMQ node: the `tidemq` binary in release mode. With no
# arguments it serves MQTT 3.1/3.1.1/5.0 on 127.0.0.1:1883 (anonymous
# clients allowed on loopback only), the meta service's gRPC on
# 127.0.0.1:1228 and /metrics, /health on 127.0.0.1:9090. Extra arguments go to tidemq
# (`--config config/tidemq.toml`, `--bind`, `--data-dir`, `--http-bind`,
# `--meta-grpc-addr`, `--password-file`, `--acl-file`). Data goes to ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_system_deps

exec cargo run --release -p tidemq-broker --bin tidemq -- "$@"
