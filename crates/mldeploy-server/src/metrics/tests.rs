//! Behaviour of the metric store through the public handle.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use mldeploy_model::{MetricDesc, MetricKind};

use super::*;
use crate::events::EventStats;

fn metrics(max_series: usize) -> Metrics {
    Metrics::private(&MetricsSettings { max_series })
}

/// One sample: name, label pairs in order, value text.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: String,
}

/// A strict reader of the text format: every sample line is `name{k="v",...} value`, label
/// values unescaped; a sample's family must have a TYPE line before it.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.push(rest.split(' ').next().unwrap().to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        assert!(valid_metric_name(name), "bad name in {line}");
        assert!(typed.iter().any(|t| name.starts_with(t.as_str())), "sample {name} before its TYPE line");
        let mut labels = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(r) = rest.strip_prefix('{') {
            let mut i = 0;
            loop {
                if r[i..].starts_with('}') {
                    rest = &r[i + 1..];
                    break;
                }
                let eq = i + r[i..].find('=').unwrap_or_else(|| panic!("no = in {line}"));
                let key = r[i..eq].to_string();
                assert!(valid_label_name(&key), "bad label name {key:?} in {line}");
                assert!(r[eq + 1..].starts_with('"'), "unquoted value in {line}");
                let mut value = String::new();
                let mut chars = r[eq + 2..].char_indices();
                let end = loop {
                    let (k, c) = chars.next().unwrap_or_else(|| panic!("unterminated value in {line}"));
                    match c {
                        '"' => break eq + 2 + k + 1,
                        '\\' => match chars.next().map(|(_, c)| c) {
                            Some('n') => value.push('\n'),
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        c => value.push(c),
                    }
                };
                labels.push((key, value));
                i = end;
                if r[i..].starts_with(',') {
                    i += 1;
                }
            }
        }
        let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no space before value: {line}"));
        assert!(
            value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
            "bad value {value:?} in {line}"
        );
        out.push(Sample { name: name.to_string(), labels, value: value.to_string() });
    }
    out
}

fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && s.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
        })
        .map(|s| s.value.parse().unwrap())
}

fn sum_of(samples: &[Sample], name: &str) -> f64 {
    samples.iter().filter(|s| s.name == name).map(|s| s.value.parse::<f64>().unwrap()).sum()
}

#[test]
fn one_model_key_counts_in_each_store_it_is_used_with() {
    // The key remembers where its predictions series is; another store must not be written
    // at that place, and a series placed elsewhere there must still be found.
    // Stores of other sizes: the same series lies elsewhere in each.
    let (a, b) = (metrics(64), metrics(8));
    b.predictions(&ModelKey::new("other", "1"), 1);
    let iris = ModelKey::new("iris", "1.0");
    a.predictions(&iris, 2);
    b.predictions(&iris, 3);
    a.predictions(&iris, 4);
    let labels = [("model", "iris"), ("version", "1.0")];
    let count = |m: &Metrics| {
        value_of(&parse(&m.render(Format::Prometheus, &[])), "mldeploy_predictions_total", &labels)
    };
    assert_eq!(count(&a), Some(6.0));
    assert_eq!(count(&b), Some(3.0));
    let other = [("model", "other"), ("version", "1")];
    assert_eq!(
        value_of(&parse(&b.render(Format::Prometheus, &[])), "mldeploy_predictions_total", &other),
        Some(1.0)
    );
}

