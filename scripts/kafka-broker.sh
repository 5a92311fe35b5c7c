#!/usr/bin/env bash
# A Kafka-protocol test broker (tansu, in-memory storage) on 127.0.0.1, for the Kafka tests.
#
#   scripts/kafka-broker.sh install            install tansu into the tools cache if missing
#   scripts/kafka-broker.sh installed          exit 0 when tansu is installed (installs nothing)
#   scripts/kafka-broker.sh start PORT         install if missing, start a broker on 127.0.0.1:PORT
#                                              and return once the port accepts connections
#   scripts/kafka-broker.sh topic PORT NAME [PARTITIONS]
#                                              create a topic (1 partition by default)
#   scripts/kafka-broker.sh pid PORT           print the PID of the broker on PORT
#   scripts/kafka-broker.sh stop PORT          stop the broker started on PORT (only that PID)
#
# Environment:
#   MLDEPLOY_TOOLS_DIR      tools cache (default: $HOME/.cache/mldeploy-tools); tansu goes into
#                           $MLDEPLOY_TOOLS_DIR/tansu-0.6.0
#   MLDEPLOY_KAFKA_RUN_DIR  PID files and logs (default: ${TMPDIR:-/tmp}/mldeploy-kafka-$UID)
#   CARGO_BUILD_JOBS        jobs for the one-time build of tansu (default: 2)
#
# The broker keeps everything in memory: a restarted broker has no topics and no messages.
set -euo pipefail

TANSU_VERSION=0.6.0
CACHE=${MLDEPLOY_TOOLS_DIR:-$HOME/.cache/mldeploy-tools}
ROOT="$CACHE/tansu-$TANSU_VERSION"
TANSU="$ROOT/bin/tansu"
RUN_DIR=${MLDEPLOY_KAFKA_RUN_DIR:-${TMPDIR:-/tmp}/mldeploy-kafka-$(id -u)}
START_TIMEOUT_S=30
STOP_TIMEOUT_S=10

die() {
    echo "kafka-broker.sh: $*" >&2
    exit 1
}

usage() {
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check_port() {
    [[ ${1:-} =~ ^[0-9]+$ ]] && ((1 <= $1 && $1 <= 65535)) || die "not a TCP port: '${1:-}'"
}

pidfile() { echo "$RUN_DIR/broker-$1.pid"; }
logfile() { echo "$RUN_DIR/broker-$1.log"; }

installed() { [[ -x $TANSU ]]; }

# Install tansu once; concurrent callers wait for the first one (flock on the cache).
install() {
    installed && return 0
    command -v cargo >/dev/null || die "cargo is needed to install tansu"
    mkdir -p "$CACHE"
    (
        flock -w 3600 9 || die "timed out waiting for another tansu install"
        installed && exit 0
        echo "kafka-broker.sh: installing tansu $TANSU_VERSION into $ROOT (takes minutes, once)" >&2
        local_log="$CACHE/tansu-$TANSU_VERSION-install.log"
        if ! cargo install --locked tansu --version "$TANSU_VERSION" --features dynostore \
            --root "$ROOT" -j "${CARGO_BUILD_JOBS:-2}" >"$local_log" 2>&1; then
            tail -n 20 "$local_log" >&2
            die "tansu install failed; full log: $local_log"
        fi
    ) 9>"$CACHE/tansu-$TANSU_VERSION.lock"
    installed || die "tansu is not at $TANSU after install"
}

# PID of the broker started on $1, if it is still alive and still tansu.
live_pid() {
    local file pid
    file=$(pidfile "$1")
    [[ -f $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "tansu broker" || return 1
    echo "$pid"
}

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
    local port=$1 pid log i
    check_port "$port"
    install
    mkdir -p "$RUN_DIR"
    if pid=$(live_pid "$port"); then
        die "a broker already runs on port $port (pid $pid)"
    fi
    accepts "$port" && die "port $port is already in use"
    log=$(logfile "$port")
    # From the run directory, so no stray .env file is picked up.
    (
        cd "$RUN_DIR"
        exec "$TANSU" broker \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine memory://tansu/ \
            </dev/null >"$log" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$(pidfile "$port")"
    for ((i = 0; i < START_TIMEOUT_S * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$log" >&2
            rm -f "$(pidfile "$port")"
            die "broker exited during start; log: $log"
        fi
        if accepts "$port"; then
            echo "kafka-broker.sh: broker on 127.0.0.1:$port (pid $pid, log $log)" >&2
            return 0
        fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$(pidfile "$port")"
    die "broker did not accept connections on port $port within ${START_TIMEOUT_S}s; log: $log"
}

topic() {
    local port=$1 name=${2:-} partitions=${3:-1}
    check_port "$port"
    [[ -n $name ]] || die "topic needs a name"
    installed || die "tansu is not installed (run: $0 install)"
    (cd "${RUN_DIR}" 2>/dev/null || cd /; "$TANSU" topic create "$name" --partitions "$partitions" \
        --broker "tcp://127.0.0.1:$port" >>"$(logfile "$port")" 2>&1) ||
        die "could not create topic $name on port $port; log: $(logfile "$port")"
}

stop() {
    local port=$1 pid i
    check_port "$port"
    if ! pid=$(live_pid "$port"); then
        rm -f "$(pidfile "$port")"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT_S * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$(pidfile "$port")"
}

case ${1:-} in
install) install ;;
installed) installed ;;
start) start "${2:-}" ;;
topic) topic "${2:-}" "${3:-}" "${4:-}" ;;
pid) check_port "${2:-}" && live_pid "$2" ;;
stop) stop "${2:-}" ;;
*) usage ;;
esac
