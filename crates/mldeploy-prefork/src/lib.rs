//! A gunicorn-style pre-fork supervisor.
//!
//! The master binds the listening sockets once ([`bind_listeners`]), then [`run`] forks
//! `workers` worker processes that all accept on those sockets, and supervises them until it is
//! stopped: crashed workers are reaped and replaced (with a growing delay if they keep crashing),
//! hung workers are killed after `timeout`, workers past `max_requests` are replaced before they
//! stop, and signals drive the whole server:
//!
//! | signal | master |
//! |---|---|
//! | TERM, INT | graceful stop: workers finish in-flight requests; what is left after `graceful_timeout` is killed; exit 0 |
//! | QUIT | fast stop |
//! | HUP | reload: [`App::prepare`] again, fork a new generation, and once every new worker is ready stop the old one gracefully; if the new generation fails, the old one keeps serving |
//! | TTIN, TTOU | one worker more, one less (never fewer than one) |
//! | USR1 | [`App::reopen_logs`], and USR1 to every worker |
//! | USR2 | binary upgrade: start a new master from the program file this one was started as (replaced on disk by a package upgrade), with the same arguments and environment, handing it the listening sockets; once every worker of the new master is ready, stop this master's workers gracefully and exit 0. If the new master exits or is not ready in time, it is killed and this one serves on. A USR2 during a reload waits for it; a HUP during an upgrade waits for it too, and is dropped if the new master serves (it read the settings as it started) |
//!
//! The workers share a board of how many connections each one serves ([`Seat`], taken through
//! [`WorkerHandle::take_seat`]), so that one that serves more can leave a waiting connection to
//! one that serves fewer; [`watch_listener`] gives a worker the readiness of a listening socket
//! without accepting, which that decision needs.
//!
//! A worker that ends before it reported ready failed to boot (it should exit with
//! [`exit_code::BOOT_FAILURE`], e.g. when the model does not load). In the first generation that
//! stops the server, and the master exits with [`exit_code::BOOT_FAILURE`]; in the new generation
//! of a reload it abandons the reload (the old generation keeps serving); a respawned worker of a
//! generation that already served is respawned again, with the crash backoff.
//!
//! With `NOTIFY_SOCKET` set, systemd hears `READY=1` once every first-generation worker is ready,
//! `RELOADING=1` ... `READY=1` around a reload, `STOPPING=1` and `STATUS=` lines. Sending never
//! blocks the master (a message to a full queue is dropped). Around an upgrade it hears
//! `RELOADING=1` from the old master, then `READY=1` with `MAINPID=<new master>` from the new
//! master (its first word: a new master says nothing before, so one that fails cannot say
//! `STOPPING=1` for the service), then the same from the old master, which then falls silent
//! and leaves. systemd takes the new master's own message only with `NotifyAccess=all` (it is
//! not the main process yet); the old master's repeats it for units with `NotifyAccess=main`. A
//! failed upgrade ends with `READY=1` from the old master.
//!
//! The pidfile names the master that serves: during an upgrade the old master's is renamed
//! `<pidfile>.oldbin` and the new master writes `<pidfile>`; a failed upgrade renames it back.
//!
//! Contract with the application: in the master ([`App::prepare`], [`App::on_event`],
//! [`App::reopen_logs`] and the logger's drain) nothing may start a thread, because the master
//! forks, nor a process, because the master reaps every child it has; a worker starts whatever
//! it needs in [`App::run_worker`]. Worker processes switch to `user`/`group` right after the
//! fork; the master keeps its identity, so a reload can re-read what it read at start. All
//! `unsafe` code of the project lives in this crate.

mod balance;
mod identity;
mod listen;
mod master;
pub mod notify;
mod os;
mod pidfile;
mod real_os;
mod sys;
mod upgrade;
mod worker;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use slog::{error, info, warn};

pub use balance::Seat;
pub use identity::Identity;
pub use listen::watch as watch_listener;
pub use notify::Notifier;
pub use pidfile::Pidfile;
pub use worker::{BusyGuard, WorkerHandle};

