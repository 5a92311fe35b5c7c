import importlib
import os


def load_class(interface_name):
    module_name, _, class_name = interface_name.rpartition(".")
    if not module_name:
        module_name = class_name = interface_name
    return getattr(importlib.import_module(module_name), class_name)


def bool_as_str(value):
    if not isinstance(value, bool):
        return str(value).lower() in ("1", "true", "t")
    return value


def getenv(*names, default=None):
    for name in names:
        if name in os.environ:
            return os.environ[name]
    return default


def bool_env_var(*names, default=False):
    value = getenv(*names)
    return default if value is None else bool_as_str(value)
