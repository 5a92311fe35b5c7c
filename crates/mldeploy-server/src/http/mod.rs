//! The worker's HTTP service: HTTP/1.1 on hyper 1.x, one tokio runtime per worker.
//!
//! # Threads
//! [`serve`] builds a multi-thread tokio runtime with [`HttpSettings::threads`] worker threads.
//! Sockets are non-blocking and every connection is a task, so an idle or slow connection costs
//! memory, never a thread. Model calls run inline on those worker threads (not on a blocking
//! pool), which is what bounds a worker to `threads` model calls at once, as gunicorn's
//! `--threads`. Each model call (predict, feedback, custom routes) runs inside
//! [`mldeploy_prefork::WorkerHandle::busy`] (the master's hang watch) and
//! [`std::panic::catch_unwind`]: a panic answers 500 with a request id and the worker keeps
//! serving. A task ticks [`mldeploy_prefork::WorkerHandle::heartbeat`] every 500 ms (when
//! every thread is inside a model call, nothing else of the worker runs, the heartbeat
//! included: the master's timeout sees that); `ready()` is called once every listener accepts.
//! The same tick returns the allocator's free memory to the system once no exchange of 1 MiB
//! or more has ended for a second.
//!
//! # Limits
//! - Request line and headers: at most 8 KiB (hyper's `max_header_size`) and 100 headers.
//!   hyper answers a bigger head itself, with 431 and an empty body, before any service runs;
//!   the connection's I/O wrapper recognises that automatic answer (an error status without
//!   our `x-request-id` header, written as a whole) and sends our JSON error in its place. The
//!   same happens to hyper's automatic 400 for a malformed request line or header. (Only when
//!   such an answer shares a write with pipelined answers before it does hyper's bare one go
//!   out.)
//! - Idle keep-alive connections are closed after [`HttpSettings::keepalive`]. hyper's own
//!   `header_read_timeout` is not used: its clock starts when the connection goes idle, so it
//!   cannot tell an idle connection from a slow one. Instead each connection task watches its
//!   phase (idle, head arriving, request in progress): idle for `keepalive` -> closed; a head
//!   started but not complete within [`HttpSettings::request_timeout`] -> 408 JSON, closed.
//! - Body: a `Content-Length` above [`HttpSettings::max_body`] -> 413 at once, without reading
//!   the body (no `100 Continue` is sent); a chunked body is counted while read -> 413 when it
//!   passes the limit. Head and body must arrive within `request_timeout` of the first byte
//!   of the request -> 408 otherwise (the model call itself is not timed here: that is the
//!   master's `--timeout`). These answers (and 404, 405 or 415 to a request whose body is
//!   left unread) close the connection after a linger, as nginx's `lingering_close`: the
//!   writing side is shut down and what the client still sends is read and dropped until it
//!   closes, pauses for 5 s, or [`HttpSettings::linger_bytes`] or
//!   [`HttpSettings::linger_time`] run out. A client that sends its whole body before it reads
//!   (Python's `http.client`) then reads the answer: closing with unread bytes would reset the
//!   connection and fail its next write.
//! - JSON: serde_json's recursion limit (128) refuses deep nesting (400), numbers beyond
//!   `f64` are refused by the parser (400).
//!
//! # Bodies and content types
//! As in ml-deploy, a body is read as JSON whatever its Content-Type, so `curl -d` (form
//! urlencoded by default) keeps working; `multipart/form-data` is decoded into
//! [`mldeploy_model::Form`] for models without a feature schema and for custom routes (a small
//! parser of the whole body, which is read with its limit anyway: no streaming parser needed).
//! 415 is answered for a `Content-Encoding` other than `identity` (bodies are not
//! decompressed) and for multipart sent to predict/feedback of a model that declares features
//! (its rows must be JSON).
//!
//! # Stopping
//! [`Stop::Fast`]: return at once. [`Stop::Graceful`]: the listeners are dropped at once (the
//! other workers take new connections); a request in progress is answered with
//! `Connection: close`; an idle keep-alive connection stays open so that its next request is
//! answered (with `Connection: close`) rather than reset, unless it stays idle for
//! `min(keepalive, 2 s)` after the stop; `/ready` answers 503. `serve` returns when every
//! connection is done or after [`HttpSettings::graceful_timeout`]. With
//! `WorkerHandle::max_requests() > 0` the worker calls `retire()` once after that many
//! requests; the master then starts a replacement and sends the graceful stop.
//!
//! # Responses
//! Every answer carries `x-request-id` (the client's when it sent a sane one, else
//! `<pid>-<start>-<n>`) and the CORS headers; every error is JSON
//! `{"error", "message", "request_id"}` (422 adds `errors`: one [`mldeploy_model::RowError`]
//! per problem) and never holds internals. Metrics use route
//! templates only (`unmatched` for 404s) to bound label cardinality.

