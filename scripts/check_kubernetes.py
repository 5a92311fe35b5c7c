#!/usr/bin/env python3
"""Check the Kubernetes manifests of configs/kubernetes before anyone applies them.

    python3 scripts/check_kubernetes.py [-k 1.30]... [PATH...]

PATH: YAML files or directories (their *.yaml and *.yml, recursively); default
configs/kubernetes. Exit status: 0 all good; 1 a manifest is wrong (every problem is printed,
one per line, "error: FILE: Kind/name: field: what"); 2 bad usage; 77 a Python package this
check needs is missing (PyYAML and kubernetes-validate: pip install kubernetes-validate==1.37.0).

What is checked:
- Kubernetes kinds: strictly (an unknown field is an error) against the schemas that the
  kubernetes-validate package ships, for Kubernetes 1.30 (the oldest release these manifests
  support: the preStop sleep action) and the newest release the package knows.
- KServe kinds (no schema shipped): ServingRuntime / ClusterServingRuntime
  (serving.kserve.io/v1alpha1) and InferenceService (serving.kserve.io/v1beta1): the fields
  KServe documents, their types, unknown fields, and their containers against the Kubernetes
  Container schema.
- mldeploy's own contract, wherever a pod runs mldeploy: it binds a declared container port on
  every interface; readiness on /v2/health/ready, liveness on /health; a preStop delay and a
  termination grace period longer than that delay plus graceful_timeout; workers equal to the
  CPU request (rounded up); a read-only root filesystem as a non-root user; the model
  directory on a mounted volume. Services and PodDisruptionBudgets must select those pods.
Settings are read the way mldeploy reads them: flags, then MLDEPLOY_* variables, then the TOML
file given by --config when it comes from a ConfigMap in the checked files, then defaults.
"""

import argparse
import math
import os
import re
import sys
from pathlib import Path

MISSING_DEPENDENCY = 77

try:
    import yaml
    import kubernetes_validate
    from kubernetes_validate.utils import VersionNotSupportedError
except ImportError as e:  # pragma: no cover - depends on the machine
    print(
        f"check_kubernetes: a Python package is missing ({e.name}): "
        "python3 -m pip install kubernetes-validate==1.37.0",
        file=sys.stderr,
    )
    sys.exit(MISSING_DEPENDENCY)

try:
    import tomllib
except ImportError:  # Python < 3.11
    try:
        import tomli as tomllib
    except ImportError:
        print("check_kubernetes: needs Python 3.11+ (tomllib) or the tomli package", file=sys.stderr)
        sys.exit(MISSING_DEPENDENCY)

# The oldest Kubernetes release the manifests support (lifecycle.preStop.sleep is on by default
# from 1.30); the newest one the installed kubernetes-validate knows is checked as well.
OLDEST_KUBERNETES = "1.30"

KSERVE_GROUP = "serving.kserve.io"
KSERVE_HTTP_PORT = 8080  # KServe's default REST port for a model server
KSERVE_MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts storageUri
KSERVE_CONTAINER = "kserve-container"  # the runtime container KServe merges the predictor into
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
# Formats mldeploy serves; the ServingRuntime must list them all.
MLDEPLOY_FORMATS = {"mldeploy", "sklearn", "xgboost", "lightgbm", "onnx"}

# Field names from KServe's CRDs (serving.kserve.io_servingruntimes, _inferenceservices).
SERVING_RUNTIME_SPEC = {
    "affinity", "annotations", "builtInAdapter", "containers", "disabled", "grpcDataEndpoint",
    "grpcEndpoint", "hostIPC", "httpDataEndpoint", "imagePullSecrets", "labels", "multiModel",
    "nodeSelector", "protocolVersions", "replicas", "resourceClaims", "schedulerName",
    "storageHelper", "supportedModelFormats", "tolerations", "volumes", "workerSpec",
}
SUPPORTED_MODEL_FORMAT = {"name", "version", "autoSelect", "priority"}
INFERENCE_SERVICE_SPEC = {"predictor", "transformer", "explainer", "canary"}
# spec.predictor.model: a Kubernetes Container plus these KServe fields.
MODEL_SPEC_KSERVE = {
    "modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage",
    "confidential",
}
MODEL_FORMAT = {"name", "version"}
PREDICTOR_FRAMEWORKS = {
    "sklearn", "xgboost", "lightgbm", "onnx", "tensorflow", "pytorch", "triton", "pmml",
    "paddle", "huggingface",
}

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
URI_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
TOML_SECTIONS = ("server", "http", "log", "kafka", "metrics")
# ml-deploy's environment names that mldeploy still reads (MLDEPLOY_* wins over them).
LEGACY_ENV = {"workers": ["GUNICORN_WORKERS"], "threads": ["GUNICORN_THREADS", "GUNICORN_THREAD"],
              "kafka_broker": ["KAFKA_BROKER"], "log_level": ["LOG_LEVEL"],
              "app_debug": ["APP_DEBUG"], "access_log": ["GUNICORN_ACCESS_LOG"]}
