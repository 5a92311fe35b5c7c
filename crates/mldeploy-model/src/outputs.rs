//! Typed model outputs: named tensors with a datatype and a shape.
//!
//! A model answers with [`Output`]s; each protocol renders them its own way (ml-deploy's
//! `target` JSON, the Open Inference Protocol's output tensors), so no protocol has to guess what
//! untyped JSON means. An output's [`Role`] says what it is for a tabular model (per-row labels,
//! class probabilities, per-row values), which is how ml-deploy's `y_predicted` and
//! `probabilities` are found whatever the output is called.
//!
//! Storage is by class, not by width: every integer type is held in `i64`/`u64` and every float
//! type in `f64` (an `f32` or `f16` converts exactly); [`Tensor::datatype`] keeps the declared
//! type, so a protocol can write the exact width back. A classifier's per-row labels are held
//! as class indexes into one shared list of its classes ([`Values::Classes`]), not as one copy
//! of a label per row; every protocol renders them as the labels they stand for.

use std::borrow::Cow;
use std::sync::Arc;

use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::Value;

/// The element type of a tensor, named as the Open Inference Protocol names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datatype {
    /// `BOOL`.
    Bool,
    /// `INT8`.
    Int8,
    /// `INT16`.
    Int16,
    /// `INT32`.
    Int32,
    /// `INT64`.
    Int64,
    /// `UINT8`.
    Uint8,
    /// `UINT16`.
    Uint16,
    /// `UINT32`.
    Uint32,
    /// `UINT64`.
    Uint64,
    /// `FP16`.
    Fp16,
    /// `FP32`.
    Fp32,
    /// `FP64`.
    Fp64,
    /// `BYTES`: strings or byte strings.
    Bytes,
}

impl Datatype {
    /// Every datatype.
    pub const ALL: [Datatype; 13] = [
        Datatype::Bool,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bytes,
    ];

    /// The protocol's name (`FP32`, `BYTES`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// Parse a protocol name.
    pub fn parse(name: &str) -> Option<Datatype> {
        Datatype::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Bytes per element in the binary encoding; `None` for `BYTES` (length-prefixed).
    pub fn size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::Int8 | Datatype::Uint8 => 1,
            Datatype::Int16 | Datatype::Uint16 | Datatype::Fp16 => 2,
            Datatype::Int32 | Datatype::Uint32 | Datatype::Fp32 => 4,
            Datatype::Int64 | Datatype::Uint64 | Datatype::Fp64 => 8,
            Datatype::Bytes => return None,
        })
    }
}

impl std::fmt::Display for Datatype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The values of a tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// `BOOL`.
    Bool(Vec<bool>),
    /// Signed integers of any width.
    Int(Vec<i64>),
    /// Unsigned integers of any width.
    Uint(Vec<u64>),
    /// Floats of any width.
    Float(Vec<f64>),
    /// `BYTES` holding text.
    Text(Vec<String>),
    /// `BYTES` holding JSON values (labels of mixed types, maps): rendered as JSON in JSON
    /// answers and as their JSON text in binary ones.
    Json(Vec<Value>),
    /// Class labels by index (see [`ClassIndexes`]): element `i` is the class at the `i`-th
    /// index. It stands for the plain values [`ClassIndexes::expand`] gives, and is rendered
    /// exactly as they are, in JSON and binary answers alike.
    Classes(ClassIndexes),
}

impl Values {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Values::Bool(v) => v.len(),
            Values::Int(v) => v.len(),
            Values::Uint(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Text(v) => v.len(),
            Values::Json(v) => v.len(),
            Values::Classes(c) => c.indexes.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as a JSON value (NaN and infinities become `null`, as JSON has none).
    pub fn json_at(&self, i: usize) -> Value {
        match self {
            Values::Bool(v) => Value::Bool(v[i]),
            Values::Int(v) => Value::from(v[i]),
            Values::Uint(v) => Value::from(v[i]),
            Values::Float(v) => serde_json::Number::from_f64(v[i]).map_or(Value::Null, Value::Number),
            Values::Text(v) => Value::String(v[i].clone()),
            Values::Json(v) => v[i].clone(),
            Values::Classes(c) => c.classes.json_at(c.class_at(i)),
        }
    }

    /// The elements at `indexes` (each below [`Values::len`]), in that order, as values of the
    /// same variant.
    pub fn select(&self, indexes: &[u32]) -> Values {
        fn pick<T: Clone>(v: &[T], indexes: &[u32]) -> Vec<T> {
            indexes.iter().map(|&i| v[i as usize].clone()).collect()
        }
        match self {
            Values::Bool(v) => Values::Bool(pick(v, indexes)),
            Values::Int(v) => Values::Int(pick(v, indexes)),
            Values::Uint(v) => Values::Uint(pick(v, indexes)),
            Values::Float(v) => Values::Float(pick(v, indexes)),
            Values::Text(v) => Values::Text(pick(v, indexes)),
            Values::Json(v) => Values::Json(pick(v, indexes)),
            Values::Classes(c) => Values::Classes(ClassIndexes {
                classes: c.classes.clone(),
                indexes: pick(&c.indexes, indexes),
            }),
        }
    }

    fn serialize_at<S: Serializer>(&self, i: usize, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Values::Bool(v) => s.serialize_bool(v[i]),
            Values::Int(v) => s.serialize_i64(v[i]),
            Values::Uint(v) => s.serialize_u64(v[i]),
            Values::Float(v) if v[i].is_finite() => s.serialize_f64(v[i]),
            Values::Float(_) => s.serialize_unit(),
            Values::Text(v) => s.serialize_str(&v[i]),
            Values::Json(v) => v[i].serialize(s),
            Values::Classes(c) => c.classes.serialize_at(c.class_at(i), s),
        }
    }
}

