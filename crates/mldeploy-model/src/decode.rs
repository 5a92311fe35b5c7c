//! Decoding a request body into rows.
//!
//! Accepted shapes (the first two are ml-deploy's):
//! - `{"data": [[...], ...], "names": [...]}` (rows as arrays, names optional);
//! - `{"data": [{...}, ...]}` and `{"data": {...}}` (records under `data`);
//! - `[{"Age": 22, "Sex": "male"}, ...]` (a list of records);
//! - `{"Age": 22, "Sex": "male"}` (a single record: an object without a `data` key).
//!
//! A top-level list of arrays (`[[...], ...]`) is taken as positional rows, like `data`
//! without `names`.
//!
//! Extra top-level keys (`params`, `on_error`, ...) are allowed, as in ml-deploy. In a single
//! record (no `data` key) the control keys `on_error` and `params` are not features.
//! `"on_error": "skip"` asks for [`OnError::Skip`]; `"reject"` (the default) for
//! [`OnError::Reject`].
//!
//! Refused with [`ModelError::BadRequest`], naming what is wrong: a body that is neither an
//! object nor an array, `data` that is not a list or an object, an empty list of rows, a row
//! that is neither a list nor an object, lists and objects mixed in one request, `names` that is
//! not a list of strings or that comes with records, an unknown `on_error`.
//!
//! Decoding checks shapes only; [`crate::Schema::validate`] checks the values. Rows borrow
//! their values from the body: a large request is not held twice in memory.

use serde_json::{Map, Value};

use crate::ModelError;

/// Rows as sent, before validation, borrowing their values from the body.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows<'a> {
    /// Column names: from `names`, or from the records' keys (first record's key order).
    /// `None` for array rows sent without names (positional, schema order).
    pub names: Option<Vec<String>>,
    /// The rows. For records, each row holds its values in `names` order, with `None` where
    /// the record lacks that key; extra keys of a record are listed in `extra`.
    pub rows: Vec<Row<'a>>,
    /// How the rows were sent; decides how names are matched (see [`RowShape`]).
    pub shape: RowShape,
}

/// How the rows of a request were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowShape {
    /// Arrays without `names`: values in schema order.
    Positional,
    /// Arrays with `names`: the names must list the schema's features in schema order.
    Named,
    /// Objects: matched to the schema by key, in any key order.
    Records,
}

/// One row as sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Row<'a> {
    /// Values, positional or in `Rows::names` order; `None` marks a key the record lacks.
    pub values: Vec<Option<&'a Value>>,
    /// Keys of a record that are not in `Rows::names`.
    pub extra: Vec<String>,
}

/// What the client asked to do with invalid rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Refuse the whole request (422) if any row is invalid.
    #[default]
    Reject,
    /// Predict the valid rows; return the invalid ones with their reasons.
    Skip,
}

/// Keys of a single-record body that steer the request instead of being features.
const CONTROL_KEYS: [&str; 2] = ["on_error", "params"];

/// Decode a predict or feedback body into rows and the client's choice for invalid rows.
pub fn decode_rows(body: &Value) -> Result<(Rows<'_>, OnError), ModelError> {
    match body {
        Value::Object(obj) => {
            let on_error = on_error_of(obj)?;
            let rows = match obj.get("data") {
                Some(data) => decode_data(data, obj.get("names"))?,
                None => {
                    if obj.contains_key("names") {
                        return Err(bad("`names` was sent without `data`"));
                    }
                    single_record(obj, true)
                }
            };
            Ok((rows, on_error))
        }
        Value::Array(items) => Ok((decode_list(items, None, "the body")?, OnError::Reject)),
        other => {
            Err(bad(format!("the body must be a JSON object or a list of rows, not {}", kind_of(other))))
        }
    }
}

/// Decode a feedback or predict `data` value alone (no `names`, no `on_error`): a list of
/// rows or a single record.
pub fn decode_data<'a>(data: &'a Value, names: Option<&Value>) -> Result<Rows<'a>, ModelError> {
    match data {
        Value::Array(items) => decode_list(items, names, "data"),
        Value::Object(obj) => {
            if names.is_some() {
                return Err(bad("`names` goes with rows sent as lists, not with records"));
            }
            Ok(single_record(obj, false))
        }
        other => {
            Err(bad(format!("`data` must be a list of rows or a record (object), not {}", kind_of(other))))
        }
    }
}

