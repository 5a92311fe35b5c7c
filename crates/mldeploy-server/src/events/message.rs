//! One event as it goes on the wire: its topics, key, headers and JSON payload.
//!
//! Everything here runs on the producer thread (and [`Body::topics`] on the request thread when
//! an event is dropped), so the request path never serializes anything for Kafka.

use std::io::Write as _;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;

use super::EventKind;

/// A response as the request thread handed it over.
#[derive(Debug)]
pub(crate) enum Body {
    /// Built as a JSON value.
    Value(Value),
    /// Already serialized (the bytes the client got): a JSON object.
    Json(Bytes),
}

/// The fields of a response the producer thread needs besides its bytes.
#[derive(Debug, Default, Deserialize)]
struct Head {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    topics: Option<Value>,
}

impl Head {
    fn of_value(response: &Value) -> Head {
        let field = |name| response.get(name).cloned();
        Head { model: field("model"), version: field("version"), topics: field("topics") }
    }
}

/// What kind of JSON a body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Object,
    OtherJson,
    NotJson,
}

impl Body {
    /// The model name, model version and listed topics, and the body's shape. Only an object
    /// has a head.
    fn inspect(&self) -> (Head, Shape) {
        match self {
            Body::Value(value @ Value::Object(_)) => (Head::of_value(value), Shape::Object),
            Body::Value(_) => (Head::default(), Shape::OtherJson),
            Body::Json(bytes) => {
                if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
                    // Parses the head fields only; `target` and `input` are skipped, not built.
                    if let Ok(head) = serde_json::from_slice(bytes) {
                        return (head, Shape::Object);
                    }
                }
                let shape = if is_json(bytes) { Shape::OtherJson } else { Shape::NotJson };
                (Head::default(), shape)
            }
        }
    }

    /// Every topic the event goes to: the route's own topic first, then each string in the
    /// response's `"topics"` list, each name once (the server may already have put the route's
    /// topic in that list).
    pub(crate) fn topics(&self, route_topic: &str) -> Vec<String> {
        topics(route_topic, &self.inspect().0)
    }
}

fn topics(route_topic: &str, head: &Head) -> Vec<String> {
    let mut topics = vec![route_topic.to_string()];
    let listed = head.topics.as_ref().and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for topic in listed.iter().filter_map(Value::as_str) {
        if !topic.is_empty() && !topics.iter().any(|t| t == topic) {
            topics.push(topic.to_string());
        }
    }
    topics
}