/// Per-row class labels held as class indexes into one shared, typed list of the classes:
/// four bytes per row whatever the labels are (a `String` per row took 24 bytes and an
/// allocation). Made by
/// [`ClassLabels::tensor`], so the classes are never themselves [`Values::Classes`] and every
/// index is below their count.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassIndexes {
    /// The classes, shared by every tensor of one classifier.
    classes: Arc<Values>,
    /// Per element, the index of its class.
    indexes: Vec<u32>,
}

impl ClassIndexes {
    /// The classes the indexes point into.
    pub fn classes(&self) -> &Values {
        &self.classes
    }

    /// Per element, the index of its class among [`ClassIndexes::classes`].
    pub fn indexes(&self) -> &[u32] {
        &self.indexes
    }

    /// The index of element `i`'s class.
    pub fn class_at(&self, i: usize) -> usize {
        self.indexes[i] as usize
    }

    /// The labels as plain values, one per element: what this stands for.
    pub fn expand(&self) -> Values {
        self.classes.select(&self.indexes)
    }
}

/// A tensor: a datatype, a shape and its values (as many as the shape's product).
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// The declared element type.
    pub datatype: Datatype,
    /// The dimensions.
    pub shape: Vec<usize>,
    /// The values, row-major.
    pub values: Values,
}

impl Tensor {
    /// A 1-D `FP64` tensor.
    pub fn fp64(values: Vec<f64>) -> Tensor {
        Tensor { datatype: Datatype::Fp64, shape: vec![values.len()], values: Values::Float(values) }
    }

    /// A row-major `[rows, cols]` `FP64` tensor (`values.len()` must be `rows * cols`).
    pub fn fp64_matrix(values: Vec<f64>, cols: usize) -> Tensor {
        let rows = values.len().checked_div(cols).unwrap_or(0);
        Tensor { datatype: Datatype::Fp64, shape: vec![rows, cols], values: Values::Float(values) }
    }

    /// Number of elements the shape holds.
    pub fn element_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// A serializer of the values nested by the shape (`[[..], [..]]` for a matrix), as JSON
    /// clients read tensors.
    pub fn nested(&self) -> Nested<'_> {
        Nested { tensor: self, dim: 0, start: 0 }
    }

    /// A serializer of the values as one flat list.
    pub fn flat(&self) -> Flat<'_> {
        Flat(&self.values)
    }
}

/// Serializes one dimension of a tensor and everything below it.
#[derive(Debug, Clone, Copy)]
pub struct Nested<'a> {
    tensor: &'a Tensor,
    dim: usize,
    start: usize,
}

impl Serialize for Nested<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let shape = &self.tensor.shape;
        if shape.is_empty() {
            // A scalar.
            return self.tensor.values.serialize_at(0, s);
        }
        let len = shape[self.dim];
        let mut seq = s.serialize_seq(Some(len))?;
        if self.dim + 1 == shape.len() {
            for i in self.start..self.start + len {
                seq.serialize_element(&Element(&self.tensor.values, i))?;
            }
        } else {
            let stride: usize = shape[self.dim + 1..].iter().product();
            for i in 0..len {
                let inner = Nested { tensor: self.tensor, dim: self.dim + 1, start: self.start + i * stride };
                seq.serialize_element(&inner)?;
            }
        }
        seq.end()
    }
}

/// Serializes the values of a tensor as one flat list.
#[derive(Debug, Clone, Copy)]
pub struct Flat<'a>(&'a Values);

impl Serialize for Flat<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for i in 0..self.0.len() {
            seq.serialize_element(&Element(self.0, i))?;
        }
        seq.end()
    }
}

