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
source benches/meta-lib.sh
start_meta "$groups" --heartbeat-ms "$hb" --election-timeout-ms "$((hb * 10))-$((hb * 20))"
"$bin/tidemq-bench" meta create-session --port "$port" --count "$count" \
    --concurrency "$concurrency" --timeout-ms 3000 --output json ${BENCH_ARGS:-} | tail -n 1
