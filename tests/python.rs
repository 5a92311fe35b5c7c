//! Python models: ml-deploy interface classes (tests/python/*.py), unchanged, served by the real
//! `mldeploy` binary, which hands the command line to `mldeploy-python` (embedded CPython).
//!
//! Every answer is compared with the class's own answer when called in plain Python in the same
//! test run (tests/python/own_answers.py, which also sends the requests with Python's
//! http.client). Needs `mldeploy-python` built beside `mldeploy` (`cargo build -p
//! mldeploy-python`, which scripts/test.sh does) and Python 3.11 with scikit-learn, numpy,
//! pandas and Flask (scripts/setup-test-deps.sh); without them the tests say so and pass,
//! unless MLDEPLOY_REQUIRE_PYTHON is set (scripts/test.sh sets it).

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::libc_sig::{SIGHUP, SIGTERM};
use common::wrk::Wrk;
use common::{http, is_alive, wait_until, Server};
use serde_json::{json, Value};

const SERVING_PREDICT: &str = "/breast-cancer/api/predict";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the repository")
}

fn model(file: &str) -> String {
    repo().join("tests/python").join(file).display().to_string()
}

/// Whether the Python side can run; panics instead when the suite requires it.
fn python_ready() -> bool {
    let beside = common::binary().with_file_name("mldeploy-python");
    let modules = Command::new("python3")
        .args(["-c", "import sklearn, numpy, pandas, flask, threadpoolctl"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = match (beside.is_file(), modules) {
        (true, true) => return true,
        (false, _) => format!("{} is not built (cargo build -p mldeploy-python)", beside.display()),
        (true, false) => {
            "python3 lacks scikit-learn, numpy, pandas or Flask (scripts/setup-test-deps.sh)".into()
        }
    };
    if std::env::var_os("MLDEPLOY_REQUIRE_PYTHON").is_some() {
        panic!("{missing}");
    }
    eprintln!("skipped: {missing}");
    false
}

/// BLAS pools of one thread, as the workers have by default: the class's own answers are
/// computed with the same summation order.
const ONE_BLAS_THREAD: [(&str, &str); 3] =
    [("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1")];

/// Start `mldeploy ARGS` and wait (bounded) until it serves: Python workers import
/// scikit-learn and fit their model first.
fn start(args: &[&str], env: &[(&str, &str)]) -> Server {
    let server = Server::spawn(args, env);
    let ok = wait_until(Duration::from_secs(180), || {
        http::get(server.addr, "/ready").map(|r| r.status == 200).unwrap_or(false)
    });
    assert!(ok, "the server did not become ready:\n{}", server.output());
    server
}

/// Wait until the master has exactly `n` live workers.
/// Waits until `n` workers run and each has loaded its model and serves (its own "serving" line):
/// a worker still inside `load()` is not yet one of them.
fn wait_workers(server: &Server, n: usize) -> HashSet<i32> {
    let serving =
        |line: &str, pid: i32| line.contains(" INFO serving, ") && line.ends_with(&format!("process: {pid}"));
    server.wait_workers_logged(n, Duration::from_secs(60), serving).into_iter().collect()
}

/// Each call as served and as the class answers it in Python: `[(served, own)]`.
fn own_answers(
    server: &Server,
    interface: &str,
    calls: Value,
    pythonpath: &[&Path],
    env: &[(&str, &Path)],
) -> Vec<(Value, Value)> {
    let mut path: Vec<PathBuf> = vec![repo().join("crates/mldeploy-python/python")];
    path.extend(pythonpath.iter().map(|p| p.to_path_buf()));
    let spec = json!({ "interface": interface, "server": server.addr.to_string(), "calls": calls });
    let mut child = Command::new("python3")
        .arg(repo().join("tests/python/own_answers.py"))
        .env("PYTHONPATH", std::env::join_paths(path).unwrap())
        .envs(ONE_BLAS_THREAD)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(spec.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "own_answers.py failed:\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.output()
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("own_answers.py prints JSON");
    results.into_iter().map(|r| (r["served"].clone(), r["own"].clone())).collect()
}

/// A predict or feedback answer equals the class's `create_response(...)`.
fn assert_same_response(served: &Value, own: &Value, model: &str) {
    assert_eq!(served["status"], 200, "{served}");
    let (s, o) = (&served["json"], &own["json"]);
    for key in ["target", "input", "list_metrics", "topics"] {
        assert_eq!(s[key], o[key], "{key} differs: served {s}, own {o}");
    }
    assert_eq!(s["model"], model);
}

/// A Flask route's answer equals the one Flask gives in Python; JSON objects get the model's
/// name and version as well (as ml-deploy 2.0.0 stamped them).
fn assert_same_route(served: &Value, own: &Value, model: &str) {
    assert_eq!(served["status"], own["status"], "served {served}, own {own}");
    match (served.get("json"), own.get("json")) {
        (Some(Value::Object(s)), Some(Value::Object(o))) => {
            let mut s = s.clone();
            assert_eq!(s.remove("model"), Some(json!(model)), "{served}");
            assert!(s.remove("version").is_some(), "{served}");
            assert_eq!(&s, o, "served {served}, own {own}");
        }
        _ => assert_eq!(served["text"], own["text"], "served {served}, own {own}"),
    }
}

/// The sum of the samples of `name` whose labels include `label`.
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mldeploy-python-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A request body of breast-cancer rows (for wrk), made with scikit-learn.
fn breast_cancer_body(rows: usize) -> String {
    let script = format!(
        "import json; from sklearn.datasets import load_breast_cancer as l; d = l(); \
         print(json.dumps({{'data': d.data[:{rows}].tolist(), 'names': [str(n) for n in d.feature_names]}}))"
    );
    let out = Command::new("python3").args(["-c", &script]).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn the_readme_class_answers_as_it_does_in_python() {
    if !python_ready() {
        return;
    }
    let interface = model("readme_model.py");
    let server = start(&["serve", &interface, "--workers", "2", "--threads", "2"], &[]);
    let feedback = json!({"data": [[1.0, 2.0]], "y_true": [1], "y_predict": [1]});
    let calls = json!([
        {"kind": "predict", "path": "/api/ml/predict", "rows": 1},
        {"kind": "predict", "path": "/api/ml/predict", "rows": 32},
        {"kind": "feedback", "path": "/api/ml/feedback", "body": feedback},
        {"kind": "route", "method": "GET", "path": "/items/42?q=hi", "headers": {"X-Test": "abc"}},
        {"kind": "route", "method": "PUT", "path": "/items/7", "body": {"a": [1, 2]}},
        {"kind": "route", "method": "GET", "path": "/items/404"},
        {"kind": "route", "method": "GET", "path": "/items/abc"},
        {"kind": "route", "method": "GET", "path": "/files/a/b%20c.txt"},
        {"kind": "route", "method": "GET", "path": "/test"},
        {"kind": "route", "method": "POST", "path": "/test"},
    ]);
    let answers = own_answers(&server, &interface, calls, &[], &[]);
    let name = "breast-cancer-readme";
    for (served, own) in &answers[..3] {
        assert_same_response(served, own, name);
    }
    assert_eq!(answers[1].0["json"]["target"]["y_predicted"].as_array().map(Vec::len), Some(32));
    for (served, own) in &answers[3..9] {
        assert_same_route(served, own, name);
    }
    // A method the route does not take: 405 as from Flask, in mldeploy's JSON error shape.
    let (served, own) = &answers[9];
    assert_eq!((&served["status"], &own["status"]), (&json!(405), &json!(405)));
    assert_eq!(served["json"]["error"], "method_not_allowed", "{served}");
    assert_eq!(answers[3].0["json"]["id"], 42, "the path parameter reached the route");

    // An exception in a route: a JSON 500 naming the request; the traceback only in the log.
    let boom = server.get("/boom");
    assert_eq!(boom.status, 500, "{}", boom.text());
    let id = boom.header("x-request-id").expect("a request id").to_string();
    assert_eq!(boom.json()["request_id"], id.as_str());
    assert!(
        !boom.text().contains("Traceback") && !boom.text().contains("boom in a route"),
        "{}",
        boom.text()
    );
    let logged = wait_until(Duration::from_secs(10), || {
        let out = server.output();
        out.contains("RuntimeError: boom in a route") && out.contains(&id)
    });
    assert!(logged, "the traceback is logged under {id}:\n{}", server.output());
}

#[test]
fn the_serving_class_keeps_its_routes_and_records_its_metrics() {
    if !python_ready() {
        return;
    }
    let interface = model("serving_model.py");
    let server = start(&["serve", &interface, "--workers", "2", "--threads", "2"], &[]);
    let calls = json!([
        {"kind": "predict", "path": SERVING_PREDICT, "rows": 1, "body": {"params": {"threshold": 0.5}}},
        {"kind": "predict", "path": SERVING_PREDICT, "rows": 32},
        {"kind": "feedback", "path": "/breast-cancer/api/feedback",
         "body": {"data": [[1.0], [2.0]], "y_true": [0, 1], "y_predict": [0, 0]}},
        {"kind": "route", "method": "GET", "path": "/breast-cancer/api/coefficients/3"},
    ]);
    let answers = own_answers(&server, &interface, calls, &[], &[]);
    for (served, own) in &answers[..3] {
        assert_same_response(served, own, "Breast_Cancer");
    }
    assert_same_route(&answers[3].0, &answers[3].1, "Breast_Cancer");
    // ml-deploy 2.0.0 derived the routes from __api_prefix__: the default prefix is not served.
    assert_eq!(server.post_json("/api/ml/predict", "{}").status, 404);

    // register() declared the metrics; record() in either worker adds to the same series.
    let predicted: Vec<i64> = answers[..2]
        .iter()
        .flat_map(|(_, own)| own["json"]["target"]["y_predicted"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_i64())
        .collect();
    assert_eq!(predicted.len(), 33);
    let text = server.get("/metrics").text();
    for label in [0, 1] {
        let expected = predicted.iter().filter(|p| **p == label).count() as f64;
        let got = metric_sum(&text, "breast_cancer_rows_total", &format!("predicted=\"{label}\""));
        assert_eq!(got, expected, "rows predicted {label}:\n{text}");
    }
    assert!(text.contains("breast_cancer_last_probability"), "{text}");
}

#[test]
fn python_exceptions_answer_a_json_500_and_the_worker_serves_on() {
    if !python_ready() {
        return;
    }
    let server = start(&["serve", &model("faulty_model.py"), "--workers", "1", "--threads", "2"], &[]);
    let worker = wait_workers(&server, 1);
    for (what, logged) in [("raise", "ValueError: bad input of shape (1, 2)"), ("exit", "SystemExit: 3")] {
        let body = json!({"data": [[1, 2]], "names": [what]}).to_string();
        let r = server.post_json("/api/ml/predict", &body);
        assert_eq!(r.status, 500, "{}", r.text());
        let id = r.header("x-request-id").expect("a request id").to_string();
        assert_eq!(r.json()["request_id"], id.as_str(), "{}", r.text());
        assert!(!r.text().contains("Traceback") && !r.text().contains("bad input"), "{}", r.text());
        let found = wait_until(Duration::from_secs(10), || server.output().contains(logged));
        assert!(found, "{logged} is logged:\n{}", server.output());
    }
    // The cause of a chained exception is logged too.
    assert!(server.output().contains("KeyError: 'missing'"), "{}", server.output());
    let ok = server.post_json("/api/ml/predict", r#"{"data": [[1, 2]], "names": ["a", "b"]}"#);
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["target"]["sum"], 3.0);
    assert_eq!(server.worker_pids().into_iter().collect::<HashSet<_>>(), worker, "no worker was replaced");
}

#[test]
fn a_call_past_the_timeout_costs_its_worker_and_the_server_serves_on() {
    if !python_ready() {
        return;
    }
    let args = ["serve", &model("faulty_model.py"), "--workers", "1", "--threads", "2", "--timeout", "2"];
    let server = start(&args, &[]);
    let first = wait_workers(&server, 1);
    let addr = server.addr;
    let hung = std::thread::spawn(move || {
        http::post_json(addr, "/api/ml/predict", r#"{"data": [[600]], "names": ["sleep"]}"#).map(|r| r.status)
    });
    let replaced = wait_until(Duration::from_secs(60), || {
        let now: HashSet<i32> = server.worker_pids().into_iter().collect();
        now.len() == 1 && now.is_disjoint(&first)
    });
    assert!(replaced, "the hung worker was not replaced\n{}", server.output());
    let answered = hung.join().unwrap();
    assert!(!matches!(answered, Ok(200)), "the hung call cannot succeed: {answered:?}");
    assert!(server.output().contains("worker timeout"), "{}", server.output());
    let served = wait_until(Duration::from_secs(120), || {
        http::post_json(addr, "/api/ml/predict", r#"{"data": [[1]], "names": ["a"]}"#)
            .is_ok_and(|r| r.status == 200)
    });
    assert!(served, "the replacement does not serve\n{}", server.output());
}

#[test]
fn a_failing_load_stops_the_start_and_abandons_a_reload() {
    if !python_ready() {
        return;
    }
    let dir = temp_dir("load");
    let flag = dir.join("fail");
    let flag_text = flag.display().to_string();
    let env = [("MLDEPLOY_TEST_FAIL_FILE", flag_text.as_str())];
    let interface = model("faulty_model.py");
    let args = ["serve", interface.as_str(), "--workers", "2"];

    std::fs::write(&flag, "").unwrap();
    let mut refused = Server::spawn(&args, &env);
    let status = refused.wait_exit(Duration::from_secs(120)).expect("the master stops");
    assert_eq!(status.code(), Some(3), "{}", refused.output());
    let out = refused.output();
    assert!(out.contains("FileNotFoundError: model.pkl is missing"), "{out}");
    assert!(out.contains("raise FileNotFoundError"), "the traceback is logged:\n{out}");

    std::fs::remove_file(&flag).unwrap();
    let server = start(&args, &env);
    let serving = wait_workers(&server, 2);
    std::fs::write(&flag, "").unwrap();
    server.signal(SIGHUP);
    let abandoned = wait_until(Duration::from_secs(120), || {
        server.output().lines().any(|l| l.contains("reload finished") && l.contains("ok: false"))
    });
    assert!(abandoned, "{}", server.output());
    assert_eq!(wait_workers(&server, 2), serving, "the old generation serves on");
    let r = server.post_json("/api/ml/predict", r#"{"data": [[1]], "names": ["a"]}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn hup_under_wrk_load_fails_no_request() {
    if !python_ready() {
        return;
    }
    let server = start(&["serve", &model("serving_model.py"), "--workers", "2", "--threads", "2"], &[]);
    let mut pids = wait_workers(&server, 2);
    let mut wrk =
        Wrk::start(server.addr, SERVING_PREDICT, &breast_cancer_body(1), 8, Duration::from_secs(600));
    for _ in 0..2 {
        server.signal(SIGHUP);
        let old = pids.clone();
        let reloaded = wait_until(Duration::from_secs(180), || {
            let now: HashSet<i32> = server.worker_pids().into_iter().collect();
            now.len() == 2 && now.is_disjoint(&old)
        });
        assert!(reloaded, "reload did not replace {old:?}\n{}", server.output());
        pids = server.worker_pids().into_iter().collect();
    }
    assert!(wrk.running(), "wrk ended early");
    let report = wrk.finish();
    eprintln!("wrk during reloads:\n{}", report.text);
    assert!(report.requests > 0, "{}", report.text);
    assert_eq!((report.non_2xx, report.socket_errors), (0, 0), "{}", report.text);
}

#[test]
fn killing_a_python_worker_under_load_fails_at_most_its_in_flight_requests() {
    if !python_ready() {
        return;
    }
    let args = ["serve", &model("serving_model.py"), "--workers", "2", "--threads", "2", "--keepalive", "30"];
    let server = start(&args, &[]);
    wait_workers(&server, 2);
    common::kill9::kill_a_worker_under_load(&server, SERVING_PREDICT, &breast_cancer_body(1), 8, 2);
}

#[test]
fn an_ml_deploy_config_serves_the_unchanged_class_and_the_installed_package_stays_unused() {
    if !python_ready() {
        return;
    }
    let dir = temp_dir("config");
    let bench = repo().join("scripts/bench");
    let trained = Command::new("python3")
        .arg(bench.join("train_model.py"))
        .arg(&dir)
        .envs(ONE_BLAS_THREAD)
        .output()
        .expect("python3");
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    // An "installed ml-deploy" that would leave a mark if anything imported it.
    let site = dir.join("site");
    std::fs::create_dir_all(site.join("ml_deploy")).unwrap();
    let mark = dir.join("real-ml-deploy-imported");
    std::fs::write(
        site.join("ml_deploy/__init__.py"),
        format!(
            "open({:?}, 'w').write('imported')\nraise ImportError('the installed ml-deploy')\n",
            mark.display()
        ),
    )
    .unwrap();
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "app:\n  interface: ml_deploy_model.BreastCancerModel\n  mode: production\n  workers: 2\n  threads: 1\n  \
         log_level: INFO\ndata:\n  features: []\n",
    )
    .unwrap();
    let pythonpath = std::env::join_paths([&site, &bench]).unwrap();
    let pipeline = dir.join("pipeline.joblib");
    let env = [("PYTHONPATH", pythonpath.to_str().unwrap()), ("BENCH_PIPELINE", pipeline.to_str().unwrap())];
    let server = start(&["serve", "--ml-deploy-config", config.to_str().unwrap()], &env);
    wait_workers(&server, 2);
    let calls = json!([
        {"kind": "predict", "path": "/ml/api/predict", "rows": 1},
        {"kind": "predict", "path": "/ml/api/predict", "rows": 32},
    ]);
    let own_env = [bench.as_path()];
    let answers = own_answers(
        &server,
        "ml_deploy_model.BreastCancerModel",
        calls,
        &own_env,
        &[("BENCH_PIPELINE", pipeline.as_path())],
    );
    for (served, own) in &answers {
        assert_same_response(served, own, "breast-cancer");
    }
    assert!(!mark.exists(), "the installed ml-deploy was imported");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_environment_is_chosen_and_checked_and_blas_pools_are_sized() {
    if !python_ready() {
        return;
    }
    let dir = temp_dir("env");
    // An environment of another Python is refused at start, naming both versions.
    let other = dir.join("venv312");
    std::fs::create_dir_all(other.join("bin")).unwrap();
    std::fs::write(other.join("pyvenv.cfg"), "home = /usr/bin\nversion = 3.12.1\n").unwrap();
    let probe = model("probe_model.py");
    let mut refused = Server::spawn(&["serve", &probe, "--python", other.to_str().unwrap()], &[]);
    let status = refused.wait_exit(Duration::from_secs(60)).expect("refused at start");
    assert_eq!(status.code(), Some(2), "{}", refused.output());
    let out = refused.output();
    assert!(out.contains("Python 3.12.1") && out.contains("built for Python 3.11"), "{out}");

    // A real virtualenv named by VIRTUAL_ENV is the worker's sys.prefix and sys.executable.
    let venv = dir.join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv", "--system-site-packages", "--without-pip"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(made.success());
    let venv = venv.canonicalize().unwrap();
    let venv_text = venv.display().to_string();
    let server =
        start(&["serve", &probe, "--workers", "1", "--threads", "2"], &[("VIRTUAL_ENV", &venv_text)]);
    let report =
        server.post_json("/api/ml/predict", r#"{"data": [[1]], "names": ["x"]}"#).json()["target"].clone();
    assert_eq!(report["prefix"], venv_text.as_str(), "{report}");
    assert!(report["executable"].as_str().is_some_and(|e| e.starts_with(&venv_text)), "{report}");
    // One BLAS/OpenMP thread per call by default (--engine-threads): N workers do not
    // oversubscribe the cores.
    assert_eq!((report["omp"].as_str(), report["openblas"].as_str()), (Some("1"), Some("1")), "{report}");
    let pools = report["pools"].as_array().expect("threadpoolctl's pools");
    assert!(!pools.is_empty() && pools.iter().all(|p| p[1] == 1), "{report}");

    // Two calls run at once on the worker's two Python threads (the class waits for both), and
    // neither waits behind the other's serving thread: a serving thread that blocks in a call
    // must not hold the connections or the I/O polling of the worker's other thread. Repeated,
    // since which thread takes which connection varies from pair to pair.
    let addr = server.addr;
    for pair in 0..20 {
        let together: Vec<_> = (0..2)
            .map(|_| {
                std::thread::spawn(move || {
                    http::post_json(addr, "/api/ml/predict", r#"{"data": [[1]], "names": ["together"]}"#)
                        .map(|r| r.json())
                })
            })
            .collect();
        let threads: HashSet<String> = together
            .into_iter()
            .map(|t| {
                let answer =
                    t.join().unwrap().unwrap_or_else(|e| panic!("pair {pair}: {e}\n{}", server.output()));
                answer["target"]["thread"].as_str().unwrap_or("").to_string()
            })
            .collect();
        assert_eq!(
            threads.len(),
            2,
            "pair {pair}: two Python threads answered: {threads:?}\n{}",
            server.output()
        );
    }

    // load() took SIGTERM; the worker put its own handler back, so TERM still stops gracefully.
    assert!(server.output().contains("the model changed a signal's handler"), "{}", server.output());
    drop(server);

    // A user's own setting wins.
    let server = start(&["serve", &probe, "--workers", "1"], &[("OMP_NUM_THREADS", "2")]);
    let report =
        server.post_json("/api/ml/predict", r#"{"data": [[1]], "names": ["x"]}"#).json()["target"].clone();
    assert_eq!((report["omp"].as_str(), report["openblas"].as_str()), (Some("2"), Some("1")), "{report}");
    let mut server = server;
    let worker = wait_workers(&server, 1);
    server.signal(SIGTERM);
    let status = server.wait_exit(Duration::from_secs(60)).expect("TERM stops the server");
    assert_eq!(status.code(), Some(0), "{}", server.output());
    assert!(
        server.output().contains("worker stopped"),
        "the worker stopped gracefully:\n{}",
        server.output()
    );
    assert!(worker.iter().all(|p| !is_alive(*p)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mldeploy_itself_needs_no_python() {
    let out = Command::new("readelf").arg("-d").arg(common::binary()).output().expect("readelf");
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(dynamic.contains("NEEDED"), "{dynamic}");
    assert!(!dynamic.contains("libpython"), "mldeploy links libpython:\n{dynamic}");
    // Without mldeploy-python beside it or on PATH, a Python model is refused with the reason.
    let dir = temp_dir("alone");
    let alone = dir.join("mldeploy");
    std::fs::copy(common::binary(), &alone).unwrap();
    let out = Command::new(&alone)
        .args(["serve", "interface.py"])
        .env("PATH", "/usr/bin:/bin")
        .env_remove("VIRTUAL_ENV")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("mldeploy-python"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
