#!/usr/bin/env bash
# Cross-node throughput and latency of a 3-node cluster against one node
# (issue 15), on release binaries, every process on this machine. For each
# QoS (0 and 1) and each shape, on fresh nodes and data directories:
#
#   single   one node; publishers and subscribers on it;
#   cluster  three nodes forming one cluster (three processes); the
#            publishers on node 1, the subscribers on node 2, so every
#            message crosses a link (node 3 is the third Raft voter).
#
# PAIRS publishers on bench/%i, each with its own subscriber (clean
# sessions, QoS as the run's), SECS seconds; QoS 0 publishers send RATE
# messages/s each, QoS 1 keep INFLIGHT unacknowledged. storage.sync =
# always, as everywhere in docs/benchmarks.md. Latency is publish-to-
# delivery, measured by the subscribers (one clock: one machine).
#
# Prints a markdown row per run: received messages/s, latency quantiles,
# the publishers' acknowledged rate (QoS 1), and the nodes' CPU seconds.
#
# MODE=subscribe: the subscribe rate instead. SUBSCRIBERS clients each
#   subscribe to FILTERS filters of their own, one SUBSCRIBE after the
#   other (100,000 by default: 1,000 x 100), on one node, or on node 2 of
#   the cluster, where every new filter is a route written through Raft
#   and each SUBACK waits until the other nodes applied it. Prints the
#   SUBACK rate and latency and the route count node 1 then holds.
# MODE=kill: KILL_AT [5] seconds into SECS seconds of QoS 1 between the
#   other two nodes (publishers on the lower id, subscribers on the
#   higher), node KILL [3] is SIGKILLed (node 1 leads every Raft group of a
#   fresh cluster). Prints the subscribers' rate and latency per second,
#   and which Raft groups the killed node led.
# MODE=handoff: SESSIONS [100] persistent QoS 1 sessions parked on node 2;
#   PUBLISHERS [10] on node 1 (INFLIGHT [100] each) send MESSAGES [1000]
#   to each session twice: with node 2 up (stored on its disk through the
#   link), then with node 2 SIGKILLed (kept in node 1's hand-off log).
#   Node 2 is restarted and the time until node 1's hand-off log for it is
#   drained gives the replay rate.
# MODE=takeover: SESSIONS [1000] persistent QoS 1 sessions parked on node
#   2, MESSAGES [10] each published to them on node 1, then the sessions
#   come back (CONCURRENCY [100] at a time): once on node 2 (a local
#   resume), once, for a second set, on node 3 (each CONNECT a takeover
#   from node 2). Prints CONNECT-to-CONNACK (session present) and
#   CONNECT-to-last-message quantiles of both, and the takeover counters.
#   Then CONNS [2000] clean connections (same concurrency) on node 3 of
#   the cluster and on one node alone: what the meta read a CONNECT of an
#   unknown client id costs in a cluster.
#
# Usage: benches/cluster-bench.sh [ROUNDS]   (ROUNDS [1]: repeats of the
#   whole single/cluster sequence, alternating, in one sitting)
# Sizes: PAIRS [50], SECS [10], RATE [2000], INFLIGHT [10], PAYLOAD [64].
# BIN_DIR: use binaries already built (tidemq, tidemq-bench). KEEP=1 keeps
#   the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
need_tools jq curl python3
rounds=${1:-1}
PAIRS=${PAIRS:-50} SECS=${SECS:-10} RATE=${RATE:-2000} INFLIGHT=${INFLIGHT:-10} PAYLOAD=${PAYLOAD:-64}
if [ -z "${BIN_DIR:-}" ]; then
    cargo build --release -q -p tidemq-broker -p tidemq-bench --bins
fi
bin=${BIN_DIR:-$CARGO_TARGET_DIR/release}
work=$(mktemp -d /tmp/cluster-bench.XXXXXX)
source benches/node-lib.sh

# start_nodes N: N nodes (one cluster when N > 1) under $work/run; sets
# mqtt_ports and node_pids once every node's /health is 200.
start_nodes() {
    local n=$1 i
    rm -rf "$work/run"
    mqtt_ports=() node_pids=() http_ports=() grpc_ports=() peers=""
    for i in $(seq "$n"); do
        mqtt_ports+=("$(free_port)") grpc_ports+=("$(free_port)") http_ports+=("$(free_port)")
        peers+="${peers:+, }\"$i=127.0.0.1:${grpc_ports[$((i - 1))]}\""
    done
    for i in $(seq "$n"); do launch "$i"; done
    for i in $(seq "$n"); do healthy "$i"; done
}

