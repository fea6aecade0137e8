#!/usr/bin/env bash
# Retained QoS 1 publishes on one node, two `tidemq` binaries side by side
# (e.g. before and after a change to the retained path), alternating by
# round, each run on a fresh data directory:
#
#   benches/retained-bench.sh OLD_TIDEMQ NEW_TIDEMQ [ROUNDS]
#
# COUNT publishers [10], each on its own topic (bench/%i), every message
# retained (each replaces its topic's retained message), INFLIGHT
# unacknowledged each [10], SECS seconds [10], 64-byte payloads. Prints the
# load tool's total and latency (PUBLISH to PUBACK) per run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
need_tools timeout
old="$1"; new="$2"; rounds="${3:-2}"
bench="${BENCH:-$CARGO_TARGET_DIR/release/tidemq-bench}"
port="${PORT:-18841}"
data="$(mktemp -d)"
trap 'rm -rf "$data"' EXIT

run() { # label binary
    rm -rf "$data/node"; mkdir -p "$data/node"
    TIDEMQ_META__GRPC_ADDR=127.0.0.1:0 TIDEMQ_HTTP__BIND=127.0.0.1:0 \
        "$2" --bind "127.0.0.1:$port" --data-dir "$data/node" >"$data/node.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    sleep 1
    local out
    out=$("$bench" mqtt pub --port "$port" --count "${COUNT:-10}" --qos 1 --retain \
        --inflight "${INFLIGHT:-10}" --duration-secs "${SECS:-10}" --payload-size 64 2>/dev/null |
        tail -3 | tr '\n' ' ')
    echo "$1 $out"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq "$rounds"); do
    if [ $((round % 2)) = 1 ]; then run old "$old"; run new "$new"; else run new "$new"; run old "$old"; fi
done
