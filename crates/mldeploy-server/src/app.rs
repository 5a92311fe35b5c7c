//! Wiring: the master side (settings, the models each generation serves, shared memory,
//! supervision) and the worker side (load the models, start the event producer, serve HTTP
//! until told to stop).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mldeploy_model::{LoadContext, Model, ModelError, ModelLoader, PredictInput};
use mldeploy_prefork::{exit_code, App, Stop, SupervisorConfig, SupervisorEvent, Worker, WorkerHandle};
use slog::{error, info, o, warn, Logger};

use crate::cli::{Invocation, SettingsSource};
use crate::config::{ConfigError, Settings};
use crate::events::{self, EventSettings};
use crate::http;
use crate::log::{self, Logs};
use crate::metrics::{Metrics, MetricsSettings};
use crate::pipeline::{Calls, Failure};
use crate::registry::{ModelSource, Registry};
use crate::repository::{self, Mailbox, RepositoryError, RepositoryLink, Selection, MAILBOX_WORDS};
use crate::service::{HttpSettings, ServeContext};
use crate::slots::ModelSlots;

/// Exit code for a refused configuration (as clap uses for usage errors).
const EXIT_CONFIG: u8 = 2;

/// The whole `mldeploy` command line (`serve`, `check`, `--version`) for `loader`.
pub fn run_cli<L: ModelLoader>(loader: L) -> ExitCode {
    let invocation = match crate::cli::parse(std::env::args_os()) {
        Ok(inv) => inv,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(EXIT_CONFIG) } else { ExitCode::SUCCESS };
        }
    };
    let (source, check) = match invocation {
        Invocation::Serve(s) => (s, false),
        Invocation::Check(s) => (s, true),
    };
    let settings = match source.load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mldeploy: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = event_settings(&settings).validate() {
        eprintln!("mldeploy: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = if check { run_check(&loader, &settings) } else { serve(loader, source, settings) };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("mldeploy: {message}");
            ExitCode::from(1)
        }
    }
}

/// One model a generation serves: what the loader is given, and the key of its shared slots.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelSpec {
    /// Its shared slots' key: the repository name, else the path (or `builtin`).
    key: String,
    /// A repository model's name: its directory's, which its package must carry too.
    name: Option<String>,
    source: ModelSource,
}

/// Why the master refused the settings or the models of a generation.
#[derive(Debug)]
enum PrepareError {
    /// The settings do not parse or make no sense.
    Settings(ConfigError),
    /// The model repository cannot be read, or lacks a version asked for.
    Repository(RepositoryError),
}

impl std::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrepareError::Settings(e) => e.fmt(f),
            PrepareError::Repository(e) => e.fmt(f),
        }
    }
}

impl From<ConfigError> for PrepareError {
    fn from(e: ConfigError) -> Self {
        PrepareError::Settings(e)
    }
}

impl From<RepositoryError> for PrepareError {
    fn from(e: RepositoryError) -> Self {
        PrepareError::Repository(e)
    }
}

/// The models `settings` name: the packages given, the repository's selected models, or the
/// loader's built-in model.
fn resolve_models(settings: &Settings, selection: &Selection) -> Result<Vec<ModelSpec>, PrepareError> {
    let s = &settings.server;
    if let Some(root) = &s.model_repository {
        let pins = settings.model_versions()?;
        let models = repository::scan(root)?;
        let mut specs = Vec::new();
        for model in models.iter().filter(|m| selection.serves(&m.name)) {
            let pin = pins.iter().find(|(name, _)| *name == model.name).map(|(_, v)| v.as_str());
            let (path, version) = model.package(root, pin)?;
            specs.push(ModelSpec {
                key: format!("repository/{}", model.name),
                name: Some(model.name.clone()),
                source: ModelSource { path: Some(path), repository_version: version },
            });
        }
        return Ok(specs);
    }
    if s.model.is_empty() {
        return Ok(vec![ModelSpec { key: "builtin".into(), name: None, source: ModelSource::default() }]);
    }
    Ok(s.model
        .iter()
        .map(|path| ModelSpec {
            key: format!("path/{}", path.display()),
            name: None,
            source: ModelSource { path: Some(path.clone()), repository_version: None },
        })
        .collect())
}

