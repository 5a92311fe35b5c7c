//! The `mldeploy` command line: `serve`, `check` and `--version`.
//!
//! The setting flags are generated from one table, so a flag, its environment variable and its
//! config-file key can never drift apart.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::config::{ConfigError, Settings};

/// A setting flag: key, value name, help, and whether it is a switch.
struct Flag {
    key: &'static str,
    value: &'static str,
    help: &'static str,
    switch: bool,
    repeat: bool,
    aliases: &'static [&'static str],
}

const fn flag(key: &'static str, value: &'static str, help: &'static str) -> Flag {
    Flag { key, value, help, switch: false, repeat: false, aliases: &[] }
}

const FLAGS: &[Flag] = &[
    flag(
        "model_repository",
        "DIR",
        "Serve every model package in DIR (numbered subdirectories are versions); the V2 API loads and unloads them",
    ),
    Flag {
        repeat: true,
        ..flag("model_version", "NAME=VERSION", "Serve this version of a repository model; repeatable [default: the highest]")
    },
    Flag {
        repeat: true,
        ..flag("bind", "HOST:PORT", "Address to listen on; repeatable [default: 127.0.0.1:5000]")
    },
    flag("http_port", "PORT", "Replace the port of every --bind address (ml-deploy's --http-port)"),
    flag("workers", "N", "Worker processes [default: 1]"),
    flag("threads", "M", "Serving threads per worker: model calls one worker runs at once [default: 1]"),
    flag("engine_threads", "N", "Threads one model call may use inside its engine [default: 1]"),
    flag(
        "timeout",
        "SECS",
        "Kill and replace a worker whose model call hangs this long; 0 = off [default: 30]",
    ),
    flag("graceful_timeout", "SECS", "Time a graceful stop or reload may take [default: 30]"),
    flag("keepalive", "SECS", "Close idle keep-alive connections after this [default: 2]"),
    flag("request_timeout", "SECS", "Time a client has to send a request (408 after) [default: 30]"),
    flag("max_requests", "N", "Replace a worker after this many requests; 0 = never [default: 0]"),
    flag("max_requests_jitter", "N", "Random extra requests per worker before it is replaced [default: 0]"),
    flag("max_body", "BYTES", "Largest request body (413 above) [default: 10485760]"),
    flag(
        "linger_time",
        "SECS",
        "After an early error answer (413, 408), read and drop what the client still sends this long [default: 30]",
    ),
    flag("linger_bytes", "BYTES", "The most bytes read and dropped that way before closing [default: 134217728]"),
    Flag {
        switch: true,
        ..flag(
            "balance_connections",
            "BOOL",
            "Spread new connections evenly over the workers (a busier worker waits up to 2 ms before accepting) [default: true]",
        )
    },
    flag("backlog", "N", "Listen backlog [default: 2048]"),
    flag("pidfile", "FILE", "Write the master's PID here; removed at exit"),
    flag("user", "USER", "Switch to this user after binding"),
    flag("group", "GROUP", "Switch to this group after binding"),
    Flag { switch: true, ..flag("app_debug", "BOOL", "One process, no fork (development)") },
    flag("api_prefix", "PATH", "Prefix of the model routes [default: /api/ml]"),
    flag("cors_origins", "ORIGINS", "Comma-separated origins allowed by CORS; * = all [default: *]"),
    flag("log_level", "LEVEL", "debug, info, warning or error [default: info]"),
    flag("log_format", "FORMAT", "text or json [default: text]"),
    Flag {
        switch: true,
        aliases: &["gunicorn-access-log"],
        ..flag("access_log", "BOOL", "Log one line per request (gunicorn-like)")
    },
    flag("access_log_file", "FILE", "Write the access log to this file (reopened on SIGUSR1)"),
    flag("kafka_broker", "HOSTS", "Comma-separated Kafka brokers; metric events are off without it"),
    flag("event_queue", "N", "Events waiting for the Kafka producer, per worker [default: 10000]"),
    flag("predict_topic", "TOPIC", "Topic of predict events [default: predict]"),
    flag("feedback_topic", "TOPIC", "Topic of feedback events [default: feedback]"),
    flag("kafka_client_id", "ID", "Kafka client.id [default: mldeploy]"),
    flag("kafka_acks", "ACKS", "Kafka acks: 0, 1 or all [default: 1]"),
    flag("kafka_linger_ms", "MS", "Kafka linger.ms [default: 50]"),
    flag("kafka_compression", "CODEC", "none, gzip, snappy, lz4 or zstd [default: none]"),
    flag("kafka_message_timeout_ms", "MS", "Undelivered events count as failed after this [default: 30000]"),
    Flag { repeat: true, ..flag("kafka_option", "KEY=VALUE", "Extra librdkafka setting; repeatable") },
    Flag { switch: true, ..flag("metrics_enabled", "BOOL", "Record Prometheus metrics [default: true]") },
    flag("max_series", "N", "Label sets per metric family before overflow [default: 512]"),
    flag(
        "onnxruntime",
        "PATH",
        "ONNX Runtime library for ONNX models (libonnxruntime.so.*, or its directory) [default: ORT_DYLIB_PATH, else the active Python's onnxruntime]",
    ),
    flag("worker_class", "CLASS", "Accepted for ml-deploy compatibility: sync or gthread"),
    flag(
        "python",
        "PATH",
        "Python environment of a Python model: a virtualenv or its python [default: $VIRTUAL_ENV]",
    ),
    flag(
        "ml_deploy_config",
        "FILE",
        "ml-deploy's config.yaml: its app section (interface, workers, threads, http_port, ...) sets those settings",
    ),
    flag("metric_class", "MODULE.CLASS", "ml-deploy Metric subclass whose register() declares a Python model's metrics"),
];

