//! Routing and answering one request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use mldeploy_model::decode::{decode_data, decode_rows, OnError};
use mldeploy_model::{
    CustomRoute, FeedbackInput, Form, ModelError, ModelInfo, PredictInput, Response as ModelResponse,
    RouteRequest, RowError,
};
use serde::Serialize;
use serde_json::Value;
use slog::{debug, error, info};

use super::conn::ConnState;
use super::{multipart, ServeContext, Server, API_VERSION};
use crate::events::{EventKind, JsonEvent};
use crate::metrics::Format;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const JSON: HeaderValue = HeaderValue::from_static("application/json");
const CLOSE: HeaderValue = HeaderValue::from_static("close");
/// Longest client-sent request id that is kept.
const MAX_REQUEST_ID: usize = 128;

/// A response body: one buffer. Dropping it (hyper does once the answer is handed over)
/// marks the connection idle, which starts its keep-alive clock.
pub(crate) struct ResBody {
    data: Option<Bytes>,
    state: Arc<ConnState>,
    /// The request this answers, on its connection.
    seq: u64,
    /// Set when the exchange was large: told when it is over (see [`Server::large_exchange_ended`]).
    large: Option<Arc<Server>>,
}

/// A request or answer body at least this large counts as a large exchange: once the worker
/// has had none for a moment, it returns its free memory to the system.
const LARGE_EXCHANGE_BYTES: usize = 1 << 20;

impl ResBody {
    fn new(data: Bytes, state: Arc<ConnState>, seq: u64, large: Option<Arc<Server>>) -> Self {
        Self { data: (!data.is_empty()).then_some(data), state, seq, large }
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

impl Drop for ResBody {
    fn drop(&mut self) {
        self.state.end_request(self.seq);
        if let Some(server) = &self.large {
            server.large_exchange_ended();
        }
    }
}

/// The routes of this server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    Predict,
    Feedback,
    Metadata,
    Health,
    Ready,
    Version,
    Metrics,
    Custom(usize),
}

/// The route table: built-in paths under the prefix, then the model's custom routes.
pub(crate) struct Routes {
    predict: String,
    feedback: String,
    metadata: String,
    feedback_enabled: bool,
    custom: Vec<(CustomRoute, HeaderValue)>,
}

const ALLOW_POST: HeaderValue = HeaderValue::from_static("POST, OPTIONS");
const ALLOW_GET: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");
const ANY_METHOD: HeaderValue = HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

impl Routes {
    pub(crate) fn new(ctx: &ServeContext) -> Self {
        let trimmed = ctx.settings.api_prefix.trim_end_matches('/');
        let prefix = if trimmed.is_empty() || trimmed.starts_with('/') {
            trimmed.to_string()
        } else {
            format!("/{trimmed}")
        };
        let custom = ctx
            .model
            .routes()
            .into_iter()
            .map(|route| {
                let allow = if route.methods.is_empty() {
                    ANY_METHOD
                } else {
                    let mut methods: Vec<String> =
                        route.methods.iter().map(|m| m.to_ascii_uppercase()).collect();
                    if !methods.iter().any(|m| m == "OPTIONS") {
                        methods.push("OPTIONS".into());
                    }
                    HeaderValue::from_str(&methods.join(", ")).unwrap_or(ANY_METHOD)
                };
                (route, allow)
            })
            .collect();
        Self {
            predict: format!("{prefix}/predict"),
            feedback: format!("{prefix}/feedback"),
            metadata: format!("{prefix}/metadata"),
            feedback_enabled: ctx.model.supports_feedback(),
            custom,
        }
    }

    fn builtin(&self, path: &str) -> Option<Route> {
        Some(match path {
            p if p == self.predict => Route::Predict,
            p if p == self.feedback && self.feedback_enabled => Route::Feedback,
            p if p == self.metadata => Route::Metadata,
            "/health" => Route::Health,
            "/ready" => Route::Ready,
            "/version" => Route::Version,
            "/metrics" => Route::Metrics,
            _ => return None,
        })
    }

