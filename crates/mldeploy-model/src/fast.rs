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
//! exact doubles when the digits allow, else fast-float2's correctly rounded parse of the
//! bytes).
//!
//! For the answer's echo of the rows, each cell remembers where its text is in the body
//! (offset and length) when that text is exactly what the echo would write for the value, so
//! the answer copies it instead of formatting the number again; a compact row of such cells
//! is remembered as one span and copied whole (see [`EchoText`]).

use crate::schema::{Dtype, FeatureValues, Schema};
use crate::{Column, Table};

/// Where the request's own text of each cell can be copied into the echo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoText {
    cells: Cells,
    n_cols: usize,
}

/// The two forms of [`EchoText`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cells {
    /// Per cell, row-major in schema order: the offset of its text in the body (the low
    /// [`EchoText::LEN_SHIFT`] bits) and the text's length (the high bits), or
    /// [`EchoText::FORMAT`] when the echo must format the value itself. The length is kept so
    /// that the answer copies without scanning for the number's end; cells past the first
    /// 128 MiB of a body are formatted instead.
    Words(Vec<u32>),
    /// Every row is compact and copied whole (see [`EchoText::copy_row`]): per row, where its
    /// text starts and ends, the end's word marked [`EchoText::SPACED`] when its cells are one
    /// comma and one space apart. Two words a row instead of one a cell: for a large request
    /// of several features, most of the echo's memory is saved.
    Rows(Vec<[u32; 2]>),
}

impl Default for Cells {
    fn default() -> Self {
        Cells::Words(Vec::new())
    }
}

impl EchoText {
    /// The marker of a cell whose text is not what the echo writes.
    const FORMAT: u32 = u32::MAX;
    /// Where the length starts in a cell's word.
    const LEN_SHIFT: u32 = 27;
    /// Offsets below this fit (the all-ones offset is left to [`EchoText::FORMAT`]).
    const OFFSET_LIMIT: usize = (1 << Self::LEN_SHIFT) - 1;
    const LEN_LIMIT: usize = 1 << (32 - Self::LEN_SHIFT);
    /// Marks a row span whose cells are apart by `", "`, as Python's `json.dumps` writes them
    /// (ends are below 2^27: the top bit is free).
    const SPACED: u32 = 1 << 31;

    /// The word of a cell whose text is at `start`, `len` bytes long.
    fn pack(start: usize, len: usize) -> u32 {
        if start < Self::OFFSET_LIMIT && len < Self::LEN_LIMIT {
            ((len as u32) << Self::LEN_SHIFT) | start as u32
        } else {
            Self::FORMAT
        }
    }

    /// The text of cell (`row`, `col`) in `body` when it is exactly what the echo of its value
    /// writes: for a `float` feature, what serde_json writes for the `f64` (the shortest text
    /// that reads back the same, in plain notation: `5.1`, `1001.0`, `0.00012`); for an `int`
    /// feature, the integer's digits.
    pub fn cell<'b>(&self, body: &'b [u8], row: usize, col: usize) -> Option<&'b [u8]> {
        if col >= self.n_cols {
            return None;
        }
        match &self.cells {
            Cells::Words(words) => {
                let word = *words.get(row * self.n_cols + col)?;
                if word == Self::FORMAT {
                    return None;
                }
                let start = (word as usize) & Self::OFFSET_LIMIT;
                let len = (word >> Self::LEN_SHIFT) as usize;
                body.get(start..start + len)
            }
            // A compact row's cells are numbers one comma (and maybe one space) apart.
            Cells::Rows(rows) => {
                let (span, _) = Self::span_of_row(*rows.get(row)?);
                let text = body.get(span)?.split(|&b| b == b',').nth(col)?;
                Some(text.strip_prefix(b" ").unwrap_or(text))
            }
        }
    }

    /// The words of a row span from `start` to `end` (below [`EchoText::OFFSET_LIMIT`]),
    /// spaced or not; [`EchoText::span_of_row`] reads them back.
    fn row_words(start: usize, end: usize, spaced: bool) -> [u32; 2] {
        let mark = if spaced { Self::SPACED } else { 0 };
        [start as u32, end as u32 | mark]
    }

    /// A row span's text and whether its cells are spaced.
    fn span_of_row([start, end]: [u32; 2]) -> (std::ops::Range<usize>, bool) {
        (start as usize..(end & !Self::SPACED) as usize, end & Self::SPACED != 0)
    }

    /// Append the echo of row `row`'s cells (without its brackets) to `out` when every cell
    /// has its text (see [`EchoText::cell`]) and the row is compact: its text as it is, or
    /// without the spaces after its commas. Whether it did.
    pub fn copy_row(&self, body: &[u8], row: usize, out: &mut Vec<u8>) -> bool {
        let (span, spaced) = match &self.cells {
            Cells::Rows(rows) => match rows.get(row) {
                Some(&span) => Self::span_of_row(span),
                None => return false,
            },
            Cells::Words(_) => match self.row_span(row) {
                Some(span) => (span, false),
                None => return false,
            },
        };
        let Some(text) = body.get(span) else {
            return false;
        };
        let start = out.len();
        out.extend_from_slice(text);
        if spaced {
            // Numbers hold no space: every space is one after a comma. Dropped in place, each
            // byte moved down over the spaces before it (no branch, no call per cell).
            let mut kept = start;
            for read in start..out.len() {
                let b = out[read];
                out[kept] = b;
                kept += usize::from(b != b' ');
            }
            out.truncate(kept);
        }
        true
    }

    /// Where row `row`'s text is in the body, `start..end`, when the echo of the whole row is
    /// that text as it is: every cell has its text, and each follows the one before after
    /// exactly one byte (the comma of a compact array row). `None` for a spaced row, which
    /// [`EchoText::copy_row`] copies without its spaces.
    pub fn row_span(&self, row: usize) -> Option<std::ops::Range<usize>> {
        match &self.cells {
            Cells::Words(words) => {
                Self::span_of_words(words.get(row * self.n_cols..(row + 1) * self.n_cols)?)
            }
            Cells::Rows(rows) => match Self::span_of_row(*rows.get(row)?) {
                (span, false) => Some(span),
                (_, true) => None,
            },
        }
    }

    /// The span of a row of cell words (see [`EchoText::row_span`]).
    fn span_of_words(words: &[u32]) -> Option<std::ops::Range<usize>> {
        let (&first, rest) = words.split_first()?;
        if first == Self::FORMAT {
            return None;
        }
        let start = (first as usize) & Self::OFFSET_LIMIT;
        let mut end = start + (first >> Self::LEN_SHIFT) as usize;
        for &word in rest {
            if word == Self::FORMAT || (word as usize) & Self::OFFSET_LIMIT != end + 1 {
                return None;
            }
            end += 1 + (word >> Self::LEN_SHIFT) as usize;
        }
        Some(start..end)
    }

    /// Append the text of cell (`row`, `col`) to `out` when it has one (see
    /// [`EchoText::cell`]); whether it did.
    #[inline]
    pub fn copy_cell(&self, body: &[u8], row: usize, col: usize, out: &mut Vec<u8>) -> bool {
        let Cells::Words(words) = &self.cells else {
            return match self.cell(body, row, col) {
                Some(text) => {
                    out.extend_from_slice(text);
                    true
                }
                None => false,
            };
        };
        let Some(&word) = words.get(row * self.n_cols + col) else {
            return false;
        };
        if word == Self::FORMAT {
            return false;
        }
        let start = (word as usize) & Self::OFFSET_LIMIT;
        let len = (word >> Self::LEN_SHIFT) as usize;
        // A text of up to 16 bytes (nearly every number) goes as a fixed 16 bytes, the excess
        // cut off again: a copy of a known size is a few moves, one of `len` bytes a call.
        if let Some(wide) = body.get(start..start + 16).and_then(|w| <&[u8; 16]>::try_from(w).ok()) {
            if len <= 16 {
                let end = out.len() + len;
                out.extend_from_slice(wide);
                out.truncate(end);
                return true;
            }
        }
        match body.get(start..start + len) {
            Some(text) => {
                out.extend_from_slice(text);
                true
            }
            None => false,
        }
    }

    /// Whether every cell of column `col` has its text in the body (then the echo never needs
    /// the column's values).
    pub fn copies_column(&self, col: usize) -> bool {
        col < self.n_cols
            && match &self.cells {
                Cells::Words(words) => {
                    words.iter().skip(col).step_by(self.n_cols).all(|&s| s != Self::FORMAT)
                }
                Cells::Rows(_) => true,
            }
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

/// What [`Plan::decode`] needs of a schema, worked out once (when a model's routes are made)
/// rather than for every request: what validation accepts of each feature, and which names
/// can be matched by one comparison.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per feature, what validation accepts.
    accepts: Vec<Accept>,
    /// Per feature, whether its name holds no quote, backslash or control character: a body
    /// can then write it as it is, and one comparison matches it (see
    /// [`Parser::plain_string_is`]). Other names are read as strings.
    plain_names: Vec<bool>,
}

