"""An ml-deploy 2.0.0 interface class: a Serving subclass with __name__, __version__ and
__api_prefix__ (its routes live under /breast-cancer/api), predict(request) with the whole
request dict, a route of its own on self.app, and metrics declared by register().
"""
import numpy as np
from flask import jsonify
from ml_deploy.implements import Serving
from ml_deploy.rest.utils import create_response, get_all_request


class BreastCancer(Serving):
    __name__ = "Breast_Cancer"
    __version__ = "2.1"
    __api_prefix__ = "Breast_Cancer"

    def __init__(self):
        super().__init__()
        self.model = None

        @self.app.route(f"{self.api_prefix_processed}/coefficients/<int:index>", methods=["GET"])
        def coefficient(index):
            coefficients = self.model[-1].coef_[0]
            return jsonify(index=index, value=float(coefficients[index]))

    def register(self):
        return [
            {"name": "breast_cancer_rows_total", "type": "COUNTER", "dimension": ["predicted"],
             "description": "Rows predicted, by predicted class."},
            {"name": "breast_cancer_last_probability", "type": "GAUGE",
             "description": "Probability of the last row predicted."},
        ]

    def load(self):
        from sklearn.datasets import load_breast_cancer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X, y = load_breast_cancer(return_X_y=True)
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)

    def predict(self, request):
        assert get_all_request() is request
        X = np.asarray(request["data"], dtype=float)
        predicted = self.model.predict(X)
        probabilities = self.model.predict_proba(X)[:, 1]
        for label in predicted:
            self.metric.record("breast_cancer_rows_total", dim_vals=[str(label)], value=1)
        self.metric.record("breast_cancer_last_probability", value=float(probabilities[-1]))
        return create_response(
            input=request["data"],
            target={"y_predicted": predicted, "probability": probabilities,
                    "params": request.get("params", {})},
        )

    def feedback(self, data, y_true, y_predicted):
        return create_response(target={"rows": len(data), "y_true": y_true, "y_predicted": y_predicted})
