//! V2 tensors on the wire: input tensors decoded from JSON `data` (nested or flat, row-major)
//! or from the binary tensor extension, and output tensors encoded the same two ways.
//!
//! Binary layout (Triton's binary tensor data extension): the elements of a tensor back to
//! back, little-endian, at the width of its datatype; `BOOL` one byte each; `BYTES` each a
//! 4-byte little-endian length and the bytes.

use mldeploy_model::{Cell, CellColumn, Datatype, Tensor, Values};
use serde_json::Value;

/// Why a tensor could not be decoded (a 400 naming the tensor).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorError(pub String);

fn bad(message: String) -> TensorError {
    TensorError(message)
}

/// The elements of an input tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Elements {
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Uint(Vec<u64>),
    Float(Vec<f64>),
    Bytes(Vec<Vec<u8>>),
}

impl Elements {
    /// Element `i` as a cell for validation. Bytes that are not UTF-8 are shown as their lossy
    /// text (a category of the model never matches them).
    fn cell(&self, i: usize) -> Cell<'_> {
        match self {
            Elements::Bool(v) => Cell::Bool(v[i]),
            Elements::Int(v) => Cell::Number(v[i] as f64),
            Elements::Uint(v) => Cell::Number(v[i] as f64),
            Elements::Float(v) => Cell::Number(v[i]),
            Elements::Bytes(v) => Cell::Text(std::str::from_utf8(&v[i]).unwrap_or("\u{fffd}")),
        }
    }
}

/// A decoded input tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InputTensor {
    pub name: String,
    pub datatype: Datatype,
    pub shape: Vec<usize>,
    pub elements: Elements,
}

impl InputTensor {
    /// The first dimension (rows), or 1 for a scalar.
    pub(crate) fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Elements per row.
    pub(crate) fn width(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// Column `j` of a `[rows, width]` view.
    pub(crate) fn column(&self, j: usize) -> Strided<'_> {
        Strided { elements: &self.elements, offset: j, stride: self.width().max(1), len: self.rows() }
    }

    /// Element `i` as JSON (for models that take their rows as JSON).
    pub(crate) fn json_at(&self, i: usize) -> Value {
        match &self.elements {
            Elements::Bool(v) => Value::Bool(v[i]),
            Elements::Int(v) => Value::from(v[i]),
            Elements::Uint(v) => Value::from(v[i]),
            Elements::Float(v) => serde_json::Number::from_f64(v[i]).map_or(Value::Null, Value::Number),
            Elements::Bytes(v) => Value::String(String::from_utf8_lossy(&v[i]).into_owned()),
        }
    }
}

/// One column of a row-major tensor: every `stride`-th element from `offset`.
pub(crate) struct Strided<'a> {
    elements: &'a Elements,
    offset: usize,
    stride: usize,
    len: usize,
}

impl CellColumn for Strided<'_> {
    fn len(&self) -> usize {
        self.len
    }

    fn cell(&self, row: usize) -> Cell<'_> {
        self.elements.cell(self.offset + row * self.stride)
    }
}

/// Parse a tensor's `shape` (non-negative integers).
pub(crate) fn parse_shape(name: &str, shape: Option<&Value>) -> Result<Vec<usize>, TensorError> {
    let Some(Value::Array(dims)) = shape else {
        return Err(bad(format!("input {name:?}: `shape` must be a list of dimensions")));
    };
    dims.iter()
        .map(|d| {
            d.as_u64().and_then(|d| usize::try_from(d).ok()).ok_or_else(|| {
                bad(format!("input {name:?}: shape {d} is not a dimension (a whole number >= 0)"))
            })
        })
        .collect()
}

/// The number of elements of `shape`, refusing absurd products.
pub(crate) fn element_count(name: &str, shape: &[usize]) -> Result<usize, TensorError> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("input {name:?}: the shape {shape:?} is too large")))
}