#[test]
fn concurrent_updates_add_up_exactly() {
    let m = metrics(64);
    let iris = ModelKey::new("iris", "1.0");
    let threads = 8;
    let per_thread = 20_000;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (m, iris) = (m.clone(), iris.clone());
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    let status = if i % 4 == 0 { 422 } else { 200 };
                    let route = if t % 2 == 0 { "/api/ml/predict" } else { "/api/ml/feedback" };
                    m.request_finished(&iris, "POST", route, status, 0.001);
                    m.predictions(&iris, 2);
                    m.validation_failure(if i % 2 == 0 { "range" } else { "missing" });
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = parse(&m.render(Format::Prometheus, &[]));
    let total = (threads * per_thread) as f64;
    assert_eq!(sum_of(&s, "mldeploy_requests_total"), total);
    fn labels<'a>(route: &'a str, status: &'a str) -> [(&'a str, &'a str); 5] {
        [("method", "POST"), ("route", route), ("status", status), ("model", "iris"), ("version", "1.0")]
    }
    assert_eq!(
        value_of(&s, "mldeploy_requests_total", &labels("/api/ml/predict", "200")),
        Some(total / 2.0 * 0.75)
    );
    assert_eq!(
        value_of(&s, "mldeploy_requests_total", &labels("/api/ml/predict", "422")),
        Some(total / 2.0 * 0.25)
    );
    assert_eq!(sum_of(&s, "mldeploy_request_duration_seconds_count"), total);
    let le = [
        ("method", "POST"),
        ("route", "/api/ml/feedback"),
        ("status", "200"),
        ("model", "iris"),
        ("version", "1.0"),
        ("le", "0.001"),
    ];
    assert_eq!(value_of(&s, "mldeploy_request_duration_seconds_bucket", &le), Some(total / 2.0 * 0.75));
    let sum = sum_of(&s, "mldeploy_request_duration_seconds_sum");
    assert!((sum - total * 0.001).abs() < 1e-6, "sum {sum}");
    assert_eq!(
        value_of(&s, "mldeploy_predictions_total", &[("model", "iris"), ("version", "1.0")]),
        Some(total * 2.0)
    );
    assert_eq!(value_of(&s, "mldeploy_validation_failures_total", &[("reason", "range")]), Some(total / 2.0));
    assert_eq!(
        value_of(&s, "mldeploy_validation_failures_total", &[("reason", "missing")]),
        Some(total / 2.0)
    );
}

