#!/usr/bin/env python3
"""Train tree ensembles of every kind mldeploy serves and export them as packages, with the
library's own predictions, for the tests (tests/trees.rs) and the benchmarks.

Usage:
    python3 scripts/make_tree_models.py OUT_DIR [--only NAME ...]

For every model NAME this writes OUT_DIR/NAME/: the package (written by export_sklearn.py, or a
model saved by XGBoost or LightGBM with a minimal manifest beside it) and expected.json:

    {"name", "kind", "tolerance", "records": [{feature: value or null}, ...],
     "y_predicted": [...], "probabilities": [[...], ...] (classifiers), "classes": [...]}

The records hold missing values (null) and categories where the kind takes them, categories
never seen in training where the library maps them to missing, and rows whose numbers sit at and
next to the models' split thresholds (where a server that compares differently would answer
differently). XGBoost and LightGBM are optional: without them their models are left out (with a
message), unless --require-all is given. Everything is deterministic.
"""

import argparse
import json
import math
import os
import shutil
import sys
import warnings

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_sklearn  # noqa: E402
import export_trees  # noqa: E402
import make_tree_fixtures  # noqa: E402
from make_tree_fixtures import f32_neighbours, splits_of  # noqa: E402

warnings.filterwarnings("ignore")

EXACT = 1e-9
FLOAT32 = 1e-6  # XGBoost computes in float32


def numeric_data(seed, task, n=600, d=8, nan=True):
    """The fixtures' numbers as a frame (one coarse feature with ties, one of scale 1e-3),
    NaN in 10% of the cells when `nan`."""
    x, y = make_tree_fixtures.numeric_data(seed, n=n, d=d, task=task, nan_frac=0.1 if nan else 0.0)
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(d)]), y


def category_data(seed, task, n=800):
    """The fixtures' frame with two categorical columns (missing values included) and numbers with NaN."""
    return make_tree_fixtures.frame_data(seed, n=n, task=task)


def boundary_rows(train, estimator, rng, limit=40):
    """Training rows with one number moved onto or next to a split threshold."""
    family, files, _ = export_trees.export_tree_model(estimator)
    numeric = [i for i, c in enumerate(train.columns) if not isinstance(train[c].dtype, pd.CategoricalDtype)]
    splits = [(f, t) for f, t in splits_of(family, files) if f in numeric]
    rows = []
    for i in rng.choice(len(splits), size=min(limit, len(splits)), replace=False) if splits else []:
        f, t = splits[i]
        for v in f32_neighbours(t):
            row = train.iloc[int(rng.integers(len(train)))].copy()
            row.iloc[f] = v
            rows.append(row)
    return pd.DataFrame(rows, columns=train.columns) if rows else train.iloc[:0]


def with_unknown_categories(frame, rng, n=20, unknown=True):
    """Rows with categories never seen in training (when the library takes them) and missing ones."""
    rows = frame.sample(n, random_state=int(rng.integers(1 << 30))).astype(object)
    for c in frame.columns:
        if isinstance(frame[c].dtype, pd.CategoricalDtype):
            values = list(rows[c])
            for i in range(0, n, 3):
                values[i] = "never-seen" if unknown else None
            for i in range(1, n, 5):
                values[i] = None
            rows[c] = values
    return rows


def as_library_input(test, train):
    """The test rows as the library takes them: the training dtypes, categories included (a
    category never seen in training is added to the dtype, as a new pandas category)."""
    out = pd.DataFrame(index=range(len(test)))
    for c in train.columns:
        column = list(test[c])
        if isinstance(train[c].dtype, pd.CategoricalDtype):
            known = list(train[c].cat.categories)
            extra = sorted({v for v in column if v is not None and not (isinstance(v, float) and math.isnan(v)) and v not in known})
            out[c] = pd.Categorical(column, categories=known + extra)
        else:
            out[c] = pd.Series(column, dtype=float)
    return out


def json_records(frame):
    records = []
    for _, row in frame.iterrows():
        record = {}
        for c, v in row.items():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                record[c] = None
            elif isinstance(v, (np.floating, float)):
                record[c] = float(v)
            elif isinstance(v, (np.integer, int)):
                record[c] = int(v)
            else:
                record[c] = str(v)
        records.append(record)
    return records