    pub(crate) fn find(&self, path: &str) -> Option<Route> {
        self.builtin(path).or_else(|| self.custom.iter().position(|(r, _)| r.path == path).map(Route::Custom))
    }

    /// Custom routes a built-in route hides.
    pub(crate) fn shadowed_custom_routes(&self) -> Vec<String> {
        self.custom
            .iter()
            .filter(|(r, _)| self.builtin(&r.path).is_some())
            .map(|(r, _)| r.path.clone())
            .collect()
    }

    /// The route's template, the only path metrics see.
    fn template(&self, route: Route) -> &str {
        match route {
            Route::Predict => &self.predict,
            Route::Feedback => &self.feedback,
            Route::Metadata => &self.metadata,
            Route::Health => "/health",
            Route::Ready => "/ready",
            Route::Version => "/version",
            Route::Metrics => "/metrics",
            Route::Custom(i) => &self.custom[i].0.path,
        }
    }

    fn allow(&self, route: Route) -> HeaderValue {
        match route {
            Route::Predict | Route::Feedback => ALLOW_POST,
            Route::Custom(i) => self.custom[i].1.clone(),
            _ => ALLOW_GET,
        }
    }

    fn allows(&self, route: Route, method: &Method) -> bool {
        match route {
            Route::Predict | Route::Feedback => method == Method::POST,
            Route::Custom(i) => {
                let methods = &self.custom[i].0.methods;
                methods.is_empty() || methods.iter().any(|m| m.eq_ignore_ascii_case(method.as_str()))
            }
            _ => method == Method::GET || method == Method::HEAD,
        }
    }
}

/// Answers computed once per worker.
pub(crate) struct Cached {
    metadata: Bytes,
    version: Bytes,
}

impl Cached {
    pub(crate) fn new(info: &ModelInfo) -> Self {
        let metadata = serde_json::json!({
            "name": info.name,
            "version": info.version,
            "kind": info.kind,
            "features": info.features,
            "outputs": info.outputs,
            "sample": info.sample,
            "api_version": API_VERSION,
        });
        let version = serde_json::json!({
            "model": info.name,
            "model_version": info.version,
            "api_version": API_VERSION,
            "mldeploy_version": env!("CARGO_PKG_VERSION"),
        });
        Self { metadata: Bytes::from(metadata.to_string()), version: Bytes::from(version.to_string()) }
    }
}

/// Which origins may call from a browser.
pub(crate) enum Cors {
    /// Every origin (`*`), as ml-deploy.
    Any,
    /// These origins only: the request's `Origin` is echoed when listed.
    Listed(Vec<HeaderValue>),
}

impl Cors {
    pub(crate) fn new(origins: &[String]) -> Self {
        if origins.iter().any(|o| o == "*") {
            Cors::Any
        } else {
            Cors::Listed(
                origins.iter().filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()).collect(),
            )
        }
    }

    fn apply(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        match self {
            Cors::Any => {
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            }
            Cors::Listed(allowed) => {
                headers.insert(header::VARY, HeaderValue::from_static("origin"));
                if let Some(origin) = origin.filter(|o| allowed.iter().any(|a| a.as_bytes() == o.as_bytes()))
                {
                    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                }
            }
        }
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, X_REQUEST_ID.into());
    }

    /// The header line for answers written without a request at hand.
    fn raw_line(&self) -> &'static str {
        match self {
            Cors::Any => "access-control-allow-origin: *\r\n",
            Cors::Listed(_) => "vary: origin\r\n",
        }
    }
}

/// An answer before it becomes a hyper response.
struct Reply {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
    /// Close the connection after this answer.
    close: bool,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The request body read for it was large (see [`LARGE_EXCHANGE_BYTES`]).
    large_request: bool,
}

/// `Err` carries an error answer, so handlers can use `?`.
type Answer = Result<Reply, Reply>;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [RowError]>,
    request_id: &'a str,
}