#[test]
fn racing_claims_of_new_label_sets_make_one_series_each() {
    let m = metrics(512);
    let threads = 8;
    let barrier = Arc::new(std::sync::Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let m = m.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for i in 0..300 {
                    m.validation_failure(&format!("reason-{i}"));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = parse(&m.render(Format::Prometheus, &[]));
    let series: Vec<&Sample> = s.iter().filter(|x| x.name == "mldeploy_validation_failures_total").collect();
    assert_eq!(series.len(), 300);
    assert!(series.iter().all(|x| x.value == "8"), "{series:?}");
}

#[test]
fn label_sets_beyond_the_limit_fold_into_the_overflow_series() {
    let m = metrics(4);
    for i in 0..10 {
        for _ in 0..=i {
            m.validation_failure(&format!("r{i}"));
        }
    }
    // A label text over 256 bytes overflows too, even below the limit.
    let m2 = metrics(4);
    m2.validation_failure(&"x".repeat(300));
    let s = parse(&m.render(Format::Prometheus, &[]));
    let series: Vec<&Sample> = s.iter().filter(|x| x.name == "mldeploy_validation_failures_total").collect();
    assert_eq!(series.len(), 5, "{series:?}");
    for i in 0..4 {
        assert_eq!(
            value_of(&s, "mldeploy_validation_failures_total", &[("reason", format!("r{i}").as_str())]),
            Some(i as f64 + 1.0)
        );
    }
    let folded: f64 = (5..=10).map(f64::from).sum();
    assert_eq!(
        value_of(&s, "mldeploy_validation_failures_total", &[("reason", "__overflow__")]),
        Some(folded)
    );
    assert_eq!(sum_of(&s, "mldeploy_validation_failures_total"), 55.0);
    let s2 = parse(&m2.render(Format::Prometheus, &[]));
    assert_eq!(value_of(&s2, "mldeploy_validation_failures_total", &[("reason", "__overflow__")]), Some(1.0));
    // Requests fold with every label at __overflow__.
    let m3 = metrics(2);
    for route in ["/a", "/b", "/c"] {
        m3.request_finished(&ModelKey::none(), "GET", route, 200, 0.01);
    }
    let s3 = parse(&m3.render(Format::Prometheus, &[]));
    let all = [
        ("method", "__overflow__"),
        ("route", "__overflow__"),
        ("status", "__overflow__"),
        ("model", "__overflow__"),
        ("version", "__overflow__"),
    ];
    assert_eq!(value_of(&s3, "mldeploy_requests_total", &all), Some(1.0));
}

#[test]
fn label_values_and_help_are_escaped() {
    let m = metrics(8);
    let nasty = "a\"b\\c\nd";
    m.validation_failure(nasty);
    m.predictions(&ModelKey::new("m\"x", "v\\1"), 1);
    let text = m.render(Format::Prometheus, &[]);
    assert!(text.contains(r#"reason="a\"b\\c\nd""#), "{text}");
    assert!(text.lines().all(|l| !l.is_empty()));
    let s = parse(&text);
    assert_eq!(value_of(&s, "mldeploy_validation_failures_total", &[("reason", nasty)]), Some(1.0));
    assert_eq!(
        value_of(&s, "mldeploy_predictions_total", &[("model", "m\"x"), ("version", "v\\1")]),
        Some(1.0)
    );
    assert_eq!(render::escape_help("a\\b\n\"c\"", Format::Prometheus), "a\\\\b\\n\"c\"");
    assert_eq!(render::escape_help("a\\b\n\"c\"", Format::OpenMetrics), "a\\\\b\\n\\\"c\\\"");
}

fn model_descs() -> Vec<MetricDesc> {
    let d = |name: &str, kind, labels: &[&str]| MetricDesc {
        name: name.into(),
        help: format!("help of {name}"),
        kind,
        label_names: labels.iter().map(|s| s.to_string()).collect(),
    };
    vec![
        d("model_queue_depth", MetricKind::Gauge, &["queue"]),
        d("model_cache_hits_total", MetricKind::Counter, &[]),
        d("model_score", MetricKind::Histogram { buckets: vec![0.5, 0.9, f64::INFINITY] }, &["class"]),
        d(
            "model_state",
            MetricKind::Enum { states: vec!["warming".into(), "ready".into(), "degraded".into()] },
            &[],
        ),
    ]
}

#[test]
fn model_declared_metrics_are_recorded_and_rendered() {
    let m = metrics(8);
    for d in model_descs() {
        m.declare(&d).unwrap();
    }
    // Identical re-declaration (another worker, a reload) shares storage.
    for d in model_descs() {
        m.declare(&d).unwrap();
    }
    let sink = m.model_sink();
    sink.gauge_set("model_queue_depth", &["in"], 3.5);
    sink.counter_add("model_cache_hits_total", &[], 2.0);
    sink.counter_add("model_cache_hits", &[], 0.5);
    sink.histogram_observe("model_score", &["cat"], 0.7);
    sink.histogram_observe("model_score", &["cat"], 0.95);
    sink.enum_set("model_state", &[], "ready");
    // Wrong uses are ignored and counted.
    sink.gauge_set("nope", &[], 1.0);
    sink.gauge_set("model_queue_depth", &[], 1.0);
    sink.counter_add("model_queue_depth", &["in"], 1.0);
    sink.counter_add("model_cache_hits_total", &[], -1.0);
    sink.enum_set("model_state", &[], "asleep");

    let s = parse(&m.render(Format::Prometheus, &[]));
    assert_eq!(value_of(&s, "model_queue_depth", &[("queue", "in")]), Some(3.5));
    assert_eq!(value_of(&s, "model_cache_hits_total", &[]), Some(2.5));
    assert_eq!(value_of(&s, "model_score_bucket", &[("class", "cat"), ("le", "0.5")]), Some(0.0));
    assert_eq!(value_of(&s, "model_score_bucket", &[("class", "cat"), ("le", "0.9")]), Some(1.0));
    assert_eq!(value_of(&s, "model_score_bucket", &[("class", "cat"), ("le", "+Inf")]), Some(2.0));
    assert_eq!(value_of(&s, "model_score_count", &[("class", "cat")]), Some(2.0));
    assert_eq!(value_of(&s, "model_state", &[("model_state", "ready")]), Some(1.0));
    assert_eq!(value_of(&s, "model_state", &[("model_state", "warming")]), Some(0.0));
    assert_eq!(value_of(&s, "model_state", &[("model_state", "degraded")]), Some(0.0));
    let err = |r| value_of(&s, "mldeploy_model_metric_errors_total", &[("reason", r)]);
    assert_eq!(err("undeclared"), Some(1.0));
    assert_eq!(err("labels"), Some(1.0));
    assert_eq!(err("kind"), Some(1.0));
    assert_eq!(err("value"), Some(1.0));
    assert_eq!(err("state"), Some(1.0));

    let text = m.render(Format::OpenMetrics, &[]);
    assert!(text.contains("# TYPE model_state stateset\n"), "{text}");
    assert!(text.contains("# TYPE model_cache_hits counter\n"), "{text}");
    assert!(text.contains("# TYPE mldeploy_requests counter\n"), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn declarations_are_checked() {
    let m = metrics(8);
    let base = MetricDesc {
        name: "ok_metric".into(),
        help: String::new(),
        kind: MetricKind::Gauge,
        label_names: vec![],
    };
    m.declare(&base).unwrap();
    let changed = MetricDesc { label_names: vec!["a".into()], ..base.clone() };
    assert!(matches!(m.declare(&changed), Err(MetricsError::Mismatch { .. })));
    let as_counter = MetricDesc { kind: MetricKind::Counter, ..base.clone() };
    assert!(matches!(m.declare(&as_counter), Err(MetricsError::Mismatch { .. })));
    let bad = |d: MetricDesc| m.declare(&d).unwrap_err();
    assert!(matches!(
        bad(MetricDesc { name: "1abc".into(), ..base.clone() }),
        MetricsError::InvalidName { .. }
    ));
    assert!(matches!(
        bad(MetricDesc { name: "x".into(), label_names: vec!["__a".into()], ..base.clone() }),
        MetricsError::InvalidName { .. }
    ));
    assert!(matches!(
        bad(MetricDesc { name: "x".into(), label_names: vec!["a".into(), "a".into()], ..base.clone() }),
        MetricsError::InvalidName { .. }
    ));
    assert!(matches!(
        bad(MetricDesc {
            name: "h".into(),
            kind: MetricKind::Histogram { buckets: vec![1.0, 0.5] },
            ..base.clone()
        }),
        MetricsError::InvalidShape { .. }
    ));
    assert!(matches!(
        bad(MetricDesc { name: "e".into(), kind: MetricKind::Enum { states: vec![] }, ..base.clone() }),
        MetricsError::InvalidShape { .. }
    ));
    // A built-in family's name is taken.
    assert!(matches!(
        bad(MetricDesc {
            name: "mldeploy_predictions_total".into(),
            kind: MetricKind::Counter,
            ..base.clone()
        }),
        MetricsError::Mismatch { .. }
    ));
    assert!(matches!(
        bad(MetricDesc { name: "mldeploy_requests_total".into(), ..base }),
        MetricsError::InvalidName { .. }
    ));
}

#[test]
fn server_lifecycle_metrics_render() {
    let m = metrics(8);
    m.workers_alive(4);
    m.worker_restart("crash");
    m.worker_restart("crash");
    m.worker_restart("reload");
    m.reload(true);
    m.model_load_seconds(0.25);
    m.sent("predict");
    m.sent("predict");
    m.delivered("predict");
    m.dropped("feedback");
    let s = parse(&m.render(Format::Prometheus, &[]));
    assert_eq!(value_of(&s, "mldeploy_workers_alive", &[]), Some(4.0));
    assert_eq!(value_of(&s, "mldeploy_worker_restarts_total", &[("reason", "crash")]), Some(2.0));
    assert_eq!(value_of(&s, "mldeploy_worker_restarts_total", &[("reason", "reload")]), Some(1.0));
    assert_eq!(value_of(&s, "mldeploy_worker_restarts_total", &[("reason", "timeout")]), Some(0.0));
    assert_eq!(value_of(&s, "mldeploy_reloads_total", &[("outcome", "ok")]), Some(1.0));
    assert_eq!(value_of(&s, "mldeploy_reloads_total", &[("outcome", "failed")]), Some(0.0));
    assert_eq!(value_of(&s, "mldeploy_model_load_seconds", &[]), Some(0.25));
    assert_eq!(
        value_of(&s, "mldeploy_events_total", &[("topic", "predict"), ("outcome", "sent")]),
        Some(2.0)
    );
    assert_eq!(
        value_of(&s, "mldeploy_events_total", &[("topic", "predict"), ("outcome", "delivered")]),
        Some(1.0)
    );
    assert_eq!(
        value_of(&s, "mldeploy_events_total", &[("topic", "feedback"), ("outcome", "dropped")]),
        Some(1.0)
    );
    let start = value_of(&s, "mldeploy_master_start_time_seconds", &[]).unwrap();
    assert!(start > 1.6e9, "start time {start}");
}

#[test]
fn in_flight_counts_open_guards_of_live_processes() {
    let m = metrics(8);
    let gauge = |m: &Metrics| {
        value_of(&parse(&m.render(Format::Prometheus, &[])), "mldeploy_requests_in_flight", &[])
    };
    assert_eq!(gauge(&m), Some(0.0));
    let a = m.request_started();
    let b = m.request_started();
    assert_eq!(gauge(&m), Some(2.0));
    drop(a);
    assert_eq!(gauge(&m), Some(1.0));
    // The master forgets a process that ended; its open requests stop counting.
    m.worker_exited(std::process::id() as i32);
    assert_eq!(gauge(&m), Some(0.0));
    std::mem::forget(b);
}

#[test]
fn scrape_gauges_of_the_model_are_rendered() {
    use mldeploy_model::{ModelError, ModelInfo, PredictInput, Response, ScrapedGauge};
    struct M(ModelInfo);
    impl Model for M {
        fn info(&self) -> &ModelInfo {
            &self.0
        }
        fn predict(&self, _: &PredictInput) -> Result<Response, ModelError> {
            Ok(Response::default())
        }
        fn metrics(&self) -> Vec<MetricDesc> {
            vec![MetricDesc {
                name: "declared_at_scrape".into(),
                help: "h".into(),
                kind: MetricKind::Gauge,
                label_names: vec![],
            }]
        }
        fn scrape_gauges(&self) -> Vec<ScrapedGauge> {
            let g = |name: &str, labels: &[(&str, &str)], value| ScrapedGauge {
                name: name.into(),
                help: "feedback".into(),
                labels: labels.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
                value,
            };
            vec![
                g("mldeploy_feedback_accuracy", &[], 0.9),
                g("mldeploy_feedback_f1", &[("class", "a")], 0.8),
                g("mldeploy_feedback_f1", &[("class", "b")], 0.7),
                g("mldeploy_workers_alive", &[], 99.0), // taken by the server: skipped
                g("bad name", &[], 1.0),
            ]
        }
    }
    let model =
        M(ModelInfo { name: "m".into(), version: "1".into(), kind: "custom".into(), ..ModelInfo::default() });
    let m = metrics(8);
    let text = m.render(Format::Prometheus, &[&model]);
    let s = parse(&text);
    assert_eq!(value_of(&s, "mldeploy_feedback_accuracy", &[]), Some(0.9));
    assert_eq!(value_of(&s, "mldeploy_feedback_f1", &[("class", "b")]), Some(0.7));
    assert_eq!(value_of(&s, "mldeploy_workers_alive", &[]), Some(0.0));
    assert_eq!(value_of(&s, "declared_at_scrape", &[]), Some(0.0));
    assert!(!text.contains("bad name"));
}

#[test]
fn formats_follow_the_accept_header() {
    assert_eq!(Format::from_accept(None), Format::Prometheus);
    assert_eq!(Format::from_accept(Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1")), Format::Prometheus);
    assert_eq!(
        Format::from_accept(Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5")),
        Format::OpenMetrics
    );
    assert!(Format::OpenMetrics.content_type().starts_with("application/openmetrics-text; version=1.0.0"));
    assert!(Format::Prometheus.content_type().starts_with("text/plain; version=0.0.4"));
}

#[test]
fn disabled_metrics_record_nothing() {
    let m = Metrics::disabled();
    m.request_finished(&ModelKey::none(), "GET", "/x", 200, 0.1);
    let _g = m.request_started();
    assert_eq!(m.render(Format::Prometheus, &[]), "");
    assert_eq!(m.render(Format::OpenMetrics, &[]), "# EOF\n");
}

/// A populated store, for the parser checks.
fn populated() -> Metrics {
    let m = metrics(16);
    let iris = ModelKey::new("iris", "1.0");
    for d in model_descs() {
        m.declare(&d).unwrap();
    }
    let sink = m.model_sink();
    sink.gauge_set("model_queue_depth", &["in \"q\""], 1.0);
    sink.counter_add("model_cache_hits_total", &[], 1.0);
    sink.histogram_observe("model_score", &["x"], 0.2);
    sink.enum_set("model_state", &[], "degraded");
    m.request_finished(&iris, "POST", "/api/ml/predict", 200, 0.0003);
    m.request_finished(&iris, "GET", "/metrics", 200, 0.002);
    m.predictions(&iris, 3);
    m.validation_failure("line\nbreak \\ \"quoted\"");
    m.worker_restart("crash");
    m.sent("predict");
    m.workers_alive(2);
    m.model_load_seconds(1e-7);
    for i in 0..20 {
        m.validation_failure(&format!("r{i}"));
    }
    m
}

/// Python's prometheus_client, when it is there; `None` means skipped.
fn python_parse(text: &str, openmetrics: bool) -> Option<String> {
    const SCRIPT: &str = r#"
import sys
try:
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
except ImportError:
    sys.exit(77)
text = sys.stdin.read()
parse = om if sys.argv[1] == "om" else text_string_to_metric_families
n = 0
for family in parse(text):
    for sample in family.samples:
        n += 1
print(n)
"#;
    let required = std::env::var("MLDEPLOY_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let child = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(if openmetrics { "om" } else { "text" })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(!required, "python3 is required (MLDEPLOY_REQUIRE_PYTHON=1): {e}");
            eprintln!("skipped: no python3 ({e})");
            return None;
        }
    };
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.code() == Some(77) {
        assert!(!required, "prometheus_client is required (MLDEPLOY_REQUIRE_PYTHON=1)");
        eprintln!("skipped: python3 has no prometheus_client");
        return None;
    }
    assert!(
        out.status.success(),
        "prometheus_client refused the exposition:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn expositions_parse_with_prometheus_client() {
    let m = populated();
    let text = m.render(Format::Prometheus, &[]);
    let mine = parse(&text);
    if let Some(n) = python_parse(&text, false) {
        assert_eq!(n, mine.len().to_string(), "sample counts differ:\n{text}");
    }
    let om = m.render(Format::OpenMetrics, &[]);
    let mine_om = parse(&om);
    if let Some(n) = python_parse(&om, true) {
        assert_eq!(n, mine_om.len().to_string(), "sample counts differ:\n{om}");
    }
    // The same samples in both formats (OpenMetrics names counters' samples the same way).
    let key = |s: &Sample| (s.name.clone(), s.labels.clone());
    let a: HashMap<_, _> = mine.iter().map(|s| (key(s), s.value.clone())).collect();
    let b: HashMap<_, _> = mine_om.iter().map(|s| (key(s), s.value.clone())).collect();
    assert_eq!(a.keys().collect::<std::collections::BTreeSet<_>>(), b.keys().collect());
}
