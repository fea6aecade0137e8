#!/usr/bin/env bash
# Runs the Eclipse Paho MQTT interoperability suite against a running broker,
# one test per process, and prints one result line per test plus a summary.
#
#   scripts/paho-interop.sh SUITE_DIR PORT [v3|v5|all] [TEST_NAME...]
#
# SUITE_DIR is a checkout of eclipse/paho.mqtt.testing, or its interoperability/
# folder (the one holding client_test.py and client_test5.py). The suite is
# fetched separately (e.g. into /tmp/paho) and is never copied into or
# committed to this repository; this script only drives it.
#
#   v3  -> client_test.py  (MQTT 3.1.1)
#   v5  -> client_test5.py (MQTT 5.0)
#   all -> both (default)
# TEST_NAME... limits the run to those methods of class Test (e.g. test_basic,
# testBasic); a name is run in every selected file that defines it.
#
# Why one test at a time: the suite's scripts parse their own options and then
# call unittest.main() on the full sys.argv, which rejects --hostname; and one
# hung test must not take the rest down. Each test is run as
#   python3 -c '<patch unittest.main argv to Test.NAME; runpy the file>' \
#       --hostname=HOST -p PORT
# from inside the interoperability folder, under `timeout`. ("-p PORT" must be
# two words: client_test5.py removes "-p" and the value from sys.argv.)
#
# Every test's setUpClass first cleans the sessions of client ids "myclientid"
# and "myclientid2" and deletes all retained messages (it subscribes to "#"),
# so tests are independent but the broker must not be shared with other users.
#
# Output: "v5 test_basic PASS|FAIL|TIMEOUT" per test, a reason line per failure,
# then "N passed, M failed" alone on the last line (timeouts count as failed).
# Each test's full output is kept in $PAHO_LOG_DIR/<v3|v5>.<test>.log and the
# result lines in $PAHO_LOG_DIR/results.txt.
#
# Environment: PAHO_HOST (127.0.0.1), PAHO_TIMEOUT seconds per test (60),
# PAHO_LOG_DIR (/tmp/paho-logs), PYTHON (python3).
# Exit status: 0 all passed, 1 some failed, 2 usage error / broker unreachable.
set -uo pipefail

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

[ $# -ge 2 ] || usage
suite_dir=$1
port=$2
which=${3:-all}
if [ $# -ge 3 ]; then shift 3; else shift $#; fi
wanted=("$@")

host=${PAHO_HOST:-127.0.0.1}
limit=${PAHO_TIMEOUT:-60}
log_dir=${PAHO_LOG_DIR:-/tmp/paho-logs}
python=${PYTHON:-python3}

case $port in ''|*[!0-9]*) echo "error: PORT must be a number, got '$port'" >&2; exit 2 ;; esac
case $which in
    v3) files=(v3) ;;
    v5) files=(v5) ;;
    all) files=(v3 v5) ;;
    *) echo "error: third argument must be v3, v5 or all, got '$which'" >&2; exit 2 ;;
esac

if [ -f "$suite_dir/interoperability/client_test5.py" ]; then
    suite_dir=$suite_dir/interoperability
fi
if [ ! -f "$suite_dir/client_test.py" ] || [ ! -f "$suite_dir/client_test5.py" ]; then
    echo "error: no client_test.py / client_test5.py in '$suite_dir'" >&2
    echo "       fetch eclipse/paho.mqtt.testing and pass it or its interoperability/ folder" >&2
    exit 2
fi
suite_dir=$(cd "$suite_dir" && pwd)

command -v "$python" >/dev/null 2>&1 || { echo "error: $python not found" >&2; exit 2; }
command -v timeout >/dev/null 2>&1 || { echo "error: timeout (coreutils) not found" >&2; exit 2; }

# A broker that is not listening would make every test fail slowly: say so once.
if ! timeout 5 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; then
    echo "error: nothing accepts connections on $host:$port" >&2
    exit 2
fi

mkdir -p "$log_dir" || { echo "error: cannot create log dir '$log_dir'" >&2; exit 2; }
results=$log_dir/results.txt
: >"$results"

