#!/usr/bin/env python3
"""Times a server's start-up and its recovery from a killed worker, on loopback.

Usage:
  lifecycle_timing.py startup URL [--method GET|POST] [--body FILE] -- CMD ...
      Starts CMD, polls URL every 2 ms until it answers 200, prints startup_ms=..., then stops
      the server (SIGTERM to its PID, SIGKILL to its process group after 15 s).
  lifecycle_timing.py respawn URL [--method ...] [--body FILE] [--rounds N] -- CMD ...
      Starts CMD (meant with one worker), waits for 200 on URL, then per round: kill -9 of the
      master's only worker, time until the master has a new child (child_ms) and until URL
      answers 200 again (serve_ms, one request at a time, each waiting up to 10 s: the first
      one is held in the listen backlog until the replacement accepts it). Prints one line per
      round, then stops the server as above.
Every wait is bounded; the server is started in its own process group and always stopped.
"""
import argparse
import http.client
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlsplit

POLL_S = 0.002
START_LIMIT_S = 120.0
RECOVER_LIMIT_S = 30.0


def request_status(url, method, body, timeout):
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, parts.path or "/", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def wait_for_200(url, method, body, limit_s, request_timeout):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if request_status(url, method, body, request_timeout) == 200:
            return True
        time.sleep(POLL_S)
    return False


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return {int(child) for child in listing.read().split()}
    except OSError:
        return set()


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["startup", "respawn"])
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--body")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--log", default=os.devnull)
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit("a server command is required after --")
    split = argv.index("--")
    args = parser.parse_args(argv[:split])
    cmd = argv[split + 1 :]
    if not cmd:
        sys.exit("a server command is required after --")
    body = open(args.body, "rb").read() if args.body else None

    with open(args.log, "ab") as log:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        try:
            if not wait_for_200(args.url, args.method, body, START_LIMIT_S, 1.0):
                sys.exit(f"server did not answer 200 on {args.url} within {START_LIMIT_S} s")
            print(f"startup_ms={(time.monotonic() - started) * 1000:.1f}")
            if args.mode == "respawn":
                respawn_rounds(proc.pid, args, body)
        finally:
            stop(proc)


def respawn_rounds(master, args, body):
    for round_no in range(1, args.rounds + 1):
        # Wait for exactly one worker, so the kill leaves nothing else to answer.
        deadline = time.monotonic() + RECOVER_LIMIT_S
        while len(children(master)) != 1 and time.monotonic() < deadline:
            time.sleep(POLL_S)
        workers = children(master)
        if len(workers) != 1:
            sys.exit(f"expected one worker under {master}, found {sorted(workers)}")
        if not wait_for_200(args.url, args.method, body, RECOVER_LIMIT_S, 1.0):
            sys.exit("server stopped answering before the kill")
        victim = workers.pop()
        killed = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        child_ms = None
        deadline = killed + RECOVER_LIMIT_S
        while time.monotonic() < deadline:
            now = children(master) - {victim}
            if now:
                child_ms = (time.monotonic() - killed) * 1000
                break
            time.sleep(POLL_S / 2)
        if not wait_for_200(args.url, args.method, body, RECOVER_LIMIT_S, 10.0):
            sys.exit(f"round {round_no}: no 200 within {RECOVER_LIMIT_S} s after the kill")
        serve_ms = (time.monotonic() - killed) * 1000
        child_text = f"{child_ms:.1f}" if child_ms is not None else "none"
        print(f"round={round_no} child_ms={child_text} serve_ms={serve_ms:.1f}")
        time.sleep(0.5)


if __name__ == "__main__":
    main()
