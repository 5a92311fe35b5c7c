//! Metric events to Kafka: a bounded channel and one dedicated producer thread per worker.
//!
//! Contract:
//! - [`start`] runs in a worker, after the fork (librdkafka is not fork-safe). It returns the
//!   request threads' handle, [`Events`], and the [`Producer`] that owns the producer thread.
//!   Without brokers configured both are inert and nothing is started.
//! - [`Events::emit_json`] never blocks and never calls Kafka: it hands the event to a
//!   bounded channel with `try_send`. A full channel (or a stopped producer)
//!   drops the event, counts it per topic with [`EventStats::dropped`] and logs a warning at
//!   most once every [`WARNING_INTERVAL`], with the number dropped since the last one.
//! - The producer thread builds the message (the response JSON plus `timestamp`, `request_id`,
//!   `worker_pid`, `route`) and produces it to the route's topic and to every
//!   topic the response lists, each once, keyed by the name of the model that answered, with
//!   `model` and `version` headers. Delivery reports count [`EventStats::delivered`] or [`EventStats::failed`] per
//!   topic; a topic the broker does not have is warned about once and its events count as failed.
//! - The broker may be away at start, go away and come back: librdkafka reconnects by itself,
//!   and a message not delivered within `message_timeout_ms` counts as failed.
//! - [`Producer::shutdown`] stops accepting events, produces what is still in the channel and
//!   flushes until its deadline. With the broker up every event accepted before it is delivered.

mod message;
mod producer;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Sender, TrySendError};
use slog::{error, info, warn, Logger};

use crate::config::ConfigError;
use message::{Body, Topics};

/// Default capacity of the channel in front of the producer thread.
pub const DEFAULT_QUEUE_CAPACITY: usize = 10_000;

/// Repeated warnings (events dropped, deliveries failed, client errors) are logged at most once
/// per this interval, each with the count since the previous one.
pub const WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Counters of the event pipeline; implemented by [`crate::metrics::Metrics`].
///
/// Every method is called once per event and topic. At the end of a graceful stop,
/// `sent = delivered + failed` for each topic.
pub trait EventStats: Send + Sync + 'static {
    /// The producer thread took an event for this topic from the channel and handed it on.
    fn sent(&self, topic: &str);
    /// The broker acknowledged a message.
    fn delivered(&self, topic: &str);
    /// A message could not be delivered (timeout, unknown topic, shutdown deadline, ...).
    fn failed(&self, topic: &str);
    /// The channel was full (or the producer stopped): the event was dropped.
    fn dropped(&self, topic: &str);
}

/// Kafka settings. Events are off when `brokers` is `None`.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// Comma-separated `host:port` list (librdkafka `bootstrap.servers`).
    pub brokers: Option<String>,
    /// Channel capacity: events waiting for the producer thread, per worker (0 means the
    /// default, [`DEFAULT_QUEUE_CAPACITY`]).
    pub queue_capacity: usize,
    /// Topic of predict events.
    pub predict_topic: String,
    /// Topic of feedback events.
    pub feedback_topic: String,
    /// librdkafka `client.id` (empty: librdkafka's default).
    pub client_id: String,
    /// librdkafka `acks`: `0`, `1` or `all` (empty: librdkafka's default).
    pub acks: String,
    /// librdkafka `linger.ms`.
    pub linger_ms: u64,
    /// librdkafka `compression.type`: `none`, `gzip`, `snappy` or `lz4` (empty: `none`).
    pub compression: String,
    /// librdkafka `message.timeout.ms`: a message not delivered in this time counts as failed.
    pub message_timeout_ms: u64,
    /// Extra librdkafka settings (`--kafka-option KEY=VALUE`), applied last, verbatim.
    pub options: Vec<(String, String)>,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            brokers: None,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            predict_topic: "predict".into(),
            feedback_topic: "feedback".into(),
            client_id: "mldeploy".into(),
            acks: "1".into(),
            linger_ms: 50,
            compression: "none".into(),
            message_timeout_ms: 30_000,
            options: Vec::new(),
        }
    }
}

impl EventSettings {
    /// The brokers, when events are on.
    fn brokers(&self) -> Option<&str> {
        self.brokers.as_deref().map(str::trim).filter(|b| !b.is_empty())
    }

    fn topics(&self) -> Topics {
        let or =
            |name: &str, default: &str| if name.is_empty() { default.to_string() } else { name.to_string() };
        Topics { predict: or(&self.predict_topic, "predict"), feedback: or(&self.feedback_topic, "feedback") }
    }

