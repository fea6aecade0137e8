#!/usr/bin/env bash
# Runs the same MQTT loads against Mosquitto and TideMQ, both on 127.0.0.1,
# in one sitting, and prints the figures side by side (markdown table).
#
#   benches/compare.sh            # ~10 s per load and broker, a few minutes in all
#   benches/compare.sh --quick    # ~3 s per load
#
# Installs Mosquitto from Debian when it is missing (needs root), builds
# `tidemq` and `tidemq-bench` in release, starts both brokers on free
# loopback ports and stops them on exit. Per-second lines, final reports and
# broker logs stay in the directory printed at the start.
#
# Loads (the same flags against each broker):
#   a. conn:    1,000 connections, at most 100 handshakes in flight
#   b. fan-in:  50 QoS 0 publishers at 1,000 msg/s each to bench/%i, 1 subscriber on bench/#
#   c. pairs:   100 QoS 1 publishers (10 in flight each), each with its own QoS 1 subscriber
#   d. fan-out: 1 QoS 0 publisher at 400 msg/s, 500 subscribers on one topic (200k deliveries/s)
#
# Both brokers queue up to 100,000 messages per session (Mosquitto's
# max_queued_messages, TideMQ's session.max_queued_messages; the defaults are
# 1,000 for both), so a slow moment of a subscriber does not turn into drops
# on one side only.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

secs=10
for arg in "$@"; do
    case "$arg" in
        --quick) secs=3 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tidemq-target}"

# --- tools ---------------------------------------------------------------
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v jq >/dev/null || missing+=(jq)
if ((${#missing[@]})); then
    echo "installing ${missing[*]} from Debian" >&2
    apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
# `mosquitto -h` prints its version and exits with status 3.
mosquitto_version=$({ "$MOSQUITTO" -h 2>/dev/null || true; } | sed -n 's/^mosquitto version //p' | head -n1)

cargo build --release -p tidemq-broker -p tidemq-bench
bin="$CARGO_TARGET_DIR/release"

# --- brokers -------------------------------------------------------------
work=$(mktemp -d /tmp/tidemq-compare.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Clients and both brokers hold many sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

free_port() { # a loopback port nobody listens on, other than $1
    local port
    for _ in $(seq 100); do
        port=$((20000 + RANDOM % 40000))
        if [[ "$port" != "${1:-}" ]] && ! accepts "$port"; then
            echo "$port"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}

wait_accepting() { # port name pid
    for _ in $(seq 100); do
        accepts "$1" && return 0
        kill -0 "$3" 2>/dev/null || { echo "$2 exited; log in $work/$2.log" >&2; return 1; }
        sleep 0.1
    done
    echo "$2 does not accept on 127.0.0.1:$1; log in $work/$2.log" >&2
    return 1
}

mosquitto_port=$(free_port)
tidemq_port=$(free_port "$mosquitto_port")

cat >"$work/mosquitto.conf" <<EOF
listener $mosquitto_port 127.0.0.1
allow_anonymous true
max_connections -1
max_queued_messages 100000
persistence false
# TideMQ disables Nagle on every connection too.
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
"$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
mosquitto_pid=$!
RUST_LOG=warn TIDEMQ_SESSION__MAX_QUEUED_MESSAGES=100000 "$bin/tidemq" --bind "127.0.0.1:$tidemq_port" >"$work/tidemq.log" 2>&1 &
pids+=($!)
tidemq_pid=$!
wait_accepting "$mosquitto_port" mosquitto "$mosquitto_pid"
wait_accepting "$tidemq_port" tidemq "$tidemq_pid"
echo "mosquitto $mosquitto_version on 127.0.0.1:$mosquitto_port, tidemq on 127.0.0.1:$tidemq_port," \
    "${secs}s per load, files in $work" >&2

# --- loads ---------------------------------------------------------------
bench() { "$bin/tidemq-bench" mqtt "$@" --output json; }

# Starts subscribers in the background and waits for their "ready" line.
start_sub() { # name port flags...
    local name=$1 port=$2
    shift 2
    # Subscribers stop 2 s after the last message; the cap leaves a saturated
    # broker time to deliver its backlog (Mosquitto needs ~4× the publishing
    # time in the fan-out load).
    bench sub --port "$port" --client-prefix "$name-s" --duration-secs $((secs * 6 + 30)) \
        --idle-secs 2 "$@" >"$work/$name.sub.json" 2>"$work/$name.sub.err" &
    sub_pid=$!
    for _ in $(seq 600); do
        grep -q '^ready:' "$work/$name.sub.err" && return 0
        kill -0 "$sub_pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "$name: subscribers not ready; see $work/$name.sub.err" >&2
    return 1
}

run_load() { # broker port load
    local name="$1.$3" port=$2
    echo "== $3 on $1" >&2
    case "$3" in
        conn)
            bench conn --port "$port" --client-prefix "$name" --count 1000 --concurrency 100 \
                >"$work/$name.conn.json" 2>"$work/$name.conn.err"
            ;;
        fanin)
            start_sub "$name" "$port" --count 1 --topic 'bench/#' --qos 0
            bench pub --port "$port" --client-prefix "$name-p" --count 50 --topic 'bench/%i' --qos 0 \
                --rate-per-client 1000 --duration-secs "$secs" >"$work/$name.pub.json" 2>"$work/$name.pub.err"
            wait "$sub_pid"
            ;;
        pairs)
            start_sub "$name" "$port" --count 100 --topic 'bench/%i' --qos 1
            bench pub --port "$port" --client-prefix "$name-p" --count 100 --topic 'bench/%i' --qos 1 \
                --inflight 10 --duration-secs "$secs" >"$work/$name.pub.json" 2>"$work/$name.pub.err"
            wait "$sub_pid"
            ;;
        fanout)
            start_sub "$name" "$port" --count 500 --topic 'bench/fanout' --qos 0
            bench pub --port "$port" --client-prefix "$name-p" --count 1 --topic 'bench/fanout' --qos 0 \
                --rate-per-client 400 --duration-secs "$secs" >"$work/$name.pub.json" 2>"$work/$name.pub.err"
            wait "$sub_pid"
            ;;
    esac
}

