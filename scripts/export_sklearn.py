#!/usr/bin/env python3
"""Export a fitted scikit-learn pipeline as an mldeploy model package.

Usage:
    python3 scripts/export_sklearn.py PIPELINE.joblib OUT_DIR --name NAME --version VERSION
        [--training-data FRAME.joblib] [--target-name NAME]

PIPELINE.joblib holds a fitted estimator or Pipeline, fitted on a pandas DataFrame so that
`feature_names_in_` names the input features. Supported:

  preprocessing (at most one step): StandardScaler, OneHotEncoder, or a ColumnTransformer of
      StandardScaler / OneHotEncoder / 'passthrough' / 'drop' (remainder included);
  estimator: LinearRegression, LogisticRegression (binary or multinomial), MLPClassifier,
      MLPRegressor (one output); tree ensembles: DecisionTree*, ExtraTree*, RandomForest*,
      ExtraTrees*, GradientBoosting*, HistGradientBoosting* (with missing values and categorical
      features), and, when those packages are installed, XGBoost's XGBClassifier/XGBRegressor
      and LightGBM's LGBMClassifier/LGBMRegressor (scripts/export_trees.py).

The package written to OUT_DIR is `mldeploy.json` (the manifest) and the model's file:
`model.safetensors` (the weights, float64) for the linear and MLP kinds, the trees in
mldeploy's JSON format for scikit-learn's ensembles, the library's own saved model for XGBoost
(`model.json`) and LightGBM (`model.txt`); docs/model-package.md describes them. --training-data names a joblib file
holding the training DataFrame: with it the feature dtypes (int, bool, float) and ranges
(training min/max) are recorded and the sample request is the first training row. Without it,
one-hot encoded features are categories, every other feature is a float without a range.

Anything that cannot be reproduced exactly is refused with a message and exit code 2: other
estimators or transformers, OneHotEncoder with `drop` or infrequent categories, one-vs-rest
multiclass LogisticRegression, multi-output regressors, multilabel classifiers, XGBoost's dart
booster, LightGBM's linear trees, ...

Loading a joblib file runs code from it: export only pipelines you trust.
"""

import argparse
import json
import os
import sys

import joblib
import numpy as np
import sklearn
from safetensors.numpy import save_file
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_trees  # noqa: E402

PACKAGE_FORMAT = "mldeploy-package/1"
MANIFEST_FILE = "mldeploy.json"
WEIGHTS_FILE = "model.safetensors"
HIDDEN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu")


class ExportError(Exception):
    """The pipeline cannot be exported faithfully; the message says why."""


def json_value(value):
    """Like json_scalar, but NaN and None become null (a missing value)."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:
        pass
    return json_scalar(value)


def is_tree_ensemble(est):
    """Whether `est` is an estimator the tree engine computes."""
    module = type(est).__module__
    if module.startswith(("xgboost", "lightgbm")):
        return True
    return module.startswith("sklearn.") and type(est).__name__.endswith(
        ("Regressor", "Classifier")
    ) and ("Tree" in type(est).__name__ or "Forest" in type(est).__name__ or "Boosting" in type(est).__name__)


def json_scalar(value):
    """A numpy or Python scalar as a JSON-ready Python value; refuses NaN and infinities."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        raise ExportError(f"value {value!r} cannot be written as JSON")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ExportError(f"value {value!r} of type {type(value).__name__} is not a number or a string")


def unwrap(step):
    """A single-step Pipeline stands for its one step; an identity function is 'passthrough'."""
    # A fitted ColumnTransformer stores 'passthrough' as a FunctionTransformer without function.
    if type(step) is FunctionTransformer and step.func is None:
        return "passthrough"
    while isinstance(step, Pipeline):
        live = [s for _, s in step.steps if s is not None and s != "passthrough"]
        if len(live) == 0:
            return "passthrough"
        if len(live) > 1:
            names = ", ".join(type(s).__name__ for s in live)
            raise ExportError(f"a nested Pipeline with several steps ({names}) is not supported")
        step = unwrap(live[0])
    return step


