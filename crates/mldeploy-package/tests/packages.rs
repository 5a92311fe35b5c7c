//! Loading hand-made packages: every kind computes what the formulas say, and broken packages
//! are refused with a message naming the problem.

mod common;

use std::path::Path;

use common::{output, t, table_from_records, values, write_package, TempDir, T};
use mldeploy_model::{LoadContext, ModelError, ModelLoader, PredictInput};
use mldeploy_package::{load_package, PackageLoader, Prediction};
use serde_json::{json, Value};

/// Features: Age, Fare (float), Sex (2 categories), Embarked (3 categories) -> 7 inputs.
fn titanic_manifest(kind: &str, layers: usize, activation: Option<&str>, output: Value) -> Value {
    let mut m = json!({
        "format": "mldeploy-package/1",
        "name": "handmade",
        "version": "0.1.0",
        "kind": kind,
        "features": [
            {"name": "Sex", "dtype": "category"},
            {"name": "Age", "dtype": "float", "values": {"min": 0.0, "max": 100.0}},
            {"name": "Embarked", "dtype": "category"},
            {"name": "Fare", "dtype": "float"}
        ],
        "preprocessing": [
            {"type": "standard_scaler", "columns": ["Age", "Fare"], "mean": [30.0, 20.0], "scale": [14.0, 16.0]},
            {"type": "one_hot", "columns": ["Sex", "Embarked"], "categories": [["female", "male"], ["C", "Q", "S"]]}
        ],
        "layers": layers,
        "output": output,
        "sample": {"data": [["male", 22.0, "S", 7.25]], "names": ["Sex", "Age", "Embarked", "Fare"]}
    });
    if let Some(a) = activation {
        m["activation"] = json!(a);
    }
    m
}

fn mlp_tensors(sizes: &[usize]) -> Vec<T> {
    let mut tensors = Vec::new();
    for (i, w) in sizes.windows(2).enumerate() {
        tensors.push(t(&format!("layers.{i}.weight"), &[w[0], w[1]], values(10 + i as u64, w[0] * w[1])));
        tensors.push(t(&format!("layers.{i}.bias"), &[w[1]], values(20 + i as u64, w[1])));
    }
    tensors
}

fn records() -> Vec<Value> {
    vec![
        json!({"Sex": "male", "Age": 22.0, "Embarked": "S", "Fare": 7.25}),
        json!({"Sex": "female", "Age": 38.0, "Embarked": "C", "Fare": 71.2833}),
        json!({"Sex": "female", "Age": 26.0, "Embarked": "Q", "Fare": 7.925}),
        // Unknown categories: their one-hot columns stay zero.
        json!({"Sex": "other", "Age": 35.0, "Embarked": "X", "Fare": 53.1}),
    ]
}

/// The input row the preprocessing must produce for a record (scaled Age, Fare, one-hot Sex,
/// one-hot Embarked).
fn expected_inputs(r: &Value) -> Vec<f64> {
    let mut v = vec![(r["Age"].as_f64().unwrap() - 30.0) / 14.0, (r["Fare"].as_f64().unwrap() - 20.0) / 16.0];
    for (field, cats) in [("Sex", &["female", "male"][..]), ("Embarked", &["C", "Q", "S"][..])] {
        for c in cats {
            v.push(if r[field] == json!(c) { 1.0 } else { 0.0 });
        }
    }
    v
}

/// A plain-Rust forward pass over the tensors written (the reference the candle path must meet).
fn reference_forward(tensors: &[T], hidden: &str, x: &[f64]) -> Vec<f64> {
    let n_layers = tensors.len() / 2;
    let mut a = x.to_vec();
    for i in 0..n_layers {
        let w = &tensors[2 * i];
        let b = &tensors[2 * i + 1];
        let (n_in, n_out) = (w.shape[0], w.shape[1]);
        let mut z: Vec<f64> = (0..n_out)
            .map(|o| b.values[o] + (0..n_in).map(|k| a[k] * w.values[k * n_out + o]).sum::<f64>())
            .collect();
        if i + 1 < n_layers {
            for v in &mut z {
                *v = match hidden {
                    "identity" => *v,
                    "logistic" => 1.0 / (1.0 + (-*v).exp()),
                    "tanh" => v.tanh(),
                    "relu" => v.max(0.0),
                    other => panic!("activation {other}"),
                };
            }
        }
        a = z;
    }
    a
}

