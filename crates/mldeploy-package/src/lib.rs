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
//! - ONNX graphs (feature `onnx`: a `.onnx` file, or a package of kind `onnx`) are models of
//!   their own, computed by ONNX Runtime: their inputs and outputs are the graph's
//!   ([`load_model`] loads every kind; see the `onnx` module).

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

#[cfg(feature = "onnx")]
pub use engine::onnx::{self, OnnxModel};
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

/// Load the model at `path`, whatever its kind: an ONNX file (`.onnx`), or a package
/// directory (or its `mldeploy.json`) of any kind, ONNX packages included.
pub fn load_model(path: &Path, ctx: &LoadContext) -> Result<Arc<dyn Model>, Error> {
    if is_onnx_file(path) {
        #[cfg(feature = "onnx")]
        return Ok(Arc::new(engine::onnx::load_file(path, ctx)?));
        #[cfg(not(feature = "onnx"))]
        return Err(no_onnx());
    }
    let dir = package_dir(path);
    let files = Dir(&dir);
    let manifest = Manifest::from_json(&files.read(MANIFEST_FILE)?)?;
    if manifest.kind == engine::ONNX_KIND {
        #[cfg(feature = "onnx")]
        {
            let name = dir.canonicalize().unwrap_or_else(|_| dir.clone());
            let name = name.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            return Ok(Arc::new(engine::onnx::load_package(&manifest, &files, &name, ctx)?));
        }
        #[cfg(not(feature = "onnx"))]
        return Err(no_onnx());
    }
    Ok(Arc::new(PackageModel::from_parts(manifest, &files, ctx)?))
}

/// Whether `path` is an ONNX file, served as it is.
fn is_onnx_file(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

#[cfg(not(feature = "onnx"))]
fn no_onnx() -> Error {
    Error::Runtime(
        "this mldeploy was built without ONNX support (cargo feature `onnx` of mldeploy-package)".into(),
    )
}

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
        match path {
            Some(p) => Ok(load_model(p, ctx)?),
            None => Ok(Arc::new(load_demo(ctx)?)),
        }
    }

    fn describe(&self, path: Option<&Path>) -> String {
        let (manifest, origin) = match path {
            Some(p) if is_onnx_file(p) => {
                let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                return format!("{name} (onnx) from {}", p.display());
            }
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
