//! The producer thread: takes events from the channel, builds their messages and hands them to
//! librdkafka; and the librdkafka context that counts delivery reports and forwards logs.
//!
//! librdkafka's delivery reports are served by the [`ThreadedProducer`]'s own polling thread,
//! so this thread only ever blocks on the channel.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, TryRecvError};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message as _, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use slog::{debug, error, info, warn, Logger};

use super::message::{self, Message, Stamp};
use super::{EventStats, Queued, Shared, Throttle, WARNING_INTERVAL};

/// The librdkafka producer of a worker.
pub(crate) type Kafka = ThreadedProducer<Context>;

/// Creates the producer. librdkafka connects in the background: this does not wait for (or
/// need) a broker.
pub(crate) fn create(
    config: &rdkafka::ClientConfig,
    log: Logger,
    stats: Arc<dyn EventStats>,
) -> Result<Kafka, KafkaError> {
    config.create_with_context(Context {
        stats,
        log,
        unknown_topics: Mutex::new(HashSet::new()),
        failures: Throttle::new(WARNING_INTERVAL),
        client_errors: Throttle::new(WARNING_INTERVAL),
    })
}

/// Receives librdkafka's callbacks (on its polling thread).
pub(crate) struct Context {
    stats: Arc<dyn EventStats>,
    log: Logger,
    /// Topics already reported as missing on the broker.
    unknown_topics: Mutex<HashSet<String>>,
    failures: Throttle,
    client_errors: Throttle,
}

impl Context {
    /// Counts a message that will not be delivered and says why (rate-limited, or once per topic
    /// for a topic the broker does not have).
    fn failed(&self, topic: &str, error: &KafkaError) {
        self.stats.failed(topic);
        let code = error.rdkafka_error_code();
        if matches!(
            code,
            Some(
                RDKafkaErrorCode::UnknownTopic
                    | RDKafkaErrorCode::UnknownTopicOrPartition
                    | RDKafkaErrorCode::UnknownPartition
            )
        ) {
            let first =
                self.unknown_topics.lock().map(|mut seen| seen.insert(topic.to_string())).unwrap_or(false);
            if first {
                warn!(self.log, "kafka topic does not exist; its events count as failed"; "topic" => topic);
            }
        } else if let Some(count) = self.failures.hit() {
            warn!(self.log, "metric events not delivered"; "topic" => topic, "error" => %error, "failed" => count);
        }
    }
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                error!(self.log, "librdkafka"; "facility" => fac, "message" => message)
            }
            RDKafkaLogLevel::Warning => {
                warn!(self.log, "librdkafka"; "facility" => fac, "message" => message)
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(self.log, "librdkafka"; "facility" => fac, "message" => message)
            }
            RDKafkaLogLevel::Debug => debug!(self.log, "librdkafka"; "facility" => fac, "message" => message),
        }
    }

    /// Client-wide errors (broker unreachable, all brokers down) repeat while the broker is
    /// away: rate-limited.
    fn error(&self, error: KafkaError, reason: &str) {
        if let Some(count) = self.client_errors.hit() {
            warn!(self.log, "kafka client error"; "error" => %error, "reason" => reason, "errors" => count);
        }
    }
}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => self.stats.delivered(message.topic()),
            Err((error, message)) => self.failed(message.topic(), error),
        }
    }
}

/// State of the producer thread.
pub(crate) struct ProducerThread {
    kafka: Kafka,
    rx: Receiver<Queued>,
    stop: Receiver<Instant>,
    shared: Arc<Shared>,
    worker_pid: u32,
    /// Set once a stop was asked for: nothing may wait past it.
    deadline: Option<Instant>,
    /// The payload buffer, reused from one message to the next (librdkafka copies it).
    payload: Vec<u8>,
}

/// How long the busy producer thread lets events accumulate in the channel between two takes.
/// Short next to librdkafka's own batching delay (`linger.ms`).
const BATCH_PAUSE: Duration = Duration::from_millis(2);

/// How long to wait for room when librdkafka's own queue is full.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(10);

/// Reserved after the flush for purging what is left and joining the polling thread.
const PURGE_MARGIN: Duration = Duration::from_millis(200);

impl ProducerThread {
    pub(crate) fn new(
        kafka: Kafka,
        rx: Receiver<Queued>,
        stop: Receiver<Instant>,
        shared: Arc<Shared>,
    ) -> Self {
        ProducerThread {
            kafka,
            rx,
            stop,
            shared,
            worker_pid: std::process::id(),
            deadline: None,
            payload: Vec::with_capacity(4096),
        }
    }

