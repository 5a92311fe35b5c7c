#!/usr/bin/env bash
# The same MLP served as the candle kind (mlp_classifier, written by scripts/export_sklearn.py)
# and as ONNX (skl2onnx's conversion of the same fitted pipeline): requests per second at 1 and
# 32 rows, then the engines alone (criterion, crates/mldeploy-package/benches/onnx.rs).
#
#   scripts/bench/onnx.sh [ROUNDS]      (default 6)
#
# Both servers run at once, 2 workers x 2 threads each on 127.0.0.1 (the idle one costs
# nothing), and are loaded in turns with `wrk -t2 -c32 -dRUN_S` posting the same body to
# /api/ml/predict: each round runs candle then ONNX, or ONNX then candle (alternating), for
# 1-row and 32-row bodies, so the machine's drift hits both sides alike. Printed per run:
# requests/s; at the end the mean and median per side and body, and the median of the per-round
# ratios ONNX / candle.
#
# Environment: RUN_S (default 3), WARMUP_S (2), MLDEPLOY_BIN (default target/release/mldeploy,
# built when missing), ONNX_BENCH_OUT (a directory for the models and raw output; default a new
# temporary one), SKIP_CRITERION=1 to skip the engine benchmark. Needs python3 with scikit-learn,
# skl2onnx, onnx and onnxruntime (scripts/setup-test-deps.sh), and wrk.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROUNDS=${1:-6}
RUN_S=${RUN_S:-3}
WARMUP_S=${WARMUP_S:-2}
BIN=${MLDEPLOY_BIN:-$ROOT/target/release/mldeploy}
# shellcheck source=common.sh
source "$ROOT/scripts/bench/common.sh"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
command -v wrk >/dev/null || die "wrk is missing (scripts/setup-test-deps.sh installs it)"
ensure_release_bin

OUT=${ONNX_BENCH_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-onnx-bench.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
python3 "$ROOT/scripts/bench/onnx_models.py" "$OUT" >/dev/null

PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

declare -A PORT
for side in candle onnx; do
    port=$(free_port)
    "$BIN" serve "$OUT/mlp-$side" --workers 2 --threads 2 --bind "127.0.0.1:$port" >"$OUT/server-$side.log" 2>&1 &
    PIDS+=("$!")
    wait_ready "$port" "$!"
    PORT[$side]=$port
done

# Both answer the same classes for the 32-row body.
for side in candle onnx; do
    curl -sf "http://127.0.0.1:${PORT[$side]}/api/ml/predict" -d @"$OUT/body-32.json" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["target"]["y_predicted"])' >"$OUT/labels-$side.txt"
done
cmp -s "$OUT/labels-candle.txt" "$OUT/labels-onnx.txt" || die "the two servers predict different classes"

run() { # side rows seconds -> requests/s
    local side=$1 rows=$2 seconds=$3 line
    line=$(BENCH_BODY="$OUT/body-$rows.json" wrk -t2 -c32 -d"${seconds}s" -s "$ROOT/scripts/bench/post_json.lua" \
        "http://127.0.0.1:${PORT[$side]}/api/ml/predict" | grep BENCH_SUMMARY)
    # wrk's timeouts (an answer slower than 2 s) happen on an overloaded machine; errors do not.
    [[ $line == *"non2xx=0 connect=0 read=0 write=0 "* ]] || die "errors in $side, $rows rows: $line"
    python3 -c 'import sys; f = dict(kv.split("=") for kv in sys.argv[1].split()[1:]); print(round(int(f["requests"]) / int(f["duration_us"]) * 1e6))' "$line"
}

for side in candle onnx; do
    for rows in 1 32; do
        run "$side" "$rows" "$WARMUP_S" >/dev/null
    done
done
RESULTS="$OUT/results.txt"
: >"$RESULTS"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order="candle onnx"; else order="onnx candle"; fi
    for rows in 1 32; do
        for side in $order; do
            rps=$(run "$side" "$rows" "$RUN_S")
            echo "round=$round rows=$rows side=$side rps=$rps load=$(cut -d' ' -f1 /proc/loadavg)" | tee -a "$RESULTS"
        done
    done
done
python3 - "$RESULTS" <<'PY'
import statistics, sys
runs = [dict(kv.split("=") for kv in line.split()) for line in open(sys.argv[1])]
print("\n| rows | candle req/s mean (median) | ONNX req/s mean (median) | ONNX / candle, median of rounds |")
print("|---|---|---|---|")
for rows in ("1", "32"):
    side = {s: [int(r["rps"]) for r in runs if r["rows"] == rows and r["side"] == s] for s in ("candle", "onnx")}
    ratios = [o / c for o, c in zip(side["onnx"], side["candle"])]
    print(f"| {rows} | {statistics.mean(side['candle']):,.0f} ({statistics.median(side['candle']):,.0f}) "
          f"| {statistics.mean(side['onnx']):,.0f} ({statistics.median(side['onnx']):,.0f}) "
          f"| {statistics.median(ratios):.3f} |")
PY

if [[ ${SKIP_CRITERION:-0} != 1 ]]; then
    (cd "$ROOT" && MLDEPLOY_ONNX_BENCH="$OUT" cargo bench -j2 -p mldeploy-package --bench onnx -- \
        --warm-up-time 1 --measurement-time 3 2>&1 | grep -E "^(candle|onnx)|time:")
fi
