//! Server-wide Prometheus metrics in memory shared by every worker.
//!
//! Contract:
//! - [`Metrics::shared`] is called in the master before any fork: it maps a fixed-size array of
//!   atomic words that every worker inherits, so a scrape answered by any worker reports the
//!   whole server, and counters outlive the workers that counted them.
//! - Updates on the request path ([`Metrics::request_started`], [`Metrics::request_finished`],
//!   [`Metrics::predictions`], ...) are atomic operations on those words: no lock, no
//!   allocation, no system call once a label set has been seen (the first update of a new label
//!   set claims its series with a compare-exchange).
//! - Label sets are interned in the shared memory, per family, up to
//!   [`MetricsSettings::max_series`]; updates with a new label set beyond that limit (or with
//!   label text longer than 256 bytes) fold into one overflow series whose label values are all
//!   `__overflow__`. Memory never grows after start.
//! - The exposition (Prometheus text 0.0.4 or OpenMetrics 1.0.0) is rendered only when scraped
//!   ([`Metrics::render`]).
//! - Models record their declared metrics through [`Metrics::model_sink`] after the families
//!   were declared with [`Metrics::declare`] (any worker may declare; identical declarations
//!   share storage, a different shape under the same name is refused).
//!
//! docs/metrics.md lists every metric.

mod render;
mod sink;
mod store;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use mldeploy_model::{MetricDesc, MetricKind, MetricsSink, Model};
use mldeploy_prefork::RestartReason;

use store::{Family, FamilySpec, Key, Kind, Store};

/// Settings of the metric store.
#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// Most label sets per metric family before new ones fold into an overflow series.
    pub max_series: usize,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self { max_series: 512 }
    }
}

/// Exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text exposition format 0.0.4.
    Prometheus,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The format a scraper asks for in its `Accept` header: OpenMetrics when it lists
    /// `application/openmetrics-text`, Prometheus text otherwise.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.to_ascii_lowercase().contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    /// The `Content-Type` of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Why a model metric could not be declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsError {
    /// The metric name or a label name is not a valid Prometheus name, or is reserved.
    InvalidName { metric: String, reason: String },
    /// Buckets or states are unusable (empty, unordered, duplicated, too many).
    InvalidShape { metric: String, reason: String },
    /// A family of that name exists with another kind, labels, buckets or states.
    Mismatch { metric: String },
    /// The shared memory has no room for another family.
    Full { metric: String },
    /// Another worker started declaring this name and never finished.
    Busy { metric: String },
}

impl std::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsError::InvalidName { metric, reason } => {
                write!(f, "metric {metric}: invalid name: {reason}")
            }
            MetricsError::InvalidShape { metric, reason } => write!(f, "metric {metric}: {reason}"),
            MetricsError::Mismatch { metric } => write!(
                f,
                "metric {metric} is already declared with another kind, labels, buckets or states; \
                 a changed metric needs a new name"
            ),
            MetricsError::Full { metric } => write!(f, "metric {metric}: no room left in the metric store"),
            MetricsError::Busy { metric } => {
                write!(f, "metric {metric}: declaration by another worker never finished")
            }
        }
    }
}

impl std::error::Error for MetricsError {}

/// Upper bounds of `mldeploy_request_duration_seconds`: 100 µs to 10 s, roughly 1-2.5-5 steps.
pub const REQUEST_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Model-declared families share an arena big enough for this many families with labels at
/// the series limit (families without labels take a few dozen words each).
const MODEL_ARENA_FAMILIES: usize = 16;

/// Names rendered by the server itself (model families may not take them).
const RESERVED_NAMES: [&str; 4] = [
    "mldeploy_requests",
    "mldeploy_requests_total",
    "mldeploy_requests_in_flight",
    "mldeploy_requests_created",
];

