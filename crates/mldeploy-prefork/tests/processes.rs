//! Real processes. This test binary has two roles: run plainly, it is the test driver; run with
//! `PREFORK_TEST_ROLE=master`, it is a master supervising a tiny application that answers each
//! TCP connection with its pid and generation. The driver starts masters (each in its own
//! process group, killed by a guard whatever happens), talks to them on 127.0.0.1, listens as
//! systemd on a notification socket, and sends them signals.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mldeploy_prefork::{exit_code, App, SupervisorConfig, Worker};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

const ROLE: &str = "PREFORK_TEST_ROLE";
const CONFIG: &str = "PREFORK_TEST_CONFIG";
const DIR: &str = "PREFORK_TEST_DIR";
const SINGLE: &str = "PREFORK_TEST_SINGLE";

/// How the driver starts a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Launch {
    /// A master that binds 127.0.0.1 on a free port.
    Bind,
    /// A master handed a listening socket as systemd would (through `sh`, which sets
    /// `LISTEN_PID` to its own pid and execs).
    Activation,
    /// `run_single`: one process, no fork.
    Single,
}

/// One check against real processes; the error explains what went wrong.
type Scenario = fn() -> Result<(), String>;

fn main() {
    if std::env::var_os(ROLE).is_some() {
        std::process::exit(master_role());
    }
    // Orphaned workers become this process's children, so the test can see them exit and reap
    // them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        println!("cannot become a subreaper: {e}");
        std::process::exit(1);
    }
    let scenarios: [(&str, Scenario); 8] = [
        ("lifecycle: fork, crash, reload, stop, systemd", lifecycle),
        ("workers leave when their master dies", master_death),
        ("boot failure stops the server", boot_failure),
        ("failed reload keeps the old generation", failed_reload),
        ("timeout, scaling and log reopening", timeout_scaling_and_logs),
        ("max requests replaces workers without failing a request", max_requests),
        ("single-process mode", single_process),
        ("upgrade: a failed new master keeps the old one, a good one takes over", upgrade),
    ];
    let filter: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with('-')).collect();
    let mut failed = 0;
    for (name, scenario) in scenarios {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        match scenario() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED\n{e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        println!("{failed} scenario(s) failed");
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------- master role

/// What one generation of the test application does, from a `key=value` file.
#[derive(Debug, Clone, Default)]
struct Settings {
    workers: usize,
    timeout_ms: u64,
    max_requests: u64,
    boot_fails: bool,
    pidfile: Option<PathBuf>,
}

fn parse_settings(text: &str) -> Result<Settings, String> {
    let mut settings = Settings { workers: 1, ..Settings::default() };
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let (key, value) = line.split_once('=').ok_or_else(|| format!("not key=value: {line}"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{key}: {e}"));
        match key {
            "workers" => settings.workers = number()? as usize,
            "timeout_ms" => settings.timeout_ms = number()?,
            "max_requests" => settings.max_requests = number()?,
            "boot" => settings.boot_fails = value == "fail",
            "pidfile" => settings.pidfile = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown key {key}")),
        }
    }
    Ok(settings)
}

struct TestApp {
    config: PathBuf,
    dir: PathBuf,
    /// Settings per generation, as `App::prepare` asks.
    generations: HashMap<u64, Settings>,
    next_generation: u64,
}

fn append(path: &Path, line: &str) {
    if let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(path) {
        let _ = file.write_all(line.as_bytes());
    }
}

impl App for TestApp {
    type Error = String;

    fn prepare(&mut self, _reload: bool) -> Result<SupervisorConfig, String> {
        let text = fs::read_to_string(&self.config).map_err(|e| e.to_string())?;
        let settings = parse_settings(&text)?;
        let config = SupervisorConfig {
            workers: settings.workers,
            threads: 1,
            timeout: (settings.timeout_ms > 0).then(|| Duration::from_millis(settings.timeout_ms)),
            graceful_timeout: Duration::from_secs(5),
            max_requests: settings.max_requests,
            max_requests_jitter: 0,
            pidfile: settings.pidfile.clone(),
            user: None,
            group: None,
        };
        self.generations.insert(self.next_generation, settings);
        self.next_generation += 1;
        Ok(config)
    }

    fn run_worker(&self, worker: Worker) -> i32 {
        let settings = self.generations.get(&worker.generation).cloned().unwrap_or_default();
        if settings.boot_fails {
            eprintln!("test app: worker {} fails to boot on purpose", std::process::id());
            return exit_code::BOOT_FAILURE;
        }
        serve(worker, self.dir.join("reopened.log"))
    }

    fn reopen_logs(&mut self) {
        append(&self.dir.join("reopened.log"), "master\n");
    }
}

/// The worker: one connection at a time; `pid` answers "PID GENERATION", `hang` answers
/// "hanging PID" and then never finishes its (busy) call.
fn serve(worker: Worker, reopened: PathBuf) -> i32 {
    let Worker { generation, listeners, handle, .. } = worker;
    let pid = std::process::id();
    handle.on_reopen_logs(move || append(&reopened, &format!("worker {pid}\n")));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (handle, stop) = (handle.clone(), stop.clone());
        std::thread::spawn(move || {
            handle.wait_stop();
            stop.store(true, Ordering::SeqCst);
        });
    }
    {
        let (handle, stop) = (handle.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                handle.heartbeat();
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    let listener = &listeners[0];
    if listener.set_nonblocking(true).is_err() {
        return exit_code::BOOT_FAILURE;
    }
    handle.ready();
    let limit = handle.max_requests();
    let mut served = 0;
    while !stop.load(Ordering::SeqCst) {
        let mut fds =
            [nix::poll::PollFd::new(std::os::fd::AsFd::as_fd(listener), nix::poll::PollFlags::POLLIN)];
        if !matches!(nix::poll::poll(&mut fds, 100u16), Ok(n) if n > 0) {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else { continue };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let mut stream = &stream;
        if line.trim() == "hang" {
            let _busy = handle.busy();
            let _ = writeln!(stream, "hanging {pid}");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let _ = writeln!(stream, "{pid} {generation}");
        served += 1;
        if limit > 0 && served >= limit {
            handle.retire();
        }
    }
    exit_code::OK
}

fn master_role() -> i32 {
    use slog::Drain;
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let log = slog::Logger::root(slog_term::FullFormat::new(decorator).build().fuse(), slog::o!());
    let (Some(config), Some(dir)) = (std::env::var_os(CONFIG), std::env::var_os(DIR)) else {
        eprintln!("test master: {CONFIG} and {DIR} are required");
        return 2;
    };
    let dir = PathBuf::from(dir);
    // Socket activation when the driver passed a socket; 127.0.0.1 with a free port otherwise.
    let any_port: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let listeners = match mldeploy_prefork::bind_listeners(&[any_port], 64) {
        Ok(listeners) => listeners,
        Err(e) => {
            eprintln!("test master: {e}");
            return 2;
        }
    };
    let port = listeners[0].local_addr().map(|addr| addr.port()).unwrap_or(0);
    let _ = fs::write(dir.join("port.tmp"), format!("{port}\n"));
    let _ = fs::rename(dir.join("port.tmp"), dir.join("port"));
    let app = TestApp { config: PathBuf::from(config), dir, generations: HashMap::new(), next_generation: 0 };
    if std::env::var_os(SINGLE).is_some() {
        mldeploy_prefork::run_single(app, listeners, log)
    } else {
        mldeploy_prefork::run(app, listeners, log)
    }
}

// ---------------------------------------------------------------- driver

/// Wait for `done`, looking every 20 ms, for at most `limit`.
fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if done() {
        Ok(())
    } else {
        Err(format!("gave up after {limit:?} waiting for {what}"))
    }
}

fn ensure(condition: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(what())
    }
}

const LIMIT: Duration = Duration::from_secs(15);

/// Live (not zombie) children of `parent`, from /proc.
fn children(parent: u32) -> BTreeSet<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return BTreeSet::new() };
    (entries.flatten())
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            // After the command name (in parentheses, may contain spaces): state, ppid, ...
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.len() > 1 && fields[0] != "Z" && fields[1].parse::<u32>().ok() == Some(parent)
        })
        .collect()
}

