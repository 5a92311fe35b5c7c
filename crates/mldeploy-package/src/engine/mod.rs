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
    pub labels: Option<Vec<u32>>,
    /// Regressors: the predicted value of each row.
    pub values: Option<Vec<f64>>,
    /// Classifiers: row-major `[n_rows, n_classes]` class probabilities.
    pub probabilities: Option<Vec<f64>>,
}

impl Prediction {
    /// Append the prediction of the rows that follow, `total` rows in all once every block is
    /// in: room for them all is made when the first block comes, so the lists never grow by
    /// copying.
    pub(crate) fn append(&mut self, next: Prediction, total: usize) {
        fn extend<T: Copy>(all: &mut Option<Vec<T>>, part: Option<Vec<T>>, rows: usize, total: usize) {
            let Some(part) = part else { return };
            let all = all.get_or_insert_with(|| {
                let per_row = part.len().checked_div(rows).unwrap_or(0);
                Vec::with_capacity(total.saturating_mul(per_row).max(part.len()))
            });
            all.extend_from_slice(&part);
        }
        extend(&mut self.labels, next.labels, next.n_rows, total);
        extend(&mut self.values, next.values, next.n_rows, total);
        extend(&mut self.probabilities, next.probabilities, next.n_rows, total);
        self.n_rows += next.n_rows;
    }
}

/// Rows per block for engines that compute each row on its own, whatever the batch: the input
/// matrix of 4,096 rows of 30 inputs is about 1 MB.
pub(crate) const BLOCK_ROWS: usize = 4096;

/// A loaded computation: the model's input matrix in, a [`Prediction`] out. Called from many
/// serving threads at once.
///
/// A request's rows are computed one block at a time (the caller builds each block's input
/// matrix in turn and concatenates the predictions), so the input matrix of a large request
/// never exists whole.
pub(crate) trait Engine: Send + Sync + Debug {
    /// Where the block of a request of `batch` rows that starts at row `start` (below `batch`,
    /// or 0 for an empty request) ends: above `start` unless the request is empty.
    fn block_end(&self, batch: usize, start: usize) -> usize {
        batch.min(start + BLOCK_ROWS)
    }

    /// Compute the rows of `inputs`, row-major `[n_rows, n_inputs]` (`NaN` marks a missing
    /// value, for kinds that take them): one block, as [`Engine::block_end`] cuts them, of a
    /// request of `batch` rows. An engine whose arithmetic depends on the batch computes each
    /// block exactly as it computed these rows in the whole batch, so blocks change no bit of
    /// an answer.
    fn predict(&self, inputs: Vec<f64>, n_rows: usize, batch: usize) -> Result<Prediction, Error>;
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