fn load(dir: &Path) -> mldeploy_package::PackageModel {
    load_package(dir, &LoadContext::private()).unwrap_or_else(|e| panic!("load failed: {e}"))
}

fn predict(model: &mldeploy_package::PackageModel) -> Prediction {
    let table = table_from_records(&model.manifest().features, &records());
    model.predict_table(&table).expect("predict")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 * (1.0 + b.abs())
}

#[test]
fn mlp_classifiers_compute_the_forward_pass_for_every_activation() {
    for hidden in ["identity", "logistic", "tanh", "relu"] {
        for classes in [json!(["a", "b", "c"]), json!([0, 1])] {
            let k = classes.as_array().unwrap().len();
            let outputs = if k == 2 { 1 } else { k };
            let dir = TempDir::new("mlp");
            let tensors = mlp_tensors(&[7, 5, 4, outputs]);
            write_package(
                dir.path(),
                &titanic_manifest("mlp_classifier", 3, Some(hidden), json!({"classes": classes})),
                &tensors,
            );
            let p = predict(&load(dir.path()));
            let probs = p.probabilities.as_ref().expect("probabilities");
            for (row, r) in records().iter().enumerate() {
                let z = reference_forward(&tensors, hidden, &expected_inputs(r));
                let want: Vec<f64> = if k == 2 {
                    let p1 = 1.0 / (1.0 + (-z[0]).exp());
                    vec![1.0 - p1, p1]
                } else {
                    let max = z.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
                    let s: f64 = e.iter().sum();
                    e.iter().map(|v| v / s).collect()
                };
                let got = &probs[row * k..(row + 1) * k];
                for (g, w) in got.iter().zip(&want) {
                    assert!(close(*g, *w), "{hidden}, {k} classes, row {row}: {got:?} vs {want:?}");
                }
                let best = (0..k).fold(0, |b, i| if want[i] > want[b] { i } else { b });
                assert_eq!(p.labels.as_ref().unwrap()[row] as usize, best, "{hidden}, row {row}");
            }
        }
    }
}

#[test]
fn regressors_and_logistic_regression_compute_their_formulas() {
    for (kind, layers, activation, sizes) in
        [("linear_regression", 1, None, vec![7, 1]), ("mlp_regressor", 2, Some("tanh"), vec![7, 6, 1])]
    {
        let dir = TempDir::new("reg");
        let tensors = mlp_tensors(&sizes);
        write_package(
            dir.path(),
            &titanic_manifest(kind, layers, activation, json!({"target": "y"})),
            &tensors,
        );
        let model = load(dir.path());
        let p = predict(&model);
        assert!(p.labels.is_none() && p.probabilities.is_none());
        for (row, r) in records().iter().enumerate() {
            let want = reference_forward(&tensors, activation.unwrap_or("identity"), &expected_inputs(r))[0];
            assert!(close(p.values.as_ref().unwrap()[row], want), "{kind} row {row}");
        }
        // The response carries plain numbers.
        let table = table_from_records(&model.manifest().features, &records());
        let response = mldeploy_model::Model::predict(
            &model,
            &PredictInput { table: Some(table), ..Default::default() },
        )
        .unwrap();
        assert_eq!(output(&response, "predict").unwrap().as_array().unwrap().len(), 4);
        assert!(output(&response, "predict_proba").is_none());
    }

    // Binary logistic regression: the label follows the sign of the score.
    let dir = TempDir::new("logit");
    let tensors = mlp_tensors(&[7, 1]);
    write_package(
        dir.path(),
        &titanic_manifest("logistic_regression", 1, None, json!({"classes": ["no", "yes"]})),
        &tensors,
    );
    let model = load(dir.path());
    let p = predict(&model);
    for (row, r) in records().iter().enumerate() {
        let z = reference_forward(&tensors, "identity", &expected_inputs(r))[0];
        let p1 = 1.0 / (1.0 + (-z).exp());
        let probs = &p.probabilities.as_ref().unwrap()[row * 2..row * 2 + 2];
        assert!(close(probs[1], p1) && close(probs[0], 1.0 - p1), "row {row}");
        assert_eq!(p.labels.as_ref().unwrap()[row], u32::from(z > 0.0));
    }
    let table = table_from_records(&model.manifest().features, &records());
    let response =
        mldeploy_model::Model::predict(&model, &PredictInput { table: Some(table), ..Default::default() })
            .unwrap();
    assert_eq!(mldeploy_model::Model::info(&model).outputs["classes"], json!(["no", "yes"]));
    let labels: Vec<Value> = p.labels.unwrap().iter().map(|&i| json!(["no", "yes"][i as usize])).collect();
    assert_eq!(output(&response, "predict").unwrap(), Value::Array(labels));
    assert_eq!(response.input, None, "the server echoes the validated rows");
    assert!(response.list_metrics.is_empty() && response.topics.is_empty());
}

