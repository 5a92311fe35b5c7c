//! The dense kinds on candle: linear and logistic regression and MLPs, as scikit-learn
//! computes them. One matrix product per layer for the whole batch, in `f64`, so results match
//! scikit-learn's (which computes in `float64`) to rounding.
//!
//! Files: `model.safetensors` holds `layers.{i}.weight` `[inputs, outputs]` and
//! `layers.{i}.bias` `[outputs]` for each of the manifest's `layers`; MLP kinds name their
//! hidden `activation`.

use std::cell::RefCell;

use candle_core::{Device, Tensor};
use mldeploy_model::LoadContext;
use safetensors::{Dtype as StDtype, SafeTensors};

use super::{Engine, EngineKinds, Prediction, Task};
use crate::error::Error;
use crate::files::PackageFiles;
use crate::manifest::{Checked, Manifest};

/// The weights' file name in a package directory.
pub(crate) const WEIGHTS_FILE: &str = "model.safetensors";

/// The dense kinds.
pub(crate) struct Dense;

const KINDS: &[(&str, Task)] = &[
    ("linear_regression", Task::Regression),
    ("logistic_regression", Task::Classification),
    ("mlp_classifier", Task::Classification),
    ("mlp_regressor", Task::Regression),
];

fn is_mlp(kind: &str) -> bool {
    kind.starts_with("mlp_")
}

/// Make candle's matrix products use `threads` threads. candle reads its thread count from
/// `RAYON_NUM_THREADS` at every product and has no other setting; left alone it uses every
/// core for each call, which on top of the worker's serving threads made one-row predictions
/// 10-30x slower on 2 cores. The user's own setting wins.
fn use_engine_threads(threads: usize) {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // Loading runs before the worker starts its serving threads.
        std::env::set_var("RAYON_NUM_THREADS", threads.max(1).to_string());
    }
}

/// Hidden-layer activations of MLPs (sklearn's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
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
    const NAMES: [&'static str; 4] = ["identity", "logistic", "tanh", "relu"];

    fn parse(name: &str) -> Option<Activation> {
        match name {
            "identity" => Some(Activation::Identity),
            "logistic" => Some(Activation::Logistic),
            "tanh" => Some(Activation::Tanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// How a classifier turns the last layer into a class, exactly as sklearn's `predict`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LabelRule {
    /// Regressors: no label.
    None,
    /// LogisticRegression, two classes: the second class when the score is above 0.
    ScoreSign,
    /// LogisticRegression, more classes: the highest score (first on ties).
    ScoreArgmax,
    /// MLPClassifier, two classes: the second class when its probability is above 0.5.
    ProbabilityThreshold,
    /// MLPClassifier, more classes: the highest probability (first on ties).
    ProbabilityArgmax,
}

/// The index of the highest value (the first on ties).
fn argmax(row: &[f64]) -> u32 {
    let mut best = 0;
    for (i, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = i;
        }
    }
    best as u32
}

impl EngineKinds for Dense {
    fn kinds(&self) -> &'static [(&'static str, Task)] {
        KINDS
    }

    fn check(&self, manifest: &Manifest, kind: &str) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Manifest(m));
        if let Some(f) = manifest.features.iter().find(|f| f.missing) {
            return bad(format!(
                "kind {kind} cannot take missing values, but feature {:?} allows them",
                f.name
            ));
        }
        match (&manifest.activation, is_mlp(kind)) {
            (Some(name), true) if Activation::parse(name).is_none() => {
                return bad(format!("unknown activation {name:?} (known: {})", Activation::NAMES.join(", ")))
            }
            (None, true) => return bad(format!("kind {kind} needs an activation")),
            (Some(_), false) => return bad(format!("kind {kind} takes no activation")),
            _ => {}
        }
        match manifest.layers {
            None => bad(format!("kind {kind} needs `layers`, the number of dense layers")),
            Some(0) => bad("layers must be at least 1".into()),
            Some(n) if !is_mlp(kind) && n != 1 => bad(format!("kind {kind} has exactly 1 layer, not {n}")),
            Some(_) => Ok(()),
        }
    }

    fn load(
        &self,
        manifest: &Manifest,
        checked: &Checked,
        files: &dyn PackageFiles,
        ctx: &LoadContext,
    ) -> Result<Box<dyn Engine>, Error> {
        use_engine_threads(ctx.engine_threads);
        let weights = files.read(WEIGHTS_FILE)?;
        Ok(Box::new(build_network(manifest, checked, &weights)?))
    }
}