# launch I: starts node I (from 1) of the current nodes on its ports and
# data directory (again, after a kill).
launch() {
    local i=$1 cluster_env=()
    [ "${#mqtt_ports[@]}" -gt 1 ] && cluster_env=(TIDEMQ_META__NODE_ID="$i" TIDEMQ_META__PEERS="[$peers]")
    mkdir -p "$work/run/node$i"
    env RUST_LOG=warn TIDEMQ_STORAGE__SYNC=always "${cluster_env[@]}" \
        "$bin/tidemq" --data-dir "$work/run/node$i" \
        --bind "127.0.0.1:${mqtt_ports[$((i - 1))]}" \
        --meta-grpc-addr "127.0.0.1:${grpc_ports[$((i - 1))]}" \
        --http-bind "127.0.0.1:${http_ports[$((i - 1))]}" >>"$work/run/node$i/log" 2>&1 &
    node_pids[$((i - 1))]=$!
    pids+=($!)
}

# healthy I: waits until node I's /health is 200.
healthy() {
    local i=$1 tries=0
    until curl -sf "http://127.0.0.1:${http_ports[$((i - 1))]}/health" >/dev/null; do
        tries=$((tries + 1))
        [ "$tries" -lt 600 ] || { echo "node $i not healthy; see $work/run/node$i/log" >&2; exit 1; }
        sleep 0.1
    done
}

