//! The Open Inference Protocol (KServe V2), REST, with Triton's binary tensor data and model
//! repository extensions.
//!
//! Routes: `GET /v2` (server metadata), `/v2/health/live`, `/v2/health/ready`,
//! `/v2/models/{model}[/versions/{version}]` (model metadata), `.../ready`, `POST .../infer`,
//! `POST /v2/repository/index`, `POST /v2/repository/models/{model}/load` and `.../unload`.
//! Errors are `{"error": "..."}`: 400 for a request that cannot be served as sent (malformed,
//! wrong shape or datatype, invalid values: each named by input and row), 404 for an unknown
//! model or version, 500 for a model that failed (details in the log under the request id).
//!
//! Inputs of a model with a feature schema: one tensor per feature, named as the feature, of
//! shape `[N]` or `[N, 1]` (`BYTES` for categories); or, when every feature is numeric, one
//! `[N, features]` tensor named `input` (or named as the model's own declared input). A model
//! without a schema gets the inputs as ml-deploy rows: one `[N, k]` tensor as `{"data"}`,
//! several `[N]` tensors as `{"data", "names"}`. Outputs: the model's typed outputs (for
//! tabular packages `predict` and, for classifiers, `predict_proba`, as Seldon MLServer's
//! scikit-learn runtime names them); all of them unless the request lists some. Free-form
//! JSON answers become one tensor per key.

mod tensor;

use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::StatusCode;
use mldeploy_model::decode::OnError;
use mldeploy_model::{
    CellColumn, Datatype, Dtype, ModelError, Output, PredictInput, Role, RowError, Target, Tensor,
};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::{json, Map, Value};

use self::tensor::{InputTensor, TensorError};
use super::{Answer, Methods, Protocol, Reply, Request, Route};
use crate::events::{EventKind, JsonEvent};
use crate::pipeline::Failure;
use crate::registry::{ModelEntry, Registry};
use crate::repository::{self, Change, Outcome};
use crate::service::{HttpSettings, ServeContext};

/// The header giving the length of the JSON part of a binary request or answer.
const HEADER_LENGTH: HeaderName = HeaderName::from_static("inference-header-content-length");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");

/// The V2 routes.
pub(crate) struct OpenInference;

