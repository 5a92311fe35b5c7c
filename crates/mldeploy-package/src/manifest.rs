//! `mldeploy.json`: the manifest of a model package, and its checks.

use std::collections::HashSet;

use mldeploy_model::{Dtype, Feature, FeatureValues};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::{self, EngineKinds, Task};
use crate::error::Error;

/// The `format` value of packages this crate reads.
pub const PACKAGE_FORMAT: &str = "mldeploy-package/1";

/// The manifest of a model package, as stored in `mldeploy.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Package format and version: `mldeploy-package/1`.
    pub format: String,
    /// Model name (an ONNX package may leave it out: the directory's name).
    #[serde(default)]
    pub name: String,
    /// Model version (an ONNX package may leave it out: the graph's).
    #[serde(default)]
    pub version: String,
    /// Model kind, which picks the engine: `linear_regression`, `logistic_regression`,
    /// `mlp_classifier`, `mlp_regressor`, ... (docs/model-package.md lists them).
    pub kind: String,
    /// Where the model's ml-deploy routes live when the server serves several models
    /// (default `/<name>/api/ml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_prefix: Option<String>,
    /// Input features in the order clients send them (the request schema). An engine whose
    /// model file names its inputs fills them in when they are left out.
    #[serde(default)]
    pub features: Vec<Feature>,
    /// How the features become the model's input columns; the steps' outputs are placed side
    /// by side in this order. Empty: every feature as it is.
    #[serde(default)]
    pub preprocessing: Vec<Step>,
    /// Dense kinds: the number of dense layers in `model.safetensors` (`layers.0` ..
    /// `layers.{n-1}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<usize>,
    /// Kinds computed from one model file (tree ensembles): its name in the package (each kind
    /// has a default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_file: Option<String>,
    /// Hidden-layer activation of an MLP: `identity`, `logistic`, `tanh` or `relu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// What the model predicts.
    #[serde(default)]
    pub output: Output,
    /// A request body that predicts successfully.
    #[serde(default)]
    pub sample: Value,
    /// Where the package came from (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Value>,
}

/// One preprocessing step: it reads some features and produces input columns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Step {
    /// `(x - mean) / scale` per feature, as sklearn's StandardScaler.
    StandardScaler {
        /// The numeric features scaled.
        columns: Vec<String>,
        /// Mean per feature.
        mean: Vec<f64>,
        /// Scale per feature (non-zero).
        scale: Vec<f64>,
    },
    /// One column per training category, 1.0 for the row's category, all zeros for a category
    /// not seen in training (sklearn's `handle_unknown="ignore"`).
    OneHot {
        /// The category features encoded.
        columns: Vec<String>,
        /// The training categories of each feature, in column order.
        categories: Vec<Vec<Value>>,
    },
    /// The numeric features as they are.
    Passthrough {
        /// The features.
        columns: Vec<String>,
    },
    /// One column per category feature holding the index of the row's category in the list,
    /// as a number; a missing category is NaN, and so is an unknown one with
    /// `unknown: "missing"` (with `unknown: "error"` the feature must list its categories in
    /// `values`, so that validation refuses others).
    Ordinal {
        /// The category features encoded.
        columns: Vec<String>,
        /// The categories of each feature, in code order.
        categories: Vec<Vec<Value>>,
        /// What an unknown category becomes.
        #[serde(default)]
        unknown: Unknown,
    },
}

/// What the `ordinal` step makes of a category not in its list.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unknown {
    /// A missing value (NaN).
    #[default]
    Missing,
    /// Refused by validation (the feature lists its categories).
    Error,
}

impl Step {
    fn type_name(&self) -> &'static str {
        match self {
            Step::StandardScaler { .. } => "standard_scaler",
            Step::OneHot { .. } => "one_hot",
            Step::Passthrough { .. } => "passthrough",
            Step::Ordinal { .. } => "ordinal",
        }
    }

    fn columns(&self) -> &[String] {
        match self {
            Step::StandardScaler { columns, .. }
            | Step::OneHot { columns, .. }
            | Step::Passthrough { columns }
            | Step::Ordinal { columns, .. } => columns,
        }
    }

    /// Whether the step reads category features (else numeric ones).
    fn reads_categories(&self) -> bool {
        matches!(self, Step::OneHot { .. } | Step::Ordinal { .. })
    }
}

/// What the model predicts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// A classifier's class labels (strings, numbers or booleans), in the order of its
    /// probability columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<Value>>,
    /// A regressor's target name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// A manifest whose parts have been checked against each other.
pub(crate) struct Checked {
    /// The engine that computes the kind.
    pub engine: &'static dyn EngineKinds,
    /// The preprocessing steps (an empty list replaced by a passthrough of every feature).
    pub steps: Vec<Step>,
    /// Width of the model's input matrix.
    pub n_inputs: usize,
    /// What each step contributes to the input width, for messages.
    pub width_breakdown: String,
    /// Class labels of a classifier.
    pub classes: Option<Vec<Value>>,
}

