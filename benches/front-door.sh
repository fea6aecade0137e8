#!/usr/bin/env bash
# The front door: connect rate and QoS 1 throughput over TCP, TLS, WebSocket
# and WebSocket over TLS, for TideMQ and Mosquitto, in one sitting (both on
# 127.0.0.1, one broker at a time under load).
#
#   benches/front-door.sh            # 8 s per throughput load
#   SECS=3 benches/front-door.sh
#
# Loads, the same flags for every transport and broker:
#   conn:  1,000 connections, at most 100 handshakes in flight
#   pairs: 100 QoS 1 publishers (10 in flight each), each with its own QoS 1 subscriber
#
# Makes a CA and a server certificate for localhost with openssl, installs
# Mosquitto from Debian when missing, builds tidemq and tidemq-bench in
# release. Prints a markdown table; reports and logs stay in the directory
# printed at the start.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_package /usr/sbin/mosquitto mosquitto
ensure_package /usr/bin/jq jq
SECS=${SECS:-8}
cargo build --release -q -p tidemq-broker -p tidemq-bench
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d /tmp/front-door.XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- certificates --------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench-ca -keyout "$work/ca.key" -out "$work/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/san.ext" -out "$work/server.crt" 2>/dev/null
# Mosquitto started as root reads them as user mosquitto (test keys only).
chmod 755 "$work"
chmod 644 "$work"/*.crt "$work"/*.key

# --- brokers: tcp, tls, ws, wss on consecutive ports ---------------------
declare -A base=([mosquitto]=21880 [tidemq]=22880)
port() { # broker transport
    local offset
    case "$2" in tcp) offset=0 ;; tls) offset=1 ;; ws) offset=2 ;; wss) offset=3 ;; esac
    echo $((base[$1] + offset))
}
m=${base[mosquitto]}
cat >"$work/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous true
max_queued_messages 100000
persistence false
set_tcp_nodelay true
log_dest stderr
log_type error
listener $m 127.0.0.1
listener $((m + 1)) 127.0.0.1
certfile $work/server.crt
keyfile $work/server.key
listener $((m + 2)) 127.0.0.1
protocol websockets
listener $((m + 3)) 127.0.0.1
protocol websockets
certfile $work/server.crt
keyfile $work/server.key
EOF
t=${base[tidemq]}
cat >"$work/tidemq.toml" <<EOF
data_dir = "$work/data"
[listener]
bind = "127.0.0.1:$t"
[[listeners]]
kind = "tls"
bind = "127.0.0.1:$((t + 1))"
cert_file = "$work/server.crt"
key_file = "$work/server.key"
[[listeners]]
kind = "ws"
bind = "127.0.0.1:$((t + 2))"
[[listeners]]
kind = "wss"
bind = "127.0.0.1:$((t + 3))"
cert_file = "$work/server.crt"
key_file = "$work/server.key"
[session]
max_queued_messages = 100000
[meta]
grpc_addr = "127.0.0.1:0"
[http]
bind = "127.0.0.1:0"
EOF
/usr/sbin/mosquitto -c "$work/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
pids+=($!)
RUST_LOG=warn "$bin/tidemq" --config "$work/tidemq.toml" >"$work/tidemq.log" 2>&1 &
pids+=($!)
sleep 3
echo "$(/usr/sbin/mosquitto -h 2>/dev/null | head -1 || true) vs tidemq, ${SECS}s per load, files in $work" >&2

bench() { # broker transport load flags...
    local broker=$1 transport=$2
    shift 2
    "$bin/tidemq-bench" mqtt "$@" --host localhost --port "$(port "$broker" "$transport")" \
        --transport "$transport" --cafile "$work/ca.crt" --output json
}
field() { jq -rs --arg f "$2" '[.[] | select(.report)] | last | .report[$f] // empty' "$1"; }

for transport in tcp tls ws wss; do
    for broker in mosquitto tidemq; do
        name="$broker.$transport"
        echo "== $transport on $broker" >&2
        bench "$broker" "$transport" conn --count 1000 --concurrency 100 --client-prefix "$name-c" \
            >"$work/$name.conn.json" 2>"$work/$name.conn.err" || echo "$name conn failed" >&2
        bench "$broker" "$transport" sub --count 100 --topic 'fd/%i' --qos 1 --client-prefix "$name-s" \
            --duration-secs $((SECS * 4 + 20)) --idle-secs 2 >"$work/$name.sub.json" 2>"$work/$name.sub.err" &
        sub=$!
        for _ in $(seq 300); do grep -q '^ready:' "$work/$name.sub.err" && break; sleep 0.1; done
        bench "$broker" "$transport" pub --count 100 --topic 'fd/%i' --qos 1 --inflight 10 \
            --duration-secs "$SECS" --client-prefix "$name-p" >"$work/$name.pub.json" 2>"$work/$name.pub.err" ||
            echo "$name pub failed" >&2
        wait "$sub" || true
    done
done

echo
echo "| transport | broker | connects/s | connect p99 µs | QoS 1 acked msgs/s | PUBACK p99 µs | received msgs/s |"
echo "|---|---|---|---|---|---|---|"
for transport in tcp tls ws wss; do
    for broker in mosquitto tidemq; do
        f="$work/$broker.$transport"
        printf '| %s | %s | %.0f | %s | %.0f | %s | %.0f |\n' "$transport" "$broker" \
            "$(field "$f.conn.json" avg_ops_per_sec)" "$(field "$f.conn.json" p99_us)" \
            "$(field "$f.pub.json" avg_ops_per_sec)" "$(field "$f.pub.json" p99_us)" \
            "$(field "$f.sub.json" avg_ops_per_sec)"
    done
done
