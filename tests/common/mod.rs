//! Test harness: starts the real `mldeploy` binary on a loopback port, talks HTTP/1.1 to it
//! over plain sockets, sends it signals, and kills its whole process group when dropped.
#![allow(dead_code)]

pub mod http;
pub mod kill9;
pub mod wrk;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository's top directory.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether python3 can import every module of `modules` (comma-separated). A missing one
/// fails the test when MLDEPLOY_REQUIRE_PYTHON=1 (CI), and skips it with a message otherwise.
pub fn python_has(modules: &str) -> bool {
    let ready = Command::new("python3").args(["-c", &format!("import {modules}")]).status();
    if ready.is_ok_and(|s| s.success()) {
        return true;
    }
    assert!(
        std::env::var("MLDEPLOY_REQUIRE_PYTHON").as_deref() != Ok("1"),
        "python3 with {modules} is needed: run scripts/setup-test-deps.sh"
    );
    eprintln!("SKIPPED: python3 with {modules} is missing");
    false
}

/// Run `python3 scripts/<script> ARGS`, one thread for the numeric libraries; panics with its
/// error output when it fails.
pub fn run_script(script: &str, args: &[&std::ffi::OsStr]) {
    let out = Command::new("python3")
        .arg(repo_root().join("scripts").join(script))
        .args(args)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Path of the binary under test.
pub fn binary() -> PathBuf {
    option_env!("CARGO_BIN_EXE_mldeploy")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("only for tests of the mldeploy package"))
}

/// Path of the fault-injection model binary (`params` pick a failure; see its docs).
pub fn fault_binary() -> PathBuf {
    option_env!("CARGO_BIN_EXE_mldeploy-fault-model")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("only for tests of the mldeploy package"))
}

/// A free loopback port (bound then released; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Poll `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running server. Dropping it kills its process group and reaps the master.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    output: Arc<Mutex<String>>,
    /// Output streams still open (the readers count down at end of file).
    streams_open: Arc<AtomicUsize>,
    exited: Option<ExitStatus>,
}

impl Server {
    /// Start `mldeploy ARGS --bind 127.0.0.1:PORT` and wait until `/ready` answers 200.
    pub fn start(args: &[&str]) -> Server {
        Self::start_with_env(args, &[])
    }

    /// Like [`Server::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::wait_ready(Self::spawn(args, env))
    }

    /// Start the fault-injection model binary and wait until it is ready.
    pub fn start_fault(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::wait_ready(Self::spawn_program(fault_binary(), args, env))
    }

    /// Wait until a server started with [`Server::spawn_program`] answers `/ready` with 200.
    pub fn wait_ready(server: Server) -> Server {
        let ok = wait_until(Duration::from_secs(60), || {
            http::get(server.addr, "/ready").map(|r| r.status == 200).unwrap_or(false)
        });
        assert!(ok, "server did not become ready; its output:\n{}", server.output());
        server
    }

    /// Start without waiting for readiness (for start-up failure tests).
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::spawn_program(binary(), args, env)
    }

    /// Start `program ARGS --bind 127.0.0.1:PORT` without waiting.
    pub fn spawn_program(program: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Server {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut cmd = Command::new(program);
        cmd.args(args).arg("--bind").arg(addr.to_string());
        // A clean environment for the settings under test.
        for (k, _) in std::env::vars() {
            if k.starts_with("MLDEPLOY_")
                || k.starts_with("GUNICORN_")
                || k == "KAFKA_BROKER"
                || k == "NOTIFY_SOCKET"
            {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // Own process group, so Drop can end the master and every worker at once.
        cmd.process_group(0);
        let mut child = cmd.spawn().expect("start mldeploy");
        let output = Arc::new(Mutex::new(String::new()));
        let streams_open = Arc::new(AtomicUsize::new(2));
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = Arc::clone(&output);
            let open = Arc::clone(&streams_open);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
        Server { child, addr, output, streams_open, exited: None }
    }

    /// PID of the master.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Everything the server printed so far (stdout and stderr).
    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Send a signal to the master.
    pub fn signal(&self, sig: i32) {
        kill(self.pid(), sig);
    }

    /// PIDs of the master's live child processes (its workers).
    pub fn worker_pids(&self) -> Vec<i32> {
        children_of(self.pid())
    }

    /// Wait (at most `limit`) until the master has `n` workers, each reported ready in the
    /// master's log; their PIDs. A worker killed before it is ready is a boot failure, which
    /// stops the server, so tests that kill workers wait for this.
    pub fn wait_ready_workers(&self, n: usize, limit: Duration) -> Vec<i32> {
        self.wait_workers_logged(n, limit, |line, pid| {
            line.contains(" worker ready, ") && line.contains(&format!("pid: {pid}, "))
        })
    }

    /// Wait (at most `limit`) until the master has `n` workers and, for each, a log line
    /// for which `names(line, pid)` holds; their PIDs.
    pub fn wait_workers_logged(
        &self,
        n: usize,
        limit: Duration,
        names: impl Fn(&str, i32) -> bool,
    ) -> Vec<i32> {
        let ok = wait_until(limit, || {
            let pids = self.worker_pids();
            let out = self.output();
            pids.len() == n && pids.iter().all(|&pid| out.lines().any(|l| names(l, pid)))
        });
        assert!(ok, "expected {n} workers, have {:?}\n{}", self.worker_pids(), self.output());
        self.worker_pids()
    }

    /// Wait for the master to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.exited.is_some() {
            return self.exited;
        }
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                // The readers may not have taken the last lines yet; they are done at end of
                // file (bounded: a worker that outlives the master may hold the pipes).
                wait_until(Duration::from_secs(5), || self.streams_open.load(Ordering::SeqCst) == 0);
                return self.exited;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// GET `path`.
    pub fn get(&self, path: &str) -> http::Response {
        http::get(self.addr, path)
            .unwrap_or_else(|e| panic!("GET {path}: {e}\nserver output:\n{}", self.output()))
    }

    /// POST a JSON body to `path`.
    pub fn post_json(&self, path: &str, body: &str) -> http::Response {
        http::post_json(self.addr, path, body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\nserver output:\n{}", self.output()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            // The group id equals the master's pid (process_group(0)).
            kill(-self.pid(), libc_sig::SIGKILL);
        } else {
            // The master is gone; workers may linger only if something is badly wrong.
            kill(-self.pid(), libc_sig::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Signal numbers used by the tests (Linux).
pub mod libc_sig {
    pub const SIGHUP: i32 = 1;
    pub const SIGINT: i32 = 2;
    pub const SIGQUIT: i32 = 3;
    pub const SIGKILL: i32 = 9;
    pub const SIGUSR1: i32 = 10;
    pub const SIGUSR2: i32 = 12;
    pub const SIGTERM: i32 = 15;
    pub const SIGSTOP: i32 = 19;
    pub const SIGTTIN: i32 = 21;
    pub const SIGTTOU: i32 = 22;
}

/// Send `sig` to `pid` (negative: a process group) with the `kill` command, so the tests need
/// no unsafe code and no extra crate.
pub fn kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg("--")
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Live child PIDs of `pid`, from /proc.
pub fn children_of(pid: i32) -> Vec<i32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .filter(|p| is_alive(*p))
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().map(|rest| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}