def resolve_columns(spec, feature_names):
    """The feature names a ColumnTransformer column selection refers to."""
    names = list(feature_names)
    if callable(spec):
        raise ExportError("ColumnTransformer column selections given as callables are not supported")
    if isinstance(spec, str):
        return [spec]
    if isinstance(spec, (int, np.integer)):
        return [names[int(spec)]]
    if isinstance(spec, slice):
        if spec.start is None or isinstance(spec.start, (int, np.integer)):
            return names[spec]
        start = names.index(spec.start)
        stop = names.index(spec.stop) + 1 if spec.stop is not None else None
        return names[start:stop:spec.step]
    items = list(np.asarray(spec).ravel()) if not isinstance(spec, list) else spec
    if len(items) == 0:
        return []
    if all(isinstance(x, (bool, np.bool_)) for x in items):
        return [n for n, keep in zip(names, items) if keep]
    if all(isinstance(x, (int, np.integer)) for x in items):
        return [names[int(i)] for i in items]
    if all(isinstance(x, str) for x in items):
        return list(items)
    raise ExportError(f"cannot interpret the column selection {spec!r}")


def scaler_step(scaler, columns):
    if type(scaler) is not StandardScaler:
        raise ExportError(f"{type(scaler).__name__} is not supported (only StandardScaler)")
    n = len(columns)
    if scaler.n_features_in_ != n:
        raise ExportError(f"StandardScaler was fitted on {scaler.n_features_in_} columns, not {n}")
    mean = np.asarray(scaler.mean_, dtype=np.float64) if scaler.with_mean else np.zeros(n)
    scale = np.asarray(scaler.scale_, dtype=np.float64) if scaler.with_std else np.ones(n)
    return {
        "type": "standard_scaler",
        "columns": list(columns),
        "mean": [json_scalar(x) for x in mean],
        "scale": [json_scalar(x) for x in scale],
    }


def one_hot_step(encoder, columns):
    if type(encoder) is not OneHotEncoder:
        raise ExportError(f"{type(encoder).__name__} is not supported (only OneHotEncoder)")
    if encoder.drop is not None:
        raise ExportError(f"OneHotEncoder with drop={encoder.drop!r} is not supported (use drop=None)")
    if encoder.min_frequency is not None or encoder.max_categories is not None:
        raise ExportError("OneHotEncoder with infrequent categories (min_frequency/max_categories) is not supported")
    if encoder.handle_unknown not in ("ignore", "warn", "error", "infrequent_if_exist"):
        raise ExportError(f"OneHotEncoder with handle_unknown={encoder.handle_unknown!r} is not supported")
    if len(encoder.categories_) != len(columns):
        raise ExportError(f"OneHotEncoder was fitted on {len(encoder.categories_)} columns, not {len(columns)}")
    categories = []
    for column, cats in zip(columns, encoder.categories_):
        values = [json_scalar(c) for c in cats]
        if any(v is None for v in values):
            raise ExportError(f"one-hot feature {column!r} has a missing value (None/NaN) as a category")
        texts = [v if isinstance(v, str) else json.dumps(v) for v in values]
        if len(set(texts)) != len(texts):
            raise ExportError(f"one-hot feature {column!r} has categories that read the same as text")
        categories.append(values)
    step = {"type": "one_hot", "columns": list(columns), "categories": categories}
    # handle_unknown="error": sklearn refuses unknown categories, so the schema lists them.
    closed = encoder.handle_unknown == "error"
    return step, closed


def preprocessing_steps(transformer, feature_names):
    """The manifest's preprocessing steps and the features whose categories are closed."""
    transformer = unwrap(transformer)
    all_columns = list(feature_names)
    if transformer is None or transformer == "passthrough":
        return [{"type": "passthrough", "columns": all_columns}], set()
    if isinstance(transformer, StandardScaler):
        return [scaler_step(transformer, all_columns)], set()
    if isinstance(transformer, OneHotEncoder):
        step, closed = one_hot_step(transformer, all_columns)
        return [step], set(all_columns) if closed else set()
    if type(transformer) is not ColumnTransformer:
        raise ExportError(
            f"preprocessing step {type(transformer).__name__} is not supported "
            "(StandardScaler, OneHotEncoder or ColumnTransformer)"
        )
    if transformer.transformer_weights is not None:
        raise ExportError("ColumnTransformer with transformer_weights is not supported")
    steps, closed = [], set()
    for name, inner, spec in transformer.transformers_:
        columns = resolve_columns(spec, feature_names)
        inner = unwrap(inner)
        if inner == "drop" or len(columns) == 0:
            continue
        for c in columns:
            if c not in all_columns:
                raise ExportError(f"ColumnTransformer part {name!r} uses unknown column {c!r}")
        if inner == "passthrough":
            steps.append({"type": "passthrough", "columns": columns})
        elif isinstance(inner, StandardScaler):
            steps.append(scaler_step(inner, columns))
        elif isinstance(inner, OneHotEncoder):
            step, is_closed = one_hot_step(inner, columns)
            steps.append(step)
            if is_closed:
                closed.update(columns)
        else:
            raise ExportError(
                f"ColumnTransformer part {name!r} is a {type(inner).__name__}, which is not supported "
                "(StandardScaler, OneHotEncoder, 'passthrough' or 'drop')"
            )
    return steps, closed


