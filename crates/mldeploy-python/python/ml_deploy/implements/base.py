from abc import ABC

import ml_deploy
from ml_deploy.rest.utils import check_return_model_md, process_api_prefix


class BaseDeploy(ABC):
    """ml-deploy 2.0.0's base: model metadata, `self.app` (the Flask app for the class's own
    routes), `self.metric`. mldeploy serves predict, feedback and /metrics itself."""

    __name__ = None
    __version__ = None
    __api_prefix__ = None

    def __init__(self) -> None:
        super().__init__()
        self.app_debug = False
        self.mode = ml_deploy.app_config.mode
        self.setup_md()
        self.metric = ml_deploy._get_metric()
        # Metrics declared on the model class itself, as well as on a metric_class.
        if callable(getattr(self, "register", None)):
            self.metric.register = self.register
            self.metric.register_metrics()

    @property
    def app(self):
        return ml_deploy._get_app()

    @property
    def producer(self):
        return None

    def setup_logger(self):
        pass

    def setup_md(self):
        self.model_name = check_return_model_md(self, None, "__name__")
        self.model_version = check_return_model_md(self, None, "__version__")
        self.api_prefix = getattr(self, "__api_prefix__", None)
        self.api_prefix_processed = process_api_prefix(self.api_prefix) if self.api_prefix else "/api/ml"

    def api_resources(self):
        """ml-deploy registered its predict, feedback and metrics routes here; mldeploy serves
        those. A subclass that overrides this to add its own routes keeps working."""

    def after_request(self, response):
        return response

    def add_model_md(self, data):
        data["model"] = self.model_name
        data["version"] = self.model_version
        return data

    def dev_run(self):
        raise RuntimeError("mldeploy serves this class: start it with `mldeploy serve`")

    prod_run = dev_run
    run = dev_run
