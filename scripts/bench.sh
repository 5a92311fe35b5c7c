#!/usr/bin/env bash
# Benchmarks mldeploy side by side with the Python system it replaces (ml-deploy 2.0.0 on
# gunicorn + Flask) and with nginx answering a fixed 200 (the HTTP limit of the machine), in one
# run on one machine, everything on 127.0.0.1.
#
# Usage: scripts/bench.sh [--quick] [--systems "mldeploy ml-deploy nginx"]
#   --quick     short runs and one repetition, to check the script itself
#   --systems   which systems to load-test (default: all three); "mldeploy-python" is the same
#               ml-deploy interface class and config.yaml ml-deploy serves, served by mldeploy
#               (mldeploy-python, in ml-deploy's virtualenv)
# Environment: MLDEPLOY_TOOLS_DIR (default ~/.cache/mldeploy-tools) holds the ml-deploy virtualenv;
#   BENCH_OUT (default .bench-out) receives the raw outputs and results.md.
#
# Setup is idempotent: Debian packages (wrk, nginx-light, librdkafka-dev) are installed only when
# missing, the virtualenv only when its pins changed, mldeploy is built in release mode by cargo.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BENCH_DIR="$ROOT/scripts/bench"

QUICK=0
SYSTEMS="mldeploy ml-deploy nginx"
while [ "$#" -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --systems) SYSTEMS="$2"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
has_system() { case " $SYSTEMS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if [ "$QUICK" = 1 ]; then
    WARMUP_S=1 RUN_S=3 REPS=1 RELOAD_S=10 LIFECYCLE_ROUNDS=2
else
    WARMUP_S=3 RUN_S=10 REPS=2 RELOAD_S=20 LIFECYCLE_ROUNDS=5
fi
CONNECTIONS=32
WRK_THREADS=2
CONFIGS="2x2 4x2"          # workers x threads
BODIES="1 32"              # rows per request
RELOADS=10                 # SIGHUPs during one reload run
# Worker recycling: mldeploy with --max-requests 2000 --max-requests-jitter 200. ml-deploy serves
# a few hundred requests per second here, so with 2000 its workers would never recycle within the
# run; it gets 200/20, which recycles each worker several times, as mldeploy's are at 2000.
MAX_REQUESTS=2000 MAX_REQUESTS_JITTER=200
ML_DEPLOY_MAX_REQUESTS=200 ML_DEPLOY_MAX_REQUESTS_JITTER=20

TOOLS_DIR="${MLDEPLOY_TOOLS_DIR:-$HOME/.cache/mldeploy-tools}"
VENV="$TOOLS_DIR/mldeploy-venv"
OUT="${BENCH_OUT:-$ROOT/.bench-out}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-bench.XXXXXX")"
export PYTHONDONTWRITEBYTECODE=1
# ml-deploy (through mlflow) may write into its working directory: give it a scratch one.
ML_DEPLOY_CWD="$RUN_DIR/ml-deploy-cwd"
mkdir -p "$ML_DEPLOY_CWD"

log() { printf 'bench: %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: every server started here is stopped by PID on exit.
# ---------------------------------------------------------------------------------------------
STARTED_PIDS=()

children_of() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }

stop_server() {
    local pid=$1 kids waited=0
    kill -0 "$pid" 2>/dev/null || return 0
    kids="$(children_of "$pid")"
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 150 ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still running after TERM, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # Workers the master did not take down with it (it was killed, or it left them behind).
    for kid in $kids $(children_of "$pid"); do
        kill -KILL "$kid" 2>/dev/null || true
    done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]}"; do
        stop_server "$pid"
    done
    rm -rf "$RUN_DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# ---------------------------------------------------------------------------------------------
# Setup (idempotent)
# ---------------------------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    if [ "$APT_UPDATED" = 0 ]; then
        $sudo apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing Debian packages: $*"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

setup_debian() {
    command -v wrk >/dev/null 2>&1 || apt_install wrk
    if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
        apt_install nginx-light
    fi
    # confluent-kafka 1.6.1 (an ml-deploy dependency) has no wheel for Python 3.11 and builds
    # against the system librdkafka.
    dpkg -s librdkafka-dev >/dev/null 2>&1 || apt_install librdkafka-dev
}
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"

