//! The tree engine against the libraries, model by model: scripts/make_tree_fixtures.py trains
//! models of every kind and option the engine reproduces (XGBoost and LightGBM objectives,
//! categorical splits, missing values, early stopping, random forests and DART, ...) and stores
//! the library's own predict / predict_proba for rows that include NaN, unknown categories and
//! numbers at and next to every sampled split threshold; each model is loaded here and its
//! answers compared. Broken, truncated and unsupported files give an error, never a panic.
//!
//! Needs python3 with scikit-learn, xgboost and lightgbm (scripts/setup-test-deps.sh installs
//! them). Without them the tests that need fixtures are skipped, unless
//! MLDEPLOY_REQUIRE_PYTHON=1 (CI).

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use mldeploy_package::trees::{Error, Task, TreeEnsemble};
use serde_json::Value;

/// The fixtures, built once per test run; `None` when Python or its packages are missing and
/// not required.
fn fixture_dir() -> Option<&'static Path> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let required = std::env::var("MLDEPLOY_REQUIRE_PYTHON").as_deref() == Ok("1");
        let ready =
            Command::new("python3").args(["-c", "import sklearn, xgboost, lightgbm, pandas"]).status();
        if !ready.is_ok_and(|s| s.success()) {
            assert!(
                !required,
                "python3 with scikit-learn, xgboost and lightgbm is needed: run scripts/setup-test-deps.sh"
            );
            eprintln!("SKIPPED: python3 with scikit-learn, xgboost and lightgbm is missing");
            return None;
        }
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tree-fixtures");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/make_tree_fixtures.py");
        let out = Command::new("python3").arg(script).arg(&dir).env("OMP_NUM_THREADS", "1").output().unwrap();
        assert!(out.status.success(), "tree fixtures: {}", String::from_utf8_lossy(&out.stderr));
        Some(dir)
    })
    .as_deref()
}

fn fixtures() -> Vec<PathBuf> {
    let Some(dir) = fixture_dir() else { return Vec::new() };
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|_| panic!("{} missing", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").exists())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no fixtures in {}", dir.display());
    v
}

fn load(dir: &Path, kind: &str, file: &str) -> TreeEnsemble {
    let bytes = fs::read(dir.join(file)).unwrap();
    let r = match kind {
        "sklearn_trees" => TreeEnsemble::from_sklearn_json(&bytes),
        "xgboost" => TreeEnsemble::from_xgboost_json(&bytes),
        "lightgbm" => TreeEnsemble::from_lightgbm_text(std::str::from_utf8(&bytes).unwrap()),
        other => panic!("unknown kind {other}"),
    };
    r.unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect()
}

