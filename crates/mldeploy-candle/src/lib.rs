//! Built-in model kinds of mldeploy, computed with candle on the CPU.
//!
//! A model package is a directory holding `mldeploy.json` (the [`Manifest`]: name, version,
//! kind, input features, preprocessing, output labels, a sample request) and
//! `model.safetensors` (the dense layers `layers.{i}.weight` `[inputs, outputs]` and
//! `layers.{i}.bias` `[outputs]`); docs/model-package.md describes the format and
//! scripts/export_sklearn.py writes it from a fitted scikit-learn pipeline.
//!
//! Contract:
//! - Kinds: `linear_regression`, `logistic_regression` (sigmoid for two classes, softmax for
//!   more), `mlp_classifier` and `mlp_regressor` (hidden activation identity, logistic, tanh or
//!   relu; output as sklearn's: logistic for two classes, softmax for more, identity for a
//!   regressor). Labels are chosen exactly as sklearn's `predict` does.
//! - Everything is computed in `f64`, so results match scikit-learn's (which computes in
//!   `float64`) to rounding, far inside 1e-6; a batch of rows is one matrix product per layer.
//! - Loading checks the whole package and refuses a broken one with an [`Error`] naming the
//!   file, tensor or feature at fault.
//! - Feedback figures (accuracy, precision, recall, F1; MAE, RMSE, R²) are counted in the
//!   shared slots of the [`LoadContext`], so they cover every worker; the slot layout is in
//!   the `feedback` module's documentation.
//! - [`BuiltinLoader`] loads a package directory, or the embedded demo model (`iris-demo`)
//!   when no path is given.

mod error;
mod feedback;
mod manifest;
mod model;
mod network;
mod package;
mod preprocess;

use std::path::Path;
use std::sync::Arc;

use mldeploy_model::{LoadContext, Model, ModelError, ModelLoader};

pub use error::Error;
pub use feedback::{ClassifierFigures, Figures, RegressorFigures};
pub use manifest::{Activation, Kind, Manifest, Output, Step, PACKAGE_FORMAT};
pub use model::{BuiltinModel, Prediction};
pub use package::{package_dir, DEMO_MANIFEST, DEMO_WEIGHTS, MANIFEST_FILE, WEIGHTS_FILE};

/// Load the package in directory `path` (or the directory of a `mldeploy.json` named directly).
pub fn load_package(path: &Path, ctx: &LoadContext) -> Result<BuiltinModel, Error> {
    let dir = package_dir(path);
    let manifest_bytes = package::read_package_file(&dir, MANIFEST_FILE)?;
    let manifest = Manifest::from_json(&manifest_bytes)?;
    // Check the manifest before touching the weights, so its problems are reported first.
    manifest.check()?;
    let weights = package::read_package_file(&dir, WEIGHTS_FILE)?;
    BuiltinModel::from_parts(manifest, &weights, ctx)
}

/// Load a package from the bytes of its two files.
pub fn load_package_bytes(manifest: &[u8], weights: &[u8], ctx: &LoadContext) -> Result<BuiltinModel, Error> {
    BuiltinModel::from_parts(Manifest::from_json(manifest)?, weights, ctx)
}

/// Load the demo model compiled into the binary.
pub fn load_demo(ctx: &LoadContext) -> Result<BuiltinModel, Error> {
    load_package_bytes(DEMO_MANIFEST, DEMO_WEIGHTS, ctx)
}

/// Loads a model package directory, or the embedded demo model when no path is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuiltinLoader;

impl ModelLoader for BuiltinLoader {
    fn load(&self, path: Option<&Path>, ctx: &LoadContext) -> Result<Arc<dyn Model>, ModelError> {
        let model = match path {
            Some(p) => load_package(p, ctx)?,
            None => load_demo(ctx)?,
        };
        Ok(Arc::new(model))
    }

    fn describe(&self, path: Option<&Path>) -> String {
        let (manifest, origin) = match path {
            Some(p) => {
                let dir = package_dir(p);
                let read =
                    package::read_package_file(&dir, MANIFEST_FILE).and_then(|b| Manifest::from_json(&b));
                match read {
                    Ok(m) => (m, dir.display().to_string()),
                    Err(e) => return format!("model package {} ({e})", dir.display()),
                }
            }
            None => match Manifest::from_json(DEMO_MANIFEST) {
                Ok(m) => (m, "embedded demo".to_string()),
                Err(e) => return format!("embedded demo model ({e})"),
            },
        };
        format!("{} {} ({}) from {origin}", manifest.name, manifest.version, manifest.kind)
    }
}
