//! The flat ensemble, its builder (shared by the three loaders) and the prediction loop.

use super::error::Error;
use super::threshold::LIGHTGBM_ZERO;

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One value per row.
    Regression,
    /// A class index and `n_classes` probabilities per row (binary models too: 2 columns).
    Classification {
        /// Number of classes (probability columns), at least 2.
        n_classes: usize,
    },
}

/// The answer for a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Classifiers: index of the predicted class per row, by the library's own predict rule.
    pub labels: Option<Vec<usize>>,
    /// Regressors: the predicted value per row.
    pub values: Option<Vec<f64>>,
    /// Classifiers: row-major `[n_rows, n_classes]` probabilities.
    pub probabilities: Option<Vec<f64>>,
}

/// How the accumulated leaf sums are added up: in float64, or in float32 (XGBoost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Precision {
    F64,
    F32,
}

/// Which library's rule turns a categorical input value into a category code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CatRule {
    /// scikit-learn HistGradientBoosting: NaN and negative values are missing; codes >= 256
    /// cannot occur after sklearn's own encoding and are treated like unknown categories.
    Sklearn,
    /// XGBoost: the value is rounded to float32; negative or >= 2^24 is "not in the set".
    XGBoost,
    /// LightGBM: C `(int)` truncation; NaN and out-of-int-range values become INT_MIN on x86
    /// and so go right, like negative codes.
    LightGBM,
}

/// The function from summed raw scores to the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Link {
    /// Regression: the raw score.
    Identity,
    /// Regression: `exp(raw)` in float64 (sklearn HGB poisson/gamma, LightGBM poisson/...).
    Exp,
    /// Regression: `expf(raw)` in float32 (XGBoost count:poisson, reg:gamma, reg:tweedie).
    ExpF32,
    /// Regression: XGBoost's float32 sigmoid (reg:logistic).
    LogisticF32Value,
    /// Regression: `1 / (1 + exp(-scale * raw))` (LightGBM cross_entropy).
    LogisticValue { scale: f64 },
    /// Regression: `log1p(exp(raw))` (LightGBM cross_entropy_lambda).
    Log1pExp,
    /// Regression: `sign(raw) * raw * raw` (LightGBM regression with `reg_sqrt`).
    SignSquare,
    /// Classification: the sums already are class probabilities (forests, after averaging).
    Probability,
    /// Binary classification: `p = 1 / (1 + exp(-scale * raw))`, probabilities `[1 - p, p]`.
    Logistic { scale: f64 },
    /// Binary classification: XGBoost's float32 sigmoid, probabilities `[1 - p, p]` in f32.
    LogisticF32,
    /// Multiclass: softmax in float64 (max subtracted first).
    Softmax,
    /// Multiclass: XGBoost's float32 softmax (float32 exp, float64 sum, float32 division).
    SoftmaxF32,
    /// Multiclass one-vs-rest: an independent sigmoid per class (LightGBM multiclassova).
    OvaLogistic { scale: f64 },
}

/// How the predicted class is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LabelRule {
    /// First class of highest probability (sklearn forests, LightGBM, XGBoost softprob).
    ArgmaxProbability,
    /// Binary: class 1 when the raw score is >= 0 (sklearn GradientBoostingClassifier).
    RawNonNegative,
    /// Binary: class 1 when the raw score is > 0 (sklearn HistGradientBoostingClassifier).
    RawPositive,
    /// First class of highest raw score (sklearn GB / HGB multiclass, XGBoost multi:softmax).
    ArgmaxRaw,
    /// Binary: class 1 when the float32 probability is > 0.5 (XGBoost binary:logistic).
    ProbabilityAboveHalf,
}

/// A split as a loader describes it, before flattening.
#[derive(Debug, Clone)]
pub(super) enum Split {
    /// Non-NaN `x` goes left iff `x <= bound`; `None`: never. `zero_is_missing`: LightGBM's
    /// missing type Zero (|x| <= 1e-35 takes the default direction too).
    Numeric { bound: Option<f64>, zero_is_missing: bool },
    /// Category code `c` goes left iff bit `c` of `left_set` is set; codes past the set's
    /// length and invalid codes go left iff `out_left`.
    Categorical { left_set: Vec<u32>, out_left: bool },
}

/// A node as a loader describes it; children are indices into the same tree's node list.
#[derive(Debug, Clone)]
pub(super) enum RawNode {
    /// A leaf whose `width` values start at this offset of the tree's `values`.
    Leaf(usize),
    /// An internal node. `default_left`: where NaN goes.
    Split { feature: usize, split: Split, default_left: bool, left: usize, right: usize },
}

