//! ml-deploy's API: `POST {prefix}/predict`, `POST {prefix}/feedback` (models that take
//! feedback) and `GET {prefix}/metadata`, for each model under its prefix.
//!
//! Requests: JSON rows (`{"data", "names"}`, records, a single record) whatever the
//! Content-Type, as ml-deploy parsed them; `multipart/form-data` for models without a schema.
//! Answers: ml-deploy's `create_response` shape, `{"target", "input", "list_metrics",
//! "topics", "model", "version"}` (plus `rejected` when rows were skipped), where `target`
//! renders the model's typed outputs (`y_predicted`, `probabilities`, `classes`) and `input`
//! echoes the validated rows. Errors: `{"error", "message", "errors"?, "request_id"}` with
//! 400 (unreadable), 404 (no such capability), 415, 422 (invalid rows, each named) or 500.

use bytes::Bytes;
use hyper::http::request::Parts;
use hyper::{header, StatusCode};
use std::sync::Arc;

use mldeploy_model::fast::{self, EchoText};
use mldeploy_model::{
    Column, Dtype, Form, MetricValue, ModelError, Output, PredictInput, Role, RowError, Table, Target,
    Tensor, Values,
};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::Value;
use slog::error;

use super::server::API_VERSION;
use super::{error_json, internal_error, Chunks, Methods, Protocol, Reply, Request, Route};
use crate::events::{EventKind, JsonEvent};
use crate::http::multipart;
use crate::pipeline::{Checked, Failure, Predicted};
use crate::registry::{ModelEntry, Registry};
use crate::service::{HttpSettings, ServeContext};

/// ml-deploy's routes for every model.
pub(crate) struct MlDeploy;

impl Protocol for MlDeploy {
    fn name(&self) -> &'static str {
        "ml-deploy"
    }

    fn routes(&self, models: &Registry, _settings: &HttpSettings) -> Vec<Route> {
        let mut routes = Vec::new();
        for (index, entry) in models.iter().enumerate() {
            let prefix = &entry.prefix;
            let parts = Arc::new(Fragments::new(entry));
            let predict_parts = parts.clone();
            routes.push(Route::new(format!("{prefix}/predict"), Methods::Post, move |cx, req| {
                predict(cx, index, &predict_parts, &req).unwrap_or_else(|e| e).for_model(index).into()
            }));
            if entry.model.supports_feedback() {
                routes.push(Route::new(format!("{prefix}/feedback"), Methods::Post, move |cx, req| {
                    feedback(cx, index, &parts, &req).unwrap_or_else(|e| e).for_model(index).into()
                }));
            }
            let metadata = Bytes::from(metadata_json(entry).to_string());
            routes.push(Route::new(format!("{prefix}/metadata"), Methods::Read, move |_, _| {
                Reply::json(StatusCode::OK, metadata.clone()).for_model(index).into()
            }));
        }
        routes
    }
}

/// `GET .../metadata`.
fn metadata_json(entry: &ModelEntry) -> Value {
    let info = entry.info();
    serde_json::json!({
        "name": info.name,
        "version": info.version,
        "kind": info.kind,
        "features": info.features,
        "outputs": info.outputs,
        "sample": info.sample,
        "api_version": API_VERSION,
    })
}

fn content_type(parts: &Parts) -> &str {
    parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Whether the body is `multipart/form-data`.
pub(crate) fn is_multipart(parts: &Parts) -> bool {
    content_type(parts).get(..19).is_some_and(|t| t.eq_ignore_ascii_case("multipart/form-data"))
}

/// Decode a `multipart/form-data` body.
pub(crate) fn parse_form(parts: &Parts, body: &[u8], id: &str) -> Result<Form, Reply> {
    let bad = |message: &str| Reply::error(StatusCode::BAD_REQUEST, "bad_request", message, id);
    let Some(boundary) = multipart::boundary(content_type(parts)) else {
        return Err(bad("multipart/form-data needs a boundary parameter"));
    };
    multipart::parse(body, &boundary).map_err(|m| bad(&format!("malformed multipart/form-data: {m}")))
}

/// Parse a JSON body, or say why not.
pub(crate) fn parse_json(body: &[u8], id: &str) -> Result<Value, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        let message = "the body is empty: send a JSON document";
        return Err(Reply::error(StatusCode::BAD_REQUEST, "invalid_json", message, id));
    }
    serde_json::from_slice(body).map_err(|e| {
        let message = format!("the body is not valid JSON: {e}");
        Reply::error(StatusCode::BAD_REQUEST, "invalid_json", &message, id)
    })
}

fn unsupported(message: &str, id: &str) -> Reply {
    Reply::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message, id)
}

/// What every answer of one model holds, serialised once when the routes are made.
pub(crate) struct Fragments {
    /// `"model":"NAME","version":"VERSION"`.
    tail: Vec<u8>,
    /// The JSON of the model's `classes`, when it lists them.
    classes: Option<Vec<u8>>,
    /// How requests are decoded straight into the table, when they may be: the model has an
    /// all-numeric schema and does not read the JSON body itself.
    fast: Option<fast::Plan>,
}

impl Fragments {
    fn new(entry: &ModelEntry) -> Fragments {
        let info = entry.info();
        let mut tail = b"\"model\":".to_vec();
        write_str(&mut tail, &info.name);
        tail.extend_from_slice(b",\"version\":");
        write_str(&mut tail, &info.version);
        let classes = info.outputs.get("classes").map(|c| serde_json::to_vec(c).unwrap_or_default());
        let fast = entry.schema.as_ref().filter(|_| !entry.model.reads_body()).and_then(fast::Plan::new);
        Fragments { tail, classes, fast }
    }
}

