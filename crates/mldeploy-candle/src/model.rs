//! The built-in model: preprocessing, the network, labels, responses and feedback.

use mldeploy_model::{
    Column, Dtype, FeatureValues, FeedbackInput, LoadContext, Model, ModelError, ModelInfo, PredictInput,
    Response, RowError, ScrapedGauge, Table,
};
use serde_json::{json, Value};

use crate::error::Error;
use crate::feedback::{fingerprint, FeedbackStore, Figures, Layout};
use crate::manifest::{Kind, Manifest};
use crate::network::Network;
use crate::package::build_network;
use crate::preprocess::{Categories, Preprocessor};

/// How a classifier turns the last layer into a class, exactly as sklearn's `predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelRule {
    /// LogisticRegression, two classes: the second class when the score is above 0.
    ScoreSign,
    /// LogisticRegression, more classes: the highest score (first on ties).
    ScoreArgmax,
    /// MLPClassifier, two classes: the second class when its probability is above 0.5.
    ProbabilityThreshold,
    /// MLPClassifier, more classes: the highest probability (first on ties).
    ProbabilityArgmax,
}

#[derive(Debug, Clone)]
enum Task {
    Regressor,
    Classifier { classes: Vec<Value>, lookup: Categories, rule: LabelRule },
}

/// What the model computed for a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Number of rows.
    pub n_rows: usize,
    /// Classifiers: the index of the predicted class of each row.
    pub labels: Option<Vec<usize>>,
    /// Regressors: the predicted value of each row.
    pub values: Option<Vec<f64>>,
    /// Classifiers: row-major `[n_rows, n_classes]` class probabilities.
    pub probabilities: Option<Vec<f64>>,
}

/// A model loaded from a package: one of the built-in kinds.
#[derive(Debug)]
pub struct BuiltinModel {
    info: ModelInfo,
    manifest: Manifest,
    task: Task,
    preprocessor: Preprocessor,
    network: Network,
    feedback: FeedbackStore,
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best
}

fn number(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)
}

/// A sample request when the manifest has none: one row of typical values.
fn default_sample(manifest: &Manifest) -> Value {
    let mut names = Vec::new();
    let mut row = Vec::new();
    for f in &manifest.features {
        names.push(Value::String(f.name.clone()));
        let value = match (&f.values, f.dtype) {
            (Some(FeatureValues::Categories(c)), _) if !c.is_empty() => c[0].clone(),
            (Some(FeatureValues::Range { min: Some(m), .. }), Dtype::Float | Dtype::Int)
            | (Some(FeatureValues::Range { min: None, max: Some(m) }), Dtype::Float | Dtype::Int) => {
                number(*m)
            }
            (_, Dtype::Category) => manifest
                .preprocessing
                .iter()
                .find_map(|s| match s {
                    crate::manifest::Step::OneHot { columns, categories } => {
                        columns.iter().position(|c| c == &f.name).map(|i| categories[i][0].clone())
                    }
                    _ => None,
                })
                .unwrap_or_else(|| Value::String(String::new())),
            (_, Dtype::Bool) => Value::Bool(false),
            (_, Dtype::Int) => json!(0),
            (_, Dtype::Float) => json!(0.0),
        };
        row.push(value);
    }
    json!({ "data": [row], "names": names })
}

impl BuiltinModel {
    /// Build a model from a manifest and the bytes of its safetensors file, checking that they
    /// fit together; the feedback figures go into `ctx.shared`.
    pub fn from_parts(manifest: Manifest, weights: &[u8], ctx: &LoadContext) -> Result<Self, Error> {
        let checked = manifest.check()?;
        let network = build_network(&manifest, &checked, weights)?;
        let preprocessor = Preprocessor::new(&manifest.features, &checked.steps);
        debug_assert_eq!(preprocessor.n_inputs(), network.n_inputs);

        let task = match &checked.classes {
            None => Task::Regressor,
            Some(classes) => {
                let rule = match (checked.kind, classes.len()) {
                    (Kind::LogisticRegression, 2) => LabelRule::ScoreSign,
                    (Kind::LogisticRegression, _) => LabelRule::ScoreArgmax,
                    (_, 2) => LabelRule::ProbabilityThreshold,
                    _ => LabelRule::ProbabilityArgmax,
                };
                Task::Classifier { classes: classes.clone(), lookup: Categories::new(classes), rule }
            }
        };

        let outputs = match &task {
            Task::Regressor => json!({
                "task": "regression",
                "target": manifest.output.target.clone().unwrap_or_else(|| "y".into()),
            }),
            Task::Classifier { classes, .. } => json!({ "task": "classification", "classes": classes }),
        };
        let sample =
            if manifest.sample.is_null() { default_sample(&manifest) } else { manifest.sample.clone() };
        let info = ModelInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            kind: checked.kind.as_str().to_string(),
            features: manifest.features.clone(),
            outputs: outputs.clone(),
            sample,
        };

