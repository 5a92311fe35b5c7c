//! The model contract of mldeploy.
//!
//! A model is anything that implements [`Model`]: it is loaded once per worker process by a
//! [`ModelLoader`] and then called concurrently from the worker's serving threads. This crate
//! holds no tensors and no HTTP types: the server converts requests into the plain types here
//! ([`PredictInput`], [`FeedbackInput`], [`RouteRequest`]) and converts [`ModelError`] into a
//! status code and a JSON body at its boundary.
//!
//! Contract:
//! - `Model` methods may be called from many threads at once; a model guards its own state.
//! - A model never sees an input that fails its declared [`Schema`]: the server validates
//!   first (see [`schema::Schema::validate`]) and passes the typed [`Table`].
//! - Figures that must cover every worker (feedback metrics) live in the [`SharedSlots`] handed
//!   to the loader: memory the master maps before forking, so it outlives any one worker.

#![forbid(unsafe_code)]

pub mod decode;
pub mod fast;
pub mod outputs;
pub mod schema;
mod shared;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use outputs::{ClassIndexes, ClassLabels, Datatype, Output, Role, Target, Tensor, TensorSpec, Values};
pub use schema::{Cell, CellColumn, Column, Dtype, Feature, FeatureValues, RowError, Schema, Table};
pub use shared::{atomic_add_f64, SharedSlots};

/// What a model says about itself; served by `GET .../metadata` and stamped on responses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    /// Model name, stamped as `"model"` on every JSON response.
    pub name: String,
    /// Model version, stamped as `"version"` on every JSON response.
    pub version: String,
    /// What kind of model this is (`logistic_regression`, `mlp_classifier`, `custom`, ...).
    pub kind: String,
    /// The input features in the order the model expects them. Empty: no schema, the model
    /// takes the raw request body as it is.
    pub features: Vec<Feature>,
    /// Describes the outputs (class labels, target name); free-form for custom models.
    pub outputs: Value,
    /// A request body that predicts successfully; `mldeploy check` runs it.
    pub sample: Value,
    /// Where this model's ml-deploy routes live when the server serves several models
    /// (`/iris/api/ml`); `None`: `/<name>/api/ml`. A server with one model serves them under its
    /// configured prefix whatever this says, unless [`ModelInfo::keep_api_prefix`] is set.
    pub api_prefix: Option<String>,
    /// Serve the ml-deploy routes under `api_prefix` even when this is the only model, whatever
    /// the server's `api_prefix` setting: for models whose clients call routes derived from the
    /// model itself (ml-deploy 2.0.0 served a class under the prefix its `__api_prefix__` gave).
    pub keep_api_prefix: bool,
    /// The input tensors a tensor protocol client may send besides one per feature (an ONNX
    /// graph's own inputs); empty: one per feature, and one `[N, features]` tensor named
    /// `input` when every feature is numeric.
    pub input_tensors: Vec<TensorSpec>,
    /// The output tensors the model answers with (see [`Target::Outputs`]); empty when its
    /// answers are free-form JSON.
    pub output_tensors: Vec<TensorSpec>,
}

/// One metric value in a response's `list_metrics`, as ml-deploy's consumers expect it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MetricValue {
    /// Metric name, for example `"F1"`.
    pub name: String,
    /// `"GAUGE"`, `"COUNTER"`, ... as in ml-deploy.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value.
    pub value: f64,
}

impl MetricValue {
    /// A GAUGE metric value.
    pub fn gauge(name: impl Into<String>, value: f64) -> Self {
        Self { name: name.into(), kind: "GAUGE".into(), value }
    }
}

