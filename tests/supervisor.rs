//! The pre-fork supervisor, driven through the real binaries: workers, signals, reloads,
//! timeouts, systemd notifications. Every server is killed with its process group on drop.

mod common;

use std::collections::HashSet;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::http::{self, Conn};
use common::libc_sig::*;
use common::{children_of, is_alive, wait_until, Server};

const PREDICT: &str = "/api/ml/predict";

fn demo_sample(server: &Server) -> String {
    server.get("/api/ml/metadata").json()["sample"].to_string()
}

/// The sum of every sample of `name` in a Prometheus text exposition.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Wait until the master has exactly `n` live workers.
fn wait_workers(server: &Server, n: usize) -> Vec<i32> {
    server.wait_ready_workers(n, Duration::from_secs(30))
}

/// Keep `clients` keep-alive connections busy with predictions until `stop` is set; count
/// answers that were not 200 and transport errors (after which the client reconnects).
fn load(
    server: &Server,
    clients: usize,
    body: String,
    stop: Arc<AtomicBool>,
) -> (Vec<std::thread::JoinHandle<()>>, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let handles = (0..clients)
        .map(|_| {
            let (addr, body, stop, ok, failed) =
                (server.addr, body.clone(), Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut conn = Conn::open(addr).expect("connect");
                while !stop.load(Ordering::Relaxed) {
                    match conn.request(
                        "POST",
                        PREDICT,
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    ) {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                                conn = Conn::open(addr).expect("reconnect");
                            }
                        }
                        Ok(r) => {
                            eprintln!("status {}: {}", r.status, r.text());
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            eprintln!("transport error: {e}");
                            failed.fetch_add(1, Ordering::Relaxed);
                            conn = Conn::open(addr).expect("reconnect");
                        }
                    }
                }
            })
        })
        .collect();
    (handles, ok, failed)
}