DEFAULTS = {"bind": ["127.0.0.1:5000"], "workers": 1, "graceful_timeout": 30}
# Flags that may stand alone (`--app-debug`) or take a boolean (`--app-debug false`).
SWITCHES = {"--app-debug", "--access-log", "--gunicorn-access-log", "--metrics-enabled"}
BOOLEAN_WORDS = {"true", "false", "t", "f", "1", "0", "yes", "no", "on", "off"}


class Problems:
    def __init__(self):
        self.lines = []

    def add(self, where, message):
        self.lines.append(f"error: {where}: {message}")


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; a duplicated key is a mistake here."""


def _mapping_without_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark,
                f"found duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


class Resource:
    def __init__(self, path, doc):
        self.path = path
        self.doc = doc

    @property
    def kind(self):
        return self.doc.get("kind")

    @property
    def name(self):
        meta = self.doc.get("metadata")
        return meta.get("name") if isinstance(meta, dict) else None

    @property
    def where(self):
        return f"{self.path}: {self.kind}/{self.name}"


def yaml_files(paths):
    files = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(str(p))
    return files


def load(files, problems):
    resources = []
    for f in files:
        try:
            docs = list(yaml.load_all(f.read_text(), Loader=UniqueKeyLoader))
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problems.add(f, f"not valid YAML: {e.problem}{where}")
            continue
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            problems.add(f, f"not valid YAML: {e}")
            continue
        for i, doc in enumerate(docs):
            if doc is None:
                continue
            if not isinstance(doc, dict):
                problems.add(f, f"document {i + 1} is not a mapping")
                continue
            resources.append(Resource(f, doc))
    return resources


def check_identity(r, problems):
    ok = True
    for field in ("apiVersion", "kind"):
        if not isinstance(r.doc.get(field), str) or not r.doc.get(field):
            problems.add(r.path, f"{field} missing or not a string")
            ok = False
    meta = r.doc.get("metadata")
    if not isinstance(meta, dict):
        problems.add(r.path, f"{r.kind}: metadata missing or not a mapping")
        return False
    name = meta.get("name")
    if not isinstance(name, str) or not DNS_SUBDOMAIN.match(name) or len(name) > 253:
        problems.add(r.path, f"{r.kind}: metadata.name {name!r} is not a DNS-1123 name")
    for field in ("labels", "annotations"):
        values = meta.get(field, {})
        if not isinstance(values, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in values.items()):
            problems.add(r.where, f"metadata.{field}: keys and values must be strings (quote them)")
    return ok


def json_path(parts):
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def validate_kubernetes(doc, versions, where, problems, prefix=""):
    """Strict schema validation; returns False when a problem was reported."""
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = json_path(list(e.path))
            problems.add(where, f"{prefix}{path}: {e.message} (Kubernetes {e.version} schema)")
            return False
        except kubernetes_validate.SchemaNotFoundError:
            problems.add(where, f"no Kubernetes {version} schema for {doc.get('apiVersion')} "
                                f"{doc.get('kind')}: a misspelt kind or apiVersion, or a custom "
                                "resource this check does not know")
            return False
        except VersionNotSupportedError:
            problems.add(where, f"kubernetes-validate {kubernetes_validate.__version__} does not "
                                f"know Kubernetes {version}")
            return False
    return True


def validate_container(container, versions, where, field, problems):
    """A container inside a KServe resource, checked against the Kubernetes Container schema."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": [container]}}
    for version in versions:
        try:
            kubernetes_validate.validate(pod, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            parts = list(e.path)[3:]  # drop spec.containers[0]
            path = field + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)
            problems.add(where, f"{path}: {e.message} (Kubernetes {e.version} Container schema)")
            return False
    return True


# ---------------------------------------------------------------------------------------------
# mldeploy's settings as the container will see them


def cpu_cores(quantity):
    if isinstance(quantity, (int, float)) and not isinstance(quantity, bool):
        return float(quantity)
    if isinstance(quantity, str):
        m = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", quantity.strip())
        if m:
            return float(m.group(1)) / (1000 if m.group(2) else 1)
    return None


