//! The metric store: a fixed array of `AtomicU64` slots laid out as a family directory and
//! per-family open-addressing tables of series.
//!
//! Everything here works on `&'static [AtomicU64]`, so the same code runs over the master's
//! shared mapping (every worker sees the same slots) and over leaked heap memory (tests).
//!
//! Layout, in 64-bit words (see docs/metrics.md for the prose version):
//!
//! ```text
//! header      magic, total length, arena bump pointer, max series, family count
//! family list MAX_FAMILIES block offsets, in declaration order (render order)
//! directory   DIR_CAP entries of (tag, block offset): open addressing by hash of the name
//! in-flight   INFLIGHT_CAP entries of (pid, count) + one shared fallback count
//! arena       family blocks, bump-allocated: header, name, help, label names, buckets or
//!             states, the overflow series, then `capacity` series entries
//! ```
//!
//! A series entry is `tag, key length, key words..., value words...`. The tag is the key's
//! hash with the low two bits holding the state (empty, claiming, ready): a writer claims an
//! empty entry with compare-exchange, writes the key text, then stores the ready tag with
//! Release; readers load the tag with Acquire before they look at the key. Values are only
//! ever changed with atomic read-modify-write (integers) or compare-exchange (f64 bits).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mldeploy_model::atomic_add_f64 as add_f64;

/// Marks an initialised store ("mldmetr1").
const MAGIC: u64 = u64::from_le_bytes(*b"mldmetr1");

/// Most families (built-in and model-declared) a store holds.
pub(crate) const MAX_FAMILIES: usize = 128;
/// Directory entries (twice the families, so probes stay short).
const DIR_CAP: usize = 256;
/// Processes whose in-flight requests are counted apart (pids at once).
pub(crate) const INFLIGHT_CAP: usize = 256;
/// Longest label tuple, encoded (values plus one separator byte each). Longer tuples fold
/// into the overflow series.
pub(crate) const MAX_KEY_BYTES: usize = 256;
/// Words of a label tuple.
pub(crate) const MAX_KEY_WORDS: usize = MAX_KEY_BYTES / 8;
/// Ends every label value in an encoded key; never part of UTF-8 text.
pub(crate) const SEP: u8 = 0xFF;
/// The label value of the overflow series.
pub(crate) const OVERFLOW_VALUE: &str = "__overflow__";

// Header words.
const H_MAGIC: usize = 0;
const H_LEN: usize = 1;
const H_ARENA_NEXT: usize = 2;
const H_MAX_SERIES: usize = 3;
const H_FAMILY_COUNT: usize = 4;
const HEADER_WORDS: usize = 8;
const FAMILY_LIST: usize = HEADER_WORDS;
const DIRECTORY: usize = FAMILY_LIST + MAX_FAMILIES;
const INFLIGHT: usize = DIRECTORY + DIR_CAP * 2;
const INFLIGHT_FALLBACK: usize = INFLIGHT + INFLIGHT_CAP * 2;
const ARENA: usize = INFLIGHT_FALLBACK + 1;

// Family block header words (offsets relative to the block).
const F_KIND: usize = 0;
const F_LABELS: usize = 1;
const F_MAX_SERIES: usize = 2;
const F_CAPACITY: usize = 3;
const F_STRIDE: usize = 4;
const F_KEY_WORDS: usize = 5;
const F_VALUE_WORDS: usize = 6;
const F_SERIES: usize = 7;
const F_OVERFLOW_USED: usize = 8;
const F_NAME: usize = 9; // offset, byte length
const F_HELP: usize = 11;
const F_LABEL_NAMES: usize = 13;
const F_EXTRA: usize = 15; // offset, byte length (buckets: f64 bits; states: encoded text)
const F_EXTRA_COUNT: usize = 17;
const F_OVERFLOW: usize = 18;
const F_TABLE: usize = 19;
const F_HEADER_WORDS: usize = 20;

// Series entry words.
const S_TAG: usize = 0;
const S_KEY_LEN: usize = 1;
const S_KEY: usize = 2;

// Tag states (low two bits).
const CLAIMING: u64 = 1;
const READY: u64 = 2;
const DEAD: u64 = 3;
const STATE_MASK: u64 = 3;

/// Longest metric name.
pub(crate) const MAX_NAME_BYTES: usize = 200;
/// Longest help text kept (longer text is cut at a character boundary).
pub(crate) const MAX_HELP_BYTES: usize = 1024;
/// Most labels of a family.
pub(crate) const MAX_LABELS: usize = 16;
/// Most histogram buckets (plus +Inf) or enum states of a family.
pub(crate) const MAX_EXTRA: usize = 64;

