//! The routes a model adds itself, as ml-deploy's `endpoints(app)` did: exact paths or
//! patterns (`/items/{id}`, `/files/{path*}`), the methods the model lists, answered by the
//! model's handler under the pipeline's guard.

use bytes::Bytes;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::StatusCode;
use mldeploy_model::{RouteHandler, RouteRequest};
use serde_json::Value;
use slog::error;

use super::ml_deploy::{failure, is_multipart, parse_form};
use super::{Methods, Protocol, Reply, Request, Route};
use crate::registry::{ModelEntry, Registry};
use crate::service::{HttpSettings, ServeContext};

/// Headers the server writes itself (besides the CORS ones): a route's own values for them are
/// dropped.
const SERVER_HEADERS: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::DATE,
];

fn server_writes(name: &HeaderName) -> bool {
    SERVER_HEADERS.contains(name) || name == "x-request-id" || name.as_str().starts_with("access-control-")
}

/// Every model's custom routes.
pub(crate) struct CustomRoutes;

impl Protocol for CustomRoutes {
    fn name(&self) -> &'static str {
        "custom"
    }

    fn routes(&self, models: &Registry, _settings: &HttpSettings) -> Vec<Route> {
        let mut routes = Vec::new();
        for (index, entry) in models.iter().enumerate() {
            for route in entry.model.routes() {
                let methods = Methods::List(route.methods.iter().map(|m| m.to_ascii_uppercase()).collect());
                let handler = route.handler;
                routes.push(Route::new(route.path, methods, move |cx, req| {
                    answer(cx, index, &handler, &req).unwrap_or_else(|e| e).for_model(index).into()
                }));
            }
        }
        routes
    }
}

fn answer(
    cx: &ServeContext,
    index: usize,
    handler: &RouteHandler,
    req: &Request<'_>,
) -> Result<Reply, Reply> {
    let entry = cx.models.get(index);
    let parts = req.parts;
    let form = if is_multipart(parts) { Some(parse_form(parts, &req.body, req.id)?) } else { None };
    let request = RouteRequest {
        method: parts.method.as_str().to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or("").to_string(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect(),
        body: Vec::from(req.body.clone()),
        form,
    };
    let out = cx.calls().guarded(req.id, || handler(&request)).map_err(|e| failure(cx, e, req.id))?;
    let (Ok(status), Ok(content_type)) =
        (StatusCode::from_u16(out.status), HeaderValue::from_str(&out.content_type))
    else {
        error!(cx.log, "custom route answered an invalid status or content type";
            "request_id" => req.id, "status" => out.status, "path" => &request.path);
        return Err(super::internal_error(req.id));
    };
    let body = if content_type.as_bytes().starts_with(b"application/json") {
        stamp_model(entry, out.body)
    } else {
        out.body
    };
    let mut reply = Reply::json(status, Bytes::from(body));
    reply.content_type = Some(content_type);
    for (name, value) in &out.headers {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value))
        else {
            error!(cx.log, "custom route answered an invalid header; left out";
                "request_id" => req.id, "header" => name, "path" => &request.path);
            continue;
        };
        if !server_writes(&name) {
            reply.headers.push((name, value));
        }
    }
    Ok(reply)
}

/// As ml-deploy, a JSON object answer gets `"model"` and `"version"` (unless it has them).
fn stamp_model(entry: &ModelEntry, body: Vec<u8>) -> Vec<u8> {
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&body) else { return body };
    if object.contains_key("model") || object.contains_key("version") {
        return body;
    }
    object.insert("model".into(), Value::from(entry.name()));
    object.insert("version".into(), Value::from(entry.version()));
    serde_json::to_vec(&object).unwrap_or(body)
}
