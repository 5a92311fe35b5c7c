//! ml-deploy's `config.yaml` as a settings source (`--ml-deploy-config FILE`).
//!
//! ml-deploy 2.0.0 read its settings from the `app:` section of a YAML file validated with
//! strictyaml: block mappings of plain or quoted scalars, no flow style, no anchors, no tags.
//! This reader takes exactly that subset for the `app:` section and maps its keys onto
//! mldeploy's settings; the other sections (`data:`, `model:`: validation and training) are
//! skipped. A key or a construct it does not know is refused with its line, never guessed at.
//!
//! | `app:` key | setting |
//! | --- | --- |
//! | `interface` (`module.Class` or `Module`) | `model` |
//! | `metric_class`, `kafka_broker`, `http_port`, `workers`, `threads`, `max_requests`, `max_requests_jitter`, `keepalive`, `pidfile`, `worker_class` | the same key |
//! | `gunicorn_timeout` | `timeout` |
//! | `gunicorn_access_log` | `access_log` |
//! | `log_level` (`INFO`, ..., `CRITICAL`) | `log_level` (`critical` becomes `error`) |
//! | `mode` (`development`: Flask's one-process server, `production`: gunicorn) | `app_debug` (true for `development`) |
//! | `single_threaded` | `threads = 1` when true |
//! | `debug` (Flask's debugger) | nothing: mldeploy has no debugger |

use std::path::Path;

use crate::config::{ConfigError, Settings};

/// One `key: value` of the `app:` section, with its line number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The scalar, unquoted; `None` for YAML's null (`~`, `null`, nothing).
    pub value: Option<String>,
    /// 1-based line number.
    pub line: usize,
}

/// Read `path` and apply its `app:` section to `settings`.
pub fn apply(settings: &mut Settings, path: &Path) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read ml-deploy config {}: {e}", path.display())))?;
    let at = |line: usize, message: String| {
        ConfigError(format!("ml-deploy config {} line {line}: {message}", path.display()))
    };
    let entries = app_section(&text).map_err(|(line, message)| at(line, message))?;
    for entry in entries {
        apply_entry(settings, &entry).map_err(|e| at(entry.line, e.0))?;
    }
    Ok(())
}

fn apply_entry(settings: &mut Settings, entry: &Entry) -> Result<(), ConfigError> {
    let Some(value) = entry.value.as_deref() else { return Ok(()) };
    let key = entry.key.as_str();
    match key {
        "interface" => settings.set("model", value),
        "metric_class" | "kafka_broker" | "http_port" | "workers" | "threads" | "max_requests"
        | "max_requests_jitter" | "keepalive" | "pidfile" | "worker_class" => settings.set(key, value),
        "gunicorn_timeout" => settings.set("timeout", value),
        "gunicorn_access_log" => settings.set("access_log", value),
        "log_level" => match value.to_ascii_lowercase().as_str() {
            "critical" => settings.set("log_level", "error"),
            level => settings.set("log_level", level),
        },
        "mode" => match value.to_ascii_lowercase().as_str() {
            "development" => settings.set("app_debug", "true"),
            "production" => settings.set("app_debug", "false"),
            _ => Err(ConfigError(format!("invalid value {value:?} for mode: expected development or production"))),
        },
        "single_threaded" => match value.to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" => settings.set("threads", "1"),
            _ => Ok(()),
        },
        "debug" => Ok(()),
        other => Err(ConfigError(format!(
            "unknown key {other:?} in app: (ml-deploy's keys: interface, metric_class, kafka_broker, http_port, mode, \
             debug, log_level, workers, worker_class, gunicorn_timeout, threads, max_requests, max_requests_jitter, \
             keepalive, single_threaded, pidfile, gunicorn_access_log)"
        ))),
    }
}

/// The entries of the top-level `app:` mapping of a YAML text, in order. Errors carry a line
/// number.
pub fn app_section(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut entries = Vec::new();
    let mut in_app = false;
    let mut seen_app = false;
    let mut app_indent: Option<usize> = None;
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let content = strip_comment(raw);
        if content.trim().is_empty() || (content.starts_with("---") && content.trim() == "---") {
            continue;
        }
        let body = content.trim_start_matches(' ');
        if body.starts_with('\t') {
            return Err((line, "tabs cannot indent YAML".into()));
        }
        let indent = content.len() - body.len();
        if indent == 0 {
            let (key, value) =
                key_value(body).ok_or((line, format!("expected `key:` at the top level, found {body:?}")))?;
            in_app = key == "app";
            if in_app {
                if seen_app {
                    return Err((line, "app: appears twice".into()));
                }
                seen_app = true;
                if value.is_some() {
                    return Err((line, "app: must be a mapping of settings".into()));
                }
            }
            continue;
        }
        if !in_app {
            // Another section's content: not mldeploy's business.
            continue;
        }
        let expected = *app_indent.get_or_insert(indent);
        if indent != expected {
            return Err((
                line,
                "nested values are not ml-deploy app settings (or the indentation is off)".into(),
            ));
        }
        let (key, value) = key_value(body).ok_or((line, format!("expected `key: value`, found {body:?}")))?;
        if entries.iter().any(|e: &Entry| e.key == key) {
            return Err((line, format!("{key} appears twice in app:")));
        }
        let value = match value {
            None => None,
            Some(v) => scalar(v).map_err(|m| (line, m))?,
        };
        entries.push(Entry { key: key.to_string(), value, line });
    }
    if !seen_app {
        return Err((1, "no app: section (ml-deploy's settings live there)".into()));
    }
    Ok(entries)
}