    /// The librdkafka configuration these settings stand for.
    fn client_config(&self, brokers: &str) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", brokers);
        if !self.client_id.is_empty() {
            config.set("client.id", &self.client_id);
        }
        if !self.acks.is_empty() {
            config.set("acks", &self.acks);
        }
        if !self.compression.is_empty() {
            config.set("compression.type", &self.compression);
        }
        config.set("linger.ms", self.linger_ms.to_string());
        if self.message_timeout_ms > 0 {
            config.set("message.timeout.ms", self.message_timeout_ms.to_string());
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        config
    }

    /// Checks every librdkafka setting (names and values) without creating a client, so the
    /// master can refuse a bad `--kafka-option` before forking. Events off: always `Ok`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let Some(brokers) = self.brokers() else { return Ok(()) };
        self.client_config(brokers)
            .create_native_config()
            .map(drop)
            .map_err(|e| ConfigError(format!("invalid Kafka setting: {e}")))
    }
}

/// Which route produced an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Predict,
    Feedback,
}

/// One event: a response to send to Kafka, already serialized (the bytes sent to the client),
/// so the producer thread appends its fields without parsing or re-serializing the response.
#[derive(Debug)]
pub struct JsonEvent {
    pub kind: EventKind,
    /// The response body as sent (target, input, list_metrics, topics, model, version): one
    /// JSON object, whose `model` and `version` are those of `model`.
    pub body: bytes::Bytes,
    /// The model that answered: the message key and headers.
    pub model: Arc<ModelTag>,
    /// The topics the model's response listed (the route's own topic need not be there: every
    /// event goes to it).
    pub topics: Vec<String>,
    /// The request id the client saw in `x-request-id`.
    pub request_id: String,
    /// The route path, for example `/api/ml/predict`.
    pub route: String,
}

/// A model the worker serves: the key and headers of its [`JsonEvent`]s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelTag {
    pub name: String,
    pub version: String,
}

/// An event in the channel, with the time it was queued.
struct Queued {
    kind: EventKind,
    body: Body,
    request_id: String,
    route: String,
    timestamp_ms: i64,
}

/// The request threads' end of the channel. Cheap to clone.
#[derive(Clone, Default)]
pub struct Events {
    shared: Option<Arc<Shared>>,
}

/// What the request threads and the producer thread share.
struct Shared {
    tx: Sender<Queued>,
    topics: Topics,
    stats: Arc<dyn EventStats>,
    log: Logger,
    /// Set by [`Producer::shutdown`]: new events are dropped.
    closed: AtomicBool,
    /// `emit` calls between their `closed` check and their `try_send`; the producer thread
    /// waits for none to be left before its final drain, so no accepted event is stranded.
    emitting: AtomicUsize,
    drops: Throttle,
}

impl Events {
    /// Events off.
    pub fn disabled() -> Self {
        Events { shared: None }
    }

    /// Whether events are on (then predict/feedback responses list their topic).
    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    /// The configured topic of `kind`'s route, when events are on.
    pub fn topic(&self, kind: EventKind) -> Option<&str> {
        self.shared.as_ref().map(|s| s.topics.of(kind))
    }

    /// Queue an event; never blocks. A full channel or a stopped producer drops it (counted).
    pub fn emit_json(&self, event: JsonEvent) {
        let body = Body { bytes: event.body, topics: event.topics, model: event.model };
        self.queue(event.kind, body, event.request_id, event.route);
    }

    fn queue(&self, kind: EventKind, body: Body, request_id: String, route: String) {
        let Some(shared) = &self.shared else { return };
        // SeqCst on both atomics here and in the producer thread: either this call sees
        // `closed`, or the producer thread sees it in `emitting` and waits for it.
        shared.emitting.fetch_add(1, Ordering::SeqCst);
        let queued = Queued { kind, body, request_id, route, timestamp_ms: now_ms() };
        let rejected = if shared.closed.load(Ordering::SeqCst) {
            Some((queued, "producer stopped"))
        } else {
            match shared.tx.try_send(queued) {
                Ok(()) => None,
                Err(TrySendError::Full(q)) => Some((q, "queue full")),
                Err(TrySendError::Disconnected(q)) => Some((q, "producer stopped")),
            }
        };
        shared.emitting.fetch_sub(1, Ordering::SeqCst);
        if let Some((queued, reason)) = rejected {
            shared.dropped(&queued, reason);
        }
    }
}

impl Shared {
    /// Counts a dropped event for each of its topics.
    fn count_dropped(&self, queued: &Queued) {
        for topic in queued.body.topics(self.topics.of(queued.kind)) {
            self.stats.dropped(topic);
        }
    }