fn on_error_of(obj: &Map<String, Value>) -> Result<OnError, ModelError> {
    match obj.get("on_error") {
        None | Some(Value::Null) => Ok(OnError::Reject),
        Some(Value::String(s)) if s == "reject" => Ok(OnError::Reject),
        Some(Value::String(s)) if s == "skip" => Ok(OnError::Skip),
        Some(_) => Err(bad("`on_error` must be \"reject\" or \"skip\"")),
    }
}

fn decode_list<'a>(items: &'a [Value], names: Option<&Value>, what: &str) -> Result<Rows<'a>, ModelError> {
    let Some(first) = items.first() else {
        return Err(bad(format!("{what} holds no rows")));
    };
    match first {
        Value::Array(_) => {
            let names = names.map(names_of).transpose()?;
            let mut rows = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::Array(values) = item else {
                    return Err(mixed(what, i, item, "a list"));
                };
                rows.push(Row { values: values.iter().map(Some).collect(), extra: Vec::new() });
            }
            let shape = if names.is_some() { RowShape::Named } else { RowShape::Positional };
            Ok(Rows { names, rows, shape })
        }
        Value::Object(first_obj) => {
            if names.is_some() {
                return Err(bad("`names` goes with rows sent as lists, not with records"));
            }
            let names: Vec<String> = first_obj.keys().cloned().collect();
            let mut rows = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::Object(obj) = item else {
                    return Err(mixed(what, i, item, "an object"));
                };
                rows.push(record_row(obj, &names, false));
            }
            Ok(Rows { names: Some(names), rows, shape: RowShape::Records })
        }
        other => Err(bad(format!(
            "{what}[0] is {}: each row must be a list of values or an object of feature values \
             (wrap a single row in a list: [[...]])",
            kind_of(other)
        ))),
    }
}

fn names_of(names: &Value) -> Result<Vec<String>, ModelError> {
    let Value::Array(items) = names else {
        return Err(bad(format!("`names` must be a list of strings, not {}", kind_of(names))));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, n)| match n {
            Value::String(s) => Ok(s.clone()),
            other => Err(bad(format!("names[{i}] must be a string, not {}", kind_of(other)))),
        })
        .collect()
}

fn single_record(obj: &Map<String, Value>, skip_control: bool) -> Rows<'_> {
    let names: Vec<String> =
        obj.keys().filter(|k| !(skip_control && CONTROL_KEYS.contains(&k.as_str()))).cloned().collect();
    let row = record_row(obj, &names, skip_control);
    Rows { names: Some(names), rows: vec![row], shape: RowShape::Records }
}

/// One record's values in `names` order; keys outside `names` go to `extra`.
fn record_row<'a>(obj: &'a Map<String, Value>, names: &[String], skip_control: bool) -> Row<'a> {
    // Usual case: the same keys as the first record, so the same (sorted) order.
    if !skip_control && obj.len() == names.len() {
        let mut values = Vec::with_capacity(names.len());
        for ((key, value), name) in obj.iter().zip(names) {
            if key != name {
                break;
            }
            values.push(Some(value));
        }
        if values.len() == names.len() {
            return Row { values, extra: Vec::new() };
        }
    }
    let values: Vec<Option<&Value>> = names.iter().map(|n| obj.get(n)).collect();
    let found = values.iter().filter(|v| v.is_some()).count();
    let own_keys = if skip_control {
        obj.keys().filter(|k| !CONTROL_KEYS.contains(&k.as_str())).count()
    } else {
        obj.len()
    };
    let extra = if own_keys > found {
        obj.keys()
            .filter(|k| !(skip_control && CONTROL_KEYS.contains(&k.as_str())))
            .filter(|k| !names.iter().any(|n| n == *k))
            .cloned()
            .collect()
    } else {
        Vec::new()
    };
    Row { values, extra }
}

fn mixed(what: &str, i: usize, item: &Value, expected: &str) -> ModelError {
    bad(format!("{what}[{i}] is {}, but {what}[0] is {expected}: send every row the same way", kind_of(item)))
}