impl Plan {
    /// The plan for `schema`, when [`Plan::decode`] can take its requests at all: every feature
    /// numeric (`float` or `int`), limited by a range if at all.
    pub fn new(schema: &Schema) -> Option<Plan> {
        let eligible = !schema.features.is_empty()
            && schema.features.iter().all(|f| {
                matches!(f.dtype, Dtype::Float | Dtype::Int)
                    && matches!(f.values, None | Some(FeatureValues::Range { .. }))
            });
        eligible.then(|| Plan {
            accepts: schema.features.iter().map(Accept::of).collect(),
            plain_names: schema
                .features
                .iter()
                .map(|f| !f.name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20))
                .collect(),
        })
    }

    /// Decode `body` into the columns of `schema` (the schema this plan was made for) when the
    /// body is one of the common shapes and every row is valid; `None` otherwise (the caller
    /// takes the general path).
    pub fn decode(&self, schema: &Schema, body: &[u8]) -> Option<FastRows> {
        let n_cols = schema.features.len();
        if n_cols != self.accepts.len() || body.len() >= u32::MAX as usize {
            return None;
        }
        // A small body's columns get their room at once, a row for every four bytes of the
        // body per column (a short number and its comma): one allocation each, instead of a
        // first push and a reserve after the first row. Twice that room emptied the
        // allocator's thread cache at 30 columns. A column of shorter cells grows as usual. A
        // large body's first row tells how much room to take.
        let rows_room = if body.len() <= SMALL_BODY { body.len() / (4 * n_cols) + 1 } else { 0 };
        let mut p = Parser {
            s: body,
            i: 0,
            schema,
            plain_names: &self.plain_names,
            accepts: &self.accepts,
            columns: (0..n_cols).map(|_| Vec::with_capacity(rows_room)).collect(),
            // One cell makes no span smaller than its word.
            cells: if n_cols >= 2 {
                Cells::Rows(Vec::with_capacity(rows_room))
            } else {
                Cells::Words(Vec::with_capacity(rows_room))
            },
            row_words: Vec::new(),
            seen: Vec::new(),
            long_columns: Vec::new(),
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
            // Every row is kept (see `Table::source_rows`).
            source_rows: Vec::new(),
        };
        Some(FastRows { table, echo: EchoText { cells: p.cells, n_cols } })
    }
}

/// Bodies up to this many bytes have their columns sized from the body's length at once.
const SMALL_BODY: usize = 16 * 1024;

