//! Loader for XGBoost's own JSON model format (`Booster.save_model("model.json")`), gbtree
//! booster. XGBoost predicts in float32: inputs are rounded to float32, a split sends
//! `x < split_condition` left, NaN takes `default_left`, leaf values are summed in float32
//! starting from the intercept (base_score mapped to margin space), then the objective's
//! float32 transform is applied.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::Error;
use super::model::{CatRule, LabelRule, Link, Precision, RawNode, RawTree, Spec, Split, Task, TreeEnsemble};
use super::threshold;

#[derive(Deserialize)]
struct File {
    learner: Learner,
}

#[derive(Deserialize)]
struct Learner {
    #[serde(default)]
    feature_names: Option<Vec<String>>,
    #[serde(default)]
    feature_types: Option<Vec<String>>,
    gradient_booster: Booster,
    learner_model_param: ModelParam,
    objective: Objective,
}

#[derive(Deserialize)]
struct ModelParam {
    base_score: String,
    num_class: String,
    num_feature: String,
    #[serde(default)]
    num_target: Option<String>,
}

#[derive(Deserialize)]
struct Objective {
    name: String,
}

#[derive(Deserialize)]
struct Booster {
    name: String,
    #[serde(default)]
    model: Option<GbTreeModel>,
}

#[derive(Deserialize)]
struct GbTreeModel {
    trees: Vec<Tree>,
    tree_info: Vec<i64>,
}

#[derive(Deserialize)]
struct Tree {
    left_children: Vec<i64>,
    right_children: Vec<i64>,
    split_indices: Vec<i64>,
    /// Parsed from its text straight to float32 (a detour through f64 could double-round).
    split_conditions: Box<RawValue>,
    default_left: Vec<i64>,
    #[serde(default)]
    split_type: Option<Vec<i64>>,
    #[serde(default)]
    categories: Option<Vec<i64>>,
    #[serde(default)]
    categories_nodes: Option<Vec<i64>>,
    #[serde(default)]
    categories_segments: Option<Vec<i64>>,
    #[serde(default)]
    categories_sizes: Option<Vec<i64>>,
    #[serde(default)]
    tree_param: Option<TreeParam>,
}

#[derive(Deserialize)]
struct TreeParam {
    #[serde(default)]
    size_leaf_vector: Option<String>,
}

/// A JSON array of numbers, each parsed as float32 from its own text.
fn f32_array(raw: &RawValue, part: &str) -> Result<Vec<f32>, Error> {
    let text = raw.get().trim();
    let inner = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| Error::invalid(part, "not an array"))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    inner
        .split(',')
        .map(|s| s.trim().parse::<f32>().map_err(|e| Error::invalid(part, format!("{s:?}: {e}"))))
        .collect()
}

/// `base_score` is "[v0,v1,...]" (XGBoost >= 3.1, one per output) or a bare "v".
fn base_scores(text: &str) -> Result<Vec<f32>, Error> {
    let part = "learner_model_param.base_score";
    let t = text.trim();
    let inner = t.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(t);
    inner
        .split(',')
        .map(|s| s.trim().parse::<f32>().map_err(|e| Error::invalid(part, format!("{s:?}: {e}"))))
        .collect()
}

fn count(text: &str, part: &str) -> Result<usize, Error> {
    text.trim().parse::<usize>().map_err(|e| Error::invalid(part, format!("{text:?}: {e}")))
}

