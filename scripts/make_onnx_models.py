#!/usr/bin/env python3
"""Build the ONNX test models and onnxruntime's own answers for them (tests/onnx.rs).

Usage: python3 scripts/make_onnx_models.py OUT_DIR

Needs scikit-learn, pandas, skl2onnx, onnx and onnxruntime (scripts/setup-test-deps.sh installs
them). Writes into OUT_DIR:

  iris_lr.onnx       StandardScaler + LogisticRegression on iris, one input X float [N, 4],
                     outputs label and probabilities (no ZipMap), model_version 3
  linear.onnx        LinearRegression on three iris columns: X float [N, 3] -> variable [N, 1]
  rf_zipmap.onnx     RandomForestClassifier with string labels: X float [N, 4], outputs
                     output_label (string) and output_probability (ZipMap, string keys)
  tiny_mlp.onnx      a net written with onnx.helper: X float [batch, 8] -> logits and probs,
                     model_version 5
  columns/           a package of kind onnx: a ColumnTransformer (scaled age/income/n_items,
                     one-hot city) + LogisticRegression converted from a DataFrame, one input
                     per column (n_items int64, city string), ZipMap output; the manifest adds
                     the feature ranges, the classes and a sample
  fails.onnx         X float [N, 2] reshaped to [2, 2]: runs only on 2 rows
  broken.onnx        not a graph at all
  unsupported.onnx   an image-like input [N, 3, 2, 2]
  expected.json      for each served model, request cases: the ml-deploy body, the V2 inputs,
                     and onnxruntime's outputs for the same values

Input values are float32 (or int64, or strings) written exactly, so the server's cast of the
JSON numbers gives the tensors onnxruntime ran here.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

OPSET = {"": 17, "ai.onnx.ml": 3}
V2_DATATYPE = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64", np.dtype(np.int64): "INT64"}


def session(path):
    """onnxruntime with the server's options: one thread, sequential."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def encode_output(value):
    if isinstance(value, list):  # ZipMap: one dict per row
        return {"kind": "maps", "data": [{str(k): float(v) for k, v in row.items()} for row in value]}
    value = np.asarray(value)
    if value.dtype.kind in "OU":
        data = [str(x) for x in value.ravel()]
    else:
        data = value.ravel().tolist()
    return {"kind": "tensor", "shape": list(value.shape), "data": data}


def scalar(x):
    return x.item() if hasattr(x, "item") else x


def case(sess, feeds, features, names_in_body=True):
    """One request: the graph's feeds, the same values as ml-deploy rows and as V2 inputs, and
    onnxruntime's outputs. `features` maps each feature to (feed name, column)."""
    rows = len(next(iter(feeds.values())))
    data = []
    for r in range(rows):
        data.append([scalar(np.asarray(feeds[name])[r].ravel()[col]) for _, (name, col) in features])
    body = {"data": data}
    if names_in_body:
        body["names"] = [f for f, _ in features]
    v2 = []
    for name, value in feeds.items():
        value = np.asarray(value)
        if value.dtype.kind in "OU":
            v2.append({"name": name, "datatype": "BYTES", "shape": list(value.shape),
                       "data": [str(x) for x in value.ravel()]})
        else:
            v2.append({"name": name, "datatype": V2_DATATYPE[value.dtype], "shape": list(value.shape),
                       "data": value.ravel().tolist()})
    outs = sess.run(None, feeds)
    expected = {o.name: encode_output(v) for o, v in zip(sess.get_outputs(), outs)}
    return {"rows": rows, "body": body, "v2_inputs": v2, "outputs": expected}