/// The line without a trailing `# comment` (a `#` at the start or after a space, outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return line[..i].trim_end(),
            None => {}
        }
        previous = c;
    }
    line.trim_end()
}

/// `key: value` or `key:`; `None` if the line is not a mapping entry.
fn key_value(body: &str) -> Option<(&str, Option<&str>)> {
    let (key, rest) = match body.find(": ") {
        Some(i) => (&body[..i], Some(body[i + 2..].trim())),
        None => (body.strip_suffix(':')?, None),
    };
    let key = key.trim();
    let simple = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    simple.then_some((key, rest.filter(|r| !r.is_empty())))
}

/// A scalar: plain, `'single'` or `"double"` quoted; null for `~`, `null`.
fn scalar(value: &str) -> Result<Option<String>, String> {
    if let Some(inner) = value.strip_prefix('\'') {
        let inner = inner.strip_suffix('\'').ok_or("unterminated 'quoted' value")?;
        return Ok(Some(inner.replace("''", "'")));
    }
    if let Some(inner) = value.strip_prefix('"') {
        let inner = inner.strip_suffix('"').ok_or("unterminated \"quoted\" value")?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\' | '/')) => out.push(c),
                other => {
                    return Err(format!(
                        "unsupported escape \\{}",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            }
        }
        return Ok(Some(out));
    }
    if value.starts_with(['[', '{', '&', '*', '!', '|', '>']) {
        return Err(format!(
            "{value:?}: flow style, anchors, tags and block scalars are not ml-deploy settings"
        ));
    }
    Ok(match value {
        "~" | "null" | "Null" | "NULL" => None,
        _ => Some(value.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "# ml-deploy\n---\napp:\n  interface: ml_deploy_model.BreastCancerModel  # the class\n  \
                          mode: production\n  workers: 4\n  threads: '2'\n  http_port: \"5001\"\n  log_level: CRITICAL\n  \
                          gunicorn_timeout: 7\n  kafka_broker: ~\n\ndata:\n  features:\n    - name: a\n      dtype: float\n\
                          model:\n  config: {}\n";

    #[test]
    fn the_app_section_maps_onto_the_settings() {
        let entries = app_section(CONFIG).unwrap();
        assert_eq!(entries[0].key, "interface");
        assert_eq!(entries[0].value.as_deref(), Some("ml_deploy_model.BreastCancerModel"));
        assert_eq!(entries[0].line, 4);
        let mut s = Settings::default();
        s.set("app_debug", "true").unwrap();
        for e in &entries {
            apply_entry(&mut s, e).unwrap();
        }
        assert_eq!(s.server.model, vec![std::path::PathBuf::from("ml_deploy_model.BreastCancerModel")]);
        assert_eq!((s.server.workers, s.server.threads, s.server.http_port), (4, 2, Some(5001)));
        assert_eq!((s.server.timeout, s.server.app_debug), (7, false));
        assert_eq!(s.log.log_level, "error");
        assert_eq!(s.kafka.kafka_broker, None);
    }

    #[test]
    fn what_is_not_ml_deploy_is_refused_with_its_line() {
        assert_eq!(app_section("app:\n  workers: 2\n    threads: 1\n").unwrap_err().0, 3);
        assert_eq!(app_section("app:\n  workers: [2]\n").unwrap_err().0, 2);
        assert_eq!(app_section("app:\n\tworkers: 2\n").unwrap_err().0, 2);
        assert!(app_section("data:\n  x: 1\n").unwrap_err().1.contains("no app:"));
        let mut s = Settings::default();
        let e = Entry { key: "workerz".into(), value: Some("1".into()), line: 9 };
        assert!(apply_entry(&mut s, &e).unwrap_err().0.contains("workerz"));
        let e = Entry { key: "workers".into(), value: Some("many".into()), line: 9 };
        assert!(apply_entry(&mut s, &e).unwrap_err().0.contains("workers"));
    }

    #[test]
    fn comments_and_quotes() {
        assert_eq!(strip_comment("a: 'x # y' # z"), "a: 'x # y'");
        assert_eq!(strip_comment("a: b#c"), "a: b#c");
        assert_eq!(scalar("'it''s'").unwrap().as_deref(), Some("it's"));
        assert_eq!(scalar("\"a\\\"b\"").unwrap().as_deref(), Some("a\"b"));
        assert_eq!(scalar("null").unwrap(), None);
    }
}