/// Settings of one generation of workers (re-read on every HUP).
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// Number of worker processes.
    pub workers: usize,
    /// Serving threads per worker (how many model calls a worker runs at once).
    pub threads: usize,
    /// A worker whose model call or heartbeat is older than this is killed; `None` = off.
    /// Independently, a worker must report ready within 300 s (or `timeout`, if longer) of its
    /// fork, or it is killed and counts as failing to boot.
    pub timeout: Option<Duration>,
    /// How long a graceful stop may take before what is left is killed.
    pub graceful_timeout: Duration,
    /// Requests after which a worker retires (0 = never).
    pub max_requests: u64,
    /// A random 0..=jitter added to `max_requests` per worker.
    pub max_requests_jitter: u64,
    /// Written at start, removed at exit (a reload does not move it; an upgrade renames it
    /// `<pidfile>.oldbin` while the new master starts, and back if it fails).
    pub pidfile: Option<PathBuf>,
    /// Drop privileges to this user after binding (in each worker; see the crate docs).
    pub user: Option<String>,
    /// Drop privileges to this group after binding (in each worker; default: the user's group).
    pub group: Option<String>,
}

impl SupervisorConfig {
    /// Refuse settings the supervisor cannot run with.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.workers == 0 {
            return Err(InvalidConfig::NoWorkers);
        }
        if self.threads == 0 {
            return Err(InvalidConfig::NoThreads);
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(InvalidConfig::ZeroTimeout);
        }
        Ok(())
    }

    /// The request limit of one worker: `max_requests` plus a share of the jitter picked from
    /// `random`, or 0 (no limit) when `max_requests` is 0.
    pub fn worker_max_requests(&self, random: u64) -> u64 {
        if self.max_requests == 0 {
            return 0;
        }
        let jitter = match self.max_requests_jitter.checked_add(1) {
            Some(span) => random % span,
            None => random,
        };
        self.max_requests.saturating_add(jitter)
    }
}

/// Why the supervisor cannot run with a [`SupervisorConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidConfig {
    /// `workers` is 0.
    NoWorkers,
    /// `threads` is 0.
    NoThreads,
    /// `timeout` is `Some(0)` (`None` turns the watch off).
    ZeroTimeout,
}

impl fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InvalidConfig::NoWorkers => "workers must be at least 1",
            InvalidConfig::NoThreads => "threads must be at least 1",
            InvalidConfig::ZeroTimeout => "timeout must be positive (None turns it off)",
        })
    }
}

impl std::error::Error for InvalidConfig {}

/// Why a worker ended, as the master saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// It exited or was killed without being asked to.
    Crash,
    /// Its heartbeat or a model call was older than `timeout` (or it took too long to boot).
    Timeout,
    /// It served its `max_requests` and was replaced.
    MaxRequests,
    /// A reload replaced its generation, or abandoned the new generation it belonged to.
    Reload,
    /// TTOU took it away.
    Scale,
    /// The server stopped.
    Shutdown,
    /// It exited before it was ready: it could not boot.
    BootFailure,
}

impl RestartReason {
    /// Every reason.
    pub const ALL: [RestartReason; 7] = [
        RestartReason::Crash,
        RestartReason::Timeout,
        RestartReason::MaxRequests,
        RestartReason::Reload,
        RestartReason::Scale,
        RestartReason::Shutdown,
        RestartReason::BootFailure,
    ];

    /// Whether a worker ending for this reason is restarted or replaced (all but the server's
    /// own stop).
    pub fn is_restart(self) -> bool {
        self != RestartReason::Shutdown
    }

    /// A short name for logs and metric labels (`crash`, `max_requests`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RestartReason::Crash => "crash",
            RestartReason::Timeout => "timeout",
            RestartReason::MaxRequests => "max_requests",
            RestartReason::Reload => "reload",
            RestartReason::Scale => "scale",
            RestartReason::Shutdown => "shutdown",
            RestartReason::BootFailure => "boot_failure",
        }
    }
}