#[test]
fn workers_are_forked_and_a_killed_worker_is_replaced() {
    let server = Server::start(&["serve", "--workers", "4", "--threads", "2"]);
    let before = wait_workers(&server, 4);
    let victim = before[0];
    common::kill(victim, SIGKILL);
    let replaced = wait_until(Duration::from_secs(10), || {
        let now = server.worker_pids();
        now.len() == 4 && !now.contains(&victim)
    });
    assert!(replaced, "worker {victim} not replaced: {:?}\n{}", server.worker_pids(), server.output());
    let body = demo_sample(&server);
    for _ in 0..40 {
        let r = server.post_json(PREDICT, &body);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let out = server.output();
    assert!(out.contains(&victim.to_string()), "the log names the dead worker:\n{out}");
}

#[test]
fn a_model_that_cannot_load_stops_the_master_with_its_error() {
    let mut server = Server::spawn(&["serve", "/nonexistent/model/package", "--workers", "2"], &[]);
    let status = server.wait_exit(Duration::from_secs(30)).expect("master must exit on boot failure");
    assert!(!status.success(), "exit status {status:?}");
    assert!(children_of(server.pid()).is_empty());
    let out = server.output();
    assert!(out.contains("/nonexistent/model/package"), "the error names the package:\n{out}");

    let mut fault = Server::spawn_program(
        common::fault_binary(),
        &["serve", "--workers", "2"],
        &[("MLDEPLOY_FAULT_MODEL_LOAD_FAILS", "1")],
    );
    let status = fault.wait_exit(Duration::from_secs(30)).expect("master must exit on boot failure");
    assert!(!status.success());
    assert!(fault.output().contains("asked not to load"), "{}", fault.output());
}

#[test]
fn a_hung_model_call_gets_its_worker_replaced_and_others_keep_serving() {
    let server = Server::start_fault(&["serve", "--workers", "2", "--threads", "2", "--timeout", "2"], &[]);
    let before: HashSet<i32> = wait_workers(&server, 2).into_iter().collect();
    let addr = server.addr;
    let hung = std::thread::spawn(move || {
        // Answered by no one: the connection ends when the worker is killed.
        http::post_json(addr, PREDICT, r#"{"data": 1, "params": {"hang": true}}"#)
    });
    let replaced = wait_until(Duration::from_secs(30), || {
        let now: HashSet<i32> = server.worker_pids().into_iter().collect();
        now.len() == 2 && now != before
    });
    assert!(replaced, "no worker replaced\n{}", server.output());
    assert!(server.output().contains("worker timeout"), "{}", server.output());
    let r = hung.join().unwrap();
    assert!(r.is_err() || r.as_ref().unwrap().status >= 500, "{r:?}");
    for i in 0..20 {
        let r = server.post_json(PREDICT, &format!(r#"{{"data": {i}}}"#));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["target"]["y_predicted"], i);
    }
}

#[test]
fn a_panicking_model_answers_500_and_the_worker_keeps_serving() {
    let server = Server::start_fault(&["serve", "--workers", "1"], &[]);
    let pids = wait_workers(&server, 1);
    let r = server.post_json(PREDICT, r#"{"data": 1, "params": {"panic": true}}"#);
    assert_eq!(r.status, 500);
    let body = r.json();
    assert!(body["request_id"].is_string(), "{body}");
    assert!(!r.text().contains("asked to panic"), "no internals in the answer: {}", r.text());
    let r = server.post_json(PREDICT, r#"{"data": 2}"#);
    assert_eq!(r.status, 200);
    assert_eq!(server.worker_pids(), pids, "the same worker serves on");
}

#[test]
fn term_finishes_in_flight_requests_then_exits_zero() {
    // One worker with a thread to spare, so a scrape is answered while three calls sleep.
    let mut server = Server::start_fault(&["serve", "--workers", "1", "--threads", "4"], &[]);
    wait_workers(&server, 1);
    let addr = server.addr;
    let slow: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                http::post_json(addr, PREDICT, r#"{"data": 7, "params": {"sleep_ms": 3000}}"#)
            })
        })
        .collect();
    // Wait until all three are inside the model (the in-flight gauge counts them).
    let in_flight = wait_until(Duration::from_secs(20), || {
        http::get(addr, "/metrics").is_ok_and(|r| metric_sum(&r.text(), "mldeploy_requests_in_flight") >= 3.0)
    });
    assert!(in_flight, "requests never in flight:\n{}", server.output());
    server.signal(SIGTERM);
    for h in slow {
        let r = h.join().unwrap().expect("in-flight request answered");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let status = server.wait_exit(Duration::from_secs(30)).expect("master exits");
    assert_eq!(status.code(), Some(0), "{}", server.output());
    assert!(children_of(server.pid()).is_empty());
}

#[test]
fn hup_reloads_every_worker_without_failing_a_request() {
    let server = Server::start(&["serve", "--workers", "2", "--threads", "2"]);
    let mut pids: HashSet<i32> = wait_workers(&server, 2).into_iter().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (clients, ok, failed) = load(&server, 8, demo_sample(&server), Arc::clone(&stop));
    for _ in 0..3 {
        server.signal(SIGHUP);
        let old = pids.clone();
        let reloaded = wait_until(Duration::from_secs(30), || {
            let now: HashSet<i32> = server.worker_pids().into_iter().collect();
            now.len() == 2 && now.is_disjoint(&old)
        });
        assert!(reloaded, "reload did not replace {old:?}: {:?}\n{}", server.worker_pids(), server.output());
        pids = server.worker_pids().into_iter().collect();
    }
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    assert!(ok.load(Ordering::Relaxed) > 0);
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests during reloads\n{}", server.output());
}

#[test]
fn max_requests_recycles_workers_without_failing_a_request() {
    let server =
        Server::start(&["serve", "--workers", "2", "--max-requests", "100", "--max-requests-jitter", "20"]);
    let first: HashSet<i32> = wait_workers(&server, 2).into_iter().collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (clients, ok, failed) = load(&server, 4, demo_sample(&server), Arc::clone(&stop));
    let recycled = wait_until(Duration::from_secs(60), || {
        let now: HashSet<i32> = server.worker_pids().into_iter().collect();
        ok.load(Ordering::Relaxed) > 600 && now.is_disjoint(&first)
    });
    stop.store(true, Ordering::Relaxed);
    clients.into_iter().for_each(|c| c.join().unwrap());
    assert!(recycled, "workers not recycled: {first:?} -> {:?}\n{}", server.worker_pids(), server.output());
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed requests during recycling");
}

#[test]
fn systemd_hears_ready_reloading_ready_stopping_in_order() {
    let dir = std::env::temp_dir().join(format!("mldeploy-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut server =
        Server::start_with_env(&["serve", "--workers", "2"], &[("NOTIFY_SOCKET", path.to_str().unwrap())]);
    let mut states: Vec<String> = Vec::new();
    // Read notifications until `count` of them equal `want` (bounded by the read timeout).
    let until = |states: &mut Vec<String>, want: &str, count: usize| {
        let mut buf = [0u8; 4096];
        while states.iter().filter(|s| *s == want).count() < count {
            let n =
                socket.recv(&mut buf).unwrap_or_else(|e| panic!("waiting for {want}: {e}; got {states:?}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            for line in msg.lines() {
                if matches!(line, "READY=1" | "RELOADING=1" | "STOPPING=1") {
                    states.push(line.to_string());
                }
            }
        }
    };
    until(&mut states, "READY=1", 1);
    server.signal(SIGHUP);
    until(&mut states, "RELOADING=1", 1);
    until(&mut states, "READY=1", 2);
    server.signal(SIGTERM);
    until(&mut states, "STOPPING=1", 1);
    assert_eq!(states, ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]);
    assert_eq!(server.wait_exit(Duration::from_secs(30)).and_then(|s| s.code()), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ttin_and_ttou_add_and_remove_a_worker() {
    let server = Server::start(&["serve", "--workers", "2"]);
    wait_workers(&server, 2);
    server.signal(SIGTTIN);
    wait_workers(&server, 3);
    server.signal(SIGTTOU);
    wait_workers(&server, 2);
}

#[test]
fn pidfile_is_written_and_removed() {
    let path = std::env::temp_dir().join(format!("mldeploy-test-{}.pid", std::process::id()));
    let mut server = Server::start(&["serve", "--pidfile", path.to_str().unwrap()]);
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written.trim(), server.pid().to_string());
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(30)).and_then(|s| s.code()), Some(0));
    assert!(!path.exists());
}

#[test]
fn workers_exit_when_their_master_dies() {
    let mut server = Server::start(&["serve", "--workers", "2"]);
    let workers = wait_workers(&server, 2);
    server.signal(SIGKILL);
    server.wait_exit(Duration::from_secs(10)).expect("master killed");
    let gone = wait_until(Duration::from_secs(10), || workers.iter().all(|w| !is_alive(*w)));
    assert!(gone, "orphaned workers still alive: {workers:?}");
}

#[test]
fn quit_stops_at_once() {
    let mut server = Server::start(&["serve", "--workers", "2"]);
    wait_workers(&server, 2);
    server.signal(SIGQUIT);
    let status = server.wait_exit(Duration::from_secs(10)).expect("master exits on QUIT");
    assert!(children_of(server.pid()).is_empty(), "{status:?}");
}

/// Which worker answered: the pid that starts the generated `x-request-id` (`<pid>-<start>-<n>`,
/// in hexadecimal).
fn answering_worker(r: &http::Response) -> i32 {
    let id = r.header("x-request-id").unwrap_or_default();
    i32::from_str_radix(id.split('-').next().unwrap_or_default(), 16).unwrap_or(-1)
}

#[test]
fn a_burst_of_keep_alive_connections_is_spread_over_the_workers() {
    // Without steering, the first worker to wake took most of such a burst (32/0/0/0,
    // 31/1/0/0, 18/13/1/0 in trials); with it, each of 4 workers holds about 8.
    let server = Server::start(&["serve", "--workers", "4", "--threads", "1"]);
    let workers = wait_workers(&server, 4);
    let mut conns: Vec<Conn> = (0..32).map(|_| Conn::open(server.addr).expect("connect")).collect();
    let mut held = std::collections::HashMap::<i32, usize>::new();
    for conn in &mut conns {
        let r = conn.request("GET", "/health", &[], b"").expect("health");
        assert_eq!(r.status, 200, "{}", r.text());
        *held.entry(answering_worker(&r)).or_default() += 1;
    }
    assert!(held.keys().all(|w| workers.contains(w)), "answers from {held:?}, workers {workers:?}");
    // Bounds with room for a slow wake-up on a loaded machine (a worker that does not take
    // its turn within 2 ms leaves the connection to another).
    assert_eq!(held.len(), 4, "every worker should hold connections: {held:?}");
    assert!(held.values().all(|&n| (4..=12).contains(&n)), "uneven spread: {held:?}");
}

#[test]
fn app_debug_serves_in_one_process() {
    let mut server = Server::start_with_env(&["serve"], &[("APP_DEBUG", "true")]);
    let r = server.post_json(PREDICT, &demo_sample(&server));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(server.worker_pids().is_empty(), "no worker processes in app_debug");
    server.signal(SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(30)).and_then(|s| s.code()), Some(0));
}

#[test]
fn idle_connections_do_not_stop_the_server_answering() {
    let server = Server::start(&["serve", "--workers", "2", "--keepalive", "30"]);
    let idle: Vec<_> = (0..500).filter_map(|_| std::net::TcpStream::connect(server.addr).ok()).collect();
    assert!(idle.len() >= 450, "could open only {} connections", idle.len());
    for _ in 0..10 {
        assert_eq!(server.get("/health").status, 200);
    }
    drop(idle);
}

#[test]
fn bad_settings_are_refused_with_the_setting_named() {
    let mut server = Server::spawn(&["serve", "--workers", "0"], &[]);
    let status = server.wait_exit(Duration::from_secs(10)).expect("exits at once");
    assert_eq!(status.code(), Some(2));
    assert!(server.output().contains("workers"), "{}", server.output());
    let mut server = Server::spawn(&["serve", "--log-level", "loud"], &[]);
    server.wait_exit(Duration::from_secs(10)).expect("exits at once");
    assert!(server.output().contains("debug, info, warning, error"), "{}", server.output());
}

/// Effective uid and gid of a process, from /proc/PID/status ("self" for this one).
fn effective_ids(pid: &str) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let effective = |field: &str| -> Option<u32> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(2)?.parse().ok()
    };
    Some((effective("Uid:")?, effective("Gid:")?))
}

/// `nobody`'s uid and gid, and the name of that group, from /etc/passwd and /etc/group.
fn nobody() -> Option<(u32, u32, String)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    let fields: Vec<&str> = passwd.lines().find(|l| l.starts_with("nobody:"))?.split(':').collect();
    let (uid, gid) = (fields.get(2)?.parse().ok()?, fields.get(3)?.parse::<u32>().ok()?);
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    let group = groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|g| g.get(2) == Some(&gid.to_string().as_str()))?;
    Some((uid, gid, group[0].to_string()))
}

