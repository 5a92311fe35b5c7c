//! The embedded demo model: it loads without a path and predicts its own sample.

mod common;

use std::path::Path;

use common::{output, records_from_rows, table_from_records};
use mldeploy_model::{LoadContext, ModelLoader, PredictInput};
use mldeploy_package::PackageLoader;
use serde_json::json;

#[test]
fn the_embedded_demo_predicts_its_sample() {
    let model = PackageLoader.load(None, &LoadContext::private()).expect("the demo loads");
    let info = model.info();
    assert_eq!(
        (info.name.as_str(), info.version.as_str(), info.kind.as_str()),
        ("iris-demo", "1.0.0", "logistic_regression")
    );
    assert_eq!(info.features.len(), 4);
    assert_eq!(info.outputs["classes"], json!(["setosa", "versicolor", "virginica"]));
    assert!(model.supports_feedback());

    let records = records_from_rows(&info.sample);
    assert_eq!(records.len(), 1);
    let table = table_from_records(&info.features, &records);
    let response = model
        .predict(&PredictInput { body: info.sample.clone(), table: Some(table), form: None })
        .expect("predicts");
    // The sample is the first iris row, a setosa.
    assert_eq!(output(&response, "predict").unwrap(), json!(["setosa"]));
    let probs: Vec<f64> = output(&response, "predict_proba").unwrap()[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_f64().unwrap())
        .collect();
    assert_eq!(probs.len(), 3);
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    assert!(probs[0] > 0.9, "{probs:?}");
    // The server echoes the validated rows.
    assert_eq!(response.input, None);

    assert_eq!(PackageLoader.describe(None), "iris-demo 1.0.0 (logistic_regression) from embedded demo");
}

#[test]
fn the_demo_directory_is_the_embedded_package() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/iris-demo");
    let from_dir = PackageLoader.load(Some(&dir), &LoadContext::private()).expect("the demo directory loads");
    let embedded = PackageLoader.load(None, &LoadContext::private()).expect("the demo loads");
    assert_eq!(from_dir.info(), embedded.info());
}
