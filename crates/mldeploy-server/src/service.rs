//! What a worker serves with: its models, its event and metric handles, its link to the master
//! and its HTTP settings. Built once per worker after its models are loaded; the HTTP layer and
//! every protocol read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mldeploy_prefork::WorkerHandle;

use crate::events::Events;
use crate::metrics::Metrics;
use crate::pipeline::Calls;
use crate::registry::Registry;
use crate::repository::RepositoryLink;

/// HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Prefix of the ml-deploy routes of a server with one model (`/api/ml`).
    pub api_prefix: String,
    /// Largest accepted body in bytes (413 above).
    pub max_body: usize,
    /// Idle keep-alive connections are closed after this.
    pub keepalive: Duration,
    /// A request's head and body must arrive within this (408 otherwise).
    pub request_timeout: Duration,
    /// After an answer that leaves request bytes unread (413, 408, ...), what the client still
    /// sends is read and dropped for at most this long before the connection closes...
    pub linger_time: Duration,
    /// ...and at most this many bytes.
    pub linger_bytes: usize,
    /// Take a seat on the master's board of open connections, so that a worker serving more
    /// connections than another leaves a new one to it (see `http::conn::accept_loop`).
    pub balance_connections: bool,
    /// Allowed CORS origins; `*` allows all.
    pub cors_origins: Vec<String>,
    /// Serving threads (model calls at once).
    pub threads: usize,
    /// Write an access log line per request.
    pub access_log: bool,
    /// After a graceful stop, how long open connections may take to finish before `serve`
    /// returns anyway.
    pub graceful_timeout: Duration,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            api_prefix: "/api/ml".into(),
            max_body: 10 * 1024 * 1024,
            keepalive: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            linger_time: Duration::from_secs(30),
            linger_bytes: 128 * 1024 * 1024,
            balance_connections: true,
            cors_origins: vec!["*".into()],
            threads: 1,
            access_log: false,
            graceful_timeout: Duration::from_secs(30),
        }
    }
}

/// What the HTTP service and the protocols need.
pub struct ServeContext {
    /// The loaded models.
    pub models: Registry,
    /// Where predict and feedback responses go (Kafka), when enabled.
    pub events: Events,
    /// The server-wide metric store.
    pub metrics: Metrics,
    /// The link to the master; `None` in `--app-debug` (one process).
    pub worker: Option<WorkerHandle>,
    /// Asks the master for another set of models (the V2 repository extension); `None` when
    /// the server was not started on a model repository.
    pub repository: Option<RepositoryLink>,
    /// The worker's log.
    pub log: slog::Logger,
    /// Where access log lines go.
    pub access_log: slog::Logger,
    /// HTTP settings.
    pub settings: HttpSettings,
    /// Some model's calls may hold their thread for long ([`mldeploy_model::Model::calls_may_block`]).
    calls_may_block: bool,
    draining: AtomicBool,
}

impl ServeContext {
    /// A context serving `models`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        models: Registry,
        events: Events,
        metrics: Metrics,
        worker: Option<WorkerHandle>,
        repository: Option<RepositoryLink>,
        log: slog::Logger,
        access_log: slog::Logger,
        settings: HttpSettings,
    ) -> ServeContext {
        let calls_may_block = models.iter().any(|entry| entry.model.calls_may_block());
        ServeContext {
            calls_may_block,
            models,
            events,
            metrics,
            worker,
            repository,
            log,
            access_log,
            settings,
            draining: AtomicBool::new(false),
        }
    }

    /// What the pipeline's steps need.
    pub(crate) fn calls(&self) -> Calls<'_> {
        Calls {
            metrics: &self.metrics,
            worker: self.worker.as_ref(),
            log: &self.log,
            may_block: self.calls_may_block,
        }
    }

    /// Whether the worker is stopping (it answers what is in flight, `/ready` says 503).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}