impl Protocol for OpenInference {
    fn name(&self) -> &'static str {
        "v2"
    }

    fn routes(&self, _models: &Registry, _settings: &HttpSettings) -> Vec<Route> {
        let server = Bytes::from(
            json!({
                "name": "mldeploy",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": ["binary_tensor_data", "model_repository"],
            })
            .to_string(),
        );
        let mut routes = vec![
            Route::new("/v2", Methods::Read, move |_, _| Reply::json(StatusCode::OK, server.clone()).into()),
            Route::new("/v2/health/live", Methods::Read, |_, _| {
                Reply::json(StatusCode::OK, &br#"{"live":true}"#[..]).into()
            }),
            Route::new("/v2/health/ready", Methods::Read, |cx, _| {
                if cx.draining() {
                    error(StatusCode::SERVICE_UNAVAILABLE, "this worker is shutting down").into()
                } else {
                    Reply::json(StatusCode::OK, &br#"{"ready":true}"#[..]).into()
                }
            }),
        ];
        for versioned in [false, true] {
            let base = if versioned { "/v2/models/{model}/versions/{version}" } else { "/v2/models/{model}" };
            routes.push(Route::new(base, Methods::Read, |cx, req| {
                with_model(cx, &req, |index, entry| Ok(metadata(entry).for_model(index)))
            }));
            routes.push(Route::new(format!("{base}/ready"), Methods::Read, |cx, req| {
                with_model(cx, &req, |index, entry| {
                    let body = json!({"name": entry.name(), "ready": !cx.draining()});
                    Ok(Reply::json(StatusCode::OK, body.to_string()).for_model(index))
                })
            }));
            routes.push(Route::new(format!("{base}/infer"), Methods::Post, |cx, req| {
                with_model(cx, &req, |index, entry| infer(cx, index, entry, &req).map(|r| r.for_model(index)))
            }));
        }
        routes.push(Route::new("/v2/repository/index", Methods::Post, |cx, _| index(cx).into()));
        for (op, change) in [("load", Change::Load), ("unload", Change::Unload)] {
            routes.push(Route::new(
                format!("/v2/repository/models/{{model}}/{op}"),
                Methods::Post,
                move |cx, req| change_model(cx, change, req.param("model")),
            ));
        }
        routes
    }
}

/// `{"error": message}` with `status`.
fn error(status: StatusCode, message: &str) -> Reply {
    Reply::json(status, json!({ "error": message }).to_string())
}

fn bad_request(message: &str) -> Reply {
    error(StatusCode::BAD_REQUEST, message)
}

/// Run `f` with the model the path names (404 for an unknown model or version).
fn with_model(
    cx: &ServeContext,
    req: &Request<'_>,
    f: impl FnOnce(usize, &ModelEntry) -> Result<Reply, Reply>,
) -> Answer {
    let name = req.param("model");
    let Some((index, entry)) = cx.models.find(name) else {
        return error(StatusCode::NOT_FOUND, &format!("unknown model {name:?}")).into();
    };
    let version = req.param("version");
    if !version.is_empty() && !entry.has_version(version) {
        let message = format!("model {name:?} has no version {version:?} (it serves {:?})", entry.version());
        return error(StatusCode::NOT_FOUND, &message).into();
    }
    f(index, entry).into()
}

/// The tensors a model takes: one per feature, and one `[-1, features]` tensor when every
/// feature is numeric (or the model's own declared inputs).
fn input_specs(entry: &ModelEntry) -> Vec<Value> {
    let info = entry.info();
    if !info.input_tensors.is_empty() {
        return info.input_tensors.iter().map(|t| json!(t)).collect();
    }
    info.features
        .iter()
        .map(|f| {
            let datatype = match f.dtype {
                Dtype::Float => Datatype::Fp64,
                Dtype::Int => Datatype::Int64,
                Dtype::Bool => Datatype::Bool,
                Dtype::Category => Datatype::Bytes,
            };
            json!({"name": f.name, "datatype": datatype, "shape": [-1]})
        })
        .collect()
}

fn metadata(entry: &ModelEntry) -> Reply {
    let info = entry.info();
    let mut inputs = input_specs(entry);
    if info.input_tensors.is_empty()
        && !info.features.is_empty()
        && info.features.iter().all(|f| f.dtype != Dtype::Category)
    {
        inputs.push(json!({"name": "input", "datatype": "FP64", "shape": [-1, info.features.len()]}));
    }
    let mut versions = vec![entry.version().to_string()];
    if let Some(v) = &entry.source.repository_version {
        if v != entry.version() {
            versions.push(v.clone());
        }
    }
    let body = json!({
        "name": info.name,
        "versions": versions,
        "platform": format!("mldeploy_{}", info.kind),
        "inputs": inputs,
        "outputs": info.output_tensors,
    });
    Reply::json(StatusCode::OK, body.to_string())
}

/// An infer request's JSON part, and where its binary data starts.
struct Parsed {
    header: Map<String, Value>,
    binary: Bytes,
}

fn parse(req: &Request<'_>) -> Result<Parsed, Reply> {
    let body = &req.body;
    let (json_part, binary) = match req.header(HEADER_LENGTH.as_str()) {
        Some(length) => {
            let Ok(length) = length.trim().parse::<usize>() else {
                return Err(bad_request("Inference-Header-Content-Length must be a number of bytes"));
            };
            if length > body.len() {
                return Err(bad_request(&format!(
                    "Inference-Header-Content-Length is {length} but the body has {} bytes",
                    body.len()
                )));
            }
            (body.slice(..length), body.slice(length..))
        }
        None => (body.clone(), Bytes::new()),
    };
    match serde_json::from_slice::<Value>(&json_part) {
        Ok(Value::Object(header)) => Ok(Parsed { header, binary }),
        Ok(_) => Err(bad_request("the inference request must be a JSON object")),
        Err(e) => Err(bad_request(&format!("the inference request is not valid JSON: {e}"))),
    }
}

/// Decode every input tensor, taking binary data in order.
fn inputs(parsed: &Parsed) -> Result<Vec<InputTensor>, TensorError> {
    let Some(Value::Array(list)) = parsed.header.get("inputs") else {
        return Err(TensorError("`inputs` must be a list of tensors".into()));
    };
    let mut offset = 0usize;
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let Value::Object(input) = item else {
            return Err(TensorError(format!("inputs[{i}] must be an object")));
        };
        let name = match input.get("name") {
            Some(Value::String(name)) => name.clone(),
            _ => return Err(TensorError(format!("inputs[{i}] needs a `name`"))),
        };
        let datatype = match input.get("datatype").and_then(Value::as_str) {
            Some(d) => Datatype::parse(d)
                .ok_or_else(|| TensorError(format!("input {name:?}: unknown datatype {d:?}")))?,
            None => return Err(TensorError(format!("input {name:?} needs a `datatype`"))),
        };
        let shape = tensor::parse_shape(&name, input.get("shape"))?;
        let count = tensor::element_count(&name, &shape)?;
        let binary_size = input.get("parameters").and_then(|p| p.get("binary_data_size"));
        let elements = match (binary_size, input.get("data")) {
            (Some(size), _) => {
                let size = size.as_u64().and_then(|s| usize::try_from(s).ok()).ok_or_else(|| {
                    TensorError(format!("input {name:?}: binary_data_size must be a number"))
                })?;
                let end =
                    offset.checked_add(size).filter(|&end| end <= parsed.binary.len()).ok_or_else(|| {
                        TensorError(format!(
                            "input {name:?}: binary_data_size {size} reaches past the end of the body"
                        ))
                    })?;
                let elements = tensor::from_binary(&name, datatype, count, &parsed.binary[offset..end])?;
                offset = end;
                elements
            }
            (None, Some(data)) => tensor::from_json(&name, datatype, count, data)?,
            (None, None) => {
                return Err(TensorError(format!("input {name:?} has neither `data` nor binary data")))
            }
        };
        out.push(InputTensor { name, datatype, shape, elements });
    }
    if offset != parsed.binary.len() {
        return Err(TensorError(format!(
            "{} bytes of binary data follow the inputs' binary_data_size",
            parsed.binary.len() - offset
        )));
    }
    Ok(out)
}

