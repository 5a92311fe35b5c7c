//! A model loaded from a package: preprocessing, the kind's engine, labels, typed outputs and
//! feedback figures, the same for every engine.

use mldeploy_model::{
    ClassLabels, Datatype, Dtype, FeatureValues, FeedbackInput, LoadContext, Model, ModelError, ModelInfo,
    Output, PredictInput, Response, Role, RowError, ScrapedGauge, Table, Target, Tensor, TensorSpec,
};
use serde_json::{json, Value};

use crate::engine::{Engine, Prediction};
use crate::error::Error;
use crate::feedback::{fingerprint, FeedbackStore, Figures, Layout};
use crate::files::PackageFiles;
use crate::manifest::Manifest;
use crate::preprocess::{Categories, Preprocessor};

#[derive(Debug, Clone)]
enum Task {
    Regressor,
    Classifier { classes: ClassLabels, lookup: Categories },
}

/// A model loaded from a package, whatever its engine.
#[derive(Debug)]
pub struct PackageModel {
    info: ModelInfo,
    manifest: Manifest,
    task: Task,
    preprocessor: Preprocessor,
    engine: Box<dyn Engine>,
    feedback: FeedbackStore,
}

/// The output names of scikit-learn's methods, as Seldon MLServer's scikit-learn runtime names
/// its outputs too.
const PREDICT: &str = "predict";
const PREDICT_PROBA: &str = "predict_proba";

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

