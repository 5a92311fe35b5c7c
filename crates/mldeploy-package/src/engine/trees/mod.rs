//! Exact tree-ensemble inference for scikit-learn, XGBoost and LightGBM models.
//!
//! # Contract
//!
//! A [`TreeEnsemble`] is loaded from one model file and then answers batches of rows:
//!
//! * [`TreeEnsemble::from_sklearn_json`]: the `mldeploy-trees/1` JSON written by
//!   `export_trees.py` for DecisionTree*, RandomForest*, ExtraTrees*, GradientBoosting*
//!   and HistGradientBoosting* (classifiers and regressors);
//! * [`TreeEnsemble::from_xgboost_json`]: XGBoost's own `save_model("x.json")` (gbtree);
//! * [`TreeEnsemble::from_lightgbm_text`]: LightGBM's own text model (gbdt, rf).
//!
//! Loading never panics: every malformed, inconsistent or unsupported file gives an
//! [`Error`] naming the part at fault. A loaded ensemble is immutable and can be shared
//! between threads.
//!
//! Input: `x` is row-major `[n_rows, n_features]` of f64. NaN means missing. A categorical
//! input ([`TreeEnsemble::categorical_features`]) holds the category's integer code as f64,
//! in the code order the exporter wrote; an unknown category is passed as NaN.
//!
//! Output ([`Prediction`]): regressors give one value per row; classifiers give the class
//! index per row, chosen by the library's own predict rule, and row-major probabilities
//! (binary models too: two columns).
//!
//! Exactness: each library's arithmetic is reproduced, not approximated: the same input
//! rounding (sklearn trees and XGBoost round inputs to float32), the same comparison (`<=`
//! or XGBoost's `<`), the same missing-value and category rules, the same summation order
//! and precision (float32 for XGBoost), and the same link function. Labels are equal to the
//! library's; probabilities and values agree to within a few ulps (the libraries' `exp`
//! may differ from Rust's by an ulp).
//!
//! # The `mldeploy-trees/1` JSON format
//!
//! ```text
//! {
//!   "format": "mldeploy-trees/1",
//!   "source": {...},                        free-form provenance, not read
//!   "n_features": 4,
//!   "feature_names": ["a", ...],            optional
//!   "task": {"type": "classification", "n_classes": 3, "classes": [...]}
//!         | {"type": "regression"},
//!   "input": "float32" | "float64",         inputs are rounded to float32 before comparing
//!   "n_outputs": 1,                         raw score columns
//!   "leaf_width": 1,                        values per leaf (n_classes for forest classifiers)
//!   "init": [0.0],                          initial raw score per output column
//!   "average": false,                       divide the sums by the number of trees
//!   "link": "identity" | "exp" | "probability" | "logistic" | "logistic2" | "softmax",
//!   "label": "argmax_probability" | "raw_nonnegative" | "raw_positive" | "argmax_raw",
//!   "allow_missing": true,                  whether the library accepts NaN for this model
//!   "categorical": [{"feature": 2, "known": [8 u32 words], "categories": [...]}],
//!   "trees": [{
//!     "output": 0,                          raw score column the tree adds to
//!     "scale": 0.1,                         leaf values are multiplied by this (optional)
//!     "left": [1, -1, -1], "right": [2, -1, -1],   child node indices, -1 for leaves
//!     "feature": [0, -2, -2], "threshold": [0.5, -2.0, -2.0],
//!     "missing_left": [1, 0, 0],            where NaN goes
//!     "cat_bitset": [-1, -1, -1],           optional: index into "bitsets" for categorical nodes
//!     "bitsets": [[8 u32 words]],           optional: categories going left
//!     "leaf_value": [v, ...]                leaf_width values per leaf, leaves in node order
//!   }, ...]
//! }
//! ```
//!
//! A node goes left when `x <= threshold` (x rounded to float32 first when `input` is
//! `float32`), and NaN goes where `missing_left` says. A categorical node (HistGradientBoosting
//! semantics) goes left when the code is in its bitset, right when it is another known
//! category of that feature, and to the missing side otherwise (unknown, negative, NaN).
//! Non-finite floats are written as the strings "inf", "-inf", "nan".

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod error;
mod lightgbm;
mod model;
mod package;
mod sklearn;
mod threshold;
mod xgboost;

pub use error::Error;
pub use model::{Prediction, Task, TreeEnsemble};
pub(crate) use package::Trees;
pub use sklearn::SKLEARN_FORMAT;
