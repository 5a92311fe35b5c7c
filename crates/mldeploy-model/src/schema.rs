//! The feature schema (ml-deploy's `data` section) and its validation.
//!
//! A [`Schema`] lists the model's input features in order. [`Schema::validate`] turns decoded
//! rows ([`crate::decode::Rows`]) into a typed, column-major [`Table`], or says for every bad
//! row which feature is wrong and why ([`RowError`]).
//!
//! Rules (each error names the row and the feature; `reason` is one of the stable codes of
//! [`RowError::reason`]):
//! - Names. Records are matched to features by key, in any key order: a key the schema lacks is
//!   `unexpected_feature`, a feature the record lacks is `missing_feature`, both for that row.
//!   Arrays sent with `names` must name every feature once, in schema order: an unknown or
//!   repeated name is `unexpected_feature`, an absent one `missing_feature`, and the schema's
//!   features in another order `feature_order`; these concern the request as a whole (`row`
//!   absent) and refuse it whatever `on_error` says. The strict order is deliberate: a client
//!   whose `names` disagree with the schema's order most likely builds its arrays in the wrong
//!   order too. Arrays without `names` are positional, in schema order.
//! - `row_length`: an array row whose length differs from the names (or the feature count).
//! - Types (`wrong_type`): `float` takes numbers and numeric strings (`"3.5"`, as ml-deploy's
//!   dtype conversion did); `int` the same when integral (`3`, `3.0`, `"3"`); `bool` takes
//!   `true`/`false`, `0`/`1` and the strings `"true"`/`"false"`/`"0"`/`"1"`; `category` takes
//!   strings, and numbers or booleans by their JSON text. Booleans are not numbers; objects and
//!   lists are never values.
//! - Missing values: a feature that sets `missing` takes `null` (and, numeric, NaN: `"NaN"`) as
//!   a missing value: `NaN` in a numeric column, `None` in a category column
//!   ([`Column::OptionalCategory`]). Models that handle missing values (tree ensembles) declare it.
//! - `not_finite`: NaN and infinities (the strings `"NaN"`, `"Infinity"`, `"-Infinity"`, `null`,
//!   or a numeric string too big for `f64`) unless the feature sets `allow_nan` (or, for NaN and
//!   `null`, `missing`); an allowed non-finite value skips the range check. JSON numbers too big for `f64` never get here:
//!   the JSON parser refuses them.
//! - `out_of_range`: outside the inclusive `min`/`max`.
//! - `unknown_category`: not one of the listed values (for numeric features, compared as
//!   numbers: `1`, `1.0` and `"1"` are the same). A category feature's column holds the listed
//!   value's text, so the model sees the spelling it was trained with.
//!
//! With [`OnError::Reject`] any error refuses the request ([`ModelError::Invalid`] with every
//! error, up to [`MAX_ERRORS`]); with [`OnError::Skip`] the valid rows form the table and the
//! errors of the others are returned beside it; a request where no row is valid is refused.
//!
//! Cost: one pass over the cells; one allocation per column; numbers are never turned into
//! text; category values are copied once into their column.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::decode::{kind_of, OnError, RowShape, Rows};
use crate::ModelError;

/// The type of a feature's values.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// A real number (JSON number; a numeric string is converted).
    Float,
    /// An integer (JSON integer, or a float with no fractional part).
    Int,
    /// A boolean (JSON bool, or 0/1).
    Bool,
    /// A category: a string, or a number/bool taken by its JSON text.
    Category,
}

/// The allowed values of a feature: a range or a list of categories, as in ml-deploy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum FeatureValues {
    /// Inclusive bounds; either may be absent.
    Range {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// The allowed categories.
    Categories(Vec<Value>),
}

/// One input feature.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Feature {
    /// The feature's name, as clients send it.
    pub name: String,
    /// The type; `float` when absent.
    #[serde(default = "default_dtype")]
    pub dtype: Dtype,
    /// Allowed values; absent means any value of the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<FeatureValues>,
    /// Whether NaN and infinities are accepted (JSON has no NaN: they arrive as the strings
    /// "NaN", "Infinity", "-Infinity" or as null). Off by default.
    #[serde(default)]
    pub allow_nan: bool,
    /// Whether a value may be missing (`null`, or NaN for a number): the model handles missing
    /// values itself. Off by default.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
}

fn default_dtype() -> Dtype {
    Dtype::Float
}

/// A column of validated values, in row order.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    /// `float`, `int` and `bool` features, as `f64` (bool as 0.0/1.0; NaN when missing).
    Numeric(Vec<f64>),
    /// `category` features, as text.
    Category(Vec<String>),
    /// `category` features that may be missing (`missing: true`): `None` when missing.
    OptionalCategory(Vec<Option<String>>),
}

impl Column {
    /// An empty column for values of `feature`.
    pub fn for_feature(feature: &Feature, capacity: usize) -> Column {
        match (feature.dtype, feature.missing) {
            (Dtype::Category, false) => Column::Category(Vec::with_capacity(capacity)),
            (Dtype::Category, true) => Column::OptionalCategory(Vec::with_capacity(capacity)),
            _ => Column::Numeric(Vec::with_capacity(capacity)),
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Column::Numeric(v) => v.len(),
            Column::Category(v) => v.len(),
            Column::OptionalCategory(v) => v.len(),
        }
    }

