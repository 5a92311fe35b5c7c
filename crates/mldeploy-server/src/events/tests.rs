//! The event pipeline against no broker, an unreachable broker and a real one.
//!
//! The tests that need a broker start `scripts/kafka-broker.sh` on a free port. They are skipped
//! (with a message) when tansu is not installed, unless `MLDEPLOY_REQUIRE_KAFKA=1`, which makes
//! them install it and fail when they cannot.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::Command;
use std::sync::Mutex;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{json, Value};
use slog::{o, Drain};

use super::*;

/// Counts per (counter, topic).
#[derive(Default)]
struct TestStats(Mutex<HashMap<(&'static str, String), u64>>);

impl TestStats {
    fn add(&self, counter: &'static str, topic: &str) {
        *self.0.lock().unwrap().entry((counter, topic.to_string())).or_default() += 1;
    }
    fn get(&self, counter: &'static str, topic: &str) -> u64 {
        self.0.lock().unwrap().get(&(counter, topic.to_string())).copied().unwrap_or(0)
    }
}

impl EventStats for TestStats {
    fn sent(&self, topic: &str) {
        self.add("sent", topic)
    }
    fn delivered(&self, topic: &str) {
        self.add("delivered", topic)
    }
    fn failed(&self, topic: &str) {
        self.add("failed", topic)
    }
    fn dropped(&self, topic: &str) {
        self.add("dropped", topic)
    }
}

/// A logger that keeps each line as `message key=value ...`.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn logger(&self) -> Logger {
        Logger::root(self.clone().fuse(), o!())
    }
    fn matching(&self, needle: &str) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

impl Drain for Lines {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        struct Pairs(String);
        impl slog::Serializer for Pairs {
            fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
                self.0.push_str(&format!(" {key}={val}"));
                Ok(())
            }
        }
        let mut line = Pairs(record.msg().to_string());
        let _ = slog::KV::serialize(&record.kv(), record, &mut line);
        self.0.lock().unwrap().push(line.0);
        Ok(())
    }
}

fn predict(n: usize, topics: &[&str]) -> JsonEvent {
    event(
        EventKind::Predict,
        json!({
            "target": {"y_predicted": [n % 3]}, "input": [[n as f64, 1.5]],
            "list_metrics": [{"name": "rows", "type": "GAUGE", "value": 1.0}],
            "topics": topics, "model": "iris", "version": "2", "seq": n
        }),
        format!("req-{n}"),
        "/api/ml/predict",
    )
}

fn feedback(n: usize) -> JsonEvent {
    event(
        EventKind::Feedback,
        json!({
            "target": {"y_true": [1]}, "input": [[1.0]],
            "list_metrics": [{"name": "F1", "type": "GAUGE", "value": 0.75}],
            "topics": ["feedback"], "model": "iris", "version": "2", "seq": n
        }),
        format!("fb-{n}"),
        "/api/ml/feedback",
    )
}

/// An event of the iris model, as the server serializes its answer.
fn event(kind: EventKind, response: Value, request_id: String, route: &str) -> JsonEvent {
    JsonEvent {
        kind,
        body: serde_json::to_vec(&response).unwrap().into(),
        model: iris(),
        topics: response["topics"]
            .as_array()
            .map(|t| t.iter().filter_map(|t| t.as_str().map(String::from)).collect())
            .unwrap_or_default(),
        request_id,
        route: route.into(),
    }
}

/// The model of the test events.
fn iris() -> Arc<ModelTag> {
    Arc::new(ModelTag { name: "iris".into(), version: "2".into() })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn settings(brokers: String) -> EventSettings {
    EventSettings { brokers: Some(brokers), ..EventSettings::default() }
}

#[test]
fn without_brokers_nothing_starts() {
    let stats = Arc::new(TestStats::default());
    for brokers in [None, Some(" ".to_string())] {
        let settings = EventSettings { brokers, ..EventSettings::default() };
        let (events, producer) = start(&settings, Lines::default().logger(), stats.clone());
        assert!(!events.enabled());
        assert!(producer.is_none());
        assert_eq!(events.topic(EventKind::Predict), None);
        events.emit_json(predict(0, &[]));
    }
    assert!(stats.0.lock().unwrap().is_empty());
    assert!(!Events::default().enabled());
}

#[test]
fn a_full_channel_drops_counts_and_warns_once_per_interval() {
    let stats = Arc::new(TestStats::default());
    let lines = Lines::default();
    // A channel nobody reads.
    let (tx, rx) = crossbeam_channel::bounded(2);
    let events = Events {
        shared: Some(Arc::new(Shared {
            tx,
            topics: EventSettings::default().topics(),
            stats: stats.clone(),
            log: lines.logger(),
            closed: AtomicBool::new(false),
            emitting: AtomicUsize::new(0),
            drops: Throttle::new(Duration::from_secs(3600)),
        })),
    };
    for n in 0..5 {
        events.emit_json(predict(n, &["predict", "audit"]));
    }
    assert_eq!(rx.len(), 2);
    assert_eq!(stats.get("dropped", "predict"), 3);
    assert_eq!(stats.get("dropped", "audit"), 3);
    let warnings = lines.matching("metric events dropped");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("reason=queue full") && warnings[0].contains("dropped=1"), "{warnings:?}");
}