impl TreeEnsemble {
    /// Load XGBoost's JSON model (`save_model("x.json")`), gbtree booster.
    pub fn from_xgboost_json(bytes: &[u8]) -> Result<Self, Error> {
        let file: File = serde_json::from_slice(bytes).map_err(|e| Error::syntax("XGBoost JSON", e))?;
        let learner = file.learner;
        let param = &learner.learner_model_param;
        let n_features = count(&param.num_feature, "learner_model_param.num_feature")?;
        let num_class = count(&param.num_class, "learner_model_param.num_class")?;
        let num_target = match &param.num_target {
            Some(t) => count(t, "learner_model_param.num_target")?,
            None => 1,
        };
        if num_target > 1 {
            return Err(Error::unsupported("learner_model_param.num_target", "multi-output models"));
        }
        if learner.gradient_booster.name != "gbtree" {
            return Err(Error::unsupported(
                "gradient_booster.name",
                format!(
                    "{:?} (only gbtree; dart weights trees at predict time, gblinear has no trees)",
                    learner.gradient_booster.name
                ),
            ));
        }
        let model = learner.gradient_booster.model.ok_or_else(|| Error::missing("gradient_booster.model"))?;
        let n_groups = num_class.max(1);

        let objective = learner.objective.name.as_str();
        // (task, link, label rule, how base_score maps to margin)
        enum Margin {
            Identity,
            Logit,
            Log,
        }
        let (task, link, label, margin) = match objective {
            "reg:squarederror"
            | "reg:linear"
            | "reg:squaredlogerror"
            | "reg:pseudohubererror"
            | "reg:absoluteerror"
            | "reg:quantileerror" => (Task::Regression, Link::Identity, None, Margin::Identity),
            "reg:logistic" => (Task::Regression, Link::LogisticF32Value, None, Margin::Logit),
            "count:poisson" | "reg:gamma" | "reg:tweedie" => {
                (Task::Regression, Link::ExpF32, None, Margin::Log)
            }
            "binary:logistic" => (
                Task::Classification { n_classes: 2 },
                Link::LogisticF32,
                Some(LabelRule::ProbabilityAboveHalf),
                Margin::Logit,
            ),
            "multi:softprob" => (
                Task::Classification { n_classes: num_class },
                Link::SoftmaxF32,
                Some(LabelRule::ArgmaxProbability),
                Margin::Identity,
            ),
            "multi:softmax" => (
                Task::Classification { n_classes: num_class },
                Link::SoftmaxF32,
                Some(LabelRule::ArgmaxRaw),
                Margin::Identity,
            ),
            other => return Err(Error::unsupported("objective.name", format!("{other:?}"))),
        };
        if objective.starts_with("multi:") && num_class < 2 {
            return Err(Error::invalid(
                "learner_model_param.num_class",
                "a multi: objective needs num_class >= 2",
            ));
        }
        if !objective.starts_with("multi:") && num_class > 1 {
            return Err(Error::invalid(
                "learner_model_param.num_class",
                format!("{num_class} classes with objective {objective}"),
            ));
        }
        // Every class has at least one tree per round; this also bounds what is sized by it.
        if n_groups > model.trees.len().max(1) {
            return Err(Error::invalid(
                "learner_model_param.num_class",
                format!("{num_class} classes but {} trees", model.trees.len()),
            ));
        }
        let mut base = base_scores(&param.base_score)?;
        if base.len() == 1 && n_groups > 1 {
            base = vec![base[0]; n_groups];
        }
        if base.len() != n_groups {
            return Err(Error::invalid(
                "learner_model_param.base_score",
                format!("{} values for {n_groups} outputs", base.len()),
            ));
        }
        // XGBoost's ProbToMargin, in float32.
        let init = base
            .iter()
            .map(|&b| match margin {
                Margin::Identity => b,
                Margin::Logit => {
                    let eps = 1e-6f32;
                    let b = b.max(eps).min(1.0f32 - eps);
                    -(1.0f32 / b - 1.0f32).ln()
                }
                Margin::Log => b.ln(),
            } as f64)
            .collect::<Vec<_>>();

        if model.tree_info.len() != model.trees.len() {
            return Err(Error::invalid(
                "tree_info",
                format!("{} entries for {} trees", model.tree_info.len(), model.trees.len()),
            ));
        }
        let types = learner.feature_types.as_deref().filter(|t| !t.is_empty());
        if let Some(t) = types {
            if t.len() != n_features {
                return Err(Error::invalid(
                    "feature_types",
                    format!("{} types for {n_features} features", t.len()),
                ));
            }
        }
        if let Some(names) = &learner.feature_names {
            if !names.is_empty() && names.len() != n_features {
                return Err(Error::invalid(
                    "feature_names",
                    format!("{} names for {n_features} features", names.len()),
                ));
            }
        }
        let categorical: Vec<usize> = types
            .map(|t| t.iter().enumerate().filter(|(_, s)| s.as_str() == "c").map(|(i, _)| i).collect())
            .unwrap_or_default();
        let mut trees = Vec::with_capacity(model.trees.len());
        for (t, tree) in model.trees.iter().enumerate() {
            let group = usize::try_from(model.tree_info[t]).ok().filter(|&g| g < n_groups);
            let group =
                group.ok_or_else(|| Error::invalid(format!("tree_info[{t}]"), "group out of range"))?;
            trees.push(convert_tree(tree, t, group)?);
        }
        let spec = Spec {
            n_features,
            task,
            feature_names: learner.feature_names.filter(|n| !n.is_empty()),
            categorical,
            allows_missing: true,
            n_outputs: n_groups,
            leaf_width: 1,
            init,
            average: None,
            precision: Precision::F32,
            cat_rule: CatRule::XGBoost,
            link,
            label,
            trees,
        };
        TreeEnsemble::build(spec, "XGBoost JSON")
    }
}

