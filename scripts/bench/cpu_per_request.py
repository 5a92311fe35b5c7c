#!/usr/bin/env python3
"""CPU a server's process tree spends per request under wrk: where a server's time goes, apart
from what the machine's other load does to its requests per second.

Usage: cpu_per_request.py PID URL BODY_FILE SECONDS
Runs wrk (2 threads, 32 keep-alive connections, scripts/bench/post_json.lua) for SECONDS and
prints: requests=N cpu_s=C us_per_request=U, where C is the user + system CPU the tree of PID
(master and workers alive over the whole run) used meanwhile.
"""
import os
import re
import subprocess
import sys

from proc_tree_mem import tree

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def main():
    pid, url, body, seconds = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    here = os.path.dirname(os.path.abspath(__file__))
    pids = tree(pid)
    before = cpu_seconds(pids)
    run = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", "-s", os.path.join(here, "post_json.lua"), url],
                         env={**os.environ, "BENCH_BODY": body}, capture_output=True, text=True, check=True)
    used = cpu_seconds(pids) - before
    match = re.search(r"(\d+) requests in", run.stdout)
    requests = int(match.group(1)) if match else 0
    per = used / requests * 1e6 if requests else float("nan")
    print(f"requests={requests} cpu_s={used:.2f} us_per_request={per:.0f}")


if __name__ == "__main__":
    main()