        let layout = match &task {
            Task::Regressor => Layout::Regressor,
            Task::Classifier { classes, .. } => Layout::Classifier { classes: classes.len() },
        };
        let print = fingerprint(&[
            "mldeploy-feedback/1",
            &manifest.name,
            &manifest.version,
            &manifest.kind,
            &outputs.to_string(),
        ]);
        let feedback = FeedbackStore::attach(ctx.shared, print, layout)?;

        Ok(BuiltinModel { info, manifest, task, preprocessor, network, feedback })
    }

    /// The manifest the model was loaded from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Predict every row of `table` (one matrix product per layer for the whole table).
    pub fn predict_table(&self, table: &Table) -> Result<Prediction, Error> {
        self.preprocessor.check_table(table)?;
        let n = table.n_rows;
        let inputs = self.preprocessor.matrix(table);
        let forward = self.network.forward(inputs, n)?;
        let Task::Classifier { classes, rule, .. } = &self.task else {
            return Ok(Prediction {
                n_rows: n,
                labels: None,
                values: Some(forward.scores),
                probabilities: None,
            });
        };
        let k = classes.len();
        let activated = forward.activated.unwrap_or_default();
        let probabilities: Vec<f64> =
            if k == 2 { activated.iter().flat_map(|&p| [1.0 - p, p]).collect() } else { activated };
        let labels = match rule {
            LabelRule::ScoreSign => forward.scores.iter().map(|&s| usize::from(s > 0.0)).collect(),
            LabelRule::ScoreArgmax => forward.scores.chunks_exact(k).map(argmax).collect(),
            LabelRule::ProbabilityThreshold => {
                probabilities.chunks_exact(2).map(|p| usize::from(p[1] > 0.5)).collect()
            }
            LabelRule::ProbabilityArgmax => probabilities.chunks_exact(k).map(argmax).collect(),
        };
        Ok(Prediction { n_rows: n, labels: Some(labels), values: None, probabilities: Some(probabilities) })
    }

    /// The figures of all feedback recorded in the shared slots (every worker's), or `None`
    /// when another model has taken the slots over.
    pub fn feedback_figures(&self) -> Option<Figures> {
        self.feedback.figures()
    }

    /// The rows of `table` as arrays in schema order, for a response's `input` (ml-deploy
    /// echoed its `X` the same way). Arrays rather than records: the feature names are in the
    /// metadata once, not repeated in every row of every answer and event.
    fn rows(&self, table: &Table) -> Value {
        let features = &self.manifest.features;
        let rows = (0..table.n_rows)
            .map(|r| {
                let row: Vec<Value> = features
                    .iter()
                    .zip(&table.columns)
                    .map(|(f, column)| match column {
                        Column::Category(v) => Value::String(v[r].clone()),
                        Column::Numeric(v) => {
                            let x = v[r];
                            match f.dtype {
                                Dtype::Bool => Value::Bool(x != 0.0),
                                Dtype::Int if x.fract() == 0.0 && x.abs() < 9.0e15 => json!(x as i64),
                                _ => number(x),
                            }
                        }
                    })
                    .collect();
                Value::Array(row)
            })
            .collect();
        Value::Array(rows)
    }

    fn target(&self, p: &Prediction) -> Value {
        match &self.task {
            Task::Regressor => {
                json!({ "y_predicted": p.values.as_deref().unwrap_or_default().iter().map(|&x| number(x)).collect::<Vec<_>>() })
            }
            Task::Classifier { classes, .. } => {
                let k = classes.len();
                let labels: Vec<Value> =
                    p.labels.as_deref().unwrap_or_default().iter().map(|&i| classes[i].clone()).collect();
                let probabilities: Vec<Value> = p
                    .probabilities
                    .as_deref()
                    .unwrap_or_default()
                    .chunks_exact(k)
                    .map(|row| Value::Array(row.iter().map(|&x| number(x)).collect()))
                    .collect();
                json!({ "y_predicted": labels, "probabilities": probabilities, "classes": classes })
            }
        }
    }
}

fn table_of(table: Option<&Table>) -> Result<&Table, ModelError> {
    table.ok_or_else(|| ModelError::BadRequest("the request has no data rows".into()))
}

fn invalid(field: &str, row: Option<usize>, reason: &str, message: String) -> ModelError {
    ModelError::Invalid {
        message: message.clone(),
        errors: vec![RowError { row, feature: Some(field.into()), reason: reason.into(), message }],
    }
}

/// The per-row values of `y_true` / `y_predict` for the rows of `table`. They are indexed like
/// the request's rows (rows skipped by validation leave gaps) unless there is exactly one
/// value per table row; a single row may send a bare value.
fn per_row<'a>(field: &str, value: &'a Value, table: &Table) -> Result<Vec<&'a Value>, ModelError> {
    let values: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Null => return Err(invalid(field, None, "missing_feature", format!("{field} is missing"))),
        single => vec![single],
    };
    if values.len() == table.n_rows {
        return Ok(values);
    }
    match table.source_rows.iter().max() {
        Some(&last) if table.source_rows.len() == table.n_rows && last < values.len() => {
            Ok(table.source_rows.iter().map(|&r| values[r]).collect())
        }
        _ => Err(invalid(
            field,
            None,
            "row_length",
            format!("{field} has {} values for {} rows", values.len(), table.n_rows),
        )),
    }
}