# ml-deploy 2.0.0 pins its direct dependencies but leaves theirs open; current releases of those
# break it on Python 3.11, so every package of the environment is pinned to a set that installs
# and serves (checked by starting ml-deploy and sending predictions). setuptools stays below 70
# because gunicorn 20.0.0 imports pkg_resources.
ML_DEPLOY_PINS=(
    ml-deploy==2.0.0 gunicorn==20.0.0 Flask==1.1.2 Werkzeug==1.0.1 Jinja2==2.11.3
    MarkupSafe==2.0.1 itsdangerous==1.1.0 click==7.1.2 numpy==1.23.5 pandas==2.2.3
    scipy==1.15.3 scikit-learn==1.3.2 joblib==1.6.0 threadpoolctl==3.8.0 protobuf==3.20.3
    SQLAlchemy==1.3.24 alembic==1.4.1 mlflow==1.18.0 confluent-kafka==1.6.1 pydantic==1.8.2
    prometheus-client==0.10.1 prometheus_flask_exporter==0.23.2 strictyaml==1.4.4
    Flask-Cors==3.0.10 Flask-APScheduler==1.12.2 APScheduler==3.11.3 setuptools==69.5.1
    certifi==2026.10.18 charset-normalizer==3.5.2 cloudpickle==3.1.2 databricks-cli==0.18.0
    docker==7.2.0 entrypoints==0.4.2 gitdb==4.0.12 GitPython==3.2.1 idna==3.20 Mako==1.4.3
    oauthlib==4.0.1 packaging==26.3 PyJWT==2.15.1 python-dateutil==4.0.0 python-editor==1.0.4
    pytz==2026.6 PyYAML==6.0.3 querystring-parser==1.2.4 requests==2.34.2 six==1.17.0
    smmap==5.0.3 sqlparse==0.6.1 tabulate==0.10.0 typing_extensions==4.16.0 tzdata==2026.6
    tzlocal==5.4.5 urllib3==2.8.0
)

setup_venv() {
    local stamp="$VENV/.mldeploy-bench-pins" wanted
    wanted="$(printf '%s\n' "${ML_DEPLOY_PINS[@]}")"
    if [ -x "$VENV/bin/ml-deploy" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
        return 0
    fi
    log "creating the ml-deploy virtualenv in $VENV"
    mkdir -p "$TOOLS_DIR"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "setuptools==69.5.1" wheel
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${ML_DEPLOY_PINS[@]}"
    printf '%s\n' "$wanted" >"$stamp"
}

build_mldeploy() {
    log "building mldeploy (release)"
    local packages=(-p mldeploy)
    # mldeploy-python embeds python3's libpython: the Python that made ml-deploy's virtualenv
    # (it refuses a virtualenv of another version at start). Built in the same cargo command,
    # so the dependencies they share are built once, with one set of features.
    has_system mldeploy-python && packages+=(-p mldeploy-python)
    cargo build --release -j2 "${packages[@]}"
    MLDEPLOY_BIN="$ROOT/target/release/mldeploy"
}

MODEL_DIR="$OUT/model"
prepare_model() {
    # Fitted with the virtualenv's scikit-learn, so ml-deploy loads the pickle it was made with.
    "$VENV/bin/python" "$BENCH_DIR/train_model.py" "$MODEL_DIR" >"$OUT/train.log"
    if has_system mldeploy; then
        if [ ! -f "$ROOT/scripts/export_sklearn.py" ]; then
            log "scripts/export_sklearn.py is missing: cannot export the model for mldeploy"
            exit 1
        fi
        rm -rf "$MODEL_DIR/mldeploy-package"
        python3 "$ROOT/scripts/export_sklearn.py" "$MODEL_DIR/pipeline.joblib" \
            "$MODEL_DIR/mldeploy-package" --name breast-cancer --version 1.0.0 \
            >>"$OUT/train.log" 2>&1
    fi
}

# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------
# start_SYSTEM WORKERS THREADS PORT [extra args]: starts one server in the background, sets
# SERVER_PID and records the command line in COMMANDS.
declare -A COMMANDS

start_nginx() {
    local workers=$1 port=$3 dir="$RUN_DIR/nginx-$3"
    mkdir -p "$dir"
    sed -e "s|@WORKERS@|$workers|g" -e "s|@PORT@|$port|g" -e "s|@DIR@|$dir|g" \
        "$BENCH_DIR/nginx.conf.in" >"$dir/nginx.conf"
    COMMANDS[nginx]="nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'  (scripts/bench/nginx.conf.in, worker_processes = workers)"
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -g 'daemon off;' >"$OUT/nginx-$port.log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
}

start_ml_deploy() {
    local workers=$1 threads=$2 port=$3
    shift 3
    COMMANDS[ml-deploy${1:+ (recycling run)}]="PYTHONPATH=scripts/bench BENCH_PIPELINE=pipeline.joblib ml-deploy --config scripts/bench/ml-deploy-config.yaml --mode production --workers W --threads T --http-port PORT${1:+ $*}  (in a scratch directory)"
    (cd "$ML_DEPLOY_CWD" && PYTHONPATH="$BENCH_DIR" BENCH_PIPELINE="$MODEL_DIR/pipeline.joblib" \
        exec "$VENV/bin/ml-deploy" \
        --config "$BENCH_DIR/ml-deploy-config.yaml" --mode production --workers "$workers" \
        --threads "$threads" --http-port "$port" "$@") >"$OUT/ml-deploy-$port.log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
}

start_mldeploy() {
    local workers=$1 threads=$2 port=$3
    shift 3
    COMMANDS[mldeploy${1:+ (recycling run)}]="target/release/mldeploy serve MODEL_PACKAGE --workers W --threads T --bind 127.0.0.1:PORT${1:+ $*}"
    "$MLDEPLOY_BIN" serve "$MODEL_DIR/mldeploy-package" --workers "$workers" \
        --threads "$threads" --bind "127.0.0.1:$port" "$@" >"$OUT/mldeploy-$port.log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
}

# The unchanged ml-deploy class and config, served by mldeploy: `mldeploy serve
# --ml-deploy-config` hands the command to mldeploy-python, which runs the class in ml-deploy's
# virtualenv (ml-deploy installed there stays unused). The port and the sizes come from flags,
# as for ml-deploy.
start_mldeploy_python() {
    local workers=$1 threads=$2 port=$3
    shift 3
    COMMANDS[mldeploy-python${1:+ (recycling run)}]="PYTHONPATH=scripts/bench BENCH_PIPELINE=pipeline.joblib target/release/mldeploy serve --ml-deploy-config scripts/bench/ml-deploy-config.yaml --python VENV --workers W --threads T --http-port PORT${1:+ $*}"
    PYTHONPATH="$BENCH_DIR" BENCH_PIPELINE="$MODEL_DIR/pipeline.joblib" "$MLDEPLOY_BIN" serve \
        --ml-deploy-config "$BENCH_DIR/ml-deploy-config.yaml" --python "$VENV" --workers "$workers" \
        --threads "$threads" --http-port "$port" "$@" >"$OUT/mldeploy-python-$port.log" 2>&1 &
    SERVER_PID=$!
    STARTED_PIDS+=("$SERVER_PID")
}

predict_url() {
    case "$1" in
        nginx) echo "http://127.0.0.1:$2/" ;;
        ml-deploy | mldeploy-python) echo "http://127.0.0.1:$2/ml/api/predict" ;;
        mldeploy) echo "http://127.0.0.1:$2/api/ml/predict" ;;
    esac
}

