//! The dense layers on candle: one matrix product per layer for the whole batch, in `f64`.

use candle_core::{Device, Tensor};

use crate::error::Error;
use crate::manifest::Activation;

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
}

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

impl Network {
    /// Run the rows of `inputs` (row-major `[n_rows, n_inputs]`) through every layer.
    pub(crate) fn forward(&self, inputs: Vec<f64>, n_rows: usize) -> Result<Forward, Error> {
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
