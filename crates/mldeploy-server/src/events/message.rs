//! One event as it goes on the wire: its topics, key, headers and JSON payload.
//!
//! Everything here runs on the producer thread (and [`Body::topics`] on the request thread when
//! an event is dropped), so the request path never serializes anything for Kafka. An event the
//! server serialized itself ([`Body::Json`]) arrives with the fields the producer needs, so its
//! bytes are copied, never parsed.

use std::sync::Arc;

use bytes::Bytes;

use super::{EventKind, ModelTag};

/// A response as the request thread handed it over: serialized by the server (the bytes the
/// client got), a JSON object whose `model` and `version` are those of `model`.
#[derive(Debug)]
pub(crate) struct Body {
    pub bytes: Bytes,
    /// The topics the model listed.
    pub topics: Vec<String>,
    pub model: Arc<ModelTag>,
}

impl Body {
    /// Every topic the event goes to: the route's own topic first, then each topic the
    /// response lists, each name once (the server may already have put the route's topic in
    /// that list).
    pub(crate) fn topics<'a>(&'a self, route_topic: &'a str) -> Vec<&'a str> {
        unique_topics(route_topic, self.topics.iter().map(String::as_str))
    }
}

/// The route's topic, then each non-empty name of `listed` not seen before.
fn unique_topics<'a>(route_topic: &'a str, listed: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut topics = vec![route_topic];
    for topic in listed {
        if !topic.is_empty() && !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    topics
}

/// A Kafka message built from an event, ready for every one of its topics.
#[derive(Debug)]
pub(crate) struct Message<'a> {
    /// Where it goes, deduplicated, the route's topic first.
    pub topics: Vec<&'a str>,
    /// The model name: message key and `model` header.
    pub model: &'a str,
    /// The model version: `version` header.
    pub version: &'a str,
    /// Milliseconds since the Unix epoch: the `timestamp` field and the Kafka timestamp.
    pub timestamp_ms: i64,
    /// The JSON document.
    pub payload: Vec<u8>,
}

/// Context the producer thread adds to each event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    /// When the request thread queued the event, in ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// PID of the worker that served the request.
    pub worker_pid: u32,
}

/// What an event is made of besides its body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    pub kind: EventKind,
    pub request_id: &'a str,
    pub route: &'a str,
    pub names: &'a Topics,
    pub stamp: Stamp,
}

/// Builds the message of an event into `payload` (cleared first; passed in so the producer
/// thread reuses one buffer): the response JSON object with `timestamp` (ms since the epoch),
/// `request_id`, `worker_pid` and `route` appended.
pub(crate) fn build<'a>(body: &'a Body, cx: Context<'a>, mut payload: Vec<u8>) -> Message<'a> {
    payload.clear();
    let route_topic = cx.names.of(cx.kind);
    payload.extend_from_slice(&body.bytes);
    reopen_object(&mut payload);
    let (model, version) = (body.model.name.as_str(), body.model.version.as_str());
    let mut digits = itoa::Buffer::new();
    payload.extend_from_slice(b"\"timestamp\":");
    payload.extend_from_slice(digits.format(cx.stamp.timestamp_ms).as_bytes());
    payload.extend_from_slice(b",\"request_id\":");
    push_json_str(&mut payload, cx.request_id);
    payload.extend_from_slice(b",\"worker_pid\":");
    payload.extend_from_slice(digits.format(cx.stamp.worker_pid).as_bytes());
    payload.extend_from_slice(b",\"route\":");
    push_json_str(&mut payload, cx.route);
    payload.push(b'}');
    Message { topics: body.topics(route_topic), model, version, timestamp_ms: cx.stamp.timestamp_ms, payload }
}

