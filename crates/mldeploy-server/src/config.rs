//! Settings: defaults < config file (TOML) < environment < command-line flags.
//!
//! Every setting has one key. The same key names the TOML entry (in its section), the
//! environment variable `MLDEPLOY_<KEY>` (upper case) and the flag `--<key>` (with dashes).
//! ml-deploy's environment names are accepted too (`KAFKA_BROKER`, `APP_DEBUG`, `LOG_LEVEL`,
//! `GUNICORN_ACCESS_LOG`, `GUNICORN_WORKERS`, `GUNICORN_THREAD`, ...). A bad value is refused at
//! start with a message naming the setting and the accepted values.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Every setting of the server, with its default. `configs/mldeploy.toml` documents the same
/// keys in the file's form.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `[server]`: processes, sockets and limits.
    pub server: ServerSettings,
    /// `[http]`: routes and HTTP behaviour.
    pub http: HttpSection,
    /// `[log]`: logging.
    pub log: LogSettings,
    /// `[kafka]`: metric events.
    pub kafka: KafkaSettings,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsSection,
    /// `[python]`: Python models (ml-deploy interface classes).
    pub python: PythonSection,
    /// `[engines]`: what the model engines need from the machine.
    pub engines: EngineSettings,
}

/// `[python]` section: read by the `mldeploy-python` binary, which serves ml-deploy interface
/// classes (docs/python-models.md).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonSection {
    /// The Python environment: a virtualenv directory, its `python`, or a bare interpreter.
    /// Unset: `$VIRTUAL_ENV`, else the virtualenv of the `python3` first on `PATH`, else the
    /// interpreter `mldeploy-python` was built with.
    pub python: Option<PathBuf>,
    /// ml-deploy's `config.yaml`: its `app:` section sets the settings it names (interface,
    /// workers, threads, http_port, ...), above this file and below the environment and flags.
    pub ml_deploy_config: Option<PathBuf>,
    /// ml-deploy's `metric_class`: `module.Class` of a `Metric` subclass whose `register()`
    /// declares the model's metrics.
    pub metric_class: Option<String>,
}

/// `[server]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// The model packages (or what a custom loader takes), one model each; none and no
    /// `model_repository`: the built-in model. A single path may be written as a string.
    #[serde(deserialize_with = "one_or_many")]
    pub model: Vec<PathBuf>,
    /// A directory of model packages, one per subdirectory (numbered subdirectories of a
    /// package are its versions): every model in it is served, and the V2 repository API
    /// loads and unloads them.
    pub model_repository: Option<PathBuf>,
    /// Which version of a repository model serves, as `NAME=VERSION`; unpinned models serve
    /// their highest numbered version.
    pub model_version: Vec<String>,
    /// Addresses to listen on (`HOST:PORT`, IPv4 or `[IPv6]:PORT`). Ignored under systemd socket
    /// activation.
    pub bind: Vec<String>,
    /// If set, replaces the port of every `bind` address (ml-deploy's `--http-port`).
    pub http_port: Option<u16>,
    /// Worker processes.
    pub workers: usize,
    /// Serving threads per worker: how many model calls one worker runs at once.
    pub threads: usize,
    /// Threads one model call may use inside its engine (candle's matrix products, ONNX
    /// Runtime's intra-op threads). 1: the workers and their serving threads are the
    /// parallelism; more only helps a few large calls on an otherwise idle machine.
    pub engine_threads: usize,
    /// Seconds a model call (or a worker's heartbeat) may hang before the worker is killed and
    /// replaced; 0 turns the watch off.
    pub timeout: u64,
    /// Seconds a graceful stop or reload may take before what is left is killed.
    pub graceful_timeout: u64,
    /// Seconds an idle keep-alive connection stays open.
    pub keepalive: u64,
    /// Seconds a client has to send a request's head and body (408 after).
    pub request_timeout: u64,
    /// Requests a worker serves before it is replaced (0 = never).
    pub max_requests: u64,
    /// Up to this many requests are added at random to `max_requests` per worker, so workers
    /// do not all retire at once.
    pub max_requests_jitter: u64,
    /// Largest request body in bytes (413 above).
    pub max_body: usize,
    /// After an answer given before the request was read in full (413, 408, ...), seconds
    /// during which what the client still sends is read and dropped before the connection
    /// closes, so that a client that sends its whole body before it reads finds the answer
    /// rather than a reset. 0: close at once.
    pub linger_time: u64,
    /// The most bytes read and dropped that way; a client still sending after them is cut off.
    pub linger_bytes: usize,
    /// Spread new connections evenly over the workers: one that serves more than another
    /// waits up to 2 ms before it accepts, so that the less loaded one takes the connection.
    /// Off: the first worker to wake takes it, as the kernel hands them out.
    pub balance_connections: bool,
    /// Listen backlog.
    pub backlog: i32,
    /// File to write the master's PID to; removed at exit.
    pub pidfile: Option<PathBuf>,
    /// User to switch to after binding.
    pub user: Option<String>,
    /// Group to switch to after binding.
    pub group: Option<String>,
    /// Serve in one process without forking (development), as ml-deploy's `--app-debug`.
    pub app_debug: bool,
}

