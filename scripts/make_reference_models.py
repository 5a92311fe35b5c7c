#!/usr/bin/env python3
"""Train reference pipelines on scikit-learn's bundled data sets and export them as packages.

Usage:
    python3 scripts/make_reference_models.py OUT_DIR [--only NAME ...]

For every model NAME this writes OUT_DIR/NAME/ (mldeploy.json, model.safetensors, written by
export_sklearn.py through its command line) and OUT_DIR/NAME/expected.json:

    {"name": ..., "kind": ..., "records": [{feature: value, ...}, ...],
     "y_predicted": [...], "probabilities": [[...], ...] (classifiers only), "classes": [...]}

with sklearn's own predictions for every record. The Rust tests load each package and compare.
Everything is deterministic (fixed random_state); "iris-demo" is the model embedded in the
mldeploy binary (crates/mldeploy-package/demo/).
"""

import argparse
import json
import os
import sys
import tempfile
import warnings

import joblib
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_sklearn  # noqa: E402

IRIS_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def iris(label_names):
    data = load_iris(as_frame=True)
    frame = data.frame.drop(columns="target")
    frame.columns = IRIS_NAMES
    y = data.target.to_numpy()
    if label_names:
        y = np.asarray(data.target_names)[y]
    return frame, y


def breast_cancer():
    data = load_breast_cancer(as_frame=True)
    return data.frame.drop(columns="target"), data.target.to_numpy()


def diabetes():
    data = load_diabetes(as_frame=True)
    return data.frame.drop(columns="target"), data.target.to_numpy()