/// Reap every exited child of this process (workers of dead masters), waiting a bounded time
/// for those just killed.
fn reap_orphans() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A started server (a master, or the one process of single-process mode); killed with its
/// whole process group on drop.
struct Master {
    child: Child,
    reaped: Option<ExitStatus>,
    dir: PathBuf,
    notify: UnixDatagram,
    /// Every notification received, in order.
    notified: Vec<String>,
    /// The port of the socket handed over by socket activation.
    activated: Option<u16>,
}

impl Drop for Master {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            // The master and its workers share the master's process group.
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        } else {
            // Workers a dead master left behind were reparented to this process.
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        }
        reap_orphans();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Master {
    /// Start a server with these settings.
    fn start(settings: &str, launch: Launch) -> Result<Master, String> {
        let dir = std::env::temp_dir().join(format!(
            "prefork-processes-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        fs::write(dir.join("config"), settings).map_err(|e| e.to_string())?;
        let notify = UnixDatagram::bind(dir.join("notify")).map_err(|e| e.to_string())?;
        let log = fs::File::create(dir.join("master.log")).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let inherited = if launch == Launch::Activation {
            let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()))
                .map_err(|e| e.to_string())?;
            Some(listener)
        } else {
            None
        };
        let mut command = match &inherited {
            Some(listener) => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" 3<&"$1""#)
                    .arg(&exe)
                    .arg(listener.as_raw_fd().to_string());
                command
            }
            None => Command::new(&exe),
        };
        command
            .env(ROLE, "master")
            .env(CONFIG, dir.join("config"))
            .env(DIR, &dir)
            .env("NOTIFY_SOCKET", dir.join("notify"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0);
        if launch == Launch::Single {
            command.env(SINGLE, "1");
        }
        let child = command.spawn().map_err(|e| e.to_string())?;
        let activated = match inherited {
            Some(listener) => Some(listener.local_addr().map_err(|e| e.to_string())?.port()),
            None => None,
        };
        Ok(Master { child, reaped: None, dir, notify, notified: Vec::new(), activated })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn port(&self) -> Result<u16, String> {
        let text = fs::read_to_string(self.dir.join("port")).map_err(|e| format!("port file: {e}"))?;
        text.trim().parse().map_err(|e| format!("port file: {e}"))
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.join("master.log")).unwrap_or_default()
    }

    /// An error that carries the master's log.
    fn fail(&self, what: impl std::fmt::Display) -> String {
        format!("{what}\n--- master log ---\n{}--- end of log ---", self.log())
    }

    fn workers(&self) -> BTreeSet<u32> {
        children(self.pid())
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        kill(Pid::from_raw(self.pid() as i32), signal).map_err(|e| e.to_string())
    }

    fn set_settings(&self, settings: &str) -> Result<(), String> {
        fs::write(self.dir.join("config.tmp"), settings).map_err(|e| e.to_string())?;
        fs::rename(self.dir.join("config.tmp"), self.dir.join("config")).map_err(|e| e.to_string())
    }

    /// Receive notifications until one has the line `state` (e.g. `READY=1`); that message.
    fn expect_notified(&mut self, state: &str) -> Result<String, String> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        while start.elapsed() < LIMIT {
            let _ = self.notify.set_read_timeout(Some(Duration::from_millis(200)));
            if let Ok(n) = self.notify.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.notified.push(message.clone());
                if message.lines().any(|line| line == state) {
                    return Ok(message);
                }
            }
            if self.has_exited()? {
                // What it sent before exiting is still queued.
                let _ = self.notify.set_nonblocking(true);
                while let Ok(n) = self.notify.recv(&mut buf) {
                    let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.notified.push(message.clone());
                    if message.lines().any(|line| line == state) {
                        return Ok(message);
                    }
                }
                return Err(self.fail(format!("the master exited before notifying {state}")));
            }
        }
        Err(self.fail(format!("no {state} notification")))
    }

    /// Like `expect_notified`, whether or not the master started has exited: for what a new
    /// master (upgrade) says once the first one is gone.
    fn expect_notified_by_any(&mut self, state: &str) -> Result<String, String> {
        let start = Instant::now();
        let mut buf = [0u8; 4096];
        let _ = self.notify.set_read_timeout(Some(Duration::from_millis(200)));
        while start.elapsed() < LIMIT {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.notified.push(message.clone());
                if message.lines().any(|line| line == state) {
                    return Ok(message);
                }
            }
        }
        Err(self.fail(format!("no {state} notification")))
    }

    /// The systemd state words received so far, in order.
    fn states_notified(&self) -> Vec<String> {
        let words = ["READY=1", "RELOADING=1", "STOPPING=1"];
        (self.notified.iter())
            .filter_map(|message| words.into_iter().find(|word| message.lines().any(|line| line == *word)))
            .map(String::from)
            .collect()
    }

    fn has_exited(&mut self) -> Result<bool, String> {
        if self.reaped.is_none() {
            self.reaped = self.child.try_wait().map_err(|e| e.to_string())?;
        }
        Ok(self.reaped.is_some())
    }

    fn wait_exit(&mut self) -> Result<ExitStatus, String> {
        let waited = wait_for("the master to exit", LIMIT, || self.has_exited().unwrap_or(false));
        waited.map_err(|e| self.fail(e))?;
        self.reaped.ok_or_else(|| self.fail("the master was not reaped"))
    }

    /// No process is left in the master's process group.
    fn ensure_no_process_left(&self) -> Result<(), String> {
        let group = Pid::from_raw(self.pid() as i32);
        ensure(matches!(killpg(group, None), Err(nix::errno::Errno::ESRCH)), || {
            self.fail("processes of the master's group are still running")
        })
    }

    /// Ask whoever accepts for its pid and generation.
    fn ask(&self) -> Result<(u32, u64), String> {
        let port = self.port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream =
            TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| format!("connect: {e}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        (&stream).write_all(b"pid\n").map_err(|e| format!("write: {e}"))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line).map_err(|e| format!("read: {e}"))?;
        let (pid, generation) = line.trim().split_once(' ').ok_or_else(|| format!("odd answer {line:?}"))?;
        Ok((
            pid.parse().map_err(|_| format!("odd pid {line:?}"))?,
            generation.parse().map_err(|_| "odd generation")?,
        ))
    }
}

