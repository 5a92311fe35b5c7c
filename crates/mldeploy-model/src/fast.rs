//! Decoding the common request shapes straight from the body's bytes into the schema's
//! columns, without building a `serde_json::Value` tree.
//!
//! [`decode`] takes a body and a schema whose features are all `float` or `int` (with or
//! without a `min`/`max` range) and answers `Some` only when the body is one of the shapes
//! below, with every row valid:
//! - `{"data": [[...], ...], "names": [...]}` (names optional; then positional), `names`
//!   naming the schema's features in schema order;
//! - `{"data": [{...}, ...]}`, `{"data": {...}}`, `[{...}, ...]`, `{...}` (records, each holding
//!   every feature once and nothing else; a bare record may also hold `on_error`);
//! - `[[...], ...]` (positional rows);
//! - `on_error` as `"reject"`, `"skip"` or `null` beside `data` (with every row valid both ask
//!   for the same table);
//!
//! and every value a JSON number that validation accepts (finite, integral for `int`, within
//! the range). In every other case, valid or not, it answers `None` and the caller takes the
//! general path (`serde_json::Value`, [`crate::decode::decode_rows`], [`crate::Schema::validate`]),
//! which gives the same table for what this path accepts and owns every error and its message.
//! So this path adds no rule of its own: it is a shortcut for requests the general path
//! accepts, and tests check that both give the same table.
//!
//! Numbers are converted exactly as serde_json (with `float_roundtrip`) converts them:
//! integers through `u64`, others to the nearest `f64` (an exact product or quotient of two
//! exact doubles when the digits allow, else the standard library's correctly rounded parse).
//!
//! For the answer's echo of the rows, each cell remembers where its text starts in the body
//! when that text is exactly what the echo would write for the value (see [`EchoText`]), so
//! the answer copies it instead of formatting the number again.

use crate::schema::{Dtype, FeatureValues, Schema};
use crate::{Column, Table};

/// Where the request's own text of each cell can be copied into the echo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoText {
    /// Per cell, row-major in schema order: the offset of its text in the body, or
    /// [`EchoText::FORMAT`] when the echo must format the value itself.
    starts: Vec<u32>,
    n_cols: usize,
}

impl EchoText {
    /// The marker of a cell whose text is not what the echo writes.
    const FORMAT: u32 = u32::MAX;

    /// The text of cell (`row`, `col`) in `body` when it is exactly what the echo of its value
    /// writes: for a `float` feature, what serde_json writes for the `f64` (the shortest text
    /// that reads back the same, in plain notation: `5.1`, `1001.0`, `0.00012`); for an `int`
    /// feature, the integer's digits.
    pub fn cell<'b>(&self, body: &'b [u8], row: usize, col: usize) -> Option<&'b [u8]> {
        let start = *self.starts.get(row * self.n_cols + col)?;
        if start == Self::FORMAT {
            return None;
        }
        let rest = body.get(start as usize..)?;
        let len = rest.iter().position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'.')).unwrap_or(rest.len());
        Some(&rest[..len])
    }

    /// Whether every cell of column `col` has its text in the body (then the echo never needs
    /// the column's values).
    pub fn copies_column(&self, col: usize) -> bool {
        col < self.n_cols && self.starts.iter().skip(col).step_by(self.n_cols).all(|&s| s != Self::FORMAT)
    }
}

/// Rows decoded straight into columns.
#[derive(Debug, Clone, PartialEq)]
pub struct FastRows {
    /// The validated rows: every row of the request, in order.
    pub table: Table,
    /// Where the echo can copy the request's text.
    pub echo: EchoText,
}

/// Whether [`decode`] can take requests for `schema` at all: every feature numeric (`float`
/// or `int`), limited by a range if at all.
pub fn eligible(schema: &Schema) -> bool {
    !schema.features.is_empty()
        && schema.features.iter().all(|f| {
            matches!(f.dtype, Dtype::Float | Dtype::Int)
                && matches!(f.values, None | Some(FeatureValues::Range { .. }))
        })
}

