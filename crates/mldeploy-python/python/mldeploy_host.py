"""The Python side of an mldeploy worker serving an ml-deploy interface class.

mldeploy-python loads this module into the interpreter of each worker (after the fork) and calls
only the functions below: the Rust side attaches, calls, and converts. Nothing here starts a
server, a thread or a Kafka producer.
"""
import importlib.abc
import importlib.util
import inspect
import io
import os
import sys
import threading
import traceback

# ---------------------------------------------------------------------------------------------
# The process: BLAS threads, the environment, stdio.
# ---------------------------------------------------------------------------------------------

BLAS_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def prepare(blas_threads, venv, site_packages, include_system, shim_sources, sink):
    """Once per process, before any user code: returns what was decided, for the log."""
    # Thread pools of OpenBLAS, MKL and OpenMP size themselves from these when their library
    # loads (numpy's import): N workers each with one pool per core would oversubscribe the
    # machine. A value the user exported wins. os.environ[...] = v calls putenv(), so the C
    # libraries see it.
    for name in BLAS_VARIABLES:
        os.environ.setdefault(name, str(blas_threads))
    if venv is not None:
        _use_venv(venv, site_packages, include_system)
    _own_executable()
    for stream in (sys.stdout, sys.stderr):
        # No Py_Finalize ever runs in a worker: block-buffered output would be lost.
        try:
            stream.reconfigure(line_buffering=True)
        except Exception:
            pass
    import faulthandler
    # A crash in C code prints every thread's Python stack, then the worker dies of the signal
    # as before (the master replaces it).
    faulthandler.enable(all_threads=True)
    sys.argv = ["mldeploy"]
    _install_shim(shim_sources)
    importlib.import_module("ml_deploy.metrics.models")._sink = sink
    return {
        "python": sys.version.split()[0],
        "prefix": sys.prefix,
        "executable": sys.executable,
        "blas_threads": {name: os.environ[name] for name in BLAS_VARIABLES},
    }


def _use_venv(venv, site_packages, include_system):
    """Make the running interpreter behave as VENV/bin/python, as site.venv() would have."""
    norm = os.path.realpath
    if norm(sys.prefix) != norm(venv):
        import site
        site_packages = norm(site_packages)
        base_sites = {norm(p) for p in site.getsitepackages()} - {site_packages}
        user_site = norm(site.getusersitepackages()) if site.ENABLE_USER_SITE else None
        sys.path[:] = [p for p in sys.path if norm(p) != site_packages]
        before = list(sys.path)
        site.addsitedir(site_packages)  # appends it and what its .pth files add
        added = [p for p in sys.path if p not in before]
        rest = [p for p in before if p not in added]
        if include_system:
            first_site = next((i for i, p in enumerate(rest)
                               if norm(p) in base_sites or norm(p) == user_site), len(rest))
            sys.path[:] = rest[:first_site] + added + rest[first_site:]
        else:
            sys.path[:] = [p for p in rest if norm(p) not in base_sites and norm(p) != user_site] + added
        sys.prefix = sys.exec_prefix = venv
    for name in ("python3", "python"):
        exe = os.path.join(venv, "bin", name)
        if os.path.exists(exe):
            sys.executable = exe
            break


def _own_executable():
    """multiprocessing's spawn and joblib's loky start sys.executable: a real Python of this
    environment, never mldeploy."""
    bindir = os.path.join(sys.prefix, "bin") + os.sep
    if not (sys.executable and os.path.abspath(sys.executable).startswith(bindir)):
        for name in ("python%d.%d" % sys.version_info[:2], "python3"):
            exe = os.path.join(sys.prefix, "bin", name)
            if os.path.exists(exe):
                sys.executable = exe
                break
    try:
        import multiprocessing
        multiprocessing.set_executable(sys.executable)
    except Exception:
        pass


def shutdown():
    """At a graceful stop (no Py_Finalize): what finalisation would run first. threading's exit
    hooks (concurrent.futures and loky executors stop there) and a join of non-daemon threads,
    then the atexit handlers (logging.shutdown among them), then a flush."""
    import atexit
    try:
        if threading.current_thread() is threading.main_thread():
            threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass


def format_exception(exc, tb):
    return "".join(traceback.format_exception(type(exc), exc, tb))


# ---------------------------------------------------------------------------------------------
# ml_deploy: mldeploy's side-effect-free stand-in, ahead of any installed ml-deploy.
# ---------------------------------------------------------------------------------------------

class _ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, sources):
        self.sources = sources  # module name -> (source, is_package)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.sources:
            return None
        _, is_package = self.sources[fullname]
        return importlib.util.spec_from_loader(fullname, self, is_package=is_package,
                                               origin="mldeploy:" + fullname)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        source, is_package = self.sources[module.__name__]
        if is_package:
            module.__path__ = []
        filename = "<mldeploy %s>" % module.__name__
        import linecache  # tracebacks through the stand-in show its lines
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        exec(compile(source, filename, "exec"), module.__dict__)


