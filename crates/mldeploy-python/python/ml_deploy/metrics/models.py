"""ml-deploy's Metric, recording into mldeploy's server-wide metrics.

mldeploy sets `_sink` to an object with `record(kind, name, labels, value)`, which writes to
the memory every worker shares: /metrics shows the sum over the workers, whichever answers.
"""
_sink = None

_KINDS = ("GAUGE", "COUNTER", "TIMER", "ENUM")


class _Declared:
    def __init__(self, name, kind, description, labelnames, states):
        self._name = name
        self.kind = kind
        self.description = description
        self._labelnames = tuple(labelnames)
        self.states = [str(s) for s in states or ()]
        self.values = {}  # this worker's last values, by label values


class Metric:
    def __init__(self):
        self.registry = {}
        self.metric_func = {}
        if hasattr(self, "register"):
            self.register_metrics()

    def register_metrics(self):
        for m in self.register():
            function = m.get("function")
            name = m.get("name") or getattr(function, "__name__", None)
            kind = str(m.get("type", "")).upper()
            if not name or kind not in _KINDS:
                raise ValueError("a metric needs a name and a type among %s: %r" % (", ".join(_KINDS), m))
            if kind == "ENUM" and not m.get("states"):
                raise ValueError("ENUM metric %s needs its states (\"states\": [...])" % name)
            description = m.get("description") or getattr(function, "__doc__", None) or name
            self.registry[name] = _Declared(name, kind, description, m.get("dimension", []), m.get("states"))
            if function is not None:
                self.metric_func[name] = function

    def declared(self):
        """[(name, kind, description, label names, states)] for mldeploy."""
        return [(d._name, d.kind, d.description, list(d._labelnames), d.states) for d in self.registry.values()]

    def get_metric(self, name):
        return self.registry.get(name)

    def metric_list(self):
        return list(self.registry)

    def record(self, name, dim_vals=[], params={}, value=None):
        metric = self.get_metric(name)
        if metric is None:
            raise ValueError("Metric name is not exists")
        if value is None:  # ml-deploy tested `not value`, which could not record 0
            if name not in self.metric_func:
                raise ValueError("metric %s has no function to compute its value: pass value=" % name)
            value = self.metric_func[name](**params)
        if len(dim_vals) != len(metric._labelnames):
            raise ValueError("Some label value is not provided")
        if isinstance(dim_vals, dict):
            labels = [str(dim_vals[k]) for k in metric._labelnames]
        else:
            labels = [str(v) for v in dim_vals]
        if metric.kind == "ENUM":
            if str(value) not in metric.states:
                raise ValueError("%r is not a state of %s (%s)" % (value, name, ", ".join(metric.states)))
            value = str(value)
        else:
            value = float(value)
            if metric.kind == "COUNTER" and value < 0:
                raise ValueError("Counters can only be incremented by non-negative amounts.")
        metric.values[tuple(labels)] = value
        if _sink is not None:
            _sink.record(metric.kind, name, labels, value)
        return value

    def metric_value(self, name):
        return self.get_metric(name).values

    def enum_state_value(self, name):
        return self.get_metric(name).values

    def generate_metrics(self):
        """mldeploy serves /metrics itself, for every worker at once."""
        return b""