impl RawNode {
    /// A split whose children a file stores as signed indices (`children`, from the fields named
    /// `fields` at node `i`); `part` names the tree's fields in the error of a negative one.
    pub(super) fn split_of_file(
        feature: usize,
        split: Split,
        default_left: bool,
        children: (i64, i64),
        fields: (&str, &str),
        i: usize,
        part: impl Fn(&str) -> String,
    ) -> Result<RawNode, Error> {
        let child = |v: i64, field: &str| {
            usize::try_from(v).map_err(|_| Error::invalid(part(&format!("{field}[{i}]")), "bad child index"))
        };
        Ok(RawNode::Split {
            feature,
            split,
            default_left,
            left: child(children.0, fields.0)?,
            right: child(children.1, fields.1)?,
        })
    }
}

/// One tree as a loader describes it. The root is node 0.
#[derive(Debug, Clone)]
pub(super) struct RawTree {
    /// Which raw-score column the tree adds to (ignored when leaves are wider than 1).
    pub output: usize,
    pub nodes: Vec<RawNode>,
    pub values: Vec<f64>,
}

/// Everything a loader hands to [`TreeEnsemble::build`].
#[derive(Debug, Clone)]
pub(super) struct Spec {
    pub n_features: usize,
    pub task: Task,
    pub feature_names: Option<Vec<String>>,
    pub categorical: Vec<usize>,
    pub allows_missing: bool,
    /// Raw-score columns (1 for regression and binary, n_classes for multiclass).
    pub n_outputs: usize,
    /// Values per leaf: 1, or n_outputs when a leaf holds a whole class distribution.
    pub leaf_width: usize,
    pub init: Vec<f64>,
    /// Divide the sums by this before the link (forests; LightGBM rf).
    pub average: Option<f64>,
    pub precision: Precision,
    pub cat_rule: CatRule,
    pub link: Link,
    pub label: Option<LabelRule>,
    pub trees: Vec<RawTree>,
}

// Packed node word: flags in the high bits, the feature index in the low 27 bits.
const LEAF: u32 = 1 << 31;
const DEFAULT_LEFT: u32 = 1 << 30;
const CATEGORICAL: u32 = 1 << 29;
const ZERO_MISSING: u32 = 1 << 28;
const OUT_LEFT: u32 = 1 << 27;
const SPECIAL: u32 = CATEGORICAL | ZERO_MISSING;
const FEATURE_MASK: u32 = (1 << 27) - 1;
/// The most input features a model may have (the feature index shares a word with flags).
pub(super) const MAX_FEATURES: usize = FEATURE_MASK as usize;

/// One 16-byte node. Trees are stored in pre-order, so the left child of node `i` is `i + 1`
/// and only the right child needs a link: one cache line holds four nodes of a path.
///
/// A leaf holds its (first) value inline and links to itself, so stepping a row that already
/// reached its leaf leaves it there: several rows can walk a tree in lockstep without a
/// branch per row. A leaf with `w > 1` values (forest class distributions) is followed by
/// `w - 1` padding nodes holding the other values, in the same cache line or the next.
#[derive(Debug, Clone, Copy)]
struct Node {
    /// Numeric: the f64 bound (`x <= value` goes left; NaN bound: never). Categorical: the
    /// bitset's offset (high 32 bits) and word count (low 32 bits), as raw bits. Leaf: its
    /// value.
    value: f64,
    /// Flags and feature index.
    word: u32,
    /// Internal: index of the right child. Leaf: its own index.
    next: u32,
}

/// Rows evaluated together: each tree's upper nodes stay in cache while the block's rows
/// walk it, and the block's inputs stay in L2.
const BLOCK_ROWS: usize = 256;

/// Rows walked in lockstep through one tree: independent walks overlap their memory
/// latencies instead of waiting for each node load in turn. Measured on 300-tree models
/// (criterion, 32 and 1,000 rows): 8 lanes took 7-14% less time than 4 for the boosted models
/// of depth 3 to 6 and left the others unchanged; 16 lanes spill the lanes' state out of the
/// registers and took 29-49% more time than 8.
const LANES: usize = 8;
/// Depth from which a model counts as deep.
const DEEP: usize = 16;