/// What predict and feedback return: ml-deploy's `create_response` parts. Each protocol renders
/// it; the server adds `"model"` and `"version"` and the event topics (`predict`/`feedback`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    /// The result: typed outputs, or free-form JSON such as `{"y_predicted": [...]}`.
    pub target: Target,
    /// The input the result belongs to, as the model wants it echoed; `None`: the server
    /// echoes the validated rows (arrays in schema order), or nothing for a model without a
    /// schema.
    pub input: Option<Value>,
    /// Metric values the downstream pipeline stores.
    pub list_metrics: Vec<MetricValue>,
    /// Extra Kafka topics this response is sent to.
    pub topics: Vec<String>,
}

impl Response {
    /// A free-form JSON answer echoing `input`.
    pub fn json(target: Value, input: Value) -> Response {
        Response { target: Target::Json(target), input: Some(input), ..Response::default() }
    }
}

/// An uploaded file of a multipart/form-data request.
#[derive(Debug, Clone, PartialEq)]
pub struct FormFile {
    /// The form field name.
    pub field: String,
    /// The client's file name, if sent.
    pub filename: Option<String>,
    /// The part's content type, if sent.
    pub content_type: Option<String>,
    /// The file's bytes.
    pub data: Vec<u8>,
}

/// A decoded multipart/form-data body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Form {
    /// Text fields in the order sent.
    pub fields: Vec<(String, String)>,
    /// Files in the order sent.
    pub files: Vec<FormFile>,
}

/// The input of a prediction.
#[derive(Debug, Clone, Default)]
pub struct PredictInput {
    /// The request body as JSON (`Null` for a form request, and for a model that does not read
    /// it: see [`Model::reads_body`]).
    pub body: Value,
    /// The validated rows, in schema order, when the model declares features.
    pub table: Option<Table>,
    /// The form fields and files of a multipart request.
    pub form: Option<Form>,
}

/// The input of a feedback call: ml-deploy's `{"data", "y_true", "y_predict"}`.
#[derive(Debug, Clone, Default)]
pub struct FeedbackInput {
    /// The request's `data` as sent.
    pub data: Value,
    /// The validated rows of `data`, when the model declares features.
    pub table: Option<Table>,
    /// The true labels or values, one per row.
    pub y_true: Value,
    /// What was predicted, one per row; `None` means the model predicts them now.
    pub y_predict: Option<Value>,
}

/// A request to a model's custom route.
#[derive(Debug, Clone, Default)]
pub struct RouteRequest {
    /// HTTP method, upper case.
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    /// Header names (lower case) and values.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
    /// The decoded body, when it was multipart/form-data.
    pub form: Option<Form>,
}

/// A custom route's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteResponse {
    /// HTTP status code.
    pub status: u16,
    /// Content-Type header.
    pub content_type: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// Further headers (`Location`, `Set-Cookie`, ...). The server sets `Content-Type`,
    /// `Content-Length`, `Connection` and the CORS headers itself and drops them here.
    pub headers: Vec<(String, String)>,
}

impl RouteResponse {
    /// A JSON answer.
    pub fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            content_type: "application/json".into(),
            body: value.to_string().into_bytes(),
            headers: Vec::new(),
        }
    }
    /// A plain-text answer.
    pub fn text(status: u16, text: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: text.into().into_bytes(),
            headers: Vec::new(),
        }
    }
}

/// The handler of a custom route.
pub type RouteHandler = Arc<dyn Fn(&RouteRequest) -> Result<RouteResponse, ModelError> + Send + Sync>;

/// A custom route a model adds, as ml-deploy's `endpoints(app)` did.
#[derive(Clone)]
pub struct CustomRoute {
    /// Methods served (upper case); empty means every method.
    pub methods: Vec<String>,
    /// The path, for example `/test`. Segments written `{name}` match any one non-empty
    /// segment (`/items/{id}`); a last segment written `{name*}` matches the rest of the path,
    /// one segment or more (`/files/{path*}`). Exact paths are found first.
    pub path: String,
    /// The handler.
    pub handler: RouteHandler,
}

impl std::fmt::Debug for CustomRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomRoute").field("methods", &self.methods).field("path", &self.path).finish()
    }
}