def estimator_layers(est):
    """(kind, activation, output, [(weight [in, out], bias [out])])."""
    if type(est) is LinearRegression:
        coef = np.asarray(est.coef_, dtype=np.float64)
        if coef.ndim == 2:
            if coef.shape[0] != 1:
                raise ExportError(f"LinearRegression with {coef.shape[0]} outputs is not supported (one output)")
            coef = coef[0]
        intercept = np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64)).ravel()
        if intercept.shape != (1,):
            raise ExportError("LinearRegression with several intercepts is not supported (one output)")
        return "linear_regression", None, "regressor", [(coef.reshape(-1, 1), intercept)]
    if type(est) is LogisticRegression:
        classes = est.classes_
        if len(classes) < 2:
            raise ExportError("LogisticRegression fitted on a single class")
        multi_class = getattr(est, "multi_class", "deprecated")
        if len(classes) > 2 and (
            multi_class == "ovr" or (multi_class in ("auto", "warn") and est.solver == "liblinear")
        ):
            raise ExportError("one-vs-rest multiclass LogisticRegression is not supported (use multinomial)")
        coef = np.asarray(est.coef_, dtype=np.float64)
        intercept = np.atleast_1d(np.asarray(est.intercept_, dtype=np.float64))
        expected_rows = 1 if len(classes) == 2 else len(classes)
        if coef.shape[0] != expected_rows or intercept.shape != (expected_rows,):
            raise ExportError(f"unexpected LogisticRegression coefficient shape {coef.shape}")
        return "logistic_regression", None, "classifier", [(coef.T, intercept)]
    if type(est) in (MLPClassifier, MLPRegressor):
        if est.activation not in HIDDEN_ACTIVATIONS:
            raise ExportError(f"MLP activation {est.activation!r} is not supported")
        layers = [
            (np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64))
            for w, b in zip(est.coefs_, est.intercepts_)
        ]
        if type(est) is MLPClassifier:
            if getattr(est._label_binarizer, "y_type_", "") == "multilabel-indicator":
                raise ExportError("multilabel MLPClassifier is not supported")
            expected = "logistic" if len(est.classes_) == 2 else "softmax"
            if est.out_activation_ != expected or est.n_outputs_ != (1 if len(est.classes_) == 2 else len(est.classes_)):
                raise ExportError(f"MLPClassifier with output activation {est.out_activation_!r} is not supported")
            return "mlp_classifier", est.activation, "classifier", layers
        if est.n_outputs_ != 1 or est.out_activation_ != "identity":
            raise ExportError(f"MLPRegressor with {est.n_outputs_} outputs is not supported (one output)")
        return "mlp_regressor", est.activation, "regressor", layers
    raise ExportError(
        f"estimator {type(est).__name__} is not supported "
        "(LinearRegression, LogisticRegression, MLPClassifier, MLPRegressor)"
    )


def split_pipeline(model):
    """(preprocessing transformer or None, final estimator)."""
    if not isinstance(model, Pipeline):
        return None, model
    live = [s for _, s in model.steps if s is not None and s != "passthrough"]
    if not live:
        raise ExportError("the Pipeline has no estimator")
    if len(live) > 2:
        names = ", ".join(type(s).__name__ for s in live[:-1])
        raise ExportError(
            f"only one preprocessing step is supported, this Pipeline has {len(live) - 1} ({names}); "
            "combine them in a ColumnTransformer"
        )
    return (live[0] if len(live) == 2 else None), live[-1]


def numeric_dtype(frame, column):
    kind = frame[column].dtype.kind
    if kind == "b":
        return "bool"
    if kind in "iu":
        return "int"
    if kind == "f":
        return "float"
    raise ExportError(f"feature {column!r} is used as a number but its training dtype is {frame[column].dtype}")


