#!/usr/bin/env bash
# A meta node's restart with millions of sessions and snapshots on disk: a
# release `tidemq-meta` node (4 data groups, a snapshot every SNAPSHOT_AFTER
# entries) is loaded with SESSIONS sessions (100 per request), killed with
# SIGKILL and started again. Prints the snapshots on disk, the time from
# the restart to "serving gRPC" and the restarted node's peak RSS.
#
# Usage: benches/meta-restart.sh   (SESSIONS [5000000], SNAPSHOT_AFTER [300];
#        BIN_DIR: the release binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
source benches/meta-lib.sh
sessions=${SESSIONS:-5000000}
flags=(--snapshot-after "${SNAPSHOT_AFTER:-300}")
start_meta 4 "${flags[@]}"
"$bin/tidemq-bench" meta create-session --port "$port" --count "$sessions" --batch 100 \
    --concurrency 64 --timeout-ms 3000 --output json | tail -n 1 |
    python3 -c "import json,sys; r=json.load(sys.stdin)['report']; print(f\"loaded {r['sessions']} sessions at {r['avg_ops_per_sec']:.0f}/s\")"
sleep 3
echo "snapshots on disk: $(ls "$work/node/snapshots" | tr '\n' ' ')"
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
mv "$work/node.log" "$work/first.log"
started=$(date +%s.%N)
start_meta 4 "${flags[@]}"
ready=$(date +%s.%N)
python3 -c "print(f'restart to serving gRPC: {$ready - $started:.2f} s')"
sleep 2
grep VmHWM "/proc/$pid/status"
