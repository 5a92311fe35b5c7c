#!/usr/bin/env bash
# Seldon MLServer 1.7.1 (the Python V2 inference server, with its scikit-learn, XGBoost and
# LightGBM runtimes) for benchmarks: installs it into a pinned virtualenv and starts and stops one
# server on 127.0.0.1. scripts/bench/v2.sh uses it to compare mldeploy's V2 endpoint with
# MLServer's on the same model.
#
# Usage:
#   mlserver.sh install                          create/refresh the virtualenv (idempotent)
#   mlserver.sh serve MODEL NAME PORT WORKERS    serve MODEL on 127.0.0.1:PORT, print the PID
#   mlserver.sh stop PID                         stop a server started by `serve`
#   mlserver.sh python ARGS...                   run the virtualenv's python (e.g. to train a
#                                                model with the virtualenv's scikit-learn)
#
# MODEL is a file: *.joblib / *.pkl / *.pickle -> mlserver_sklearn.SKLearnModel,
#   *.bst / *.ubj / *.json (XGBoost Booster.save_model) -> mlserver_xgboost.XGBoostModel,
#   *.txt (LightGBM Booster.save_model) -> mlserver_lightgbm.LightGBMModel.
#   MLSERVER_RUNTIME=sklearn|xgboost|lightgbm overrides the guess from the extension.
# WORKERS is MLServer's `parallel_workers`: inference processes behind one HTTP process (which
#   parses the requests and encodes the answers); 0 runs inference inside the HTTP process.
# The PID printed is MLServer's main process, a session leader: its worker processes are its
#   children (so scripts/bench/proc_tree_mem.py PID sums the whole server) and share its
#   session, which is how `stop` finds any that outlive it.
# Environment: MLDEPLOY_TOOLS_DIR (default ~/.cache/mldeploy-tools) holds the virtualenv
#   mlserver-1.7.1/; MLSERVER_READY_TIMEOUT_S (default 120) bounds the wait for readiness.
#   `serve` logs to DIR/mlserver.log, DIR being the temporary directory it prints on stderr.
#   Other variables pass through to the server (for example OMP_NUM_THREADS=1, which
#   scripts/bench/v2.sh sets); MLSERVER_* variables are cleared, since they override settings.
#
# What `serve` writes (settings.json and model-settings.json in the temporary directory):
#   debug false (MLServer's default true turns on uvicorn's access log), logging WARNING,
#   the model loaded at start-up, and free ports on 127.0.0.1 for the gRPC and metrics
#   listeners, which 1.7.1 cannot switch off. Metrics and gzip stay at their defaults (on;
#   gzip only answers clients that send Accept-Encoding, which wrk does not).
set -euo pipefail

TOOLS_DIR="${MLDEPLOY_TOOLS_DIR:-$HOME/.cache/mldeploy-tools}"
VENV="$TOOLS_DIR/mlserver-1.7.1"
RUN_RECORDS="$TOOLS_DIR/mlserver-1.7.1-run"
READY_TIMEOUT_S="${MLSERVER_READY_TIMEOUT_S:-120}"

