//! Starting the interpreter in a worker and loading an interface class.
//!
//! Order, on the worker's main thread, after the fork and after the worker's own signal
//! handlers are in place: `Python::initialize()` (CPython's `Py_InitializeEx(0)`: no Python
//! signal handlers; SIGINT is ignored in workers, so CPython does not take it either), then once
//! per process the preparation (BLAS thread counts before numpy loads, the environment, line-
//! buffered stdio, faulthandler, the `ml_deploy` stand-in, the metric sink), then the class. The
//! worker puts back its signal handlers after the model loaded (a `load()` may call
//! `signal.signal`); `Py_Finalize` never runs (threads may still hold Python objects): a graceful
//! stop runs the exit handlers instead ([`crate::model::PythonModel`]'s `shutdown`).

use std::ffi::CString;
use std::sync::{Arc, OnceLock};

use mldeploy_model::{LoadContext, MetricDesc, MetricKind, MetricsSink, ModelError};
use mldeploy_server::launch::PythonEnv;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyModule};

use crate::model::{Objects, PythonModel};

/// The Python side of the worker.
const HOST: &str = include_str!("../python/mldeploy_host.py");

/// The `ml_deploy` stand-in: module name, source, whether it is a package.
const SHIM: &[(&str, &str, bool)] = &[
    ("ml_deploy", include_str!("../python/ml_deploy/__init__.py"), true),
    ("ml_deploy.errors", include_str!("../python/ml_deploy/errors.py"), false),
    ("ml_deploy.rest", include_str!("../python/ml_deploy/rest/__init__.py"), true),
    ("ml_deploy.rest.utils", include_str!("../python/ml_deploy/rest/utils.py"), false),
    ("ml_deploy.metrics", include_str!("../python/ml_deploy/metrics/__init__.py"), true),
    ("ml_deploy.metrics.models", include_str!("../python/ml_deploy/metrics/models.py"), false),
    ("ml_deploy.implements", include_str!("../python/ml_deploy/implements/__init__.py"), true),
    ("ml_deploy.implements.base", include_str!("../python/ml_deploy/implements/base.py"), false),
    ("ml_deploy.implements.serving", include_str!("../python/ml_deploy/implements/serving.py"), false),
    ("ml_deploy.implements.training", include_str!("../python/ml_deploy/implements/training.py"), false),
    ("ml_deploy.kafka", include_str!("../python/ml_deploy/kafka/__init__.py"), true),
    ("ml_deploy.kafka.utils", include_str!("../python/ml_deploy/kafka/utils.py"), false),
    ("ml_deploy.utils", include_str!("../python/ml_deploy/utils.py"), false),
    ("ml_deploy.validators", include_str!("../python/ml_deploy/validators.py"), false),
    ("ml_deploy.validation", include_str!("../python/ml_deploy/validation/__init__.py"), true),
    ("ml_deploy.validation.exceptions", include_str!("../python/ml_deploy/validation/exceptions.py"), false),
    ("ml_deploy.gunicorn", include_str!("../python/ml_deploy/gunicorn/__init__.py"), true),
    ("ml_deploy.gunicorn.app", include_str!("../python/ml_deploy/gunicorn/app.py"), false),
];

/// A metric the class declared: name, type, description, label names, states.
type Declared = (String, String, String, Vec<String>, Vec<String>);

/// Buckets of a `TIMER` metric: prometheus_client's defaults, which ml-deploy's histograms had.
const TIMER_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// `Metric.record(...)` of the stand-in lands here: the server-wide metrics in shared memory.
#[pyclass(frozen)]
struct MetricSink {
    sink: Arc<dyn MetricsSink>,
}

#[pymethods]
impl MetricSink {
    fn record(&self, kind: &str, name: &str, labels: Vec<String>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        match kind {
            "GAUGE" => self.sink.gauge_set(name, &labels, value.extract()?),
            "COUNTER" => self.sink.counter_add(name, &labels, value.extract()?),
            "TIMER" => self.sink.histogram_observe(name, &labels, value.extract()?),
            "ENUM" => self.sink.enum_set(name, &labels, &value.extract::<String>()?),
            other => return Err(PyValueError::new_err(format!("unknown metric type {other}"))),
        }
        Ok(())
    }
}

/// The host module, once per process.
static HOST_MODULE: OnceLock<Result<Py<PyModule>, String>> = OnceLock::new();

/// A Python exception as text for the log: type, message and the whole traceback.
pub(crate) fn describe_error(py: Python<'_>, host: &Bound<'_, PyModule>, err: &PyErr) -> String {
    let value = err.value(py);
    let traceback = host
        .call_method1("format_exception", (value, err.traceback(py)))
        .and_then(|t| t.extract::<String>())
        .unwrap_or_else(|_| {
            let kind = err.get_type(py).name().map(|n| n.to_string()).unwrap_or_default();
            format!("{kind}: {value}")
        });
    traceback.trim_end().to_string()
}

