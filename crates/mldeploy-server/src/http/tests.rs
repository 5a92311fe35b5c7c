//! Tests of the HTTP service over real TCP connections to 127.0.0.1, with small fake models
//! and a hand-written HTTP/1.1 client.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mldeploy_model::{
    CustomRoute, Dtype, Feature, FeatureValues, FeedbackInput, MetricValue, Model, ModelError, ModelInfo,
    PredictInput, Response, RouteResponse, Target,
};
use mldeploy_prefork::Stop;
use serde_json::{json, Value};

use super::serve;
use crate::events::Events;
use crate::metrics::{Metrics, MetricsSettings};
use crate::registry::{ModelSource, Registry};
use crate::service::{HttpSettings, ServeContext};

/// Every wait of these tests is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

/// A model with a schema (`x`: float in 0..=10, `c`: category a/b): predicts `2 * x`;
/// `x == 7` panics, `x == 8` fails; custom routes `/echo` (POST), `/any` (every method) and
/// `/slow` (GET; waits for the test to release it).
struct Fake {
    info: ModelInfo,
    slow_started: Sender<()>,
    slow_release: Receiver<()>,
}

fn fake_info(with_schema: bool) -> ModelInfo {
    let features = if with_schema {
        vec![
            Feature {
                name: "x".into(),
                dtype: Dtype::Float,
                values: Some(FeatureValues::Range { min: Some(0.0), max: Some(10.0) }),
                allow_nan: false,
                missing: false,
            },
            Feature {
                name: "c".into(),
                dtype: Dtype::Category,
                values: Some(FeatureValues::Categories(vec![json!("a"), json!("b")])),
                allow_nan: false,
                missing: false,
            },
        ]
    } else {
        Vec::new()
    };
    ModelInfo {
        name: "fake".into(),
        version: "1.0".into(),
        kind: "custom".into(),
        features,
        outputs: json!({"target": "y"}),
        sample: json!({"data": [[1, "a"]], "names": ["x", "c"]}),
        ..ModelInfo::default()
    }
}

impl Model for Fake {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn predict(&self, input: &PredictInput) -> Result<Response, ModelError> {
        let Some(table) = &input.table else {
            // Without a schema: echo what arrived.
            let form = input.form.as_ref().map(|f| {
                json!({
                    "fields": f.fields,
                    "files": f.files.iter().map(|file| json!({
                        "field": file.field, "filename": file.filename,
                        "content_type": file.content_type, "len": file.data.len(),
                    })).collect::<Vec<_>>(),
                })
            });
            return Ok(Response {
                target: Target::Json(json!({"form": form, "body": input.body})),
                ..Default::default()
            });
        };
        let mldeploy_model::Column::Numeric(x) = &table.columns[0] else { unreachable!() };
        if x.contains(&7.0) {
            panic!("secret panic text");
        }
        if x.contains(&8.0) {
            return Err(ModelError::Internal("secret internal text".into()));
        }
        let y: Vec<f64> = x.iter().map(|v| v * 2.0).collect();
        Ok(Response::json(json!({"y_predicted": y}), input.body.clone()))
    }

    fn supports_feedback(&self) -> bool {
        !self.info.features.is_empty()
    }

    fn feedback(&self, input: &FeedbackInput) -> Result<Response, ModelError> {
        Ok(Response {
            target: Target::Json(
                json!({"rows": input.table.as_ref().map(|t| t.n_rows), "y_true": input.y_true}),
            ),
            list_metrics: vec![MetricValue::gauge("accuracy", 1.0)],
            ..Default::default()
        })
    }

