//! A loaded interface class behind mldeploy's `Model` contract.
//!
//! Calls: the serving thread prepares what needs no interpreter (the rows of the README's
//! `predict(X, names)` become one `Vec<f64>`, which numpy then owns without a copy), sends the
//! call to the Python threads and waits (under the worker's busy mark, so a hung call is the
//! master's `--timeout`). A Python exception becomes `ModelError::Internal` with its traceback,
//! which the server logs under the request id and answers as a JSON 500.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mldeploy_model::decode::decode_rows;
use mldeploy_model::{
    CustomRoute, FeedbackInput, Form, MetricDesc, MetricValue, Model, ModelError, ModelInfo, PredictInput,
    Response, RouteRequest, RouteResponse, Target,
};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyModule};
use serde_json::Value;

use crate::convert;
use crate::host::describe_error;

/// The Python objects a call uses. `Py` handles may move between threads; they are only used
/// with the GIL held.
pub(crate) struct Objects {
    pub host: Py<PyModule>,
    pub predict: Py<PyAny>,
    pub feedback: Option<Py<PyAny>>,
    pub app: Option<Py<PyAny>>,
    pub predict_request: Py<PyAny>,
    pub form_request: Py<PyAny>,
    pub wsgi_call: Py<PyAny>,
    pub shutdown: Py<PyAny>,
    /// `numpy.asarray`, when numpy is installed.
    pub asarray: Option<Py<PyAny>>,
}

/// What the class said about itself at load.
pub(crate) struct Described {
    pub name: String,
    pub version: String,
    pub class: String,
    pub serving: bool,
    pub api_prefix: Option<String>,
    pub routes: Vec<(String, Vec<String>)>,
    pub metrics: Vec<MetricDesc>,
}