/// Why the models of a generation could not be loaded.
#[derive(Debug)]
enum LoadFailure {
    /// A model's loader failed (or panicked).
    Model { what: String, error: String },
    /// The models cannot be served together.
    Registry(crate::registry::RegistryError),
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadFailure::Model { what, error } => write!(f, "{what}: {error}"),
            LoadFailure::Registry(e) => e.fmt(f),
        }
    }
}

/// Load every model of `specs` with `loader`, each with its own shared slots.
fn load_models<L: ModelLoader>(
    loader: &L,
    specs: &[ModelSpec],
    slots: &ModelSlots,
    metrics: &Metrics,
    settings: &Settings,
    log: &Logger,
) -> Result<Registry, LoadFailure> {
    let mut models: Vec<(Arc<dyn Model>, ModelSource)> = Vec::with_capacity(specs.len());
    let engine_settings = Arc::new(settings.engines.to_map());
    for spec in specs {
        let path = spec.source.path.as_deref();
        let what = path.map_or_else(|| "the built-in model".to_string(), |p| p.display().to_string());
        let shared = slots.claim(&spec.key).unwrap_or_else(|| {
            warn!(log, "no shared slots left: this model's feedback figures cover this worker only"; "model" => &what);
            mldeploy_model::SharedSlots::private(crate::slots::REGION_LEN)
        });
        let ctx = LoadContext {
            shared,
            metrics: metrics.model_sink(),
            engine_threads: settings.server.engine_threads,
            threads: settings.server.threads,
            engine_settings: Arc::clone(&engine_settings),
        };
        let started = Instant::now();
        let loaded = std::panic::catch_unwind(AssertUnwindSafe(|| loader.load(path, &ctx)));
        let model = match loaded {
            Ok(Ok(model)) => model,
            Ok(Err(e)) => return Err(LoadFailure::Model { what, error: e.to_string() }),
            Err(_) => return Err(LoadFailure::Model { what, error: "the loader panicked".into() }),
        };
        if let Some(name) = spec.name.as_deref().filter(|name| *name != model.info().name) {
            let error = format!(
                "the package in repository directory {name:?} is named {:?}: a repository model's directory is \
                 named after the model (the V2 API loads and unloads it by that name)",
                model.info().name
            );
            return Err(LoadFailure::Model { what, error });
        }
        let seconds = started.elapsed().as_secs_f64();
        metrics.model_load_seconds(seconds);
        for e in metrics.declare_model_metrics(&*model) {
            warn!(log, "model metric not registered"; "error" => %e);
        }
        let info = model.info();
        info!(log, "model loaded"; "model" => &info.name, "version" => &info.version, "kind" => &info.kind,
            "seconds" => seconds);
        models.push((model, spec.source.clone()));
    }
    Registry::new(models, &settings.http.api_prefix).map_err(LoadFailure::Registry)
}

