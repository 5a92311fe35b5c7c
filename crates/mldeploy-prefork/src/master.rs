//! The master's state machine.
//!
//! One loop: wait on the [`Os`] until a signal, a worker's wake-up, a new master's report or
//! the next deadline, then act with one `match` over the queued events and a fixed series of
//! small named steps: read the workers' slots (ready, retire), kill stale workers, and advance
//! the current [`Phase`] (finish retirements, spawn missing workers, finish a reload, an
//! upgrade or a stop). Every OS call goes through [`Os`], so the tests at the bottom drive the
//! machine with a fake OS and a fake clock.

use std::collections::HashMap;
use std::io;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use nix::sys::signal::Signal;
use slog::{error, info, warn, Logger};

use crate::balance::{self, Board};
use crate::identity::Identity;
use crate::os::{Exit, MasterSignal, Os};
use crate::worker::{Slot, WorkerHandle};
use crate::{exit_code, App, RestartReason, Stop, SupervisorConfig, SupervisorEvent, Worker};

/// The longest the loop sleeps: stale workers are looked for at least this often.
const TICK: Duration = Duration::from_secs(1);
/// A worker must report ready within this (or within `timeout`, if longer) after its fork.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest wait for workers to obey a fast stop before they are killed.
const FAST_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// The delay before a respawn after the second crash in a row; it doubles with each one more.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// The longest delay before a respawn.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A crash this long after the previous one counts as the first of a new series.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// What a new master (upgrade) may take to start, beyond the boot time of its workers.
const NEW_MASTER_START: Duration = Duration::from_secs(60);

/// The settings one generation of workers is forked with.
#[derive(Debug)]
pub(crate) struct Generation {
    number: u64,
    config: SupervisorConfig,
    identity: Identity,
}

/// Where the master is in its life.
#[derive(Debug, Clone)]
pub(crate) enum Phase {
    /// The first generation boots; a worker of it that fails to boot stops the server.
    Starting,
    /// The current generation serves; crashed workers are respawned, retiring ones replaced.
    Running,
    /// A new generation boots beside the current one, which serves until the new one is ready.
    Reloading(Rc<Generation>),
    /// A new master (USR2) starts from the binary on disk with the same sockets; the current
    /// generation serves until it reports ready, and it is killed if it is not by `deadline`.
    Upgrading { pid: i32, deadline: Duration },
    /// The new master serves: every worker was asked to stop gracefully, and the master exits
    /// with 0 once they are gone. It tells systemd nothing more: the new master is its main
    /// process now.
    HandedOver,
    /// Every worker was asked to stop; what is left at `kill_at` is killed, and the master exits
    /// with `code` once the last worker is reaped.
    Stopping { fast: bool, kill_at: Duration, code: i32 },
    /// Nothing left to supervise: the master returns this exit code.
    Exited(i32),
}

/// A request to stop one worker.
#[derive(Debug)]
struct StopOrder {
    reason: RestartReason,
    /// SIGKILL if it is still alive then.
    kill_at: Duration,
    killed: bool,
}

/// What the master knows of one worker process.
#[derive(Debug)]
struct WorkerState {
    pid: i32,
    index: usize,
    generation: u64,
    slot: Slot,
    started_at: Duration,
    timeout: Option<Duration>,
    graceful_timeout: Duration,
    ready: bool,
    /// It asked to be replaced (max requests); it serves until its replacement does.
    retiring: bool,
    stop: Option<StopOrder>,
}

impl WorkerState {
    /// Holds its index: not retiring and not asked to stop.
    fn is_active(&self) -> bool {
        self.stop.is_none() && !self.retiring
    }

    fn boot_deadline(&self) -> Duration {
        self.started_at + BOOT_TIMEOUT.max(self.timeout.unwrap_or_default())
    }
}

/// A new master that failed or was abandoned, not yet reaped.
#[derive(Debug, Clone, Copy)]
struct LeavingMaster {
    pid: i32,
    killed: bool,
}

/// Growing delays between respawns of workers that keep crashing.
#[derive(Debug, Default)]
struct Backoff {
    /// Crashes in the current series.
    streak: u32,
    last: Option<Duration>,
}