/// The inputs of a model with a schema, as one column per feature.
fn feature_columns<'a>(
    entry: &ModelEntry,
    inputs: &'a [InputTensor],
) -> Result<(Vec<tensor::Strided<'a>>, usize), String> {
    let info = entry.info();
    let features = &info.features;
    let own_name = info.input_tensors.first().map(|t| t.name.as_str());
    if let [single] = inputs {
        let by_name = single.name == "input" || Some(single.name.as_str()) == own_name;
        let not_a_feature = !features.iter().any(|f| f.name == single.name);
        if by_name || (not_a_feature && features.len() > 1) {
            if single.shape.len() != 2 || single.shape[1] != features.len() {
                return Err(format!(
                    "input {:?} must have shape [N, {}] (one column per feature), not {:?}",
                    single.name,
                    features.len(),
                    single.shape
                ));
            }
            return Ok(((0..features.len()).map(|j| single.column(j)).collect(), single.rows()));
        }
    }
    for input in inputs {
        if !features.iter().any(|f| f.name == input.name) {
            let names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
            return Err(format!(
                "input {:?} is not a feature of the model (its features: {})",
                input.name,
                names.join(", ")
            ));
        }
    }
    let rows = inputs.first().map_or(0, InputTensor::rows);
    let mut columns = Vec::with_capacity(features.len());
    for feature in features {
        let Some(input) = inputs.iter().find(|i| i.name == feature.name) else {
            return Err(format!(
                "input {:?} is missing (one input per feature, or one [N, {}] tensor named \"input\")",
                feature.name,
                features.len()
            ));
        };
        if !matches!(input.shape.as_slice(), [_] | [_, 1]) {
            return Err(format!(
                "input {:?} must have shape [N] or [N, 1], not {:?}",
                input.name, input.shape
            ));
        }
        if input.rows() != rows {
            return Err(format!("input {:?} has {} rows, other inputs {rows}", input.name, input.rows()));
        }
        columns.push(input.column(0));
    }
    Ok((columns, rows))
}

