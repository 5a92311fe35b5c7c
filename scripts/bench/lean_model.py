"""A Serving class whose predict costs next to nothing: with it, the servers' own cost per
request shows (the benchmark's class spends ~3 ms of CPU per call in pandas and scikit-learn,
which caps every server serving it). Same route as the benchmark class: POST /ml/api/predict.

ml-deploy: ml-deploy --config scripts/bench/ml-deploy-config.yaml --interface-name
    lean_model.LeanModel ... (PYTHONPATH=scripts/bench); mldeploy: mldeploy serve
    scripts/bench/lean_model.py --python VENV ...
"""
from ml_deploy.implements.serving import Serving
from ml_deploy.rest.utils import create_response
from ml_deploy_model import _bind_on_loopback


class LeanModel(Serving):
    __name__ = "lean"
    __version__ = "1.0.0"
    __api_prefix__ = "ml"

    def load(self):
        pass

    def predict(self, request):
        rows = request["data"]
        return create_response(target={"y_predicted": [0] * len(rows)}, input=rows)

    def run(self):
        # ml-deploy only (it binds 0.0.0.0 otherwise); mldeploy never calls run().
        _bind_on_loopback()
        super().run()
