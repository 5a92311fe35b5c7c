#!/usr/bin/env bash
# Tree ensembles over HTTP: mldeploy against Seldon MLServer 1.7.1 and its scikit-learn, XGBoost
# and LightGBM runtimes, on the same three models, in one run on one machine, on 127.0.0.1.
#
# Usage: scripts/bench/trees_http.sh [--quick] [MODEL ...]
#   --quick   short runs and two rounds, to check the script itself
#   MODEL     rf300, xgb300, lgb300 (default: all three)
#
# Models (scripts/bench/trees_http_models.py, trained with MLServer's Python; the script checks
# that the system's scikit-learn, XGBoost and LightGBM, which export_sklearn.py and the tests
# use, are the same versions):
#   rf300    RandomForestClassifier, 300 trees: MLServer serves the joblib file, mldeploy the
#            package export_sklearn.py makes from it
#   xgb300   XGBClassifier, 300 rounds: both serve the one model.json XGBoost saved
#   lgb300   LGBMClassifier, 300 rounds: both serve the one model.txt LightGBM saved
# 30 features, bodies of 1 and 32 rows (the same rows everywhere):
#   api        mldeploy POST /api/ml/predict, {"data": [[...]], "names": [...]}
#   v2         mldeploy POST /v2/models/NAME/infer, V2 JSON, one FP64 [ROWS, 30] tensor,
#              outputs: predict_proba
#   mlserver   MLServer POST /v2/models/NAME/infer, the same body (MLServer 1.7.1 refuses
#              binary tensors; its LightGBM runtime ignores `outputs` and answers `predict`,
#              the probability of class 1)
# Servers: `mldeploy serve PACKAGE --workers 2 --threads 2`; MLServer with parallel_workers 2
# (one HTTP process and two inference processes), OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# MKL_NUM_THREADS=1 (XGBoost and LightGBM otherwise use every core in every process).
#
# Per model: both servers up, one under load at a time. The answers of every endpoint to the
# bodies asking for predict and predict_proba are saved for the report's check. Memory of each
# process tree (scripts/bench/proc_tree_mem.py) idle and after the runs. Then ROUNDS rounds per
# body of RUN_S-second runs `wrk -t2 -c32 --timeout 10s` (keep-alive), the three endpoints
# taking turns in an order that rotates every round, after a WARMUP_S-second warm-up of each;
# the server's CPU time (utime + stime of the process and its children) and the load average
# are noted with every run, and after each run the script waits until that server is idle.
# The figure to read is the median over the rounds of the ratio mldeploy / MLServer in requests
# per second (goal: at least 50x).
#
# Environment: TREES_HTTP_OUT (default .bench-out/trees-http) for raw output and the report
# (results.md); MLDEPLOY_BIN (default: target/release/mldeploy, built with cargo); ROUNDS (4),
# RUN_S (8: MLServer answers the forest a few times per second, 32 connections wait seconds),
# WARMUP_S (3); MLDEPLOY_TOOLS_DIR, where scripts/bench/mlserver.sh installs MLServer;
# BENCH_LOCK, a lock file shared with other benchmark runs on the machine: each model's servers
# and runs hold it exclusively (flock), the build and the training shared.
# Takes about 5 minutes per model plus the first-time setup (MLServer's virtualenv: about 80 s).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH_DIR=$ROOT/scripts/bench
BIN=${MLDEPLOY_BIN:-$ROOT/target/release/mldeploy}
# shellcheck source=common.sh
source "$BENCH_DIR/common.sh"

QUICK=0 MODELS=
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        rf300 | xgb300 | lgb300) MODELS="$MODELS $arg" ;;
        -h | --help) sed -n '2,43p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done
MODELS=${MODELS:-rf300 xgb300 lgb300}
if ((QUICK)); then
    ROUNDS=${ROUNDS:-2} RUN_S=${RUN_S:-1} WARMUP_S=${WARMUP_S:-1}
else
    ROUNDS=${ROUNDS:-4} RUN_S=${RUN_S:-8} WARMUP_S=${WARMUP_S:-3}
fi
WORKERS=2 THREADS=2 CONNECTIONS=32 WRK_THREADS=2
BODIES="1 32"
MLSERVER="$BENCH_DIR/mlserver.sh"
ENDPOINTS=(api v2 mlserver)