/// The inputs of a model without a schema, as ml-deploy's JSON rows.
fn json_rows(inputs: &[InputTensor]) -> Value {
    match inputs {
        [single] if single.shape.len() == 2 => {
            let width = single.width();
            let rows: Vec<Value> = (0..single.rows())
                .map(|r| Value::Array((0..width).map(|j| single.json_at(r * width + j)).collect()))
                .collect();
            json!({ "data": rows })
        }
        _ => {
            let rows = inputs.first().map_or(0, InputTensor::rows);
            let data: Vec<Value> = (0..rows)
                .map(|r| Value::Array(inputs.iter().map(|i| i.json_at(r * i.width().max(1))).collect()))
                .collect();
            json!({ "data": data, "names": inputs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>() })
        }
    }
}

fn invalid_message(message: &str, errors: &[RowError]) -> String {
    let mut text = message.to_string();
    if let Some(first) = errors.first() {
        text = format!(
            "{message} (first: input {:?}, row {}: {})",
            first.feature.as_deref().unwrap_or("?"),
            first.row.map_or("?".into(), |r| r.to_string()),
            first.message
        );
    }
    text
}

fn failure(cx: &ServeContext, failure: Failure, id: &str) -> Reply {
    match failure {
        Failure::Model(ModelError::Invalid { message, errors }) => {
            bad_request(&invalid_message(&message, &errors))
        }
        Failure::Model(ModelError::BadRequest(message)) => bad_request(&message),
        Failure::Model(ModelError::NotSupported(message)) => error(StatusCode::NOT_FOUND, &message),
        Failure::Model(ModelError::Load(message) | ModelError::Internal(message)) => {
            cx.calls().log_internal(id, &message);
            model_failed(id)
        }
        Failure::Panicked => model_failed(id),
    }
}

fn model_failed(id: &str) -> Reply {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        &format!("the model failed; the server log has the details under request id {id}"),
    )
}

/// Which outputs the client asked for, and in which form.
struct Wanted {
    /// Requested outputs by name, with their own `binary_data` when given; empty: all.
    listed: Vec<(String, Option<bool>)>,
    /// `parameters.binary_data_output`.
    binary_default: bool,
}