    fn routes(&self) -> Vec<CustomRoute> {
        let started = self.slow_started.clone();
        let release = self.slow_release.clone();
        vec![
            CustomRoute {
                methods: vec!["POST".into()],
                path: "/echo".into(),
                handler: Arc::new(|req| {
                    let fields = req.form.as_ref().map_or(0, |f| f.fields.len());
                    Ok(RouteResponse::json(
                        200,
                        &json!({"method": req.method, "query": req.query,
                                "body": String::from_utf8_lossy(&req.body), "fields": fields}),
                    ))
                }),
            },
            CustomRoute {
                methods: Vec::new(),
                path: "/any".into(),
                handler: Arc::new(|req| Ok(RouteResponse::text(200, format!("any {}", req.method)))),
            },
            CustomRoute {
                methods: vec!["GET".into()],
                path: "/slow".into(),
                handler: Arc::new(move |_| {
                    let _ = started.send(());
                    let _ = release.recv_timeout(WAIT);
                    Ok(RouteResponse::text(200, "slow done"))
                }),
            },
        ]
    }
}

/// A running service; stopped (fast) on drop.
struct TestServer {
    addr: SocketAddr,
    stop: Sender<Stop>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// Tells when `/slow` has started; release it with `release`.
    slow_started: Receiver<()>,
    release: Sender<()>,
    access: Lines,
}

fn settings() -> HttpSettings {
    HttpSettings { threads: 2, keepalive: Duration::from_secs(30), ..HttpSettings::default() }
}

impl TestServer {
    fn start(with_schema: bool, settings: HttpSettings) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), with_schema, settings)
    }

    /// Serve on a given listener (several servers may share one, as forked workers do).
    fn start_on(listener: TcpListener, with_schema: bool, settings: HttpSettings) -> Self {
        Self::start_with(listener, with_schema, settings, Events::disabled())
    }

    fn start_with(listener: TcpListener, with_schema: bool, settings: HttpSettings, events: Events) -> Self {
        let (started_tx, started_rx) = crossbeam_channel::unbounded();
        let (release_tx, release_rx) = crossbeam_channel::unbounded();
        let model: Arc<dyn Model> = Arc::new(Fake {
            info: fake_info(with_schema),
            slow_started: started_tx,
            slow_release: release_rx,
        });
        let addr = listener.local_addr().unwrap();
        let access = Arc::new(Mutex::new(Vec::new()));
        let models = Registry::new(vec![(model, ModelSource::default())], &settings.api_prefix).unwrap();
        let ctx = ServeContext::new(
            models,
            events,
            Metrics::private(&MetricsSettings { max_series: 100 }),
            None,
            None,
            slog::Logger::root(slog::Discard, slog::o!()),
            slog::Logger::root(Capture(access.clone()), slog::o!()),
            settings,
        );
        let (stop, stop_rx) = crossbeam_channel::unbounded();
        let thread = std::thread::spawn(move || serve(vec![listener], Arc::new(ctx), stop_rx));
        Self { addr, stop, thread: Some(thread), slow_started: started_rx, release: release_tx, access }
    }

    fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// One request on a fresh connection.
    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.client().request(method, path, headers, body)
    }

    fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.call("POST", path, &[("content-type", "application/json")], body.to_string().as_bytes())
    }

    /// Stop and wait for `serve` to return (bounded).
    fn stop(&mut self, how: Stop) -> io::Result<()> {
        let _ = self.stop.send(how);
        let thread = self.thread.take().unwrap();
        let deadline = Instant::now() + WAIT;
        while !thread.is_finished() {
            assert!(Instant::now() < deadline, "serve did not return");
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.release.send(());
            let _ = self.stop(Stop::Fast);
        }
    }
}

/// Captured log records: message and fields.
type Lines = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// An access-log drain that keeps each record's message and fields.
struct Capture(Lines);

impl slog::Drain for Capture {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        struct Fields(Vec<(String, String)>);
        impl slog::Serializer for Fields {
            fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
                self.0.push((key.to_string(), val.to_string()));
                Ok(())
            }
        }
        let mut fields = Fields(Vec::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        let _ = slog::KV::serialize(values, record, &mut fields);
        self.0.lock().unwrap().push((record.msg().to_string(), fields.0));
        Ok(())
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// An error answer: status, JSON shape, and the request id matches the header.
    fn assert_error(&self, status: u16, error: &str) -> Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert_eq!(body["error"], error, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        let id = self.header("x-request-id").expect("x-request-id");
        assert_eq!(body["request_id"], id);
        body
    }
}

struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Self { stream, buf: Vec::new() }
    }

    fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            raw.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        raw.push_str("\r\n");
        let mut bytes = raw.into_bytes();
        bytes.extend_from_slice(body);
        self.send(&bytes);
        self.read_response(method == "HEAD")
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).expect("read timed out or failed");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    fn read_response(&mut self, head_only: bool) -> Resp {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(
                self.fill() > 0,
                "connection closed before a response: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let len = if head_only {
            0
        } else {
            headers.iter().find(|(k, _)| k == "content-length").map_or(0, |(_, v)| v.parse().unwrap())
        };
        while self.buf.len() < head_end + len {
            assert!(self.fill() > 0, "connection closed in a body");
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Resp { status, headers, body }
    }

    /// Whether the server closes the connection (EOF or reset) within the read timeout.
    fn closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

#[test]
fn health_ready_version_metadata() {
    let server = TestServer::start(true, settings());
    let health = server.call("GET", "/health", &[], b"");
    assert_eq!((health.status, health.json()), (200, json!({"status": "ok"})));
    assert!(health.header("x-request-id").is_some_and(|id| !id.is_empty()));
    assert_eq!(server.call("GET", "/ready", &[], b"").status, 200);

    let version = server.call("GET", "/version", &[], b"").json();
    assert_eq!(version["model"], "fake");
    assert_eq!(version["model_version"], "1.0");
    assert_eq!(version["api_version"], "v1");
    assert_eq!(version["mldeploy_version"], env!("CARGO_PKG_VERSION"));

    let metadata = server.call("GET", "/api/ml/metadata", &[], b"").json();
    assert_eq!(metadata["name"], "fake");
    assert_eq!(metadata["kind"], "custom");
    assert_eq!(metadata["features"][0]["name"], "x");
    assert_eq!(metadata["features"][1]["values"], json!(["a", "b"]));
    // The sample predicts.
    let sample = server.post_json("/api/ml/predict", &metadata["sample"]);
    assert_eq!(sample.status, 200, "{sample:?}");

    let head = server.call("HEAD", "/health", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
}

#[test]
fn request_ids_are_kept_when_sane_and_unique_otherwise() {
    let server = TestServer::start(true, settings());
    let kept = server.call("GET", "/health", &[("x-request-id", "abc-123")], b"");
    assert_eq!(kept.header("x-request-id"), Some("abc-123"));
    let long = "a".repeat(200);
    let replaced = server.call("GET", "/health", &[("x-request-id", &long)], b"");
    let id = replaced.header("x-request-id").unwrap();
    assert_ne!(id, long);
    let other = server.call("GET", "/health", &[], b"");
    assert_ne!(other.header("x-request-id").unwrap(), id);
}

#[test]
fn predict_accepts_ml_deploy_shapes_whatever_the_content_type() {
    let server = TestServer::start(true, settings());
    let r =
        server.post_json("/api/ml/predict", &json!({"data": [[1, "a"], [2.5, "b"]], "names": ["x", "c"]}));
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["target"], json!({"y_predicted": [2.0, 5.0]}));
    assert_eq!(body["model"], "fake");
    assert_eq!(body["version"], "1.0");
    assert_eq!(body["topics"], json!([]));
    assert_eq!(body["list_metrics"], json!([]));
    assert!(body.get("rejected").is_none());
    // ml-deploy's field order.
    let text = String::from_utf8(r.body.clone()).unwrap();
    let order: Vec<usize> =
        ["\"target\"", "\"input\"", "\"list_metrics\"", "\"topics\"", "\"model\"", "\"version\""]
            .iter()
            .map(|k| text.find(k).unwrap())
            .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");

    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = server.call(
            "POST",
            "/api/ml/predict",
            &[("content-type", content_type)],
            br#"[{"c": "b", "x": 3}]"#,
        );
        assert_eq!((r.status, r.json()["target"].clone()), (200, json!({"y_predicted": [6.0]})));
    }
    let single = server.post_json("/api/ml/predict", &json!({"x": 4, "c": "a"}));
    assert_eq!(single.json()["target"], json!({"y_predicted": [8.0]}));
}

