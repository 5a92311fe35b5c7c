//! Loader for the `mldeploy-trees/1` JSON format written by `export_trees.py` from fitted
//! scikit-learn estimators. The format is documented in the module docs (`lib.rs`) and in
//! the notes; the exporter makes every semantic choice explicit (input rounding, initial
//! scores, averaging, link, label rule), so this loader needs no knowledge of estimator names.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::error::Error;
use super::model::{
    CatRule, LabelRule, Link, Precision, RawNode, RawTree, Spec, Split, Task, TreeEnsemble, MAX_FEATURES,
};
use super::threshold;

/// The format tag this loader reads.
pub const SKLEARN_FORMAT: &str = "mldeploy-trees/1";

/// A float that may also be written as the string "inf", "-inf" or "nan" (JSON has no
/// literal for them; HistGradientBoosting can store an infinite threshold).
#[derive(Debug, Clone, Copy)]
struct Num(f64);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number or \"inf\", \"-inf\", \"nan\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Num, E> {
                match v {
                    "inf" | "Infinity" => Ok(Num(f64::INFINITY)),
                    "-inf" | "-Infinity" => Ok(Num(f64::NEG_INFINITY)),
                    "nan" | "NaN" => Ok(Num(f64::NAN)),
                    _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    format: String,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<serde_json::Value>,
    n_features: usize,
    #[serde(default)]
    feature_names: Option<Vec<String>>,
    task: TaskSpec,
    input: String,
    n_outputs: usize,
    #[serde(default = "one")]
    leaf_width: usize,
    init: Vec<Num>,
    #[serde(default)]
    average: bool,
    link: String,
    #[serde(default)]
    label: Option<String>,
    allow_missing: bool,
    #[serde(default)]
    categorical: Vec<CatFeature>,
    trees: Vec<TreeSpec>,
}