/// Returns a failure description, or None.
fn check(dir: &Path) -> Option<String> {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let exp: Value = serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let kind = exp["kind"].as_str().unwrap();
    let model = load(dir, kind, exp["file"].as_str().unwrap());
    let tol = exp["tolerance"].as_f64().unwrap();
    let rows: Vec<Vec<f64>> = exp["x"].as_array().unwrap().iter().map(floats).collect();
    let n = rows.len();
    assert_eq!(model.n_features(), exp["n_features"].as_u64().unwrap() as usize, "{name}: n_features");
    let cats: Vec<usize> =
        exp["categorical"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    for c in &cats {
        assert!(model.categorical_features().contains(c), "{name}: feature {c} should be categorical");
    }
    let x: Vec<f64> = rows.concat();
    let p = model.predict(&x, n);
    let mut worst = 0.0f64;
    let mut bad_labels = Vec::new();
    match model.task() {
        Task::Regression => {
            let want = floats(&exp["values"]);
            let got = p.values.unwrap();
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let d = (g - w).abs() / w.abs().max(1.0);
                if d > worst {
                    worst = d;
                }
                if d.is_nan() || d > tol {
                    return Some(format!("{name}: row {i}: engine {g:e}, library {w:e} (rel diff {d:e})"));
                }
            }
        }
        Task::Classification { n_classes } => {
            let want_l: Vec<usize> =
                exp["labels"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let want_p: Vec<f64> = exp["probabilities"].as_array().unwrap().iter().flat_map(floats).collect();
            let got_l = p.labels.unwrap();
            let got_p = p.probabilities.unwrap();
            assert_eq!(got_p.len(), n * n_classes);
            assert_eq!(want_p.len(), n * n_classes, "{name}: class count");
            for i in 0..n {
                if got_l[i] != want_l[i] {
                    bad_labels.push(i);
                }
            }
            for (i, (g, w)) in got_p.iter().zip(&want_p).enumerate() {
                let d = (g - w).abs();
                worst = worst.max(d);
                if d.is_nan() || d > tol {
                    return Some(format!(
                        "{name}: row {} class {}: engine {g:e}, library {w:e}",
                        i / n_classes,
                        i % n_classes
                    ));
                }
            }
            if !bad_labels.is_empty() {
                return Some(format!(
                    "{name}: {} labels differ, first at rows {:?}",
                    bad_labels.len(),
                    &bad_labels[..bad_labels.len().min(5)]
                ));
            }
        }
    }
    println!("{name:36} {kind:14} rows {n:5}  max diff {worst:.3e} (tolerance {tol:e})");
    None
}

#[test]
fn every_fixture_matches_its_library() {
    let failures: Vec<String> = fixtures().iter().filter_map(|d| check(d)).collect();
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The lockstep (batch) path and the single-row path must give identical bits.
#[test]
fn one_row_at_a_time_equals_the_batch() {
    for dir in fixtures() {
        let exp: Value = serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let model = load(&dir, exp["kind"].as_str().unwrap(), exp["file"].as_str().unwrap());
        let rows: Vec<Vec<f64>> = exp["x"].as_array().unwrap().iter().take(300).map(floats).collect();
        let batch = model.predict(&rows.concat(), rows.len());
        let w = model.output_width();
        for (i, row) in rows.iter().enumerate() {
            let one = model.predict(row, 1);
            if let Some(v) = &one.values {
                assert_eq!(
                    v[0].to_bits(),
                    batch.values.as_ref().unwrap()[i].to_bits(),
                    "{}: row {i}",
                    dir.display()
                );
            }
            if let Some(p) = &one.probabilities {
                let b = &batch.probabilities.as_ref().unwrap()[i * w..(i + 1) * w];
                assert!(
                    p.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                    "{}: row {i}",
                    dir.display()
                );
                assert_eq!(one.labels.as_ref().unwrap()[0], batch.labels.as_ref().unwrap()[i]);
            }
        }
    }
}

/// scikit-learn HistGradientBoosting treats a category code it never saw (and negative codes)
/// like a missing value; the server only ever sends NaN for those, but direct callers may not.
#[test]
fn hgb_unknown_codes_act_as_missing() {
    let Some(fixtures) = fixture_dir() else { return };
    for name in ["sk_hgb_clf_binary_frame_cat", "sk_hgb_reg_frame_cat", "sk_hgb_clf_multi_frame_cat"] {
        let dir = fixtures.join(name);
        let exp: Value = serde_json::from_slice(&fs::read(dir.join("expected.json")).unwrap()).unwrap();
        let model = load(&dir, "sklearn_trees", "model.json");
        let rows: Vec<Vec<f64>> = exp["x"].as_array().unwrap().iter().take(100).map(floats).collect();
        for &c in model.categorical_features() {
            for odd in [-1.0, 25.0, 255.0, 256.0, 1e9, -1e-300] {
                for row in &rows {
                    let (mut a, mut b) = (row.clone(), row.clone());
                    a[c] = f64::NAN;
                    b[c] = odd;
                    assert_eq!(model.predict(&a, 1), model.predict(&b, 1), "{name}: feature {c} code {odd}");
                }
            }
        }
    }
}

fn fixture(name: &str, file: &str) -> Option<Vec<u8>> {
    let p = fixture_dir()?.join(name).join(file);
    Some(fs::read(&p).unwrap_or_else(|_| panic!("{} missing", p.display())))
}

fn sk(text: &str) -> Result<TreeEnsemble, Error> {
    TreeEnsemble::from_sklearn_json(text.as_bytes())
}

const GOOD_SK: &str = r#"{"format":"mldeploy-trees/1","n_features":2,"task":{"type":"regression"},"input":"float32",
 "n_outputs":1,"init":[0.5],"link":"identity","allow_missing":true,
 "trees":[{"left":[1,-1,-1],"right":[2,-1,-1],"feature":[1,-2,-2],"threshold":[0.5,-2,-2],
           "missing_left":[1,0,0],"leaf_value":[1.0,2.0]}]}"#;

#[test]
fn a_minimal_sklearn_file_loads_and_predicts() {
    let m = sk(GOOD_SK).unwrap();
    let p = m.predict(&[0.0, 0.5, 0.0, 0.6, 0.0, f64::NAN], 3);
    assert_eq!(p.values.unwrap(), vec![1.5, 2.5, 1.5]);
}

fn expect_err(text: &str, what: &str) -> Error {
    match sk(text) {
        Ok(_) => panic!("{what}: loaded, expected an error"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[test]
fn broken_sklearn_files_are_errors() {
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "empty"),
        ("{".into(), "truncated"),
        (GOOD_SK[..GOOD_SK.len() / 2].into(), "cut in half"),
        ("[1,2,3]".into(), "not an object"),
        (GOOD_SK.replace("mldeploy-trees/1", "mldeploy-trees/9"), "unknown format"),
        (GOOD_SK.replace(r#""n_features":2,"#, ""), "missing n_features"),
        (GOOD_SK.replace(r#""n_features":2"#, r#""n_features":0"#), "zero features"),
        (GOOD_SK.replace(r#""feature":[1,"#, r#""feature":[7,"#), "feature out of range"),
        (GOOD_SK.replace(r#""feature":[1,"#, r#""feature":[-3,"#), "negative feature"),
        (GOOD_SK.replace(r#""left":[1,"#, r#""left":[9,"#), "child out of range"),
        (GOOD_SK.replace(r#""left":[1,"#, r#""left":[0,"#), "cycle"),
        (GOOD_SK.replace(r#""right":[2,"#, r#""right":[1,"#), "shared child"),
        (GOOD_SK.replace(r#""threshold":[0.5,"#, r#""threshold":["nan","#), "NaN threshold"),
        (GOOD_SK.replace(r#""threshold":[0.5,"#, r#""threshold":["banana","#), "bad threshold text"),
        (GOOD_SK.replace(r#""threshold":[0.5,-2,-2]"#, r#""threshold":[0.5,-2]"#), "short array"),
        (GOOD_SK.replace(r#""leaf_value":[1.0,2.0]"#, r#""leaf_value":[1.0]"#), "missing leaf value"),
        (GOOD_SK.replace(r#""leaf_value":[1.0,2.0]"#, r#""leaf_value":[1.0,2.0,3.0]"#), "extra leaf value"),
        (GOOD_SK.replace(r#""leaf_value":[1.0,2.0]"#, r#""leaf_value":[1.0,"inf"]"#), "infinite leaf"),
        (GOOD_SK.replace(r#""missing_left":[1,"#, r#""missing_left":[5,"#), "bad flag"),
        (GOOD_SK.replace(r#""link":"identity""#, r#""link":"tanh""#), "unknown link"),
        (GOOD_SK.replace(r#""link":"identity""#, r#""link":"softmax""#), "link does not fit task"),
        (GOOD_SK.replace(r#""input":"float32""#, r#""input":"float16""#), "unknown input"),
        (GOOD_SK.replace(r#""init":[0.5]"#, r#""init":[0.5,1]"#), "init length"),
        (GOOD_SK.replace(r#""init":[0.5]"#, r#""init":["inf"]"#), "infinite init"),
        (GOOD_SK.replace(r#""trees":[{"#, r#""trees":[], "x":[{"#), "unknown field"),
        (GOOD_SK.replace(r#""left":[1,-1,-1]"#, r#""left":[1,-1,3]"#), "one child only"),
        (GOOD_SK.replace(r#"{"left""#, r#"{"output":3,"left""#), "output column out of range"),
        (
            GOOD_SK.replace(r#""task":{"type":"regression"}"#, r#""task":{"type":"classification"}"#),
            "no n_classes",
        ),
        (
            GOOD_SK.replace(
                r#""missing_left":[1,0,0]"#,
                r#""missing_left":[1,0,0],"cat_bitset":[0,-1,-1],"bitsets":[[1,0,0,0,0,0,0,0]]"#,
            ),
            "categorical split without known categories",
        ),
        (
            GOOD_SK.replace(
                r#""missing_left":[1,0,0]"#,
                r#""missing_left":[1,0,0],"cat_bitset":[4,-1,-1],"bitsets":[]"#,
            ),
            "bitset index out of range",
        ),
    ];
    for (text, what) in cases {
        expect_err(&text, what);
    }
}

const GOOD_LGB: &str =
    "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n\
objective=regression\nfeature_names=a b\nfeature_infos=[0:1] [0:1]\ntree_sizes=1\n\n\
Tree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=1\nsplit_gain=1\nthreshold=0.5\ndecision_type=2\n\
left_child=-1\nright_child=-2\nleaf_value=1 2\nleaf_weight=1 1\nleaf_count=1 1\ninternal_value=0\n\
internal_weight=0\ninternal_count=2\nis_linear=0\nshrinkage=1\n\n\nend of trees\n";

#[test]
fn a_minimal_lightgbm_file_loads_and_predicts() {
    let m = TreeEnsemble::from_lightgbm_text(GOOD_LGB).unwrap();
    assert_eq!(m.feature_names().unwrap(), ["a", "b"]);
    let p = m.predict(&[0.0, 0.5, 0.0, 0.6, 0.0, f64::NAN], 3);
    assert_eq!(p.values.unwrap(), vec![1.0, 2.0, 1.0]);
}

#[test]
fn broken_lightgbm_files_are_errors() {
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "empty"),
        ("not a model".into(), "no header"),
        (GOOD_LGB.replace("end of trees\n", ""), "truncated"),
        (GOOD_LGB.replace("objective=regression", "objective=lambdarank"), "ranking objective"),
        (GOOD_LGB.replace("objective=regression\n", ""), "no objective"),
        (GOOD_LGB.replace("is_linear=0", "is_linear=1"), "linear tree"),
        (GOOD_LGB.replace("left_child=-1", "left_child=-7"), "leaf out of range"),
        (GOOD_LGB.replace("left_child=-1", "left_child=0"), "cycle"),
        (GOOD_LGB.replace("split_feature=1", "split_feature=9"), "feature out of range"),
        (GOOD_LGB.replace("threshold=0.5", "threshold=x"), "bad number"),
        (GOOD_LGB.replace("threshold=0.5", "threshold=nan"), "NaN threshold"),
        (GOOD_LGB.replace("leaf_value=1 2", "leaf_value=1"), "short leaf values"),
        (GOOD_LGB.replace("leaf_value=1 2", "leaf_value=1 inf"), "infinite leaf"),
        (GOOD_LGB.replace("decision_type=2", "decision_type=14"), "missing type 3"),
        (GOOD_LGB.replace("decision_type=2", "decision_type=3"), "categorical without bitsets"),
        (
            GOOD_LGB
                .replace("num_cat=0", "num_cat=1\ncat_boundaries=0 5\ncat_threshold=1")
                .replace("decision_type=2", "decision_type=1"),
            "cat_boundaries past the words",
        ),
        (GOOD_LGB.replace("num_tree_per_iteration=1", "num_tree_per_iteration=3"), "tree count"),
        (GOOD_LGB.replace("max_feature_idx=1", "max_feature_idx=x"), "bad feature count"),
        (GOOD_LGB.replace("num_leaves=2", "num_leaves=0"), "no leaves"),
        (GOOD_LGB.replace("Tree=0", "Tree=0\nbroken line"), "line without ="),
    ];
    for (text, what) in cases {
        match TreeEnsemble::from_lightgbm_text(&text) {
            Ok(_) => panic!("{what}: loaded, expected an error"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

#[test]
fn broken_xgboost_files_are_errors() {
    let Some(good) = fixture("xgb_clf_frame_cat", "model.json") else { return };
    let good = String::from_utf8(good).unwrap();
    assert!(TreeEnsemble::from_xgboost_json(good.as_bytes()).is_ok());
    let cases: Vec<(String, &str)> = vec![
        ("".into(), "empty"),
        (good[..good.len() / 3].into(), "truncated"),
        (good.replace("\"gbtree\"", "\"dart\""), "dart"),
        (good.replace("binary:logistic", "rank:pairwise"), "ranking objective"),
        (good.replacen("\"split_conditions\":[", "\"split_conditions\":[abc,", 1), "bad float"),
        (good.replacen("\"split_conditions\":[", "\"split_conditions\":[1.0,", 1), "length mismatch"),
        (
            good.replacen("\"split_indices\":[", "\"split_indices\":[99999,", 1),
            "feature out of range (and length)",
        ),
        (good.replacen("\"tree_info\":[0", "\"tree_info\":[7", 1), "group out of range"),
        (
            good.replacen("\"categories_nodes\":[", "\"categories_nodes\":[99999,", 1),
            "categories length mismatch",
        ),
        (good.replacen("\"base_score\":\"", "\"base_score\":\"x", 1), "bad base_score"),
        (
            good.replacen(
                "\"num_class\":\"0\",\"num_feature\":\"",
                "\"num_class\":\"0\",\"num_feature\":\"-",
                1,
            ),
            "bad num_feature",
        ),
        (
            good.replacen(
                "\"num_class\":\"0\",\"num_feature\":\"5\"",
                "\"num_class\":\"0\",\"num_feature\":\"2\"",
                1,
            ),
            "too few features",
        ),
        (good.replacen("\"num_target\":\"1\"", "\"num_target\":\"2\"", 1), "multi-target"),
        (good.replacen("\"size_leaf_vector\":\"1\"", "\"size_leaf_vector\":\"3\"", 1), "vector leaves"),
    ];
    for (text, what) in cases {
        match TreeEnsemble::from_xgboost_json(text.as_bytes()) {
            Ok(_) => panic!("{what}: loaded, expected an error"),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// Deterministic corruption of real files: truncations and byte changes. Loading may succeed
/// or fail, but must not panic, and a model that loads must predict without panicking.
#[test]
fn corrupted_real_files_never_panic() {
    let files = [
        ("sk_hgb_clf_multi_frame_cat", "model.json", 0),
        ("sk_gb_clf_multi_iris", "model.json", 0),
        ("xgb_clf_multi_frame_cat", "model.json", 1),
        ("lgb_clf_multi_frame_cat", "model.txt", 2),
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let replacements: &[&[u8]] = &[b"-", b"9", b"0", b"]", b"[", b",", b"\"", b"e", b"1e308", b"-1", b" "];
    for (name, file, loader) in files {
        let Some(good) = fixture(name, file) else { return };
        let mut variants: Vec<Vec<u8>> = Vec::new();
        for k in 1..40 {
            variants.push(good[..good.len() * k / 40].to_vec());
        }
        for _ in 0..300 {
            let mut v = good.clone();
            let at = (rnd() as usize) % v.len();
            let r = replacements[(rnd() as usize) % replacements.len()];
            v.splice(at..(at + 1).min(v.len()), r.iter().copied());
            variants.push(v);
        }
        for v in variants {
            let result = catch_unwind(AssertUnwindSafe(|| {
                let m = match loader {
                    0 => TreeEnsemble::from_sklearn_json(&v),
                    1 => TreeEnsemble::from_xgboost_json(&v),
                    _ => TreeEnsemble::from_lightgbm_text(&String::from_utf8_lossy(&v)),
                };
                if let Ok(m) = m {
                    let nf = m.n_features();
                    let x: Vec<f64> = (0..nf * 4).map(|i| [0.0, f64::NAN, 1e300, -3.5][i % 4]).collect();
                    let _ = m.predict(&x, 4);
                }
            }));
            assert!(result.is_ok(), "{name}: a corrupted file made the engine panic");
        }
    }
}