impl Reply {
    fn json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            content_type: Some(JSON),
            body: body.into(),
            close: false,
            headers: Vec::new(),
            large_request: false,
        }
    }

    /// Marks the answer to a request whose body had `read` bytes when it was answered: a large
    /// read makes a large exchange, whether the request was served or refused partway.
    fn after_reading(self, read: usize) -> Self {
        Self { large_request: read >= LARGE_EXCHANGE_BYTES, ..self }
    }

    fn error(status: StatusCode, error: &str, message: &str, id: &str) -> Self {
        Self::json(status, error_json(error, message, None, id))
    }

    fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

fn error_json(error: &str, message: &str, errors: Option<&[RowError]>, request_id: &str) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody { error, message, errors, request_id }).unwrap_or_default()
}

/// Answer one request.
pub(crate) async fn handle(
    server: Arc<Server>,
    state: Arc<ConnState>,
    seq: u64,
    remote: SocketAddr,
    req: Request<Incoming>,
    started: Instant,
) -> Result<Response<ResBody>, Infallible> {
    let t0 = Instant::now();
    let metrics = &server.ctx.metrics;
    let in_flight = metrics.request_started();
    let (parts, body) = req.into_parts();
    let id = request_id(&server, &parts.headers);
    let id_text = id.to_str().unwrap_or("-");
    let route = server.routes.find(parts.uri.path());

    let mut reply = answer(&server, &state, &parts, body, route, id_text, started).await;
    if server.draining() {
        reply.close = true;
    }

    let status = reply.status.as_u16();
    let bytes = reply.body.len();
    let template = route.map_or("unmatched", |r| server.routes.template(r));
    let seconds = t0.elapsed().as_secs_f64();
    metrics.request_finished(method_label(&parts.method), template, status, seconds);
    drop(in_flight);
    if server.ctx.settings.access_log {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        info!(server.ctx.access_log, "request";
            "remote" => %remote, "method" => parts.method.as_str(), "path" => path, "status" => status,
            "bytes" => bytes, "duration_ms" => seconds * 1000.0, "request_id" => id_text);
    }
    let response = into_response(&server, state, seq, &parts, reply, id);
    server.request_completed();
    Ok(response)
}

