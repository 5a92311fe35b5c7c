//! Packages exported from scikit-learn predict what scikit-learn predicts: the same label on
//! every row and probabilities/values within 1e-6. Needs python3 with scikit-learn; skipped
//! with a message without it, unless MLDEPLOY_REQUIRE_PYTHON=1.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use common::{output, python_available, scripts_dir, table_from_records, TempDir};
use mldeploy_model::{LoadContext, ModelLoader, PredictInput};
use mldeploy_package::PackageLoader;
use serde_json::Value;

const TOLERANCE: f64 = 1e-6;

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn exported_reference_models_match_sklearn() {
    if !python_available("exported_reference_models_match_sklearn") {
        return;
    }
    let out = TempDir::new("reference");
    let result = Command::new("python3")
        .arg(scripts_dir().join("make_reference_models.py"))
        .arg(out.path())
        .output()
        .expect("run make_reference_models.py");
    assert!(
        result.status.success(),
        "make_reference_models.py failed: {}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );

    let mut dirs: Vec<_> =
        std::fs::read_dir(out.path()).expect("read out dir").map(|e| e.expect("entry").path()).collect();
    dirs.sort();
    assert!(dirs.len() >= 8, "expected the reference packages, found {dirs:?}");
    let mut kinds = BTreeSet::new();
    for dir in dirs {
        let expected = read_json(&dir.join("expected.json"));
        let name = expected["name"].as_str().expect("name").to_string();
        let model = PackageLoader
            .load(Some(&dir), &LoadContext::private())
            .unwrap_or_else(|e| panic!("{name}: load failed: {e}"));
        let info = model.info();
        assert_eq!(info.name, name);
        kinds.insert(info.kind.clone());

        let records = expected["records"].as_array().expect("records");
        let table = table_from_records(&info.features, records);
        let input = PredictInput { body: Value::Null, table: Some(table), form: None };
        let response = model.predict(&input).unwrap_or_else(|e| panic!("{name}: predict failed: {e}"));
        let got = output(&response, "predict").expect("predict");
        let got = got.as_array().expect("y_predicted");
        let want = expected["y_predicted"].as_array().expect("expected y_predicted");
        assert_eq!(got.len(), want.len(), "{name}: row count");
        let mut worst: f64 = 0.0;
        if let Some(want_probs) = expected.get("probabilities") {
            assert_eq!(info.outputs["classes"], expected["classes"], "{name}: classes");
            for (row, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(g, w, "{name}: label of row {row}");
            }
            let got_probs = output(&response, "predict_proba").expect("predict_proba");
            let got_probs = got_probs.as_array().expect("probabilities");
            for (row, (g, w)) in got_probs.iter().zip(want_probs.as_array().expect("rows")).enumerate() {
                let (g, w) = (g.as_array().expect("row"), w.as_array().expect("row"));
                assert_eq!(g.len(), w.len(), "{name}: probabilities of row {row}");
                for (a, b) in g.iter().zip(w) {
                    let d = (a.as_f64().expect("number") - b.as_f64().expect("number")).abs();
                    worst = worst.max(d);
                    assert!(d <= TOLERANCE, "{name}: row {row}: probability {a} vs sklearn's {b}");
                }
            }
        } else {
            for (row, (g, w)) in got.iter().zip(want).enumerate() {
                let d = (g.as_f64().expect("number") - w.as_f64().expect("number")).abs();
                worst = worst.max(d);
                assert!(d <= TOLERANCE, "{name}: row {row}: value {g} vs sklearn's {w}");
            }
        }
        eprintln!("{name} ({}): {} rows, largest difference from sklearn {worst:e}", info.kind, got.len());

        // The sample request of the package predicts.
        let sample_records = common::records_from_rows(&info.sample);
        let sample = table_from_records(&info.features, &sample_records);
        model
            .predict(&PredictInput { body: Value::Null, table: Some(sample), form: None })
            .unwrap_or_else(|e| panic!("{name}: sample failed: {e}"));
    }
    let all: BTreeSet<String> =
        ["linear_regression", "logistic_regression", "mlp_classifier", "mlp_regressor"]
            .map(String::from)
            .into();
    assert_eq!(kinds, all, "every built-in kind is covered");
}

/// Pipelines the exporter must refuse, each run through `export_sklearn.main`; prints one JSON
/// line per case: the case, the exit status, what was printed on stderr and the message wanted.
const REFUSALS: &str = r#"
import contextlib, io, json, os, sys, warnings
import joblib, numpy as np, pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.neighbors import KNeighborsClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler
warnings.simplefilter("ignore")
scripts, out = sys.argv[1], sys.argv[2]
sys.path.insert(0, scripts)
import export_sklearn
rng = np.random.RandomState(0)
X = pd.DataFrame({"a": rng.rand(40), "b": rng.rand(40), "c": rng.choice(["x", "y", "z"], 40)})
y = (X["a"] > 0.5).astype(int)
num = X[["a", "b"]]
cases = {
    "neighbours": (KNeighborsClassifier().fit(num, y), "estimator KNeighborsClassifier is not supported"),
    "boosting-init": (GradientBoostingClassifier(init=LogisticRegression(), n_estimators=2).fit(num, y), "GradientBoosting with init estimator LogisticRegression is not supported"),
    "drop": (Pipeline([("oh", OneHotEncoder(drop="first")), ("m", LogisticRegression())]).fit(X[["c"]], y), "OneHotEncoder with drop='first'"),
    "infrequent": (Pipeline([("oh", OneHotEncoder(min_frequency=5, handle_unknown="infrequent_if_exist")), ("m", LogisticRegression())]).fit(X[["c"]], y), "infrequent categories"),
    "minmax": (Pipeline([("s", MinMaxScaler()), ("m", LogisticRegression())]).fit(num, y), "preprocessing step MinMaxScaler is not supported"),
    "two-steps": (Pipeline([("s", StandardScaler()), ("t", StandardScaler()), ("m", LogisticRegression())]).fit(num, y), "only one preprocessing step"),
    "multi-output": (MLPRegressor(hidden_layer_sizes=(3,), max_iter=5, random_state=0).fit(num, np.c_[y, y]), "MLPRegressor with 2 outputs"),
    "no-names": (LinearRegression().fit(num.to_numpy(), y), "no feature_names_in_"),
    "ct-minmax": (Pipeline([("ct", ColumnTransformer([("s", MinMaxScaler(), ["a"])])), ("m", LogisticRegression())]).fit(X, y), "part 's' is a MinMaxScaler"),
}
for name, (model, message) in cases.items():
    path = os.path.join(out, name + ".joblib")
    joblib.dump(model, path)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        status = export_sklearn.main([path, os.path.join(out, name), "--name", "x", "--version", "1"])
    written = os.path.exists(os.path.join(out, name, "mldeploy.json"))
    print(json.dumps({"case": name, "status": status, "stderr": err.getvalue(), "want": message, "written": written}))
"#;

#[test]
fn exporter_refuses_what_it_cannot_export_faithfully() {
    if !python_available("exporter_refuses_what_it_cannot_export_faithfully") {
        return;
    }
    let dir = TempDir::new("refusals");
    let result = Command::new("python3")
        .args(["-c", REFUSALS])
        .arg(scripts_dir())
        .arg(dir.path())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(result.status.success(), "the refusal cases failed: {}", String::from_utf8_lossy(&result.stderr));
    let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), 9, "{stdout}");
    for line in &lines {
        let (case, stderr, want) =
            (&line["case"], line["stderr"].as_str().unwrap(), line["want"].as_str().unwrap());
        assert_eq!(line["status"], 2, "{case}: status; stderr: {stderr}");
        assert!(
            stderr.contains("cannot export: ") && stderr.contains(want),
            "{case}: stderr {stderr:?} lacks {want:?}"
        );
        assert_eq!(line["written"], false, "{case}: nothing is written");
    }

    // The command line itself exits with status 2.
    let result = Command::new("python3")
        .args(["-W", "ignore"])
        .arg(scripts_dir().join("export_sklearn.py"))
        .arg(dir.path().join("neighbours.joblib"))
        .arg(dir.path().join("neighbours-package"))
        .args(["--name", "x", "--version", "1"])
        .output()
        .expect("run export_sklearn.py");
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "stderr: {stderr}");
    assert!(
        stderr.contains("export_sklearn.py: cannot export: estimator KNeighborsClassifier is not supported"),
        "{stderr}"
    );
}
