#!/usr/bin/env bash
# Runs wrk (keep-alive) against a pre-fork server and sends SIGNAL to its master COUNT times,
# spread evenly over the run; COUNT=0 runs plain load (for max-requests recycling).
# Usage: reload_under_load.sh MASTER_PID URL BODY_FILE SECONDS CONNECTIONS COUNT SIGNAL OUT_FILE
# OUT_FILE gets wrk's output (with the BENCH_SUMMARY line), the worker pids before and after, the
# number of distinct worker pids seen during the run, and the number of signals sent. Bounded: wrk stops by itself after SECONDS (+ a 10 s timeout).
set -euo pipefail

if [ "$#" -ne 8 ]; then
    echo "usage: $0 MASTER_PID URL BODY_FILE SECONDS CONNECTIONS COUNT SIGNAL OUT_FILE" >&2
    exit 2
fi
master=$1 url=$2 body=$3 seconds=$4 connections=$5 count=$6 signal=$7 out=$8
here="$(cd "$(dirname "$0")" && pwd)"

workers() { cat "/proc/$master/task/$master/children" 2>/dev/null || true; }

{
    echo "workers_before: $(workers)"
} >"$out"

# Every worker pid seen during the run (sampled every 50 ms), to count generations and recycles.
seen="$(mktemp)"
(
    end=$(($(date +%s) + seconds + 12))
    while [ "$(date +%s)" -lt "$end" ]; do
        workers | tr ' ' '\n' >>"$seen"
        sleep 0.05
    done
) &
sampler_pid=$!

BENCH_BODY="$body" timeout $((seconds + 10)) \
    wrk -t2 -c"$connections" -d"${seconds}s" --latency -s "$here/post_json.lua" "$url" \
    >"$out.wrk" 2>&1 &
wrk_pid=$!

sent=0
if [ "$count" -gt 0 ]; then
    # Signals at seconds*i/(count+1), i = 1..count, so none falls at the very start or end.
    interval_ms=$((seconds * 1000 / (count + 1)))
    for _ in $(seq 1 "$count"); do
        sleep "$(awk -v ms="$interval_ms" 'BEGIN { printf "%.3f", ms / 1000 }')"
        if kill -0 "$wrk_pid" 2>/dev/null && kill -0 "$master" 2>/dev/null; then
            kill -s "$signal" "$master"
            sent=$((sent + 1))
        fi
    done
fi
wait "$wrk_pid" || true
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true

{
    echo "signals_sent: $sent"
    echo "worker_pids_seen: $(grep -c . <(sort -u "$seen") || true)"
    echo "workers_after: $(workers)"
    cat "$out.wrk"
} >>"$out"
rm -f "$out.wrk" "$seen"
