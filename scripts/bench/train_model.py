#!/usr/bin/env python3
"""Fits the benchmark model and writes the request bodies the load runs send.

The model is StandardScaler + LogisticRegression on scikit-learn's bundled breast-cancer data,
fitted on a DataFrame so the pipeline remembers its feature names. Both servers under test serve
this one fitted pipeline: ml-deploy loads the joblib file directly, mldeploy serves the package
that scripts/export_sklearn.py makes from the same file.

Usage: train_model.py OUT_DIR
Writes OUT_DIR/pipeline.joblib and OUT_DIR/body-1.json, OUT_DIR/body-32.json
({"data": [[30 floats], ...], "names": [30 feature names]}).
"""
import json
import os
import sys

import joblib
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: train_model.py OUT_DIR")
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)

    frame = load_breast_cancer(as_frame=True)
    features = frame.data
    pipeline = Pipeline(
        [("scaler", StandardScaler()), ("classifier", LogisticRegression(max_iter=1000))]
    )
    pipeline.fit(features, frame.target)
    joblib.dump(pipeline, os.path.join(out_dir, "pipeline.joblib"))

    names = [str(name) for name in features.columns]
    for rows in (1, 32):
        body = {"data": features.iloc[:rows].values.tolist(), "names": names}
        with open(os.path.join(out_dir, f"body-{rows}.json"), "w") as out:
            json.dump(body, out, separators=(",", ":"))
    print(f"accuracy on the training data: {pipeline.score(features, frame.target):.4f}")


if __name__ == "__main__":
    main()
