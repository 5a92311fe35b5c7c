//! The model package format of mldeploy, and the engines that compute its kinds.
//!
//! A model package is a directory holding `mldeploy.json` (the [`Manifest`]: name, version,
//! kind, input features, preprocessing, output labels, a sample request) and the files of its
//! kind's engine; docs/model-package.md describes the format and scripts/export_sklearn.py
//! writes it from a fitted scikit-learn pipeline.
//!
//! Contract:
//! - The manifest's `kind` picks an engine (one module of `engine`, behind a cargo feature);
//!   everything else (schema, preprocessing into the model's input matrix, class labels, typed
//!   outputs, feedback figures) is the same for every engine.
//! - Each kind computes what the library that trained it computes: labels are chosen by the
//!   library's own rule and values agree with it to rounding.
//! - Loading checks the whole package and refuses a broken one with an [`Error`] naming the
//!   file, tensor or feature at fault.
//! - Feedback figures (accuracy, precision, recall, F1; MAE, RMSE, R²) are counted in the
//!   shared slots of the [`LoadContext`], so they cover every worker; the slot layout is in
//!   the `feedback` module's documentation.
//! - [`PackageLoader`] loads a package directory, or the embedded demo model (`iris-demo`)
//!   when no path is given.

#![forbid(unsafe_code)]

mod engine;
mod error;
mod feedback;
mod files;
mod manifest;
mod model;
mod preprocess;

use std::path::Path;
use std::sync::Arc;

use mldeploy_model::{LoadContext, Model, ModelError, ModelLoader};

#[cfg(feature = "trees")]
pub use engine::trees;
pub use engine::{Prediction, Task};
pub use error::Error;
pub use feedback::{ClassifierFigures, Figures, RegressorFigures};
pub use files::{package_dir, DEMO_MANIFEST, DEMO_WEIGHTS, MANIFEST_FILE};
pub use manifest::Manifest;
pub use manifest::{Output, Step, PACKAGE_FORMAT};
pub use model::PackageModel;

use files::{Dir, Embedded, PackageFiles};

/// Load the package in directory `path` (or the directory of a `mldeploy.json` named directly).
pub fn load_package(path: &Path, ctx: &LoadContext) -> Result<PackageModel, Error> {
    let dir = package_dir(path);
    load_from(&Dir(&dir), ctx)
}

/// Load a package from the bytes of its manifest and of its other files, by name.
pub fn load_package_files(
    manifest: &[u8],
    files: &[(&str, &[u8])],
    ctx: &LoadContext,
) -> Result<PackageModel, Error> {
    PackageModel::from_parts(Manifest::from_json(manifest)?, &Embedded(files), ctx)
}

/// Load a dense-kind package from the bytes of its manifest and of its `model.safetensors`.
pub fn load_package_bytes(manifest: &[u8], weights: &[u8], ctx: &LoadContext) -> Result<PackageModel, Error> {
    load_package_files(manifest, &[("model.safetensors", weights)], ctx)
}

/// Load the demo model compiled into the binary.
pub fn load_demo(ctx: &LoadContext) -> Result<PackageModel, Error> {
    load_package_bytes(DEMO_MANIFEST, DEMO_WEIGHTS, ctx)
}

fn load_from(files: &dyn PackageFiles, ctx: &LoadContext) -> Result<PackageModel, Error> {
    let manifest = Manifest::from_json(&files.read(MANIFEST_FILE)?)?;
    PackageModel::from_parts(manifest, files, ctx)
}

/// Loads a model package directory, or the embedded demo model when no path is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct PackageLoader;

impl ModelLoader for PackageLoader {
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
                match Dir(&dir).read(MANIFEST_FILE).and_then(|b| Manifest::from_json(&b)) {
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
