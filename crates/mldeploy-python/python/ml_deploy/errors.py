class ModelMetadataError(Exception):
    def __init__(self, msg=None, *args):
        super().__init__("Model name and version should be provided" if msg is None else msg, *args)


class ModelMethodRequired(Exception):
    def __init__(self, msg=None, *args):
        super().__init__("Some required method is not defined" if msg is None else msg, *args)
