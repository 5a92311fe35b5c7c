#!/usr/bin/env python3
"""Export the final (tree-ensemble) step of a pipeline for mldeploy's tree engine.

    kind, files, extra_manifest = export_tree_model(estimator)

* ``kind``: ``"sklearn_trees"``, ``"xgboost"`` or ``"lightgbm"``: which loader of the Rust
  engine reads ``files["model.json"]`` / ``files["model.txt"]``
  (``TreeEnsemble::from_sklearn_json`` / ``from_xgboost_json`` / ``from_lightgbm_text``).
* ``files``: file name -> bytes. scikit-learn estimators are written in the ``mldeploy-trees/1``
  JSON format (documented in ``src/lib.rs``); XGBoost and LightGBM in their own native format.
* ``extra_manifest``: what the manifest needs on top of the existing fields:
  ``model_file``, ``output`` (``{"classes": [...]}`` for classifiers, in probability-column
  order), ``allow_nan`` (whether the library accepts missing values for this model),
  ``categorical`` (one entry per categorical input: its position, name, the category list in
  code order or ``None`` when the raw number is the code, and the unknown-category rule) and
  ``preprocessing``: steps that turn a request row (features in ``feature_names_in_`` order)
  into the engine's input columns: ``passthrough`` runs and ``ordinal`` runs
  (``{"type": "ordinal", "columns": [...], "categories": [[...], ...], "unknown": "missing"
  | "error"}``: category -> its index in the list as a float; missing -> NaN; unknown -> NaN
  for "missing", refused (422) for "error").

Anything that cannot be reproduced exactly is refused with ``ExportError`` saying what and why.
"""

import json
import math
import os

import numpy as np

FORMAT = "mldeploy-trees/1"

XGBOOST_OBJECTIVES = {
    "reg:squarederror", "reg:linear", "reg:squaredlogerror", "reg:pseudohubererror",
    "reg:absoluteerror", "reg:quantileerror", "reg:logistic", "count:poisson", "reg:gamma",
    "reg:tweedie", "binary:logistic", "multi:softprob", "multi:softmax",
}
LIGHTGBM_OBJECTIVES = {
    "regression", "regression_l1", "huber", "fair", "quantile", "mape", "poisson", "gamma",
    "tweedie", "cross_entropy", "cross_entropy_lambda", "binary", "multiclass", "multiclassova",
}


class ExportError(Exception):
    """The estimator cannot be exported faithfully; the message says why."""


# ---------------------------------------------------------------------------------------------
# helpers