impl Backoff {
    /// Count a crash at `now`; the delay before the next spawn.
    fn failure(&mut self, now: Duration) -> Duration {
        if self.last.is_some_and(|last| now.saturating_sub(last) >= BACKOFF_RESET) {
            self.streak = 0;
        }
        let delay = match self.streak {
            0 => Duration::ZERO,
            n => BACKOFF_FIRST.saturating_mul(1 << (n - 1).min(16)).min(BACKOFF_MAX),
        };
        self.streak = self.streak.saturating_add(1);
        self.last = Some(now);
        delay
    }
}

fn signal_name(signal: i32) -> &'static str {
    Signal::try_from(signal).map(Signal::as_str).unwrap_or("unknown")
}

/// The body of a forked worker.
fn child_main<A: App>(
    app: &A,
    listeners: &[TcpListener],
    log: &Logger,
    identity: &Identity,
    (index, generation): (usize, u64),
    handle: io::Result<WorkerHandle>,
) -> i32 {
    let handle = match handle {
        Ok(handle) => handle,
        Err(e) => {
            error!(log, "worker setup failed"; "error" => %e);
            return exit_code::BOOT_FAILURE;
        }
    };
    if let Err(e) = identity.apply() {
        error!(log, "cannot drop privileges"; "error" => %e);
        return exit_code::BOOT_FAILURE;
    }
    let listeners = match listeners.iter().map(TcpListener::try_clone).collect::<io::Result<Vec<_>>>() {
        Ok(listeners) => listeners,
        Err(e) => {
            error!(log, "worker setup failed"; "error" => %e);
            return exit_code::BOOT_FAILURE;
        }
    };
    app.run_worker(Worker { index, generation, listeners, handle })
}

/// The master: its workers, its phase, and the OS and application it works with.
pub(crate) struct Master<O: Os, A: App> {
    os: O,
    app: A,
    log: Logger,
    listeners: Vec<TcpListener>,
    /// The open connections of every worker, shared with them (`None` if it could not be
    /// mapped: then workers accept without steering).
    board: Option<Board>,
    /// The generation that serves (or boots, while starting).
    current: Rc<Generation>,
    /// How many workers the current generation is kept at (TTIN/TTOU move it).
    target: usize,
    next_generation: u64,
    workers: Vec<WorkerState>,
    phase: Phase,
    backoff: Backoff,
    /// No worker of the current generation is forked before this (crash backoff).
    spawn_not_before: Duration,
    /// A HUP came while a reload could not start; one starts when it can.
    reload_pending: bool,
    /// A USR2 came while a generation was booting; the upgrade starts when it can.
    upgrade_pending: bool,
    /// A new master this one started and gave up on, until it is reaped (a stop waits for it).
    leaving: Option<LeavingMaster>,
    /// The pid that last left a (generation, index) unplanned, for its replacement's log line.
    left: HashMap<(u64, usize), i32>,
    /// The last status sent to systemd: (ready, target).
    status: Option<(usize, usize)>,
}

impl<O: Os, A: App> Master<O, A> {
    pub(crate) fn new(
        mut os: O,
        app: A,
        log: Logger,
        listeners: Vec<TcpListener>,
        config: SupervisorConfig,
        identity: Identity,
    ) -> Self {
        let board = match os.new_board(balance::SEATS) {
            Ok(board) => Some(board),
            Err(e) => {
                warn!(log, "workers accept without steering"; "error" => %e);
                None
            }
        };
        Master {
            os,
            app,
            log,
            listeners,
            board,
            target: config.workers,
            current: Rc::new(Generation { number: 0, config, identity }),
            next_generation: 1,
            workers: Vec::new(),
            phase: Phase::Starting,
            backoff: Backoff::default(),
            spawn_not_before: Duration::ZERO,
            reload_pending: false,
            upgrade_pending: false,
            leaving: None,
            left: HashMap::new(),
            status: None,
        }
    }

    /// Fork the first generation, then supervise until stopped; the exit code.
    pub(crate) fn run(mut self) -> i32 {
        self.advance();
        loop {
            if let Phase::Exited(code) = self.phase {
                return code;
            }
            self.tick();
        }
    }

    /// One turn of the loop.
    fn tick(&mut self) {
        let until = self.next_wakeup();
        let signals = self.os.wait(until);
        self.read_slots();
        for signal in signals {
            self.on_signal(signal);
        }
        self.murder_stale();
        self.advance();
    }