# Direct requirements. uvloop 0.22+ makes MLServer 1.7.1's parallel workers fail to start
# ("There is no current event loop" in mlserver/parallel/worker.py). The XGBoost and LightGBM
# runtimes are not needed for the scikit-learn benchmark; they are part of the set that was
# checked to install and serve together (xgboost's Linux wheel pulls in nvidia-nccl-cu12,
# about 470 MB, which is most of the virtualenv's 1.3 GB).
MLSERVER_REQS=(
    mlserver==1.7.1 mlserver-sklearn==1.7.1 mlserver-xgboost==1.7.1 mlserver-lightgbm==1.7.1
    "uvloop<0.22"
)
# The whole environment, pinned to the set that was checked to install and serve (Python 3.11,
# 2025/26 releases). scikit-learn is pinned to what `python3 -m pip install scikit-learn` gives
# on the system side, so a pickle made on either side loads on the other without a version
# warning; change both together.
MLSERVER_PINS=(
    aiofiles==25.1.0 aiohappyeyeballs==2.7.1 aiohttp==3.14.5 aiokafka==0.14.0 aiosignal==1.4.0
    annotated-types==0.8.0 anyio==4.16.0 asgiref==3.13.0 async-timeout==5.0.1 attrs==26.1.0
    brotli==1.2.1 certifi==2026.10.19.post1 click==8.5.1 cloudpickle==3.1.3 fastapi==0.115.14
    frozenlist==1.8.0 gevent==26.9.0 geventhttpclient==2.6.1 googleapis-common-protos==1.76.0
    greenlet==3.3.2 grpcio==1.85.3 h11==0.16.0 idna==3.20 importlib_resources==6.5.2 joblib==1.6.0
    lightgbm==4.7.0 ml_dtypes==0.5.4 multidict==7.2.1 narwhals==2.29.0 numpy==2.4.6
    nvidia-nccl-cu12==2.32.3 opentelemetry-api==1.45.2 opentelemetry-exporter-otlp-common==0.66b2
    opentelemetry-exporter-otlp-proto-common==1.45.2
    opentelemetry-exporter-otlp-proto-grpc==1.45.2 opentelemetry-instrumentation==0.66b2
    opentelemetry-instrumentation-asgi==0.66b2 opentelemetry-instrumentation-fastapi==0.66b2
    opentelemetry-instrumentation-grpc==0.66b2 opentelemetry-proto==1.45.2
    opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
    opentelemetry-util-http==0.66b2 orjson==3.13.0 packaging==26.4 pandas==3.1.1
    prometheus_client==0.26.0 propcache==0.5.4 protobuf==6.33.6 py-grpc-prometheus==0.8.0
    pydantic==2.14.4 pydantic-settings==2.16.3 pydantic_core==2.50.5 python-dateutil==4.0.0
    python-dotenv==1.2.4 python-multipart==0.0.34 python-rapidjson==1.25 scikit-learn==1.9.1
    scipy==1.17.1 starlette==0.46.2 starlette_exporter==0.24.0 threadpoolctl==3.8.0
    tritonclient==2.73.0 typing-inspection==0.4.5 typing_extensions==4.16.0 tzdata==2026.6
    urllib3==2.8.0 uvicorn==0.55.0 uvloop==0.21.0 wrapt==2.5.2 xgboost==3.2.0 yarl==1.25.1
    zope.event==6.2 zope.interface==8.7
)

log() { printf 'mlserver.sh: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

install() {
    local stamp="$VENV/.mldeploy-pins" wanted
    wanted="$(printf '%s\n' "${MLSERVER_REQS[@]}" "${MLSERVER_PINS[@]}")"
    if [ -x "$VENV/bin/mlserver" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        return 0
    fi
    mkdir -p "$TOOLS_DIR"
    # One installer at a time (two bench scripts may start together).
    exec 9>"$TOOLS_DIR/mlserver-1.7.1.lock"
    flock 9
    if [ -x "$VENV/bin/mlserver" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        exec 9>&-
        return 0
    fi
    log "installing MLServer 1.7.1 into $VENV (log: $TOOLS_DIR/mlserver-1.7.1-install.log)"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    local constraints="$VENV/.mldeploy-constraints.txt"
    printf '%s\n' "${MLSERVER_PINS[@]}" >"$constraints"
    if ! "$VENV/bin/pip" install --disable-pip-version-check -c "$constraints" \
        "${MLSERVER_REQS[@]}" >"$TOOLS_DIR/mlserver-1.7.1-install.log" 2>&1; then
        tail -20 "$TOOLS_DIR/mlserver-1.7.1-install.log" >&2
        die "pip install failed"
    fi
    "$VENV/bin/mlserver" --version >/dev/null || die "mlserver does not run"
    printf '%s\n' "$wanted" >"$stamp"
    exec 9>&-
}

runtime_of() {
    local model=$1
    case "${MLSERVER_RUNTIME:-}" in
        sklearn) echo mlserver_sklearn.SKLearnModel; return ;;
        xgboost) echo mlserver_xgboost.XGBoostModel; return ;;
        lightgbm) echo mlserver_lightgbm.LightGBMModel; return ;;
        "") ;;
        *) die "MLSERVER_RUNTIME must be sklearn, xgboost or lightgbm" ;;
    esac
    case "$model" in
        *.joblib | *.pkl | *.pickle) echo mlserver_sklearn.SKLearnModel ;;
        *.bst | *.ubj | *.json) echo mlserver_xgboost.XGBoostModel ;;
        *.txt) echo mlserver_lightgbm.LightGBMModel ;;
        *) die "cannot tell the runtime of $model: set MLSERVER_RUNTIME" ;;
    esac
}