def write(out_dir, name, model, test_lib, test_records, tolerance, package=None):
    """Export `model` (unless `package` wrote the package already) and store the library's
    answers for the test rows."""
    pkg = os.path.join(out_dir, name)
    shutil.rmtree(pkg, ignore_errors=True)
    if package is None:
        manifest = export_sklearn.export_pipeline(model, pkg, name, "1.0.0")
    else:
        manifest = package(pkg)
    expected = {"name": name, "kind": manifest["kind"], "tolerance": tolerance, "records": test_records}
    predicted = np.asarray(model.predict(test_lib))
    if hasattr(model, "predict_proba"):
        expected["classes"] = [export_sklearn.json_scalar(c) for c in model.classes_]
        expected["y_predicted"] = [export_sklearn.json_scalar(v) for v in predicted]
        expected["probabilities"] = [[float(p) for p in row] for row in np.asarray(model.predict_proba(test_lib))]
    else:
        expected["y_predicted"] = [float(v) for v in predicted.astype(np.float64)]
    with open(os.path.join(pkg, "expected.json"), "w") as f:
        json.dump(expected, f, allow_nan=False)
    print(f"{name}: {manifest['kind']}, {len(test_records)} rows")


def numeric_case(out_dir, name, estimator, seed, task, tolerance=EXACT, nan=True):
    frame, y = numeric_data(seed, task, nan=nan)
    cut = len(frame) * 3 // 4
    train, test = frame.iloc[:cut], frame.iloc[cut:]
    estimator.fit(train, y[:cut])
    rng = np.random.default_rng(seed + 1)
    test = pd.concat([test, boundary_rows(train, estimator, rng)], ignore_index=True)
    write(out_dir, name, estimator, test, json_records(test), tolerance)


def category_case(out_dir, name, estimator, seed, task, tolerance=EXACT, unknown=True):
    frame, y = category_data(seed, task)
    cut = len(frame) * 3 // 4
    train, test = frame.iloc[:cut], frame.iloc[cut:]
    estimator.fit(train, y[:cut])
    rng = np.random.default_rng(seed + 7)
    rows = pd.concat(
        [test.astype(object), with_unknown_categories(train, rng, unknown=unknown),
         boundary_rows(train, estimator, rng).astype(object)],
        ignore_index=True,
    )
    write(out_dir, name, estimator, as_library_input(rows, train), json_records(rows), tolerance)


