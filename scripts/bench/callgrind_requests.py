#!/usr/bin/env python3
"""Instructions per request of one endpoint, under callgrind (repeatable on a shared machine).

Starts `mldeploy serve ... --app-debug --threads 1` (one process, one serving thread) under
`valgrind --tool=callgrind`, sends WARMUP requests over one keep-alive connection, zeroes the
counters (callgrind_control -z), sends REQUESTS more, dumps (callgrind_control -d) and prints
the instructions of the whole process divided by REQUESTS, then the top functions (inclusive)
from callgrind_annotate, each divided by REQUESTS.

    scripts/bench/callgrind_requests.py BIN BODY [--model DIR] [--path /api/ml/predict]
        [--requests 500] [--warmup 50] [--out callgrind.out] [--top 40]

BODY is a file posted as JSON (or "GET" for a GET of PATH). Only 127.0.0.1 is used.
"""
import argparse
import http.client
import os
import re
import signal
import subprocess
import sys
import time

from loopback import free_port


def send(conn, path, body, n):
    for _ in range(n):
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        if r.status != 200:
            sys.exit(f"status {r.status}: {data[:300]!r}")
    return data


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bin")
    ap.add_argument("body")
    ap.add_argument("--model", default=None)
    ap.add_argument("--path", default="/api/ml/predict")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--out", default="callgrind.out")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()

    body = None if a.body == "GET" else open(a.body, "rb").read()
    port = free_port()
    out = os.path.abspath(a.out)
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + os.environ.get("CALLGRIND_ARGS", "").split() + [a.bin, "serve"]
    if a.model:
        cmd.append(a.model)
    cmd += ["--app-debug", "--threads", "1", "--bind", f"127.0.0.1:{port}", "--log-level", "error",
            "--access-log", "false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                conn.request("GET", "/ready")
                if conn.getresponse().read() is not None:
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit("server did not start: " + proc.stderr.read().decode(errors="replace")[-2000:])
                time.sleep(0.5)
        send(conn, a.path, body, a.warmup)
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        answer = send(conn, a.path, body, a.requests)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, stdout=subprocess.DEVNULL)
        conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    dumps = sorted(f for f in os.listdir(os.path.dirname(out)) if f.startswith(os.path.basename(out) + "."))
    dump = os.path.join(os.path.dirname(out), [d for d in dumps if re.search(r"\.\d+(-\d+)?$", d)][0])
    ann = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", dump],
                         check=True, capture_output=True, text=True).stdout
    total = None
    lines = []
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(PROGRAM TOTALS|\S.*)$", line)
        if not m:
            continue
        count = int(m.group(1).replace(",", ""))
        if m.group(2) == "PROGRAM TOTALS":
            total = count
        else:
            lines.append((count, m.group(2)))
    print(f"answer: {len(answer)} bytes; dump: {dump}")
    print(f"instructions per request: {total / a.requests:,.0f}")
    for count, name in lines[: a.top]:
        print(f"{count / a.requests:>12,.0f}  {name[:160]}")


if __name__ == "__main__":
    main()