/// `mldeploy check`: load the models and predict each one's sample through the same pipeline
/// as the predict route; print the answers.
fn run_check<L: ModelLoader>(loader: &L, settings: &Settings) -> Result<u8, String> {
    let specs = resolve_models(settings, &Selection::default()).map_err(|e| e.to_string())?;
    let log = Logger::root(slog::Discard, o!());
    let metrics = Metrics::disabled();
    let slots = ModelSlots::private(specs.len().max(1));
    let registry =
        load_models(loader, &specs, &slots, &metrics, settings, &log).map_err(|e| e.to_string())?;
    let calls = Calls { metrics: &metrics, worker: None, log: &log, may_block: false };
    for entry in registry.iter() {
        let info = entry.info();
        let sample = info.sample.clone();
        let predicted = calls
            .check_body(entry, &sample)
            .map_err(Failure::Model)
            .and_then(|checked| {
                let input = PredictInput { body: sample, table: checked.table, form: None };
                calls.predict(entry, input, "check")
            })
            .map_err(|e| match e {
                Failure::Model(ModelError::Invalid { errors, .. }) => {
                    let reasons: Vec<String> = errors.iter().map(|r| r.message.clone()).collect();
                    format!(
                        "model {}: the sample input does not predict: invalid input: {}",
                        info.name,
                        reasons.join("; ")
                    )
                }
                Failure::Model(e) => format!("model {}: the sample input does not predict: {e}", info.name),
                Failure::Panicked => {
                    format!("model {}: the sample input does not predict: the model panicked", info.name)
                }
            })?;
        let answer = crate::protocol::ml_deploy::render(entry, &predicted).map_err(|e| e.to_string())?;
        println!("{}", String::from_utf8_lossy(&answer));
        eprintln!(
            "mldeploy: model {} {} ({}) loaded and predicted its sample",
            info.name, info.version, info.kind
        );
    }
    Ok(0)
}

fn event_settings(s: &Settings) -> EventSettings {
    let k = &s.kafka;
    EventSettings {
        brokers: k.kafka_broker.clone(),
        queue_capacity: k.event_queue,
        predict_topic: k.predict_topic.clone(),
        feedback_topic: k.feedback_topic.clone(),
        client_id: k.kafka_client_id.clone(),
        acks: k.kafka_acks.clone(),
        linger_ms: k.kafka_linger_ms,
        compression: k.kafka_compression.clone(),
        message_timeout_ms: k.kafka_message_timeout_ms,
        // Validated when the settings were loaded.
        options: s.kafka_options().unwrap_or_default(),
    }
}

fn http_settings(s: &Settings) -> HttpSettings {
    HttpSettings {
        api_prefix: s.http.api_prefix.clone(),
        max_body: s.server.max_body,
        keepalive: Duration::from_secs(s.server.keepalive),
        request_timeout: Duration::from_secs(s.server.request_timeout),
        linger_time: Duration::from_secs(s.server.linger_time),
        linger_bytes: s.server.linger_bytes,
        balance_connections: s.server.balance_connections,
        cors_origins: s.http.cors_origins.clone(),
        threads: s.server.threads,
        access_log: s.log.access_log || s.log.access_log_file.is_some(),
        graceful_timeout: Duration::from_secs(s.server.graceful_timeout),
    }
}

fn supervisor_config(s: &Settings) -> SupervisorConfig {
    SupervisorConfig {
        workers: s.server.workers,
        threads: s.server.threads,
        timeout: s.timeout(),
        graceful_timeout: Duration::from_secs(s.server.graceful_timeout),
        max_requests: s.server.max_requests,
        max_requests_jitter: s.server.max_requests_jitter,
        pidfile: s.server.pidfile.clone(),
        user: s.server.user.clone(),
        group: s.server.group.clone(),
    }
}

/// What one generation of workers serves with.
struct Plan {
    settings: Settings,
    models: Vec<ModelSpec>,
}

/// A repository change the master took, waiting for the end of the reload that carries it.
struct PendingChange {
    generation: u64,
    selection: Selection,
}

/// The application the master supervises.
struct ServerApp<L> {
    loader: Arc<L>,
    source: SettingsSource,
    /// The plans of the generations whose workers may still be started, by generation number:
    /// a worker respawned in the serving generation after a failed reload keeps that
    /// generation's settings and models, not the refused ones. Pruned to the serving generation
    /// when a reload ends, so reloads do not pile plans up in the master.
    generations: BTreeMap<u64, Plan>,
    /// The number the supervisor gives the next configuration `prepare` accepts.
    next_generation: u64,
    logs: Logs,
    metrics: Metrics,
    slots: ModelSlots,
    mailbox: Mailbox,
    /// The repository models served (all but those unloaded).
    selection: Selection,
    pending: Option<PendingChange>,
    reopen_logs: &'static AtomicU64,
}

