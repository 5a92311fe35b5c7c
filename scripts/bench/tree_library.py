#!/usr/bin/env python3
"""Time each library's own predict_proba, one thread, on the models tree_models.py wrote.

    OMP_NUM_THREADS=1 python3 scripts/bench/tree_library.py MODELS_DIR [NAME ...]

Prints, per model, the shortest time of one call (over repeats) at 1 row and at 1,000 rows and
the rows per second: on a shared machine other load only ever adds time.
"""

import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
import joblib  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

NAMES = ["rf300", "et300", "gb300", "hgb300", "xgb300", "lgb300"]


def shortest(fn, min_time=2.0, repeat=15):
    fn()
    n = 1
    while True:
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t > min_time / repeat:
            break
        n *= 2
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n)
    return min(times)


def main():
    models = sys.argv[1]
    print(f"{'model':8} {'1 row':>12} {'rows/s':>10} {'1000 rows':>12} {'rows/s':>10}")
    with threadpool_limits(1):
        for name in sys.argv[2:] or NAMES:
            est, rows = joblib.load(os.path.join(models, name, "model.joblib"))
            if hasattr(est, "n_jobs"):
                est.set_params(n_jobs=1)
            kwargs = {"num_threads": 1} if type(est).__module__.startswith("lightgbm") else {}
            one, many = np.ascontiguousarray(rows[:1]), np.ascontiguousarray(rows[:1000])
            t1 = shortest(lambda: est.predict_proba(one, **kwargs))
            tn = shortest(lambda: est.predict_proba(many, **kwargs))
            print(f"{name:8} {t1 * 1e6:10.1f}us {1 / t1:10.0f} {tn * 1e3:10.2f}ms {1000 / tn:10.0f}", flush=True)


if __name__ == "__main__":
    main()
