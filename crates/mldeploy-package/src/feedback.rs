//! Feedback figures kept in the shared slots, so that they add up over every worker.
//!
//! Slot layout (each slot an `AtomicU64`):
//! - slot 0, the owner word: `0` free, `1` being claimed, otherwise the fingerprint of the
//!   model whose figures the slots hold (a hash of name, version, kind and output labels);
//! - slots 1..8: reserved;
//! - from slot 8, the figures. A classifier with `k` classes keeps its confusion matrix,
//!   `k * k` counts, row = true class, column = predicted class (as sklearn's
//!   `confusion_matrix`). A regressor keeps `n` (integer), then as `f64` bits: the sum of
//!   absolute errors, the sum of squared errors, the sum of `y - c` and of `(y - c)^2`, and
//!   `c`, a shift (the first `y_true` ever received) that keeps the R² sums accurate.
//!
//! A model loading into slots owned by its own fingerprint (another worker, a restarted
//! worker) uses the figures already there. A model with a different fingerprint claims the
//! slots: it swaps the owner word to "being claimed", zeroes the figures, then writes its
//! fingerprint. Workers still running the previous model see the owner word change and stop
//! recording (one feedback call racing the switch may still land; nothing else mixes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mldeploy_model::{MetricValue, SharedSlots};

use crate::error::Error;

const OWNER: usize = 0;
const CLAIMING: u64 = 1;
/// Slots before the figures.
pub(crate) const HEADER: usize = 8;
const REGRESSOR_SLOTS: usize = 6;
/// How long a loader waits for another process to finish claiming before taking over (the
/// claimer only zeroes a few slots, so a longer wait means it died).
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// Which figures a model keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Classifier { classes: usize },
    Regressor,
}

impl Layout {
    fn len(self) -> usize {
        match self {
            Layout::Classifier { classes } => classes * classes,
            Layout::Regressor => REGRESSOR_SLOTS,
        }
    }
}

/// FNV-1a over the parts, never 0 (free) or `CLAIMING`.
pub(crate) fn fingerprint(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    if h <= CLAIMING {
        h + 2
    } else {
        h
    }
}

/// Classifier figures read from the slots.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierFigures {
    /// Rows received.
    pub rows: u64,
    /// Share of rows whose prediction was right.
    pub accuracy: f64,
    /// Binary: precision of the second class; multiclass: macro average.
    pub precision: f64,
    /// Binary: recall of the second class; multiclass: macro average.
    pub recall: f64,
    /// Binary: F1 of the second class; multiclass: macro average of the per-class F1.
    pub f1: f64,
}

/// Regressor figures read from the slots.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressorFigures {
    /// Rows received.
    pub rows: u64,
    /// Mean absolute error.
    pub mae: f64,
    /// Root mean squared error.
    pub rmse: f64,
    /// Coefficient of determination; `None` with fewer than two rows (undefined, as sklearn).
    pub r2: Option<f64>,
}

/// The figures of all feedback received so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Figures {
    /// A classifier's.
    Classifier(ClassifierFigures),
    /// A regressor's.
    Regressor(RegressorFigures),
}

impl Figures {
    /// Rows received.
    pub fn rows(&self) -> u64 {
        match self {
            Figures::Classifier(c) => c.rows,
            Figures::Regressor(r) => r.rows,
        }
    }

    /// The figures as `(list_metrics name, scrape suffix, help, value)`; nothing when no
    /// row was received (every figure is undefined then).
    pub(crate) fn named(&self) -> Vec<(&'static str, &'static str, &'static str, f64)> {
        if self.rows() == 0 {
            return Vec::new();
        }
        match self {
            Figures::Classifier(c) => vec![
                ("accuracy", "accuracy", "Share of feedback rows predicted right.", c.accuracy),
                (
                    "precision",
                    "precision",
                    "Precision over all feedback (binary: second class; else macro).",
                    c.precision,
                ),
                (
                    "recall",
                    "recall",
                    "Recall over all feedback (binary: second class; else macro).",
                    c.recall,
                ),
                ("F1", "f1", "F1 score over all feedback (binary: second class; else macro).", c.f1),
            ],
            Figures::Regressor(r) => {
                let mut v = vec![
                    ("MAE", "mae", "Mean absolute error over all feedback.", r.mae),
                    ("RMSE", "rmse", "Root mean squared error over all feedback.", r.rmse),
                ];
                if let Some(r2) = r.r2 {
                    v.push(("R2", "r2", "Coefficient of determination over all feedback.", r2));
                }
                v
            }
        }
    }

    /// The figures as GAUGE metric values for `list_metrics`.
    pub fn metric_values(&self) -> Vec<MetricValue> {
        self.named().into_iter().map(|(name, _, _, v)| MetricValue::gauge(name, v)).collect()
    }
}

/// This model's figures in the shared slots.
#[derive(Debug, Clone)]
pub(crate) struct FeedbackStore {
    slots: SharedSlots,
    fingerprint: u64,
    layout: Layout,
}

impl FeedbackStore {
    /// Take the slots for the model `fingerprint`, keeping figures it recorded before.
    pub(crate) fn attach(slots: SharedSlots, fingerprint: u64, layout: Layout) -> Result<Self, Error> {
        let need = HEADER + layout.len();
        if slots.len() < need {
            return Err(Error::Slots(format!(
                "this model needs {need} shared slots but the server provides {}",
                slots.len()
            )));
        }
        let store = FeedbackStore { slots, fingerprint, layout };
        store.claim()?;
        Ok(store)
    }

    fn owner(&self) -> &AtomicU64 {
        &self.slots.slots()[OWNER]
    }