class Settings:
    """Resolves mldeploy settings for one container: flags > MLDEPLOY_* > TOML > defaults."""

    def __init__(self, container, pod, configmaps, where, problems):
        self.container = container
        self.args = [str(a) for a in (container.get("command") or [])[1:]] + \
            [str(a) for a in (container.get("args") or [])]
        self.env = {e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)}
        self.toml = {}
        self.toml_source = None
        self.broken = False  # the config file could not be read: settings unknown
        config = self.flag("config") or self.env_value("config")
        if isinstance(config, list):
            config = config[-1]
        if isinstance(config, str):
            self._load_toml(config, pod, configmaps, where, problems)
        elif config is not None:
            print(f"note: {where}: MLDEPLOY_CONFIG comes from valueFrom; its settings not checked")
            self.broken = True

    def flag(self, key):
        """Every value given with --key (list), or None."""
        name = "--" + key.replace("_", "-")
        values = []
        for i, a in enumerate(self.args):
            if a == name and i + 1 < len(self.args):
                values.append(self.args[i + 1])
            elif a.startswith(name + "="):
                values.append(a[len(name) + 1:])
        return values or None

    def env_name(self, key):
        """The variable that sets `key`: MLDEPLOY_KEY, else one of ml-deploy's old names."""
        for name in ["MLDEPLOY_" + key.upper()] + LEGACY_ENV.get(key, []):
            if name in self.env:
                return name
        return None

    def env_value(self, key):
        name = self.env_name(key)
        if name is None:
            return None
        e = self.env[name]
        return e["value"] if "value" in e else e.get("valueFrom")

    def positional_model(self):
        """MODEL_DIR, the first argument after `serve` that is neither a flag nor its value."""
        args = self.args
        if "serve" not in args:
            return None
        i = args.index("serve") + 1
        while i < len(args):
            a = args[i]
            if a in SWITCHES:
                i += 2 if i + 1 < len(args) and args[i + 1].lower() in BOOLEAN_WORDS else 1
            elif a.startswith("--"):
                i += 1 if "=" in a else 2
            else:
                return a
        return None

    def _load_toml(self, path, pod, configmaps, where, problems):
        volumes = {v.get("name"): v for v in pod.get("volumes") or [] if isinstance(v, dict)}
        for mount in self.container.get("volumeMounts") or []:
            mount_path = str(mount.get("mountPath", "")).rstrip("/")
            sub_path = mount.get("subPath")
            if sub_path and path == mount_path:
                rel = sub_path
            elif not sub_path and path.startswith(mount_path + "/"):
                rel = path[len(mount_path) + 1:]
            else:
                continue
            volume = volumes.get(mount.get("name"), {})
            if "configMap" not in volume:
                return  # a Secret or another volume: not visible to this check
            cm_name = volume["configMap"].get("name")
            items = volume["configMap"].get("items")
            key = rel
            if items:
                key = next((it.get("key") for it in items if it.get("path") == rel), None)
            cm = configmaps.get(cm_name)
            if cm is None:
                problems.add(where, f"--config {path} comes from ConfigMap {cm_name}, which is not "
                                    "in the checked files")
                self.broken = True
                return
            text = (cm.get("data") or {}).get(key)
            if text is None:
                problems.add(where, f"--config {path}: ConfigMap {cm_name} has no key {key!r}")
                self.broken = True
                return
            try:
                self.toml = tomllib.loads(text)
                self.toml_source = f"ConfigMap {cm_name} key {key}"
            except tomllib.TOMLDecodeError as e:
                problems.add(where, f"ConfigMap {cm_name} key {key}: not valid TOML: {e}")
                self.broken = True
            return
        problems.add(where, f"--config {path} is on no mounted volume")
        self.broken = True

    def toml_value(self, key):
        for section in TOML_SECTIONS:
            table = self.toml.get(section)
            if isinstance(table, dict) and key in table:
                return table[key]
        return self.toml.get(key)

    def get(self, key):
        """(value, source): flags > environment > TOML > default."""
        flag = self.flag(key)
        if flag:
            return (flag if key == "bind" else flag[-1]), f"--{key.replace('_', '-')}"
        env = self.env_value(key)
        if env is not None:
            if key == "bind" and isinstance(env, str):
                env = [b.strip() for b in env.split(",") if b.strip()]
            return env, self.env_name(key)
        value = self.toml_value(key)
        if value is not None:
            return value, self.toml_source
        return DEFAULTS.get(key), "default"


def is_mldeploy(container):
    command = container.get("command") or []
    args = container.get("args") or []
    first = command[0] if command else (args[0] if args else "")
    return os.path.basename(str(first)) == "mldeploy" or (not command and args[:1] == ["serve"])


def container_ports(container):
    return {p.get("name"): p.get("containerPort") for p in container.get("ports") or []
            if isinstance(p, dict)}


