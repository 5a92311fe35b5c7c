#!/usr/bin/env python3
"""CPU per call of the benchmark's interface class in a plain Python loop, and where it goes:
the floor under any server's requests per second for that class.

Run it with the virtualenv's python, mldeploy's ml_deploy stand-in and scripts/bench on the path:
    PYTHONPATH=crates/mldeploy-python/python:scripts/bench BENCH_PIPELINE=.../pipeline.joblib \\
        OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 VENV/bin/python scripts/bench/python_call_cost.py \\
        .../body-1.json .../body-32.json
Prints, per body: CPU microseconds per predict call (best of 3 rounds), and the share of the
class's predict that its steps take by cProfile (cProfile slows the calls down several times, so
only the shares mean something).
"""
import cProfile
import json
import pstats
import sys
import time

from ml_deploy_model import BreastCancerModel

ROUNDS, CALLS = 3, 2000
STEPS = ("__init__", "predict", "predict_proba", "transform", "_validate_data", "_check_feature_names",
         "check_array", "decision_function", "create_response")


def main():
    model = BreastCancerModel()
    for path in sys.argv[1:]:
        with open(path) as handle:
            raw = handle.read()
        request = json.loads(raw)
        rows = len(request["data"])
        best = None
        for _ in range(ROUNDS):
            start = time.process_time()
            for _ in range(CALLS):
                model.predict(json.loads(raw))
            per_call = (time.process_time() - start) / CALLS * 1e6
            best = per_call if best is None else min(best, per_call)
        print(f"rows={rows}: {best:.0f} us CPU per predict call (json.loads of the body included), "
              f"at most {1e6 / best:,.0f} calls/s per core")
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(CALLS // 4):
            model.predict(request)
        profile.disable()
        stats = pstats.Stats(profile).stats
        top = sorted(((ct, f"{func[2]} ({'/'.join(func[0].rsplit('/', 2)[-2:])}:{func[1]})")
                      for func, (_, _, _, ct, _) in stats.items()
                      if func[2] in STEPS and ("frame.py" in func[0] or func[2] != "__init__")), reverse=True)
        whole = top[0][0] if top else 1.0
        for cumulative, name in top[:10]:
            print(f"    {cumulative / whole:6.1%} of predict  {name}")


if __name__ == "__main__":
    main()
