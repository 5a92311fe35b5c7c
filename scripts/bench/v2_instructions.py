#!/usr/bin/env python3
"""Instructions per request of each predict endpoint, counted by valgrind's callgrind.

Usage: v2_instructions.py MLDEPLOY_BIN MODEL_DIR OUT_DIR [--requests N] [--variants api,v2-json,...]

MODEL_DIR is what scripts/bench/v2.sh prepares (package/, body-ROWS.json, v2-ROWS.json,
v2-ROWS.bin, v2-ROWS.len). For each endpoint and body (1 and 32 rows), the server runs under
`valgrind --tool=callgrind` with one worker and one thread; one keep-alive connection sends N
requests, then 3N, and the server stops. The worker's instruction count (Ir, from its callgrind
file) for 3N minus that for N, over 2N, is the instructions one request costs, start-up and
shutdown cancelled out. The 3N-request profiles stay in OUT_DIR for callgrind_annotate:
callgrind.VARIANT-ROWS.PID (the worker is the file with the larger count).

Unlike requests/s on a shared machine, the count barely moves from one run to the next, so it
shows differences of a few percent. It counts instructions, not time: cache misses and system
calls (the socket reads and writes) weigh more in time than here.
"""
import argparse
import glob
import http.client
import os
import subprocess
import sys
import time

from loopback import free_port


def request_of(model_dir, variant, rows):
    if variant == "api":
        body = open(os.path.join(model_dir, f"body-{rows}.json"), "rb").read()
        return "/api/ml/predict", body, {"Content-Type": "application/json"}
    path = "/v2/models/breast-cancer/infer"
    if variant == "v2-json":
        body = open(os.path.join(model_dir, f"v2-{rows}.json"), "rb").read()
        return path, body, {"Content-Type": "application/json"}
    body = open(os.path.join(model_dir, f"v2-{rows}.bin"), "rb").read()
    length = open(os.path.join(model_dir, f"v2-{rows}.len")).read().strip()
    return path, body, {"Inference-Header-Content-Length": length}


def wait_ready(port, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit("the server exited during start-up")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/ready")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit("the server did not get ready")


def worker_ir(pattern):
    """The largest total Ir among the callgrind files (the worker's; the master's is small)."""
    best = 0
    for path in glob.glob(pattern):
        for line in open(path, errors="replace"):
            if line.startswith("totals:") or line.startswith("summary:"):
                best = max(best, int(line.split()[1]))
                break
    return best


def run(args, variant, rows, count, keep):
    tag = f"{variant}-{rows}-{count}"
    for old in glob.glob(os.path.join(args.out, f"callgrind.{tag}.*")):
        os.remove(old)
    port = free_port()
    cmd = [
        "valgrind", "--tool=callgrind", "--trace-children=no",
        f"--callgrind-out-file={os.path.join(args.out, f'callgrind.{tag}.%p')}",
        args.bin, "serve", os.path.join(args.model, "package"), "--workers", "1", "--threads", "1",
        "--bind", f"127.0.0.1:{port}", "--log-level", "error",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(args.out, "valgrind.log"), "a"))
    try:
        wait_ready(port, proc)
        path, body, headers = request_of(args.model, variant, rows)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for _ in range(count):
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                sys.exit(f"{variant} answered {response.status}")
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    ir = worker_ir(os.path.join(args.out, f"callgrind.{tag}.*"))
    if not keep:
        for old in glob.glob(os.path.join(args.out, f"callgrind.{tag}.*")):
            os.remove(old)
    return ir


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("bin")
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--variants", default="api,v2-json,v2-binary")
    parser.add_argument("--rows", default="1,32")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    n = args.requests
    print("variant rows instructions_per_request")
    for rows in args.rows.split(","):
        for variant in args.variants.split(","):
            low = run(args, variant, rows, n, keep=False)
            high = run(args, variant, rows, 3 * n, keep=True)
            print(f"{variant} {rows} {(high - low) / (2 * n):,.0f}", flush=True)


if __name__ == "__main__":
    main()
