#!/usr/bin/env python3
"""Sums RSS and PSS over a process and all its descendants (master + workers).

Usage: proc_tree_mem.py PID
Prints: procs=N rss_kib=R pss_kib=P (from /proc/PID/smaps_rollup of each process).
PSS splits pages shared between processes (copy-on-write after fork, shared libraries) among
them, so the PSS sum is the tree's real footprint; the RSS sum counts shared pages once per
process.
"""
import os
import sys


def children_by_parent():
    parents = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry))
    return parents


def tree(root):
    parents = children_by_parent()
    pending, seen = [root], []
    while pending:
        pid = pending.pop()
        seen.append(pid)
        pending.extend(parents.get(pid, []))
    return seen


def rollup(pid):
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup_file:
            for line in rollup_file:
                parts = line.split()
                if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
                    values[parts[0][:-1]] = int(parts[1])
    except OSError:
        return None
    return values


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: proc_tree_mem.py PID")
    procs = rss = pss = 0
    for pid in tree(int(sys.argv[1])):
        values = rollup(pid)
        if values is None:
            continue
        procs += 1
        rss += values.get("Rss", 0)
        pss += values.get("Pss", 0)
    print(f"procs={procs} rss_kib={rss} pss_kib={pss}")


if __name__ == "__main__":
    main()
