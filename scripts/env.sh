# Shared setup for the scripts: a persistent target directory and the system
# packages the workspace needs. Sourced, not run.

# One target directory outside the clone, shared by CI and local builds, so a
# fresh clone does not rebuild every dependency (RocksDB alone takes minutes).
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tidemq-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Stops the calling script unless every command named is on PATH.
need_tools() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
    done
}

# Installs a Debian package set when a file it provides is missing.
ensure_package() {
    local probe="$1"; shift
    if ! compgen -G "$probe" >/dev/null; then
        echo "installing $* (missing $probe)" >&2
        local sudo=""
        [ "$(id -u)" = 0 ] || sudo="sudo"
        $sudo apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
}

ensure_system_deps() {
    local root
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    # RocksDB's build runs bindgen, which needs libclang and clang's headers.
    if grep -q 'name = "librocksdb-sys"' "$root/Cargo.lock" 2>/dev/null; then
        # Probe for the file bindgen loads: llvm-14's lib folder also holds
        # libclang-cpp.so.14 (a different library) on a fresh machine.
        ensure_package "/usr/lib/llvm-14/lib/libclang.so.1" libclang1-14
        ensure_package "/usr/lib/llvm-14/lib/clang/*/include/stdbool.h" libclang-common-14-dev
        export LIBCLANG_PATH="${LIBCLANG_PATH:-/usr/lib/llvm-14/lib}"
    fi
    # The tidemq binary's allocator (tikv-jemalloc-sys) builds jemalloc
    # with its configure script and make.
    ensure_package "/usr/bin/make" make
    # The full-disk tests make and mount small filesystems of their own.
    ensure_package "/sbin/mkfs.ext4" e2fsprogs
    ensure_package "/bin/mount" mount
    # Interop tests run clients nobody here wrote: Mosquitto's command-line
    # clients and MQTT.js (node; the npm package from its lock file).
    ensure_package "/usr/bin/mosquitto_pub" mosquitto-clients
    ensure_package "/usr/bin/node" nodejs npm
    if [ ! -d "$root/interop/mqttjs/node_modules/mqtt" ]; then
        echo "installing MQTT.js (npm ci in interop/mqttjs)" >&2
        (cd "$root/interop/mqttjs" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    fi
}
