//! Reading a model package: the manifest, the weights, and the checks that tie them together.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use safetensors::{Dtype as StDtype, SafeTensors};

use crate::error::Error;
use crate::manifest::{Checked, Kind, Manifest};
use crate::network::{Layer, Network, OutputActivation};

/// The manifest's file name in a package directory.
pub const MANIFEST_FILE: &str = "mldeploy.json";
/// The weights' file name in a package directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The embedded demo package's manifest (an iris logistic regression, `iris-demo`).
pub const DEMO_MANIFEST: &[u8] = include_bytes!("../demo/iris-demo/mldeploy.json");
/// The embedded demo package's weights.
pub const DEMO_WEIGHTS: &[u8] = include_bytes!("../demo/iris-demo/model.safetensors");

/// The package directory `path` names: the directory itself, or the directory of a
/// `mldeploy.json` named directly.
pub fn package_dir(path: &Path) -> PathBuf {
    if path.file_name().is_some_and(|n| n == MANIFEST_FILE) && path.is_file() {
        path.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        path.to_path_buf()
    }
}

/// Read a file of the package, saying which one is missing.
pub(crate) fn read_package_file(dir: &Path, name: &str) -> Result<Vec<u8>, Error> {
    if !dir.is_dir() {
        return Err(Error::File {
            path: dir.to_path_buf(),
            message: "model package directory not found".into(),
        });
    }
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| {
        let message = if e.kind() == std::io::ErrorKind::NotFound {
            format!("missing file {name} in the model package")
        } else {
            format!("cannot read: {e}")
        };
        Error::File { path, message }
    })
}

fn dtype_name(dtype: StDtype) -> String {
    format!("{dtype:?}")
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
    match (checked.kind, &checked.classes) {
        (Kind::LinearRegression | Kind::MlpRegressor, _) => OutputActivation::Identity,
        (_, Some(classes)) if classes.len() == 2 => OutputActivation::Logistic,
        _ => OutputActivation::Softmax,
    }
}

/// Build the network from the weights, checking every tensor against the manifest.
pub(crate) fn build_network(
    manifest: &Manifest,
    checked: &Checked,
    weights: &[u8],
) -> Result<Network, Error> {
    let st = SafeTensors::deserialize(weights)
        .map_err(|e| Error::Weights(format!("not a valid safetensors file: {e}")))?;
    let n_layers = manifest.layers;
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
            weight: Tensor::from_vec(w, (w_shape[0], w_shape[1]), &Device::Cpu)?,
            bias: Tensor::from_vec(b, b_shape[0], &Device::Cpu)?,
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
        hidden: checked.activation,
        output: output_activation(checked),
        n_inputs: checked.n_inputs,
    })
}