mod conn;
mod exchange;
mod handler;
pub(crate) mod multipart;
mod router;
#[cfg(test)]
mod tests;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mldeploy_prefork::Stop;
use slog::{info, warn};
use tokio::sync::Notify;

use crate::metrics::ModelKey;
use crate::service::ServeContext;

/// How long a drained worker keeps an idle keep-alive connection open, at most.
const DRAIN_IDLE_GRACE: Duration = Duration::from_secs(2);

/// Serve on `listeners` until `stop` yields, then drain and return.
///
/// Errors only when the runtime or the listeners cannot be set up. A closed `stop` channel
/// counts as [`Stop::Graceful`].
pub fn serve(
    listeners: Vec<TcpListener>,
    ctx: Arc<ServeContext>,
    stop: crossbeam_channel::Receiver<Stop>,
) -> std::io::Result<()> {
    let threads = ctx.settings.threads.max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("mldeploy-http")
        .enable_io()
        .enable_time()
        .build()?;
    let server = Arc::new(Server::new(ctx));
    let log = server.ctx.log.clone();

    let mut accepting = Vec::with_capacity(listeners.len());
    {
        let _entered = runtime.enter();
        for listener in listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(log, "listening"; "address" => %addr);
            }
            let listener = mldeploy_prefork::watch_listener(listener)?;
            accepting.push(runtime.spawn(conn::accept_loop(server.clone(), listener)));
        }
    }
    let ticking = server.clone();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            if let Some(worker) = &ticking.ctx.worker {
                worker.heartbeat();
            }
            ticking.release_memory_when_quiet();
        }
    });
    let names: Vec<&str> = server.ctx.models.iter().map(|e| e.name()).collect();
    info!(log, "serving"; "threads" => threads, "models" => names.join(","));
    if let Some(worker) = &server.ctx.worker {
        worker.ready();
    }

    let how = stop.recv().unwrap_or(Stop::Graceful);
    if how == Stop::Fast {
        info!(log, "fast stop");
        runtime.shutdown_background();
        return Ok(());
    }

    let open = server.open_connections();
    info!(log, "draining"; "open_connections" => open);
    server.start_drain();
    let graceful_timeout = server.ctx.settings.graceful_timeout;
    let deadline = Instant::now() + graceful_timeout;
    let drained = runtime.block_on(async {
        for task in accepting {
            let _ = task.await;
        }
        loop {
            let closed = server.all_closed.notified();
            if server.open_connections() == 0 {
                return true;
            }
            if Instant::now() >= deadline || matches!(stop.try_recv(), Ok(Stop::Fast)) {
                return false;
            }
            // Wake on the last close, or re-check the deadline and a Fast stop now and then.
            let _ = tokio::time::timeout(Duration::from_millis(100), closed).await;
        }
    });
    if drained {
        info!(log, "drained");
    } else {
        warn!(log, "stopping with open connections"; "open_connections" => server.open_connections());
    }
    runtime.shutdown_timeout(Duration::from_millis(100));
    Ok(())
}

/// State shared by every connection of a worker.
pub(crate) struct Server {
    pub(crate) ctx: Arc<ServeContext>,
    pub(crate) router: router::Router,
    pub(crate) cors: handler::Cors,
    /// The metric labels of requests that concern no model: the model's own when the server
    /// has one, as every request is about it; empty otherwise.
    pub(crate) unmatched_key: ModelKey,
    /// The clock all connection timestamps count from.
    pub(crate) epoch: Instant,
    /// Nanoseconds after `epoch` when the drain began; 0 while serving.
    drain_started: AtomicU64,
    /// Wakes accept loops and connection watchdogs when the drain begins.
    pub(crate) drain_begun: Notify,
    open: AtomicUsize,
    pub(crate) all_closed: Notify,
    completed: AtomicU64,
    /// This worker's place on its master's board of open connections (see the accept loop).
    pub(crate) seat: Option<mldeploy_prefork::Seat>,
    max_requests: u64,
    retired: AtomicBool,
    next_id: AtomicU64,
    /// `<pid>-<start>-` prefix of generated request ids.
    id_prefix: String,
    /// Nanoseconds after `epoch` when the last large exchange ended, while its memory has not
    /// been returned yet; 0 otherwise.
    large_exchange_end: AtomicU64,
}