def pipeline_case(out_dir, name, seed):
    """A ColumnTransformer (scaled numbers, one-hot categories) before a random forest."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, y = category_data(seed, "binary")
    frame = frame.dropna().reset_index(drop=True)
    y = y[: len(frame)]
    for c in ("color", "town"):
        frame[c] = frame[c].astype(str)
    cut = len(frame) * 3 // 4
    model = Pipeline([
        ("prep", ColumnTransformer([
            ("num", StandardScaler(), ["x0", "x1", "x2"]),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["color", "town"]),
        ])),
        ("rf", RandomForestClassifier(n_estimators=20, max_depth=8, random_state=0)),
    ]).fit(frame.iloc[:cut], y[:cut])
    test = frame.iloc[cut:].reset_index(drop=True)
    write(out_dir, name, model, test, json_records(test), EXACT)


def as_is_case(out_dir, name, estimator, seed, task, library, kind, tolerance):
    """A model saved by its library, served with a manifest of four fields: the features and
    classes come from the model file."""
    frame, y = numeric_data(seed, task)
    cut = len(frame) * 3 // 4
    estimator.fit(frame.iloc[:cut], y[:cut])
    test = frame.iloc[cut:]

    def package(pkg):
        os.makedirs(pkg)
        if library == "xgboost":
            estimator.get_booster().save_model(os.path.join(pkg, "model.json"))
        else:
            estimator.booster_.save_model(os.path.join(pkg, "model.txt"))
        manifest = {"format": export_sklearn.PACKAGE_FORMAT, "name": name, "version": "1.0.0", "kind": kind}
        with open(os.path.join(pkg, export_sklearn.MANIFEST_FILE), "w") as f:
            json.dump(manifest, f, indent=2)
        return manifest

    write(out_dir, name, estimator, test, json_records(test), tolerance, package=package)


def cases():
    from sklearn.ensemble import (
        ExtraTreesClassifier, ExtraTreesRegressor, GradientBoostingClassifier, GradientBoostingRegressor,
        HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    yield "tree-classifier", lambda o, n: numeric_case(o, n, DecisionTreeClassifier(max_depth=10, random_state=0), 1, "multi")
    yield "tree-regressor", lambda o, n: numeric_case(o, n, DecisionTreeRegressor(max_depth=8, random_state=0), 2, "reg")
    yield "forest-classifier", lambda o, n: numeric_case(o, n, RandomForestClassifier(n_estimators=20, max_depth=10, random_state=0), 3, "multi")
    yield "forest-regressor", lambda o, n: numeric_case(o, n, RandomForestRegressor(n_estimators=20, max_depth=10, random_state=0), 4, "reg")
    yield "extra-trees-classifier", lambda o, n: numeric_case(o, n, ExtraTreesClassifier(n_estimators=20, max_depth=10, random_state=0), 5, "binary")
    yield "extra-trees-regressor", lambda o, n: numeric_case(o, n, ExtraTreesRegressor(n_estimators=20, max_depth=10, random_state=0), 6, "reg")
    yield "boosting-binary", lambda o, n: numeric_case(o, n, GradientBoostingClassifier(n_estimators=40, random_state=0), 7, "binary", nan=False)
    yield "boosting-multiclass", lambda o, n: numeric_case(o, n, GradientBoostingClassifier(n_estimators=25, max_depth=2, random_state=0), 8, "multi", nan=False)
    yield "boosting-regressor", lambda o, n: numeric_case(o, n, GradientBoostingRegressor(n_estimators=40, random_state=0), 9, "reg", nan=False)
    yield "hist-classifier-categories", lambda o, n: category_case(o, n, HistGradientBoostingClassifier(max_iter=30, random_state=0), 10, "binary")
    yield "hist-classifier-multiclass", lambda o, n: numeric_case(o, n, HistGradientBoostingClassifier(max_iter=25, random_state=0), 11, "multi")
    yield "hist-regressor-categories", lambda o, n: category_case(o, n, HistGradientBoostingRegressor(max_iter=30, random_state=0), 12, "reg")
    yield "forest-pipeline", lambda o, n: pipeline_case(o, n, 13)
    try:
        import xgboost as xgb
    except ImportError:
        yield "xgboost", None
    else:
        yield "xgboost-classifier-categories", lambda o, n: category_case(
            o, n, xgb.XGBClassifier(n_estimators=25, max_depth=4, enable_categorical=True, max_cat_to_onehot=1, n_jobs=1),
            20, "binary", FLOAT32, unknown=False)
        yield "xgboost-classifier-multiclass", lambda o, n: numeric_case(
            o, n, xgb.XGBClassifier(n_estimators=20, max_depth=4, n_jobs=1), 21, "multi", FLOAT32)
        yield "xgboost-regressor", lambda o, n: numeric_case(o, n, xgb.XGBRegressor(n_estimators=30, max_depth=5, n_jobs=1), 22, "reg", FLOAT32)
        yield "xgboost-saved", lambda o, n: as_is_case(
            o, n, xgb.XGBRegressor(n_estimators=20, max_depth=4, n_jobs=1), 23, "reg", "xgboost", "xgboost_regressor", FLOAT32)
    try:
        import lightgbm as lgb
    except ImportError:
        yield "lightgbm", None
    else:
        yield "lightgbm-classifier-categories", lambda o, n: category_case(
            o, n, lgb.LGBMClassifier(n_estimators=25, num_leaves=15, min_data_per_group=5, cat_smooth=1, verbose=-1, n_jobs=1),
            30, "binary")
        yield "lightgbm-classifier-multiclass", lambda o, n: numeric_case(
            o, n, lgb.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1), 31, "multi")
        yield "lightgbm-regressor", lambda o, n: numeric_case(o, n, lgb.LGBMRegressor(n_estimators=30, verbose=-1, n_jobs=1), 32, "reg")
        yield "lightgbm-saved", lambda o, n: as_is_case(
            o, n, lgb.LGBMClassifier(n_estimators=20, num_leaves=8, verbose=-1, n_jobs=1), 33, "binary", "lightgbm", "lightgbm_classifier", EXACT)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--only", action="append", default=[], help="build only this model (repeatable)")
    parser.add_argument("--require-all", action="store_true", help="fail when XGBoost or LightGBM is missing")
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    for name, build in cases():
        if build is None:
            if args.require_all:
                print(f"make_tree_models.py: {name} is not installed", file=sys.stderr)
                return 1
            print(f"{name} is not installed: its models are left out", file=sys.stderr)
            continue
        if args.only and name not in args.only:
            continue
        build(args.out_dir, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
