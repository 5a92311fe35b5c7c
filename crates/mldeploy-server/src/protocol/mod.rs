//! The protocols a worker speaks, one module each behind [`Protocol`]: the server's own routes
//! (health, readiness, version, metrics), ml-deploy's API, the Open Inference Protocol (V2) and
//! the models' custom routes.
//!
//! A protocol contributes [`Route`]s (a path pattern, the methods it takes, a handler) for the
//! models served; the HTTP layer routes, reads the body within its limits, calls the handler
//! and turns its [`Reply`] into a response. Handlers decode their wire format, run the
//! protocol-neutral [`crate::pipeline`] and render its typed answer. Adding a protocol is one
//! module and one line in [`all`].

pub(crate) mod custom;
pub(crate) mod ml_deploy;
pub(crate) mod server;
pub(crate) mod v2;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, StatusCode};
use serde::Serialize;

use crate::registry::Registry;
use crate::service::{HttpSettings, ServeContext};

/// The content type of JSON answers.
pub(crate) const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A request as a handler sees it: its head, its whole body, its id and the path parameters.
pub(crate) struct Request<'a> {
    pub parts: &'a Parts,
    pub body: Bytes,
    /// The request id (the client's `x-request-id`, or a new one).
    pub id: &'a str,
    /// Values of the route pattern's `{name}` segments, percent-decoded.
    pub params: &'a [(&'a str, String)],
}

impl Request<'_> {
    /// The value of path parameter `name`.
    pub(crate) fn param(&self, name: &str) -> &str {
        self.params.iter().find(|(n, _)| *n == name).map_or("", |(_, v)| v.as_str())
    }

    /// A request header as text.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.parts.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An answer before it becomes an HTTP response.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
    /// Close the connection after this answer.
    pub close: bool,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The request body read for it was large (the worker returns memory after such exchanges).
    pub large_request: bool,
    /// The model the request was about (its registry index), for the metric labels. A `u32`
    /// keeps `Reply` small enough to travel in `Result`s by value.
    pub model: Option<u32>,
    /// A large answer written while it is sent (then `body` is empty): chunked, without a
    /// Content-Length.
    pub chunks: Option<Box<Chunks>>,
}

/// An answer body produced chunk by chunk as the connection takes it: each call gives the next
/// chunk, `None` once the answer is complete. Only answers that cannot fail once begun are sent
/// this way (a failure must answer 500 before any byte of a 200 goes out).
pub(crate) struct Chunks(pub Box<dyn FnMut() -> Option<Bytes> + Send>);

impl std::fmt::Debug for Chunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chunks")
    }
}

impl Reply {
    /// A JSON answer.
    pub(crate) fn json(status: StatusCode, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            content_type: Some(JSON),
            body: body.into(),
            close: false,
            headers: Vec::new(),
            large_request: false,
            model: None,
            chunks: None,
        }
    }

    /// ml-deploy's error shape, which every route outside a protocol of its own answers with:
    /// `{"error": code, "message", "request_id"}`.
    pub(crate) fn error(status: StatusCode, error: &str, message: &str, id: &str) -> Reply {
        Reply::json(status, error_json(error, message, None, id))
    }

    /// Close the connection after this answer.
    pub(crate) fn closing(mut self) -> Reply {
        self.close = true;
        self
    }

    /// Add a header.
    pub(crate) fn header(mut self, name: HeaderName, value: HeaderValue) -> Reply {
        self.headers.push((name, value));
        self
    }

    /// Label the answer with the model it concerned.
    pub(crate) fn for_model(mut self, model: usize) -> Reply {
        self.model = u32::try_from(model).ok();
        self
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [mldeploy_model::RowError]>,
    request_id: &'a str,
}

/// `{"error", "message", "errors"?, "request_id"}` as bytes.
pub(crate) fn error_json(
    error: &str,
    message: &str,
    errors: Option<&[mldeploy_model::RowError]>,
    request_id: &str,
) -> Vec<u8> {
    serde_json::to_vec(&ErrorBody { error, message, errors, request_id }).unwrap_or_default()
}

/// The 500 answer to a model that failed or panicked (the details are in the log).
pub(crate) fn internal_error(id: &str) -> Reply {
    let message = "the model failed; the server log has the details under this request id";
    Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message, id)
}

/// What a handler gives back: an answer, or one that needs to wait (for the master).
pub(crate) enum Answer {
    Now(Reply),
    Later(Pin<Box<dyn Future<Output = Reply> + Send>>),
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Self {
        Answer::Now(reply)
    }
}

impl From<Result<Reply, Reply>> for Answer {
    fn from(result: Result<Reply, Reply>) -> Self {
        Answer::Now(result.unwrap_or_else(|e| e))
    }
}

/// A route's handler.
pub(crate) type Handler = Arc<dyn Fn(&Arc<ServeContext>, Request<'_>) -> Answer + Send + Sync>;

/// The methods a route takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Methods {
    /// GET and HEAD.
    Read,
    /// POST.
    Post,
    /// These, upper case; empty: any method.
    List(Vec<String>),
}

impl Methods {
    /// Whether `method` is taken.
    pub(crate) fn allows(&self, method: &Method) -> bool {
        match self {
            Methods::Read => method == Method::GET || method == Method::HEAD,
            Methods::Post => method == Method::POST,
            Methods::List(list) => {
                list.is_empty() || list.iter().any(|m| m.eq_ignore_ascii_case(method.as_str()))
            }
        }
    }

    /// Whether OPTIONS is listed explicitly (the route answers OPTIONS itself, except CORS
    /// preflights).
    pub(crate) fn takes_options(&self) -> bool {
        matches!(self, Methods::List(list) if list.is_empty() || list.iter().any(|m| m.eq_ignore_ascii_case("OPTIONS")))
    }

    /// The method names, for an `Allow` header.
    pub(crate) fn names(&self) -> Vec<String> {
        match self {
            Methods::Read => vec!["GET".into(), "HEAD".into()],
            Methods::Post => vec!["POST".into()],
            Methods::List(list) if list.is_empty() => {
                ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"].map(String::from).to_vec()
            }
            Methods::List(list) => list.iter().map(|m| m.to_ascii_uppercase()).collect(),
        }
    }
}

/// One route a protocol serves.
pub(crate) struct Route {
    /// The path, with `{name}` segments for parameters (`/v2/models/{model}/infer`). Metrics
    /// label requests with it, never with the raw path.
    pub pattern: String,
    pub methods: Methods,
    pub handler: Handler,
}

impl Route {
    /// A route calling `handler`.
    pub(crate) fn new(
        pattern: impl Into<String>,
        methods: Methods,
        handler: impl Fn(&Arc<ServeContext>, Request<'_>) -> Answer + Send + Sync + 'static,
    ) -> Route {
        Route { pattern: pattern.into(), methods, handler: Arc::new(handler) }
    }
}

/// A protocol: the routes it serves for a set of models.
pub(crate) trait Protocol {
    /// A short name, for logs.
    fn name(&self) -> &'static str;
    /// Its routes for `models`.
    fn routes(&self, models: &Registry, settings: &HttpSettings) -> Vec<Route>;
}

/// Every protocol, in the order their routes take precedence.
pub(crate) fn all() -> [&'static dyn Protocol; 4] {
    [&server::ServerRoutes, &ml_deploy::MlDeploy, &v2::OpenInference, &custom::CustomRoutes]
}