def build_features(feature_names, steps, closed, training_data):
    one_hot = {}
    numeric = set()
    for step in steps:
        if step["type"] in ("one_hot", "ordinal"):
            for column, cats in zip(step["columns"], step["categories"]):
                one_hot[column] = cats
        else:
            numeric.update(step["columns"])
    both = sorted(numeric & set(one_hot))
    if both:
        raise ExportError(f"feature {both[0]!r} is used both as a number and as a one-hot category")
    features = []
    for name in feature_names:
        if name in one_hot:
            feature = {"name": name, "dtype": "category"}
            if name in closed:
                feature["values"] = one_hot[name]
        elif training_data is not None and name in training_data:
            dtype = numeric_dtype(training_data, name)
            feature = {"name": name, "dtype": dtype}
            column = training_data[name].dropna()
            if dtype != "bool" and len(column) > 0:
                feature["values"] = {"min": json_scalar(column.min()), "max": json_scalar(column.max())}
        else:
            feature = {"name": name, "dtype": "float"}
        features.append(feature)
    return features


def build_sample(features, steps, training_data):
    """A request body with one row: the first training row, or typical values."""
    names = [f["name"] for f in features]
    if training_data is not None and len(training_data) > 0:
        row = [json_value(training_data[name].iloc[0]) for name in names]
        return {"data": [row], "names": names}
    typical = {}
    for step in steps:
        if step["type"] == "standard_scaler":
            typical.update(zip(step["columns"], step["mean"]))
        elif step["type"] in ("one_hot", "ordinal"):
            typical.update((c, cats[0]) for c, cats in zip(step["columns"], step["categories"]) if cats)
    row = [typical.get(name, 0.0) for name in names]
    return {"data": [row], "names": names}


def tree_features(feature_names, steps, closed, extra, training_data):
    """The features of a tree package: categories for one-hot and ordinal inputs, missing values
    where the library takes them (numeric inputs the trees see directly or through a scaler;
    the categories of the ensemble's own categorical inputs)."""
    features = build_features(feature_names, steps, closed, training_data)
    by_name = {f["name"]: f for f in features}
    takes_missing = bool(extra.get("allow_nan"))
    for step in steps:
        if step["type"] == "ordinal":
            for column, cats in zip(step["columns"], step["categories"]):
                feature = {"name": column, "dtype": "category", "missing": True}
                if step["unknown"] == "error":
                    feature["values"] = cats
                by_name[column].clear()
                by_name[column].update(feature)
        elif step["type"] in ("passthrough", "standard_scaler") and takes_missing:
            for column in step["columns"]:
                by_name[column]["missing"] = True
    return features


def export_trees_package(model, transformer, est, feature_names, out_dir, name, version, training_data, target_name):
    """A tree ensemble as the pipeline's final step: its model file and the manifest."""
    try:
        family, files, extra = export_trees.export_tree_model(est)
    except export_trees.ExportError as e:
        raise ExportError(str(e)) from e
    classes = extra.get("output", {}).get("classes")
    kind = f"{'trees' if family == 'sklearn_trees' else family}_{'classifier' if classes is not None else 'regressor'}"
    if family == "sklearn_trees":
        kind = "sklearn_" + kind
    if transformer is None:
        steps, closed = extra["preprocessing"], set()
        inputs = extra.get("feature_names") or feature_names
        if list(inputs) != list(feature_names):
            raise ExportError("the ensemble's inputs are not the pipeline's features")
    else:
        if extra.get("categorical"):
            raise ExportError("an ensemble with categorical inputs must be the whole pipeline (no preprocessing step before it)")
        steps, closed = preprocessing_steps(transformer, feature_names)
    width = sum(len(c) for step in steps if step["type"] == "one_hot" for c in step["categories"]) + sum(
        len(step["columns"]) for step in steps if step["type"] != "one_hot"
    )
    if width != est.n_features_in_:
        raise ExportError(f"the preprocessing produces {width} columns but the estimator takes {est.n_features_in_}")
    features = tree_features(feature_names, steps, closed, extra, training_data)
    manifest = {
        "format": PACKAGE_FORMAT,
        "name": name,
        "version": version,
        "kind": kind,
        "features": features,
        "preprocessing": steps,
        "model_file": extra["model_file"],
        "output": {"classes": classes} if classes is not None else {"target": target_name},
        "sample": build_sample(features, steps, training_data),
        "source": {
            "library": family.replace("sklearn_trees", "scikit-learn"),
            "library_version": library_version(est),
            "estimator": type(est).__name__,
        },
    }
    write_package(out_dir, manifest, files)
    return manifest