# wait_serving SYSTEM PID PORT WORKERS: until the server answers a prediction with 200 and its
# master has all its workers (bounded).
wait_serving() {
    local system=$1 pid=$2 port=$3 workers=$4 url i
    url="$(predict_url "$system" "$port")"
    for i in $(seq 1 600); do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "$system (pid $pid) exited during start-up; its log:"
            tail -20 "$OUT/$system-$port.log" >&2
            exit 1
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 -X POST \
                -H 'Content-Type: application/json' --data-binary "@$MODEL_DIR/body-1.json" \
                "$url" || true)" = 200 ] \
            && [ "$(children_of "$pid" | wc -w)" -ge "$workers" ]; then
            return 0
        fi
        sleep 0.1
    done
    log "$system did not serve within 60 s"
    exit 1
}

mem_of() { python3 "$BENCH_DIR/proc_tree_mem.py" "$1"; }

# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
# run_wrk SYSTEM PORT ROWS SECONDS OUTFILE
run_wrk() {
    local system=$1 port=$2 rows=$3 seconds=$4 outfile=$5
    BENCH_BODY="$MODEL_DIR/body-$rows.json" timeout $((seconds + 15)) \
        wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${seconds}s" --latency \
        -s "$BENCH_DIR/post_json.lua" "$(predict_url "$system" "$port")" >"$outfile" 2>&1 || true
}

summary_of() { grep '^BENCH_SUMMARY' "$1" | sed 's/^BENCH_SUMMARY //' || echo "requests=0 missing=1"; }