/// [`Plan::decode`] with a plan made for this one body (tests and benchmarks; a server makes
/// the plan once per model).
pub fn decode(schema: &Schema, body: &[u8]) -> Option<FastRows> {
    Plan::new(schema)?.decode(schema, body)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    schema: &'a Schema,
    /// Per feature, whether its name is matched by one comparison (see [`Plan`]).
    plain_names: &'a [bool],
    /// Per feature, what validation accepts.
    accepts: &'a [Accept],
    /// The values so far, one column per feature.
    columns: Vec<Vec<f64>>,
    /// The echo so far: row spans while every row is compact and copied whole, else cell words.
    cells: Cells,
    /// The cell words of the array row being read cell by cell, one per feature (made for
    /// the first such row: a body of compact rows needs none).
    row_words: Vec<u32>,
    /// For records: which features the current record has set.
    seen: Vec<bool>,
    /// Per column, whether a number of it in an array row was not a short one: the rest of
    /// the request reads that column with the general reader at once (a column as numpy
    /// writes it, 16 to 17 digits, would otherwise be tried and refused by the short reader
    /// in every row). Empty until the first such number; from then on rows are read cell by
    /// cell.
    long_columns: Vec<bool>,
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

    /// A string's bytes, without escapes or control characters (others go the general way).
    /// Not checked as UTF-8: every caller compares them with a known name or word (valid
    /// UTF-8) and declines the body when none matches, so invalid text never gets through.
    fn string(&mut self) -> Option<&'a [u8]> {
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
        let text = &s[start..self.i];
        self.i += 1;
        Some(text)
    }

    /// Whether the string here is `text` as it is, without escapes; consumed if so. `text`
    /// must hold no quote, backslash or control character (a plain name of the [`Plan`]): the
    /// body's string would then hold an escape (or be invalid), and only [`Parser::string`]
    /// reads those.
    fn plain_string_is(&mut self, text: &[u8]) -> bool {
        self.ws();
        let n = text.len();
        let matched = self
            .s
            .get(self.i..self.i + n + 2)
            .is_some_and(|s| s[0] == b'"' && s[n + 1] == b'"' && &s[1..=n] == text);
        if matched {
            self.i += n + 2;
        }
        matched
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
                b"data" => {
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
                b"names" => {
                    if names_ok.is_some() || record_started {
                        return None;
                    }
                    names_ok = Some(self.names()?);
                }
                b"on_error" => {
                    self.ws();
                    if self.s[self.i..].starts_with(b"null") {
                        self.i += 4;
                    } else if !matches!(self.string()?, b"reject" | b"skip") {
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
            let expected = schema.features.get(n).map(|f| f.name.as_bytes());
            // The common case, the schema's name written plainly, is one comparison.
            let plain = self.plain_names.get(n).copied().unwrap_or(false);
            if !(plain && expected.is_some_and(|name| self.plain_string_is(name))) {
                let name = self.string()?;
                same &= expected.is_some_and(|e| e == name);
            }
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
            if std::mem::take(&mut first) && self.s.len() > SMALL_BODY {
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

    /// Room for the rows the rest of the body holds if they are about as long as the first
    /// (`row_len` bytes): growing 30 columns one push at a time cost about a sixth of a
    /// 32-row request's instructions. At most the body's length in rows, so a short first
    /// row cannot ask for more than the body could fill.
    fn reserve_like(&mut self, row_len: usize) {
        let rest = (self.s.len() - self.i) / (row_len + 1).max(2);
        // A large body's rows may run shorter than its first: a quarter more room, since a
        // large column that outgrows its room is copied whole, while room never written costs
        // no memory. A small body's columns are small: reallocating them costs less than
        // growing them past their first allocation.
        let rest = if rest >= 64 { rest + rest / 4 } else { rest };
        for column in &mut self.columns {
            column.reserve(rest);
        }
        match &mut self.cells {
            Cells::Words(words) => words.reserve(rest * self.columns.len()),
            Cells::Rows(rows) => rows.reserve(rest),
        }
    }

    /// One array row: every feature's number, in schema order.
    fn array_row(&mut self) -> Option<()> {
        self.expect(b'[')?;
        if self.long_columns.is_empty() && self.compact_row() {
            return Some(());
        }
        let s = self.s;
        // The position in a local: the loop below is most of a request's decode.
        let mut i = self.i;
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = s.get(i) {
            i += 1;
        }
        let row_start = i;
        let n_cols = self.columns.len();
        self.row_words.resize(n_cols, EchoText::FORMAT);
        // Whether the row is compact so far (every cell has its text, one byte after the end
        // of the one before, or two with a space after the comma), whether it is spaced, and
        // where the last cell ended: known as the row is read.
        let mut compact = true;
        let mut spaced = false;
        let mut last_end = i.wrapping_sub(1);
        let cells = self.accepts.iter().zip(&mut self.columns).zip(self.row_words.iter_mut());
        for (j, ((check, column), cell)) in cells.enumerate() {
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = s.get(i) {
                i += 1;
            }
            let end = if j + 1 == n_cols { b']' } else { b',' };
            let start = i;
            let long = self.long_columns.get(j).copied().unwrap_or(false);
            let short = if long { None } else { short_at(s, i, end) };
            let number = match short {
                Some((number, end)) => {
                    i = end;
                    number
                }
                None => {
                    if self.long_columns.is_empty() {
                        self.long_columns.resize(n_cols, false);
                    }
                    self.long_columns[j] = true;
                    any_number(s, &mut i)?
                }
            };
            column.push(check.value(&number)?);
            *cell = check.echo_cell(&number, start, i - start);
            let gap = start.wrapping_sub(last_end);
            let spaced_here = j > 0 && gap == 2 && s[last_end + 1] == b' ';
            compact &= (*cell != EchoText::FORMAT) & (gap == 1 || spaced_here);
            spaced |= spaced_here;
            last_end = i;
            while let Some(b' ' | b'\n' | b'\r' | b'\t') = s.get(i) {
                i += 1;
            }
            if s.get(i) != Some(&end) {
                return None;
            }
            i += 1;
        }
        self.i = i;
        self.n_rows += 1;
        if compact {
            if let Cells::Rows(rows) = &mut self.cells {
                // Cell offsets are below 2^27 (else a cell's word is the format marker), so
                // their ends fit a word.
                rows.push(EchoText::row_words(row_start, last_end, spaced));
                return Some(());
            }
        }
        let row = std::mem::take(&mut self.row_words);
        self.cells_by_word(s).extend_from_slice(&row);
        self.row_words = row;
        Some(())
    }

    /// Reads the row at the current position when it is compact and copied whole: every cell
    /// a short number (see [`short_at`]) followed right away by its separator (and, in a row
    /// marked [`EchoText::SPACED`], one space after each comma), valid, with the text the echo
    /// writes. Its values are pushed and its span kept; `false` otherwise, with
    /// nothing pushed or read: the caller reads the row cell by cell (and declines the body
    /// when the row is invalid). Only while every row so far was compact: the echo then needs
    /// no cell words, which leaves the loop a few steps a cell.
    #[inline(always)]
    fn compact_row(&mut self) -> bool {
        let Cells::Rows(rows) = &mut self.cells else {
            return false;
        };
        let s = self.s;
        let mut i = self.i;
        let n_cols = self.columns.len();
        let mut pushed = 0;
        let mut spaced = false;
        for (j, (check, column)) in self.accepts.iter().zip(&mut self.columns).enumerate() {
            let sep = if j + 1 == n_cols { b']' } else { b',' };
            // One space after each comma, as Python's `json.dumps` writes rows: known from the
            // second cell on, which leaves compact rows as fast as before.
            if spaced {
                if s.get(i) != Some(&b' ') {
                    break;
                }
                i += 1;
            }
            let mut cell = short_at(s, i, sep);
            if cell.is_none() && j == 1 && s.get(i) == Some(&b' ') {
                i += 1;
                spaced = true;
                cell = short_at(s, i, sep);
            }
            let Some(x) = cell.and_then(|(number, end)| {
                i = end + 1;
                let same = if check.int { number.int_text } else { number.float_text };
                check.value(&number).filter(|_| same)
            }) else {
                break;
            };
            column.push(x);
            pushed += 1;
        }
        // The row's text ends where its `]` is; offsets below 2^27 fit a word.
        let end = i - 1;
        if pushed == n_cols && end < EchoText::OFFSET_LIMIT {
            rows.push(EchoText::row_words(self.i, end, spaced));
            self.i = i;
            self.n_rows += 1;
            return true;
        }
        for column in &mut self.columns[..pushed] {
            column.pop();
        }
        false
    }

    /// The cell words, the row spans so far turned into them first: a row that is not compact
    /// and copied whole, or a record, ends the per-row form.
    fn cells_by_word(&mut self, s: &[u8]) -> &mut Vec<u32> {
        if let Cells::Rows(rows) = &self.cells {
            let mut words = Vec::with_capacity(rows.len() * self.columns.len());
            for &span in rows {
                let (span, _) = EchoText::span_of_row(span);
                let mut at = span.start;
                for text in s[span].split(|&b| b == b',') {
                    // A spaced row's cells start after their space.
                    let lead = usize::from(text.first() == Some(&b' '));
                    words.push(EchoText::pack(at + lead, text.len() - lead));
                    at += text.len() + 1;
                }
            }
            self.cells = Cells::Words(words);
        }
        match &mut self.cells {
            Cells::Words(words) => words,
            Cells::Rows(_) => unreachable!("turned into words above"),
        }
    }

    /// A new row of a record: placeholders that [`Parser::record_value`] fills.
    fn start_record(&mut self) {
        let n_cols = self.schema.features.len();
        self.seen.clear();
        self.seen.resize(n_cols, false);
        for column in &mut self.columns {
            column.push(0.0);
        }
        let words = self.cells_by_word(self.s);
        words.resize(words.len() + n_cols, EchoText::FORMAT);
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
    fn record_value(&mut self, key: &[u8], hint: usize) -> Option<usize> {
        let features = &self.schema.features;
        let j = if features.get(hint).is_some_and(|f| f.name.as_bytes() == key) {
            hint
        } else {
            features.iter().position(|f| f.name.as_bytes() == key)?
        };
        if std::mem::replace(&mut self.seen[j], true) {
            return None;
        }
        self.ws();
        let start = self.i;
        let number = self.number()?;
        let check = self.accepts[j];
        let x = check.value(&number)?;
        if let Some(last) = self.columns[j].last_mut() {
            *last = x;
        }
        let word = check.echo_cell(&number, start, self.i - start);
        let words = self.cells_by_word(self.s);
        let at = words.len() - features.len() + j;
        words[at] = word;
        Some(j)
    }

    /// The number at the current position (see [`number`]).
    fn number(&mut self) -> Option<Number> {
        number(self.s, &mut self.i)
    }
}

/// The JSON number (strict grammar) at `*at` in `s`, converted as serde_json converts it, with
/// `*at` moved past it; `None` for anything else, and for numbers whose conversion is left to
/// the general path (very long integers, non-finite results).
#[inline(always)]
fn number(s: &[u8], at: &mut usize) -> Option<Number> {
    match short_number(s, *at) {
        Some((number, end)) => {
            *at = end;
            Some(number)
        }
        None => any_number(s, at),
    }
}

/// The eight bytes at `i`, read little-endian, when there are eight.
#[inline(always)]
fn word_at(s: &[u8], i: usize) -> Option<u64> {
    let bytes: &[u8; 8] = s.get(i..i + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(*bytes))
}

/// The commonest cell of a compact row, read from the word of its first 8 bytes: an optional
/// `-`, 1 to 7 digits in all, optionally split by a `.` with digits on both sides, no exponent,
/// followed right away by `sep`, all inside the word. Its value, echo flags and length;
/// `None` for everything else (the caller reads the cell the longer way). Every byte is
/// classified at once, so the point and the end need no second look; the value is
/// [`any_number`]'s, which a test checks.
#[inline(always)]
fn compact_number(word: u64, sep: u8) -> Option<(Number, usize)> {
    let negative = word as u8 == b'-';
    let sign = usize::from(negative);
    let w = word >> (8 * sign);
    // Each digit byte becomes its value (0 to 9); every other byte gets its high bit set in
    // `other`. Nothing carries from one byte into the next, so every byte's flag is exact.
    let x = w ^ ASCII_ZEROS;
    let other = (((x & 0x7f7f_7f7f_7f7f_7f7f) + 0x7676_7676_7676_7676) | x) & 0x8080_8080_8080_8080;
    let int_len = (other.trailing_zeros() / 8) as usize;
    // The byte after the integer digits must be one of the word's own (not shifted in), and a
    // leading zero before more digits is not JSON.
    if int_len == 0 || int_len + sign >= 8 || (int_len > 1 && x as u8 == 0) {
        return None;
    }
    let (digits, frac_len, end) = if (w >> (8 * int_len)) as u8 == b'.' {
        // The fraction ends at the next byte that is no digit.
        let end = ((other & (other - 1)).trailing_zeros() / 8) as usize;
        if end + sign >= 8 || end == int_len + 1 {
            return None;
        }
        // The fraction's digits moved down over the point: one run of `end - 1` digits.
        let int_mask = (1u64 << (8 * int_len)) - 1;
        ((x & int_mask) | ((x >> 8) & !int_mask), end - int_len - 1, end)
    } else {
        (x, 0, int_len)
    };
    if (w >> (8 * end)) as u8 != sep {
        return None;
    }
    let n_digits = end - usize::from(frac_len > 0);
    let mantissa = digit_values(digits, n_digits);
    let last_zero = (x >> (8 * (end - 1))) as u8 == 0;
    let int_is_zero = int_len == 1 && x as u8 == 0;
    let (value, float_text, int_text) = if frac_len > 0 {
        // At most 7 digits: the quotient of two exact doubles, correctly rounded.
        let text = float_text(int_is_zero, frac_len, mantissa, last_zero);
        (mantissa as f64 / POW10[frac_len], text, false)
    } else {
        (mantissa as f64, false, !(negative && int_is_zero))
    };
    let value = if negative { -value } else { value };
    Some((Number { value, float_text, int_text }, sign + end))
}

/// The value of the first `n` (1 to 8) bytes of `x`, each a digit's value (0 to 9), the
/// first (lowest) byte the most significant: digits combined in pairs, then pairs into fours,
/// then the two fours, in three multiplies.
#[inline(always)]
fn digit_values(x: u64, n: usize) -> u64 {
    // Moved to the top of the word behind zeros, which leave the value as it is.
    let d = x << (8 * (8 - n as u32));
    // Each byte k now holds 10 * d[k] + d[k + 1]; the even bytes are the pairs wanted.
    let pairs = d.wrapping_mul(10) + (d >> 8);
    const LOW_PAIRS: u64 = 0x0000_00ff_0000_00ff;
    // Pairs 0 and 2 (bytes 0 and 4) weighted by 10^6 and 10^2, pairs 1 and 3 (bytes 2 and 6)
    // by 10^4 and 1; the products meet in the high half.
    let outer = (pairs & LOW_PAIRS).wrapping_mul(100 + (1_000_000 << 32));
    let inner = ((pairs >> 16) & LOW_PAIRS).wrapping_mul(1 + (10_000 << 32));
    outer.wrapping_add(inner) >> 32
}

/// Whether a number's text `d.ddd` (no exponent, at most 15 digits) is serde_json's own for
/// its value (see `any_number`): no trailing zero but in "d.0"; after "0.", at most four zeros
/// before the first digit, or "0.0". `mantissa`: the digits of both parts as one integer
/// (the fraction's value when the integer part is 0).
#[inline(always)]
fn float_text(int_is_zero: bool, frac_len: usize, mantissa: u64, last_zero: bool) -> bool {
    if int_is_zero {
        (frac_len == 1 && last_zero) || (!last_zero && (frac_len <= 4 || mantissa >= POW10_U64[frac_len - 5]))
    } else {
        !last_zero || frac_len == 1
    }
}

/// The common number, at `start`: an optional `-`, 1 to 7 integer digits, optionally a `.` and
/// 1 to 7 fraction digits, no exponent, with eight bytes to read at each part. Each part's
/// length and value come from one word, and the value is one exact division. `None` (nothing
/// read) for every other number, valid or not: [`any_number`] takes those. Its value and echo
/// flags are [`any_number`]'s, which a test checks.
#[inline(always)]
fn short_number(s: &[u8], start: usize) -> Option<(Number, usize)> {
    let negative = *s.get(start)? == b'-';
    let int_start = start + usize::from(negative);
    let word = word_at(s, int_start)?;
    let int_len = leading_digits(word);
    // A leading zero before more digits is not JSON: left to the general reader.
    if int_len == 0 || int_len == 8 || (int_len > 1 && word as u8 == b'0') {
        return None;
    }
    let int_is_zero = int_len == 1 && word as u8 == b'0';
    let int_value = first_digits_value(word, int_len);
    let int_end = int_start + int_len;
    // The byte after the integer digits is in the word (at most 7 digits).
    let (value, float_text, int_text, end) = match (word >> (8 * int_len)) as u8 {
        b'.' => {
            let frac_word = word_at(s, int_end + 1)?;
            let frac_len = leading_digits(frac_word);
            let end = int_end + 1 + frac_len;
            if frac_len == 0 || frac_len == 8 || matches!(s.get(end), Some(b'e' | b'E')) {
                return None;
            }
            // At most 14 digits: below 2^53, so both operands are exact and the quotient is
            // correctly rounded.
            let mantissa = int_value * POW10_U64[frac_len] + first_digits_value(frac_word, frac_len);
            let last_zero = (frac_word >> (8 * (frac_len - 1))) as u8 == b'0';
            let text = float_text(int_is_zero, frac_len, mantissa, last_zero);
            (mantissa as f64 / POW10[frac_len], text, false, end)
        }
        b'e' | b'E' => return None,
        _ => (int_value as f64, false, !(negative && int_is_zero), int_end),
    };
    let value = if negative { -value } else { value };
    Some((Number { value, float_text, int_text }, end))
}

/// A short number at `i` followed right away by `sep` (the cell of a compact row), and where
/// it ends: [`compact_number`] when both fit the word there, else [`short_number`]. `None` for
/// every other cell, valid or not.
#[inline(always)]
fn short_at(s: &[u8], i: usize, sep: u8) -> Option<(Number, usize)> {
    match word_at(s, i).and_then(|word| compact_number(word, sep)) {
        Some((number, len)) => Some((number, i + len)),
        None => short_number(s, i).filter(|&(_, end)| s.get(end) == Some(&sep)),
    }
}

/// Any JSON number (strict grammar) at `*at` in `s`; see [`number`].
fn any_number(s: &[u8], at: &mut usize) -> Option<Number> {
    let start = *at;
    let mut i = start;
    let negative = s.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    // The digits of the integer and fraction parts, in one integer: exact while it holds
    // at most 19 significant digits (below 10^19 < 2^64), which `significant` tells.
    let mut mantissa: u64 = 0;
    let int_start = i;
    match s.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits_into(s, i, &mut mantissa),
        _ => return None,
    }
    let int_len = i - int_start;
    let int_is_zero = int_len == 1 && s[int_start] == b'0';
    let has_frac = s.get(i) == Some(&b'.');
    let mut frac = i..i;
    if has_frac {
        let frac_start = i + 1;
        i = digits_into(s, frac_start, &mut mantissa);
        if i == frac_start {
            return None;
        }
        frac = frac_start..i;
    }
    let frac_len = frac.len();
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
    *at = i;
    // Zeros before the first significant digit: only after "0." (an integer part other
    // than "0" starts with a nonzero digit).
    let frac_zeros_lead = if int_is_zero { s[frac].iter().take_while(|&&c| c == b'0').count() } else { 0 };
    let significant = if int_is_zero { frac_len - frac_zeros_lead } else { int_len + frac_len };
    let exact = significant <= 19;
    let e10 = exp - frac_len as i64;
    let value = if !has_frac && !has_exp {
        // An integer: serde_json keeps it as u64/i64 (exact) and converts with `as`
        // (-0 becomes -0.0 there too).
        if !exact {
            return None;
        }
        let x = mantissa as f64;
        if negative {
            -x
        } else {
            x
        }
    } else if exact && mantissa < (1u64 << 53) && (-22..=22).contains(&e10) {
        // Both operands are exact doubles: one correctly rounded operation.
        let m = mantissa as f64;
        let x = if e10 >= 0 { m * POW10[e10 as usize] } else { m / POW10[(-e10) as usize] };
        if negative {
            -x
        } else {
            x
        }
    } else {
        // Correctly rounded, as serde_json's parse with `float_roundtrip`. fast-float2
        // rather than `str::parse`: it reads the bytes as they are (no UTF-8 check) and
        // took 14-18 ns per 17-digit number against 32-45 ns (numbers as numpy writes
        // them are mostly 16-17 digits, beyond the exact product above).
        fast_float2::parse::<f64, _>(&s[start..i]).ok()?
    };
    if !value.is_finite() {
        return None;
    }
    // Significant digits of the text (at most 15 makes the text the shortest that reads
    // back as this f64, so it is what serde_json writes when the notation matches too).
    let sig_ok = significant <= 15;
    let frac_last_zero = has_frac && s[i - 1] == b'0';
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

/// Reads the decimal digits from `i` on into `m` (`m * 10 + digit` for each, wrapping past
/// 19 digits, where the caller stops trusting it); returns where the digits end.
#[inline(always)]
fn digits_into(s: &[u8], mut i: usize, m: &mut u64) -> usize {
    // Eight bytes at a time while there are eight: the digit run's length and value come from
    // one word whatever its length, where a loop would take a step per digit.
    while let Some(chunk) = s.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        let n = leading_digits(word);
        if n == 8 {
            *m = m.wrapping_mul(100_000_000).wrapping_add(eight_digits_value(word));
            i += 8;
            continue;
        }
        if n > 0 {
            *m = m.wrapping_mul(POW10_U64[n]).wrapping_add(first_digits_value(word, n));
        }
        return i + n;
    }
    while let Some(&c) = s.get(i) {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        *m = m.wrapping_mul(10).wrapping_add(u64::from(d));
        i += 1;
    }
    i
}

/// How many bytes of `word` (read little-endian), from the first on, are ASCII digits before
/// the first other byte: 0 to 8.
fn leading_digits(word: u64) -> usize {
    // A digit byte less '0' is 0..=9: it does not wrap (high bit) and adding 0x76 stays below
    // 0x80; every other byte sets its high bit one way or the other. Borrows and carries only
    // run toward later bytes, so the first other byte is flagged exactly (flags after it may
    // be wrong, and are not read).
    let t = word.wrapping_sub(0x3030_3030_3030_3030);
    let flags = (t | t.wrapping_add(0x7676_7676_7676_7676)) & 0x8080_8080_8080_8080;
    (flags.trailing_zeros() / 8) as usize
}

/// The value of the first `n` (1 to 8) bytes of `word`, all ASCII digits (the first digit
/// in the lowest byte).
#[inline(always)]
fn first_digits_value(word: u64, n: usize) -> u64 {
    digit_values(word ^ ASCII_ZEROS, n)
}

/// Eight `'0'` bytes: a digit byte xor this is the digit's value.
const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;

/// Powers of ten up to 10^8, as integers.
const POW10_U64: [u64; 9] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000, 100_000_000];

/// The value of eight ASCII digits read little-endian.
fn eight_digits_value(word: u64) -> u64 {
    first_digits_value(word, 8)
}

/// Powers of ten that are exact doubles.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// What validation accepts for one feature, in the form the decode loop tests fastest.
#[derive(Debug, Clone, Copy)]
struct Accept {
    /// An `int` feature: the value must be integral, and its echo is the integer's digits.
    int: bool,
    /// The range, `-inf` and `+inf` when the feature has no bound.
    min: f64,
    max: f64,
}

impl Accept {
    fn of(feature: &crate::Feature) -> Accept {
        let (min, max) = match &feature.values {
            Some(FeatureValues::Range { min, max }) => (*min, *max),
            _ => (None, None),
        };
        Accept {
            int: feature.dtype == Dtype::Int,
            min: min.unwrap_or(f64::NEG_INFINITY),
            max: max.unwrap_or(f64::INFINITY),
        }
    }

    /// The value when validation accepts it (finite, integral for `int`, within the range);
    /// `None` sends the request the general way, which names the problem.
    #[inline(always)]
    fn value(self, number: &Number) -> Option<f64> {
        let x = number.value;
        // `x` is finite here. Every double of magnitude 2^53 or more is an integer; below,
        // the round trip through `i64` truncates (one instruction, where `fract` is a call).
        let in_range = (x >= self.min) & (x <= self.max);
        if !in_range || (self.int && !(x.abs() >= 9_007_199_254_740_992.0 || (x as i64) as f64 == x)) {
            return None;
        }
        Some(x)
    }

    /// The echo word of a cell whose text, `len` bytes at `start`, was read as `number`.
    #[inline(always)]
    fn echo_cell(self, number: &Number, start: usize, len: usize) -> u32 {
        let same = if self.int { number.int_text } else { number.float_text };
        if same {
            EchoText::pack(start, len)
        } else {
            EchoText::FORMAT
        }
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
    fn echo_words_hold_offset_and_length_or_send_the_cell_to_formatting() {
        let body = b"[[12.5, 3]]";
        let echo =
            EchoText { cells: Cells::Words(vec![EchoText::pack(2, 4), EchoText::pack(8, 1)]), n_cols: 2 };
        assert_eq!(echo.cell(body, 0, 0), Some(&b"12.5"[..]));
        assert_eq!(echo.cell(body, 0, 1), Some(&b"3"[..]));
        assert_eq!(echo.cell(body, 1, 0), None);
        // Copied: as the cell's text, whether 16 bytes follow it in the body or not.
        let long_body = b"[[12.5, 3], [1.25, 7777777777]]";
        let words = [(2, 4), (8, 1), (14, 4), (20, 10)].map(|(s, l)| EchoText::pack(s, l)).to_vec();
        let echo_long = EchoText { cells: Cells::Words(words), n_cols: 2 };
        for (row, col) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            let mut out = b"x".to_vec();
            assert!(echo_long.copy_cell(long_body, row, col, &mut out));
            let text = echo_long.cell(long_body, row, col).unwrap();
            assert_eq!(&out[1..], text, "cell {row} {col}");
        }
        assert!(!echo_long.copy_cell(long_body, 2, 0, &mut Vec::new()));
        // A row is one span only when its cells are one comma apart.
        let compact = b"[[12.5,3],[1.25, 7]]";
        let words = [(2, 4), (7, 1), (11, 4), (17, 1)].map(|(s, l)| EchoText::pack(s, l)).to_vec();
        let echo = EchoText { cells: Cells::Words(words), n_cols: 2 };
        assert_eq!(echo.row_span(0).map(|r| &compact[r]), Some(&b"12.5,3"[..]));
        assert_eq!(echo.row_span(1), None);
        assert_eq!(echo.row_span(2), None);
        let one_formatted =
            EchoText { cells: Cells::Words(vec![EchoText::pack(2, 4), EchoText::FORMAT]), n_cols: 2 };
        assert_eq!(one_formatted.row_span(0), None);
        // Too far into the body, or too long: formatted.
        assert_eq!(EchoText::pack(EchoText::OFFSET_LIMIT, 3), EchoText::FORMAT);
        assert_eq!(EchoText::pack(EchoText::OFFSET_LIMIT - 1, 31), ((31 << 27) | ((1 << 27) - 2)));
        assert_eq!(EchoText::pack(5, 32), EchoText::FORMAT);
    }

    #[test]
    fn digit_runs_read_by_the_word_as_one_at_a_time() {
        let mut pick = 5u64;
        for _ in 0..20_000 {
            pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let len = (pick >> 59) as usize + 1; // 1 to 32 bytes
            let text: Vec<u8> = (0..len)
                .map(|k| {
                    let r = (pick >> (k % 56)) as u8;
                    // Mostly digits, sometimes the bytes just outside '0'..='9' and a stop.
                    match r % 16 {
                        0 => b'/',
                        1 => b':',
                        2 => b'.',
                        3 => r | 0x80,
                        _ => b'0' + r % 10,
                    }
                })
                .collect();
            let mut m = 0u64;
            let end = digits_into(&text, 0, &mut m);
            let digits = text.iter().take_while(|c| c.is_ascii_digit()).count();
            assert_eq!(end, digits, "{text:?}");
            let slow = text[..digits]
                .iter()
                .fold(0u64, |m, &c| m.wrapping_mul(10).wrapping_add(u64::from(c - b'0')));
            assert_eq!(m, slow, "{text:?}");
        }
        assert_eq!(eight_digits_value(u64::from_le_bytes(*b"12345678")), 12_345_678);
        assert_eq!(eight_digits_value(u64::from_le_bytes(*b"99999999")), 99_999_999);
        assert_eq!(leading_digits(u64::from_le_bytes(*b"1234567:")), 7);
        assert_eq!(leading_digits(u64::from_le_bytes(*b"/2345678")), 0);
        assert_eq!(leading_digits(u64::from_le_bytes(*b"12\xff45678")), 2);
        assert_eq!(first_digits_value(u64::from_le_bytes(*b"1234567:"), 7), 1_234_567);
        assert_eq!(first_digits_value(u64::from_le_bytes(*b"9]]]]]]]"), 1), 9);
        // Every byte after a run of digits stops it, whatever the bytes after it.
        for stop in (0..=255u8).filter(|b| !b.is_ascii_digit()) {
            for len in 0..8 {
                let mut text = *b"98765432";
                text[len] = stop;
                for later in &mut text[len + 1..] {
                    *later = stop.wrapping_mul(31).wrapping_add(len as u8);
                }
                assert_eq!(leading_digits(u64::from_le_bytes(text)), len, "{text:?}");
            }
        }
    }

    #[test]
    fn compact_rows_are_kept_as_spans_with_the_same_cells() {
        let schema = schema();
        let n_cols = schema.features.len();
        let row = |k: usize| {
            let cells: Vec<String> = schema
                .features
                .iter()
                .enumerate()
                .map(
                    |(j, f)| {
                        if f.dtype == Dtype::Int {
                            format!("{}", j + k)
                        } else {
                            format!("{}.25", j + k)
                        }
                    },
                )
                .collect();
            format!("[{}]", cells.join(","))
        };
        let compact = format!("[{},{},{}]", row(1), row(2), row(3));
        let decoded = decode(&schema, compact.as_bytes()).expect("the fast path takes it");
        assert!(matches!(decoded.echo.cells, Cells::Rows(_)), "{:?}", decoded.echo);
        let Cells::Rows(rows) = &decoded.echo.cells else { unreachable!() };
        // The same cells as the words the parse wrote.
        let mut words = Vec::new();
        for (r, &[start, end]) in rows.iter().enumerate() {
            let span = decoded.echo.row_span(r).unwrap();
            assert_eq!(
                &compact.as_bytes()[span.clone()],
                row(r + 1).trim_matches(|c| c == '[' || c == ']').as_bytes()
            );
            assert_eq!(span, start as usize..end as usize);
            for (c, text) in compact.as_bytes()[span.clone()].split(|&b| b == b',').enumerate() {
                let at =
                    span.start + text.as_ptr() as usize - compact.as_bytes()[span.clone()].as_ptr() as usize;
                words.push(EchoText::pack(at, text.len()));
                assert_eq!(decoded.echo.cell(compact.as_bytes(), r, c), Some(text));
                let mut out = Vec::new();
                assert!(decoded.echo.copy_cell(compact.as_bytes(), r, c, &mut out));
                assert_eq!(out, text);
            }
        }
        let by_words = EchoText { cells: Cells::Words(words), n_cols };
        for r in 0..3 {
            assert_eq!(by_words.row_span(r), decoded.echo.row_span(r));
        }
        assert!((0..n_cols).all(|c| decoded.echo.copies_column(c)));
        assert!(!decoded.echo.copies_column(n_cols));
        assert_eq!(decoded.echo.cell(compact.as_bytes(), 0, n_cols), None);
        assert_eq!(decoded.echo.row_span(3), None);
        // Rows may be apart; a row whose cells are one comma and one space apart keeps the
        // span form, copied without its spaces.
        let spaced = format!("[{}, {}]", row(1), row(2).replacen(',', ", ", 1));
        let decoded = decode(&schema, spaced.as_bytes()).expect("the fast path takes it");
        assert!(matches!(decoded.echo.cells, Cells::Rows(_)), "{:?}", decoded.echo);
        let mut out = Vec::new();
        assert!(decoded.echo.copy_row(spaced.as_bytes(), 1, &mut out));
        assert_eq!(out, &row(2).as_bytes()[1..row(2).len() - 1]);
        // Every comma spaced, read in the compact loop (a row follows it).
        let body = format!("[{}, {}, {}]", row(1), row(2).replace(',', ", "), row(3));
        let decoded = decode(&schema, body.as_bytes()).expect("the fast path takes it");
        assert!(matches!(decoded.echo.cells, Cells::Rows(_)), "{:?}", decoded.echo);
        for r in 0..3 {
            let mut out = Vec::new();
            assert!(decoded.echo.copy_row(body.as_bytes(), r, &mut out));
            assert_eq!(out, &row(r + 1).as_bytes()[1..row(r + 1).len() - 1]);
        }
        // The same at the body's end, where the row is read cell by cell (no eight bytes
        // after its last number).
        let last = row(2).replace(',', ", ");
        let decoded = decode(&schema, format!("[{last}]").as_bytes()).expect("the fast path takes it");
        assert!(matches!(decoded.echo.cells, Cells::Rows(_)), "{:?}", decoded.echo);
        let mut out = Vec::new();
        assert!(decoded.echo.copy_row(format!("[{last}]").as_bytes(), 0, &mut out));
        assert_eq!(out, &row(2).as_bytes()[1..row(2).len() - 1]);
        assert_eq!(decoded.echo.row_span(0), None);
        // A row spaced otherwise (two spaces, a space before a comma) takes the per-cell form.
        let spaced = format!("[{}, {}]", row(1), row(2).replacen(',', ",  ", 1));
        let decoded = decode(&schema, spaced.as_bytes()).expect("the fast path takes it");
        assert!(matches!(decoded.echo.cells, Cells::Words(_)));
        // The compact row read before keeps its cells through the change of form.
        let (first, second) = (row(1), row(2));
        for (c, text) in first[1..first.len() - 1].split(',').enumerate() {
            assert_eq!(decoded.echo.cell(spaced.as_bytes(), 0, c), Some(text.as_bytes()));
        }
        for (c, text) in second[1..second.len() - 1].split(',').enumerate() {
            assert_eq!(decoded.echo.cell(spaced.as_bytes(), 1, c), Some(text.as_bytes()));
        }
        assert_eq!(
            decoded.echo.row_span(0).map(|r| &spaced.as_bytes()[r]),
            Some(&first.as_bytes()[1..first.len() - 1])
        );
        assert_eq!(decoded.echo.row_span(1), None);
    }

    #[test]
    fn short_numbers_read_as_any_number_reads_them() {
        let mut pick = 7u64;
        let mut next = |n: u64| {
            pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (pick >> 33) % n
        };
        let mut taken = 0;
        let mut compact_taken = 0;
        for _ in 0..50_000 {
            let digits = |len: u64, next: &mut dyn FnMut(u64) -> u64| -> String {
                (0..len).map(|_| char::from(b'0' + next(10) as u8)).collect()
            };
            let mut text = String::new();
            if next(3) == 0 {
                text.push('-');
            }
            // Zeros often, to reach "0.", "0.000ddd", "d.0", trailing zeros and "-0".
            let int_part = if next(3) == 0 { "0".to_string() } else { digits(1 + next(9), &mut next) };
            text.push_str(&int_part);
            if next(4) != 0 {
                text.push('.');
                let zeros = next(7) as usize;
                text.push_str(&"0".repeat(zeros));
                text.push_str(&digits(next(9), &mut next));
                if next(4) == 0 {
                    text.push('0');
                }
            }
            if next(10) == 0 {
                text.push_str(["e5", "E-3", "e+1"][next(3) as usize]);
            }
            text.push_str([",", "]", "]]}", ",1.5,2.25,3]", " ,", "E"][next(6) as usize]);
            let bytes = text.as_bytes();
            // The only separators the decode asks for.
            for sep in [b',', b']'] {
                let Some((compact, len)) = word_at(bytes, 0).and_then(|word| compact_number(word, sep))
                else {
                    continue;
                };
                compact_taken += 1;
                let mut at = 0;
                let any =
                    any_number(bytes, &mut at).unwrap_or_else(|| panic!("{text}: only the compact reader"));
                assert_eq!((len, bytes[len]), (at, sep), "{text}");
                assert_eq!(compact.value.to_bits(), any.value.to_bits(), "{text}");
                assert_eq!((compact.float_text, compact.int_text), (any.float_text, any.int_text), "{text}");
            }
            let Some((short, end)) = short_number(bytes, 0) else {
                continue;
            };
            taken += 1;
            let mut at = 0;
            let any = any_number(bytes, &mut at).unwrap_or_else(|| panic!("{text}: only the short reader"));
            assert_eq!(end, at, "{text}");
            assert_eq!(short.value.to_bits(), any.value.to_bits(), "{text}");
            assert_eq!((short.float_text, short.int_text), (any.float_text, any.int_text), "{text}");
        }
        // A fair share of these are short numbers; the rest went to the general reader.
        assert!(taken > 5_000, "{taken}");
        assert!(compact_taken > 2_000, "{compact_taken}");
        assert!(short_number(b"17.99,1.5,2.25]", 0).is_some());
        assert!(short_number(b"012,3456789", 0).is_none());
        assert!(short_number(b"1.5e3,23456", 0).is_none());
        assert!(short_number(b"1.5", 0).is_none());
        // Numbers that end inside their first word are read from it alone.
        let word = |text: &[u8; 8]| u64::from_le_bytes(*text);
        let read = |text: &[u8; 8], sep: u8| {
            compact_number(word(text), sep).map(|(n, len)| (n.value, n.float_text, len))
        };
        assert_eq!(read(b"17.99,1.", b','), Some((17.99, true, 5)));
        assert_eq!(read(b"0.10]]}x", b']'), Some((0.1, false, 4)));
        assert_eq!(read(b"1.5e3,23", b','), None);
        assert_eq!(read(b"0.006399", b','), None, "the digits run to the word's end");
    }

    #[test]
    fn long_numbers_read_as_serde_json_reads_them() {
        // 16 to 19 significant digits, as numpy writes them and beyond: past the exact
        // product, so the conversion of the long form is what is checked (bit for bit).
        let schema = schema();
        let mut pick = 11u64;
        let mut next = || {
            pick = pick.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            pick >> 11
        };
        let mut taken = 0;
        for _ in 0..3000 {
            let cells: Vec<String> = (0..3)
                .map(|j| {
                    let bits = next();
                    let x = f64::from_bits(bits);
                    let scaled = if x.is_finite() { x } else { (bits >> 12) as f64 * 1e-9 };
                    match (j, bits % 4) {
                        // `b b` is an int feature: an integer of up to 19 digits.
                        (1, _) => format!("{}", bits % 10_000_000_000_000_000_000),
                        (_, 0) => format!("{scaled:?}"),
                        (_, 1) => format!("{:.17e}", scaled),
                        (_, 2) => format!("-0.{:019}", bits % 10_000_000_000_000_000_000),
                        _ => format!("{}.{:017}", bits % 1000, bits % 100_000_000_000_000_000),
                    }
                })
                .collect();
            let body = format!("{{\"data\": [[{}]]}}", cells.join(", "));
            taken += usize::from(check(&schema, &body));
        }
        assert!(taken > 1000, "{taken} of 3000 taken");
    }

    #[test]
    fn names_that_are_not_the_schemas_decline() {
        let schema = schema();
        // Bytes that are not UTF-8 never match a name: the general path refuses the body.
        let mut body = br#"{"data": [[1, 2, 3]], "names": ["a", "b b", "c"]}"#.to_vec();
        let at = body.iter().position(|&b| b == b'c').unwrap();
        body[at] = 0xff;
        assert!(decode(&schema, &body).is_none());
        let mut body = br#"[{"a": 1, "b b": 2, "c": 3}]"#.to_vec();
        body[3] = 0xc3;
        assert!(decode(&schema, &body).is_none());
        assert!(check(&schema, r#"{"names": ["a", "b b", "c"], "data": [[1, 2, 3]]}"#));
    }

    #[test]
    fn names_with_escapes_are_never_matched_as_written() {
        let f = |name: &str| Feature {
            name: name.into(),
            dtype: Dtype::Float,
            values: None,
            allow_nan: false,
            missing: false,
        };
        // A name holding a backslash, a quote or a control character is written escaped in
        // JSON; its raw bytes in the body would be another name, or no valid JSON at all.
        for name in ["back\\slash", "new\nline", "quo\"te", "tab\tbed"] {
            let schema = Schema::new(vec![f("x"), f(name)]);
            let escaped = serde_json::to_string(name).unwrap();
            // Escaped as JSON: the general path reads it; the fast path declines or agrees.
            let body = format!(r#"{{"data": [[1.5, 2.5]], "names": ["x", {escaped}]}}"#);
            let _ = check(&schema, &body);
            // The raw bytes: another name (or invalid JSON), so the fast path declines.
            let body = format!(r#"{{"data": [[1.5, 2.5]], "names": ["x", "{name}"]}}"#);
            assert!(decode(&schema, body.as_bytes()).is_none(), "{body:?}");
        }
        // A plain name, matched as written, and one that differs.
        let schema = Schema::new(vec![f("x"), f("plain name")]);
        assert!(check(&schema, r#"{"data": [[1.5, 2.5]], "names": ["x", "plain name"]}"#));
        assert!(decode(&schema, br#"{"data": [[1.5, 2.5]], "names": ["x", "plain_name"]}"#).is_none());
        assert!(decode(&schema, br#"{"data": [[1.5, 2.5]], "names": ["x", "plain name", "y"]}"#).is_none());
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
        assert!(Plan::new(&category).is_none());
    }
}