file_of() { if [ "$1" = v3 ]; then echo client_test.py; else echo client_test5.py; fi; }

# Test names as unittest's default loader finds them: methods of class Test
# whose names start with "test", in source order.
list_tests() {
    "$python" - "$suite_dir/$(file_of "$1")" <<'EOF'
import ast, sys
tree = ast.parse(open(sys.argv[1], encoding="utf-8").read())
for node in tree.body:
    if isinstance(node, ast.ClassDef) and node.name == "Test":
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.name.startswith("test"):
                print(item.name)
EOF
}

# One line saying why a test failed, taken from its log: the first exception
# line, with the source line that raised it (tracebacks print it just above,
# followed on newer Pythons by a line of ^^^^ markers).
reason_of() {
    local line
    line=$(awk '
        /^([A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Exit)|socket\.timeout)([^A-Za-z0-9_]|$)/ {
            if (src != "") print $0 "  [at: " src "]"; else print $0
            found = 1; exit
        }
        /^    / && !/^ *File "/ && !/^[ ^~]*$/ { src = $0; sub(/^ +/, "", src) }
        END { if (!found) exit 1 }' "$1")
    if [ -z "$line" ]; then
        line=$(grep -E '^(FAIL|ERROR):' "$1" | head -1)
    fi
    [ -n "$line" ] || line="(no error line; see log)"
    printf '%s' "${line:0:240}"
}

runner='import os, sys, unittest, runpy
main = unittest.main
unittest.main = lambda *a, **k: main(*a, argv=[sys.argv[0], "Test." + os.environ["PAHO_TEST"]], **k)
runpy.run_path(os.environ["PAHO_FILE"], run_name="__main__")'

passed=0
failed=0
timedout=0
failures=()
matched=()

for v in "${files[@]}"; do
    mapfile -t available < <(list_tests "$v")
    if [ ${#available[@]} -eq 0 ]; then
        echo "$v (no tests found in $(file_of "$v"))"
        failed=$((failed + 1))
        continue
    fi
    tests=()
    if [ ${#wanted[@]} -eq 0 ]; then
        tests=("${available[@]}")
    else
        for w in "${wanted[@]}"; do
            for a in "${available[@]}"; do
                if [ "$w" = "$a" ]; then tests+=("$a"); matched+=("$w"); fi
            done
        done
    fi
    for t in "${tests[@]}"; do
        log=$log_dir/$v.$t.log
        start=$(date +%s)
        (
            cd "$suite_dir" &&
            PAHO_TEST=$t PAHO_FILE=$(file_of "$v") PYTHONUNBUFFERED=1 \
                timeout -k 5 "$limit" "$python" -c "$runner" --hostname="$host" -p "$port"
        ) >"$log" 2>&1 </dev/null
        rc=$?
        secs=$(( $(date +%s) - start ))
        echo "# exit status $rc after ${secs}s" >>"$log"
        if [ $rc -eq 0 ]; then
            status=PASS
            passed=$((passed + 1))
        elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
            status=TIMEOUT
            timedout=$((timedout + 1))
            failed=$((failed + 1))
            failures+=("$v $t: timed out after ${limit}s")
        else
            status=FAIL
            failed=$((failed + 1))
            failures+=("$v $t: $(reason_of "$log")")
        fi
        echo "$v $t $status" | tee -a "$results"
    done
done

# Names asked for that no selected file defines.
for w in "${wanted[@]}"; do
    found=no
    for m in "${matched[@]}"; do [ "$m" = "$w" ] && found=yes; done
    if [ $found = no ]; then
        echo "$which $w UNKNOWN" | tee -a "$results"
        failed=$((failed + 1))
        failures+=("$w: no such test in $(for v in "${files[@]}"; do printf '%s ' "$(file_of "$v")"; done)")
    fi
done

if [ ${#failures[@]} -gt 0 ]; then
    echo "failures (logs in $log_dir):"
    for f in "${failures[@]}"; do echo "  $f"; done
fi
[ $timedout -eq 0 ] || echo "($timedout of the failures timed out)"
echo "$passed passed, $failed failed" | tee -a "$results"
[ $failed -eq 0 ]
