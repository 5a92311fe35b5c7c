//! Tree ensembles of scikit-learn, XGBoost and LightGBM, trained in the test run
//! (scripts/make_tree_models.py) and served by the real binary from one model repository: every
//! kind answers as the library that trained it, on rows with missing values, categories (known,
//! unknown and missing) and numbers on and next to the split thresholds, over ml-deploy's route
//! and the V2 protocol; missing values are refused where the model does not take them.
//!
//! Needs python3 with scikit-learn, xgboost and lightgbm (scripts/setup-test-deps.sh installs
//! them). Without them the tests are skipped, unless MLDEPLOY_REQUIRE_PYTHON=1 (CI).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::Server;
use serde_json::{json, Value};

/// The packages and the libraries' answers, built once; `None` when Python or its packages
/// are missing and not required.
fn models() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        if !common::python_has("sklearn, xgboost, lightgbm") {
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tree-models");
        let _ = std::fs::remove_dir_all(&dir);
        common::run_script("make_tree_models.py", &[dir.as_os_str(), "--require-all".as_ref()]);
        Some(dir)
    })
    .as_deref()
}

fn expected(dir: &Path, name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("expected.json")).unwrap()).unwrap()
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `|got - want| <= tolerance`, relative to the value's size beyond 1.
fn close(got: &Value, want: &Value, tolerance: f64) -> bool {
    let (g, w) = (got.as_f64().unwrap(), want.as_f64().unwrap());
    (g - w).abs() <= tolerance * w.abs().max(1.0)
}

fn serve(dir: &Path) -> Server {
    Server::start(&["serve", "--model-repository", dir.to_str().unwrap(), "--workers", "2", "--threads", "2"])
}

#[test]
fn every_kind_answers_as_the_library_that_trained_it() {
    let Some(dir) = models() else { return };
    let server = serve(dir);
    let names = names(dir);
    assert!(names.len() >= 20, "{names:?}");
    for name in &names {
        let want = expected(dir, name);
        let tolerance = want["tolerance"].as_f64().unwrap();
        let records = want["records"].as_array().unwrap();
        let mut worst: f64 = 0.0;
        for (chunk_index, chunk) in records.chunks(250).enumerate() {
            let r = server
                .post_json(&format!("/{name}/api/ml/predict"), &Value::Array(chunk.to_vec()).to_string());
            assert_eq!(r.status, 200, "{name}: {}", r.text());
            let body = r.json();
            let target = &body["target"];
            for (i, got) in target["y_predicted"].as_array().unwrap().iter().enumerate() {
                let row = chunk_index * 250 + i;
                let lib = &want["y_predicted"][row];
                match want.get("probabilities") {
                    Some(probabilities) => {
                        assert_eq!(got, lib, "{name}: label of row {row}");
                        let got_p = target["probabilities"][i].as_array().unwrap();
                        for (a, b) in got_p.iter().zip(probabilities[row].as_array().unwrap()) {
                            worst = worst.max((a.as_f64().unwrap() - b.as_f64().unwrap()).abs());
                            assert!(
                                close(a, b, tolerance),
                                "{name}: row {row}: probability {a} vs the library's {b}"
                            );
                        }
                    }
                    None => {
                        worst = worst.max((got.as_f64().unwrap() - lib.as_f64().unwrap()).abs());
                        assert!(
                            close(got, lib, tolerance),
                            "{name}: row {row}: value {got} vs the library's {lib}"
                        );
                    }
                }
            }
        }
        eprintln!("{name} ({}): {} rows, largest difference {worst:e}", want["kind"], records.len());
    }
}