fn lifecycle() -> Result<(), String> {
    let pidfile = std::env::temp_dir().join(format!("prefork-processes-{}.pid", std::process::id()));
    let settings = format!("workers=3\npidfile={}\n", pidfile.display());
    let mut master = Master::start(&settings, Launch::Activation)?;
    let ready = master.expect_notified("READY=1")?;
    ensure(ready.contains(&format!("MAINPID={}", master.pid())), || {
        master.fail(format!("READY without MAINPID: {ready}"))
    })?;
    let written = fs::read_to_string(&pidfile).unwrap_or_default();
    ensure(written.trim() == master.pid().to_string(), || master.fail(format!("pidfile holds {written:?}")))?;

    // The master serves on the socket it was handed, not on one of its own.
    let port = master.port()?;
    ensure(master.activated == Some(port), || {
        master.fail(format!("serving on {port}, handed {:?}", master.activated))
    })?;

    // N workers, and they answer.
    let first = master.workers();
    ensure(first.len() == 3, || master.fail(format!("3 workers expected, found {first:?}")))?;
    let (answered, generation) = master.ask()?;
    ensure(first.contains(&answered) && generation == 0, || master.fail(format!("answer from {answered}")))?;

    // kill -9 of a worker: replaced, and every request after that succeeds.
    let victim = *first.iter().next().expect("a worker");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).map_err(|e| e.to_string())?;
    wait_for("a replacement for the killed worker", LIMIT, || {
        let now = master.workers();
        now.len() == 3 && !now.contains(&victim)
    })
    .map_err(|e| master.fail(e))?;
    let after_crash = master.workers();
    for _ in 0..20 {
        let (pid, _) = master.ask().map_err(|e| master.fail(e))?;
        ensure(after_crash.contains(&pid), || master.fail(format!("answer from unknown pid {pid}")))?;
    }
    ensure(master.log().contains("worker exited"), || master.fail("no 'worker exited' line"))?;

    // HUP: a new generation replaces every worker.
    master.signal(Signal::SIGHUP)?;
    master.expect_notified("RELOADING=1")?;
    master.expect_notified("READY=1")?;
    wait_for("the old generation to be gone", LIMIT, || {
        let now = master.workers();
        now.len() == 3 && now.is_disjoint(&after_crash)
    })
    .map_err(|e| master.fail(e))?;
    let (_, generation) = master.ask().map_err(|e| master.fail(e))?;
    ensure(generation == 1, || master.fail(format!("generation {generation} after a reload")))?;

    // TERM: exit 0, nothing left, pidfile removed.
    master.signal(Signal::SIGTERM)?;
    master.expect_notified("STOPPING=1")?;
    let status = master.wait_exit()?;
    ensure(status.code() == Some(0), || master.fail(format!("exit status {status}")))?;
    master.ensure_no_process_left()?;
    ensure(!pidfile.exists(), || master.fail("pidfile left behind"))?;
    let states = master.states_notified();
    ensure(states == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], || {
        master.fail(format!("systemd states in order: {states:?}"))
    })
}

