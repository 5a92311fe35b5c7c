//! Metric events to Kafka, through the real binary and a real Kafka-protocol broker (tansu,
//! started by `scripts/kafka-broker.sh` on a free loopback port).
//!
//! When the broker cannot be installed these tests are skipped with a message, unless
//! `MLDEPLOY_REQUIRE_KAFKA=1` (set in CI), which makes them fail instead.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::http::Conn;
use common::{free_port, libc_sig, wait_until, Server};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde_json::{json, Value};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kafka-broker.sh");

fn script(args: &[&str]) -> Result<String, String> {
    let out = Command::new("bash").arg(SCRIPT).args(args).output().map_err(|e| format!("{SCRIPT}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!("kafka-broker.sh {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A tansu broker on a free port; stopped (that PID only) on drop.
struct Broker {
    port: u16,
}

impl Broker {
    /// Installs tansu if needed and starts a broker with `topics`. `None` (after saying why)
    /// when the broker cannot be installed and MLDEPLOY_REQUIRE_KAFKA is not 1.
    fn start(test: &str, topics: &[&str]) -> Option<Broker> {
        if let Err(e) = script(&["install"]) {
            assert!(
                std::env::var("MLDEPLOY_REQUIRE_KAFKA").ok().as_deref() != Some("1"),
                "MLDEPLOY_REQUIRE_KAFKA=1 but the test broker cannot be installed: {e}"
            );
            eprintln!("SKIPPED {test}: the tansu test broker cannot be installed: {e}");
            return None;
        }
        let broker = Broker { port: free_port() };
        broker.restart(topics);
        Some(broker)
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker (again) on the same port and creates `topics`. Its storage is in
    /// memory: a restarted broker starts empty.
    fn restart(&self, topics: &[&str]) {
        script(&["start", &self.port.to_string()]).unwrap();
        for topic in topics {
            script(&["topic", &self.port.to_string(), topic]).unwrap();
        }
    }

    /// SIGKILL the broker and wait until it is gone.
    fn kill(&self) {
        let pid: i32 = script(&["pid", &self.port.to_string()]).unwrap().parse().unwrap();
        common::kill(pid, libc_sig::SIGKILL);
        assert!(
            wait_until(Duration::from_secs(10), || !common::is_alive(pid)),
            "broker {pid} survived SIGKILL"
        );
    }

    /// Every message on `topic` (all partitions), from the beginning to the current end.
    fn read(&self, topic: &str) -> Vec<Event> {
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.address())
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
        let mut at_end = HashSet::new();
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
                Some(Ok(m)) => out.push(Event {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    headers: m
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
                        .unwrap_or_default(),
                    doc: serde_json::from_slice(m.payload().unwrap_or_default())
                        .unwrap_or_else(|e| panic!("an event on {topic} is not JSON: {e}")),
                }),
            }
        }
        out
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = script(&["stop", &self.port.to_string()]);
    }
}

/// One message read back from a topic.
struct Event {
    key: Option<String>,
    headers: HashMap<String, String>,
    doc: Value,
}

/// A predict body that the served model accepts: its own sample.
fn predict_body(server: &Server) -> String {
    let metadata = server.get("/api/ml/metadata");
    assert_eq!(metadata.status, 200, "{}", metadata.text());
    let sample = metadata.json()["sample"].clone();
    assert!(!sample.is_null(), "the model has no sample: {}", metadata.text());
    sample.to_string()
}

/// A feedback body for the rows of `predict_body`, with `y_true` taken from a predict answer.
fn feedback_body(predict_body: &str, answer: &Value) -> String {
    let predicted = answer["target"]["y_predicted"].clone();
    assert!(predicted.is_array(), "no target.y_predicted in {answer}");
    let data = serde_json::from_str::<Value>(predict_body).unwrap()["data"].clone();
    json!({"data": data, "y_true": predicted}).to_string()
}

/// Sends `n` POSTs of `body` to `path` over `clients` keep-alive connections; returns the
/// request ids of the answers and one answer; panics on any status but 200.
fn load(server: &Server, path: &str, body: &str, n: usize, clients: usize) -> (Vec<String>, Value) {
    let next = AtomicUsize::new(0);
    let ids = Mutex::new(Vec::with_capacity(n));
    let last = Mutex::new(Value::Null);
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                let mut conn = Conn::open(server.addr).unwrap();
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let r = conn
                        .request("POST", path, &[("Content-Type", "application/json")], body.as_bytes())
                        .unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                    let id = r.header("x-request-id").expect("x-request-id").to_string();
                    ids.lock().unwrap().push(id);
                    *last.lock().unwrap() = r.json();
                }
            });
        }
    });
    (ids.into_inner().unwrap(), last.into_inner().unwrap())
}

