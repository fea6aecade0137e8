# Helpers for the benchmark scripts that run `tidemq` nodes and the
# `tidemq-bench` load tool on this machine. Source it after setting `bin`
# (the directory of the release binaries) and `work` (a scratch directory,
# removed on exit unless KEEP=1). Defines: free_port, start_node NAME DIR
# PORT [VAR=VALUE...] (sets node_pid, node_http, node_timing), stop_node PID,
# cpu_secs PID, rss_mib PID, hwm_mib PID, metrics FILE, bench ARGS...,
# field FILE KEY FIELD; every process started through them is killed on
# exit.

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    # Nodes started by the spawn helper, in case it was interrupted before
    # their pid was read.
    for file in "$work"/*.pid; do
        [ -f "$file" ] && kill -9 "$(cat "$file")" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP:-}" ]; then echo "files kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Spawns a command, waits for its `tidemq ready` line and for a CONNACK on
# 127.0.0.1:PORT, and prints JSON: pid, seconds from spawn to the ready
# line, to the first accepted TCP connect and to the first CONNACK, and the
# ready line. The child keeps running; its pid is also in PIDFILE.
cat >"$work/spawn.py" <<'EOF'
import json, socket, subprocess, sys, time

log, pidfile, port, cmd = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
# MQTT 3.1.1 CONNECT, clean session, keep alive 60, client id "probe".
CONNECT = bytes([0x10, 17, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 60, 0, 5]) + b"probe"
out = open(log, "ab")
# The log may hold earlier runs of the node: read only what this one writes.
offset = out.seek(0, 2)
start = time.monotonic()
child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
with open(pidfile, "w") as f:
    f.write(str(child.pid))
ready = tcp = connack = None
line, pending = "", ""
while ready is None or connack is None:
    if child.poll() is not None:
        sys.exit(f"{cmd[-1]} exited with {child.returncode}; see {log}")
    if time.monotonic() - start > 600:
        sys.exit(f"no ready line and CONNACK in 600 s; see {log}")
    if ready is None:
        with open(log, "rb") as f:
            f.seek(offset)
            chunk = f.read()
        offset += len(chunk)
        pending += chunk.decode(errors="replace")
        *lines, pending = pending.split("\n")
        for l in lines:
            if l.startswith("tidemq ready"):
                ready, line = time.monotonic() - start, l.strip()
    if connack is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if tcp is None:
                    tcp = time.monotonic() - start
                s.settimeout(10)
                s.sendall(CONNECT)
                answer = s.recv(4)
                if len(answer) == 4 and answer[0] == 0x20 and answer[3] == 0:
                    connack = time.monotonic() - start
        except OSError:
            pass
    time.sleep(0.002)
print(json.dumps({"pid": child.pid, "ready_s": ready, "tcp_s": tcp, "connack_s": connack, "line": line}))
EOF

# start_node NAME DIR PORT [VAR=VALUE...]: starts `tidemq` with its data in
# DIR and MQTT on PORT; sets node_pid, node_http and node_timing (the spawn
# helper's JSON). The log goes to $work/NAME.log.
start_node() {
    local name=$1 dir=$2 port=$3
    shift 3
    node_timing="$(python3 "$work/spawn.py" "$work/$name.log" "$work/$name.pid" "$port" \
        env RUST_LOG=info TIDEMQ_LISTENER__BIND="127.0.0.1:$port" \
        TIDEMQ_META__GRPC_ADDR=127.0.0.1:0 TIDEMQ_HTTP__BIND=127.0.0.1:0 \
        TIDEMQ_STORAGE__SYNC=always "$@" ${NODE_ENV:-} "$bin/tidemq" --data-dir "$dir")"
    node_pid="$(jq -r .pid <<<"$node_timing")"
    pids+=("$node_pid")
    node_http="$(jq -r .line <<<"$node_timing" | sed -n 's/.* http=\([^ ]*\).*/\1/p')"
}

stop_node() { # PID: SIGKILL, no shutdown at all; waits until it is dead
    kill -9 "$1" 2>/dev/null || true
    # The spawn helper has exited, so nobody here can reap the node: wait
    # until it is gone or a zombie (which holds no files or sockets).
    while [ -e "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; do
        sleep 0.01
    done
}

# CPU seconds (user + system) a process has used.
cpu_secs() { awk -v hz="$(getconf CLK_TCK)" '{ print ($14 + $15) / hz }' "/proc/$1/stat"; }

rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }
hwm_mib() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

metrics() { # FILE: saves the node's /metrics
    curl -sf "http://$node_http/metrics" >"$1" || echo "no /metrics from $node_http" >&2
}

bench() { "$bin/tidemq-bench" mqtt "$@" --output json; }

# The final report of a run: the last JSON line with a "report" key.
field() { # FILE KEY FIELD
    jq -rs --arg k "$2" --arg f "$3" '[.[] | select(.report)] | last | .[$k][$f] // empty' "$1"
}

