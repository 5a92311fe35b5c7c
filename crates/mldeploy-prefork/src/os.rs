//! The operating system as the master uses it: the interface its state machine is written
//! against, so that tests drive it with a fake OS and a fake clock
//! ([`crate::real_os::RealOs`] is the real one).

use std::io;
use std::net::TcpListener;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::balance::Board;
use crate::worker::{Slot, WorkerHandle};

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// It exited with this code.
    Code(i32),
    /// This signal killed it.
    Signal(i32),
}

/// What the master's signal handlers queue, and what a new master reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MasterSignal {
    /// SIGCHLD: a worker ended.
    Child,
    /// SIGTERM: graceful stop.
    Terminate,
    /// SIGINT: graceful stop; during one, a fast stop.
    Interrupt,
    /// SIGQUIT: fast stop.
    Quit,
    /// SIGHUP: reload.
    Hangup,
    /// SIGTTIN: one worker more.
    MoreWorkers,
    /// SIGTTOU: one worker less.
    FewerWorkers,
    /// SIGUSR1: reopen log files.
    ReopenLogs,
    /// SIGUSR2: upgrade to the binary on disk.
    Upgrade,
    /// Not a signal: the new master of an upgrade reported that it serves.
    NewMasterReady,
}

/// The operating system, as the master uses it.
pub(crate) trait Os {
    /// Now, on the clock workers write their heartbeats with.
    fn now(&self) -> Duration;
    /// Shared words for a worker about to be forked.
    fn new_slot(&mut self, words: usize) -> io::Result<Slot>;
    /// The board of open connections, shared with every worker forked after it.
    fn new_board(&mut self, seats: usize) -> io::Result<Board>;
    /// Fork a worker that runs `child` and exits with what it returns; `child` gets its handle,
    /// or why the child could not set itself up. Returns the child's pid.
    fn fork_worker(
        &mut self,
        slot: &Slot,
        child: &mut dyn FnMut(io::Result<WorkerHandle>) -> i32,
    ) -> io::Result<i32>;
    /// Send a signal to a worker.
    fn kill(&mut self, pid: i32, signal: Signal);
    /// One exited child, without blocking.
    fn reap(&mut self) -> Option<(i32, Exit)>;
    /// Sleep until `until`, a signal or a worker's wake-up; the signals received meanwhile.
    fn wait(&mut self, until: Duration) -> Vec<MasterSignal>;
    /// Tell systemd, if it listens (a master an upgrade started says nothing before its
    /// `READY=1`).
    fn notify(&mut self, state: &str);
    /// Upgrade: start a new master from the program this one was started as, with the same
    /// arguments and environment, handing it `listeners`; the pidfile is moved aside first.
    /// Returns its pid; [`Os::wait`] yields [`MasterSignal::NewMasterReady`] once it serves.
    fn start_new_master(&mut self, listeners: &[TcpListener]) -> io::Result<i32>;
    /// The new master failed or was abandoned: stop waiting for its report, and make the
    /// pidfile name this master again.
    fn new_master_failed(&mut self) -> io::Result<()>;
    /// This master serves: if an upgrade started it, tell the master that did.
    fn report_ready(&mut self) -> io::Result<()>;
    /// A random number (max-requests jitter).
    fn random(&mut self) -> u64;
}