/// A valid MLP classifier package (7 -> 4 -> 3); each case breaks one thing.
fn base_package() -> (Value, Vec<T>) {
    (
        titanic_manifest("mlp_classifier", 2, Some("relu"), json!({"classes": ["a", "b", "c"]})),
        mlp_tensors(&[7, 4, 3]),
    )
}

fn load_error(manifest: &Value, tensors: &[T]) -> String {
    let dir = TempDir::new("broken");
    write_package(dir.path(), manifest, tensors);
    match PackageLoader.load(Some(dir.path()), &LoadContext::private()) {
        Ok(_) => panic!("the broken package loaded"),
        Err(ModelError::Load(message)) => message,
        Err(other) => panic!("unexpected error {other:?}"),
    }
}

fn assert_refused(manifest: &Value, tensors: &[T], wanted: &str) {
    let message = load_error(manifest, tensors);
    assert!(message.contains(wanted), "message {message:?} should contain {wanted:?}");
}

#[test]
fn the_base_package_loads() {
    let (m, ts) = base_package();
    let dir = TempDir::new("base");
    write_package(dir.path(), &m, &ts);
    let model = PackageLoader.load(Some(dir.path()), &LoadContext::private()).expect("loads");
    assert_eq!(model.info().kind, "mlp_classifier");
    // A path naming mldeploy.json itself works too.
    PackageLoader.load(Some(&dir.path().join("mldeploy.json")), &LoadContext::private()).expect("loads");
    assert!(PackageLoader.describe(Some(dir.path())).starts_with("handmade 0.1.0 (mlp_classifier)"));
}

#[test]
fn missing_files_are_named() {
    let (m, ts) = base_package();
    let dir = TempDir::new("files");
    write_package(dir.path(), &m, &ts);
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = PackageLoader.load(Some(dir.path()), &LoadContext::private()).err().expect("refused");
    assert!(err.to_string().contains("missing file model.safetensors"), "{err}");
    std::fs::remove_file(dir.path().join("mldeploy.json")).unwrap();
    let err = PackageLoader.load(Some(dir.path()), &LoadContext::private()).err().expect("refused");
    assert!(err.to_string().contains("missing file mldeploy.json"), "{err}");
    let err = PackageLoader
        .load(Some(&dir.path().join("nowhere")), &LoadContext::private())
        .err()
        .expect("refused");
    assert!(err.to_string().contains("model package directory not found"), "{err}");
}

