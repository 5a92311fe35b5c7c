#!/usr/bin/env python3
"""Train small models of every tree kind and option the engine reproduces and write, per
model, OUT_DIR/NAME/: the file the Rust loader reads (via export_trees.py) and expected.json
with the engine's input rows and the library's own predict / predict_proba for them. The tests
of the tree engine (crates/mldeploy-package/tests/trees.rs) read them.

    OMP_NUM_THREADS=1 python3 scripts/make_tree_fixtures.py OUT_DIR [--only SUBSTRING]

Test rows include NaN, unknown categories, and values at / next to the split thresholds
(float64 neighbours and float32 rounding boundaries), which is where an inexact engine
would differ.
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
from export_trees import encode_categories, export_tree_model, write_tree_model  # noqa: E402

warnings.filterwarnings("ignore")
OUT = None


# ---------------------------------------------------------------------------------------------
# data


def numeric_data(seed, n=600, d=8, task="binary", nan_frac=0.1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X[:, 1] = np.round(X[:, 1] * 3)  # a coarse feature: many ties at thresholds
    X[:, 2] = X[:, 2] * 1e-3
    score = X[:, 0] + 0.5 * X[:, 1] - X[:, 3] * X[:, 4] + rng.normal(scale=0.3, size=n)
    if task == "binary":
        y = (score > 0).astype(int)
    elif task == "multi":
        y = np.digitize(score, [-0.7, 0.7])
    elif task == "poisson":
        y = rng.poisson(np.exp(0.3 * np.clip(score, -3, 3)))
    elif task == "poisson_pos":
        y = rng.poisson(np.exp(0.3 * np.clip(score, -3, 3))) + 0.5
    else:
        y = score * 10 + 3
    mask = rng.random(size=X.shape) < nan_frac
    Xn = X.copy()
    Xn[mask] = np.nan
    return Xn, y


def frame_data(seed, n=800, task="binary"):
    """A DataFrame with string categoricals (with missing) and numeric columns (with NaN)."""
    rng = np.random.default_rng(seed)
    colors = ["red", "green", "blue", "black", "white", "pink", "grey"]
    towns = [f"t{i}" for i in range(20)]
    df = pd.DataFrame({
        "x0": rng.normal(size=n),
        "color": pd.Categorical(rng.choice(colors, size=n), categories=colors),
        "x1": rng.normal(size=n),
        "town": pd.Categorical(rng.choice(towns, size=n), categories=towns),
        "x2": rng.integers(0, 5, size=n).astype(float),
    })
    eff_c = {c: v for c, v in zip(colors, [1.0, -1.0, 0.5, 0.0, 2.0, -2.0, 0.3])}
    eff_t = {t: math.sin(i) for i, t in enumerate(towns)}
    score = df.x0 + df.color.map(eff_c).astype(float) + df.town.map(eff_t).astype(float) + 0.3 * df.x2 + rng.normal(scale=0.3, size=n)
    df.loc[rng.random(n) < 0.08, "x0"] = np.nan
    df.loc[rng.random(n) < 0.08, "color"] = None
    df.loc[rng.random(n) < 0.05, "town"] = None
    if task == "binary":
        y = (score > 0.5).astype(int)
    elif task == "multi":
        y = np.digitize(score, [-0.5, 1.0])
    else:
        y = score.to_numpy() * 5
    return df, np.asarray(y)


def unknown_rows(df, rng, n=20):
    """Test rows whose categories were never seen in training (and missing ones)."""
    t = df.sample(n, random_state=int(rng.integers(1 << 30))).copy()
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            vals = list(t[c].astype(object))
            for i in range(0, n, 3):
                vals[i] = "never-seen"
            for i in range(1, n, 5):
                vals[i] = None
            t[c] = pd.Categorical(vals)
    return t


# ---------------------------------------------------------------------------------------------
# boundary rows


def f32_neighbours(t):
    """f64 values around where x rounds to the float32 nearest t, plus t's f64 neighbours."""
    out = [t, np.nextafter(t, np.inf), np.nextafter(t, -np.inf)]
    if math.isfinite(t) and abs(t) < 3e38:
        f = np.float32(t)
        for g in (f, np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))):
            for h in (np.nextafter(g, np.float32(np.inf)), np.nextafter(g, np.float32(-np.inf))):
                mid = (float(g) + float(h)) / 2
                out += [mid, np.nextafter(mid, np.inf), np.nextafter(mid, -np.inf), float(g)]
    return [float(v) for v in out if math.isfinite(v)]


