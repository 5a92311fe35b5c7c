#!/usr/bin/env bash
# Resident memory of a worker around large predictions: one worker (2 threads) of the release
# binary on 127.0.0.1 answers the same large iris body ROUNDS times. After each answer the
# script prints the worker's VmRSS right away, VmRSS again 2 s later (the worker returns free
# memory to the system a second after its last large exchange), and VmHWM (the peak so far).
#
#   scripts/bench/large_body_memory.sh [ROWS] [ROUNDS]     defaults: 300000 rows (8.9 MB), 3
#
# Environment: MLDEPLOY_BIN (default target/release/mldeploy, built when missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
ROWS=${1:-300000}
ROUNDS=${2:-3}
BIN=${MLDEPLOY_BIN:-$ROOT/target/release/mldeploy}
# shellcheck source=common.sh
source "$ROOT/scripts/bench/common.sh"

[[ $ROWS =~ ^[1-9][0-9]*$ && $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROWS and ROUNDS must be positive numbers"
ensure_release_bin

WORK=$(mktemp -d "${TMPDIR:-/tmp}/mldeploy-bigbody.XXXXXX")
SERVER_PID=
cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# Rows inside the demo model's feature ranges, so every row is predicted.
python3 - "$ROWS" "$WORK/body.json" <<'EOF'
import json, random, sys
rows, path = int(sys.argv[1]), sys.argv[2]
ranges = [(4.3, 7.9), (2.0, 4.4), (1.0, 6.9), (0.1, 2.5)]
rng = random.Random(1)
data = [[round(rng.uniform(a, b), 3) for a, b in ranges] for _ in range(rows)]
names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
json.dump({"data": data, "names": names}, open(path, "w"))
EOF

PORT=$(free_port)
"$BIN" serve --workers 1 --threads 2 --bind "127.0.0.1:$PORT" --log-level error \
    --max-body $(($(stat -c %s "$WORK/body.json") + 1024)) &
SERVER_PID=$!
wait_ready "$PORT" "$SERVER_PID"
WORKER=$(pgrep -P "$SERVER_PID" | head -1)
status_kb() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$WORKER/status"; }

echo "body: $(stat -c %s "$WORK/body.json") bytes, $ROWS rows; idle worker VmRSS $(status_kb VmRSS) kB"
for ((i = 1; i <= ROUNDS; i++)); do
    answer=$(curl -s -o /dev/null -w '%{http_code} %{size_download} %{time_total}' \
        -H 'Content-Type: application/json' --data-binary "@$WORK/body.json" \
        "http://127.0.0.1:$PORT/api/ml/predict")
    read -r code size seconds <<<"$answer"
    [[ $code == 200 ]] || die "request $i answered $code"
    right_after=$(status_kb VmRSS)
    sleep 2
    echo "request $i: status $code, answer $size bytes in ${seconds} s; worker VmRSS $right_after kB right after, $(status_kb VmRSS) kB 2 s later; VmHWM $(status_kb VmHWM) kB"
done