def probe_port(probe, container):
    port = (probe.get("httpGet") or {}).get("port")
    if isinstance(port, str) and not port.isdigit():
        return container_ports(container).get(port)
    return int(port) if port is not None else None


def bind_ports(settings, where, problems):
    binds, source = settings.get("bind")
    if isinstance(binds, str):
        binds = [binds]
    http_port = settings.get("http_port")[0]
    ports = set()
    for b in binds or []:
        host, _, port = str(b).rpartition(":")
        if host in LOOPBACK:
            problems.add(where, f"bind {b} ({source}) listens on loopback only: neither the "
                                "kubelet's probes nor a Service can reach it; bind 0.0.0.0")
        try:
            ports.add(int(http_port if http_port is not None else port))
        except ValueError:
            problems.add(where, f"bind {b} ({source}) has no port")
    return ports


def check_workers(settings, container, where, problems, allow_downward_api=True):
    workers, source = settings.get("workers")
    cpu = (container.get("resources") or {}).get("requests", {}).get("cpu")
    cores = cpu_cores(cpu)
    if cores is None:
        problems.add(where, "resources.requests.cpu is missing or unreadable: workers are sized "
                            "from it (one worker per core)")
        return
    if isinstance(workers, dict):
        ref = workers.get("resourceFieldRef")
        if not allow_downward_api or not ref:
            problems.add(where, f"{source} must be a number here")
            return
        if ref.get("resource") not in ("requests.cpu", "limits.cpu"):
            problems.add(where, f"{source} comes from {ref.get('resource')}: use requests.cpu")
        if ref.get("containerName") not in (None, container.get("name")):
            problems.add(where, f"{source} reads the CPU of container {ref.get('containerName')}")
        if str(ref.get("divisor", "1")) != "1":
            problems.add(where, f"{source}: divisor must be 1 (whole cores)")
        return
    try:
        workers = int(workers)
    except (TypeError, ValueError):
        problems.add(where, f"workers {workers!r} ({source}) is not a number")
        return
    if workers != math.ceil(cores):
        problems.add(where, f"workers = {workers} ({source}) but resources.requests.cpu = {cpu}: "
                            f"run one worker per core ({math.ceil(cores)})")


def check_model_mounted(settings, container, where, problems, required_prefix=None):
    repo = settings.get("model_repository")
    if repo[0] is None:
        repo = (settings.positional_model(), "MODEL_DIR")
    if repo[0] is None:
        model = settings.get("model")
        repo = model if model[0] is not None else repo
    path, source = repo
    if not isinstance(path, str) or not path:
        problems.add(where, "no model: give --model-repository DIR (or MODEL_DIR); without one "
                            "mldeploy serves its demo model")
        return
    if required_prefix and path.rstrip("/") != required_prefix and \
            not path.startswith(required_prefix + "/"):
        problems.add(where, f"the model directory {path} ({source}) is not under "
                            f"{required_prefix}, where KServe puts the storageUri")
    mounts = [str(m.get("mountPath", "")).rstrip("/") for m in container.get("volumeMounts") or []]
    if required_prefix is None and not any(path == m or path.startswith(m + "/") for m in mounts):
        problems.add(where, f"the model directory {path} ({source}) is on no mounted volume")