    fn on_signal(&mut self, signal: MasterSignal) {
        match signal {
            MasterSignal::Child => self.reap(),
            MasterSignal::Terminate => self.stop(Stop::Graceful, exit_code::OK),
            MasterSignal::Interrupt if matches!(self.phase, Phase::Stopping { .. }) => {
                self.stop(Stop::Fast, exit_code::OK)
            }
            MasterSignal::Interrupt => self.stop(Stop::Graceful, exit_code::OK),
            MasterSignal::Quit => self.stop(Stop::Fast, exit_code::OK),
            MasterSignal::Hangup => self.reload(),
            MasterSignal::MoreWorkers => self.scale(true),
            MasterSignal::FewerWorkers => self.scale(false),
            MasterSignal::ReopenLogs => self.reopen_logs(),
            MasterSignal::Upgrade => self.upgrade(),
            MasterSignal::NewMasterReady => self.hand_over(),
        }
    }

    fn emit(&mut self, event: SupervisorEvent) {
        self.app.on_event(&event);
    }

    fn is_stopping(&self) -> bool {
        matches!(self.phase, Phase::Stopping { .. } | Phase::HandedOver | Phase::Exited(_))
    }

    /// When the loop must look again at the latest.
    fn next_wakeup(&self) -> Duration {
        let now = self.os.now();
        let mut until = now + TICK;
        if self.spawn_not_before > now {
            until = until.min(self.spawn_not_before);
        }
        // Once passed (what was left is killed), waiting for the exits must not spin.
        match self.phase {
            Phase::Stopping { kill_at, .. } if kill_at > now => until = until.min(kill_at),
            Phase::Upgrading { deadline, .. } => until = until.min(deadline),
            _ => {}
        }
        for worker in &self.workers {
            match &worker.stop {
                Some(order) if !order.killed => until = until.min(order.kill_at),
                Some(_) => {}
                None if !worker.ready => until = until.min(worker.boot_deadline()),
                None => {}
            }
        }
        until.max(now)
    }

    /// Reap every exited child.
    fn reap(&mut self) {
        while let Some((pid, exit)) = self.os.reap() {
            if let Some(position) = self.workers.iter().position(|w| w.pid == pid) {
                let worker = self.workers.remove(position);
                self.worker_exited(worker, exit);
            } else {
                self.master_exited(pid, exit);
            }
        }
    }

    /// A child that is no worker ended: a new master (upgrade).
    fn master_exited(&mut self, pid: i32, exit: Exit) {
        let how = match exit {
            Exit::Code(code) => format!("exited with code {code}"),
            Exit::Signal(signal) => format!("was killed by {}", signal_name(signal)),
        };
        match self.phase {
            Phase::Upgrading { pid: new, .. } if new == pid => {
                self.upgrade_failed(&format!("the new master {how} before it was ready"));
            }
            _ if self.leaving.is_some_and(|leaving| leaving.pid == pid) => {
                info!(self.log, "new master gone"; "pid" => pid, "how" => how);
                self.leaving = None;
            }
            // The new master this one handed over to.
            _ => warn!(self.log, "child exited"; "pid" => pid, "how" => how),
        }
    }

    fn worker_exited(&mut self, worker: WorkerState, exit: Exit) {
        if let Some(board) = &self.board {
            board.free(worker.pid as u32);
        }
        let reason = match (&worker.stop, exit) {
            (Some(order), _) => order.reason,
            (None, _) if worker.retiring => RestartReason::MaxRequests,
            (None, Exit::Code(exit_code::BOOT_FAILURE)) if !worker.ready => RestartReason::BootFailure,
            (None, _) => RestartReason::Crash,
        };
        let unplanned =
            matches!(reason, RestartReason::Crash | RestartReason::Timeout | RestartReason::BootFailure);
        let (log, pid, index, generation) = (&self.log, worker.pid, worker.index, worker.generation);
        match (unplanned, exit) {
            (true, Exit::Code(code)) => warn!(log, "worker exited"; "pid" => pid, "index" => index,
                "generation" => generation, "reason" => reason.as_str(), "code" => code),
            (true, Exit::Signal(signal)) => warn!(log, "worker exited"; "pid" => pid, "index" => index,
                "generation" => generation, "reason" => reason.as_str(), "signal" => signal_name(signal)),
            (false, Exit::Code(code)) => info!(log, "worker exited"; "pid" => pid, "index" => index,
                "generation" => generation, "reason" => reason.as_str(), "code" => code),
            (false, Exit::Signal(signal)) => info!(log, "worker exited"; "pid" => pid, "index" => index,
                "generation" => generation, "reason" => reason.as_str(), "signal" => signal_name(signal)),
        }
        self.emit(SupervisorEvent::WorkerExited { pid, reason });
        self.emit(SupervisorEvent::WorkersAlive(self.workers.len()));
        if !unplanned || self.is_stopping() {
            return;
        }
        self.left.insert((generation, index), pid);
        if worker.ready {
            self.delay_respawn();
        } else {
            self.boot_failed(&worker);
        }
    }