stop_nodes() {
    for pid in "${node_pids[@]}"; do
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

nodes_cpu() {
    local total=0 pid
    for pid in "${node_pids[@]}"; do total=$(awk -v a="$total" -v b="$(cpu_secs "$pid")" 'BEGIN { print a + b }'); done
    echo "$total"
}

# run SHAPE QOS: one measured run; prints its row.
run() {
    local shape=$1 qos=$2
    if [ "$shape" = single ]; then start_nodes 1; else start_nodes 3; fi
    local pub_port=${mqtt_ports[0]} sub_port=${mqtt_ports[0]}
    [ "$shape" = cluster ] && sub_port=${mqtt_ports[1]}
    bench sub --port "$sub_port" --client-prefix s --count "$PAIRS" --topic 'bench/%i' --qos "$qos" \
        --duration-secs $((SECS + 30)) --idle-secs 2 >"$work/sub.json" 2>"$work/sub.err" &
    local sub=$!
    pids+=("$sub")
    for _ in $(seq 300); do grep -q '^ready:' "$work/sub.err" && break; sleep 0.1; done
    local before
    before=$(nodes_cpu)
    local load=(--rate-per-client "$RATE")
    [ "$qos" = 1 ] && load=(--inflight "$INFLIGHT")
    bench pub --port "$pub_port" --client-prefix p --count "$PAIRS" --topic 'bench/%i' --qos "$qos" \
        --payload-size "$PAYLOAD" --duration-secs "$SECS" "${load[@]}" >"$work/pub.json" 2>"$work/pub.err"
    local cpu
    cpu=$(awk -v a="$before" -v b="$(nodes_cpu)" 'BEGIN { printf "%.1f", b - a }')
    wait "$sub" || true
    local acked="-"
    [ "$qos" = 1 ] && acked=$(printf '%.0f' "$(field "$work/pub.json" report avg_ops_per_sec)")
    printf '| %s | %s | %.0f | %s | %s | %s | %s | %s | %s |\n' "$shape" "$qos" \
        "$(field "$work/sub.json" report avg_ops_per_sec)" \
        "$(field "$work/sub.json" report p50_us)" "$(field "$work/sub.json" report p99_us)" \
        "$(field "$work/sub.json" report p999_us)" "$(field "$work/sub.json" report max_us)" \
        "$acked" "$cpu"
    stop_nodes
}

# subscribe SHAPE: one subscribe-rate run; prints its row. The route count
# is read on node 1 once every SUBACK is in, the subscribers still there.
subscribe() {
    local shape=$1 sub_port
    if [ "$shape" = single ]; then start_nodes 1; sub_port=${mqtt_ports[0]}; else start_nodes 3; sub_port=${mqtt_ports[1]}; fi
    bench sub --port "$sub_port" --client-prefix s --count "${SUBSCRIBERS:-1000}" --topic 'sub/%i' \
        --filters-per-client "${FILTERS:-100}" --duration-secs 600 >/dev/null 2>"$work/sub.err" &
    local sub=$!
    pids+=("$sub")
    until grep -q '^ready:' "$work/sub.err"; do
        kill -0 "$sub" 2>/dev/null || { cat "$work/sub.err" >&2; exit 1; }
        sleep 0.1
    done
    local line routes
    line=$(grep '^subscribed:' "$work/sub.err" | sed 's/^subscribed: //')
    routes=$(curl -sf "http://$(node_http_of 0)/metrics" | awk '$1 == "tidemq_cluster_routes" { print $2 }')
    kill "$sub" 2>/dev/null || true
    wait "$sub" 2>/dev/null || true
    printf '| %s | %s | %s |\n' "$shape" "$line" "${routes:--}"
    stop_nodes
}

# kill: one run of MODE=kill.
kill_run() {
    start_nodes 3
    local victim=$((${KILL:-3} - 1)) others=() i led
    for i in 0 1 2; do [ "$i" = "$victim" ] || others+=("$i"); done
    led=$(curl -sf "http://$(node_http_of "$victim")/health" |
        jq -c --argjson id "$((victim + 1))" '[.leaders | to_entries[] | select(.value == $id) | .key]')
    bench sub --port "${mqtt_ports[${others[1]}]}" --client-prefix s --count "$PAIRS" --topic 'bench/%i' --qos 1 \
        --duration-secs $((SECS + 30)) --idle-secs 2 >"$work/sub.json" 2>"$work/sub.err" &
    local sub=$!
    pids+=("$sub")
    for _ in $(seq 300); do grep -q '^ready:' "$work/sub.err" && break; sleep 0.1; done
    (sleep "${KILL_AT:-5}"; kill -9 "${node_pids[$victim]}") &
    bench pub --port "${mqtt_ports[${others[0]}]}" --client-prefix p --count "$PAIRS" --topic 'bench/%i' --qos 1 \
        --payload-size "$PAYLOAD" --duration-secs "$SECS" --inflight "$INFLIGHT" >"$work/pub.json" 2>"$work/pub.err"
    wait "$sub" || true
    echo "publishers on node $((others[0] + 1)), subscribers on node $((others[1] + 1));" \
        "node $((victim + 1)) led groups $led, SIGKILLed at ${KILL_AT:-5} s"
    echo "| second | received msg/s | p50 µs | p99 µs |"
    echo "|---|---|---|---|"
    jq -r 'select(.sec != null) | "| \(.sec) | \(.ops_per_sec | floor) | \(.p50_us) | \(.p99_us) |"' "$work/sub.json"
    stop_nodes
}

node_http_of() { echo "127.0.0.1:${http_ports[$1]}"; }

# metric NODE SAMPLE: a sample of node NODE's /metrics (index from 0).
metric() {
    curl -sf "http://$(node_http_of "$1")/metrics" | awk -v s="$2" '$1 == s { print $2 }'
}

# handoff_run: one run of MODE=handoff.
handoff_run() {
    start_nodes 3
    local sessions=${SESSIONS:-100} messages=${MESSAGES:-1000} backlog="tidemq_cluster_handoff_backlog{peer=\"2\"}"
    local offline=(offline --sessions "$sessions" --topic-prefix handoff --publishers "${PUBLISHERS:-10}"
        --inflight "${INFLIGHT:-100}" --messages "$messages" --payload-size "$PAYLOAD")
    bench "${offline[@]}" --port "${mqtt_ports[1]}" --phases park --client-prefix s >/dev/null 2>"$work/park.err"
    until [ "$(metric 0 tidemq_cluster_routes)" = "$sessions" ]; do sleep 0.1; done
    # The same load with node 2 up (stored on its disk through the link),
    # then down (kept in node 1's hand-off log).
    bench "${offline[@]}" --port "${mqtt_ports[0]}" --phases publish --client-prefix up >"$work/up.json" 2>"$work/up.err"
    kill -9 "${node_pids[1]}"
    wait "${node_pids[1]}" 2>/dev/null || true
    bench "${offline[@]}" --port "${mqtt_ports[0]}" --phases publish --client-prefix down >"$work/down.json" 2>"$work/down.err"
    local kept started up_at drained_at
    kept=$(metric 0 "$backlog")
    started=$(date +%s.%N)
    launch 2
    healthy 2
    up_at=$(date +%s.%N)
    until [ "$(metric 0 "$backlog")" = 0 ]; do sleep 0.02; done
    drained_at=$(date +%s.%N)
    echo "| node 2 | acked msg/s | PUBACK p50 µs | p99 µs | failed |"
    echo "|---|---|---|---|---|"
    local f
    for f in up down; do
        printf '| %s | %.0f | %s | %s | %s |\n' "$f" "$(field "$work/$f.json" report avg_ops_per_sec)" \
            "$(field "$work/$f.json" report p50_us)" "$(field "$work/$f.json" report p99_us)" \
            "$(field "$work/$f.json" report failed)"
    done
    awk -v kept="$kept" -v s="$started" -v u="$up_at" -v d="$drained_at" 'BEGIN {
        printf "kept for node 2: %d messages; node 2 restarted and healthy in %.2f s;", kept, u - s
        printf " hand-off log drained %.2f s later (%.2f s after the restart): %.0f msg/s\n", d - u, d - s, kept / (d - u) }'
    stop_nodes
}