impl PackageModel {
    /// Build a model from a manifest and the package's other files, checking that they fit
    /// together; the feedback figures go into `ctx.shared`.
    pub(crate) fn from_parts(
        mut manifest: Manifest,
        files: &dyn PackageFiles,
        ctx: &LoadContext,
    ) -> Result<Self, Error> {
        if let Some((engine, _)) = crate::engine::find(&manifest.kind) {
            engine.complete(&mut manifest, files)?;
        }
        let checked = manifest.check()?;
        let engine = checked.engine.load(&manifest, &checked, files, ctx)?;
        let preprocessor = Preprocessor::new(&manifest.features, &checked.steps);

        let task = match &checked.classes {
            None => Task::Regressor,
            Some(classes) => Task::Classifier {
                classes: ClassLabels::new(classes.clone()),
                lookup: Categories::new(classes),
            },
        };

        let (outputs, output_tensors) = match &task {
            Task::Regressor => (
                json!({
                    "task": "regression",
                    "target": manifest.output.target.clone().unwrap_or_else(|| "y".into()),
                }),
                vec![TensorSpec { name: PREDICT.into(), datatype: Datatype::Fp64, shape: vec![-1] }],
            ),
            Task::Classifier { classes, .. } => (
                json!({ "task": "classification", "classes": classes.as_json() }),
                vec![
                    TensorSpec { name: PREDICT.into(), datatype: classes.datatype(), shape: vec![-1] },
                    TensorSpec {
                        name: PREDICT_PROBA.into(),
                        datatype: Datatype::Fp64,
                        shape: vec![-1, classes.len() as i64],
                    },
                ],
            ),
        };
        let sample =
            if manifest.sample.is_null() { default_sample(&manifest) } else { manifest.sample.clone() };
        let info = ModelInfo {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            kind: manifest.kind.clone(),
            features: manifest.features.clone(),
            outputs: outputs.clone(),
            sample,
            api_prefix: manifest.api_prefix.clone(),
            keep_api_prefix: false,
            input_tensors: Vec::new(),
            output_tensors,
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

        Ok(PackageModel { info, manifest, task, preprocessor, engine, feedback })
    }

    /// The manifest the model was loaded from.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Predict every row of `table`, one block of rows at a time (as the engine cuts them):
    /// the preprocessing builds a block's input matrix, the engine computes it, and the
    /// blocks' predictions are concatenated. So the input matrix of a large request never
    /// exists whole; the answer is the one the whole batch gets.
    pub fn predict_table(&self, table: &Table) -> Result<Prediction, Error> {
        self.preprocessor.check_table(table)?;
        let n_rows = table.n_rows;
        let mut all = Prediction { n_rows: 0, labels: None, values: None, probabilities: None };
        let mut start = 0;
        // An empty table is one empty block: the engine says what an empty prediction holds.
        loop {
            let end = self.engine.block_end(n_rows, start).max(start + 1).min(n_rows);
            let inputs = self.preprocessor.matrix(table, start..end);
            let block = self.engine.predict(inputs, end - start, n_rows)?;
            if start == 0 && end >= n_rows {
                // One block (most requests): its prediction is the answer, nothing to join.
                return Ok(block);
            }
            all.append(block, n_rows);
            start = end;
            if start >= n_rows {
                return Ok(all);
            }
        }
    }

    /// The typed outputs of a prediction: `predict` (labels or values) and, for classifiers,
    /// `predict_proba`, as scikit-learn's methods of those names answer.
    pub fn outputs(&self, p: Prediction) -> Vec<Output> {
        match &self.task {
            Task::Regressor => vec![Output {
                name: PREDICT.into(),
                role: Role::Values,
                tensor: Tensor::fp64(p.values.unwrap_or_default()),
            }],
            Task::Classifier { classes, .. } => vec![
                Output {
                    name: PREDICT.into(),
                    role: Role::Labels,
                    tensor: classes.tensor(p.labels.unwrap_or_default()),
                },
                Output {
                    name: PREDICT_PROBA.into(),
                    role: Role::Probabilities,
                    tensor: Tensor::fp64_matrix(p.probabilities.unwrap_or_default(), classes.len()),
                },
            ],
        }
    }

    /// The figures of all feedback recorded in the shared slots (every worker's), or `None`
    /// when another model has taken the slots over.
    pub fn feedback_figures(&self) -> Option<Figures> {
        self.feedback.figures()
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

impl Model for PackageModel {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn predict(&self, input: &PredictInput) -> Result<Response, ModelError> {
        let table = table_of(input.table.as_ref())?;
        let prediction = self.predict_table(table)?;
        Ok(Response { target: Target::outputs(self.outputs(prediction)), ..Response::default() })
    }

    fn reads_body(&self) -> bool {
        false
    }

    fn supports_feedback(&self) -> bool {
        true
    }

    fn feedback(&self, input: &FeedbackInput) -> Result<Response, ModelError> {
        let truth = match &self.task {
            Task::Classifier { classes, lookup } => Truth::Classes { classes, lookup },
            Task::Regressor => Truth::Values,
        };
        take_feedback(&self.feedback, truth, input, |table| Ok(self.predict_table(table)?))
    }

    fn scrape_gauges(&self) -> Vec<ScrapedGauge> {
        match self.feedback.figures() {
            Some(figures) => feedback_gauges(&self.info, &figures),
            None => Vec::new(),
        }
    }
}

/// The gauges `/metrics` shows for a model's feedback figures.
pub(crate) fn feedback_gauges(info: &ModelInfo, figures: &Figures) -> Vec<ScrapedGauge> {
    let labels =
        vec![("model".to_string(), info.name.clone()), ("version".to_string(), info.version.clone())];
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

/// What feedback labels are compared as.
pub(crate) enum Truth<'a> {
    /// Class labels, looked up among the classes.
    Classes { classes: &'a ClassLabels, lookup: &'a Categories },
    /// Numbers.
    Values,
}

/// Record a feedback call's labels in `store` and answer with the figures of every worker;
/// `predict` gives the labels (class indexes) or values when the call does not send them.
pub(crate) fn take_feedback(
    store: &FeedbackStore,
    truth: Truth<'_>,
    input: &FeedbackInput,
    predict: impl FnOnce(&Table) -> Result<Prediction, ModelError>,
) -> Result<Response, ModelError> {
    let table = table_of(input.table.as_ref())?;
    let y_true = per_row("y_true", &input.y_true, table)?;
    let given = match &input.y_predict {
        Some(v) if !v.is_null() => Some(per_row("y_predict", v, table)?),
        _ => None,
    };
    let predicted = match given {
        Some(_) => None,
        None => Some(predict(table)?),
    };
    let recorded = match truth {
        Truth::Classes { lookup, classes } => {
            let class_of = |field: &str, i: usize, v: &Value| {
                lookup.find_value(v).ok_or_else(|| {
                    let row = table.source_row(i);
                    invalid(
                        field,
                        Some(row),
                        "unknown_label",
                        format!(
                            "row {row}: {field} {v} is not one of the classes {}",
                            Value::from(classes.as_json().to_vec())
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
                (None, Some(p)) => p.labels.iter().flatten().map(|&k| k as usize).collect(),
                (None, None) => unreachable!("predicted when not given"),
            };
            let pairs: Vec<(usize, usize)> = truth.into_iter().zip(guess).collect();
            store.record_classes(&pairs)
        }
        Truth::Values => {
            let value_of = |field: &str, i: usize, v: &Value| {
                let x = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                x.filter(|x| x.is_finite()).ok_or_else(|| {
                    let row = table.source_row(i);
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
            store.record_values(&pairs)
        }
    };
    let figures = if recorded { store.figures() } else { None };
    let mut target = json!({ "feedback_rows": table.n_rows, "recorded": recorded });
    if let Some(f) = &figures {
        target["total_feedback_rows"] = json!(f.rows());
    }
    Ok(Response {
        target: Target::Json(target),
        list_metrics: figures.map(|f| f.metric_values()).unwrap_or_default(),
        ..Response::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mldeploy_model::{Column, Values};

    fn iris_rows(n_rows: usize) -> Table {
        let column = |base: f64, spread: f64, step: usize| {
            Column::Numeric(
                (0..n_rows).map(|i| base + spread * ((i * step % 1000) as f64 / 1000.0)).collect(),
            )
        };
        Table {
            n_rows,
            columns: vec![
                column(4.3, 3.6, 7),
                column(2.0, 2.4, 13),
                column(1.0, 5.9, 29),
                column(0.1, 2.4, 31),
            ],
            source_rows: (0..n_rows).collect(),
        }
    }

    /// Predicted block by block, a table gets the bits its whole input matrix gets in one call
    /// (the demo's dense engine cuts large batches into candle blocks of 87,381 rows, and
    /// those into parts of 4,096).
    #[test]
    fn blocks_predict_as_the_whole_matrix() {
        let model = crate::load_demo(&LoadContext::private()).unwrap();
        for n_rows in [0, 1, 5000, 87_381, 87_382, 200_000] {
            let table = iris_rows(n_rows);
            let blocked = model.predict_table(&table).unwrap();
            let whole =
                model.engine.predict(model.preprocessor.matrix(&table, 0..n_rows), n_rows, n_rows).unwrap();
            assert_eq!(blocked.n_rows, n_rows);
            assert_eq!(blocked.labels, whole.labels, "{n_rows} rows");
            let bits =
                |p: &Prediction| p.probabilities.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&blocked), bits(&whole), "{n_rows} rows");
            let outputs = model.outputs(blocked);
            let Values::Classes(labels) = &outputs[0].tensor.values else { panic!("labels by index") };
            assert_eq!(Some(labels.indexes()), whole.labels.as_deref());
            assert_eq!(outputs[0].tensor.shape, vec![n_rows]);
            assert_eq!(outputs[1].tensor.shape, vec![n_rows, 3]);
        }
    }
}
