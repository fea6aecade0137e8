#!/usr/bin/env bash
# Meta service benchmarks, run side by side in one go (release build, fsync
# on, node and load tool on this machine):
#
#   1. create-session throughput and latency: 1 data group vs 4 data groups,
#      heartbeat 100 ms vs 10 ms, one `tidemq-meta` node each;
#   2. idle cost of Raft groups: CPU time a 3-node cluster burns in 10 s
#      with nothing to do, for 1 vs 4 data groups and heartbeat 100 vs 10 ms.
#
# Usage: benches/meta-bench.sh [SECONDS] [CONCURRENCY]   (default 60 3000)
# Needs: cargo build --release --workspace --bins --examples (done here).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_system_deps

seconds="${1:-60}"
concurrency="${2:-3000}"
# BIN_DIR: use binaries already built (e.g. copies kept aside) instead.
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release --workspace --bins --examples >&2
fi
bin="${BIN_DIR:-$CARGO_TARGET_DIR/release}"
work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # log file
    for _ in $(seq 1 300); do
        grep -q "serving gRPC" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "node did not start: $(cat "$1")" >&2
    return 1
}

# CPU seconds (user + system) a process has used.
cpu_secs() {
    awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"
}

echo "## create-session: ${seconds}s, concurrency ${concurrency}, one node, fsync on"
echo
echo "| data groups | heartbeat | ops/s | p50 ms | p95 ms | p99 ms | p99.9 ms | errors | timeouts |"
echo "|---|---|---|---|---|---|---|---|---|"
for case in "1 100" "4 100" "1 10" "4 10"; do
    read -r groups hb <<<"$case"
    port="$(free_port)"
    dir="$work/single-$groups-$hb"
    "$bin/tidemq-meta" --grpc-addr "127.0.0.1:$port" --data-dir "$dir" \
        --data-groups "$groups" --heartbeat-ms "$hb" \
        --election-timeout-ms "$((hb * 10))-$((hb * 20))" >"$dir.log" 2>&1 &
    pid=$!
    pids+=("$pid")
    wait_ready "$dir.log"
    "$bin/tidemq-bench" meta create-session --port "$port" --duration-secs "$seconds" \
        --concurrency "$concurrency" --timeout-ms 3000 --output json >"$dir.json"
    python3 - "$dir.json" "$groups" "$hb" <<'EOF'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
r = lines[-1]["report"]
print(f"| {sys.argv[2]} | {sys.argv[3]} ms | {r['avg_ops_per_sec']:,.0f} | "
      f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | "
      f"{r['p999_ms']:.2f} | {r['errors']} | {r['timeouts']} |")
EOF
    kill -9 "$pid"
    wait "$pid" 2>/dev/null || true
done

echo
echo "## idle cost: 3-node cluster, 10 s with no requests"
echo
echo "| data groups | heartbeat | CPU s per node (10 s) | CPU % of one core |"
echo "|---|---|---|---|"
for case in "1 100" "4 100" "1 10" "4 10"; do
    read -r groups hb <<<"$case"
    ports=("$(free_port)" "$(free_port)" "$(free_port)")
    peers=()
    for i in 0 1 2; do peers+=("--peer" "$((i + 1))=127.0.0.1:${ports[$i]}"); done
    node_pids=()
    for i in 0 1 2; do
        dir="$work/idle-$groups-$hb-$i"
        "$bin/tidemq-meta" --node-id "$((i + 1))" --grpc-addr "127.0.0.1:${ports[$i]}" \
            --data-dir "$dir" "${peers[@]}" --data-groups "$groups" --heartbeat-ms "$hb" \
            --election-timeout-ms "$((hb * 10))-$((hb * 20))" >"$dir.log" 2>&1 &
        node_pids+=($!)
        pids+=($!)
    done
    for i in 0 1 2; do wait_ready "$work/idle-$groups-$hb-$i.log"; done
    sleep 5 # elections settle
    before="$(for pid in "${node_pids[@]}"; do cpu_secs "$pid"; done | awk '{ s += $1 } END { print s }')"
    sleep 10
    after="$(for pid in "${node_pids[@]}"; do cpu_secs "$pid"; done | awk '{ s += $1 } END { print s }')"
    awk -v g="$groups" -v hb="$hb" -v b="$before" -v a="$after" \
        'BEGIN { n = (a - b) / 3; printf "| %s | %s ms | %.3f | %.1f %% |\n", g, hb, n, n * 10 }'
    for pid in "${node_pids[@]}"; do kill -9 "$pid"; wait "$pid" 2>/dev/null || true; done
done
