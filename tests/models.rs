//! Exported scikit-learn pipelines served over HTTP by the real binary: the same answers as
//! sklearn on every row, feedback metrics that cover every worker and equal sklearn's, and
//! broken packages refused before serving.
//!
//! Needs python3 with scikit-learn (installed by scripts/setup-test-deps.sh). Without it the
//! tests are skipped with a message, unless MLDEPLOY_REQUIRE_PYTHON=1 (CI), which fails them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::Server;
use serde_json::{json, Value};

const PREDICT: &str = "/api/ml/predict";
const FEEDBACK: &str = "/api/ml/feedback";
/// Largest difference allowed between mldeploy's and sklearn's probabilities or values.
const TOLERANCE: f64 = 1e-6;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The reference packages, built once per test run; `None` when python3/sklearn are missing
/// and not required.
fn packages() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reference-models");
        let _ = std::fs::remove_dir_all(&dir);
        let out =
            Command::new("python3").arg(repo().join("scripts/make_reference_models.py")).arg(&dir).output();
        match out {
            Ok(o) if o.status.success() => Some(dir),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("MLDEPLOY_REQUIRE_PYTHON").as_deref() != Ok("1"),
                    "reference models could not be built: {why}"
                );
                eprintln!("SKIPPED: reference models could not be built (python3 with scikit-learn?): {why}");
                None
            }
        }
    })
    .as_deref()
}

