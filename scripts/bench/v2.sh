#!/usr/bin/env bash
# The Open Inference Protocol (V2): mldeploy's V2 infer endpoint, in JSON and with binary tensors,
# against its own ml-deploy endpoint and against Seldon MLServer 1.7.1, on one model, in one run
# on one machine, everything on 127.0.0.1.
#
# Usage: scripts/bench/v2.sh [--quick]
#   --quick   short runs and few rounds, to check the script itself
#
# The model: StandardScaler + LogisticRegression on scikit-learn's breast-cancer data (30
# features), fitted once by scripts/bench/train_model.py with MLServer's virtualenv, saved with
# joblib (MLServer serves that file) and exported with scripts/export_sklearn.py (mldeploy
# serves the package). The bodies carry the same 1 and 32 rows of the data set:
#   api          mldeploy POST /api/ml/predict, {"data": [[...]], "names": [...]}
#   v2-json      mldeploy POST /v2/models/breast-cancer/infer, {"inputs": [{"name": "input",
#                "shape": [N, 30], "datatype": "FP64", "data": [...]}]}
#   v2-binary    the same route, the tensor as raw float64 after a JSON header, outputs binary
#                (what tritonclient sends by default; scripts/bench/v2_bodies.py)
#   mlserver     MLServer POST /v2/models/breast-cancer/infer with the v2-json body (MLServer
#                1.7.1 refuses binary tensors)
# Servers: `mldeploy serve PACKAGE --workers 2 --threads 2` and MLServer with parallel_workers 2
# (one HTTP process, two inference processes), both with one compute thread per process
# (mldeploy's default RAYON_NUM_THREADS=1; OMP_NUM_THREADS=1 and OPENBLAS_NUM_THREADS=1 for
# MLServer, whose numpy would otherwise start a BLAS thread per core in every process).
#
# Two parts, every load `wrk -t2 -c32` with keep-alive:
#   1. All four endpoints: REPS repetitions of LONG_S-second runs after a WARMUP_S-second
#      warm-up, the order reversed every other repetition; both servers up, one under load.
#      Memory of each server's process tree (scripts/bench/proc_tree_mem.py) before and after.
#   2. mldeploy's three endpoints interleaved (MLServer stopped): ROUNDS rounds of RUN_S-second
#      runs on the same server, the three taking turns in an order that rotates every round, so
#      the machine's drift hits all three alike. The figure to read is the median of the
#      per-round ratios V2 / api with a 95% bootstrap interval, as in scripts/bench/onoff.sh,
#      next to the server's CPU time per request (and its per-round ratio, which the machine's
#      other work disturbs less than requests/s).
#   3. When valgrind is installed: instructions per request of each mldeploy endpoint, counted
#      by callgrind on a fixed number of requests (scripts/bench/v2_instructions.py; one worker,
#      one thread, one connection): a figure that does not depend on what else the machine does.
# Then checks that every endpoint predicts the same classes for the 32-row body, and writes the
# report, V2_OUT/results.md.
#
# Environment: V2_OUT (default .bench-out/v2) for raw output and the report; MLDEPLOY_BIN
# (default: target/release/mldeploy, built with cargo); ROUNDS (40), RUN_S (1), LONG_S (10),
# WARMUP_S (3), REPS (2), CALLGRIND_REQUESTS (300; 0 skips part 3); MLDEPLOY_TOOLS_DIR, where
# scripts/bench/mlserver.sh installs MLServer.
# Takes about 10 minutes plus the first-time setup (MLServer's virtualenv: about 80 s).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BENCH_DIR=$ROOT/scripts/bench
BIN=${MLDEPLOY_BIN:-$ROOT/target/release/mldeploy}
# shellcheck source=common.sh
source "$BENCH_DIR/common.sh"

QUICK=0
case "${1:-}" in
    --quick) QUICK=1 ;;
    "") ;;
    -h | --help) sed -n '2,47p' "$0"; exit 0 ;;
    *) die "unknown argument: $1" ;;
esac
if ((QUICK)); then
    ROUNDS=${ROUNDS:-6} RUN_S=${RUN_S:-1} LONG_S=${LONG_S:-3} WARMUP_S=${WARMUP_S:-1} REPS=${REPS:-1}
    CALLGRIND_REQUESTS=${CALLGRIND_REQUESTS:-50}
else
    ROUNDS=${ROUNDS:-40} RUN_S=${RUN_S:-1} LONG_S=${LONG_S:-10} WARMUP_S=${WARMUP_S:-3} REPS=${REPS:-2}
    CALLGRIND_REQUESTS=${CALLGRIND_REQUESTS:-300}
fi
WORKERS=2 THREADS=2 CONNECTIONS=32 WRK_THREADS=2
BODIES="1 32"
MODEL=breast-cancer
MLSERVER="$BENCH_DIR/mlserver.sh"