    /// The text of row `row` of a category column (`None`: missing, or a numeric column).
    pub fn category(&self, row: usize) -> Option<&str> {
        match self {
            Column::Category(v) => Some(&v[row]),
            Column::OptionalCategory(v) => v[row].as_deref(),
            Column::Numeric(_) => None,
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Column::Numeric(v) => v.truncate(len),
            Column::Category(v) => v.truncate(len),
            Column::OptionalCategory(v) => v.truncate(len),
        }
    }

    /// Convert `value` as `feature` says and append it.
    fn push(&mut self, feature: &Feature, value: Cell<'_>) -> Result<(), Fault> {
        match self {
            Column::Numeric(col) => numeric(feature, value).map(|x| col.push(x)),
            Column::Category(col) => category(feature, value).map(|s| col.push(s)),
            Column::OptionalCategory(col) => match value.plain() {
                Cell::Json(Value::Null) => {
                    col.push(None);
                    Ok(())
                }
                other => category(feature, other).map(|s| col.push(Some(s))),
            },
        }
    }
    /// Whether the column is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Validated rows, column-major, in schema order.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// Number of rows.
    pub n_rows: usize,
    /// One column per schema feature, in schema order.
    pub columns: Vec<Column>,
    /// For each row of the table, its index in the request (rows skipped by
    /// `"on_error": "skip"` leave gaps); empty when the table holds every row of the request
    /// in order, so a large request keeps no list that says row `i` is row `i`. Read it with
    /// [`Table::source_row`].
    pub source_rows: Vec<usize>,
}

impl Table {
    /// The index in the request of the table's row `i`.
    pub fn source_row(&self, i: usize) -> usize {
        self.source_rows.get(i).copied().unwrap_or(i)
    }
}

/// Why one row (or the whole request) failed validation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowError {
    /// Index of the row in the request; `None` when the error is about the request as a whole
    /// (for example the column names).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    /// The feature concerned, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feature: Option<String>,
    /// A stable machine-readable reason: `missing_feature`, `unexpected_feature`,
    /// `feature_order`, `wrong_type`, `out_of_range`, `unknown_category`, `not_finite`,
    /// `row_length`.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

/// The model's input features, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Schema {
    /// The features.
    pub features: Vec<Feature>,
}

/// The result of validating with `skip_invalid`: the good rows and the reasons of the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The valid rows.
    pub table: Table,
    /// One entry per problem found in the rows left out.
    pub rejected: Vec<RowError>,
}

/// Most errors listed in one answer; the message counts the rest.
pub const MAX_ERRORS: usize = 100;

impl Schema {
    /// A schema of these features.
    pub fn new(features: Vec<Feature>) -> Self {
        Self { features }
    }