/// `[http]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Prefix of the model routes: `{prefix}/predict`, `{prefix}/feedback`, `{prefix}/metadata`.
    pub api_prefix: String,
    /// Origins allowed by CORS; `*` allows every origin (ml-deploy's behaviour).
    pub cors_origins: Vec<String>,
}

/// `[log]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `debug`, `info`, `warning` or `error`.
    pub log_level: String,
    /// `text` or `json`.
    pub log_format: String,
    /// Write an access-log line per request (gunicorn-like fields).
    pub access_log: bool,
    /// Where access-log lines go; absent: standard output. Reopened on SIGUSR1.
    pub access_log_file: Option<PathBuf>,
}

/// `[kafka]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list; events are off when unset.
    pub kafka_broker: Option<String>,
    /// Events waiting for the producer thread, per worker; when full, new events are dropped
    /// and counted.
    pub event_queue: usize,
    /// Topic of predict events.
    pub predict_topic: String,
    /// Topic of feedback events.
    pub feedback_topic: String,
    /// librdkafka `client.id`.
    pub kafka_client_id: String,
    /// librdkafka `acks`: `0`, `1` or `all`.
    pub kafka_acks: String,
    /// librdkafka `linger.ms`: how long to batch messages. 50 rather than librdkafka's 5:
    /// fewer, larger produce requests cost both this server and the broker far less CPU per
    /// event (docs/benchmarks.md), and metric events can wait 50 ms.
    pub kafka_linger_ms: u64,
    /// librdkafka `compression.type`: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    pub kafka_compression: String,
    /// librdkafka `message.timeout.ms`: a message not delivered by then counts as failed.
    pub kafka_message_timeout_ms: u64,
    /// Extra librdkafka settings as `KEY=VALUE` (TLS, SASL, ...).
    pub kafka_option: Vec<String>,
}

/// `[metrics]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// Record metrics; off, `/metrics` answers an empty exposition and the request path skips
    /// every update (for measuring what metrics cost).
    pub metrics_enabled: bool,
    /// Label sets per metric family before new ones fold into one overflow series.
    pub max_series: usize,
}

/// `[engines]` section: settings handed to every model loader as its `engine_settings`, by key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// The ONNX Runtime shared library (`libonnxruntime.so.*`, or the directory holding it)
    /// for ONNX models; unset: `ORT_DYLIB_PATH`, else the `onnxruntime` package of the active
    /// Python environment.
    pub onnxruntime: Option<PathBuf>,
}

impl EngineSettings {
    /// The settings as the loaders get them: key to value, only those set.
    pub fn to_map(&self) -> std::collections::BTreeMap<String, String> {
        let mut map = std::collections::BTreeMap::new();
        if let Some(path) = &self.onnxruntime {
            map.insert("onnxruntime".to_string(), path.display().to_string());
        }
        map
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            model: Vec::new(),
            model_repository: None,
            model_version: Vec::new(),
            bind: vec!["127.0.0.1:5000".into()],
            http_port: None,
            workers: 1,
            threads: 1,
            engine_threads: 1,
            timeout: 30,
            graceful_timeout: 30,
            keepalive: 2,
            request_timeout: 30,
            max_requests: 0,
            max_requests_jitter: 0,
            max_body: 10 * 1024 * 1024,
            linger_time: 30,
            linger_bytes: 128 * 1024 * 1024,
            balance_connections: true,
            backlog: 2048,
            pidfile: None,
            user: None,
            group: None,
            app_debug: false,
        }
    }
}