fn setting_args() -> Vec<Arg> {
    FLAGS
        .iter()
        .map(|f| {
            let long = f.key.replace('_', "-");
            let mut arg = Arg::new(f.key).long(long).value_name(f.value).help(f.help);
            for alias in f.aliases {
                arg = arg.alias(alias);
            }
            if f.switch {
                // `--app-debug` alone means true; `--app-debug false` as ml-deploy took it.
                arg = arg.num_args(0..=1).default_missing_value("true").require_equals(false);
            }
            if f.repeat {
                arg = arg.action(ArgAction::Append);
            }
            arg
        })
        .collect()
}

fn command() -> Command {
    let model = Arg::new("model")
        .value_name("MODEL")
        .num_args(0..)
        .action(ArgAction::Append)
        .value_parser(clap::value_parser!(PathBuf))
        .help(
            "Model package directories, or ml-deploy interface files (interface.py, interface.py:Class), one \
             model each; without any the embedded demo model is served",
        );
    let config = Arg::new("config")
        .long("config")
        .value_name("FILE")
        .value_parser(clap::value_parser!(PathBuf))
        .env("MLDEPLOY_CONFIG")
        .help("TOML config file (see configs/mldeploy.toml)");
    Command::new("mldeploy")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Serve a machine-learning model from a pre-fork server")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(
            Command::new("serve")
                .about("Serve the model: a master process and its workers")
                .arg(model.clone())
                .arg(config.clone())
                .args(setting_args()),
        )
        .subcommand(
            Command::new("check")
                .about("Load the model and predict its sample input, then exit")
                .arg(model)
                .arg(config)
                .args(setting_args()),
        )
}

/// What the command line asks for.
#[derive(Debug, Clone)]
pub enum Invocation {
    /// Serve until stopped.
    Serve(SettingsSource),
    /// Load the model, predict its sample, exit.
    Check(SettingsSource),
}

/// Where the settings come from; kept so a reload (SIGHUP) can read them again.
#[derive(Debug, Clone)]
pub struct SettingsSource {
    config: Option<PathBuf>,
    flags: Vec<(String, String)>,
}

