//! ONNX graphs served by the real binary: files built in the test run with skl2onnx and
//! onnx.helper (scripts/make_onnx_models.py), answered over ml-deploy's route and the Open
//! Inference Protocol as onnxruntime's own Python run of the same file answers; bad input is a
//! clear error, a graph failing at run time a 500 and the worker serves on; broken or
//! unsupported files and a missing runtime library are refused at start with the reason.
//!
//! Needs python3 with scikit-learn, pandas, skl2onnx, onnx and onnxruntime (the server finds the
//! runtime library in that Python's onnxruntime package); scripts/setup-test-deps.sh installs
//! them. Without them the tests are skipped, unless MLDEPLOY_REQUIRE_PYTHON=1 (CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use common::Server;
use serde_json::{json, Value};

/// Largest difference allowed between mldeploy's numbers and onnxruntime-Python's.
const TOLERANCE: f64 = 1e-6;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The models and onnxruntime's answers, built once; `None` when Python or its packages are
/// missing and not required.
fn models() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let required = std::env::var("MLDEPLOY_REQUIRE_PYTHON").as_deref() == Ok("1");
        let ready = Command::new("python3")
            .args(["-c", "import sklearn, pandas, skl2onnx, onnx, onnxruntime"])
            .status();
        if !ready.is_ok_and(|s| s.success()) {
            assert!(
                !required,
                "python3 with scikit-learn, pandas, skl2onnx, onnx and onnxruntime is needed: run \
                 scripts/setup-test-deps.sh"
            );
            eprintln!("SKIPPED: python3 with skl2onnx, onnx and onnxruntime is missing");
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-models");
        let _ = std::fs::remove_dir_all(&dir);
        let out = Command::new("python3")
            .arg(repo_root().join("scripts/make_onnx_models.py"))
            .arg(&dir)
            .output()
            .expect("run make_onnx_models.py");
        assert!(out.status.success(), "ONNX models: {}", String::from_utf8_lossy(&out.stderr));
        Some(dir)
    })
    .as_deref()
}

fn expected(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap()
}

fn arg(path: PathBuf) -> String {
    path.to_str().unwrap().to_string()
}

fn serve(args: &[String]) -> Server {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start(&args)
}

/// Leaves of a nested JSON list, and its shape.
fn flatten(value: &Value, shape: &mut Vec<usize>, depth: usize, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => {
            if shape.len() == depth {
                shape.push(items.len());
            }
            for item in items {
                flatten(item, shape, depth + 1, out);
            }
        }
        leaf => out.push(leaf.clone()),
    }
}

fn same_value(what: &str, got: &Value, want: &Value) {
    match (got.as_f64(), want.as_f64()) {
        (Some(g), Some(w)) if !(got.is_i64() && want.is_i64()) => {
            assert!((g - w).abs() <= TOLERANCE, "{what}: {g} vs onnxruntime's {w}")
        }
        _ => assert_eq!(got, want, "{what}"),
    }
}