/// How long a writer waits for another process to finish claiming an entry it needs before
/// giving up (the other process most likely died in the middle).
const CLAIM_WAIT: Duration = Duration::from_millis(200);

/// What a family's series hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// One `u64`, added to.
    CounterInt = 1,
    /// One `f64`, added to.
    CounterF64 = 2,
    /// One `f64`, set.
    Gauge = 3,
    /// One `u64` per bucket plus +Inf (not cumulative), then the `f64` sum.
    Histogram = 4,
    /// One `u64`: 0 for unset, `i + 1` for state `i`.
    StateSet = 5,
}

impl Kind {
    fn from_code(code: u64) -> Option<Kind> {
        Some(match code {
            1 => Kind::CounterInt,
            2 => Kind::CounterF64,
            3 => Kind::Gauge,
            4 => Kind::Histogram,
            5 => Kind::StateSet,
            _ => return None,
        })
    }
}

/// The shape of a family to declare.
#[derive(Debug, Clone)]
pub(crate) struct FamilySpec<'a> {
    pub name: &'a str,
    pub help: &'a str,
    pub kind: Kind,
    pub label_names: &'a [&'a str],
    /// Histogram upper bounds, ascending, finite (+Inf is implicit).
    pub buckets: &'a [f64],
    /// State set states.
    pub states: &'a [&'a str],
}

/// Why a declaration failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeclareError {
    /// Same name, different kind, labels, buckets or states.
    Mismatch,
    /// No room left (directory, family list or arena).
    Full,
    /// Another process claimed the name and never finished.
    Busy,
}

/// A family's fixed facts, copied out of its block once (they never change after publishing).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Family {
    pub base: usize,
    pub kind: Kind,
    pub labels: usize,
    pub max_series: u64,
    pub mask: usize,
    pub stride: usize,
    pub key_words: usize,
    pub overflow: usize,
    pub table: usize,
    pub extra: usize,
    pub extra_count: usize,
}

/// A label tuple encoded for the store: each value's bytes followed by [`SEP`], packed
/// little-endian into words. Lives on the stack; building it never allocates.
#[derive(Clone)]
pub(crate) struct Key {
    words: [u64; MAX_KEY_WORDS],
    len: usize,
    overlong: bool,
}

impl Key {
    pub fn new() -> Key {
        Key { words: [0; MAX_KEY_WORDS], len: 0, overlong: false }
    }

    /// Append one label value (and its separator).
    pub fn push(&mut self, value: &str) {
        let bytes = value.as_bytes();
        let n = bytes.len() + 1;
        if self.overlong || self.len + n > MAX_KEY_BYTES {
            self.overlong = true;
            return;
        }
        let mut pos = self.len;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.merge_word(pos, u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
            pos += 8;
        }
        // The last 0 to 7 bytes and the separator fit in one word.
        let rest = chunks.remainder();
        let mut w = u64::from(SEP) << (8 * rest.len());
        for (i, b) in rest.iter().enumerate() {
            w |= u64::from(*b) << (8 * i);
        }
        self.merge_word(pos, w);
        self.len += n;
    }

    /// Append a status code as three digits (and its separator).
    pub fn push_status(&mut self, status: u16) {
        if self.overlong || self.len + 4 > MAX_KEY_BYTES {
            self.overlong = true;
            return;
        }
        let s = u64::from(status.min(999));
        let digit = |d: u64| u64::from(b'0') + d;
        let w = digit(s / 100) | digit(s / 10 % 10) << 8 | digit(s % 10) << 16 | u64::from(SEP) << 24;
        self.merge_word(self.len, w);
        self.len += 4;
    }

    /// OR the eight bytes of `w` in at byte position `pos` (which may straddle two words);
    /// the bytes of `w` past what is being written are zero.
    fn merge_word(&mut self, pos: usize, w: u64) {
        let at = pos / 8;
        let shift = (pos & 7) * 8;
        if let Some(word) = self.words.get_mut(at) {
            *word |= w << shift;
        }
        if shift != 0 {
            if let Some(word) = self.words.get_mut(at + 1) {
                *word |= w >> (64 - shift);
            }
        }
    }