type Job = Box<dyn FnOnce(Python<'_>, &Objects) + Send>;

/// The Python threads and what they call.
struct Calls {
    objects: Arc<Objects>,
    jobs: Sender<Job>,
}

impl Calls {
    /// Run `work` on a Python thread, with the GIL; wait for its answer.
    fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(Python<'_>, &Objects) -> Result<T, ModelError> + Send + 'static,
    ) -> Result<T, ModelError> {
        let (reply, answer) = crossbeam_channel::bounded(1);
        let job: Job = Box::new(move |py, objects| {
            let _ = reply.send(work(py, objects));
        });
        self.jobs.send(job).map_err(|_| ModelError::Internal("the Python threads are gone".into()))?;
        answer.recv().map_err(|_| {
            ModelError::Internal("the Python call ended without an answer (mldeploy's glue panicked)".into())
        })?
    }
}

/// One Python thread: it keeps its thread state for its life, and takes calls until the
/// channel closes.
fn python_thread(objects: Arc<Objects>, jobs: Receiver<Job>) {
    Python::attach(|py| {
        py.detach(|| {
            for job in jobs.iter() {
                Python::attach(|py| {
                    // A panic in the glue answers that call with an error, and the thread lives on.
                    let _ = catch_unwind(AssertUnwindSafe(|| job(py, &objects)));
                });
            }
        })
    });
}

/// An ml-deploy interface class, loaded in this worker.
pub struct PythonModel {
    info: ModelInfo,
    serving: bool,
    routes: Vec<(String, Vec<String>)>,
    metrics: Vec<MetricDesc>,
    calls: Arc<Calls>,
}

impl PythonModel {
    pub(crate) fn new(described: Described, objects: Objects, threads: usize) -> PythonModel {
        let objects = Arc::new(objects);
        // One Python thread per serving thread: every call a worker can run at once has its
        // thread, and none idles beyond that.
        let (jobs, taken) = crossbeam_channel::bounded::<Job>(threads.max(1));
        for index in 0..threads.max(1) {
            let (objects, taken) = (Arc::clone(&objects), taken.clone());
            std::thread::Builder::new()
                .name(format!("python-{index}"))
                .spawn(move || python_thread(objects, taken))
                .expect("start a Python thread");
        }
        let info = ModelInfo {
            name: described.name,
            version: described.version,
            kind: "python".into(),
            outputs: serde_json::json!({ "class": described.class }),
            keep_api_prefix: described.api_prefix.is_some(),
            api_prefix: described.api_prefix,
            ..ModelInfo::default()
        };
        PythonModel {
            info,
            serving: described.serving,
            routes: described.routes,
            metrics: described.metrics,
            calls: Arc::new(Calls { objects, jobs }),
        }
    }
}

fn python_error(py: Python<'_>, objects: &Objects, err: &PyErr) -> ModelError {
    ModelError::Internal(describe_error(py, objects.host.bind(py), err))
}

/// The README's `X`: the rows of the request, float64 when every value is a number.
enum Rows {
    /// Row-major numbers and the row length.
    Numbers(Vec<f64>, usize),
    /// Anything else: the JSON values, row by row.
    Values(Vec<Vec<Value>>),
}

/// The rows and names of a predict body, decoded as for every model (`{"data", "names"}`,
/// records, a single record).
fn rows_of(body: &Value) -> Result<(Rows, Vec<String>), ModelError> {
    let (decoded, _) = decode_rows(body)?;
    let names = decoded.names.clone().unwrap_or_default();
    let width = decoded.rows.first().map_or(0, |r| r.values.len());
    if decoded.rows.iter().any(|r| r.values.len() != width) {
        return Err(ModelError::BadRequest("the rows have different lengths".into()));
    }
    let mut numbers = Vec::with_capacity(decoded.rows.len() * width);
    for row in &decoded.rows {
        for value in &row.values {
            match value.and_then(Value::as_f64) {
                Some(x) if value.is_some_and(|v| v.is_number()) => numbers.push(x),
                _ => {
                    let values = decoded
                        .rows
                        .iter()
                        .map(|r| r.values.iter().map(|v| v.cloned().unwrap_or(Value::Null)).collect())
                        .collect();
                    return Ok((Rows::Values(values), names));
                }
            }
        }
    }
    Ok((Rows::Numbers(numbers, width), names))
}

fn rows_to_py<'py>(py: Python<'py>, objects: &Objects, rows: Rows) -> PyResult<Bound<'py, PyAny>> {
    match (rows, &objects.asarray) {
        (Rows::Numbers(values, width), Some(_)) if width > 0 => {
            let n = values.len() / width;
            // The Vec becomes the array's buffer: no copy.
            Ok(PyArray1::from_vec(py, values).reshape([n, width])?.into_any())
        }
        (Rows::Numbers(values, width), asarray) => {
            let rows: Vec<Value> = values.chunks(width.max(1)).map(|r| Value::from(r.to_vec())).collect();
            let list = convert::to_py(py, &Value::Array(rows))?;
            match asarray {
                Some(asarray) => asarray.bind(py).call1((list,)),
                None => Ok(list),
            }
        }
        (Rows::Values(rows), asarray) => {
            let list = PyList::empty(py);
            for row in &rows {
                let items = PyList::empty(py);
                for v in row {
                    items.append(convert::to_py(py, v)?)?;
                }
                list.append(items)?;
            }
            match asarray {
                Some(asarray) => {
                    let kwargs = pyo3::types::PyDict::new(py);
                    kwargs.set_item("dtype", "object")?;
                    asarray.bind(py).call((list,), Some(&kwargs))
                }
                None => Ok(list.into_any()),
            }
        }
    }
}

