//! Server-wide metrics through the real binary: every worker reports the whole server's figures,
//! counters survive killed and reloaded workers, and the exposition passes real parsers.
//!
//! The parser checks run python3's `prometheus_client` and, when installed, `promtool check
//! metrics`. Without python3 or prometheus_client they are skipped with a message, unless
//! `MLDEPLOY_REQUIRE_PYTHON=1`, which makes them fail instead.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::http::{self, Response};
use common::libc_sig::{SIGHUP, SIGKILL};
use common::{kill, wait_until, Server};

const PREDICT: &str = "/api/ml/predict";

/// The value of the sample `name{labels}` (labels given in any order, all of them) in a
/// Prometheus text exposition.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let got: HashSet<String> = rest
            .trim_end_matches('}')
            .split("\",")
            .filter(|p| !p.is_empty())
            .map(|p| p.trim_end_matches('"').to_string())
            .collect();
        let want: HashSet<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}")).collect();
        (got == want).then(|| value.parse().ok()).flatten()
    })
}

/// The sum of every sample of `name` whose labels include all of `labels`.
fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(server: &Server) -> String {
    let r = server.get("/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

/// The worker pid in our request ids (`<pid hex>-<start hex>-<n>`).
fn worker_of(r: &Response) -> Option<i32> {
    i32::from_str_radix(r.header("x-request-id")?.split('-').next()?, 16).ok()
}

fn demo_sample(server: &Server) -> String {
    server.get("/api/ml/metadata").json()["sample"].to_string()
}

fn wait_workers(server: &Server, n: usize) -> Vec<i32> {
    server.wait_ready_workers(n, Duration::from_secs(30))
}

/// `n` predictions, each on a fresh connection, from 8 client threads; returns the pids of the
/// workers that answered.
fn predict_many(server: &Server, n: usize, body: &str) -> HashSet<i32> {
    let threads = 8;
    let addr = server.addr;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let body = body.to_string();
            std::thread::spawn(move || {
                let mut pids = HashSet::new();
                for _ in (t..n).step_by(threads) {
                    let r = http::post_json(addr, PREDICT, &body).expect("predict");
                    assert_eq!(r.status, 200, "{}", r.text());
                    pids.extend(worker_of(&r));
                }
                pids
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().expect("client thread")).collect()
}

/// Predict-route figures in `text`: requests, histogram count.
fn predict_counts(text: &str) -> (f64, f64) {
    let route = [("route", PREDICT)];
    (
        sum(text, "mldeploy_requests_total", &route),
        sum(text, "mldeploy_request_duration_seconds_count", &route),
    )
}

#[test]
fn every_worker_reports_the_whole_server() {
    let server = Server::start(&["serve", "--workers", "4", "--threads", "2"]);
    let workers: HashSet<i32> = wait_workers(&server, 4).into_iter().collect();
    let body = demo_sample(&server);
    let rows = serde_json::from_str::<serde_json::Value>(&body).expect("sample")["data"]
        .as_array()
        .map_or(1, |a| a.len()) as f64;

    let answered = predict_many(&server, 1000, &body);
    assert!(answered.len() >= 2, "1000 requests all went to {answered:?} of {workers:?}");
    assert!(answered.is_subset(&workers), "{answered:?} not among {workers:?}");

    // Every scrape, whichever worker takes it, sees all 1000; scrapes are counted once they
    // are answered, so the k-th scrape sees exactly the k - 1 before it.
    let mut scraped_by = HashSet::new();
    for k in 0..40 {
        let r = server.get("/metrics");
        assert_eq!(r.status, 200);
        scraped_by.extend(worker_of(&r));
        let text = r.text();
        assert_eq!(predict_counts(&text), (1000.0, 1000.0), "scrape {k}:\n{text}");
        let scrapes = sum(&text, "mldeploy_requests_total", &[("route", "/metrics")]);
        assert_eq!(scrapes, k as f64, "scrape {k} sees the scrapes before it:\n{text}");
        assert_eq!(sum(&text, "mldeploy_predictions_total", &[]), 1000.0 * rows, "{text}");
        assert_eq!(sample(&text, "mldeploy_workers_alive", &[]), Some(4.0), "{text}");
        assert!(sample(&text, "mldeploy_requests_in_flight", &[]).is_some_and(|n| n >= 1.0), "{text}");
    }
    assert!(scraped_by.len() >= 2, "every scrape went to {scraped_by:?}");
}

#[test]
fn counters_survive_killed_and_reloaded_workers() {
    let server = Server::start(&["serve", "--workers", "3", "--threads", "2"]);
    let before = wait_workers(&server, 3);
    let body = demo_sample(&server);
    predict_many(&server, 200, &body);
    let text = scrape(&server);
    assert_eq!(predict_counts(&text), (200.0, 200.0), "{text}");
    assert_eq!(sample(&text, "mldeploy_worker_restarts_total", &[("reason", "crash")]), Some(0.0), "{text}");

    // kill -9 one worker: the master replaces it; nothing counted is lost.
    let victim = before[0];
    kill(victim, SIGKILL);
    let replaced = wait_until(Duration::from_secs(30), || {
        let now = server.worker_pids();
        now.len() == 3 && !now.contains(&victim)
    });
    assert!(replaced, "worker {victim} not replaced\n{}", server.output());
    let restarted = wait_until(Duration::from_secs(10), || {
        sample(&scrape(&server), "mldeploy_worker_restarts_total", &[("reason", "crash")]) == Some(1.0)
    });
    let text = scrape(&server);
    assert!(restarted, "crash not counted:\n{text}");
    assert_eq!(predict_counts(&text), (200.0, 200.0), "{text}");
    let crashed_at = sample(&text, "mldeploy_requests_in_flight", &[]).expect("in flight");
    assert_eq!(crashed_at, 1.0, "only the scrape itself is in flight:\n{text}");

    // HUP: a new generation replaces every worker; counters carry on.
    let old: HashSet<i32> = server.worker_pids().into_iter().collect();
    server.signal(SIGHUP);
    let reloaded = wait_until(Duration::from_secs(60), || {
        let now: HashSet<i32> = server.worker_pids().into_iter().collect();
        now.len() == 3 && now.is_disjoint(&old)
    });
    assert!(reloaded, "reload did not replace {old:?}: {:?}\n{}", server.worker_pids(), server.output());
    let counted = wait_until(Duration::from_secs(10), || {
        let text = scrape(&server);
        sample(&text, "mldeploy_worker_restarts_total", &[("reason", "reload")]) == Some(3.0)
            && sample(&text, "mldeploy_reloads_total", &[("outcome", "ok")]) == Some(1.0)
    });
    let text = scrape(&server);
    assert!(counted, "reload not counted:\n{text}");
    assert_eq!(predict_counts(&text), (200.0, 200.0), "{text}");
    assert_eq!(sample(&text, "mldeploy_worker_restarts_total", &[("reason", "crash")]), Some(1.0), "{text}");
    assert_eq!(sample(&text, "mldeploy_reloads_total", &[("outcome", "failed")]), Some(0.0), "{text}");
    assert!(sample(&text, "mldeploy_model_load_seconds", &[]).is_some_and(|s| s > 0.0), "{text}");

    predict_many(&server, 100, &body);
    let text = scrape(&server);
    assert_eq!(predict_counts(&text), (300.0, 300.0), "{text}");
}

/// Feed `text` to python3's prometheus_client; `Err` explains a skip.
fn python_parse(text: &str, openmetrics: bool) -> Result<usize, String> {
    const SCRIPT: &str = r#"
import sys
try:
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
except ImportError:
    sys.exit(77)
parse = om if sys.argv[1] == "om" else text_string_to_metric_families
print(sum(len(f.samples) for f in parse(sys.stdin.read())))
"#;
    let required = std::env::var("MLDEPLOY_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let skip = |why: String| {
        assert!(!required, "MLDEPLOY_REQUIRE_PYTHON=1 but {why}");
        Err(why)
    };
    let mut child = match Command::new("python3")
        .args(["-c", SCRIPT, if openmetrics { "om" } else { "text" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return skip(format!("python3 cannot run: {e}")),
    };
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to python3");
    let out = child.wait_with_output().expect("python3");
    if out.status.code() == Some(77) {
        return skip("python3 has no prometheus_client".into());
    }
    assert!(
        out.status.success(),
        "prometheus_client refused:\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse().expect("sample count"))
}

/// Run `promtool check metrics` on `text`; `None` when promtool is not installed.
fn promtool(text: &str) -> Option<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write to promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{text}");
    Some(())
}

#[test]
fn the_exposition_passes_real_parsers() {
    let server = Server::start(&["serve", "--workers", "2"]);
    wait_workers(&server, 2);
    let body = demo_sample(&server);
    predict_many(&server, 20, &body);
    // Some variety: a refused input, an unknown route, a HEAD.
    let bad = server.post_json(PREDICT, r#"{"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9]]}"#);
    assert!(bad.status >= 400, "{}", bad.text());
    assert_eq!(server.get("/no/such/route").status, 404);

    let text = server.get("/metrics");
    assert!(text.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = text.text();
    assert!(text.contains("# TYPE mldeploy_request_duration_seconds histogram\n"), "{text}");
    let om =
        http::request(server.addr, "GET", "/metrics", &[("Accept", "application/openmetrics-text")], b"")
            .expect("scrape");
    assert_eq!(om.status, 200);
    assert!(om
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/openmetrics-text; version=1.0.0")));
    let om = om.text();
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE mldeploy_requests counter\n"), "{om}");

    match python_parse(&text, false) {
        Ok(n) => assert!(n > 40, "only {n} samples:\n{text}"),
        Err(why) => eprintln!("skipped the prometheus_client check: {why}"),
    }
    match python_parse(&om, true) {
        Ok(n) => assert!(n > 40, "only {n} samples:\n{om}"),
        Err(why) => eprintln!("skipped the prometheus_client check: {why}"),
    }
    // promtool reads the Prometheus text format only.
    if promtool(&text).is_none() {
        eprintln!("skipped the promtool check: promtool is not installed (Debian package prometheus)");
    }
}