fn wanted(header: &Map<String, Value>) -> Result<Wanted, Reply> {
    let binary_default = header
        .get("parameters")
        .and_then(|p| p.get("binary_data_output"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let mut listed = Vec::new();
    if let Some(outputs) = header.get("outputs") {
        let Value::Array(items) = outputs else { return Err(bad_request("`outputs` must be a list")) };
        for item in items {
            let Some(name) = item.get("name").and_then(Value::as_str) else {
                return Err(bad_request("each requested output needs a `name`"));
            };
            let binary = item.get("parameters").and_then(|p| p.get("binary_data")).and_then(Value::as_bool);
            listed.push((name.to_string(), binary));
        }
    }
    Ok(Wanted { listed, binary_default })
}

fn infer(cx: &ServeContext, index: usize, entry: &ModelEntry, req: &Request<'_>) -> Result<Reply, Reply> {
    let calls = cx.calls();
    let parsed = parse(req)?;
    let wanted = wanted(&parsed.header)?;
    let inputs = inputs(&parsed).map_err(|e| bad_request(&e.0))?;
    drop(parsed.binary);
    let input = match &entry.schema {
        Some(schema) => {
            let (columns, rows) = feature_columns(entry, &inputs).map_err(|m| bad_request(&m))?;
            let cells: Vec<&dyn CellColumn> = columns.iter().map(|c| c as &dyn CellColumn).collect();
            let checked = calls
                .validated(schema.validate_columns(&cells, rows, OnError::Reject))
                .map_err(|e| failure(cx, Failure::Model(e), req.id))?;
            PredictInput { body: Value::Null, table: checked.table, form: None }
        }
        None => PredictInput { body: json_rows(&inputs), table: None, form: None },
    };
    drop(inputs);
    let predicted = calls.predict(entry, input, req.id).map_err(|e| failure(cx, e, req.id))?;
    let outputs: Vec<Output> = match &predicted.response.target {
        Target::Outputs { outputs, .. } => outputs.clone(),
        Target::Json(Value::Object(map)) => map
            .iter()
            .map(|(name, value)| Output {
                name: name.clone().into(),
                role: Role::Other,
                tensor: tensor::tensor_from_json(value),
            })
            .collect(),
        Target::Json(other) => {
            vec![Output { name: "target".into(), role: Role::Other, tensor: tensor::tensor_from_json(other) }]
        }
    };
    let chosen: Vec<(&Output, bool)> = if wanted.listed.is_empty() {
        outputs.iter().map(|o| (o, wanted.binary_default)).collect()
    } else {
        let mut chosen = Vec::with_capacity(wanted.listed.len());
        for (name, binary) in &wanted.listed {
            let Some(output) = outputs.iter().find(|o| &o.name == name) else {
                let names: Vec<&str> = outputs.iter().map(|o| &*o.name).collect();
                return Err(bad_request(&format!(
                    "unknown output {name:?} (the model answers {})",
                    names.join(", ")
                )));
            };
            chosen.push((output, binary.unwrap_or(wanted.binary_default)));
        }
        chosen
    };
    if cx.events.enabled() {
        let route = format!("/v2/models/{}/infer", entry.name());
        let route_topic = cx.events.topic(EventKind::Predict);
        if let Ok(bytes) = super::ml_deploy::event_body(entry, &predicted, route_topic) {
            cx.events.emit_json(JsonEvent {
                kind: EventKind::Predict,
                body: bytes,
                model: entry.tag.clone(),
                topics: predicted.response.topics.clone(),
                request_id: req.id.to_string(),
                route,
            });
        }
    }
    let id = parsed.header.get("id").and_then(Value::as_str);
    let parameters = parsed.header.get("parameters");
    answer(entry, id, parameters, &chosen).map(|r| r.for_model(index)).map_err(|e| {
        slog::error!(cx.log, "answer not serializable"; "request_id" => req.id, "error" => %e);
        model_failed(req.id)
    })
}

/// One output in the answer's JSON part.
struct OutputJson<'a> {
    output: &'a Output,
    /// `Some(size)`: its data follows in binary.
    binary_size: Option<usize>,
}

impl Serialize for OutputJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let tensor: &Tensor = &self.output.tensor;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("name", &self.output.name)?;
        map.serialize_entry("datatype", &tensor.datatype)?;
        map.serialize_entry("shape", &tensor.shape)?;
        match self.binary_size {
            Some(size) => map.serialize_entry("parameters", &json!({ "binary_data_size": size }))?,
            None => map.serialize_entry("data", &tensor.flat())?,
        }
        map.end()
    }
}

#[derive(Serialize)]
struct AnswerJson<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a Value>,
    outputs: Vec<OutputJson<'a>>,
}