fn master_death() -> Result<(), String> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut master = Master::start("workers=2\n", Launch::Bind)?;
    master.expect_notified("READY=1")?;
    let workers = master.workers();
    ensure(workers.len() == 2, || master.fail(format!("workers {workers:?}")))?;
    master.signal(Signal::SIGKILL)?;
    master.wait_exit()?;
    // The orphans are this process's children now; each must leave on its own, gracefully.
    for &pid in &workers {
        let mut status = None;
        wait_for("an orphaned worker to exit", LIMIT, || {
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(other) => status = Some(Ok(other)),
                Err(e) => status = Some(Err(e)),
            }
            status.is_some()
        })
        .map_err(|e| master.fail(e))?;
        let status = status.expect("set when done");
        ensure(matches!(status, Ok(WaitStatus::Exited(_, 0))), || {
            master.fail(format!("worker {pid} ended with {status:?}, expected a clean exit"))
        })?;
    }
    master.ensure_no_process_left()
}

fn boot_failure() -> Result<(), String> {
    let mut master = Master::start("workers=2\nboot=fail\n", Launch::Bind)?;
    let status = master.wait_exit()?;
    ensure(status.code() == Some(exit_code::BOOT_FAILURE), || master.fail(format!("exit status {status}")))?;
    master.ensure_no_process_left()?;
    ensure(master.log().contains("boot failure"), || master.fail("no 'boot failure' line"))?;
    // Whatever was sent, READY=1 was not.
    let mut buf = [0u8; 4096];
    let _ = master.notify.set_nonblocking(true);
    while let Ok(n) = master.notify.recv(&mut buf) {
        master.notified.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let states = master.states_notified();
    ensure(!states.contains(&"READY=1".to_owned()), || master.fail(format!("states {states:?}")))
}

fn failed_reload() -> Result<(), String> {
    let mut master = Master::start("workers=2\n", Launch::Bind)?;
    master.expect_notified("READY=1")?;
    let old = master.workers();
    master.set_settings("workers=2\nboot=fail\n")?;
    master.signal(Signal::SIGHUP)?;
    master.expect_notified("RELOADING=1")?;
    let finished = master.expect_notified("READY=1")?;
    ensure(finished.contains("reload failed"), || master.fail(format!("status after reload: {finished}")))?;
    wait_for("only the old generation", LIMIT, || master.workers() == old).map_err(|e| master.fail(e))?;
    for _ in 0..10 {
        let (pid, generation) = master.ask().map_err(|e| master.fail(e))?;
        ensure(old.contains(&pid) && generation == 0, || {
            master.fail(format!("answer from {pid} gen {generation}"))
        })?;
    }
    // An old worker that crashes now is respawned with the old generation's settings.
    let victim = *old.iter().next().expect("a worker");
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).map_err(|e| e.to_string())?;
    wait_for("a replacement", LIMIT, || {
        let now = master.workers();
        now.len() == 2 && !now.contains(&victim)
    })
    .map_err(|e| master.fail(e))?;
    let replacement =
        *master.workers().difference(&old).next().ok_or_else(|| master.fail("no replacement"))?;
    wait_for("the replacement to serve", LIMIT, || master.ask().is_ok_and(|(pid, _)| pid == replacement))
        .map_err(|e| master.fail(e))?;
    master.signal(Signal::SIGTERM)?;
    let status = master.wait_exit()?;
    ensure(status.code() == Some(0), || master.fail(format!("exit status {status}")))?;
    master.ensure_no_process_left()
}

