//! The crate's error type.

use std::path::PathBuf;

use mldeploy_model::ModelError;

/// What loading a package or running a built-in model can fail with. Every message names the
/// file, tensor or feature concerned.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A package file is missing or unreadable.
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `mldeploy.json` is not valid JSON or does not describe a valid model.
    Manifest(String),
    /// `model.safetensors` is unreadable, lacks a tensor, or holds a tensor of the wrong type or
    /// shape.
    Weights(String),
    /// A model file (a tree ensemble's) is unreadable, broken or not supported.
    Model {
        /// The file, in the package.
        file: String,
        /// What is wrong, naming the part of the file.
        message: String,
    },
    /// The manifest and the weights do not fit together (input width, output width).
    Mismatch(String),
    /// The shared feedback slots cannot hold this model's figures.
    Slots(String),
    /// The computation failed.
    Compute(String),
    /// The runtime an engine needs (the ONNX Runtime library) is missing or cannot start; the
    /// message says how to install it.
    Runtime(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::File { path, message } => write!(f, "{}: {message}", path.display()),
            Error::Manifest(m) => write!(f, "mldeploy.json: {m}"),
            Error::Weights(m) => write!(f, "model.safetensors: {m}"),
            Error::Model { file, message } => write!(f, "{file}: {message}"),
            Error::Mismatch(m) => write!(f, "mldeploy.json and the model's files do not match: {m}"),
            Error::Slots(m) => write!(f, "feedback figures: {m}"),
            Error::Compute(m) => write!(f, "computation failed: {m}"),
            Error::Runtime(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(feature = "candle")]
impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Compute(e.to_string())
    }
}

impl From<Error> for ModelError {
    fn from(e: Error) -> Self {
        match e {
            Error::Compute(_) => ModelError::Internal(e.to_string()),
            _ => ModelError::Load(e.to_string()),
        }
    }
}