fn predict(cx: &ServeContext, index: usize, parts: &Fragments, req: &Request<'_>) -> Result<Reply, Reply> {
    let entry = cx.models.get(index);
    let calls = cx.calls();
    let id = req.id;
    let form = if is_multipart(req.parts) {
        if entry.schema.is_some() {
            return Err(unsupported("this model takes its rows as JSON, not multipart/form-data", id));
        }
        Some(parse_form(req.parts, &req.body, id)?)
    } else {
        None
    };
    // The common shapes, every row valid: straight from the bytes into the table. Anything
    // else (other shapes, any invalid row) takes the general path, which names the problems.
    let decoded = match (&entry.schema, &form) {
        (Some(schema), None) => parts.fast.as_ref().and_then(|plan| plan.decode(schema, &req.body)),
        _ => None,
    };
    let (body, checked, echo) = match decoded {
        Some(rows) => {
            (Value::Null, Checked { table: Some(rows.table), rejected: Vec::new() }, Some(rows.echo))
        }
        None => {
            let body = if form.is_some() { Value::Null } else { parse_json(&req.body, id)? };
            let checked = calls.check_body(entry, &body).map_err(|e| failure(cx, Failure::Model(e), id))?;
            (body, checked, None)
        }
    };
    let input = PredictInput { body, table: checked.table, form };
    let predicted = calls.predict(entry, input, id).map_err(|e| failure(cx, e, id))?;
    let echo = echo.map(|e| (req.body.clone(), e));
    Ok(answer(cx, entry, parts, predicted, EventKind::Predict, &checked.rejected, echo, id))
}

fn feedback(cx: &ServeContext, index: usize, parts: &Fragments, req: &Request<'_>) -> Result<Reply, Reply> {
    let entry = cx.models.get(index);
    if is_multipart(req.parts) {
        return Err(unsupported("feedback takes a JSON body", req.id));
    }
    let body = parse_json(&req.body, req.id)?;
    let predicted = cx.calls().feedback(entry, body, req.id).map_err(|e| failure(cx, e, req.id))?;
    Ok(answer(cx, entry, parts, predicted, EventKind::Feedback, &[], None, req.id))
}

/// The answer to a failed call.
pub(crate) fn failure(cx: &ServeContext, failure: Failure, id: &str) -> Reply {
    match failure {
        Failure::Model(ModelError::Invalid { message, errors }) => Reply::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            error_json("invalid_input", &message, Some(&errors), id),
        ),
        Failure::Model(ModelError::BadRequest(message)) => {
            Reply::error(StatusCode::BAD_REQUEST, "bad_request", &message, id)
        }
        Failure::Model(ModelError::NotSupported(message)) => {
            Reply::error(StatusCode::NOT_FOUND, "not_supported", &message, id)
        }
        Failure::Model(ModelError::Load(message) | ModelError::Internal(message)) => {
            cx.calls().log_internal(id, &message);
            internal_error(id)
        }
        Failure::Panicked => internal_error(id),
    }
}

/// Serialize the answer once; then, with events on, hand the same bytes to the event. A large
/// answer without an event is written while it is sent instead (see [`Streamed`]).
#[allow(clippy::too_many_arguments)]
fn answer(
    cx: &ServeContext,
    entry: &ModelEntry,
    parts: &Fragments,
    predicted: Predicted,
    kind: EventKind,
    rejected: &[RowError],
    echo: Option<(Bytes, EchoText)>,
    id: &str,
) -> Reply {
    let Predicted { mut response, table } = predicted;
    // With events on, the response lists the route's topic (ml-deploy's `predict`/`feedback`,
    // as configured), as ml-deploy did.
    let route_topic = cx.events.topic(kind);
    // The event needs the whole answer's bytes: answers with one are written in one buffer.
    let chunked = route_topic.is_none()
        && table.as_ref().is_some_and(|t| size_guess(&response, Some(t)) >= CHUNKED_FROM)
        && streams(&response);
    let mut tail = Vec::new();
    // The tail is written before anything is sent: once a chunk is out, nothing may fail.
    if chunked && write_tail(&mut tail, parts, &response, None, rejected).is_ok() {
        if let Some(table) = table {
            let mut streamed = Streamed::new(entry, parts, response, table, echo, tail);
            let chunks = Chunks(Box::new(move || streamed.next_chunk(CHUNK)));
            return Reply { chunks: Some(Box::new(chunks)), ..Reply::json(StatusCode::OK, Bytes::new()) };
        }
    }
    let echo = echo.as_ref().map(|(body, cells)| (&body[..], cells));
    let written = write_body(entry, parts, &response, table.as_ref(), route_topic, rejected, echo);
    // The table and the model's outputs are done with before the bytes go out.
    drop(table);
    let bytes = match written {
        Ok(bytes) => Bytes::from(bytes),
        Err(e) => {
            error!(cx.log, "response not serializable"; "request_id" => id, "error" => %e);
            return internal_error(id);
        }
    };
    if route_topic.is_some() {
        let route = match kind {
            EventKind::Predict => "predict",
            EventKind::Feedback => "feedback",
        };
        // The event carries the bytes the client got; the producer thread adds its context
        // fields without parsing or serialising the answer again.
        cx.events.emit_json(JsonEvent {
            kind,
            body: bytes.clone(),
            model: entry.tag.clone(),
            // The model's own list; the producer adds the route's topic.
            topics: std::mem::take(&mut response.topics),
            request_id: id.to_string(),
            route: format!("{}/{route}", entry.prefix),
        });
    }
    Reply::json(StatusCode::OK, bytes)
}

/// The ml-deploy rendering of an answer another protocol gave, for its event: consumers of the
/// events read one shape whichever protocol the request came in.
pub(crate) fn event_body(
    entry: &ModelEntry,
    predicted: &Predicted,
    route_topic: Option<&str>,
) -> Result<Bytes, serde_json::Error> {
    let body = Body::new(entry, &predicted.response, predicted.table.as_ref(), route_topic, &[]);
    serde_json::to_vec(&body).map(Bytes::from)
}

/// Render a model's answer as ml-deploy's JSON, without a server: what `mldeploy check` prints.
pub(crate) fn render(entry: &ModelEntry, predicted: &Predicted) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec_pretty(&Body::new(entry, &predicted.response, predicted.table.as_ref(), None, &[]))
}