/// TERM the master and wait for the graceful stop (which flushes every worker's producer).
fn stop(mut server: Server) -> String {
    server.signal(libc_sig::SIGTERM);
    let status = server.wait_exit(Duration::from_secs(90));
    assert!(status.is_some(), "server did not stop after TERM; output:\n{}", server.output());
    server.output()
}

#[test]
fn every_answered_predict_and_feedback_is_one_event() {
    let Some(broker) =
        Broker::start("every_answered_predict_and_feedback_is_one_event", &["predict", "feedback"])
    else {
        return;
    };
    let server = Server::start_with_env(
        &["serve", "--workers", "4", "--threads", "2"],
        &[("KAFKA_BROKER", &broker.address())],
    );
    let predict = predict_body(&server);
    let (mut predict_ids, answer) = load(&server, "/api/ml/predict", &predict, 1000, 8);
    let feedback = feedback_body(&predict, &answer);
    let (mut feedback_ids, _) = load(&server, "/api/ml/feedback", &feedback, 200, 4);
    let output = stop(server);

    let events = broker.read("predict");
    assert_eq!(events.len(), 1000, "events on predict; server output:\n{output}");
    for event in &events {
        let doc = &event.doc;
        assert!(doc["model"].is_string() && doc["version"].is_string(), "{doc}");
        assert!(doc["list_metrics"].is_array(), "{doc}");
        assert_eq!(doc["route"], "/api/ml/predict");
        assert!(doc["timestamp"].as_i64().is_some_and(|t| t > 1_600_000_000_000), "{doc}");
        assert!(doc["worker_pid"].as_u64().is_some(), "{doc}");
        assert_eq!(event.key.as_deref(), doc["model"].as_str(), "message key is the model name");
        assert_eq!(event.headers.get("model").map(String::as_str), doc["model"].as_str());
        assert_eq!(event.headers.get("version").map(String::as_str), doc["version"].as_str());
    }
    let mut seen: Vec<String> =
        events.iter().map(|e| e.doc["request_id"].as_str().unwrap().to_string()).collect();
    seen.sort();
    predict_ids.sort();
    assert_eq!(seen, predict_ids, "one predict event per answered predict request");

    let events = broker.read("feedback");
    assert_eq!(events.len(), 200, "events on feedback; server output:\n{output}");
    let mut seen: Vec<String> =
        events.iter().map(|e| e.doc["request_id"].as_str().unwrap().to_string()).collect();
    seen.sort();
    feedback_ids.sort();
    assert_eq!(seen, feedback_ids, "one feedback event per answered feedback request");
    assert!(events.iter().all(|e| e.doc["list_metrics"].is_array() && e.doc["route"] == "/api/ml/feedback"));
}

#[test]
fn without_a_broker_the_server_serves_and_counts_failures() {
    // Installing is not needed here; the broker address is a closed port.
    let nobody = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with_env(
        &["serve", "--workers", "2", "--kafka-message-timeout-ms", "1000"],
        &[("KAFKA_BROKER", nobody.as_str())],
    );
    let predict = predict_body(&server);
    let (ids, _) = load(&server, "/api/ml/predict", &predict, 300, 4);
    assert_eq!(ids.len(), 300);
    // Each event fails once its message timeout has passed; the counters show it.
    let counted = wait_until(Duration::from_secs(30), || {
        let metrics = server.get("/metrics").text();
        counter_sum(&metrics, "failed") >= 300.0
    });
    let metrics = server.get("/metrics").text();
    let output = stop(server);
    assert!(
        counted,
        "failed events not counted in /metrics:\n{}\nserver output:\n{output}",
        metrics.lines().filter(|l| l.contains("mldeploy_events")).collect::<Vec<_>>().join("\n")
    );
    assert!(output.contains("metric events not delivered"), "no warning logged; output:\n{output}");
}