    /// A worker ended before it was ready.
    fn boot_failed(&mut self, worker: &WorkerState) {
        let (pid, generation) = (worker.pid, worker.generation);
        match &self.phase {
            Phase::Starting if generation == self.current.number => {
                error!(self.log, "boot failure"; "pid" => pid, "generation" => generation,
                    "action" => "stopping the server");
                self.stop(Stop::Graceful, exit_code::BOOT_FAILURE);
            }
            Phase::Reloading(next) if generation == next.number => {
                error!(self.log, "boot failure"; "pid" => pid, "generation" => generation,
                    "action" => "abandoning the reload");
                self.abandon_reload("a worker of the new generation failed to boot");
            }
            _ => {
                error!(self.log, "boot failure"; "pid" => pid, "generation" => generation, "action" => "respawning");
                self.delay_respawn();
            }
        }
    }

    /// Count a crash; push the next spawn back as the backoff says.
    fn delay_respawn(&mut self) {
        let now = self.os.now();
        let delay = self.backoff.failure(now);
        if !delay.is_zero() {
            self.spawn_not_before = self.spawn_not_before.max(now + delay);
            warn!(self.log, "respawn delayed"; "seconds" => delay.as_secs_f64());
        }
    }

    /// Notice workers that became ready or asked to retire.
    fn read_slots(&mut self) {
        let mut ready = Vec::new();
        for worker in &mut self.workers {
            if !worker.ready && worker.slot.is_ready() {
                worker.ready = true;
                info!(self.log, "worker ready"; "pid" => worker.pid, "index" => worker.index,
                    "generation" => worker.generation);
                ready.push(SupervisorEvent::WorkerReady { pid: worker.pid, generation: worker.generation });
            }
            if worker.ready && worker.is_active() && worker.slot.wants_retire() {
                worker.retiring = true;
                info!(self.log, "worker retiring"; "pid" => worker.pid, "index" => worker.index,
                    "max_requests" => worker.slot.max_requests());
            }
        }
        for event in ready {
            self.emit(event);
        }
    }

    /// Kill workers that hang (heartbeat or model call older than `timeout`), that do not boot,
    /// or that outlived the grace of their stop.
    fn murder_stale(&mut self) {
        let now = self.os.now();
        for worker in &mut self.workers {
            if let Some(order) = &mut worker.stop {
                if !order.killed && now >= order.kill_at {
                    warn!(self.log, "worker killed"; "pid" => worker.pid, "reason" => order.reason.as_str(),
                        "why" => "did not stop in time");
                    self.os.kill(worker.pid, Signal::SIGKILL);
                    order.killed = true;
                }
                continue;
            }
            let stale = if !worker.ready {
                (now >= worker.boot_deadline()).then_some("boot")
            } else if let Some(timeout) = worker.timeout {
                if now.saturating_sub(worker.slot.heartbeat()) > timeout {
                    Some("heartbeat")
                } else if worker.slot.oldest_busy().is_some_and(|since| now.saturating_sub(since) > timeout) {
                    Some("model call")
                } else {
                    None
                }
            } else {
                None
            };
            if let Some(what) = stale {
                warn!(self.log, "worker timeout"; "pid" => worker.pid, "index" => worker.index,
                    "generation" => worker.generation, "stale" => what);
                self.os.kill(worker.pid, Signal::SIGKILL);
                worker.stop = Some(StopOrder { reason: RestartReason::Timeout, kill_at: now, killed: true });
            }
        }
    }