def boundary_rows(X, splits, rng, limit=150):
    """Rows of X with one numeric feature set to values at/around a split threshold."""
    if not splits:
        return np.empty((0, X.shape[1]))
    idx = rng.choice(len(splits), size=min(limit, len(splits)), replace=False)
    rows = []
    for i in idx:
        f, t = splits[i]
        base = X[rng.integers(len(X))].copy()
        for v in f32_neighbours(t):
            r = base.copy()
            r[f] = v
            rows.append(r)
    return np.array(rows)


def splits_of(kind, files):
    """(feature, threshold) of the numeric splits in an exported model."""
    out = []
    if kind == "sklearn_trees":
        m = json.loads(files["model.json"])
        for t in m["trees"]:
            cat = t.get("cat_bitset") or [-1] * len(t["left"])
            for f, thr, l, c in zip(t["feature"], t["threshold"], t["left"], cat):
                if l >= 0 and c < 0 and isinstance(thr, float):
                    out.append((f, thr))
    elif kind == "xgboost":
        m = json.loads(files["model.json"])
        for t in m["learner"]["gradient_booster"]["model"]["trees"]:
            st = t.get("split_type") or [0] * len(t["left_children"])
            for f, thr, l, s in zip(t["split_indices"], t["split_conditions"], t["left_children"], st):
                if l >= 0 and s == 0:
                    out.append((f, float(thr)))
    else:
        text = files["model.txt"].decode()
        for block in text.split("\nTree=")[1:]:
            kv = dict(l.split("=", 1) for l in block.splitlines() if "=" in l)
            if "split_feature" not in kv:
                continue
            for f, thr, dt in zip(kv["split_feature"].split(), kv["threshold"].split(), kv["decision_type"].split()):
                if int(dt) & 1 == 0:
                    out.append((int(f), float(thr)))
    return out


# ---------------------------------------------------------------------------------------------
# writing


def jnum(v):
    v = float(v)
    return v if math.isfinite(v) else None


def write_fixture(name, est, X_lib, X_engine, tol, note=""):
    """Export `est`, run the library on X_lib and store the engine input X_engine."""
    d = os.path.join(OUT, name)
    kind, extra = write_tree_model(est, d)
    expected = {
        "kind": kind,
        "file": extra["model_file"],
        "tolerance": tol,
        "note": note,
        "n_features": int(X_engine.shape[1]),
        "x": [[jnum(v) for v in row] for row in X_engine],
        "categorical": [c["position"] for c in extra["categorical"]],
    }
    if hasattr(est, "predict_proba"):
        proba = np.asarray(est.predict_proba(X_lib), dtype=np.float64)
        pred = np.asarray(est.predict(X_lib))
        classes = list(np.asarray(est.classes_))
        labels = [classes.index(p) for p in pred.tolist()]
        expected["labels"] = labels
        expected["probabilities"] = [[float(v) for v in row] for row in proba]
    else:
        expected["values"] = [float(v) for v in np.asarray(est.predict(X_lib), dtype=np.float64)]
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump(expected, f, allow_nan=False)
    with open(os.path.join(d, "manifest_extra.json"), "w") as f:
        json.dump(extra, f, indent=1, allow_nan=False)
    print(f"{name}: {kind}, {len(X_engine)} rows")


def numeric_case(name, est, seed, task, tol=1e-9, nan=True, n=600):
    X, y = numeric_data(seed, n=n, task=task, nan_frac=0.1 if nan else 0.0)
    cut = n * 3 // 4
    Xtr, Xte, ytr = X[:cut], X[cut:], y[:cut]
    est.fit(Xtr, ytr)
    rng = np.random.default_rng(seed + 1)
    kind, files, _ = export_tree_model(est)
    rows = [Xte, boundary_rows(Xtr, splits_of(kind, files), rng)]
    special = np.array([
        np.full(X.shape[1], np.nan) if nan else np.zeros(X.shape[1]),
        np.zeros(X.shape[1]),
        np.full(X.shape[1], 1e30),
        np.full(X.shape[1], -1e30),
        np.full(X.shape[1], 1e-40),
        np.full(X.shape[1], -1e-40),
    ])
    rows.append(special)
    Xt = np.vstack(rows)
    write_fixture(name, est, Xt, Xt, tol)