/// Appends `text` as a JSON string. Request ids and routes rarely need escaping: those that do
/// not are copied as they are.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    if text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, text);
    } else {
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Turns a serialized JSON object into its opening part, ready for one more member: drops
/// trailing whitespace and the closing brace, and adds a comma unless the object was empty.
fn reopen_object(payload: &mut Vec<u8>) {
    while payload.last().is_some_and(u8::is_ascii_whitespace) {
        payload.pop();
    }
    payload.pop();
    let empty = payload.iter().skip(1).all(u8::is_ascii_whitespace);
    if !empty {
        payload.push(b',');
    }
}

/// The configured topic of each route.
#[derive(Debug, Clone)]
pub(crate) struct Topics {
    pub predict: String,
    pub feedback: String,
}

impl Topics {
    /// The topic of `kind`'s route.
    pub fn of(&self, kind: EventKind) -> &str {
        match kind {
            EventKind::Predict => &self.predict,
            EventKind::Feedback => &self.feedback,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn names() -> Topics {
        Topics { predict: "predict".into(), feedback: "feedback".into() }
    }

    fn iris() -> Arc<ModelTag> {
        Arc::new(ModelTag { name: "iris".into(), version: "3".into() })
    }

    const STAMP: Stamp = Stamp { timestamp_ms: 1_700_000_000_123, worker_pid: 42 };

    fn context<'a>(kind: EventKind, request_id: &'a str, route: &'a str, names: &'a Topics) -> Context<'a> {
        Context { kind, request_id, route, names, stamp: STAMP }
    }

    fn response() -> Value {
        json!({
            "target": {"y_true": [1]}, "input": [[1.0]],
            "list_metrics": [{"name": "F1", "type": "GAUGE", "value": 0.5}],
            "topics": ["feedback", "audit"], "model": "iris", "version": "3"
        })
    }

    fn json_body(value: &Value) -> Body {
        let topics = value["topics"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t.as_str().map(String::from)).collect());
        Body {
            bytes: Bytes::from(serde_json::to_vec(value).unwrap()),
            topics: topics.unwrap_or_default(),
            model: iris(),
        }
    }

    #[test]
    fn topics_are_the_route_topic_then_the_listed_ones_each_once() {
        let body = |listed: &[&str]| Body {
            bytes: Bytes::from_static(b"{}"),
            topics: listed.iter().map(|t| t.to_string()).collect(),
            model: iris(),
        };
        assert_eq!(
            body(&["predict", "audit", "", "audit", "drift", "predict"]).topics("predict"),
            ["predict", "audit", "drift"]
        );
        assert_eq!(body(&[]).topics("feedback"), ["feedback"]);
    }

    #[test]
    fn message_is_the_response_plus_request_context() {
        let names = names();
        let body = json_body(&response());
        let cx = context(EventKind::Feedback, "req-\"1\"", "/api/ml/feedback", &names);
        let message = build(&body, cx, Vec::new());
        assert_eq!(message.topics, ["feedback", "audit"]);
        assert_eq!(message.model, "iris");
        assert_eq!(message.version, "3");
        assert_eq!(message.timestamp_ms, 1_700_000_000_123);
        let doc: Value = serde_json::from_slice(&message.payload).unwrap();
        let mut expected = response();
        expected["timestamp"] = json!(1_700_000_000_123_i64);
        expected["request_id"] = json!("req-\"1\"");
        expected["worker_pid"] = json!(42);
        expected["route"] = json!("/api/ml/feedback");
        assert_eq!(doc, expected);
    }

    #[test]
    fn request_ids_and_routes_are_escaped_only_when_they_need_it() {
        for text in
            ["plain-id_1.2", "", "é ünïcode", "quote\"", "back\\slash", "tab\tnew\nline\u{1}", "\u{7f}"]
        {
            let mut out = Vec::new();
            push_json_str(&mut out, text);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, text);
        }
    }

    #[test]
    fn the_payload_buffer_is_reused_from_a_clean_start() {
        let names = names();
        let cx = context(EventKind::Predict, "r", "/p", &names);
        let first = build(&json_body(&json!({"a": 1})), cx, Vec::new()).payload;
        let second = build(&json_body(&json!({"b": 2})), cx, first).payload;
        let doc: Value = serde_json::from_slice(&second).unwrap();
        assert_eq!(
            doc,
            json!({"b": 2, "timestamp": 1_700_000_000_123_i64, "request_id": "r", "worker_pid": 42, "route": "/p"})
        );
    }

    #[test]
    fn an_empty_object_gets_the_context_only() {
        let names = names();
        let body = Body { bytes: Bytes::from_static(b"{ } \n"), topics: vec![], model: iris() };
        let message = build(&body, context(EventKind::Predict, "r", "/p", &names), Vec::new());
        let doc: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(
            doc,
            json!({"timestamp": 1_700_000_000_123_i64, "request_id": "r", "worker_pid": 42, "route": "/p"})
        );
    }
}