def _install_shim(sources):
    # Importing the real ml-deploy reads config.yaml, parses sys.argv, creates a Flask app and
    # possibly a Kafka producer, and imports mlflow: the stand-in comes first on sys.meta_path.
    for name in list(sys.modules):
        if name == "ml_deploy" or name.startswith("ml_deploy."):
            del sys.modules[name]
    sys.meta_path.insert(0, _ShimFinder(dict(sources)))


# ---------------------------------------------------------------------------------------------
# The user's class.
# ---------------------------------------------------------------------------------------------

class LoadError(Exception):
    """A boot failure; `stage`: import, class, init, metadata, load or routes."""

    def __init__(self, stage, message, tb=""):
        super().__init__(message)
        self.stage = stage
        self.tb = tb


def _failed(stage, exc):
    return LoadError(stage, "%s: %s" % (type(exc).__name__, exc), traceback.format_exc())


def _positional_count(func):
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    count = 0
    for p in parameters:
        if p.kind == p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


def _method(instance, name, with_self):
    """instance.NAME, coping with the README's examples, which write `def feedback(input_data,
    y_true, y_predicted)` and `def endpoints(app)` inside the class without `self`."""
    raw = inspect.getattr_static(type(instance), name, None)
    if raw is None:
        return getattr(instance, name, None)
    if inspect.isfunction(raw) and _positional_count(raw) == with_self - 1:
        return raw
    return getattr(instance, name)


