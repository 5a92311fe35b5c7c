//! The tree engine alone, one thread, on the models scripts/bench/tree_models.py writes
//! (30 features; 300 trees or rounds): 1, 32 and 1,000 rows, labels and
//! probabilities (32 rows: the engine's share of a 32-row request in scripts/bench/trees_http.sh).
//!
//!     python3 scripts/bench/tree_models.py .bench-out/tree-models
//!     MLDEPLOY_TREE_MODELS=.bench-out/tree-models cargo bench -j2 -p mldeploy-package --bench trees
//!
//! scripts/bench/trees.sh runs both and the libraries' own timing in one go, and compares the
//! two from criterion's raw samples (`new/sample.json` under the criterion directory): each
//! benchmark takes 20 samples of about 0.15 s each, the same number and length of repeats
//! scripts/bench/tree_library.py times the libraries with, so that both sides yield the same
//! statistics (the shortest and the median time per call over 20 repeats). Flat sampling keeps
//! the 1,000-row runs of the slower models within the 3 s; criterion's default of 100 linearly
//! growing samples would need minutes for them.

use std::fs;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use mldeploy_package::trees::TreeEnsemble;
use serde_json::Value;

fn models_dir() -> PathBuf {
    std::env::var_os("MLDEPLOY_TREE_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.bench-out/tree-models"))
}

fn load(name: &str) -> Option<(TreeEnsemble, Vec<f64>)> {
    let dir = models_dir().join(name);
    let spec: Value = serde_json::from_slice(&fs::read(dir.join("bench.json")).ok()?).ok()?;
    let bytes = fs::read(dir.join(spec["file"].as_str()?)).ok()?;
    let model = match spec["kind"].as_str()? {
        "sklearn_trees" => TreeEnsemble::from_sklearn_json(&bytes),
        "xgboost" => TreeEnsemble::from_xgboost_json(&bytes),
        _ => TreeEnsemble::from_lightgbm_text(std::str::from_utf8(&bytes).ok()?),
    }
    .ok()?;
    let x = spec["x"]
        .as_array()?
        .iter()
        .flat_map(|r| r.as_array().into_iter().flatten().map(|v| v.as_f64().unwrap_or(f64::NAN)))
        .collect();
    Some((model, x))
}

fn bench(c: &mut Criterion) {
    for name in ["rf300", "et300", "gb300", "hgb300", "xgb300", "lgb300"] {
        let Some((model, x)) = load(name) else {
            eprintln!("{} has no model {name}: run scripts/bench/tree_models.py", models_dir().display());
            continue;
        };
        let n_features = model.n_features();
        let width = model.output_width();
        let mut group = c.benchmark_group(name);
        group
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3))
            .sample_size(20)
            .sampling_mode(SamplingMode::Flat);
        for rows in [1usize, 32, 1000] {
            let input = &x[..rows * n_features];
            let mut labels = vec![0usize; rows];
            let mut values = vec![0.0; rows * width];
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_function(format!("{rows} rows"), |b| {
                b.iter(|| {
                    model.predict_into(black_box(input), rows, &mut labels, &mut values).expect("predict");
                    black_box(&values);
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