command -v wrk >/dev/null || die "wrk is missing (scripts/setup-test-deps.sh installs it)"
OUT=${V2_OUT:-$ROOT/.bench-out/v2}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
MODEL_DIR=$OUT/model
log() { printf 'v2.sh: %s\n' "$*" >&2; }

MLDEPLOY_PID= MLSERVER_PID=
trap stop_servers EXIT

# --- Setup (idempotent) ----------------------------------------------------------------------
if [[ -z ${MLDEPLOY_BIN:-} ]]; then
    log "building mldeploy (release)"
    (cd "$ROOT" && cargo build -j2 --release -p mldeploy)
fi
[[ -x $BIN ]] || die "no mldeploy binary at $BIN"
"$MLSERVER" install
log "training the model with MLServer's scikit-learn"
"$MLSERVER" python "$BENCH_DIR/train_model.py" "$MODEL_DIR" >"$OUT/train.log"
rm -rf "$MODEL_DIR/package"
python3 "$ROOT/scripts/export_sklearn.py" "$MODEL_DIR/pipeline.joblib" "$MODEL_DIR/package" \
    --name "$MODEL" --version 1.0.0 >>"$OUT/train.log" 2>&1
# shellcheck disable=SC2086 # a list of row counts
python3 "$BENCH_DIR/v2_bodies.py" "$MODEL_DIR" $BODIES

# --- Endpoints -------------------------------------------------------------------------------
MLDEPLOY_PORT= MLSERVER_PORT=
url_of() {
    case $1 in
        api) echo "http://127.0.0.1:$MLDEPLOY_PORT/api/ml/predict" ;;
        v2-json | v2-binary) echo "http://127.0.0.1:$MLDEPLOY_PORT/v2/models/$MODEL/infer" ;;
        mlserver) echo "http://127.0.0.1:$MLSERVER_PORT/v2/models/$MODEL/infer" ;;
    esac
}

# run_wrk VARIANT ROWS SECONDS OUTFILE
run_wrk() {
    local variant=$1 rows=$2 seconds=$3 outfile=$4 body header_length= script=post_v2.lua
    case $variant in
        api) body=$MODEL_DIR/body-$rows.json script=post_json.lua ;;
        v2-json | mlserver) body=$MODEL_DIR/v2-$rows.json ;;
        v2-binary) body=$MODEL_DIR/v2-$rows.bin header_length=$(cat "$MODEL_DIR/v2-$rows.len") ;;
    esac
    BENCH_BODY=$body BENCH_HEADER_LENGTH=$header_length timeout $((seconds + 15)) \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency \
        -s "$BENCH_DIR/$script" "$(url_of "$variant")" >"$outfile" 2>&1 || true
}


# One request of ROWS rows to VARIANT: headers and body kept for the report's check.
save_answer() {
    local variant=$1 rows=$2
    local -a args=(-s -D "$OUT/answer-$variant-$rows.headers" -o "$OUT/answer-$variant-$rows.body" -X POST)
    case $variant in
        api) args+=(-H 'Content-Type: application/json' --data-binary "@$MODEL_DIR/body-$rows.json") ;;
        v2-json | mlserver) args+=(-H 'Content-Type: application/json' --data-binary "@$MODEL_DIR/v2-$rows.json") ;;
        v2-binary)
            args+=(-H "Inference-Header-Content-Length: $(cat "$MODEL_DIR/v2-$rows.len")"
                -H 'Content-Type:' --data-binary "@$MODEL_DIR/v2-$rows.bin")
            ;;
    esac
    curl "${args[@]}" "$(url_of "$variant")" || true
}

# --- Servers ---------------------------------------------------------------------------------
MLDEPLOY_PORT=$(free_port)
"$BIN" serve "$MODEL_DIR/package" --workers "$WORKERS" --threads "$THREADS" \
    --bind "127.0.0.1:$MLDEPLOY_PORT" --log-level warn >"$OUT/mldeploy.log" 2>&1 &
MLDEPLOY_PID=$!
wait_ready "$MLDEPLOY_PORT" "$MLDEPLOY_PID"
MLSERVER_PORT=$(free_port)
log "starting MLServer (about 10 s)"
MLSERVER_PID=$(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    "$MLSERVER" serve "$MODEL_DIR/pipeline.joblib" "$MODEL" "$MLSERVER_PORT" "$WORKERS")
sleep 2

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc: $(nproc)"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel: $(uname -sr)"
    echo "wrk: $(wrk -v 2>&1 | head -1)"
    echo "mldeploy: $("$BIN" --version 2>&1 | head -1) ($(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    echo "mlserver: $("$MLSERVER" python -c 'import mlserver, sklearn, numpy, sys; print(f"MLServer {mlserver.__version__}, scikit-learn {sklearn.__version__}, numpy {numpy.__version__}, Python {sys.version.split()[0]}")')"
    echo "exporter: $(python3 -c 'import sklearn, sys; print(f"scikit-learn {sklearn.__version__}, Python {sys.version.split()[0]}")')"
    echo "loadavg_before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "quick: $QUICK"
    echo "rounds: $ROUNDS"
    echo "run_s: $RUN_S"
    echo "long_s: $LONG_S"
    echo "warmup_s: $WARMUP_S"
    echo "reps: $REPS"
} >"$OUT/machine.txt"

