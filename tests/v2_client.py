#!/usr/bin/env python3
"""The Open Inference Protocol (V2) tests' client: tritonclient's HTTP client against a running
mldeploy, the way users call it. tests/v2.rs starts the server and runs this script.

Usage:
    v2_client.py check HOST:PORT MODELS_DIR NAME...
        Server and model health and metadata, inference with binary and JSON tensors (one
        tensor per feature, BYTES for categories, and one [N, features] tensor), answers
        compared with scikit-learn's own (MODELS_DIR/NAME/expected.json), request ids echoed,
        errors for an unknown model, a wrong shape, a missing input and an invalid value, and
        the repository index.
    v2_client.py churn HOST:PORT MODELS_DIR NAME ROUNDS
        Unload and load NAME through the repository extension ROUNDS times, checking readiness,
        the index and an inference after each load.
    v2_client.py load HOST:PORT NAME
        Load NAME; print the outcome as JSON ({"ok": bool, "status": ..., "message": ...}).

Exits 1 with a message at the first failed check.
"""

import json
import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

TOLERANCE = 1e-6


def fail(message):
    print(f"FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def expect(condition, message):
    if not condition:
        fail(message)


def expected_of(models_dir, name):
    with open(os.path.join(models_dir, name, "expected.json")) as f:
        return json.load(f)


def feature_inputs(metadata, records, binary):
    """One input per feature, as the metadata lists them."""
    inputs = []
    for spec in metadata["inputs"]:
        if spec["name"] == "input":
            continue
        name, datatype = spec["name"], spec["datatype"]
        values = [r[name] for r in records]
        if datatype == "BYTES":
            array = np.array([str(v) for v in values], dtype=np.object_)
        elif datatype == "BOOL":
            array = np.array(values, dtype=bool)
        elif datatype == "INT64":
            array = np.array(values, dtype=np.int64)
        else:
            array = np.array(values, dtype=np.float64)
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def matrix_input(metadata, records, binary, name="input", width=None):
    features = [s["name"] for s in metadata["inputs"] if s["name"] != "input"]
    array = np.array([[r[f] for f in features] for r in records], dtype=np.float64)
    if width is not None:
        array = array[:, :width]
    tensor = httpclient.InferInput(name, list(array.shape), "FP64")
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def compare(name, result, want, rows):
    labels = result.as_numpy("predict")
    expect(labels is not None and labels.shape == (len(rows),), f"{name}: predict has shape {None if labels is None else labels.shape}")
    for i, row in enumerate(rows):
        got = labels[i]
        if isinstance(got, bytes):
            got = got.decode()
        sk = want["y_predicted"][row]
        if "probabilities" in want:
            expect(got == sk or str(got) == str(sk), f"{name}: label of row {row}: {got!r} vs sklearn's {sk!r}")
        else:
            expect(abs(float(got) - sk) <= TOLERANCE, f"{name}: value of row {row}: {got} vs sklearn's {sk}")
    if "probabilities" in want:
        probs = result.as_numpy("predict_proba")
        expect(probs.shape == (len(rows), len(want["classes"])), f"{name}: predict_proba has shape {probs.shape}")
        for i, row in enumerate(rows):
            worst = max(abs(a - b) for a, b in zip(probs[i], want["probabilities"][row]))
            expect(worst <= TOLERANCE, f"{name}: probabilities of row {row} differ from sklearn's by {worst}")


def status_of(call):
    try:
        call()
    except InferenceServerException as e:
        return e.status(), e.message()
    return "200", ""


def check(url, models_dir, names):
    client = httpclient.InferenceServerClient(url)
    expect(client.is_server_live(), "the server is not live")
    expect(client.is_server_ready(), "the server is not ready")
    server = client.get_server_metadata()
    expect(server["name"] == "mldeploy", f"server metadata {server}")
    expect("model_repository" in server["extensions"], f"extensions {server['extensions']}")
    expect("binary_tensor_data" in server["extensions"], f"extensions {server['extensions']}")

    for name in names:
        want = expected_of(models_dir, name)
        records = want["records"]
        expect(client.is_model_ready(name), f"{name} is not ready")
        metadata = client.get_model_metadata(name)
        expect(metadata["name"] == name, f"{name}: metadata {metadata}")
        outputs = {o["name"]: o for o in metadata["outputs"]}
        expect("predict" in outputs, f"{name}: outputs {outputs}")
        if "probabilities" in want:
            expect(outputs["predict_proba"]["shape"] == [-1, len(want["classes"])], f"{name}: {outputs}")
        version = metadata["versions"][0]
        expect(client.is_model_ready(name, model_version=version), f"{name} version {version} is not ready")
        expect(not client.is_model_ready(name, model_version="999"), f"{name}: version 999 should not be ready")

        rows = list(range(min(len(records), 64)))
        chunk = [records[r] for r in rows]
        # Binary tensors both ways (tritonclient's default), with a request id echoed.
        result = client.infer(name, feature_inputs(metadata, chunk, binary=True), request_id=f"{name}-1")
        expect(result.get_response()["id"] == f"{name}-1", f"{name}: id not echoed: {result.get_response()}")
        compare(name, result, want, rows)
        # JSON tensors both ways, outputs asked for by name.
        asked = [httpclient.InferRequestedOutput(o, binary_data=False) for o in outputs]
        result = client.infer(name, feature_inputs(metadata, chunk, binary=False), outputs=asked)
        compare(name, result, want, rows)
        # JSON in, binary out, one output only.
        only = [httpclient.InferRequestedOutput("predict", binary_data=True)]
        result = client.infer(name, feature_inputs(metadata, chunk, binary=False), outputs=only)
        expect(result.as_numpy("predict_proba") is None, f"{name}: predict_proba was not asked for")
        # Every row, in one request.
        everything = list(range(len(records)))
        result = client.infer(name, feature_inputs(metadata, records, binary=True))
        compare(name, result, want, everything)

        numeric = all(s["datatype"] != "BYTES" for s in metadata["inputs"])
        if numeric:
            result = client.infer(name, [matrix_input(metadata, chunk, binary=True)])
            compare(name, result, want, rows)
            status, message = status_of(lambda: client.infer(name, [matrix_input(metadata, chunk, True, width=3)]))
            expect(status == "400" and "input" in message, f"{name}: wrong shape answered {status} {message}")
        # A missing input names it.
        partial = feature_inputs(metadata, chunk, binary=True)[1:]
        missing = [s["name"] for s in metadata["inputs"] if s["name"] != "input"][0]
        status, message = status_of(lambda: client.infer(name, partial))
        expect(status == "400" and missing in message, f"{name}: missing input answered {status} {message}")

    first = expected_of(models_dir, names[0])["records"][:1]
    unknown = [matrix_input(client.get_model_metadata(names[0]), first, True)]
    status, message = status_of(lambda: client.infer("no-such-model", unknown))
    expect(status == "404" and "no-such-model" in message, f"unknown model answered {status} {message}")
    status, _ = status_of(lambda: client.get_model_metadata("no-such-model"))
    expect(status == "404", f"metadata of an unknown model answered {status}")

    index = {m["name"]: m for m in client.get_model_repository_index()}
    for name in names:
        expect(index.get(name, {}).get("state") == "READY", f"index: {index}")
    print(json.dumps({"checked": names}))


def churn(url, models_dir, name, rounds):
    client = httpclient.InferenceServerClient(url, network_timeout=600.0, connection_timeout=600.0)
    metadata = client.get_model_metadata(name)
    want = expected_of(models_dir, name)
    sample = want["records"][0]
    for _ in range(rounds):
        client.unload_model(name)
        expect(not client.is_model_ready(name), f"{name} is still ready after its unload")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        expect(index[name]["state"] == "UNAVAILABLE", f"index after unload: {index}")
        status, _ = status_of(lambda: client.infer(name, feature_inputs(metadata, [sample], True)))
        expect(status == "404", f"inference on an unloaded model answered {status}")
        client.load_model(name)
        expect(client.is_model_ready(name), f"{name} is not ready after its load")
        index = {m["name"]: m for m in client.get_model_repository_index()}
        expect(index[name]["state"] == "READY", f"index after load: {index}")
        compare(name, client.infer(name, feature_inputs(metadata, [sample], True)), want, [0])
    print(json.dumps({"rounds": rounds}))


def load(url, name):
    client = httpclient.InferenceServerClient(url, network_timeout=600.0, connection_timeout=600.0)
    try:
        client.load_model(name)
        print(json.dumps({"ok": True}))
    except InferenceServerException as e:
        print(json.dumps({"ok": False, "status": e.status(), "message": e.message()}))


def main(argv):
    if len(argv) >= 4 and argv[1] == "check":
        check(argv[2], argv[3], argv[4:])
    elif len(argv) == 6 and argv[1] == "churn":
        churn(argv[2], argv[3], argv[4], int(argv[5]))
    elif len(argv) == 4 and argv[1] == "load":
        load(argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