/// The kind of a model-declared metric, as ml-deploy's `register()` allowed.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricKind {
    /// A value that goes up and down.
    Gauge,
    /// A value that only goes up.
    Counter,
    /// Observations counted into buckets (upper bounds, ascending).
    Histogram { buckets: Vec<f64> },
    /// One of a fixed set of states (Prometheus state set).
    Enum { states: Vec<String> },
}

/// A metric a model declares at load; the server stores it in memory shared by all workers.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricDesc {
    /// Metric name (the server prefixes nothing: choose a Prometheus-style name).
    pub name: String,
    /// Help text.
    pub help: String,
    /// Kind.
    pub kind: MetricKind,
    /// Label names; every update passes values in this order.
    pub label_names: Vec<String>,
}

/// Where a model records its declared metrics. Implemented by the server over shared memory,
/// so updates from every worker add up; updates must be cheap (no allocation, no lock).
pub trait MetricsSink: Send + Sync {
    /// Set a gauge.
    fn gauge_set(&self, name: &str, labels: &[&str], value: f64);
    /// Add to a counter (`value` >= 0).
    fn counter_add(&self, name: &str, labels: &[&str], value: f64);
    /// Observe a value into a histogram.
    fn histogram_observe(&self, name: &str, labels: &[&str], value: f64);
    /// Set the current state of an enum metric.
    fn enum_set(&self, name: &str, labels: &[&str], state: &str);
}

/// A metric sink that records nothing (tests, `mldeploy check`).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMetrics;

impl MetricsSink for NoMetrics {
    fn gauge_set(&self, _: &str, _: &[&str], _: f64) {}
    fn counter_add(&self, _: &str, _: &[&str], _: f64) {}
    fn histogram_observe(&self, _: &str, _: &[&str], _: f64) {}
    fn enum_set(&self, _: &str, _: &[&str], _: &str) {}
}

/// A gauge the model computes when `/metrics` is scraped (feedback accuracy, RMSE, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct ScrapedGauge {
    /// Metric name, for example `mldeploy_feedback_accuracy`.
    pub name: String,
    /// Help text.
    pub help: String,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// What a model's call can fail with. The server maps each variant to a status.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// The request is well-formed but its content is wrong for the model (422).
    Invalid { message: String, errors: Vec<RowError> },
    /// The request cannot be understood at all (400).
    BadRequest(String),
    /// This model has no such capability, for example no feedback (404).
    NotSupported(String),
    /// Loading failed: missing file, wrong shape, schema/weights mismatch.
    Load(String),
    /// The model failed while running (500; the message is logged, not sent).
    Internal(String),
}

impl std::fmt::Display for ModelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelError::Invalid { message, .. } => write!(f, "invalid input: {message}"),
            ModelError::BadRequest(m) => write!(f, "bad request: {m}"),
            ModelError::NotSupported(m) => write!(f, "not supported: {m}"),
            ModelError::Load(m) => write!(f, "model load failed: {m}"),
            ModelError::Internal(m) => write!(f, "model error: {m}"),
        }
    }
}

impl std::error::Error for ModelError {}