fn timeout_scaling_and_logs() -> Result<(), String> {
    let mut master = Master::start("workers=2\ntimeout_ms=1000\n", Launch::Bind)?;
    master.expect_notified("READY=1")?;

    // TTIN / TTOU.
    master.signal(Signal::SIGTTIN)?;
    wait_for("3 workers", LIMIT, || master.workers().len() == 3).map_err(|e| master.fail(e))?;
    master.signal(Signal::SIGTTOU)?;
    wait_for("2 workers", LIMIT, || master.workers().len() == 2).map_err(|e| master.fail(e))?;

    // USR1: the master and each worker reopen their logs.
    let workers = master.workers();
    master.signal(Signal::SIGUSR1)?;
    let reopened = master.dir.join("reopened.log");
    wait_for("logs reopened everywhere", LIMIT, || {
        let text = fs::read_to_string(&reopened).unwrap_or_default();
        text.lines().any(|line| line == "master")
            && workers.iter().all(|pid| text.lines().any(|line| line == format!("worker {pid}")))
    })
    .map_err(|e| master.fail(e))?;

    // A model call that hangs: that worker is killed after the timeout and replaced; the other
    // one keeps answering meanwhile.
    let port = master.port()?;
    let hung = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    hung.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    (&hung).write_all(b"hang\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&hung).read_line(&mut line).map_err(|e| master.fail(format!("hang answer: {e}")))?;
    let hung_pid: u32 = (line.trim().strip_prefix("hanging "))
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| master.fail(format!("odd answer {line:?}")))?;
    let (pid, _) = master.ask().map_err(|e| master.fail(e))?;
    ensure(pid != hung_pid, || master.fail("the hung worker answered"))?;
    wait_for("the hung worker to be replaced", LIMIT, || {
        let now = master.workers();
        now.len() == 2 && !now.contains(&hung_pid)
    })
    .map_err(|e| master.fail(e))?;
    ensure(master.log().contains("worker timeout"), || master.fail("no 'worker timeout' line"))?;

    master.signal(Signal::SIGTERM)?;
    let status = master.wait_exit()?;
    ensure(status.code() == Some(0), || master.fail(format!("exit status {status}")))?;
    master.ensure_no_process_left()
}