/// What predict and feedback answer, in ml-deploy's field order.
#[derive(Serialize)]
struct Body<'a> {
    target: TargetJson<'a>,
    input: Echo<'a>,
    list_metrics: &'a [MetricValue],
    topics: TopicList<'a>,
    model: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "<[RowError]>::is_empty")]
    rejected: &'a [RowError],
}

impl<'a> Body<'a> {
    fn new(
        entry: &'a ModelEntry,
        response: &'a mldeploy_model::Response,
        table: Option<&'a Table>,
        route_topic: Option<&'a str>,
        rejected: &'a [RowError],
    ) -> Body<'a> {
        let info = entry.info();
        let input = match (&response.input, table) {
            (Some(value), _) => Echo::Value(value),
            (None, Some(table)) => Echo::Rows(table, &info.features),
            (None, None) => Echo::Value(&Value::Null),
        };
        Body {
            target: TargetJson { target: &response.target, classes: info.outputs.get("classes") },
            input,
            list_metrics: &response.list_metrics,
            topics: TopicList { listed: &response.topics, route: route_topic },
            model: &info.name,
            version: &info.version,
            rejected,
        }
    }
}

/// `target`: typed outputs as ml-deploy named them (`y_predicted`, `probabilities`, then the
/// model's `classes`), or the model's own JSON.
struct TargetJson<'a> {
    target: &'a Target,
    classes: Option<&'a Value>,
}

impl Serialize for TargetJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (outputs, by_name) = match self.target {
            Target::Json(value) => return value.serialize(s),
            Target::Outputs { outputs, by_name } => (outputs, *by_name),
        };
        let alias = |o: &Output| match o.role {
            Role::Labels | Role::Values => Some("y_predicted"),
            Role::Probabilities => Some("probabilities"),
            Role::Other => None,
        };
        let mut map = s.serialize_map(None)?;
        let mut has_probabilities = false;
        let mut written: [Option<&str>; 2] = [None; 2];
        for (slot, key) in ["y_predicted", "probabilities"].into_iter().enumerate() {
            if let Some(o) = outputs.iter().find(|o| alias(o) == Some(key)) {
                written[slot] = Some(key);
                // One value per row: a `[rows, 1]` tensor (an ONNX regressor's `variable`) is
                // listed flat, as ml-deploy's `y_predicted` always was.
                if key == "y_predicted" && matches!(o.tensor.shape.as_slice(), [_, 1]) {
                    map.serialize_entry(key, &o.tensor.flat())?;
                } else {
                    map.serialize_entry(key, &o.tensor.nested())?;
                }
                has_probabilities |= key == "probabilities";
            }
        }
        if has_probabilities {
            if let Some(classes) = self.classes {
                map.serialize_entry("classes", classes)?;
            }
        }
        // By name, but once per key: an output already listed under its own name as an alias
        // (an ONNX graph's `probabilities`) is not listed twice.
        for o in outputs.iter().filter(|o| by_name || alias(o).is_none()) {
            let listed = written.contains(&Some(&*o.name)) || has_probabilities && o.name == "classes";
            if !listed {
                map.serialize_entry(&o.name, &o.tensor.nested())?;
            }
        }
        map.end()
    }
}

/// `input`: what the model asked to echo, or the validated rows as arrays in schema order (as
/// ml-deploy echoed its `X`; the feature names are in the metadata, not in every row).
enum Echo<'a> {
    Value(&'a Value),
    Rows(&'a Table, &'a [mldeploy_model::Feature]),
}

impl Serialize for Echo<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Echo::Value(v) => v.serialize(s),
            Echo::Rows(table, features) => {
                let mut rows = s.serialize_seq(Some(table.n_rows))?;
                for r in 0..table.n_rows {
                    rows.serialize_element(&EchoRow { table, features, row: r })?;
                }
                rows.end()
            }
        }
    }
}

struct EchoRow<'a> {
    table: &'a Table,
    features: &'a [mldeploy_model::Feature],
    row: usize,
}

impl Serialize for EchoRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut row = s.serialize_seq(Some(self.table.columns.len()))?;
        for (feature, column) in self.features.iter().zip(&self.table.columns) {
            match column {
                Column::Category(v) => row.serialize_element(&v[self.row])?,
                Column::OptionalCategory(v) => row.serialize_element(&v[self.row])?,
                Column::Numeric(v) => {
                    let x = v[self.row];
                    match feature.dtype {
                        Dtype::Bool => row.serialize_element(&(x != 0.0))?,
                        Dtype::Int if x.fract() == 0.0 && x.abs() < 9.0e15 => {
                            row.serialize_element(&(x as i64))?
                        }
                        // serde_json writes NaN and infinities as null.
                        _ => row.serialize_element(&x)?,
                    }
                }
            }
        }
        row.end()
    }
}

/// The `topics` of an answer: those the model listed, then the route's own topic (with events
/// on) unless the model listed it already. Serialized as one list without building it.
struct TopicList<'a> {
    listed: &'a [String],
    route: Option<&'a str>,
}

impl Serialize for TopicList<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let route = self.route.filter(|route| !self.listed.iter().any(|t| t == route));
        let mut seq = serializer.serialize_seq(Some(self.listed.len() + usize::from(route.is_some())))?;
        for topic in self.listed {
            seq.serialize_element(topic)?;
        }
        if let Some(route) = route {
            seq.serialize_element(route)?;
        }
        seq.end()
    }
}

/// ml-deploy's answer written straight into bytes, the same bytes `serde_json::to_vec(&Body)`
/// writes (a test checks): the model's name, version and classes come pre-serialised,
/// numbers are formatted once, and the echo copies each cell's request text when it is what
/// the formatting would give (`echo`: the request body and where its cells are).
fn write_body(
    entry: &ModelEntry,
    parts: &Fragments,
    response: &mldeploy_model::Response,
    table: Option<&Table>,
    route_topic: Option<&str>,
    rejected: &[RowError],
    echo: Option<(&[u8], &EchoText)>,
) -> Result<Vec<u8>, serde_json::Error> {
    // An upper guess: growing a large answer by doubling copies it while both copies are
    // alive (an 8.9 MB prediction's 30 MB answer outgrew a tighter guess by 4%). Capacity
    // never written is never touched, so an overestimate costs address space, not memory.
    let mut out = Vec::with_capacity(size_guess(response, table));
    out.extend_from_slice(b"{\"target\":");
    match &response.target {
        Target::Json(value) => serde_json::to_writer(&mut out, value)?,
        Target::Outputs { outputs, by_name } => {
            write_outputs(&mut out, outputs, *by_name, parts.classes.as_deref())?
        }
    }
    out.extend_from_slice(b",\"input\":");
    match (&response.input, table) {
        (Some(value), _) => serde_json::to_writer(&mut out, value)?,
        (None, Some(table)) => write_rows(&mut out, table, &entry.info().features, echo)?,
        (None, None) => out.extend_from_slice(b"null"),
    }
    write_tail(&mut out, parts, response, route_topic, rejected)?;
    Ok(out)
}

