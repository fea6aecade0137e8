#!/usr/bin/env bash
# CPU per QoS 1 message of one node, persistent or clean subscribers, with
# the load tool's own CPU beside it (issue 12). On this shared 2-core
# machine the rate drifts ±25 % from run to run, and so does the CPU each
# message costs, the load tool's as much as the node's; the node's CPU
# over the tool's (norm) stays within a few per cent, so it is what tells
# two binaries apart.
#
# One run: PAIRS publishers on bench/%i (INFLIGHT unacknowledged each),
# each with its own QoS 1 subscriber, SECS seconds, storage.sync = always,
# a fresh node and data directory. PERF=1 also records the node with
# `perf record` (PERF_ARGS, e.g. "--call-graph dwarf,32768") for
# PERF_SECS seconds into OUT.data.
#
# Usage: benches/durable-cpu.sh persistent|clean [OUT]
#   BIN_DIR [target/release]: tidemq and tidemq-bench; NODE_ENV: more
#   VAR=VALUE words for the node's environment; PAIRS [100], INFLIGHT [10],
#   SECS [12].
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
mode=$1 out=${2:-/tmp/durable-cpu}
bin=${BIN_DIR:-$CARGO_TARGET_DIR/release}
pairs=${PAIRS:-100} inflight=${INFLIGHT:-10} secs=${SECS:-12}
work=$(mktemp -d /tmp/durable-cpu.XXXXXX)
pids=()
trap 'kill -9 "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
report() { jq -rs --arg f "$2" '[.[] | select(.report)] | last | .report[$f]' "$1"; }

env RUST_LOG=warn TIDEMQ_LISTENER__BIND="127.0.0.1:$port" TIDEMQ_META__GRPC_ADDR=127.0.0.1:0 \
    TIDEMQ_HTTP__BIND=127.0.0.1:0 TIDEMQ_STORAGE__SYNC=always \
    TIDEMQ_SESSION__MAX_QUEUED_MESSAGES=100000 ${NODE_ENV:-} \
    "$bin/tidemq" --data-dir "$work/data" >"$work/node.log" 2>&1 &
node=$!
pids+=("$node")
for _ in $(seq 100); do grep -q "tidemq ready" "$work/node.log" && break; sleep 0.1; done
persistent=()
[ "$mode" = persistent ] && persistent=(--persistent)
"$bin/tidemq-bench" mqtt sub --port "$port" --client-prefix s --count "$pairs" --topic 'bench/%i' \
    --qos 1 "${persistent[@]}" --duration-secs $((secs * 5)) --idle-secs 2 --output json \
    >"$work/sub.json" 2>"$work/sub.err" &
sub=$!
pids+=("$sub")
for _ in $(seq 300); do grep -q '^ready:' "$work/sub.err" && break; sleep 0.1; done
node_before=$(ticks "$node") sub_before=$(ticks "$sub")
/usr/bin/time -f '%U %S' -o "$work/pub.time" "$bin/tidemq-bench" mqtt pub --port "$port" \
    --client-prefix p --count "$pairs" --topic 'bench/%i' --qos 1 --inflight "$inflight" \
    --duration-secs "$secs" --output json >"$work/pub.json" 2>"$work/pub.err" &
pub=$!
if [ -n "${PERF:-}" ]; then
    sleep 2
    # shellcheck disable=SC2086
    perf record -F 499 ${PERF_ARGS:-} -p "$node" -o "$out.data" -- sleep "${PERF_SECS:-8}" \
        >/dev/null 2>&1
fi
wait "$pub"
node_after=$(ticks "$node") sub_after=$(ticks "$sub")
wait "$sub" || true
acked=$(report "$work/pub.json" success)
hz=$(getconf CLK_TCK)
awk -v mode="$mode" -v acked="$acked" -v hz="$hz" \
    -v rate="$(report "$work/pub.json" avg_ops_per_sec)" \
    -v recv="$(report "$work/sub.json" avg_ops_per_sec)" \
    -v node=$((node_after - node_before)) -v subt=$((sub_after - sub_before)) \
    -v pubtime="$(cat "$work/pub.time")" 'BEGIN {
        split(pubtime, t, " ")
        n = 1e6 * node / hz / acked; s = 1e6 * subt / hz / acked; p = 1e6 * (t[1] + t[2]) / acked
        printf "%s: acked %.0f/s, received %.0f/s, node %.2f µs/msg, load tool %.2f µs/msg, norm %.2f\n",
            mode, rate, recv, n, s + p, n / (s + p)
    }'