/// The activation of the last layer, as sklearn picks it from the estimator and class count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputActivation {
    /// Regressors.
    Identity,
    /// Binary classifiers: one output column, the probability of the second class.
    Logistic,
    /// Multiclass classifiers: one column per class.
    Softmax,
}

/// One dense layer: `x @ weight + bias`.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// `[n_in, n_out]`.
    pub weight: Tensor,
    /// `[n_out]`.
    pub bias: Tensor,
    /// The same weights, row-major `[n_in, n_out]`, for the plain loops of small batches.
    w: Vec<f64>,
    /// The same bias.
    b: Vec<f64>,
}

/// Batches up to this many multiply-adds (rows x the sum over layers of inputs x outputs) are
/// computed in plain `f64` loops; larger ones by candle's matrix product. Below it, candle's
/// fixed cost per call (a tensor allocated per operation, the thread-count lookup of every
/// product, about 15,000 instructions for a one-row logistic regression) outweighs the
/// arithmetic, which at this bound is still a few tens of microseconds.
const SMALL_BATCH_MACS: usize = 64 * 1024;

/// Larger batches go through candle in blocks of rows of about this many multiply-adds,
/// which bounds the size of the intermediate tensors (see [`Network::forward`]).
const BLOCK_MACS: usize = 1 << 20;

/// Rows per part of a large candle block (see [`Network::block_end`]): the parts' tensors are
/// a few hundred kilobytes where a block's are megabytes (a softmax keeps several alive).
/// A multiple of 64.
const SUB_BLOCK_ROWS: usize = 4096;

/// What a forward pass gives.
#[derive(Debug, Clone)]
pub(crate) struct Forward {
    /// Row-major `[n_rows, n_outputs]` values of the last layer before the output activation.
    pub scores: Vec<f64>,
    /// Row-major output activations, unless the output activation is the identity.
    pub activated: Option<Vec<f64>>,
}

/// A stack of dense layers.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub layers: Vec<Layer>,
    pub hidden: Activation,
    pub output: OutputActivation,
    pub n_inputs: usize,
    rule: LabelRule,
    n_classes: usize,
}

fn logistic(x: &Tensor) -> candle_core::Result<Tensor> {
    // 1 / (1 + exp(-x)), as scipy's expit.
    x.neg()?.exp()?.affine(1.0, 1.0)?.recip()
}

fn softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    // The row maximum is subtracted first, as sklearn does, so exp cannot overflow.
    let max = x.max_keepdim(1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(1)?;
    e.broadcast_div(&sum)
}