fn source_row(table: &Table, i: usize) -> usize {
    table.source_rows.get(i).copied().unwrap_or(i)
}

impl Model for BuiltinModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn predict(&self, input: &PredictInput) -> Result<Response, ModelError> {
        let table = table_of(input.table.as_ref())?;
        let prediction = self.predict_table(table)?;
        Ok(Response {
            target: self.target(&prediction),
            input: self.rows(table),
            list_metrics: vec![],
            topics: vec![],
        })
    }

    fn supports_feedback(&self) -> bool {
        true
    }

    fn feedback(&self, input: &FeedbackInput) -> Result<Response, ModelError> {
        let table = table_of(input.table.as_ref())?;
        let y_true = per_row("y_true", &input.y_true, table)?;
        let given = match &input.y_predict {
            Some(v) if !v.is_null() => Some(per_row("y_predict", v, table)?),
            _ => None,
        };
        let predicted = match given {
            Some(_) => None,
            None => Some(self.predict_table(table)?),
        };
        let recorded = match &self.task {
            Task::Classifier { lookup, classes, .. } => {
                let class_of = |field: &str, i: usize, v: &Value| {
                    lookup.find_value(v).ok_or_else(|| {
                        let row = source_row(table, i);
                        invalid(
                            field,
                            Some(row),
                            "unknown_label",
                            format!(
                                "row {row}: {field} {v} is not one of the classes {}",
                                Value::from(classes.clone())
                            ),
                        )
                    })
                };
                let truth = y_true
                    .iter()
                    .enumerate()
                    .map(|(i, v)| class_of("y_true", i, v))
                    .collect::<Result<Vec<_>, _>>()?;
                let guess = match (&given, &predicted) {
                    (Some(values), _) => values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| class_of("y_predict", i, v))
                        .collect::<Result<Vec<_>, _>>()?,
                    (None, Some(p)) => p.labels.clone().unwrap_or_default(),
                    (None, None) => unreachable!("predicted when not given"),
                };
                let pairs: Vec<(usize, usize)> = truth.into_iter().zip(guess).collect();
                self.feedback.record_classes(&pairs)
            }
            Task::Regressor => {
                let value_of = |field: &str, i: usize, v: &Value| {
                    let x = match v {
                        Value::Number(n) => n.as_f64(),
                        Value::String(s) => s.trim().parse::<f64>().ok(),
                        _ => None,
                    };
                    x.filter(|x| x.is_finite()).ok_or_else(|| {
                        let row = source_row(table, i);
                        invalid(
                            field,
                            Some(row),
                            "wrong_type",
                            format!("row {row}: {field} {v} is not a finite number"),
                        )
                    })
                };
                let truth = y_true
                    .iter()
                    .enumerate()
                    .map(|(i, v)| value_of("y_true", i, v))
                    .collect::<Result<Vec<_>, _>>()?;
                let guess = match (&given, &predicted) {
                    (Some(values), _) => values
                        .iter()
                        .enumerate()
                        .map(|(i, v)| value_of("y_predict", i, v))
                        .collect::<Result<Vec<_>, _>>()?,
                    (None, Some(p)) => p.values.clone().unwrap_or_default(),
                    (None, None) => unreachable!("predicted when not given"),
                };
                let pairs: Vec<(f64, f64)> = truth.into_iter().zip(guess).collect();
                self.feedback.record_values(&pairs)
            }
        };
        let figures = if recorded { self.feedback.figures() } else { None };
        let mut target = json!({ "feedback_rows": table.n_rows, "recorded": recorded });
        if let Some(f) = &figures {
            target["total_feedback_rows"] = json!(f.rows());
        }
        Ok(Response {
            target,
            input: self.rows(table),
            list_metrics: figures.map(|f| f.metric_values()).unwrap_or_default(),
            topics: vec![],
        })
    }

    fn scrape_gauges(&self) -> Vec<ScrapedGauge> {
        let Some(figures) = self.feedback.figures() else { return Vec::new() };
        let labels = vec![
            ("model".to_string(), self.info.name.clone()),
            ("version".to_string(), self.info.version.clone()),
        ];
        let mut gauges = vec![ScrapedGauge {
            name: "mldeploy_feedback_rows".into(),
            help: "Feedback rows received by every worker.".into(),
            labels: labels.clone(),
            value: figures.rows() as f64,
        }];
        for (_, suffix, help, value) in figures.named() {
            gauges.push(ScrapedGauge {
                name: format!("mldeploy_feedback_{suffix}"),
                help: help.into(),
                labels: labels.clone(),
                value,
            });
        }
        gauges
    }
}