    pub fn words(&self) -> &[u64] {
        &self.words[..self.len.div_ceil(8)]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_overlong(&self) -> bool {
        self.overlong
    }

    fn hash(&self) -> u64 {
        hash_words(self.words(), self.len as u64)
    }
}

/// A word-at-a-time multiplicative hash with a final avalanche.
fn hash_words(words: &[u64], len: u64) -> u64 {
    let mut h = len.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for &w in words {
        h = (h.rotate_left(5) ^ w).wrapping_mul(0x517C_C1B7_2722_0A95);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    h = h.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    h ^ (h >> 33)
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut words = [0u64; MAX_NAME_BYTES.div_ceil(8)];
    for (i, b) in bytes.iter().take(MAX_NAME_BYTES).enumerate() {
        words[i / 8] |= u64::from(*b) << ((i % 8) * 8);
    }
    hash_words(&words[..bytes.len().min(MAX_NAME_BYTES).div_ceil(8)], bytes.len() as u64)
}

/// Words a byte string takes.
fn words_for(bytes: usize) -> usize {
    bytes.div_ceil(8)
}

/// Table size for `max_series` claimed series: a power of two at least twice as large, so
/// linear probes stay short.
fn capacity_for(max_series: usize) -> usize {
    (max_series.max(1) * 2).next_power_of_two()
}

fn value_words(kind: Kind, extra_count: usize) -> usize {
    match kind {
        Kind::Histogram => extra_count + 2,
        _ => 1,
    }
}

/// Words the block of `spec` takes with `max_series` series.
pub(crate) fn block_words(spec: &FamilySpec<'_>, max_series: usize) -> usize {
    let (_, capacity, key_words) = table_shape(spec, max_series);
    let stride = S_KEY + key_words + value_words(spec.kind, spec.buckets.len());
    F_HEADER_WORDS
        + words_for(spec.name.len())
        + words_for(help_cut(spec.help).len())
        + words_for(encoded_len(spec.label_names))
        + extra_words(spec)
        + stride * (capacity + 1)
}

fn table_shape(spec: &FamilySpec<'_>, max_series: usize) -> (usize, usize, usize) {
    if spec.label_names.is_empty() {
        (1, 1, 0)
    } else {
        (max_series, capacity_for(max_series), MAX_KEY_WORDS)
    }
}

fn extra_words(spec: &FamilySpec<'_>) -> usize {
    match spec.kind {
        Kind::Histogram => spec.buckets.len(),
        Kind::StateSet => words_for(encoded_len(spec.states)),
        _ => 0,
    }
}

fn encoded_len(values: &[&str]) -> usize {
    values.iter().map(|v| v.len() + 1).sum()
}

/// `help` cut to [`MAX_HELP_BYTES`] at a character boundary.
fn help_cut(help: &str) -> &str {
    if help.len() <= MAX_HELP_BYTES {
        return help;
    }
    let mut end = MAX_HELP_BYTES;
    while !help.is_char_boundary(end) {
        end -= 1;
    }
    &help[..end]
}

/// Words a store needs for the directory, the in-flight table and `arena_words` of families.
pub(crate) fn store_words(arena_words: usize) -> usize {
    ARENA + arena_words
}

/// The metric store over a slot array.
#[derive(Clone, Copy)]
pub(crate) struct Store {
    slots: &'static [AtomicU64],
}

impl Store {
    /// Initialise zeroed slots (once, before anyone else uses them).
    pub fn init(slots: &'static [AtomicU64], max_series: usize) -> Store {
        assert!(slots.len() > ARENA, "metric store too small");
        slots[H_LEN].store(slots.len() as u64, Ordering::Relaxed);
        slots[H_ARENA_NEXT].store(ARENA as u64, Ordering::Relaxed);
        slots[H_MAX_SERIES].store(max_series as u64, Ordering::Relaxed);
        slots[H_MAGIC].store(MAGIC, Ordering::Release);
        Store { slots }
    }

    fn w(&self, i: usize) -> &'static AtomicU64 {
        &self.slots[i]
    }

    fn get(&self, i: usize) -> u64 {
        self.slots[i].load(Ordering::Relaxed)
    }

    fn get_usize(&self, i: usize) -> usize {
        usize::try_from(self.get(i)).unwrap_or(usize::MAX)
    }

    fn set(&self, i: usize, v: u64) {
        self.slots[i].store(v, Ordering::Relaxed);
    }

    pub fn max_series(&self) -> usize {
        self.get_usize(H_MAX_SERIES)
    }

    // ---- bytes in words ------------------------------------------------------------------

    fn write_bytes(&self, at: usize, bytes: &[u8]) {
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.set(at + i, u64::from_le_bytes(b));
        }
    }