/// ml-deploy's `create_response(...)` dict as a response; any other result is the `target`.
fn response_of(value: Value, call: &str) -> Result<Response, ModelError> {
    let Value::Object(mut map) = value else {
        return Ok(Response { target: Target::Json(value), ..Response::default() });
    };
    let Some(target) = map.remove("target") else {
        return Ok(Response { target: Target::Json(Value::Object(map)), ..Response::default() });
    };
    let bad = |what: &str| ModelError::Internal(format!("{call} returned {what}"));
    let list_metrics = match map.remove("list_metrics") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|item| {
                let name = item.get("name").and_then(Value::as_str);
                let kind = item.get("type").and_then(Value::as_str).unwrap_or("GAUGE");
                let value = item.get("value").and_then(Value::as_f64);
                match (name, value) {
                    (Some(name), Some(value)) => {
                        Ok(MetricValue { name: name.to_string(), kind: kind.to_string(), value })
                    }
                    _ => Err(bad(&format!("a list_metrics entry that is not {{name, type, value}}: {item}"))),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad(&format!("list_metrics that is not a list: {other}"))),
    };
    let topics = match map.remove("topics") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|t| match t {
                Value::String(s) => Ok(s),
                other => Err(bad(&format!("a topic that is not a string: {other}"))),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(bad(&format!("topics that are not a list: {other}"))),
    };
    Ok(Response { target: Target::Json(target), input: map.remove("input"), list_metrics, topics })
}

/// A form's file: field, file name, content type, bytes.
type FilePart = (String, Option<String>, Option<String>, Vec<u8>);

/// A form request's parts, owned for the Python thread.
fn form_parts(form: &Form) -> (Vec<(String, String)>, Vec<FilePart>) {
    let files = form
        .files
        .iter()
        .map(|f| (f.field.clone(), f.filename.clone(), f.content_type.clone(), f.data.clone()))
        .collect();
    (form.fields.clone(), files)
}

impl Model for PythonModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn predict(&self, input: &PredictInput) -> Result<Response, ModelError> {
        let result = if self.serving {
            // 2.0.0: predict(request) with the whole request dict (or the form's fields and files).
            let form = input.form.as_ref().map(form_parts);
            let body = if form.is_some() { Value::Null } else { input.body.clone() };
            self.calls.run(move |py, o| {
                let err = |e: PyErr| python_error(py, o, &e);
                let request = match form {
                    Some((fields, files)) => o.form_request.bind(py).call1((fields, files)).map_err(err)?,
                    None => convert::to_py(py, &body).map_err(err)?,
                };
                let out = o.predict_request.bind(py).call1((o.predict.bind(py), request)).map_err(err)?;
                convert::to_json(&out).map_err(err)
            })?
        } else {
            // The README's predict(X, names).
            let (rows, names) = rows_of(&input.body)?;
            self.calls.run(move |py, o| {
                let err = |e: PyErr| python_error(py, o, &e);
                let x = rows_to_py(py, o, rows).map_err(err)?;
                let names = PyList::new(py, names).map_err(err)?;
                let out = o.predict.bind(py).call1((x, names)).map_err(err)?;
                convert::to_json(&out).map_err(err)
            })?
        };
        response_of(result, "predict")
    }

    fn calls_may_block(&self) -> bool {
        // Every call waits for a Python thread, the GIL and the user's code.
        true
    }

    fn supports_feedback(&self) -> bool {
        self.calls.objects.feedback.is_some()
    }

    fn feedback(&self, input: &FeedbackInput) -> Result<Response, ModelError> {
        let (data, y_true, y_predict) = (input.data.clone(), input.y_true.clone(), input.y_predict.clone());
        let result = self.calls.run(move |py, o| {
            let err = |e: PyErr| python_error(py, o, &e);
            let Some(feedback) = &o.feedback else {
                return Err(ModelError::NotSupported("this model takes no feedback".into()));
            };
            let y_predict = y_predict.unwrap_or(Value::Null);
            let args = (
                convert::to_py(py, &data).map_err(err)?,
                convert::to_py(py, &y_true).map_err(err)?,
                convert::to_py(py, &y_predict).map_err(err)?,
            );
            let out = feedback.bind(py).call1(args).map_err(err)?;
            convert::to_json(&out).map_err(err)
        })?;
        response_of(result, "feedback")
    }

    fn routes(&self) -> Vec<CustomRoute> {
        self.routes
            .iter()
            .map(|(pattern, methods)| {
                let calls = Arc::clone(&self.calls);
                CustomRoute {
                    methods: methods.clone(),
                    path: pattern.clone(),
                    handler: Arc::new(move |request: &RouteRequest| flask(&calls, request)),
                }
            })
            .collect()
    }

    fn metrics(&self) -> Vec<MetricDesc> {
        self.metrics.clone()
    }

    fn shutdown(&self) {
        // On the thread that started Python (the worker's main thread): threading's exit hooks,
        // then the atexit handlers, then a flush.
        let objects = &self.calls.objects;
        Python::attach(|py| {
            if let Err(e) = objects.shutdown.bind(py).call0() {
                eprintln!("mldeploy-python: at shutdown: {}", describe_error(py, objects.host.bind(py), &e));
            }
        });
    }
}

