#!/usr/bin/env python3
"""Criterion's raw samples of crates/mldeploy-package/benches/trees.rs in tree_library.py's format.

    python3 scripts/bench/tree_criterion.py CRITERION_DIR NAME

Reads CRITERION_DIR/NAME/<ROWS> rows/new/sample.json (iteration counts and total nanoseconds of
each sample) and prints, per batch, tab-separated: NAME ROWS CALLS_PER_SAMPLE MIN_S MEDIAN_S
(seconds per call over the samples), the statistics tree_library.py prints for the library.
"""

import json
import os
import statistics
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: tree_criterion.py CRITERION_DIR NAME")
    root, name = sys.argv[1], sys.argv[2]
    for rows in (1, 1000):
        path = os.path.join(root, name, f"{rows} rows", "new", "sample.json")
        with open(path) as f:
            sample = json.load(f)
        times = [t / n / 1e9 for n, t in zip(sample["iters"], sample["times"])]
        calls = int(statistics.median(sample["iters"]))
        print(f"{name}\t{rows}\t{calls}\t{min(times):.9f}\t{statistics.median(times):.9f}", flush=True)


if __name__ == "__main__":
    main()
