"""For the Python-model tests: each call both as the server answers it (sent with Python's
http.client) and as the interface class answers it when called in plain Python (in this
process, with mldeploy's ml_deploy stand-in on the path, as the class would be used by hand).

Reads a JSON spec on stdin:
  {"interface": "FILE.py" or "FILE.py:Class" or "module.Class", "server": "HOST:PORT",
   "calls": [{"kind": "predict" | "feedback" | "route", "path": "/...", "method": "POST",
              "body": <JSON or null>, "rows": N, "headers": {...}}, ...]}
("rows": N sends the first N rows of scikit-learn's breast-cancer data, merged into "body".)
Prints [{"served": {"status", "json"?, "text"}, "own": {"status", "json"?, "text"}}, ...].
The interface class is instantiated and loaded once, as one worker does.
"""
import http.client
import importlib
import importlib.util
import inspect
import json
import os
import sys

import numpy as np


def plain(value):
    """Results as JSON text would carry them (numpy to lists, NaN stays NaN)."""
    return json.loads(json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def load_class(interface):
    file, _, class_name = interface.partition(".py:")
    if class_name or file.endswith(".py"):
        path = file if file.endswith(".py") else file + ".py"
        sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module_name, _, class_name = interface.rpartition(".")
        module = importlib.import_module(module_name)
    if not class_name:
        class_name = next(n for n, v in vars(module).items()
                          if inspect.isclass(v) and v.__module__ == module.__name__ and hasattr(v, "predict"))
    return getattr(module, class_name)


def served(server, call):
    host, port = server.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    body = None if call.get("body") is None else json.dumps(call["body"])
    headers = dict(call.get("headers") or {})
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    connection.request(call.get("method", "POST"), call["path"], body=body, headers=headers)
    response = connection.getresponse()
    return answer(response.status, response.read(), response.getheader("Content-Type") or "")


def answer(status, data, content_type):
    out = {"status": status, "text": data.decode("utf-8", "replace")}
    if "json" in content_type:
        out["json"] = json.loads(data)
    return out


def own(cls, instance, app, call):
    kind = call["kind"]
    body = call.get("body")
    serving = hasattr(instance, "api_prefix_processed")
    if kind == "predict":
        if serving:
            # As ml-deploy served it, get_all_request() is the request during predict.
            current = sys.modules["ml_deploy.rest.utils"]._current
            current.data = body
            try:
                return {"status": 200, "json": plain(instance.predict(body))}
            finally:
                current.data = None
        X = np.asarray(body["data"], dtype=float)
        return {"status": 200, "json": plain(instance.predict(X, body.get("names", [])))}
    if kind == "feedback":
        result = instance.feedback(body["data"], body["y_true"], body.get("y_predict"))
        return {"status": 200, "json": plain(result)}
    client = app.test_client()
    response = client.open(call["path"], method=call.get("method", "GET"), headers=call.get("headers") or {},
                           json=body)
    return answer(response.status_code, response.get_data(), response.content_type or "")


def breast_cancer_body(rows):
    """The first `rows` rows of scikit-learn's breast-cancer data, as ml-deploy's request."""
    from sklearn.datasets import load_breast_cancer
    data = load_breast_cancer()
    return {"data": data.data[:rows].tolist(), "names": [str(n) for n in data.feature_names]}


def main():
    spec = json.load(sys.stdin)
    for call in spec["calls"]:
        if "rows" in call:
            call["body"] = {**breast_cancer_body(call["rows"]), **(call.get("body") or {})}
    import ml_deploy
    cls = load_class(spec["interface"])
    instance = cls()
    instance.load()
    app = None
    if hasattr(instance, "api_prefix_processed"):
        app = instance.app
    elif hasattr(cls, "endpoints"):
        from flask import Flask
        app = Flask(cls.__module__)
        cls.endpoints(app)  # the README writes it without self
    results = [{"served": served(spec["server"], call), "own": own(cls, instance, app, call)}
               for call in spec["calls"]]
    assert ml_deploy.__version__.endswith("+mldeploy"), "the stand-in answered the class's imports"
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