/// A Kafka message built from an event, ready for every one of its topics.
#[derive(Debug)]
pub(crate) struct Message {
    /// Where it goes, deduplicated, the route's topic first.
    pub topics: Vec<String>,
    /// The model name: message key and `model` header.
    pub model: Option<String>,
    /// The model version: `version` header.
    pub version: Option<String>,
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

/// Builds the message of an event: the response JSON object with `timestamp` (ms since the
/// epoch), `request_id`, `worker_pid` and `route` appended. A response that is not a JSON
/// object is kept whole under `"response"`.
pub(crate) fn build(
    kind: EventKind,
    body: Body,
    request_id: &str,
    route: &str,
    names: &Topics,
    stamp: Stamp,
) -> Message {
    let (head, shape) = body.inspect();
    let text = |v: &Option<Value>| match v {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(other) => Some(other.to_string()),
    };
    let (model, version) = (text(&head.model), text(&head.version));
    let topics = topics(names.of(kind), &head);

    // Room for the context fields, so appending them does not reallocate.
    const CONTEXT_ROOM: usize = 160;
    let mut payload = match body {
        Body::Value(value) => {
            let mut payload = Vec::with_capacity(512);
            // A JSON value always serializes.
            let _ = serde_json::to_writer(&mut payload, &value);
            payload
        }
        Body::Json(bytes) => {
            let mut payload = Vec::with_capacity(bytes.len() + CONTEXT_ROOM);
            payload.extend_from_slice(&bytes);
            payload
        }
    };
    while payload.last().is_some_and(u8::is_ascii_whitespace) {
        payload.pop();
    }
    if shape == Shape::Object {
        // Reopen the object.
        payload.pop();
        if !payload[1..].iter().all(u8::is_ascii_whitespace) {
            payload.push(b',');
        }
    } else {
        let inner = match shape {
            Shape::NotJson => serde_json::to_vec(&String::from_utf8_lossy(&payload)).unwrap_or_default(),
            _ => payload,
        };
        payload = Vec::with_capacity(inner.len() + CONTEXT_ROOM);
        payload.extend_from_slice(b"{\"response\":");
        payload.extend_from_slice(&inner);
        payload.push(b',');
    }
    // Writing to a Vec cannot fail; strings are escaped by serde_json.
    let _ = write!(
        payload,
        "\"timestamp\":{},\"request_id\":{},\"worker_pid\":{},\"route\":{}}}",
        stamp.timestamp_ms,
        Value::from(request_id),
        stamp.worker_pid,
        Value::from(route)
    );
    Message { topics, model, version, timestamp_ms: stamp.timestamp_ms, payload }
}

/// Whether `bytes` hold one JSON value (checked without building anything).
fn is_json(bytes: &[u8]) -> bool {
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
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
    use serde_json::json;

    use super::*;

    fn names() -> Topics {
        Topics { predict: "predict".into(), feedback: "feedback".into() }
    }

    const STAMP: Stamp = Stamp { timestamp_ms: 1_700_000_000_123, worker_pid: 42 };

    fn response() -> Value {
        json!({
            "target": {"y_true": [1]}, "input": [[1.0]],
            "list_metrics": [{"name": "F1", "type": "GAUGE", "value": 0.5}],
            "topics": ["feedback", "audit"], "model": "iris", "version": "3"
        })
    }

    #[test]
    fn topics_are_the_route_topic_then_the_listed_ones_each_once() {
        let body = Body::Value(json!({"topics": ["predict", "audit", "", 7, "audit", "drift", "predict"]}));
        assert_eq!(body.topics("predict"), ["predict", "audit", "drift"]);
        let body = Body::Json(Bytes::from_static(
            br#"{"topics": ["audit", "predict", "audit"], "x": [1, {"y": 2}]}"#,
        ));
        assert_eq!(body.topics("predict"), ["predict", "audit"]);
        assert_eq!(Body::Value(json!({"topics": []})).topics("feedback"), ["feedback"]);
        assert_eq!(Body::Value(json!({"topics": "audit"})).topics("feedback"), ["feedback"]);
        assert_eq!(Body::Value(json!([1, 2])).topics("feedback"), ["feedback"]);
        assert_eq!(Body::Json(Bytes::from_static(b"not json")).topics("feedback"), ["feedback"]);
    }

    #[test]
    fn message_is_the_response_plus_request_context() {
        let serialized = Bytes::from(serde_json::to_vec(&response()).unwrap());
        for body in [Body::Value(response()), Body::Json(serialized)] {
            let message = build(EventKind::Feedback, body, "req-\"1\"", "/api/ml/feedback", &names(), STAMP);
            assert_eq!(message.topics, ["feedback", "audit"]);
            assert_eq!(message.model.as_deref(), Some("iris"));
            assert_eq!(message.version.as_deref(), Some("3"));
            assert_eq!(message.timestamp_ms, 1_700_000_000_123);
            let doc: Value = serde_json::from_slice(&message.payload).unwrap();
            let mut expected = response();
            expected["timestamp"] = json!(1_700_000_000_123_i64);
            expected["request_id"] = json!("req-\"1\"");
            expected["worker_pid"] = json!(42);
            expected["route"] = json!("/api/ml/feedback");
            assert_eq!(doc, expected);
        }
    }

    #[test]
    fn a_response_that_is_not_an_object_is_kept_whole() {
        let cases = [
            (Body::Value(json!([1, 2])), json!([1, 2])),
            (Body::Json(Bytes::from_static(b" [1, 2] \n")), json!([1, 2])),
            (Body::Json(Bytes::from_static(b"{\"a\": 1} trailing")), json!("{\"a\": 1} trailing")),
            (Body::Json(Bytes::from_static(b"{\"a\": }")), json!("{\"a\": }")),
        ];
        for (body, kept) in cases {
            let message = build(EventKind::Predict, body, "r", "/p", &names(), STAMP);
            assert_eq!(message.topics, ["predict"]);
            assert_eq!(message.model, None);
            let doc: Value = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(doc["response"], kept);
            assert_eq!(doc["route"], "/p");
        }
    }

    #[test]
    fn an_empty_object_gets_the_context_only() {
        for body in [Body::Value(json!({})), Body::Json(Bytes::from_static(b"{ }"))] {
            let message = build(EventKind::Predict, body, "r", "/p", &names(), STAMP);
            let doc: Value = serde_json::from_slice(&message.payload).unwrap();
            assert_eq!(
                doc,
                json!({"timestamp": 1_700_000_000_123_i64, "request_id": "r", "worker_pid": 42, "route": "/p"})
            );
        }
    }
}
