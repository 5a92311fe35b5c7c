//! Feedback figures: known values, concurrency across model instances sharing the slots (as
//! workers do), and the slot ownership scheme.

mod common;

use std::sync::Barrier;

use common::{json_target, metrics, t, table_from_records, TempDir};
use mldeploy_model::{FeedbackInput, LoadContext, Model, ModelError, NoMetrics, SharedSlots, Table};
use mldeploy_package::{
    load_package, load_package_bytes, Figures, PackageModel, DEMO_MANIFEST, DEMO_WEIGHTS,
};
use serde_json::{json, Value};

fn context(slots: SharedSlots) -> LoadContext {
    LoadContext { shared: slots, metrics: std::sync::Arc::new(NoMetrics), ..LoadContext::private() }
}

/// One float feature `x`; a linear regression `y = 2x + 1` or a binary logistic regression
/// with classes 0 and 1.
fn one_feature_package(dir: &std::path::Path, kind: &str) {
    let output =
        if kind == "linear_regression" { json!({"target": "y"}) } else { json!({"classes": [0, 1]}) };
    let manifest = json!({
        "format": "mldeploy-package/1", "name": "one", "version": "1", "kind": kind,
        "features": [{"name": "x"}], "layers": 1, "output": output
    });
    common::write_package(
        dir,
        &manifest,
        &[t("layers.0.weight", &[1, 1], vec![2.0]), t("layers.0.bias", &[1], vec![1.0])],
    );
}

fn x_table(xs: &[f64]) -> Table {
    let records: Vec<Value> = xs.iter().map(|x| json!({ "x": x })).collect();
    table_from_records(&[serde_json::from_value(json!({"name": "x"})).unwrap()], &records)
}

