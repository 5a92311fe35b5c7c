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
//! type, so a protocol can write the exact width back.

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
        }
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
    pub name: String,
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
    typed: Values,
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
        ClassLabels { classes, typed }
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
        match self.typed {
            Values::Bool(_) => Datatype::Bool,
            Values::Int(_) => Datatype::Int64,
            Values::Uint(_) => Datatype::Uint64,
            Values::Float(_) => Datatype::Fp64,
            Values::Text(_) | Values::Json(_) => Datatype::Bytes,
        }
    }

    /// The labels of class indexes (each below [`ClassLabels::len`]) as a 1-D tensor.
    pub fn tensor(&self, indexes: &[usize]) -> Tensor {
        let values = match &self.typed {
            Values::Bool(c) => Values::Bool(indexes.iter().map(|&i| c[i]).collect()),
            Values::Int(c) => Values::Int(indexes.iter().map(|&i| c[i]).collect()),
            Values::Uint(c) => Values::Uint(indexes.iter().map(|&i| c[i]).collect()),
            Values::Float(c) => Values::Float(indexes.iter().map(|&i| c[i]).collect()),
            Values::Text(c) => Values::Text(indexes.iter().map(|&i| c[i].clone()).collect()),
            Values::Json(c) => Values::Json(indexes.iter().map(|&i| c[i].clone()).collect()),
        };
        Tensor { datatype: self.datatype(), shape: vec![indexes.len()], values }
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
        assert_eq!(serde_json::to_value(ints.tensor(&[1, 0]).nested()).unwrap(), json!([1, 0]));
        let names = ClassLabels::new(vec![json!("setosa"), json!("virginica")]);
        assert_eq!(names.datatype(), Datatype::Bytes);
        assert_eq!(names.tensor(&[1]).values, Values::Text(vec!["virginica".into()]));
        let floats = ClassLabels::new(vec![json!(0.5), json!(1)]);
        assert_eq!(floats.datatype(), Datatype::Fp64);
        let mixed = ClassLabels::new(vec![json!("a"), json!(1)]);
        assert_eq!(serde_json::to_value(mixed.tensor(&[1, 0]).nested()).unwrap(), json!([1, "a"]));
        let bools = ClassLabels::new(vec![json!(false), json!(true)]);
        assert_eq!(bools.datatype(), Datatype::Bool);
    }

    #[test]
    fn datatype_names_round_trip() {
        for d in Datatype::ALL {
            assert_eq!(Datatype::parse(d.name()), Some(d));
        }
        assert_eq!(Datatype::parse("FP128"), None);
    }
}