/// The built-in families, declared by [`Metrics::new_in`] in this order (which is also the
/// render order).
fn builtin_specs() -> Vec<FamilySpec<'static>> {
    let spec = |name, help, kind, label_names| FamilySpec {
        name,
        help,
        kind,
        label_names,
        buckets: &[],
        states: &[],
    };
    vec![
        FamilySpec {
            buckets: &REQUEST_BUCKETS,
            ..spec(
                "mldeploy_request_duration_seconds",
                "Seconds from a request read to its response ready, by method, route template, status, model and version.",
                Kind::Histogram,
                // Model labels first: every key then starts with a plain copy of them.
                &["model", "version", "method", "route", "status"],
            )
        },
        spec(
            "mldeploy_predictions",
            "Rows predicted, by model and version.",
            Kind::CounterInt,
            &["model", "version"],
        ),
        spec(
            "mldeploy_validation_failures",
            "Requests or rows refused by input validation, by reason.",
            Kind::CounterInt,
            &["reason"],
        ),
        spec("mldeploy_workers_alive", "Worker processes alive now.", Kind::Gauge, &[]),
        spec(
            "mldeploy_worker_restarts",
            "Worker processes that ended and were replaced or removed, by reason.",
            Kind::CounterInt,
            &["reason"],
        ),
        spec("mldeploy_reloads", "Reloads (HUP) by outcome.", Kind::CounterInt, &["outcome"]),
        spec(
            "mldeploy_master_start_time_seconds",
            "Start time of the master process since the Unix epoch.",
            Kind::Gauge,
            &[],
        ),
        spec("mldeploy_model_load_seconds", "Seconds the most recent model load in a worker took.", Kind::Gauge, &[]),
        spec(
            "mldeploy_events",
            "Kafka events by topic and outcome (sent: queued for the producer; delivered: acknowledged; \
             failed: not delivered; dropped: queue full).",
            Kind::CounterInt,
            &["topic", "outcome"],
        ),
        spec(
            "mldeploy_model_metric_errors",
            "Updates of model-declared metrics that were ignored, by reason.",
            Kind::CounterInt,
            &["reason"],
        ),
    ]
}

/// Families the server updates, found once at start.
#[derive(Clone, Copy)]
struct Builtins {
    requests: Family,
    predictions: Family,
    validation: Family,
    workers_alive: Family,
    restarts: Family,
    reloads: Family,
    start_time: Family,
    model_load: Family,
    events: Family,
    model_errors: Family,
}

/// The `model` and `version` labels of one model, encoded once: the first labels of every
/// family that carries them.
pub struct ModelKey {
    key: Key,
    /// The model's series of the predictions counter, once found: the number of the
    /// [`Metrics`] it was found in (high half) and the entry (low half); 0 for none. Saves a
    /// hashed lookup per prediction.
    predictions: AtomicU64,
}

impl Clone for ModelKey {
    fn clone(&self) -> ModelKey {
        ModelKey { key: self.key.clone(), predictions: AtomicU64::new(0) }
    }
}

/// Numbers the [`Metrics`] of this process, for [`ModelKey`]'s cached series.
static NEXT_METRICS: AtomicU32 = AtomicU32::new(1);

impl ModelKey {
    /// Empty labels, for requests that concern no model.
    pub fn none() -> ModelKey {
        ModelKey::new("", "")
    }

    /// The labels of a model.
    pub fn new(name: &str, version: &str) -> ModelKey {
        let mut key = Key::new();
        key.push(name);
        key.push(version);
        if key.is_overlong() {
            // Far beyond any real name; keep the series apart from everything else.
            key = Key::new();
            key.push(store::OVERFLOW_VALUE);
            key.push(store::OVERFLOW_VALUE);
        }
        ModelKey { key, predictions: AtomicU64::new(0) }
    }
}

struct Inner {
    store: Store,
    fam: Builtins,
    enabled: bool,
    /// This process's in-flight word, claimed at its first request (after the fork).
    inflight: OnceLock<&'static AtomicU64>,
    /// This handle's number in the process (see [`ModelKey`]).
    number: u32,
}

/// Handle to the metric store. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