/// Sum over topics of `mldeploy_events_total{topic="...",outcome="<outcome>"}`.
fn counter_sum(metrics: &str, outcome: &str) -> f64 {
    let label = format!("outcome=\"{outcome}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("mldeploy_events") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Sum over topics of one outcome's events counter, read from `/metrics`.
fn events_counted(server: &Server, outcome: &str) -> f64 {
    counter_sum(&server.get("/metrics").text(), outcome)
}

#[test]
fn a_broker_crash_does_not_stop_serving_and_later_events_arrive() {
    let topics = ["predict"];
    let Some(broker) = Broker::start("a_broker_crash_does_not_stop_serving_and_later_events_arrive", &topics)
    else {
        return;
    };
    let server = Server::start_with_env(
        &["serve", "--workers", "4", "--threads", "2"],
        &[("KAFKA_BROKER", &broker.address())],
    );
    let predict = predict_body(&server);

    // Load runs throughout; each answer is filed under the phase its request was sent in.
    const PHASES: [&str; 4] = ["broker up", "broker down", "broker back, settling", "broker back"];
    let phase = AtomicUsize::new(0);
    let done = AtomicBool::new(false);
    let answered: Mutex<[Vec<String>; 4]> = Mutex::new(Default::default());
    let failures = AtomicUsize::new(0);
    let mut seconds = [0.0; 4];
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let mut conn = Conn::open(server.addr).unwrap();
                while !done.load(Ordering::SeqCst) {
                    let sent_in = phase.load(Ordering::SeqCst);
                    let answer = conn.request(
                        "POST",
                        "/api/ml/predict",
                        &[("Content-Type", "application/json")],
                        predict.as_bytes(),
                    );
                    match answer {
                        Ok(r) if r.status == 200 => {
                            let id = r.header("x-request-id").unwrap_or_default().to_string();
                            answered.lock().unwrap()[sent_in].push(id);
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::SeqCst);
                            conn = Conn::open(server.addr).unwrap();
                        }
                    }
                }
            });
        }
        let answered_in = |p: usize| answered.lock().unwrap()[p].len();
        let mut ok = true;
        let mut started = Instant::now();
        let mut next_phase = |p: usize, seconds: &mut [f64; 4]| {
            seconds[p - 1] = started.elapsed().as_secs_f64();
            started = Instant::now();
            phase.store(p, Ordering::SeqCst);
        };
        ok &= wait_until(Duration::from_secs(60), || answered_in(0) >= 500);
        broker.kill();
        next_phase(1, &mut seconds);
        ok &= wait_until(Duration::from_secs(60), || answered_in(1) >= 2000);
        broker.restart(&topics);
        next_phase(2, &mut seconds);
        // Before the events under test, let every event that existed at the restart settle, and
        // 100 more. The in-memory test broker accepts a batch that reaches it before its topic is
        // re-created and then fails the first batch produced after the re-creation (same
        // offset); that batch must not be one under test. A durable broker has no such window.
        let existing = events_counted(&server, "sent");
        ok &= wait_until(Duration::from_secs(60), || {
            events_counted(&server, "delivered") + events_counted(&server, "failed") >= existing + 100.0
        });
        next_phase(3, &mut seconds);
        ok &= wait_until(Duration::from_secs(60), || answered_in(3) >= 500);
        seconds[3] = started.elapsed().as_secs_f64();
        done.store(true, Ordering::SeqCst);
        assert!(ok, "load stalled: {:?} answered per phase", [0, 1, 2, 3].map(answered_in));
    });
    let output = stop(server);
    assert_eq!(failures.load(Ordering::SeqCst), 0, "requests failed; output:\n{output}");
    let answered = answered.into_inner().unwrap();
    for p in 0..4 {
        eprintln!(
            "{}: {} requests answered in {:.2} s ({:.0}/s)",
            PHASES[p],
            answered[p].len(),
            seconds[p],
            answered[p].len() as f64 / seconds[p]
        );
    }
    let delivered: HashSet<String> = broker
        .read("predict")
        .iter()
        .filter_map(|e| e.doc["request_id"].as_str().map(str::to_string))
        .collect();
    let missing = answered[3].iter().filter(|id| !delivered.contains(*id)).count();
    assert_eq!(missing, 0, "of {} events produced after the restart; output:\n{output}", answered[3].len());
}

