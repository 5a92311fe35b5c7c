from ml_deploy.metrics.models import Metric  # noqa: F401
