"""The benchmark model as an ml-deploy 2.0.0 interface class (the Python system under test).

Start it with the venv's `ml-deploy`, with this directory on the module path:
    PYTHONPATH=scripts/bench BENCH_PIPELINE=.../pipeline.joblib ml-deploy \
        --config scripts/bench/ml-deploy-config.yaml --mode production --workers 2 --threads 2 \
        --http-port 5001
ml-deploy 2.0.0 derives the routes from __api_prefix__, so predict is POST /ml/api/predict.
Request: {"data": [[30 floats], ...], "names": [30 feature names]}.
Response: create_response(target={"y_predicted", "probabilities"}, input=data), to which
ml-deploy adds "model" and "version".

Two adjustments, both outside the request path:
- ml-deploy 2.0.0 never calls load() (the call in its gunicorn application is commented out),
  so the constructor calls it, in the gunicorn master before the fork, as a 2.0.0 user must.
- ml-deploy binds gunicorn to 0.0.0.0; the benchmark keeps everything on loopback, so the bind
  host is replaced by BENCH_BIND_HOST (default 127.0.0.1) with the same port.
"""
import os

import joblib
import pandas as pd
from ml_deploy.gunicorn import app as gunicorn_app
from ml_deploy.implements.serving import Serving
from ml_deploy.rest.utils import create_response


class BreastCancerModel(Serving):
    __name__ = "breast-cancer"
    __version__ = "1.0.0"
    __api_prefix__ = "ml"

    def __init__(self):
        self.pipeline = None
        super().__init__()
        self.load()

    def load(self):
        self.pipeline = joblib.load(os.environ["BENCH_PIPELINE"])

    def predict(self, request):
        rows = request["data"]
        names = request.get("names") or None
        features = pd.DataFrame(rows, columns=names)
        predicted = self.pipeline.predict(features)
        probabilities = self.pipeline.predict_proba(features)
        return create_response(
            target={
                "y_predicted": predicted.tolist(),
                "probabilities": probabilities.tolist(),
            },
            input=rows,
        )

    def run(self):
        _bind_on_loopback()
        super().run()


def _bind_on_loopback():
    """Makes ml-deploy's gunicorn application listen on BENCH_BIND_HOST instead of 0.0.0.0."""
    host = os.environ.get("BENCH_BIND_HOST", "127.0.0.1")
    base_load_config = gunicorn_app.StandaloneApplication.load_config

    def load_config(application):
        base_load_config(application)
        port = str(application.options["bind"]).rsplit(":", 1)[1]
        application.cfg.set("bind", f"{host}:{port}")

    gunicorn_app.StandaloneApplication.load_config = load_config