fn serve<L: ModelLoader>(loader: L, source: SettingsSource, settings: Settings) -> Result<u8, String> {
    let models = resolve_models(&settings, &Selection::default()).map_err(|e| e.to_string())?;
    // Everything shared by the workers is mapped now, before any fork.
    let shared =
        |len| mldeploy_prefork::shared_slots(len).map_err(|e| format!("cannot map shared memory: {e}"));
    let reopen_logs = &shared(1)?[0];
    let logs =
        log::build(&settings.log, reopen_logs).map_err(|e| format!("cannot open the access log: {e}"))?;
    let metrics_settings = MetricsSettings { max_series: settings.metrics.max_series };
    let metrics = if settings.metrics.metrics_enabled {
        Metrics::shared(&metrics_settings).map_err(|e| format!("cannot map shared memory: {e}"))?
    } else {
        Metrics::disabled()
    };
    let slots = ModelSlots::new(shared(ModelSlots::WORDS)?);
    let mailbox = Mailbox::new(shared(MAILBOX_WORDS)?);
    let addrs = settings.bind_addrs().map_err(|e| e.to_string())?;
    let listeners = mldeploy_prefork::bind_listeners(&addrs, settings.server.backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.server.bind.join(", ")))?;
    let log = logs.log.clone();
    let described: Vec<String> = models.iter().map(|m| loader.describe(m.source.path.as_deref())).collect();
    info!(log, "listening"; "addresses" => format_addrs(&listeners), "models" => described.join("; "));
    let app_debug = settings.server.app_debug;
    let app = ServerApp {
        loader: Arc::new(loader),
        source,
        generations: BTreeMap::from([(0, Plan { settings, models })]),
        next_generation: 1,
        logs,
        metrics,
        slots,
        mailbox,
        selection: Selection::default(),
        pending: None,
        reopen_logs,
    };
    let code = if app_debug {
        info!(log, "serving in one process (app_debug)");
        mldeploy_prefork::run_single(app, listeners, log)
    } else {
        mldeploy_prefork::run(app, listeners, log)
    };
    Ok(u8::try_from(code).unwrap_or(1))
}

fn format_addrs(listeners: &[TcpListener]) -> String {
    listeners.iter().filter_map(|l| l.local_addr().ok()).map(|a| a.to_string()).collect::<Vec<_>>().join(",")
}

impl<L: ModelLoader> ServerApp<L> {
    /// The settings and models of a reload: the settings read again, and the repository
    /// change a worker asked for, if any.
    fn prepare_reload(&mut self) -> Result<SupervisorConfig, PrepareError> {
        let request = self.mailbox.take();
        let selection = match &request {
            Some(r) => self.selection.with(r.change, &r.name),
            None => self.selection.clone(),
        };
        let prepared = self.source.load().map_err(PrepareError::from).and_then(|fresh| {
            let models = resolve_models(&fresh, &selection)?;
            Ok((fresh, models))
        });
        let (fresh, models) = match prepared {
            Ok(p) => p,
            Err(e) => {
                if request.is_some() {
                    self.mailbox.finish(false, &e.to_string());
                }
                return Err(e);
            }
        };
        let (_, current) = self.generations.last_key_value().expect("the serving generation is kept");
        if fresh.bind_addrs().ok() != current.settings.bind_addrs().ok() {
            warn!(
                self.logs.log,
                "bind addresses changed; they take effect at the next restart, not on reload"
            );
        }
        let config = supervisor_config(&fresh);
        let generation = self.next_generation;
        if request.is_some() {
            self.pending = Some(PendingChange { generation, selection });
        } else {
            // A plain reload keeps the repository's selection.
            self.pending = None;
        }
        self.generations.insert(generation, Plan { settings: fresh, models });
        self.next_generation += 1;
        Ok(config)
    }
}