async fn answer(
    server: &Server,
    state: &ConnState,
    parts: &Parts,
    body: Incoming,
    route: Option<Route>,
    id: &str,
    started: Instant,
) -> Reply {
    let routes = &server.routes;
    let Some(route) = route else {
        return unread(state, &body, not_found(parts, id));
    };
    let method = &parts.method;
    if method == Method::OPTIONS {
        let custom_takes_options = matches!(route, Route::Custom(_)) && routes.allows(route, method);
        if parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) || !custom_takes_options {
            return unread(state, &body, preflight(parts, routes.allow(route)));
        }
    }
    if !routes.allows(route, method) {
        let message = format!("{} is not allowed here", method.as_str());
        let reply = Reply::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &message, id)
            .header(header::ALLOW, routes.allow(route));
        return unread(state, &body, reply);
    }
    let body = match read_body(server, state, parts, body, started, id).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let read = body.len();
    let answered = match route {
        Route::Predict => predict(server, parts, &body, id),
        Route::Feedback => feedback(server, parts, &body, id),
        Route::Metadata => Ok(Reply::json(StatusCode::OK, server.cached.metadata.clone())),
        Route::Health => Ok(Reply::json(StatusCode::OK, &br#"{"status":"ok"}"#[..])),
        Route::Ready if server.draining() => Err(Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "this worker is shutting down",
            id,
        )),
        Route::Ready => Ok(Reply::json(StatusCode::OK, &br#"{"status":"ready"}"#[..])),
        Route::Version => Ok(Reply::json(StatusCode::OK, server.cached.version.clone())),
        Route::Metrics => metrics(server, parts, id),
        Route::Custom(i) => custom(server, i, parts, body, id),
    };
    answered.unwrap_or_else(|e| e).after_reading(read)
}

/// An answer given without reading the request body: if there is one, the connection
/// closes (and lingers), since the next request cannot be found after an unread body.
fn unread(state: &ConnState, body: &Incoming, reply: Reply) -> Reply {
    if body.is_end_stream() {
        reply
    } else {
        state.mark_linger();
        reply.closing()
    }
}

fn not_found(parts: &Parts, id: &str) -> Reply {
    let mut path = parts.uri.path();
    if path.len() > 200 {
        let mut cut = 200;
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        path = &path[..cut];
    }
    Reply::error(StatusCode::NOT_FOUND, "not_found", &format!("no route {path}"), id)
}

/// A CORS preflight (or plain OPTIONS) answer.
fn preflight(parts: &Parts, allow: HeaderValue) -> Reply {
    let requested = parts
        .headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or(HeaderValue::from_static("content-type, x-request-id"));
    Reply {
        status: StatusCode::NO_CONTENT,
        content_type: None,
        body: Bytes::new(),
        close: false,
        large_request: false,
        headers: vec![
            (header::ALLOW, allow.clone()),
            (header::ACCESS_CONTROL_ALLOW_METHODS, allow),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, requested),
            (header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600")),
        ],
    }
}

/// Read the whole body within the size limit and the request deadline.
async fn read_body(
    server: &Server,
    state: &ConnState,
    parts: &Parts,
    mut body: Incoming,
    started: Instant,
    id: &str,
) -> Result<Bytes, Reply> {
    if let Some(encoding) = parts.headers.get(header::CONTENT_ENCODING) {
        if !encoding.as_bytes().eq_ignore_ascii_case(b"identity") {
            let message = "compressed bodies are not accepted: send the body without Content-Encoding";
            return Err(unread(
                state,
                &body,
                Reply::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message, id),
            ));
        }
    }
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let limit = server.ctx.settings.max_body;
    let too_large = |state: &ConnState| {
        state.mark_linger();
        let message = format!("the body is larger than the limit of {limit} bytes");
        Reply::error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &message, id).closing()
    };
    let declared = body.size_hint().exact();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(state));
    }
    let deadline = tokio::time::Instant::from_std(started + server.ctx.settings.request_timeout);
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                state.mark_linger();
                let message = "the request body did not arrive in time";
                let reply = Reply::error(StatusCode::REQUEST_TIMEOUT, "request_timeout", message, id);
                return Err(reply.closing().after_reading(total));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!(server.ctx.log, "request body failed"; "error" => %e, "request_id" => id);
                state.mark_linger();
                let message = "the request body could not be read (malformed chunked encoding or cut short)";
                let reply = Reply::error(StatusCode::BAD_REQUEST, "bad_request", message, id);
                return Err(reply.closing().after_reading(total));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total > limit {
            return Err(too_large(state).after_reading(total));
        }
        match (&mut first, &mut joined) {
            (None, _) => first = Some(data),
            (Some(head), None) => {
                let capacity = declared.map_or(total * 2, |n| n as usize);
                let mut buf = BytesMut::with_capacity(capacity.min(limit));
                buf.put_slice(head);
                buf.put_slice(&data);
                joined = Some(buf);
            }
            (Some(_), Some(buf)) => buf.put_slice(&data),
        }
    }
    Ok(match joined {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
}

fn content_type(parts: &Parts) -> &str {
    parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("")
}

fn is_multipart(parts: &Parts) -> bool {
    content_type(parts).get(..19).is_some_and(|t| t.eq_ignore_ascii_case("multipart/form-data"))
}

fn parse_form(parts: &Parts, body: &[u8], id: &str) -> Result<Form, Reply> {
    let bad = |message: &str| Reply::error(StatusCode::BAD_REQUEST, "bad_request", message, id);
    let Some(boundary) = multipart::boundary(content_type(parts)) else {
        return Err(bad("multipart/form-data needs a boundary parameter"));
    };
    multipart::parse(body, &boundary).map_err(|m| bad(&format!("malformed multipart/form-data: {m}")))
}

fn parse_json(body: &[u8], id: &str) -> Result<Value, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        let message = "the body is empty: send a JSON document";
        return Err(Reply::error(StatusCode::BAD_REQUEST, "invalid_json", message, id));
    }
    serde_json::from_slice(body).map_err(|e| {
        let message = format!("the body is not valid JSON: {e}");
        Reply::error(StatusCode::BAD_REQUEST, "invalid_json", &message, id)
    })
}