/// A loaded tree ensemble, ready to predict. Immutable and `Sync`: share one between threads.
#[derive(Debug, Clone)]
pub struct TreeEnsemble {
    n_features: usize,
    task: Task,
    feature_names: Option<Vec<String>>,
    categorical: Vec<usize>,
    allows_missing: bool,
    n_outputs: usize,
    leaf_width: usize,
    init: Vec<f64>,
    average: Option<f64>,
    precision: Precision,
    cat_rule: CatRule,
    link: Link,
    label: Option<LabelRule>,
    nodes: Vec<Node>,
    /// Root node index of each tree.
    roots: Vec<u32>,
    /// Raw-score column of each tree.
    outputs: Vec<u32>,
    /// Depth of each tree's deepest leaf.
    depths: Vec<u32>,
    bitsets: Vec<u32>,
    /// Whether any node is categorical or zero-as-missing (else the hot loop skips the test).
    has_special: bool,
    /// Whether some tree is deep: then lanes walk until all reached a leaf, instead of a fixed
    /// number of steps per tree.
    deep: bool,
}

impl TreeEnsemble {
    /// Validate a loader's description and flatten it. Every index is checked here, so the
    /// prediction loop cannot go out of bounds or loop.
    pub(super) fn build(spec: Spec, what: &str) -> Result<Self, Error> {
        if spec.n_features == 0 {
            return Err(Error::invalid(format!("{what} n_features"), "a model needs at least one feature"));
        }
        if spec.n_features > MAX_FEATURES {
            return Err(Error::unsupported(format!("{what} n_features"), "more than 2^27 features"));
        }
        if let Task::Classification { n_classes } = spec.task {
            if n_classes < 2 {
                return Err(Error::invalid(
                    format!("{what} n_classes"),
                    "a classifier needs at least 2 classes",
                ));
            }
            if spec.label.is_none() {
                return Err(Error::invalid(format!("{what} label"), "a classifier needs a label rule"));
            }
        }
        let stride = match spec.task {
            Task::Regression => 1,
            Task::Classification { n_classes } => n_classes,
        };
        if spec.n_outputs == 0 || spec.n_outputs > stride {
            return Err(Error::invalid(
                format!("{what} outputs"),
                format!("{} raw score columns do not fit {} answer columns", spec.n_outputs, stride),
            ));
        }
        check_link(&spec, stride, what)?;
        if spec.leaf_width != 1 && spec.leaf_width != spec.n_outputs {
            return Err(Error::invalid(format!("{what} leaf width"), "must be 1 or the number of outputs"));
        }
        if spec.init.len() != spec.n_outputs {
            return Err(Error::invalid(
                format!("{what} init"),
                format!("{} initial scores for {} outputs", spec.init.len(), spec.n_outputs),
            ));
        }
        if let Some(i) = spec.init.iter().position(|v| !v.is_finite()) {
            return Err(Error::invalid(format!("{what} init[{i}]"), "not a finite number"));
        }
        if let Some(n) = spec.average {
            if !(n.is_finite() && n > 0.0) {
                return Err(Error::invalid(format!("{what} average"), "the divisor must be positive"));
            }
        }
        if spec.trees.is_empty() {
            return Err(Error::invalid(format!("{what} trees"), "the model has no trees"));
        }
        for &f in &spec.categorical {
            if f >= spec.n_features {
                return Err(Error::invalid(
                    format!("{what} categorical features"),
                    format!("feature {f} out of range"),
                ));
            }
        }

        let mut nodes = Vec::new();
        let mut roots = Vec::with_capacity(spec.trees.len());
        let mut outputs = Vec::with_capacity(spec.trees.len());
        let mut bitsets = Vec::new();
        for (t, tree) in spec.trees.iter().enumerate() {
            let part = format!("{what} tree {t}");
            if spec.leaf_width == 1 && tree.output >= spec.n_outputs {
                return Err(Error::invalid(part, format!("output column {} out of range", tree.output)));
            }
            let root =
                u32::try_from(nodes.len()).map_err(|_| Error::unsupported(&part, "more than 2^32 nodes"))?;
            flatten(tree, &spec, &part, &mut nodes, &mut bitsets)?;
            roots.push(root);
            outputs.push(if spec.leaf_width == 1 { tree.output as u32 } else { 0 });
        }
        if nodes.len() > u32::MAX as usize {
            return Err(Error::unsupported(what, "more than 2^32 nodes"));
        }
        let mut categorical = spec.categorical;
        categorical.sort_unstable();
        categorical.dedup();
        let has_special = nodes.iter().any(|n| n.word & LEAF == 0 && n.word & SPECIAL != 0);
        let depths: Vec<u32> = roots.iter().map(|&r| max_depth(&nodes, &[r]) as u32).collect();
        let deep = depths.iter().any(|&d| d as usize >= DEEP);
        Ok(TreeEnsemble {
            n_features: spec.n_features,
            task: spec.task,
            feature_names: spec.feature_names,
            categorical,
            allows_missing: spec.allows_missing,
            n_outputs: spec.n_outputs,
            leaf_width: spec.leaf_width,
            init: spec.init,
            average: spec.average,
            precision: spec.precision,
            cat_rule: spec.cat_rule,
            link: spec.link,
            label: spec.label,
            nodes,
            roots,
            outputs,
            depths,
            bitsets,
            has_special,
            deep,
        })
    }