/// Decode `body` into the columns of `schema` when the body is one of the common shapes and
/// every row is valid; `None` otherwise (the caller takes the general path).
pub fn decode(schema: &Schema, body: &[u8]) -> Option<FastRows> {
    if !eligible(schema) || body.len() >= u32::MAX as usize {
        return None;
    }
    let n_cols = schema.features.len();
    let mut p = Parser {
        s: body,
        i: 0,
        schema,
        columns: vec![Vec::new(); n_cols],
        starts: Vec::new(),
        seen: Vec::new(),
        n_rows: 0,
    };
    p.ws();
    match p.peek()? {
        b'{' => p.top_object()?,
        b'[' => p.rows_list()?,
        _ => return None,
    }
    p.ws();
    if p.i != body.len() {
        return None;
    }
    let n_rows = p.n_rows;
    let table = Table {
        n_rows,
        columns: p.columns.into_iter().map(Column::Numeric).collect(),
        source_rows: (0..n_rows).collect(),
    };
    Some(FastRows { table, echo: EchoText { starts: p.starts, n_cols } })
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    schema: &'a Schema,
    /// The values so far, one column per feature.
    columns: Vec<Vec<f64>>,
    /// Row-major echo offsets in schema order.
    starts: Vec<u32>,
    /// For records: which features the current record has set.
    seen: Vec<bool>,
    /// Rows read so far.
    n_rows: usize,
}

