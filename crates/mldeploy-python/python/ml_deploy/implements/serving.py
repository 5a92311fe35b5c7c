from abc import ABC, abstractmethod

from ml_deploy.implements.base import BaseDeploy


class Serving(BaseDeploy, ABC):
    def __init__(self) -> None:
        super().__init__()

    @abstractmethod
    def load(self):
        pass
