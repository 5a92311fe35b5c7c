#!/usr/bin/env python3
"""Train the three models of scripts/bench/trees_http.sh and write the request bodies.

    mlserver.sh python scripts/bench/trees_http_models.py OUT_DIR

The data are tree_models.py's (30 features, binary classification, 10,000 training rows, 2%
missing values), fitted on a DataFrame with the columns f0 .. f29 so that every model file names
its features. Written to OUT_DIR:

  rf300/model.joblib      RandomForestClassifier(300 trees, min_samples_leaf=2): MLServer's
                          scikit-learn runtime serves this file, mldeploy the package
                          export_sklearn.py makes from it.
  xgb300/package/         XGBClassifier(300 rounds, max_depth 6) saved by its own save_model
                          (model.json) with a manifest of four fields: MLServer's XGBoost runtime
                          and mldeploy serve this one file.
  lgb300/package/         LGBMClassifier(300 rounds, 31 leaves) saved by its Booster
                          (model.txt), with a manifest of four fields: MLServer's LightGBM
                          runtime and mldeploy serve this one file.
  body-ROWS.json          mldeploy's ml-deploy route: {"data": [[30 floats], ...], "names": [...]}
  v2-ROWS.json            V2 JSON: the same rows as one FP64 tensor [ROWS, 30] named "input",
                          asking for the output predict_proba only (one pass over the model on
                          both servers; MLServer's scikit-learn runtime runs the forest once
                          per output it is asked for)
  v2-check-ROWS.json      the same, asking for predict and predict_proba (the answers' check)

ROWS is 1 and 32: the first rows of the test set that have no missing value (V2 JSON carries
no NaN that MLServer reads). Every file is rewritten on each run; the same seeds give the same
models.
"""

import json
import os
import sys

import numpy as np

ROWS = (1, 32)
# export_sklearn.py's PACKAGE_FORMAT and MANIFEST_FILE (not imported: it needs safetensors,
# which MLServer's virtualenv does not have).
PACKAGE_FORMAT = "mldeploy-package/1"
MANIFEST_FILE = "mldeploy.json"


def write_manifest(pkg, name, kind):
    manifest = {"format": PACKAGE_FORMAT, "name": name, "version": "1", "kind": kind}
    with open(os.path.join(pkg, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=2)


def main():
    import joblib
    import lightgbm as lgb
    import pandas as pd
    import xgboost as xgb
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    if len(sys.argv) != 2:
        sys.exit("usage: trees_http_models.py OUT_DIR")
    out = sys.argv[1]
    # tree_models.py's data, with column names.
    x, y = make_classification(n_samples=11000, n_features=30, n_informative=15, flip_y=0.05, random_state=0)
    rng = np.random.default_rng(0)
    x[rng.random(x.shape) < 0.02] = np.nan
    names = [f"f{i}" for i in range(x.shape[1])]
    train = pd.DataFrame(x[:10000], columns=names)
    y_train, x_test = y[:10000], x[10000:]

    rf = RandomForestClassifier(n_estimators=300, min_samples_leaf=2, n_jobs=1, random_state=0).fit(train, y_train)
    os.makedirs(os.path.join(out, "rf300"), exist_ok=True)
    joblib.dump(rf, os.path.join(out, "rf300", "model.joblib"))

    xg = xgb.XGBClassifier(n_estimators=300, max_depth=6, n_jobs=1).fit(train, y_train)
    pkg = os.path.join(out, "xgb300", "package")
    os.makedirs(pkg, exist_ok=True)
    # The sklearn wrapper's save_model records the estimator type, which MLServer's runtime
    # needs to load the file as a classifier.
    xg.save_model(os.path.join(pkg, "model.json"))
    write_manifest(pkg, "xgb300", "xgboost_classifier")

    lg = lgb.LGBMClassifier(n_estimators=300, num_leaves=31, n_jobs=1, verbose=-1).fit(train, y_train)
    pkg = os.path.join(out, "lgb300", "package")
    os.makedirs(pkg, exist_ok=True)
    lg.booster_.save_model(os.path.join(pkg, "model.txt"))
    write_manifest(pkg, "lgb300", "lightgbm_classifier")

    complete = x_test[~np.isnan(x_test).any(axis=1)]
    for rows in ROWS:
        data = complete[:rows]
        with open(os.path.join(out, f"body-{rows}.json"), "w") as f:
            json.dump({"data": data.tolist(), "names": names}, f, separators=(",", ":"))
        tensor = {"name": "input", "shape": [rows, len(names)], "datatype": "FP64", "data": data.ravel().tolist()}
        for file, outputs in ((f"v2-{rows}.json", ["predict_proba"]), (f"v2-check-{rows}.json", ["predict", "predict_proba"])):
            body = {"inputs": [tensor], "outputs": [{"name": o} for o in outputs]}
            with open(os.path.join(out, file), "w") as f:
                json.dump(body, f, separators=(",", ":"))
        # The libraries' own answers for the check.
        frame = pd.DataFrame(data, columns=names)
        expected = {name: est.predict_proba(frame).tolist() for name, est in (("rf300", rf), ("xgb300", xg), ("lgb300", lg))}
        with open(os.path.join(out, f"expected-{rows}.json"), "w") as f:
            json.dump(expected, f)
    print("trained rf300, xgb300, lgb300;", len(complete), "complete test rows")


if __name__ == "__main__":
    main()
