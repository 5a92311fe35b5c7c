//! Text exposition: Prometheus 0.0.4 and OpenMetrics 1.0.0, rendered from the store at
//! scrape time.

use std::collections::HashSet;
use std::fmt::Write;

use mldeploy_model::ScrapedGauge;

use super::store::{Family, Kind};
use super::{process_alive, valid_label_name, valid_metric_name, Format, Metrics, REQUEST_BUCKETS};

/// An exposition with no samples.
pub(super) fn empty(format: Format) -> String {
    match format {
        Format::Prometheus => String::new(),
        Format::OpenMetrics => "# EOF\n".into(),
    }
}

/// The whole exposition.
pub(super) fn render(metrics: &Metrics, format: Format, gauges: &[ScrapedGauge]) -> String {
    let store = metrics.store();
    let mut w = Writer { out: String::with_capacity(16 * 1024), format, names: HashSet::new() };
    for f in store.families() {
        let name = store.name(&f);
        let help = store.help(&f);
        let label_names = store.label_names(&f);
        let series = store.series_list(&f);
        if f.base == metrics.inner.fam.requests.base {
            requests_counter(&mut w, metrics, &f, &label_names, &series);
        }
        match f.kind {
            Kind::CounterInt | Kind::CounterF64 => {
                if !w.family(&name, &help, "counter") {
                    continue;
                }
                for (values, entry) in &series {
                    let v = match f.kind {
                        Kind::CounterInt => Value::Int(store.get_int(&f, *entry)),
                        _ => Value::Float(store.get_f64(&f, *entry)),
                    };
                    w.sample(&name, "_total", &label_names, values, None, v);
                }
            }
            Kind::Gauge => {
                if !w.family(&name, &help, "gauge") {
                    continue;
                }
                for (values, entry) in &series {
                    w.sample(&name, "", &label_names, values, None, Value::Float(store.get_f64(&f, *entry)));
                }
            }
            Kind::Histogram => {
                if !w.family(&name, &help, "histogram") {
                    continue;
                }
                let bounds = store.buckets(&f);
                let bounds: Vec<String> = bounds
                    .iter()
                    .map(|b| float_text(*b))
                    .chain(std::iter::once("+Inf".to_string()))
                    .collect();
                for (values, entry) in &series {
                    let (counts, sum) = store.histogram(&f, *entry);
                    let mut cumulative = 0;
                    for (le, n) in bounds.iter().zip(&counts) {
                        cumulative += n;
                        w.sample(
                            &name,
                            "_bucket",
                            &label_names,
                            values,
                            Some(("le", le)),
                            Value::Int(cumulative),
                        );
                    }
                    w.sample(&name, "_sum", &label_names, values, None, Value::Float(sum));
                    w.sample(&name, "_count", &label_names, values, None, Value::Int(cumulative));
                }
            }
            Kind::StateSet => {
                if !w.family(&name, &help, "stateset") {
                    continue;
                }
                let states = store.states(&f);
                for (values, entry) in &series {
                    // Unset reads as the first state, as prometheus_client's Enum starts.
                    let current = usize::try_from(store.get_int(&f, *entry)).unwrap_or(0).max(1) - 1;
                    for (i, state) in states.iter().enumerate() {
                        let v = Value::Int(u64::from(i == current));
                        w.sample(&name, "", &label_names, values, Some((name.as_str(), state)), v);
                    }
                }
            }
        }
        if f.base == metrics.inner.fam.requests.base
            && w.family(
                "mldeploy_requests_in_flight",
                "Requests being served now, over every worker.",
                "gauge",
            )
        {
            let n = store.inflight_total(process_alive);
            w.sample("mldeploy_requests_in_flight", "", &[], &[], None, Value::Float(n as f64));
        }
    }
    scraped_gauges(&mut w, gauges);
    if format == Format::OpenMetrics {
        w.out.push_str("# EOF\n");
    }
    w.out
}

/// `mldeploy_requests_total`: the `_count` of the duration histogram, stored once.
fn requests_counter(
    w: &mut Writer,
    metrics: &Metrics,
    f: &Family,
    labels: &[String],
    series: &[(Vec<String>, usize)],
) {
    if !w.family(
        "mldeploy_requests",
        "Requests served, by method, route template, status, model and version.",
        "counter",
    ) {
        return;
    }
    let store = metrics.store();
    debug_assert_eq!(f.extra_count, REQUEST_BUCKETS.len());
    for (values, entry) in series {
        let (counts, _) = store.histogram(f, *entry);
        w.sample("mldeploy_requests", "_total", labels, values, None, Value::Int(counts.iter().sum()));
    }
}

