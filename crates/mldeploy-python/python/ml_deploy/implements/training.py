from ml_deploy.implements.base import BaseDeploy


class Training(BaseDeploy):
    """ml-deploy's training side (MLflow, /train) is not served by mldeploy."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError("ml-deploy's Training (MLflow, /train) is not served by mldeploy")