def titanic_like():
    """A synthetic passenger list: categorical Sex/Embarked, int Pclass, numeric Age/Fare."""
    rng = np.random.RandomState(7)
    n = 400
    sex = rng.choice(["male", "female"], size=n, p=[0.64, 0.36])
    embarked = rng.choice(["S", "C", "Q"], size=n, p=[0.72, 0.19, 0.09])
    pclass = rng.choice([1, 2, 3], size=n, p=[0.24, 0.21, 0.55])
    age = np.round(np.clip(rng.normal(30, 14, size=n), 0.5, 80), 1)
    fare = np.round(np.exp(rng.normal(3.6 - 0.6 * (pclass - 1), 0.5)), 2)
    logit = 2.4 * (sex == "female") - 0.9 * (pclass - 2) - 0.02 * (age - 30) + 0.3 * (embarked == "C") - 0.6
    survived = (rng.rand(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    frame = pd.DataFrame({"Pclass": pclass, "Sex": sex, "Age": age, "Fare": fare, "Embarked": embarked})
    return frame, survived


def titanic_unknown_rows():
    """Rows with categories never seen in training (handle_unknown="ignore" encodes zeros)."""
    return pd.DataFrame(
        {
            "Pclass": [1, 3, 2],
            "Sex": ["female", "unknown", "male"],
            "Age": [22.0, 40.5, 61.0],
            "Fare": [71.28, 8.05, 13.0],
            "Embarked": ["X", "S", "Southampton"],
        }
    )


def reference_models():
    """name -> (pipeline, X, y, extra rows to predict or None, target name)."""
    scaled = lambda est: Pipeline([("scale", StandardScaler()), ("model", est)])  # noqa: E731
    x_iris_named, y_iris_named = iris(label_names=True)
    x_iris, y_iris = iris(label_names=False)
    x_bc, y_bc = breast_cancer()
    x_db, y_db = diabetes()
    x_tt, y_tt = titanic_like()
    return {
        "iris-demo": (scaled(LogisticRegression(max_iter=1000)), x_iris_named, y_iris_named, None, None),
        "iris-mlp": (
            scaled(MLPClassifier(hidden_layer_sizes=(16, 8), activation="tanh", max_iter=2000, random_state=0)),
            x_iris,
            y_iris,
            None,
            None,
        ),
        "breast-cancer-logistic": (scaled(LogisticRegression(max_iter=5000)), x_bc, y_bc, None, None),
        "breast-cancer-mlp": (
            scaled(MLPClassifier(hidden_layer_sizes=(32,), activation="logistic", max_iter=1000, random_state=0)),
            x_bc,
            y_bc,
            None,
            None,
        ),
        "diabetes-linear": (LinearRegression(), x_db, y_db, None, "disease_progression"),
        "diabetes-mlp": (
            scaled(
                MLPRegressor(
                    hidden_layer_sizes=(32, 16),
                    activation="relu",
                    learning_rate_init=0.01,
                    max_iter=2000,
                    random_state=0,
                )
            ),
            x_db,
            y_db,
            None,
            "disease_progression",
        ),
        "titanic-logistic": (
            Pipeline(
                [
                    (
                        "prepare",
                        ColumnTransformer(
                            [
                                ("num", StandardScaler(), ["Age", "Fare"]),
                                ("cat", OneHotEncoder(handle_unknown="ignore"), ["Sex", "Embarked"]),
                            ],
                            remainder="passthrough",
                        ),
                    ),
                    ("model", LogisticRegression(max_iter=1000)),
                ]
            ),
            x_tt,
            y_tt,
            titanic_unknown_rows(),
            None,
        ),
        "titanic-mlp": (
            Pipeline(
                [
                    (
                        "prepare",
                        ColumnTransformer(
                            [
                                ("cat", OneHotEncoder(handle_unknown="error"), ["Sex", "Embarked", "Pclass"]),
                                ("num", StandardScaler(), ["Age", "Fare"]),
                            ]
                        ),
                    ),
                    (
                        "model",
                        MLPClassifier(hidden_layer_sizes=(8,), activation="identity", max_iter=2000, random_state=0),
                    ),
                ]
            ),
            x_tt,
            y_tt,
            None,
            None,
        ),
    }


def records(frame):
    return [
        {str(k): export_sklearn.json_scalar(v) for k, v in row.items()} for row in frame.to_dict(orient="records")
    ]


def build(name, pipeline, x, y, extra, target_name, out_dir, workdir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(x, y)
    pipeline_file = os.path.join(workdir, f"{name}.joblib")
    data_file = os.path.join(workdir, f"{name}.data.joblib")
    joblib.dump(pipeline, pipeline_file)
    joblib.dump(x, data_file)
    package_dir = os.path.join(out_dir, name)
    argv = [pipeline_file, package_dir, "--name", name, "--version", "1.0.0", "--training-data", data_file]
    if target_name:
        argv += ["--target-name", target_name]
    status = export_sklearn.main(argv)
    if status != 0:
        raise SystemExit(f"exporting {name} failed with status {status}")

    rows = x if extra is None else pd.concat([x, extra], ignore_index=True)
    with warnings.catch_warnings():
        # Unknown categories in the extra rows make sklearn warn; that is the point of them.
        warnings.simplefilter("ignore", UserWarning)
        predicted = pipeline.predict(rows)
        expected = {
            "name": name,
            "kind": json.load(open(os.path.join(package_dir, export_sklearn.MANIFEST_FILE)))["kind"],
            "records": records(rows),
            "y_predicted": [export_sklearn.json_scalar(v) for v in predicted],
        }
        if hasattr(pipeline, "predict_proba"):
            expected["classes"] = [export_sklearn.json_scalar(c) for c in pipeline.classes_]
            expected["probabilities"] = [[float(p) for p in row] for row in pipeline.predict_proba(rows)]
    with open(os.path.join(package_dir, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, allow_nan=False)
        f.write("\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train and export the reference models.")
    parser.add_argument("out_dir", help="directory to write the packages into")
    parser.add_argument("--only", action="append", default=[], help="build only this model (repeatable)")
    args = parser.parse_args(argv)

    models = reference_models()
    unknown = [n for n in args.only if n not in models]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; known: {', '.join(models)}")
    os.makedirs(args.out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        for name, (pipeline, x, y, extra, target_name) in models.items():
            if args.only and name not in args.only:
                continue
            build(name, pipeline, x, y, extra, target_name, args.out_dir, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