    fn claim(&self) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            let current = self.owner().load(Ordering::Acquire);
            if current == self.fingerprint {
                return Ok(());
            }
            let waited = start.elapsed();
            if current == CLAIMING && waited < CLAIM_WAIT {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            if waited > 2 * CLAIM_WAIT {
                return Err(Error::Slots("the shared slots keep changing owner; cannot claim them".into()));
            }
            if self.owner().compare_exchange(current, CLAIMING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                for slot in &self.slots.slots()[HEADER..HEADER + self.layout.len()] {
                    slot.store(0, Ordering::Relaxed);
                }
                self.owner().store(self.fingerprint, Ordering::Release);
                return Ok(());
            }
        }
    }

    /// Whether the slots still hold this model's figures.
    pub(crate) fn is_current(&self) -> bool {
        self.owner().load(Ordering::Acquire) == self.fingerprint
    }

    /// Count `(true class, predicted class)` pairs. False when the slots belong to another
    /// model now (nothing recorded).
    pub(crate) fn record_classes(&self, pairs: &[(usize, usize)]) -> bool {
        let Layout::Classifier { classes } = self.layout else { return false };
        if !self.is_current() {
            return false;
        }
        let mut counts: HashMap<usize, u64> = HashMap::new();
        for &(t, p) in pairs {
            *counts.entry(t * classes + p).or_default() += 1;
        }
        for (cell, n) in counts {
            self.slots.add(HEADER + cell, n);
        }
        true
    }

    /// Record `(y_true, y_predicted)` pairs. False when the slots belong to another model now.
    pub(crate) fn record_values(&self, pairs: &[(f64, f64)]) -> bool {
        if self.layout != Layout::Regressor || !self.is_current() {
            return false;
        }
        if pairs.is_empty() {
            return true;
        }
        let shift = self.shift(pairs[0].0);
        let (mut abs, mut sq, mut sy, mut syy) = (0.0, 0.0, 0.0, 0.0);
        for &(y, p) in pairs {
            let e = y - p;
            abs += e.abs();
            sq += e * e;
            let d = y - shift;
            sy += d;
            syy += d * d;
        }
        self.slots.add_f64(HEADER + 1, abs);
        self.slots.add_f64(HEADER + 2, sq);
        self.slots.add_f64(HEADER + 3, sy);
        self.slots.add_f64(HEADER + 4, syy);
        self.slots.add(HEADER, pairs.len() as u64);
        true
    }

    /// The R² shift: set once by the first recorder, read by all. Zero bits mean "not set",
    /// so a shift of 0.0 is stored as -0.0.
    fn shift(&self, candidate: f64) -> f64 {
        let slot = &self.slots.slots()[HEADER + 5];
        let bits = if candidate.to_bits() == 0 { (-0.0f64).to_bits() } else { candidate.to_bits() };
        match slot.compare_exchange(0, bits, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => candidate,
            Err(existing) => f64::from_bits(existing),
        }
    }

    /// The figures of every row recorded; `None` when the slots belong to another model.
    pub(crate) fn figures(&self) -> Option<Figures> {
        if !self.is_current() {
            return None;
        }
        Some(match self.layout {
            Layout::Classifier { classes } => Figures::Classifier(self.classifier_figures(classes)),
            Layout::Regressor => Figures::Regressor(self.regressor_figures()),
        })
    }

    fn classifier_figures(&self, k: usize) -> ClassifierFigures {
        let cell = |t: usize, p: usize| self.slots.get(HEADER + t * k + p);
        let mut rows = 0;
        let mut correct = 0;
        let mut tp = vec![0u64; k];
        let mut predicted = vec![0u64; k];
        let mut actual = vec![0u64; k];
        for (t, actual_t) in actual.iter_mut().enumerate() {
            for (p, predicted_p) in predicted.iter_mut().enumerate() {
                let n = cell(t, p);
                rows += n;
                *predicted_p += n;
                *actual_t += n;
                if t == p {
                    correct += n;
                    tp[t] += n;
                }
            }
        }
        let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let per_class = |c: usize| {
            (ratio(tp[c], predicted[c]), ratio(tp[c], actual[c]), ratio(2 * tp[c], predicted[c] + actual[c]))
        };
        let (precision, recall, f1) = if k == 2 {
            per_class(1)
        } else {
            // Macro average over the classes that occur in the labels or the predictions, as
            // sklearn does when it is not given the label list.
            let present: Vec<usize> = (0..k).filter(|&c| predicted[c] + actual[c] > 0).collect();
            let n = present.len().max(1) as f64;
            let sums = present
                .iter()
                .map(|&c| per_class(c))
                .fold((0.0, 0.0, 0.0), |s, v| (s.0 + v.0, s.1 + v.1, s.2 + v.2));
            (sums.0 / n, sums.1 / n, sums.2 / n)
        };
        ClassifierFigures { rows, accuracy: ratio(correct, rows), precision, recall, f1 }
    }

    fn regressor_figures(&self) -> RegressorFigures {
        let rows = self.slots.get(HEADER);
        let abs = self.slots.get_f64(HEADER + 1);
        let sq = self.slots.get_f64(HEADER + 2);
        let sy = self.slots.get_f64(HEADER + 3);
        let syy = self.slots.get_f64(HEADER + 4);
        if rows == 0 {
            return RegressorFigures { rows, mae: 0.0, rmse: 0.0, r2: None };
        }
        let n = rows as f64;
        let total = syy - sy * sy / n;
        let r2 = if rows < 2 {
            None
        } else if total <= 0.0 {
            // Constant y_true: sklearn answers 1 for a perfect fit, else 0.
            Some(if sq == 0.0 { 1.0 } else { 0.0 })
        } else {
            Some(1.0 - sq / total)
        };
        RegressorFigures { rows, mae: abs / n, rmse: (sq / n).sqrt(), r2 }
    }
}