/// The model's scrape-time gauges, grouped by name; invalid or already used names are skipped.
fn scraped_gauges(w: &mut Writer, gauges: &[ScrapedGauge]) {
    let mut order: Vec<&str> = Vec::new();
    for g in gauges {
        if !order.contains(&g.name.as_str()) {
            order.push(&g.name);
        }
    }
    for name in order {
        if !valid_metric_name(name) {
            continue;
        }
        let group: Vec<&ScrapedGauge> = gauges
            .iter()
            .filter(|g| g.name == name && g.labels.iter().all(|(k, _)| valid_label_name(k)))
            .collect();
        let Some(first) = group.first() else { continue };
        if !w.family(name, &first.help, "gauge") {
            continue;
        }
        let mut seen: HashSet<Vec<(String, String)>> = HashSet::new();
        for g in group {
            let mut labels = g.labels.clone();
            labels.sort();
            if !seen.insert(labels) {
                continue; // A repeated label set would make the exposition invalid.
            }
            let (names, values): (Vec<String>, Vec<String>) = g.labels.iter().cloned().unzip();
            w.sample(name, "", &names, &values, None, Value::Float(g.value));
        }
    }
}

enum Value {
    Int(u64),
    Float(f64),
}

struct Writer {
    out: String,
    format: Format,
    /// Family names written so far: a second family of the same name is skipped.
    names: HashSet<String>,
}

impl Writer {
    /// Write the HELP and TYPE lines of a family; false if the name was used already.
    fn family(&mut self, name: &str, help: &str, kind: &str) -> bool {
        // Every sample name a family writes must be its own.
        let taken: Vec<String> = match kind {
            "counter" => vec![name.to_string(), format!("{name}_total"), format!("{name}_created")],
            "histogram" => {
                ["", "_bucket", "_sum", "_count", "_created"].iter().map(|s| format!("{name}{s}")).collect()
            }
            _ => vec![name.to_string()],
        };
        if taken.iter().any(|n| self.names.contains(n)) {
            return false;
        }
        self.names.extend(taken);
        let (shown, kind) = match (self.format, kind) {
            (Format::Prometheus, "counter") => (format!("{name}_total"), kind),
            (Format::Prometheus, "stateset") => (name.to_string(), "gauge"),
            _ => (name.to_string(), kind),
        };
        let help = escape_help(help, self.format);
        match self.format {
            Format::Prometheus => {
                let _ = writeln!(self.out, "# HELP {shown} {help}");
                let _ = writeln!(self.out, "# TYPE {shown} {kind}");
            }
            Format::OpenMetrics => {
                let _ = writeln!(self.out, "# TYPE {shown} {kind}");
                let _ = writeln!(self.out, "# HELP {shown} {help}");
            }
        }
        true
    }

    fn sample(
        &mut self,
        name: &str,
        suffix: &str,
        label_names: &[String],
        values: &[String],
        extra: Option<(&str, &str)>,
        value: Value,
    ) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        let pairs =
            label_names.iter().map(String::as_str).zip(values.iter().map(String::as_str)).chain(extra);
        let mut first = true;
        for (k, v) in pairs {
            self.out.push(if first { '{' } else { ',' });
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_value(&mut self.out, v);
            self.out.push('"');
        }
        if !first {
            self.out.push('}');
        }
        self.out.push(' ');
        match value {
            Value::Int(n) => {
                let _ = write!(self.out, "{n}");
            }
            Value::Float(x) => self.out.push_str(&float_text(x)),
        }
        self.out.push('\n');
    }
}

/// A float as both formats accept it: `NaN`, `+Inf`, `-Inf`, or Rust's shortest round-trip
/// text (`1.0`, `0.0001`, `1e-7`).
pub(super) fn float_text(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x == f64::INFINITY {
        "+Inf".into()
    } else if x == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{x:?}")
    }
}

/// Label values escape backslash, double quote and line feed (both formats).
pub(super) fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escapes backslash and line feed (and, in OpenMetrics, double quote).
pub(super) fn escape_help(help: &str, format: Format) -> String {
    let mut out = String::with_capacity(help.len());
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if format == Format::OpenMetrics => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}
