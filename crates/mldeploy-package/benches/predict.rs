//! Prediction cost of each built-in kind for 1 row and for 1024 rows.
//!
//! Models are generated here (30 scaled float features, like the breast-cancer model; hidden
//! layer of 100 as sklearn's default MLP), so the bench needs no Python. Two measurements per
//! case: `table` is preprocessing + forward pass + labels (`PackageModel::predict_table`),
//! `response` adds building the JSON response (`Model::predict`), which is what a request pays.

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;

use common::{t, table_from_records, values, T};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mldeploy_model::{LoadContext, Model, PredictInput};
use mldeploy_package::{load_package_bytes, PackageModel};
use serde_json::{json, Value};

const FEATURES: usize = 30;

fn model(kind: &str, hidden: &[usize], outputs: usize, classes: Option<Value>) -> PackageModel {
    let names: Vec<String> = (0..FEATURES).map(|i| format!("f{i}")).collect();
    let mut manifest = json!({
        "format": "mldeploy-package/1",
        "name": kind,
        "version": "1",
        "kind": kind,
        "features": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
        "preprocessing": [{
            "type": "standard_scaler",
            "columns": names,
            "mean": vec![0.5; FEATURES],
            "scale": vec![2.0; FEATURES]
        }],
        "layers": hidden.len() + 1,
        "output": match classes { Some(c) => json!({"classes": c}), None => json!({"target": "y"}) }
    });
    if !hidden.is_empty() {
        manifest["activation"] = json!("relu");
    }
    let mut sizes = vec![FEATURES];
    sizes.extend_from_slice(hidden);
    sizes.push(outputs);
    let tensors: Vec<T> = sizes
        .windows(2)
        .enumerate()
        .flat_map(|(i, w)| {
            [
                t(&format!("layers.{i}.weight"), &[w[0], w[1]], values(i as u64, w[0] * w[1])),
                t(&format!("layers.{i}.bias"), &[w[1]], values(100 + i as u64, w[1])),
            ]
        })
        .collect();
    let bytes = common::safetensors_bytes(&tensors);
    load_package_bytes(&serde_json::to_vec(&manifest).expect("json"), &bytes, &LoadContext::private())
        .expect("bench model loads")
}

fn input(model: &PackageModel, rows: usize) -> PredictInput {
    let v = values(7, rows * FEATURES);
    let records: Vec<Value> = (0..rows)
        .map(|r| {
            let map: serde_json::Map<String, Value> =
                (0..FEATURES).map(|f| (format!("f{f}"), json!(v[r * FEATURES + f] * 3.0))).collect();
            Value::Object(map)
        })
        .collect();
    PredictInput {
        table: Some(table_from_records(&model.manifest().features, &records)),
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("linear_regression", model("linear_regression", &[], 1, None)),
        ("logistic_binary", model("logistic_regression", &[], 1, Some(json!([0, 1])))),
        ("logistic_multinomial", model("logistic_regression", &[], 3, Some(json!(["a", "b", "c"])))),
        ("mlp_classifier", model("mlp_classifier", &[100], 3, Some(json!(["a", "b", "c"])))),
        ("mlp_regressor", model("mlp_regressor", &[100], 1, None)),
    ];
    for rows in [1usize, 1024] {
        let mut table_group = c.benchmark_group(format!("table/{rows}"));
        for (name, model) in &cases {
            let input = input(model, rows);
            let table = input.table.as_ref().expect("table");
            table_group.bench_with_input(BenchmarkId::from_parameter(name), table, |b, table| {
                b.iter(|| black_box(model.predict_table(black_box(table)).expect("predict")))
            });
        }
        table_group.finish();
        let mut response_group = c.benchmark_group(format!("response/{rows}"));
        for (name, model) in &cases {
            let input = input(model, rows);
            response_group.bench_with_input(BenchmarkId::from_parameter(name), &input, |b, input| {
                b.iter(|| black_box(model.predict(black_box(input)).expect("predict")))
            });
        }
        response_group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
