"""ml-deploy's gunicorn applications. mldeploy is the server: these never run; classes that
import or patch them (to change how ml-deploy bound its port, say) still import."""


class StandaloneApplication:
    def __init__(self, app, options=None):
        self.options = options or {}
        self.application = app

    def load_config(self):
        pass

    def load(self):
        return self.application

    def run(self):
        raise RuntimeError("mldeploy serves this class: start it with `mldeploy serve`")


class UserModelApplication(StandaloneApplication):
    pass