    /// Number of input columns a row must have.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Regression or classification (with the number of classes).
    pub fn task(&self) -> Task {
        self.task
    }

    /// The input column names, when the file carries them.
    pub fn feature_names(&self) -> Option<&[String]> {
        self.feature_names.as_deref()
    }

    /// Indices (ascending) of the inputs read as category codes rather than numbers.
    pub fn categorical_features(&self) -> &[usize] {
        &self.categorical
    }

    /// Whether the library itself accepts missing values (NaN) for this model. When false
    /// (sklearn GradientBoosting*), the library raises on NaN; this engine still answers
    /// (NaN follows each node's stored default direction), so the server should refuse NaN.
    pub fn allows_missing(&self) -> bool {
        self.allows_missing
    }

    /// Number of trees.
    pub fn n_trees(&self) -> usize {
        self.roots.len()
    }

    /// Number of columns of the `values` buffer of [`TreeEnsemble::predict_into`]: 1 for
    /// regression, `n_classes` for classification.
    pub fn output_width(&self) -> usize {
        match self.task {
            Task::Regression => 1,
            Task::Classification { n_classes } => n_classes,
        }
    }

    /// Predict `n_rows` rows of `x` (row-major `[n_rows, n_features]`, NaN = missing).
    ///
    /// # Panics
    /// When `x.len() != n_rows * n_features()`; [`TreeEnsemble::predict_into`] reports that
    /// as an error instead.
    pub fn predict(&self, x: &[f64], n_rows: usize) -> Prediction {
        let width = self.output_width();
        let mut out = vec![0.0; n_rows * width];
        match self.task {
            Task::Regression => {
                if let Err(e) = self.predict_into(x, n_rows, &mut [], &mut out) {
                    panic!("{e}");
                }
                Prediction { labels: None, values: Some(out), probabilities: None }
            }
            Task::Classification { .. } => {
                let mut labels = vec![0usize; n_rows];
                if let Err(e) = self.predict_into(x, n_rows, &mut labels, &mut out) {
                    panic!("{e}");
                }
                Prediction { labels: Some(labels), values: None, probabilities: Some(out) }
            }
        }
    }

    /// Predict into caller buffers, without allocating.
    ///
    /// `values` has `n_rows * output_width()` entries: the value per row (regression) or the
    /// row-major probabilities (classification). `labels` has `n_rows` entries for a
    /// classifier and is ignored (may be empty) for a regressor.
    pub fn predict_into(
        &self,
        x: &[f64],
        n_rows: usize,
        labels: &mut [usize],
        values: &mut [f64],
    ) -> Result<(), Error> {
        let width = self.output_width();
        let expected = n_rows.checked_mul(self.n_features);
        if expected != Some(x.len()) {
            return Err(Error::Shape {
                message: format!(
                    "x has {} values, expected {n_rows} rows x {} features",
                    x.len(),
                    self.n_features
                ),
            });
        }
        if n_rows.checked_mul(width) != Some(values.len()) {
            return Err(Error::Shape {
                message: format!("values has {} entries, expected {n_rows} x {width}", values.len()),
            });
        }
        if matches!(self.task, Task::Classification { .. }) && labels.len() != n_rows {
            return Err(Error::Shape {
                message: format!("labels has {} entries, expected {n_rows}", labels.len()),
            });
        }
        let mut start = 0;
        while start < n_rows {
            let end = (start + BLOCK_ROWS).min(n_rows);
            let xs = &x[start * self.n_features..end * self.n_features];
            let acc = &mut values[start * width..end * width];
            match self.precision {
                Precision::F64 => self.accumulate::<false>(xs, acc, width),
                Precision::F32 => self.accumulate::<true>(xs, acc, width),
            }
            for (r, row_out) in acc.chunks_exact_mut(width).enumerate() {
                let label = self.finish_row(row_out);
                if let Some(l) = label {
                    labels[start + r] = l;
                }
            }
            start = end;
        }
        Ok(())
    }

    /// Sum every tree's leaf into `acc` (`[rows, width]`, raw scores in the first
    /// `n_outputs` columns), tree by tree in file order, which is the libraries' order.
    fn accumulate<const F32: bool>(&self, xs: &[f64], acc: &mut [f64], width: usize) {
        for row in acc.chunks_exact_mut(width) {
            row[..self.n_outputs].copy_from_slice(&self.init);
        }
        if self.has_special {
            self.sum_trees::<F32, true>(xs, acc, width);
        } else {
            self.sum_trees::<F32, false>(xs, acc, width);
        }
    }

