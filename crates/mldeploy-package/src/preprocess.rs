//! From a validated [`Table`] to the model's input matrix (row-major `[n_rows, n_inputs]`).

use std::collections::HashMap;
use std::ops::Range;

use mldeploy_model::{Column, Dtype, Feature, Table};
use serde_json::Value;

use crate::error::Error;
use crate::manifest::{label_text, Step};

/// Looks a category up among the training categories of one feature.
#[derive(Debug, Clone)]
pub(crate) struct Categories {
    by_text: HashMap<String, usize>,
    /// Numeric categories, so that `1` finds the category written `1.0`.
    numeric: Vec<(f64, usize)>,
}

impl Categories {
    pub(crate) fn new(values: &[Value]) -> Self {
        let by_text = values.iter().enumerate().map(|(i, v)| (label_text(v), i)).collect();
        let numeric = values.iter().enumerate().filter_map(|(i, v)| v.as_f64().map(|x| (x, i))).collect();
        Categories { by_text, numeric }
    }

    /// The index of `text`, or `None` for a category never seen in training.
    pub(crate) fn find(&self, text: &str) -> Option<usize> {
        if let Some(&i) = self.by_text.get(text) {
            return Some(i);
        }
        if self.numeric.is_empty() {
            return None;
        }
        let x: f64 = text.trim().parse().ok()?;
        self.numeric.iter().find(|(c, _)| *c == x).map(|&(_, i)| i)
    }

    /// The index of a JSON value (labels sent in feedback).
    pub(crate) fn find_value(&self, value: &Value) -> Option<usize> {
        match value {
            Value::String(s) => self.find(s),
            Value::Number(n) => self.find(&n.to_string()).or_else(|| {
                let x = n.as_f64()?;
                self.numeric.iter().find(|(c, _)| *c == x).map(|&(_, i)| i)
            }),
            Value::Bool(_) => self.find(&value.to_string()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Scale {
        feature: usize,
        offset: usize,
        mean: f64,
        scale: f64,
    },
    Pass {
        feature: usize,
        offset: usize,
    },
    OneHot {
        feature: usize,
        offset: usize,
        categories: Categories,
    },
    /// The category's index; NaN when missing or unknown (validation refused unknown ones
    /// where the manifest says so).
    Ordinal {
        feature: usize,
        offset: usize,
        categories: Categories,
    },
}

/// Builds the input matrix from a table, as the manifest's preprocessing says.
#[derive(Debug, Clone)]
pub(crate) struct Preprocessor {
    /// Per feature: whether its column is numeric.
    numeric: Vec<bool>,
    n_inputs: usize,
    ops: Vec<Op>,
}

impl Preprocessor {
    /// `steps` were checked against `features` by `Manifest::check`.
    pub(crate) fn new(features: &[Feature], steps: &[Step]) -> Self {
        let index = |name: &String| {
            features.iter().position(|f| &f.name == name).expect("steps were checked against the features")
        };
        let mut ops = Vec::new();
        let mut offset = 0;
        for step in steps {
            match step {
                Step::StandardScaler { columns, mean, scale } => {
                    for ((c, &m), &s) in columns.iter().zip(mean).zip(scale) {
                        ops.push(Op::Scale { feature: index(c), offset, mean: m, scale: s });
                        offset += 1;
                    }
                }
                Step::Passthrough { columns } => {
                    for c in columns {
                        ops.push(Op::Pass { feature: index(c), offset });
                        offset += 1;
                    }
                }
                Step::OneHot { columns, categories } => {
                    for (c, cats) in columns.iter().zip(categories) {
                        ops.push(Op::OneHot { feature: index(c), offset, categories: Categories::new(cats) });
                        offset += cats.len();
                    }
                }
                Step::Ordinal { columns, categories, .. } => {
                    for (c, cats) in columns.iter().zip(categories) {
                        ops.push(Op::Ordinal {
                            feature: index(c),
                            offset,
                            categories: Categories::new(cats),
                        });
                        offset += 1;
                    }
                }
            }
        }
        Preprocessor {
            numeric: features.iter().map(|f| f.dtype != Dtype::Category).collect(),
            n_inputs: offset,
            ops,
        }
    }

    /// Check that `table` has the shape the schema promises.
    pub(crate) fn check_table(&self, table: &Table) -> Result<(), Error> {
        if table.columns.len() != self.numeric.len() {
            return Err(Error::Compute(format!(
                "the table has {} columns, the model has {} features",
                table.columns.len(),
                self.numeric.len()
            )));
        }
        for (i, (column, &numeric)) in table.columns.iter().zip(&self.numeric).enumerate() {
            if matches!(column, Column::Numeric(_)) != numeric {
                return Err(Error::Compute(format!("table column {i} has the wrong type")));
            }
            if column.len() != table.n_rows {
                return Err(Error::Compute(format!(
                    "table column {i} has {} values for {} rows",
                    column.len(),
                    table.n_rows
                )));
            }
        }
        Ok(())
    }

    /// The row-major input matrix of rows `rows` of `table` (checked by
    /// [`Preprocessor::check_table`]; `rows` within its rows).
    pub(crate) fn matrix(&self, table: &Table, rows: Range<usize>) -> Vec<f64> {
        let width = self.n_inputs;
        let first = rows.start;
        let mut out = vec![0.0; rows.len() * width];
        for op in &self.ops {
            match op {
                Op::Scale { feature, offset, mean, scale } => {
                    let Column::Numeric(values) = &table.columns[*feature] else { unreachable!("checked") };
                    for (row, x) in values[rows.clone()].iter().enumerate() {
                        out[row * width + offset] = (x - mean) / scale;
                    }
                }
                Op::Pass { feature, offset } => {
                    let Column::Numeric(values) = &table.columns[*feature] else { unreachable!("checked") };
                    for (row, x) in values[rows.clone()].iter().enumerate() {
                        out[row * width + offset] = *x;
                    }
                }
                Op::OneHot { feature, offset, categories } => {
                    let column = &table.columns[*feature];
                    for row in rows.clone() {
                        // An unknown or missing category leaves the row's columns at zero.
                        if let Some(k) = column.category(row).and_then(|text| categories.find(text)) {
                            out[(row - first) * width + offset + k] = 1.0;
                        }
                    }
                }
                Op::Ordinal { feature, offset, categories } => {
                    let column = &table.columns[*feature];
                    for row in rows.clone() {
                        let code = column.category(row).and_then(|text| categories.find(text));
                        out[(row - first) * width + offset] = code.map_or(f64::NAN, |k| k as f64);
                    }
                }
            }
        }
        out
    }
}