    /// Ask one worker to stop. One that is not ready serves nothing yet and is killed outright.
    fn stop_worker(&mut self, position: usize, reason: RestartReason, how: Stop) {
        let now = self.os.now();
        let worker = &mut self.workers[position];
        if let Some(order) = &worker.stop {
            if how == Stop::Fast && !order.killed {
                self.os.kill(worker.pid, Signal::SIGQUIT);
            }
            return;
        }
        let (signal, grace) = match how {
            _ if !worker.ready => (Signal::SIGKILL, Duration::ZERO),
            Stop::Graceful => (Signal::SIGTERM, worker.graceful_timeout),
            Stop::Fast => (Signal::SIGQUIT, FAST_STOP_TIMEOUT.min(worker.graceful_timeout)),
        };
        info!(self.log, "worker stopping"; "pid" => worker.pid, "index" => worker.index,
            "generation" => worker.generation, "reason" => reason.as_str(), "signal" => signal.as_str());
        self.os.kill(worker.pid, signal);
        worker.stop = Some(StopOrder { reason, kill_at: now + grace, killed: signal == Signal::SIGKILL });
    }

    /// Stop the server (or make a graceful stop fast).
    fn stop(&mut self, how: Stop, code: i32) {
        let fast = how == Stop::Fast;
        let now = self.os.now();
        let (kill_at, code) = match self.phase {
            Phase::Exited(_) | Phase::Stopping { fast: true, .. } => return,
            Phase::Stopping { .. } | Phase::HandedOver if !fast => return,
            // Making a graceful stop fast keeps its exit code.
            Phase::Stopping { kill_at, code, .. } => (kill_at.min(now + FAST_STOP_TIMEOUT), code),
            // Already on its way out, silently: only faster.
            Phase::HandedOver => {
                for position in 0..self.workers.len() {
                    self.stop_worker(position, RestartReason::Shutdown, how);
                }
                return;
            }
            _ => {
                match self.phase {
                    Phase::Reloading(_) => {
                        warn!(self.log, "reload abandoned"; "why" => "stopping");
                        self.emit(SupervisorEvent::ReloadFinished {
                            ok: false,
                            serving: self.current.number,
                        });
                    }
                    Phase::Upgrading { pid, .. } => self.abandon_upgrade(pid),
                    _ => {}
                }
                self.os.notify("STOPPING=1\nSTATUS=stopping");
                let graceful = self.current.config.graceful_timeout;
                (now + if fast { FAST_STOP_TIMEOUT.min(graceful) } else { graceful }, code)
            }
        };
        info!(self.log, "stopping"; "mode" => if fast { "fast" } else { "graceful" },
            "workers" => self.workers.len(), "code" => code);
        self.phase = Phase::Stopping { fast, kill_at, code };
        self.reload_pending = false;
        self.upgrade_pending = false;
        // A new master given up on stops with this one, as its workers do.
        if let Some(leaving) = self.leaving.filter(|leaving| !leaving.killed) {
            self.os.kill(leaving.pid, if fast { Signal::SIGQUIT } else { Signal::SIGTERM });
        }
        for position in 0..self.workers.len() {
            self.stop_worker(position, RestartReason::Shutdown, how);
        }
    }

    /// Start an upgrade (USR2), or leave it for later while a generation is booting.
    fn upgrade(&mut self) {
        match self.phase {
            Phase::Running => {}
            Phase::Starting | Phase::Reloading(_) => {
                info!(self.log, "upgrade deferred"; "why" => "a generation is still booting");
                self.upgrade_pending = true;
                return;
            }
            Phase::Upgrading { pid, .. } => {
                warn!(self.log, "upgrade ignored"; "why" => "an upgrade is under way", "new_master" => pid);
                return;
            }
            Phase::HandedOver | Phase::Stopping { .. } | Phase::Exited(_) => return,
        }
        if let Some(leaving) = self.leaving {
            warn!(self.log, "upgrade ignored"; "why" => "the last new master has not exited yet",
                "new_master" => leaving.pid);
            return;
        }
        let now = self.os.now();
        info!(self.log, "upgrade started");
        self.os.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=upgrading", now.as_micros()));
        match self.os.start_new_master(&self.listeners) {
            Ok(pid) => {
                let boot = BOOT_TIMEOUT.max(self.current.config.timeout.unwrap_or_default());
                let deadline = now + NEW_MASTER_START + boot;
                info!(self.log, "new master started"; "pid" => pid, "deadline_seconds" => (deadline - now).as_secs());
                self.phase = Phase::Upgrading { pid, deadline };
            }
            Err(e) => self.upgrade_failed(&format!("cannot start the new master: {e}")),
        }
    }