free_port() {
    "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

serve() {
    [ "$#" = 4 ] || die "usage: serve MODEL NAME PORT WORKERS"
    local model=$1 name=$2 port=$3 workers=$4 impl dir pid deadline
    [ -f "$model" ] || die "no model file $model"
    case "$name" in *[!A-Za-z0-9_.-]* | "") die "bad model name: $name" ;; esac
    if curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$port/"; then
        die "something already listens on 127.0.0.1:$port"
    fi
    install
    impl="$(runtime_of "$model")"
    model="$(cd "$(dirname "$model")" && pwd)/$(basename "$model")"
    dir="$(mktemp -d "${TMPDIR:-/tmp}/mlserver-serve.XXXXXX")"
    mkdir -p "$dir/repo/$name"
    # gRPC and the metrics server cannot be switched off in 1.7.1: give them free ports on
    # 127.0.0.1 (MLServer binds every listener to `host`).
    MLS_DIR="$dir" MLS_PORT="$port" MLS_WORKERS="$workers" MLS_GRPC="$(free_port)" \
        MLS_METRICS="$(free_port)" MLS_NAME="$name" MLS_IMPL="$impl" MLS_MODEL="$model" \
        "$VENV/bin/python" - <<'PY'
import json, os
e = os.environ
settings = {
    "debug": False,
    "host": "127.0.0.1",
    "http_port": int(e["MLS_PORT"]),
    "grpc_port": int(e["MLS_GRPC"]),
    "metrics_port": int(e["MLS_METRICS"]),
    "parallel_workers": int(e["MLS_WORKERS"]),
    "load_models_at_startup": True,
    "model_repository_root": os.path.join(e["MLS_DIR"], "repo"),
    "logging_level": "WARNING",
}
model_settings = {
    "name": e["MLS_NAME"],
    "implementation": e["MLS_IMPL"],
    "parameters": {"uri": e["MLS_MODEL"], "version": "1"},
}
with open(os.path.join(e["MLS_DIR"], "settings.json"), "w") as f:
    json.dump(settings, f, indent=2)
with open(os.path.join(e["MLS_DIR"], "repo", e["MLS_NAME"], "model-settings.json"), "w") as f:
    json.dump(model_settings, f, indent=2)
PY
    # `mlserver start DIR` reads DIR/settings.json and finds model-settings.json files under
    # model_repository_root. Environment variables MLSERVER_* would override settings: clear them.
    (
        cd "$dir"
        for v in $(env | sed -n 's/^\(MLSERVER_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$v"; done
        exec setsid "$VENV/bin/mlserver" start "$dir" >"$dir/mlserver.log" 2>&1 </dev/null
    ) &
    pid=$!
    mkdir -p "$RUN_RECORDS"
    echo "$dir" >"$RUN_RECORDS/$pid"
    log "started MLServer pid $pid in $dir"
    deadline=$((SECONDS + READY_TIMEOUT_S))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/models/$name/ready")" = 200 ] &&
        [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/health/ready")" = 200 ]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -30 "$dir/mlserver.log" >&2
            rm -f "$RUN_RECORDS/$pid"
            rm -rf "$dir"
            die "MLServer exited before it was ready"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -30 "$dir/mlserver.log" >&2
            stop "$pid"
            die "MLServer not ready within ${READY_TIMEOUT_S} s"
        fi
        sleep 0.2
    done
    echo "$pid"
}

# Every process of the server's session (the HTTP process and its worker processes).
session_pids() {
    local pid=$1
    ps -e -o pid=,sid= | awk -v s="$pid" '$2 == s { print $1 }'
}

stop() {
    [ "$#" = 1 ] || die "usage: stop PID"
    local pid=$1 pids waited=0 dir
    case "$pid" in *[!0-9]* | "") die "bad PID: $pid" ;; esac
    dir="$(cat "$RUN_RECORDS/$pid" 2>/dev/null || true)"
    [ -n "$dir" ] || log "pid $pid was not started by this script (no record); stopping it anyway"
    # setsid made the server a session leader: its workers share its session id.
    pids="$(session_pids "$pid")"
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 150 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "pid $pid still running 15 s after TERM: KILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # Workers left behind after their parent went.
    for p in $pids $(session_pids "$pid"); do
        [ "$p" = "$pid" ] && continue
        kill -KILL "$p" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
    case "$dir" in "${TMPDIR:-/tmp}"/mlserver-serve.*) rm -rf "$dir" ;; esac
    rm -f "$RUN_RECORDS/$pid"
}

cmd="${1:-}"
[ "$#" -gt 0 ] && shift
case "$cmd" in
    install) install ;;
    serve) serve "$@" ;;
    stop) stop "$@" ;;
    python) install; exec "$VENV/bin/python" "$@" ;;
    -h | --help | help) sed -n '2,34p' "$0" ;;
    *) sed -n '2,34p' "$0" >&2; exit 2 ;;
esac
