//! Cost of the request-path metric updates (per call), on one thread and with contention.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use mldeploy_server::metrics::{Metrics, MetricsSettings, ModelKey};

fn request_path(c: &mut Criterion) {
    let m = Metrics::private(&MetricsSettings { max_series: 512 });
    let iris = ModelKey::new("iris-classifier", "1.2.0");
    // Warm: the series exist, as after the first requests of a server.
    m.request_finished(&iris, "POST", "/api/ml/predict", 200, 0.001);

    c.bench_function("request_finished (existing series)", |b| {
        b.iter(|| {
            m.request_finished(
                &iris,
                black_box("POST"),
                black_box("/api/ml/predict"),
                black_box(200),
                black_box(0.0012),
            )
        })
    });
    c.bench_function("request_started + drop", |b| b.iter(|| drop(black_box(m.request_started()))));
    c.bench_function("predictions", |b| b.iter(|| m.predictions(&iris, black_box(3))));
    let sink = m.model_sink();
    let descs = [mldeploy_model::MetricDesc {
        name: "model_latency_seconds".into(),
        help: String::new(),
        kind: mldeploy_model::MetricKind::Histogram { buckets: vec![0.001, 0.01, 0.1, 1.0] },
        label_names: vec!["stage".into()],
    }];
    m.declare(&descs[0]).unwrap();
    c.bench_function("model sink histogram_observe", |b| {
        b.iter(|| sink.histogram_observe(black_box("model_latency_seconds"), &["decode"], black_box(0.004)))
    });
    let off = Metrics::disabled();
    c.bench_function("request_finished (metrics disabled)", |b| {
        b.iter(|| {
            off.request_finished(
                &iris,
                black_box("POST"),
                black_box("/api/ml/predict"),
                black_box(200),
                black_box(0.0012),
            )
        })
    });

    // Two threads hammering the same series (the worst case for cache-line sharing).
    c.bench_function("request_finished, 2 threads same series", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            m.request_finished(&iris, "POST", "/api/ml/predict", 200, 0.0012);
                        }
                    });
                }
            });
            start.elapsed()
        })
    });
    c.bench_function("render (Prometheus text)", |b| {
        b.iter(|| black_box(m.render(mldeploy_server::metrics::Format::Prometheus, &[])))
    });
}

criterion_group!(benches, request_path);

/// `MLDEPLOY_METRICS_LOOP=N`: no criterion, just N calls of each request-path update, for
/// counting instructions under `valgrind --tool=callgrind` (steady on a busy machine, where
/// wall-clock figures are not).
fn main() {
    if let Some(n) = std::env::var("MLDEPLOY_METRICS_LOOP").ok().and_then(|v| v.parse::<u64>().ok()) {
        let m = Metrics::private(&MetricsSettings { max_series: 512 });
        let iris = ModelKey::new("iris-classifier", "1.2.0");
        for _ in 0..n {
            let guard = m.request_started();
            m.predictions(&iris, black_box(3));
            m.request_finished(
                &iris,
                black_box("POST"),
                black_box("/api/ml/predict"),
                black_box(200),
                black_box(0.0012),
            );
            drop(guard);
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
