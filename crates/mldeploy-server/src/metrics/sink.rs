//! The [`MetricsSink`] a model records its declared metrics in.
//!
//! Every update finds its family by name in the shared directory (a hash probe, no lock) and
//! its series by label values; updates that do not fit a declared family are counted in
//! `mldeploy_model_metric_errors_total{reason}` and otherwise ignored.

use mldeploy_model::MetricsSink;

use super::store::{Family, Key, Kind};
use super::{counter_base, Metrics};

pub(super) struct ModelSink {
    metrics: Metrics,
}

impl ModelSink {
    pub(super) fn new(metrics: Metrics) -> ModelSink {
        ModelSink { metrics }
    }

    /// The family `name` of one of `kinds` with as many labels as given; `None` (after
    /// counting the error) otherwise.
    fn family(&self, name: &str, kinds: &[Kind], labels: &[&str]) -> Option<Family> {
        if !self.metrics.inner.enabled {
            return None;
        }
        let store = self.metrics.store();
        let found = if kinds.contains(&Kind::CounterF64) {
            store.lookup(counter_base(name)).or_else(|| store.lookup(name))
        } else {
            store.lookup(name)
        };
        let Some(f) = found else {
            self.metrics.model_error("undeclared");
            return None;
        };
        if !kinds.contains(&f.kind) {
            self.metrics.model_error("kind");
            return None;
        }
        if labels.len() != f.labels {
            self.metrics.model_error("labels");
            return None;
        }
        Some(f)
    }

    fn series(&self, f: &Family, labels: &[&str]) -> usize {
        let mut key = Key::new();
        for l in labels {
            key.push(l);
        }
        self.metrics.store().series(f, &key)
    }
}

impl MetricsSink for ModelSink {
    fn gauge_set(&self, name: &str, labels: &[&str], value: f64) {
        if let Some(f) = self.family(name, &[Kind::Gauge], labels) {
            self.metrics.store().set_f64(&f, self.series(&f, labels), value);
        }
    }

    fn counter_add(&self, name: &str, labels: &[&str], value: f64) {
        if !(value >= 0.0 && value.is_finite()) {
            self.metrics.model_error("value");
            return;
        }
        if let Some(f) = self.family(name, &[Kind::CounterF64], labels) {
            self.metrics.store().add_f64(&f, self.series(&f, labels), value);
        }
    }

    fn histogram_observe(&self, name: &str, labels: &[&str], value: f64) {
        if let Some(f) = self.family(name, &[Kind::Histogram], labels) {
            self.metrics.store().observe(&f, self.series(&f, labels), value);
        }
    }

    fn enum_set(&self, name: &str, labels: &[&str], state: &str) {
        let Some(f) = self.family(name, &[Kind::StateSet], labels) else { return };
        let store = self.metrics.store();
        match store.state_index(&f, state) {
            Some(i) => store.set_int(&f, self.series(&f, labels), i as u64 + 1),
            None => self.metrics.model_error("state"),
        }
    }
}