def write_package(out_dir, manifest, files):
    """Write the manifest and the model's files (name -> bytes) into `out_dir`."""
    os.makedirs(out_dir, exist_ok=True)
    for file_name, data in files.items():
        with open(os.path.join(out_dir, file_name), "wb") as f:
            f.write(data)
    with open(os.path.join(out_dir, MANIFEST_FILE), "w", encoding="utf-8") as f:
        f.write(json.dumps(manifest, indent=2, allow_nan=False) + "\n")


def library_version(est):
    module = type(est).__module__.split(".")[0]
    return getattr(sys.modules.get(module), "__version__", "unknown")


def export_pipeline(model, out_dir, name, version, training_data=None, target_name="y"):
    """Write the package for `model` into `out_dir`; returns the manifest."""
    feature_names = getattr(model, "feature_names_in_", None)
    if feature_names is None:
        raise ExportError("the pipeline has no feature_names_in_: fit it on a pandas DataFrame")
    feature_names = [str(n) for n in feature_names]
    if training_data is not None:
        missing = [n for n in feature_names if n not in training_data]
        if missing:
            raise ExportError(f"the training data lacks the feature {missing[0]!r}")
    transformer, est = split_pipeline(model)
    if is_tree_ensemble(est):
        return export_trees_package(
            model, transformer, est, feature_names, out_dir, name, version, training_data, target_name
        )
    steps, closed = preprocessing_steps(transformer, feature_names)
    kind, activation, task, layers = estimator_layers(est)

    width = 0
    for step in steps:
        if step["type"] == "one_hot":
            width += sum(len(c) for c in step["categories"])
        else:
            width += len(step["columns"])
    if layers[0][0].shape[0] != width:
        raise ExportError(
            f"the preprocessing produces {width} columns but the estimator takes {layers[0][0].shape[0]}"
        )

    features = build_features(feature_names, steps, closed, training_data)
    if task == "classifier":
        output = {"classes": [json_scalar(c) for c in est.classes_]}
    else:
        output = {"target": target_name}
    manifest = {
        "format": PACKAGE_FORMAT,
        "name": name,
        "version": version,
        "kind": kind,
        "features": features,
        "preprocessing": steps,
        "layers": len(layers),
    }
    if activation is not None:
        manifest["activation"] = activation
    manifest["output"] = output
    manifest["sample"] = build_sample(features, steps, training_data)
    manifest["source"] = {
        "library": "scikit-learn",
        "library_version": sklearn.__version__,
        "estimator": type(est).__name__,
    }

    tensors = {}
    for i, (weight, bias) in enumerate(layers):
        tensors[f"layers.{i}.weight"] = np.ascontiguousarray(weight, dtype=np.float64)
        tensors[f"layers.{i}.bias"] = np.ascontiguousarray(bias, dtype=np.float64)

    write_package(out_dir, manifest, {})
    save_file(tensors, os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": PACKAGE_FORMAT})
    return manifest


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a fitted scikit-learn pipeline as an mldeploy model package.")
    parser.add_argument("pipeline", help="joblib file holding the fitted estimator or Pipeline")
    parser.add_argument("out_dir", help="package directory to write")
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--version", required=True, help="model version")
    parser.add_argument("--training-data", help="joblib file holding the training DataFrame (dtypes, ranges, sample)")
    parser.add_argument("--target-name", default="y", help="name of a regressor's target (default: y)")
    args = parser.parse_args(argv)

    try:
        model = joblib.load(args.pipeline)
        training_data = joblib.load(args.training_data) if args.training_data else None
    except (OSError, EOFError, ValueError) as e:
        print(f"export_sklearn.py: cannot read input: {e}", file=sys.stderr)
        return 1
    try:
        export_pipeline(model, args.out_dir, args.name, args.version, training_data, args.target_name)
    except ExportError as e:
        print(f"export_sklearn.py: cannot export: {e}", file=sys.stderr)
        return 2
    print(f"wrote the package in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