def frame_case(name, est, seed, task, tol=1e-9, unknown=True, fit_kwargs=None):
    df, y = frame_data(seed, task=task)
    n = len(df)
    tr, te = df.iloc[: n * 3 // 4], df.iloc[n * 3 // 4:]
    est.fit(tr, y[: n * 3 // 4], **(fit_kwargs or {}))
    kind, files, extra = export_tree_model(est)
    rng = np.random.default_rng(seed + 7)
    parts = [te]
    if unknown:
        parts.append(unknown_rows(tr, rng))
    else:
        u = unknown_rows(tr, rng)
        for c in u.columns:
            if isinstance(u[c].dtype, pd.CategoricalDtype):
                u[c] = u[c].astype(object).where(u[c].astype(object) != "never-seen", None)
        parts.append(u)
    test = pd.concat([p.astype(object) for p in parts], ignore_index=True)
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            test[c] = pd.Categorical(test[c], categories=list(df[c].cat.categories) + (["never-seen"] if unknown else []))
        else:
            test[c] = test[c].astype(float)
    # Boundary rows on the numeric columns (library and engine see the same numbers there).
    num_cols = [i for i, c in enumerate(df.columns) if not isinstance(df[c].dtype, pd.CategoricalDtype)]
    splits = [(f, t) for f, t in splits_of(kind, files) if f in num_cols]
    idx = rng.choice(len(splits), size=min(60, len(splits)), replace=False) if splits else []
    extra_rows = []
    for i in idx:
        f, t = splits[i]
        for v in f32_neighbours(t):
            r = test.iloc[int(rng.integers(len(te)))].copy()
            r.iloc[f] = v
            extra_rows.append(r)
    if extra_rows:
        b = pd.DataFrame(extra_rows)
        test = pd.concat([test.astype(object), b.astype(object)], ignore_index=True)
        for c in df.columns:
            if isinstance(df[c].dtype, pd.CategoricalDtype):
                test[c] = pd.Categorical(test[c], categories=list(df[c].cat.categories) + (["never-seen"] if unknown else []))
            else:
                test[c] = test[c].astype(float)
    X_engine = encode_categories(extra, test)
    write_fixture(name, est, test, X_engine, tol)


def dataset_case(name, est, loader, tol=1e-9):
    from sklearn.model_selection import train_test_split

    X, y = loader(return_X_y=True)
    Xtr, Xte, ytr, _ = train_test_split(X, y, test_size=0.3, random_state=0)
    est.fit(Xtr, ytr)
    kind, files, _ = export_tree_model(est)
    rng = np.random.default_rng(3)
    Xt = np.vstack([Xte, boundary_rows(Xtr, splits_of(kind, files), rng, limit=80)])
    write_fixture(name, est, Xt, Xt, tol)


# ---------------------------------------------------------------------------------------------


def cases():
    from sklearn import datasets
    from sklearn.ensemble import (
        ExtraTreesClassifier, ExtraTreesRegressor, GradientBoostingClassifier, GradientBoostingRegressor,
        HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeRegressor
    import lightgbm as lgb
    import xgboost as xgb

    X1 = 1e-6  # XGBoost computes in float32
    yield "sk_tree_clf_nan", lambda n: numeric_case(n, DecisionTreeClassifier(random_state=0), 1, "multi")
    yield "sk_tree_reg_nan", lambda n: numeric_case(n, DecisionTreeRegressor(max_depth=8, random_state=0), 2, "reg")
    yield "sk_extratree_reg", lambda n: numeric_case(n, ExtraTreeRegressor(random_state=0), 3, "reg", nan=False)
    yield "sk_rf_clf_nan", lambda n: numeric_case(n, RandomForestClassifier(n_estimators=25, random_state=0), 4, "multi")
    yield "sk_rf_clf_binary_cancer", lambda n: dataset_case(n, RandomForestClassifier(n_estimators=30, random_state=0), datasets.load_breast_cancer)
    yield "sk_rf_reg_nan", lambda n: numeric_case(n, RandomForestRegressor(n_estimators=20, max_depth=10, random_state=0), 5, "reg")
    yield "sk_et_clf_nan", lambda n: numeric_case(n, ExtraTreesClassifier(n_estimators=25, random_state=0), 6, "binary")
    yield "sk_et_reg_nan", lambda n: numeric_case(n, ExtraTreesRegressor(n_estimators=20, random_state=0), 7, "reg")
    yield "sk_rf_clf_weighted_iris", lambda n: dataset_case(
        n, RandomForestClassifier(n_estimators=20, class_weight="balanced", max_depth=4, random_state=0), datasets.load_iris)
    yield "sk_gb_clf_binary_cancer", lambda n: dataset_case(n, GradientBoostingClassifier(n_estimators=60, random_state=0), datasets.load_breast_cancer)
    yield "sk_gb_clf_exponential", lambda n: numeric_case(n, GradientBoostingClassifier(loss="exponential", n_estimators=40, random_state=0), 8, "binary", nan=False)
    yield "sk_gb_clf_multi_iris", lambda n: dataset_case(n, GradientBoostingClassifier(n_estimators=30, max_depth=2, random_state=0), datasets.load_iris)
    yield "sk_gb_clf_multi_zero_init", lambda n: numeric_case(
        n, GradientBoostingClassifier(init="zero", n_estimators=30, subsample=0.8, random_state=0), 9, "multi", nan=False)
    yield "sk_gb_reg_diabetes", lambda n: dataset_case(n, GradientBoostingRegressor(n_estimators=80, random_state=0), datasets.load_diabetes)
    yield "sk_gb_reg_huber", lambda n: numeric_case(n, GradientBoostingRegressor(loss="huber", n_estimators=40, random_state=0), 10, "reg", nan=False)
    yield "sk_gb_reg_quantile", lambda n: numeric_case(n, GradientBoostingRegressor(loss="quantile", alpha=0.8, n_estimators=40, random_state=0), 11, "reg", nan=False)
    yield "sk_gb_reg_absolute", lambda n: numeric_case(n, GradientBoostingRegressor(loss="absolute_error", n_estimators=40, random_state=0), 12, "reg", nan=False)
    yield "sk_hgb_clf_binary_nan", lambda n: numeric_case(n, HistGradientBoostingClassifier(max_iter=40, random_state=0), 13, "binary")
    yield "sk_hgb_clf_multi_nan", lambda n: numeric_case(n, HistGradientBoostingClassifier(max_iter=30, random_state=0), 14, "multi")
    yield "sk_hgb_reg_nan", lambda n: numeric_case(n, HistGradientBoostingRegressor(max_iter=40, random_state=0), 15, "reg")
    yield "sk_hgb_reg_poisson", lambda n: numeric_case(n, HistGradientBoostingRegressor(loss="poisson", max_iter=40, random_state=0), 16, "poisson")
    yield "sk_hgb_clf_binary_frame_cat", lambda n: frame_case(n, HistGradientBoostingClassifier(max_iter=40, random_state=0), 17, "binary")
    yield "sk_hgb_clf_multi_frame_cat", lambda n: frame_case(
        n, HistGradientBoostingClassifier(max_iter=25, interaction_cst="pairwise", random_state=0), 18, "multi")
    yield "sk_hgb_reg_frame_cat", lambda n: frame_case(n, HistGradientBoostingRegressor(max_iter=40, random_state=0), 19, "reg")
    yield "sk_hgb_reg_numeric_cat", lambda n: hgb_numeric_categorical(n)
    yield "xgb_clf_binary_nan", lambda n: numeric_case(n, xgb.XGBClassifier(n_estimators=40, max_depth=4, n_jobs=1), 20, "binary", tol=X1)
    yield "xgb_clf_multi_nan", lambda n: numeric_case(n, xgb.XGBClassifier(n_estimators=25, max_depth=4, n_jobs=1), 21, "multi", tol=X1)
    yield "xgb_clf_softmax", lambda n: numeric_case(n, xgb.XGBClassifier(objective="multi:softmax", n_estimators=20, n_jobs=1), 22, "multi", tol=X1)
    yield "xgb_reg_nan", lambda n: numeric_case(n, xgb.XGBRegressor(n_estimators=40, max_depth=5, n_jobs=1), 23, "reg", tol=X1)
    yield "xgb_reg_poisson", lambda n: numeric_case(n, xgb.XGBRegressor(objective="count:poisson", n_estimators=30, n_jobs=1), 24, "poisson", tol=X1)
    yield "xgb_reg_logistic", lambda n: xgb_reg_logistic(n)
    yield "xgb_rf_clf", lambda n: numeric_case(n, xgb.XGBRFClassifier(n_estimators=10, max_depth=4, n_jobs=1), 25, "binary", tol=X1)
    yield "xgb_clf_early_stop", lambda n: xgb_early_stop(n)
    yield "xgb_clf_frame_cat", lambda n: frame_case(
        n, xgb.XGBClassifier(n_estimators=30, max_depth=4, enable_categorical=True, max_cat_to_onehot=1, n_jobs=1), 26, "binary", tol=X1, unknown=False)
    yield "xgb_reg_frame_cat_onehot", lambda n: frame_case(
        n, xgb.XGBRegressor(n_estimators=30, max_depth=4, enable_categorical=True, max_cat_to_onehot=64, n_jobs=1), 27, "reg", tol=X1, unknown=False)
    yield "xgb_clf_multi_frame_cat", lambda n: frame_case(
        n, xgb.XGBClassifier(n_estimators=20, max_depth=3, enable_categorical=True, n_jobs=1), 28, "multi", tol=X1, unknown=False)
    yield "lgb_clf_binary_nan", lambda n: numeric_case(n, lgb.LGBMClassifier(n_estimators=40, num_leaves=15, verbose=-1, n_jobs=1), 30, "binary")
    yield "lgb_clf_multi_nan", lambda n: numeric_case(n, lgb.LGBMClassifier(n_estimators=25, num_leaves=8, verbose=-1, n_jobs=1), 31, "multi")
    yield "lgb_clf_ova", lambda n: numeric_case(n, lgb.LGBMClassifier(objective="multiclassova", n_estimators=20, verbose=-1, n_jobs=1), 32, "multi")
    yield "lgb_reg_nan", lambda n: numeric_case(n, lgb.LGBMRegressor(n_estimators=40, verbose=-1, n_jobs=1), 33, "reg")
    yield "lgb_reg_zero_missing", lambda n: numeric_case(
        n, lgb.LGBMRegressor(n_estimators=30, zero_as_missing=True, verbose=-1, n_jobs=1), 34, "reg")
    yield "lgb_reg_no_missing", lambda n: numeric_case(n, lgb.LGBMRegressor(n_estimators=30, use_missing=False, verbose=-1, n_jobs=1), 35, "reg")
    yield "lgb_reg_poisson", lambda n: numeric_case(n, lgb.LGBMRegressor(objective="poisson", n_estimators=30, verbose=-1, n_jobs=1), 36, "poisson")
    yield "lgb_rf_clf", lambda n: numeric_case(
        n, lgb.LGBMClassifier(boosting_type="rf", n_estimators=15, subsample=0.7, subsample_freq=1, colsample_bytree=0.8, verbose=-1, n_jobs=1), 37, "binary")
    yield "lgb_clf_sigmoid2", lambda n: numeric_case(n, lgb.LGBMClassifier(n_estimators=20, sigmoid=2.0, verbose=-1, n_jobs=1), 38, "binary")
    yield "lgb_clf_frame_cat", lambda n: frame_case(
        n, lgb.LGBMClassifier(n_estimators=30, num_leaves=15, min_data_per_group=5, cat_smooth=1, verbose=-1, n_jobs=1), 39, "binary")
    yield "lgb_reg_frame_cat", lambda n: frame_case(
        n, lgb.LGBMRegressor(n_estimators=30, num_leaves=15, min_data_per_group=5, cat_smooth=1, verbose=-1, n_jobs=1), 40, "reg")
    yield "lgb_clf_multi_frame_cat", lambda n: frame_case(
        n, lgb.LGBMClassifier(n_estimators=15, num_leaves=8, min_data_per_group=5, verbose=-1, n_jobs=1), 41, "multi")
    yield "lgb_reg_int_categorical", lambda n: lgb_int_categorical(n)
    yield "lgb_reg_sqrt", lambda n: numeric_case(n, lgb.LGBMRegressor(reg_sqrt=True, n_estimators=20, verbose=-1, n_jobs=1), 43, "reg")
    yield "lgb_reg_xentropy", lambda n: lgb_xentropy(n)
    yield "lgb_reg_tweedie", lambda n: numeric_case(n, lgb.LGBMRegressor(objective="tweedie", n_estimators=20, verbose=-1, n_jobs=1), 44, "poisson")
    yield "xgb_reg_absolute", lambda n: numeric_case(n, xgb.XGBRegressor(objective="reg:absoluteerror", n_estimators=20, n_jobs=1), 45, "reg", tol=X1)
    yield "xgb_reg_gamma", lambda n: numeric_case(n, xgb.XGBRegressor(objective="reg:gamma", n_estimators=20, n_jobs=1), 46, "poisson_pos", tol=X1)
    yield "sk_gb_reg_dummy_median_init", lambda n: gb_dummy_init(n)
    yield "lgb_reg_dart", lambda n: numeric_case(n, lgb.LGBMRegressor(boosting_type="dart", n_estimators=20, verbose=-1, n_jobs=1), 42, "reg")


def hgb_numeric_categorical(name):
    """HGB with categorical_features given by index on a numeric array: sklearn encodes the
    raw values with an OrdinalEncoder, so the engine input is the value's index."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(50)
    n = 800
    X = np.column_stack([rng.normal(size=n), rng.choice([3.0, 7.0, 11.0, 2.5, 100.0], size=n), rng.normal(size=n)])
    X[rng.random(n) < 0.1, 1] = np.nan
    y = X[:, 0] + np.nan_to_num(np.sin(X[:, 1])) + rng.normal(scale=0.1, size=n)
    est = HistGradientBoostingRegressor(max_iter=30, categorical_features=[1], random_state=0).fit(X[:600], y[:600])
    Xt = X[600:].copy()
    Xt[::7, 1] = 42.0  # unknown category
    _, _, extra = export_tree_model(est)
    write_fixture(name, est, Xt, encode_categories(extra, Xt), 1e-9)


def lgb_int_categorical(name):
    """LightGBM categorical_feature on integer codes: the raw value is the category; NaN,
    negative, fractional and huge values follow LightGBM's (int) cast rules."""
    import lightgbm as lgb

    rng = np.random.default_rng(51)
    n = 1000
    X = np.column_stack([rng.normal(size=n), rng.integers(0, 40, size=n).astype(float), rng.normal(size=n)])
    y = X[:, 0] + np.sin(X[:, 1]) + rng.normal(scale=0.1, size=n)
    est = lgb.LGBMRegressor(n_estimators=30, min_data_per_group=5, cat_smooth=1, verbose=-1, n_jobs=1)
    est.fit(X[:800], y[:800], categorical_feature=[1])
    Xt = X[800:].copy()
    odd = [np.nan, -1.0, -0.5, 2.7, 39.9, 40.0, 1000.0, 1e10, -1e10, 0.0, -0.0, 1e-40]
    for i, v in enumerate(odd):
        Xt[i, 1] = v
    write_fixture(name, est, Xt, Xt, 1e-9)


def lgb_xentropy(name):
    import lightgbm as lgb

    X, y = numeric_data(62, task="binary")
    y = np.clip(y * 0.7 + 0.15, 0, 1)
    est = lgb.LGBMRegressor(objective="cross_entropy", n_estimators=20, verbose=-1, n_jobs=1).fit(X[:450], y[:450])
    write_fixture(name, est, X[450:], X[450:], 1e-9)


def gb_dummy_init(name):
    from sklearn.dummy import DummyRegressor
    from sklearn.ensemble import GradientBoostingRegressor

    X, y = numeric_data(63, task="reg", nan_frac=0.0)
    est = GradientBoostingRegressor(init=DummyRegressor(strategy="median"), n_estimators=20, random_state=0).fit(X[:450], y[:450])
    write_fixture(name, est, X[450:], X[450:], 1e-9)


def xgb_reg_logistic(name):
    import xgboost as xgb

    X, y = numeric_data(60, task="binary")
    y = np.clip(y * 0.8 + 0.1, 0, 1)
    est = xgb.XGBRegressor(objective="reg:logistic", n_estimators=30, n_jobs=1).fit(X[:450], y[:450])
    write_fixture(name, est, X[450:], X[450:], 1e-6)


def xgb_early_stop(name):
    import xgboost as xgb

    X, y = numeric_data(61, n=900, task="binary")
    est = xgb.XGBClassifier(n_estimators=300, learning_rate=0.3, early_stopping_rounds=5, n_jobs=1)
    est.fit(X[:500], y[:500], eval_set=[(X[500:700], y[500:700])], verbose=False)
    assert est.best_iteration < 299
    write_fixture(name, est, X[700:], X[700:], 1e-6, note=f"best_iteration={est.best_iteration}")


def main():
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--only")
    args = ap.parse_args()
    OUT = args.out_dir
    if args.only is None and os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT, exist_ok=True)
    for name, fn in cases():
        if args.only and args.only not in name:
            continue
        fn(name)


if __name__ == "__main__":
    main()