    /// Check the schema itself (at model load): names present and unique, bounds ordered and
    /// not NaN, categories listed for a category feature are scalars, no range on a category.
    pub fn check(&self) -> Result<(), ModelError> {
        for (i, f) in self.features.iter().enumerate() {
            let load = |m: String| Err(ModelError::Load(format!("feature \"{}\": {m}", f.name)));
            if f.name.is_empty() {
                return Err(ModelError::Load(format!("feature {i} has an empty name")));
            }
            if self.features[..i].iter().any(|g| g.name == f.name) {
                return load("the name is listed twice".into());
            }
            match &f.values {
                Some(FeatureValues::Range { min, max }) => {
                    if f.dtype == Dtype::Category {
                        return load("a category feature takes a list of categories, not min/max".into());
                    }
                    if min.is_some_and(f64::is_nan) || max.is_some_and(f64::is_nan) {
                        return load("min and max must be numbers".into());
                    }
                    if let (Some(lo), Some(hi)) = (min, max) {
                        if lo > hi {
                            return load(format!("min {lo} is above max {hi}"));
                        }
                    }
                }
                Some(FeatureValues::Categories(list)) => {
                    if list.is_empty() {
                        return load("the list of categories is empty".into());
                    }
                    for v in list {
                        let ok = match f.dtype {
                            Dtype::Category => {
                                matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
                            }
                            _ => allowed_number(v).is_some(),
                        };
                        if !ok {
                            return load(format!(
                                "{} is not a valid category for a {:?} feature",
                                show(v),
                                f.dtype
                            ));
                        }
                    }
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Validate decoded rows into a column-major [`Table`] in schema order (see the module
    /// docs for the rules). `Err` is always [`ModelError::Invalid`].
    pub fn validate(&self, rows: &Rows<'_>, on_error: OnError) -> Result<Validated, ModelError> {
        let n_rows = rows.rows.len();
        let mut errors = Errors::default();

        // Where each feature's value sits in a row, and which columns of records are unknown.
        let mut src: Vec<Option<usize>> = Vec::with_capacity(self.features.len());
        let mut unknown_columns: Vec<usize> = Vec::new();
        let (names, shape) = match &rows.names {
            Some(names) => (Some(names.as_slice()), rows.shape),
            None => (None, RowShape::Positional),
        };
        match (names, shape) {
            (None, _) | (_, RowShape::Positional) => src.extend((0..self.features.len()).map(Some)),
            (Some(names), RowShape::Named) => {
                self.map_names(names, &mut src, &mut unknown_columns);
                self.check_named(names, &src, &unknown_columns, &mut errors);
                if errors.total > 0 {
                    return Err(errors.into_invalid(0, n_rows));
                }
            }
            (Some(names), RowShape::Records) => self.map_names(names, &mut src, &mut unknown_columns),
        }
        let row_len = match (names, shape) {
            (Some(names), RowShape::Named) => Some(names.len()),
            (_, RowShape::Records) => None,
            _ => Some(self.features.len()),
        };

        let mut built = TableBuilder::new(&self.features, n_rows);

        for (i, row) in rows.rows.iter().enumerate() {
            let before = errors.total;
            if let Some(expected) = row_len.filter(|&n| n != row.values.len()) {
                errors.push(
                    Some(i),
                    None,
                    "row_length",
                    format!("the row has {} values, expected {expected}", row.values.len()),
                );
            } else {
                for &j in &unknown_columns {
                    if matches!(row.values.get(j), Some(Some(_))) {
                        let name = names.map_or("", |n| n[j].as_str());
                        errors.unexpected(Some(i), name);
                    }
                }
                for key in &row.extra {
                    errors.unexpected(Some(i), key);
                }
                for ((feature, column), at) in self.features.iter().zip(built.columns.iter_mut()).zip(&src) {
                    let Some(value) = at.and_then(|j| row.values.get(j).copied().flatten()) else {
                        errors.push(
                            Some(i),
                            Some(&feature.name),
                            "missing_feature",
                            format!("feature \"{}\" is missing", feature.name),
                        );
                        continue;
                    };
                    if let Err(fault) = column.push(feature, Cell::Json(value)) {
                        errors.push(Some(i), Some(&feature.name), fault.reason, fault.message);
                    }
                }
            }
            built.end_row(i, errors.total > before);
        }
        built.finish(errors, on_error, n_rows)
    }

    /// Validate typed columns, one per feature in schema order, each `n_rows` long (a tensor
    /// protocol's inputs), into a [`Table`], with the same value rules and row errors as
    /// [`Schema::validate`].
    pub fn validate_columns(
        &self,
        inputs: &[&dyn CellColumn],
        n_rows: usize,
        on_error: OnError,
    ) -> Result<Validated, ModelError> {
        let mut errors = Errors::default();
        if inputs.len() != self.features.len() || inputs.iter().any(|c| c.len() != n_rows) {
            errors.push(
                None,
                None,
                "row_length",
                format!("expected {} columns of {n_rows} values", self.features.len()),
            );
            return Err(errors.into_invalid(0, n_rows));
        }
        let mut built = TableBuilder::new(&self.features, n_rows);
        for row in 0..n_rows {
            let before = errors.total;
            for ((feature, column), input) in self.features.iter().zip(built.columns.iter_mut()).zip(inputs) {
                if let Err(fault) = column.push(feature, input.cell(row)) {
                    errors.push(Some(row), Some(&feature.name), fault.reason, fault.message);
                }
            }
            built.end_row(row, errors.total > before);
        }
        built.finish(errors, on_error, n_rows)
    }

    /// Map each feature to its position in `names`; list the positions of unknown names.
    fn map_names(&self, names: &[String], src: &mut Vec<Option<usize>>, unknown: &mut Vec<usize>) {
        // Records arrive with sorted keys (JSON objects are maps), so binary search is the
        // usual path; named arrays usually match position for position.
        let sorted = names.windows(2).all(|w| w[0] < w[1]);
        for (f, feature) in self.features.iter().enumerate() {
            let name = feature.name.as_str();
            let at = if names.get(f).is_some_and(|n| n == name) {
                Some(f)
            } else if sorted {
                names.binary_search_by(|n| n.as_str().cmp(name)).ok()
            } else {
                names.iter().position(|n| n == name)
            };
            src.push(at);
        }
        let mapped = src.iter().flatten().count();
        if mapped < names.len() {
            unknown.extend((0..names.len()).filter(|j| !src.contains(&Some(*j))));
        }
    }

    /// Request-level checks of `names` sent with array rows.
    fn check_named(&self, names: &[String], src: &[Option<usize>], unknown: &[usize], errors: &mut Errors) {
        for &j in unknown {
            let name = &names[j];
            if self.features.iter().any(|f| &f.name == name) {
                errors.push(
                    None,
                    Some(name),
                    "unexpected_feature",
                    format!("feature \"{name}\" is named more than once in `names`"),
                );
            } else {
                errors.unexpected(None, name);
            }
        }
        for (feature, at) in self.features.iter().zip(src) {
            if at.is_none() {
                errors.push(
                    None,
                    Some(&feature.name),
                    "missing_feature",
                    format!("feature \"{}\" is missing from `names`", feature.name),
                );
            }
        }
        // The features that are present must come in schema order.
        let mut last: Option<(usize, &str)> = None;
        for (feature, at) in self.features.iter().zip(src) {
            let Some(at) = *at else { continue };
            if let Some((_, before)) = last.filter(|(l, _)| at < *l) {
                let order: Vec<&str> = self.features.iter().map(|f| f.name.as_str()).collect();
                errors.push(
                    None,
                    Some(&feature.name),
                    "feature_order",
                    format!(
                        "`names` must list the features in the model's order ({}); \"{}\" comes before \"{}\"",
                        order.join(", "),
                        feature.name,
                        before
                    ),
                );
                break;
            }
            last = Some((at, &feature.name));
        }
    }
}

/// A value's problem, before it is tied to a row.
struct Fault {
    reason: &'static str,
    message: String,
}

fn fault(reason: &'static str, message: String) -> Fault {
    Fault { reason, message }
}

fn wrong_type(expected: &str, v: Cell<'_>) -> Fault {
    fault("wrong_type", format!("expected {expected}, got {} {}", v.kind(), v.show()))
}

/// One value as sent, before validation: a JSON value, or an element of a typed tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// A JSON value.
    Json(&'a Value),
    /// An element of a numeric tensor.
    Number(f64),
    /// An element of a boolean tensor.
    Bool(bool),
    /// An element of a text (`BYTES`) tensor.
    Text(&'a str),
}

impl<'a> Cell<'a> {
    /// JSON strings and booleans as plain cells, so each rule is written once.
    fn plain(self) -> Cell<'a> {
        match self {
            Cell::Json(Value::String(s)) => Cell::Text(s),
            Cell::Json(&Value::Bool(b)) => Cell::Bool(b),
            other => other,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Cell::Json(v) => kind_of(v),
            Cell::Number(_) => "a number",
            Cell::Bool(_) => "a boolean",
            Cell::Text(_) => "a string",
        }
    }

    fn show(self) -> String {
        match self {
            Cell::Json(v) => show(v),
            Cell::Number(x) => number_text(x),
            Cell::Bool(b) => b.to_string(),
            Cell::Text(s) => show(&Value::String(s.to_string())),
        }
    }
}

/// A column of cells, one per row, for [`Schema::validate_columns`].
pub trait CellColumn {
    /// Number of rows.
    fn len(&self) -> usize;
    /// Whether there are no rows.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The cell of `row`.
    fn cell(&self, row: usize) -> Cell<'_>;
}

/// Convert a value of a `float`, `int` or `bool` feature and check its limits.
fn numeric(feature: &Feature, v: Cell<'_>) -> Result<f64, Fault> {
    let v = v.plain();
    let x = match feature.dtype {
        Dtype::Float | Dtype::Int => {
            let x = match v {
                Cell::Number(x) => x,
                Cell::Json(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
                Cell::Text(s) => match s.trim().parse::<f64>() {
                    Ok(x) => x,
                    Err(_) => return Err(wrong_type("a number", v)),
                },
                Cell::Json(Value::Null) => f64::NAN,
                _ => return Err(wrong_type("a number", v)),
            };
            if feature.dtype == Dtype::Int && x.is_finite() && x.fract() != 0.0 {
                return Err(wrong_type("an integer", v));
            }
            x
        }
        Dtype::Bool => match v {
            Cell::Bool(b) => f64::from(u8::from(b)),
            Cell::Number(x) if x == 0.0 || x == 1.0 => x,
            Cell::Json(Value::Number(n)) if n.as_f64() == Some(0.0) => 0.0,
            Cell::Json(Value::Number(n)) if n.as_f64() == Some(1.0) => 1.0,
            Cell::Text(s) if s.eq_ignore_ascii_case("true") || s == "1" => 1.0,
            Cell::Text(s) if s.eq_ignore_ascii_case("false") || s == "0" => 0.0,
            _ => return Err(wrong_type("a boolean (true/false or 0/1)", v)),
        },
        // A category feature always has a text column.
        Dtype::Category => return Err(wrong_type("a category", v)),
    };
    if !x.is_finite() {
        if feature.allow_nan || (feature.missing && x.is_nan()) {
            return Ok(x);
        }
        return Err(fault(
            "not_finite",
            format!("{} is not a finite number; NaN and infinities are not allowed here", v.show()),
        ));
    }
    match &feature.values {
        Some(FeatureValues::Range { min, max }) => {
            if let Some(lo) = min.filter(|lo| x < *lo) {
                return Err(fault("out_of_range", format!("{x} is below the minimum {lo}")));
            }
            if let Some(hi) = max.filter(|hi| x > *hi) {
                return Err(fault("out_of_range", format!("{x} is above the maximum {hi}")));
            }
        }
        Some(FeatureValues::Categories(list)) if !list.iter().any(|a| allowed_number(a) == Some(x)) => {
            return Err(fault(
                "unknown_category",
                format!("{} is not one of the allowed values {}", v.show(), show_list(list)),
            ));
        }
        _ => {}
    }
    Ok(x)
}

/// A listed value of a numeric feature, as a number.
fn allowed_number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Convert a value of a `category` feature and check it is listed.
fn category(feature: &Feature, v: Cell<'_>) -> Result<String, Fault> {
    let v = v.plain();
    let text: Cow<'_, str> = match v {
        Cell::Text(s) => Cow::Borrowed(s),
        Cell::Json(Value::Number(n)) => Cow::Owned(n.to_string()),
        Cell::Number(x) => Cow::Owned(number_text(x)),
        Cell::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
        _ => return Err(wrong_type("a category (a string)", v)),
    };
    let Some(FeatureValues::Categories(list)) = &feature.values else {
        return Ok(text.into_owned());
    };
    let number = match v {
        Cell::Number(x) => Some(x),
        Cell::Json(Value::Number(n)) => n.as_f64(),
        _ => None,
    };
    for allowed in list {
        let same = match (allowed, v) {
            (Value::String(a), _) => a.as_str() == text,
            (Value::Number(a), Cell::Number(_) | Cell::Json(Value::Number(_))) => a.as_f64() == number,
            (Value::Number(a), Cell::Text(s)) => s.trim().parse::<f64>().ok() == a.as_f64(),
            (Value::Bool(a), Cell::Bool(b)) => *a == b,
            (Value::Bool(a), Cell::Text(s)) => s.eq_ignore_ascii_case(if *a { "true" } else { "false" }),
            _ => false,
        };
        if same {
            return Ok(match allowed {
                Value::String(a) => a.clone(),
                Value::Bool(a) => a.to_string(),
                other => other.to_string(),
            });
        }
    }
    Err(fault(
        "unknown_category",
        format!("{} is not one of the allowed categories {}", v.show(), show_list(list)),
    ))
}

/// A number as JSON writes it: integers without a fraction.
fn number_text(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        serde_json::Number::from_f64(x).map_or_else(|| x.to_string(), |n| n.to_string())
    }
}

/// A value for a message, cut short.
fn show(v: &Value) -> String {
    const MAX: usize = 60;
    let mut s = v.to_string();
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// A list of allowed values for a message, cut short.
fn show_list(list: &[Value]) -> String {
    const MAX: usize = 20;
    let mut parts: Vec<String> = list.iter().take(MAX).map(show).collect();
    if list.len() > MAX {
        parts.push(format!("... {} more", list.len() - MAX));
    }
    format!("[{}]", parts.join(", "))
}

/// Errors found so far: the first [`MAX_ERRORS`] and a count of all.
#[derive(Default)]
struct Errors {
    list: Vec<RowError>,
    total: usize,
}

/// The table of validated rows as it is built, row by row (in the request's order): a row
/// with an error leaves no cell.
struct TableBuilder {
    columns: Vec<Column>,
    /// Rows kept so far.
    kept: usize,
    /// The input row of each kept row, listed from the first failed row on: until then, kept
    /// row `i` is input row `i`, which an empty list says (see `Table::source_rows`).
    source_rows: Vec<usize>,
    bad_rows: usize,
}

impl TableBuilder {
    fn new(features: &[Feature], n_rows: usize) -> TableBuilder {
        TableBuilder {
            columns: features.iter().map(|f| Column::for_feature(f, n_rows)).collect(),
            kept: 0,
            source_rows: Vec::new(),
            bad_rows: 0,
        }
    }

    /// Keep input row `row`, or drop the cells it pushed when it failed.
    fn end_row(&mut self, row: usize, failed: bool) {
        if failed {
            if self.bad_rows == 0 {
                self.source_rows = (0..self.kept).collect();
            }
            self.bad_rows += 1;
            for column in &mut self.columns {
                column.truncate(self.kept);
            }
        } else {
            if self.bad_rows > 0 {
                self.source_rows.push(row);
            }
            self.kept += 1;
        }
    }

    /// The table, or the errors when `on_error` rejects the batch or no row is left.
    fn finish(self, errors: Errors, on_error: OnError, n_rows: usize) -> Result<Validated, ModelError> {
        if self.bad_rows > 0 && (on_error == OnError::Reject || self.kept == 0) {
            return Err(errors.into_invalid(self.bad_rows, n_rows));
        }
        Ok(Validated {
            table: Table { n_rows: self.kept, columns: self.columns, source_rows: self.source_rows },
            rejected: errors.list,
        })
    }
}

impl Errors {
    fn push(&mut self, row: Option<usize>, feature: Option<&str>, reason: &str, message: String) {
        self.total += 1;
        if self.list.len() < MAX_ERRORS {
            self.list.push(RowError {
                row,
                feature: feature.map(str::to_string),
                reason: reason.to_string(),
                message,
            });
        }
    }

    fn unexpected(&mut self, row: Option<usize>, name: &str) {
        self.push(
            row,
            Some(name),
            "unexpected_feature",
            format!("feature \"{name}\" is not one of the model's features"),
        );
    }

    fn into_invalid(self, bad_rows: usize, n_rows: usize) -> ModelError {
        let first = self.list.first().map(describe).unwrap_or_default();
        let mut message = if bad_rows == 0 {
            format!("the column names do not match the model's features: {first}")
        } else if n_rows == 1 {
            format!("the row is invalid: {first}")
        } else if bad_rows == n_rows {
            format!("no row is valid; first problem: {first}")
        } else {
            format!("{bad_rows} of {n_rows} rows are invalid; first problem: {first}")
        };
        if self.total > 1 {
            message.push_str(&format!(" ({} problems in all", self.total));
            if self.total > self.list.len() {
                message.push_str(&format!(", {} not listed", self.total - self.list.len()));
            }
            message.push(')');
        }
        ModelError::Invalid { message, errors: self.list }
    }
}

/// "row 3, feature \"Age\": ..." for messages.
fn describe(e: &RowError) -> String {
    let mut s = String::new();
    if let Some(row) = e.row {
        s.push_str(&format!("row {row}, "));
    }
    if let Some(f) = &e.feature {
        s.push_str(&format!("feature \"{f}\": "));
    }
    s.push_str(&e.message);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_rows;
    use serde_json::json;

    fn feature(name: &str, dtype: Dtype, values: Option<FeatureValues>) -> Feature {
        Feature { name: name.into(), dtype, values, allow_nan: false, missing: false }
    }

    fn validate(schema: &Schema, body: Value) -> Result<Validated, ModelError> {
        let (rows, on_error) = decode_rows(&body).unwrap();
        schema.validate(&rows, on_error)
    }

    /// Titanic-like: Age float 0..=120, Pclass int in {1,2,3}, Sex category, Alone bool.
    fn schema() -> Schema {
        Schema::new(vec![
            feature("Age", Dtype::Float, Some(FeatureValues::Range { min: Some(0.0), max: Some(120.0) })),
            feature(
                "Pclass",
                Dtype::Int,
                Some(FeatureValues::Categories(vec![json!(1), json!(2), json!(3)])),
            ),
            feature(
                "Sex",
                Dtype::Category,
                Some(FeatureValues::Categories(vec![json!("male"), json!("female")])),
            ),
            feature("Alone", Dtype::Bool, None),
        ])
    }

    fn run(body: Value) -> Result<Validated, ModelError> {
        let (rows, on_error) = decode_rows(&body).unwrap();
        schema().validate(&rows, on_error)
    }

    fn errors(body: Value) -> Vec<RowError> {
        match run(body) {
            Err(ModelError::Invalid { errors, .. }) => errors,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn reasons(body: Value) -> Vec<(Option<usize>, Option<String>, String)> {
        errors(body).into_iter().map(|e| (e.row, e.feature, e.reason)).collect()
    }

    fn one(row: Option<usize>, feature: &str, reason: &str) -> Vec<(Option<usize>, Option<String>, String)> {
        vec![(row, Some(feature.to_string()), reason.to_string())]
    }

    #[test]
    fn valid_positional_rows_become_columns() {
        let v = run(json!({"data": [[22, 3, "male", true], ["30.5", 1.0, "female", 0]]})).unwrap();
        assert!(v.rejected.is_empty());
        assert_eq!(v.table.n_rows, 2);
        assert!(v.table.source_rows.is_empty(), "every row kept, in order");
        assert_eq!((v.table.source_row(0), v.table.source_row(1)), (0, 1));
        assert_eq!(v.table.columns[0], Column::Numeric(vec![22.0, 30.5]));
        assert_eq!(v.table.columns[1], Column::Numeric(vec![3.0, 1.0]));
        assert_eq!(v.table.columns[2], Column::Category(vec!["male".into(), "female".into()]));
        assert_eq!(v.table.columns[3], Column::Numeric(vec![1.0, 0.0]));
    }

    #[test]
    fn records_match_by_key_in_any_order() {
        let v = run(json!([{"Sex": "male", "Alone": false, "Age": 1, "Pclass": "2"}])).unwrap();
        assert_eq!(v.table.columns[0], Column::Numeric(vec![1.0]));
        assert_eq!(v.table.columns[1], Column::Numeric(vec![2.0]));
        assert_eq!(v.table.columns[2], Column::Category(vec!["male".into()]));
    }

    #[test]
    fn named_arrays_in_schema_order_are_accepted() {
        let v = run(json!({"names": ["Age", "Pclass", "Sex", "Alone"], "data": [[22, 3, "male", true]]}))
            .unwrap();
        assert_eq!(v.table.n_rows, 1);
    }

    #[test]
    fn named_arrays_out_of_order_are_refused() {
        let body = json!({"names": ["Pclass", "Age", "Sex", "Alone"], "data": [[3, 22, "male", true]]});
        let got = errors(body);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0].row, got[0].feature.as_deref(), got[0].reason.as_str()),
            (None, Some("Pclass"), "feature_order")
        );
        assert!(got[0].message.contains("(Age, Pclass, Sex, Alone)"), "{}", got[0].message);
        assert!(got[0].message.contains("\"Pclass\" comes before \"Age\""), "{}", got[0].message);
    }

    #[test]
    fn named_arrays_missing_unexpected_and_repeated_names() {
        let got = reasons(json!({"names": ["Age", "Pclass", "Sex", "Fare"], "data": [[22, 3, "male", 7.5]]}));
        assert_eq!(
            got,
            vec![
                (None, Some("Fare".to_string()), "unexpected_feature".to_string()),
                (None, Some("Alone".to_string()), "missing_feature".to_string()),
            ]
        );
        let got = errors(
            json!({"names": ["Age", "Age", "Pclass", "Sex", "Alone"], "data": [[1, 1, 1, "male", 1]]}),
        );
        assert_eq!(got[0].reason, "unexpected_feature");
        assert!(got[0].message.contains("more than once"), "{}", got[0].message);
    }

    #[test]
    fn request_level_errors_refuse_even_in_skip_mode() {
        let got = reasons(json!({"names": ["Age"], "data": [[1]], "on_error": "skip"}));
        assert!(got.iter().all(|(row, _, _)| row.is_none()));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn record_missing_and_unexpected_features_name_the_row() {
        let got = reasons(json!([
            {"Age": 1, "Pclass": 1, "Sex": "male", "Alone": true},
            {"Age": 1, "Pclass": 1, "Sex": "male"},
            {"Age": 1, "Pclass": 1, "Sex": "male", "Alone": true, "Fare": 3}
        ]));
        assert_eq!(
            got,
            vec![
                (Some(1), Some("Alone".to_string()), "missing_feature".to_string()),
                (Some(2), Some("Fare".to_string()), "unexpected_feature".to_string()),
            ]
        );
        // An unknown key in the first record is unexpected too.
        let got = reasons(json!({"Age": 1, "Pclass": 1, "Sex": "male", "Alone": true, "Cabin": "C85"}));
        assert_eq!(got, one(Some(0), "Cabin", "unexpected_feature"));
    }

    #[test]
    fn row_length() {
        let got = reasons(json!({"data": [[1, 1, "male", true], [1, 1, "male"]]}));
        assert_eq!(got, vec![(Some(1), None, "row_length".to_string())]);
        let got =
            reasons(json!({"names": ["Age", "Pclass", "Sex", "Alone"], "data": [[1, 1, "male", true, 5]]}));
        assert_eq!(got, vec![(Some(0), None, "row_length".to_string())]);
    }

    #[test]
    fn wrong_types() {
        assert_eq!(reasons(json!({"data": [["old", 1, "male", true]]})), one(Some(0), "Age", "wrong_type"));
        assert_eq!(reasons(json!({"data": [[true, 1, "male", true]]})), one(Some(0), "Age", "wrong_type"));
        assert_eq!(reasons(json!({"data": [[[1], 1, "male", true]]})), one(Some(0), "Age", "wrong_type"));
        assert_eq!(reasons(json!({"data": [[1, 1.5, "male", true]]})), one(Some(0), "Pclass", "wrong_type"));
        assert_eq!(
            reasons(json!({"data": [[1, "2.5", "male", true]]})),
            one(Some(0), "Pclass", "wrong_type")
        );
        assert_eq!(reasons(json!({"data": [[1, 1, {"a": 1}, true]]})), one(Some(0), "Sex", "wrong_type"));
        assert_eq!(reasons(json!({"data": [[1, 1, null, true]]})), one(Some(0), "Sex", "wrong_type"));
        assert_eq!(reasons(json!({"data": [[1, 1, "male", 2]]})), one(Some(0), "Alone", "wrong_type"));
        assert_eq!(reasons(json!({"data": [[1, 1, "male", "yes"]]})), one(Some(0), "Alone", "wrong_type"));
        let e = &errors(json!({"data": [["old", 1, "male", true]]}))[0];
        assert!(e.message.contains("expected a number") && e.message.contains("\"old\""), "{}", e.message);
    }

    #[test]
    fn bool_spellings() {
        let v =
            run(json!({"data": [[1, 1, "male", "TRUE"], [1, 1, "male", "0"], [1, 1, "male", 1.0]]})).unwrap();
        assert_eq!(v.table.columns[3], Column::Numeric(vec![1.0, 0.0, 1.0]));
    }

    #[test]
    fn range() {
        let got = errors(json!({"data": [[120.5, 1, "male", true]]}));
        assert_eq!(got[0].reason, "out_of_range");
        assert!(got[0].message.contains("above the maximum 120"), "{}", got[0].message);
        assert_eq!(reasons(json!({"data": [[-1, 1, "male", true]]})), one(Some(0), "Age", "out_of_range"));
        assert!(run(json!({"data": [[0, 1, "male", true], [120, 1, "male", true]]})).is_ok());
    }

    #[test]
    fn categories() {
        assert_eq!(
            reasons(json!({"data": [[1, 4, "male", true]]})),
            one(Some(0), "Pclass", "unknown_category")
        );
        assert_eq!(reasons(json!({"data": [[1, 1, "Male", true]]})), one(Some(0), "Sex", "unknown_category"));
        let e = &errors(json!({"data": [[1, 1, "x", true]]}))[0];
        assert!(e.message.contains("[\"male\", \"female\"]"), "{}", e.message);
    }

    #[test]
    fn numeric_categories_take_the_listed_spelling() {
        let s = Schema::new(vec![feature(
            "Embarked",
            Dtype::Category,
            Some(FeatureValues::Categories(vec![json!(1), json!("S"), json!(true)])),
        )]);
        let body = json!({"data": [[1.0], ["1"], ["S"], [true], ["true"]]});
        let (rows, on_error) = decode_rows(&body).unwrap();
        let v = s.validate(&rows, on_error).unwrap();
        assert_eq!(
            v.table.columns[0],
            Column::Category(vec!["1".into(), "1".into(), "S".into(), "true".into(), "true".into()])
        );
        let free = Schema::new(vec![feature("c", Dtype::Category, None)]);
        let body = json!({"data": [[2.5], [false], ["x"]]});
        let (rows, on_error) = decode_rows(&body).unwrap();
        let v = free.validate(&rows, on_error).unwrap();
        assert_eq!(v.table.columns[0], Column::Category(vec!["2.5".into(), "false".into(), "x".into()]));
    }

    #[test]
    fn nan_and_infinity_are_refused_unless_allowed() {
        for bad in [json!("NaN"), json!("Infinity"), json!("-Infinity"), json!(null), json!("1e400")] {
            let got = reasons(json!({"data": [[bad, 1, "male", true]]}));
            assert_eq!(got, one(Some(0), "Age", "not_finite"), "{bad}");
        }
        let mut s = schema();
        s.features[0].allow_nan = true;
        let body = json!({"data": [["NaN", 1, "male", true], [null, 1, "male", true],
            ["-Infinity", 1, "male", true]]});
        let (rows, on_error) = decode_rows(&body).unwrap();
        let v = s.validate(&rows, on_error).unwrap();
        let Column::Numeric(ages) = &v.table.columns[0] else { panic!() };
        assert!(ages[0].is_nan() && ages[1].is_nan() && ages[2] == f64::NEG_INFINITY);
    }

    #[test]
    fn json_numbers_out_of_f64_range_fail_to_parse() {
        // The JSON parser refuses them, so validation never sees an infinite JSON number.
        assert!(serde_json::from_str::<Value>(r#"{"data": [[1e400]]}"#).is_err());
        assert!(serde_json::from_str::<Value>(r#"{"data": [[-1e400]]}"#).is_err());
    }

    #[test]
    fn reject_mode_lists_every_error() {
        let got = reasons(json!({"data": [["x", 1, "male", true], [1, 9, "x", true], [1, 1, "male", true]]}));
        assert_eq!(
            got,
            vec![
                (Some(0), Some("Age".to_string()), "wrong_type".to_string()),
                (Some(1), Some("Pclass".to_string()), "unknown_category".to_string()),
                (Some(1), Some("Sex".to_string()), "unknown_category".to_string()),
            ]
        );
        match run(json!({"data": [["x", 1, "male", true], [1, 1, "male", true]]})) {
            Err(ModelError::Invalid { message, .. }) => {
                assert!(message.starts_with("1 of 2 rows are invalid"), "{message}");
                assert!(message.contains("row 0, feature \"Age\""), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn skip_mode_keeps_valid_rows() {
        let v = run(json!({"on_error": "skip", "data": [
            ["x", 1, "male", true], [2, 2, "female", false], [1, 9, "male", true], [3, 3, "male", true]
        ]}))
        .unwrap();
        assert_eq!(v.table.n_rows, 2);
        assert_eq!(v.table.source_rows, vec![1, 3]);
        assert_eq!((v.table.source_row(0), v.table.source_row(1)), (1, 3));
        assert_eq!(v.table.columns[0], Column::Numeric(vec![2.0, 3.0]));
        assert_eq!(v.table.columns[2], Column::Category(vec!["female".into(), "male".into()]));
        let rejected: Vec<_> = v.rejected.iter().map(|e| (e.row, e.reason.as_str())).collect();
        assert_eq!(rejected, vec![(Some(0), "wrong_type"), (Some(2), "unknown_category")]);
        for c in &v.table.columns {
            assert_eq!(c.len(), 2);
        }
    }

    #[test]
    fn skip_mode_with_no_valid_row_is_refused() {
        match run(json!({"on_error": "skip", "data": [["x", 1, "male", true], [-5, 1, "male", true]]})) {
            Err(ModelError::Invalid { message, errors }) => {
                assert!(message.starts_with("no row is valid"), "{message}");
                assert_eq!(errors.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_are_capped() {
        let rows: Vec<Value> = (0..300).map(|_| json!(["x", 1, "male", true])).collect();
        match run(json!({"data": rows})) {
            Err(ModelError::Invalid { message, errors }) => {
                assert_eq!(errors.len(), MAX_ERRORS);
                assert!(message.contains("(300 problems in all, 200 not listed)"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "y".repeat(10_000);
        let e = &errors(json!({"data": [[long, 1, "male", true]]}))[0];
        assert!(e.message.len() < 200, "{}", e.message.len());
    }

    #[test]
    fn missing_values_where_the_feature_takes_them() {
        let mut x = feature("x", Dtype::Float, Some(FeatureValues::Range { min: Some(0.0), max: None }));
        x.missing = true;
        let mut c = feature("c", Dtype::Category, None);
        c.missing = true;
        let schema = Schema::new(vec![x, c, feature("y", Dtype::Float, None)]);
        let v = validate(&schema, json!({"data": [[null, null, 1], ["NaN", "a", 2], [1, "b", 3]]})).unwrap();
        let Column::Numeric(xs) = &v.table.columns[0] else { panic!() };
        assert!(xs[0].is_nan() && xs[1].is_nan() && xs[2] == 1.0);
        assert_eq!(
            v.table.columns[1],
            Column::OptionalCategory(vec![None, Some("a".into()), Some("b".into())])
        );
        assert_eq!(v.table.columns[1].category(1), Some("a"));
        // Infinities are values, not missing ones; other features still refuse null.
        let e = validate(&schema, json!({"data": [["Infinity", "a", 1], [1, "a", null]]})).unwrap_err();
        let ModelError::Invalid { errors, .. } = e else { panic!() };
        let found: Vec<_> = errors.iter().map(|e| (e.row, e.feature.clone(), e.reason.clone())).collect();
        assert_eq!(
            found,
            [
                (Some(0), Some("x".into()), "not_finite".into()),
                (Some(1), Some("y".into()), "not_finite".into())
            ]
        );
    }

    #[test]
    fn schema_check() {
        assert!(schema().check().is_ok());
        let mut dup = schema();
        dup.features.push(feature("Age", Dtype::Float, None));
        assert!(matches!(dup.check(), Err(ModelError::Load(m)) if m.contains("listed twice")));
        let bounds = Schema::new(vec![feature(
            "a",
            Dtype::Float,
            Some(FeatureValues::Range { min: Some(2.0), max: Some(1.0) }),
        )]);
        assert!(bounds.check().is_err());
        let cat_range = Schema::new(vec![feature(
            "a",
            Dtype::Category,
            Some(FeatureValues::Range { min: None, max: None }),
        )]);
        assert!(cat_range.check().is_err());
    }

    #[test]
    fn feature_json_shape() {
        let f: Feature =
            serde_json::from_value(json!({"name": "Age", "values": {"min": 0, "max": 120}})).unwrap();
        assert_eq!(f.dtype, Dtype::Float);
        assert_eq!(f.values, Some(FeatureValues::Range { min: Some(0.0), max: Some(120.0) }));
        let f: Feature =
            serde_json::from_value(json!({"name": "Sex", "dtype": "category", "values": ["male", "female"]}))
                .unwrap();
        assert_eq!(f.values, Some(FeatureValues::Categories(vec![json!("male"), json!("female")])));
    }
}