#[test]
fn broken_weights_are_refused_with_the_tensor_named() {
    let (m, ts) = base_package();
    let without = |name: &str| {
        ts.iter()
            .filter(|t| t.name != name)
            .map(|x| t(&x.name, &x.shape, x.values.clone()))
            .collect::<Vec<_>>()
    };
    let replaced = |name: &str, new: T| {
        ts.iter()
            .map(|x| {
                if x.name == name {
                    t(&new.name, &new.shape, new.values.clone())
                } else {
                    t(&x.name, &x.shape, x.values.clone())
                }
            })
            .collect::<Vec<_>>()
    };
    assert_refused(&m, &without("layers.1.bias"), "missing tensor layers.1.bias");
    assert_refused(&m, &without("layers.0.weight"), "missing tensor layers.0.weight");
    assert_refused(
        &m,
        &replaced("layers.1.weight", t("layers.1.weight", &[4, 2], values(1, 8))),
        "layers.1.bias has shape [3] but layers.1.weight has shape [4, 2] (2 outputs)",
    );
    let mut two_outputs = replaced("layers.1.weight", t("layers.1.weight", &[4, 2], values(1, 8)));
    two_outputs[3] = t("layers.1.bias", &[2], values(2, 2));
    assert_refused(&m, &two_outputs, "layers.1.weight has 2 outputs but the model needs 3 (3 classes)");
    assert_refused(
        &m,
        &replaced("layers.0.bias", t("layers.0.bias", &[5], values(1, 5))),
        "layers.0.bias has shape [5] but layers.0.weight has shape [7, 4]",
    );
    assert_refused(
        &m,
        &replaced("layers.1.weight", t("layers.1.weight", &[5, 3], values(1, 15))),
        "layers.1.weight has shape [5, 3] but layers.0 has 4 outputs",
    );
    assert_refused(
        &m,
        &replaced("layers.0.bias", t("layers.0.bias", &[1, 4], values(1, 4))),
        "expected a 1-D tensor",
    );
    let mut extra = mlp_tensors(&[7, 4, 3]);
    extra.push(t("layers.2.weight", &[3, 3], values(3, 9)));
    assert_refused(&m, &extra, "unexpected tensor layers.2.weight");
    let mut nan = mlp_tensors(&[7, 4, 3]);
    nan[0].values[3] = f64::NAN;
    assert_refused(&m, &nan, "tensor layers.0.weight holds NaN or infinite values");

    let dir = TempDir::new("garbage");
    write_package(dir.path(), &m, &ts);
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors at all").unwrap();
    let err = PackageLoader.load(Some(dir.path()), &LoadContext::private()).err().expect("refused");
    assert!(err.to_string().contains("model.safetensors: not a valid safetensors file"), "{err}");
}

#[test]
fn integer_tensors_are_refused() {
    let (m, _) = base_package();
    let dir = TempDir::new("dtype");
    write_package(dir.path(), &m, &mlp_tensors(&[7, 4, 3]));
    // Rewrite the weights with an I64 first layer.
    let bytes: Vec<u8> = (0..28i64).flat_map(|v| v.to_le_bytes()).collect();
    let others: Vec<(String, Vec<usize>, Vec<u8>)> = mlp_tensors(&[7, 4, 3])
        .into_iter()
        .filter(|x| x.name != "layers.0.weight")
        .map(|x| (x.name, x.shape, x.values.iter().flat_map(|v| v.to_le_bytes()).collect()))
        .collect();
    let mut views = vec![(
        "layers.0.weight".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![7, 4], &bytes).unwrap(),
    )];
    for (name, shape, data) in &others {
        views.push((
            name.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F64, shape.clone(), data).unwrap(),
        ));
    }
    std::fs::write(
        dir.path().join("model.safetensors"),
        safetensors::tensor::serialize(views, None).unwrap(),
    )
    .unwrap();
    let err = PackageLoader.load(Some(dir.path()), &LoadContext::private()).err().expect("refused");
    assert!(err.to_string().contains("tensor layers.0.weight has dtype I64; expected F64"), "{err}");
}