fn predict(server: &Server, parts: &Parts, body: &[u8], id: &str) -> Answer {
    let form = if is_multipart(parts) {
        if server.schema.is_some() {
            let message = "this model takes its rows as JSON, not multipart/form-data";
            return Err(Reply::error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                message,
                id,
            ));
        }
        Some(parse_form(parts, body, id)?)
    } else {
        None
    };
    let json = if form.is_some() { Value::Null } else { parse_json(body, id)? };
    let metrics = &server.ctx.metrics;
    let (table, rejected) = match &server.schema {
        Some(schema) => {
            let (rows, on_error) = decode_rows(&json).map_err(|e| model_error(server, e, id))?;
            match schema.validate(&rows, on_error) {
                Ok(validated) => {
                    for e in &validated.rejected {
                        metrics.validation_failure(&e.reason);
                    }
                    (Some(validated.table), validated.rejected)
                }
                Err(e) => {
                    if let ModelError::Invalid { errors, .. } = &e {
                        for e in errors {
                            metrics.validation_failure(&e.reason);
                        }
                    }
                    return Err(model_error(server, e, id));
                }
            }
        }
        None => (None, Vec::new()),
    };
    let rows = table.as_ref().map(|t| t.n_rows as u64);
    let input = PredictInput { body: json, table, form };
    let model = &server.ctx.model;
    let response = call_model(server, id, || model.predict(&input))?;
    // The request's JSON and table are done with: free them before the answer is serialized,
    // which is when a large request needs the most memory.
    drop(input);
    let rows = rows.unwrap_or_else(|| {
        response.target.get("y_predicted").and_then(Value::as_array).map_or(1, |a| a.len() as u64)
    });
    metrics.predictions(rows);
    Ok(model_reply(server, response, EventKind::Predict, &rejected, id))
}

fn feedback(server: &Server, parts: &Parts, body: &[u8], id: &str) -> Answer {
    let bad = |message: &str| Reply::error(StatusCode::BAD_REQUEST, "bad_request", message, id);
    if is_multipart(parts) {
        let message = "feedback takes a JSON body";
        return Err(Reply::error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", message, id));
    }
    let Value::Object(mut body) = parse_json(body, id)? else {
        return Err(bad("the feedback body must be an object: {\"data\", \"y_true\", \"y_predict\"}"));
    };
    let Some(data) = body.remove("data") else { return Err(bad("`data` is required")) };
    let Some(y_true) = body.remove("y_true") else { return Err(bad("`y_true` is required")) };
    let y_predict = body.remove("y_predict").filter(|v| !v.is_null());
    let table = match &server.schema {
        Some(schema) => {
            let rows = decode_data(&data, body.get("names")).map_err(|e| model_error(server, e, id))?;
            // Labels go row by row with the data, so invalid rows refuse the whole request.
            let validated = schema.validate(&rows, OnError::Reject).map_err(|e| {
                if let ModelError::Invalid { errors, .. } = &e {
                    for e in errors {
                        server.ctx.metrics.validation_failure(&e.reason);
                    }
                }
                model_error(server, e, id)
            })?;
            let n = validated.table.n_rows;
            for (name, labels) in [("y_true", Some(&y_true)), ("y_predict", y_predict.as_ref())] {
                match labels {
                    Some(Value::Array(a)) if a.len() != n => {
                        return Err(bad(&format!("`{name}` has {} values for {n} rows", a.len())));
                    }
                    Some(Value::Array(_)) | None => {}
                    Some(_) if n == 1 => {}
                    Some(_) => return Err(bad(&format!("`{name}` must be a list with one value per row"))),
                }
            }
            Some(validated.table)
        }
        None => None,
    };
    let input = FeedbackInput { data, table, y_true, y_predict };
    let model = &server.ctx.model;
    let response = call_model(server, id, || model.feedback(&input))?;
    drop(input);
    Ok(model_reply(server, response, EventKind::Feedback, &[], id))
}

/// What predict and feedback answer, in ml-deploy's field order.
#[derive(Serialize)]
struct ModelBody<'a> {
    target: &'a Value,
    input: &'a Value,
    list_metrics: &'a [mldeploy_model::MetricValue],
    topics: TopicList<'a>,
    model: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "<[RowError]>::is_empty")]
    rejected: &'a [RowError],
}

