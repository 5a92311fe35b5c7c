"""The benchmark model as a lean ml-deploy 2.0.0 interface class: the same breast-cancer
pipeline, fed a numpy array instead of a DataFrame, answering only what it predicts.

`np.asarray(request["data"])`, one `predict_proba` call, the classes taken from it, and a
small answer (no echo of the input). This is about the cheapest a user's class can make a real
prediction in ml-deploy, so the ratio against it is the fair one; the benchmark's class
(`ml_deploy_model.py`: DataFrame, predict and predict_proba, input echoed) serves 4-5x fewer
requests.

    PYTHONPATH=scripts/bench BENCH_PIPELINE=.../pipeline.joblib ml-deploy \
        --config scripts/bench/ml-deploy-lean-config.yaml --mode production \
        --workers 2 --threads 2 --http-port PORT

Same route as the benchmark class (POST /ml/api/predict) and the same two adjustments outside
the request path (load() in the constructor, bind on loopback).
"""
import warnings

import numpy as np
from ml_deploy.rest.utils import create_response
from ml_deploy_model import BreastCancerModel


class LeanPredictModel(BreastCancerModel):
    """The benchmark class (same name, version, route, loading and bind) with a lean predict."""

    def load(self):
        super().load()
        # Fitted on a DataFrame: an array has no feature names, which scikit-learn warns about
        # on every call; the columns are in the fitted order.
        warnings.filterwarnings("ignore", message="X does not have valid feature names")

    def predict(self, request):
        x = np.asarray(request["data"], dtype=float)
        probabilities = self.pipeline.predict_proba(x)
        classes = self.pipeline.classes_[probabilities.argmax(axis=1)]
        return create_response(
            target={"y_predicted": classes.tolist(), "probabilities": probabilities.tolist()}
        )