fn max_requests() -> Result<(), String> {
    let mut master = Master::start("workers=2\nmax_requests=3\n", Launch::Bind)?;
    master.expect_notified("READY=1")?;
    let first = master.workers();
    // Retiring workers serve until their replacements do, so keep asking until every worker
    // of the first set is gone; not one request may fail meanwhile.
    let mut failure = None;
    let mut requests = 0;
    wait_for("the first workers to be replaced", LIMIT, || {
        requests += 1;
        if let Err(e) = master.ask() {
            failure = Some(format!("request {requests} failed: {e}"));
            return true;
        }
        master.workers().is_disjoint(&first)
    })
    .map_err(|e| master.fail(e))?;
    if let Some(failure) = failure {
        return Err(master.fail(failure));
    }
    for request in 0..30 {
        master.ask().map_err(|e| master.fail(format!("request {request} after the replacement: {e}")))?;
    }
    ensure(master.log().contains("reason: max_requests"), || master.fail("no retirement logged"))?;
    master.signal(Signal::SIGTERM)?;
    let status = master.wait_exit()?;
    ensure(status.code() == Some(0), || master.fail(format!("exit status {status}")))?;
    master.ensure_no_process_left()
}

fn single_process() -> Result<(), String> {
    let mut master = Master::start("workers=4\n", Launch::Single)?;
    let ready = master.expect_notified("READY=1")?;
    ensure(ready.contains(&format!("MAINPID={}", master.pid())), || master.fail(format!("READY: {ready}")))?;
    for _ in 0..5 {
        let (pid, generation) = master.ask().map_err(|e| master.fail(e))?;
        ensure(pid == master.pid() && generation == 0, || master.fail(format!("answer from {pid}")))?;
    }
    ensure(master.workers().is_empty(), || master.fail("a process was forked"))?;
    master.signal(Signal::SIGINT)?;
    master.expect_notified("STOPPING=1")?;
    let status = master.wait_exit()?;
    ensure(status.code() == Some(0), || master.fail(format!("exit status {status}")))?;
    master.ensure_no_process_left()
}