#[test]
fn v2_tensors_with_missing_values_reach_the_trees() {
    let Some(dir) = models() else { return };
    let server = serve(dir);
    let name = "forest-classifier";
    let want = expected(dir, name);
    let records = &want["records"].as_array().unwrap()[..50];
    let features = ["x0", "x1", "x2", "x3", "x4", "x5", "x6", "x7"];
    // JSON has no NaN: tensor clients send it as the string "NaN".
    let data: Vec<Value> = records
        .iter()
        .flat_map(|r| features.iter().map(|f| if r[f].is_null() { json!("NaN") } else { r[f].clone() }))
        .collect();
    let body =
        json!({"inputs": [{"name": "input", "datatype": "FP64", "shape": [records.len(), 8], "data": data}]});
    let r = server.post_json(&format!("/v2/models/{name}/infer"), &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let outputs = answer["outputs"].as_array().unwrap();
    let predict = outputs.iter().find(|o| o["name"] == "predict").unwrap();
    let proba = outputs.iter().find(|o| o["name"] == "predict_proba").unwrap();
    assert_eq!(predict["data"].as_array().unwrap()[..], want["y_predicted"].as_array().unwrap()[..50]);
    let classes = want["classes"].as_array().unwrap().len();
    assert_eq!(proba["shape"], json!([50, classes]));
    for (row, lib) in want["probabilities"].as_array().unwrap()[..50].iter().enumerate() {
        for (k, b) in lib.as_array().unwrap().iter().enumerate() {
            let a = &proba["data"][row * classes + k];
            assert!(close(a, b, 1e-9), "row {row}: {a} vs {b}");
        }
    }
}

#[test]
fn missing_values_and_unknown_categories_follow_each_model() {
    let Some(dir) = models() else { return };
    let server = serve(dir);
    let first = |name: &str| expected(dir, name)["records"][0].clone();

    // GradientBoosting refuses missing values (as scikit-learn does): null is a 422 naming the
    // feature and the row.
    let mut row = first("boosting-binary");
    row["x3"] = Value::Null;
    let r = server
        .post_json("/boosting-binary/api/ml/predict", &json!([first("boosting-binary"), row]).to_string());
    assert_eq!(r.status, 422, "{}", r.text());
    let errors = &r.json()["errors"];
    assert_eq!((errors[0]["row"].clone(), errors[0]["feature"].clone()), (json!(1), json!("x3")), "{errors}");

    // HistGradientBoosting sends a category it never saw the missing way; XGBoost has no such
    // rule, so the feature lists its categories and others are refused.
    for (name, status) in [("hist-classifier-categories", 200), ("xgboost-classifier-categories", 422)] {
        let mut row = first(name);
        row["color"] = json!("never-seen");
        let r = server.post_json(&format!("/{name}/api/ml/predict"), &json!([row]).to_string());
        assert_eq!(r.status, status, "{name}: {}", r.text());
        if status == 422 {
            assert_eq!(r.json()["errors"][0]["feature"], "color", "{}", r.text());
        }
    }

    // Feedback figures work for a tree classifier as for every package.
    let name = "forest-classifier";
    let want = expected(dir, name);
    let rows: Vec<Value> = want["records"].as_array().unwrap()[..20].to_vec();
    let body = json!({"data": rows, "y_true": want["y_predicted"].as_array().unwrap()[..20]});
    let r = server.post_json(&format!("/{name}/api/ml/feedback"), &body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let metrics = r.json()["list_metrics"].clone();
    let accuracy = metrics.as_array().unwrap().iter().find(|m| m["name"] == "accuracy").unwrap();
    assert_eq!(accuracy["value"], 1.0, "{metrics}");
}

#[test]
fn a_broken_model_file_is_refused_at_start_with_its_name() {
    let Some(dir) = models() else { return };
    let broken = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("broken-trees-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&broken);
    std::fs::create_dir_all(&broken).unwrap();
    for (name, file) in [("xgboost-regressor", "model.json"), ("lightgbm-regressor", "model.txt")] {
        let pkg = broken.join(name);
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::copy(dir.join(name).join("mldeploy.json"), pkg.join("mldeploy.json")).unwrap();
        let text = std::fs::read(dir.join(name).join(file)).unwrap();
        std::fs::write(pkg.join(file), &text[..text.len() / 2]).unwrap();
        let out = Command::new(common::binary()).args(["check", pkg.to_str().unwrap()]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: a truncated model file was accepted");
        assert!(stderr.contains(file), "{name}: the message names the file: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&broken);
}