machine_info() {
    {
        echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo "nproc: $(nproc)"
        echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
        echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
        echo "kernel: $(uname -sr)"
        echo "wrk: $(wrk -v 2>&1 | head -1)"
        echo "nginx: $("$NGINX" -v 2>&1)"
        echo "python: $("$VENV/bin/python" --version 2>&1)"
        echo "loadavg_before: $(cut -d' ' -f1-3 /proc/loadavg)"
        if [ -n "${MLDEPLOY_BIN:-}" ]; then
            echo "mldeploy: $("$MLDEPLOY_BIN" --version 2>&1 | head -1)"
        fi
        echo "quick: $QUICK"
        echo "systems: $SYSTEMS"
        echo "wrk_command: BENCH_BODY=body-ROWS.json wrk -t$WRK_THREADS -c$CONNECTIONS -d${RUN_S}s --latency -s scripts/bench/post_json.lua URL  (after a ${WARMUP_S} s warm-up run, same command)"
    } >"$OUT/machine.txt"
}

load_runs() {
    local config workers threads rep body system order port pid
    : >"$OUT/load.tsv"
    : >"$OUT/memory.tsv"
    for config in $CONFIGS; do
        workers=${config%x*} threads=${config#*x}
        declare -A PORT_OF=() PID_OF=()
        for system in $SYSTEMS; do
            port="$(free_port)"
            "start_${system//-/_}" "$workers" "$threads" "$port"
            PORT_OF[$system]=$port PID_OF[$system]=$SERVER_PID
        done
        for system in $SYSTEMS; do
            wait_serving "$system" "${PID_OF[$system]}" "${PORT_OF[$system]}" "$workers"
        done
        sleep 2
        for system in $SYSTEMS; do
            printf '%s\t%s\tidle\t%s\n' "$config" "$system" "$(mem_of "${PID_OF[$system]}")" \
                >>"$OUT/memory.tsv"
            curl -s -X POST -H 'Content-Type: application/json' \
                --data-binary "@$MODEL_DIR/body-32.json" \
                "$(predict_url "$system" "${PORT_OF[$system]}")" \
                >"$OUT/response-$system-32.json" || true
        done
        for rep in $(seq 1 "$REPS"); do
            # Alternate the order of the systems between repetitions.
            order="$SYSTEMS"
            [ $((rep % 2)) = 0 ] && order="$(echo "$SYSTEMS" | tr ' ' '\n' | tac | tr '\n' ' ')"
            for body in $BODIES; do
                for system in $order; do
                    port=${PORT_OF[$system]}
                    log "$config rows=$body rep=$rep $system"
                    run_wrk "$system" "$port" "$body" "$WARMUP_S" "$RUN_DIR/warmup.txt"
                    local load
                    load="$(cut -d' ' -f1 /proc/loadavg)"
                    run_wrk "$system" "$port" "$body" "$RUN_S" \
                        "$OUT/wrk-$system-$config-rows$body-rep$rep.txt"
                    printf '%s\t%s\t%s\t%s\t%s\tloadavg=%s\n' "$config" "$body" "$rep" \
                        "$system" "$(summary_of "$OUT/wrk-$system-$config-rows$body-rep$rep.txt")" \
                        "$load" >>"$OUT/load.tsv"
                done
            done
        done
        for system in $SYSTEMS; do
            printf '%s\t%s\tloaded\t%s\n' "$config" "$system" "$(mem_of "${PID_OF[$system]}")" \
                >>"$OUT/memory.tsv"
        done
        for system in $SYSTEMS; do
            stop_server "${PID_OF[$system]}"
        done
        unset PORT_OF PID_OF
    done
}

# lifecycle_command SYSTEM MODE WORKERS PORT: sets LC_URL, LC_METHOD and LC_CMD for one
# lifecycle_timing.py run (start-up polls mldeploy's /ready; ml-deploy has no readiness route,
# so its first 200 on predict is its READY; respawn always waits for a prediction).
lifecycle_command() {
    local system=$1 mode=$2 workers=$3 port=$4
    LC_URL="$(predict_url "$system" "$port")" LC_METHOD=POST
    case "$system" in
        mldeploy)
            if [ "$mode" = startup ]; then
                LC_URL="http://127.0.0.1:$port/ready" LC_METHOD=GET
            fi
            LC_CMD=("$MLDEPLOY_BIN" serve "$MODEL_DIR/mldeploy-package" --workers "$workers"
                --threads 2 --bind "127.0.0.1:$port")
            ;;
        ml-deploy)
            LC_CMD=(env -C "$ML_DEPLOY_CWD" PYTHONPATH="$BENCH_DIR"
                BENCH_PIPELINE="$MODEL_DIR/pipeline.joblib" "$VENV/bin/ml-deploy"
                --config "$BENCH_DIR/ml-deploy-config.yaml" --mode production
                --workers "$workers" --threads 2 --http-port "$port")
            ;;
    esac
}