fn iris_table(n: usize) -> Table {
    let records: Vec<Value> = (0..n)
        .map(|_| json!({"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}))
        .collect();
    let manifest: Value = serde_json::from_slice(DEMO_MANIFEST).unwrap();
    let features: Vec<mldeploy_model::Feature> =
        serde_json::from_value(manifest["features"].clone()).unwrap();
    table_from_records(&features, &records)
}

fn feedback(
    model: &PackageModel,
    table: Table,
    y_true: Value,
    y_predict: Option<Value>,
) -> mldeploy_model::Response {
    model
        .feedback(&FeedbackInput { data: Value::Null, table: Some(table), y_true, y_predict })
        .unwrap_or_else(|e| panic!("feedback failed: {e}"))
}

fn demo(slots: SharedSlots) -> PackageModel {
    load_package_bytes(DEMO_MANIFEST, DEMO_WEIGHTS, &context(slots)).expect("demo loads")
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-12, "{what}: {got} vs {want}");
}

#[test]
fn binary_classifier_figures_are_for_the_second_class() {
    let dir = TempDir::new("binary");
    one_feature_package(dir.path(), "logistic_regression");
    let model = load_package(dir.path(), &LoadContext::private()).unwrap();
    assert!(model.supports_feedback());
    // tp = 3, fp = 2, fn = 1, tn = 2; y_true partly sent as text.
    let y_true = json!([1, 0, "1", 1, 0, 0, 1, 0]);
    let y_pred = json!([1, 1, 0, 1, 1, 0, 1, 0]);
    let response = feedback(&model, x_table(&[0.0; 8]), y_true, Some(y_pred));
    let m = metrics(&response.list_metrics);
    assert_close(m["accuracy"], 5.0 / 8.0, "accuracy");
    assert_close(m["precision"], 3.0 / 5.0, "precision");
    assert_close(m["recall"], 3.0 / 4.0, "recall");
    assert_close(m["F1"], 2.0 / 3.0, "F1");
    assert_eq!(json_target(&response)["total_feedback_rows"], json!(8));

    // Without y_predict the model predicts: x = 1 scores 3 > 0, so class 1.
    let response = feedback(&model, x_table(&[1.0, 1.0]), json!([1, 0]), None);
    let m = metrics(&response.list_metrics);
    assert_close(m["accuracy"], 6.0 / 10.0, "accuracy");
    assert_close(m["precision"], 4.0 / 7.0, "precision");
}

#[test]
fn multiclass_figures_are_macro_averages_over_the_classes_seen() {
    let model = demo(SharedSlots::private(SharedSlots::DEFAULT_LEN));
    // Only setosa and versicolor occur: the macro average is over those two.
    let r =
        feedback(&model, iris_table(2), json!(["setosa", "versicolor"]), Some(json!(["setosa", "setosa"])));
    let m = metrics(&r.list_metrics);
    assert_close(m["precision"], (0.5 + 0.0) / 2.0, "precision");
    assert_close(m["recall"], (1.0 + 0.0) / 2.0, "recall");
    assert_close(m["F1"], (2.0 / 3.0) / 2.0, "F1");

    let model = demo(SharedSlots::private(SharedSlots::DEFAULT_LEN));
    let y_true = json!(["setosa", "setosa", "versicolor", "versicolor", "virginica", "virginica"]);
    let y_pred = json!(["setosa", "versicolor", "versicolor", "versicolor", "virginica", "setosa"]);
    let r = feedback(&model, iris_table(6), y_true, Some(y_pred));
    let m = metrics(&r.list_metrics);
    assert_close(m["accuracy"], 4.0 / 6.0, "accuracy");
    assert_close(m["precision"], (0.5 + 2.0 / 3.0 + 1.0) / 3.0, "precision");
    assert_close(m["recall"], (0.5 + 1.0 + 0.5) / 3.0, "recall");
    assert_close(m["F1"], (0.5 + 0.8 + 2.0 / 3.0) / 3.0, "F1");

    // The sample row is a setosa: predicted when y_predict is absent.
    let r = feedback(&model, iris_table(1), json!("setosa"), None);
    assert_close(metrics(&r.list_metrics)["accuracy"], 5.0 / 7.0, "accuracy");
}

#[test]
fn regressor_figures() {
    let dir = TempDir::new("regression");
    one_feature_package(dir.path(), "linear_regression");
    let model = load_package(dir.path(), &LoadContext::private()).unwrap();
    // Predictions 1, 3, 5, 7; errors 0, 1, -1, 2.
    let r = feedback(&model, x_table(&[0.0, 1.0, 2.0, 3.0]), json!([1, 4, 4, 9]), None);
    let m = metrics(&r.list_metrics);
    assert_close(m["MAE"], 1.0, "MAE");
    assert_close(m["RMSE"], 1.5f64.sqrt(), "RMSE");
    assert_close(m["R2"], 1.0 - 6.0 / 33.0, "R2");

    // One row only: R2 is undefined and left out.
    let dir = TempDir::new("regression-one");
    one_feature_package(dir.path(), "linear_regression");
    let model = load_package(dir.path(), &LoadContext::private()).unwrap();
    let r = feedback(&model, x_table(&[0.0]), json!([2.5]), None);
    let m = metrics(&r.list_metrics);
    assert_close(m["MAE"], 1.5, "MAE");
    assert!(!m.contains_key("R2"));
}

#[test]
fn concurrent_feedback_from_two_instances_adds_up_exactly() {
    let slots = SharedSlots::private(SharedSlots::DEFAULT_LEN);
    let (a, b) = (demo(slots), demo(slots));
    let start = Barrier::new(2);
    std::thread::scope(|s| {
        s.spawn(|| {
            start.wait();
            for _ in 0..500 {
                feedback(
                    &a,
                    iris_table(2),
                    json!(["setosa", "versicolor"]),
                    Some(json!(["setosa", "setosa"])),
                );
            }
        });
        s.spawn(|| {
            start.wait();
            for _ in 0..500 {
                feedback(
                    &b,
                    iris_table(2),
                    json!(["virginica", "virginica"]),
                    Some(json!(["virginica", "versicolor"])),
                );
            }
        });
    });
    for model in [&a, &b] {
        let Some(Figures::Classifier(c)) = model.feedback_figures() else { panic!("classifier figures") };
        assert_eq!(c.rows, 2000);
        assert_eq!(c.accuracy, 0.5);
        assert_eq!(c.precision, (0.5 + 0.0 + 1.0) / 3.0);
        assert_eq!(c.recall, (1.0 + 0.0 + 0.5) / 3.0);
        assert_close(c.f1, (2.0 / 3.0 + 0.0 + 2.0 / 3.0) / 3.0, "F1");
    }

    let dir = TempDir::new("regression-threads");
    one_feature_package(dir.path(), "linear_regression");
    let slots = SharedSlots::private(64);
    let (a, b) = (
        load_package(dir.path(), &context(slots)).unwrap(),
        load_package(dir.path(), &context(slots)).unwrap(),
    );
    std::thread::scope(|s| {
        s.spawn(|| {
            start.wait();
            for _ in 0..500 {
                feedback(&a, x_table(&[0.0, 0.0]), json!([1, 3]), Some(json!([0, 3])));
            }
        });
        s.spawn(|| {
            start.wait();
            for _ in 0..500 {
                feedback(&b, x_table(&[0.0, 0.0]), json!([5, 7]), Some(json!([5, 9])));
            }
        });
    });
    let Some(Figures::Regressor(r)) = a.feedback_figures() else { panic!("regressor figures") };
    assert_eq!(r.rows, 2000);
    assert_eq!(r.mae, 0.75);
    assert_eq!(r.rmse, 1.25f64.sqrt());
    assert_eq!(r.r2, Some(0.75));
}

#[test]
fn slots_keep_one_models_figures() {
    let slots = SharedSlots::private(SharedSlots::DEFAULT_LEN);
    let first = demo(slots);
    feedback(&first, iris_table(3), json!(["setosa", "setosa", "virginica"]), None);
    // The same model loaded again (another worker, a restarted one) sees the same figures.
    let again = demo(slots);
    assert_eq!(again.feedback_figures().map(|f| f.rows()), Some(3));

    // Another version takes the slots over: it starts from zero, the old one stops recording.
    let mut manifest: Value = serde_json::from_slice(DEMO_MANIFEST).unwrap();
    manifest["version"] = json!("2.0.0");
    let newer =
        load_package_bytes(&serde_json::to_vec(&manifest).unwrap(), DEMO_WEIGHTS, &context(slots)).unwrap();
    assert_eq!(newer.feedback_figures().map(|f| f.rows()), Some(0));
    assert_eq!(first.feedback_figures(), None);
    assert!(first.scrape_gauges().is_empty());
    let r = feedback(&first, iris_table(1), json!(["setosa"]), None);
    assert_eq!(json_target(&r)["recorded"], json!(false));
    assert!(r.list_metrics.is_empty());
    assert_eq!(newer.feedback_figures().map(|f| f.rows()), Some(0), "the old model's feedback did not land");
    feedback(&newer, iris_table(2), json!(["setosa", "setosa"]), None);
    assert_eq!(newer.feedback_figures().map(|f| f.rows()), Some(2));
}

#[test]
fn scrape_gauges_name_the_model() {
    let model = demo(SharedSlots::private(SharedSlots::DEFAULT_LEN));
    let gauges = model.scrape_gauges();
    assert_eq!(gauges.len(), 1, "before feedback only the row count");
    assert_eq!(gauges[0].name, "mldeploy_feedback_rows");
    assert_eq!(gauges[0].value, 0.0);
    feedback(&model, iris_table(2), json!(["setosa", "versicolor"]), None);
    let gauges = model.scrape_gauges();
    let names: Vec<&str> = gauges.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "mldeploy_feedback_rows",
            "mldeploy_feedback_accuracy",
            "mldeploy_feedback_precision",
            "mldeploy_feedback_recall",
            "mldeploy_feedback_f1"
        ]
    );
    let labels =
        vec![("model".to_string(), "iris-demo".to_string()), ("version".to_string(), "1.0.0".to_string())];
    assert!(gauges.iter().all(|g| g.labels == labels && !g.help.is_empty()));
    assert_eq!(gauges[0].value, 2.0);
    assert_eq!(gauges[1].value, 0.5);
}

