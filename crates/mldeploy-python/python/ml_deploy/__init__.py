"""mldeploy's stand-in for the ml-deploy package: the 2.0.0 API interface classes import,
without its side effects.

Importing it reads no config file, parses no command line, creates no Kafka producer and
starts no server. `app` (a Flask app, for the class's own routes) and `metric` are made on
first use, so a class that adds no route needs no Flask.
"""
import types as _types

__version__ = "2.0.0+mldeploy"

# ml-deploy's `app:` settings. mldeploy serves the model: these are informative only.
app_config = _types.SimpleNamespace(
    interface=None, interface_name=None, metric_class=None, kafka_broker=None,
    http_port=5000, mode="production", debug=False, app_debug=False, log_level="INFO",
    workers=1, worker_class="sync", gunicorn_timeout=5000, threads=1, max_requests=0,
    max_requests_jitter=0, keepalive=2, single_threaded=0, pidfile=None,
    gunicorn_access_log="false",
)
pipeline_config = _types.SimpleNamespace(data=None, model=None)
producer = None  # mldeploy sends the events itself

_app = None
_metric = None
# (import name, root path) of the app: the interface's module and directory (set by mldeploy).
_app_home = ("ml_deploy", None)


def _reset():
    """A fresh app and metric registry for the next interface class (set by mldeploy)."""
    global _app, _metric
    _app = None
    _metric = None


def _get_app():
    global _app
    if _app is None:
        import os
        from flask import Flask
        name, root = _app_home
        _app = Flask(name, root_path=root or os.getcwd())
    return _app


def _get_metric():
    global _metric
    if _metric is None:
        from ml_deploy.metrics.models import Metric
        cls = Metric
        if app_config.metric_class:
            from ml_deploy.utils import load_class
            cls = load_class(app_config.metric_class)
        _metric = cls()
    return _metric


def __getattr__(name):  # PEP 562: `from ml_deploy import app, metric`
    if name == "app":
        return _get_app()
    if name == "metric":
        return _get_metric()
    raise AttributeError("module 'ml_deploy' has no attribute %r" % name)
