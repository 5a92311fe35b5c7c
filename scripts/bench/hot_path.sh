#!/usr/bin/env bash
# Interleaved short runs of the prediction path against nginx and ml-deploy 2.0.0, on one
# machine, everything on 127.0.0.1.
#
#   scripts/bench/hot_path.sh [ROUNDS]      default 5 rounds
#
# Systems, all started once per configuration (workers x threads) and kept up, the idle ones
# costing nothing: nginx answering a fixed 200 (scripts/bench/nginx.conf.in); ml-deploy 2.0.0
# with the benchmark's class (scripts/bench/ml_deploy_model.py: DataFrame, predict and
# predict_proba, input echoed) and with the lean class (scripts/bench/lean_predict_model.py:
# numpy array, predict_proba, small answer); mldeploy serving the same pipeline exported as a
# package; with MLDEPLOY_BASE_BIN set, a second mldeploy binary (the "before" build) beside
# it; mldeploy on its embedded demo model (iris) for the demo body; and the floor of hyper
# (crates/mldeploy-prefork/examples/hyper_floor.rs: the same supervisor and runtime, hyper
# reading the body and answering a fixed 200, none of mldeploy's own work), for the demo body
# too. Bodies: the breast-cancer rows of scripts/bench.sh (1 row, 777 bytes; 32 rows, 7.3 KB)
# and, for nginx, the floor and the mldeploy builds, one iris row of the demo model.
#
# Each round runs every system on every body for RUN_S seconds after a WARMUP_S warm-up, the
# systems' order reversed every other round, so the machine's drift hits every side alike.
# The report (scripts/bench/hot_path_report.py) gives per system the median requests/s, the
# median and worst p99, and the median of the per-round ratios against nginx and against
# ml-deploy's lean class.
#
# Environment: RUN_S (default 2), WARMUP_S (1), CONFIGS (default "2x2 4x2"), CONNECTIONS (32),
# MLDEPLOY_BIN (default target/release/mldeploy), MLDEPLOY_BASE_BIN (optional),
# BASE_ARGS (more `serve` arguments for the base binary only, e.g. the same binary with
# "--balance-connections false"), FLOOR_BIN (default target/release/examples/hyper_floor,
# built when missing),
# MLDEPLOY_TOOLS_DIR (the ml-deploy virtualenv of scripts/bench.sh, which creates it),
# HOT_OUT (default a new temporary directory), PIN (default 0).
#
# PIN=1 runs every server on CPU 0 and wrk on CPU 1 (taskset): each server then has one core
# to itself and the load generator the other, so a rate tells the server's CPU per request.
# Unpinned, wrk's two threads share both cores with the workers, and a round's rate also
# depends on how the connections happen to pair wrk's threads with the workers.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH_DIR=$ROOT/scripts/bench
ROUNDS=${1:-5}
RUN_S=${RUN_S:-2}
WARMUP_S=${WARMUP_S:-1}
CONFIGS=${CONFIGS:-"2x2 4x2"}
CONNECTIONS=${CONNECTIONS:-32}
BIN=${MLDEPLOY_BIN:-$ROOT/target/release/mldeploy}
BASE_BIN=${MLDEPLOY_BASE_BIN:-}
BASE_ARGS=${BASE_ARGS:-}
FLOOR_BIN=${FLOOR_BIN:-$ROOT/target/release/examples/hyper_floor}
PIN=${PIN:-0}
VENV=${MLDEPLOY_TOOLS_DIR:-$HOME/.cache/mldeploy-tools}/mldeploy-venv
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# shellcheck source=common.sh
source "$ROOT/scripts/bench/common.sh"