    /// The new master serves: stop this master's workers and leave. systemd hears the new
    /// master's pid from this master too (so `NotifyAccess=main` still follows it), then nothing.
    fn hand_over(&mut self) {
        let Phase::Upgrading { pid, .. } = self.phase else {
            // A report from a new master given up on already.
            return;
        };
        info!(self.log, "upgrade finished"; "ok" => true, "new_master" => pid, "workers_stopping" => self.workers.len());
        self.os.notify(&format!("MAINPID={pid}\nREADY=1\nSTATUS=upgraded: master {pid} serves"));
        self.phase = Phase::HandedOver;
        if self.reload_pending {
            info!(self.log, "reload dropped"; "why" => "the new master read the settings as it started");
        }
        self.reload_pending = false;
        self.upgrade_pending = false;
        for position in 0..self.workers.len() {
            self.stop_worker(position, RestartReason::Shutdown, Stop::Graceful);
        }
    }

    /// The new master did not become ready in time: kill it (its workers then stop gracefully,
    /// as workers of any dead master do); this master serves on.
    fn upgrade_timed_out(&mut self, pid: i32) {
        self.os.kill(pid, Signal::SIGKILL);
        self.leaving = Some(LeavingMaster { pid, killed: true });
        self.upgrade_failed("the new master was not ready in time");
    }

    /// A stop during an upgrade: the new master is stopped too (see `stop`), and this one
    /// waits for it.
    fn abandon_upgrade(&mut self, pid: i32) {
        warn!(self.log, "upgrade abandoned"; "why" => "stopping", "new_master" => pid);
        self.leaving = Some(LeavingMaster { pid, killed: false });
        if let Err(e) = self.os.new_master_failed() {
            error!(self.log, "pidfile not restored"; "error" => %e);
        }
    }

    fn upgrade_failed(&mut self, why: &str) {
        if let Err(e) = self.os.new_master_failed() {
            error!(self.log, "pidfile not restored"; "error" => %e);
        }
        self.phase = Phase::Running;
        error!(self.log, "upgrade finished"; "ok" => false, "error" => why, "generation" => self.current.number);
        let serving = self.current_ready();
        self.status = Some((serving, self.target));
        self.os.notify(&format!("READY=1\nSTATUS=upgrade failed ({why}); {serving} workers serving"));
    }

    /// Start a reload (HUP), or leave it for later while a generation is booting.
    fn reload(&mut self) {
        match self.phase {
            Phase::Running => {}
            Phase::Starting | Phase::Reloading(_) => {
                info!(self.log, "reload deferred"; "why" => "a generation is still booting");
                self.reload_pending = true;
                return;
            }
            Phase::Upgrading { .. } => {
                info!(self.log, "reload deferred"; "why" => "an upgrade is under way");
                self.reload_pending = true;
                return;
            }
            Phase::HandedOver | Phase::Stopping { .. } | Phase::Exited(_) => return,
        }
        let number = self.next_generation;
        info!(self.log, "reload started"; "generation" => number);
        let now = self.os.now();
        self.os.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading", now.as_micros()));
        let prepared = self.app.prepare(true);
        // Every configuration the application accepted has its generation number (see
        // `App::prepare`), even if it is refused below.
        if prepared.is_ok() {
            self.next_generation += 1;
        }
        // Only logged, whatever refused the configuration.
        let prepared = prepared.map_err(|e| e.to_string()).and_then(|config| {
            config.validate().map_err(|e| e.to_string())?;
            let identity = Identity::resolve(config.user.as_deref(), config.group.as_deref())
                .map_err(|e| e.to_string())?;
            Ok((config, identity))
        });
        let (config, identity) = match prepared {
            Ok(prepared) => prepared,
            Err(e) => return self.reload_failed(&format!("configuration refused: {e}")),
        };
        let next = Rc::new(Generation { number, config, identity });
        self.phase = Phase::Reloading(next.clone());
        for index in 0..next.config.workers {
            if !self.spawn(index, &next) {
                return self.abandon_reload("cannot fork the new generation");
            }
        }
    }

    /// The new generation serves: stop the old one.
    fn finish_reload(&mut self, next: Rc<Generation>) {
        for position in 0..self.workers.len() {
            if self.workers[position].generation != next.number {
                self.stop_worker(position, RestartReason::Reload, Stop::Graceful);
            }
        }
        self.target = next.config.workers;
        self.current = next;
        let current = self.current.number;
        self.left.retain(|&(generation, _), _| generation == current);
        self.phase = Phase::Running;
        info!(self.log, "reload finished"; "ok" => true, "generation" => self.current.number, "workers" => self.target);
        self.emit(SupervisorEvent::ReloadFinished { ok: true, serving: current });
        self.status = Some((self.target, self.target));
        self.os.notify(&format!("READY=1\nSTATUS={} workers serving", self.target));
    }