    fn sum_trees<const F32: bool, const SPECIAL_NODES: bool>(
        &self,
        xs: &[f64],
        acc: &mut [f64],
        width: usize,
    ) {
        let nf = self.n_features;
        let n_rows = xs.len() / nf;
        let w = self.leaf_width;
        for ((&root, &col), &depth) in self.roots.iter().zip(&self.outputs).zip(&self.depths) {
            let (root, col) = (root as usize, col as usize);
            let mut r = 0;
            while r + LANES <= n_rows {
                let leaves = if self.deep {
                    self.walk_lanes::<SPECIAL_NODES>(root, xs, r * nf)
                } else {
                    self.walk_lanes_fixed::<SPECIAL_NODES>(root, xs, r * nf, depth as usize)
                };
                for (k, &leaf) in leaves.iter().enumerate() {
                    let out = &mut acc[(r + k) * width..(r + k + 1) * width];
                    self.add_leaf::<F32>(leaf, out, col, w);
                }
                r += LANES;
            }
            for r in r..n_rows {
                let leaf = self.walk(root, &xs[r * nf..(r + 1) * nf]);
                self.add_leaf::<F32>(leaf, &mut acc[r * width..(r + 1) * width], col, w);
            }
        }
    }

    #[inline(always)]
    fn add_leaf<const F32: bool>(&self, leaf: usize, out: &mut [f64], col: usize, w: usize) {
        if w == 1 {
            out[col] = add::<F32>(out[col], self.nodes[leaf].value);
        } else {
            for (o, n) in out[..w].iter_mut().zip(&self.nodes[leaf..leaf + w]) {
                *o = add::<F32>(*o, n.value);
            }
        }
    }

    /// One step from node `i` for input row `row` (a leaf steps to itself). `SPECIAL`:
    /// whether the model has categorical or zero-as-missing nodes at all.
    #[inline(always)]
    fn step<const SPECIAL_NODES: bool>(&self, i: usize, row: &[f64]) -> (usize, bool) {
        let n = self.nodes[i];
        let x = row[(n.word & FEATURE_MASK) as usize];
        let is_leaf = n.word & LEAF != 0;
        // Non-short-circuit operators keep this branch-free: split directions are coin flips
        // for the branch predictor.
        let left = if !SPECIAL_NODES || n.word & SPECIAL == 0 {
            ((x <= n.value) | (x.is_nan() & (n.word & DEFAULT_LEFT != 0))) & !is_leaf
        } else {
            self.special_goes_left(n, x)
        };
        (if left { i + 1 } else { n.next as usize }, is_leaf)
    }

    /// Walk one tree for one row; returns the leaf's node index. A single walk is a chain of
    /// dependent loads, so here branches (which let the CPU run ahead) beat selects.
    #[inline(always)]
    fn walk(&self, root: usize, row: &[f64]) -> usize {
        let mut i = root;
        loop {
            let n = self.nodes[i];
            if n.word & LEAF != 0 {
                return i;
            }
            let x = row[(n.word & FEATURE_MASK) as usize];
            let left = if n.word & SPECIAL == 0 {
                x <= n.value || (x.is_nan() && n.word & DEFAULT_LEFT != 0)
            } else {
                self.special_goes_left(n, x)
            };
            // Pre-order: children always come after their parent, so this terminates.
            i = if left { i + 1 } else { n.next as usize };
        }
    }

    /// Walk one shallow tree for `LANES` rows in lockstep, `depth` steps: rows that reach their
    /// leaf early stay on it, so no per-step "all done?" test is needed.
    #[inline(always)]
    fn walk_lanes_fixed<const SPECIAL_NODES: bool>(
        &self,
        root: usize,
        xs: &[f64],
        base: usize,
        depth: usize,
    ) -> [usize; LANES] {
        let nf = self.n_features;
        let rows: [&[f64]; LANES] = std::array::from_fn(|k| &xs[base + k * nf..base + (k + 1) * nf]);
        let mut idx = [root; LANES];
        for _ in 0..depth {
            for (i, row) in idx.iter_mut().zip(rows) {
                *i = self.step::<SPECIAL_NODES>(*i, row).0;
            }
        }
        idx
    }