/// Flatten JSON `data` (nested lists in row-major order, or flat) into its leaves.
fn leaves<'a>(data: &'a Value, out: &mut Vec<&'a Value>) {
    match data {
        Value::Array(items) => {
            for item in items {
                leaves(item, out);
            }
        }
        leaf => out.push(leaf),
    }
}

/// Decode JSON `data` of `count` elements of `datatype`.
pub(crate) fn from_json(
    name: &str,
    datatype: Datatype,
    count: usize,
    data: &Value,
) -> Result<Elements, TensorError> {
    let mut flat = Vec::with_capacity(count);
    leaves(data, &mut flat);
    if flat.len() != count {
        return Err(bad(format!(
            "input {name:?}: `data` holds {} elements but the shape holds {count}",
            flat.len()
        )));
    }
    let wrong = |i: usize, what: &str| {
        bad(format!("input {name:?}: element {i} is {}, expected {what} for {datatype}", show(flat[i])))
    };
    Ok(match datatype {
        Datatype::Bool => Elements::Bool(
            flat.iter()
                .enumerate()
                .map(|(i, v)| v.as_bool().ok_or_else(|| wrong(i, "true or false")))
                .collect::<Result<_, _>>()?,
        ),
        Datatype::Int8 | Datatype::Int16 | Datatype::Int32 | Datatype::Int64 => {
            let (lo, hi) = int_range(datatype);
            Elements::Int(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_i64()
                            .filter(|x| (lo..=hi).contains(x))
                            .ok_or_else(|| wrong(i, "an integer in range"))
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        Datatype::Uint8 | Datatype::Uint16 | Datatype::Uint32 | Datatype::Uint64 => {
            let hi = uint_max(datatype);
            Elements::Uint(
                flat.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        v.as_u64().filter(|x| *x <= hi).ok_or_else(|| wrong(i, "a whole number in range"))
                    })
                    .collect::<Result<_, _>>()?,
            )
        }
        Datatype::Fp16 | Datatype::Fp32 | Datatype::Fp64 => Elements::Float(
            flat.iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::Number(n) => n.as_f64().ok_or_else(|| wrong(i, "a number")),
                    // JSON has no NaN: tensor clients send it as a string.
                    Value::String(s) => match s.as_str() {
                        "NaN" | "nan" => Ok(f64::NAN),
                        "Infinity" | "inf" => Ok(f64::INFINITY),
                        "-Infinity" | "-inf" => Ok(f64::NEG_INFINITY),
                        _ => Err(wrong(i, "a number")),
                    },
                    _ => Err(wrong(i, "a number")),
                })
                .collect::<Result<_, _>>()?,
        ),
        Datatype::Bytes => Elements::Bytes(
            flat.iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone().into_bytes()),
                    _ => Err(wrong(i, "a string")),
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

fn int_range(datatype: Datatype) -> (i64, i64) {
    match datatype {
        Datatype::Int8 => (i64::from(i8::MIN), i64::from(i8::MAX)),
        Datatype::Int16 => (i64::from(i16::MIN), i64::from(i16::MAX)),
        Datatype::Int32 => (i64::from(i32::MIN), i64::from(i32::MAX)),
        _ => (i64::MIN, i64::MAX),
    }
}

fn uint_max(datatype: Datatype) -> u64 {
    match datatype {
        Datatype::Uint8 => u64::from(u8::MAX),
        Datatype::Uint16 => u64::from(u16::MAX),
        Datatype::Uint32 => u64::from(u32::MAX),
        _ => u64::MAX,
    }
}

fn show(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 40 {
        let mut cut = 40;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Decode `count` elements of `datatype` from the binary tensor extension's bytes.
pub(crate) fn from_binary(
    name: &str,
    datatype: Datatype,
    count: usize,
    bytes: &[u8],
) -> Result<Elements, TensorError> {
    let Some(size) = datatype.size() else {
        let mut items = Vec::with_capacity(count);
        let mut rest = bytes;
        while !rest.is_empty() {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return Err(bad(format!("input {name:?}: a BYTES element's 4-byte length is cut short")));
            };
            let len = u32::from_le_bytes(*len) as usize;
            if tail.len() < len {
                return Err(bad(format!("input {name:?}: a BYTES element is cut short")));
            }
            items.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        if items.len() != count {
            return Err(bad(format!(
                "input {name:?}: the binary data holds {} elements but the shape holds {count}",
                items.len()
            )));
        }
        return Ok(Elements::Bytes(items));
    };
    if Some(bytes.len()) != count.checked_mul(size) {
        return Err(bad(format!(
            "input {name:?}: {} bytes of binary data, but {count} elements of {datatype} take {}",
            bytes.len(),
            count.saturating_mul(size)
        )));
    }
    let chunks = |n: usize| bytes.chunks_exact(n);
    Ok(match datatype {
        Datatype::Bool => Elements::Bool(bytes.iter().map(|&b| b != 0).collect()),
        Datatype::Int8 => Elements::Int(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
        Datatype::Int16 => {
            Elements::Int(chunks(2).map(|c| i64::from(i16::from_le_bytes([c[0], c[1]]))).collect())
        }
        Datatype::Int32 => Elements::Int(
            chunks(4).map(|c| i64::from(i32::from_le_bytes(c.try_into().unwrap_or_default()))).collect(),
        ),
        Datatype::Int64 => {
            Elements::Int(chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
        }
        Datatype::Uint8 => Elements::Uint(bytes.iter().map(|&b| u64::from(b)).collect()),
        Datatype::Uint16 => {
            Elements::Uint(chunks(2).map(|c| u64::from(u16::from_le_bytes([c[0], c[1]]))).collect())
        }
        Datatype::Uint32 => Elements::Uint(
            chunks(4).map(|c| u64::from(u32::from_le_bytes(c.try_into().unwrap_or_default()))).collect(),
        ),
        Datatype::Uint64 => {
            Elements::Uint(chunks(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
        }
        Datatype::Fp16 => {
            Elements::Float(chunks(2).map(|c| f64::from(half::f16::from_le_bytes([c[0], c[1]]))).collect())
        }
        Datatype::Fp32 => Elements::Float(
            chunks(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or_default()))).collect(),
        ),
        Datatype::Fp64 => {
            Elements::Float(chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
        }
        Datatype::Bytes => unreachable!("BYTES has no fixed size"),
    })
}

/// Append a tensor's elements in the binary encoding of its datatype.
pub(crate) fn write_binary(tensor: &Tensor, out: &mut Vec<u8>) {
    write_values(tensor.datatype, &tensor.values, out);
}

/// Append `values` in the binary encoding of `d`.
fn write_values(d: Datatype, values: &Values, out: &mut Vec<u8>) {
    match values {
        Values::Bool(v) => out.extend(v.iter().map(|&b| u8::from(b))),
        Values::Int(v) => {
            for &x in v {
                match d {
                    Datatype::Int8 => out.push(x as i8 as u8),
                    Datatype::Int16 => out.extend_from_slice(&(x as i16).to_le_bytes()),
                    Datatype::Int32 => out.extend_from_slice(&(x as i32).to_le_bytes()),
                    _ => out.extend_from_slice(&x.to_le_bytes()),
                }
            }
        }
        Values::Uint(v) => {
            for &x in v {
                match d {
                    Datatype::Uint8 => out.push(x as u8),
                    Datatype::Uint16 => out.extend_from_slice(&(x as u16).to_le_bytes()),
                    Datatype::Uint32 => out.extend_from_slice(&(x as u32).to_le_bytes()),
                    _ => out.extend_from_slice(&x.to_le_bytes()),
                }
            }
        }
        Values::Float(v) => {
            for &x in v {
                match d {
                    Datatype::Fp16 => out.extend_from_slice(&half::f16::from_f64(x).to_le_bytes()),
                    Datatype::Fp32 => out.extend_from_slice(&(x as f32).to_le_bytes()),
                    _ => out.extend_from_slice(&x.to_le_bytes()),
                }
            }
        }
        Values::Text(v) => {
            for s in v {
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        Values::Json(v) => {
            for item in v {
                let text = match item {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.extend_from_slice(&(text.len() as u32).to_le_bytes());
                out.extend_from_slice(text.as_bytes());
            }
        }
        Values::Classes(c) => {
            // Each class encoded once, then copied for every element of its class.
            let encoded: Vec<Vec<u8>> = (0..c.classes().len() as u32)
                .map(|k| {
                    let mut one = Vec::new();
                    write_values(d, &c.classes().select(&[k]), &mut one);
                    one
                })
                .collect();
            for &k in c.indexes() {
                out.extend_from_slice(&encoded[k as usize]);
            }
        }
    }
}

/// A tensor made from free-form JSON (a model that answers JSON): a rectangular nest of
/// numbers, booleans or strings keeps its shape and type; anything else becomes a list of the
/// JSON texts of its items.
pub(crate) fn tensor_from_json(value: &Value) -> Tensor {
    let mut shape = Vec::new();
    let mut probe = value;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let mut flat = Vec::new();
    leaves(value, &mut flat);
    let rectangular = shape.iter().product::<usize>() == flat.len() && is_rectangular(value, &shape);
    if !rectangular {
        let items: Vec<Value> = match value {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        return Tensor { datatype: Datatype::Bytes, shape: vec![items.len()], values: Values::Json(items) };
    }
    let (datatype, values) = if flat.iter().all(|v| v.is_i64()) {
        (Datatype::Int64, Values::Int(flat.iter().filter_map(|v| v.as_i64()).collect()))
    } else if flat.iter().all(|v| v.is_number()) {
        (Datatype::Fp64, Values::Float(flat.iter().filter_map(|v| v.as_f64()).collect()))
    } else if flat.iter().all(|v| v.is_boolean()) {
        (Datatype::Bool, Values::Bool(flat.iter().filter_map(|v| v.as_bool()).collect()))
    } else if flat.iter().all(|v| v.is_string()) {
        (Datatype::Bytes, Values::Text(flat.iter().filter_map(|v| v.as_str().map(String::from)).collect()))
    } else {
        (Datatype::Bytes, Values::Json(flat.into_iter().cloned().collect()))
    };
    Tensor { datatype, shape, values }
}

fn is_rectangular(value: &Value, shape: &[usize]) -> bool {
    match (value, shape.split_first()) {
        (Value::Array(items), Some((&n, rest))) => {
            items.len() == n && items.iter().all(|i| is_rectangular(i, rest))
        }
        (Value::Array(_), None) => false,
        (_, None) => true,
        (_, Some(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_data_nested_or_flat() {
        let nested = from_json("x", Datatype::Fp32, 4, &json!([[1, 2.5], [3, "NaN"]])).unwrap();
        let Elements::Float(v) = nested else { panic!() };
        assert_eq!(&v[..3], &[1.0, 2.5, 3.0]);
        assert!(v[3].is_nan());
        assert_eq!(from_json("x", Datatype::Int64, 2, &json!([7, -1])).unwrap(), Elements::Int(vec![7, -1]));
        let e = from_json("x", Datatype::Int8, 1, &json!([300])).unwrap_err();
        assert!(e.0.contains("input \"x\"") && e.0.contains("INT8"), "{e:?}");
        assert!(from_json("x", Datatype::Fp64, 3, &json!([1, 2])).unwrap_err().0.contains("2 elements"));
        assert_eq!(
            from_json("s", Datatype::Bytes, 2, &json!(["a", "b"])).unwrap(),
            Elements::Bytes(vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert!(from_json("b", Datatype::Bool, 1, &json!([1])).is_err());
    }

    #[test]
    fn binary_round_trips_every_datatype() {
        let cases = [
            (Datatype::Bool, Values::Bool(vec![true, false])),
            (Datatype::Int8, Values::Int(vec![-3, 127])),
            (Datatype::Int16, Values::Int(vec![-300, 3])),
            (Datatype::Int32, Values::Int(vec![-70000, 1])),
            (Datatype::Int64, Values::Int(vec![i64::MIN, 5])),
            (Datatype::Uint8, Values::Uint(vec![0, 255])),
            (Datatype::Uint16, Values::Uint(vec![65535, 1])),
            (Datatype::Uint32, Values::Uint(vec![4_000_000_000, 2])),
            (Datatype::Uint64, Values::Uint(vec![u64::MAX, 9])),
            (Datatype::Fp16, Values::Float(vec![1.5, -0.25])),
            (Datatype::Fp32, Values::Float(vec![0.1f32 as f64, 2.0])),
            (Datatype::Fp64, Values::Float(vec![0.1, -2.0])),
            (Datatype::Bytes, Values::Text(vec!["héllo".into(), String::new()])),
        ];
        for (datatype, values) in cases {
            let tensor = Tensor { datatype, shape: vec![2], values: values.clone() };
            let mut bytes = Vec::new();
            write_binary(&tensor, &mut bytes);
            let back = from_binary("t", datatype, 2, &bytes).unwrap();
            let back = match back {
                Elements::Bool(v) => Values::Bool(v),
                Elements::Int(v) => Values::Int(v),
                Elements::Uint(v) => Values::Uint(v),
                Elements::Float(v) => Values::Float(v),
                Elements::Bytes(v) => {
                    Values::Text(v.into_iter().map(|b| String::from_utf8(b).unwrap()).collect())
                }
            };
            assert_eq!(back, values, "{datatype}");
        }
        assert!(from_binary("t", Datatype::Fp32, 2, &[0; 7]).unwrap_err().0.contains("7 bytes"));
        assert!(from_binary("t", Datatype::Bytes, 1, &[5, 0, 0, 0, b'a']).is_err());
    }

    /// Labels by class index are written as the labels themselves, whatever their type.
    #[test]
    fn labels_by_index_write_the_bytes_of_their_labels() {
        let class_lists = [
            vec![json!("setosa"), json!("vé"), json!("")],
            vec![json!(-2), json!(40)],
            vec![json!(0.5), json!(1)],
            vec![json!(true), json!(false)],
            vec![json!("a"), json!(1), json!({"k": null})],
        ];
        for classes in class_lists {
            let labels = mldeploy_model::ClassLabels::new(classes.clone());
            let indexes: Vec<u32> = (0..9).map(|i| (i * 5 % classes.len()) as u32).collect();
            let tensor = labels.tensor(indexes);
            let Values::Classes(by_index) = &tensor.values else { panic!("labels by index") };
            let plain = Tensor { values: by_index.expand(), ..tensor.clone() };
            let (mut written, mut expected) = (Vec::new(), Vec::new());
            write_binary(&tensor, &mut written);
            write_binary(&plain, &mut expected);
            assert!(!expected.is_empty());
            assert_eq!(written, expected, "{classes:?}");
        }
    }

    #[test]
    fn free_form_json_becomes_tensors() {
        let t = tensor_from_json(&json!([[0.5, 0.5], [1, 0]]));
        assert_eq!((t.datatype, t.shape.clone()), (Datatype::Fp64, vec![2, 2]));
        let t = tensor_from_json(&json!(["a", "b"]));
        assert_eq!((t.datatype, t.shape.clone()), (Datatype::Bytes, vec![2]));
        let t = tensor_from_json(&json!([[1], [2, 3]]));
        assert_eq!((t.datatype, t.shape.clone()), (Datatype::Bytes, vec![2]));
        assert_eq!(t.values, Values::Json(vec![json!([1]), json!([2, 3])]));
        let t = tensor_from_json(&json!(3));
        assert_eq!((t.datatype, t.shape.clone()), (Datatype::Int64, vec![]));
    }
}