#[test]
fn throttle_reports_at_most_once_per_interval_with_the_count_held_back() {
    let throttle = Throttle::new(Duration::from_millis(10));
    assert_eq!(throttle.hit_at(0), Some(1));
    assert_eq!(throttle.hit_at(5), None);
    assert_eq!(throttle.hit_at(9), None);
    assert_eq!(throttle.hit_at(10), Some(3));
    assert_eq!(throttle.hit_at(19), None);
    assert_eq!(throttle.hit_at(40), Some(2));
}

#[test]
fn settings_are_checked_before_any_client_exists() {
    assert!(EventSettings::default().validate().is_ok(), "events off: nothing to check");
    let good = EventSettings {
        options: vec![("socket.keepalive.enable".into(), "true".into())],
        ..settings("h:1".into())
    };
    assert!(good.validate().is_ok());
    let unknown =
        EventSettings { options: vec![("no.such.setting".into(), "1".into())], ..settings("h:1".into()) };
    let e = unknown.validate().unwrap_err();
    assert!(e.0.contains("no.such.setting"), "{e}");
    let bad_acks = EventSettings { acks: "most".into(), ..settings("h:1".into()) };
    assert!(bad_acks.validate().is_err());
}

/// Nothing listens on the broker port: the request side never blocks, every event counts as
/// sent and then failed once the message timeout passes, and events after the stop are dropped.
#[test]
fn an_unreachable_broker_counts_failures() {
    let stats = Arc::new(TestStats::default());
    let lines = Lines::default();
    let settings =
        EventSettings { message_timeout_ms: 500, ..settings(format!("127.0.0.1:{}", free_port())) };
    let (events, producer) = start(&settings, lines.logger(), stats.clone());
    assert!(events.enabled());
    assert_eq!(events.topic(EventKind::Feedback), Some("feedback"));
    for n in 0..50 {
        events.emit_json(predict(n, &[]));
    }
    producer.unwrap().shutdown(Instant::now() + Duration::from_secs(20));
    assert_eq!(stats.get("sent", "predict"), 50);
    assert_eq!(stats.get("failed", "predict"), 50);
    assert_eq!(stats.get("delivered", "predict"), 0);
    assert!(!lines.matching("metric events not delivered").is_empty());

    events.emit_json(feedback(0));
    assert_eq!(stats.get("dropped", "feedback"), 1);
    assert_eq!(lines.matching("reason=producer stopped").len(), 1);
}

/// A producer dropped without a shutdown stops at once and does not hang.
#[test]
fn dropping_the_producer_stops_it() {
    let stats = Arc::new(TestStats::default());
    let (events, producer) =
        start(&settings(format!("127.0.0.1:{}", free_port())), Lines::default().logger(), stats.clone());
    events.emit_json(predict(0, &[]));
    drop(producer);
    events.emit_json(predict(1, &[]));
    assert!(stats.get("dropped", "predict") >= 1);
    assert_eq!(stats.get("sent", "predict") + stats.get("dropped", "predict"), 2);
    assert_eq!(stats.get("failed", "predict"), stats.get("sent", "predict"));
}

// ----- against a real broker -----

