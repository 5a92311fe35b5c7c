#!/usr/bin/env bash
# A/B throughput of one feature switched on and off: the same release binary, the same wrk
# command for both sides.
#
#   scripts/bench/onoff.sh events  [ROUNDS]   events to a local tansu broker vs no broker
#   scripts/bench/onoff.sh metrics [ROUNDS]   metrics on vs --metrics-enabled false
#
# Servers run 2 workers x 2 threads on 127.0.0.1 and are loaded with `wrk -t2 -c32` posting an
# iris body of ROWS rows (default 1) to /api/ml/predict, after a warm-up. Two designs (DESIGN=...):
#   alternate (default)  a fresh server per run, one side after the other (off on, on off,
#                        ...): each run has the machine to itself, but the machine's speed
#                        drifts between runs.
#   interleave           both servers start once and stay up (the idle one costs nothing);
#                        short runs (RUN_S=1 suits) take turns, off on, on off, ...: the two
#                        runs of a pair are seconds apart, so the machine's drift hits both.
# Printed per run: requests/s, CPU seconds of the server's processes (master, workers and their
# threads, Kafka threads included) and of the broker, CPU seconds stolen by the hypervisor, and
# the load average. At the end, for each side, the median and mean; the loss of the "on" side
# against the "off" side by medians, by means, and as the median of the per-round ratios
# (with a 95% bootstrap interval: the figure to read in the interleaved design); the same
# corrected for stolen CPU; and the server's CPU per request.
#
# Environment: DESIGN; ROWS (default 1); RUN_S (default 10); WARMUP_S (2); WORKERS (2); THREADS (2);
# CONNECTIONS (32); ON_ARGS, more server arguments for the "on" side (for example
# "--kafka-linger-ms 50"); MLDEPLOY_BIN (default target/release/mldeploy, built when missing);
# ONOFF_OUT, a directory for the raw output (default a new temporary one).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
MODE=${1:-}
ROUNDS=${2:-5}
DESIGN=${DESIGN:-alternate}
RUN_S=${RUN_S:-10}
WARMUP_S=${WARMUP_S:-2}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-32}
ROWS=${ROWS:-1}
BIN=${MLDEPLOY_BIN:-$ROOT/target/release/mldeploy}
# shellcheck source=common.sh
source "$ROOT/scripts/bench/common.sh"

case $MODE in
    events | metrics) ;;
    *) die "usage: onoff.sh events|metrics [ROUNDS]" ;;
esac
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[[ $ROWS =~ ^[1-9][0-9]*$ ]] || die "ROWS must be a positive number"
[[ $DESIGN == alternate || $DESIGN == interleave ]] || die "DESIGN must be alternate or interleave"
command -v wrk >/dev/null || die "wrk is missing (scripts/setup-test-deps.sh installs it)"
ensure_release_bin

OUT=${ONOFF_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-onoff.XXXXXX")}
mkdir -p "$OUT"
BODY="$OUT/body-$ROWS.json"
iris_body "$ROWS" "$BODY"

# Clock ticks of utime + stime of one process (all its threads) and its reaped children.
cpu_ticks() {
    awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat" 2>/dev/null || echo 0
}

# CPU ticks of a master and its live workers.
tree_ticks() {
    local master=$1 total child
    total=$(cpu_ticks "$master")
    for child in $(pgrep -P "$master" || true); do
        total=$((total + $(cpu_ticks "$child")))
    done
    echo "$total"
}

# Clock ticks the hypervisor gave to others while this machine wanted to run (all CPUs).
steal_ticks() {
    awk '$1 == "cpu" {print $9}' /proc/stat
}

BROKER_PORT=
BROKER_PID=
declare -A SERVER_PID=() SERVER_PORT=()
cleanup() {
    local side
    for side in "${!SERVER_PID[@]}"; do
        kill -TERM "${SERVER_PID[$side]}" 2>/dev/null || true
        wait "${SERVER_PID[$side]}" 2>/dev/null || true
    done
    if [[ -n $BROKER_PORT ]]; then
        "$ROOT/scripts/kafka-broker.sh" stop "$BROKER_PORT" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

if [[ $MODE == events ]]; then
    BROKER_PORT=$(free_port)
    "$ROOT/scripts/kafka-broker.sh" start "$BROKER_PORT" >/dev/null
    "$ROOT/scripts/kafka-broker.sh" topic "$BROKER_PORT" predict >/dev/null
    BROKER_PID=$("$ROOT/scripts/kafka-broker.sh" pid "$BROKER_PORT")
fi

# The arguments that make the "on" and "off" sides differ.
side_args() {
    case "$MODE:$1" in
        events:on) echo "--kafka-broker 127.0.0.1:$BROKER_PORT ${ON_ARGS:-}" ;;
        events:off) echo "" ;;
        metrics:on) echo "--metrics-enabled true ${ON_ARGS:-}" ;;
        metrics:off) echo "--metrics-enabled false" ;;
    esac
}

wrk_run() {
    local port=$1 seconds=$2
    BENCH_BODY="$BODY" timeout $((seconds + 15)) wrk -t2 -c"$CONNECTIONS" -d"${seconds}s" \
        --latency -s "$ROOT/scripts/bench/post_json.lua" "http://127.0.0.1:$port/api/ml/predict"
}

start_server() {
    local side=$1 port
    port=$(free_port)
    # shellcheck disable=SC2046 # side_args is a list of words
    "$BIN" serve --workers "$WORKERS" --threads "$THREADS" --bind "127.0.0.1:$port" \
        --log-level error $(side_args "$side") >"$OUT/server-$side.log" 2>&1 &
    SERVER_PID[$side]=$!
    SERVER_PORT[$side]=$port
    wait_ready "$port" "${SERVER_PID[$side]}"
}