    fn read_bytes(&self, at: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for i in 0..words_for(len) {
            out.extend_from_slice(&self.get(at + i).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn bytes_equal(&self, at: usize, bytes: &[u8]) -> bool {
        bytes.chunks(8).enumerate().all(|(i, chunk)| {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.get(at + i) == u64::from_le_bytes(b)
        })
    }

    fn write_encoded(&self, at: usize, values: &[&str]) {
        let mut bytes = Vec::with_capacity(encoded_len(values));
        for v in values {
            bytes.extend_from_slice(v.as_bytes());
            bytes.push(SEP);
        }
        self.write_bytes(at, &bytes);
    }

    // ---- families ------------------------------------------------------------------------

    /// Declare a family, or find the identical one declared before (by any process).
    pub fn declare(&self, spec: &FamilySpec<'_>) -> Result<Family, DeclareError> {
        let name_hash = hash_bytes(spec.name.as_bytes());
        let want = name_hash & !STATE_MASK;
        let mask = DIR_CAP - 1;
        for i in 0..DIR_CAP {
            let entry = DIRECTORY + ((name_hash as usize).wrapping_add(i) & mask) * 2;
            let mut tag = self.w(entry).load(Ordering::Acquire);
            if tag == 0 {
                match self.w(entry).compare_exchange(0, want | CLAIMING, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        return match self.build_block(spec) {
                            Some(base) => {
                                self.set(entry + 1, base as u64);
                                self.w(entry).store(want | READY, Ordering::Release);
                                Ok(self.family_at(base))
                            }
                            None => {
                                self.w(entry).store(want | DEAD, Ordering::Release);
                                Err(DeclareError::Full)
                            }
                        };
                    }
                    Err(seen) => tag = seen,
                }
            }
            if tag & !STATE_MASK != want {
                continue;
            }
            if tag & STATE_MASK == CLAIMING {
                tag = self.wait_ready(entry, Duration::from_secs(1));
            }
            match tag & STATE_MASK {
                READY => {
                    let base = self.get_usize(entry + 1);
                    if self.name_is(base, spec.name) {
                        return if self.same_shape(base, spec) {
                            Ok(self.family_at(base))
                        } else {
                            Err(DeclareError::Mismatch)
                        };
                    }
                }
                CLAIMING => return Err(DeclareError::Busy),
                _ => {}
            }
        }
        Err(DeclareError::Full)
    }

    /// A declared family by name.
    pub fn lookup(&self, name: &str) -> Option<Family> {
        let name_hash = hash_bytes(name.as_bytes());
        let want = name_hash & !STATE_MASK;
        let mask = DIR_CAP - 1;
        for i in 0..DIR_CAP {
            let entry = DIRECTORY + ((name_hash as usize).wrapping_add(i) & mask) * 2;
            let tag = self.w(entry).load(Ordering::Acquire);
            if tag == 0 {
                return None;
            }
            if tag == want | READY {
                let base = self.get_usize(entry + 1);
                if self.name_is(base, name) {
                    return Some(self.family_at(base));
                }
            }
        }
        None
    }

    /// Every published family, in declaration order.
    pub fn families(&self) -> Vec<Family> {
        let n = self.get_usize(H_FAMILY_COUNT).min(MAX_FAMILIES);
        (0..n)
            .filter_map(|i| match self.w(FAMILY_LIST + i).load(Ordering::Acquire) {
                0 => None,
                base => Some(self.family_at(usize::try_from(base).ok()?)),
            })
            .collect()
    }

    /// Spin, then yield, until the tag at `at` leaves the claiming state or `limit` passes.
    fn wait_ready(&self, at: usize, limit: Duration) -> u64 {
        for _ in 0..1000 {
            let tag = self.w(at).load(Ordering::Acquire);
            if tag & STATE_MASK != CLAIMING {
                return tag;
            }
            std::hint::spin_loop();
        }
        let end = Instant::now() + limit;
        loop {
            let tag = self.w(at).load(Ordering::Acquire);
            if tag & STATE_MASK != CLAIMING || Instant::now() >= end {
                return tag;
            }
            std::thread::yield_now();
        }
    }

    /// Take `words` from the arena; `None` when it does not fit.
    fn alloc(&self, words: usize) -> Option<usize> {
        let next = self.w(H_ARENA_NEXT);
        let mut cur = next.load(Ordering::Relaxed);
        loop {
            let start = usize::try_from(cur).ok()?;
            let end = start.checked_add(words)?;
            if end > self.slots.len() {
                return None;
            }
            match next.compare_exchange_weak(cur, end as u64, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some(start),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Allocate and fill a family block, publish it in the family list; returns its base.
    fn build_block(&self, spec: &FamilySpec<'_>) -> Option<usize> {
        let slot = self.w(H_FAMILY_COUNT).fetch_add(1, Ordering::Relaxed);
        let slot = usize::try_from(slot).ok().filter(|s| *s < MAX_FAMILIES)?;
        let max_series = self.max_series();
        let base = self.alloc(block_words(spec, max_series))?;
        let (max_series, capacity, key_words) = table_shape(spec, max_series);
        let extra_count = match spec.kind {
            Kind::Histogram => spec.buckets.len(),
            Kind::StateSet => spec.states.len(),
            _ => 0,
        };
        let values = value_words(spec.kind, extra_count);
        let stride = S_KEY + key_words + values;
        let help = help_cut(spec.help);

        let mut at = base + F_HEADER_WORDS;
        let mut section = |bytes: usize| {
            let start = at;
            at += words_for(bytes);
            start
        };
        let name_at = section(spec.name.len());
        let help_at = section(help.len());
        let labels_at = section(encoded_len(spec.label_names));
        let extra_bytes = match spec.kind {
            Kind::Histogram => spec.buckets.len() * 8,
            Kind::StateSet => encoded_len(spec.states),
            _ => 0,
        };
        let extra_at = section(extra_bytes);
        let overflow_at = at;
        let table_at = overflow_at + stride;

        self.set(base + F_KIND, spec.kind as u64);
        self.set(base + F_LABELS, spec.label_names.len() as u64);
        self.set(base + F_MAX_SERIES, max_series as u64);
        self.set(base + F_CAPACITY, capacity as u64);
        self.set(base + F_STRIDE, stride as u64);
        self.set(base + F_KEY_WORDS, key_words as u64);
        self.set(base + F_VALUE_WORDS, values as u64);
        self.set(base + F_NAME, (name_at - base) as u64);
        self.set(base + F_NAME + 1, spec.name.len() as u64);
        self.set(base + F_HELP, (help_at - base) as u64);
        self.set(base + F_HELP + 1, help.len() as u64);
        self.set(base + F_LABEL_NAMES, (labels_at - base) as u64);
        self.set(base + F_LABEL_NAMES + 1, encoded_len(spec.label_names) as u64);
        self.set(base + F_EXTRA, (extra_at - base) as u64);
        self.set(base + F_EXTRA + 1, extra_bytes as u64);
        self.set(base + F_EXTRA_COUNT, extra_count as u64);
        self.set(base + F_OVERFLOW, (overflow_at - base) as u64);
        self.set(base + F_TABLE, (table_at - base) as u64);
        self.write_bytes(name_at, spec.name.as_bytes());
        self.write_bytes(help_at, help.as_bytes());
        self.write_encoded(labels_at, spec.label_names);
        match spec.kind {
            Kind::Histogram => {
                for (i, b) in spec.buckets.iter().enumerate() {
                    self.set(extra_at + i, b.to_bits());
                }
            }
            Kind::StateSet => self.write_encoded(extra_at, spec.states),
            _ => {}
        }
        // The overflow series: every label value is OVERFLOW_VALUE. Families without labels
        // have a single series and never overflow.
        if !spec.label_names.is_empty() {
            let mut key = Key::new();
            for _ in spec.label_names {
                key.push(OVERFLOW_VALUE);
            }
            self.set(overflow_at + S_KEY_LEN, key.len() as u64);
            for (i, w) in key.words().iter().enumerate() {
                self.set(overflow_at + S_KEY + i, *w);
            }
            self.set(overflow_at + S_TAG, READY);
        }
        self.w(FAMILY_LIST + slot).store(base as u64, Ordering::Release);
        Some(base)
    }

    fn family_at(&self, base: usize) -> Family {
        let off = |i| base + self.get_usize(base + i);
        Family {
            base,
            kind: Kind::from_code(self.get(base + F_KIND)).unwrap_or(Kind::Gauge),
            labels: self.get_usize(base + F_LABELS),
            max_series: self.get(base + F_MAX_SERIES),
            mask: self.get_usize(base + F_CAPACITY).saturating_sub(1),
            stride: self.get_usize(base + F_STRIDE),
            key_words: self.get_usize(base + F_KEY_WORDS),
            overflow: off(F_OVERFLOW),
            table: off(F_TABLE),
            extra: off(F_EXTRA),
            extra_count: self.get_usize(base + F_EXTRA_COUNT),
        }
    }

    fn section(&self, base: usize, field: usize) -> (usize, usize) {
        (base + self.get_usize(base + field), self.get_usize(base + field + 1))
    }

    fn name_is(&self, base: usize, name: &str) -> bool {
        let (at, len) = self.section(base, F_NAME);
        len == name.len() && self.bytes_equal(at, name.as_bytes())
    }

    fn same_shape(&self, base: usize, spec: &FamilySpec<'_>) -> bool {
        let f = self.family_at(base);
        if f.kind != spec.kind || f.labels != spec.label_names.len() {
            return false;
        }
        if self.label_names(&f) != spec.label_names {
            return false;
        }
        match spec.kind {
            Kind::Histogram => {
                f.extra_count == spec.buckets.len()
                    && spec.buckets.iter().enumerate().all(|(i, b)| self.get(f.extra + i) == b.to_bits())
            }
            Kind::StateSet => self.states(&f) == spec.states,
            _ => true,
        }
    }

    pub fn name(&self, f: &Family) -> String {
        let (at, len) = self.section(f.base, F_NAME);
        String::from_utf8_lossy(&self.read_bytes(at, len)).into_owned()
    }

    pub fn help(&self, f: &Family) -> String {
        let (at, len) = self.section(f.base, F_HELP);
        String::from_utf8_lossy(&self.read_bytes(at, len)).into_owned()
    }

    pub fn label_names(&self, f: &Family) -> Vec<String> {
        let (at, len) = self.section(f.base, F_LABEL_NAMES);
        decode(&self.read_bytes(at, len))
    }

    pub fn states(&self, f: &Family) -> Vec<String> {
        if f.kind != Kind::StateSet {
            return Vec::new();
        }
        let (at, len) = self.section(f.base, F_EXTRA);
        decode(&self.read_bytes(at, len))
    }

    pub fn buckets(&self, f: &Family) -> Vec<f64> {
        if f.kind != Kind::Histogram {
            return Vec::new();
        }
        (0..f.extra_count).map(|i| f64::from_bits(self.get(f.extra + i))).collect()
    }

    /// Number of a state, if `f` has it.
    pub fn state_index(&self, f: &Family, state: &str) -> Option<usize> {
        // Walk the encoded states without allocating.
        let (at, len) = self.section(f.base, F_EXTRA);
        let mut index = 0;
        let mut pos = 0; // byte position in the encoded text
        let mut matched = 0usize; // bytes of `state` matched so far in the current state
        let mut ok = true;
        let wanted = state.as_bytes();
        while pos < len {
            let b = (self.get(at + pos / 8) >> ((pos % 8) * 8)) as u8;
            if b == SEP {
                if ok && matched == wanted.len() {
                    return Some(index);
                }
                index += 1;
                matched = 0;
                ok = true;
            } else {
                ok = ok && matched < wanted.len() && wanted[matched] == b;
                matched += 1;
            }
            pos += 1;
        }
        None
    }

    // ---- series --------------------------------------------------------------------------

    /// The entry of `key` in `f`, claiming it if new; the overflow entry when the family is
    /// full, the key too long, or a claim by another process never finished.
    pub fn series(&self, f: &Family, key: &Key) -> usize {
        if f.labels == 0 {
            return f.table;
        }
        if key.is_overlong() || key.len() > f.key_words * 8 {
            return self.overflowed(f);
        }
        let hash = key.hash();
        let want = hash & !STATE_MASK;
        for i in 0..=f.mask {
            let entry = f.table + ((hash as usize).wrapping_add(i) & f.mask) * f.stride;
            let mut tag = self.w(entry + S_TAG).load(Ordering::Acquire);
            if tag == 0 {
                if !self.reserve(f) {
                    return self.overflowed(f);
                }
                match self.w(entry + S_TAG).compare_exchange(
                    0,
                    want | CLAIMING,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.set(entry + S_KEY_LEN, key.len() as u64);
                        for (j, w) in key.words().iter().enumerate() {
                            self.set(entry + S_KEY + j, *w);
                        }
                        self.w(entry + S_TAG).store(want | READY, Ordering::Release);
                        return entry;
                    }
                    Err(seen) => {
                        self.w(f.base + F_SERIES).fetch_sub(1, Ordering::Relaxed);
                        tag = seen;
                    }
                }
            }
            if tag & !STATE_MASK != want {
                continue;
            }
            if tag & STATE_MASK == CLAIMING {
                tag = self.wait_ready(entry + S_TAG, CLAIM_WAIT);
                if tag & STATE_MASK == CLAIMING {
                    return self.overflowed(f);
                }
            }
            if self.key_is(entry, key) {
                return entry;
            }
        }
        self.overflowed(f)
    }

    /// Reserve room for one more series; false at the family's limit.
    fn reserve(&self, f: &Family) -> bool {
        let count = self.w(f.base + F_SERIES);
        let mut cur = count.load(Ordering::Relaxed);
        loop {
            if cur >= f.max_series {
                return false;
            }
            match count.compare_exchange_weak(cur, cur + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(seen) => cur = seen,
            }
        }
    }

    fn overflowed(&self, f: &Family) -> usize {
        let used = self.w(f.base + F_OVERFLOW_USED);
        if used.load(Ordering::Relaxed) == 0 {
            used.store(1, Ordering::Relaxed);
        }
        f.overflow
    }

    fn key_is(&self, entry: usize, key: &Key) -> bool {
        let words = key.words();
        let Some(stored) = self.slots.get(entry + S_KEY_LEN..entry + S_KEY + words.len()) else {
            return false;
        };
        stored[0].load(Ordering::Relaxed) == key.len() as u64
            && stored[1..].iter().zip(words).all(|(s, w)| s.load(Ordering::Relaxed) == *w)
    }

    /// The ready series of `f` as (label values, entry), plus the overflow series if used.
    pub fn series_list(&self, f: &Family) -> Vec<(Vec<String>, usize)> {
        let mut out = Vec::new();
        if f.labels == 0 {
            out.push((Vec::new(), f.table));
            return out;
        }
        for i in 0..=f.mask {
            let entry = f.table + i * f.stride;
            if self.w(entry + S_TAG).load(Ordering::Acquire) & STATE_MASK == READY {
                out.push((self.key_values(entry), entry));
            }
        }
        out.sort();
        if self.get(f.base + F_OVERFLOW_USED) != 0 {
            out.push((self.key_values(f.overflow), f.overflow));
        }
        out
    }

    fn key_values(&self, entry: usize) -> Vec<String> {
        let len = self.get_usize(entry + S_KEY_LEN).min(MAX_KEY_BYTES);
        decode(&self.read_bytes(entry + S_KEY, len))
    }

    // ---- values --------------------------------------------------------------------------

    fn value(&self, f: &Family, entry: usize, i: usize) -> &'static AtomicU64 {
        self.w(entry + S_KEY + f.key_words + i)
    }

    pub fn add_int(&self, f: &Family, entry: usize, n: u64) {
        self.value(f, entry, 0).fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_f64(&self, f: &Family, entry: usize, x: f64) {
        add_f64(self.value(f, entry, 0), x);
    }

    pub fn set_f64(&self, f: &Family, entry: usize, x: f64) {
        self.value(f, entry, 0).store(x.to_bits(), Ordering::Relaxed);
    }

    pub fn set_int(&self, f: &Family, entry: usize, n: u64) {
        self.value(f, entry, 0).store(n, Ordering::Relaxed);
    }

    pub fn observe(&self, f: &Family, entry: usize, x: f64) {
        let mut bucket = f.extra_count;
        for i in 0..f.extra_count {
            if x <= f64::from_bits(self.get(f.extra + i)) {
                bucket = i;
                break;
            }
        }
        self.value(f, entry, bucket).fetch_add(1, Ordering::Relaxed);
        add_f64(self.value(f, entry, f.extra_count + 1), x);
    }

    pub fn get_int(&self, f: &Family, entry: usize) -> u64 {
        self.value(f, entry, 0).load(Ordering::Relaxed)
    }

    pub fn get_f64(&self, f: &Family, entry: usize) -> f64 {
        f64::from_bits(self.get_int(f, entry))
    }

    /// Per-bucket counts (not cumulative, +Inf last) and the sum.
    pub fn histogram(&self, f: &Family, entry: usize) -> (Vec<u64>, f64) {
        let counts = (0..=f.extra_count).map(|i| self.value(f, entry, i).load(Ordering::Relaxed)).collect();
        let sum = f64::from_bits(self.value(f, entry, f.extra_count + 1).load(Ordering::Relaxed));
        (counts, sum)
    }

    // ---- in-flight requests by process ---------------------------------------------------

    /// The in-flight count word of process `pid`: its own entry (claimed now; a stale entry of
    /// a dead process with the same pid is reset), or the shared fallback when the table is full.
    pub fn inflight_claim(&self, pid: u32, alive: impl Fn(u32) -> bool) -> &'static AtomicU64 {
        let pid = u64::from(pid);
        for i in 0..INFLIGHT_CAP {
            let e = INFLIGHT + i * 2;
            if self.w(e).load(Ordering::Acquire) == pid {
                self.w(e + 1).store(0, Ordering::Relaxed);
                return self.w(e + 1);
            }
        }
        for i in 0..INFLIGHT_CAP {
            let e = INFLIGHT + i * 2;
            if self.w(e).compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.w(e + 1).store(0, Ordering::Relaxed);
                return self.w(e + 1);
            }
        }
        // Full: take over the entry of a process that is gone.
        for i in 0..INFLIGHT_CAP {
            let e = INFLIGHT + i * 2;
            let old = self.get(e);
            if old != 0
                && !alive(old as u32)
                && self.w(e).compare_exchange(old, pid, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                self.w(e + 1).store(0, Ordering::Relaxed);
                return self.w(e + 1);
            }
        }
        self.w(INFLIGHT_FALLBACK)
    }

    /// Forget the in-flight count of a process that ended.
    pub fn inflight_release(&self, pid: u32) {
        let pid = u64::from(pid);
        for i in 0..INFLIGHT_CAP {
            let e = INFLIGHT + i * 2;
            if self.get(e) == pid {
                self.w(e + 1).store(0, Ordering::Relaxed);
                let _ = self.w(e).compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    /// Requests in flight over every live process.
    pub fn inflight_total(&self, alive: impl Fn(u32) -> bool) -> i64 {
        let mut total = self.get(INFLIGHT_FALLBACK) as i64;
        for i in 0..INFLIGHT_CAP {
            let e = INFLIGHT + i * 2;
            let pid = self.w(e).load(Ordering::Acquire);
            if pid != 0 && alive(pid as u32) {
                total = total.wrapping_add(self.get(e + 1) as i64);
            }
        }
        total
    }
}

/// Split encoded text into its values.
fn decode(bytes: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, b) in bytes.iter().enumerate() {
        if *b == SEP {
            out.push(String::from_utf8_lossy(&bytes[start..i]).into_owned());
            start = i + 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(n: usize) -> &'static [AtomicU64] {
        let v: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
        Box::leak(v.into_boxed_slice())
    }

    #[test]
    fn keys_pack_values_with_separators() {
        let mut k = Key::new();
        k.push("GET");
        k.push_status(200);
        k.push("abcdefghij");
        k.push("");
        assert_eq!(k.len(), 4 + 4 + 11 + 1);
        let mut bytes = Vec::new();
        for w in k.words() {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        bytes.truncate(k.len());
        assert_eq!(bytes, b"GET\xff200\xffabcdefghij\xff\xff");
        assert_eq!(decode(&bytes), vec!["GET", "200", "abcdefghij", ""]);
        // A cloned prefix continues like values pushed in one go.
        let mut model = Key::new();
        model.push("model-name");
        model.push("1.0");
        let mut joined = model.clone();
        joined.push("POST");
        let mut direct = Key::new();
        for v in ["model-name", "1.0", "POST"] {
            direct.push(v);
        }
        assert_eq!(joined.words(), direct.words());
        assert_eq!(joined.len(), direct.len());
        let mut long = Key::new();
        long.push(&"x".repeat(MAX_KEY_BYTES));
        assert!(long.is_overlong());
        let mut exact = Key::new();
        exact.push(&"x".repeat(MAX_KEY_BYTES - 1));
        assert!(!exact.is_overlong());
        exact.push_status(200);
        assert!(exact.is_overlong());
    }

    #[test]
    fn declare_is_idempotent_and_checks_shape() {
        let s = Store::init(slots(store_words(100_000)), 4);
        let spec = FamilySpec {
            name: "x_seconds",
            help: "h",
            kind: Kind::Histogram,
            label_names: &["a"],
            buckets: &[0.1, 1.0],
            states: &[],
        };
        let a = s.declare(&spec).unwrap();
        let b = s.declare(&spec).unwrap();
        assert_eq!(a.base, b.base);
        let other = FamilySpec { buckets: &[0.1, 2.0], ..spec.clone() };
        assert_eq!(s.declare(&other).unwrap_err(), DeclareError::Mismatch);
        assert_eq!(s.lookup("x_seconds").unwrap().base, a.base);
        assert!(s.lookup("y").is_none());
        assert_eq!(s.buckets(&a), vec![0.1, 1.0]);
        assert_eq!(s.label_names(&a), vec!["a".to_string()]);
        assert_eq!(s.families().len(), 1);
    }

    #[test]
    fn state_index_finds_exact_states() {
        let s = Store::init(slots(store_words(10_000)), 4);
        let spec = FamilySpec {
            name: "st",
            help: "",
            kind: Kind::StateSet,
            label_names: &[],
            buckets: &[],
            states: &["ab", "a", "abc"],
        };
        let f = s.declare(&spec).unwrap();
        assert_eq!(s.state_index(&f, "a"), Some(1));
        assert_eq!(s.state_index(&f, "ab"), Some(0));
        assert_eq!(s.state_index(&f, "abc"), Some(2));
        assert_eq!(s.state_index(&f, "abcd"), None);
        assert_eq!(s.state_index(&f, ""), None);
    }

    #[test]
    fn arena_exhaustion_is_an_error_not_a_panic() {
        let s = Store::init(slots(store_words(64)), 4);
        let spec = FamilySpec {
            name: "big",
            help: "",
            kind: Kind::Gauge,
            label_names: &["a"],
            buckets: &[],
            states: &[],
        };
        assert_eq!(s.declare(&spec).unwrap_err(), DeclareError::Full);
        // The name stays unusable but lookups and other declarations still work.
        assert!(s.lookup("big").is_none());
        let small = FamilySpec { name: "small", label_names: &[], ..spec };
        assert!(s.declare(&small).is_ok());
    }
}
