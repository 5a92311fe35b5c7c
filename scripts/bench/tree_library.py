#!/usr/bin/env python3
"""Time each library's own predict_proba, one thread, on the models tree_models.py wrote.

    OMP_NUM_THREADS=1 python3 scripts/bench/tree_library.py MODELS_DIR [NAME ...]
    TREE_ROWS="32" python3 scripts/bench/tree_library.py MODELS_DIR xgb300   # other batch sizes

Measured as criterion measures the engine in crates/mldeploy-package/benches/trees.rs (flat
sampling, 20 samples over 3 s after a warm-up): per model and batch (1 row and 1,000 rows, or
the sizes in TREE_ROWS), 20 repeats of a loop of calls, each loop lasting about 0.15 s. Prints
one line per model and batch, tab-separated: NAME ROWS CALLS_PER_REPEAT MIN_S MEDIAN_S
(seconds per call over the repeats). On a shared machine other load only ever adds time, so the
minimum is the steadiest figure; the median is printed beside it.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import joblib  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

NAMES = ["rf300", "et300", "gb300", "hgb300", "xgb300", "lgb300"]
MEASUREMENT_S = 3.0  # criterion's measurement_time in benches/trees.rs
SAMPLES = 20  # its sample_size
WARM_UP_S = 0.5  # its warm_up_time
ROWS = [int(n) for n in os.environ.get("TREE_ROWS", "1 1000").split()]


def per_call(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def samples(fn):
    """Per-call times of SAMPLES loops of the same number of calls, as criterion's flat mode."""
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < WARM_UP_S:
        fn()
        calls += 1
    estimate = (time.perf_counter() - start) / calls
    n = max(1, round(MEASUREMENT_S / SAMPLES / estimate))
    return n, [per_call(fn, n) for _ in range(SAMPLES)]


def main():
    models = sys.argv[1]
    with threadpool_limits(1):
        for name in sys.argv[2:] or NAMES:
            est, rows = joblib.load(os.path.join(models, name, "model.joblib"))
            if hasattr(est, "n_jobs"):
                est.set_params(n_jobs=1)
            kwargs = {"num_threads": 1} if type(est).__module__.startswith("lightgbm") else {}
            for count in ROWS:
                batch = np.ascontiguousarray(rows[:count])
                n, times = samples(lambda: est.predict_proba(batch, **kwargs))
                print(f"{name}\t{count}\t{n}\t{min(times):.9f}\t{statistics.median(times):.9f}", flush=True)


if __name__ == "__main__":
    main()
