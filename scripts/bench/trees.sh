#!/usr/bin/env bash
# The tree engine alone against each library's own predict_proba, one thread each, in one run.
#
# Usage: scripts/bench/trees.sh [NAME ...]     (default: rf300 et300 gb300 hgb300 xgb300 lgb300)
#
# 1. Trains the benchmark models (scripts/bench/tree_models.py) unless they are there already
#    (TREE_RETRAIN=1 retrains) and builds the criterion bench.
# 2. ROUNDS rounds (default 3). In each round, model by model, the library and the engine back
#    to back, the one going first alternating from round to round: the library timed by
#    scripts/bench/tree_library.py, the engine by criterion (crates/mldeploy-package/benches/
#    trees.rs, its raw samples read by scripts/bench/tree_criterion.py). Both sides take 20
#    samples of about 0.15 s each after a 0.5 s warm-up, on the same rows of the same model,
#    one thread, and report the same statistics: the shortest and the median time per call, at
#    1 row and at 1,000 rows. The load average is noted with each timing.
# 3. The report (scripts/bench/tree_report.py): per model and batch, rows per second of both
#    sides in every round, the ratios engine / library of the minima and of the medians.
#
# BENCH_LOCK: a lock file shared with other benchmark runs on the machine; each round holds it
# exclusively (flock), the build holds it shared.
# Output in BENCH_OUT (default .bench-out): tree-models/ (the models), trees/samples.tsv (every
# timing), trees/criterion/ (criterion's data, per round), trees/results.md (the report).
# Takes about 5 minutes per round (loading the forests' joblib files is part of it).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${BENCH_OUT:-.bench-out}"
MODELS="$OUT/tree-models"
RESULTS="$OUT/trees"
ROUNDS="${ROUNDS:-3}"
NAMES=("$@")
[ "${#NAMES[@]}" -gt 0 ] || NAMES=(rf300 et300 gb300 hgb300 xgb300 lgb300)
mkdir -p "$MODELS" "$RESULTS"
CPUS="$(getconf _NPROCESSORS_ONLN)" # nproc would obey OMP_NUM_THREADS
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 RAYON_NUM_THREADS=1

# locked shared|exclusive COMMAND...: COMMAND under BENCH_LOCK when it is set.
locked() {
    local mode=$1
    shift
    if [ -n "${BENCH_LOCK:-}" ]; then
        if [ "$mode" = shared ]; then flock -s "$BENCH_LOCK" "$@"; else flock "$BENCH_LOCK" "$@"; fi
    else
        "$@"
    fi
}

missing=()
for name in "${NAMES[@]}"; do
    if [ "${TREE_RETRAIN:-0}" = 1 ] || [ ! -f "$MODELS/$name/bench.json" ]; then missing+=("$name"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    locked shared python3 scripts/bench/tree_models.py "$MODELS" "${missing[@]}"
fi
MODELS_ABS="$(cd "$MODELS" && pwd)"
RESULTS_ABS="$(cd "$RESULTS" && pwd)"
locked shared cargo bench -j2 -p mldeploy-package --bench trees --no-run 2>&1 | tail -1

library() { python3 scripts/bench/tree_library.py "$MODELS" "$1"; }
# criterion writes its raw samples under CRITERION_HOME, one directory per round.
engine() {
    local dir="$RESULTS_ABS/criterion/round-$ROUND"
    CRITERION_HOME="$dir" MLDEPLOY_TREE_MODELS="$MODELS_ABS" \
        cargo bench -q -j2 -p mldeploy-package --bench trees -- --noplot "^$1/" >>"$RESULTS/criterion.txt" 2>&1
    python3 scripts/bench/tree_criterion.py "$dir" "$1"
}

# One round: every model, both sides back to back, the first side alternating by round.
round() {
    local name side sides load
    for name in "${NAMES[@]}"; do
        sides="library engine"
        ((ROUND % 2)) || sides="engine library"
        for side in $sides; do
            load="$(cut -d' ' -f1 /proc/loadavg)"
            $side "$name" | while IFS=$'\t' read -r model rows calls min median; do
                printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$ROUND" "$model" "$side" "$rows" "$calls" "$min" "$median" "$load"
            done | tee -a "$RESULTS/samples.tsv"
        done
    done
}

{
    echo "# date $(date -u '+%Y-%m-%d %H:%M UTC'); nproc $CPUS; cpu $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); load average before $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# $(python3 -c 'import sys, sklearn, xgboost, lightgbm, numpy; print(f"Python {sys.version.split()[0]}, scikit-learn {sklearn.__version__}, xgboost {xgboost.__version__}, lightgbm {lightgbm.__version__}, numpy {numpy.__version__}")')"
    echo "# $(rustc --version); mldeploy $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    printf 'round\tmodel\tside\trows\tcalls\tmin_s\tmedian_s\tloadavg\n'
} >"$RESULTS/samples.tsv"
: >"$RESULTS/criterion.txt"
rm -rf "$RESULTS/criterion"
export -f round library engine
export NAMES_LIST="${NAMES[*]}" MODELS MODELS_ABS RESULTS RESULTS_ABS
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    export ROUND
    # shellcheck disable=SC2016 # expanded by the inner shell
    locked exclusive bash -c 'set -euo pipefail; read -ra NAMES <<<"$NAMES_LIST"; round'
done
echo "# load average after $(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS/samples.tsv"
python3 scripts/bench/tree_report.py "$RESULTS/samples.tsv" | tee "$RESULTS/results.md"