def _scalar(v):
    """A category label or class as a JSON-ready Python value."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        raise ExportError(f"value {v!r} cannot be a category or class label")
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ExportError(f"value {v!r} of type {type(v).__name__} is not a number, string or boolean")


def _floats(a):
    """Floats for JSON: shortest round-trip text, non-finite values as strings."""
    out = np.asarray(a, dtype=np.float64).ravel().tolist()
    if not all(math.isfinite(x) for x in out):
        out = [x if math.isfinite(x) else ("nan" if x != x else ("inf" if x > 0 else "-inf")) for x in out]
    return out


def _ints(a):
    return np.asarray(a).astype(np.int64).ravel().tolist()


def _feature_names(est):
    names = getattr(est, "feature_names_in_", None)
    return None if names is None else [str(n) for n in names]


def _preprocessing(n_features, names, categorical):
    """Steps mapping request columns to engine inputs, in input order."""
    col = (lambda i: names[i]) if names is not None else (lambda i: i)
    by_pos = {c["position"]: c for c in categorical}
    steps = []
    for i in range(n_features):
        c = by_pos.get(i)
        if c is None or c["categories"] is None:
            if steps and steps[-1]["type"] == "passthrough":
                steps[-1]["columns"].append(col(i))
            else:
                steps.append({"type": "passthrough", "columns": [col(i)]})
        else:
            if steps and steps[-1]["type"] == "ordinal" and steps[-1]["unknown"] == c["unknown"]:
                steps[-1]["columns"].append(col(i))
                steps[-1]["categories"].append(c["categories"])
            else:
                steps.append({"type": "ordinal", "columns": [col(i)], "categories": [c["categories"]], "unknown": c["unknown"]})
    return steps


def _extra(model_file, est, n_features, names, classes, allow_nan, categorical):
    extra = {"model_file": model_file, "allow_nan": allow_nan, "categorical": categorical}
    extra["output"] = {"classes": [_scalar(c) for c in classes]} if classes is not None else {}
    extra["preprocessing"] = _preprocessing(n_features, names, categorical)
    if names is not None:
        extra["feature_names"] = names
    return extra


def _dumps(obj):
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode("utf-8")


def _check_sklearn_version():
    import sklearn

    major, minor = (int(x) for x in sklearn.__version__.split(".")[:2])
    if (major, minor) < (1, 4):
        # Before 1.4 classification leaves held weighted counts normalised at predict time,
        # and trees had no missing-value routing.
        raise ExportError(f"scikit-learn {sklearn.__version__} is too old (1.4 or newer is needed)")
    return sklearn.__version__


# ---------------------------------------------------------------------------------------------
# scikit-learn


def _sk_tree(tree, output=0, scale=None, classes=None):
    """One sklearn Tree (tree_) as JSON arrays. Leaves: class distribution or value."""
    t = tree
    leaves = t.children_left == -1
    if t.n_outputs != 1:
        raise ExportError("multi-output trees are not supported")
    if classes is not None:
        vals = t.value[leaves, 0, :classes]
    else:
        vals = t.value[leaves, 0, 0]
    d = {
        "output": int(output),
        "left": _ints(t.children_left),
        "right": _ints(t.children_right),
        "feature": _ints(t.feature),
        "threshold": _floats(t.threshold),
        "missing_left": _ints(t.missing_go_to_left),
        "leaf_value": _floats(vals),
    }
    if scale is not None:
        d["scale"] = float(scale)
    return d


def _sk_header(est, n_features, task, input_dtype, n_outputs, init, link, label, allow_missing, leaf_width=1):
    version = _check_sklearn_version()
    h = {
        "format": FORMAT,
        "source": {"library": "scikit-learn", "library_version": version, "estimator": type(est).__name__},
        "n_features": int(n_features),
        "task": task,
        "input": input_dtype,
        "n_outputs": int(n_outputs),
        "leaf_width": int(leaf_width),
        "init": _floats(init),
        "average": False,
        "link": link,
        "allow_missing": allow_missing,
    }
    names = _feature_names(est)
    if names is not None:
        h["feature_names"] = names
    if label is not None:
        h["label"] = label
    return h


def _export_forest(est):
    from sklearn.base import is_classifier

    trees = [est] if hasattr(est, "tree_") else list(est.estimators_)
    if getattr(est, "n_outputs_", 1) != 1:
        raise ExportError(f"{type(est).__name__} with {est.n_outputs_} outputs is not supported (one output)")
    n_features = est.n_features_in_
    if is_classifier(est):
        k = len(est.classes_)
        task = {"type": "classification", "n_classes": k, "classes": [_scalar(c) for c in est.classes_]}
        h = _sk_header(est, n_features, task, "float32", k, np.zeros(k), "probability", "argmax_probability", True, leaf_width=k)
        h["trees"] = [_sk_tree(t.tree_, classes=k) for t in trees]
        classes = est.classes_
    else:
        h = _sk_header(est, n_features, {"type": "regression"}, "float32", 1, [0.0], "identity", None, True)
        h["trees"] = [_sk_tree(t.tree_) for t in trees]
        classes = None
    # sklearn sums the trees' outputs in estimator order, then divides by their number.
    h["average"] = True
    return h, classes, True


def _export_gb(est):
    from sklearn.dummy import DummyClassifier, DummyRegressor
    from sklearn.ensemble import GradientBoostingClassifier

    init = est.init_
    if isinstance(init, str):
        if init != "zero":
            raise ExportError(f"GradientBoosting init={init!r} is not supported")
    elif isinstance(init, DummyClassifier):
        if init.strategy == "stratified":
            raise ExportError("GradientBoosting init DummyClassifier(strategy='stratified') is random")
    elif not isinstance(init, DummyRegressor):
        raise ExportError(
            f"GradientBoosting with init estimator {type(init).__name__} is not supported: only the default "
            "(prior / mean / quantile), 'zero' or a Dummy estimator give a constant initial score"
        )
    n_features = est.n_features_in_
    # The initial raw score does not depend on X for these init estimators: take sklearn's own.
    x0 = np.zeros((1, n_features), dtype=np.float32)
    init_raw = np.asarray(est._raw_predict_init(x0), dtype=np.float64)[0]
    stages = est.estimators_
    lr = float(est.learning_rate)
    trees = [_sk_tree(stages[i, k].tree_, output=k, scale=lr) for i in range(stages.shape[0]) for k in range(stages.shape[1])]
    if isinstance(est, GradientBoostingClassifier):
        k = len(est.classes_)
        task = {"type": "classification", "n_classes": k, "classes": [_scalar(c) for c in est.classes_]}
        if k == 2:
            link = {"log_loss": "logistic", "exponential": "logistic2"}.get(est.loss)
            if link is None:
                raise ExportError(f"GradientBoostingClassifier loss={est.loss!r} is not supported")
            h = _sk_header(est, n_features, task, "float32", 1, init_raw, link, "raw_nonnegative", False)
        else:
            if est.loss != "log_loss":
                raise ExportError(f"GradientBoostingClassifier loss={est.loss!r} is not supported")
            h = _sk_header(est, n_features, task, "float32", k, init_raw, "softmax", "argmax_raw", False)
        classes = est.classes_
    else:
        if est.loss not in ("squared_error", "absolute_error", "huber", "quantile"):
            raise ExportError(f"GradientBoostingRegressor loss={est.loss!r} is not supported")
        h = _sk_header(est, n_features, {"type": "regression"}, "float32", 1, init_raw, "identity", None, False)
        classes = None
    h["trees"] = trees
    # sklearn refuses NaN for GradientBoosting*, so the server must too.
    return h, classes, False


def _export_hgb(est):
    from sklearn.ensemble import HistGradientBoostingClassifier

    n_features = est.n_features_in_
    # With categorical features sklearn reorders columns (categorical first) before the
    # trees; map the trees' feature indices back to the estimator's input order.
    if est._preprocessor is not None:
        mask = np.asarray(est.is_categorical_, dtype=bool)
        order = np.concatenate([np.flatnonzero(mask), np.flatnonzero(~mask)])
        encoder = est._preprocessor.named_transformers_["encoder"]
        cat_orig = np.flatnonzero(mask)
        cat_lists = []
        for cats in encoder.categories_:
            cats = list(cats)
            if cats and isinstance(cats[-1], float) and math.isnan(cats[-1]):
                cats = cats[:-1]
            cat_lists.append([_scalar(c) for c in cats])
    else:
        order = np.arange(n_features)
        cat_orig = np.array([], dtype=int)
        cat_lists = []
    known, f_idx_map = est._bin_mapper.make_known_categories_bitsets()
    is_cat_remapped = np.asarray(est._bin_mapper.is_categorical_ if est._bin_mapper.is_categorical_ is not None else np.zeros(n_features, bool))
    categorical_json = []
    for j, orig in enumerate(cat_orig):
        remapped = int(np.flatnonzero(order == orig)[0])
        if not is_cat_remapped[remapped]:
            raise ExportError("internal: categorical feature mapping mismatch")
        categorical_json.append({
            "feature": int(orig),
            "known": [int(w) for w in known[f_idx_map[remapped]]],
            "categories": cat_lists[j],
        })

    trees = []
    for it, predictors in enumerate(est._predictors):
        for k, pred in enumerate(predictors):
            nodes = pred.nodes
            leaf = nodes["is_leaf"].astype(bool)
            left = np.where(leaf, -1, nodes["left"].astype(np.int64))
            right = np.where(leaf, -1, nodes["right"].astype(np.int64))
            feat = np.where(leaf, -2, order[nodes["feature_idx"]])
            cat = np.where(leaf | ~nodes["is_categorical"].astype(bool), -1, nodes["bitset_idx"].astype(np.int64))
            thr = np.where(leaf, 0.0, nodes["num_threshold"])
            trees.append({
                "output": k,
                "left": _ints(left),
                "right": _ints(right),
                "feature": _ints(feat),
                "threshold": _floats(thr),
                "missing_left": _ints(nodes["missing_go_to_left"]),
                "cat_bitset": _ints(cat),
                "bitsets": [[int(w) for w in row] for row in pred.raw_left_cat_bitsets],
                "leaf_value": _floats(nodes["value"][leaf]),
            })
    baseline = np.asarray(est._baseline_prediction, dtype=np.float64).ravel()
    link_name = type(est._loss.link).__name__
    if isinstance(est, HistGradientBoostingClassifier):
        k = len(est.classes_)
        task = {"type": "classification", "n_classes": k, "classes": [_scalar(c) for c in est.classes_]}
        if k == 2:
            h = _sk_header(est, n_features, task, "float64", 1, baseline, "logistic", "raw_positive", True)
        else:
            h = _sk_header(est, n_features, task, "float64", k, baseline, "softmax", "argmax_raw", True)
        classes = est.classes_
    else:
        link = {"IdentityLink": "identity", "LogLink": "exp"}.get(link_name)
        if link is None:
            raise ExportError(f"HistGradientBoostingRegressor loss={est.loss!r} (link {link_name}) is not supported")
        h = _sk_header(est, n_features, {"type": "regression"}, "float64", 1, baseline, link, None, True)
        classes = None
    h["categorical"] = categorical_json
    h["trees"] = trees
    names = _feature_names(est)
    categorical = [
        {"position": c["feature"], "name": names[c["feature"]] if names else None, "categories": c["categories"], "unknown": "missing"}
        for c in categorical_json
    ]
    return h, classes, True, categorical


def _export_sklearn(est):
    from sklearn.ensemble import (
        ExtraTreesClassifier, ExtraTreesRegressor, GradientBoostingClassifier, GradientBoostingRegressor,
        HistGradientBoostingClassifier, HistGradientBoostingRegressor, RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor

    forest_types = (
        DecisionTreeClassifier, DecisionTreeRegressor, ExtraTreeClassifier, ExtraTreeRegressor,
        RandomForestClassifier, RandomForestRegressor, ExtraTreesClassifier, ExtraTreesRegressor,
    )
    categorical = []
    if type(est) in forest_types:
        h, classes, allow_nan = _export_forest(est)
    elif type(est) in (GradientBoostingClassifier, GradientBoostingRegressor):
        h, classes, allow_nan = _export_gb(est)
    elif type(est) in (HistGradientBoostingClassifier, HistGradientBoostingRegressor):
        h, classes, allow_nan, categorical = _export_hgb(est)
    else:
        return None
    names = _feature_names(est)
    files = {"model.json": _dumps(h)}
    return "sklearn_trees", files, _extra("model.json", est, h["n_features"], names, classes, allow_nan, categorical)


# ---------------------------------------------------------------------------------------------
# XGBoost


def _export_xgboost(est):
    import xgboost as xgb

    if not isinstance(est, (xgb.XGBClassifier, xgb.XGBRegressor)):
        raise ExportError(f"{type(est).__name__} is not supported (XGBClassifier, XGBRegressor, XGBRF*)")
    missing = est.missing
    if not (missing is None or (isinstance(missing, float) and math.isnan(missing))):
        raise ExportError(f"XGBoost missing={missing!r} is not supported (only NaN marks missing values)")
    booster = est.get_booster()
    config = json.loads(booster.save_config())
    name = config["learner"]["gradient_booster"]["name"]
    if name != "gbtree":
        raise ExportError(
            f"XGBoost booster {name!r} is not supported (gbtree only: dart weights its trees at predict time, "
            "gblinear has no trees)"
        )
    objective = config["learner"]["objective"]["name"]
    if objective not in XGBOOST_OBJECTIVES:
        raise ExportError(f"XGBoost objective {objective!r} is not supported")
    if config["learner"]["gradient_booster"]["gbtree_train_param"].get("multi_strategy", "one_output_per_tree") != "one_output_per_tree":
        raise ExportError("XGBoost multi_strategy='multi_output_tree' is not supported")
    # The sklearn wrapper predicts with the best iteration when early stopping was used.
    best = getattr(est, "best_iteration", None) if _has_best(est) else None
    if best is not None:
        booster = booster[: best + 1]
    raw = booster.save_raw("json")
    model = json.loads(raw)
    learner = model["learner"]
    if int(learner["learner_model_param"].get("num_target", "1")) > 1:
        raise ExportError("multi-output XGBoost models are not supported")
    names = learner.get("feature_names") or None
    n_features = int(learner["learner_model_param"]["num_feature"])
    types = learner.get("feature_types") or []
    cats_enc = model["learner"]["gradient_booster"]["model"].get("cats", {}).get("enc", [])
    categorical = []
    for i, t in enumerate(types):
        if t != "c":
            continue
        cats = None
        if i < len(cats_enc):
            e = cats_enc[i]
            if e.get("offsets"):
                b = bytes(e["values"])
                offs = e["offsets"]
                cats = [b[offs[j]:offs[j + 1]].decode("utf-8") for j in range(len(offs) - 1)]
            elif e.get("values"):
                cats = [_scalar(v) for v in e["values"]]
        # XGBoost documents unknown categories as an error ("Found a category not in the
        # training set"); its re-coder silently maps some unknown strings to a neighbour, which
        # no encoder can reproduce: refuse unknown categories.
        categorical.append({"position": i, "name": names[i] if names else None, "categories": cats, "unknown": "error"})
    classes = np.arange(est.n_classes_) if isinstance(est, xgb.XGBClassifier) else None
    return "xgboost", {"model.json": raw}, _extra("model.json", est, n_features, names, classes, True, categorical)


def _has_best(est):
    try:
        return est.best_iteration is not None
    except AttributeError:
        return False


# ---------------------------------------------------------------------------------------------
# LightGBM


def _export_lightgbm(est, categorical_columns=None):
    import lightgbm as lgb

    if not isinstance(est, (lgb.LGBMClassifier, lgb.LGBMRegressor)):
        raise ExportError(f"{type(est).__name__} is not supported (LGBMClassifier, LGBMRegressor)")
    if callable(est.objective):
        raise ExportError("LightGBM with a custom objective function is not supported (its link is unknown)")
    params = est.booster_.params
    if params.get("linear_tree") or params.get("linear_trees"):
        raise ExportError("LightGBM linear_tree=True is not supported")
    boosting = params.get("boosting", params.get("boosting_type", est.boosting_type))
    if boosting not in ("gbdt", "rf", "goss", "dart"):
        raise ExportError(f"LightGBM boosting={boosting!r} is not supported")
    # model_to_string() keeps the best iteration when early stopping found one, which is the
    # iteration the sklearn wrapper predicts with.
    text = est.booster_.model_to_string()
    header = text.split("\nTree=", 1)[0]
    lines = dict(l.split("=", 1) for l in header.splitlines() if "=" in l)
    objective = lines.get("objective", "").split(" ")[0]
    if objective not in LIGHTGBM_OBJECTIVES:
        raise ExportError(f"LightGBM objective {objective!r} is not supported")
    if "is_linear=1" in text:
        raise ExportError("LightGBM linear trees are not supported")
    names = lines.get("feature_names", "").split() or None
    n_features = int(lines["max_feature_idx"]) + 1
    infos = lines.get("feature_infos", "").split()
    model_cats = [i for i, s in enumerate(infos) if s != "none" and not s.startswith("[")]
    pandas_cats = est.booster_.pandas_categorical or []
    categorical = []
    if pandas_cats:
        # pandas_categorical lists the categories of every category-dtype column of the
        # training frame, in column order; the codes are indices into these lists.
        if categorical_columns is None:
            if len(pandas_cats) != len(model_cats):
                raise ExportError(
                    "cannot tell which columns were pandas categoricals (ordered categoricals or extra "
                    "categorical_feature columns): pass categorical_columns=[names of the category-dtype columns]"
                )
            positions = model_cats
        else:
            if len(categorical_columns) != len(pandas_cats) or names is None:
                raise ExportError("categorical_columns must name each category-dtype column of the training frame")
            positions = [names.index(c) for c in categorical_columns]
        coded = dict(zip(positions, pandas_cats))
    else:
        coded = {}
    for i in sorted(set(model_cats) | set(coded)):
        cats = coded.get(i)
        categorical.append({
            "position": i,
            "name": names[i] if names else None,
            "categories": [_scalar(c) for c in cats] if cats is not None else None,
            # LightGBM sets categories unseen in training to NaN (which goes right).
            "unknown": "missing",
        })
    classes = est.classes_ if isinstance(est, lgb.LGBMClassifier) else None
    return "lightgbm", {"model.txt": text.encode("utf-8")}, _extra("model.txt", est, n_features, names, classes, True, categorical)


# ---------------------------------------------------------------------------------------------


def export_tree_model(estimator, categorical_columns=None):
    """(kind, files: dict[name -> bytes], extra_manifest: dict) for a fitted tree ensemble.

    ``categorical_columns`` is only needed for a LightGBM model whose pandas categorical
    columns cannot be told from the model (see the error message when it is).
    """
    est = estimator
    mod = type(est).__module__
    if mod.startswith("sklearn."):
        out = _export_sklearn(est)
        if out is None:
            raise ExportError(
                f"{type(est).__name__} is not supported (DecisionTree*, ExtraTree*, RandomForest*, ExtraTrees*, "
                "GradientBoosting*, HistGradientBoosting*)"
            )
        return out
    if mod.startswith("xgboost"):
        return _export_xgboost(est)
    if mod.startswith("lightgbm"):
        return _export_lightgbm(est, categorical_columns)
    raise ExportError(f"{type(est).__name__} from {mod} is not a supported tree ensemble")


def write_tree_model(estimator, directory):
    """Export a fitted tree ensemble's files into ``directory`` (created when missing);
    returns (kind, extra_manifest) as :func:`export_tree_model` does."""
    kind, files, extra = export_tree_model(estimator)
    os.makedirs(directory, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return kind, extra


def encode_categories(extra_manifest, frame):
    """Reference implementation of the server's preprocessing: a pandas/numpy frame with
    category labels -> the engine's float64 input matrix (codes; missing/unknown -> NaN)."""
    import pandas as pd

    names = extra_manifest.get("feature_names")
    cols = []
    for step in extra_manifest["preprocessing"]:
        for j, c in enumerate(step["columns"]):
            col = frame[c] if isinstance(frame, pd.DataFrame) else frame[:, c]
            if step["type"] == "passthrough":
                cols.append(np.asarray(col, dtype=np.float64))
                continue
            cats = step["categories"][j]
            index = {}
            for k, v in enumerate(cats):
                index.setdefault(_key(v), k)
            codes = np.full(len(col), np.nan)
            for r, v in enumerate(list(col)):
                if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
                    continue
                k = index.get(_key(_scalar(v)))
                if k is None and step["unknown"] == "error":
                    raise ValueError(f"unknown category {v!r} for {c!r}")
                if k is not None:
                    codes[r] = k
            cols.append(codes)
    del names
    return np.column_stack(cols) if cols else np.empty((len(frame), 0))


def _key(v):
    # Numbers match by value (1 == 1.0), strings by text.
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, (int, float)):
        return ("n", float(v))
    return ("s", str(v))