[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
command -v wrk >/dev/null || die "wrk is missing (scripts/bench.sh installs it)"
[[ -x $VENV/bin/ml-deploy ]] || die "no ml-deploy virtualenv in $VENV: run scripts/bench.sh once"
PIN_SERVER=() PIN_WRK=()
if [[ $PIN == 1 ]]; then
    command -v taskset >/dev/null || die "PIN=1 needs taskset (util-linux)"
    (($(nproc) >= 2)) || die "PIN=1 needs two CPUs"
    PIN_SERVER=(taskset -c 0) PIN_WRK=(taskset -c 1)
elif [[ $PIN != 0 ]]; then
    die "PIN must be 0 or 1"
fi
ensure_release_bin
if [[ ! -x $FLOOR_BIN ]]; then
    (cd "$ROOT" && cargo build -j2 --release -p mldeploy-prefork --example hyper_floor) || die "hyper_floor build failed"
fi

OUT=${HOT_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-hot.XXXXXX")}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-hot-run.XXXXXX")
PIDS=()
cleanup() {
    local pid kid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        for kid in $(cat "/proc/$pid/task/$pid/children" 2>/dev/null); do kill -KILL "$kid" 2>/dev/null || true; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap 'cleanup; rm -rf "$WORK"' EXIT

# The model: fitted with the virtualenv's scikit-learn, exported for mldeploy.
MODEL=$WORK/model
"$VENV/bin/python" "$BENCH_DIR/train_model.py" "$MODEL" >"$OUT/train.log"
python3 "$ROOT/scripts/export_sklearn.py" "$MODEL/pipeline.joblib" "$MODEL/mldeploy-package" \
    --name breast-cancer --version 1.0.0 >>"$OUT/train.log" 2>&1
iris_body 1 "$MODEL/body-demo.json"

declare -A PORT URL
start() { # SYSTEM WORKERS THREADS
    local system=$1 w=$2 t=$3 port
    port=$(free_port)
    case $system in
        nginx)
            mkdir -p "$WORK/nginx-$port"
            sed -e "s|@WORKERS@|$w|g" -e "s|@PORT@|$port|g" -e "s|@DIR@|$WORK/nginx-$port|g" \
                "$BENCH_DIR/nginx.conf.in" >"$WORK/nginx-$port/nginx.conf"
            "${PIN_SERVER[@]}" "$NGINX" -p "$WORK/nginx-$port" -c "$WORK/nginx-$port/nginx.conf" -g 'daemon off;' \
                >"$OUT/$system.log" 2>&1 &
            URL[$system]="http://127.0.0.1:$port/" ;;
        ml-deploy | ml-deploy-lean)
            local config=ml-deploy-config.yaml
            [[ $system == ml-deploy-lean ]] && config=ml-deploy-lean-config.yaml
            mkdir -p "$WORK/cwd-$port"
            (cd "$WORK/cwd-$port" && PYTHONPATH="$BENCH_DIR" BENCH_PIPELINE="$MODEL/pipeline.joblib" \
                exec "${PIN_SERVER[@]}" "$VENV/bin/ml-deploy" --config "$BENCH_DIR/$config" --mode production \
                --workers "$w" --threads "$t" --http-port "$port") >"$OUT/$system.log" 2>&1 &
            URL[$system]="http://127.0.0.1:$port/ml/api/predict" ;;
        hyper-floor)
            "${PIN_SERVER[@]}" "$FLOOR_BIN" "$port" "$w" "$t" >"$OUT/$system.log" 2>&1 &
            URL[$system]="http://127.0.0.1:$port/" ;;
        mldeploy | mldeploy-base)
            local bin=$BIN extra=()
            [[ $system == mldeploy-base ]] && bin=$BASE_BIN && read -ra extra <<<"$BASE_ARGS"
            "${PIN_SERVER[@]}" "$bin" serve "$MODEL/mldeploy-package" --workers "$w" --threads "$t" \
                --bind "127.0.0.1:$port" --log-level error "${extra[@]}" >"$OUT/$system.log" 2>&1 &
            URL[$system]="http://127.0.0.1:$port/api/ml/predict" ;;
        mldeploy-demo | mldeploy-base-demo)
            local bin=$BIN extra=()
            [[ $system == mldeploy-base-demo ]] && bin=$BASE_BIN && read -ra extra <<<"$BASE_ARGS"
            "${PIN_SERVER[@]}" "$bin" serve --workers "$w" --threads "$t" --bind "127.0.0.1:$port" \
                --log-level error "${extra[@]}" >"$OUT/$system.log" 2>&1 &
            URL[$system]="http://127.0.0.1:$port/api/ml/predict" ;;
    esac
    PIDS+=($!)
    PORT[$system]=$port
}