/// `got`, a flat list of `shape`, equals onnxruntime's output `want`.
fn same_output(what: &str, got_shape: &[usize], got: &[Value], want: &Value) {
    match want["kind"].as_str() {
        Some("tensor") => {
            let shape: Vec<usize> =
                want["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            assert_eq!(got_shape, shape.as_slice(), "{what}: shape");
            let data = want["data"].as_array().unwrap();
            assert_eq!(got.len(), data.len(), "{what}: element count");
            for (i, (g, w)) in got.iter().zip(data).enumerate() {
                same_value(&format!("{what}[{i}]"), g, w);
            }
        }
        Some("maps") => {
            let rows = want["data"].as_array().unwrap();
            assert_eq!(got.len(), rows.len(), "{what}: rows");
            for (r, (g, w)) in got.iter().zip(rows).enumerate() {
                let (g, w) = (g.as_object().unwrap(), w.as_object().unwrap());
                assert_eq!(
                    g.keys().collect::<Vec<_>>(),
                    w.keys().collect::<Vec<_>>(),
                    "{what}: row {r} keys"
                );
                for (k, wv) in w {
                    same_value(&format!("{what}: row {r} {k}"), &g[k], wv);
                }
            }
        }
        other => panic!("{what}: unknown kind {other:?}"),
    }
}

fn nested(value: &Value) -> (Vec<usize>, Vec<Value>) {
    let (mut shape, mut flat) = (Vec::new(), Vec::new());
    flatten(value, &mut shape, 0, &mut flat);
    (shape, flat)
}

/// Compare ml-deploy's answer at `prefix` (`/<name>/api/ml` among several models) with
/// onnxruntime's.
fn check_ml_deploy(server: &Server, name: &str, prefix: &str, case: &Value) {
    let r = server.post_json(&format!("{prefix}/predict"), &case["body"].to_string());
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    let target = &r.json()["target"];
    let rows = case["rows"].as_u64().unwrap() as usize;
    for (output, want) in case["outputs"].as_object().unwrap() {
        let got = &target[output];
        assert!(!got.is_null(), "{name}: no output {output} in {target}");
        let (shape, flat) = match want["kind"].as_str() {
            Some("maps") => (vec![rows], got.as_array().unwrap().clone()),
            _ => nested(got),
        };
        same_output(&format!("{name} {output}"), &shape, &flat, want);
        // scikit-learn's converter's conventional names are also ml-deploy's.
        let alias = match output.as_str() {
            "label" | "output_label" | "variable" => Some("y_predicted"),
            "probabilities" => Some("probabilities"),
            _ => None,
        };
        if let Some(alias) = alias {
            let (alias_shape, alias_flat) = nested(&target[alias]);
            assert_eq!(alias_flat, flat, "{name}: {alias} is {output}");
            assert_eq!(alias_shape[0], rows, "{name}: {alias} has a value per row");
            if alias == "y_predicted" {
                assert_eq!(alias_shape, [rows], "{name}: y_predicted is one value per row, flat");
            }
        }
    }
}

fn check_v2(server: &Server, name: &str, case: &Value) {
    let body = json!({ "inputs": case["v2_inputs"] });
    let r = server.post_json(&format!("/v2/models/{name}/infer"), &body.to_string());
    assert_eq!(r.status, 200, "{name}: {}", r.text());
    let answer = r.json();
    let outputs = answer["outputs"].as_array().unwrap();
    let wanted = case["outputs"].as_object().unwrap();
    assert_eq!(outputs.len(), wanted.len(), "{name}: the graph's outputs, no more: {answer}");
    for (output, want) in wanted {
        let got = outputs
            .iter()
            .find(|o| o["name"] == output.as_str())
            .unwrap_or_else(|| panic!("{name}: {output}"));
        let shape: Vec<usize> =
            got["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        let data = got["data"].as_array().unwrap();
        same_output(&format!("{name} V2 {output}"), &shape, data, want);
    }
}

#[test]
fn every_graph_answers_as_onnxruntime_on_both_routes() {
    let Some(dir) = models() else { return };
    let want = expected(dir);
    let names = ["iris_lr", "linear", "rf_zipmap", "tiny_mlp", "columns"];
    let mut args = vec!["serve".to_string()];
    for name in names {
        let path = if name == "columns" { dir.join(name) } else { dir.join(format!("{name}.onnx")) };
        args.push(arg(path));
    }
    args.extend(["--workers", "2", "--threads", "2"].map(String::from));
    let server = serve(&args);
    for name in names {
        let model = &want[name];
        let metadata = server.get(&format!("/{name}/api/ml/metadata")).json();
        assert_eq!(metadata["version"], model["version"], "{name}: version from the graph or the manifest");
        assert_eq!(metadata["kind"], "onnx");
        let cases = model["cases"].as_array().unwrap();
        // V2 metadata lists the graph's own inputs, which infer takes by name.
        let v2 = server.get(&format!("/v2/models/{name}")).json();
        let inputs: Vec<&Value> = v2["inputs"].as_array().unwrap().iter().map(|i| &i["name"]).collect();
        let sent: Vec<&Value> =
            cases[0]["v2_inputs"].as_array().unwrap().iter().map(|i| &i["name"]).collect();
        assert_eq!(inputs, sent, "{name}: {v2}");
        for case in cases {
            check_ml_deploy(&server, name, &format!("/{name}/api/ml"), case);
            check_v2(&server, name, case);
        }
        eprintln!("{name}: {} cases equal onnxruntime's on both routes", cases.len());
    }
    // A package's features come in the manifest's order; a file's from the graph.
    let columns = server.get("/columns/api/ml/metadata").json();
    let features: Vec<&Value> = columns["features"].as_array().unwrap().iter().map(|f| &f["name"]).collect();
    assert_eq!(features, [&json!("city"), &json!("age"), &json!("income"), &json!("n_items")]);
    let iris = server.get("/iris_lr/api/ml/metadata").json();
    assert_eq!(iris["features"].as_array().unwrap().len(), 4);
    assert_eq!(iris["features"][0]["name"], "X_0");
    // Records work as for every model.
    let record: serde_json::Map<String, Value> = (0..4).map(|j| (format!("X_{j}"), json!(1.5))).collect();
    let r = server.post_json("/iris_lr/api/ml/predict", &Value::Object(record).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn bad_input_is_a_clear_error_and_a_failing_graph_answers_500() {
    let Some(dir) = models() else { return };
    let want = expected(dir);
    let args = vec![
        "serve".to_string(),
        arg(dir.join("iris_lr.onnx")),
        arg(dir.join("columns")),
        arg(dir.join("fails.onnx")),
        "--threads".into(),
        "2".into(),
    ];
    let server = serve(&args);
    let error_of = |path: &str, body: Value| {
        let r = server.post_json(path, &body.to_string());
        (r.status, r.json())
    };
    // ml-deploy's route: 422, naming the input (a column of X is X_<j>).
    let (status, body) = error_of("/iris_lr/api/ml/predict", json!({"data": [[1.0, "wide", 2.0, 3.0]]}));
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["feature"], "X_1", "{body}");
    let (status, body) = error_of(
        "/columns/api/ml/predict",
        json!([{"city": "pa\u{0}ris", "age": 30, "income": 2, "n_items": 1}]),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["feature"], "city", "{body}");
    let (status, body) = error_of(
        "/columns/api/ml/predict",
        json!([{"city": "lyon", "age": 30, "income": 1e39, "n_items": 1}]),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["feature"], "income", "{body}");
    assert!(body["message"].as_str().unwrap().contains("float"), "{body}");
    let (status, body) = error_of(
        "/columns/api/ml/predict",
        json!([{"city": "lyon", "age": 30, "income": 1, "n_items": 2.5}]),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["errors"][0]["feature"], "n_items", "{body}");
    // V2: 400, naming the input.
    let (status, body) = error_of(
        "/v2/models/iris_lr/infer",
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("\"X\""), "{body}");
    let (status, body) = error_of(
        "/v2/models/columns/infer",
        json!({"inputs": [
            {"name": "age", "datatype": "FP32", "shape": [1, 1], "data": [30]},
            {"name": "income", "datatype": "FP32", "shape": [1, 1], "data": [2]},
            {"name": "n_items", "datatype": "FP32", "shape": [1, 1], "data": [2.5]},
            {"name": "city", "datatype": "BYTES", "shape": [1, 1], "data": ["lyon"]}
        ]}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("n_items"), "{body}");

    // A graph that fails at run time: 500, and the same worker serves on.
    let workers = server.worker_pids();
    let (status, body) = error_of("/fails/api/ml/predict", json!({"data": [[1.0, 2.0]]}));
    assert_eq!(status, 500, "{body}");
    let case = &want["fails"]["cases"][0];
    check_ml_deploy(&server, "fails", "/fails/api/ml", case);
    let (status, _) = error_of(
        "/v2/models/fails/infer",
        json!({"inputs": [{"name": "X", "datatype": "FP32", "shape": [3, 2], "data": [1, 2, 3, 4, 5, 6]}]}),
    );
    assert_eq!(status, 500);
    check_v2(&server, "fails", case);
    assert_eq!(server.worker_pids(), workers, "no worker was replaced");
    assert!(server.output().contains("ONNX Runtime failed to run the graph"), "{}", server.output());

    // Feedback figures: the package gives the classes and the graph a label output.
    let case = &want["columns"]["cases"][0];
    let labels = case["outputs"]["output_label"]["data"].as_array().unwrap();
    let flipped: Vec<Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| if i % 5 == 0 { json!(1 - l.as_i64().unwrap()) } else { l.clone() })
        .collect();
    let right = labels.iter().zip(&flipped).filter(|(a, b)| a == b).count() as f64 / labels.len() as f64;
    let body = json!({"data": case["body"]["data"], "names": case["body"]["names"], "y_true": flipped});
    let (status, answer) = error_of("/columns/api/ml/feedback", body);
    assert_eq!(status, 200, "{answer}");
    let accuracy = answer["list_metrics"].as_array().unwrap().iter().find(|m| m["name"] == "accuracy");
    let accuracy = accuracy.unwrap_or_else(|| panic!("{answer}"))["value"].as_f64().unwrap();
    assert!((accuracy - right).abs() < 1e-12, "{accuracy} vs {right}");
    assert!(server.get("/metrics").text().contains("mldeploy_feedback_accuracy{model=\"columns\""));
    let (status, _) = error_of("/iris_lr/api/ml/feedback", json!({"data": [[1, 2, 3, 4]], "y_true": [0]}));
    assert_eq!(status, 404, "a graph without classes takes no feedback");
}

/// Processes of the process group `pgid` still alive.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut alive = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        if fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid) && fields.first() != Some(&"Z") {
            alive.push(pid);
        }
    }
    alive
}

