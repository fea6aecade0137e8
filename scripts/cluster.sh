#!/usr/bin/env bash
# Starts a 3-node TideMQ cluster on this machine for trying it out: three
# `tidemq` processes, each with its own MQTT, gRPC and HTTP ports and data
# directory, whose meta services form one Raft cluster (node 1 initializes
# it on first start). Waits until every node's /health is 200, prints the
# nodes' addresses, and stops them all on Ctrl-C.
#
#   scripts/cluster.sh              # data under ./data/cluster/node{1,2,3}
#   DATA=/tmp/tidemq-cluster scripts/cluster.sh
#
# Node N serves MQTT on 127.0.0.1:188N, gRPC on 127.0.0.1:122N and HTTP on
# 127.0.0.1:909N. A message published on any node reaches the subscribers
# on every node; what a cluster shares today, and what it does not yet:
# docs/cluster.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_system_deps
data=${DATA:-./data/cluster}
cargo build --release -q -p tidemq-broker --bin tidemq
bin="$CARGO_TARGET_DIR/release/tidemq"

peers='["1=127.0.0.1:1221", "2=127.0.0.1:1222", "3=127.0.0.1:1223"]'
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop EXIT
trap 'exit 130' INT TERM

for n in 1 2 3; do
    mkdir -p "$data/node$n"
    TIDEMQ_META__NODE_ID=$n TIDEMQ_META__PEERS="$peers" \
        "$bin" --data-dir "$data/node$n" --bind "127.0.0.1:188$n" \
        --meta-grpc-addr "127.0.0.1:122$n" --http-bind "127.0.0.1:909$n" \
        >"$data/node$n/log" 2>&1 &
    pids+=($!)
done

healthy() { curl -sf "http://127.0.0.1:909$1/health" >/dev/null; }
for _ in $(seq 300); do
    if healthy 1 && healthy 2 && healthy 3; then
        for n in 1 2 3; do
            echo "node $n: mqtt 127.0.0.1:188$n, grpc 127.0.0.1:122$n, http://127.0.0.1:909$n/health, log $data/node$n/log"
        done
        echo "cluster ready; Ctrl-C stops it"
        wait
        exit 0
    fi
    for i in 0 1 2; do
        kill -0 "${pids[$i]}" 2>/dev/null || {
            echo "node $((i + 1)) exited; see $data/node$((i + 1))/log" >&2
            exit 1
        }
    done
    sleep 0.1
done
echo "the cluster did not become healthy in 30 s; logs in $data/node*/log" >&2
exit 1