command -v wrk >/dev/null || die "wrk is missing (scripts/setup-test-deps.sh installs it)"
OUT=${TREES_HTTP_OUT:-$ROOT/.bench-out/trees-http}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MODEL_DIR=$OUT/models
log() { printf 'trees_http.sh: %s\n' "$*" >&2; }

MLDEPLOY_PID= MLSERVER_PID=
trap stop_servers EXIT

# lock shared|exclusive|release: BENCH_LOCK on descriptor 9, when it is set.
lock() {
    [[ -n ${BENCH_LOCK:-} ]] || return 0
    [[ -e /dev/fd/9 ]] || exec 9>>"$BENCH_LOCK"
    case $1 in
        shared) flock -s 9 ;;
        exclusive) flock 9 ;;
        release) flock -u 9 ;;
    esac
}

# --- Setup (idempotent) ----------------------------------------------------------------------
lock shared
if [[ -z ${MLDEPLOY_BIN:-} ]]; then
    log "building mldeploy (release)"
    (cd "$ROOT" && cargo build -j2 --release -p mldeploy)
fi
[[ -x $BIN ]] || die "no mldeploy binary at $BIN"
"$MLSERVER" install
versions='import sklearn, xgboost, lightgbm; print(sklearn.__version__, xgboost.__version__, lightgbm.__version__)'
theirs=$("$MLSERVER" python -c "$versions")
ours=$(python3 -c "$versions")
[[ $theirs == "$ours" ]] ||
    die "scikit-learn, xgboost, lightgbm differ: MLServer's $theirs, the system's $ours (see mlserver.sh's pins)"
log "training the models with MLServer's Python (scikit-learn, xgboost, lightgbm $theirs)"
OMP_NUM_THREADS=1 "$MLSERVER" python "$BENCH_DIR/trees_http_models.py" "$MODEL_DIR" >"$OUT/train.log"
rm -rf "$MODEL_DIR/rf300/package"
python3 "$ROOT/scripts/export_sklearn.py" "$MODEL_DIR/rf300/model.joblib" "$MODEL_DIR/rf300/package" \
    --name rf300 --version 1 >>"$OUT/train.log" 2>&1
lock release

mlserver_file() {
    case $1 in
        rf300) echo "$MODEL_DIR/rf300/model.joblib" ;;
        xgb300) echo "$MODEL_DIR/xgb300/package/model.json" ;;
        lgb300) echo "$MODEL_DIR/lgb300/package/model.txt" ;;
    esac
}

MLDEPLOY_PORT= MLSERVER_PORT=
url_of() {
    case $1 in
        api) echo "http://127.0.0.1:$MLDEPLOY_PORT/api/ml/predict" ;;
        v2) echo "http://127.0.0.1:$MLDEPLOY_PORT/v2/models/$2/infer" ;;
        mlserver) echo "http://127.0.0.1:$MLSERVER_PORT/v2/models/$2/infer" ;;
    esac
}
body_of() { if [[ $1 == api ]]; then echo "$MODEL_DIR/body-$2.json"; else echo "$MODEL_DIR/v2-$2.json"; fi; }
pid_of() { if [[ $1 == mlserver ]]; then echo "$MLSERVER_PID"; else echo "$MLDEPLOY_PID"; fi; }

# run_wrk ENDPOINT MODEL ROWS SECONDS OUTFILE
run_wrk() {
    BENCH_BODY=$(body_of "$1" "$3") timeout $(($4 + 20)) \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${4}s" --timeout 10s --latency \
        -s "$BENCH_DIR/post_json.lua" "$(url_of "$1" "$2")" >"$5" 2>&1 || true
}
mem() { python3 "$BENCH_DIR/proc_tree_mem.py" "$1"; }

# Waits (at most 60 s) until the process tree of PID has used no CPU for 0.5 s: MLServer goes on
# computing the requests still queued when wrk closes its connections, which would otherwise
# take CPU from the next run.
settle() {
    local before after deadline=$((SECONDS + 60))
    after=$(tree_ticks "$1")
    while ((SECONDS < deadline)); do
        before=$after
        sleep 0.5
        after=$(tree_ticks "$1")
        ((after > before)) || return 0
    done
}

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc: $(getconf _NPROCESSORS_ONLN)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel: $(uname -sr)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "mldeploy: $("$BIN" --version 2>&1 | head -1) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "mlserver: $("$MLSERVER" python -c 'import mlserver, sklearn, xgboost, lightgbm, numpy, sys; print(f"MLServer {mlserver.__version__}, scikit-learn {sklearn.__version__}, xgboost {xgboost.__version__}, lightgbm {lightgbm.__version__}, numpy {numpy.__version__}, Python {sys.version.split()[0]}")')"
    echo "loadavg_before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "quick: $QUICK"
    echo "rounds: $ROUNDS"
    echo "run_s: $RUN_S"
    echo "warmup_s: $WARMUP_S"
} >"$OUT/machine.txt"

