#!/usr/bin/env bash
# Durable sessions and messages, on release binaries (node and load tool on
# this machine), in one go:
#
#   a. QoS 1 throughput to persistent vs clean subscribers, storage.sync =
#      always: PAIRS publishers on bench/%i (INFLIGHT unacknowledged each),
#      each with its own QoS 1 subscriber, for SECS seconds. Persistent and
#      clean runs alternate, ROUNDS of each, every run on a fresh node and
#      data directory with the same flags; only `mqtt sub --persistent`
#      differs.
#   b. Memory: VmRSS of the node before and after `mqtt offline` leaves
#      SESSIONS offline persistent sessions with MESSAGES queued messages
#      each, and after a restart.
#   c. Restart time with those SESSIONS × MESSAGES stored messages: SIGKILL,
#      restart, time from spawn to the `tidemq ready` line (the node replays
#      its log before it serves), to the first TCP connect and to the first
#      CONNACK; RESTARTS times, and the same for an empty node.
#
# Usage: benches/durable-bench.sh
# Sizes (environment, defaults in brackets): SESSIONS [100000], MESSAGES [10],
#   OFFLINE_PUBLISHERS [10], OFFLINE_INFLIGHT [100], CONCURRENCY [100],
#   PAIRS [100], INFLIGHT [10], SECS [10], ROUNDS [2], RESTARTS [3].
#   A quick run: SESSIONS=1000 SECS=2 ROUNDS=1 RESTARTS=1 benches/durable-bench.sh
#   ROUNDS=0 skips a, SESSIONS=0 skips b and c.
# NODE_ENV: more VAR=VALUE words for every node's environment, after the
#   script's own (NODE_ENV=TIDEMQ_STORAGE__SYNC=never overrides the sync).
# BIN_DIR: use binaries already built (tidemq, tidemq-bench) instead of
#   building them. KEEP=1: keep the work directory (logs, reports, /metrics).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

need_tools jq curl python3

SESSIONS="${SESSIONS:-100000}"
MESSAGES="${MESSAGES:-10}"
OFFLINE_PUBLISHERS="${OFFLINE_PUBLISHERS:-10}"
OFFLINE_INFLIGHT="${OFFLINE_INFLIGHT:-100}"
CONCURRENCY="${CONCURRENCY:-100}"
PAIRS="${PAIRS:-100}"
INFLIGHT="${INFLIGHT:-10}"
SECS="${SECS:-10}"
ROUNDS="${ROUNDS:-2}"
RESTARTS="${RESTARTS:-3}"

if [ -z "${BIN_DIR:-}" ]; then
    ensure_system_deps
    flock /tmp/tidemq-cargo.lock cargo build --release --workspace --bins >&2
fi
bin="${BIN_DIR:-$CARGO_TARGET_DIR/release}"
work="$(mktemp -d /tmp/tidemq-durable.XXXXXX)"
source benches/node-lib.sh

# Storage figures between two /metrics dumps (BEFORE may be missing: a
# fresh node) over SECONDS: fsyncs per second, mean fsync, mean store
# write (a PUBLISH stored before its PUBACK), mean requests per group
# commit, messages stored and dropped.
cat >"$work/storage.py" <<'EOF'
import os, re, sys

def load(path):
    totals = {}
    if not os.path.exists(path):
        return totals
    for line in open(path):
        m = re.match(r'^(\w+)(\{[^}]*\})? ([0-9.e+-]+)$', line.strip())
        if m:
            totals[m.group(1)] = totals.get(m.group(1), 0) + float(m.group(3))
    return totals

before, after = load(sys.argv[1]), load(sys.argv[2])
d = lambda name: after.get(name, 0) - before.get(name, 0)
secs = float(sys.argv[3])

def mean_ms(name):
    n = d(name + "_count")
    return f"{1000 * d(name + '_sum') / n:.2f}" if n else "–"

n = d("tidemq_storage_commit_batch_requests_count")
per_commit = f"{d('tidemq_storage_commit_batch_requests_sum') / n:.1f}" if n else "–"
print(f"{d('tidemq_storage_fsync_duration_seconds_count') / secs:,.0f}",
      mean_ms("tidemq_storage_fsync_duration_seconds"),
      mean_ms("tidemq_store_write_duration_seconds"), per_commit,
      f"{d('tidemq_messages_stored_total'):,.0f}",
      f"{d('tidemq_messages_dropped_total'):,.0f}", sep=" | ")
EOF

echo "binaries: $bin; files: $work" >&2
echo "sizes: SESSIONS=$SESSIONS MESSAGES=$MESSAGES OFFLINE_PUBLISHERS=$OFFLINE_PUBLISHERS" \
    "OFFLINE_INFLIGHT=$OFFLINE_INFLIGHT CONCURRENCY=$CONCURRENCY PAIRS=$PAIRS INFLIGHT=$INFLIGHT" \
    "SECS=$SECS ROUNDS=$ROUNDS RESTARTS=$RESTARTS${NODE_ENV:+ NODE_ENV=$NODE_ENV}"

