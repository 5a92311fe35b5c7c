#!/usr/bin/env python3
"""The MLP of the ONNX benchmark (scripts/bench/onnx.sh), as both kinds mldeploy serves it.

StandardScaler + MLPClassifier(hidden_layer_sizes=(100,), relu) fitted on scikit-learn's bundled
breast-cancer data (a DataFrame, so the pipeline knows its 30 feature names). Writes into
OUT_DIR:

  pipeline.joblib   the fitted pipeline
  mlp-candle/       the package scripts/export_sklearn.py writes from it (kind mlp_classifier)
  mlp-onnx/         skl2onnx's conversion of the same pipeline (one float input X [N, 30],
                    outputs label and probabilities, no ZipMap) in a package of kind onnx whose
                    manifest names the 30 features, so both servers take the same request bodies
  body-1.json, body-32.json   {"data": [[30 floats], ...], "names": [...]}

Usage: onnx_models.py OUT_DIR
"""
import json
import os
import subprocess
import sys

import joblib
import numpy as np
import onnx
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: onnx_models.py OUT_DIR")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    frame = load_breast_cancer(as_frame=True)
    names = [str(n) for n in frame.data.columns]
    pipe = Pipeline([("scaler", StandardScaler()),
                     ("mlp", MLPClassifier(hidden_layer_sizes=(100,), max_iter=500, random_state=0))])
    pipe.fit(frame.data, frame.target)
    joblib.dump(pipe, os.path.join(out, "pipeline.joblib"))

    exporter = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "export_sklearn.py")
    subprocess.run([sys.executable, exporter, os.path.join(out, "pipeline.joblib"),
                    os.path.join(out, "mlp-candle"), "--name", "mlp", "--version", "1"], check=True)

    model = to_onnx(pipe, initial_types=[("X", FloatTensorType([None, len(names)]))],
                    options={id(pipe): {"zipmap": False}}, target_opset={"": 17, "ai.onnx.ml": 3})
    pkg = os.path.join(out, "mlp-onnx")
    os.makedirs(pkg, exist_ok=True)
    onnx.save(model, os.path.join(pkg, "model.onnx"))
    manifest = {
        "format": "mldeploy-package/1", "name": "mlp", "version": "1", "kind": "onnx",
        "features": [{"name": n} for n in names],
        "output": {"classes": [int(c) for c in pipe.classes_]},
    }
    with open(os.path.join(pkg, "mldeploy.json"), "w") as f:
        json.dump(manifest, f, indent=2)

    for rows in (1, 32):
        body = {"data": np.asarray(frame.data.iloc[:rows]).tolist(), "names": names}
        with open(os.path.join(out, f"body-{rows}.json"), "w") as f:
            json.dump(body, f)


if __name__ == "__main__":
    main()