struct Element<'a>(&'a Values, usize);

impl Serialize for Element<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize_at(self.1, s)
    }
}

/// What an output is, for protocols that name outputs by purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One predicted class label per row (ml-deploy's `y_predicted` of a classifier).
    Labels,
    /// `[rows, classes]` class probabilities (ml-deploy's `probabilities`).
    Probabilities,
    /// One predicted value per row (ml-deploy's `y_predicted` of a regressor).
    Values,
    /// Anything else, known by its name only.
    Other,
}

/// One named output of a prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The output's name (the Open Inference Protocol's output name).
    pub name: Cow<'static, str>,
    /// What it is.
    pub role: Role,
    /// Its values.
    pub tensor: Tensor,
}

/// What a model declares it answers, before any request: served in protocol metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSpec {
    /// Name.
    pub name: String,
    /// Element type.
    pub datatype: Datatype,
    /// Dimensions; `-1` for a dimension that varies (the batch).
    pub shape: Vec<i64>,
}

impl Serialize for Datatype {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The result of a call.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Typed outputs. `by_name`: ml-deploy's `target` lists every output under its own name
    /// besides `y_predicted`/`probabilities` (for models whose output names mean something to
    /// their users, such as ONNX graphs).
    Outputs {
        /// The outputs, in the model's order.
        outputs: Vec<Output>,
        /// List every output under its name in ml-deploy's `target`.
        by_name: bool,
    },
    /// Free-form JSON, for models whose answer is not tensors (custom and Python models).
    Json(Value),
}

impl Default for Target {
    fn default() -> Self {
        Target::Json(Value::Null)
    }
}

impl Target {
    /// Typed outputs listed by role only (tabular models).
    pub fn outputs(outputs: Vec<Output>) -> Target {
        Target::Outputs { outputs, by_name: false }
    }

    /// Rows this result covers: the first dimension of the first output, or the length of a
    /// JSON `y_predicted` list; `None` when it cannot be told.
    pub fn rows(&self) -> Option<usize> {
        match self {
            Target::Outputs { outputs, .. } => outputs.first().and_then(|o| o.tensor.shape.first().copied()),
            Target::Json(v) => v.get("y_predicted").and_then(Value::as_array).map(Vec::len),
        }
    }
}

/// A classifier's class labels, typed once at load so per-row labels become a tensor without
/// going through JSON: integers stay `INT64`, booleans `BOOL`, other numbers `FP64`, strings
/// `BYTES`; a list of mixed types is kept as JSON values.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassLabels {
    classes: Vec<Value>,
    /// Never [`Values::Classes`]; shared with every labels tensor made.
    typed: Arc<Values>,
}