#[test]
fn bad_feedback_is_refused_and_not_counted() {
    let model = demo(SharedSlots::private(SharedSlots::DEFAULT_LEN));
    let send = |y_true: Value, y_predict: Option<Value>, table: Table| {
        model.feedback(&FeedbackInput { data: Value::Null, table: Some(table), y_true, y_predict })
    };
    match send(json!(["setosa", "rose"]), None, iris_table(2)) {
        Err(ModelError::Invalid { errors, .. }) => {
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].row, Some(1));
            assert_eq!(errors[0].feature.as_deref(), Some("y_true"));
            assert_eq!(errors[0].reason, "unknown_label");
            assert!(errors[0].message.contains("\"rose\""), "{}", errors[0].message);
        }
        other => panic!("unexpected {other:?}"),
    }
    match send(json!(["setosa"]), None, iris_table(2)) {
        Err(ModelError::Invalid { errors, .. }) => assert_eq!(errors[0].reason, "row_length"),
        other => panic!("unexpected {other:?}"),
    }
    match send(json!(["setosa", "setosa"]), Some(json!(["setosa", 7])), iris_table(2)) {
        Err(ModelError::Invalid { errors, .. }) => {
            assert_eq!(errors[0].feature.as_deref(), Some("y_predict"))
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(model.feedback(&FeedbackInput::default()), Err(ModelError::BadRequest(_))));
    assert_eq!(model.feedback_figures().map(|f| f.rows()), Some(0));

    // Rows skipped by validation: y_true is indexed like the request's rows.
    let mut table = iris_table(2);
    table.source_rows = vec![0, 2];
    let r =
        send(json!(["setosa", "garbage-for-the-skipped-row", "versicolor"]), None, table).expect("accepted");
    assert_eq!(json_target(&r)["feedback_rows"], json!(2));
    assert_close(metrics(&r.list_metrics)["accuracy"], 0.5, "accuracy");
}

#[test]
fn too_few_slots_are_refused() {
    let err = demo_result(SharedSlots::private(10)).expect_err("refused");
    assert!(err.to_string().contains("this model needs 17 shared slots but the server provides 10"), "{err}");
}

fn demo_result(slots: SharedSlots) -> Result<PackageModel, mldeploy_package::Error> {
    load_package_bytes(DEMO_MANIFEST, DEMO_WEIGHTS, &context(slots))
}