fn one() -> usize {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    n_classes: Option<usize>,
    #[serde(default)]
    #[allow(dead_code)]
    classes: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatFeature {
    feature: usize,
    /// Bitset (u32 words, bit c of word c/32) of the category codes seen in training.
    known: Vec<u32>,
    /// The category labels in code order (informational here; the server maps with them).
    #[serde(default)]
    #[allow(dead_code)]
    categories: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeSpec {
    #[serde(default)]
    output: usize,
    #[serde(default)]
    scale: Option<Num>,
    left: Vec<i64>,
    right: Vec<i64>,
    feature: Vec<i64>,
    threshold: Vec<Num>,
    missing_left: Vec<u8>,
    leaf_value: Vec<Num>,
    #[serde(default)]
    cat_bitset: Option<Vec<i64>>,
    #[serde(default)]
    bitsets: Option<Vec<Vec<u32>>>,
}

impl TreeEnsemble {
    /// Load a model exported by `export_trees.py` (format `mldeploy-trees/1`).
    pub fn from_sklearn_json(bytes: &[u8]) -> Result<Self, Error> {
        let file: File = serde_json::from_slice(bytes).map_err(|e| Error::syntax("sklearn JSON", e))?;
        if file.format != SKLEARN_FORMAT {
            return Err(Error::unsupported(
                "format",
                format!("{:?} (expected {SKLEARN_FORMAT:?})", file.format),
            ));
        }
        // Checked before anything is sized by it.
        if file.n_features > MAX_FEATURES {
            return Err(Error::unsupported(
                "n_features",
                format!("{} (at most {MAX_FEATURES})", file.n_features),
            ));
        }
        let task = match (file.task.kind.as_str(), file.task.n_classes) {
            ("regression", None) => Task::Regression,
            ("classification", Some(n)) => Task::Classification { n_classes: n },
            ("classification", None) => return Err(Error::missing("task.n_classes")),
            ("regression", Some(_)) => {
                return Err(Error::invalid("task.n_classes", "a regressor has no classes"))
            }
            (other, _) => return Err(Error::unsupported("task.type", format!("{other:?}"))),
        };
        let round_to_f32 = match file.input.as_str() {
            "float32" => true,
            "float64" => false,
            other => return Err(Error::unsupported("input", format!("{other:?} (float32 or float64)"))),
        };
        let link = match file.link.as_str() {
            "identity" => Link::Identity,
            "exp" => Link::Exp,
            "probability" => Link::Probability,
            "logistic" => Link::Logistic { scale: 1.0 },
            "logistic2" => Link::Logistic { scale: 2.0 },
            "softmax" => Link::Softmax,
            other => return Err(Error::unsupported("link", format!("{other:?}"))),
        };
        let label = match file.label.as_deref() {
            None => None,
            Some("argmax_probability") => Some(LabelRule::ArgmaxProbability),
            Some("raw_nonnegative") => Some(LabelRule::RawNonNegative),
            Some("raw_positive") => Some(LabelRule::RawPositive),
            Some("argmax_raw") => Some(LabelRule::ArgmaxRaw),
            Some(other) => return Err(Error::unsupported("label", format!("{other:?}"))),
        };
        if let Some(names) = &file.feature_names {
            if names.len() != file.n_features {
                return Err(Error::invalid(
                    "feature_names",
                    format!("{} names for {} features", names.len(), file.n_features),
                ));
            }
        }
        // Known-category bitsets per feature (HistGradientBoosting's unknown-category rule).
        let mut known: Vec<Option<&[u32]>> = vec![None; file.n_features];
        for (i, c) in file.categorical.iter().enumerate() {
            if c.feature >= file.n_features {
                return Err(Error::invalid(
                    format!("categorical[{i}].feature"),
                    format!("{} out of range", c.feature),
                ));
            }
            if c.known.len() != 8 {
                return Err(Error::invalid(
                    format!("categorical[{i}].known"),
                    "must have 8 words (256 categories)",
                ));
            }
            known[c.feature] = Some(&c.known);
        }

        let mut trees = Vec::with_capacity(file.trees.len());
        for (t, spec) in file.trees.iter().enumerate() {
            trees.push(tree(spec, t, file.leaf_width, round_to_f32, &known)?);
        }
        let spec = Spec {
            n_features: file.n_features,
            task,
            feature_names: file.feature_names,
            categorical: file.categorical.iter().map(|c| c.feature).collect(),
            allows_missing: file.allow_missing,
            n_outputs: file.n_outputs,
            leaf_width: file.leaf_width,
            init: file.init.iter().map(|n| n.0).collect(),
            average: if file.average { Some(file.trees.len() as f64) } else { None },
            precision: Precision::F64,
            cat_rule: CatRule::Sklearn,
            link,
            label,
            trees,
        };
        TreeEnsemble::build(spec, "sklearn JSON")
    }
}

fn tree(
    spec: &TreeSpec,
    t: usize,
    width: usize,
    round_to_f32: bool,
    known: &[Option<&[u32]>],
) -> Result<RawTree, Error> {
    let n = spec.left.len();
    let p = |field: &str| format!("trees[{t}].{field}");
    for (name, len) in [
        ("right", spec.right.len()),
        ("feature", spec.feature.len()),
        ("threshold", spec.threshold.len()),
        ("missing_left", spec.missing_left.len()),
    ] {
        if len != n {
            return Err(Error::invalid(p(name), format!("{len} entries, but left has {n}")));
        }
    }
    if let Some(c) = &spec.cat_bitset {
        if c.len() != n {
            return Err(Error::invalid(p("cat_bitset"), format!("{} entries, but left has {n}", c.len())));
        }
    }
    let scale = spec.scale.map(|s| s.0).unwrap_or(1.0);
    if !scale.is_finite() {
        return Err(Error::invalid(p("scale"), "not finite"));
    }
    let bitsets = spec.bitsets.as_deref().unwrap_or(&[]);
    let mut nodes = Vec::with_capacity(n);
    let mut values = Vec::new();
    let mut leaf_at = 0usize;
    for i in 0..n {
        let (l, r) = (spec.left[i], spec.right[i]);
        if l < 0 || r < 0 {
            if l != r {
                return Err(Error::invalid(p(&format!("left[{i}]")), "a node has one child only"));
            }
            // Leaves take the next `width` leaf values, in node order; the tree's learning
            // rate is applied here once, which is the same single rounding as sklearn's
            // `scale * value` at predict time.
            let vals = spec
                .leaf_value
                .get(leaf_at..leaf_at + width)
                .ok_or_else(|| Error::invalid(p("leaf_value"), "fewer values than leaves"))?;
            let start = values.len();
            values.extend(vals.iter().map(|v| scale * v.0));
            leaf_at += width;
            nodes.push(RawNode::Leaf(start));
            continue;
        }
        let feature = usize::try_from(spec.feature[i])
            .map_err(|_| Error::invalid(p(&format!("feature[{i}]")), "negative feature index"))?;
        let default_left = match spec.missing_left[i] {
            0 => false,
            1 => true,
            _ => return Err(Error::invalid(p(&format!("missing_left[{i}]")), "must be 0 or 1")),
        };
        let cat = spec.cat_bitset.as_ref().map(|c| c[i]).unwrap_or(-1);
        let split = if cat >= 0 {
            let left_bits = bitsets
                .get(cat as usize)
                .ok_or_else(|| Error::invalid(p(&format!("cat_bitset[{i}]")), "no such bitset"))?;
            if left_bits.len() != 8 {
                return Err(Error::invalid(p(&format!("bitsets[{cat}]")), "must have 8 words"));
            }
            let known = known.get(feature).copied().flatten().ok_or_else(|| {
                Error::invalid(
                    p(&format!("feature[{i}]")),
                    "categorical split on a feature without known categories",
                )
            })?;
            // sklearn: in the left bitset -> left; known -> right; unknown -> missing side.
            let left_set = (0..8)
                .map(|w| left_bits[w] | (!known[w] & if default_left { u32::MAX } else { 0 }))
                .collect();
            Split::Categorical { left_set, out_left: default_left }
        } else {
            let thr = spec.threshold[i].0;
            if thr.is_nan() {
                return Err(Error::invalid(p(&format!("threshold[{i}]")), "NaN threshold"));
            }
            let bound = if round_to_f32 { threshold::sklearn_f32(thr) } else { Some(thr) };
            Split::Numeric { bound, zero_is_missing: false }
        };
        nodes.push(RawNode::split_of_file(feature, split, default_left, (l, r), ("left", "right"), i, p)?);
    }
    if leaf_at != spec.leaf_value.len() {
        return Err(Error::invalid(
            p("leaf_value"),
            format!("{} values for {} leaf slots", spec.leaf_value.len(), leaf_at),
        ));
    }
    Ok(RawTree { output: spec.output, nodes, values })
}
