#!/usr/bin/env bash
# Connect rate of TideMQ and Mosquitto 2.x in one sitting, with the CPU each
# broker and the load tool spend per connect while the connections open.
#
#   benches/connect-bench.sh             # 3 rounds, 15,000 connects per run
#   ROUNDS=5 COUNT=10000 benches/connect-bench.sh
#
# Every round runs, one broker after the other (the order alternates from
# round to round):
#   c100:  COUNT connections, 100 handshakes in flight, one tool process
#   c1000: COUNT connections, 1,000 in flight, one tool process
#   2x50:  two tool processes at once, COUNT/2 connections and 50 in flight
#          each: if two processes connect faster than one, one process was
#          the limit; if not, the machine's cores are.
# All from 127.0.0.1 to 127.0.0.4 (`--source-ips 4`), clean sessions, MQTT
# 3.1.1, every connection held until the last has connected. The tool waits
# for the broker to close after DISCONNECT, so runs leave no TIME_WAIT on its
# ports. Prints one markdown row per run; reports and logs stay in the
# directory printed at the start with KEEP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_package /usr/sbin/mosquitto mosquitto
ensure_package /usr/bin/jq jq
ROUNDS=${ROUNDS:-3}
COUNT=${COUNT:-15000}
cargo build --release -q -p tidemq-broker -p tidemq-bench
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/connect-bench.XXXXXX)
source benches/node-lib.sh

mosquitto_port=$(free_port)
cat >"$work/mosquitto.conf" <<EOF
listener $mosquitto_port 127.0.0.1
allow_anonymous true
max_connections -1
persistence false
log_dest stderr
log_type error
EOF
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mosquitto_pid=$!
pids+=("$mosquitto_pid")
tidemq_port=$(free_port)
start_node tidemq "$work/data" "$tidemq_port" RUST_LOG=warn
tidemq_pid=$node_pid
echo "mosquitto on $mosquitto_port (pid $mosquitto_pid), tidemq on $tidemq_port (pid $tidemq_pid), files in $work" >&2

conn() { # NAME PORT PID COUNT CONCURRENCY: one tool process, its JSON in $work/NAME.json
    bench conn --port "$2" --broker-pid "$3" --settle-secs 0 --count "$4" --concurrency "$5" \
        --client-prefix "$1" --source-ips 4 --timeout-ms 20000 >"$work/$1.json" 2>"$work/$1.err"
}

row() { # BROKER LOAD ROUND FILE...: one table row from the runs' reports
    jq -rs --arg b "$1" --arg l "$2" --arg r "$3" '
        (map(.report.avg_ops_per_sec) | add) as $rate
        | (map(.report.p99_us) | max) as $p99
        | (map(.report.timeout) | add) as $timeouts
        | (map(.load.opening_cpu.tool_us_per_connect) | add / length) as $tool
        | (map(.load.opening_cpu.broker_us_per_connect) | add / length) as $broker
        | "| \($b) | \($l) | \($r) | \($rate | floor) | \($p99 / 1000 | . * 10 | floor / 10) | \($timeouts) | \($broker | floor) | \($tool | floor) |"
    ' "${@:4}"
}

echo "| broker | load | round | connects/s | p99 ms | timeouts | broker µs/connect | tool µs/connect |"
echo "|---|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
    order=(mosquitto tidemq)
    ((round % 2)) || order=(tidemq mosquitto)
    for broker in "${order[@]}"; do
        port_var="${broker}_port" pid_var="${broker}_pid"
        port=${!port_var} pid=${!pid_var}
        for load in c100 c1000; do
            name="$broker.$load.$round"
            conn "$name" "$port" "$pid" "$COUNT" "${load#c}"
            row "$broker" "$load" "$round" "$work/$name.json"
        done
        name="$broker.2x50.$round"
        conn "$name.a" "$port" "$pid" $((COUNT / 2)) 50 &
        first=$!
        conn "$name.b" "$port" "$pid" $((COUNT / 2)) 50
        wait "$first"
        # Each process counts both processes' broker CPU: halve the sum.
        jq -c '.load.opening_cpu.broker_us_per_connect /= 2' "$work/$name.a.json" >"$work/$name.a2.json"
        jq -c '.load.opening_cpu.broker_us_per_connect /= 2' "$work/$name.b.json" >"$work/$name.b2.json"
        row "$broker" 2x50 "$round" "$work/$name.a2.json" "$work/$name.b2.json"
    done
done