    /// Counts a dropped event and warns (rate-limited).
    fn dropped(&self, queued: &Queued, reason: &'static str) {
        self.count_dropped(queued);
        if let Some(count) = self.drops.hit() {
            warn!(self.log, "metric events dropped";
                "reason" => reason, "dropped" => count, "queue_capacity" => self.tx.capacity().unwrap_or(0));
        }
    }
}

/// The producer thread of a worker.
pub struct Producer {
    shared: Arc<Shared>,
    stop: Sender<Instant>,
    thread: Option<JoinHandle<()>>,
}

impl Producer {
    /// Stop accepting events, produce what is left in the channel, and flush until `deadline`
    /// (returns shortly after it at the latest). What is undelivered by then counts as failed;
    /// events that could not even be handed to Kafka count as dropped.
    pub fn shutdown(mut self, deadline: Instant) {
        self.stop_and_join(deadline);
    }

    fn stop_and_join(&mut self, deadline: Instant) {
        let Some(thread) = self.thread.take() else { return };
        self.shared.closed.store(true, Ordering::SeqCst);
        let _ = self.stop.try_send(deadline);
        if thread.join().is_err() {
            error!(self.shared.log, "kafka producer thread panicked");
        }
    }
}

impl Drop for Producer {
    /// Dropped without [`Producer::shutdown`]: stop at once, without waiting for the broker.
    fn drop(&mut self) {
        self.stop_and_join(Instant::now());
    }
}

/// Start the producer thread (in the worker, after the fork). Events are off (and nothing is
/// started) without brokers, or when librdkafka refuses the settings (logged as an error).
pub fn start(
    settings: &EventSettings,
    log: Logger,
    stats: Arc<dyn EventStats>,
) -> (Events, Option<Producer>) {
    let Some(brokers) = settings.brokers() else { return (Events::disabled(), None) };
    let capacity =
        if settings.queue_capacity == 0 { DEFAULT_QUEUE_CAPACITY } else { settings.queue_capacity };
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(Shared {
        tx,
        topics: settings.topics(),
        stats: Arc::clone(&stats),
        log: log.clone(),
        closed: AtomicBool::new(false),
        emitting: AtomicUsize::new(0),
        drops: Throttle::new(WARNING_INTERVAL),
    });
    let kafka = match producer::create(&settings.client_config(brokers), log.clone(), stats) {
        Ok(kafka) => kafka,
        Err(e) => {
            error!(log, "kafka producer could not be created; metric events are off"; "error" => %e);
            return (Events::disabled(), None);
        }
    };
    let worker = producer::ProducerThread::new(kafka, rx, stop_rx, Arc::clone(&shared));
    let thread = match std::thread::Builder::new().name("mldeploy-events".into()).spawn(move || worker.run())
    {
        Ok(thread) => thread,
        Err(e) => {
            error!(log, "kafka producer thread could not be started; metric events are off"; "error" => %e);
            return (Events::disabled(), None);
        }
    };
    info!(log, "metric events on"; "brokers" => brokers, "queue_capacity" => capacity,
        "predict_topic" => &shared.topics.predict, "feedback_topic" => &shared.topics.feedback);
    let producer = Producer { shared: Arc::clone(&shared), stop: stop_tx, thread: Some(thread) };
    (Events { shared: Some(shared) }, Some(producer))
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Lets a repeated warning through at most once per interval and counts the occurrences in
/// between. Lock-free: it sits on the request path when the channel is full.
struct Throttle {
    interval_ms: u64,
    origin: Instant,
    /// Milliseconds after `origin` of the last report; `NEVER` before the first.
    last_ms: AtomicU64,
    pending: AtomicU64,
}

impl Throttle {
    const NEVER: u64 = u64::MAX;

    fn new(interval: Duration) -> Self {
        Throttle {
            interval_ms: interval.as_millis() as u64,
            origin: Instant::now(),
            last_ms: AtomicU64::new(Self::NEVER),
            pending: AtomicU64::new(0),
        }
    }

    /// Records one occurrence. Returns the number of occurrences since the last report when a
    /// report is due now.
    fn hit(&self) -> Option<u64> {
        self.hit_at(self.origin.elapsed().as_millis() as u64)
    }

    /// [`Throttle::hit`] at `now` milliseconds after the throttle was made.
    fn hit_at(&self, now: u64) -> Option<u64> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != Self::NEVER && now.saturating_sub(last) < self.interval_ms {
            return None;
        }
        self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).ok()?;
        Some(self.pending.swap(0, Ordering::Relaxed))
    }
}
