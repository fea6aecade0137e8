#!/usr/bin/env bash
# A well-behaved client under a flood, on release binaries (node, load tool
# and attackers on this machine). Two runs on fresh nodes, same flags:
#
#   alone  a calm pair: one publisher sending QoS 0 at CALM_RATE msgs/s to
#          calm/0, one QoS 1 subscriber measuring publish-to-delivery time;
#   flood  the same pair while
#          - FLOODERS publishers flood QoS 1 (FLOOD_INFLIGHT unacknowledged
#            each, 512-byte payloads) to FLOODERS persistent subscribers
#            (sync = always: faster than the disk syncs),
#          - PROPS_CONNS clients send 1 MB PUBLISH packets of 200,000 empty
#            user properties, one after the other (benches/hostile-clients.py),
#          - one subscriber to flood/# never reads.
#
# Prints a markdown row per run: the calm pair's deliveries and latency
# quantiles, the flood's acknowledged rate, the refused property floods,
# and the node's peak RSS (VmHWM).
#
# Usage: benches/flood-bench.sh
# Sizes (environment, defaults in brackets): SECS [20], CALM_RATE [200],
#   FLOODERS [100], FLOOD_INFLIGHT [100], PROPS_CONNS [4].
# ATTACKER_NICE: run the flood's processes (not the node, not the calm pair)
#   under `nice -n ATTACKER_NICE`, to tell the node's scheduling from the
#   machine's (default 0).
# BROKER=mosquitto: the same runs against Mosquitto (`mosquitto` on PATH or
#   in /usr/sbin; in memory, no persistence, max_queued_messages 1000 like
#   TideMQ's session.max_queued_messages; there is no /metrics to read).
# BIN_DIR: use binaries already built (tidemq, tidemq-bench). KEEP=1 keeps
#   the work directory.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

need_tools jq curl python3
SECS="${SECS:-20}"
CALM_RATE="${CALM_RATE:-200}"
FLOODERS="${FLOODERS:-100}"
FLOOD_INFLIGHT="${FLOOD_INFLIGHT:-100}"
PROPS_CONNS="${PROPS_CONNS:-4}"
ATTACKER_NICE="${ATTACKER_NICE:-0}"
niced() { nice -n "$ATTACKER_NICE" "$@"; }

if [ -z "${BIN_DIR:-}" ]; then
    ensure_system_deps
    flock /tmp/tidemq-cargo.lock cargo build --release --workspace --bins >&2
fi
bin="${BIN_DIR:-$CARGO_TARGET_DIR/release}"
work="$(mktemp -d /tmp/tidemq-flood.XXXXXX)"
source benches/node-lib.sh

# wait_ready ERRFILE PID: until a load prints its `ready:` line.
wait_ready() {
    for _ in $(seq 600); do
        grep -q '^ready:' "$1" && return 0
        kill -0 "$2" 2>/dev/null || { echo "failed: $(cat "$1")" >&2; return 1; }
        sleep 0.1
    done
    echo "not ready: $1" >&2
    return 1
}

BROKER="${BROKER:-tidemq}"
# start_mosquitto NAME PORT: like start_node, for BROKER=mosquitto.
start_mosquitto() {
    printf '%s\n' "listener $2 127.0.0.1" "allow_anonymous true" "max_connections -1" \
        "max_queued_messages 1000" "persistence false" "set_tcp_nodelay true" \
        "log_dest stderr" "log_type error" "log_type warning" >"$work/$1.conf"
    "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -c "$work/$1.conf" >"$work/$1.log" 2>&1 &
    node_pid=$!
    pids+=("$node_pid")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "mosquitto did not listen on $2: $(cat "$work/$1.log")" >&2
    return 1
}

