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
use mldeploy_model::{
    Column, Dtype, Form, MetricValue, ModelError, Output, PredictInput, Role, RowError, Table, Target,
};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::Value;
use slog::error;

use super::server::API_VERSION;
use super::{error_json, internal_error, Methods, Protocol, Reply, Request, Route};
use crate::events::{EventKind, JsonEvent};
use crate::http::multipart;
use crate::pipeline::{Failure, Predicted};
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
            routes.push(Route::new(format!("{prefix}/predict"), Methods::Post, move |cx, req| {
                predict(cx, index, &req).unwrap_or_else(|e| e).for_model(index).into()
            }));
            if entry.model.supports_feedback() {
                routes.push(Route::new(format!("{prefix}/feedback"), Methods::Post, move |cx, req| {
                    feedback(cx, index, &req).unwrap_or_else(|e| e).for_model(index).into()
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

fn predict(cx: &ServeContext, index: usize, req: &Request<'_>) -> Result<Reply, Reply> {
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
    let body = if form.is_some() { Value::Null } else { parse_json(&req.body, id)? };
    let checked = calls.check_body(entry, &body).map_err(|e| failure(cx, Failure::Model(e), id))?;
    let input = PredictInput { body, table: checked.table, form };
    let predicted = calls.predict(entry, input, id).map_err(|e| failure(cx, e, id))?;
    Ok(answer(cx, entry, predicted, EventKind::Predict, &checked.rejected, id))
}

fn feedback(cx: &ServeContext, index: usize, req: &Request<'_>) -> Result<Reply, Reply> {
    let entry = cx.models.get(index);
    if is_multipart(req.parts) {
        return Err(unsupported("feedback takes a JSON body", req.id));
    }
    let body = parse_json(&req.body, req.id)?;
    let predicted = cx.calls().feedback(entry, body, req.id).map_err(|e| failure(cx, e, req.id))?;
    Ok(answer(cx, entry, predicted, EventKind::Feedback, &[], req.id))
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

/// Serialize the answer once; then, with events on, hand the same bytes to the event.
fn answer(
    cx: &ServeContext,
    entry: &ModelEntry,
    predicted: Predicted,
    kind: EventKind,
    rejected: &[RowError],
    id: &str,
) -> Reply {
    let Predicted { mut response, table } = predicted;
    // With events on, the response lists the route's topic (ml-deploy's `predict`/`feedback`,
    // as configured), as ml-deploy did.
    let route_topic = cx.events.topic(kind);
    let body = Body::new(entry, &response, table.as_ref(), route_topic, rejected);
    let bytes = match serde_json::to_vec(&body) {
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
            let listed = written.contains(&Some(o.name.as_str())) || has_probabilities && o.name == "classes";
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