fn logistic_f64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Network {
    /// Multiply-adds of one row through every layer.
    fn macs_per_row(&self) -> usize {
        self.layers.iter().map(|l| l.w.len()).sum()
    }

    /// The scores of `n_rows` rows of `inputs`, row by row, appended to `scores`; `x` and `y`
    /// are room for one layer's values each.
    fn rows_small(
        &self,
        inputs: &[f64],
        n_rows: usize,
        x: &mut Vec<f64>,
        y: &mut Vec<f64>,
        scores: &mut Vec<f64>,
    ) {
        let last = self.layers.len() - 1;
        for row in inputs.chunks_exact(self.n_inputs).take(n_rows) {
            x.clear();
            x.extend_from_slice(row);
            for (i, layer) in self.layers.iter().enumerate() {
                let width = layer.b.len();
                y.clear();
                if width == 1 {
                    // One output (a binary classifier or a regressor): a dot product, in the
                    // same order of additions, without the inner loop's overhead per input.
                    let mut acc = 0.0;
                    for (xi, w) in x.iter().zip(&layer.w) {
                        acc += xi * w;
                    }
                    y.push(acc);
                } else {
                    y.resize(width, 0.0);
                    for (xi, w_row) in x.iter().zip(layer.w.chunks_exact(width)) {
                        for (acc, w) in y.iter_mut().zip(w_row) {
                            *acc += xi * w;
                        }
                    }
                }
                for (acc, b) in y.iter_mut().zip(&layer.b) {
                    *acc += b;
                }
                if i != last {
                    match self.hidden {
                        Activation::Identity => {}
                        Activation::Logistic => y.iter_mut().for_each(|v| *v = logistic_f64(*v)),
                        Activation::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
                        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
                    }
                }
                std::mem::swap(x, y);
            }
            scores.extend_from_slice(x);
        }
    }

    /// The forward pass in plain loops, row by row: the same operations as [`Network::forward`]
    /// (the product, then the bias; the row maximum subtracted before the softmax's `exp`).
    fn forward_small(&self, inputs: &[f64], n_rows: usize) -> Forward {
        let n_out = self.layers.last().map_or(0, |l| l.b.len());
        let mut scores = Vec::with_capacity(n_rows * n_out);
        // The two layer buffers are the thread's own, kept from one request to the next.
        SCRATCH.with_borrow_mut(|(x, y)| self.rows_small(inputs, n_rows, x, y, &mut scores));
        let activated = match self.output {
            OutputActivation::Identity => None,
            OutputActivation::Logistic => Some(scores.iter().map(|&s| logistic_f64(s)).collect()),
            OutputActivation::Softmax => {
                let mut out = Vec::with_capacity(scores.len());
                for row in scores.chunks_exact(n_out.max(1)) {
                    let max = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let start = out.len();
                    out.extend(row.iter().map(|s| (s - max).exp()));
                    let sum: f64 = out[start..].iter().sum();
                    out[start..].iter_mut().for_each(|e| *e /= sum);
                }
                Some(out)
            }
        };
        Forward { scores, activated }
    }

    /// Whether a batch of `batch` rows is computed in plain loops (else by candle).
    fn is_small(&self, batch: usize) -> bool {
        batch.saturating_mul(self.macs_per_row().max(1)) <= SMALL_BATCH_MACS
    }

    /// Rows per candle call of a large batch.
    fn candle_block(&self) -> usize {
        (BLOCK_MACS / self.macs_per_row().max(1)).max(1)
    }

    /// Where the block of a batch of `batch` rows that starts at row `start` ends, for
    /// [`Network::forward`] one block at a time: a small batch is one block; a large one is cut
    /// as the whole batch is cut for candle (blocks of [`Network::candle_block`] rows from the
    /// first), and a candle block of at least twice [`SUB_BLOCK_ROWS`] rows further into parts
    /// of that many rows from its start, the last part taking the rest. Every product then has
    /// more than 64 rows whenever the candle block had, and each row keeps its place modulo
    /// 64, so the product computes each row as in the candle block (a test checks the bits).
    fn block_end(&self, batch: usize, start: usize) -> usize {
        if self.is_small(batch) {
            return batch;
        }
        let block = self.candle_block();
        let block_end = batch.min((start / block + 1) * block);
        if block_end - start >= 2 * SUB_BLOCK_ROWS {
            start + SUB_BLOCK_ROWS
        } else {
            block_end
        }
    }

    /// Run the rows of `inputs` (row-major `[n_rows, n_inputs]`) through every layer: the
    /// whole batch of `batch` rows, or one block of it as [`Network::block_end`] cuts it. The
    /// batch's size picks the arithmetic, so each block is computed as in the whole batch.
    pub(crate) fn forward(&self, inputs: Vec<f64>, n_rows: usize, batch: usize) -> Result<Forward, Error> {
        if self.is_small(batch) {
            return Ok(self.forward_small(&inputs, n_rows));
        }
        let block = self.candle_block();
        if n_rows <= block {
            return self.forward_candle(inputs, n_rows);
        }
        // Large batches in blocks of rows: each candle operation allocates a tensor of the whole
        // batch, and a softmax alone keeps several alive at once.
        let n_out = self.layers.last().map_or(0, |l| l.b.len());
        let mut scores = Vec::with_capacity(n_rows * n_out);
        let mut activated =
            (self.output != OutputActivation::Identity).then(|| Vec::with_capacity(n_rows * n_out));
        for chunk in inputs[..n_rows * self.n_inputs].chunks(block * self.n_inputs) {
            let part = self.forward_candle(chunk.to_vec(), chunk.len() / self.n_inputs)?;
            scores.extend_from_slice(&part.scores);
            if let (Some(all), Some(part)) = (&mut activated, &part.activated) {
                all.extend_from_slice(part);
            }
        }
        Ok(Forward { scores, activated })
    }

    /// The forward pass on candle: one matrix product per layer for the whole batch.
    fn forward_candle(&self, inputs: Vec<f64>, n_rows: usize) -> Result<Forward, Error> {
        if n_rows == 0 {
            let activated = (self.output != OutputActivation::Identity).then(Vec::new);
            return Ok(Forward { scores: Vec::new(), activated });
        }
        let mut x = Tensor::from_vec(inputs, (n_rows, self.n_inputs), &Device::Cpu)?;
        let last = self.layers.len() - 1;
        for (i, layer) in self.layers.iter().enumerate() {
            x = x.matmul(&layer.weight)?.broadcast_add(&layer.bias)?;
            if i != last {
                x = match self.hidden {
                    Activation::Identity => x,
                    Activation::Logistic => logistic(&x)?,
                    Activation::Tanh => x.tanh()?,
                    Activation::Relu => x.relu()?,
                };
            }
        }
        let activated = match self.output {
            OutputActivation::Identity => None,
            OutputActivation::Logistic => Some(logistic(&x)?.flatten_all()?.to_vec1::<f64>()?),
            OutputActivation::Softmax => Some(softmax(&x)?.flatten_all()?.to_vec1::<f64>()?),
        };
        let scores = x.flatten_all()?.to_vec1::<f64>()?;
        Ok(Forward { scores, activated })
    }
}