# takeover_run: one run of MODE=takeover.
takeover_run() {
    start_nodes 3
    local sessions=${SESSIONS:-1000} messages=${MESSAGES:-10} set to routes=0
    local common=(--sessions "$sessions" --messages "$messages" --payload-size "$PAYLOAD"
        --concurrency "${CONCURRENCY:-100}" --publishers 10 --inflight 100 --timeout-ms 30000)
    echo "| resumed on | CONNACK p50 µs | p99 µs | max µs | last message p50 µs | p99 µs | failed |"
    echo "|---|---|---|---|---|---|---|"
    for set in local moved; do
        to=1
        [ "$set" = moved ] && to=2
        bench offline "${common[@]}" --port "${mqtt_ports[1]}" --phases park \
            --client-prefix "$set" --topic-prefix "tk-$set" >/dev/null 2>>"$work/park.err"
        routes=$((routes + sessions))
        until [ "$(metric 0 tidemq_cluster_routes)" = "$routes" ]; do sleep 0.1; done
        bench offline "${common[@]}" --port "${mqtt_ports[0]}" --phases publish \
            --client-prefix "$set" --topic-prefix "tk-$set" >/dev/null 2>>"$work/publish.err"
        bench offline "${common[@]}" --port "${mqtt_ports[$to]}" --phases resume \
            --client-prefix "$set" --topic-prefix "tk-$set" >"$work/$set.json" 2>>"$work/resume.err"
        printf '| node %s (%s) | %s | %s | %s | %s | %s | %s |\n' "$((to + 1))" "$set" \
            "$(field "$work/$set.json" report p50_us)" "$(field "$work/$set.json" report p99_us)" \
            "$(field "$work/$set.json" report max_us)" "$(field "$work/$set.json" drained p50_us)" \
            "$(field "$work/$set.json" drained p99_us)" \
            "$(( $(field "$work/$set.json" report failed) + $(field "$work/$set.json" drained failed) + $(field "$work/$set.json" drained timeout) ))"
    done
    echo "takeovers: node 3 taken $(metric 2 'tidemq_cluster_takeovers_total{result="taken"}'), node 2 given $(metric 1 'tidemq_cluster_takeovers_total{result="given"}'), failed $(metric 2 'tidemq_cluster_takeovers_total{result="failed"}')"
    bench conn --count "${CONNS:-2000}" --concurrency "${CONCURRENCY:-100}" --port "${mqtt_ports[2]}" \
        --client-prefix fresh >"$work/conn-cluster.json" 2>/dev/null
    stop_nodes
    start_nodes 1
    bench conn --count "${CONNS:-2000}" --concurrency "${CONCURRENCY:-100}" --port "${mqtt_ports[0]}" \
        --client-prefix fresh >"$work/conn-single.json" 2>/dev/null
    stop_nodes
    echo "| clean CONNECTs on | connects/s | p50 µs | p99 µs | failed |"
    echo "|---|---|---|---|---|"
    local shape
    for shape in cluster single; do
        printf '| %s | %.0f | %s | %s | %s |\n' "$shape" "$(field "$work/conn-$shape.json" report avg_ops_per_sec)" \
            "$(field "$work/conn-$shape.json" report p50_us)" "$(field "$work/conn-$shape.json" report p99_us)" \
            "$(field "$work/conn-$shape.json" report failed)"
    done
}

case "${MODE:-}" in
    takeover)
        for _ in $(seq "$rounds"); do takeover_run; done
        exit 0 ;;
    subscribe)
        echo "| shape | subscribed | routes on node 1 |"
        echo "|---|---|---|"
        for _ in $(seq "$rounds"); do subscribe single; subscribe cluster; done
        exit 0 ;;
    kill)
        kill_run
        exit 0 ;;
    handoff)
        for _ in $(seq "$rounds"); do handoff_run; done
        exit 0 ;;
esac

echo "| shape | QoS | received msg/s | p50 µs | p99 µs | p99.9 µs | max µs | acked msg/s | nodes' CPU s |"
echo "|---|---|---|---|---|---|---|---|---|"
for _ in $(seq "$rounds"); do
    for qos in 0 1; do
        run single "$qos"
        run cluster "$qos"
    done
done
