//! Python objects to JSON values and back.
//!
//! Results are walked in Rust: dicts, lists, tuples, strings, numbers, booleans and None, then
//! numpy arrays read through their buffer (float64/32, int64/32, bool; other dtypes through
//! `tolist()`), numpy scalars (`tolist()`) and pandas objects (`to_dict()`). NaN and infinities
//! become `null`, as JSON has neither (Python's `json.dumps` would write invalid JSON).

use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRecursionError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// Nesting beyond this is refused (a list that holds itself would never end).
const MAX_DEPTH: usize = 128;

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// Nested lists of a row-major slice of `shape`.
fn nested<T: Copy>(data: &[T], shape: &[usize], f: &impl Fn(T) -> Value) -> Value {
    match shape {
        [] => data.first().map_or(Value::Null, |v| f(*v)),
        [n] => Value::Array(data[..*n].iter().map(|v| f(*v)).collect()),
        [n, rest @ ..] => {
            let step: usize = rest.iter().product();
            Value::Array((0..*n).map(|i| nested(&data[i * step..(i + 1) * step], rest, f)).collect())
        }
    }
}

fn array<T: numpy::Element + Copy>(a: &Bound<'_, PyArrayDyn<T>>, f: impl Fn(T) -> Value) -> Value {
    let shape = a.shape().to_vec();
    let read = a.readonly();
    match read.as_slice() {
        Ok(slice) => nested(slice, &shape, &f),
        // Not contiguous: copy in logical order first.
        Err(_) => {
            let values: Vec<T> = read.as_array().iter().copied().collect();
            nested(&values, &shape, &f)
        }
    }
}

/// A Python result as JSON.
pub fn to_json(obj: &Bound<'_, PyAny>) -> PyResult<Value> {
    walk(obj, 0)
}

fn walk(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(PyRecursionError::new_err("the result is nested too deeply (or holds itself)"));
    }
    if obj.is_none() {
        return Ok(Value::Null);
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        let mut map = Map::with_capacity(d.len());
        for (k, v) in d.iter() {
            let key = match k.cast::<PyString>() {
                Ok(s) => s.to_str()?.to_owned(),
                Err(_) => k.str()?.to_str()?.to_owned(),
            };
            map.insert(key, walk(&v, depth + 1)?);
        }
        return Ok(Value::Object(map));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().map(|v| walk(&v, depth + 1)).collect::<PyResult<Vec<_>>>().map(Value::Array);
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Value::String(s.to_str()?.to_owned()));
    }
    // bool before int: bool is a subclass of int.
    if let Ok(b) = obj.cast::<PyBool>() {
        return Ok(Value::Bool(b.is_true()));
    }
    // numpy's float64 is a float subclass: it lands here too.
    if let Ok(f) = obj.cast::<PyFloat>() {
        return Ok(float(f.value()));
    }
    if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            return Ok(Value::from(v));
        }
        if let Ok(v) = i.extract::<u64>() {
            return Ok(Value::from(v));
        }
        return Ok(float(i.extract::<f64>()?));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f64>>() {
        return Ok(array(a, float));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<f32>>() {
        return Ok(array(a, |v| float(f64::from(v))));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<i64>>() {
        return Ok(array(a, Value::from));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<i32>>() {
        return Ok(array(a, Value::from));
    }
    if let Ok(a) = obj.cast::<PyArrayDyn<bool>>() {
        return Ok(array(a, Value::Bool));
    }
    if let Ok(t) = obj.cast::<PyTuple>() {
        return t.iter().map(|v| walk(&v, depth + 1)).collect::<PyResult<Vec<_>>>().map(Value::Array);
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Value::String(String::from_utf8_lossy(b.as_bytes()).into_owned()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Value::String(String::from_utf8_lossy(&b.to_vec()).into_owned()));
    }
    // numpy scalars and arrays of other dtypes, sets.
    if let Ok(tolist) = obj.getattr("tolist") {
        return walk(&tolist.call0()?, depth + 1);
    }
    // pandas Series and DataFrames.
    if let Ok(to_dict) = obj.getattr("to_dict") {
        return walk(&to_dict.call0()?, depth + 1);
    }
    if obj.is_instance_of::<pyo3::types::PySet>() || obj.is_instance_of::<pyo3::types::PyFrozenSet>() {
        let items = obj.try_iter()?.map(|v| walk(&v?, depth + 1)).collect::<PyResult<Vec<_>>>()?;
        return Ok(Value::Array(items));
    }
    Err(PyTypeError::new_err(format!("Object of type {} is not JSON serializable", obj.get_type().name()?)))
}

/// A JSON value as Python objects (dict, list, str, int, float, bool, None).
pub fn to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, v) in map {
                dict.set_item(k, to_py(py, v)?)?;
            }
            dict.into_any()
        }
    })
}
