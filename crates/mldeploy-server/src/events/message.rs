//! One event as it goes on the wire: its topics, key, headers and JSON payload.
//!
//! Everything here except [`for_each_topic`] runs on the producer thread, so the request path
//! never serializes anything for Kafka.

use serde_json::{Map, Value};

use super::{Event, EventKind};

/// Calls `f` once for every topic an event goes to: the route's own topic first, then each
/// string in the response's `"topics"` list, each name once (the server may already have put
/// the route's topic in that list).
pub(crate) fn for_each_topic<'a>(route_topic: &'a str, response: &'a Value, mut f: impl FnMut(&'a str)) {
    f(route_topic);
    let Some(listed) = response.get("topics").and_then(Value::as_array) else {
        return;
    };
    for (i, topic) in listed.iter().enumerate() {
        let Some(topic) = topic.as_str() else { continue };
        // Lists are a handful of names: a quadratic check beats allocating a set.
        let seen_before = topic == route_topic || listed[..i].iter().any(|t| t.as_str() == Some(topic));
        if !topic.is_empty() && !seen_before {
            f(topic);
        }
    }
}

/// A Kafka message built from an [`Event`], ready for every one of its topics.
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

/// Builds the message of `event`: the response JSON plus `timestamp` (ms since the epoch),
/// `request_id`, `worker_pid` and `route`. A response that is not a JSON object is kept whole
/// under `"response"`.
pub(crate) fn build(event: Event, topics: &Topics, stamp: Stamp) -> Message {
    let route_topic = topics.of(event.kind);
    let mut names = Vec::new();
    for_each_topic(route_topic, &event.response, |t| names.push(t.to_string()));
    let text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    };
    let model = event.response.get("model").and_then(text);
    let version = event.response.get("version").and_then(text);

    let mut doc = match event.response {
        Value::Object(map) => map,
        other => {
            let mut map = Map::new();
            map.insert("response".into(), other);
            map
        }
    };
    doc.insert("timestamp".into(), stamp.timestamp_ms.into());
    doc.insert("request_id".into(), event.request_id.into());
    doc.insert("worker_pid".into(), stamp.worker_pid.into());
    doc.insert("route".into(), event.route.into());
    // A map of JSON values always serializes.
    let payload = serde_json::to_vec(&doc).unwrap_or_default();
    Message { topics: names, model, version, timestamp_ms: stamp.timestamp_ms, payload }
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

    fn topics() -> Topics {
        Topics { predict: "predict".into(), feedback: "feedback".into() }
    }

    fn listed(route_topic: &str, response: &Value) -> Vec<String> {
        let mut out = Vec::new();
        for_each_topic(route_topic, response, |t| out.push(t.to_string()));
        out
    }

    #[test]
    fn topics_are_the_route_topic_then_the_listed_ones_each_once() {
        let response = json!({"topics": ["predict", "audit", "", 7, "audit", "drift", "predict"]});
        assert_eq!(listed("predict", &response), ["predict", "audit", "drift"]);
        assert_eq!(listed("feedback", &json!({"topics": []})), ["feedback"]);
        assert_eq!(listed("feedback", &json!({"topics": "audit"})), ["feedback"]);
        assert_eq!(listed("feedback", &json!([1, 2])), ["feedback"]);
    }

    #[test]
    fn message_is_the_response_plus_request_context() {
        let event = Event {
            kind: EventKind::Feedback,
            response: json!({
                "target": {"y_true": [1]}, "input": [[1.0]],
                "list_metrics": [{"name": "F1", "type": "GAUGE", "value": 0.5}],
                "topics": ["feedback", "audit"], "model": "iris", "version": "3"
            }),
            request_id: "req-1".into(),
            route: "/api/ml/feedback".into(),
        };
        let message = build(event, &topics(), Stamp { timestamp_ms: 1_700_000_000_123, worker_pid: 42 });
        assert_eq!(message.topics, ["feedback", "audit"]);
        assert_eq!(message.model.as_deref(), Some("iris"));
        assert_eq!(message.version.as_deref(), Some("3"));
        assert_eq!(message.timestamp_ms, 1_700_000_000_123);
        let doc: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(doc["list_metrics"][0]["name"], "F1");
        assert_eq!(doc["target"]["y_true"], json!([1]));
        assert_eq!(doc["timestamp"], 1_700_000_000_123_i64);
        assert_eq!(doc["request_id"], "req-1");
        assert_eq!(doc["worker_pid"], 42);
        assert_eq!(doc["route"], "/api/ml/feedback");
        assert_eq!(doc["model"], "iris");
    }

    #[test]
    fn a_response_that_is_not_an_object_is_kept_whole() {
        let event = Event {
            kind: EventKind::Predict,
            response: json!([1, 2]),
            request_id: "r".into(),
            route: "/p".into(),
        };
        let message = build(event, &topics(), Stamp { timestamp_ms: 5, worker_pid: 1 });
        assert_eq!(message.topics, ["predict"]);
        assert_eq!(message.model, None);
        let doc: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(doc["response"], json!([1, 2]));
        assert_eq!(doc["route"], "/p");
    }
}