/// An upper guess of an answer's length, from the rows and output values.
fn size_guess(response: &mldeploy_model::Response, table: Option<&Table>) -> usize {
    let echo_guess = table.map_or(0, |t| t.n_rows * (t.columns.len() * 24 + 4));
    let output_values: usize = match &response.target {
        Target::Outputs { outputs, .. } => outputs.iter().map(|o| o.tensor.values.len()).sum(),
        Target::Json(_) => 0,
    };
    256 + echo_guess + output_values * 26
}

/// What follows `input`: `list_metrics`, `topics`, `model`, `version`, `rejected` and the end.
fn write_tail(
    out: &mut Vec<u8>,
    parts: &Fragments,
    response: &mldeploy_model::Response,
    route_topic: Option<&str>,
    rejected: &[RowError],
) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b",\"list_metrics\":");
    if response.list_metrics.is_empty() {
        out.extend_from_slice(b"[]");
    } else {
        serde_json::to_writer(&mut *out, &response.list_metrics)?;
    }
    out.extend_from_slice(b",\"topics\":[");
    let route = route_topic.filter(|route| !response.topics.iter().any(|t| t == route));
    for (i, topic) in response.topics.iter().map(String::as_str).chain(route).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, topic);
    }
    out.extend_from_slice(b"],");
    out.extend_from_slice(&parts.tail);
    if !rejected.is_empty() {
        out.extend_from_slice(b",\"rejected\":");
        serde_json::to_writer(&mut *out, rejected)?;
    }
    out.push(b'}');
    Ok(())
}

/// Where `target`'s text goes: a buffer that takes the tensors too (one-buffer answers), or
/// a [`Plan`] that leaves a place for each tensor, written later chunk by chunk.
trait TargetSink {
    fn text(&mut self) -> &mut Vec<u8>;
    /// Output `index` listed whole: flat (`[rows, 1]` as one list) or nested by its shape.
    fn tensor(&mut self, index: usize, output: &Output, flat: bool) -> Result<(), serde_json::Error>;
}

impl TargetSink for Vec<u8> {
    fn text(&mut self) -> &mut Vec<u8> {
        self
    }

    fn tensor(&mut self, _: usize, output: &Output, flat: bool) -> Result<(), serde_json::Error> {
        if flat {
            write_flat(self, &output.tensor.values)
        } else {
            write_nested(self, &output.tensor, 0, 0)
        }
    }
}

/// `target` of typed outputs, as [`TargetJson`] serialises it.
fn write_outputs<S: TargetSink>(
    sink: &mut S,
    outputs: &[Output],
    by_name: bool,
    classes: Option<&[u8]>,
) -> Result<(), serde_json::Error> {
    let alias = |o: &Output| match o.role {
        Role::Labels | Role::Values => Some("y_predicted"),
        Role::Probabilities => Some("probabilities"),
        Role::Other => None,
    };
    sink.text().push(b'{');
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, name: &str| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        // ml-deploy's own keys are written as they are; an output's name may need escapes.
        match name {
            "y_predicted" => out.extend_from_slice(b"\"y_predicted\":"),
            "probabilities" => out.extend_from_slice(b"\"probabilities\":"),
            "classes" => out.extend_from_slice(b"\"classes\":"),
            _ => {
                write_str(out, name);
                out.push(b':');
            }
        }
    };
    let mut has_probabilities = false;
    let mut written: [Option<&str>; 2] = [None; 2];
    for (slot, name) in ["y_predicted", "probabilities"].into_iter().enumerate() {
        if let Some((i, o)) = outputs.iter().enumerate().find(|(_, o)| alias(o) == Some(name)) {
            written[slot] = Some(name);
            key(sink.text(), name);
            let flat = name == "y_predicted" && matches!(o.tensor.shape.as_slice(), [_, 1]);
            sink.tensor(i, o, flat)?;
            has_probabilities |= name == "probabilities";
        }
    }
    if has_probabilities {
        if let Some(classes) = classes {
            key(sink.text(), "classes");
            sink.text().extend_from_slice(classes);
        }
    }
    for (i, o) in outputs.iter().enumerate().filter(|(_, o)| by_name || alias(o).is_none()) {
        let listed = written.contains(&Some(&*o.name)) || has_probabilities && o.name == "classes";
        if !listed {
            key(sink.text(), &o.name);
            sink.tensor(i, o, false)?;
        }
    }
    sink.text().push(b'}');
    Ok(())
}

/// A tensor as nested lists (a scalar for shape `[]`), as [`Tensor::nested`] serialises it.
fn write_nested(
    out: &mut Vec<u8>,
    tensor: &Tensor,
    dim: usize,
    start: usize,
) -> Result<(), serde_json::Error> {
    let shape = &tensor.shape;
    if shape.is_empty() {
        return write_value(out, &tensor.values, 0);
    }
    let len = shape[dim];
    out.push(b'[');
    if dim + 1 == shape.len() {
        for i in start..start + len {
            if i > start {
                out.push(b',');
            }
            write_value(out, &tensor.values, i)?;
        }
    } else {
        let stride: usize = shape[dim + 1..].iter().product();
        for i in 0..len {
            if i > 0 {
                out.push(b',');
            }
            write_nested(out, tensor, dim + 1, start + i * stride)?;
        }
    }
    out.push(b']');
    Ok(())
}

