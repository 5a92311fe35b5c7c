//! [`RealOs`]: the real operating system behind the master's state machine.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::notify::Notifier;
use crate::os::{Exit, MasterSignal, Os};
use crate::sys;
use crate::worker::{self, Slot, WorkerHandle};

/// The real operating system behind the master's state machine.
pub(crate) struct RealOs {
    wake_read: OwnedFd,
    wake_write: OwnedFd,
    notifier: Option<Notifier>,
    master_pid: Pid,
}

impl RealOs {
    /// Create the wake pipe and install the master's signal handlers.
    pub(crate) fn new(notifier: Option<Notifier>) -> io::Result<RealOs> {
        let (wake_read, wake_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        sys::install_master_handlers(wake_write.as_raw_fd())?;
        Ok(RealOs { wake_read, wake_write, notifier, master_pid: nix::unistd::getpid() })
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

    fn fork_worker(
        &mut self,
        slot: &Slot,
        child: &mut dyn FnMut(io::Result<WorkerHandle>) -> i32,
    ) -> io::Result<i32> {
        let wake = self.wake_write.try_clone()?;
        let master = self.master_pid;
        sys::fork_child(|reset, mask| {
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
        let mut fds = [PollFd::new(self.wake_read.as_fd(), PollFlags::POLLIN)];
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        // EINTR just means a signal arrived; it is collected below.
        let _ = nix::poll::poll(&mut fds, timeout);
        self.drain_wake_pipe();
        let mut signals = Vec::new();
        for signal in sys::MASTER_SIGNALS {
            let count = sys::take_pending(signal).min(MAX_QUEUED_PER_SIGNAL);
            if let Some(what) = master_signal(signal) {
                signals.extend((0..count).map(|_| what));
            }
        }
        signals
    }

    fn notify(&mut self, state: &str) {
        if let Some(notifier) = &self.notifier {
            let _ = notifier.send(state);
        }
    }

    fn random(&mut self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(self.now().as_nanos());
        hasher.finish()
    }
}