    /// The new generation failed: stop what there is of it; the current one keeps serving.
    fn abandon_reload(&mut self, why: &str) {
        if let Phase::Reloading(next) = &self.phase {
            let number = next.number;
            for position in 0..self.workers.len() {
                if self.workers[position].generation == number {
                    self.stop_worker(position, RestartReason::Reload, Stop::Graceful);
                }
            }
        }
        self.reload_failed(why);
    }

    fn reload_failed(&mut self, why: &str) {
        self.phase = Phase::Running;
        let current = self.current.number;
        self.left.retain(|&(generation, _), _| generation == current);
        error!(self.log, "reload finished"; "ok" => false, "error" => why, "generation" => self.current.number);
        self.emit(SupervisorEvent::ReloadFinished { ok: false, serving: current });
        let serving = self.current_ready();
        self.status = Some((serving, self.target));
        self.os.notify(&format!("READY=1\nSTATUS=reload failed ({why}); {serving} workers serving"));
    }

    /// TTIN / TTOU.
    fn scale(&mut self, more: bool) {
        if self.is_stopping() {
            return;
        }
        let before = self.target;
        self.target = if more { before + 1 } else { before.saturating_sub(1).max(1) };
        info!(self.log, "workers scaled"; "from" => before, "to" => self.target);
    }

    /// USR1: the application's logs, then every worker's.
    fn reopen_logs(&mut self) {
        self.app.reopen_logs();
        for worker in &self.workers {
            if worker.stop.as_ref().is_none_or(|order| !order.killed) {
                self.os.kill(worker.pid, Signal::SIGUSR1);
            }
        }
        info!(self.log, "logs reopened");
    }

    /// Indices of the current generation served by a ready worker (a retiring one counts until
    /// it is asked to stop).
    fn current_ready(&self) -> usize {
        let number = self.current.number;
        (0..self.target)
            .filter(|&index| {
                (self.workers.iter())
                    .any(|w| w.generation == number && w.index == index && w.ready && w.stop.is_none())
            })
            .count()
    }

    /// Fork a worker of `generation` at `index`; false if that failed.
    fn spawn(&mut self, index: usize, generation: &Rc<Generation>) -> bool {
        let config = &generation.config;
        let now = self.os.now();
        let slot = match self.os.new_slot(Slot::words_for(config.threads)) {
            Ok(slot) => slot,
            Err(e) => {
                error!(self.log, "spawn failed"; "error" => %e, "index" => index);
                self.delay_respawn();
                return false;
            }
        };
        let slot = slot.with_board(self.board.clone());
        slot.set_heartbeat(now);
        slot.set_max_requests(config.worker_max_requests(self.os.random()));
        let number = generation.number;
        let (app, listeners, log, identity) = (&self.app, &self.listeners, &self.log, &generation.identity);
        let mut child = |handle| child_main(app, listeners, log, identity, (index, number), handle);
        let pid = match self.os.fork_worker(&slot, &mut child) {
            Ok(pid) => pid,
            Err(e) => {
                error!(self.log, "spawn failed"; "error" => %e, "index" => index);
                self.delay_respawn();
                return false;
            }
        };
        let replaces = (self.workers.iter())
            .find(|w| w.generation == number && w.index == index && w.retiring)
            .map(|w| w.pid)
            .or_else(|| self.left.remove(&(number, index)));
        match replaces {
            Some(old) => {
                info!(self.log, "worker spawned"; "pid" => pid, "index" => index, "generation" => number,
                "replaces" => old)
            }
            None => info!(self.log, "worker spawned"; "pid" => pid, "index" => index, "generation" => number),
        }
        self.workers.push(WorkerState {
            pid,
            index,
            generation: number,
            slot,
            started_at: now,
            timeout: config.timeout,
            graceful_timeout: config.graceful_timeout,
            ready: false,
            retiring: false,
            stop: None,
        });
        self.emit(SupervisorEvent::WorkersAlive(self.workers.len()));
        true
    }