/// How long after the last large exchange the worker returns the allocator's free memory to
/// the system. Back-to-back large requests keep reusing it (returned memory must be faulted in
/// again: with jemalloc, an 8.9 MB prediction took 0.72 to 0.77 s after a release, 0.65 to
/// 0.78 s without); a one-off peak does not stay resident.
const MEMORY_RELEASE_QUIET: Duration = Duration::from_secs(1);

impl Server {
    fn new(ctx: Arc<ServeContext>) -> Self {
        let mut router = router::Router::default();
        for protocol in crate::protocol::all() {
            router.add(protocol.name(), protocol.routes(&ctx.models, &ctx.settings));
        }
        for shadowed in router.shadowed() {
            warn!(ctx.log, "route shadowed by a route of the server or another protocol"; "path" => shadowed);
        }
        let cors = handler::Cors::new(&ctx.settings.cors_origins);
        let unmatched_key = ctx.models.single().map_or_else(ModelKey::none, |e| e.metric_key.clone());
        let max_requests = ctx.worker.as_ref().map_or(0, |w| w.max_requests());
        let seat =
            (ctx.worker.as_ref()).filter(|_| ctx.settings.balance_connections).and_then(|w| w.take_seat());
        let start =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let id_prefix = format!("{:x}-{:x}-", std::process::id(), start);
        Self {
            ctx,
            router,
            cors,
            unmatched_key,
            epoch: Instant::now(),
            drain_started: AtomicU64::new(0),
            drain_begun: Notify::new(),
            open: AtomicUsize::new(0),
            all_closed: Notify::new(),
            completed: AtomicU64::new(0),
            seat,
            max_requests,
            retired: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            id_prefix,
            large_exchange_end: AtomicU64::new(0),
        }
    }

    /// A large request or answer is over (its buffers are freed or about to be).
    pub(crate) fn large_exchange_ended(&self) {
        self.large_exchange_end.store(self.now_nanos(), Ordering::Relaxed);
    }

    /// Returns free memory to the system once no large exchange has ended for
    /// [`MEMORY_RELEASE_QUIET`]. Called by the worker's 500 ms tick.
    fn release_memory_when_quiet(&self) {
        let ended = self.large_exchange_end.load(Ordering::Relaxed);
        let quiet = MEMORY_RELEASE_QUIET.as_nanos() as u64;
        if ended != 0
            && self.now_nanos().saturating_sub(ended) >= quiet
            && self
                .large_exchange_end
                .compare_exchange(ended, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            mldeploy_prefork::release_free_memory();
        }
    }

    /// Nanoseconds since `epoch` (at least 1, so that 0 can mean "never").
    pub(crate) fn now_nanos(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    pub(crate) fn draining(&self) -> bool {
        self.ctx.draining()
    }

    /// When the drain began, if it has.
    pub(crate) fn drain_started(&self) -> Option<Instant> {
        match self.drain_started.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.epoch + Duration::from_nanos(n)),
        }
    }

    /// How long an idle connection may stay open once draining.
    pub(crate) fn drain_idle_grace(&self) -> Duration {
        self.ctx.settings.keepalive.min(DRAIN_IDLE_GRACE)
    }

    fn start_drain(&self) {
        self.drain_started.store(self.now_nanos(), Ordering::Relaxed);
        self.ctx.start_draining();
        if let Some(seat) = &self.seat {
            seat.leave();
        }
        self.drain_begun.notify_waiters();
    }

    pub(crate) fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub(crate) fn connection_opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(seat) = &self.seat {
            seat.publish(open);
        }
    }

    pub(crate) fn connection_closed(&self) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
        if let Some(seat) = &self.seat {
            seat.publish(open);
        }
        if open == 0 {
            self.all_closed.notify_waiters();
        }
    }

    /// Count a finished request; retire once at the worker's max-requests.
    pub(crate) fn request_completed(&self) {
        let n = self.completed.fetch_add(1, Ordering::Relaxed) + 1;
        if self.max_requests > 0 && n >= self.max_requests && !self.retired.swap(true, Ordering::Relaxed) {
            if let Some(worker) = &self.ctx.worker {
                info!(self.ctx.log, "max requests reached, retiring"; "requests" => n);
                worker.retire();
            }
        }
    }

    /// A fresh request id.
    pub(crate) fn new_request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(n);
        let mut id = String::with_capacity(self.id_prefix.len() + digits.len());
        id.push_str(&self.id_prefix);
        id.push_str(digits);
        id
    }
}