/// The `topics` of an answer: those the model listed, then the route's own topic (with events
/// on) unless the model listed it already. Serialized as one list without building it.
struct TopicList<'a> {
    listed: &'a [String],
    route: Option<&'a str>,
}

impl Serialize for TopicList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
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

/// Serialize the model's response once; then, with events on, move it into the event.
fn model_reply(
    server: &Server,
    mut response: ModelResponse,
    kind: EventKind,
    rejected: &[RowError],
    id: &str,
) -> Reply {
    let events = &server.ctx.events;
    // With events on, the response lists the route's topic (ml-deploy's `predict`/`feedback`,
    // as configured), as ml-deploy did.
    let route_topic = events.topic(kind);
    let emit = route_topic.is_some();
    let route = match kind {
        EventKind::Predict => &server.routes.predict,
        EventKind::Feedback => &server.routes.feedback,
    };
    let info = server.ctx.model.info();
    let body = ModelBody {
        target: &response.target,
        input: &response.input,
        list_metrics: &response.list_metrics,
        topics: TopicList { listed: &response.topics, route: route_topic },
        model: &info.name,
        version: &info.version,
        rejected,
    };
    let bytes = match serde_json::to_vec(&body) {
        Ok(bytes) => bytes,
        Err(e) => {
            error!(server.ctx.log, "response not serializable"; "request_id" => id, "error" => %e);
            return internal_error(id);
        }
    };
    if emit {
        // The event carries the bytes the client got; the producer thread adds its context
        // fields without parsing or serialising the answer again.
        let bytes = Bytes::from(bytes);
        events.emit_json(JsonEvent {
            kind,
            body: bytes.clone(),
            // The model's own list; the producer adds the route's topic.
            topics: std::mem::take(&mut response.topics),
            request_id: id.to_string(),
            route: route.clone(),
        });
        return Reply::json(StatusCode::OK, bytes);
    }
    Reply::json(StatusCode::OK, bytes)
}

fn metrics(server: &Server, parts: &Parts, id: &str) -> Answer {
    let wants_open_metrics = parts
        .headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.contains("application/openmetrics-text")));
    let (format, content_type) = if wants_open_metrics {
        (Format::OpenMetrics, "application/openmetrics-text; version=1.0.0; charset=utf-8")
    } else {
        (Format::Prometheus, "text/plain; version=0.0.4; charset=utf-8")
    };
    // Rendering asks the model for its scrape-time gauges: model code, so guarded.
    let model = &server.ctx.model;
    let text = call_model(server, id, || Ok(server.ctx.metrics.render(format, Some(&**model))))?;
    let mut reply = Reply::json(StatusCode::OK, text);
    reply.content_type = Some(HeaderValue::from_static(content_type));
    Ok(reply)
}

fn custom(server: &Server, index: usize, parts: &Parts, body: Bytes, id: &str) -> Answer {
    let form = if is_multipart(parts) { Some(parse_form(parts, &body, id)?) } else { None };
    let request = RouteRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: Vec::from(body),
        form,
    };
    let handler = server.routes.custom[index].0.handler.clone();
    let out = call_model(server, id, || handler(&request))?;
    let (Ok(status), Ok(content_type)) =
        (StatusCode::from_u16(out.status), HeaderValue::from_str(&out.content_type))
    else {
        error!(server.ctx.log, "custom route answered an invalid status or content type";
            "request_id" => id, "status" => out.status, "path" => &request.path);
        return Err(internal_error(id));
    };
    let body = if content_type.as_bytes().starts_with(b"application/json") {
        stamp_model(server, out.body)
    } else {
        out.body
    };
    Ok(Reply {
        status,
        content_type: Some(content_type),
        body: Bytes::from(body),
        close: false,
        headers: Vec::new(),
        large_request: false,
    })
}