    /// Keep the current generation at `target` workers: stop those beyond it, fork the missing
    /// ones (unless the crash backoff says wait).
    fn manage_workers(&mut self) {
        let generation = self.current.clone();
        for position in 0..self.workers.len() {
            let worker = &self.workers[position];
            if worker.generation == generation.number && worker.index >= self.target && worker.stop.is_none()
            {
                self.stop_worker(position, RestartReason::Scale, Stop::Graceful);
            }
        }
        if self.os.now() < self.spawn_not_before {
            return;
        }
        for index in 0..self.target {
            let held = self
                .workers
                .iter()
                .any(|w| w.generation == generation.number && w.index == index && w.is_active());
            if !held && !self.spawn(index, &generation) {
                return;
            }
        }
    }

    /// Stop retiring workers whose replacement serves.
    fn finish_retirements(&mut self) {
        for position in 0..self.workers.len() {
            let worker = &self.workers[position];
            if !worker.retiring || worker.stop.is_some() {
                continue;
            }
            let replaced = self.workers.iter().any(|other| {
                other.generation == worker.generation
                    && other.index == worker.index
                    && other.ready
                    && other.is_active()
            });
            if replaced {
                self.stop_worker(position, RestartReason::MaxRequests, Stop::Graceful);
            }
        }
    }

    /// Tell systemd how many workers serve, when that changed.
    fn report_status(&mut self) {
        let status = (self.current_ready(), self.target);
        if self.status != Some(status) {
            self.status = Some(status);
            let text = match status {
                (ready, target) if ready == target => format!("STATUS={target} workers serving"),
                (ready, target) => format!("STATUS={ready} of {target} workers serving"),
            };
            self.os.notify(&text);
        }
    }

    /// Move the phase on as far as the workers allow.
    fn advance(&mut self) {
        match self.phase.clone() {
            Phase::Starting => {
                self.finish_retirements();
                self.manage_workers();
                if matches!(self.phase, Phase::Starting) && self.current_ready() >= self.target {
                    self.phase = Phase::Running;
                    info!(self.log, "server ready"; "workers" => self.target, "pid" => std::process::id());
                    self.status = Some((self.target, self.target));
                    // After an upgrade, systemd takes this master's pid for the service's...
                    self.os.notify(&format!(
                        "READY=1\nMAINPID={}\nSTATUS={} workers serving",
                        std::process::id(),
                        self.target
                    ));
                    // ...before the old master is told to stop its workers and leave.
                    if let Err(e) = self.os.report_ready() {
                        error!(self.log, "cannot tell the old master this one serves"; "error" => %e);
                    }
                }
            }
            Phase::Running => {
                self.finish_retirements();
                self.manage_workers();
                if self.upgrade_pending {
                    self.upgrade_pending = false;
                    self.upgrade();
                } else if self.reload_pending {
                    self.reload_pending = false;
                    self.reload();
                } else {
                    self.report_status();
                }
            }
            Phase::Reloading(next) => {
                self.finish_retirements();
                self.manage_workers();
                let ready = (self.workers.iter())
                    .filter(|w| w.generation == next.number && w.ready && w.is_active())
                    .count();
                if ready >= next.config.workers {
                    self.finish_reload(next);
                }
            }
            Phase::Upgrading { pid, deadline } => {
                self.finish_retirements();
                self.manage_workers();
                if self.os.now() >= deadline {
                    self.upgrade_timed_out(pid);
                } else {
                    self.report_status();
                }
            }
            Phase::HandedOver => {
                if self.workers.is_empty() {
                    self.phase = Phase::Exited(exit_code::OK);
                }
            }
            Phase::Stopping { kill_at, code, .. } => {
                if self.workers.is_empty() && self.leaving.is_none() {
                    self.phase = Phase::Exited(code);
                } else if self.os.now() >= kill_at {
                    for worker in &mut self.workers {
                        if let Some(order) = worker.stop.as_mut().filter(|order| !order.killed) {
                            warn!(self.log, "worker killed"; "pid" => worker.pid, "why" => "did not stop in time");
                            self.os.kill(worker.pid, Signal::SIGKILL);
                            order.killed = true;
                        }
                    }
                    if let Some(leaving) = self.leaving.as_mut().filter(|leaving| !leaving.killed) {
                        warn!(self.log, "new master killed"; "pid" => leaving.pid, "why" => "did not stop in time");
                        self.os.kill(leaving.pid, Signal::SIGKILL);
                        leaving.killed = true;
                    }
                }
            }
            Phase::Exited(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