impl<L: ModelLoader> App for ServerApp<L> {
    type Error = PrepareError;

    fn prepare(&mut self, reload: bool) -> Result<SupervisorConfig, PrepareError> {
        if !reload {
            return Ok(supervisor_config(&self.generations[&0].settings));
        }
        self.prepare_reload()
    }

    fn run_worker(&self, worker: Worker) -> i32 {
        let log = self.logs.log.new(o!("worker" => worker.index, "generation" => worker.generation));
        let plan = (self.generations.get(&worker.generation))
            .or(self.generations.values().next_back())
            .expect("the serving generation is kept");
        let settings = &plan.settings;
        let registry =
            match load_models(&*self.loader, &plan.models, &self.slots, &self.metrics, settings, &log) {
                Ok(registry) => registry,
                Err(e) => {
                    error!(log, "model load failed"; "error" => %e);
                    self.mailbox.report_load_failure(&e.to_string());
                    return exit_code::BOOT_FAILURE;
                }
            };
        // Model code ran on this thread (a Python model's `load()` may call `signal.signal`):
        // the worker's signals keep their meaning.
        for signal in worker.handle.restore_signals() {
            warn!(log, "the model changed a signal's handler; the worker's own is back"; "signal" => signal);
        }
        let stats: Arc<dyn events::EventStats> = Arc::new(self.metrics.clone());
        let (events, producer) = events::start(&event_settings(settings), log.clone(), stats);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let fast_stop = Arc::new(AtomicBool::new(false));
        spawn_stop_watch(worker.handle.clone(), stop_tx, Arc::clone(&fast_stop));
        let repository = settings
            .server
            .model_repository
            .as_ref()
            .map(|root| RepositoryLink::new(root.clone(), self.mailbox, worker.handle.clone()));
        let ctx = ServeContext::new(
            registry,
            events,
            self.metrics.clone(),
            Some(worker.handle),
            repository,
            log.clone(),
            self.logs.access.clone(),
            http_settings(settings),
        );
        let ctx = Arc::new(ctx);
        if let Err(e) = http::serve(worker.listeners, Arc::clone(&ctx), stop_rx) {
            error!(log, "serving failed"; "error" => %e);
            return 1;
        }
        if !fast_stop.load(Ordering::Acquire) {
            // On the thread that loaded the models, as their contract says.
            for entry in ctx.models.iter() {
                let model = &entry.model;
                if std::panic::catch_unwind(AssertUnwindSafe(|| model.shutdown())).is_err() {
                    warn!(log, "a model panicked while shutting down"; "model" => entry.name());
                }
            }
        }
        if let Some(producer) = producer {
            // A fast stop leaves no time to flush; a graceful one gets what the grace period has left.
            let grace = Duration::from_secs(settings.server.graceful_timeout);
            let budget = if fast_stop.load(Ordering::Acquire) { Duration::ZERO } else { grace / 2 };
            producer.shutdown(Instant::now() + budget);
        }
        info!(log, "worker stopped");
        exit_code::OK
    }

    fn on_event(&mut self, event: &SupervisorEvent) {
        match event {
            SupervisorEvent::WorkerExited { pid, reason } => {
                self.metrics.worker_exited(*pid);
                if reason.is_restart() {
                    self.metrics.worker_restart(reason.as_str());
                }
            }
            SupervisorEvent::WorkersAlive(n) => self.metrics.workers_alive(*n),
            SupervisorEvent::ReloadFinished { ok, serving } => {
                self.metrics.reload(*ok);
                self.generations.retain(|generation, _| generation == serving);
                if let Some(change) = self.pending.take() {
                    let applied = *ok && change.generation == *serving;
                    if applied {
                        self.selection = change.selection;
                    }
                    self.mailbox.finish(applied, "a worker of the new generation failed to start");
                }
            }
            SupervisorEvent::WorkerReady { .. } => {}
        }
    }