wait_up() { # SYSTEM BODY
    local i
    for ((i = 0; i < 600; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -m 2 -X POST -H 'Content-Type: application/json' \
            --data-binary "@$2" "${URL[$1]}" || true) == 200 ]] && return 0
        sleep 0.1
    done
    die "$1 did not answer within 60 s (see $OUT/$1.log)"
}

SYSTEMS="nginx ml-deploy ml-deploy-lean mldeploy"
DEMO_SYSTEMS="nginx hyper-floor mldeploy-demo"
if [[ -n $BASE_BIN ]]; then
    SYSTEMS="$SYSTEMS mldeploy-base"
    DEMO_SYSTEMS="$DEMO_SYSTEMS mldeploy-base-demo"
fi
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), nproc $(nproc)"
    echo "rounds: $ROUNDS; wrk -t2 -c$CONNECTIONS -d${RUN_S}s --latency after a ${WARMUP_S} s warm-up"
    echo "loadavg_before: $(cut -d' ' -f1-3 /proc/loadavg)"
    if [[ $PIN == 1 ]]; then echo "pinned: servers on CPU 0, wrk on CPU 1"; else echo "pinned: no"; fi
} >"$OUT/machine.txt"
: >"$OUT/runs.tsv"
for config in $CONFIGS; do
    w=${config%x*} t=${config#*x}
    for system in $(echo "$SYSTEMS $DEMO_SYSTEMS" | tr ' ' '\n' | sort -u); do
        start "$system" "$w" "$t"
    done
    for system in $SYSTEMS; do
        [[ $system == nginx ]] || wait_up "$system" "$MODEL/body-1.json"
    done
    for system in $DEMO_SYSTEMS; do
        [[ $system == nginx ]] || wait_up "$system" "$MODEL/body-demo.json"
    done
    sleep 1
    for ((round = 1; round <= ROUNDS; round++)); do
        for body in 1 32 demo; do
            order=$SYSTEMS
            [[ $body == demo ]] && order=$DEMO_SYSTEMS
            ((round % 2 == 0)) && order=$(echo "$order" | tr ' ' '\n' | tac | tr '\n' ' ')
            for system in $order; do
                file=$MODEL/body-$body.json
                BENCH_BODY=$file timeout $((WARMUP_S + 15)) "${PIN_WRK[@]}" wrk -t2 -c"$CONNECTIONS" -d"${WARMUP_S}s" \
                    -s "$BENCH_DIR/post_json.lua" "${URL[$system]}" >/dev/null 2>&1 || true
                load=$(cut -d' ' -f1 /proc/loadavg)
                line=$(BENCH_BODY=$file timeout $((RUN_S + 15)) "${PIN_WRK[@]}" wrk -t2 -c"$CONNECTIONS" -d"${RUN_S}s" \
                    --latency -s "$BENCH_DIR/post_json.lua" "${URL[$system]}" 2>&1 \
                    | grep '^BENCH_SUMMARY' | sed 's/^BENCH_SUMMARY //' || echo "requests=0")
                printf '%s\t%s\t%s\t%s\t%s\tloadavg=%s\n' "$config" "$body" "$round" "$system" "$line" "$load" \
                    | tee -a "$OUT/runs.tsv" >&2
            done
        done
    done
    cleanup
done
python3 "$BENCH_DIR/hot_path_report.py" "$OUT" | tee "$OUT/report.md"