/// The answer: JSON, or a JSON part followed by the binary outputs.
fn answer(
    entry: &ModelEntry,
    id: Option<&str>,
    parameters: Option<&Value>,
    chosen: &[(&Output, bool)],
) -> Result<Reply, serde_json::Error> {
    let mut blobs = Vec::new();
    let mut outputs = Vec::with_capacity(chosen.len());
    for (output, binary) in chosen {
        let binary_size = binary.then(|| {
            let before = blobs.len();
            tensor::write_binary(&output.tensor, &mut blobs);
            blobs.len() - before
        });
        outputs.push(OutputJson { output, binary_size });
    }
    let body =
        AnswerJson { model_name: entry.name(), model_version: entry.version(), id, parameters, outputs };
    let mut bytes = serde_json::to_vec(&body)?;
    if chosen.iter().all(|(_, binary)| !binary) {
        return Ok(Reply::json(StatusCode::OK, bytes));
    }
    let header_length = bytes.len();
    bytes.extend_from_slice(&blobs);
    let mut reply = Reply::json(StatusCode::OK, bytes);
    reply.content_type = Some(OCTET_STREAM);
    Ok(reply.header(HEADER_LENGTH, HeaderValue::from(header_length)))
}

/// `POST /v2/repository/index`: every model of the repository with its state (or, without a
/// repository, the models served).
fn index(cx: &ServeContext) -> Reply {
    let served = |name: &str| cx.models.find(name).map(|(_, e)| e);
    let entries: Vec<Value> = match &cx.repository {
        Some(link) => match repository::scan(&link.root) {
            Ok(models) => models
                .iter()
                .map(|m| match served(&m.name) {
                    Some(e) => {
                        json!({"name": m.name, "version": e.version(), "state": "READY", "reason": ""})
                    }
                    None => json!({"name": m.name, "state": "UNAVAILABLE", "reason": "unloaded"}),
                })
                .collect(),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        None => cx
            .models
            .iter()
            .map(|e| json!({"name": e.name(), "version": e.version(), "state": "READY", "reason": ""}))
            .collect(),
    };
    Reply::json(StatusCode::OK, Value::Array(entries).to_string())
}

/// `POST /v2/repository/models/{model}/load|unload`: a new generation of workers with the
/// new set of models, through the master; answers once it serves (or failed).
fn change_model(cx: &Arc<ServeContext>, change: Change, name: &str) -> Answer {
    let Some(link) = cx.repository.clone() else {
        let message = "this server was not started with --model-repository: its models are fixed";
        return error(StatusCode::BAD_REQUEST, message).into();
    };
    match repository::scan(&link.root) {
        Ok(models) if models.iter().any(|m| m.name == name) => {}
        Ok(_) => {
            return error(StatusCode::NOT_FOUND, &format!("no model named {name:?} in the repository")).into()
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()).into(),
    }
    if change == Change::Unload && cx.models.find(name).is_none() {
        return Reply::json(StatusCode::OK, "{}").into();
    }
    let name = name.to_string();
    // A reload waits for every new worker to boot: give it the master's boot allowance.
    let wait = cx.settings.graceful_timeout + std::time::Duration::from_secs(300);
    let cx = Arc::clone(cx);
    Answer::Later(Box::pin(async move {
        match link.request(change, &name, wait).await {
            Outcome::Done => {
                // This worker belongs to the generation the change replaced: the master has asked
                // it to stop. Answer once it has stopped accepting, and close the connection, so
                // the client's next request reaches a worker that serves the new set.
                let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while !cx.draining() && std::time::Instant::now() < until {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                Reply::json(StatusCode::OK, "{}").closing()
            }
            Outcome::Failed(reason) => bad_request(&format!("{name}: {reason}")),
            Outcome::Busy => {
                error(StatusCode::CONFLICT, "another repository change is in progress; try again")
            }
        }
    }))
}
