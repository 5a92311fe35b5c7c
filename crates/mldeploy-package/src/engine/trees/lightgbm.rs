//! Loader for LightGBM's text model format (`Booster.save_model` / `model_to_string`).
//! LightGBM predicts in float64: the C API first flushes |x| <= 1e-35 to 0, each numeric
//! node sends `x <= threshold` left with its missing type (None: NaN is 0; Zero: 0 and NaN
//! take the default side; NaN: NaN takes the default side), categorical nodes send the
//! `(int)x` categories of their bitset left, and the per-class sums (averaged in rf mode)
//! go through the objective's output conversion.

use super::error::Error;
use super::model::{CatRule, LabelRule, Link, Precision, RawNode, RawTree, Spec, Split, Task, TreeEnsemble};
use super::threshold;

/// `key=value` lines of one section, in file order.
struct Section<'a> {
    name: String,
    lines: Vec<(&'a str, &'a str)>,
}

impl<'a> Section<'a> {
    fn get(&self, key: &str) -> Option<&'a str> {
        self.lines.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn req(&self, key: &str) -> Result<&'a str, Error> {
        self.get(key).ok_or_else(|| Error::missing(format!("{} {key}", self.name)))
    }
    fn num<T: std::str::FromStr>(&self, key: &str) -> Result<T, Error>
    where
        T::Err: std::fmt::Display,
    {
        let v = self.req(key)?;
        v.trim()
            .parse::<T>()
            .map_err(|e| Error::invalid(format!("{} {key}", self.name), format!("{v:?}: {e}")))
    }
    fn list<T: std::str::FromStr>(&self, key: &str, len: usize) -> Result<Vec<T>, Error>
    where
        T::Err: std::fmt::Display,
    {
        let part = || format!("{} {key}", self.name);
        let v = self.req(key)?;
        let items: Vec<T> = v
            .split_whitespace()
            .map(|s| s.parse::<T>().map_err(|e| Error::invalid(part(), format!("{s:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        if items.len() != len {
            return Err(Error::invalid(part(), format!("{} entries, expected {len}", items.len())));
        }
        Ok(items)
    }
}

impl TreeEnsemble {
    /// Load LightGBM's text model format (`save_model` / `model_to_string`), gbdt or rf.
    pub fn from_lightgbm_text(text: &str) -> Result<Self, Error> {
        let mut header = Section { name: "header".into(), lines: Vec::new() };
        let mut trees: Vec<Section<'_>> = Vec::new();
        let mut pandas_categorical = false;
        let mut saw_end = false;
        let mut average_output = false;
        let mut first = true;
        for raw in text.lines() {
            let line = raw.trim_end_matches('\r');
            if first {
                first = false;
                if line.trim() != "tree" {
                    return Err(Error::syntax("first line", "a LightGBM model starts with \"tree\""));
                }
                continue;
            }
            if saw_end {
                if line.starts_with("pandas_categorical:") {
                    pandas_categorical = true;
                }
                continue;
            }
            if line == "end of trees" {
                saw_end = true;
                continue;
            }
            if line.is_empty() {
                continue;
            }
            if line == "average_output" {
                average_output = true;
                continue;
            }
            let (k, v) = match line.split_once('=') {
                Some(kv) => kv,
                None => return Err(Error::syntax(format!("line {line:?}"), "expected key=value")),
            };
            if k == "Tree" {
                trees.push(Section { name: format!("Tree={v}"), lines: Vec::new() });
            } else if let Some(t) = trees.last_mut() {
                t.lines.push((k, v));
            } else {
                header.lines.push((k, v));
            }
        }
        if !saw_end {
            return Err(Error::missing("\"end of trees\" line (truncated file?)"));
        }
        // The category order (pandas_categorical) matters to the caller's encoding only.
        let _ = pandas_categorical;

        let n_features = header.num::<usize>("max_feature_idx")? + 1;
        let num_class: usize = header.num("num_class")?;
        let per_iter: usize = header.num("num_tree_per_iteration")?;
        if per_iter != num_class.max(1) {
            return Err(Error::invalid(
                "header num_tree_per_iteration",
                format!("{per_iter} with num_class={num_class}"),
            ));
        }
        let objective = header.req("objective")?;
        let (task, link, label) = objective_link(objective, num_class, per_iter)?;
        let feature_names: Option<Vec<String>> =
            header.get("feature_names").map(|v| v.split_whitespace().map(str::to_owned).collect());
        if let Some(names) = &feature_names {
            if names.len() != n_features {
                return Err(Error::invalid(
                    "header feature_names",
                    format!("{} names for {n_features} features", names.len()),
                ));
            }
        }
        // Categorical features list their category values ("0:1:2"); numeric ones a range
        // ("[lo:hi]"); unused ones "none".
        let mut categorical = Vec::new();
        if let Some(infos) = header.get("feature_infos") {
            for (i, info) in infos.split_whitespace().enumerate() {
                if info != "none" && !info.starts_with('[') {
                    categorical.push(i);
                }
            }
        }
        if trees.is_empty() {
            return Err(Error::invalid("trees", "the model has no trees"));
        }
        if !trees.len().is_multiple_of(per_iter) {
            return Err(Error::invalid(
                "trees",
                format!("{} trees is not a multiple of {per_iter} per iteration", trees.len()),
            ));
        }
        let mut raw_trees = Vec::with_capacity(trees.len());
        for (t, sec) in trees.iter().enumerate() {
            raw_trees.push(convert_tree(sec, t % per_iter, n_features, &mut categorical)?);
        }
        let n_iter = (trees.len() / per_iter) as f64;
        let spec = Spec {
            n_features,
            task,
            feature_names,
            categorical,
            allows_missing: true,
            n_outputs: per_iter,
            leaf_width: 1,
            init: vec![0.0; per_iter],
            average: if average_output { Some(n_iter) } else { None },
            precision: Precision::F64,
            cat_rule: CatRule::LightGBM,
            link,
            label,
            trees: raw_trees,
        };
        TreeEnsemble::build(spec, "LightGBM model")
    }
}

/// The objective line, e.g. `binary sigmoid:1`, `multiclass num_class:3`, `regression`.
fn objective_link(
    line: &str,
    num_class: usize,
    per_iter: usize,
) -> Result<(Task, Link, Option<LabelRule>), Error> {
    let part = "header objective";
    let mut words = line.split_whitespace();
    let name = words.next().ok_or_else(|| Error::invalid(part, "empty"))?;
    let mut sigmoid = 1.0f64;
    let mut sqrt = false;
    for w in words {
        if let Some(v) = w.strip_prefix("sigmoid:") {
            sigmoid = v.parse().map_err(|e| Error::invalid(part, format!("sigmoid {v:?}: {e}")))?;
        } else if w == "sqrt" {
            sqrt = true;
        }
    }
    let need_single = |task: Task, link: Link, label| {
        if per_iter != 1 {
            return Err(Error::invalid(part, format!("{name} with {per_iter} trees per iteration")));
        }
        Ok((task, link, label))
    };
    match name {
        "regression"
        | "regression_l2"
        | "l2"
        | "mean_squared_error"
        | "mse"
        | "regression_l1"
        | "l1"
        | "mean_absolute_error"
        | "mae"
        | "huber"
        | "fair"
        | "quantile"
        | "mape"
        | "mean_absolute_percentage_error" => {
            need_single(Task::Regression, if sqrt { Link::SignSquare } else { Link::Identity }, None)
        }
        "poisson" | "gamma" | "tweedie" => need_single(Task::Regression, Link::Exp, None),
        "cross_entropy" | "xentropy" => {
            need_single(Task::Regression, Link::LogisticValue { scale: 1.0 }, None)
        }
        "cross_entropy_lambda" | "xentlambda" => need_single(Task::Regression, Link::Log1pExp, None),
        "binary" => need_single(
            Task::Classification { n_classes: 2 },
            Link::Logistic { scale: sigmoid },
            Some(LabelRule::ArgmaxProbability),
        ),
        "multiclass" | "softmax" if num_class >= 2 && per_iter == num_class => Ok((
            Task::Classification { n_classes: num_class },
            Link::Softmax,
            Some(LabelRule::ArgmaxProbability),
        )),
        "multiclassova" | "multiclass_ova" | "ova" | "ovr" if num_class >= 2 && per_iter == num_class => {
            Ok((
                Task::Classification { n_classes: num_class },
                Link::OvaLogistic { scale: sigmoid },
                Some(LabelRule::ArgmaxProbability),
            ))
        }
        other => Err(Error::unsupported(part, format!("{other:?}"))),
    }
}

fn convert_tree(
    sec: &Section<'_>,
    output: usize,
    n_features: usize,
    categorical: &mut Vec<usize>,
) -> Result<RawTree, Error> {
    let part = |k: &str| format!("{} {k}", sec.name);
    if let Some(v) = sec.get("is_linear") {
        if v.trim() != "0" {
            return Err(Error::unsupported(part("is_linear"), "linear trees (linear_tree=true)"));
        }
    }
    let n_leaves: usize = sec.num("num_leaves")?;
    if n_leaves == 0 {
        return Err(Error::invalid(part("num_leaves"), "zero leaves"));
    }
    let leaf_value: Vec<f64> = sec.list("leaf_value", n_leaves)?;
    if n_leaves == 1 {
        return Ok(RawTree { output, nodes: vec![RawNode::Leaf(0)], values: leaf_value });
    }
    let n_int = n_leaves - 1;
    let split_feature: Vec<i64> = sec.list("split_feature", n_int)?;
    let thresholds: Vec<f64> = sec.list("threshold", n_int)?;
    let decision: Vec<i64> = sec.list("decision_type", n_int)?;
    let left: Vec<i64> = sec.list("left_child", n_int)?;
    let right: Vec<i64> = sec.list("right_child", n_int)?;
    let num_cat: usize = match sec.get("num_cat") {
        Some(_) => sec.num("num_cat")?,
        None => 0,
    };
    let (bounds, cat_words): (Vec<usize>, Vec<u32>) = if num_cat > 0 {
        let b: Vec<usize> = sec.list("cat_boundaries", num_cat + 1)?;
        let words: Vec<u32> = {
            let v = sec.req("cat_threshold")?;
            v.split_whitespace()
                .map(|s| {
                    s.parse::<u32>().map_err(|e| Error::invalid(part("cat_threshold"), format!("{s:?}: {e}")))
                })
                .collect::<Result<_, _>>()?
        };
        if b.windows(2).any(|w| w[0] > w[1]) || b.last().copied() != Some(words.len()) {
            return Err(Error::invalid(
                part("cat_boundaries"),
                "not increasing, or not ending at the cat_threshold length",
            ));
        }
        (b, words)
    } else {
        (Vec::new(), Vec::new())
    };
    // Internal nodes keep their index; leaf j becomes node n_int + j.
    let child = |v: i64, name: &str, i: usize| -> Result<usize, Error> {
        if v >= 0 {
            Ok(v as usize)
        } else {
            let leaf = (!v) as usize;
            if leaf >= n_leaves {
                return Err(Error::invalid(
                    part(&format!("{name}[{i}]")),
                    format!("leaf {leaf} out of range"),
                ));
            }
            Ok(n_int + leaf)
        }
    };
    let mut nodes = Vec::with_capacity(n_int + n_leaves);
    for i in 0..n_int {
        let feature = usize::try_from(split_feature[i])
            .ok()
            .filter(|&f| f < n_features)
            .ok_or_else(|| Error::invalid(part(&format!("split_feature[{i}]")), "out of range"))?;
        let dt = decision[i];
        if !(0..=127).contains(&dt) {
            return Err(Error::invalid(part(&format!("decision_type[{i}]")), format!("{dt}")));
        }
        let is_cat = dt & 1 != 0;
        let default_left = dt & 2 != 0;
        let missing_type = (dt >> 2) & 3;
        let thr = thresholds[i];
        let (split, default_left) = if is_cat {
            if thr.is_nan() || thr < 0.0 || thr as usize >= num_cat {
                return Err(Error::invalid(
                    part(&format!("threshold[{i}]")),
                    "categorical split index out of range",
                ));
            }
            let k = thr as usize;
            let left_set = cat_words[bounds[k]..bounds[k + 1]].to_vec();
            if !categorical.contains(&feature) {
                categorical.push(feature);
            }
            // NaN, negative and unseen categories all go right (default_left is unused).
            (Split::Categorical { left_set, out_left: false }, false)
        } else {
            if thr.is_nan() {
                return Err(Error::invalid(part(&format!("threshold[{i}]")), "NaN threshold"));
            }
            let bound = threshold::lightgbm_le(thr);
            match missing_type {
                // None: NaN is read as 0.0, so it goes wherever 0 goes.
                0 => (Split::Numeric { bound, zero_is_missing: false }, 0.0 <= thr),
                1 => (Split::Numeric { bound, zero_is_missing: true }, default_left),
                2 => (Split::Numeric { bound, zero_is_missing: false }, default_left),
                _ => return Err(Error::invalid(part(&format!("decision_type[{i}]")), "missing type 3")),
            }
        };
        nodes.push(RawNode::Split {
            feature,
            split,
            default_left,
            left: child(left[i], "left_child", i)?,
            right: child(right[i], "right_child", i)?,
        });
    }
    for j in 0..n_leaves {
        nodes.push(RawNode::Leaf(j));
    }
    // The root of a LightGBM tree is internal node 0, which is also our node 0.
    Ok(RawTree { output, nodes, values: leaf_value })
}
