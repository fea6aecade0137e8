# Shared by the meta benchmark scripts (source it): a release `tidemq-meta`
# node with fsync on in a temporary directory, killed and removed at exit.
#
#   start_meta DATA_GROUPS [tidemq-meta flags...]   sets $port, $pid, $work
#
# BIN_DIR: the release binaries ($bin).
bin="${BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/tidemq-target}/release}"
work="$(mktemp -d)"
pid=""
cleanup() {
    [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start_meta() {
    local groups=$1; shift
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
    "$bin/tidemq-meta" --grpc-addr "127.0.0.1:$port" --data-dir "$work/node" \
        --data-groups "$groups" "$@" >"$work/node.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do
        grep -q "serving gRPC" "$work/node.log" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "tidemq-meta did not start; its log:" >&2
    cat "$work/node.log" >&2
    return 1
}