def matrix_features(name, width):
    return [(f"{name}_{j}", (name, j)) for j in range(width)]


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    expected = {}

    # A single [N, 4] tensor with a dynamic batch, no ZipMap.
    X, y = load_iris(return_X_y=True)
    pipe = Pipeline([("scale", StandardScaler()), ("lr", LogisticRegression(max_iter=500))]).fit(X, y)
    model = to_onnx(pipe, initial_types=[("X", FloatTensorType([None, 4]))],
                    options={id(pipe): {"zipmap": False}}, target_opset=OPSET)
    model.model_version = 3
    path = os.path.join(out, "iris_lr.onnx")
    onnx.save(model, path)
    sess = session(path)
    xs = (X[::3] + rng.normal(0, 0.3, X[::3].shape)).astype(np.float32)  # 50 rows, some borderline
    expected["iris_lr"] = {"version": "3", "cases": [
        case(sess, {"X": xs}, matrix_features("X", 4), names_in_body=False),
        case(sess, {"X": xs[:1]}, matrix_features("X", 4)),
        case(sess, {"X": xs[:7]}, matrix_features("X", 4)),
    ]}

    # A regressor: skl2onnx names its output `variable`, [N, 1].
    reg = LinearRegression().fit(X[:, :3], X[:, 3])
    model = to_onnx(reg, initial_types=[("X", FloatTensorType([None, 3]))], target_opset=OPSET)
    path = os.path.join(out, "linear.onnx")
    onnx.save(model, path)
    sess = session(path)
    expected["linear"] = {"version": "0", "cases": [
        case(sess, {"X": xs[:9, :3].copy()}, matrix_features("X", 3), names_in_body=False)]}

    # A ZipMap classifier with string labels.
    labels = np.array(["setosa", "versicolor", "virginica"], dtype=object)
    rf = RandomForestClassifier(n_estimators=15, max_depth=4, random_state=0).fit(X, labels[y])
    model = to_onnx(rf, initial_types=[("X", FloatTensorType([None, 4]))], target_opset=OPSET)
    path = os.path.join(out, "rf_zipmap.onnx")
    onnx.save(model, path)
    sess = session(path)
    xr = (X[40:140:4] + rng.normal(0, 0.4, (25, 4))).astype(np.float32)
    expected["rf_zipmap"] = {"version": "0", "cases": [
        case(sess, {"X": xr}, matrix_features("X", 4)),
        case(sess, {"X": xr[3:4]}, matrix_features("X", 4), names_in_body=False),
    ]}

    # Two outputs from a net written by hand, with a symbolic batch dimension.
    w1 = rng.normal(0, 0.5, (8, 16)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 16).astype(np.float32)
    w2 = rng.normal(0, 0.5, (16, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["l0"]),
        helper.make_node("Add", ["l0", "B2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny_mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "B1"),
                     numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(b2, "B2")])
    model = helper.make_model(graph, producer_name="mldeploy-tests", opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model.model_version = 5
    onnx.checker.check_model(model)
    path = os.path.join(out, "tiny_mlp.onnx")
    onnx.save(model, path)
    sess = session(path)
    xt = rng.normal(size=(12, 8)).astype(np.float32)
    expected["tiny_mlp"] = {"version": "5", "cases": [
        case(sess, {"X": xt}, matrix_features("X", 8)),
        case(sess, {"X": xt[5:6]}, matrix_features("X", 8), names_in_body=False),
    ]}

    # One input per DataFrame column, a string column, a ZipMap output; a package adds the rest.
    n = 300
    frame = pd.DataFrame({
        "age": rng.uniform(18, 80, n).astype(np.float32),
        "income": rng.normal(50, 15, n).astype(np.float32),
        "n_items": rng.integers(0, 10, n).astype(np.int64),
        "city": rng.choice(["paris", "lyon", "nice", "lille"], n).astype(object),
    })
    target = (((frame.age > 40) ^ (frame.city == "nice")) | (frame.n_items > 7)).astype(np.int64)
    prep = ColumnTransformer([
        ("num", StandardScaler(), ["age", "income", "n_items"]),
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
    ])
    pipe = Pipeline([("prep", prep), ("lr", LogisticRegression(max_iter=500))]).fit(frame, target)
    types = [("age", FloatTensorType([None, 1])), ("income", FloatTensorType([None, 1])),
             ("n_items", Int64TensorType([None, 1])), ("city", StringTensorType([None, 1]))]
    model = to_onnx(pipe, initial_types=types, options={id(pipe): {"zipmap": True}}, target_opset=OPSET)
    pkg = os.path.join(out, "columns")
    os.makedirs(pkg, exist_ok=True)
    onnx.save(model, os.path.join(pkg, "model.onnx"))
    # The manifest lists the features in another order than the graph's inputs.
    order = ["city", "age", "income", "n_items"]
    manifest = {
        "format": "mldeploy-package/1",
        "name": "columns",
        "version": "2.1.0",
        "kind": "onnx",
        "model_file": "model.onnx",
        "features": [
            {"name": "city", "dtype": "category"},
            {"name": "age", "dtype": "float", "values": {"min": 0, "max": 120}},
            {"name": "income", "dtype": "float"},
            {"name": "n_items", "dtype": "int", "values": {"min": 0}},
        ],
        "output": {"classes": [0, 1]},
        "sample": {"data": [["lyon", 35.0, 52.5, 3]], "names": order},
    }
    with open(os.path.join(pkg, "mldeploy.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    sess = session(os.path.join(pkg, "model.onnx"))
    rows = frame.iloc[:20].copy()
    rows.loc[rows.index[4], "city"] = "marseille"  # a city the encoder never saw
    feeds = {
        "age": rows.age.to_numpy().reshape(-1, 1),
        "income": rows.income.to_numpy().reshape(-1, 1),
        "n_items": rows.n_items.to_numpy().reshape(-1, 1),
        "city": rows.city.to_numpy().reshape(-1, 1),
    }
    features = [(name, (name, 0)) for name in order]
    one = {k: v[2:3] for k, v in feeds.items()}
    expected["columns"] = {"version": "2.1.0", "cases": [case(sess, feeds, features), case(sess, one, features)]}

    # Fails at run time unless the batch has exactly 2 rows.
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["X", "shape"], ["Y"])], "fails",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 2])],
        initializer=[numpy_helper.from_array(np.array([2, 2], dtype=np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = os.path.join(out, "fails.onnx")
    onnx.save(model, path)
    sess = session(path)
    expected["fails"] = {"version": "0", "cases": [
        case(sess, {"X": np.array([[1, 2], [3, 4]], dtype=np.float32)}, matrix_features("X", 2))]}

    with open(os.path.join(out, "broken.onnx"), "wb") as f:
        f.write(b"this is not a protobuf of an ONNX model\n" * 3)
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0)], "unsupported",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 3, 2, 2])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, os.path.join(out, "unsupported.onnx"))

    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f)
    print(f"wrote {len(expected)} models and their answers to {out}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