stop_server() {
    local side=$1
    kill -TERM "${SERVER_PID[$side]}"
    wait "${SERVER_PID[$side]}" || die "server ($side) exited non-zero after TERM"
    unset "SERVER_PID[$side]"
}

seconds_of() {
    awk -v t="$1" -v hz="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", t / hz}'
}

# Loads the running servers of the given sides with one wrk each, all at the same time, and
# prints "side rps server_cpu_s broker_cpu_s non2xx socket_errors steal_s loadavg" for each.
measure() {
    local side steal_before steal_after broker_before broker_after out rps errors
    local -A before=() after=()
    if ((WARMUP_S > 0)); then
        for side in "$@"; do wrk_run "${SERVER_PORT[$side]}" "$WARMUP_S" >/dev/null; done
    fi
    for side in "$@"; do before[$side]=$(tree_ticks "${SERVER_PID[$side]}"); done
    broker_before=0
    [[ -n $BROKER_PID ]] && broker_before=$(cpu_ticks "$BROKER_PID")
    steal_before=$(steal_ticks)
    for side in "$@"; do wrk_run "${SERVER_PORT[$side]}" "$RUN_S" >"$OUT/wrk-$side-$RUN_INDEX.txt" & done
    wait
    steal_after=$(steal_ticks)
    broker_after=0
    [[ -n $BROKER_PID ]] && broker_after=$(cpu_ticks "$BROKER_PID")
    for side in "$@"; do after[$side]=$(tree_ticks "${SERVER_PID[$side]}"); done
    for side in "$@"; do
        out="$OUT/wrk-$side-$RUN_INDEX.txt"
        rps=$(awk '/Requests\/sec/ {print $2}' "$out")
        errors=$(sed -n 's/.*non2xx=\([0-9]*\) connect=\([0-9]*\) read=\([0-9]*\) write=\([0-9]*\) timeout=\([0-9]*\).*/\1 \2+\3+\4+\5/p' "$out")
        printf '%s %s %s %s %s %s %s\n' "$side" "$rps" "$(seconds_of $((after[$side] - before[$side])))" \
            "$(seconds_of $((broker_after - broker_before)))" "$errors" \
            "$(seconds_of $((steal_after - steal_before)))" "$(cut -d' ' -f1 /proc/loadavg)"
    done
}

echo "mode=$MODE design=$DESIGN rows=$ROWS rounds=$ROUNDS run=${RUN_S}s warmup=${WARMUP_S}s workers=$WORKERS threads=$THREADS connections=$CONNECTIONS nproc=$(nproc)"
echo "side rps server_cpu_s broker_cpu_s non2xx socket_errors(c+r+w+t) steal_s loadavg"
RESULTS="$OUT/results.txt"
: >"$RESULTS"
if [[ $DESIGN == interleave ]]; then
    for side in off on; do
        start_server "$side"
        wrk_run "${SERVER_PORT[$side]}" "$WARMUP_S" >/dev/null
    done
    WARMUP_S=0
fi
for ((RUN_INDEX = 1; RUN_INDEX <= ROUNDS; RUN_INDEX++)); do
    # Alternate which side goes first, so neither always runs on a warmer machine.
    if ((RUN_INDEX % 2)); then order="off on"; else order="on off"; fi
    if [[ $DESIGN == interleave ]]; then
        for side in $order; do measure "$side" | tee -a "$RESULTS"; done
    else
        for side in $order; do
            start_server "$side"
            measure "$side" | tee -a "$RESULTS"
            stop_server "$side"
        done
    fi
done

python3 - "$RESULTS" "$RUN_S" "$(nproc)" <<'EOF'
import random, statistics, sys
run_s, ncpu = float(sys.argv[2]), int(sys.argv[3])
runs = {"on": [], "off": []}
for line in open(sys.argv[1]):
    f = line.split()
    side, rps, server_cpu, steal = f[0], float(f[1]), float(f[2]), float(f[6])
    # Requests/s had the hypervisor not taken `steal` CPU seconds from this machine.
    unstolen = rps * ncpu * run_s / (ncpu * run_s - steal)
    runs[side].append({"rps": rps, "unstolen": unstolen, "cpu_us": server_cpu / (rps * run_s) * 1e6})
def figures(key):
    return {side: [r[key] for r in runs[side]] for side in runs}
for key, what in (("rps", "requests/s"), ("unstolen", "requests/s corrected for stolen CPU")):
    v = figures(key)
    print(f"{what}:")
    for side in ("off", "on"):
        print(f"  {side}: median {statistics.median(v[side]):,.0f}, mean {statistics.mean(v[side]):,.0f}, "
              f"min {min(v[side]):,.0f}, max {max(v[side]):,.0f}")
    ratios = sorted(a / b for a, b in zip(v["on"], v["off"]))
    # 95% interval of the median ratio: percentile bootstrap over the pairs (fixed seed).
    rng = random.Random(1)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(2000))
    low, high = boot[49], boot[1949]
    print(f"  loss with the feature on: {(1 - statistics.median(v['on']) / statistics.median(v['off'])) * 100:.1f}% "
          f"(medians), {(1 - statistics.mean(v['on']) / statistics.mean(v['off'])) * 100:.1f}% (means), "
          f"{(1 - statistics.median(ratios)) * 100:.1f}% (median of {len(ratios)} per-round ratios, "
          f"which range from {ratios[0]:.3f} to {ratios[-1]:.3f}); 95% interval of that loss: "
          f"{(1 - high) * 100:.1f}% to {(1 - low) * 100:.1f}%")
v = figures("cpu_us")
print("server CPU per request: " + ", ".join(
    f"{side} {statistics.median(v[side]):.1f} us (median)" for side in ("off", "on")))
EOF
echo "raw output: $OUT"