/// As ml-deploy, a JSON object answer gets `"model"` and `"version"` (unless it has them).
fn stamp_model(server: &Server, body: Vec<u8>) -> Vec<u8> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&body) else { return body };
    if object.contains_key("model") || object.contains_key("version") {
        return body;
    }
    let info = server.ctx.model.info();
    object.insert("model".into(), Value::from(info.name.as_str()));
    object.insert("version".into(), Value::from(info.version.as_str()));
    serde_json::to_vec(&object).unwrap_or(body)
}

/// Run model code under the busy mark and a panic guard.
fn call_model<T>(server: &Server, id: &str, f: impl FnOnce() -> Result<T, ModelError>) -> Result<T, Reply> {
    let outcome = {
        let _busy = server.ctx.worker.as_ref().map(|w| w.busy());
        catch_unwind(AssertUnwindSafe(f))
    };
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(model_error(server, e, id)),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            error!(server.ctx.log, "model panicked"; "request_id" => id, "panic" => message);
            Err(internal_error(id))
        }
    }
}

fn internal_error(id: &str) -> Reply {
    let message = "the model failed; the server log has the details under this request id";
    Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message, id)
}

fn model_error(server: &Server, e: ModelError, id: &str) -> Reply {
    match e {
        ModelError::Invalid { message, errors } => Reply::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            error_json("invalid_input", &message, Some(&errors), id),
        ),
        ModelError::BadRequest(message) => Reply::error(StatusCode::BAD_REQUEST, "bad_request", &message, id),
        ModelError::NotSupported(message) => {
            Reply::error(StatusCode::NOT_FOUND, "not_supported", &message, id)
        }
        ModelError::Load(message) | ModelError::Internal(message) => {
            error!(server.ctx.log, "model error"; "request_id" => id, "error" => message);
            internal_error(id)
        }
    }
}

/// The client's request id when sane (1..=128 visible ASCII characters), else a new one.
fn request_id(server: &Server, headers: &HeaderMap) -> HeaderValue {
    if let Some(sent) = headers.get(X_REQUEST_ID) {
        let b = sent.as_bytes();
        if !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(u8::is_ascii_graphic) {
            return sent.clone();
        }
    }
    HeaderValue::from_maybe_shared(Bytes::from(server.new_request_id()))
        .unwrap_or(HeaderValue::from_static("-"))
}

/// Method names as metric labels: a fixed set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

fn into_response(
    server: &Arc<Server>,
    state: Arc<ConnState>,
    seq: u64,
    parts: &Parts,
    reply: Reply,
    id: HeaderValue,
) -> Response<ResBody> {
    let large = (reply.large_request || reply.body.len() >= LARGE_EXCHANGE_BYTES).then(|| server.clone());
    let mut response = Response::new(ResBody::new(reply.body, state, seq, large));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    if let Some(content_type) = reply.content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(X_REQUEST_ID, id);
    server.cors.apply(parts.headers.get(header::ORIGIN), headers);
    if reply.close {
        headers.insert(header::CONNECTION, CLOSE);
    }
    for (name, value) in reply.headers {
        headers.insert(name, value);
    }
    response
}

/// A whole HTTP/1.1 error answer as bytes, for the few written outside hyper (a head that
/// timed out, hyper's own automatic answers). Always closes the connection.
pub(crate) fn raw_error(server: &Server, status: u16, error: &str, message: &str, id: &str) -> Vec<u8> {
    let body = error_json(error, message, None, id);
    let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Error");
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\nx-request-id: {id}\r\n{}access-control-expose-headers: x-request-id\r\n\r\n",
        body.len(),
        server.cors.raw_line(),
    );
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Metrics and access log of an answer written outside hyper (no method or path known).
pub(crate) fn log_raw(server: &Server, remote: SocketAddr, status: u16, bytes: usize, id: &str) {
    server.ctx.metrics.request_finished("OTHER", "unmatched", status, 0.0);
    if server.ctx.settings.access_log {
        info!(server.ctx.access_log, "request";
            "remote" => %remote, "method" => "-", "path" => "-", "status" => status,
            "bytes" => bytes, "duration_ms" => 0.0, "request_id" => id);
    }
}