def _import_file(path):
    path = os.path.abspath(path)
    name = os.path.splitext(os.path.basename(path))[0]
    directory = os.path.dirname(path)
    # The file's directory first (it may import its siblings), and the working directory, as
    # ml-deploy appended it.
    for entry in (os.getcwd(), directory):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ImportError("cannot import %s" % path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # pickles naming `interface.Class` resolve
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module, directory


def _pick_class(module, class_name):
    if class_name:
        cls = getattr(module, class_name, None)
        if not inspect.isclass(cls):
            raise LookupError("%s has no class %s" % (module.__name__, class_name))
        return cls
    found = [v for v in vars(module).values()
             if inspect.isclass(v) and v.__module__ == module.__name__ and hasattr(v, "predict")]
    if len(found) == 1:
        return found[0]
    names = ", ".join(sorted(c.__qualname__ for c in found)) or "none"
    raise LookupError("%s defines %d classes with a predict method (%s): name one as FILE.py:ClassName"
                      % (module.__name__, len(found), names))


def _metadata(instance, attribute):
    # From the instance: `__name__ = "x"` in a class body is visible there only (the class's own
    # __name__ is type's descriptor).
    value = getattr(instance, attribute, None)
    return None if value in (None, "", "None") else str(value)


def load(interface, metric_class):
    """Import the interface, instantiate its class, call load(), build its Flask routes.

    interface: FILE.py, FILE.py:Class, or ml-deploy's `module.Class` / `Module`.
    Returns a dict of what the Rust side needs.
    """
    import ml_deploy
    import ml_deploy.rest.utils as rest_utils
    from ml_deploy.implements.base import BaseDeploy

    file, _, class_name = interface.partition(".py:")
    if class_name:
        file += ".py"
    is_file = file.endswith(".py")
    # Each class gets its own Flask app and metric registry (several models in one worker).
    ml_deploy.app_config.metric_class = metric_class
    ml_deploy._reset()
    try:
        if is_file:
            if not os.path.isfile(file):
                raise FileNotFoundError("no such file: %s" % file)
            ml_deploy._app_home = (os.path.splitext(os.path.basename(file))[0],
                                   os.path.dirname(os.path.abspath(file)))
            module, _ = _import_file(file)
        else:
            # ml-deploy's `interface`: module.Class, or Module naming a class of the same name.
            if os.getcwd() not in sys.path:
                sys.path.append(os.getcwd())
            module_name, _, class_name = interface.rpartition(".")
            if not module_name:
                module_name = class_name = interface
            ml_deploy._app_home = (module_name, os.getcwd())
            module = importlib.import_module(module_name)
    except BaseException as e:
        raise _failed("import", e) from None
    try:
        cls = _pick_class(module, class_name or None)
    except LookupError as e:
        raise LoadError("class", str(e)) from None
    try:
        instance = cls()
    except BaseException as e:
        raise _failed("init", e) from None

    serving = isinstance(instance, BaseDeploy)
    name, version = _metadata(instance, "__name__"), _metadata(instance, "__version__")
    if name is None or version is None:
        raise LoadError("metadata", "Model name and version should be provided: set __name__ and "
                        "__version__ on %s" % cls.__qualname__)
    api_prefix = _metadata(instance, "__api_prefix__") if serving else None

    metric = ml_deploy._get_metric()
    try:
        if not serving and callable(getattr(instance, "register", None)):
            # The README's class declares its metrics on itself; Serving does it in __init__.
            metric.register = instance.register
            metric.register_metrics()
        if callable(getattr(instance, "load", None)):
            instance.load()
    except BaseException as e:
        raise _failed("load", e) from None

    try:
        app = _flask_app(instance, serving)
        routes = _routes(app) if app is not None else []
    except BaseException as e:
        raise _failed("routes", e) from None

    feedback = _method(instance, "feedback", 4) if callable(getattr(instance, "feedback", None)) else None
    return {
        "name": name,
        "version": version,
        "class": cls.__qualname__,
        "serving": serving,
        "api_prefix": rest_utils.process_api_prefix(api_prefix) if api_prefix else None,
        "predict": instance.predict,
        "feedback": feedback,
        "app": app,
        "routes": routes,
        "metrics": metric.declared(),
    }


# ---------------------------------------------------------------------------------------------
# Calls.
# ---------------------------------------------------------------------------------------------

def predict_request(predict, request):
    """2.0.0's predict(request); get_all_request() answers this request during the call (it read
    flask.request in ml-deploy)."""
    current = sys.modules["ml_deploy.rest.utils"]._current
    current.data = request
    try:
        return predict(request)
    finally:
        current.data = None


def form_request(fields, files):
    """A multipart request as ml-deploy's get_all_request() gave it: the text fields, and each
    file as a werkzeug FileStorage under its field name."""
    request = dict(fields)
    try:
        from werkzeug.datastructures import FileStorage
    except ImportError:
        FileStorage = None
    for field, filename, content_type, data in files:
        if FileStorage is not None:
            request[field] = FileStorage(io.BytesIO(data), filename=filename, name=field,
                                         content_type=content_type)
        else:
            request[field] = {"filename": filename, "content_type": content_type, "data": data}
    return request


# ---------------------------------------------------------------------------------------------
# Flask, in process, through WSGI.
# ---------------------------------------------------------------------------------------------

def _flask_app(instance, serving):
    """The Flask app holding the class's routes, or None when it has none."""
    import ml_deploy
    if serving and callable(getattr(instance, "api_resources", None)):
        # ml-deploy's main() called api_resources(); classes override it to add routes.
        instance.api_resources()
    endpoints = _method(instance, "endpoints", 2) if callable(getattr(instance, "endpoints", None)) else None
    if endpoints is not None:
        endpoints(ml_deploy._get_app())
    app = ml_deploy._app
    if app is None:
        return None
    # An exception no errorhandler of the class takes comes out of the call with its traceback:
    # it is logged, and the client gets mldeploy's JSON 500.
    app.config["PROPAGATE_EXCEPTIONS"] = True
    return app


def _pattern(rule):
    """A Flask rule as an mldeploy route pattern that matches at least what the rule does:
    a segment with a converter becomes `{name}`, one with a `path` converter (or anything after
    it) `{name*}`. Flask itself then matches the request (404 and 405 are its own)."""
    out = []
    for index, segment in enumerate(rule.split("/")[1:]):
        if "<" not in segment:
            out.append(segment)
            continue
        inner = segment[segment.index("<") + 1:].split(">", 1)[0]
        converter, _, variable = inner.rpartition(":")
        variable = variable if segment.startswith("<") and segment.endswith(">") else "p%d" % index
        if converter.split("(", 1)[0] == "path":
            out.append("{%s*}" % variable)
            break
        out.append("{%s}" % variable)
    return "/" + "/".join(out)


def _routes(app):
    """[(pattern, [methods])] of the class's routes, one entry per pattern (Flask's static route
    left out: mldeploy serves no files)."""
    patterns = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        methods = patterns.setdefault(_pattern(rule.rule), set())
        methods.update(m for m in (rule.methods or ()) if m != "OPTIONS")
    return [(pattern, sorted(methods)) for pattern, methods in patterns.items()]


def wsgi_call(app, method, path, query, headers, body):
    """Call APP as a WSGI server would: (status, [(name, value)], body bytes)."""
    from urllib.parse import unquote_to_bytes
    environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        # PEP 3333: the path percent-decoded, its bytes as a latin-1 string.
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.upper().replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
        elif key == "HOST":
            environ["HTTP_HOST"] = value
            environ["SERVER_NAME"] = value.rsplit(":", 1)[0]
        elif key != "CONTENT_LENGTH":
            key = "HTTP_" + key
            environ[key] = environ[key] + "," + value if key in environ else value
    started = []
    chunks = []

    def start_response(status, response_headers, exc_info=None):
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [status, response_headers]
        return chunks.append

    result = app(environ, start_response)
    try:
        for chunk in result:
            if chunk:
                chunks.append(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, response_headers = started
    return int(status.split(" ", 1)[0]), list(response_headers), b"".join(chunks)
