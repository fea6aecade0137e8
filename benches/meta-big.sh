#!/usr/bin/env bash
# The meta service with millions of sessions (issue 12): a release
# `tidemq-meta` node with fsync on is first loaded with PRELOAD sessions
# (closed loop, BATCH per request), then takes RATE sessions/s open loop
# from CONCURRENCY clients for SECS seconds. Prints the preload's rate, the
# measured run's report, the worst per-second p99, the snapshots built
# during it and the data directory's size.
#
# Usage: benches/meta-big.sh   (PRELOAD [5000000], BATCH [100], RATE [50000],
#        SECS [120], CONCURRENCY [3000], DATA_GROUPS [4]; META_ARGS: more
#        tidemq-meta flags; KEEP_LOG=PREFIX keeps the logs; BIN_DIR: binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
preload=${PRELOAD:-5000000} batch=${BATCH:-100} rate=${RATE:-50000}
secs=${SECS:-120} concurrency=${CONCURRENCY:-3000} groups=${DATA_GROUPS:-4}
source benches/meta-lib.sh
start_meta "$groups" ${META_ARGS:-}
load() { "$bin/tidemq-bench" meta create-session --port "$port" --timeout-ms 3000 --output json "$@"; }

load --count "$preload" --batch "$batch" --concurrency 64 | tail -n 1 | python3 -c "
import json, sys; r = json.load(sys.stdin)
print(f'preload: {r}')"
snapshots_before=$(grep -c "snapshot checkpoint built\|snapshot built" "$work/node.log" || true)
load --count 1000000000 --duration-secs "$secs" --rate "$rate" --concurrency "$concurrency" \
    >"$work/run.jsonl"
python3 - "$work/run.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
final, seconds = lines[-1], lines[:-1]
print("run:", json.dumps(final))
keys = [k for k in seconds[0] if "p99" in k] if seconds else []
print("per-second p99 ms:", " ".join(f"{s.get('p99_ms', 0):.0f}" for s in seconds))
for k in keys:
    worst = max(seconds, key=lambda s: s.get(k, 0))
    print(f"worst per-second {k}: {worst.get(k)} (second {seconds.index(worst) + 1} of {len(seconds)})")
PY
if [ -n "${KEEP_LOG:-}" ]; then
    cp "$work/node.log" "$KEEP_LOG.node.log"
    cp "$work/run.jsonl" "$KEEP_LOG.run.jsonl"
    cp "$work"/node/meta*/rocksdb/LOG "$KEEP_LOG.rocksdb.LOG" 2>/dev/null || cp "$work"/node/rocksdb/LOG "$KEEP_LOG.rocksdb.LOG" 2>/dev/null || true
fi
snapshots_after=$(grep -c "snapshot checkpoint built\|snapshot built" "$work/node.log" || true)
echo "snapshots built during the run: $((snapshots_after - snapshots_before))"
grep "snapshot checkpoint built\|snapshot built" "$work/node.log" | tail -n 3 || true
du -sh "$work/node" | cut -f1 | sed 's/^/data directory: /'