lifecycle_runs() {
    local system mode workers servers rounds i
    : >"$OUT/lifecycle.tsv"
    for system in $SYSTEMS; do
        # Start-up and replacement times are measured for mldeploy and ml-deploy only.
        [ "$system" = nginx ] || [ "$system" = mldeploy-python ] && continue
        # startup: fresh starts with 4 workers. respawn: a fresh server with one worker (so
        # nothing else can answer) per kill. respawn-repeated: one server whose only worker is
        # killed LIFECYCLE_ROUNDS times, 0.5 s apart (shows any crash back-off).
        for mode in startup respawn respawn-repeated; do
            workers=1 servers=$LIFECYCLE_ROUNDS rounds=1
            [ "$mode" = startup ] && workers=4
            [ "$mode" = respawn-repeated ] && servers=1 rounds=$LIFECYCLE_ROUNDS
            for i in $(seq 1 "$servers"); do
                log "lifecycle: $system $mode $i"
                lifecycle_command "$system" "$mode" "$workers" "$(free_port)"
                python3 "$BENCH_DIR/lifecycle_timing.py" "${mode%-repeated}" "$LC_URL" \
                    --method "$LC_METHOD" --body "$MODEL_DIR/body-1.json" --rounds "$rounds" \
                    --log "$OUT/lifecycle-$system.log" -- "${LC_CMD[@]}" \
                    | sed "s/^/$system\t$mode\t/" >>"$OUT/lifecycle.tsv"
            done
        done
    done
}

reload_runs() {
    local system port pid kind
    : >"$OUT/reload.tsv"
    for system in $SYSTEMS; do
        [ "$system" = nginx ] && continue
        for kind in hup max-requests; do
            port="$(free_port)"
            if [ "$kind" = hup ]; then
                "start_${system//-/_}" 4 2 "$port"
            elif [ "$system" = ml-deploy ]; then
                start_ml_deploy 4 2 "$port" --max-requests "$ML_DEPLOY_MAX_REQUESTS" \
                    --max-requests-jitter "$ML_DEPLOY_MAX_REQUESTS_JITTER"
            elif [ "$system" = mldeploy-python ]; then
                start_mldeploy_python 4 2 "$port" --max-requests "$MAX_REQUESTS" \
                    --max-requests-jitter "$MAX_REQUESTS_JITTER"
            else
                start_mldeploy 4 2 "$port" --max-requests "$MAX_REQUESTS" \
                    --max-requests-jitter "$MAX_REQUESTS_JITTER"
            fi
            pid=$SERVER_PID
            wait_serving "$system" "$pid" "$port" 4
            log "reload under load: $system $kind"
            local count=$RELOADS
            [ "$kind" = max-requests ] && count=0
            "$BENCH_DIR/reload_under_load.sh" "$pid" "$(predict_url "$system" "$port")" \
                "$MODEL_DIR/body-1.json" "$RELOAD_S" "$CONNECTIONS" "$count" HUP \
                "$OUT/reload-$system-$kind.txt"
            printf '%s\t%s\tsignals=%s\tworker_pids_seen=%s\t%s\tworkers_before=%s\tworkers_after=%s\n' \
                "$system" "$kind" \
                "$(sed -n 's/^signals_sent: //p' "$OUT/reload-$system-$kind.txt")" \
                "$(sed -n 's/^worker_pids_seen: //p' "$OUT/reload-$system-$kind.txt")" \
                "$(summary_of "$OUT/reload-$system-$kind.txt")" \
                "$(sed -n 's/^workers_before: //p' "$OUT/reload-$system-$kind.txt" | tr ' ' ',')" \
                "$(sed -n 's/^workers_after: //p' "$OUT/reload-$system-$kind.txt" | tr ' ' ',')" \
                >>"$OUT/reload.tsv"
            stop_server "$pid"
        done
    done
}

# ---------------------------------------------------------------------------------------------
setup_debian
setup_venv
MLDEPLOY_BIN=""
if has_system mldeploy || has_system mldeploy-python; then
    build_mldeploy
fi
prepare_model
machine_info
load_runs
lifecycle_runs
reload_runs
{
    for name in "${!COMMANDS[@]}"; do
        printf '%s\t%s\n' "$name" "${COMMANDS[$name]}"
    done | sort
} >"$OUT/commands.tsv"
python3 "$BENCH_DIR/report.py" "$OUT" >"$OUT/results.md"
log "results in $OUT/results.md"
