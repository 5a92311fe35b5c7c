//! A model written in Rust (crates/example-custom-model) served by its own binary: the whole
//! command line comes from `run_cli`; schema validation, feedback shared by every worker,
//! custom routes, custom metrics and multipart bodies reach the model.

mod common;

use std::path::PathBuf;

use common::http;
use common::Server;

fn example() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_example-custom-model"))
}

fn start(workers: &str) -> Server {
    let server = Server::spawn_program(example(), &["serve", "--workers", workers], &[]);
    let ok = common::wait_until(std::time::Duration::from_secs(60), || {
        http::get(server.addr, "/ready").is_ok_and(|r| r.status == 200)
    });
    assert!(ok, "{}", server.output());
    server
}

#[test]
fn predict_validates_against_the_models_schema() {
    let server = start("2");
    let r = server.post_json(
        "/api/ml/predict",
        r#"{"data": [["what a great day"], ["slow and broken"]], "names": ["text"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["target"]["y_predicted"], serde_json::json!(["positive", "negative"]));
    assert_eq!(body["model"], "sentiment-lexicon");
    assert_eq!(body["version"], "1.0.0");
    // A record with an unexpected feature is refused before the model runs.
    let r = server.post_json("/api/ml/predict", r#"{"txt": "hello"}"#);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("txt"), "{}", r.text());
}

#[test]
fn feedback_accuracy_covers_every_worker() {
    let server = start("4");
    let mut last = serde_json::Value::Null;
    // 40 requests on fresh connections spread over the 4 workers; 3 of every 4 labels are right.
    for i in 0..40 {
        let truth = if i % 4 == 0 { "negative" } else { "positive" };
        let body = format!(r#"{{"data": [["a great day"]], "names": ["text"], "y_true": ["{truth}"]}}"#);
        let r = server.post_json("/api/ml/feedback", &body);
        assert_eq!(r.status, 200, "{}", r.text());
        last = r.json();
    }
    let accuracy = last["list_metrics"][0]["value"].as_f64().unwrap();
    assert_eq!(accuracy, 0.75, "{last}");
}

#[test]
fn custom_routes_and_metrics_are_served() {
    let server = start("2");
    let r = server.get("/lexicon");
    assert_eq!(r.status, 200);
    assert!(r.json()["positive"].as_array().is_some_and(|a| !a.is_empty()));
    let r = http::request(server.addr, "POST", "/lexicon", &[], b"");
    assert_eq!(r.unwrap().status, 405);
    for _ in 0..6 {
        server.post_json("/api/ml/predict", r#"{"data": [["love it"]], "names": ["text"]}"#);
    }
    let text = server.get("/metrics").text();
    let line = text
        .lines()
        .find(|l| l.starts_with("example_sentiment_predictions_total{") && l.contains("positive"))
        .unwrap_or_else(|| panic!("custom metric missing:\n{text}"));
    let value: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(value, 6.0, "{line}");
}