/// The text a category or label is matched by: a string as it is, anything else as its JSON
/// text (as the request validation turns category values into text).
pub(crate) fn label_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn is_label(value: &Value) -> bool {
    matches!(value, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

pub(crate) fn distinct_labels(what: &str, labels: &[Value]) -> Result<(), Error> {
    let mut seen = HashSet::new();
    for label in labels {
        if !is_label(label) {
            return Err(Error::Manifest(format!("{what}: {label} is not a string, number or boolean")));
        }
        if !seen.insert(label_text(label)) {
            return Err(Error::Manifest(format!("{what}: {label} appears twice")));
        }
    }
    Ok(())
}

/// A step's category lists must be one per column.
fn one_list_per_column(what: &str, columns: &[String], categories: &[Vec<Value>]) -> Result<(), Error> {
    if categories.len() != columns.len() {
        return Err(Error::Manifest(format!(
            "{what} has {} columns but {} category lists",
            columns.len(),
            categories.len()
        )));
    }
    Ok(())
}

impl Manifest {
    /// Parse `mldeploy.json`.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, Error> {
        serde_json::from_slice(bytes).map_err(|e| Error::Manifest(e.to_string()))
    }

    /// Check the manifest on its own (the weights are checked against it later).
    pub(crate) fn check(&self) -> Result<Checked, Error> {
        let bad = |m: String| Err(Error::Manifest(m));
        if self.format != PACKAGE_FORMAT {
            return bad(format!(
                "unsupported package format {:?} (this mldeploy reads {PACKAGE_FORMAT:?})",
                self.format
            ));
        }
        if self.name.trim().is_empty() || self.version.trim().is_empty() {
            return bad("model name and version must not be empty".into());
        }
        if self.kind == engine::ONNX_KIND {
            return bad("kind onnx is a graph, not a tabular package: load it with `load_model`".into());
        }
        let Some((engine, task)) = engine::find(&self.kind) else {
            return bad(format!(
                "unknown model kind {:?} (known: {})",
                self.kind,
                engine::known_kinds().join(", ")
            ));
        };
        engine.check(self, &self.kind)?;
        let kind = self.kind.as_str();

        if self.features.is_empty() {
            return bad("no features".into());
        }
        let mut names = HashSet::new();
        for f in &self.features {
            if !names.insert(f.name.as_str()) {
                return bad(format!("feature {:?} is listed twice", f.name));
            }
        }

        let classes = match (task == Task::Classification, &self.output.classes) {
            (true, Some(classes)) => {
                if classes.len() < 2 {
                    return bad(format!(
                        "output.classes has {} class(es); a classifier needs 2 or more",
                        classes.len()
                    ));
                }
                distinct_labels("output.classes", classes)?;
                Some(classes.clone())
            }
            (true, None) => return bad(format!("kind {kind} needs output.classes")),
            (false, Some(_)) => {
                return bad(format!("kind {kind} is a regressor: output.classes is not allowed"))
            }
            (false, None) => None,
        };

        let steps = if self.preprocessing.is_empty() {
            vec![Step::Passthrough { columns: self.features.iter().map(|f| f.name.clone()).collect() }]
        } else {
            self.preprocessing.clone()
        };
        let mut n_inputs = 0;
        let mut breakdown = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let what = format!("preprocessing step {i} ({})", step.type_name());
            let columns = step.columns();
            if columns.is_empty() {
                return bad(format!("{what} has no columns"));
            }
            for column in columns {
                let Some(feature) = self.features.iter().find(|f| &f.name == column) else {
                    return bad(format!("{what} names {column:?}, which is not a feature"));
                };
                let numeric = feature.dtype != Dtype::Category;
                let wants_numeric = !step.reads_categories();
                if numeric != wants_numeric {
                    let need = if wants_numeric { "a float, int or bool" } else { "a category" };
                    return bad(format!(
                        "{what} needs {need} feature but {column:?} is declared {:?}",
                        feature.dtype
                    ));
                }
            }
            let width = match step {
                Step::StandardScaler { columns, mean, scale } => {
                    if mean.len() != columns.len() || scale.len() != columns.len() {
                        return bad(format!(
                            "{what} has {} columns but {} means and {} scales",
                            columns.len(),
                            mean.len(),
                            scale.len()
                        ));
                    }
                    if let Some((c, _)) =
                        columns.iter().zip(scale).find(|(_, s)| !s.is_finite() || **s == 0.0)
                    {
                        return bad(format!("{what}: the scale of {c:?} must be finite and not zero"));
                    }
                    if let Some((c, _)) = columns.iter().zip(mean).find(|(_, m)| !m.is_finite()) {
                        return bad(format!("{what}: the mean of {c:?} must be finite"));
                    }
                    columns.len()
                }
                Step::OneHot { columns, categories } => {
                    one_list_per_column(&what, columns, categories)?;
                    for (column, cats) in columns.iter().zip(categories) {
                        if cats.is_empty() {
                            return bad(format!("{what}: feature {column:?} has no categories"));
                        }
                        distinct_labels(&format!("{what}, categories of {column:?}"), cats)?;
                        breakdown.push(format!("{column}: {} one-hot", cats.len()));
                    }
                    categories.iter().map(Vec::len).sum()
                }
                Step::Passthrough { columns } => columns.len(),
                Step::Ordinal { columns, categories, unknown } => {
                    one_list_per_column(&what, columns, categories)?;
                    for (column, cats) in columns.iter().zip(categories) {
                        distinct_labels(&format!("{what}, categories of {column:?}"), cats)?;
                        let feature = self.features.iter().find(|f| &f.name == column);
                        let listed =
                            feature.is_some_and(|f| matches!(f.values, Some(FeatureValues::Categories(_))));
                        if *unknown == Unknown::Error && !listed {
                            return bad(format!(
                                "{what}: unknown categories of {column:?} are refused, so the feature must list its \
                                 categories in `values`"
                            ));
                        }
                    }
                    columns.len()
                }
            };
            if !step.reads_categories() {
                let label =
                    if matches!(step, Step::StandardScaler { .. }) { "scaled" } else { "passed through" };
                breakdown.push(format!("{}: {width} {label}", columns.join(", ")));
            }
            n_inputs += width;
        }

        Ok(Checked { engine, steps, n_inputs, width_breakdown: breakdown.join("; "), classes })
    }
}
