#!/usr/bin/env python3
"""Train the tree benchmark models (30 features, binary classification, 10,000 training rows,
2% missing values) and write each to OUT_DIR/NAME/: the file the engine reads, bench.json (its
format and 1,000 test rows) and model.joblib (the fitted estimator and the rows, for the
library's own timing). Used by crates/mldeploy-package/benches/trees.rs and tree_library.py.

    python3 scripts/bench/tree_models.py OUT_DIR [NAME ...]
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from export_trees import write_tree_model  # noqa: E402

NAMES = ["rf300", "et300", "gb300", "hgb300", "xgb300", "lgb300"]


def main():
    import joblib
    import lightgbm as lgb
    import xgboost as xgb
    from sklearn.datasets import make_classification
    from sklearn.ensemble import (ExtraTreesClassifier, GradientBoostingClassifier, HistGradientBoostingClassifier,
                                  RandomForestClassifier)

    out = sys.argv[1]
    x, y = make_classification(n_samples=11000, n_features=30, n_informative=15, flip_y=0.05, random_state=0)
    rng = np.random.default_rng(0)
    x[rng.random(x.shape) < 0.02] = np.nan
    x_train, y_train, x_test = x[:10000], y[:10000], x[10000:]
    filled = np.nan_to_num(x_train)  # GradientBoosting takes no missing values
    models = {
        "rf300": (RandomForestClassifier(n_estimators=300, min_samples_leaf=2, n_jobs=1, random_state=0), x_train),
        "et300": (ExtraTreesClassifier(n_estimators=300, min_samples_leaf=2, n_jobs=1, random_state=0), x_train),
        "gb300": (GradientBoostingClassifier(n_estimators=300, max_depth=3, random_state=0), filled),
        "hgb300": (HistGradientBoostingClassifier(max_iter=300, early_stopping=False, random_state=0), x_train),
        "xgb300": (xgb.XGBClassifier(n_estimators=300, max_depth=6, n_jobs=1), x_train),
        "lgb300": (lgb.LGBMClassifier(n_estimators=300, num_leaves=31, n_jobs=1, verbose=-1), x_train),
    }
    for name in sys.argv[2:] or NAMES:
        est, x_fit = models[name]
        est.fit(x_fit, y_train)
        d = os.path.join(out, name)
        family, extra = write_tree_model(est, d)
        rows = np.nan_to_num(x_test) if name == "gb300" else x_test
        with open(os.path.join(d, "bench.json"), "w") as f:
            json.dump({"kind": family, "file": extra["model_file"],
                       "x": [[None if v != v else float(v) for v in r] for r in rows]}, f)
        joblib.dump((est, rows), os.path.join(d, "model.joblib"))
        print(name, family, os.path.getsize(os.path.join(d, extra["model_file"])) // 1024, "KiB", flush=True)


if __name__ == "__main__":
    main()