    /// Walk one tree for `LANES` consecutive rows starting at `xs[base..]`, in lockstep.
    #[inline(always)]
    fn walk_lanes<const SPECIAL_NODES: bool>(&self, root: usize, xs: &[f64], base: usize) -> [usize; LANES] {
        let nf = self.n_features;
        let rows: [&[f64]; LANES] = std::array::from_fn(|k| &xs[base + k * nf..base + (k + 1) * nf]);
        let mut idx = [root; LANES];
        loop {
            let mut all_leaves = true;
            for (i, row) in idx.iter_mut().zip(rows) {
                let (next, is_leaf) = self.step::<SPECIAL_NODES>(*i, row);
                all_leaves &= is_leaf;
                *i = next;
            }
            if all_leaves {
                return idx;
            }
        }
    }

    #[cold]
    fn special_goes_left(&self, n: Node, x: f64) -> bool {
        let default_left = n.word & DEFAULT_LEFT != 0;
        if n.word & CATEGORICAL == 0 {
            // LightGBM missing type Zero: NaN becomes 0, and 0 (after the C API's flush of
            // |x| <= 1e-35) takes the default direction.
            if x.is_nan() || x.abs() <= LIGHTGBM_ZERO {
                return default_left;
            }
            return x <= n.value;
        }
        let out_left = n.word & OUT_LEFT != 0;
        let code = match category_code(self.cat_rule, x) {
            CatInput::Missing => return default_left,
            CatInput::Out => return out_left,
            CatInput::Code(c) => c,
        };
        let bits = n.value.to_bits();
        let (offset, len) = ((bits >> 32) as usize, (bits & 0xffff_ffff) as usize);
        let word = (code / 32) as usize;
        if word >= len {
            return out_left;
        }
        (self.bitsets[offset + word] >> (code % 32)) & 1 == 1
    }

    /// Apply averaging, link and label rule to one row's raw scores, in place.
    fn finish_row(&self, out: &mut [f64]) -> Option<usize> {
        if let Some(n) = self.average {
            for v in &mut out[..self.n_outputs] {
                *v /= n;
            }
        }
        // Labels that depend on raw scores are decided before the scores become probabilities.
        let raw_label = match self.label {
            Some(LabelRule::RawNonNegative) => Some(usize::from(out[0] >= 0.0)),
            Some(LabelRule::RawPositive) => Some(usize::from(out[0] > 0.0)),
            Some(LabelRule::ArgmaxRaw) => Some(argmax(&out[..self.n_outputs])),
            _ => None,
        };
        match self.link {
            Link::Identity | Link::Probability => {}
            Link::Exp => out[0] = out[0].exp(),
            Link::ExpF32 => out[0] = (out[0] as f32).exp() as f64,
            Link::LogisticF32Value => out[0] = sigmoid_f32(out[0] as f32) as f64,
            Link::LogisticValue { scale } => out[0] = 1.0 / (1.0 + (-scale * out[0]).exp()),
            Link::Log1pExp => out[0] = out[0].exp().ln_1p(),
            Link::SignSquare => {
                let x = out[0];
                let sign = if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                out[0] = sign * x * x;
            }
            Link::Logistic { scale } => {
                let p = 1.0 / (1.0 + (-(scale * out[0])).exp());
                out[0] = 1.0 - p;
                out[1] = p;
            }
            Link::LogisticF32 => {
                let p = sigmoid_f32(out[0] as f32);
                out[0] = (1.0f32 - p) as f64;
                out[1] = p as f64;
            }
            Link::Softmax => {
                let max = out.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for v in out.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                for v in out.iter_mut() {
                    *v /= sum;
                }
            }
            Link::SoftmaxF32 => {
                let mut max = out[0] as f32;
                for &v in &out[1..] {
                    max = max.max(v as f32);
                }
                let mut sum = 0.0f64;
                for v in out.iter_mut() {
                    let e = (*v as f32 - max).exp();
                    *v = e as f64;
                    sum += e as f64;
                }
                let sum = sum as f32;
                for v in out.iter_mut() {
                    *v = (*v as f32 / sum) as f64;
                }
            }
            Link::OvaLogistic { scale } => {
                for v in out.iter_mut() {
                    *v = 1.0 / (1.0 + (-scale * *v).exp());
                }
            }
        }
        match self.label {
            None => None,
            Some(LabelRule::ArgmaxProbability) => Some(argmax(out)),
            Some(LabelRule::ProbabilityAboveHalf) => Some(usize::from(out[1] as f32 > 0.5)),
            Some(_) => raw_label,
        }
    }
}