/// A model loaded in a worker.
pub trait Model: Send + Sync + 'static {
    /// Name, version, schema and sample.
    fn info(&self) -> &ModelInfo;

    /// Predict. `input.table` is set (and valid) when `info().features` is not empty.
    fn predict(&self, input: &PredictInput) -> Result<Response, ModelError>;

    /// Whether the model takes feedback; without it `/feedback` answers 404, as in ml-deploy.
    fn supports_feedback(&self) -> bool {
        false
    }

    /// Take feedback: true labels for earlier predictions.
    fn feedback(&self, _input: &FeedbackInput) -> Result<Response, ModelError> {
        Err(ModelError::NotSupported("this model takes no feedback".into()))
    }

    /// Whether a call may hold its thread for long (milliseconds and more: an interpreter, a
    /// call that waits on something). The server then hands the connections of the calling
    /// thread to another one for the call's length, so that the worker's other threads keep
    /// serving; quick models do not pay for that hand-over.
    fn calls_may_block(&self) -> bool {
        false
    }

    /// Custom routes, as ml-deploy's `endpoints(app)`.
    fn routes(&self) -> Vec<CustomRoute> {
        Vec::new()
    }

    /// Metrics the model updates through the [`MetricsSink`] it was loaded with.
    fn metrics(&self) -> Vec<MetricDesc> {
        Vec::new()
    }

    /// Gauges computed at scrape time (for built-in models: feedback metrics over every worker).
    fn scrape_gauges(&self) -> Vec<ScrapedGauge> {
        Vec::new()
    }

    /// The worker stops gracefully: called once, on the thread that loaded the model, after the
    /// last call has been answered and before the process exits (flush, run exit handlers). The
    /// master's `graceful_timeout` bounds it.
    fn shutdown(&self) {}

    /// Whether [`Model::predict`] reads [`PredictInput::body`]. A model that declares features
    /// and answers from the validated table alone says `false`: the server may then decode
    /// common request shapes straight into the table and hand it a `Null` body.
    fn reads_body(&self) -> bool {
        true
    }
}

/// What a loader is handed in the worker, after the fork.
#[derive(Clone)]
pub struct LoadContext {
    /// Memory shared by every worker of the server, for figures that must add up across them:
    /// this model's own range, kept for the model's name across reloads.
    pub shared: SharedSlots,
    /// Where the model records its declared metrics.
    pub metrics: Arc<dyn MetricsSink>,
    /// Threads one model call may use inside its engine (a thread pool, ONNX Runtime's
    /// intra-op threads). 1 by default: a worker already runs `--threads` calls at once and the
    /// workers are the parallelism, so an engine pool per call only competes with them.
    pub engine_threads: usize,
    /// Serving threads of the worker (`--threads`): at most this many calls of the model run at
    /// once.
    pub threads: usize,
    /// Settings for the engines, by key, as the server's configuration gives them (the
    /// `[engines]` section: `onnxruntime`, the ONNX Runtime library, ...). An engine reads the
    /// keys it knows and ignores the others; empty when nothing is configured.
    pub engine_settings: Arc<BTreeMap<String, String>>,
}

impl std::fmt::Debug for LoadContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadContext")
            .field("shared_slots", &self.shared.len())
            .field("engine_threads", &self.engine_threads)
            .field("threads", &self.threads)
            .field("engine_settings", &self.engine_settings)
            .finish()
    }
}

impl LoadContext {
    /// A context with private (not shared) memory: for tests and `mldeploy check`.
    pub fn private() -> Self {
        Self {
            shared: SharedSlots::private(SharedSlots::DEFAULT_LEN),
            metrics: Arc::new(NoMetrics),
            engine_threads: 1,
            threads: 1,
            engine_settings: Arc::default(),
        }
    }
}

/// Loads the model; called once in every worker process after the fork (and once by
/// `mldeploy check`). `path` is the MODEL argument of the command line, if given.
pub trait ModelLoader: Send + Sync + 'static {
    /// Load the model. A failure here is a boot failure: the master stops with this message.
    fn load(&self, path: Option<&Path>, ctx: &LoadContext) -> Result<Arc<dyn Model>, ModelError>;

    /// Describe the model found at `path` without loading weights, for log lines in the master.
    fn describe(&self, path: Option<&Path>) -> String {
        match path {
            Some(p) => p.display().to_string(),
            None => "built-in model".into(),
        }
    }
}

impl<F> ModelLoader for F
where
    F: Fn(Option<&Path>, &LoadContext) -> Result<Arc<dyn Model>, ModelError> + Send + Sync + 'static,
{
    fn load(&self, path: Option<&Path>, ctx: &LoadContext) -> Result<Arc<dyn Model>, ModelError> {
        self(path, ctx)
    }
}