/// A request to one of the class's Flask routes, answered by its Flask app through WSGI.
fn flask(calls: &Calls, request: &RouteRequest) -> Result<RouteResponse, ModelError> {
    let (method, path, query) = (request.method.clone(), request.path.clone(), request.query.clone());
    let (headers, body) = (request.headers.clone(), request.body.clone());
    let (status, headers, body) = calls.run(move |py, o| {
        let err = |e: PyErr| python_error(py, o, &e);
        let Some(app) = &o.app else {
            return Err(ModelError::NotSupported("this model has no routes".into()));
        };
        let out = o
            .wsgi_call
            .bind(py)
            .call1((app.bind(py), method, path, query, headers, PyBytes::new(py, &body)))
            .map_err(err)?;
        let (status, headers, body): (u16, Vec<(String, String)>, Bound<'_, PyBytes>) =
            out.extract().map_err(err)?;
        Ok((status, headers, body.as_bytes().to_vec()))
    })?;
    let mut content_type = None;
    let mut rest = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value);
        } else {
            rest.push((name, value));
        }
    }
    Ok(RouteResponse {
        status,
        content_type: content_type.unwrap_or_else(|| "application/octet-stream".into()),
        body,
        headers: rest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_are_numbers_when_every_value_is_one() {
        let (rows, names) = rows_of(&json!({"data": [[1, 2.5], [3, 4]], "names": ["a", "b"]})).unwrap();
        assert!(matches!(rows, Rows::Numbers(ref v, 2) if v == &[1.0, 2.5, 3.0, 4.0]));
        assert_eq!(names, ["a", "b"]);
        let (rows, names) = rows_of(&json!([{"a": 1, "b": "x"}])).unwrap();
        assert!(matches!(rows, Rows::Values(ref v) if v == &[vec![json!(1), json!("x")]]));
        assert_eq!(names, ["a", "b"]);
        assert!(matches!(rows_of(&json!({"data": [[1], [1, 2]]})), Err(ModelError::BadRequest(_))));
        assert!(matches!(rows_of(&json!(3)), Err(ModelError::BadRequest(_))));
    }

    #[test]
    fn create_response_dicts_become_responses() {
        let r = response_of(
            json!({"target": {"y": [1]}, "input": [[2]], "list_metrics": [{"name": "F1", "type": "GAUGE", "value": 0.5}],
                   "topics": ["extra"]}),
            "predict",
        )
        .unwrap();
        assert_eq!(r.target, Target::Json(json!({"y": [1]})));
        assert_eq!(r.input, Some(json!([[2]])));
        assert_eq!(r.list_metrics, vec![MetricValue::gauge("F1", 0.5)]);
        assert_eq!(r.topics, ["extra"]);
        let plain = response_of(json!({"n": 1}), "predict").unwrap();
        assert_eq!((plain.target, plain.input), (Target::Json(json!({"n": 1})), None));
        assert!(response_of(json!({"target": 1, "topics": [1]}), "predict").is_err());
        assert!(response_of(json!({"target": 1, "list_metrics": [{"name": "x"}]}), "predict").is_err());
    }
}