impl ClassLabels {
    /// Type the labels (strings, numbers or booleans, as a manifest lists them).
    pub fn new(classes: Vec<Value>) -> ClassLabels {
        let typed = if classes.iter().all(|c| c.is_i64()) {
            Values::Int(classes.iter().filter_map(Value::as_i64).collect())
        } else if classes.iter().all(Value::is_boolean) {
            Values::Bool(classes.iter().filter_map(Value::as_bool).collect())
        } else if classes.iter().all(Value::is_number) {
            Values::Float(classes.iter().filter_map(Value::as_f64).collect())
        } else if classes.iter().all(Value::is_string) {
            Values::Text(classes.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
        } else {
            Values::Json(classes.clone())
        };
        ClassLabels { classes, typed: Arc::new(typed) }
    }

    /// The labels as the manifest wrote them.
    pub fn as_json(&self) -> &[Value] {
        &self.classes
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there are no classes.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The datatype of a labels tensor.
    pub fn datatype(&self) -> Datatype {
        match *self.typed {
            Values::Bool(_) => Datatype::Bool,
            Values::Int(_) => Datatype::Int64,
            Values::Uint(_) => Datatype::Uint64,
            Values::Float(_) => Datatype::Fp64,
            Values::Text(_) | Values::Json(_) | Values::Classes(_) => Datatype::Bytes,
        }
    }

    /// The labels of class indexes as a 1-D tensor of [`Values::Classes`], which shares the
    /// classes rather than copying a label per row.
    ///
    /// # Panics
    ///
    /// When an index is not below [`ClassLabels::len`] (an engine's bug).
    pub fn tensor(&self, indexes: Vec<u32>) -> Tensor {
        let n = self.len();
        if let Some(bad) = indexes.iter().find(|&&i| i as usize >= n) {
            panic!("class index {bad} of {n} classes");
        }
        let shape = vec![indexes.len()];
        let values = Values::Classes(ClassIndexes { classes: self.typed.clone(), indexes });
        Tensor { datatype: self.datatype(), shape, values }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_follows_the_shape() {
        let t = Tensor::fp64_matrix(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3);
        assert_eq!(serde_json::to_value(t.nested()).unwrap(), json!([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]));
        assert_eq!(serde_json::to_value(t.flat()).unwrap(), json!([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        let cube =
            Tensor { datatype: Datatype::Int64, shape: vec![2, 1, 2], values: Values::Int(vec![1, 2, 3, 4]) };
        assert_eq!(serde_json::to_value(cube.nested()).unwrap(), json!([[[1, 2]], [[3, 4]]]));
        let scalar = Tensor { datatype: Datatype::Bool, shape: vec![], values: Values::Bool(vec![true]) };
        assert_eq!(serde_json::to_value(scalar.nested()).unwrap(), json!(true));
    }

    #[test]
    fn non_finite_floats_render_as_null() {
        let t = Tensor::fp64(vec![f64::NAN, 1.5]);
        assert_eq!(serde_json::to_string(&t.nested()).unwrap(), "[null,1.5]");
    }

    #[test]
    fn class_labels_keep_their_type() {
        let ints = ClassLabels::new(vec![json!(0), json!(1)]);
        assert_eq!(ints.datatype(), Datatype::Int64);
        assert_eq!(serde_json::to_value(ints.tensor(vec![1, 0]).nested()).unwrap(), json!([1, 0]));
        let names = ClassLabels::new(vec![json!("setosa"), json!("virginica")]);
        assert_eq!(names.datatype(), Datatype::Bytes);
        let Values::Classes(picked) = names.tensor(vec![1]).values else { panic!("labels by index") };
        assert_eq!(picked.expand(), Values::Text(vec!["virginica".into()]));
        let floats = ClassLabels::new(vec![json!(0.5), json!(1)]);
        assert_eq!(floats.datatype(), Datatype::Fp64);
        let mixed = ClassLabels::new(vec![json!("a"), json!(1)]);
        assert_eq!(serde_json::to_value(mixed.tensor(vec![1, 0]).nested()).unwrap(), json!([1, "a"]));
        let bools = ClassLabels::new(vec![json!(false), json!(true)]);
        assert_eq!(bools.datatype(), Datatype::Bool);
    }

    /// Labels by index render exactly as the plain values they stand for, one label per row.
    #[test]
    fn labels_by_index_render_as_their_labels() {
        let class_lists = [
            vec![json!(3), json!(-1), json!(7)],
            vec![json!(true), json!(false)],
            vec![json!(0.5), json!(2.5), json!(-1e300)],
            vec![json!("setosa"), json!("vers\"i\ncolor"), json!("é")],
            vec![json!("a"), json!(1), json!(null), json!({"k": [1]})],
        ];
        for classes in class_lists {
            let labels = ClassLabels::new(classes.clone());
            let indexes: Vec<u32> = (0..11).map(|i| (i * 7 % classes.len()) as u32).collect();
            let tensor = labels.tensor(indexes.clone());
            let Values::Classes(by_index) = &tensor.values else { panic!("labels by index") };
            assert_eq!(by_index.indexes(), &indexes[..]);
            let plain = Tensor { values: by_index.expand(), ..tensor.clone() };
            assert!(!matches!(plain.values, Values::Classes(_)));
            assert_eq!(tensor.values.len(), plain.values.len());
            assert_eq!(tensor.element_count(), 11);
            let render = |t: &Tensor| {
                (serde_json::to_string(&t.nested()).unwrap(), serde_json::to_string(&t.flat()).unwrap())
            };
            assert_eq!(render(&tensor), render(&plain), "{classes:?}");
            let want: Vec<Value> = indexes.iter().map(|&i| classes[i as usize].clone()).collect();
            assert_eq!(serde_json::to_value(tensor.nested()).unwrap(), Value::Array(want.clone()));
            for (i, label) in want.iter().enumerate() {
                assert_eq!(&tensor.values.json_at(i), label);
            }
            // Selecting keeps labels by index, sharing the classes.
            let Values::Classes(some) = tensor.values.select(&[2, 0]) else { panic!("still by index") };
            assert_eq!(some.indexes(), &[indexes[2], indexes[0]]);
            assert_eq!(some.classes(), by_index.classes());
        }
    }

    #[test]
    #[should_panic(expected = "class index 2 of 2 classes")]
    fn labels_by_index_refuse_an_unknown_class() {
        ClassLabels::new(vec![json!("a"), json!("b")]).tensor(vec![0, 2]);
    }

    #[test]
    fn datatype_names_round_trip() {
        for d in Datatype::ALL {
            assert_eq!(Datatype::parse(d.name()), Some(d));
        }
        assert_eq!(Datatype::parse("FP128"), None);
    }
}
