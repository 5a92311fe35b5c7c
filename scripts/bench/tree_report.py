#!/usr/bin/env python3
"""The report of scripts/bench/trees.sh: the engine against each library, model by model.

    python3 scripts/bench/tree_report.py SAMPLES_TSV

SAMPLES_TSV has one line per timing (round, model, side, rows, calls, min_s, median_s, loadavg):
min_s and median_s are the shortest and the median time of one call over the 20 samples of one
side (criterion for the engine, tree_library.py for the library) in one round. Prints the
machine lines, then per model and batch (1 row, 1,000 rows) the rows per second of both sides
from the best round (the minima) and the median round (the medians), their ratios engine /
library, and whether the engine was at least as fast in every round by both statistics.
"""

import csv
import statistics
import sys


def ratio(r):
    return f"{r:,.0f}x" if r >= 20 else f"{r:.2f}x"


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: tree_report.py SAMPLES_TSV")
    header, lines = [], []
    with open(sys.argv[1]) as f:
        for line in f:
            if line.startswith("#"):
                header.append(line[1:].strip())
            else:
                lines.append(line)
    runs = {}
    for row in csv.DictReader(lines, delimiter="\t"):
        runs.setdefault((row["model"], int(row["rows"])), {}).setdefault(row["side"], {})[int(row["round"])] = row
    for line in header:
        print(f"- {line}")
    print()
    print("| model | rows | library rows/s: min-based / median-based | engine (criterion) rows/s: min-based / median-based "
          "| ratio of the minima | ratio of the medians | engine >= library in every round | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for (model, rows), sides in runs.items():
        lib, eng = sides.get("library", {}), sides.get("engine", {})
        rounds = sorted(set(lib) & set(eng))
        if not rounds:
            continue

        def best(side, col):
            return min(float(side[r][col]) for r in rounds)

        def med(side, col):
            return statistics.median(float(side[r][col]) for r in rounds)

        lib_min, eng_min = best(lib, "min_s"), best(eng, "min_s")
        lib_med, eng_med = med(lib, "median_s"), med(eng, "median_s")
        every = all(float(eng[r][c]) <= float(lib[r][c]) for r in rounds for c in ("min_s", "median_s"))
        wins = sum(float(eng[r]["median_s"]) <= float(lib[r]["median_s"]) for r in rounds)
        verdict = "yes" if every else f"**no** (medians: {wins} of {len(rounds)} rounds)"
        loads = [float(s[r]["loadavg"]) for s in (lib, eng) for r in rounds]
        print(f"| {model} | {rows:,} | {rows / lib_min:,.0f} / {rows / lib_med:,.0f} | {rows / eng_min:,.0f} / "
              f"{rows / eng_med:,.0f} | {ratio(lib_min / eng_min)} | {ratio(lib_med / eng_med)} | {verdict} | "
              f"{min(loads):.2f} to {max(loads):.2f} |")
    print()
    print(f"{len(set(r for s in runs.values() for side in s.values() for r in side))} rounds; min-based: rows / the "
          "shortest time per call over all rounds; median-based: rows / the median over the rounds of each round's "
          "median time per call.")


if __name__ == "__main__":
    main()
