#!/usr/bin/env bash
# Installs what the test suite needs, idempotently: Python packages for the reference models
# and the metrics parser, wrk for the load tests, promtool, and the Kafka-protocol test broker.
# Safe to run again: each step checks first and does nothing when its tool is present.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

# Python packages: scikit-learn (reference models and the exporter), safetensors, joblib,
# prometheus_client (parses /metrics in the tests), tritonclient (the Open Inference Protocol
# client the V2 tests use), kubernetes-validate (checks configs/kubernetes; pinned: its
# schemas change with each release), XGBoost (its CPU-only wheel) and LightGBM (the tree
# tests compare with them; pinned: the engine reproduces these versions' arithmetic), Flask (the
# Python models' own routes, served through WSGI; pinned with the Werkzeug it was tested with),
# and for the ONNX tests onnxruntime (its wheel holds the runtime library the server loads; ort
# 2.0.0-rc.15 needs 1.31 or later), skl2onnx and onnx (they build the test graphs), pinned to
# the versions the ONNX engine was tested with. The import check also compares the versions of
# Flask and onnxruntime, so an older install is upgraded.
FLASK_PINS=(Flask==3.1.3 Werkzeug==3.1.8)
if ! python3 -c 'import sklearn, numpy, joblib, safetensors, pandas, prometheus_client, tritonclient.http, kubernetes_validate, threadpoolctl, xgboost, lightgbm, skl2onnx, onnx, importlib.metadata as m; assert m.version("onnxruntime") == "1.31.1"' 2>/dev/null \
    || [ "$(python3 -c 'import importlib.metadata as m; print(m.version("flask"))' 2>/dev/null)" != "${FLASK_PINS[0]#Flask==}" ]; then
    log "installing Python packages"
    python3 -m pip install --quiet --disable-pip-version-check \
        scikit-learn numpy joblib safetensors pandas prometheus_client 'tritonclient[http]' \
        kubernetes-validate==1.37.0 threadpoolctl xgboost-cpu==3.2.0 lightgbm==4.7.0 "${FLASK_PINS[@]}" \
        onnxruntime==1.31.1 skl2onnx==1.20.0 onnx==1.23.2
fi

# mldeploy-python embeds CPython: its build needs a shared libpython of the Python the tests
# run (PYO3_PYTHON, else python3 on PATH).
if ! python3 -c 'import sysconfig, sys; sys.exit(not sysconfig.get_config_var("Py_ENABLE_SHARED"))'; then
    log "python3 is not a shared build: mldeploy-python cannot be built (see docs/python-models.md)"
    exit 1
fi

# Debian packages: wrk (load tests).
if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

# promtool (Debian's prometheus package) checks the /metrics exposition; the metrics test
# skips that one check when it cannot be installed.
if ! command -v promtool >/dev/null 2>&1; then
    log "installing promtool"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq || true
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
        || log "promtool could not be installed; the metrics test will skip promtool"
fi

# The Kafka-protocol broker for the event tests (built once into a cache directory).
scripts/kafka-broker.sh install
log "test dependencies ready"
