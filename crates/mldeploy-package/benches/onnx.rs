//! The same MLP as the candle kind and as an ONNX graph, alone: `Model::predict` on a validated
//! table of 1 and 32 rows (the candle kind's preprocessing, forward pass and labels; the ONNX
//! model's cast to float32, `Session::run` and the copy of its outputs), as a serving thread
//! calls it. The models and bodies come from scripts/bench/onnx_models.py, in the directory
//! `MLDEPLOY_ONNX_BENCH` names (scripts/bench/onnx.sh sets it); without it nothing is measured.

use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use mldeploy_model::decode::decode_rows;
use mldeploy_model::{LoadContext, Model, PredictInput, Schema};
use serde_json::Value;

fn input(model: &dyn Model, body: &Path) -> PredictInput {
    let body: Value = serde_json::from_slice(&std::fs::read(body).expect("body file")).expect("JSON body");
    let (rows, on_error) = decode_rows(&body).expect("rows");
    let schema = Schema::new(model.info().features.clone());
    let table = schema.validate(&rows, on_error).expect("valid rows").table;
    PredictInput { table: Some(table), ..Default::default() }
}

fn bench(c: &mut Criterion) {
    let Some(dir) = std::env::var_os("MLDEPLOY_ONNX_BENCH") else {
        eprintln!("MLDEPLOY_ONNX_BENCH is not set: nothing to measure (scripts/bench/onnx.sh sets it)");
        return;
    };
    let dir = Path::new(&dir);
    let ctx = LoadContext::private();
    for side in ["candle", "onnx"] {
        let model =
            mldeploy_package::load_model(&dir.join(format!("mlp-{side}")), &ctx).expect("model loads");
        for rows in [1, 32] {
            let input = input(&*model, &dir.join(format!("body-{rows}.json")));
            c.bench_function(&format!("{side} {rows} rows"), |b| {
                b.iter(|| black_box(model.predict(black_box(&input)).expect("predicts")))
            });
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
