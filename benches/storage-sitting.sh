#!/usr/bin/env bash
# The storage paths of issue 12 in one sitting: fio's figures for the same
# patterns, then storage_ab's three loads in alternating rounds, then fio
# again (the disk drifts: compare within a sitting, never across sittings).
#
#   fio      1 KiB writes + fdatasync, 1 job and 32 jobs; 1 MiB writes + fdatasync
#   32 × 32  1 KiB records, 32 producers on 32 partition files
#   1 × 32   1 KiB records, 32 producers on one partition file
#   1 × 8    64 KiB records, 8 producers on one partition file
#
# Usage: benches/storage-sitting.sh   (ROUNDS [3], SECS [6], DIR [/tmp])
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
ensure_package /usr/bin/fio fio
ROUNDS=${ROUNDS:-3} SECS=${SECS:-6}
cargo build --release -q -p tidemq-examples --example storage_ab
bin="$CARGO_TARGET_DIR/release/examples/storage_ab"
work=$(mktemp -d "${DIR:-/tmp}/storage-sitting.XXXXXX")
trap 'rm -rf "$work"' EXIT

fio_run() {
    local name=$1; shift
    fio --name="$name" --directory="$work" --runtime=5 --time_based --ioengine=psync \
        --rw=write --group_reporting --output-format=json "$@" 2>/dev/null |
        python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['write']; \
print(f'fio $name: {j[\"iops\"]:.0f} IOPS, {j[\"bw\"]/1024:.1f} MiB/s')"
    rm -f "$work/$name".*
}
fio_all() {
    fio_run j1-1k-fdatasync --bs=1k --fdatasync=1 --size=64m
    fio_run j32-1k-fdatasync --bs=1k --fdatasync=1 --numjobs=32 --size=8m
    fio_run bw-1m-fdatasync --bs=1m --fdatasync=1 --size=2g
}
rounds() { (cd "$work" && python3 "$OLDPWD/benches/storage-rounds.py" "$bin" "$ROUNDS" "$SECS" "$@"); }

echo "== fio"; fio_all
echo "== 32 x 32, 1 KiB"
rounds "tokio" "blocking" "executor" "executor --preallocate 0"
echo "== 1 x 32, 1 KiB"
rounds "tokio --partitions 1" "executor --partitions 1" "executor --partitions 1 --preallocate 0"
echo "== 1 x 8, 64 KiB"
rounds "tokio --partitions 1 --producers 8 --payload 65536" \
    "executor --partitions 1 --producers 8 --payload 65536" \
    "executor --partitions 1 --producers 8 --payload 65536 --preallocate 0"
echo "== fio again"; fio_all
