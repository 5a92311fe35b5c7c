//! Logging: the server log (text or JSON on standard error, with a level) and the access log
//! (one line per request, gunicorn-like fields, to standard output or a file).
//!
//! The access-log file is reopened after log rotation: the master bumps a counter in shared
//! memory on SIGUSR1 and every process reopens its file on its next line when it sees the
//! counter change, so no signal handling is needed in the workers.

use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use slog::{o, Drain, Level, Logger, OwnedKVList, Record, KV};

use crate::config::LogSettings;

/// The server's loggers.
#[derive(Clone)]
pub struct Logs {
    /// The server log.
    pub log: Logger,
    /// The access log (discards everything when the access log is off).
    pub access: Logger,
}

fn level_of(name: &str) -> Level {
    match name {
        "debug" => Level::Debug,
        "warning" | "warn" => Level::Warning,
        "error" => Level::Error,
        _ => Level::Info,
    }
}

/// Build the loggers. `reopen` is the shared counter the master bumps on SIGUSR1.
pub fn build(settings: &LogSettings, reopen: &'static AtomicU64) -> std::io::Result<Logs> {
    let level = level_of(&settings.log_level);
    let pid = slog::FnValue(|_: &Record<'_>| std::process::id());
    let log = if settings.log_format == "json" {
        let drain = slog_json::Json::new(std::io::stderr()).add_default_keys().build();
        Logger::root(Mutex::new(drain).fuse().filter_level(level).fuse(), o!("process" => pid))
    } else {
        let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
        let drain = slog_term::FullFormat::new(decorator).build();
        Logger::root(drain.filter_level(level).fuse(), o!("process" => pid))
    };
    let access = if settings.access_log || settings.access_log_file.is_some() {
        let drain =
            AccessDrain::open(settings.access_log_file.clone(), settings.log_format == "json", reopen)?;
        Logger::root(drain.fuse(), o!())
    } else {
        Logger::root(slog::Discard, o!())
    };
    Ok(Logs { log, access })
}

/// Writes access-log records as lines to a file or standard output.
struct AccessDrain {
    path: Option<PathBuf>,
    json: bool,
    reopen: &'static AtomicU64,
    out: Mutex<(u64, Box<dyn Write + Send>)>,
}

impl AccessDrain {
    fn open(path: Option<PathBuf>, json: bool, reopen: &'static AtomicU64) -> std::io::Result<Self> {
        let seen = reopen.load(Ordering::Acquire);
        let out = Self::writer(&path)?;
        Ok(Self { path, json, reopen, out: Mutex::new((seen, out)) })
    }

    fn writer(path: &Option<PathBuf>) -> std::io::Result<Box<dyn Write + Send>> {
        Ok(match path {
            Some(p) => {
                Box::new(OpenOptions::new().create(true).append(true).open(p)?) as Box<dyn Write + Send>
            }
            None => Box::new(std::io::stdout()),
        })
    }
}

/// Collects a record's key/value pairs as text or JSON members.
struct Fields {
    json: bool,
    out: String,
}

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        if self.json {
            let text = val.to_string();
            let quoted = serde_json::to_string(&text).unwrap_or_default();
            let _ = write!(self.out, ",\"{key}\":{quoted}");
        } else {
            let _ = write!(self.out, " {key}={val}");
        }
        Ok(())
    }
}

impl Drain for AccessDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields { json: self.json, out: String::with_capacity(160) };
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let time = rfc3339_now();
        let line = if self.json {
            format!("{{\"time\":\"{time}\",\"msg\":\"{}\"{}}}\n", record.msg(), fields.out)
        } else {
            format!("{time}{}\n", fields.out)
        };
        let mut out = match self.out.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let wanted = self.reopen.load(Ordering::Acquire);
        if wanted != out.0 {
            // Rotated: reopen the path; keep the old writer if the new file cannot be opened.
            if let Ok(w) = Self::writer(&self.path) {
                out.1 = w;
            }
            out.0 = wanted;
        }
        let _ = out.1.write_all(line.as_bytes());
        if self.path.is_none() {
            let _ = out.1.flush();
        }
        Ok(())
    }
}

/// The current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_now() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(path: &std::path::Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn access_log_reopens_after_rotation() {
        let dir = std::env::temp_dir().join(format!("mldeploy-log-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let counter: &'static AtomicU64 = Box::leak(Box::new(AtomicU64::new(0)));
        let settings =
            LogSettings { access_log: true, access_log_file: Some(path.clone()), ..LogSettings::default() };
        let logs = build(&settings, counter).unwrap();
        slog::info!(logs.access, "request"; "status" => 200);
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        counter.fetch_add(1, Ordering::Release);
        slog::info!(logs.access, "request"; "status" => 404);
        assert!(read(&dir.join("access.log.1")).contains("status=200"));
        let fresh = read(&path);
        assert!(fresh.contains("status=404") && !fresh.contains("status=200"), "{fresh}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
