"""ml-deploy's request and response helpers."""
import threading
from typing import List

from ml_deploy.errors import ModelMetadataError

# The request mldeploy is serving on this thread, for get_all_request() inside predict.
_current = threading.local()


def create_response(target: dict = {}, input: list = [], list_metrics: List[dict] = [],
                    topics: List[str] = []) -> dict:
    return {"target": target, "input": input, "list_metrics": list_metrics, "topics": topics}


# The README's metrics example calls ResponseFormat(...), which no ml-deploy release defines.
ResponseFormat = create_response


def predict_request(X: list, names: List[str] = []) -> dict:
    return {"X": X, "names": names}


def feedback_request(X: list, y_true: list, y_predicted: list) -> dict:
    return {"X": X, "y_true": y_true, "y_predicted": y_predicted}


def check_return_model_md(user_model, arg_value, metadata):
    if arg_value not in (None, "", "None"):
        return arg_value
    value = getattr(user_model, metadata, None)
    if value in (None, "", "None"):
        raise ModelMetadataError
    return value


def process_api_prefix(api_prefix):
    """`My_Model` -> `/my-model/api`, as ml-deploy 2.0.0 derives a class's routes."""
    for char in ("_", " "):
        api_prefix = api_prefix.replace(char, "-")
    return "/%s/api" % api_prefix.lower()


def threads(threads: int, single_threaded: bool) -> int:
    return 1 if single_threaded else threads


def post_worker_init(worker):
    pass


def cursor_rows_as_dicts(cursor):
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor]


def get_all_request():
    """The request being served: inside predict, the decoded body mldeploy passed (JSON, or the
    fields and files of a multipart form); inside a Flask route, Flask's request."""
    data = getattr(_current, "data", None)
    if data is not None:
        return data
    from flask import request
    if request.content_type is not None and "multipart/form-data" in request.content_type:
        return get_multi_form_data_request()
    return get_json_request()


def get_json_request():
    data = getattr(_current, "data", None)
    if data is not None:
        return data
    from flask import request
    return request.get_json(force=True)


def get_multi_form_data_request():
    from flask import request
    form = {key: request.form.get(key) for key in request.form}
    for key in request.files:
        form[key] = request.files[key]
    return form
