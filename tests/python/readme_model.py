"""An interface class as ml-deploy's README writes it: a plain class with load(),
predict(X, names), feedback(...) and endpoints(app) (the README's spelling: without `self`).

The model is a scikit-learn pipeline fitted on the breast-cancer data scikit-learn ships.
"""
from flask import abort, jsonify, request
from ml_deploy.rest.utils import create_response


class UserModel:
    __name__ = "breast-cancer-readme"
    __version__ = "1.0.0"

    def __init__(self):
        self.model = None
        # ml-deploy's README keeps the labels it is given: a list per worker process.
        self.y_true = []

    def load(self):
        from sklearn.datasets import load_breast_cancer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X, y = load_breast_cancer(return_X_y=True)
        self.model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, y)

    def predict(self, X, names):
        return create_response(
            input=X,
            target={
                "y_predicted": self.model.predict(X),
                "probabilities": self.model.predict_proba(X),
                "names": names,
            },
        )

    def feedback(self, input_data, y_true, y_predicted):
        self.y_true.extend(y_true)
        right = sum(1 for t, p in zip(y_true, y_predicted or []) if t == p)
        return create_response(
            input=input_data,
            target={"y_true": y_true, "seen_by_this_worker": len(self.y_true)},
            list_metrics=[{"name": "Accuracy", "type": "GAUGE", "value": right / len(y_true)}],
            topics=["labels"],
        )

    def endpoints(app):
        @app.route("/test", methods=["GET"])
        def test():
            return "test"

        @app.route("/items/<int:item_id>", methods=["GET", "PUT"])
        def item(item_id):
            if item_id == 404:
                abort(404)
            return jsonify(id=item_id, method=request.method, q=request.args.get("q"),
                           header=request.headers.get("X-Test"), body=request.get_json(silent=True))

        @app.route("/files/<path:name>")
        def files(name):
            return jsonify(name=name)

        @app.route("/boom")
        def boom():
            raise RuntimeError("boom in a route")