/// A tansu broker on a free port, stopped on drop.
struct TestBroker {
    port: u16,
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kafka-broker.sh");

fn script(args: &[&str]) -> Result<(), String> {
    let out = Command::new("bash").arg(SCRIPT).args(args).output().map_err(|e| format!("{SCRIPT}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("kafka-broker.sh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

impl TestBroker {
    /// Starts a broker with `topics`, or `None` (after saying why) when the test must be skipped.
    fn start(test: &str, topics: &[&str]) -> Option<TestBroker> {
        let required = std::env::var("MLDEPLOY_REQUIRE_KAFKA").is_ok_and(|v| v == "1");
        if !required && script(&["installed"]).is_err() {
            eprintln!(
                "SKIPPED {test}: the tansu test broker is not installed (scripts/kafka-broker.sh install; \
                 MLDEPLOY_REQUIRE_KAFKA=1 installs it and makes this test fail instead of skip)"
            );
            return None;
        }
        let port = free_port();
        script(&["start", &port.to_string()]).unwrap();
        let broker = TestBroker { port };
        for topic in topics {
            broker.create_topic(topic);
        }
        Some(broker)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn create_topic(&self, name: &str) {
        script(&["topic", &self.port.to_string(), name]).unwrap();
    }

    /// SIGKILL the broker, as a crash would.
    fn kill(&self) {
        let pid = Command::new("bash").arg(SCRIPT).args(["pid", &self.port.to_string()]).output().unwrap();
        let pid = String::from_utf8_lossy(&pid.stdout).trim().to_string();
        assert!(!pid.is_empty(), "no broker pid for port {}", self.port);
        assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
        let gone = wait_for(|| {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"))
        });
        assert!(gone, "broker {pid} survived SIGKILL");
    }

    fn restart(&self, topics: &[&str]) {
        script(&["start", &self.port.to_string()]).unwrap();
        for topic in topics {
            self.create_topic(topic);
        }
    }

    /// Every message on `topic` (all partitions), read from the beginning until the end.
    fn read(&self, topic: &str) -> Vec<(Option<String>, HashMap<String, String>, Value)> {
        read_topic(&self.address(), topic)
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = script(&["stop", &self.port.to_string()]);
    }
}

/// Reads `topic` from the beginning to its current end with a plain consumer (no group).
fn read_topic(brokers: &str, topic: &str) -> Vec<(Option<String>, HashMap<String, String>, Value)> {
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "mldeploy-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let partitions = metadata.topics()[0].partitions().len();
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        assignment.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut at_end = std::collections::HashSet::new();
    let mut out = Vec::new();
    let end = Instant::now() + Duration::from_secs(60);
    while at_end.len() < partitions {
        assert!(Instant::now() < end, "reading {topic} did not reach its end: {} read", out.len());
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let payload: Value = serde_json::from_slice(m.payload().unwrap_or_default())
                    .unwrap_or_else(|e| panic!("not JSON on {topic}: {e}"));
                out.push((key, headers, payload));
            }
        }
    }
    out
}

fn seqs(messages: &[(Option<String>, HashMap<String, String>, Value)]) -> Vec<u64> {
    let mut seqs: Vec<u64> = messages.iter().map(|(_, _, v)| v["seq"].as_u64().unwrap()).collect();
    seqs.sort_unstable();
    seqs
}

#[test]
fn every_event_reaches_each_of_its_topics_once() {
    let Some(broker) =
        TestBroker::start("every_event_reaches_each_of_its_topics_once", &["predict", "feedback", "audit"])
    else {
        return;
    };
    let stats = Arc::new(TestStats::default());
    let (events, producer) = start(&settings(broker.address()), Lines::default().logger(), stats.clone());
    for n in 0..500 {
        events.emit_json(predict(n, &["predict", "audit"]));
    }
    for n in 0..200 {
        events.emit_json(feedback(n));
    }
    producer.unwrap().shutdown(Instant::now() + Duration::from_secs(30));
    for (topic, n) in [("predict", 500), ("audit", 500), ("feedback", 200)] {
        assert_eq!(stats.get("sent", topic), n, "sent to {topic}");
        assert_eq!(stats.get("delivered", topic), n, "delivered to {topic}");
        assert_eq!(stats.get("failed", topic), 0, "failed on {topic}");
    }

    let predicted = broker.read("predict");
    assert_eq!(seqs(&predicted), (0..500).collect::<Vec<_>>());
    let (key, headers, doc) = &predicted[0];
    assert_eq!(key.as_deref(), Some("iris"));
    assert_eq!(headers.get("model").map(String::as_str), Some("iris"));
    assert_eq!(headers.get("version").map(String::as_str), Some("2"));
    assert_eq!(doc["model"], "iris");
    assert_eq!(doc["version"], "2");
    assert_eq!(doc["list_metrics"][0]["name"], "rows");
    assert_eq!(doc["route"], "/api/ml/predict");
    assert_eq!(doc["worker_pid"], std::process::id());
    assert!(doc["request_id"].as_str().unwrap().starts_with("req-"));
    assert!(doc["timestamp"].as_i64().unwrap() > 1_600_000_000_000);
    assert_eq!(seqs(&broker.read("audit")), (0..500).collect::<Vec<_>>());
    let fed_back = broker.read("feedback");
    assert_eq!(seqs(&fed_back), (0..200).collect::<Vec<_>>());
    assert!(fed_back
        .iter()
        .all(|(_, _, d)| d["route"] == "/api/ml/feedback" && d["list_metrics"][0]["name"] == "F1"));
}

#[test]
fn a_missing_topic_is_reported_once_and_counted() {
    let Some(broker) = TestBroker::start("a_missing_topic_is_reported_once_and_counted", &["predict"]) else {
        return;
    };
    let stats = Arc::new(TestStats::default());
    let lines = Lines::default();
    let settings = EventSettings {
        // How long librdkafka waits for a new topic to appear before failing its messages.
        options: vec![("topic.metadata.propagation.max.ms".into(), "1000".into())],
        ..settings(broker.address())
    };
    let (events, producer) = start(&settings, lines.logger(), stats.clone());
    for n in 0..20 {
        events.emit_json(predict(n, &["absent"]));
    }
    // Wait for librdkafka to settle that the topic is missing, then send more.
    let settled = wait_for(|| stats.get("failed", "absent") == 20);
    assert!(settled, "the first 20 events to the missing topic did not fail");
    for n in 20..40 {
        events.emit_json(predict(n, &["absent"]));
    }
    producer.unwrap().shutdown(Instant::now() + Duration::from_secs(30));
    assert_eq!(stats.get("failed", "absent"), 40);
    assert_eq!(stats.get("delivered", "predict"), 40);
    let warnings = lines.matching("kafka topic does not exist");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("topic=absent"));
    assert_eq!(seqs(&broker.read("predict")).len(), 40);
}

#[test]
fn events_after_a_broker_restart_are_delivered() {
    let topics = ["predict"];
    let Some(broker) = TestBroker::start("events_after_a_broker_restart_are_delivered", &topics) else {
        return;
    };
    let stats = Arc::new(TestStats::default());
    let lines = Lines::default();
    let settings = EventSettings { message_timeout_ms: 60_000, ..settings(broker.address()) };
    let (events, producer) = start(&settings, lines.logger(), stats.clone());
    let delivered = |n| wait_for(|| stats.get("delivered", "predict") >= n);
    for n in 0..100 {
        events.emit_json(predict(n, &[]));
    }
    assert!(delivered(100), "events before the crash were not delivered");

    broker.kill();
    for n in 100..200 {
        events.emit_json(predict(n, &[]));
    }
    broker.restart(&topics);
    // Settle before the events under test: the ones queued during the outage, and a few sent
    // right after the restart. The in-memory test broker accepts a batch that reaches it before
    // its topic is re-created, and then fails the first batch after the re-creation (same
    // offset); that must not be a batch under test. A broker with durable storage has no such
    // window.
    for n in 500..510 {
        events.emit_json(predict(n, &[]));
    }
    assert!(
        settled(&stats, 210),
        "events sent around the restart did not settle: {:?}",
        stats.0.lock().unwrap()
    );
    for n in 1000..1100 {
        events.emit_json(predict(n, &[]));
    }
    producer.unwrap().shutdown(Instant::now() + Duration::from_secs(60));
    let after: Vec<u64> = seqs(&broker.read("predict")).into_iter().filter(|s| *s >= 1000).collect();
    assert_eq!(
        after,
        (1000..1100).collect::<Vec<_>>(),
        "events sent after the restart; counters: {:?}; log:\n{}",
        stats.0.lock().unwrap(),
        lines.matching("").join("\n")
    );
    assert_eq!(stats.get("sent", "predict"), 310);
    assert_eq!(stats.get("delivered", "predict") + stats.get("failed", "predict"), 310);
}

/// Whether `n` events to `predict` were delivered or failed within 60 s.
fn settled(stats: &TestStats, n: u64) -> bool {
    wait_for(|| stats.get("delivered", "predict") + stats.get("failed", "predict") >= n)
}

/// Polls `cond` every 20 ms for at most 60 s.
fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