    /// Produce events until a stop arrives, then finish by its deadline.
    ///
    /// Idle, the thread blocks on the channel. Busy, it takes everything queued, then sleeps
    /// for [`BATCH_PAUSE`] instead of blocking on the channel again: a request thread that
    /// queues an event while nobody waits on the channel makes no wake-up call, so under load
    /// the cost of waking this thread is paid once per pause, not once per event. (A plain
    /// sleep, not a timed receive on the stop channel, which spins and yields before it parks.)
    pub(crate) fn run(mut self) {
        while self.deadline.is_none() {
            select! {
                recv(self.rx) -> queued => match queued {
                    Ok(queued) => self.produce(queued),
                    Err(_) => break,
                },
                recv(self.stop) -> deadline => {
                    self.deadline = Some(deadline.unwrap_or_else(|_| Instant::now()));
                    break;
                },
            }
            while self.deadline.is_none() {
                while let Ok(queued) = self.rx.try_recv() {
                    self.produce(queued);
                }
                std::thread::sleep(BATCH_PAUSE);
                match self.stop.try_recv() {
                    Ok(deadline) => self.deadline = Some(deadline),
                    Err(TryRecvError::Disconnected) => self.deadline = Some(Instant::now()),
                    Err(TryRecvError::Empty) if self.rx.is_empty() => break,
                    Err(TryRecvError::Empty) => {}
                }
            }
        }
        self.finish();
    }

    /// Builds the message of one event and hands it to librdkafka for each of its topics.
    fn produce(&mut self, queued: Queued) {
        // Borrowed field by field: the message borrows `shared` while sending needs the rest.
        let Self { kafka, stop, shared, worker_pid, deadline, payload, .. } = self;
        let cx = message::Context {
            kind: queued.kind,
            request_id: &queued.request_id,
            route: &queued.route,
            names: &shared.topics,
            stamp: Stamp { timestamp_ms: queued.timestamp_ms, worker_pid: *worker_pid },
        };
        let message = message::build(&queued.body, cx, std::mem::take(payload));
        for topic in &message.topics {
            shared.stats.sent(topic);
            send(kafka, stop, deadline, &message, topic);
        }
        *payload = message.payload;
    }

    /// After a stop: produce what is left in the channel, flush until the deadline, then drop
    /// the producer, which purges what is still undelivered (counted as failed).
    fn finish(mut self) {
        let deadline = *self.deadline.get_or_insert_with(Instant::now);
        // Let `emit` calls that passed their `closed` check before the stop finish queueing.
        while self.shared.emitting.load(std::sync::atomic::Ordering::SeqCst) != 0 && Instant::now() < deadline
        {
            std::thread::yield_now();
        }
        let mut dropped = 0u64;
        while let Ok(queued) = self.rx.try_recv() {
            if Instant::now() < deadline {
                self.produce(queued);
            } else {
                self.shared.count_dropped(&queued);
                dropped += 1;
            }
        }
        if dropped > 0 {
            warn!(self.shared.log, "metric events dropped at shutdown"; "dropped" => dropped);
        }
        let flush_until =
            deadline.checked_sub(PURGE_MARGIN).filter(|t| *t > Instant::now()).unwrap_or(deadline);
        let timeout = flush_until.saturating_duration_since(Instant::now());
        if let Err(e) = self.kafka.flush(timeout) {
            warn!(self.shared.log, "kafka flush did not finish; undelivered events count as failed";
                "error" => %e, "undelivered" => self.kafka.in_flight_count());
        }
        // Dropping the producer purges what is left; the purge's delivery reports count it.
    }
}

/// Hands one message to librdkafka. When librdkafka's queue is full (the broker is slow or
/// away), waits for room: meanwhile the channel fills up and request threads drop events,
/// which bounds memory. Never waits past a stop's deadline.
fn send(
    kafka: &Kafka,
    stop: &Receiver<Instant>,
    deadline: &mut Option<Instant>,
    message: &Message<'_>,
    topic: &str,
) {
    loop {
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header { key: "model", value: Some(message.model) })
            .insert(Header { key: "version", value: Some(message.version) });
        let record = BaseRecord::<str, [u8]>::to(topic)
            .payload(&message.payload)
            .timestamp(message.timestamp_ms)
            .headers(headers)
            .key(message.model);
        let error = match kafka.send(record) {
            Ok(()) => return,
            Err((error, _)) => error,
        };
        if error.rdkafka_error_code() != Some(RDKafkaErrorCode::QueueFull) {
            kafka.context().failed(topic, &error);
            return;
        }
        if deadline.is_none() {
            if let Ok(at) = stop.try_recv() {
                *deadline = Some(at);
            }
        }
        let wait = match *deadline {
            Some(at) => at.saturating_duration_since(Instant::now()).min(QUEUE_FULL_BACKOFF),
            None => QUEUE_FULL_BACKOFF,
        };
        if wait.is_zero() {
            kafka.context().failed(topic, &error);
            return;
        }
        // Serves delivery reports too, which is what frees room.
        kafka.poll(wait);
    }
}