impl Default for HttpSection {
    fn default() -> Self {
        Self { api_prefix: "/api/ml".into(), cors_origins: vec!["*".into()] }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        Self { log_level: "info".into(), log_format: "text".into(), access_log: false, access_log_file: None }
    }
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            kafka_broker: None,
            event_queue: 10_000,
            predict_topic: "predict".into(),
            feedback_topic: "feedback".into(),
            kafka_client_id: "mldeploy".into(),
            kafka_acks: "1".into(),
            kafka_linger_ms: 50,
            kafka_compression: "none".into(),
            kafka_message_timeout_ms: 30_000,
            kafka_option: Vec::new(),
        }
    }
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self { metrics_enabled: true, max_series: 512 }
    }
}

/// Why the settings were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// ml-deploy's environment names and the keys they set.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("KAFKA_BROKER", "kafka_broker"),
    ("APP_DEBUG", "app_debug"),
    ("LOG_LEVEL", "log_level"),
    ("GUNICORN_ACCESS_LOG", "access_log"),
    ("GUNICORN_WORKERS", "workers"),
    ("GUNICORN_THREAD", "threads"),
    ("GUNICORN_THREADS", "threads"),
    ("GUNICORN_WORKER_CLASS", "worker_class"),
];

/// Every key `set` accepts, for the environment scan and error messages.
pub const KEYS: &[&str] = &[
    "model",
    "model_repository",
    "model_version",
    "bind",
    "http_port",
    "workers",
    "threads",
    "engine_threads",
    "timeout",
    "graceful_timeout",
    "keepalive",
    "request_timeout",
    "max_requests",
    "max_requests_jitter",
    "max_body",
    "linger_time",
    "linger_bytes",
    "balance_connections",
    "backlog",
    "pidfile",
    "user",
    "group",
    "app_debug",
    "api_prefix",
    "cors_origins",
    "log_level",
    "log_format",
    "access_log",
    "access_log_file",
    "kafka_broker",
    "event_queue",
    "predict_topic",
    "feedback_topic",
    "kafka_client_id",
    "kafka_acks",
    "kafka_linger_ms",
    "kafka_compression",
    "kafka_message_timeout_ms",
    "kafka_option",
    "metrics_enabled",
    "max_series",
    "onnxruntime",
    "worker_class",
    "python",
    "ml_deploy_config",
    "metric_class",
];

fn parse_num<T: std::str::FromStr>(key: &str, value: &str, what: &str) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| ConfigError(format!("invalid value {value:?} for {key}: expected {what}")))
}

/// ml-deploy's true values are 1, true and t; we also take yes/on, and their opposites.
fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" | "" => Ok(false),
        _ => Err(ConfigError(format!(
            "invalid value {value:?} for {key}: expected one of 1, true, t, 0, false, f"
        ))),
    }
}

/// A TOML string or list of strings, as a list of paths.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

fn list(value: &str) -> Vec<String> {
    value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
}

