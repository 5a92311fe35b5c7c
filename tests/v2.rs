//! Several models in one server, the Open Inference Protocol (V2) and the model repository,
//! driven by tritonclient's HTTP client (tests/v2_client.py) against the real binary: answers
//! equal scikit-learn's over JSON and binary tensors, errors name what is wrong, and loading
//! and unloading a model while another is under wrk load fails no request.
//!
//! Needs python3 with scikit-learn and tritonclient, and wrk (scripts/setup-test-deps.sh
//! installs them). Without them the tests are skipped, unless MLDEPLOY_REQUIRE_PYTHON=1 (CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::wrk::Wrk;
use common::Server;
use serde_json::{json, Value};

const BREAST_CANCER: &str = "breast-cancer-logistic";
const TITANIC: &str = "titanic-logistic";

/// The reference packages and sklearn's answers, built once; `None` when Python or its
/// packages are missing and not required.
fn packages() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        if !common::python_has("sklearn, tritonclient.http") {
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("v2-reference-models");
        let _ = std::fs::remove_dir_all(&dir);
        let only = ["--only", BREAST_CANCER, "--only", TITANIC].map(std::ffi::OsStr::new);
        common::run_script("make_reference_models.py", &[&[dir.as_os_str()], &only[..]].concat());
        Some(dir)
    })
    .as_deref()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "expected.json" {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A model repository in `root`: the breast-cancer package as versions 1 and 2 (2 serves),
/// the Titanic package (with category features) directly in its directory.
fn make_repository(packages: &Path, root: &Path) {
    let _ = std::fs::remove_dir_all(root);
    for version in ["1", "2"] {
        copy_dir(&packages.join(BREAST_CANCER), &root.join(BREAST_CANCER).join(version));
    }
    copy_dir(&packages.join(TITANIC), &root.join(TITANIC));
}

fn serve(root: &Path) -> Server {
    Server::start(&[
        "serve",
        "--model-repository",
        root.to_str().unwrap(),
        "--workers",
        "2",
        "--threads",
        "2",
    ])
}

/// Run tests/v2_client.py with `args`; its stdout's JSON, or a failure with everything said.
fn client(server: &Server, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(common::repo_root().join("tests/v2_client.py"))
        .arg(args[0])
        .arg(server.addr.to_string())
        .args(&args[1..])
        .output()
        .expect("run tests/v2_client.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "v2_client.py {args:?} failed:\n{}{stdout}\nserver output:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.output()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).unwrap_or(Value::Null)
}

fn test_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("v2-{name}-{}", std::process::id()))
}

#[test]
fn tritonclient_gets_sklearns_answers_from_two_models_in_json_and_binary_tensors() {
    let Some(packages) = packages() else { return };
    let root = test_dir("repository");
    make_repository(packages, &root);
    let server = serve(&root);
    let checked = client(&server, &["check", packages.to_str().unwrap(), BREAST_CANCER, TITANIC]);
    assert_eq!(checked["checked"], json!([BREAST_CANCER, TITANIC]));

    // The highest version directory serves, and metadata says so.
    let metadata = server.get(&format!("/v2/models/{BREAST_CANCER}")).json();
    assert!(metadata["versions"].as_array().unwrap().contains(&json!("2")), "{metadata}");
    assert_eq!(server.get(&format!("/v2/models/{BREAST_CANCER}/versions/2/ready")).status, 200);
    assert_eq!(server.get(&format!("/v2/models/{BREAST_CANCER}/versions/1/ready")).status, 404);

    // Each model keeps ml-deploy's routes under its own prefix; there is no unprefixed one.
    let sample = server.get(&format!("/{TITANIC}/api/ml/metadata")).json()["sample"].to_string();
    let r = server.post_json(&format!("/{TITANIC}/api/ml/predict"), &sample);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["model"], TITANIC);
    assert_eq!(server.post_json("/api/ml/predict", &sample).status, 404);
    let version = server.get("/version").json();
    assert_eq!(version["models"].as_array().map(Vec::len), Some(2), "{version}");

    // Metrics carry the model of each request.
    let metrics = server.get("/metrics").text();
    for model in [BREAST_CANCER, TITANIC] {
        let line = format!("mldeploy_predictions_total{{model=\"{model}\"");
        assert!(metrics.lines().any(|l| l.starts_with(&line)), "no {line} in\n{metrics}");
    }
    assert!(metrics.contains("route=\"/v2/models/{model}/infer\""), "{metrics}");
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn unloading_and_loading_a_model_fails_no_request_to_the_other() {
    let Some(packages) = packages() else { return };
    let root = test_dir("churn");
    make_repository(packages, &root);
    let server = serve(&root);
    let row: Vec<f64> = {
        let want: Value = serde_json::from_str(
            &std::fs::read_to_string(packages.join(BREAST_CANCER).join("expected.json")).unwrap(),
        )
        .unwrap();
        let first = want["records"][0].as_object().unwrap().clone();
        let metadata = server.get(&format!("/v2/models/{BREAST_CANCER}")).json();
        metadata["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["name"] != "input")
            .map(|i| first[i["name"].as_str().unwrap()].as_f64().unwrap())
            .collect()
    };
    let body =
        json!({"inputs": [{"name": "input", "datatype": "FP64", "shape": [1, row.len()], "data": row}]});
    let path = format!("/v2/models/{BREAST_CANCER}/infer");
    assert_eq!(server.post_json(&path, &body.to_string()).status, 200);

    let wrk = Wrk::start(server.addr, &path, &body.to_string(), 16, Duration::from_secs(600));
    let churned = client(&server, &["churn", packages.to_str().unwrap(), TITANIC, "2"]);
    assert_eq!(churned["rounds"], 2);
    let report = wrk.finish();
    assert!(report.requests > 100, "too few requests under load:\n{}", report.text);
    assert_eq!(
        (report.non_2xx, report.socket_errors),
        (0, 0),
        "failed requests:\n{}\n{}",
        report.text,
        server.output()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_model_that_fails_to_load_leaves_the_served_set_as_it_was() {
    let Some(packages) = packages() else { return };
    let root = test_dir("broken");
    make_repository(packages, &root);
    let server = serve(&root);
    // Break the Titanic package on disk, then ask for it to be loaded again.
    std::fs::write(root.join(TITANIC).join("mldeploy.json"), b"{ not json").unwrap();
    let outcome = client(&server, &["load", TITANIC]);
    assert_eq!(outcome["ok"], false, "{outcome}");
    assert_eq!(outcome["status"], "400", "{outcome}");
    let message = outcome["message"].as_str().unwrap();
    assert!(message.contains("mldeploy.json"), "the reason names the file: {message}");
    // Both models still serve, from the workers that served before.
    for model in [BREAST_CANCER, TITANIC] {
        assert_eq!(server.get(&format!("/v2/models/{model}/ready")).status, 200, "{model}");
    }
    let sample = server.get(&format!("/{TITANIC}/api/ml/metadata")).json()["sample"].to_string();
    assert_eq!(server.post_json(&format!("/{TITANIC}/api/ml/predict"), &sample).status, 200);
    // A model the repository does not have is refused at once.
    let outcome = client(&server, &["load", "no-such-model"]);
    assert_eq!(outcome["status"], "404", "{outcome}");
    drop(server);
    let _ = std::fs::remove_dir_all(&root);
}