#[test]
fn workers_switch_to_the_configured_user_and_group_and_the_master_keeps_its_own() {
    let own = effective_ids("self").expect("/proc/self/status");
    let Some((uid, gid, group)) = nobody().filter(|_| own.0 == 0) else {
        // Changing identity takes root (and a `nobody` account).
        eprintln!("skipped: not root, or no nobody account");
        return;
    };
    let server = Server::start(&["serve", "--workers", "2", "--user", "nobody", "--group", &group]);
    let workers = wait_workers(&server, 2);
    // A worker switches right after its fork: a second one may still be on its way.
    wait_until(Duration::from_secs(10), || {
        workers.iter().all(|pid| effective_ids(&pid.to_string()) == Some((uid, gid)))
    });
    for pid in &workers {
        assert_eq!(effective_ids(&pid.to_string()), Some((uid, gid)), "worker {pid}");
    }
    assert_eq!(effective_ids(&server.pid().to_string()), Some(own), "the master");
    let body = demo_sample(&server);
    assert_eq!(server.post_json(PREDICT, &body).status, 200);
    // Replacements and a reload's new generation switch too.
    common::kill(workers[0], SIGKILL);
    let replaced = wait_until(Duration::from_secs(10), || {
        let now = server.worker_pids();
        now.len() == 2 && !now.contains(&workers[0])
    });
    assert!(replaced, "worker {} not replaced\n{}", workers[0], server.output());
    server.signal(SIGHUP);
    let reloaded = wait_until(Duration::from_secs(30), || {
        let now = server.worker_pids();
        now.len() == 2 && now.iter().all(|p| !workers.contains(p))
    });
    assert!(reloaded, "no new generation: {:?}\n{}", server.worker_pids(), server.output());
    let switched =
        || server.worker_pids().iter().all(|pid| effective_ids(&pid.to_string()) == Some((uid, gid)));
    wait_until(Duration::from_secs(10), switched);
    for pid in server.worker_pids() {
        assert_eq!(effective_ids(&pid.to_string()), Some((uid, gid)), "worker {pid} after the reload");
    }
    assert_eq!(server.post_json(PREDICT, &body).status, 200);
}