/// The example model (crates/example-custom-model) lists a topic of its own, `sentiment`, in
/// every predict response. Its binary is built by `cargo build --workspace`; without it this
/// test is skipped, unless MLDEPLOY_REQUIRE_KAFKA=1.
#[test]
fn a_topic_listed_by_the_model_receives_its_events() {
    let example = common::binary().with_file_name("example-custom-model");
    if !example.exists() {
        assert!(
            std::env::var("MLDEPLOY_REQUIRE_KAFKA").ok().as_deref() != Some("1"),
            "MLDEPLOY_REQUIRE_KAFKA=1 but {} is not built (cargo build -p example-custom-model)",
            example.display()
        );
        eprintln!(
            "SKIPPED a_topic_listed_by_the_model_receives_its_events: {} is not built",
            example.display()
        );
        return;
    }
    let Some(broker) =
        Broker::start("a_topic_listed_by_the_model_receives_its_events", &["predict", "sentiment"])
    else {
        return;
    };
    let server = ExampleServer::start(&example, &broker.address());
    let body = r#"{"data": [["what a great day"]], "names": ["text"]}"#;
    let mut ids = Vec::new();
    let mut conn = Conn::open(server.addr).unwrap();
    for _ in 0..200 {
        let r = conn
            .request("POST", "/api/ml/predict", &[("Content-Type", "application/json")], body.as_bytes())
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let topics = r.json()["topics"].clone();
        assert!(topics.as_array().is_some_and(|t| t.contains(&json!("sentiment"))), "topics: {topics}");
        ids.push(r.header("x-request-id").unwrap().to_string());
    }
    let output = server.stop();
    ids.sort();
    for topic in ["predict", "sentiment"] {
        let events = broker.read(topic);
        let mut seen: Vec<String> =
            events.iter().map(|e| e.doc["request_id"].as_str().unwrap().to_string()).collect();
        seen.sort();
        assert_eq!(seen, ids, "one event per predict on {topic}; output:\n{output}");
        assert!(events.iter().all(|e| e.doc["target"]["y_predicted"] == json!(["positive"])));
    }
}

/// The example model's binary, run like [`Server`] runs `mldeploy`: own process group, killed
/// on drop.
struct ExampleServer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    output: std::sync::Arc<Mutex<String>>,
}

impl ExampleServer {
    fn start(binary: &std::path::Path, brokers: &str) -> ExampleServer {
        use std::io::{BufRead, BufReader, Read};
        use std::os::unix::process::CommandExt;
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = Command::new(binary)
            .args(["serve", "--workers", "2", "--bind", &addr.to_string(), "--kafka-broker", brokers])
            .env_remove("KAFKA_BROKER")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start example-custom-model");
        let output = std::sync::Arc::new(Mutex::new(String::new()));
        let streams: [Option<Box<dyn Read + Send>>; 2] =
            [child.stdout.take().map(|s| Box::new(s) as _), child.stderr.take().map(|s| Box::new(s) as _)];
        for stream in streams.into_iter().flatten() {
            let output = std::sync::Arc::clone(&output);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let server = ExampleServer { child, addr, output };
        let ready = wait_until(Duration::from_secs(60), || {
            common::http::get(server.addr, "/ready").is_ok_and(|r| r.status == 200)
        });
        assert!(ready, "example server not ready; output:\n{}", server.output.lock().unwrap());
        server
    }

    /// TERM, wait for the graceful stop, return the output.
    fn stop(mut self) -> String {
        common::kill(self.child.id() as i32, libc_sig::SIGTERM);
        let exited = wait_until(Duration::from_secs(90), || matches!(self.child.try_wait(), Ok(Some(_))));
        let output = self.output.lock().unwrap().clone();
        assert!(exited, "example server did not stop after TERM; output:\n{output}");
        output
    }
}

impl Drop for ExampleServer {
    fn drop(&mut self) {
        common::kill(-(self.child.id() as i32), libc_sig::SIGKILL);
        let _ = self.child.wait();
    }
}