/// The link must produce exactly the task's columns from `n_outputs` raw scores.
fn check_link(spec: &Spec, stride: usize, what: &str) -> Result<(), Error> {
    let binary = spec.n_outputs == 1 && stride == 2;
    let multi = spec.n_outputs == stride && stride >= 2;
    let ok = match spec.link {
        Link::Identity
        | Link::Exp
        | Link::ExpF32
        | Link::LogisticF32Value
        | Link::LogisticValue { .. }
        | Link::Log1pExp
        | Link::SignSquare => spec.task == Task::Regression,
        Link::Probability => multi,
        Link::Logistic { .. } | Link::LogisticF32 => binary,
        Link::Softmax | Link::SoftmaxF32 | Link::OvaLogistic { .. } => multi,
    };
    let label_ok = match spec.label {
        None => spec.task == Task::Regression,
        Some(LabelRule::RawNonNegative | LabelRule::RawPositive | LabelRule::ProbabilityAboveHalf) => binary,
        Some(LabelRule::ArgmaxRaw) => multi,
        Some(LabelRule::ArgmaxProbability) => stride >= 2,
    };
    if ok && label_ok {
        Ok(())
    } else {
        Err(Error::invalid(
            format!("{what} link"),
            format!(
                "{:?} with label rule {:?} does not fit {} raw scores for {:?}",
                spec.link, spec.label, spec.n_outputs, spec.task
            ),
        ))
    }
}

/// A categorical input after the library's conversion.
enum CatInput {
    /// NaN (the node's missing side).
    Missing,
    /// Not a valid code (negative, too large): the node's out-of-set side.
    Out,
    /// A category code.
    Code(u32),
}

fn category_code(rule: CatRule, x: f64) -> CatInput {
    if x.is_nan() {
        // LightGBM: (int)NaN is INT_MIN on x86, which is "negative": right, not default.
        return if rule == CatRule::LightGBM { CatInput::Out } else { CatInput::Missing };
    }
    match rule {
        CatRule::Sklearn => {
            if (0.0..256.0).contains(&x) {
                CatInput::Code(x as u32)
            } else {
                CatInput::Out
            }
        }
        CatRule::XGBoost => {
            let f = x as f32;
            if (0.0..16_777_216.0).contains(&f) {
                CatInput::Code(f as u32)
            } else {
                CatInput::Out
            }
        }
        CatRule::LightGBM => {
            // (int)x truncates toward zero; outside int range x86 yields INT_MIN.
            if x > -2_147_483_649.0 && x < 2_147_483_648.0 {
                let i = x.trunc() as i64;
                if i < 0 {
                    CatInput::Out
                } else {
                    CatInput::Code(i as u32)
                }
            } else {
                CatInput::Out
            }
        }
    }
}

#[inline(always)]
fn add<const F32: bool>(acc: f64, v: f64) -> f64 {
    if F32 {
        // The accumulator always holds a float32 value, so this is XGBoost's float sum.
        (acc as f32 + v as f32) as f64
    } else {
        acc + v
    }
}

/// XGBoost's `common::Sigmoid(float)`.
fn sigmoid_f32(x: f32) -> f32 {
    const EPS: f32 = 1e-16;
    let x = (-x).min(88.7f32);
    let denom = x.exp() + 1.0f32 + EPS;
    1.0f32 / denom
}