impl SettingsSource {
    /// Read the settings: defaults < config file < environment < flags. Called at start and on
    /// every reload.
    pub fn load(&self) -> Result<Settings, ConfigError> {
        let mut settings = match &self.config {
            Some(path) => Settings::from_file(path)?,
            None => Settings::default(),
        };
        // ml-deploy's YAML sits between the config file and the environment; it may be named by
        // either, or by a flag.
        let yaml =
            (self.flags.iter().rev().find(|(key, _)| key == "ml_deploy_config").map(|(_, v)| v.clone()))
                .or_else(|| std::env::var("MLDEPLOY_ML_DEPLOY_CONFIG").ok())
                .map(PathBuf::from)
                .or_else(|| settings.python.ml_deploy_config.clone())
                .filter(|p| !p.as_os_str().is_empty());
        if let Some(path) = yaml {
            crate::ml_deploy_config::apply(&mut settings, &path)?;
        }
        settings.apply_env(&|name| std::env::var(name).ok())?;
        let mut seen_list = std::collections::HashSet::new();
        for (key, value) in &self.flags {
            // A repeated list flag replaces the file's list once, then appends.
            if key == "bind" {
                if seen_list.insert("bind") {
                    settings.server.bind.clear();
                }
                settings.server.bind.push(value.clone());
                continue;
            }
            if key == "model" {
                if seen_list.insert("model") {
                    settings.server.model.clear();
                }
                settings.server.model.push(PathBuf::from(value));
                continue;
            }
            if key == "model_version" {
                if seen_list.insert("model_version") {
                    settings.server.model_version.clear();
                }
                settings.server.model_version.push(value.clone());
                continue;
            }
            if key == "kafka_option" && seen_list.insert("kafka_option") {
                settings.kafka.kafka_option.clear();
            }
            settings
                .set(key, value)
                .map_err(|e| ConfigError(format!("{e} (from --{})", key.replace('_', "-"))))?;
        }
        settings.validate()?;
        Ok(settings)
    }
}

fn source_of(m: &ArgMatches) -> SettingsSource {
    let mut flags = Vec::new();
    for model in m.get_many::<PathBuf>("model").into_iter().flatten() {
        flags.push(("model".to_string(), model.display().to_string()));
    }
    for f in FLAGS {
        if let Some(values) = m.get_many::<String>(f.key) {
            for v in values {
                flags.push((f.key.to_string(), v.clone()));
            }
        }
    }
    SettingsSource { config: m.get_one::<PathBuf>("config").cloned(), flags }
}

/// Parse the command line. `Err` carries clap's own output (help, version or a usage error).
pub fn parse<I, T>(args: I) -> Result<Invocation, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = command().try_get_matches_from(args)?;
    match matches.subcommand() {
        Some(("serve", m)) => Ok(Invocation::Serve(source_of(m))),
        Some(("check", m)) => Ok(Invocation::Check(source_of(m))),
        _ => unreachable!("a subcommand is required"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(args: &[&str]) -> Settings {
        match parse(args).unwrap() {
            Invocation::Serve(s) | Invocation::Check(s) => s.load().unwrap(),
        }
    }

    #[test]
    fn every_flag_names_a_setting() {
        let mut s = Settings::default();
        for f in FLAGS {
            assert!(crate::config::KEYS.contains(&f.key), "{}", f.key);
            let _ = s.set(f.key, "1");
        }
        command().debug_assert();
    }

    #[test]
    fn serve_flags() {
        let s = settings(&[
            "mldeploy",
            "serve",
            "pkg",
            "--workers",
            "4",
            "--threads",
            "2",
            "--bind",
            "127.0.0.1:1",
            "--bind",
            "[::1]:2",
            "--app-debug",
            "--kafka-option",
            "a=b",
            "--gunicorn-access-log",
            "t",
        ]);
        assert_eq!((s.server.workers, s.server.threads), (4, 2));
        assert_eq!(s.server.bind, vec!["127.0.0.1:1", "[::1]:2"]);
        assert!(s.server.app_debug && s.log.access_log);
        assert_eq!(s.server.model, vec![PathBuf::from("pkg")]);
        assert_eq!(s.kafka.kafka_option, vec!["a=b"]);
    }

    #[test]
    fn bad_flag_value_names_the_flag() {
        let Invocation::Serve(src) = parse(["mldeploy", "serve", "--workers", "0"]).unwrap() else {
            panic!()
        };
        let e = src.load().unwrap_err();
        assert!(e.0.contains("workers"), "{e}");
        let Invocation::Serve(src) = parse(["mldeploy", "serve", "--threads", "x"]).unwrap() else {
            panic!()
        };
        let e = src.load().unwrap_err();
        assert!(e.0.contains("--threads"), "{e}");
    }
}