    fn reopen_logs(&mut self) {
        self.reopen_logs.fetch_add(1, Ordering::Release);
    }
}

/// Forward the master's stop request to the HTTP service; remember whether it was fast.
fn spawn_stop_watch(handle: WorkerHandle, tx: crossbeam_channel::Sender<Stop>, fast_stop: Arc<AtomicBool>) {
    std::thread::Builder::new()
        .name("stop-watch".into())
        .spawn(move || {
            let stop = handle.wait_stop();
            fast_stop.store(stop == Stop::Fast, Ordering::Release);
            let _ = tx.send(stop);
        })
        .expect("spawn the stop-watch thread");
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    fn no_model(_: Option<&Path>, _: &LoadContext) -> Result<Arc<dyn Model>, ModelError> {
        unreachable!("the master never loads the model")
    }

    type NoModel = fn(Option<&Path>, &LoadContext) -> Result<Arc<dyn Model>, ModelError>;

    /// The master's side of the application, as `serve` builds it, without the listeners.
    fn master_app() -> ServerApp<NoModel> {
        let Ok(Invocation::Serve(source)) = crate::cli::parse(["mldeploy", "serve", "--workers", "1"]) else {
            panic!("a serve command line");
        };
        let settings = source.load().expect("default settings");
        let reopen_logs: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let leak = |n| -> &'static [AtomicU64] { Box::leak((0..n).map(|_| AtomicU64::new(0)).collect()) };
        let models = resolve_models(&settings, &Selection::default()).unwrap();
        ServerApp {
            loader: Arc::new(no_model as NoModel),
            source,
            logs: log::build(&settings.log, reopen_logs).expect("logs to stderr"),
            generations: BTreeMap::from([(0, Plan { settings, models })]),
            next_generation: 1,
            metrics: Metrics::disabled(),
            slots: ModelSlots::private(1),
            mailbox: Mailbox::new(leak(MAILBOX_WORDS)),
            selection: Selection::default(),
            pending: None,
            reopen_logs,
        }
    }

    fn kept(app: &ServerApp<impl ModelLoader>) -> Vec<u64> {
        app.generations.keys().copied().collect()
    }

    #[test]
    fn reloads_keep_only_the_settings_of_the_generation_that_serves() {
        let mut app = master_app();
        app.prepare(false).expect("the first configuration");
        for serving in 1..=5 {
            app.prepare(true).expect("the same settings again");
            assert_eq!(kept(&app), [serving - 1, serving], "the old and the booting generation");
            app.on_event(&SupervisorEvent::ReloadFinished { ok: true, serving });
            assert_eq!(kept(&app), [serving]);
        }
        // A reload whose generation (6) failed: its settings go, the serving one's stay, and
        // numbering goes on as the supervisor's does.
        app.prepare(true).expect("accepted, then failed to boot");
        app.on_event(&SupervisorEvent::ReloadFinished { ok: false, serving: 5 });
        assert_eq!(kept(&app), [5]);
        app.prepare(true).expect("the next reload");
        assert_eq!(kept(&app), [5, 7]);
    }

    #[test]
    fn no_model_means_the_builtin_one_and_paths_keep_their_order() {
        let settings = Settings::default();
        let specs = resolve_models(&settings, &Selection::default()).unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].source.path, None);
        let mut settings = Settings::default();
        settings.server.model = vec![PathBuf::from("b"), PathBuf::from("a")];
        let specs = resolve_models(&settings, &Selection::default()).unwrap();
        let paths: Vec<_> = specs.iter().map(|s| s.source.path.clone().unwrap()).collect();
        assert_eq!(paths, [PathBuf::from("b"), PathBuf::from("a")]);
    }
}
