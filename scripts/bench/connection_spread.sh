#!/usr/bin/env bash
# How keep-alive connections spread over the workers, and what the spread does to the rate, the
# p99 and the context switches per request. Everything on 127.0.0.1.
#
#   scripts/bench/connection_spread.sh ROUNDS SPEC [SPEC ...]
#
# SPEC is NAME=BINARY:WORKERSxTHREADS, e.g. before=/tmp/old/mldeploy:4x2. Every server is
# started once and kept up (the idle ones cost nothing); each round runs `wrk -t2 -c32 -d3s
# --latency` against each server in turn, the order reversed every other round. During each
# run the established connections are counted per worker process (`ss`), and the workers'
# context switches (voluntary + involuntary, all threads, from /proc) are read before and after.
# One line per run: the spread (connections per worker, largest first), requests/s, p99 and
# context switches per request.
#
# Environment: MODEL (a package directory; default: the embedded demo model and one iris row),
# BODY (the JSON body for MODEL), CONNECTIONS (32), RUN_S (3).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH_DIR=$ROOT/scripts/bench
# shellcheck source=common.sh
source "$BENCH_DIR/common.sh"

ROUNDS=${1:-}
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "usage: $0 ROUNDS NAME=BINARY:WxT [...]"
shift
(($# > 0)) || die "usage: $0 ROUNDS NAME=BINARY:WxT [...]"
command -v wrk >/dev/null || die "wrk is missing (scripts/bench.sh installs it)"
CONNECTIONS=${CONNECTIONS:-32}
RUN_S=${RUN_S:-3}
MODEL=${MODEL:-}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-spread.XXXXXX")
if [[ -n $MODEL ]]; then
    BODY=${BODY:?BODY must name the JSON body for MODEL}
else
    BODY=$WORK/body-demo.json
    iris_body 1 "$BODY"
fi

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

declare -A PORT MASTER
NAMES=()
for spec in "$@"; do
    name=${spec%%=*} rest=${spec#*=}
    bin=${rest%:*} config=${rest##*:}
    w=${config%x*} t=${config#*x}
    [[ $name != "$spec" && -x $bin && $w =~ ^[0-9]+$ && $t =~ ^[0-9]+$ ]] || die "bad SPEC: $spec"
    port=$(free_port)
    args=(serve)
    [[ -n $MODEL ]] && args+=("$MODEL")
    "$bin" "${args[@]}" --workers "$w" --threads "$t" --bind "127.0.0.1:$port" --log-level error \
        >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    MASTER[$name]=$!
    PORT[$name]=$port
    NAMES+=("$name")
done
for name in "${NAMES[@]}"; do
    wait_ready "${PORT[$name]}" "${MASTER[$name]}"
done

# Context switches of every thread of the master's children.
switches() {
    local kid total=0 n
    for kid in $(cat "/proc/$1/task/$1/children" 2>/dev/null); do
        for n in $(awk '/ctxt_switches/ {print $2}' /proc/"$kid"/task/*/status 2>/dev/null); do
            total=$((total + n))
        done
    done
    echo "$total"
}

for ((round = 1; round <= ROUNDS; round++)); do
    order=("${NAMES[@]}")
    ((round % 2 == 0)) && mapfile -t order < <(printf '%s\n' "${NAMES[@]}" | tac)
    for name in "${order[@]}"; do
        port=${PORT[$name]}
        before=$(switches "${MASTER[$name]}")
        BENCH_BODY=$BODY timeout $((RUN_S + 15)) wrk -t2 -c"$CONNECTIONS" -d"${RUN_S}s" --latency \
            -s "$BENCH_DIR/post_json.lua" "http://127.0.0.1:$port/api/ml/predict" >"$WORK/wrk.txt" 2>&1 &
        wrk_pid=$!
        sleep "$(echo "$RUN_S / 2" | bc -l)"
        spread=$(ss -tnpH state established "( sport = :$port )" | grep -o 'pid=[0-9]*' | sort | uniq -c \
            | awk '{print $1}' | sort -rn | paste -sd/)
        wait "$wrk_pid" || true
        after=$(switches "${MASTER[$name]}")
        line=$(summary_of "$WORK/wrk.txt")
        requests=$(sed 's/.*requests=\([0-9]*\).*/\1/' <<<"$line")
        p99=$(sed 's/.*p99_us=\([0-9]*\).*/\1/' <<<"$line")
        non2xx=$(sed 's/.*non2xx=\([0-9]*\).*/\1/' <<<"$line")
        printf 'round %d\t%s\tspread %s\treq/s %d\tp99 %.2f ms\tswitches/request %.2f\tnon-2xx %s\n' \
            "$round" "$name" "${spread:-none}" $((requests / RUN_S)) "$(echo "$p99 / 1000" | bc -l)" \
            "$(echo "($after - $before) / ($requests + 1)" | bc -l)" "$non2xx"
    done
done