#[test]
fn unknown_path_404_and_wrong_method_405() {
    let server = TestServer::start(true, settings());
    server.call("GET", "/nope", &[], b"").assert_error(404, "not_found");
    server.call("GET", "/api/ml/predict/", &[], b"").assert_error(404, "not_found");
    let r = server.call("GET", "/api/ml/predict", &[], b"");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    let r = server.call("DELETE", "/health", &[], b"");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
    // A 404 with a body still answers, then closes.
    let mut c = server.client();
    c.request("POST", "/nope", &[], b"{}").assert_error(404, "not_found");
}

#[test]
fn malformed_bodies_400() {
    let server = TestServer::start(true, settings());
    let predict = |body: &[u8]| server.call("POST", "/api/ml/predict", &[], body);
    predict(b"{\"data\": [[1, ").assert_error(400, "invalid_json");
    predict(b"").assert_error(400, "invalid_json");
    predict(b"{\"data\": [[1, \"\xff\"]]}").assert_error(400, "invalid_json");
    predict(b"\xff\xfe").assert_error(400, "invalid_json");
    let deep = "[".repeat(100_000);
    let body = predict(deep.as_bytes()).assert_error(400, "invalid_json");
    assert!(body["message"].as_str().unwrap().contains("recursion limit"), "{body}");
    let body = predict(br#"{"data": [[1e400, "a"]]}"#).assert_error(400, "invalid_json");
    assert!(body["message"].as_str().unwrap().contains("number out of range"), "{body}");
    predict(br#"{"data": 5}"#).assert_error(400, "bad_request");
    predict(br#"{"data": [[1, "a"]], "on_error": "maybe"}"#).assert_error(400, "bad_request");
    // The worker still serves.
    assert_eq!(predict(br#"{"data": [[1, "a"]]}"#).status, 200);
}

#[test]
fn invalid_rows_422_and_skip_mode() {
    let server = TestServer::start(true, settings());
    let r = server.post_json("/api/ml/predict", &json!({"data": [[1, "a"], [11, "z"]]}));
    let body = r.assert_error(422, "invalid_input");
    let errors: Vec<(u64, &str, &str)> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["row"].as_u64().unwrap(), e["feature"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(errors, vec![(1, "x", "out_of_range"), (1, "c", "unknown_category")]);

    let r = server.post_json(
        "/api/ml/predict",
        &json!({"on_error": "skip", "data": [[1, "a"], ["NaN", "a"], [3, "b"]]}),
    );
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["target"], json!({"y_predicted": [2.0, 6.0]}));
    assert_eq!(body["rejected"][0]["row"], 1);
    assert_eq!(body["rejected"][0]["reason"], "not_finite");

    let r = server.post_json("/api/ml/predict", &json!({"names": ["c", "x"], "data": [["a", 1]]}));
    let body = r.assert_error(422, "invalid_input");
    assert_eq!(body["errors"][0]["reason"], "feature_order");
}

#[test]
fn model_failures_500_without_internals_and_the_worker_keeps_serving() {
    let server = TestServer::start(true, settings());
    let mut c = server.client();
    for x in [7, 8] {
        let r = c.request("POST", "/api/ml/predict", &[], json!({"data": [[x, "a"]]}).to_string().as_bytes());
        r.assert_error(500, "internal_error");
        let text = String::from_utf8_lossy(&r.body);
        assert!(!text.contains("secret") && !text.contains("panicked"), "{text}");
        // Same connection, next request.
        let ok = c.request("POST", "/api/ml/predict", &[], br#"{"data": [[1, "a"]]}"#);
        assert_eq!(ok.status, 200);
    }
}

#[test]
fn body_over_the_limit_413() {
    // A short linger: the client below waits for the close without sending its body.
    let linger_time = Duration::from_secs(1);
    let server = TestServer::start(true, HttpSettings { max_body: 1024, linger_time, ..settings() });
    // Declared too large: answered before any body byte is sent.
    let mut c = server.client();
    c.send(b"POST /api/ml/predict HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\n\r\n");
    let r = c.read_response(false);
    r.assert_error(413, "payload_too_large");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());

    // With Expect: 100-continue the client is refused before it sends the body.
    let mut c = server.client();
    c.send(
        b"POST /api/ml/predict HTTP/1.1\r\nhost: t\r\nexpect: 100-continue\r\ncontent-length: 5000\r\n\r\n",
    );
    c.read_response(false).assert_error(413, "payload_too_large");

    // Chunked: counted while read.
    let mut c = server.client();
    c.send(b"POST /api/ml/predict HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n");
    let chunk = format!("400\r\n{}\r\n", "a".repeat(0x400));
    c.send(chunk.as_bytes());
    c.send(chunk.as_bytes());
    let r = c.read_response(false);
    r.assert_error(413, "payload_too_large");

    // Within the limit, chunked works.
    let mut c = server.client();
    c.send(b"POST /api/ml/predict HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n");
    c.send(b"5\r\n{\"dat\r\nf\r\na\": [[1, \"a\"]]}\r\n0\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
}

#[test]
fn head_over_8_kib_431() {
    let server = TestServer::start(true, settings());
    let big = "b".repeat(9000);
    let r = server.call("GET", "/health", &[("x-big", &big)], b"");
    let body = r.assert_error(431, "header_too_large");
    assert!(body["message"].as_str().unwrap().contains("8 KiB"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    // Just under the limit passes.
    let r = server.call("GET", "/health", &[("x-big", &"b".repeat(7000))], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn malformed_request_line_400_json() {
    let server = TestServer::start(true, settings());
    let mut c = server.client();
    c.send(b"GET /health HTTP/1.1\r\nbad header line\r\n\r\n");
    c.read_response(false).assert_error(400, "bad_request");
}

#[test]
fn slow_body_and_slow_head_408() {
    let (request_timeout, linger_time) = (Duration::from_millis(300), Duration::from_secs(1));
    let server = TestServer::start(true, HttpSettings { request_timeout, linger_time, ..settings() });
    let mut c = server.client();
    c.send(b"POST /api/ml/predict HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\n{\"");
    let r = c.read_response(false);
    r.assert_error(408, "request_timeout");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_by_server());

    let mut c = server.client();
    c.send(b"POST /api/ml/predict HTTP/1.1\r\nhost: t\r\n");
    let r = c.read_response(false);
    r.assert_error(408, "request_timeout");
    assert!(c.closed_by_server());
}

#[test]
fn idle_keepalive_connections_close_after_keepalive() {
    let server =
        TestServer::start(true, HttpSettings { keepalive: Duration::from_millis(300), ..settings() });
    let mut c = server.client();
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200);
    assert_eq!(c.request("GET", "/health", &[], b"").status, 200, "keep-alive reuses the connection");
    assert!(c.closed_by_server());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let server = TestServer::start(true, settings());
    let mut c = server.client();
    c.send(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\nGET /nope HTTP/1.1\r\nhost: t\r\n\r\nGET /ready HTTP/1.1\r\nhost: t\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(c.read_response(false).status, 404);
    assert_eq!(c.read_response(false).status, 200);
}

#[test]
fn a_pipelined_head_over_the_limit_gets_a_json_431_after_the_answers_before_it() {
    let server = TestServer::start(true, settings());
    let mut c = server.client();
    let big = "b".repeat(9000);
    let pipelined = format!(
        "GET /health HTTP/1.1\r\nhost: t\r\n\r\nGET /health HTTP/1.1\r\nhost: t\r\n\r\nGET /ready HTTP/1.1\r\nhost: t\r\nx-big: {big}\r\n\r\n"
    );
    c.send(pipelined.as_bytes());
    assert_eq!(c.read_response(false).status, 200);
    assert_eq!(c.read_response(false).status, 200);
    let body = c.read_response(false).assert_error(431, "header_too_large");
    assert!(body["message"].as_str().unwrap().contains("8 KiB"));
}

#[test]
fn cors_any_origin() {
    let server = TestServer::start(true, settings());
    let r = server.call(
        "OPTIONS",
        "/api/ml/predict",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-methods"), Some("POST, OPTIONS"));
    assert_eq!(r.header("access-control-allow-headers"), Some("content-type"));
    let r = server.call("GET", "/health", &[("origin", "https://app.example")], b"");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-expose-headers"), Some("x-request-id"));
    // Errors carry CORS headers too.
    let r = server.call("GET", "/nope", &[], b"");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn cors_listed_origins() {
    let cors_origins = vec!["https://a.example".to_string()];
    let server = TestServer::start(true, HttpSettings { cors_origins, ..settings() });
    let r = server.call("GET", "/health", &[("origin", "https://a.example")], b"");
    assert_eq!(r.header("access-control-allow-origin"), Some("https://a.example"));
    assert_eq!(r.header("vary"), Some("origin"));
    let r = server.call("GET", "/health", &[("origin", "https://b.example")], b"");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("origin"));
}

#[test]
fn multipart_reaches_schema_less_models() {
    let server = TestServer::start(false, settings());
    let body = b"--XX\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n\
        --XX\r\nContent-Disposition: form-data; name=\"img\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n\
        \x89PNG\r\n--XX--\r\n";
    let r =
        server.call("POST", "/api/ml/predict", &[("content-type", "multipart/form-data; boundary=XX")], body);
    assert_eq!(r.status, 200, "{r:?}");
    let form = &r.json()["target"]["form"];
    assert_eq!(form["fields"], json!([["note", "hello"]]));
    assert_eq!(
        form["files"],
        json!([{"field": "img", "filename": "a.png", "content_type": "image/png", "len": 4}])
    );
    let r = server.call("POST", "/api/ml/predict", &[("content-type", "multipart/form-data")], body);
    r.assert_error(400, "bad_request");
    // Without a schema, JSON reaches the model as it is.
    let r = server.post_json("/api/ml/predict", &json!({"anything": [1, 2]}));
    assert_eq!(r.json()["target"]["body"], json!({"anything": [1, 2]}));
}

#[test]
fn unsupported_media_415() {
    let server = TestServer::start(true, settings());
    let r = server.call(
        "POST",
        "/api/ml/predict",
        &[("content-type", "multipart/form-data; boundary=XX")],
        b"--XX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n1\r\n--XX--\r\n",
    );
    r.assert_error(415, "unsupported_media_type");
    let r = server.call("POST", "/api/ml/predict", &[("content-encoding", "gzip")], b"\x1f\x8b");
    r.assert_error(415, "unsupported_media_type");
}

#[test]
fn custom_routes() {
    let server = TestServer::start(true, settings());
    let r = server.call("POST", "/echo?q=1", &[("content-type", "text/plain")], b"hi");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"method": "POST", "query": "q=1", "body": "hi", "fields": 0, "model": "fake", "version": "1.0"})
    );
    let r = server.call("GET", "/echo", &[], b"");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST, OPTIONS"));
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let r = server.call(method, "/any", &[], b"");
        assert_eq!((r.status, String::from_utf8_lossy(&r.body).to_string()), (200, format!("any {method}")));
    }
    let r = server.call("OPTIONS", "/any", &[], b"");
    assert_eq!(String::from_utf8_lossy(&r.body), "any OPTIONS");
}

#[test]
fn feedback_route() {
    let server = TestServer::start(true, settings());
    let r = server.post_json("/api/ml/feedback", &json!({"data": [[1, "a"], [2, "b"]], "y_true": [0, 1]}));
    assert_eq!(r.status, 200, "{r:?}");
    let body = r.json();
    assert_eq!(body["target"]["rows"], 2);
    assert_eq!(body["list_metrics"], json!([{"name": "accuracy", "type": "GAUGE", "value": 1.0}]));
    assert_eq!(body["model"], "fake");
    server
        .post_json("/api/ml/feedback", &json!({"data": [[1, "a"], [2, "b"]], "y_true": [0]}))
        .assert_error(400, "bad_request");
    server.post_json("/api/ml/feedback", &json!({"data": [[1, "a"]]})).assert_error(400, "bad_request");
    server
        .post_json("/api/ml/feedback", &json!({"data": [[1, "q"]], "y_true": [1]}))
        .assert_error(422, "invalid_input");

    let without = TestServer::start(false, settings());
    without
        .post_json("/api/ml/feedback", &json!({"data": [[1]], "y_true": [1]}))
        .assert_error(404, "not_found");
}

#[test]
fn metrics_content_types() {
    let server = TestServer::start(true, settings());
    let r = server.call("GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let r = server.call("GET", "/metrics", &[("accept", "application/openmetrics-text; version=1.0.0")], b"");
    assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
}

#[test]
fn access_log_line_per_request() {
    let server = TestServer::start(true, HttpSettings { access_log: true, ..settings() });
    let r = server.call("GET", "/health?x=1", &[("x-request-id", "log-me")], b"");
    assert_eq!(r.status, 200);
    let lines = server.access.lock().unwrap().clone();
    let (message, fields) =
        lines.iter().find(|(_, f)| f.iter().any(|(k, v)| k == "request_id" && v == "log-me")).unwrap();
    assert_eq!(message, "request");
    let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    assert_eq!(get("method"), Some("GET"));
    assert_eq!(get("path"), Some("/health?x=1"));
    assert_eq!(get("status"), Some("200"));
    assert_eq!(get("bytes"), Some("15"));
    assert!(get("remote").is_some_and(|r| r.starts_with("127.0.0.1:")));
    assert!(get("duration_ms").is_some());
}

#[test]
fn graceful_drain_answers_in_flight_and_next_requests_with_close() {
    let mut server =
        TestServer::start(true, HttpSettings { keepalive: Duration::from_secs(10), ..settings() });
    // An idle keep-alive connection, and one with a request in progress.
    let mut idle = server.client();
    assert_eq!(idle.request("GET", "/health", &[], b"").status, 200);
    let mut busy = server.client();
    busy.send(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n");
    server.slow_started.recv_timeout(WAIT).expect("the slow route started");

    let _ = server.stop.send(Stop::Graceful);
    // New connections are refused once the listener is gone.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(server.addr).is_ok() {
        assert!(Instant::now() < deadline, "the listener stays open");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The idle connection's next request is answered, with close.
    let r = idle.request("GET", "/ready", &[], b"");
    r.assert_error(503, "not_ready");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(idle.closed_by_server());
    // The request in flight completes, with close.
    server.release.send(()).unwrap();
    let r = busy.read_response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"slow done"[..]));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(busy.closed_by_server());
    let thread = server.thread.take().unwrap();
    let deadline = Instant::now() + WAIT;
    while !thread.is_finished() {
        assert!(Instant::now() < deadline, "serve did not return after the drain");
        std::thread::sleep(Duration::from_millis(10));
    }
    thread.join().unwrap().unwrap();
}

#[test]
fn drain_closes_connections_left_idle() {
    let mut server =
        TestServer::start(true, HttpSettings { keepalive: Duration::from_millis(500), ..settings() });
    let mut idle = server.client();
    assert_eq!(idle.request("GET", "/health", &[], b"").status, 200);
    server.stop(Stop::Graceful).unwrap();
    assert!(idle.closed_by_server());
}

#[test]
fn fast_stop_returns_at_once() {
    let mut server = TestServer::start(true, settings());
    let mut busy = server.client();
    busy.send(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\n");
    server.slow_started.recv_timeout(WAIT).unwrap();
    server.stop(Stop::Fast).unwrap();
    server.release.send(()).unwrap();
}

#[test]
fn idle_connections_do_not_block_others() {
    let server = TestServer::start(true, settings());
    let idle: Vec<TcpStream> = (0..500).map(|_| TcpStream::connect(server.addr).unwrap()).collect();
    // Some of them mid-head, too.
    for s in idle.iter().take(100) {
        (&*s).write_all(b"POST /api/ml/predict HTTP/1.1\r\n").unwrap();
    }
    for _ in 0..20 {
        let r = server.post_json("/api/ml/predict", &json!({"data": [[1, "a"]]}));
        assert_eq!(r.status, 200);
    }
    drop(idle);
}

#[test]
fn drain_under_load_loses_no_request() {
    // Two workers on one listening socket; the old one drains while clients keep their
    // keep-alive connections busy. Every request must succeed: the draining worker answers
    // each connection's next request with `Connection: close` and the client reconnects, to
    // the new worker.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let spare = listener.try_clone().unwrap();
    let mut old = TestServer::start_on(listener, true, settings());
    let addr = old.addr;
    let (first_tx, first_rx) = crossbeam_channel::unbounded();
    let (progress_tx, progress_rx) = crossbeam_channel::unbounded();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let first = first_tx.clone();
            let progress = progress_tx.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut reconnects = 0;
                for i in 0..300 {
                    let r = c.request("POST", "/api/ml/predict", &[], br#"{"data": [[1, "a"]]}"#);
                    assert_eq!(r.status, 200);
                    if i == 0 {
                        let _ = first.send(());
                    }
                    let _ = progress.send(());
                    if r.header("connection") == Some("close") {
                        c = Client::connect(addr);
                        reconnects += 1;
                    }
                }
                reconnects
            })
        })
        .collect();
    // Every client is connected to the old worker (the only one so far)...
    for _ in 0..8 {
        first_rx.recv_timeout(WAIT).expect("every client is answered");
    }
    let new = TestServer::start_on(spare, true, settings());
    for _ in 0..200 {
        progress_rx.recv_timeout(WAIT).expect("clients make progress");
    }
    // ...which now drains under load.
    old.stop(Stop::Graceful).unwrap();
    let reconnects: Vec<usize> = clients.into_iter().map(|c| c.join().expect("a client failed")).collect();
    assert_eq!(reconnects, vec![1; 8]);
    drop(new);
}

#[test]
fn with_events_on_responses_list_the_route_topic() {
    // A broker that is not there: events are on, deliveries just fail later.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let event_settings = crate::events::EventSettings {
        brokers: Some(format!("127.0.0.1:{port}")),
        ..crate::events::EventSettings::default()
    };
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let stats = Arc::new(Metrics::private(&MetricsSettings { max_series: 100 }));
    let (events, producer) = crate::events::start(&event_settings, log, stats);
    assert!(events.enabled());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = TestServer::start_with(listener, true, settings(), events);
    let r = server.post_json("/api/ml/predict", &json!({"data": [[1, "a"]]}));
    assert_eq!(r.json()["topics"], json!(["predict"]));
    let r = server.post_json("/api/ml/feedback", &json!({"data": [[1, "a"]], "y_true": [1]}));
    assert_eq!(r.json()["topics"], json!(["feedback"]));
    drop(server);
    if let Some(producer) = producer {
        producer.shutdown(Instant::now());
    }
}