fn prepare(py: Python<'_>, ctx: &LoadContext, env: Option<&PythonEnv>) -> Result<Py<PyModule>, String> {
    let running = format!("{}.{}", py.version_info().major, py.version_info().minor);
    if running != crate::PYTHON_VERSION {
        return Err(format!(
            "the libpython loaded is Python {running}, this mldeploy-python is built for {}",
            crate::PYTHON_VERSION
        ));
    }
    let code = CString::new(HOST).map_err(|e| e.to_string())?;
    let host = PyModule::from_code(py, &code, c"mldeploy_host.py", c"mldeploy_host")
        .map_err(|e| format!("mldeploy's host module: {e}"))?;
    let fail = |e: PyErr| describe_error(py, &host, &e);
    let sources = PyDict::new(py);
    for (name, source, package) in SHIM {
        sources.set_item(*name, (*source, *package)).map_err(fail)?;
    }
    let sink = Py::new(py, MetricSink { sink: Arc::clone(&ctx.metrics) }).map_err(fail)?;
    let (venv, site, system) = match env {
        Some(e) => (
            Some(e.root.to_string_lossy().into_owned()),
            Some(e.site_packages.to_string_lossy().into_owned()),
            e.include_system,
        ),
        None => (None, None, false),
    };
    host.call_method1("prepare", (ctx.engine_threads, venv, site, system, sources, sink))
        .map_err(|e| format!("preparing Python: {}", fail(e)))?;
    Ok(host.unbind())
}

/// Start Python in this worker (once) and load `interface`.
pub fn boot(
    interface: &str,
    ctx: &LoadContext,
    env: Option<&PythonEnv>,
    metric_class: Option<&str>,
) -> Result<PythonModel, ModelError> {
    Python::initialize();
    Python::attach(|py| {
        let host = HOST_MODULE
            .get_or_init(|| prepare(py, ctx, env))
            .as_ref()
            .map_err(|e| ModelError::Load(e.clone()))?
            .clone_ref(py);
        let bound = host.bind(py);
        let loaded =
            bound.call_method1("load", (interface, metric_class)).map_err(|e| load_error(py, bound, &e))?;
        let field = |name: &str| -> Result<Bound<'_, PyAny>, ModelError> {
            loaded.get_item(name).map_err(|e| ModelError::Load(describe_error(py, bound, &e)))
        };
        let text = |name: &str| -> Result<Option<String>, ModelError> {
            field(name)?.extract().map_err(|e| ModelError::Load(describe_error(py, bound, &e)))
        };
        let name = text("name")?.unwrap_or_default();
        let version = text("version")?.unwrap_or_default();
        let class = text("class")?.unwrap_or_default();
        let api_prefix = text("api_prefix")?;
        let serving: bool = field("serving")?.extract().unwrap_or(false);
        let routes: Vec<(String, Vec<String>)> =
            field("routes")?.extract().map_err(|e| ModelError::Load(describe_error(py, bound, &e)))?;
        let declared: Vec<Declared> =
            field("metrics")?.extract().map_err(|e| ModelError::Load(describe_error(py, bound, &e)))?;
        let metrics = declared
            .into_iter()
            .map(|(name, kind, help, label_names, states)| MetricDesc {
                name,
                help,
                label_names,
                kind: match kind.as_str() {
                    "COUNTER" => MetricKind::Counter,
                    "TIMER" => MetricKind::Histogram { buckets: TIMER_BUCKETS.to_vec() },
                    "ENUM" => MetricKind::Enum { states },
                    _ => MetricKind::Gauge,
                },
            })
            .collect();
        let optional = |name: &str| -> Result<Option<Py<PyAny>>, ModelError> {
            let value = field(name)?;
            Ok((!value.is_none()).then(|| value.unbind()))
        };
        let method = |name: &str| -> Result<Py<PyAny>, ModelError> {
            bound
                .getattr(name)
                .map(Bound::unbind)
                .map_err(|e| ModelError::Load(describe_error(py, bound, &e)))
        };
        let numpy = py.import("numpy").ok().map(|np| np.getattr("asarray")).transpose().ok().flatten();
        let objects = Objects {
            predict: field("predict")?.unbind(),
            feedback: optional("feedback")?,
            app: optional("app")?,
            predict_request: method("predict_request")?,
            form_request: method("form_request")?,
            wsgi_call: method("wsgi_call")?,
            shutdown: method("shutdown")?,
            asarray: numpy.map(Bound::unbind),
            host: host.clone_ref(py),
        };
        Ok(PythonModel::new(
            crate::model::Described { name, version, class, serving, api_prefix, routes, metrics },
            objects,
            ctx.threads,
        ))
    })
}

fn load_error(py: Python<'_>, host: &Bound<'_, PyModule>, err: &PyErr) -> ModelError {
    let value = err.value(py);
    if let (Ok(stage), Ok(traceback)) = (value.getattr("stage"), value.getattr("tb")) {
        let stage: String = stage.extract().unwrap_or_default();
        let traceback: String = traceback.extract().unwrap_or_default();
        let message = value.str().map(|s| s.to_string()).unwrap_or_default();
        let mut text = format!("{stage}: {message}");
        if !traceback.is_empty() {
            text.push('\n');
            text.push_str(traceback.trim_end());
        }
        return ModelError::Load(text);
    }
    ModelError::Load(describe_error(py, host, err))
}