/// A number as read: its value and whether its text is what the echo writes.
struct Number {
    value: f64,
    /// The text is serde_json's own for this `f64` (a `float` feature's echo).
    float_text: bool,
    /// The text is the integer's own digits (an `int` feature's echo).
    int_text: bool,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// The next non-space byte, consumed.
    fn next(&mut self) -> Option<u8> {
        self.ws();
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    /// A string without escapes or control characters (others go the general way).
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.i;
        let s = self.s;
        loop {
            match *s.get(self.i)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let text = std::str::from_utf8(&s[start..self.i]).ok()?;
        self.i += 1;
        Some(text)
    }

    /// `{"data": ..., "names": ..., "on_error": ...}` or a bare record.
    fn top_object(&mut self) -> Option<()> {
        self.expect(b'{')?;
        let mut has_data = false;
        let mut names_ok: Option<bool> = None;
        let mut data_was_records = false;
        // A bare record's features, set as met.
        let mut record_started = false;
        self.ws();
        if self.peek() == Some(b'}') {
            return None;
        }
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            match key {
                "data" => {
                    if has_data || record_started {
                        return None;
                    }
                    has_data = true;
                    self.ws();
                    // Names may come before or after the rows: checked below (array rows are
                    // in schema order either way).
                    match self.peek()? {
                        b'[' => {
                            data_was_records = self.list_of_records_ahead();
                            self.rows_list()?;
                        }
                        b'{' => {
                            data_was_records = true;
                            self.record()?;
                        }
                        _ => return None,
                    }
                }
                "names" => {
                    if names_ok.is_some() || record_started {
                        return None;
                    }
                    names_ok = Some(self.names()?);
                }
                "on_error" => {
                    self.ws();
                    if self.s[self.i..].starts_with(b"null") {
                        self.i += 4;
                    } else if !matches!(self.string()?, "reject" | "skip") {
                        return None;
                    }
                }
                name => {
                    // A bare record: every other key must be a feature.
                    if has_data || names_ok.is_some() {
                        return None;
                    }
                    if !record_started {
                        record_started = true;
                        self.start_record();
                    }
                    self.record_value(name, 0)?;
                }
            }
            match self.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        if record_started {
            return self.seen.iter().all(|&s| s).then_some(());
        }
        if !has_data {
            return None;
        }
        match names_ok {
            None => Some(()),
            Some(true) if !data_was_records => Some(()),
            Some(_) => None,
        }
    }

    /// Whether the list starting here holds records (its first item is an object).
    fn list_of_records_ahead(&self) -> bool {
        let rest = &self.s[self.i + 1..];
        rest.iter().find(|b| !matches!(b, b' ' | b'\n' | b'\r' | b'\t')) == Some(&b'{')
    }

    /// `names`: the schema's feature names in order.
    fn names(&mut self) -> Option<bool> {
        self.expect(b'[')?;
        let schema = self.schema;
        let mut n = 0;
        let mut same = true;
        self.ws();
        if self.peek() == Some(b']') {
            return None;
        }
        loop {
            let name = self.string()?;
            same &= schema.features.get(n).is_some_and(|f| f.name == name);
            n += 1;
            match self.next()? {
                b',' => {}
                b']' => break,
                _ => return None,
            }
        }
        // Names that differ from the schema's go the general way (it names the problem).
        (same && n == schema.features.len()).then_some(true)
    }

    /// A non-empty list of rows, all arrays or all records.
    fn rows_list(&mut self) -> Option<()> {
        self.expect(b'[')?;
        self.ws();
        let records = match self.peek()? {
            b'[' => false,
            b'{' => true,
            _ => return None,
        };
        let mut first = true;
        loop {
            let row_start = self.i;
            if records {
                self.record()?;
            } else {
                self.array_row()?;
            }
            if std::mem::take(&mut first) {
                self.reserve_like(self.i - row_start);
            }
            match self.next()? {
                b',' => {}
                b']' => break,
                _ => return None,
            }
        }
        Some(())
    }

    /// Room for the rows the rest of the body holds if they are as long as the first
    /// (`row_len` bytes): growing 30 columns one push at a time cost about a sixth of a
    /// 32-row request's instructions. At most the body's length in rows, so a short first
    /// row cannot ask for more than the body could fill.
    fn reserve_like(&mut self, row_len: usize) {
        let rest = (self.s.len() - self.i) / (row_len + 1).max(2);
        for column in &mut self.columns {
            column.reserve(rest);
        }
        self.starts.reserve(rest * self.columns.len());
    }

    /// One array row: every feature's number, in schema order.
    fn array_row(&mut self) -> Option<()> {
        self.expect(b'[')?;
        let schema = self.schema;
        let n_cols = schema.features.len();
        for (j, feature) in schema.features.iter().enumerate() {
            self.ws();
            let start = self.i;
            let number = self.number()?;
            let x = accept(feature, &number)?;
            self.columns[j].push(x);
            self.starts.push(echo_start(feature.dtype, &number, start));
            let end = if j + 1 == n_cols { b']' } else { b',' };
            self.expect(end)?;
        }
        self.n_rows += 1;
        Some(())
    }

    /// A new row of a record: placeholders that [`Parser::record_value`] fills.
    fn start_record(&mut self) {
        let n_cols = self.schema.features.len();
        self.seen.clear();
        self.seen.resize(n_cols, false);
        for column in &mut self.columns {
            column.push(0.0);
        }
        self.starts.resize(self.starts.len() + n_cols, EchoText::FORMAT);
        self.n_rows += 1;
    }

    /// One record: every feature once, nothing else.
    fn record(&mut self) -> Option<()> {
        self.expect(b'{')?;
        self.start_record();
        let mut hint = 0;
        loop {
            let key = self.string()?;
            self.expect(b':')?;
            hint = self.record_value(key, hint)? + 1;
            match self.next()? {
                b',' => {}
                b'}' => break,
                _ => return None,
            }
        }
        self.seen.iter().all(|&s| s).then_some(())
    }

    /// The value of feature `key` in the record being read (the last row); the feature's
    /// index. `hint`: where the key is looked for first.
    fn record_value(&mut self, key: &str, hint: usize) -> Option<usize> {
        let features = &self.schema.features;
        let j = if features.get(hint).is_some_and(|f| f.name == key) {
            hint
        } else {
            features.iter().position(|f| f.name == key)?
        };
        if std::mem::replace(&mut self.seen[j], true) {
            return None;
        }
        self.ws();
        let start = self.i;
        let number = self.number()?;
        let feature = &features[j];
        let x = accept(feature, &number)?;
        if let Some(last) = self.columns[j].last_mut() {
            *last = x;
        }
        let at = self.starts.len() - features.len() + j;
        self.starts[at] = echo_start(feature.dtype, &number, start);
        Some(j)
    }

    /// A JSON number (strict grammar), converted as serde_json converts it; `None` for
    /// anything else, and for numbers whose conversion is left to the general path (very long
    /// integers, non-finite results).
    fn number(&mut self) -> Option<Number> {
        let s = self.s;
        let start = self.i;
        let mut i = start;
        let negative = s.get(i) == Some(&b'-');
        if negative {
            i += 1;
        }
        // Integer part.
        let int_start = i;
        let mut mantissa: u64 = 0;
        let mut digits = 0u32; // significant digits taken into `mantissa`
        let mut lost = false; // digits beyond 19 were met (mantissa inexact)
        match s.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => {
                while let Some(&c @ b'0'..=b'9') = s.get(i) {
                    if digits < 19 {
                        mantissa = mantissa * 10 + u64::from(c - b'0');
                        digits += u32::from(mantissa != 0);
                    } else {
                        lost = true;
                    }
                    i += 1;
                }
            }
            _ => return None,
        }
        let int_len = i - int_start;
        let int_is_zero = int_len == 1 && s[int_start] == b'0';
        // Fraction.
        let mut frac_len = 0usize;
        let mut frac_zeros_lead = 0usize; // zeros right after the point (when int is 0)
        let mut frac_last_zero = false;
        let mut frac_exp: i64 = 0;
        let has_frac = s.get(i) == Some(&b'.');
        if has_frac {
            i += 1;
            let frac_start = i;
            while let Some(&c @ b'0'..=b'9') = s.get(i) {
                if digits < 19 {
                    mantissa = mantissa * 10 + u64::from(c - b'0');
                    digits += u32::from(mantissa != 0);
                    frac_exp -= 1;
                } else {
                    lost = true;
                }
                i += 1;
            }
            frac_len = i - frac_start;
            if frac_len == 0 {
                return None;
            }
            frac_last_zero = s[i - 1] == b'0';
            frac_zeros_lead = s[frac_start..i].iter().take_while(|&&c| c == b'0').count();
        }
        // Exponent.
        let mut exp: i64 = 0;
        let has_exp = matches!(s.get(i), Some(b'e' | b'E'));
        if has_exp {
            i += 1;
            let exp_negative = match s.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let exp_start = i;
            while let Some(&c @ b'0'..=b'9') = s.get(i) {
                exp = exp * 10 + i64::from(c - b'0');
                i += 1;
                if i - exp_start > 4 {
                    return None;
                }
            }
            if i == exp_start {
                return None;
            }
            if exp_negative {
                exp = -exp;
            }
        }
        self.i = i;
        let text = &s[start..i];
        let e10 = exp + frac_exp;
        let value = if !has_frac && !has_exp {
            // An integer: serde_json keeps it as u64/i64 (exact) and converts with `as`
            // (-0 becomes -0.0 there too).
            if lost {
                return None;
            }
            let x = mantissa as f64;
            if negative {
                -x
            } else {
                x
            }
        } else if !lost && mantissa < (1u64 << 53) && (-22..=22).contains(&e10) {
            // Both operands are exact doubles: one correctly rounded operation.
            let m = mantissa as f64;
            let x = if e10 >= 0 { m * POW10[e10 as usize] } else { m / POW10[(-e10) as usize] };
            if negative {
                -x
            } else {
                x
            }
        } else {
            // The standard library's parse is correctly rounded, as serde_json's with
            // `float_roundtrip`.
            std::str::from_utf8(text).ok()?.parse::<f64>().ok()?
        };
        if !value.is_finite() {
            return None;
        }
        // Significant digits of the text (at most 15 makes the text the shortest that reads
        // back as this f64, so it is what serde_json writes when the notation matches too).
        let sig_ok = !lost && digits <= 15;
        let float_text = has_frac
            && !has_exp
            && sig_ok
            && if int_is_zero {
                // 0.0 and -0.0; else 0.000ddd with at most 4 zeros after the point.
                (frac_len == 1 && frac_last_zero) || (!frac_last_zero && frac_zeros_lead <= 4)
            } else {
                // ddd.0, or ddd.ddd without trailing zeros; at most 16 integer digits.
                int_len <= 16 && (!frac_last_zero || frac_len == 1)
            };
        let int_text = !has_frac && !has_exp && sig_ok && int_len <= 15 && !(negative && mantissa == 0);
        Some(Number { value, float_text, int_text })
    }
}

/// Powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// The value when validation accepts it for `feature` (finite, integral for `int`, within the
/// range); `None` sends the request the general way, which names the problem.
fn accept(feature: &crate::Feature, number: &Number) -> Option<f64> {
    let x = number.value;
    if feature.dtype == Dtype::Int && x.fract() != 0.0 {
        return None;
    }
    if let Some(FeatureValues::Range { min, max }) = &feature.values {
        if min.is_some_and(|lo| x < lo) || max.is_some_and(|hi| x > hi) {
            return None;
        }
    }
    Some(x)
}

fn echo_start(dtype: Dtype, number: &Number, start: usize) -> u32 {
    let same = match dtype {
        Dtype::Int => number.int_text,
        _ => number.float_text,
    };
    if same {
        start as u32
    } else {
        EchoText::FORMAT
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_rows;
    use crate::Feature;
    use serde_json::Value;

    fn schema() -> Schema {
        let f = |name: &str, dtype, values| Feature {
            name: name.into(),
            dtype,
            values,
            allow_nan: false,
            missing: false,
        };
        Schema::new(vec![
            f("a", Dtype::Float, None),
            f("b b", Dtype::Int, None),
            f("c", Dtype::Float, Some(FeatureValues::Range { min: Some(-1e6), max: Some(1e6) })),
        ])
    }

    /// The general path's table, if it accepts the body with every row valid.
    fn general(schema: &Schema, body: &str) -> Option<Table> {
        let value: Value = serde_json::from_str(body).ok()?;
        let (rows, on_error) = decode_rows(&value).ok()?;
        let v = schema.validate(&rows, on_error).ok()?;
        v.rejected.is_empty().then_some(v.table)
    }

    /// What the echo writes for a validated value.
    fn echo_of(dtype: Dtype, x: f64) -> String {
        if dtype == Dtype::Int && x.fract() == 0.0 && x.abs() < 9.0e15 {
            (x as i64).to_string()
        } else {
            serde_json::to_string(&x).unwrap()
        }
    }

    /// Checks the fast path against the general one; returns whether the fast path took it.
    fn check(schema: &Schema, body: &str) -> bool {
        let fast = decode(schema, body.as_bytes());
        let slow = general(schema, body);
        let Some(fast) = fast else { return false };
        let slow = slow.unwrap_or_else(|| panic!("fast path accepted what the general path refuses: {body}"));
        assert_eq!(fast.table.n_rows, slow.n_rows, "{body}");
        assert_eq!(fast.table.source_rows, slow.source_rows, "{body}");
        for (a, b) in fast.table.columns.iter().zip(&slow.columns) {
            let (Column::Numeric(a), Column::Numeric(b)) = (a, b) else { panic!("not numeric") };
            for (x, y) in a.iter().zip(b) {
                assert_eq!(x.to_bits(), y.to_bits(), "{body}: {x} vs {y}");
            }
        }
        for row in 0..fast.table.n_rows {
            for (col, feature) in schema.features.iter().enumerate() {
                if let Some(text) = fast.echo.cell(body.as_bytes(), row, col) {
                    let Column::Numeric(v) = &fast.table.columns[col] else { unreachable!() };
                    assert_eq!(std::str::from_utf8(text).unwrap(), echo_of(feature.dtype, v[row]), "{body}");
                }
            }
        }
        true
    }

    const NUMBERS: &[&str] = &[
        "5.1",
        "0",
        "-0",
        "1",
        "-17",
        "3.0",
        "1001.0",
        "100.0",
        "0.0",
        "-0.0",
        "0.1",
        "0.30000000000000004",
        "0.00012",
        "0.000012",
        "0.0000012",
        "1e2",
        "1E-3",
        "2.5e+3",
        "123456789012345.6",
        "1234567890123456.7",
        "12345678901234567890",
        "123456789012345678901",
        "5.10",
        "5.00",
        "9007199254740993",
        "1.7976931348623157e308",
        "1e400",
        "-1e400",
        "4.9e-324",
        "1e-400",
        "0.1e1",
        "01",
        "1.",
        ".5",
        "+1",
        "-",
        "1e",
        "--1",
        "1.5",
        "999999.0",
        "1000001",
        "-1000001.5",
        "2.2250738585072014e-308",
        "0.999999999999999999999",
        "7e22",
        "7e23",
        "123.456e-2",
        "\"1\"",
        "null",
        "true",
        "1 ",
        " 2",
    ];

    #[test]
    fn same_tables_as_the_general_path() {
        let schema = schema();
        let mut taken = 0;
        let mut total = 0;
        let mut pick = 7usize;
        let mut next = |n: usize| {
            pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (pick >> 33) % n
        };
        for _ in 0..4000 {
            let rows = 1 + next(3);
            let cells: Vec<Vec<&str>> = (0..rows)
                .map(|_| {
                    (0..3)
                        .map(|_| if next(3) == 0 { NUMBERS[next(NUMBERS.len())] } else { NUMBERS[next(12)] })
                        .collect()
                })
                .collect();
            let arrays: Vec<String> = cells.iter().map(|r| format!("[{}]", r.join(","))).collect();
            let records: Vec<String> = cells
                .iter()
                .map(|r| {
                    let mut keys = [("a", r[0]), ("b b", r[1]), ("c", r[2])];
                    if next(2) == 0 {
                        keys.reverse();
                    }
                    let body: Vec<String> = keys.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
                    format!("{{{}}}", body.join(", "))
                })
                .collect();
            let names = [
                "[\"a\",\"b b\",\"c\"]",
                "[\"a\",\"c\",\"b b\"]",
                "[\"a\",\"b b\"]",
                "[\"a\",\"b b\",\"c\",\"d\"]",
            ][if next(4) == 0 { next(4) } else { 0 }];
            let bodies = [
                format!("{{\"data\": [{}], \"names\": {names}}}", arrays.join(",")),
                format!("{{\"names\": {names}, \"data\": [{}]}}", arrays.join(", ")),
                format!(" {{\"data\":[{}]}} \n", arrays.join(",")),
                format!("[{}]", arrays.join(",")),
                format!("{{\"data\": [{}], \"on_error\": \"skip\"}}", records.join(",")),
                format!("[{}]", records.join(",")),
                format!("{{\"data\": {}}}", records[0]),
                records[0].clone(),
                format!("{{\"on_error\": null, {}", &records[0][1..]),
                format!("{{\"data\": [{}], \"names\": {names}}}", records.join(",")),
                format!("{{\"data\": [{}], \"params\": {{}}}}", arrays.join(",")),
                format!("{{\"data\": [{}], \"data\": [{}]}}", arrays.join(","), arrays.join(",")),
                format!("{{\"data\": [{}]}} x", arrays.join(",")),
            ];
            for body in &bodies {
                total += 1;
                taken += usize::from(check(&schema, body));
            }
        }
        // The common shapes with plain numbers are taken.
        assert!(taken > total / 5, "{taken} of {total}");
        for body in [
            r#"{"data": [[5.1, 2, 3.5]], "names": ["a", "b b", "c"]}"#,
            r#"{"data": [[5.1, 2, 3.5], [1, -4, 0.0001]]}"#,
            r#"[{"c": 1.5, "a": 2, "b b": 3}]"#,
            r#"{"a": 1.25, "b b": 7, "c": -2.5, "on_error": "reject"}"#,
        ] {
            assert!(check(&schema, body), "{body}");
        }
    }

    #[test]
    fn edge_cases_agree_or_fall_back() {
        let schema = schema();
        // Taken by the fast path, with the general path's table.
        for body in [
            r#"{"data": [[1e2, 3, -2.5E-3]]}"#,
            r#"{"data": [[-0, -0, -0.0]]}"#,
            r#"{"data": [[1.7976931348623157e308, 9007199254740992, 0.1e1]]}"#,
            r#"{"data": [[4.9e-324, 2e0, 123.456e-2]]}"#,
            r#"[{"b b": 1E3, "a": 0.30000000000000004, "c": 1000000}]"#,
        ] {
            assert!(check(&schema, body), "{body}");
        }
        // Left to the general path: integers beyond 19 digits, overflow to infinity, a wrong,
        // missing or reordered name, an unknown key.
        for body in [
            r#"{"data": [[12345678901234567890123, 1, 2]]}"#,
            r#"{"data": [[1, 123456789012345678901, 2]]}"#,
            r#"{"data": [[1e400, 1, 2]]}"#,
            r#"{"data": [[1, 2, 3]], "names": ["a", "b", "c"]}"#,
            r#"{"data": [[1, 2, 3]], "names": ["a", "c", "b b"]}"#,
            r#"{"data": [[1, 2, 3]], "names": ["a", "b b"]}"#,
            r#"[{"a": 1, "bb": 2, "c": 3}]"#,
            r#"{"data": [[1, 2, 3]], "extra": true}"#,
        ] {
            assert!(!check(&schema, body), "{body}");
        }
    }

    #[test]
    fn echo_text_is_what_serde_json_writes() {
        let schema = Schema::new(vec![Feature {
            name: "x".into(),
            dtype: Dtype::Float,
            values: None,
            allow_nan: false,
            missing: false,
        }]);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut copied = 0;
        for _ in 0..200_000 {
            let digit = |next: &mut dyn FnMut(u64) -> u64| char::from(b'0' + next(10) as u8);
            let int_len = next(18) as usize;
            let mut int: String = (0..int_len).map(|_| digit(&mut next)).collect();
            let int = if int.is_empty() || int.starts_with('0') {
                int.replace_range(..int.len().min(1), "");
                if int.is_empty() || next(2) == 0 {
                    "0".to_string()
                } else {
                    format!("{}{int}", 1 + next(9))
                }
            } else {
                int
            };
            let zeros = "0".repeat(next(7) as usize);
            let frac: String = (0..1 + next(10)).map(|_| digit(&mut next)).collect();
            let sign = if next(4) == 0 { "-" } else { "" };
            let text = format!("{sign}{int}.{zeros}{frac}");
            let body = format!("[[{text}]]");
            let Some(fast) = decode(&schema, body.as_bytes()) else { continue };
            let Column::Numeric(v) = &fast.table.columns[0] else { unreachable!() };
            assert_eq!(v[0].to_bits(), serde_json::from_str::<f64>(&text).unwrap().to_bits(), "{text}");
            if let Some(t) = fast.echo.cell(body.as_bytes(), 0, 0) {
                assert_eq!(std::str::from_utf8(t).unwrap(), serde_json::to_string(&v[0]).unwrap(), "{text}");
                copied += 1;
            }
        }
        assert!(copied > 10_000, "{copied}");
    }

    #[test]
    fn refused_and_rare_shapes_go_the_general_way() {
        let schema = schema();
        for body in [
            "",
            "{}",
            "[]",
            r#"{"data": []}"#,
            r#"{"data": [[1, 2]]}"#,
            r#"{"data": [[1, 2.5, 3]]}"#,
            r#"{"data": [[1, 2, 3e6]]}"#,
            r#"{"data": [[1, 2, "3"]]}"#,
            r#"{"data": [[1, 2, null]]}"#,
            r#"{"data": [[1, 2, 3]], "names": ["a", "b b", "c"], "names": ["a", "b b", "c"]}"#,
            r#"{"data": [[1, 2, 3]], "on_error": "drop"}"#,
            r#"{"a": 1, "b b": 2}"#,
            r#"{"a": 1, "b b": 2, "c": 3, "d": 4}"#,
            r#"{"a": 1, "a": 1, "b b": 2, "c": 3}"#,
            r#"{"names": ["a", "b b", "c"]}"#,
            r#"{"data": [[1, 2, 3]], "names": ["a", "b\u0020b", "c"]}"#,
            r#"{"data": [[1, 2, 3]], "a": 1}"#,
        ] {
            assert!(decode(&schema, body.as_bytes()).is_none(), "{body}");
        }
        let category = Schema::new(vec![Feature {
            name: "k".into(),
            dtype: Dtype::Category,
            values: None,
            allow_nan: false,
            missing: false,
        }]);
        assert!(!eligible(&category));
    }
}
