class DataValidationException(Exception):
    pass


class ModelValidationException(Exception):
    pass


class PipelineException(Exception):
    pass


class ConfigSchemaException(Exception):
    pass
