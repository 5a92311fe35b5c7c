//! `mldeploy.json`: the manifest of a model package, and its checks.

use std::collections::HashSet;

use mldeploy_model::{Dtype, Feature};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;

/// The `format` value of packages this crate reads.
pub const PACKAGE_FORMAT: &str = "mldeploy-package/1";

/// The manifest of a model package, as stored in `mldeploy.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Package format and version: `mldeploy-package/1`.
    pub format: String,
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Model kind: `linear_regression`, `logistic_regression`, `mlp_classifier` or
    /// `mlp_regressor`.
    pub kind: String,
    /// Input features in the order clients send them (the request schema).
    pub features: Vec<Feature>,
    /// How the features become the model's input columns; the steps' outputs are placed side
    /// by side in this order. Empty: every feature as it is.
    #[serde(default)]
    pub preprocessing: Vec<Step>,
    /// Number of dense layers in `model.safetensors` (`layers.0` .. `layers.{n-1}`).
    pub layers: usize,
    /// Hidden-layer activation of an MLP: `identity`, `logistic`, `tanh` or `relu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// What the model predicts.
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
}

impl Step {
    fn type_name(&self) -> &'static str {
        match self {
            Step::StandardScaler { .. } => "standard_scaler",
            Step::OneHot { .. } => "one_hot",
            Step::Passthrough { .. } => "passthrough",
        }
    }

    fn columns(&self) -> &[String] {
        match self {
            Step::StandardScaler { columns, .. }
            | Step::OneHot { columns, .. }
            | Step::Passthrough { columns } => columns,
        }
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

/// The built-in model kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Ordinary least squares: one linear layer, identity output.
    LinearRegression,
    /// One linear layer; sigmoid output for two classes, softmax for more.
    LogisticRegression,
    /// Dense layers with a hidden activation; logistic output for two classes, softmax for more.
    MlpClassifier,
    /// Dense layers with a hidden activation; identity output.
    MlpRegressor,
}

impl Kind {
    /// Every kind, as named in manifests.
    pub const NAMES: [&'static str; 4] =
        ["linear_regression", "logistic_regression", "mlp_classifier", "mlp_regressor"];

    /// Parse a manifest's `kind`.
    pub fn parse(name: &str) -> Option<Kind> {
        match name {
            "linear_regression" => Some(Kind::LinearRegression),
            "logistic_regression" => Some(Kind::LogisticRegression),
            "mlp_classifier" => Some(Kind::MlpClassifier),
            "mlp_regressor" => Some(Kind::MlpRegressor),
            _ => None,
        }
    }

    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::LinearRegression => "linear_regression",
            Kind::LogisticRegression => "logistic_regression",
            Kind::MlpClassifier => "mlp_classifier",
            Kind::MlpRegressor => "mlp_regressor",
        }
    }

    /// Whether the kind predicts classes.
    pub fn is_classifier(self) -> bool {
        matches!(self, Kind::LogisticRegression | Kind::MlpClassifier)
    }

    fn is_mlp(self) -> bool {
        matches!(self, Kind::MlpClassifier | Kind::MlpRegressor)
    }
}

/// Hidden-layer activations of MLPs (sklearn's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `f(x) = x`.
    Identity,
    /// `f(x) = 1 / (1 + exp(-x))`.
    Logistic,
    /// `f(x) = tanh(x)`.
    Tanh,
    /// `f(x) = max(x, 0)`.
    Relu,
}

impl Activation {
    /// Every activation, as named in manifests.
    pub const NAMES: [&'static str; 4] = ["identity", "logistic", "tanh", "relu"];

    /// Parse a manifest's `activation`.
    pub fn parse(name: &str) -> Option<Activation> {
        match name {
            "identity" => Some(Activation::Identity),
            "logistic" => Some(Activation::Logistic),
            "tanh" => Some(Activation::Tanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// A manifest whose parts have been checked against each other.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub kind: Kind,
    /// The MLP hidden activation (`Identity` for the linear kinds, which have no hidden layer).
    pub activation: Activation,
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

fn distinct_labels(what: &str, labels: &[Value]) -> Result<(), Error> {
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
        let Some(kind) = Kind::parse(&self.kind) else {
            return bad(format!("unknown model kind {:?} (known: {})", self.kind, Kind::NAMES.join(", ")));
        };
        let activation = match (&self.activation, kind.is_mlp()) {
            (Some(name), true) => Activation::parse(name).ok_or_else(|| {
                Error::Manifest(format!(
                    "unknown activation {name:?} (known: {})",
                    Activation::NAMES.join(", ")
                ))
            })?,
            (None, true) => return bad(format!("kind {} needs an activation", kind.as_str())),
            (Some(_), false) => return bad(format!("kind {} takes no activation", kind.as_str())),
            (None, false) => Activation::Identity,
        };
        if self.layers == 0 {
            return bad("layers must be at least 1".into());
        }
        if !kind.is_mlp() && self.layers != 1 {
            return bad(format!("kind {} has exactly 1 layer, not {}", kind.as_str(), self.layers));
        }

        if self.features.is_empty() {
            return bad("no features".into());
        }
        let mut names = HashSet::new();
        for f in &self.features {
            if !names.insert(f.name.as_str()) {
                return bad(format!("feature {:?} is listed twice", f.name));
            }
        }

        let classes = match (kind.is_classifier(), &self.output.classes) {
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
            (true, None) => return bad(format!("kind {} needs output.classes", kind.as_str())),
            (false, Some(_)) => {
                return bad(format!("kind {} is a regressor: output.classes is not allowed", kind.as_str()))
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
                let wants_numeric = !matches!(step, Step::OneHot { .. });
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
                    if categories.len() != columns.len() {
                        return bad(format!(
                            "{what} has {} columns but {} category lists",
                            columns.len(),
                            categories.len()
                        ));
                    }
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
            };
            if !matches!(step, Step::OneHot { .. }) {
                let label =
                    if matches!(step, Step::StandardScaler { .. }) { "scaled" } else { "passed through" };
                breakdown.push(format!("{}: {width} {label}", columns.join(", ")));
            }
            n_inputs += width;
        }

        Ok(Checked { kind, activation, steps, n_inputs, width_breakdown: breakdown.join("; "), classes })
    }
}