/// Index of the first maximum (numpy's argmax; NaN never wins here because inputs are finite).
fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate().skip(1) {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// The deepest leaf over all trees (iterative: trees may be thousands of levels deep).
fn max_depth(nodes: &[Node], roots: &[u32]) -> usize {
    let mut deepest = 0;
    let mut stack = Vec::new();
    for &r in roots {
        stack.push((r as usize, 0usize));
        while let Some((i, d)) = stack.pop() {
            let n = nodes[i];
            if n.word & LEAF != 0 {
                deepest = deepest.max(d);
            } else {
                stack.push((i + 1, d + 1));
                stack.push((n.next as usize, d + 1));
            }
        }
    }
    deepest
}

/// Flatten one raw tree into pre-order, validating indices and that it is a tree.
fn flatten(
    tree: &RawTree,
    spec: &Spec,
    part: &str,
    nodes: &mut Vec<Node>,
    bitsets: &mut Vec<u32>,
) -> Result<(), Error> {
    let n = tree.nodes.len();
    if n == 0 {
        return Err(Error::invalid(part, "the tree has no nodes"));
    }
    let mut visited = vec![false; n];
    // (raw index, index of the parent whose right link must point here)
    let mut stack: Vec<(usize, Option<usize>)> = vec![(0, None)];
    while let Some((raw, patch)) = stack.pop() {
        if raw >= n {
            return Err(Error::invalid(part, format!("child index {raw} out of range (0..{n})")));
        }
        if visited[raw] {
            return Err(Error::invalid(part, format!("node {raw} is reached twice (not a tree)")));
        }
        visited[raw] = true;
        let me = nodes.len();
        if let Some(p) = patch {
            let me32 = u32::try_from(me).map_err(|_| Error::unsupported(part, "more than 2^32 nodes"))?;
            nodes[p].next = me32;
        }
        match &tree.nodes[raw] {
            RawNode::Leaf(offset) => {
                let w = spec.leaf_width;
                let vals = offset.checked_add(w).and_then(|end| tree.values.get(*offset..end));
                let vals = vals.ok_or_else(|| Error::invalid(part, format!("leaf {raw} has no values")))?;
                if let Some(v) = vals.iter().find(|v| !v.is_finite()) {
                    return Err(Error::invalid(part, format!("leaf {raw} value {v} is not finite")));
                }
                // The leaf links to itself; its other values follow as padding nodes.
                for &v in vals {
                    let at = u32::try_from(nodes.len())
                        .map_err(|_| Error::unsupported(part, "more than 2^32 nodes"))?;
                    nodes.push(Node { value: v, word: LEAF, next: at });
                }
            }
            RawNode::Split { feature, split, default_left, left, right } => {
                if *feature >= spec.n_features {
                    return Err(Error::invalid(
                        part,
                        format!("node {raw} splits on feature {feature}, but there are {}", spec.n_features),
                    ));
                }
                let mut word = *feature as u32;
                if *default_left {
                    word |= DEFAULT_LEFT;
                }
                let value = match split {
                    Split::Numeric { bound, zero_is_missing } => {
                        if *zero_is_missing {
                            word |= ZERO_MISSING;
                        }
                        bound.unwrap_or(f64::NAN)
                    }
                    Split::Categorical { left_set, out_left } => {
                        word |= CATEGORICAL;
                        if *out_left {
                            word |= OUT_LEFT;
                        }
                        let offset = bitsets.len() as u64;
                        if offset > u32::MAX as u64 || left_set.len() > u32::MAX as usize {
                            return Err(Error::unsupported(part, "categorical bitsets too large"));
                        }
                        bitsets.extend_from_slice(left_set);
                        f64::from_bits((offset << 32) | left_set.len() as u64)
                    }
                };
                nodes.push(Node { value, word, next: 0 });
                // Right is pushed first so that left is flattened next, at index me + 1.
                stack.push((*right, Some(me)));
                stack.push((*left, None));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stump(link: Link, label: Option<LabelRule>, task: Task, n_outputs: usize) -> Spec {
        Spec {
            n_features: 1,
            task,
            feature_names: None,
            categorical: vec![],
            allows_missing: true,
            n_outputs,
            leaf_width: 1,
            init: vec![0.0; n_outputs],
            average: None,
            precision: Precision::F64,
            cat_rule: CatRule::Sklearn,
            link,
            label,
            trees: vec![RawTree {
                output: 0,
                nodes: vec![
                    RawNode::Split {
                        feature: 0,
                        split: Split::Numeric { bound: Some(0.5), zero_is_missing: false },
                        default_left: true,
                        left: 1,
                        right: 2,
                    },
                    RawNode::Leaf(0),
                    RawNode::Leaf(1),
                ],
                values: vec![-1.0, 2.0],
            }],
        }
    }

    #[test]
    fn numeric_split_and_missing() {
        let m = TreeEnsemble::build(stump(Link::Identity, None, Task::Regression, 1), "t").unwrap();
        let p = m.predict(&[0.5, 0.6, f64::NAN], 3);
        assert_eq!(p.values.unwrap(), vec![-1.0, 2.0, -1.0]);
    }

    #[test]
    fn cycles_are_refused() {
        let mut s = stump(Link::Identity, None, Task::Regression, 1);
        if let RawNode::Split { right, .. } = &mut s.trees[0].nodes[0] {
            *right = 0;
        }
        assert!(TreeEnsemble::build(s, "t").is_err());
    }

    #[test]
    fn shape_errors_are_reported() {
        let m = TreeEnsemble::build(stump(Link::Identity, None, Task::Regression, 1), "t").unwrap();
        let mut v = [0.0; 2];
        assert!(matches!(m.predict_into(&[1.0], 2, &mut [], &mut v), Err(Error::Shape { .. })));
    }

    #[test]
    fn binary_logistic_label_rules() {
        let m = TreeEnsemble::build(
            stump(
                Link::Logistic { scale: 1.0 },
                Some(LabelRule::RawNonNegative),
                Task::Classification { n_classes: 2 },
                1,
            ),
            "t",
        )
        .unwrap();
        let p = m.predict(&[0.0, 1.0], 2);
        assert_eq!(p.labels.unwrap(), vec![0, 1]);
        let pr = p.probabilities.unwrap();
        assert!((pr[3] - 1.0 / (1.0 + (-2.0f64).exp())).abs() < 1e-15);
    }
}