fn expected(dir: &Path, name: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn serve(dir: &Path, name: &str, workers: &str) -> Server {
    let pkg = dir.join(name);
    Server::start(&["serve", pkg.to_str().unwrap(), "--workers", workers, "--threads", "2"])
}

/// Predict every record in batches of 50 and compare with sklearn's answers.
fn assert_same_as_sklearn(dir: &Path, name: &str) {
    let want = expected(dir, name);
    let server = serve(dir, name, "2");
    let records = want["records"].as_array().unwrap();
    let mut worst: f64 = 0.0;
    for (chunk_index, chunk) in records.chunks(50).enumerate() {
        let r = server.post_json(PREDICT, &Value::Array(chunk.to_vec()).to_string());
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let body = r.json();
        assert_eq!(body["model"], name);
        let target = &body["target"];
        for (i, got) in target["y_predicted"].as_array().unwrap().iter().enumerate() {
            let row = chunk_index * 50 + i;
            let sk = &want["y_predicted"][row];
            if let Some(probs) = want.get("probabilities") {
                assert_eq!(got, sk, "{name}: label of row {row}");
                let got_p = target["probabilities"][i].as_array().unwrap();
                for (a, b) in got_p.iter().zip(probs[row].as_array().unwrap()) {
                    let d = (a.as_f64().unwrap() - b.as_f64().unwrap()).abs();
                    worst = worst.max(d);
                    assert!(d <= TOLERANCE, "{name}: row {row}: probability {a} vs sklearn's {b}");
                }
            } else {
                let d = (got.as_f64().unwrap() - sk.as_f64().unwrap()).abs();
                worst = worst.max(d);
                assert!(d <= TOLERANCE, "{name}: row {row}: value {got} vs sklearn's {sk}");
            }
        }
    }
    eprintln!("{name}: {} rows over HTTP, largest difference from sklearn {worst:e}", records.len());
}

#[test]
fn classifiers_answer_as_sklearn_on_every_row() {
    let Some(dir) = packages() else { return };
    for name in [
        "iris-demo",
        "iris-mlp",
        "breast-cancer-logistic",
        "breast-cancer-mlp",
        "titanic-logistic",
        "titanic-mlp",
    ] {
        assert_same_as_sklearn(dir, name);
    }
}

#[test]
fn regressors_answer_as_sklearn_on_every_row() {
    let Some(dir) = packages() else { return };
    for name in ["diabetes-linear", "diabetes-mlp"] {
        assert_same_as_sklearn(dir, name);
    }
}

/// sklearn's metrics for these labels, computed by sklearn itself.
fn sklearn_metrics(kind: &str, y_true: &[Value], y_pred: &[Value]) -> Value {
    let script = r#"
import json, sys
from sklearn import metrics
args = json.load(sys.stdin)
t, p = args["y_true"], args["y_pred"]
if args["kind"] == "binary":
    out = {"accuracy": metrics.accuracy_score(t, p), "precision": metrics.precision_score(t, p),
           "recall": metrics.recall_score(t, p), "f1": metrics.f1_score(t, p)}
elif args["kind"] == "multiclass":
    out = {"accuracy": metrics.accuracy_score(t, p),
           "precision": metrics.precision_score(t, p, average="macro", zero_division=0),
           "recall": metrics.recall_score(t, p, average="macro", zero_division=0),
           "f1": metrics.f1_score(t, p, average="macro", zero_division=0)}
else:
    out = {"mae": metrics.mean_absolute_error(t, p), "rmse": metrics.mean_squared_error(t, p) ** 0.5,
           "r2": metrics.r2_score(t, p)}
print(json.dumps(out))
"#;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let input = json!({ "kind": kind, "y_true": y_true, "y_pred": y_pred }).to_string();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Send 1000 labelled rows, 10 per request, over fresh connections to a 4-worker server, then
/// compare the server's figures with sklearn's over the same 1000 rows.
fn assert_feedback_matches_sklearn(dir: &Path, name: &str, kind: &str) {
    let want = expected(dir, name);
    let records = want["records"].as_array().unwrap();
    let n = records.len();
    let rows: Vec<usize> = (0..1000).map(|i| (i * 7) % n).collect();
    let y_pred: Vec<Value> = rows.iter().map(|&r| want["y_predicted"][r].clone()).collect();
    // True labels: sklearn's prediction, but wrong on every fifth row, so no figure is trivial.
    let classes = want.get("classes").and_then(Value::as_array).cloned().unwrap_or_default();
    let y_true: Vec<Value> = rows
        .iter()
        .enumerate()
        .map(|(i, &r)| {
            let p = &want["y_predicted"][r];
            if i % 5 != 0 {
                p.clone()
            } else if classes.is_empty() {
                json!(p.as_f64().unwrap() + 10.0)
            } else {
                let at = classes.iter().position(|c| c == p).unwrap();
                classes[(at + 1) % classes.len()].clone()
            }
        })
        .collect();
    let server = serve(dir, name, "4");
    let mut last = Value::Null;
    for start in (0..1000).step_by(10) {
        let data: Vec<Value> = rows[start..start + 10].iter().map(|&r| records[r].clone()).collect();
        // Half the requests say what was predicted, half let the server predict it.
        let mut body = json!({ "data": data, "y_true": &y_true[start..start + 10] });
        if start % 20 == 0 {
            body["y_predict"] = json!(&y_pred[start..start + 10]);
        }
        let r = server.post_json(FEEDBACK, &body.to_string());
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        last = r.json();
    }
    let reference = sklearn_metrics(kind, &y_true, &y_pred);
    let got = last["list_metrics"].as_array().expect("list_metrics");
    for (metric, value) in reference.as_object().unwrap() {
        let mine = got
            .iter()
            .find(|m| m["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(metric)))
            .unwrap_or_else(|| panic!("{name}: no {metric} in {got:?}"));
        assert_eq!(mine["type"], "GAUGE");
        let (a, b) = (mine["value"].as_f64().unwrap(), value.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{name}: {metric} {a} vs sklearn's {b}");
    }
    eprintln!("{name}: feedback over 1000 rows and 4 workers equals sklearn's {reference}");
    // The same figures are served on /metrics, whichever worker answers the scrape.
    let text = server.get("/metrics").text();
    assert!(text.contains("mldeploy_feedback_"), "feedback gauges on /metrics:\n{text}");
}

#[test]
fn feedback_metrics_cover_every_worker_and_equal_sklearns() {
    let Some(dir) = packages() else { return };
    assert_feedback_matches_sklearn(dir, "breast-cancer-logistic", "binary");
    assert_feedback_matches_sklearn(dir, "iris-demo", "multiclass");
    assert_feedback_matches_sklearn(dir, "diabetes-linear", "regression");
}

#[test]
fn broken_packages_are_refused_by_check_and_serve() {
    let Some(dir) = packages() else { return };
    let broken = Path::new(env!("CARGO_TARGET_TMPDIR")).join("broken-package");
    let _ = std::fs::remove_dir_all(&broken);
    std::fs::create_dir_all(&broken).unwrap();
    for file in ["mldeploy.json", "model.safetensors"] {
        std::fs::copy(dir.join("breast-cancer-logistic").join(file), broken.join(file)).unwrap();
    }
    // The schema lists one feature fewer than the weights take.
    let manifest_path = broken.join("mldeploy.json");
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["features"].as_array_mut().unwrap().pop();
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();

    let out = Command::new(common::binary()).args(["check", broken.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check must refuse: {stderr}");
    assert!(
        stderr.contains("mismatch") || stderr.contains("shape") || stderr.contains("feature"),
        "{stderr}"
    );

    let mut server = Server::spawn(&["serve", broken.to_str().unwrap(), "--workers", "2"], &[]);
    let status = server.wait_exit(Duration::from_secs(30)).expect("serve refuses the package");
    assert!(!status.success());

    // A sound manifest whose weights file is missing.
    std::fs::copy(dir.join("breast-cancer-logistic/mldeploy.json"), &manifest_path).unwrap();
    std::fs::remove_file(broken.join("model.safetensors")).unwrap();
    let out = Command::new(common::binary()).args(["check", broken.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("model.safetensors"), "{stderr}");

    let good = dir.join("titanic-logistic");
    let out = Command::new(common::binary()).args(["check", good.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn multipart_form_data_reaches_a_rust_model() {
    let server = Server::start_fault(&["serve"], &[]);
    let body = "--XyZ\r\nContent-Disposition: form-data; name=\"city\"\r\n\r\nLyon\r\n--XyZ\r\n\
                Content-Disposition: form-data; name=\"image\"; filename=\"cat.png\"\r\n\
                Content-Type: image/png\r\n\r\n\x01\x02\x03\x04\r\n--XyZ--\r\n";
    let r = common::http::request(
        server.addr,
        "POST",
        PREDICT,
        &[("Content-Type", "multipart/form-data; boundary=XyZ")],
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let target = &r.json()["target"];
    assert_eq!(target["fields"]["city"], "Lyon");
    assert_eq!(target["files"][0], json!({ "field": "image", "filename": "cat.png", "bytes": 4 }));
}
