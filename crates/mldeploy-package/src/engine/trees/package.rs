//! The tree-ensemble kinds of the package format.
//!
//! | kind | model file (default) | read by |
//! |---|---|---|
//! | `sklearn_trees_classifier`, `sklearn_trees_regressor` | `model.json` | [`TreeEnsemble::from_sklearn_json`] |
//! | `xgboost_classifier`, `xgboost_regressor` | `model.json` | [`TreeEnsemble::from_xgboost_json`] |
//! | `lightgbm_classifier`, `lightgbm_regressor` | `model.txt` | [`TreeEnsemble::from_lightgbm_text`] |
//!
//! A model saved by XGBoost or LightGBM is served as it is: a manifest with only `format`,
//! `name`, `version` and `kind` beside it is enough. What the manifest leaves out comes from the
//! model file: one numeric feature per model input, named as the file names them (else `f0`,
//! `f1`, ...), taking missing values when the library does; and, for a classifier, the classes
//! `0 .. n-1` (the class indices XGBoost and LightGBM boosters predict).

use mldeploy_model::{Dtype, Feature, LoadContext};
use serde_json::Value;

use super::{Task as TreeTask, TreeEnsemble};
use crate::engine::{Engine, EngineKinds, Prediction, Task};
use crate::error::Error;
use crate::files::PackageFiles;
use crate::manifest::{Checked, Manifest};

/// The tree-ensemble kinds.
pub(crate) struct Trees;

const KINDS: &[(&str, Task)] = &[
    ("sklearn_trees_classifier", Task::Classification),
    ("sklearn_trees_regressor", Task::Regression),
    ("xgboost_classifier", Task::Classification),
    ("xgboost_regressor", Task::Regression),
    ("lightgbm_classifier", Task::Classification),
    ("lightgbm_regressor", Task::Regression),
];

/// A reader of one model file format.
type Loader = fn(&[u8]) -> Result<TreeEnsemble, super::Error>;

/// Which loader reads a kind's file, and the file's default name.
fn format_of(kind: &str) -> (Loader, &'static str) {
    if kind.starts_with("xgboost_") {
        (TreeEnsemble::from_xgboost_json, "model.json")
    } else if kind.starts_with("lightgbm_") {
        (|bytes| TreeEnsemble::from_lightgbm_text(&String::from_utf8_lossy(bytes)), "model.txt")
    } else {
        (TreeEnsemble::from_sklearn_json, "model.json")
    }
}

fn read(manifest: &Manifest, files: &dyn PackageFiles) -> Result<TreeEnsemble, Error> {
    let (parse, default_file) = format_of(&manifest.kind);
    let file = manifest.model_file.as_deref().unwrap_or(default_file);
    let bytes = files.read(file)?;
    parse(&bytes).map_err(|e| Error::Model { file: file.to_string(), message: e.to_string() })
}

impl EngineKinds for Trees {
    fn kinds(&self) -> &'static [(&'static str, Task)] {
        KINDS
    }

    fn complete(&self, manifest: &mut Manifest, files: &dyn PackageFiles) -> Result<(), Error> {
        let needs_features = manifest.features.is_empty();
        let needs_classes = manifest.kind.ends_with("_classifier") && manifest.output.classes.is_none();
        if !needs_features && !needs_classes {
            return Ok(());
        }
        let model = read(manifest, files)?;
        if needs_features {
            manifest.features = (0..model.n_features())
                .map(|i| Feature {
                    name: model
                        .feature_names()
                        .and_then(|n| n.get(i))
                        .cloned()
                        .unwrap_or_else(|| format!("f{i}")),
                    dtype: Dtype::Float,
                    values: None,
                    allow_nan: false,
                    missing: model.allows_missing(),
                })
                .collect();
        }
        if let (true, TreeTask::Classification { n_classes }) = (needs_classes, model.task()) {
            manifest.output.classes = Some((0..n_classes).map(Value::from).collect());
        }
        Ok(())
    }

    fn check(&self, manifest: &Manifest, kind: &str) -> Result<(), Error> {
        if manifest.layers.is_some() || manifest.activation.is_some() {
            return Err(Error::Manifest(format!("kind {kind} takes no `layers` or `activation`")));
        }
        Ok(())
    }

    fn load(
        &self,
        manifest: &Manifest,
        checked: &Checked,
        files: &dyn PackageFiles,
        _ctx: &LoadContext,
    ) -> Result<Box<dyn Engine>, Error> {
        let model = read(manifest, files)?;
        if model.n_features() != checked.n_inputs {
            return Err(Error::Mismatch(format!(
                "the preprocessing produces {} model inputs ({}) but the model file takes {}",
                checked.n_inputs,
                checked.width_breakdown,
                model.n_features()
            )));
        }
        match (model.task(), &checked.classes) {
            (TreeTask::Classification { n_classes }, Some(classes)) if n_classes != classes.len() => {
                return Err(Error::Mismatch(format!(
                    "output.classes lists {} classes but the model file predicts {n_classes}",
                    classes.len()
                )));
            }
            (TreeTask::Classification { .. }, None) | (TreeTask::Regression, Some(_)) => {
                return Err(Error::Mismatch(format!(
                    "kind {} does not match the model file, which is a {}",
                    manifest.kind,
                    if checked.classes.is_some() { "regressor" } else { "classifier" }
                )));
            }
            _ => {}
        }
        Ok(Box::new(TreeEngine { model }))
    }
}

/// A loaded ensemble as an engine.
#[derive(Debug)]
struct TreeEngine {
    model: TreeEnsemble,
}

impl Engine for TreeEngine {
    fn predict(&self, inputs: Vec<f64>, n_rows: usize, _batch: usize) -> Result<Prediction, Error> {
        if inputs.len() != n_rows * self.model.n_features() {
            return Err(Error::Compute(format!(
                "{} input values for {n_rows} rows of {} features",
                inputs.len(),
                self.model.n_features()
            )));
        }
        let p = self.model.predict(&inputs, n_rows);
        // Class indexes fit: the manifest's classes were counted when the model loaded.
        let labels = p.labels.map(|l| l.into_iter().map(|i| i as u32).collect());
        Ok(Prediction { n_rows, labels, values: p.values, probabilities: p.probabilities })
    }
}
