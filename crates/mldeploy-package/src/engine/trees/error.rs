//! The one error type of the tree engine.

use std::fmt;

/// Why a model file could not be loaded, or why a prediction call was refused.
///
/// Every variant names the part of the file at fault (`part`), e.g. `trees[3].threshold[17]`
/// or `Tree=12 decision_type`, so that a log line points at the broken spot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not well-formed JSON / text in the expected syntax.
    Syntax {
        /// The part of the file being read.
        part: String,
        /// What the parser reported.
        message: String,
    },
    /// A required field is absent.
    Missing {
        /// The missing field.
        part: String,
    },
    /// A field is present but its value is invalid (wrong type, out of range, inconsistent
    /// lengths, a child index pointing outside the tree, a cycle, ...).
    Invalid {
        /// The field at fault.
        part: String,
        /// What is wrong with it.
        message: String,
    },
    /// The file is valid but describes something this engine does not reproduce exactly
    /// (e.g. a DART booster, LightGBM linear trees, an unknown objective).
    Unsupported {
        /// The field that names the unsupported feature.
        part: String,
        /// What is not supported.
        message: String,
    },
    /// A prediction call got buffers of the wrong size.
    Shape {
        /// What did not match.
        message: String,
    },
}

impl Error {
    pub(super) fn syntax(part: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Syntax { part: part.into(), message: message.to_string() }
    }
    pub(super) fn missing(part: impl Into<String>) -> Self {
        Error::Missing { part: part.into() }
    }
    pub(super) fn invalid(part: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Invalid { part: part.into(), message: message.to_string() }
    }
    pub(super) fn unsupported(part: impl Into<String>, message: impl fmt::Display) -> Self {
        Error::Unsupported { part: part.into(), message: message.to_string() }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Syntax { part, message } => write!(f, "{part}: cannot parse: {message}"),
            Error::Missing { part } => write!(f, "{part}: missing"),
            Error::Invalid { part, message } => write!(f, "{part}: {message}"),
            Error::Unsupported { part, message } => write!(f, "{part}: not supported: {message}"),
            Error::Shape { message } => write!(f, "prediction buffers: {message}"),
        }
    }
}

impl std::error::Error for Error {}