run() { # NAME MODE
    local name=$1 mode=$2 port
    port="$(free_port)"
    if [ "$BROKER" = mosquitto ]; then
        start_mosquitto "$name" "$port"
    else
        start_node "$name" "$work/$name" "$port"
    fi
    bench sub --port "$port" --client-prefix "$name-calm-s" --count 1 --topic 'calm/%i' \
        --qos 1 --duration-secs $((SECS + 30)) --idle-secs 3 \
        >"$work/$name.calm-sub.json" 2>"$work/$name.calm-sub.err" &
    local calm_sub=$!
    pids+=("$calm_sub")
    wait_ready "$work/$name.calm-sub.err" "$calm_sub"
    local attackers=()
    if [ "$mode" = flood ]; then
        niced "$bin/tidemq-bench" mqtt sub --output json --port "$port" --client-prefix "$name-flood-s" --count "$FLOODERS" \
            --topic 'flood/%i' --qos 1 --persistent --duration-secs $((SECS + 60)) --idle-secs 3 \
            >"$work/$name.flood-sub.json" 2>"$work/$name.flood-sub.err" &
        local flood_sub=$!
        pids+=("$flood_sub")
        wait_ready "$work/$name.flood-sub.err" "$flood_sub"
        niced python3 benches/hostile-clients.py stuck 127.0.0.1 "$port" 'flood/#' $((SECS + 2)) &
        attackers+=($!)
        niced python3 benches/hostile-clients.py props 127.0.0.1 "$port" "$PROPS_CONNS" "$SECS" \
            >"$work/$name.props.json" &
        attackers+=($!)
        niced "$bin/tidemq-bench" mqtt pub --output json --port "$port" --client-prefix "$name-flood-p" --count "$FLOODERS" \
            --topic 'flood/%i' --qos 1 --inflight "$FLOOD_INFLIGHT" --payload-size 512 \
            --duration-secs "$SECS" >"$work/$name.flood-pub.json" 2>"$work/$name.flood-pub.err" &
        attackers+=($!)
        pids+=("${attackers[@]}")
    fi
    bench pub --port "$port" --client-prefix "$name-calm-p" --count 1 --topic 'calm/%i' \
        --qos 0 --rate-per-client "$CALM_RATE" --duration-secs "$SECS" \
        >"$work/$name.calm-pub.json" 2>"$work/$name.calm-pub.err"
    for pid in "${attackers[@]}"; do wait "$pid" || true; done
    wait "$calm_sub"
    local peak
    peak="$(hwm_mib "$node_pid")"
    if [ "$BROKER" = tidemq ]; then metrics "$work/$name.metrics"; else : >"$work/$name.metrics"; fi
    stop_node "$node_pid"
    local sub="$work/$name.calm-sub.json" flood="—" props="—"
    if [ "$mode" = flood ]; then
        flood="$(printf '%.0f' "$(field "$work/$name.flood-pub.json" report avg_ops_per_sec)")"
        props="$(jq -c '.puback_reasons' "$work/$name.props.json")"
    fi
    printf '| %s | %s / %s | %s | %s | %s | %s | %s | %s | %s | %s MiB |\n' "$name" \
        "$(field "$sub" report success)" "$(field "$work/$name.calm-pub.json" report success)" \
        "$(field "$sub" report p50_us)" "$(field "$sub" report p99_us)" \
        "$(field "$sub" report p999_us)" "$(field "$sub" report max_us)" \
        "$flood" "$props" \
        "$(grep -o 'tidemq_disconnects_total{reason="write_timeout"} [0-9]*' "$work/$name.metrics" | awk '{print $2}')" \
        "$peak"
}

echo "binaries: $bin; files: $work" >&2
echo "## Flood ($BROKER): SECS=$SECS CALM_RATE=$CALM_RATE FLOODERS=$FLOODERS FLOOD_INFLIGHT=$FLOOD_INFLIGHT PROPS_CONNS=$PROPS_CONNS"
echo
echo "| run | calm received / sent | e2e p50 µs | e2e p99 µs | e2e p99.9 µs | e2e max µs | flood acked msgs/s | property floods: PUBACK reasons | write-timeout disconnects | node peak RSS |"
echo "|---|---|---|---|---|---|---|---|---|---|"
run alone alone
run flood flood