for variant in api v2-json v2-binary mlserver; do
    for rows in $BODIES; do save_answer "$variant" "$rows"; done
done
mem() { python3 "$BENCH_DIR/proc_tree_mem.py" "$1"; }
{
    printf 'mldeploy\tidle\t%s\n' "$(mem "$MLDEPLOY_PID")"
    printf 'mlserver\tidle\t%s\n' "$(mem "$MLSERVER_PID")"
} >"$OUT/memory.tsv"

# --- Part 1: the four endpoints, longer runs -------------------------------------------------
: >"$OUT/long.tsv"
for ((rep = 1; rep <= REPS; rep++)); do
    order="api v2-json v2-binary mlserver"
    ((rep % 2)) || order="mlserver v2-binary v2-json api"
    for rows in $BODIES; do
        for variant in $order; do
            log "long runs: rep $rep, $rows rows, $variant"
            run_wrk "$variant" "$rows" "$WARMUP_S" "$OUT/warmup.txt"
            load=$(cut -d' ' -f1 /proc/loadavg)
            out=$OUT/wrk-long-$variant-$rows-rep$rep.txt
            run_wrk "$variant" "$rows" "$LONG_S" "$out"
            printf '%s\t%s\t%s\t%s\tloadavg=%s\n' "$variant" "$rows" "$rep" "$(summary_of "$out")" \
                "$load" >>"$OUT/long.tsv"
        done
    done
done
{
    printf 'mldeploy\tloaded\t%s\n' "$(mem "$MLDEPLOY_PID")"
    printf 'mlserver\tloaded\t%s\n' "$(mem "$MLSERVER_PID")"
} >>"$OUT/memory.tsv"
"$MLSERVER" stop "$MLSERVER_PID"
MLSERVER_PID=

# --- Part 2: mldeploy's endpoints interleaved ------------------------------------------------
hz=$(getconf CLK_TCK)
: >"$OUT/interleaved.tsv"
variants=(api v2-json v2-binary)
for rows in $BODIES; do
    for variant in "${variants[@]}"; do run_wrk "$variant" "$rows" "$WARMUP_S" "$OUT/warmup.txt"; done
    for ((round = 1; round <= ROUNDS; round++)); do
        # Six orders of three, in turn: each endpoint runs first, second and third equally often.
        shift_by=$((round % 3))
        order=("${variants[@]:shift_by}" "${variants[@]:0:shift_by}")
        if (((round / 3) % 2)); then order=("${order[2]}" "${order[1]}" "${order[0]}"); fi
        for variant in "${order[@]}"; do
            out=$OUT/wrk-round-$variant-$rows-$round.txt
            before=$(tree_ticks "$MLDEPLOY_PID")
            run_wrk "$variant" "$rows" "$RUN_S" "$out"
            after=$(tree_ticks "$MLDEPLOY_PID")
            printf '%s\t%s\t%s\t%s\tcpu_s=%s\tloadavg=%s\n' "$variant" "$rows" "$round" \
                "$(summary_of "$out")" "$(awk -v t=$((after - before)) -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')" \
                "$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/interleaved.tsv"
        done
        log "interleaved: $rows rows, round $round of $ROUNDS"
    done
done
echo "loadavg_after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/machine.txt"
kill -TERM "$MLDEPLOY_PID"
wait "$MLDEPLOY_PID" || true
MLDEPLOY_PID=

# --- Part 3: instructions per request --------------------------------------------------------
rm -f "$OUT/instructions.txt"
if ((CALLGRIND_REQUESTS > 0)) && command -v valgrind >/dev/null; then
    log "instructions per request under callgrind ($CALLGRIND_REQUESTS and $((3 * CALLGRIND_REQUESTS)) requests each)"
    python3 "$BENCH_DIR/v2_instructions.py" "$BIN" "$MODEL_DIR" "$OUT/callgrind" \
        --requests "$CALLGRIND_REQUESTS" >"$OUT/instructions.txt"
    echo "callgrind_requests: $CALLGRIND_REQUESTS" >>"$OUT/machine.txt"
fi

python3 "$BENCH_DIR/v2_report.py" "$OUT" >"$OUT/results.md"
log "results in $OUT/results.md"