impl fmt::Display for RestartReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the master reports to the application (logging is done by the supervisor itself).
#[derive(Debug, Clone)]
pub enum SupervisorEvent {
    /// A worker reported ready.
    WorkerReady { pid: i32, generation: u64 },
    /// A worker was reaped.
    WorkerExited { pid: i32, reason: RestartReason },
    /// Worker processes alive now (after a spawn or an exit).
    WorkersAlive(usize),
    /// A reload ended: `ok` if the new generation serves, false if the old one still does.
    /// `serving` is the generation that serves now: no worker of another generation will be
    /// started again, so what the application kept for them can go.
    ReloadFinished { ok: bool, serving: u64 },
}

/// How a worker is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Finish in-flight requests, then exit.
    Graceful,
    /// Exit now.
    Fast,
}

/// Worker exit codes are a protocol with the master.
pub mod exit_code {
    /// Normal exit after a stop request.
    pub const OK: i32 = 0;
    /// The master could not start (bad configuration, pidfile, signal setup).
    pub const FAILURE: i32 = 1;
    /// The worker could not boot (model did not load): the master halts instead of respawning.
    /// The master also exits with it when a first-generation worker fails to boot.
    pub const BOOT_FAILURE: i32 = 3;
}

/// Everything a forked worker gets.
#[derive(Debug)]
pub struct Worker {
    /// Position of this worker (0-based, reused by its replacement).
    pub index: usize,
    /// Which generation (0 at start, +1 per reload).
    pub generation: u64,
    /// The listening sockets, shared with every worker.
    pub listeners: Vec<TcpListener>,
    /// The link to the master.
    pub handle: WorkerHandle,
}

/// The application the master supervises.
pub trait App {
    /// Why [`App::prepare`] refused a configuration (logged by the master).
    type Error: fmt::Display;

    /// In the master, before a generation is forked: at start (`reload == false`) and on every
    /// HUP. Re-read configuration here. On a reload, an error keeps the old workers serving.
    ///
    /// Each `Ok` creates the next generation number: 0 for the first call, then one more per
    /// `Ok`. A reload can still fail after an `Ok` (the settings are refused, or a new worker
    /// fails to boot); the master then keeps forking the previous generation to replace its
    /// crashed or retired workers. So keep what each generation was prepared with, and serve in
    /// [`App::run_worker`] with the settings of [`Worker::generation`], not the latest ones.
    fn prepare(&mut self, reload: bool) -> Result<SupervisorConfig, Self::Error>;
    /// In the forked child: serve until stopped, then return the exit code (see [`exit_code`]).
    /// Call [`WorkerHandle::ready`] once serving, [`WorkerHandle::heartbeat`] every second, and
    /// watch [`WorkerHandle::wait_stop`]. A panic before `ready` counts as a boot failure.
    fn run_worker(&self, worker: Worker) -> i32;
    /// In the master: a lifecycle event, for metrics.
    fn on_event(&mut self, _event: &SupervisorEvent) {}
    /// In the master, on USR1: reopen log files.
    fn reopen_logs(&mut self) {}
}

/// The error of this crate's functions that are not the master loop (identity, pidfile).
#[derive(Debug)]
pub enum Error {
    /// `user` names no account.
    UnknownUser(String),
    /// `group` names no group.
    UnknownGroup(String),
    /// Switching to the configured user or group failed (`what` is the call that failed).
    Privileges { what: &'static str, source: io::Error },
    /// The pidfile names a running process: another master is probably running.
    AlreadyRunning { path: PathBuf, pid: i32 },
    /// A file operation failed.
    Io { what: String, source: io::Error },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnknownUser(user) => write!(f, "unknown user {user:?}"),
            Error::UnknownGroup(group) => write!(f, "unknown group {group:?}"),
            Error::Privileges { what, source } => write!(f, "cannot switch user or group ({what}): {source}"),
            Error::AlreadyRunning { path, pid } => {
                write!(f, "pidfile {} names process {pid}, which is running", path.display())
            }
            Error::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Privileges { source, .. } | Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Bind the listening sockets, or take them from systemd socket activation.
///
/// With `LISTEN_PID` naming this process and `LISTEN_FDS` > 0, the inherited sockets are used and
/// `addrs` is ignored. Otherwise each address is bound (`SO_REUSEADDR`, IPv6 sockets IPv6-only)
/// and listens with `backlog` (clamped to 1..=SOMAXCONN).
pub fn bind_listeners(addrs: &[SocketAddr], backlog: i32) -> io::Result<Vec<TcpListener>> {
    if let Some(inherited) = listen::from_systemd()? {
        return Ok(inherited);
    }
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "no address to listen on"));
    }
    addrs.iter().map(|&addr| listen::bind(addr, backlog)).collect()
}