impl Engine for Network {
    fn block_end(&self, batch: usize, start: usize) -> usize {
        Network::block_end(self, batch, start)
    }

    fn predict(&self, inputs: Vec<f64>, n_rows: usize, batch: usize) -> Result<Prediction, Error> {
        let forward = self.forward(inputs, n_rows, batch)?;
        if self.rule == LabelRule::None {
            return Ok(Prediction {
                n_rows,
                labels: None,
                values: Some(forward.scores),
                probabilities: None,
            });
        }
        let k = self.n_classes;
        let activated = forward.activated.unwrap_or_default();
        let probabilities: Vec<f64> =
            if k == 2 { activated.iter().flat_map(|&p| [1.0 - p, p]).collect() } else { activated };
        let labels = match self.rule {
            LabelRule::ScoreSign => forward.scores.iter().map(|&s| u32::from(s > 0.0)).collect(),
            LabelRule::ScoreArgmax => forward.scores.chunks_exact(k).map(argmax).collect(),
            LabelRule::ProbabilityThreshold => {
                probabilities.chunks_exact(2).map(|p| u32::from(p[1] > 0.5)).collect()
            }
            LabelRule::ProbabilityArgmax | LabelRule::None => {
                probabilities.chunks_exact(k).map(argmax).collect()
            }
        };
        Ok(Prediction { n_rows, labels: Some(labels), values: None, probabilities: Some(probabilities) })
    }
}

fn dtype_name(dtype: StDtype) -> String {
    format!("{dtype:?}")
}