/// What kind of JSON value this is, for messages.
pub(crate) fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn bad(message: impl Into<String>) -> ModelError {
    ModelError::BadRequest(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Decodes a body kept alive for the test (rows borrow from it).
    fn decode(v: Value) -> (Rows<'static>, OnError) {
        decode_rows(Box::leak(Box::new(v))).unwrap()
    }

    fn bad_message(v: Value) -> String {
        match decode_rows(&v) {
            Err(ModelError::BadRequest(m)) => m,
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }

    #[test]
    fn ml_deploy_shape_with_names() {
        let (rows, on_error) = decode(json!({"data": [[1, "a"], [2, "b"]], "names": ["x", "y"]}));
        assert_eq!(on_error, OnError::Reject);
        assert_eq!(rows.shape, RowShape::Named);
        assert_eq!(rows.names, Some(vec!["x".to_string(), "y".to_string()]));
        assert_eq!(rows.rows.len(), 2);
        assert_eq!(rows.rows[1].values, vec![Some(&json!(2)), Some(&json!("b"))]);
    }

    #[test]
    fn positional_rows_without_names() {
        let (rows, _) = decode(json!({"data": [[1, 2, 3]]}));
        assert_eq!(rows.shape, RowShape::Positional);
        assert_eq!(rows.names, None);
        assert_eq!(rows.rows[0].values.len(), 3);
        let (rows, _) = decode(json!([[1, 2], [3, 4]]));
        assert_eq!(rows.shape, RowShape::Positional);
        assert_eq!(rows.rows.len(), 2);
    }

    #[test]
    fn records_under_data_and_missing_and_extra_keys() {
        let (rows, _) = decode(json!({"data": [{"a": 1, "b": 2}, {"b": 3, "c": 4}]}));
        assert_eq!(rows.shape, RowShape::Records);
        assert_eq!(rows.names, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(rows.rows[0].values, vec![Some(&json!(1)), Some(&json!(2))]);
        assert_eq!(rows.rows[1].values, vec![None, Some(&json!(3))]);
        assert_eq!(rows.rows[1].extra, vec!["c".to_string()]);
    }

    #[test]
    fn single_record_under_data() {
        let (rows, _) = decode(json!({"data": {"a": 1}, "on_error": "skip"}));
        assert_eq!(rows.rows.len(), 1);
        assert_eq!(rows.names, Some(vec!["a".to_string()]));
    }

    #[test]
    fn list_of_records() {
        let (rows, _) = decode(json!([{"Age": 22, "Sex": "male"}, {"Sex": "female", "Age": 30}]));
        assert_eq!(rows.shape, RowShape::Records);
        assert_eq!(rows.rows[1].values, vec![Some(&json!(30)), Some(&json!("female"))]);
    }

    #[test]
    fn single_record_without_data_ignores_control_keys() {
        let (rows, on_error) = decode(json!({"Age": 22, "on_error": "skip", "params": {"k": 1}}));
        assert_eq!(on_error, OnError::Skip);
        assert_eq!(rows.names, Some(vec!["Age".to_string()]));
        assert!(rows.rows[0].extra.is_empty());
    }

    #[test]
    fn on_error_values() {
        assert_eq!(decode(json!({"data": [[1]], "on_error": "skip"})).1, OnError::Skip);
        assert_eq!(decode(json!({"data": [[1]], "on_error": "reject"})).1, OnError::Reject);
        assert!(bad_message(json!({"data": [[1]], "on_error": "drop"})).contains("on_error"));
        assert!(bad_message(json!({"data": [[1]], "on_error": true})).contains("on_error"));
    }

    #[test]
    fn malformed_shapes_are_named() {
        assert!(bad_message(json!(3)).contains("the body must be"));
        assert!(bad_message(json!("x")).contains("a string"));
        assert!(bad_message(json!({"data": 5})).contains("`data` must be"));
        assert!(bad_message(json!({"data": []})).contains("data holds no rows"));
        assert!(bad_message(json!([])).contains("holds no rows"));
        assert!(bad_message(json!({"data": [1, 2]})).contains("data[0] is a number"));
        assert!(bad_message(json!({"data": [[1], {"a": 1}]})).contains("data[1] is an object"));
        assert!(bad_message(json!({"data": [{"a": 1}, [1]]})).contains("data[1] is a list"));
        assert!(bad_message(json!({"data": [[1]], "names": "a"})).contains("`names` must be a list"));
        assert!(bad_message(json!({"data": [[1]], "names": [1]})).contains("names[0] must be a string"));
        assert!(bad_message(json!({"data": [{"a": 1}], "names": ["a"]})).contains("not with records"));
        assert!(bad_message(json!({"names": ["a"]})).contains("without `data`"));
    }
}
