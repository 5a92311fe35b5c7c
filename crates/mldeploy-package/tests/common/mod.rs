//! Code shared by the integration tests: temporary directories, hand-made packages and a
//! small records-to-table conversion.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use mldeploy_model::{Column, Dtype, Feature, Table};
use safetensors::tensor::TensorView;
use safetensors::Dtype as StDtype;
use serde_json::Value;

/// A directory removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mldeploy-package-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tensor to write: name, shape, values (stored as F64).
pub struct T {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

pub fn t(name: &str, shape: &[usize], values: Vec<f64>) -> T {
    assert_eq!(shape.iter().product::<usize>(), values.len(), "tensor {name}");
    T { name: name.into(), shape: shape.to_vec(), values }
}

/// The bytes of a safetensors file holding `tensors` as F64.
pub fn safetensors_bytes(tensors: &[T]) -> Vec<u8> {
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), t.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            (name.clone(), TensorView::new(StDtype::F64, shape.clone(), bytes).expect("tensor view"))
        })
        .collect();
    safetensors::tensor::serialize(views, None).expect("serialize")
}

/// Write a package directory.
pub fn write_package(dir: &Path, manifest: &Value, tensors: &[T]) {
    std::fs::create_dir_all(dir).expect("create package dir");
    std::fs::write(dir.join("mldeploy.json"), serde_json::to_vec_pretty(manifest).expect("json"))
        .expect("write manifest");
    std::fs::write(dir.join("model.safetensors"), safetensors_bytes(tensors)).expect("write weights");
}

/// Deterministic pseudo-random values in [-1, 1).
pub fn values(seed: u64, n: usize) -> Vec<f64> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// A Table from JSON records, in the features' order (numbers as f64, categories as text:
/// strings as they are, other values as their JSON text).
pub fn table_from_records(features: &[Feature], records: &[Value]) -> Table {
    let columns = features
        .iter()
        .map(|f| {
            let cells =
                records.iter().map(|r| r.get(&f.name).unwrap_or_else(|| panic!("record lacks {}", f.name)));
            match f.dtype {
                Dtype::Category => Column::Category(
                    cells
                        .map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .collect(),
                ),
                Dtype::Bool => Column::Numeric(
                    cells.map(|v| v.as_bool().map(f64::from).or_else(|| v.as_f64()).expect("bool")).collect(),
                ),
                Dtype::Float | Dtype::Int => {
                    Column::Numeric(cells.map(|v| v.as_f64().expect("number")).collect())
                }
            }
        })
        .collect();
    Table { n_rows: records.len(), columns, source_rows: (0..records.len()).collect() }
}

/// Records from `{"data": [[...]], "names": [...]}`.
pub fn records_from_rows(body: &Value) -> Vec<Value> {
    let names: Vec<&str> =
        body["names"].as_array().expect("names").iter().map(|n| n.as_str().expect("name")).collect();
    body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|row| {
            let map: serde_json::Map<String, Value> = names
                .iter()
                .zip(row.as_array().expect("row"))
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect();
            Value::Object(map)
        })
        .collect()
}

/// Whether a command runs and exits 0.
pub fn runs(program: &str, args: &[&str]) -> bool {
    std::process::Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether python3 with the packages the scripts need is present. When it is not, tests skip
/// (with a message) unless MLDEPLOY_REQUIRE_PYTHON=1, which makes them fail.
pub fn python_available(test: &str) -> bool {
    if runs("python3", &["-c", "import sklearn, numpy, joblib, safetensors, pandas"]) {
        return true;
    }
    let required = std::env::var("MLDEPLOY_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: python3 with scikit-learn, numpy, joblib, safetensors and pandas is required \
         (MLDEPLOY_REQUIRE_PYTHON=1) but not available"
    );
    eprintln!(
        "SKIPPED {test}: python3 with scikit-learn, numpy, joblib, safetensors and pandas is not available"
    );
    false
}

/// The repository's scripts directory.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts")
}

/// Map from name to value for a response's list_metrics.
pub fn metrics(list: &[mldeploy_model::MetricValue]) -> HashMap<String, f64> {
    list.iter()
        .map(|m| {
            assert_eq!(m.kind, "GAUGE");
            (m.name.clone(), m.value)
        })
        .collect()
}

/// The typed output `name` of a response, as nested JSON (labels, values, probabilities).
pub fn output(response: &mldeploy_model::Response, name: &str) -> Option<Value> {
    match &response.target {
        mldeploy_model::Target::Outputs { outputs, .. } => outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| serde_json::to_value(o.tensor.nested()).expect("outputs serialize")),
        mldeploy_model::Target::Json(_) => None,
    }
}

/// The free-form JSON target of a response (feedback answers).
pub fn json_target(response: &mldeploy_model::Response) -> &Value {
    match &response.target {
        mldeploy_model::Target::Json(v) => v,
        other => panic!("expected a JSON target, got {other:?}"),
    }
}