thread_local! {
    /// Room for one layer's values and the next's, for [`Network::rows_small`].
    static SCRATCH: RefCell<(Vec<f64>, Vec<f64>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One tensor of the weights file as `f64` values, with its shape checked to be `rank`-D.
fn read_tensor(st: &SafeTensors<'_>, name: &str, rank: usize) -> Result<(Vec<f64>, Vec<usize>), Error> {
    let view = st.tensor(name).map_err(|_| Error::Weights(format!("missing tensor {name}")))?;
    let shape = view.shape().to_vec();
    if shape.len() != rank {
        return Err(Error::Weights(format!(
            "tensor {name} has shape {shape:?}; expected a {rank}-D tensor ({})",
            if rank == 2 { "[inputs, outputs]" } else { "[outputs]" }
        )));
    }
    let data = view.data();
    let values: Vec<f64> = match view.dtype() {
        StDtype::F64 => {
            data.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect()
        }
        StDtype::F32 => data
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes"))))
            .collect(),
        other => {
            return Err(Error::Weights(format!(
                "tensor {name} has dtype {}; expected F64 (or F32)",
                dtype_name(other)
            )))
        }
    };
    if values.iter().any(|v| !v.is_finite()) {
        return Err(Error::Weights(format!("tensor {name} holds NaN or infinite values")));
    }
    Ok((values, shape))
}

/// The number of output columns the last layer must have.
fn expected_outputs(checked: &Checked) -> usize {
    match &checked.classes {
        Some(classes) if classes.len() == 2 => 1,
        Some(classes) => classes.len(),
        None => 1,
    }
}

fn output_activation(checked: &Checked) -> OutputActivation {
    match &checked.classes {
        None => OutputActivation::Identity,
        Some(classes) if classes.len() == 2 => OutputActivation::Logistic,
        Some(_) => OutputActivation::Softmax,
    }
}

fn label_rule(kind: &str, checked: &Checked) -> LabelRule {
    match (kind, checked.classes.as_ref().map(Vec::len)) {
        (_, None) => LabelRule::None,
        ("logistic_regression", Some(2)) => LabelRule::ScoreSign,
        ("logistic_regression", Some(_)) => LabelRule::ScoreArgmax,
        (_, Some(2)) => LabelRule::ProbabilityThreshold,
        (_, Some(_)) => LabelRule::ProbabilityArgmax,
    }
}

/// Build the network from the weights, checking every tensor against the manifest.
fn build_network(manifest: &Manifest, checked: &Checked, weights: &[u8]) -> Result<Network, Error> {
    let st = SafeTensors::deserialize(weights)
        .map_err(|e| Error::Weights(format!("not a valid safetensors file: {e}")))?;
    let n_layers = manifest.layers.unwrap_or(1);
    let hidden = manifest.activation.as_deref().and_then(Activation::parse).unwrap_or(Activation::Identity);
    let mut expected_names: Vec<String> = Vec::new();
    for i in 0..n_layers {
        expected_names.push(format!("layers.{i}.weight"));
        expected_names.push(format!("layers.{i}.bias"));
    }
    let mut unexpected: Vec<&str> =
        st.names().into_iter().filter(|n| !expected_names.iter().any(|e| e == n)).collect();
    unexpected.sort_unstable();
    if let Some(name) = unexpected.first() {
        return Err(Error::Weights(format!(
            "unexpected tensor {name} (the manifest declares {n_layers} layer(s): layers.0 .. layers.{})",
            n_layers - 1
        )));
    }

    let mut layers = Vec::with_capacity(n_layers);
    let mut n_in = checked.n_inputs;
    for i in 0..n_layers {
        let w_name = format!("layers.{i}.weight");
        let b_name = format!("layers.{i}.bias");
        let (w, w_shape) = read_tensor(&st, &w_name, 2)?;
        let (b, b_shape) = read_tensor(&st, &b_name, 1)?;
        if w_shape[0] != n_in {
            return Err(if i == 0 {
                Error::Mismatch(format!(
                    "the preprocessing produces {n_in} model inputs ({}) but {w_name} has shape {w_shape:?}, \
                     which takes {} inputs",
                    checked.width_breakdown, w_shape[0]
                ))
            } else {
                Error::Weights(format!(
                    "{w_name} has shape {w_shape:?} but layers.{} has {n_in} outputs",
                    i - 1
                ))
            });
        }
        if b_shape[0] != w_shape[1] {
            return Err(Error::Weights(format!(
                "{b_name} has shape {b_shape:?} but {w_name} has shape {w_shape:?} ({} outputs)",
                w_shape[1]
            )));
        }
        layers.push(Layer {
            weight: Tensor::from_vec(w.clone(), (w_shape[0], w_shape[1]), &Device::Cpu)?,
            bias: Tensor::from_vec(b.clone(), b_shape[0], &Device::Cpu)?,
            w,
            b,
        });
        n_in = w_shape[1];
    }
    let n_outputs = expected_outputs(checked);
    if n_in != n_outputs {
        let what = match &checked.classes {
            Some(c) if c.len() == 2 => {
                "2 classes: one output, the probability of the second class".to_string()
            }
            Some(c) => format!("{} classes", c.len()),
            None => "a regressor".to_string(),
        };
        return Err(Error::Mismatch(format!(
            "layers.{}.weight has {n_in} outputs but the model needs {n_outputs} ({what})",
            n_layers - 1
        )));
    }
    Ok(Network {
        layers,
        hidden,
        output: output_activation(checked),
        n_inputs: checked.n_inputs,
        rule: label_rule(&manifest.kind, checked),
        n_classes: checked.classes.as_ref().map_or(0, Vec::len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network of the given layer widths with weights from a fixed pseudo-random sequence.
    fn network(widths: &[usize], hidden: Activation, output: OutputActivation) -> Network {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        };
        let layers = widths
            .windows(2)
            .map(|io| {
                let w: Vec<f64> = (0..io[0] * io[1]).map(|_| next()).collect();
                let b: Vec<f64> = (0..io[1]).map(|_| next()).collect();
                Layer {
                    weight: Tensor::from_vec(w.clone(), (io[0], io[1]), &Device::Cpu).unwrap(),
                    bias: Tensor::from_vec(b.clone(), io[1], &Device::Cpu).unwrap(),
                    w,
                    b,
                }
            })
            .collect();
        Network { layers, hidden, output, n_inputs: widths[0], rule: LabelRule::None, n_classes: 0 }
    }

    /// A batch computed one block at a time, as `block_end` cuts it, gets every bit it got
    /// computed whole (in candle's blocks): products of one output column, of one or two
    /// inputs, of small and wide layers.
    #[test]
    fn blocks_compute_as_the_whole_batch() {
        let cases = [
            (vec![4, 3], Activation::Identity, OutputActivation::Softmax),
            (vec![4, 1], Activation::Identity, OutputActivation::Logistic),
            (vec![2, 3], Activation::Identity, OutputActivation::Softmax),
            (vec![1, 1], Activation::Identity, OutputActivation::Identity),
            (vec![9, 5, 1], Activation::Tanh, OutputActivation::Identity),
            (vec![30, 100, 2], Activation::Relu, OutputActivation::Softmax),
        ];
        for (widths, hidden, output) in cases {
            let net = network(&widths, hidden, output);
            let (small, block) = (SMALL_BATCH_MACS / net.macs_per_row(), net.candle_block());
            let mut sizes = vec![0, 1, small, small + 1, block - 1, block, block + 1, block + 70];
            sizes.extend([2 * block + 2 * SUB_BLOCK_ROWS - 1, 2 * block + 2 * SUB_BLOCK_ROWS + 3]);
            let n_in = widths[0];
            for n_rows in sizes {
                let inputs: Vec<f64> = (0..n_rows * n_in).map(|i| (i as f64 * 0.37).sin() * 3.0).collect();
                let whole = net.forward(inputs.clone(), n_rows, n_rows).unwrap();
                let (mut scores, mut activated, mut start) = (Vec::new(), Vec::new(), 0);
                loop {
                    let end = net.block_end(n_rows, start);
                    assert!(end > start || n_rows == 0);
                    let part =
                        net.forward(inputs[start * n_in..end * n_in].to_vec(), end - start, n_rows).unwrap();
                    scores.extend(part.scores);
                    activated.extend(part.activated.unwrap_or_default());
                    start = end;
                    if start >= n_rows {
                        break;
                    }
                }
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&scores), bits(&whole.scores), "{widths:?}, {n_rows} rows");
                let whole_activated = whole.activated.unwrap_or_default();
                assert_eq!(bits(&activated), bits(&whole_activated), "{widths:?}, {n_rows} rows");
            }
        }
    }

    #[test]
    fn plain_loops_match_candle() {
        let cases = [
            (vec![4, 3], Activation::Identity, OutputActivation::Softmax),
            (vec![30, 1], Activation::Identity, OutputActivation::Logistic),
            (vec![5, 1], Activation::Identity, OutputActivation::Identity),
            (vec![30, 100, 2], Activation::Relu, OutputActivation::Softmax),
            (vec![6, 7, 5, 1], Activation::Tanh, OutputActivation::Logistic),
            (vec![6, 8, 3], Activation::Logistic, OutputActivation::Softmax),
        ];
        for (widths, hidden, output) in cases {
            let net = network(&widths, hidden, output);
            for n_rows in [1, 2, 7, 40, 1000] {
                let inputs: Vec<f64> =
                    (0..n_rows * widths[0]).map(|i| (i as f64 * 0.37).sin() * 3.0).collect();
                let small = net.forward_small(&inputs, n_rows);
                let blocks = net.forward(inputs.clone(), n_rows, n_rows).unwrap();
                let big = net.forward_candle(inputs, n_rows).unwrap();
                // forward: plain loops, one candle call, or candle in blocks of rows.
                assert_eq!(blocks.scores.len(), big.scores.len());
                for (a, b) in blocks.scores.iter().zip(&big.scores) {
                    assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{widths:?} {n_rows}: {a} vs {b}");
                }
                assert_eq!(blocks.activated.as_ref().map(Vec::len), big.activated.as_ref().map(Vec::len));
                for (a, b) in blocks.activated.iter().flatten().zip(big.activated.iter().flatten()) {
                    assert!((a - b).abs() <= 1e-12, "{widths:?} {n_rows}: {a} vs {b}");
                }
                assert_eq!(small.scores.len(), big.scores.len());
                for (a, b) in small.scores.iter().zip(&big.scores) {
                    assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{widths:?} {n_rows}: {a} vs {b}");
                }
                match (&small.activated, &big.activated) {
                    (Some(a), Some(b)) => {
                        assert_eq!(a.len(), b.len());
                        for (a, b) in a.iter().zip(b) {
                            assert!((a - b).abs() <= 1e-12, "{widths:?} {n_rows}: {a} vs {b}");
                        }
                    }
                    (None, None) => {}
                    _ => panic!("activations differ in presence"),
                }
            }
        }
    }
}