/// Wait for `pid`, a child of this process (an orphan it inherited as a subreaper), to exit.
fn wait_child_exit(pid: u32) -> Result<nix::sys::wait::WaitStatus, String> {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let mut status = None;
    wait_for(&format!("process {pid} to exit"), LIMIT, || {
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            other => status = Some(other),
        }
        status.is_some()
    })?;
    status.expect("set when done").map_err(|e| format!("waiting for {pid}: {e}"))
}

fn upgrade() -> Result<(), String> {
    let pidfile = std::env::temp_dir().join(format!("prefork-processes-upgrade-{}.pid", std::process::id()));
    let aside = PathBuf::from(format!("{}.oldbin", pidfile.display()));
    let settings = format!("workers=2\npidfile={}\n", pidfile.display());
    let mut master = Master::start(&settings, Launch::Bind)?;
    master.expect_notified("READY=1")?;
    let old = master.workers();
    let names = |pid: u32| fs::read_to_string(&pidfile).is_ok_and(|text| text.trim() == pid.to_string());

    // A new master whose workers cannot boot: the old master serves on and keeps the pidfile.
    master.set_settings(&format!("{settings}boot=fail\n"))?;
    master.signal(Signal::SIGUSR2)?;
    master.expect_notified("RELOADING=1")?;
    let failed = master.expect_notified("READY=1")?;
    ensure(failed.contains("upgrade failed"), || master.fail(format!("status after the upgrade: {failed}")))?;
    ensure(names(master.pid()) && !aside.exists(), || {
        master.fail("the pidfile does not name the old master")
    })?;
    ensure(master.workers() == old, || master.fail(format!("workers {:?}, were {old:?}", master.workers())))?;
    for _ in 0..10 {
        let (pid, _) = master.ask().map_err(|e| master.fail(e))?;
        ensure(old.contains(&pid), || master.fail(format!("answer from {pid}")))?;
    }
    let states = master.states_notified();
    ensure(states == ["READY=1", "RELOADING=1", "READY=1"], || {
        master.fail(format!("the failed new master spoke to systemd: {states:?}"))
    })?;

    // A new master that boots takes over: systemd hears its pid, the old master leaves.
    master.set_settings(&settings)?;
    master.signal(Signal::SIGUSR2)?;
    master.expect_notified("RELOADING=1")?;
    let ready = master.expect_notified("READY=1")?;
    let new: u32 = (ready.lines().find_map(|line| line.strip_prefix("MAINPID=")))
        .and_then(|pid| pid.parse().ok())
        .ok_or_else(|| master.fail(format!("READY=1 without MAINPID: {ready}")))?;
    ensure(new != master.pid(), || master.fail("MAINPID still names the old master"))?;
    let status = master.wait_exit()?;
    ensure(status.code() == Some(0), || master.fail(format!("old master's exit status {status}")))?;
    // The old master waited for its workers: none is left anywhere.
    let alive = |pid: &u32| {
        fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    };
    ensure(!old.iter().any(alive), || master.fail(format!("old workers left: {old:?}")))?;
    wait_for("the pidfile to name the new master", LIMIT, || names(new) && !aside.exists())
        .map_err(|e| master.fail(e))?;
    let serving = children(new);
    ensure(serving.len() == 2, || master.fail(format!("new master's workers {serving:?}")))?;
    for _ in 0..10 {
        let (pid, generation) = master.ask().map_err(|e| master.fail(e))?;
        ensure(serving.contains(&pid) && generation == 0, || master.fail(format!("answer from {pid}")))?;
    }

    // The new master (this process's child now: the old one was its parent) stops as usual.
    kill(Pid::from_raw(new as i32), Signal::SIGTERM).map_err(|e| e.to_string())?;
    master.expect_notified_by_any("STOPPING=1")?;
    let status = wait_child_exit(new).map_err(|e| master.fail(e))?;
    ensure(matches!(status, nix::sys::wait::WaitStatus::Exited(_, 0)), || {
        master.fail(format!("new master ended with {status:?}"))
    })?;
    ensure(!pidfile.exists(), || master.fail("pidfile left behind"))?;
    master.ensure_no_process_left()
}