/// Anonymous shared memory of `len` zeroed slots, mapped in the master before forking so every
/// worker sees the same slots; it lives for the rest of the process.
pub fn shared_slots(len: usize) -> io::Result<&'static [AtomicU64]> {
    Ok(sys::SharedMem::shared(len)?.leak())
}

/// The allocator of every mldeploy process: jemalloc, which also serves `malloc` and `free` of
/// the C code linked in (librdkafka), so memory freed on a thread other than the one that
/// allocated it (every Kafka message) does not contend on one arena's lock as with glibc. Set
/// it with `#[global_allocator]` in a binary; the malloc override holds either way.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Returns the memory the allocator holds free to the system. After a request that needed far
/// more memory than usual, a worker calls this so its resident size falls back at once rather
/// than over jemalloc's decay time. It takes the allocator's locks while it runs: not for every
/// request.
pub fn release_free_memory() {
    sys::trim_heap();
}

/// What `run` and `run_single` set up before serving: the validated first configuration, who to
/// run as, the pidfile and the systemd notifier.
struct Startup {
    config: SupervisorConfig,
    identity: Identity,
    pidfile: Option<Pidfile>,
    notifier: Option<Notifier>,
}

fn start_up<A: App>(app: &mut A, log: &slog::Logger) -> Result<Startup, ()> {
    let config = app.prepare(false).map_err(|e| error!(log, "configuration refused"; "error" => %e))?;
    config.validate().map_err(|e| error!(log, "configuration refused"; "error" => %e))?;
    let identity = Identity::resolve(config.user.as_deref(), config.group.as_deref()).map_err(|e| {
        error!(log, "configuration refused"; "error" => %e);
    })?;
    let pidfile = config.pidfile.as_deref().map(Pidfile::create).transpose().map_err(|e| {
        error!(log, "cannot write pidfile"; "error" => %e);
    })?;
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        warn!(log, "systemd notification off"; "error" => %e);
        None
    });
    Ok(Startup { config, identity, pidfile, notifier })
}

/// Run the master loop until stopped; returns the process exit code.
///
/// Calls [`App::prepare`]`(false)`, writes the pidfile, forks the first generation and
/// supervises until a stop signal (exit 0), an upgrade that handed over to a new master (exit
/// 0) or a first-generation boot failure ([`exit_code::BOOT_FAILURE`]); [`exit_code::FAILURE`]
/// if it cannot start.
pub fn run<A: App>(mut app: A, listeners: Vec<TcpListener>, log: slog::Logger) -> i32 {
    // Before `start_up` takes the notification socket out of the environment.
    let relaunch = upgrade::Relaunch::capture();
    let old_master = match upgrade::take_ready_pipe() {
        Ok(pipe) => pipe,
        Err(e) => {
            error!(log, "cannot take the pipe to the master that started this one"; "error" => %e);
            return exit_code::FAILURE;
        }
    };
    let Ok(startup) = start_up(&mut app, &log) else {
        return exit_code::FAILURE;
    };
    if relaunch.is_none() {
        warn!(log, "binary upgrade off"; "why" => "the program this master runs cannot be found");
    }
    let around =
        real_os::Surroundings { notifier: startup.notifier, pidfile: startup.pidfile, relaunch, old_master };
    let os = match real_os::RealOs::new(around) {
        Ok(os) => os,
        Err(e) => {
            error!(log, "cannot install signal handlers"; "error" => %e);
            return exit_code::FAILURE;
        }
    };
    info!(log, "master started"; "pid" => std::process::id(), "workers" => startup.config.workers,
        "threads" => startup.config.threads);
    let master = master::Master::new(os, app, log.clone(), listeners, startup.config, startup.identity);
    // The pidfile goes with the master's OS, when `run` returns.
    let code = master.run();
    info!(log, "master exited"; "code" => code);
    code
}