fn write_flat(out: &mut Vec<u8>, values: &Values) -> Result<(), serde_json::Error> {
    out.push(b'[');
    for i in 0..values.len() {
        if i > 0 {
            out.push(b',');
        }
        write_value(out, values, i)?;
    }
    out.push(b']');
    Ok(())
}

/// One element, as serde_json writes it (non-finite floats as `null`).
fn write_value(out: &mut Vec<u8>, values: &Values, i: usize) -> Result<(), serde_json::Error> {
    match values {
        Values::Bool(v) => out.extend_from_slice(if v[i] { b"true" } else { b"false" }),
        Values::Int(v) => out.extend_from_slice(itoa::Buffer::new().format(v[i]).as_bytes()),
        Values::Uint(v) => out.extend_from_slice(itoa::Buffer::new().format(v[i]).as_bytes()),
        Values::Float(v) => write_f64(out, v[i]),
        Values::Text(v) => write_str(out, &v[i]),
        Values::Json(v) => serde_json::to_writer(&mut *out, &v[i])?,
        Values::Classes(c) => write_value(out, c.classes(), c.class_at(i))?,
    }
    Ok(())
}

/// Whether a tensor's elements are JSON values (or labels that are), which answers write whole.
fn holds_json(values: &Values) -> bool {
    match values {
        Values::Json(_) => true,
        Values::Classes(c) => holds_json(c.classes()),
        _ => false,
    }
}

