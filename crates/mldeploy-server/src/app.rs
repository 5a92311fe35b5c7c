//! Wiring: the master side (settings, shared memory, supervision) and the worker side (load the
//! model, start the event producer, serve HTTP until told to stop).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::panic::AssertUnwindSafe;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mldeploy_model::decode::decode_rows;
use mldeploy_model::{LoadContext, Model, ModelError, ModelLoader, PredictInput, Schema, SharedSlots};
use mldeploy_prefork::{
    exit_code, App, RestartReason, Stop, SupervisorConfig, SupervisorEvent, Worker, WorkerHandle,
};
use slog::{error, info, o, warn, Logger};

use crate::cli::{Invocation, SettingsSource};
use crate::config::Settings;
use crate::events::{self, EventSettings};
use crate::http::{self, HttpSettings, ServeContext};
use crate::log::{self, Logs};
use crate::metrics::{Metrics, MetricsSettings};

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
    // Each worker already runs `--threads` model calls at once; a model library's own thread
    // pool (candle's matrix products use rayon) per call only competes with them: measured
    // 10-30x slower for one-row predictions on 2 cores. The user's own setting wins.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // The process is single-threaded here: nothing reads the environment concurrently.
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
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

/// `mldeploy check`: load the model and predict its sample through the same validation as the
/// HTTP route.
fn run_check<L: ModelLoader>(loader: &L, settings: &Settings) -> Result<u8, String> {
    let path = settings.server.model.as_deref();
    let model = loader.load(path, &LoadContext::private()).map_err(|e| e.to_string())?;
    let info = model.info();
    let response = predict_sample(&*model, &info.sample)
        .map_err(|e| format!("the model's sample input does not predict: {e}"))?;
    println!("{}", serde_json::to_string_pretty(&response).unwrap_or_default());
    eprintln!(
        "mldeploy: model {} {} ({}) loaded and predicted its sample",
        info.name, info.version, info.kind
    );
    Ok(0)
}

/// Predict `sample` the way the predict route does: decode, validate against the schema, call.
fn predict_sample(model: &dyn Model, sample: &serde_json::Value) -> Result<serde_json::Value, String> {
    let info = model.info();
    let table = if info.features.is_empty() {
        None
    } else {
        let schema = Schema::new(info.features.clone());
        schema.check().map_err(|e| e.to_string())?;
        let (rows, on_error) = decode_rows(sample).map_err(|e| e.to_string())?;
        let validated = schema.validate(&rows, on_error).map_err(|e| match e {
            ModelError::Invalid { errors, .. } => {
                let reasons: Vec<String> = errors.iter().map(|r| r.message.clone()).collect();
                format!("invalid input: {}", reasons.join("; "))
            }
            other => other.to_string(),
        })?;
        Some(validated.table)
    };
    let input = PredictInput { body: sample.clone(), table, form: None };
    let response = std::panic::catch_unwind(AssertUnwindSafe(|| model.predict(&input)))
        .map_err(|_| "the model panicked".to_string())?
        .map_err(|e| e.to_string())?;
    let mut json = serde_json::to_value(&response).map_err(|e| e.to_string())?;
    json["model"] = info.name.clone().into();
    json["version"] = info.version.clone().into();
    Ok(json)
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

/// The application the master supervises.
struct ServerApp<L> {
    loader: Arc<L>,
    source: SettingsSource,
    /// The settings of the generations whose workers may still be started, by generation
    /// number: a worker respawned in the serving generation after a failed reload keeps that
    /// generation's settings (and model path), not the refused ones. Pruned to the serving
    /// generation when a reload ends, so reloads do not pile settings up in the master.
    generations: BTreeMap<u64, Settings>,
    /// The number the supervisor gives the next configuration `prepare` accepts.
    next_generation: u64,
    logs: Logs,
    metrics: Metrics,
    model_slots: SharedSlots,
    reopen_logs: &'static AtomicU64,
}

fn serve<L: ModelLoader>(loader: L, source: SettingsSource, settings: Settings) -> Result<u8, String> {
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
    let model_slots = SharedSlots::new(shared(SharedSlots::DEFAULT_LEN)?);
    let addrs = settings.bind_addrs().map_err(|e| e.to_string())?;
    let listeners = mldeploy_prefork::bind_listeners(&addrs, settings.server.backlog)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.server.bind.join(", ")))?;
    let log = logs.log.clone();
    info!(log, "listening"; "addresses" => format_addrs(&listeners), "model" => loader.describe(settings.server.model.as_deref()));
    let app_debug = settings.server.app_debug;
    let app = ServerApp {
        loader: Arc::new(loader),
        source,
        generations: BTreeMap::from([(0, settings)]),
        next_generation: 1,
        logs,
        metrics,
        model_slots,
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
    /// Load the model in this worker; a failure (or a panic) is a boot failure.
    fn load_model(&self, settings: &Settings, log: &Logger) -> Option<Arc<dyn Model>> {
        let path = settings.server.model.as_deref();
        let ctx = LoadContext { shared: self.model_slots, metrics: self.metrics.model_sink() };
        let started = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.loader.load(path, &ctx))) {
            Ok(Ok(model)) => {
                let secs = started.elapsed().as_secs_f64();
                let info = model.info();
                self.metrics.set_model(&info.name, &info.version);
                for e in self.metrics.declare_model_metrics(&*model) {
                    warn!(log, "model metric not registered"; "error" => %e);
                }
                self.metrics.model_load_seconds(secs);
                info!(log, "model loaded"; "model" => &info.name, "version" => &info.version, "kind" => &info.kind, "seconds" => secs);
                Some(model)
            }
            Ok(Err(e)) => {
                error!(log, "model load failed"; "error" => %e);
                None
            }
            Err(_) => {
                error!(log, "model load failed"; "error" => "the loader panicked");
                None
            }
        }
    }
}