/// Run the application in this one process, without master or fork (`--app-debug`).
///
/// The worker body runs in the calling thread as worker 0 of generation 0. SIGTERM and SIGINT ask
/// for a graceful stop (a second one for a fast stop), SIGQUIT for a fast stop; SIGUSR1 runs the
/// [`WorkerHandle::on_reopen_logs`] callback; SIGHUP is ignored. `timeout` and `max_requests` have
/// no effect (there is no master to replace the process). With `NOTIFY_SOCKET`, the first
/// [`WorkerHandle::ready`] sends `READY=1` and the first stop request `STOPPING=1`.
pub fn run_single<A: App>(mut app: A, listeners: Vec<TcpListener>, log: slog::Logger) -> i32 {
    let Ok(startup) = start_up(&mut app, &log) else {
        return exit_code::FAILURE;
    };
    if let Err(e) = startup.identity.apply() {
        error!(log, "cannot drop privileges"; "error" => %e);
        return exit_code::FAILURE;
    }
    let slot = worker::Slot::new(sys::SharedMem::private(worker::Slot::words_for(startup.config.threads)));
    let handle = WorkerHandle::single(slot, startup.notifier);
    let watching = worker::StopWatcher::install(worker::Mode::Single)
        .and_then(|watcher| watcher.spawn(handle.clone(), Some(log.clone())))
        .and_then(|()| handle.keep_signals());
    if let Err(e) = watching {
        error!(log, "cannot watch stop signals"; "error" => %e);
        return exit_code::FAILURE;
    }
    info!(log, "serving in one process"; "pid" => std::process::id());
    let code = app.run_worker(Worker { index: 0, generation: 0, listeners, handle });
    drop(startup.pidfile);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SupervisorConfig {
        SupervisorConfig {
            workers: 2,
            threads: 2,
            timeout: Some(Duration::from_secs(30)),
            graceful_timeout: Duration::from_secs(30),
            max_requests: 0,
            max_requests_jitter: 0,
            pidfile: None,
            user: None,
            group: None,
        }
    }

    #[test]
    fn validate_refuses_zero_workers_threads_and_timeout() {
        assert!(config().validate().is_ok());
        assert_eq!(SupervisorConfig { workers: 0, ..config() }.validate(), Err(InvalidConfig::NoWorkers));
        assert_eq!(SupervisorConfig { threads: 0, ..config() }.validate(), Err(InvalidConfig::NoThreads));
        let zero_timeout = SupervisorConfig { timeout: Some(Duration::ZERO), ..config() };
        assert_eq!(zero_timeout.validate(), Err(InvalidConfig::ZeroTimeout));
        assert!(InvalidConfig::ZeroTimeout.to_string().contains("timeout"));
    }

    #[test]
    fn worker_max_requests_adds_bounded_jitter() {
        assert_eq!(config().worker_max_requests(12345), 0, "no limit stays no limit");
        let limited = SupervisorConfig { max_requests: 100, max_requests_jitter: 10, ..config() };
        assert_eq!(limited.worker_max_requests(0), 100);
        assert_eq!(limited.worker_max_requests(10), 110);
        assert_eq!(limited.worker_max_requests(11), 100);
        assert!((0..1000).all(|r| (100..=110).contains(&limited.worker_max_requests(r * 7919))));
        let no_jitter = SupervisorConfig { max_requests: 100, ..config() };
        assert_eq!(no_jitter.worker_max_requests(999), 100);
    }

    #[test]
    fn shared_slots_are_zeroed_and_writable() {
        use std::sync::atomic::Ordering;
        let slots = shared_slots(8).expect("mmap");
        assert!(slots.iter().all(|slot| slot.load(Ordering::Relaxed) == 0));
        slots[3].store(42, Ordering::Relaxed);
        assert_eq!(slots[3].load(Ordering::Relaxed), 42);
        assert!(shared_slots(0).expect("empty").is_empty());
    }
}
