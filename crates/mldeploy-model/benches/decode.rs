//! Time of the fast decode (`mldeploy_model::fast::decode`) of ml-deploy bodies of 30 float
//! features: numbers as short as hand-written data (`17.99`) and as long as numpy writes them
//! (`-1.2806657447114700`, 16 to 17 digits), 1 and 32 rows.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mldeploy_model::{fast, Dtype, Feature, Schema};

const FEATURES: usize = 30;

fn schema() -> Schema {
    Schema::new(
        (0..FEATURES)
            .map(|j| Feature {
                name: format!("f{j}"),
                dtype: Dtype::Float,
                values: None,
                allow_nan: false,
                missing: false,
            })
            .collect(),
    )
}

/// `{"data": [[...], ...], "names": [...]}` with `rows` rows of numbers from `number`.
fn body(rows: usize, number: impl Fn(u64) -> String) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<String> = (0..rows)
        .map(|_| {
            let cells: Vec<String> = (0..FEATURES)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    number(state)
                })
                .collect();
            format!("[{}]", cells.join(","))
        })
        .collect();
    let names: Vec<String> = (0..FEATURES).map(|j| format!("\"f{j}\"")).collect();
    format!("{{\"data\":[{}],\"names\":[{}]}}", data.join(","), names.join(",")).into_bytes()
}

fn decode(c: &mut Criterion) {
    let schema = schema();
    // Shortest round-trip text of a double in about [-8, 8): what numpy and Python write.
    let long = |r: u64| format!("{:?}", (r >> 11) as f64 / (1u64 << 53) as f64 * 16.0 - 8.0);
    // Four significant digits, as in hand-typed or rounded data.
    let short = |r: u64| format!("{}.{:02}", r % 2000, r % 97);
    for rows in [1, 32] {
        for (name, number) in [("long", &long as &dyn Fn(u64) -> String), ("short", &short)] {
            let body = body(rows, number);
            assert!(fast::decode(&schema, &body).is_some(), "the fast path takes the bench body");
            c.bench_function(&format!("decode/{rows} rows/{name} numbers"), |b| {
                b.iter(|| fast::decode(&schema, black_box(&body)))
            });
        }
    }
}

criterion_group!(benches, decode);
criterion_main!(benches);