impl<L: ModelLoader> App for ServerApp<L> {
    fn prepare(&mut self, reload: bool) -> Result<SupervisorConfig, String> {
        if !reload {
            return Ok(supervisor_config(&self.generations[&0]));
        }
        let fresh = self.source.load().map_err(|e| e.to_string())?;
        let (_, current) = self.generations.last_key_value().expect("the serving generation is kept");
        if fresh.bind_addrs().ok() != current.bind_addrs().ok() {
            warn!(
                self.logs.log,
                "bind addresses changed; they take effect at the next restart, not on reload"
            );
        }
        let config = supervisor_config(&fresh);
        self.generations.insert(self.next_generation, fresh);
        self.next_generation += 1;
        Ok(config)
    }

    fn run_worker(&self, worker: Worker) -> i32 {
        let log = self.logs.log.new(o!("worker" => worker.index, "generation" => worker.generation));
        let settings = (self.generations.get(&worker.generation))
            .or(self.generations.values().next_back())
            .expect("the serving generation is kept");
        let Some(model) = self.load_model(settings, &log) else {
            return exit_code::BOOT_FAILURE;
        };
        let stats: Arc<dyn events::EventStats> = Arc::new(self.metrics.clone());
        let tag = events::ModelTag { name: model.info().name.clone(), version: model.info().version.clone() };
        let (events, producer) = events::start(&event_settings(settings), tag, log.clone(), stats);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let fast_stop = Arc::new(AtomicBool::new(false));
        spawn_stop_watch(worker.handle.clone(), stop_tx, Arc::clone(&fast_stop));
        let ctx = ServeContext {
            model,
            events,
            metrics: self.metrics.clone(),
            worker: Some(worker.handle),
            log: log.clone(),
            access_log: self.logs.access.clone(),
            settings: http_settings(settings),
        };
        if let Err(e) = http::serve(worker.listeners, ctx, stop_rx) {
            error!(log, "serving failed"; "error" => %e);
            return 1;
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
                let reason = match reason {
                    RestartReason::Crash => "crash",
                    RestartReason::Timeout => "timeout",
                    RestartReason::MaxRequests => "max_requests",
                    RestartReason::Reload => "reload",
                    RestartReason::Scale => "scale",
                    RestartReason::Shutdown => return,
                    RestartReason::BootFailure => "boot_failure",
                };
                self.metrics.worker_restart(reason);
            }
            SupervisorEvent::WorkersAlive(n) => self.metrics.workers_alive(*n),
            SupervisorEvent::ReloadFinished { ok, serving } => {
                self.metrics.reload(*ok);
                self.generations.retain(|generation, _| generation == serving);
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
    use std::path::Path;

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
        let slots: &'static [AtomicU64] = Box::leak((0..8).map(|_| AtomicU64::new(0)).collect());
        ServerApp {
            loader: Arc::new(no_model as NoModel),
            source,
            logs: log::build(&settings.log, reopen_logs).expect("logs to stderr"),
            generations: BTreeMap::from([(0, settings)]),
            next_generation: 1,
            metrics: Metrics::disabled(),
            model_slots: SharedSlots::new(slots),
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
}