# --- a. persistent vs clean subscribers ----------------------------------
run_pairs() { # NAME MODE
    local name=$1 mode=$2 port
    port="$(free_port)"
    start_node "$name" "$work/$name" "$port" TIDEMQ_SESSION__MAX_QUEUED_MESSAGES=100000
    local persistent=()
    [ "$mode" = persistent ] && persistent=(--persistent)
    bench sub --port "$port" --client-prefix "$name-s" --count "$PAIRS" --topic 'bench/%i' \
        --qos 1 "${persistent[@]}" --duration-secs $((SECS * 6 + 30)) --idle-secs 2 \
        >"$work/$name.sub.json" 2>"$work/$name.sub.err" &
    local sub_pid=$!
    pids+=("$sub_pid")
    for _ in $(seq 600); do
        grep -q '^ready:' "$work/$name.sub.err" && break
        kill -0 "$sub_pid" 2>/dev/null || { echo "$name: subscribers failed: $(cat "$work/$name.sub.err")" >&2; return 1; }
        sleep 0.1
    done
    metrics "$work/$name.before"
    local cpu_before
    cpu_before="$(cpu_secs "$node_pid")"
    bench pub --port "$port" --client-prefix "$name-p" --count "$PAIRS" --topic 'bench/%i' \
        --qos 1 --inflight "$INFLIGHT" --duration-secs "$SECS" \
        >"$work/$name.pub.json" 2>"$work/$name.pub.err"
    local cpu_after
    cpu_after="$(cpu_secs "$node_pid")"
    wait "$sub_pid"
    metrics "$work/$name.metrics"
    stop_node "$node_pid"
    local pub="$work/$name.pub.json" sub="$work/$name.sub.json"
    printf '| %s | %s | %.0f | %s | %s | %.0f | %s | %s | %s | %s | %s |\n' "$name" "$mode" \
        "$(field "$pub" report avg_ops_per_sec)" "$(field "$pub" report p50_us)" \
        "$(field "$pub" report p99_us)" "$(field "$sub" report avg_ops_per_sec)" \
        "$(field "$sub" report p50_us)" "$(field "$sub" report p99_us)" \
        "$(awk -v r="$(field "$sub" report success)" -v s="$(field "$pub" report success)" \
            'BEGIN { if (s > 0) printf "%.2f %%", 100 * r / s }')" \
        "$(awk -v b="$cpu_before" -v a="$cpu_after" -v s="$(field "$pub" report success)" \
            'BEGIN { if (s > 0) printf "%.2f s, %.1f µs/msg", a - b, 1e6 * (a - b) / s }')" \
        "$(python3 "$work/storage.py" "$work/$name.before" "$work/$name.metrics" "$SECS")"
}

if [ "$ROUNDS" -gt 0 ]; then
    echo
    settings="sync=always"
    [ -z "${NODE_ENV:-}" ] || settings="node environment TIDEMQ_STORAGE__SYNC=always $NODE_ENV (the last word for a variable wins)"
    echo "## a. QoS 1, $PAIRS publishers × $INFLIGHT in flight → $PAIRS subscribers, ${SECS}s, $settings"
    echo
    echo "| run | subscribers | acked msgs/s | PUBACK p50 µs | PUBACK p99 µs | received msgs/s | e2e p50 µs | e2e p99 µs | delivered | node CPU while publishing | fsyncs/s | fsync mean ms | store write mean ms | requests per commit | stored | dropped |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for round in $(seq 1 "$ROUNDS"); do
        for mode in persistent clean; do
            run_pairs "a$round-$mode" "$mode"
        done
    done | tee "$work/a.md"
    # Means over the rounds and persistent / clean.
    awk -F'|' '
        { mode = $3; gsub(/ /, "", mode); n[mode]++
          for (i = 4; i <= 9; i++) s[mode, i] += $i }
        END {
            split("acked msgs/s|PUBACK p50 µs|PUBACK p99 µs|received msgs/s|e2e p50 µs|e2e p99 µs", label, "|")
            print ""; print "| mean of the rounds | persistent | clean | persistent / clean |"; print "|---|---|---|---|"
            for (i = 4; i <= 9; i++) {
                p = s["persistent", i] / n["persistent"]; c = s["clean", i] / n["clean"]
                printf "| %s | %.0f | %.0f | %.2f |\n", label[i - 3], p, c, (c > 0 ? p / c : 0)
            }
        }' "$work/a.md"
fi

# --- b. and c. offline sessions: memory and restart time -----------------
[ "$SESSIONS" -gt 0 ] || exit 0

# One row of the restart table, from the spawn helper's figures.
timing_row() { # LABEL
    printf '| %s | %.3f | %.3f | %.3f |\n' "$1" "$(jq .ready_s <<<"$node_timing")" \
        "$(jq .tcp_s <<<"$node_timing")" "$(jq .connack_s <<<"$node_timing")" >>"$work/c.md"
}