/// A float as serde_json writes it: the shortest text that reads back the same; `null` when
/// not finite.
fn write_f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        // Writing into a Vec cannot fail.
        let _ = CompactFormatter.write_f64(out, x);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string: copied between quotes when nothing in it needs escaping (serde_json escapes
/// only `"`, `\` and control characters), else written by serde_json.
fn write_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// The validated rows as arrays in schema order, as [`Echo::Rows`] serialises them; a cell
/// whose request text is what would be written is copied from the request.
fn write_rows(
    out: &mut Vec<u8>,
    table: &Table,
    features: &[mldeploy_model::Feature],
    echo: Option<(&[u8], &EchoText)>,
) -> Result<(), serde_json::Error> {
    out.push(b'[');
    for r in 0..table.n_rows {
        if r > 0 {
            out.push(b',');
        }
        write_row(out, table, features, echo, r);
    }
    out.push(b']');
    Ok(())
}

/// Row `r` of the echo.
#[inline]
fn write_row(
    out: &mut Vec<u8>,
    table: &Table,
    features: &[mldeploy_model::Feature],
    echo: Option<(&[u8], &EchoText)>,
    r: usize,
) {
    out.push(b'[');
    // A compact row whose every cell is copied is copied whole.
    if echo.is_some_and(|(body, cells)| cells.copy_row(body, r, out)) {
        out.push(b']');
        return;
    }
    for (c, (feature, column)) in features.iter().zip(&table.columns).enumerate() {
        if c > 0 {
            out.push(b',');
        }
        if echo.is_some_and(|(body, cells)| cells.copy_cell(body, r, c, out)) {
            continue;
        }
        match column {
            Column::Category(v) => write_str(out, &v[r]),
            Column::OptionalCategory(v) => match &v[r] {
                Some(s) => write_str(out, s),
                None => out.extend_from_slice(b"null"),
            },
            Column::Numeric(v) => {
                let x = v[r];
                match feature.dtype {
                    Dtype::Bool => out.extend_from_slice(if x != 0.0 { b"true" } else { b"false" }),
                    Dtype::Int if x.fract() == 0.0 && x.abs() < 9.0e15 => {
                        out.extend_from_slice(itoa::Buffer::new().format(x as i64).as_bytes())
                    }
                    _ => write_f64(out, x),
                }
            }
        }
    }
    out.push(b']');
}

/// Answers whose size guess is at least this are written while they are sent, in chunks, so
/// that the whole answer (3.4 times an iris request's body) is never in memory at once.
const CHUNKED_FROM: usize = 1 << 20;

/// The bytes one chunk of a chunked answer aims at.
const CHUNK: usize = 64 * 1024;

/// A part of a chunked answer.
enum Part {
    Text(Vec<u8>),
    /// Output `index`, flat or nested.
    Tensor {
        index: usize,
        flat: bool,
    },
    /// The echo's rows.
    Rows,
}

/// A chunked answer's layout: its text, with a place for each tensor and for the rows.
#[derive(Default)]
struct Plan {
    parts: Vec<Part>,
    text: Vec<u8>,
}

impl Plan {
    fn push(&mut self, part: Part) {
        if !self.text.is_empty() {
            self.parts.push(Part::Text(std::mem::take(&mut self.text)));
        }
        self.parts.push(part);
    }

    fn finish(mut self) -> Vec<Part> {
        if !self.text.is_empty() {
            self.parts.push(Part::Text(self.text));
        }
        self.parts
    }
}

impl TargetSink for Plan {
    fn text(&mut self) -> &mut Vec<u8> {
        &mut self.text
    }

    fn tensor(&mut self, index: usize, _: &Output, flat: bool) -> Result<(), serde_json::Error> {
        self.push(Part::Tensor { index, flat });
        Ok(())
    }
}

/// Whether an answer can be written in chunks: typed outputs (JSON values are written whole,
/// and could fail), the rows echoed (no `input` of the model's own).
fn streams(response: &mldeploy_model::Response) -> bool {
    response.input.is_none()
        && match &response.target {
            Target::Outputs { outputs, .. } => outputs.iter().all(|o| !holds_json(&o.tensor.values)),
            Target::Json(_) => false,
        }
}

/// A large answer, written chunk by chunk from what it needs: the model's outputs, the rows
/// (their values, or the request's text of them) and the parts' text. Each output, and the
/// rows, are freed once written.
struct Streamed {
    parts: Vec<Part>,
    /// The part being written, and how far (elements or rows written).
    part: usize,
    at: usize,
    outputs: Vec<Output>,
    /// For each output, the last part that writes it.
    last_use: Vec<usize>,
    table: Table,
    features: Vec<mldeploy_model::Feature>,
    echo: Option<(Bytes, EchoText)>,
}

impl Streamed {
    /// The chunked writer of the answer [`write_body`] would write for a response that
    /// [`streams`], its `tail` (from [`write_tail`]) already written.
    fn new(
        entry: &ModelEntry,
        parts: &Fragments,
        response: mldeploy_model::Response,
        mut table: Table,
        echo: Option<(Bytes, EchoText)>,
        tail: Vec<u8>,
    ) -> Streamed {
        let mut plan = Plan::default();
        plan.text.extend_from_slice(b"{\"target\":");
        let outputs = match response.target {
            Target::Outputs { outputs, by_name } => {
                // Cannot fail: the plan only takes text.
                let _ = write_outputs(&mut plan, &outputs, by_name, parts.classes.as_deref());
                outputs
            }
            Target::Json(_) => Vec::new(),
        };
        plan.text.extend_from_slice(b",\"input\":");
        plan.push(Part::Rows);
        plan.text.extend_from_slice(&tail);
        let parts_of_plan = plan.finish();
        let mut last_use = vec![usize::MAX; outputs.len()];
        for (at, part) in parts_of_plan.iter().enumerate() {
            if let Part::Tensor { index, .. } = part {
                last_use[*index] = at;
            }
        }
        // The writer reads neither the rows' request positions nor a column whose every
        // cell is copied from the request.
        table.source_rows = Vec::new();
        if let Some((_, cells)) = &echo {
            for (c, column) in table.columns.iter_mut().enumerate() {
                if cells.copies_column(c) {
                    *column = Column::Numeric(Vec::new());
                }
            }
        }
        Streamed {
            parts: parts_of_plan,
            part: 0,
            at: 0,
            outputs,
            last_use,
            table,
            features: entry.info().features.clone(),
            echo,
        }
    }

    /// The next chunk: about `limit` bytes (a row or element is never split), `None` at the
    /// end.
    fn next_chunk(&mut self, limit: usize) -> Option<Bytes> {
        let mut out = Vec::with_capacity(limit + limit / 4);
        while out.len() < limit && self.part < self.parts.len() {
            let done = match &self.parts[self.part] {
                Part::Text(text) => {
                    out.extend_from_slice(text);
                    true
                }
                &Part::Tensor { index, flat } => self.tensor(&mut out, index, flat, limit),
                Part::Rows => self.rows(&mut out, limit),
            };
            if done {
                self.finish_part();
            }
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }

    /// Free what the part just written was the last to need, and go on to the next.
    fn finish_part(&mut self) {
        match self.parts[self.part] {
            Part::Text(_) => {}
            Part::Tensor { index, .. } => {
                if self.last_use[index] == self.part {
                    self.outputs[index].tensor.values = Values::Bool(Vec::new());
                }
            }
            Part::Rows => {
                self.table.columns = Vec::new();
                self.echo = None;
            }
        }
        self.part += 1;
        self.at = 0;
    }

    /// Write more of a tensor, item by item along its first dimension; whether it is complete.
    fn tensor(&mut self, out: &mut Vec<u8>, index: usize, flat: bool, limit: usize) -> bool {
        let tensor = &self.outputs[index].tensor;
        let n = tensor.values.len();
        let flat_shape = [n];
        let dims: &[usize] = if flat { &flat_shape } else { &tensor.shape };
        if dims.is_empty() || n == 0 || dims.iter().product::<usize>() != n {
            // A scalar, an empty or an irregular tensor: whole, as the one-buffer writer does.
            let _ = if flat { write_flat(out, &tensor.values) } else { write_nested(out, tensor, 0, 0) };
            return true;
        }
        let stride = n / dims[0];
        // Cannot fail: JSON values do not come this way.
        list_items(out, &mut self.at, dims[0], limit, |out, i| {
            let _ = if dims.len() == 1 {
                write_value(out, &tensor.values, i)
            } else {
                write_nested(out, tensor, 1, i * stride)
            };
        })
    }

    /// Write more rows of the echo; whether they are complete.
    fn rows(&mut self, out: &mut Vec<u8>, limit: usize) -> bool {
        let (table, features) = (&self.table, &self.features);
        let echo = self.echo.as_ref().map(|(body, cells)| (&body[..], cells));
        list_items(out, &mut self.at, table.n_rows, limit, |out, r| write_row(out, table, features, echo, r))
    }
}

/// Write more items of a JSON list of `count` (`at` of them written before) until `out` holds
/// `limit` bytes; whether the list is complete.
fn list_items(
    out: &mut Vec<u8>,
    at: &mut usize,
    count: usize,
    limit: usize,
    mut item: impl FnMut(&mut Vec<u8>, usize),
) -> bool {
    if count == 0 {
        out.extend_from_slice(b"[]");
        return true;
    }
    while *at < count && out.len() < limit {
        out.push(if *at == 0 { b'[' } else { b',' });
        item(out, *at);
        *at += 1;
    }
    if *at < count {
        return false;
    }
    out.push(b']');
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{ModelSource, Registry};
    use mldeploy_model::{ClassLabels, Feature, FeatureValues, Model, ModelInfo, Response, Schema};
    use serde_json::json;

    struct Fixed(ModelInfo);

    impl Model for Fixed {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn predict(&self, _: &PredictInput) -> Result<Response, ModelError> {
            Ok(Response::default())
        }
    }

    fn feature(name: &str, dtype: Dtype) -> Feature {
        Feature { name: name.into(), dtype, values: None, allow_nan: true, missing: false }
    }

    fn registry(features: Vec<Feature>, classes: Value) -> Registry {
        let info = ModelInfo {
            name: "m \"q\" é".into(),
            version: "1.0".into(),
            kind: "custom".into(),
            features,
            outputs: json!({"classes": classes}),
            ..ModelInfo::default()
        };
        Registry::new(vec![(Arc::new(Fixed(info)) as Arc<dyn Model>, ModelSource::default())], "/api/ml")
            .unwrap()
    }

    fn output(name: &str, role: Role, tensor: Tensor) -> Output {
        Output { name: name.to_string().into(), role, tensor }
    }

    /// The direct writer gives serde_json's bytes of [`Body`].
    fn same(
        entry: &ModelEntry,
        response: &Response,
        table: Option<&Table>,
        topic: Option<&str>,
        rejected: &[RowError],
    ) {
        let parts = Fragments::new(entry);
        let expected = serde_json::to_vec(&Body::new(entry, response, table, topic, rejected)).unwrap();
        let written = write_body(entry, &parts, response, table, topic, rejected, None).unwrap();
        assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected).unwrap());
        if let Some(table) = table {
            streamed_same(entry, response, table, topic, rejected, None);
        }
    }

    /// The chunked writer gives the one-buffer writer's bytes, wherever the chunks end; or it
    /// declines the answer (JSON targets, an `input` of the model's own).
    fn streamed_same(
        entry: &ModelEntry,
        response: &Response,
        table: &Table,
        topic: Option<&str>,
        rejected: &[RowError],
        echo: Option<(&[u8], &EchoText)>,
    ) {
        let parts = Fragments::new(entry);
        let whole = write_body(entry, &parts, response, Some(table), topic, rejected, echo).unwrap();
        let typed = match &response.target {
            Target::Outputs { outputs, .. } => outputs.iter().all(|o| !holds_json(&o.tensor.values)),
            Target::Json(_) => false,
        };
        // Typed answers echoing the rows stream; the others go whole.
        assert_eq!(streams(response), typed && response.input.is_none(), "declined or streamed wrongly");
        if !streams(response) {
            return;
        }
        let mut tail = Vec::new();
        write_tail(&mut tail, &parts, response, topic, rejected).unwrap();
        for limit in [1, 2, 3, 7, 64, 1000, 1 << 20] {
            let echo = echo.map(|(body, cells)| (Bytes::copy_from_slice(body), cells.clone()));
            let mut streamed =
                Streamed::new(entry, &parts, response.clone(), table.clone(), echo, tail.clone());
            let mut out = Vec::new();
            let mut chunks = 0;
            while let Some(chunk) = streamed.next_chunk(limit) {
                assert!(!chunk.is_empty());
                out.extend_from_slice(&chunk);
                chunks += 1;
                assert!(chunks <= whole.len() + 1, "the chunks do not end");
            }
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(whole.clone()).unwrap(),
                "limit {limit}"
            );
        }
    }

    #[test]
    fn written_answers_are_serde_json_s() {
        let mut numeric =
            vec![feature("a", Dtype::Float), feature("b", Dtype::Int), feature("c", Dtype::Bool)];
        numeric[0].values = Some(FeatureValues::Range { min: None, max: None });
        let models = registry(
            vec![
                numeric[0].clone(),
                numeric[1].clone(),
                numeric[2].clone(),
                feature("d", Dtype::Category),
                Feature { missing: true, ..feature("e", Dtype::Category) },
            ],
            json!(["x", "y\n", 3]),
        );
        let entry = models.get(0);
        let table = Table {
            n_rows: 2,
            columns: vec![
                Column::Numeric(vec![5.1, f64::NAN]),
                Column::Numeric(vec![3.0, 1e17]),
                Column::Numeric(vec![1.0, 0.0]),
                Column::Category(vec!["a\"b".into(), "ç".into()]),
                Column::OptionalCategory(vec![None, Some("z".into())]),
            ],
            source_rows: vec![0, 2],
        };
        let labels = ClassLabels::new(vec![json!("x"), json!("y\n")]);
        let outputs = vec![
            output("predict", Role::Labels, labels.tensor(vec![0, 1])),
            output(
                "predict_proba",
                Role::Probabilities,
                Tensor::fp64_matrix(vec![0.25, 0.75, f64::INFINITY, 1e-7], 2),
            ),
            output("extra", Role::Other, Tensor::fp64(vec![1.0, 2.5])),
            output("classes", Role::Other, Tensor::fp64(vec![9.0])),
        ];
        let rejected = vec![RowError {
            row: Some(1),
            feature: Some("a".into()),
            reason: "not_finite".into(),
            message: "m".into(),
        }];
        let mut response = Response { target: Target::outputs(outputs.clone()), ..Response::default() };
        same(entry, &response, Some(&table), None, &[]);
        same(entry, &response, Some(&table), Some("predict"), &rejected);
        response.topics = vec!["t1".into(), "predict".into()];
        response.list_metrics = vec![MetricValue::gauge("F1", 0.5)];
        same(entry, &response, Some(&table), Some("predict"), &[]);
        response.target = Target::Outputs { outputs: outputs.clone(), by_name: true };
        same(entry, &response, None, None, &[]);
        let mut column = Tensor::fp64(vec![1.5, -2.0]);
        column.shape = vec![2, 1];
        let scalar = Tensor { shape: vec![], ..Tensor::fp64(vec![4.0]) };
        response.target = Target::outputs(vec![
            output("variable", Role::Values, column),
            output("s", Role::Other, scalar),
            output(
                "i",
                Role::Other,
                Tensor { values: Values::Int(vec![-3, 4]), ..Tensor::fp64(vec![0.0; 2]) },
            ),
            output(
                "b",
                Role::Other,
                Tensor { values: Values::Bool(vec![true, false]), ..Tensor::fp64(vec![0.0; 2]) },
            ),
            output(
                "j",
                Role::Other,
                Tensor {
                    values: Values::Json(vec![json!({"k": [1]}), json!(null)]),
                    ..Tensor::fp64(vec![0.0; 2])
                },
            ),
        ]);
        same(entry, &response, Some(&table), None, &[]);
        response.target = Target::Json(json!({"y_predicted": [1, 2]}));
        response.input = Some(json!({"data": [[1]]}));
        same(entry, &response, Some(&table), None, &[]);
        let no_classes = registry(numeric, Value::Null);
        response.input = None;
        same(no_classes.get(0), &response, None, None, &[]);
    }

    /// Labels held as class indexes give the answer the plain labels gave, whole and in
    /// chunks, and are declined by the chunked writer exactly when the plain labels were.
    #[test]
    fn labels_by_index_answer_as_plain_labels() {
        let models = registry(vec![feature("a", Dtype::Float)], json!(["x", "y\n"]));
        let entry = models.get(0);
        let parts = Fragments::new(entry);
        let table = Table {
            n_rows: 3,
            columns: vec![Column::Numeric(vec![1.0, 2.5, -3.0])],
            source_rows: vec![0, 1, 2],
        };
        let answer = |labels: Tensor| {
            let outputs = vec![
                output("predict", Role::Labels, labels),
                output("predict_proba", Role::Probabilities, Tensor::fp64_matrix(vec![0.5; 6], 2)),
            ];
            let response = Response { target: Target::outputs(outputs), ..Response::default() };
            let whole = write_body(entry, &parts, &response, Some(&table), None, &[], None).unwrap();
            let chunked = streams(&response).then(|| {
                let mut tail = Vec::new();
                write_tail(&mut tail, &parts, &response, None, &[]).unwrap();
                let mut streamed = Streamed::new(entry, &parts, response, table.clone(), None, tail);
                let mut out = Vec::new();
                while let Some(chunk) = streamed.next_chunk(5) {
                    out.extend_from_slice(&chunk);
                }
                out
            });
            (String::from_utf8(whole).unwrap(), chunked.map(|c| String::from_utf8(c).unwrap()))
        };
        let class_lists = [
            vec![json!("x"), json!("y\n"), json!("\"é\"")],
            vec![json!(3), json!(-1)],
            vec![json!(0.5), json!(2)],
            vec![json!(true), json!(false)],
            vec![json!("x"), json!(3)],
        ];
        for classes in class_lists {
            let tensor = ClassLabels::new(classes.clone()).tensor(vec![1, 0, 1]);
            let Values::Classes(by_index) = &tensor.values else { panic!("labels by index") };
            let plain = Tensor { values: by_index.expand(), ..tensor.clone() };
            let (by_index, plain) = (answer(tensor), answer(plain));
            assert_eq!(by_index, plain, "{classes:?}");
            // Labels of mixed types are JSON values, which answers write whole.
            let mixed = classes == [json!("x"), json!(3)];
            assert_eq!(by_index.1.is_none(), mixed, "{classes:?}");
            if let Some(chunked) = &by_index.1 {
                assert_eq!(chunked, &by_index.0);
            }
        }
    }

    #[test]
    fn echo_copies_the_request_text() {
        let models = registry(vec![feature("a", Dtype::Float), feature("b", Dtype::Int)], json!([0, 1]));
        let entry = models.get(0);
        // Spaced rows (copied cell by cell) and compact ones (copied whole when every cell is).
        let bodies: [&[u8]; 2] = [
            br#"{"data": [[5.1, 3], [1e2, -0], [0.30000000000000004, 12], [2.50, 7.0]]}"#,
            br#"{"data":[[5.1,3],[1e2,-0],[0.30000000000000004,12],[2.50,7],[0.5,7.0],[-1.25,-4]]}"#,
        ];
        for body in bodies {
            let schema = Schema::new(entry.info().features.clone());
            let rows = fast::decode(&schema, body).unwrap();
            let response = Response::default();
            let parts = Fragments::new(entry);
            let expected =
                serde_json::to_vec(&Body::new(entry, &response, Some(&rows.table), None, &[])).unwrap();
            let written =
                write_body(entry, &parts, &response, Some(&rows.table), None, &[], Some((body, &rows.echo)))
                    .unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), String::from_utf8(expected).unwrap());
        }
    }

    #[test]
    fn chunked_answers_are_the_one_buffer_answers() {
        let models = registry(vec![feature("a", Dtype::Float), feature("b", Dtype::Int)], json!(["n", "p"]));
        let entry = models.get(0);
        // Cells copied from the request and cells formatted (1e2, -0, 2.50, 7.0), many rows.
        let cells = ["5.1, 3", "1e2, -0", "0.30000000000000004, 12", "2.50, 7.0", "-0.001, 8"];
        let rows: Vec<String> = (0..23).map(|i| format!("[{}]", cells[i % cells.len()])).collect();
        let body = format!("{{\"data\": [{}]}}", rows.join(", "));
        let schema = Schema::new(entry.info().features.clone());
        let decoded = fast::decode(&schema, body.as_bytes()).unwrap();
        let n = decoded.table.n_rows;
        let labels = ClassLabels::new(vec![json!("n"), json!("p")]);
        let mut column = Tensor::fp64((0..n).map(|i| i as f64 * 0.5).collect());
        column.shape = vec![n, 1];
        let cube =
            Tensor { shape: vec![n, 2, 3], ..Tensor::fp64((0..n * 6).map(|i| i as f64 / 7.0).collect()) };
        let shapes = [
            vec![
                output("predict", Role::Labels, labels.tensor((0..n).map(|i| i as u32 % 2).collect())),
                output(
                    "predict_proba",
                    Role::Probabilities,
                    Tensor::fp64_matrix((0..2 * n).map(|i| (i % 5) as f64 / 4.0).collect(), 2),
                ),
            ],
            vec![output("variable", Role::Values, column), output("cube", Role::Other, cube)],
            vec![output("empty", Role::Other, Tensor { shape: vec![0, 2], ..Tensor::fp64(vec![]) })],
        ];
        for outputs in shapes {
            for by_name in [false, true] {
                let mut response = Response {
                    target: Target::Outputs { outputs: outputs.clone(), by_name },
                    ..Response::default()
                };
                streamed_same(
                    entry,
                    &response,
                    &decoded.table,
                    None,
                    &[],
                    Some((body.as_bytes(), &decoded.echo)),
                );
                streamed_same(entry, &response, &decoded.table, None, &[], None);
                response.list_metrics = vec![MetricValue::gauge("F1", 0.5)];
                response.topics = vec!["t".into()];
                let rejected =
                    vec![RowError { row: Some(3), feature: None, reason: "r".into(), message: "m".into() }];
                streamed_same(entry, &response, &decoded.table, Some("predict"), &rejected, None);
            }
        }
    }
}