/// Decrements the in-flight gauge on drop.
pub struct InFlight {
    slot: Option<&'static AtomicU64>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Words of the store for `settings`: the built-in families, the model arena, the directory.
pub fn store_words(settings: &MetricsSettings) -> usize {
    let max_series = settings.max_series.max(1);
    let builtin: usize = builtin_specs().iter().map(|s| store::block_words(s, max_series)).sum();
    let labelled_gauge =
        FamilySpec { name: "", help: "", kind: Kind::Gauge, label_names: &["a"], buckets: &[], states: &[] };
    let model_arena = MODEL_ARENA_FAMILIES * (store::block_words(&labelled_gauge, max_series) + 8 * 1024);
    store::store_words(builtin + model_arena)
}

/// Whether `/proc/PID` says a process is alive (always true where there is no `/proc`).
fn process_alive(pid: u32) -> bool {
    static HAS_PROC: OnceLock<bool> = OnceLock::new();
    if !*HAS_PROC.get_or_init(|| std::path::Path::new("/proc/self").exists()) {
        return true;
    }
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Metrics {
    /// In the master, before forking: storage shared by every worker.
    pub fn shared(settings: &MetricsSettings) -> std::io::Result<Metrics> {
        let slots = mldeploy_prefork::shared_slots(store_words(settings))?;
        Ok(Metrics::new_in(slots, settings, true))
    }

    /// Process-private storage (tests, `--app-debug`).
    pub fn private(settings: &MetricsSettings) -> Metrics {
        Metrics::new_in(leak_slots(store_words(settings)), settings, true)
    }

    /// Metrics off: every update is a no-op and [`Metrics::render`] answers an empty
    /// exposition (for measuring what metrics cost).
    pub fn disabled() -> Metrics {
        let settings = MetricsSettings { max_series: 1 };
        Metrics::new_in(leak_slots(store_words(&settings)), &settings, false)
    }

    /// Build the store in zeroed `slots` (at least [`store_words`] long).
    pub fn new_in(slots: &'static [AtomicU64], settings: &MetricsSettings, enabled: bool) -> Metrics {
        let store = Store::init(slots, settings.max_series.max(1));
        let mut fams = builtin_specs().into_iter().map(|spec| {
            store.declare(&spec).unwrap_or_else(|e| panic!("metric store too small for {}: {e:?}", spec.name))
        });
        let mut next = || fams.next().expect("every built-in family declared");
        let fam = Builtins {
            requests: next(),
            predictions: next(),
            validation: next(),
            workers_alive: next(),
            restarts: next(),
            reloads: next(),
            start_time: next(),
            model_load: next(),
            events: next(),
            model_errors: next(),
        };
        let metrics = Metrics {
            inner: Arc::new(Inner {
                store,
                fam,
                enabled,
                inflight: OnceLock::new(),
                number: NEXT_METRICS.fetch_add(1, Ordering::Relaxed),
            }),
        };
        // Series that should read 0 before anything happens.
        // Every restart reason reads 0 before it first happens.
        for reason in RestartReason::ALL.into_iter().filter(|r| r.is_restart()) {
            metrics.add_with(&fam.restarts, &[reason.as_str()], 0);
        }
        metrics.add_with(&fam.reloads, &["ok"], 0);
        metrics.add_with(&fam.reloads, &["failed"], 0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64());
        store.set_f64(&fam.start_time, fam.start_time.table, now.unwrap_or(0.0));
        metrics
    }

    fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Add `n` to the integer counter series of `labels` in `f`.
    fn add_with(&self, f: &Family, labels: &[&str], n: u64) {
        let mut key = Key::new();
        for l in labels {
            key.push(l);
        }
        let entry = self.store().series(f, &key);
        self.store().add_int(f, entry, n);
    }

    /// A request has started.
    pub fn request_started(&self) -> InFlight {
        if !self.inner.enabled {
            return InFlight { slot: None };
        }
        let store = self.inner.store;
        let slot =
            *self.inner.inflight.get_or_init(|| store.inflight_claim(std::process::id(), process_alive));
        slot.fetch_add(1, Ordering::Relaxed);
        InFlight { slot: Some(slot) }
    }

    /// A request about `model` has ended. `route` is the route template (never the raw path).
    pub fn request_finished(&self, model: &ModelKey, method: &str, route: &str, status: u16, seconds: f64) {
        if !self.inner.enabled {
            return;
        }
        let f = &self.inner.fam.requests;
        let mut key = model.key.clone();
        key.push(method);
        key.push(route);
        key.push_status(status);
        let entry = self.store().series(f, &key);
        self.store().observe(f, entry, seconds);
    }

    /// Rows `model` predicted.
    pub fn predictions(&self, model: &ModelKey, rows: u64) {
        if !self.inner.enabled {
            return;
        }
        let f = &self.inner.fam.predictions;
        let tag = u64::from(self.inner.number) << 32;
        let cached = model.predictions.load(Ordering::Relaxed);
        // Handles are numbered from 1: an empty cache (0) never matches.
        let entry = if cached & !0xffff_ffff == tag {
            (cached & 0xffff_ffff) as usize
        } else {
            // A series never moves once made (nor does the overflow series).
            let entry = self.store().series(f, &model.key);
            if let Ok(low) = u32::try_from(entry) {
                model.predictions.store(tag | u64::from(low), Ordering::Relaxed);
            }
            entry
        };
        self.store().add_int(f, entry, rows);
    }

    /// A validation failure by reason.
    pub fn validation_failure(&self, reason: &str) {
        if self.inner.enabled {
            self.add_with(&self.inner.fam.validation, &[reason], 1);
        }
    }

    /// Master: a worker restart by reason ([`RestartReason::as_str`]).
    pub fn worker_restart(&self, reason: &str) {
        if self.inner.enabled {
            self.add_with(&self.inner.fam.restarts, &[reason], 1);
        }
    }

    /// Master: the worker with this pid has ended (its in-flight requests no longer count).
    pub fn worker_exited(&self, pid: i32) {
        if let Ok(pid) = u32::try_from(pid) {
            self.store().inflight_release(pid);
        }
    }

    /// Master: workers alive now.
    pub fn workers_alive(&self, n: usize) {
        let f = &self.inner.fam.workers_alive;
        self.store().set_f64(f, f.table, n as f64);
    }

    /// Master: a reload finished.
    pub fn reload(&self, ok: bool) {
        if self.inner.enabled {
            self.add_with(&self.inner.fam.reloads, &[if ok { "ok" } else { "failed" }], 1);
        }
    }

    /// A worker loaded its model in this many seconds.
    pub fn model_load_seconds(&self, seconds: f64) {
        let f = &self.inner.fam.model_load;
        self.store().set_f64(f, f.table, seconds);
    }

    /// Declare a metric a model records through [`Metrics::model_sink`]. Declaring the same
    /// name with the same kind, labels, buckets or states again (another worker, a reload) is
    /// fine and shares the storage; another shape under a declared name is refused.
    pub fn declare(&self, desc: &MetricDesc) -> Result<(), MetricsError> {
        let name = family_name(desc);
        let err_name =
            |reason: &str| MetricsError::InvalidName { metric: desc.name.clone(), reason: reason.into() };
        let err_shape =
            |reason: &str| MetricsError::InvalidShape { metric: desc.name.clone(), reason: reason.into() };
        if !valid_metric_name(name) || name.len() > store::MAX_NAME_BYTES {
            return Err(err_name("a name matches [a-zA-Z_:][a-zA-Z0-9_:]* and has at most 200 bytes"));
        }
        if RESERVED_NAMES.contains(&name) {
            return Err(err_name("the server uses this name"));
        }
        if desc.label_names.len() > store::MAX_LABELS {
            return Err(err_shape("at most 16 labels"));
        }
        for (i, l) in desc.label_names.iter().enumerate() {
            if !valid_label_name(l) {
                return Err(err_name(&format!(
                    "label {l:?}: a label name matches [a-zA-Z_][a-zA-Z0-9_]*, not __*"
                )));
            }
            if desc.label_names[..i].contains(l) {
                return Err(err_name(&format!("label {l:?} appears twice")));
            }
        }
        let labels: Vec<&str> = desc.label_names.iter().map(String::as_str).collect();
        let mut spec = FamilySpec {
            name,
            help: &desc.help,
            kind: Kind::Gauge,
            label_names: &labels,
            buckets: &[],
            states: &[],
        };
        let buckets: Vec<f64>;
        let states: Vec<&str>;
        match &desc.kind {
            MetricKind::Gauge => {}
            MetricKind::Counter => spec.kind = Kind::CounterF64,
            MetricKind::Histogram { buckets: given } => {
                if labels.contains(&"le") {
                    return Err(err_name("a histogram cannot have a label named le"));
                }
                let mut b = given.clone();
                if b.last() == Some(&f64::INFINITY) {
                    b.pop();
                }
                if b.iter().any(|x| !x.is_finite()) || b.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(err_shape("buckets must be finite and strictly ascending"));
                }
                if b.len() > store::MAX_EXTRA {
                    return Err(err_shape("at most 64 buckets"));
                }
                buckets = b;
                spec.kind = Kind::Histogram;
                spec.buckets = &buckets;
            }
            MetricKind::Enum { states: given } => {
                if labels.contains(&name) {
                    return Err(err_name("an enum cannot have a label named like itself"));
                }
                if given.is_empty() || given.len() > store::MAX_EXTRA {
                    return Err(err_shape("an enum has 1 to 64 states"));
                }
                if given.iter().enumerate().any(|(i, s)| given[..i].contains(s)) {
                    return Err(err_shape("enum states must differ"));
                }
                if given.iter().map(|s| s.len() + 1).sum::<usize>() > 4096 {
                    return Err(err_shape("enum states take at most 4096 bytes together"));
                }
                states = given.iter().map(String::as_str).collect();
                spec.kind = Kind::StateSet;
                spec.states = &states;
            }
        }
        self.store().declare(&spec).map(|_| ()).map_err(|e| {
            let metric = desc.name.clone();
            match e {
                store::DeclareError::Mismatch => MetricsError::Mismatch { metric },
                store::DeclareError::Full => MetricsError::Full { metric },
                store::DeclareError::Busy => MetricsError::Busy { metric },
            }
        })
    }

    /// Declare every metric of `model` (see [`Metrics::declare`]); returns what failed.
    pub fn declare_model_metrics(&self, model: &dyn Model) -> Vec<MetricsError> {
        model.metrics().iter().filter_map(|d| self.declare(d).err()).collect()
    }

    /// The sink a model records its declared metrics in.
    pub fn model_sink(&self) -> Arc<dyn MetricsSink> {
        Arc::new(sink::ModelSink::new(self.clone()))
    }

    /// Render the whole server's metrics (only when scraped). The metrics each of `models`
    /// declares are declared if no worker did yet, and their scrape-time gauges are added.
    pub fn render(&self, format: Format, models: &[&dyn Model]) -> String {
        if !self.inner.enabled {
            return render::empty(format);
        }
        for m in models {
            for desc in m.metrics() {
                if self.store().lookup(family_name(&desc)).is_none() {
                    let _ = self.declare(&desc);
                }
            }
        }
        let gauges: Vec<_> = models.iter().flat_map(|m| m.scrape_gauges()).collect();
        render::render(self, format, &gauges)
    }

    fn model_error(&self, reason: &str) {
        self.add_with(&self.inner.fam.model_errors, &[reason], 1);
    }
}

/// Store a counter under its name without `_total` (OpenMetrics' family name).
fn family_name(desc: &MetricDesc) -> &str {
    match desc.kind {
        MetricKind::Counter => counter_base(&desc.name),
        _ => &desc.name,
    }
}

fn counter_base(name: &str) -> &str {
    name.strip_suffix("_total").filter(|b| !b.is_empty()).unwrap_or(name)
}

pub(crate) fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

pub(crate) fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Zeroed process-private slots that live for the rest of the process.
fn leak_slots(len: usize) -> &'static [AtomicU64] {
    let v: Vec<AtomicU64> = (0..len).map(|_| AtomicU64::new(0)).collect();
    Box::leak(v.into_boxed_slice())
}

impl crate::events::EventStats for Metrics {
    fn sent(&self, topic: &str) {
        if self.inner.enabled {
            self.add_with(&self.inner.fam.events, &[topic, "sent"], 1);
        }
    }
    fn delivered(&self, topic: &str) {
        if self.inner.enabled {
            self.add_with(&self.inner.fam.events, &[topic, "delivered"], 1);
        }
    }
    fn failed(&self, topic: &str) {
        if self.inner.enabled {
            self.add_with(&self.inner.fam.events, &[topic, "failed"], 1);
        }
    }
    fn dropped(&self, topic: &str) {
        if self.inner.enabled {
            self.add_with(&self.inner.fam.events, &[topic, "dropped"], 1);
        }
    }
}
