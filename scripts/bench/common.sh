# Functions shared by the scripts in scripts/bench/ (sourced, not run). The sourcing script sets
# ROOT (the repository) and may set BIN (the server binary) before calling them.

READY_TIMEOUT_S=30

die() {
    echo "$(basename "$0"): $*" >&2
    exit 1
}

# Builds the release binary when BIN does not exist yet.
ensure_release_bin() {
    if [[ ! -x $BIN ]]; then
        (cd "$ROOT" && cargo build -j2 --release -p mldeploy) || die "release build failed"
    fi
}

# A TCP port free on 127.0.0.1 right now.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Writes to PATH a predict body of ROWS copies of one iris row, with feature names.
iris_body() {
    python3 - "$1" "$2" <<'PY'
import json, sys
rows, path = int(sys.argv[1]), sys.argv[2]
names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
json.dump({"data": [[5.1, 3.5, 1.4, 0.2]] * rows, "names": names}, open(path, "w"))
PY
}

# Waits until the server with PID answers /ready on 127.0.0.1:PORT.
wait_ready() {
    local port=$1 pid=$2 deadline=$((SECONDS + READY_TIMEOUT_S))
    until curl -sf "http://127.0.0.1:$port/ready" >/dev/null; do
        ((SECONDS < deadline)) || die "server not ready within ${READY_TIMEOUT_S} s"
        kill -0 "$pid" 2>/dev/null || die "server exited before it was ready"
        sleep 0.05
    done
}

# Stops the servers the script started: mldeploy (MLDEPLOY_PID) and MLServer (MLSERVER_PID,
# through the script at MLSERVER); either may be unset or empty.
stop_servers() {
    if [[ -n ${MLDEPLOY_PID:-} ]]; then
        kill -TERM "$MLDEPLOY_PID" 2>/dev/null || true
        wait "$MLDEPLOY_PID" 2>/dev/null || true
        MLDEPLOY_PID=
    fi
    if [[ -n ${MLSERVER_PID:-} ]]; then
        "$MLSERVER" stop "$MLSERVER_PID" || true
        MLSERVER_PID=
    fi
}

# The BENCH_SUMMARY line post_json.lua / post_v2.lua add to wrk's output in FILE.
summary_of() { grep '^BENCH_SUMMARY' "$1" | sed 's/^BENCH_SUMMARY //' || echo "requests=0 missing=1"; }

# CPU clock ticks (utime + stime, all threads) of a process and its live children.
tree_ticks() {
    local total child
    total=$(awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0)
    for child in $(cat "/proc/$1/task/$1/children" 2>/dev/null || true); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$child/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}
