#!/usr/bin/env bash
# One meta create-session run as a single process tree, for timing whole
# runs against each other (e.g. 1 vs 4 data groups, A B A B ...): starts a
# release `tidemq-meta` node with fsync on, creates COUNT sessions with
# CONCURRENCY clients, prints the load's JSON report, stops.
#
# Usage: benches/meta-run.sh DATA_GROUPS [COUNT] [CONCURRENCY] [HEARTBEAT_MS]
#        (defaults: 300000 3000 100). BIN_DIR: the release binaries.
#        BENCH_ARGS: more flags for the load, e.g. "--duration-secs 60
#        --rate 50000" (open loop; the run ends at the count or the
#        duration, whichever comes first) or "--no-coalesce".
set -euo pipefail
cd "$(dirname "$0")/.."
groups="$1"
count="${2:-300000}"
concurrency="${3:-3000}"
hb="${4:-100}"
bin="${BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/tidemq-target}/release}"
work="$(mktemp -d)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$bin/tidemq-meta" --grpc-addr "127.0.0.1:$port" --data-dir "$work/node" \
    --data-groups "$groups" --heartbeat-ms "$hb" \
    --election-timeout-ms "$((hb * 10))-$((hb * 20))" >"$work/node.log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do
    grep -q "serving gRPC" "$work/node.log" 2>/dev/null && break
    sleep 0.05
done
"$bin/tidemq-bench" meta create-session --port "$port" --count "$count" \
    --concurrency "$concurrency" --timeout-ms 3000 --output json ${BENCH_ARGS:-} | tail -n 1