#[test]
fn schema_and_weights_mismatches_are_refused() {
    let (m, ts) = base_package();
    // A scaled feature dropped: the preprocessing yields 6 inputs, the weights take 7.
    let mut fewer = m.clone();
    fewer["preprocessing"][0] =
        json!({"type": "standard_scaler", "columns": ["Age"], "mean": [30.0], "scale": [14.0]});
    assert_refused(
        &fewer,
        &ts,
        "the preprocessing produces 6 model inputs (Age: 1 scaled; Sex: 2 one-hot; Embarked: 3 one-hot) \
         but layers.0.weight has shape [7, 4], which takes 7 inputs",
    );
    // One category fewer: the one-hot width no longer matches the weights.
    let mut cats = m.clone();
    cats["preprocessing"][1]["categories"][1] = json!(["C", "S"]);
    assert_refused(
        &cats,
        &ts,
        "Embarked: 2 one-hot) but layers.0.weight has shape [7, 4], which takes 7 inputs",
    );
    let mut lists = m.clone();
    lists["preprocessing"][1]["categories"] = json!([["female", "male"]]);
    assert_refused(&lists, &ts, "preprocessing step 1 (one_hot) has 2 columns but 1 category lists");
    let mut means = m.clone();
    means["preprocessing"][0]["mean"] = json!([30.0]);
    assert_refused(
        &means,
        &ts,
        "preprocessing step 0 (standard_scaler) has 2 columns but 1 means and 2 scales",
    );
    let mut zero = m.clone();
    zero["preprocessing"][0]["scale"] = json!([14.0, 0.0]);
    assert_refused(&zero, &ts, "the scale of \"Fare\" must be finite and not zero");
    let mut unknown = m.clone();
    unknown["preprocessing"][0]["columns"] = json!(["Age", "Cabin"]);
    assert_refused(
        &unknown,
        &ts,
        "preprocessing step 0 (standard_scaler) names \"Cabin\", which is not a feature",
    );
    let mut typed = m.clone();
    typed["features"][1]["dtype"] = json!("category");
    assert_refused(&typed, &ts, "needs a float, int or bool feature but \"Age\" is declared Category");
    let mut duplicate = m.clone();
    duplicate["output"]["classes"] = json!(["a", "b", "a"]);
    assert_refused(&duplicate, &ts, "output.classes: \"a\" appears twice");
}

#[test]
fn bad_manifests_are_refused() {
    let (m, ts) = base_package();
    let mut kind = m.clone();
    kind["kind"] = json!("random_forest");
    assert_refused(&kind, &ts, "unknown model kind \"random_forest\"");
    let mut act = m.clone();
    act["activation"] = json!("gelu");
    assert_refused(&act, &ts, "unknown activation \"gelu\" (known: identity, logistic, tanh, relu)");
    let mut no_act = m.clone();
    no_act.as_object_mut().unwrap().remove("activation");
    assert_refused(&no_act, &ts, "kind mlp_classifier needs an activation");
    let mut no_classes = m.clone();
    no_classes["output"] = json!({"target": "y"});
    assert_refused(&no_classes, &ts, "kind mlp_classifier needs output.classes");
    let mut format = m.clone();
    format["format"] = json!("mldeploy-package/9");
    assert_refused(&format, &ts, "unsupported package format \"mldeploy-package/9\"");
    let mut step = m.clone();
    step["preprocessing"][0]["type"] = json!("min_max_scaler");
    assert_refused(&step, &ts, "unknown variant `min_max_scaler`");
    let mut layers = m.clone();
    layers["layers"] = json!(3);
    assert_refused(&layers, &ts, "missing tensor layers.2.weight");

    let dir = TempDir::new("json");
    write_package(dir.path(), &m, &ts);
    std::fs::write(dir.path().join("mldeploy.json"), b"{\"format\": ").unwrap();
    let err = PackageLoader.load(Some(dir.path()), &LoadContext::private()).err().expect("refused");
    assert!(err.to_string().contains("mldeploy.json: EOF while parsing"), "{err}");
}