dir="$work/offline"
port="$(free_port)"
start_node offline "$dir" "$port"
timing_row "empty, first start (creates the data directory)"
for i in $(seq 1 "$RESTARTS"); do
    stop_node "$node_pid"
    start_node offline "$dir" "$port"
    timing_row "empty, restart $i"
done
sleep 1
rss_before="$(rss_mib "$node_pid")"
metrics "$work/offline.before"
bench offline --port "$port" --sessions "$SESSIONS" --messages "$MESSAGES" \
    --publishers "$OFFLINE_PUBLISHERS" --inflight "$OFFLINE_INFLIGHT" \
    --concurrency "$CONCURRENCY" --timeout-ms 30000 --client-prefix o \
    >"$work/offline.json" 2>"$work/offline.err"
sleep 2
rss_after="$(rss_mib "$node_pid")"
hwm_after="$(hwm_mib "$node_pid")"
metrics "$work/offline.metrics"
disk="$(du -sh "$dir/messages" | cut -f1) messages, $(du -sh "$dir/meta" | cut -f1) meta"
rss_restart=()
for i in $(seq 1 "$RESTARTS"); do
    stop_node "$node_pid"
    start_node offline "$dir" "$port"
    timing_row "$SESSIONS sessions × $MESSAGES messages, restart $i"
    sleep 1
    rss_restart+=("$(rss_mib "$node_pid")")
done
stop_node "$node_pid"
# What each start of the node replayed and how long that and the restore
# into memory took, from the timestamps of its own log lines ("persistent
# sessions restored" repeats the replay's took_ms).
starts() {
    python3 - "$work/offline.log" <<'EOF'
import re, sys
from datetime import datetime

rows, replayed = [], None
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    ts = line.split(" ", 1)[0]
    if "message store recovered" in line:
        fields = dict(re.findall(r"(\w+)=(\d+)", line))
        replayed = (datetime.fromisoformat(ts.rstrip("Z")), fields)
    elif "persistent sessions restored" in line and replayed:
        at, f = replayed
        restore = (datetime.fromisoformat(ts.rstrip("Z")) - at).total_seconds() * 1000
        rows.append(f"{f['sessions']} sessions, {f['queued']} queued, {f['records']} records: "
                    f"replay {f['took_ms']} ms + restore {restore:.0f} ms")
print("; ".join(rows))
EOF
}

o="$work/offline.json"
echo
echo "## b. $SESSIONS offline persistent sessions × $MESSAGES QoS 1 messages (mqtt offline)"
echo
echo "| figure | value |"
echo "|---|---|"
printf '| phase 1: sessions subscribed and offline | %s of %s in %.1f s (%.0f/s), failed %s, timeout %s, subscribe p50 %s µs, p99 %s µs |\n' \
    "$(field "$o" sessions success)" "$SESSIONS" "$(field "$o" sessions seconds)" \
    "$(field "$o" sessions avg_ops_per_sec)" "$(field "$o" sessions failed)" \
    "$(field "$o" sessions timeout)" "$(field "$o" sessions p50_us)" "$(field "$o" sessions p99_us)"
printf '| phase 2: messages acknowledged | %s of %s in %.1f s (%.0f/s), failed %s, timeout %s, PUBACK p50 %s µs, p99 %s µs |\n' \
    "$(field "$o" report success)" "$((SESSIONS * MESSAGES))" "$(field "$o" report seconds)" \
    "$(field "$o" report avg_ops_per_sec)" "$(field "$o" report failed)" \
    "$(field "$o" report timeout)" "$(field "$o" report p50_us)" "$(field "$o" report p99_us)"
echo "| VmRSS before the load | $rss_before MiB |"
echo "| VmRSS after the load (peak VmHWM) | $rss_after MiB ($hwm_after MiB) |"
echo "| VmRSS after each restart | ${rss_restart[*]} MiB |"
echo "| data directory after the load | $disk |"
offline_secs="$(jq -rs '[.[] | select(.report)] | last | .sessions.seconds + .report.seconds' "$o")"
echo "| storage during both phases | $(python3 "$work/storage.py" "$work/offline.before" "$work/offline.metrics" "$offline_secs" |
    awk -F' [|] ' '{ printf "%s fsyncs/s, fsync mean %s ms, store write mean %s ms, %s requests per commit, %s stored, %s dropped", $1, $2, $3, $4, $5, $6 }') |"
echo "| every start of the node (log) | $(starts) |"
echo "| compactions (log) | $(sed 's/\x1b\[[0-9;]*m//g' "$work/offline.log" | grep ' compacted ' |
    sed 's/.* compacted //' | paste -sd ';' | sed 's/;/; /g') |"
echo
echo "## c. restart times (SIGKILL, then spawn → ready line / TCP connect / CONNACK), seconds"
echo
echo "| node | ready line | TCP connect | CONNACK |"
echo "|---|---|---|---|"
cat "$work/c.md"
grep -v '^connected \|^phase ' "$work/offline.err" >&2 || true
