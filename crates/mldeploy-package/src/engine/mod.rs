//! Engines: what computes a package's kind.
//!
//! Each engine is one module behind [`EngineKinds`]: it names the manifest kinds it computes,
//! checks its own manifest fields, and builds an [`Engine`] from the package's files. The
//! package format around it (manifest, preprocessing, labels, feedback figures) is the same for
//! every engine, so adding one touches this list and nothing else.

#[cfg(feature = "candle")]
mod dense;
#[cfg(feature = "onnx")]
pub mod onnx;
#[cfg(feature = "trees")]
pub mod trees;

use std::fmt::Debug;

use mldeploy_model::LoadContext;

use crate::error::Error;
use crate::files::PackageFiles;
use crate::manifest::{Checked, Manifest};

/// What a kind predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One value per row.
    Regression,
    /// One class per row, with class probabilities; the classes are the manifest's
    /// `output.classes`.
    Classification,
}

/// What an engine computed for a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Number of rows.
    pub n_rows: usize,
    /// Classifiers: the index of the predicted class of each row, chosen as the library that
    /// trained the model chooses it.
    pub labels: Option<Vec<usize>>,
    /// Regressors: the predicted value of each row.
    pub values: Option<Vec<f64>>,
    /// Classifiers: row-major `[n_rows, n_classes]` class probabilities.
    pub probabilities: Option<Vec<f64>>,
}

/// A loaded computation: the model's input matrix in, a [`Prediction`] out. Called from many
/// serving threads at once.
pub(crate) trait Engine: Send + Sync + Debug {
    /// Compute the rows of `inputs`, row-major `[n_rows, n_inputs]` (`NaN` marks a missing
    /// value, for kinds that take them).
    fn predict(&self, inputs: Vec<f64>, n_rows: usize) -> Result<Prediction, Error>;
}

/// An engine's side of the package format.
pub(crate) trait EngineKinds: Sync {
    /// The manifest kinds this engine computes, with what each predicts.
    fn kinds(&self) -> &'static [(&'static str, Task)];

    /// Fill in what a manifest may leave out because the engine's own files say it (the
    /// features and classes of a model file saved by its library). Runs before the checks.
    fn complete(&self, _manifest: &mut Manifest, _files: &dyn PackageFiles) -> Result<(), Error> {
        Ok(())
    }

    /// Check the manifest fields this engine reads (before any other file is read).
    fn check(&self, manifest: &Manifest, kind: &str) -> Result<(), Error>;

    /// Build the engine for a checked manifest from the package's files.
    fn load(
        &self,
        manifest: &Manifest,
        checked: &Checked,
        files: &dyn PackageFiles,
        ctx: &LoadContext,
    ) -> Result<Box<dyn Engine>, Error>;
}

/// Every engine built in.
static ENGINES: &[&dyn EngineKinds] = &[
    #[cfg(feature = "candle")]
    &dense::Dense,
    #[cfg(feature = "trees")]
    &trees::Trees,
];

/// The engine that computes `kind`, and what the kind predicts.
pub(crate) fn find(kind: &str) -> Option<(&'static dyn EngineKinds, Task)> {
    ENGINES.iter().find_map(|engine| {
        engine.kinds().iter().find(|(name, _)| *name == kind).map(|&(_, task)| (*engine, task))
    })
}

/// Every kind this build can serve, for messages.
pub(crate) fn known_kinds() -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> =
        ENGINES.iter().flat_map(|e| e.kinds().iter().map(|(name, _)| *name)).collect();
    if cfg!(feature = "onnx") {
        kinds.push(ONNX_KIND);
    }
    kinds
}

/// The kind of ONNX packages: a graph computed by ONNX Runtime, a model of its own rather than
/// an [`Engine`] behind the tabular package format (its inputs and outputs are the graph's).
pub(crate) const ONNX_KIND: &str = "onnx";