fn check(args: &[&str], env: &[(&str, &str)], clean_env: bool) -> (bool, String) {
    let mut cmd = Command::new(common::binary());
    cmd.arg("check").args(args);
    if clean_env {
        cmd.env_remove("VIRTUAL_ENV").env_remove("ORT_DYLIB_PATH").env_remove("MLDEPLOY_ONNXRUNTIME");
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `serve` refuses at start: the master exits non-zero with `reason` in its output, and no
/// process of its group is left.
fn serve_refuses(args: &[&str], env: &[(&str, &str)], reason: &str) {
    let mut all = vec!["serve"];
    all.extend_from_slice(args);
    all.extend(["--workers", "2"]);
    let mut server = Server::spawn(&all, env);
    let status = server.wait_exit(Duration::from_secs(60)).expect("serve refuses at start");
    assert!(!status.success());
    let output = server.output();
    assert!(output.contains(reason), "{reason:?} not in:\n{output}");
    let left = common::wait_until(Duration::from_secs(10), || group_members(server.pid()).is_empty());
    assert!(left, "processes left: {:?}", group_members(server.pid()));
}

#[test]
fn broken_and_unsupported_files_and_a_missing_runtime_are_refused_at_start() {
    let Some(dir) = models() else { return };
    let broken = arg(dir.join("broken.onnx"));
    let unsupported = arg(dir.join("unsupported.onnx"));
    let good = arg(dir.join("iris_lr.onnx"));

    let (ok, stderr) = check(&[&broken], &[], false);
    assert!(!ok && stderr.contains("broken.onnx") && stderr.contains("cannot load the graph"), "{stderr}");
    serve_refuses(&[&broken], &[], "cannot load the graph");
    let (ok, stderr) = check(&[&unsupported], &[], false);
    assert!(!ok && stderr.contains("\"image\"") && stderr.contains("[?, 3, 2, 2]"), "{stderr}");
    serve_refuses(&[&unsupported], &[], "\"image\"");

    // The runtime library: a path that names nothing, a file that is not the library, none found.
    let nowhere = "/nonexistent/libonnxruntime.so.1.31.1";
    let (ok, stderr) = check(&[&good, "--onnxruntime", nowhere], &[], false);
    assert!(!ok && stderr.contains(nowhere) && stderr.contains("does not exist"), "{stderr}");
    let (ok, stderr) = check(&[&good, "--onnxruntime", &good], &[], false);
    assert!(!ok && stderr.contains("cannot load the ONNX Runtime library"), "{stderr}");
    let empty = Path::new(env!("CARGO_TARGET_TMPDIR")).join("onnx-no-python");
    std::fs::create_dir_all(&empty).unwrap();
    let no_python = [("PATH", empty.to_str().unwrap())];
    let (ok, stderr) = check(&[&good], &no_python, true);
    assert!(!ok && stderr.contains("pip install onnxruntime==1.31.1"), "{stderr}");
    serve_refuses(
        &[&good],
        &[("PATH", empty.to_str().unwrap()), ("VIRTUAL_ENV", ""), ("ORT_DYLIB_PATH", "")],
        "pip install onnxruntime==1.31.1",
    );
    serve_refuses(&[&good, "--onnxruntime", nowhere], &[], "does not exist");

    // And a good file passes, predicting its sample.
    let (ok, stderr) = check(&[&good], &[], false);
    assert!(ok, "{stderr}");
}

#[test]
fn reload_replaces_workers_running_sessions() {
    let Some(dir) = models() else { return };
    let want = expected(dir);
    let server = serve(&["serve".into(), arg(dir.join("tiny_mlp.onnx")), "--workers".into(), "2".into()]);
    let case = &want["tiny_mlp"]["cases"][0];
    check_ml_deploy(&server, "tiny_mlp", "/api/ml", case);
    let before = server.worker_pids();
    assert_eq!(before.len(), 2);
    server.signal(common::libc_sig::SIGHUP);
    // The old workers, which built ONNX Runtime's environment after their fork, exit; new ones
    // take over.
    let replaced = common::wait_until(Duration::from_secs(60), || {
        let now = server.worker_pids();
        now.len() == 2
            && now.iter().all(|p| !before.contains(p))
            && before.iter().all(|p| !common::is_alive(*p))
    });
    assert!(replaced, "workers before {before:?}, now {:?}\n{}", server.worker_pids(), server.output());
    check_ml_deploy(&server, "tiny_mlp", "/api/ml", case);
    check_v2(&server, "tiny_mlp", case);
}
