#!/usr/bin/env bash
# Where the CPU of metric events goes: one wrk run against a release server (2 workers x 2
# threads, 127.0.0.1) with events to a local tansu broker, then the CPU each kind of thread
# used per request, read from /proc/PID/task/*/stat before and after the run: the request
# threads (mldeploy-http), the producer thread (mldeploy-events), librdkafka's own threads
# (rdk:*, the delivery-report poller) and the broker process.
#
#   scripts/bench/event_threads.sh [SECONDS] [on|off]    defaults: 6 s, events on
#
# Environment: ROWS (rows per request body, default 1); MLDEPLOY_BIN (default
# target/release/mldeploy, built when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
RUN_S=${1:-6}
EVENTS=${2:-on}
ROWS=${ROWS:-1}
BIN=${MLDEPLOY_BIN:-$ROOT/target/release/mldeploy}
# shellcheck source=common.sh
source "$ROOT/scripts/bench/common.sh"

[[ $RUN_S =~ ^[1-9][0-9]*$ && $ROWS =~ ^[1-9][0-9]*$ ]] || die "SECONDS and ROWS must be positive numbers"
[[ $EVENTS == on || $EVENTS == off ]] || die "the second argument is on or off"
command -v wrk >/dev/null || die "wrk is missing (scripts/setup-test-deps.sh installs it)"
ensure_release_bin

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-threads.XXXXXX")
BROKER_PORT=$(free_port)
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    "$ROOT/scripts/kafka-broker.sh" stop "$BROKER_PORT" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$ROOT/scripts/kafka-broker.sh" start "$BROKER_PORT" >/dev/null
"$ROOT/scripts/kafka-broker.sh" topic "$BROKER_PORT" predict >/dev/null
BROKER_PID=$("$ROOT/scripts/kafka-broker.sh" pid "$BROKER_PORT")

iris_body "$ROWS" "$WORK/body.json"

PORT=$(free_port)
EVENT_ARGS=()
[[ $EVENTS == on ]] && EVENT_ARGS=(--kafka-broker "127.0.0.1:$BROKER_PORT")
"$BIN" serve --workers 2 --threads 2 --bind "127.0.0.1:$PORT" --log-level error "${EVENT_ARGS[@]}" &
SERVER_PID=$!
wait_ready "$PORT" "$SERVER_PID"

wrk_run() {
    BENCH_BODY="$WORK/body.json" timeout $(($1 + 15)) wrk -t2 -c32 -d"$1s" \
        -s "$ROOT/scripts/bench/post_json.lua" "http://127.0.0.1:$PORT/api/ml/predict"
}

# "thread-name ticks" for every thread of the server's processes, and the broker's total.
snapshot() {
    local pid task
    for pid in "$SERVER_PID" $(pgrep -P "$SERVER_PID"); do
        for task in /proc/"$pid"/task/*; do
            echo "$(tr ' ' '_' <"$task/comm") $(awk '{print $14 + $15}' "$task/stat" 2>/dev/null || echo 0)"
        done
    done
    echo "broker(tansu) $(awk '{print $14 + $15}' "/proc/$BROKER_PID/stat")"
}

wrk_run 2 >/dev/null
snapshot >"$WORK/before"
wrk_run "$RUN_S" >"$WORK/wrk.txt"
snapshot >"$WORK/after"
requests=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
echo "events $EVENTS, $ROWS-row bodies: $requests requests in ${RUN_S} s ($(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt") req/s)"
python3 - "$WORK/before" "$WORK/after" "$requests" "$(getconf CLK_TCK)" <<'EOF'
import collections, sys
def load(path):
    ticks = collections.Counter()
    for line in open(path):
        name, value = line.split()
        ticks[name] += int(value)
    return ticks
before, after = load(sys.argv[1]), load(sys.argv[2])
requests, hz = int(sys.argv[3]), int(sys.argv[4])
for name in sorted(after):
    used = after[name] - before.get(name, 0)
    if used:
        print(f"  {name:20s} {used / hz:6.2f} CPU-s  {used / hz / requests * 1e6:6.2f} us per request")
EOF