fn convert_tree(tree: &Tree, t: usize, group: usize) -> Result<RawTree, Error> {
    let p = |field: &str| format!("trees[{t}].{field}");
    if let Some(tp) = &tree.tree_param {
        if let Some(s) = &tp.size_leaf_vector {
            if count(s, &p("tree_param.size_leaf_vector"))? > 1 {
                return Err(Error::unsupported(
                    p("tree_param.size_leaf_vector"),
                    "vector-leaf (multi-target) trees",
                ));
            }
        }
    }
    let cond = f32_array(&tree.split_conditions, &p("split_conditions"))?;
    let n = tree.left_children.len();
    for (name, len) in [
        ("right_children", tree.right_children.len()),
        ("split_indices", tree.split_indices.len()),
        ("split_conditions", cond.len()),
        ("default_left", tree.default_left.len()),
    ] {
        if len != n {
            return Err(Error::invalid(p(name), format!("{len} entries, but left_children has {n}")));
        }
    }
    let split_type = tree.split_type.as_deref();
    if let Some(s) = split_type {
        if s.len() != n {
            return Err(Error::invalid(p("split_type"), format!("{} entries for {n} nodes", s.len())));
        }
    }
    let mut nodes = Vec::with_capacity(n);
    let mut values = Vec::new();
    for i in 0..n {
        let (l, r) = (tree.left_children[i], tree.right_children[i]);
        if l == -1 {
            // A leaf keeps its value in split_conditions.
            nodes.push(RawNode::Leaf(values.len()));
            values.push(cond[i] as f64);
            continue;
        }
        let feature = usize::try_from(tree.split_indices[i])
            .map_err(|_| Error::invalid(p(&format!("split_indices[{i}]")), "negative"))?;
        let default_left = tree.default_left[i] != 0;
        let categorical = split_type.map(|s| s[i] == 1).unwrap_or(false);
        let split = if categorical {
            let cats = node_categories(tree, i, t)?;
            // XGBoost: a category in the node's set goes RIGHT; everything else (not in the
            // set, past the set's bitfield, negative, >= 2^24) goes left.
            let max = cats.iter().copied().max();
            let words = max.map(|m| (m as usize) / 32 + 1).unwrap_or(0);
            let mut left_set = vec![u32::MAX; words];
            for c in cats {
                left_set[(c / 32) as usize] &= !(1u32 << (c % 32));
            }
            Split::Categorical { left_set, out_left: true }
        } else {
            if cond[i].is_nan() {
                return Err(Error::invalid(p(&format!("split_conditions[{i}]")), "NaN split"));
            }
            Split::Numeric { bound: threshold::xgboost_lt(cond[i]), zero_is_missing: false }
        };
        nodes.push(RawNode::split_of_file(
            feature,
            split,
            default_left,
            (l, r),
            ("left_children", "right_children"),
            i,
            p,
        )?);
    }
    Ok(RawTree { output: group, nodes, values })
}

/// The category values stored for categorical node `nid`.
fn node_categories(tree: &Tree, nid: usize, t: usize) -> Result<Vec<u32>, Error> {
    let p = |field: &str| format!("trees[{t}].{field}");
    let (Some(cats), Some(nodes), Some(segs), Some(sizes)) =
        (&tree.categories, &tree.categories_nodes, &tree.categories_segments, &tree.categories_sizes)
    else {
        return Err(Error::missing(p("categories")));
    };
    if nodes.len() != segs.len() || nodes.len() != sizes.len() {
        return Err(Error::invalid(
            p("categories_nodes"),
            "categories_nodes/segments/sizes differ in length",
        ));
    }
    let k = nodes.iter().position(|&x| x == nid as i64).ok_or_else(|| {
        Error::invalid(p("categories_nodes"), format!("no categories for categorical node {nid}"))
    })?;
    let (seg, size) = (segs[k], sizes[k]);
    let range = usize::try_from(seg)
        .ok()
        .zip(usize::try_from(size).ok())
        .and_then(|(s, z)| s.checked_add(z).map(|e| s..e))
        .and_then(|r| cats.get(r));
    let slice = range.ok_or_else(|| {
        Error::invalid(p("categories_segments"), format!("node {nid}: segment out of range"))
    })?;
    slice
        .iter()
        .map(|&c| {
            u32::try_from(c)
                .ok()
                .filter(|&c| c < (1 << 24))
                .ok_or_else(|| Error::invalid(p("categories"), format!("category {c} out of range")))
        })
        .collect()
}