def check_security(container, pod_security, where, problems):
    sc = container.get("securityContext") or {}
    non_root = sc.get("runAsNonRoot", (pod_security or {}).get("runAsNonRoot"))
    if non_root is not True:
        problems.add(where, "securityContext.runAsNonRoot must be true")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.add(where, "securityContext.readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.add(where, "securityContext.allowPrivilegeEscalation must be false")


def prestop_seconds(container):
    pre = ((container.get("lifecycle") or {}).get("preStop")) or {}
    if "sleep" in pre:
        return int((pre["sleep"] or {}).get("seconds", 0))
    command = (pre.get("exec") or {}).get("command") or []
    text = " ".join(str(c) for c in command)
    m = re.search(r"\bsleep\s+(\d+)", text)
    return int(m.group(1)) if m else 0


def check_mldeploy_pod(r, template, configmaps, problems):
    pod = template.get("spec") or {}
    metadata = template.get("metadata") or {}
    containers = [c for c in pod.get("containers") or [] if isinstance(c, dict)]
    mine = [c for c in containers if is_mldeploy(c)]
    if not mine:
        problems.add(r.where, "no container runs mldeploy (command [\"mldeploy\"], args [serve, ...])")
        return
    if pod.get("enableServiceLinks") is not False:
        problems.add(r.where, "enableServiceLinks must be false: Service links inject "
                              "variables such as MLDEPLOY_HTTP_PORT, which mldeploy reads as settings")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    for c in mine:
        where = f"{r.where}: container {c.get('name')}"
        s = Settings(c, pod, configmaps, where, problems)
        if s.broken:
            continue  # reported; the settings below would all be guesses
        ports = bind_ports(s, where, problems)
        declared = {p for p in container_ports(c).values() if p is not None}
        for port in sorted(ports - declared):
            problems.add(where, f"mldeploy binds port {port}, which is not a containerPort")
        for field, paths in (("readinessProbe", ("/v2/health/ready", "/ready")),
                             ("livenessProbe", ("/health",)), ("startupProbe", None)):
            probe = c.get(field)
            if probe is None:
                if paths:
                    problems.add(where, f"{field} missing: use httpGet {paths[0]}")
                continue
            path = (probe.get("httpGet") or {}).get("path")
            if paths and path not in paths:
                problems.add(where, f"{field} must be httpGet {' or '.join(paths)}, not {path}")
            if probe.get("httpGet") and probe_port(probe, c) not in ports:
                problems.add(where, f"{field} port {probe['httpGet'].get('port')} is not a port "
                                    f"mldeploy binds ({sorted(ports)})")
        delay = prestop_seconds(c)
        if delay <= 0:
            problems.add(where, "lifecycle.preStop must delay (sleep) so that endpoint removal "
                                "reaches every proxy before SIGTERM closes the listener")
        timeout, source = s.get("graceful_timeout")
        try:
            timeout = int(timeout)
        except (TypeError, ValueError):
            problems.add(where, f"graceful_timeout {timeout!r} ({source}) is not a number")
            timeout = 0
        if grace <= delay + timeout:
            problems.add(where, f"terminationGracePeriodSeconds = {grace} must exceed preStop "
                                f"{delay} s + graceful_timeout {timeout} s ({source}), or "
                                "draining requests are killed")
        check_workers(s, c, where, problems)
        resources = c.get("resources") or {}
        if "memory" not in (resources.get("requests") or {}) or \
                "memory" not in (resources.get("limits") or {}):
            problems.add(where, "resources: set requests.memory and limits.memory")
        check_model_mounted(s, c, where, problems)
        check_security(c, pod.get("securityContext"), where, problems)
    annotations = metadata.get("annotations") or {}
    if annotations.get("prometheus.io/scrape") == "true":
        all_ports = {p for c in containers for p in container_ports(c).values()}
        port = annotations.get("prometheus.io/port")
        if port is None or not str(port).isdigit() or int(port) not in all_ports:
            problems.add(r.where, f"annotation prometheus.io/port {port!r} is not a containerPort")
        if annotations.get("prometheus.io/path", "/metrics") != "/metrics":
            problems.add(r.where, "annotation prometheus.io/path: mldeploy serves /metrics")


def selects(selector, labels):
    return isinstance(selector, dict) and bool(selector) and \
        all(labels.get(k) == v for k, v in selector.items())


def labels_of(template):
    labels = (template.get("metadata") or {}).get("labels")
    return labels if isinstance(labels, dict) else {}


def pod_templates(resources):
    """(resource, template) for every workload with a pod template."""
    out = []
    for r in resources:
        spec = r.doc.get("spec")
        if not isinstance(spec, dict):
            continue
        template = None
        if r.kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            template = spec.get("template")
        elif r.kind == "Pod":
            template = {"metadata": r.doc.get("metadata"), "spec": spec}
        if isinstance(template, dict) and isinstance(template.get("metadata") or {}, dict) and \
                isinstance(template.get("spec") or {}, dict):
            out.append((r, template))
    return out


def check_selectors(resources, templates, problems):
    """Selectors against every pod template, even one whose workload failed its schema check."""
    for r, template in templates:
        selector = ((r.doc.get("spec") or {}).get("selector") or {}).get("matchLabels")
        if r.kind != "Pod" and selector is not None and not selects(selector, labels_of(template)):
            problems.add(r.where, "spec.selector.matchLabels do not match the pod template's labels")
    for r in resources:
        spec = r.doc.get("spec") or {}
        if r.kind == "Service" and spec.get("selector"):
            matched = [t for _, t in templates if selects(spec["selector"], labels_of(t))]
            if not matched:
                problems.add(r.where, "spec.selector matches no pod template in the checked files")
                continue
            containers = [c for t in matched for c in (t.get("spec") or {}).get("containers") or []]
            names = {n for c in containers for n in container_ports(c)}
            numbers = {p for c in containers for p in container_ports(c).values()}
            for i, port in enumerate(spec.get("ports") or []):
                target = port.get("targetPort", port.get("port"))
                if target not in names and target not in numbers:
                    problems.add(r.where, f"spec.ports[{i}].targetPort {target!r} is no "
                                          "containerPort of the selected pods")
        if r.kind == "PodDisruptionBudget":
            selector = (spec.get("selector") or {}).get("matchLabels")
            if not any(selects(selector, labels_of(t)) for _, t in templates):
                problems.add(r.where, "spec.selector matches no pod template in the checked files")


# ---------------------------------------------------------------------------------------------
# KServe


def expect_type(value, types, where, field, problems, what):
    if value is None:
        problems.add(where, f"{field} missing: must be {what}")
        return False
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        problems.add(where, f"{field} must be {what}, not {value!r}")
        return False
    if not isinstance(value, types):
        problems.add(where, f"{field} must be {what}, not {value!r}")
        return False
    return True


def unknown_fields(mapping, allowed, where, field, problems):
    for key in mapping:
        if key not in allowed:
            problems.add(where, f"{field}.{key}: unknown field (KServe knows {', '.join(sorted(allowed))})")


def check_serving_runtime(r, versions, problems):
    where = r.where
    if r.doc.get("apiVersion") != f"{KSERVE_GROUP}/v1alpha1":
        problems.add(where, f"apiVersion must be {KSERVE_GROUP}/v1alpha1")
    unknown_fields(r.doc, {"apiVersion", "kind", "metadata", "spec"}, where, "(top level)", problems)
    spec = r.doc.get("spec")
    if not expect_type(spec, dict, where, "spec", problems, "a mapping"):
        return
    unknown_fields(spec, SERVING_RUNTIME_SPEC, where, "spec", problems)

    formats = spec.get("supportedModelFormats")
    if expect_type(formats, list, where, "spec.supportedModelFormats", problems, "a list") and \
            not formats:
        problems.add(where, "spec.supportedModelFormats is empty")
    seen = set()
    for i, f in enumerate(formats or []):
        field = f"spec.supportedModelFormats[{i}]"
        if not expect_type(f, dict, where, field, problems, "a mapping"):
            continue
        unknown_fields(f, SUPPORTED_MODEL_FORMAT, where, field, problems)
        if expect_type(f.get("name"), str, where, f"{field}.name", problems, "a string") and \
                not f["name"]:
            problems.add(where, f"{field}.name is empty")
        if "version" in f:
            expect_type(f["version"], str, where, f"{field}.version", problems,
                        "a string (quote it: \"1\")")
        if "autoSelect" in f:
            expect_type(f["autoSelect"], bool, where, f"{field}.autoSelect", problems, "true or false")
        if "priority" in f:
            if expect_type(f["priority"], int, where, f"{field}.priority", problems, "an integer"):
                if f["priority"] < 1:
                    problems.add(where, f"{field}.priority must be greater than 0")
                if f.get("autoSelect") is not True:
                    problems.add(where, f"{field}.priority is ignored without autoSelect: true")
        key = (f.get("name"), f.get("version"))
        if key in seen:
            problems.add(where, f"{field}: {key[0]} version {key[1]} listed twice")
        seen.add(key)
    names = {f.get("name") for f in formats or [] if isinstance(f, dict)}
    missing = MLDEPLOY_FORMATS - names
    if missing:
        problems.add(where, f"spec.supportedModelFormats lacks {', '.join(sorted(missing))} "
                            "(formats mldeploy serves)")

    protocols = spec.get("protocolVersions")
    if expect_type(protocols, list, where, "spec.protocolVersions", problems,
                   "a list (mldeploy speaks v2)"):
        for i, p in enumerate(protocols):
            if p not in KSERVE_PROTOCOLS:
                problems.add(where, f"spec.protocolVersions[{i}] {p!r} is not one of "
                                    f"{', '.join(sorted(KSERVE_PROTOCOLS))}")
        if "v2" not in protocols:
            problems.add(where, "spec.protocolVersions must contain v2 (the Open Inference "
                                "Protocol mldeploy serves)")

    containers = spec.get("containers")
    if not expect_type(containers, list, where, "spec.containers", problems, "a list") or \
            not containers:
        if containers == []:
            problems.add(where, "spec.containers is empty")
        return
    for i, c in enumerate(containers):
        if expect_type(c, dict, where, f"spec.containers[{i}]", problems, "a mapping"):
            validate_container(c, versions, where, f"spec.containers[{i}]", problems)
    c = containers[0]
    if not isinstance(c, dict):
        return
    field = "spec.containers[0]"
    if c.get("name") != KSERVE_CONTAINER:
        problems.add(where, f"{field}.name must be {KSERVE_CONTAINER} (KServe merges the "
                            "InferenceService's predictor into it)")
    if expect_type(c.get("image"), str, where, f"{field}.image", problems, "a string") and \
            not c["image"].strip():
        problems.add(where, f"{field}.image is empty")
    args = c.get("args")
    if expect_type(args, list, where, f"{field}.args", problems, "a list of strings"):
        if not all(isinstance(a, str) for a in args):
            problems.add(where, f"{field}.args must all be strings (quote numbers)")
    ports = c.get("ports")
    if expect_type(ports, list, where, f"{field}.ports", problems, "a list") and ports:
        first = ports[0] if isinstance(ports[0], dict) else {}
        if first.get("containerPort") != KSERVE_HTTP_PORT:
            problems.add(where, f"{field}.ports[0].containerPort must be {KSERVE_HTTP_PORT}, "
                                "KServe's HTTP port")
        if "name" in first and first["name"] not in ("http1", "h2c"):
            problems.add(where, f"{field}.ports[0].name must be http1 (Knative accepts http1, h2c)")
    elif ports == []:
        problems.add(where, f"{field}.ports is empty")
    if not is_mldeploy(c):
        problems.add(where, f"{field} does not run mldeploy (command [\"mldeploy\"], args [serve, ...])")
        return
    s = Settings(c, spec, {}, where, problems)
    if s.broken:
        return
    bound = bind_ports(s, where, problems)
    if KSERVE_HTTP_PORT not in bound:
        problems.add(where, f"mldeploy binds {sorted(bound)}, not KServe's port {KSERVE_HTTP_PORT}: "
                            f"pass --bind 0.0.0.0:{KSERVE_HTTP_PORT}")
    check_model_mounted(s, c, where, problems, required_prefix=KSERVE_MODEL_DIR)
    for probe_field, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe", "/health")):
        probe = c.get(probe_field)
        if probe is not None and (probe.get("httpGet") or {}).get("path") != path:
            problems.add(where, f"{field}.{probe_field} must be httpGet {path}")
    check_workers(s, c, where, problems, allow_downward_api=False)
    check_security(c, None, where, problems)


def check_inference_service(r, versions, runtimes, problems):
    where = r.where
    if r.doc.get("apiVersion") != f"{KSERVE_GROUP}/v1beta1":
        problems.add(where, f"apiVersion must be {KSERVE_GROUP}/v1beta1")
    unknown_fields(r.doc, {"apiVersion", "kind", "metadata", "spec"}, where, "(top level)", problems)
    spec = r.doc.get("spec")
    if not expect_type(spec, dict, where, "spec", problems, "a mapping"):
        return
    unknown_fields(spec, INFERENCE_SERVICE_SPEC, where, "spec", problems)
    predictor = spec.get("predictor")
    if not expect_type(predictor, dict, where, "spec.predictor", problems, "a mapping"):
        return
    old = PREDICTOR_FRAMEWORKS & set(predictor)
    if old:
        problems.add(where, f"spec.predictor.{sorted(old)[0]}: use spec.predictor.model with "
                            "modelFormat and runtime: mldeploy")
    model = predictor.get("model")
    if not expect_type(model, dict, where, "spec.predictor.model", problems, "a mapping"):
        return
    field = "spec.predictor.model"
    fmt = model.get("modelFormat")
    if expect_type(fmt, dict, where, f"{field}.modelFormat", problems, "a mapping"):
        unknown_fields(fmt, MODEL_FORMAT, where, f"{field}.modelFormat", problems)
        if expect_type(fmt.get("name"), str, where, f"{field}.modelFormat.name", problems,
                       "a string") and not fmt["name"]:
            problems.add(where, f"{field}.modelFormat.name is empty")
        if "version" in fmt:
            expect_type(fmt["version"], str, where, f"{field}.modelFormat.version", problems,
                        "a string (quote it: \"1\")")
    runtime = model.get("runtime")
    if expect_type(runtime, str, where, f"{field}.runtime", problems, "a string") and not runtime:
        problems.add(where, f"{field}.runtime is empty")
    uri = model.get("storageUri")
    if expect_type(uri, str, where, f"{field}.storageUri", problems, "a string") and \
            not URI_SCHEME.match(uri):
        problems.add(where, f"{field}.storageUri {uri!r} is not a URI (s3://, gs://, https://, "
                            "pvc://, ...)")
    protocol = model.get("protocolVersion")
    if protocol is None:
        problems.add(where, f"{field}.protocolVersion missing: set v2 (unset, KServe assumes v1 "
                            "when it picks a runtime)")
    elif protocol not in KSERVE_PROTOCOLS:
        problems.add(where, f"{field}.protocolVersion {protocol!r} is not one of "
                            f"{', '.join(sorted(KSERVE_PROTOCOLS))}")
    container = {k: v for k, v in model.items() if k not in MODEL_SPEC_KSERVE}
    container.setdefault("name", KSERVE_CONTAINER)
    validate_container(container, versions, where, field, problems)

    if not isinstance(runtime, str):
        return
    rt = runtimes.get(runtime)
    if rt is None:
        print(f"note: {where}: runtime {runtime!r} is not in the checked files; not cross-checked")
        return
    rt_spec = rt.doc.get("spec") or {}
    if rt_spec.get("disabled") is True:
        problems.add(where, f"runtime {runtime} is disabled")
    rt_formats = [f for f in rt_spec.get("supportedModelFormats") or [] if isinstance(f, dict)]
    if isinstance(fmt, dict):
        matching = [f for f in rt_formats if f.get("name") == fmt.get("name") and
                    ("version" not in fmt or f.get("version") == fmt.get("version"))]
        if not matching:
            problems.add(where, f"{field}.modelFormat {fmt.get('name')} "
                                f"{fmt.get('version', '')} is not supported by runtime {runtime} "
                                f"({rt.path})")
    if protocol is not None and protocol not in (rt_spec.get("protocolVersions") or []):
        problems.add(where, f"{field}.protocolVersion {protocol} is not among runtime {runtime}'s "
                            f"protocolVersions")


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    repo = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=[str(repo / "configs" / "kubernetes")],
                        help="YAML files or directories (default: configs/kubernetes)")
    parser.add_argument("-k", "--kubernetes-version", action="append", dest="versions",
                        help=f"Kubernetes release to validate against; repeatable "
                             f"(default: {OLDEST_KUBERNETES} and the newest known)")
    args = parser.parse_args(argv)
    newest = ".".join(kubernetes_validate.latest_version().split(".")[:2])
    versions = args.versions or sorted({OLDEST_KUBERNETES, newest},
                                       key=lambda v: tuple(int(x) for x in v.split(".")))

    problems = Problems()
    try:
        files = yaml_files(args.paths)
    except FileNotFoundError as e:
        print(f"check_kubernetes: no such file or directory: {e}", file=sys.stderr)
        return 2
    resources = load(files, problems)
    if not resources and not problems.lines:
        problems.add(", ".join(args.paths), "no Kubernetes resources found")

    identified = [r for r in resources if check_identity(r, problems)]
    seen = {}
    for r in identified:
        key = (r.kind, (r.doc["metadata"].get("namespace")), r.name)
        if key in seen:
            problems.add(r.where, f"defined twice (also in {seen[key]})")
        seen[key] = r.path
    configmaps = {r.name: r.doc for r in identified if r.kind == "ConfigMap"}
    runtimes = {r.name: r for r in identified
                if r.kind in ("ServingRuntime", "ClusterServingRuntime")
                and str(r.doc.get("apiVersion", "")).startswith(KSERVE_GROUP + "/")}

    def guarded(r, check, *args):
        # A field of an unexpected shape that the schema step did not stop: report, go on.
        try:
            check(r, *args)
        except (AttributeError, TypeError, ValueError, KeyError) as e:
            problems.add(r.where, f"malformed, could not be checked further ({type(e).__name__}: {e})")

    valid = []
    for r in identified:
        group = r.doc["apiVersion"].split("/")[0] if "/" in r.doc["apiVersion"] else ""
        if group == KSERVE_GROUP:
            if r.kind in ("ServingRuntime", "ClusterServingRuntime"):
                guarded(r, check_serving_runtime, versions, problems)
            elif r.kind == "InferenceService":
                guarded(r, check_inference_service, versions, runtimes, problems)
            else:
                problems.add(r.where, f"KServe kind {r.kind} is not checked by this script")
        elif validate_kubernetes(r.doc, versions, r.where, problems):
            valid.append(r)

    # mldeploy's contract only on schema-valid workloads; selectors against every template.
    for r, template in pod_templates(valid):
        guarded(r, lambda r: check_mldeploy_pod(r, template, configmaps, problems))
    k8s = [r for r in identified if not r.doc["apiVersion"].startswith(KSERVE_GROUP + "/")]
    check_selectors(k8s, pod_templates(k8s), problems)

    if problems.lines:
        for line in problems.lines:
            print(line, file=sys.stderr)
        print(f"check_kubernetes: {len(problems.lines)} problem(s) in {len(files)} file(s)",
              file=sys.stderr)
        return 1
    for r in identified:
        print(f"ok: {r.where}")
    print(f"check_kubernetes: {len(identified)} resources in {len(files)} files are valid "
          f"(Kubernetes {', '.join(versions)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
