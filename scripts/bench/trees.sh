#!/usr/bin/env bash
# The tree engine alone against each library's own predict_proba, one thread each, in one run:
# trains the benchmark models (scripts/bench/tree_models.py), times the libraries
# (scripts/bench/tree_library.py), then the engine (criterion, crates/mldeploy-package/benches/trees.rs).
#
# Usage: scripts/bench/trees.sh     (BENCH_OUT, default .bench-out, receives the models and outputs)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${BENCH_OUT:-.bench-out}"
MODELS="$OUT/tree-models"
mkdir -p "$MODELS"
export OMP_NUM_THREADS=1
python3 scripts/bench/tree_models.py "$MODELS"
python3 scripts/bench/tree_library.py "$MODELS" | tee "$OUT/tree-library.txt"
MLDEPLOY_TREE_MODELS="$(cd "$MODELS" && pwd)" cargo bench -j2 -p mldeploy-package --bench trees 2>&1 \
    | grep -E "^(rf|et|gb|hgb|xgb|lgb)300|time:|thrpt:" | tee "$OUT/tree-engine.txt"
