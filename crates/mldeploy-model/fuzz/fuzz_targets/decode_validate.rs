//! Fuzz target: arbitrary request bytes through the server's path for a predict body:
//! `serde_json::from_slice` -> `decode::decode_rows` -> `Schema::validate` against a fixed
//! schema with every dtype, ranges, categories and `allow_nan`.
//!
//! Besides "never panics", it checks the documented contract of what comes out: decoding fails
//! only with `BadRequest`; validation fails only with a non-empty, capped `Invalid` list using
//! the stable reasons; an accepted table has one column per feature, all `n_rows` long, rows
//! in request order, and every value within its feature's type, range and categories.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mldeploy_model::decode::{decode_rows, OnError};
use mldeploy_model::schema::MAX_ERRORS;
use mldeploy_model::{Column, Dtype, Feature, FeatureValues, ModelError, Schema};
use serde_json::{json, Value};

const REASONS: [&str; 8] = [
    "missing_feature",
    "unexpected_feature",
    "feature_order",
    "wrong_type",
    "out_of_range",
    "unknown_category",
    "not_finite",
    "row_length",
];

fn feature(name: &str, dtype: Dtype, values: Option<FeatureValues>, allow_nan: bool) -> Feature {
    Feature { name: name.into(), dtype, values, allow_nan, missing: false }
}

fn range(min: Option<f64>, max: Option<f64>) -> Option<FeatureValues> {
    Some(FeatureValues::Range { min, max })
}

/// Titanic-like features covering each dtype and each kind of allowed values.
fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let schema = Schema::new(vec![
            feature("age", Dtype::Float, range(Some(0.0), Some(120.0)), false),
            feature("fare", Dtype::Float, range(Some(0.0), None), true),
            feature(
                "pclass",
                Dtype::Int,
                Some(FeatureValues::Categories(vec![json!(1), json!(2), json!(3)])),
                false,
            ),
            feature("sibsp", Dtype::Int, range(Some(0.0), Some(8.0)), false),
            feature(
                "sex",
                Dtype::Category,
                Some(FeatureValues::Categories(vec![json!("male"), json!("female")])),
                false,
            ),
            feature("embarked", Dtype::Category, None, false),
            feature("alone", Dtype::Bool, None, false),
        ]);
        schema.check().expect("the fuzz schema is valid");
        schema
    })
}

fn check_numeric(name: &str, values: &[f64]) {
    for &x in values {
        let ok = match name {
            "age" => x.is_finite() && (0.0..=120.0).contains(&x),
            // allow_nan: NaN and infinities pass (and skip the range check).
            "fare" => !x.is_finite() || x >= 0.0,
            "pclass" => x == 1.0 || x == 2.0 || x == 3.0,
            "sibsp" => x.fract() == 0.0 && (0.0..=8.0).contains(&x),
            "alone" => x == 0.0 || x == 1.0,
            _ => false,
        };
        assert!(ok, "feature {name} accepted {x}");
    }
}

fn check_category(name: &str, values: &[String]) {
    if name == "sex" {
        for v in values {
            assert!(v == "male" || v == "female", "feature sex accepted {v:?}");
        }
    } else {
        assert_eq!(name, "embarked", "a category column for {name}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else { return };
    let (rows, on_error) = match decode_rows(&body) {
        Ok(decoded) => decoded,
        Err(ModelError::BadRequest(_)) => return,
        Err(other) => panic!("decode_rows failed with {other:?}"),
    };
    assert!(!rows.rows.is_empty(), "decoded an empty list of rows");
    let schema = schema();
    match schema.validate(&rows, on_error) {
        Ok(v) => {
            let table = &v.table;
            assert!(table.n_rows >= 1, "accepted a request with no valid row");
            assert!(table.source_rows.is_empty() || table.source_rows.len() == table.n_rows);
            let kept: Vec<usize> = (0..table.n_rows).map(|i| table.source_row(i)).collect();
            assert!(kept.windows(2).all(|w| w[0] < w[1]), "rows out of order");
            assert!(kept.iter().all(|&i| i < rows.rows.len()), "row index out of bounds");
            assert_eq!(table.columns.len(), schema.features.len());
            for (f, column) in schema.features.iter().zip(&table.columns) {
                assert_eq!(column.len(), table.n_rows, "column {} has the wrong length", f.name);
                match column {
                    Column::Numeric(values) => {
                        assert_ne!(f.dtype, Dtype::Category);
                        check_numeric(&f.name, values);
                    }
                    Column::Category(values) => {
                        assert_eq!(f.dtype, Dtype::Category);
                        check_category(&f.name, values);
                    }
                    Column::OptionalCategory(values) => {
                        assert_eq!(f.dtype, Dtype::Category);
                        assert!(f.missing, "only features taking missing values have optional categories");
                        let known: Vec<String> = values.iter().flatten().cloned().collect();
                        check_category(&f.name, &known);
                    }
                }
            }
            if on_error == OnError::Reject {
                assert!(v.rejected.is_empty(), "reject mode returned rejected rows");
            }
            for e in &v.rejected {
                let row = e.row.expect("a skipped row's error names the row");
                assert!(!kept.contains(&row), "row {row} both kept and rejected");
                assert!(REASONS.contains(&e.reason.as_str()), "reason {:?}", e.reason);
            }
        }
        Err(ModelError::Invalid { errors, .. }) => {
            assert!(!errors.is_empty(), "refused without a reason");
            assert!(errors.len() <= MAX_ERRORS, "{} errors listed", errors.len());
            for e in &errors {
                assert!(REASONS.contains(&e.reason.as_str()), "reason {:?}", e.reason);
                if let Some(row) = e.row {
                    assert!(row < rows.rows.len(), "error names row {row} of {}", rows.rows.len());
                }
            }
        }
        Err(other) => panic!("validate failed with {other:?}"),
    }
});