hz=$(getconf CLK_TCK)
: >"$OUT/memory.tsv"
: >"$OUT/rounds.tsv"
for model in $MODELS; do
    lock exclusive
    # --- Servers ---------------------------------------------------------------------------
    MLDEPLOY_PORT=$(free_port)
    "$BIN" serve "$MODEL_DIR/$model/package" --workers "$WORKERS" --threads "$THREADS" \
        --bind "127.0.0.1:$MLDEPLOY_PORT" --log-level warn >"$OUT/mldeploy-$model.log" 2>&1 &
    MLDEPLOY_PID=$!
    wait_ready "$MLDEPLOY_PORT" "$MLDEPLOY_PID"
    MLSERVER_PORT=$(free_port)
    log "$model: starting MLServer"
    MLSERVER_PID=$(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        "$MLSERVER" serve "$(mlserver_file "$model")" "$model" "$MLSERVER_PORT" "$WORKERS")
    sleep 2
    printf '%s\tmldeploy\tidle\t%s\n' "$model" "$(mem "$MLDEPLOY_PID")" >>"$OUT/memory.tsv"
    printf '%s\tmlserver\tidle\t%s\n' "$model" "$(mem "$MLSERVER_PID")" >>"$OUT/memory.tsv"

    # --- The answers, for the check ---------------------------------------------------------
    for rows in $BODIES; do
        curl -s -o "$OUT/answer-$model-api-$rows.json" -H 'Content-Type: application/json' \
            --data-binary "@$MODEL_DIR/body-$rows.json" "$(url_of api "$model")" || true
        for endpoint in v2 mlserver; do
            curl -s -o "$OUT/answer-$model-$endpoint-$rows.json" -H 'Content-Type: application/json' \
                --data-binary "@$MODEL_DIR/v2-check-$rows.json" "$(url_of "$endpoint" "$model")" || true
        done
    done

    # --- Interleaved runs -------------------------------------------------------------------
    for rows in $BODIES; do
        for endpoint in "${ENDPOINTS[@]}"; do
            run_wrk "$endpoint" "$model" "$rows" "$WARMUP_S" "$OUT/warmup.txt"
            settle "$(pid_of "$endpoint")"
        done
        for ((round = 1; round <= ROUNDS; round++)); do
            # Six orders of three, in turn: each endpoint runs first, second and third equally often.
            shift_by=$((round % 3))
            order=("${ENDPOINTS[@]:shift_by}" "${ENDPOINTS[@]:0:shift_by}")
            if (((round / 3) % 2)); then order=("${order[2]}" "${order[1]}" "${order[0]}"); fi
            for endpoint in "${order[@]}"; do
                out=$OUT/wrk-$model-$endpoint-$rows-$round.txt
                pid=$(pid_of "$endpoint")
                load=$(cut -d' ' -f1 /proc/loadavg)
                before=$(tree_ticks "$pid")
                run_wrk "$endpoint" "$model" "$rows" "$RUN_S" "$out"
                after=$(tree_ticks "$pid")
                settle "$pid"
                printf '%s\t%s\t%s\t%s\t%s\tcpu_s=%s\tloadavg=%s\n' "$model" "$endpoint" "$rows" "$round" \
                    "$(summary_of "$out")" "$(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')" \
                    "$load" >>"$OUT/rounds.tsv"
            done
            log "$model: $rows rows, round $round of $ROUNDS"
        done
    done
    printf '%s\tmldeploy\tloaded\t%s\n' "$model" "$(mem "$MLDEPLOY_PID")" >>"$OUT/memory.tsv"
    printf '%s\tmlserver\tloaded\t%s\n' "$model" "$(mem "$MLSERVER_PID")" >>"$OUT/memory.tsv"
    stop_servers
    lock release
done
echo "loadavg_after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"

python3 "$BENCH_DIR/trees_http_report.py" "$OUT" >"$OUT/results.md"
log "results in $OUT/results.md"