loads=(conn fanin pairs fanout)
for load in "${loads[@]}"; do
    run_load mosquitto "$mosquitto_port" "$load" || echo "mosquitto $load failed" >&2
    run_load tidemq "$tidemq_port" "$load" || echo "tidemq $load failed" >&2
done
for broker in mosquitto tidemq; do
    pid_var="${broker}_pid"
    kill -0 "${!pid_var}" 2>/dev/null || echo "WARNING: $broker died; log in $work/$broker.log" >&2
done

# --- table ---------------------------------------------------------------
# The final report of a run: the last JSON line with a "report" key.
field() { # file field
    [[ -s "$1" ]] || { echo ""; return; }
    jq -rs --arg f "$2" '[.[] | select(.report)] | last | .report[$f] // empty' "$1" 2>/dev/null || true
}

# Prints one row: label, then the value for each broker, then tidemq / mosquitto.
row() { # label file field [scale]
    local m t
    m=$(field "$work/mosquitto.$2" "$3")
    t=$(field "$work/tidemq.$2" "$3")
    awk -v label="$1" -v m="$m" -v t="$t" '
        function commas(s, r) {
            while (length(s) > 3) { r = "," substr(s, length(s) - 2) r; s = substr(s, 1, length(s) - 3) }
            return s r
        }
        function fmt(v) {
            if (v == "") return "–"
            if (v + 0 >= 100 || v == int(v)) return commas(sprintf("%.0f", v))
            return sprintf("%.2f", v)
        }
        BEGIN {
            ratio = (m != "" && t != "" && m + 0 != 0) ? sprintf(t / m < 0.1 ? "%.3f" : "%.2f", t / m) : "–"
            printf "| %s | %s | %s | %s |\n", label, fmt(m), fmt(t), ratio
        }'
}

# Received / sent, in percent, per broker.
delivered_row() { # label load subscribers
    local m t
    m=$(awk -v r="$(field "$work/mosquitto.$2.sub.json" success)" -v s="$(field "$work/mosquitto.$2.pub.json" success)" -v n="$3" \
        'BEGIN { if (s > 0) printf "%.1f", 100 * r / (s * n) }')
    t=$(awk -v r="$(field "$work/tidemq.$2.sub.json" success)" -v s="$(field "$work/tidemq.$2.pub.json" success)" -v n="$3" \
        'BEGIN { if (s > 0) printf "%.1f", 100 * r / (s * n) }')
    echo "| $1 | ${m:-–} % | ${t:-–} % | |"
}

{
    echo
    echo "mosquitto $mosquitto_version vs tidemq, ${secs}s per load; ratio = tidemq / mosquitto"
    echo
    echo "| metric | mosquitto | tidemq | ratio |"
    echo "|---|---|---|---|"
    row "a. conn: connections/s (1,000, 100 in flight)" conn.conn.json avg_ops_per_sec
    row "a. conn: connect p50 µs" conn.conn.json p50_us
    row "a. conn: connect p99 µs" conn.conn.json p99_us
    row "a. conn: failed" conn.conn.json failed
    row "a. conn: timed out" conn.conn.json timeout
    row "b. fan-in QoS 0: sent msgs/s (50 × 1,000 offered)" fanin.pub.json avg_ops_per_sec
    row "b. fan-in QoS 0: received msgs/s" fanin.sub.json avg_ops_per_sec
    delivered_row "b. fan-in QoS 0: delivered" fanin 1
    row "b. fan-in QoS 0: e2e p50 µs" fanin.sub.json p50_us
    row "b. fan-in QoS 0: e2e p99 µs" fanin.sub.json p99_us
    row "c. pairs QoS 1: acked msgs/s (100 pubs × 10 in flight)" pairs.pub.json avg_ops_per_sec
    row "c. pairs QoS 1: PUBACK p50 µs" pairs.pub.json p50_us
    row "c. pairs QoS 1: PUBACK p99 µs" pairs.pub.json p99_us
    row "c. pairs QoS 1: PUBACK timeouts" pairs.pub.json timeout
    row "c. pairs QoS 1: received msgs/s" pairs.sub.json avg_ops_per_sec
    delivered_row "c. pairs QoS 1: delivered" pairs 1
    row "c. pairs QoS 1: e2e p50 µs" pairs.sub.json p50_us
    row "c. pairs QoS 1: e2e p99 µs" pairs.sub.json p99_us
    row "d. fan-out QoS 0: deliveries/s (400 msg/s × 500 subs)" fanout.sub.json avg_ops_per_sec
    delivered_row "d. fan-out QoS 0: delivered" fanout 500
    row "d. fan-out QoS 0: e2e p50 µs" fanout.sub.json p50_us
    row "d. fan-out QoS 0: e2e p99 µs" fanout.sub.json p99_us
    echo
} | tee "$work/table.md"

for broker in mosquitto tidemq; do
    lines=$(grep -c . "$work/$broker.log" || true)
    [[ "$lines" == 0 ]] || echo "$broker logged $lines lines; see $work/$broker.log" >&2
done
grep -l . "$work"/*.err 2>/dev/null | xargs -r grep -Hv '^ready:\|^connected ' >&2 || true
