from ml_deploy.implements.base import BaseDeploy  # noqa: F401
from ml_deploy.implements.serving import Serving  # noqa: F401
from ml_deploy.implements.training import Training  # noqa: F401
