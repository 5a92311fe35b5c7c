//! Answering one request: find its route, check its method, read its body within the limits,
//! call the route's handler, record metrics and the access log, and build the response.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use slog::{debug, info};

use super::exchange::{ConnState, ResBody, LARGE_EXCHANGE_BYTES};
use super::router::Matched;
use super::Server;
use crate::protocol::{error_json, Answer, Reply, Request as ProtocolRequest};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const CLOSE: HeaderValue = HeaderValue::from_static("close");
/// Longest client-sent request id that is kept.
const MAX_REQUEST_ID: usize = 128;

/// Answer one request whose head began to arrive at `started` and was complete at `t0`.
pub(crate) async fn handle(
    server: Arc<Server>,
    state: Arc<ConnState>,
    seq: u64,
    remote: SocketAddr,
    req: Request<Incoming>,
    started: Instant,
    t0: Instant,
) -> Result<Response<ResBody>, Infallible> {
    let metrics = &server.ctx.metrics;
    let in_flight = metrics.request_started();
    let (mut parts, body) = req.into_parts();
    let id = request_id(&server, &parts.headers);
    let id_text = id.to_str().unwrap_or("-");
    let matched = server.router.find(parts.uri.path());

    let mut reply = answer(&server, &state, &parts, body, matched.as_ref(), id_text, started).await;
    if server.ctx.draining() {
        reply.close = true;
    }

    let status = reply.status.as_u16();
    let bytes = reply.body.len();
    let template = matched.as_ref().map_or("unmatched", |m| m.entry.pattern.as_str());
    let seconds = t0.elapsed().as_secs_f64();
    let model = match reply.model {
        Some(index) => &server.ctx.models.get(index as usize).metric_key,
        None => &server.unmatched_key,
    };
    metrics.request_finished(model, method_label(&parts.method), template, status, seconds);
    drop(in_flight);
    if server.ctx.settings.access_log {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        // A chunked answer's length is known only once it is sent: logged as none.
        let bytes = reply.chunks.is_none().then_some(bytes);
        info!(server.ctx.access_log, "request";
            "remote" => %remote, "method" => parts.method.as_str(), "path" => path, "status" => status,
            "bytes" => bytes, "duration_ms" => seconds * 1000.0, "request_id" => id_text);
    }
    // The request's header map, emptied, holds the answer's: its memory is reused.
    let headers = std::mem::take(&mut parts.headers);
    let response = into_response(&server, state, seq, headers, reply, id);
    server.request_completed();
    Ok(response)
}

async fn answer(
    server: &Server,
    state: &ConnState,
    parts: &Parts,
    body: Incoming,
    matched: Option<&Matched<'_>>,
    id: &str,
    started: Instant,
) -> Reply {
    let Some(matched) = matched else {
        return unread(state, &body, not_found(parts, id));
    };
    let entry = matched.entry;
    let method = &parts.method;
    if method == Method::OPTIONS
        && (parts.headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) || !entry.takes_options())
    {
        return unread(state, &body, preflight(parts, entry.allow.clone()));
    }
    let Some(route) = entry.route_for(method) else {
        let message = format!("{} is not allowed here", method.as_str());
        let reply = Reply::error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", &message, id)
            .header(header::ALLOW, entry.allow.clone());
        return unread(state, &body, reply);
    };
    let body = match read_body(server, state, parts, body, started, id).await {
        Ok(body) => body,
        Err(reply) => return reply,
    };
    let read = body.len();
    let request = ProtocolRequest { parts, body, id, params: &matched.params };
    let reply = match (route.handler)(&server.ctx, request) {
        Answer::Now(reply) => reply,
        Answer::Later(pending) => pending.await,
    };
    after_reading(reply, read)
}

/// Marks the answer to a request whose body had `read` bytes when it was answered: a large
/// read makes a large exchange, whether the request was served or refused partway.
fn after_reading(reply: Reply, read: usize) -> Reply {
    Reply { large_request: read >= LARGE_EXCHANGE_BYTES, ..reply }
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
    let mut reply = Reply::json(StatusCode::NO_CONTENT, Bytes::new());
    reply.content_type = None;
    reply.headers = vec![
        (header::ALLOW, allow.clone()),
        (header::ACCESS_CONTROL_ALLOW_METHODS, allow),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, requested),
        (header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600")),
    ];
    reply
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
        // A frame that has arrived is taken without arming the deadline's timer (most bodies
        // arrive with their head).
        let polled = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(frame) => Ok(frame),
            Poll::Pending => tokio::time::timeout_at(deadline, body.frame()).await,
        };
        let frame = match frame {
            Err(_) => {
                state.mark_linger();
                let message = "the request body did not arrive in time";
                let reply = Reply::error(StatusCode::REQUEST_TIMEOUT, "request_timeout", message, id);
                return Err(after_reading(reply.closing(), total));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!(server.ctx.log, "request body failed"; "error" => %e, "request_id" => id);
                state.mark_linger();
                let message = "the request body could not be read (malformed chunked encoding or cut short)";
                let reply = Reply::error(StatusCode::BAD_REQUEST, "bad_request", message, id);
                return Err(after_reading(reply.closing(), total));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total > limit {
            return Err(after_reading(too_large(state), total));
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
        // The declared length has arrived: no need to wait for the end to be said.
        if body.is_end_stream() {
            break;
        }
    }
    Ok(match joined {
        Some(buf) => buf.freeze(),
        None => first.unwrap_or_default(),
    })
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

/// The response to `reply`, its headers written into `headers` (the request's, whose `Origin`
/// is read first).
fn into_response(
    server: &Arc<Server>,
    state: Arc<ConnState>,
    seq: u64,
    mut headers: HeaderMap,
    reply: Reply,
    id: HeaderValue,
) -> Response<ResBody> {
    let large = (reply.large_request || reply.body.len() >= LARGE_EXCHANGE_BYTES || reply.chunks.is_some())
        .then(|| server.clone());
    let body = match reply.chunks {
        Some(chunks) => ResBody::chunked(*chunks, state, seq, large),
        None => ResBody::new(reply.body, state, seq, large),
    };
    let origin = headers.remove(header::ORIGIN);
    headers.clear();
    if let Some(content_type) = reply.content_type {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert(X_REQUEST_ID, id);
    server.cors.apply(origin.as_ref(), &mut headers);
    if reply.close {
        headers.insert(header::CONNECTION, CLOSE);
    }
    for (name, value) in reply.headers {
        headers.insert(name, value);
    }
    let mut response = Response::new(body);
    *response.status_mut() = reply.status;
    *response.headers_mut() = headers;
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
    server.ctx.metrics.request_finished(&server.unmatched_key, "OTHER", "unmatched", status, 0.0);
    if server.ctx.settings.access_log {
        info!(server.ctx.access_log, "request";
            "remote" => %remote, "method" => "-", "path" => "-", "status" => status,
            "bytes" => bytes, "duration_ms" => 0.0, "request_id" => id);
    }
}
