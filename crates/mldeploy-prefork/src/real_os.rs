//! [`RealOs`]: the real operating system behind the master's state machine.

use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::balance::Board;
use crate::notify::Notifier;
use crate::os::{Exit, MasterSignal, Os};
use crate::pidfile::Pidfile;
use crate::sys;
use crate::upgrade::{self, Relaunch};
use crate::worker::{self, Slot, WorkerHandle};

/// What the master was started with, beyond its signals: systemd's socket, the pidfile, how to
/// start a new master, and the line to the old master if an upgrade started this one.
pub(crate) struct Surroundings {
    pub(crate) notifier: Option<Notifier>,
    pub(crate) pidfile: Option<Pidfile>,
    pub(crate) relaunch: Option<Relaunch>,
    pub(crate) old_master: Option<OwnedFd>,
}

/// The real operating system behind the master's state machine.
pub(crate) struct RealOs {
    wake_read: OwnedFd,
    wake_write: OwnedFd,
    master_pid: Pid,
    around: Surroundings,
    /// The reading end of the ready pipe of a new master (upgrade) that has not reported yet.
    new_master: Option<OwnedFd>,
}

impl RealOs {
    /// Create the wake pipe and install the master's signal handlers.
    pub(crate) fn new(around: Surroundings) -> io::Result<RealOs> {
        let (wake_read, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        sys::install_master_handlers(wake_write.as_raw_fd())?;
        Ok(RealOs { wake_read, wake_write, master_pid: nix::unistd::getpid(), around, new_master: None })
    }

    /// Whether the new master reported ready (a byte), or gave up its end (end of file), or
    /// has said nothing yet (None).
    fn read_new_master(&mut self) -> Option<bool> {
        let pipe = self.new_master.as_ref()?;
        let mut buf = [0u8; 16];
        match nix::unistd::read(pipe, &mut buf) {
            Ok(0) => Some(false),
            Ok(_) => Some(true),
            Err(Errno::EAGAIN | Errno::EINTR) => None,
            Err(_) => Some(false),
        }
    }

    fn drain_wake_pipe(&self) {
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(&self.wake_read, &mut buf), Ok(n) if n > 0) {}
    }
}

impl Drop for RealOs {
    fn drop(&mut self) {
        sys::remove_master_handlers();
    }
}

fn master_signal(signal: Signal) -> Option<MasterSignal> {
    Some(match signal {
        Signal::SIGCHLD => MasterSignal::Child,
        Signal::SIGTERM => MasterSignal::Terminate,
        Signal::SIGINT => MasterSignal::Interrupt,
        Signal::SIGQUIT => MasterSignal::Quit,
        Signal::SIGHUP => MasterSignal::Hangup,
        Signal::SIGTTIN => MasterSignal::MoreWorkers,
        Signal::SIGTTOU => MasterSignal::FewerWorkers,
        Signal::SIGUSR1 => MasterSignal::ReopenLogs,
        Signal::SIGUSR2 => MasterSignal::Upgrade,
        _ => return None,
    })
}

/// More of one signal than this between two loop turns are taken as this many.
const MAX_QUEUED_PER_SIGNAL: u32 = 16;

impl Os for RealOs {
    fn now(&self) -> Duration {
        sys::monotonic()
    }

    fn new_slot(&mut self, words: usize) -> io::Result<Slot> {
        Ok(Slot::new(sys::SharedMem::shared(words)?))
    }

    fn new_board(&mut self, seats: usize) -> io::Result<Board> {
        Ok(Board::new(sys::SharedMem::shared(seats)?))
    }

    fn fork_worker(
        &mut self,
        slot: &Slot,
        child: &mut dyn FnMut(io::Result<WorkerHandle>) -> i32,
    ) -> io::Result<i32> {
        let wake = self.wake_write.try_clone()?;
        let master = self.master_pid;
        let (old_master, new_master) = (&mut self.around.old_master, &mut self.new_master);
        sys::fork_child(|reset, mask| {
            // The pipes of an upgrade are the master's business: a worker does not hold them open.
            drop((old_master.take(), new_master.take()));
            let handle = reset.and_then(|()| worker::enter_child(slot.clone(), master, wake, mask));
            worker::run_guarded(slot, || child(handle))
        })
    }

    fn kill(&mut self, pid: i32, signal: Signal) {
        // Never signal a group or every process by mistake.
        if pid > 0 {
            let _ = signal::kill(Pid::from_raw(pid), signal);
        }
    }

    fn reap(&mut self) -> Option<(i32, Exit)> {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => return Some((pid.as_raw(), Exit::Code(code))),
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    return Some((pid.as_raw(), Exit::Signal(signal as i32)));
                }
                Ok(WaitStatus::StillAlive) => return None,
                // Stopped or continued: not an exit.
                Ok(_) | Err(Errno::EINTR) => continue,
                // ECHILD: no child left.
                Err(_) => return None,
            }
        }
    }

    fn wait(&mut self, until: Duration) -> Vec<MasterSignal> {
        let left = until.saturating_sub(self.now());
        // Round up: waking a little late is harmless, waking early spins.
        let millis = left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
        let mut fds = vec![PollFd::new(self.wake_read.as_fd(), PollFlags::POLLIN)];
        if let Some(pipe) = &self.new_master {
            fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
        }
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        // EINTR just means a signal arrived; it is collected below.
        let _ = nix::poll::poll(&mut fds, timeout);
        drop(fds);
        self.drain_wake_pipe();
        let mut signals = Vec::new();
        for signal in sys::MASTER_SIGNALS {
            let count = sys::take_pending(signal).min(MAX_QUEUED_PER_SIGNAL);
            if let Some(what) = master_signal(signal) {
                signals.extend((0..count).map(|_| what));
            }
        }
        // After SIGCHLD: a new master that reported ready and died at once is seen dead first.
        if let Some(ready) = self.read_new_master() {
            self.new_master = None;
            if ready {
                signals.push(MasterSignal::NewMasterReady);
            }
        }
        signals
    }

    fn notify(&mut self, state: &str) {
        // A new master says nothing until it serves: the old master is the service's main
        // process until then, and a new master that fails must not say STOPPING=1 in the
        // service's name. Its first word is READY=1 with its pid.
        if self.around.old_master.is_some() && !state.lines().any(|line| line == "READY=1") {
            return;
        }
        if let Some(notifier) = &self.around.notifier {
            let _ = notifier.send(state);
        }
    }

    fn start_new_master(&mut self, listeners: &[TcpListener]) -> io::Result<i32> {
        let relaunch = (self.around.relaunch.as_ref()).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "the program this master runs is unknown")
        })?;
        if let Some(pidfile) = &mut self.around.pidfile {
            pidfile.move_aside().map_err(io::Error::other)?;
        }
        let started = upgrade::start(relaunch, listeners);
        match started {
            Ok(started) => {
                self.new_master = Some(started.ready);
                Ok(started.pid)
            }
            Err(e) => {
                let e = io::Error::new(e.kind(), format!("{}: {e}", relaunch.program().display()));
                let _ = self.new_master_failed();
                Err(e)
            }
        }
    }

    fn new_master_failed(&mut self) -> io::Result<()> {
        self.new_master = None;
        match &mut self.around.pidfile {
            Some(pidfile) => pidfile.restore().map_err(io::Error::other),
            None => Ok(()),
        }
    }

    fn report_ready(&mut self) -> io::Result<()> {
        match self.around.old_master.take() {
            Some(pipe) => upgrade::report_ready(pipe),
            None => Ok(()),
        }
    }

    fn random(&mut self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(self.now().as_nanos());
        hasher.finish()
    }
}