impl Settings {
    /// Read a TOML config file.
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))
    }

    /// Set one key from text (environment or flag). Lists (`bind`, `cors_origins`,
    /// `kafka_option`) replace the whole list; `bind` and `cors_origins` take commas.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let s = &mut self.server;
        match key {
            "model" => s.model = vec![PathBuf::from(value)],
            "model_repository" => s.model_repository = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty()),
            "model_version" => s.model_version = list(value),
            "bind" => s.bind = list(value),
            "http_port" => s.http_port = Some(parse_num(key, value, "a port number 1-65535")?),
            "workers" => s.workers = parse_num(key, value, "a whole number >= 1")?,
            "threads" => s.threads = parse_num(key, value, "a whole number >= 1")?,
            "engine_threads" => s.engine_threads = parse_num(key, value, "a whole number >= 1")?,
            "timeout" => s.timeout = parse_num(key, value, "seconds (0 = off)")?,
            "graceful_timeout" => s.graceful_timeout = parse_num(key, value, "seconds")?,
            "keepalive" => s.keepalive = parse_num(key, value, "seconds")?,
            "request_timeout" => s.request_timeout = parse_num(key, value, "seconds")?,
            "max_requests" => s.max_requests = parse_num(key, value, "a whole number (0 = never)")?,
            "max_requests_jitter" => s.max_requests_jitter = parse_num(key, value, "a whole number")?,
            "max_body" => s.max_body = parse_num(key, value, "a size in bytes")?,
            "linger_time" => s.linger_time = parse_num(key, value, "seconds (0 = close at once)")?,
            "linger_bytes" => s.linger_bytes = parse_num(key, value, "a size in bytes (0 = close at once)")?,
            "balance_connections" => s.balance_connections = parse_bool(key, value)?,
            "backlog" => s.backlog = parse_num(key, value, "a whole number")?,
            "pidfile" => s.pidfile = Some(PathBuf::from(value)),
            "user" => s.user = Some(value.to_string()),
            "group" => s.group = Some(value.to_string()),
            "app_debug" => s.app_debug = parse_bool(key, value)?,
            "api_prefix" => self.http.api_prefix = value.to_string(),
            "cors_origins" => self.http.cors_origins = list(value),
            "log_level" => self.log.log_level = value.to_ascii_lowercase(),
            "log_format" => self.log.log_format = value.to_ascii_lowercase(),
            "access_log" => self.log.access_log = parse_bool(key, value)?,
            "access_log_file" => self.log.access_log_file = Some(PathBuf::from(value)),
            "kafka_broker" => self.kafka.kafka_broker = Some(value.to_string()).filter(|v| !v.trim().is_empty()),
            "event_queue" => self.kafka.event_queue = parse_num(key, value, "a whole number >= 1")?,
            "predict_topic" => self.kafka.predict_topic = value.to_string(),
            "feedback_topic" => self.kafka.feedback_topic = value.to_string(),
            "kafka_client_id" => self.kafka.kafka_client_id = value.to_string(),
            "kafka_acks" => self.kafka.kafka_acks = value.to_string(),
            "kafka_linger_ms" => self.kafka.kafka_linger_ms = parse_num(key, value, "milliseconds")?,
            "kafka_compression" => self.kafka.kafka_compression = value.to_ascii_lowercase(),
            "kafka_message_timeout_ms" => {
                self.kafka.kafka_message_timeout_ms = parse_num(key, value, "milliseconds")?
            }
            "kafka_option" => self.kafka.kafka_option.push(value.to_string()),
            "metrics_enabled" => self.metrics.metrics_enabled = parse_bool(key, value)?,
            "max_series" => self.metrics.max_series = parse_num(key, value, "a whole number >= 1")?,
            "onnxruntime" => {
                self.engines.onnxruntime = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
            }
            // gunicorn's worker class: mldeploy has one worker type; only the names that mean
            // "threads in a worker" are accepted so a stale setting is not silently misread.
            "worker_class" => match value.trim() {
                "sync" | "gthread" | "mldeploy" => {}
                other => {
                    return Err(ConfigError(format!(
                        "invalid value {other:?} for worker_class: mldeploy has one worker type; accepted: sync, gthread"
                    )))
                }
            },
            "python" => self.python.python = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty()),
            "ml_deploy_config" => {
                self.python.ml_deploy_config = Some(PathBuf::from(value)).filter(|p| !p.as_os_str().is_empty())
            }
            "metric_class" => self.python.metric_class = Some(value.trim().to_string()).filter(|v| !v.is_empty()),
            other => return Err(ConfigError(format!("unknown setting {other:?}"))),
        }
        Ok(())
    }

    /// Apply the environment: ml-deploy's names first, then `MLDEPLOY_<KEY>` (which wins).
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        for (name, key) in LEGACY_ENV {
            if let Some(v) = env(name) {
                self.set(key, &v).map_err(|e| ConfigError(format!("{e} (from environment {name})")))?;
            }
        }
        for key in KEYS {
            let name = format!("MLDEPLOY_{}", key.to_ascii_uppercase());
            if let Some(v) = env(&name) {
                if *key == "kafka_option" {
                    self.kafka.kafka_option = list(&v);
                    continue;
                }
                self.set(key, &v).map_err(|e| ConfigError(format!("{e} (from environment {name})")))?;
            }
        }
        Ok(())
    }

    /// Check values that parse but make no sense; resolves nothing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.server;
        let bad = |m: String| Err(ConfigError(m));
        if s.workers == 0 {
            return bad("invalid value 0 for workers: expected a whole number >= 1".into());
        }
        if s.threads == 0 || s.threads > 256 {
            return bad(format!("invalid value {} for threads: expected 1 to 256", s.threads));
        }
        if s.engine_threads == 0 || s.engine_threads > 256 {
            return bad(format!("invalid value {} for engine_threads: expected 1 to 256", s.engine_threads));
        }
        if s.bind.is_empty() {
            return bad("bind: at least one address is needed".into());
        }
        self.bind_addrs()?;
        if s.max_body == 0 {
            return bad("invalid value 0 for max_body: expected a size in bytes >= 1".into());
        }
        if s.keepalive == 0 || s.request_timeout == 0 {
            return bad("keepalive and request_timeout must be at least 1 second".into());
        }
        if !matches!(self.log.log_level.as_str(), "debug" | "info" | "warning" | "warn" | "error") {
            return bad(format!(
                "invalid value {:?} for log_level: expected one of debug, info, warning, error",
                self.log.log_level
            ));
        }
        if !matches!(self.log.log_format.as_str(), "text" | "json") {
            return bad(format!(
                "invalid value {:?} for log_format: expected text or json",
                self.log.log_format
            ));
        }
        let p = &self.http.api_prefix;
        if !p.starts_with('/') || p.ends_with('/') && p.len() > 1 || p.contains(char::is_whitespace) {
            return bad(format!("invalid value {p:?} for api_prefix: expected a path like /api/ml"));
        }
        if self.kafka.event_queue == 0 {
            return bad("invalid value 0 for event_queue: expected a whole number >= 1".into());
        }
        if !matches!(self.kafka.kafka_acks.as_str(), "0" | "1" | "all" | "-1") {
            return bad(format!(
                "invalid value {:?} for kafka_acks: expected 0, 1 or all",
                self.kafka.kafka_acks
            ));
        }
        if !matches!(self.kafka.kafka_compression.as_str(), "none" | "gzip" | "snappy" | "lz4" | "zstd") {
            return bad(format!(
                "invalid value {:?} for kafka_compression: expected none, gzip, snappy, lz4 or zstd",
                self.kafka.kafka_compression
            ));
        }
        self.kafka_options()?;
        self.model_versions()?;
        if !s.model.is_empty() && s.model_repository.is_some() {
            return bad(
                "model and model_repository exclude each other: serve packages, or a repository".into()
            );
        }
        if self.metrics.max_series == 0 {
            return bad("invalid value 0 for max_series: expected a whole number >= 1".into());
        }
        Ok(())
    }

    /// The addresses to bind, with `http_port` applied.
    pub fn bind_addrs(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        self.server
            .bind
            .iter()
            .map(|b| {
                let mut addr: SocketAddr = b.parse().map_err(|_| {
                    ConfigError(format!(
                        "invalid value {b:?} for bind: expected HOST:PORT with an IP address, like 127.0.0.1:5000 or [::1]:5000"
                    ))
                })?;
                if let Some(port) = self.server.http_port {
                    addr.set_port(port);
                }
                Ok(addr)
            })
            .collect()
    }

    /// `kafka_option` entries split into key and value.
    pub fn kafka_options(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.kafka
            .kafka_option
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
                _ => Err(ConfigError(format!("invalid value {o:?} for kafka_option: expected KEY=VALUE"))),
            })
            .collect()
    }

    /// `model_version` entries as (model, version).
    pub fn model_versions(&self) -> Result<Vec<(String, String)>, ConfigError> {
        self.server
            .model_version
            .iter()
            .map(|o| match o.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                    Ok((k.trim().to_string(), v.trim().to_string()))
                }
                _ => {
                    Err(ConfigError(format!("invalid value {o:?} for model_version: expected NAME=VERSION")))
                }
            })
            .collect()
    }

    /// `timeout` as the supervisor takes it.
    pub fn timeout(&self) -> Option<Duration> {
        (self.server.timeout > 0).then(|| Duration::from_secs(self.server.timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn file_then_env_then_flags() {
        let mut s: Settings =
            toml::from_str("[server]\nworkers = 3\nthreads = 2\n[log]\nlog_level = \"debug\"").unwrap();
        assert_eq!(s.server.workers, 3);
        s.apply_env(&env_of(&[("GUNICORN_WORKERS", "5"), ("MLDEPLOY_THREADS", "4")])).unwrap();
        assert_eq!((s.server.workers, s.server.threads), (5, 4));
        s.set("workers", "7").unwrap();
        assert_eq!(s.server.workers, 7);
        assert_eq!(s.log.log_level, "debug");
        s.validate().unwrap();
    }

    #[test]
    fn mldeploy_env_wins_over_legacy_env() {
        let mut s = Settings::default();
        s.apply_env(&env_of(&[("KAFKA_BROKER", "a:1"), ("MLDEPLOY_KAFKA_BROKER", "b:2")])).unwrap();
        assert_eq!(s.kafka.kafka_broker.as_deref(), Some("b:2"));
    }

    #[test]
    fn ml_deploy_true_values() {
        for v in ["1", "true", "t", "TRUE"] {
            let mut s = Settings::default();
            s.apply_env(&env_of(&[("APP_DEBUG", v)])).unwrap();
            assert!(s.server.app_debug, "{v}");
        }
        let mut s = Settings::default();
        s.apply_env(&env_of(&[("APP_DEBUG", "false")])).unwrap();
        assert!(!s.server.app_debug);
    }

    #[test]
    fn connections_are_balanced_unless_switched_off() {
        let mut s = Settings::default();
        assert!(s.server.balance_connections);
        s.set("balance_connections", "false").unwrap();
        assert!(!s.server.balance_connections);
        assert!(s.set("balance_connections", "sometimes").is_err());
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut s = Settings::default();
        let e = s.apply_env(&env_of(&[("GUNICORN_WORKERS", "many")])).unwrap_err();
        assert!(e.0.contains("workers") && e.0.contains("GUNICORN_WORKERS"), "{e}");
        let mut s = Settings::default();
        s.set("log_level", "loud").unwrap();
        let e = s.validate().unwrap_err();
        assert!(e.0.contains("log_level") && e.0.contains("debug, info, warning, error"), "{e}");
        let e = Settings::default().clone().set("worker_class", "gevent").unwrap_err();
        assert!(e.0.contains("worker_class"), "{e}");
        let e = toml::from_str::<Settings>("[server]\nworkerz = 1").unwrap_err();
        assert!(e.to_string().contains("workerz"), "{e}");
    }

    #[test]
    fn http_port_replaces_bind_ports() {
        let mut s = Settings::default();
        s.set("bind", "127.0.0.1:1,[::1]:2").unwrap();
        s.set("http_port", "8080").unwrap();
        let addrs = s.bind_addrs().unwrap();
        assert!(addrs.iter().all(|a| a.port() == 8080));
        assert!(addrs[1].is_ipv6());
        s.set("bind", "localhost:1").unwrap();
        assert!(s.validate().unwrap_err().0.contains("bind"));
    }

    #[test]
    fn kafka_options_split() {
        let mut s = Settings::default();
        s.set("kafka_option", "security.protocol=ssl").unwrap();
        assert_eq!(s.kafka_options().unwrap(), vec![("security.protocol".into(), "ssl".into())]);
        s.set("kafka_option", "nonsense").unwrap();
        assert!(s.validate().unwrap_err().0.contains("kafka_option"));
    }

    #[test]
    fn one_model_or_several() {
        let s: Settings = toml::from_str("[server]\nmodel = \"a\"").unwrap();
        assert_eq!(s.server.model, vec![PathBuf::from("a")]);
        let s: Settings = toml::from_str("[server]\nmodel = [\"a\", \"b\"]").unwrap();
        assert_eq!(s.server.model.len(), 2);
        let mut s = Settings::default();
        s.set("model_repository", "repo").unwrap();
        s.set("model_version", "iris=2, wine=10").unwrap();
        assert_eq!(
            s.model_versions().unwrap(),
            vec![("iris".into(), "2".into()), ("wine".into(), "10".into())]
        );
        s.validate().unwrap();
        s.set("model", "pkg").unwrap();
        assert!(s.validate().unwrap_err().0.contains("model_repository"));
        let mut s = Settings::default();
        s.set("model_version", "iris").unwrap();
        assert!(s.validate().unwrap_err().0.contains("NAME=VERSION"));
    }

    #[test]
    fn engine_settings_reach_the_loaders_by_key() {
        assert!(Settings::default().engines.to_map().is_empty());
        let mut s = Settings::default();
        s.apply_env(&env_of(&[("MLDEPLOY_ONNXRUNTIME", "/opt/ort/libonnxruntime.so.1.31.1")])).unwrap();
        assert_eq!(
            s.engines.to_map().get("onnxruntime").map(String::as_str),
            Some("/opt/ort/libonnxruntime.so.1.31.1")
        );
        let s: Settings = toml::from_str("[engines]\nonnxruntime = \"/x/lib.so\"").unwrap();
        assert_eq!(s.engines.onnxruntime, Some(PathBuf::from("/x/lib.so")));
    }

    #[test]
    fn shipped_config_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/mldeploy.toml");
        let s = Settings::from_file(&path).unwrap();
        assert_eq!(s, Settings::default());
    }
}
