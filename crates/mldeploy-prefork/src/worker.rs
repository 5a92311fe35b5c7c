//! The worker's side of the link to its master.
//!
//! Each worker owns a [`Slot`] of shared words that the master reads: flags (ready, retire), a
//! heartbeat time and one "busy since" time per running model call, all on `CLOCK_MONOTONIC`.
//! After setting a flag the worker writes a byte to the master's wake pipe so the master notices
//! at once. Stop requests come as signals (TERM = graceful, QUIT = fast; a dying master sends TERM
//! through `PR_SET_PDEATHSIG`), turned into [`Stop`] values by a watcher thread that uses
//! `signal-hook`; [`WorkerHandle::wait_stop`] hands them out.

use std::cell::Cell;
use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};
use nix::unistd::Pid;
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2};
use signal_hook::iterator::Signals;
use slog::{info, Logger};

use crate::balance::{Board, Seat};
use crate::notify::Notifier;
use crate::sys::{self, SharedMem};
use crate::{exit_code, Stop};

/// Index of the flag word ([`READY`], [`RETIRE`]).
const FLAGS: usize = 0;
/// Index of the heartbeat time (nanoseconds of `CLOCK_MONOTONIC`).
const HEARTBEAT: usize = 1;
/// Index of this worker's request limit (0 = none), written by the master before the fork.
const MAX_REQUESTS: usize = 2;
/// Index of the first "busy since" word (0 = idle).
const BUSY: usize = 3;
/// Busy words beyond the configured thread count, for callers that run more model calls at once.
const SPARE_BUSY: usize = 4;

const READY: u64 = 1;
const RETIRE: u64 = 2;

fn nanos(at: Duration) -> u64 {
    u64::try_from(at.as_nanos()).unwrap_or(u64::MAX)
}

/// One worker's shared status words, seen by the worker and its master, and the board of
/// open connections it shares with its master's other workers.
#[derive(Clone)]
pub(crate) struct Slot {
    mem: Arc<SharedMem>,
    /// `None` for a worker without master (and when the board could not be mapped).
    pub(crate) board: Option<Board>,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("flags", &self.word(FLAGS).load(Ordering::Relaxed))
            .field("heartbeat", &self.heartbeat())
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// Words needed for a worker with `threads` serving threads.
    pub(crate) fn words_for(threads: usize) -> usize {
        BUSY + threads.max(1) + SPARE_BUSY
    }

    pub(crate) fn new(mem: SharedMem) -> Slot {
        assert!(mem.words().len() > BUSY, "a slot needs room for at least one busy word");
        Slot { mem: Arc::new(mem), board: None }
    }

    /// The same slot, steering connections with `board` (see [`crate::balance`]).
    pub(crate) fn with_board(self, board: Option<Board>) -> Slot {
        Slot { board, ..self }
    }

    fn word(&self, index: usize) -> &AtomicU64 {
        &self.mem.words()[index]
    }

    fn busy_words(&self) -> &[AtomicU64] {
        &self.mem.words()[BUSY..]
    }

    /// Set a flag; true if it was not set before.
    fn raise(&self, flag: u64) -> bool {
        self.word(FLAGS).fetch_or(flag, Ordering::AcqRel) & flag == 0
    }

    /// Set the ready flag; true if it was not set before.
    pub(crate) fn mark_ready(&self) -> bool {
        self.raise(READY)
    }

    /// Set the retire flag; true if it was not set before.
    pub(crate) fn mark_retire(&self) -> bool {
        self.raise(RETIRE)
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.word(FLAGS).load(Ordering::Acquire) & READY != 0
    }

    pub(crate) fn wants_retire(&self) -> bool {
        self.word(FLAGS).load(Ordering::Acquire) & RETIRE != 0
    }

    pub(crate) fn heartbeat(&self) -> Duration {
        Duration::from_nanos(self.word(HEARTBEAT).load(Ordering::Relaxed))
    }

    pub(crate) fn set_heartbeat(&self, at: Duration) {
        self.word(HEARTBEAT).store(nanos(at), Ordering::Relaxed);
    }

    pub(crate) fn max_requests(&self) -> u64 {
        self.word(MAX_REQUESTS).load(Ordering::Relaxed)
    }

    pub(crate) fn set_max_requests(&self, limit: u64) {
        self.word(MAX_REQUESTS).store(limit, Ordering::Relaxed);
    }

    /// Start time of the oldest model call still running.
    pub(crate) fn oldest_busy(&self) -> Option<Duration> {
        self.busy_words()
            .iter()
            .map(|word| word.load(Ordering::Acquire))
            .filter(|&since| since != 0)
            .min()
            .map(Duration::from_nanos)
    }

    /// Claim a free busy word with `since`; its index, or `None` if all are taken.
    pub(crate) fn claim_busy(&self, hint: usize, since: Duration) -> Option<usize> {
        let words = self.busy_words();
        let since = nanos(since).max(1);
        (0..words.len())
            .map(|offset| (hint + offset) % words.len())
            .find(|&i| words[i].compare_exchange(0, since, Ordering::AcqRel, Ordering::Relaxed).is_ok())
    }

    fn release_busy(&self, index: usize) {
        self.busy_words()[index].store(0, Ordering::Release);
    }
}

/// How a worker reaches whoever supervises it.
enum Link {
    /// Forked by a master: flags go through the slot, and a byte on the master's wake pipe
    /// makes it look.
    Master { pid: Pid, wake: OwnedFd },
    /// One process without master (`run_single`): readiness goes straight to systemd.
    Single { notifier: Option<Notifier> },
}

/// Stop levels: 0 none, 1 graceful, 2 fast.
fn level(stop: Stop) -> u8 {
    match stop {
        Stop::Graceful => 1,
        Stop::Fast => 2,
    }
}

#[derive(Default)]
struct StopState {
    /// Highest level asked for.
    requested: u8,
    /// Highest level handed out by `wait_stop`.
    returned: u8,
}

type ReopenLogs = Arc<dyn Fn() + Send + Sync>;

struct Inner {
    slot: Slot,
    link: Link,
    /// The worker's signal dispositions once its handling was set up (empty until then).
    signals: Mutex<Vec<sys::Disposition>>,
    stop: Mutex<StopState>,
    stop_changed: Condvar,
    reopen_logs: Mutex<Option<ReopenLogs>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The worker's side of the link to its master. Cheap to clone; usable from any thread.
#[derive(Clone)]
pub struct WorkerHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("ready", &self.inner.slot.is_ready())
            .field("max_requests", &self.max_requests())
            .field("stop_requested", &self.stop_requested())
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The busy word this thread used last: its first choice next time.
    static BUSY_WORD: Cell<usize> = const { Cell::new(0) };
}

impl WorkerHandle {
    fn new(slot: Slot, link: Link) -> WorkerHandle {
        WorkerHandle {
            inner: Arc::new(Inner {
                slot,
                link,
                signals: Mutex::new(Vec::new()),
                stop: Mutex::new(StopState::default()),
                stop_changed: Condvar::new(),
                reopen_logs: Mutex::new(None),
            }),
        }
    }

    /// A handle for a process without master (`run_single`).
    pub(crate) fn single(slot: Slot, notifier: Option<Notifier>) -> WorkerHandle {
        WorkerHandle::new(slot, Link::Single { notifier })
    }

    fn wake_master(&self) {
        if let Link::Master { wake, .. } = &self.inner.link {
            // Non-blocking: a full pipe means the master has a wake-up pending already.
            let _ = nix::unistd::write(wake, b"w");
        }
    }

    /// A seat on the board of open connections that this worker shares with its master's other
    /// workers; `None` without a master or when every seat is taken. Publish the connections
    /// served through it and ask it before accepting (see [`Seat`]).
    pub fn take_seat(&self) -> Option<Seat> {
        self.inner.slot.board.as_ref()?.sit(std::process::id())
    }

    /// Tell the master this worker serves (model loaded, listening).
    pub fn ready(&self) {
        self.inner.slot.set_heartbeat(sys::monotonic());
        let first = self.inner.slot.mark_ready();
        match &self.inner.link {
            Link::Master { .. } => self.wake_master(),
            Link::Single { notifier: Some(notifier) } if first => {
                let _ = notifier.send(&format!("READY=1\nMAINPID={}\nSTATUS=serving", std::process::id()));
            }
            Link::Single { .. } => {}
        }
    }

    /// Mark the calling thread as inside a model call until the guard drops (timeout watch).
    pub fn busy(&self) -> BusyGuard {
        let slot = &self.inner.slot;
        match slot.claim_busy(BUSY_WORD.get(), sys::monotonic()) {
            Some(word) => {
                BUSY_WORD.set(word);
                BusyGuard { slot: Some(slot.clone()), word }
            }
            // More calls at once than words: this one goes unwatched.
            None => BusyGuard { slot: None, word: 0 },
        }
    }

    /// Alive tick; call at least once a second from the serving runtime. It also notices a
    /// master that died without the parent-death signal getting through (a graceful stop).
    pub fn heartbeat(&self) {
        self.inner.slot.set_heartbeat(sys::monotonic());
        if let Link::Master { pid, .. } = &self.inner.link {
            if nix::unistd::getppid() != *pid {
                self.request_stop(Stop::Graceful);
            }
        }
    }

    /// Ask the master to replace this worker (max-requests reached); it then gets a graceful stop
    /// once its replacement serves. Without a master (`run_single`) this does nothing.
    pub fn retire(&self) {
        if self.inner.slot.mark_retire() {
            self.wake_master();
        }
    }

    /// Ask the master for a reload (SIGHUP), as an operator's `kill -HUP` would: what the
    /// application reads in [`crate::App::prepare`] decides what the new generation serves.
    /// False without a master (`run_single`) or when the signal cannot be sent.
    pub fn request_reload(&self) -> bool {
        match &self.inner.link {
            Link::Master { pid, .. } => {
                nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGHUP).is_ok()
            }
            Link::Single { .. } => false,
        }
    }

    /// Block until the master asks this worker to stop (or the master is gone: Graceful).
    ///
    /// Each stop level is handed out once: after `Graceful`, the next call blocks until a fast
    /// stop is asked for; after `Fast`, every call returns `Fast` at once.
    pub fn wait_stop(&self) -> Stop {
        let mut state = lock(&self.inner.stop);
        loop {
            if state.requested > state.returned {
                state.returned = state.requested;
                break;
            }
            if state.returned == level(Stop::Fast) {
                break;
            }
            state = self.inner.stop_changed.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.returned == level(Stop::Fast) {
            Stop::Fast
        } else {
            Stop::Graceful
        }
    }

    /// The strongest stop asked for so far, without blocking.
    pub fn stop_requested(&self) -> Option<Stop> {
        match lock(&self.inner.stop).requested {
            0 => None,
            1 => Some(Stop::Graceful),
            _ => Some(Stop::Fast),
        }
    }

    /// Remember the signal dispositions as they are now: the worker's own.
    pub(crate) fn keep_signals(&self) -> io::Result<()> {
        *lock(&self.inner.signals) = sys::worker_dispositions()?;
        Ok(())
    }

    /// Put back the worker's own handling of its signals (TERM, QUIT, USR1, ... as the worker
    /// set them up) where code run since, a model's `load()` for one, changed it; the names of
    /// the signals put back. Call it after running model code on the worker's main thread.
    pub fn restore_signals(&self) -> Vec<&'static str> {
        sys::restore_dispositions(&lock(&self.inner.signals)).into_iter().map(Signal::as_str).collect()
    }

    /// Requests this worker serves before retiring (0 = unlimited), jitter applied.
    pub fn max_requests(&self) -> u64 {
        self.inner.slot.max_requests()
    }

    /// Run `reopen` (on the signal watcher thread) each time the master asks to reopen log
    /// files (SIGUSR1). Replaces an earlier callback.
    pub fn on_reopen_logs(&self, reopen: impl Fn() + Send + Sync + 'static) {
        *lock(&self.inner.reopen_logs) = Some(Arc::new(reopen));
    }

    fn reopen_logs(&self) {
        let reopen = lock(&self.inner.reopen_logs).clone();
        if let Some(reopen) = reopen {
            reopen();
        }
    }

    /// Record a stop request; weaker requests than one already made are ignored.
    pub(crate) fn request_stop(&self, stop: Stop) {
        let mut state = lock(&self.inner.stop);
        if level(stop) <= state.requested {
            return;
        }
        // Before anyone is woken: the process may exit as soon as a waiter returns.
        if let (0, Link::Single { notifier: Some(notifier) }) = (state.requested, &self.inner.link) {
            let _ = notifier.send("STOPPING=1\nSTATUS=stopping");
        }
        state.requested = level(stop);
        drop(state);
        self.inner.stop_changed.notify_all();
    }
}

/// Ends a model call's busy mark on drop.
#[derive(Debug)]
pub struct BusyGuard {
    slot: Option<Slot>,
    word: usize,
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.release_busy(self.word);
        }
    }
}

/// Which process the stop signals are watched in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A forked worker: TERM = graceful, QUIT = fast, USR1 = reopen logs.
    Worker,
    /// The only process (`run_single`): also INT = graceful, a second TERM or INT = fast, and
    /// HUP and USR2 are logged and ignored (no master to reload or upgrade).
    Single,
}

/// Stop signals turned into [`Stop`] requests on a thread of its own.
pub(crate) struct StopWatcher {
    signals: Signals,
    mode: Mode,
}

impl StopWatcher {
    /// Install the handlers (before the signals are unblocked, so none is lost).
    pub(crate) fn install(mode: Mode) -> io::Result<StopWatcher> {
        let signals = match mode {
            Mode::Worker => Signals::new([SIGTERM, SIGQUIT, SIGUSR1])?,
            Mode::Single => Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGHUP, SIGUSR2])?,
        };
        Ok(StopWatcher { signals, mode })
    }

    /// Start the watcher thread.
    pub(crate) fn spawn(mut self, handle: WorkerHandle, log: Option<Logger>) -> io::Result<()> {
        std::thread::Builder::new().name("stop-signals".into()).spawn(move || {
            for signal in self.signals.forever() {
                match signal {
                    SIGTERM | SIGINT if self.mode == Mode::Single && handle.stop_requested().is_some() => {
                        handle.request_stop(Stop::Fast)
                    }
                    SIGTERM | SIGINT => handle.request_stop(Stop::Graceful),
                    SIGQUIT => handle.request_stop(Stop::Fast),
                    SIGUSR1 => handle.reopen_logs(),
                    SIGHUP | SIGUSR2 => {
                        if let Some(log) = &log {
                            let what = if signal == SIGHUP { "reload ignored" } else { "upgrade ignored" };
                            info!(log, "{}", what; "why" => "single-process mode has no master");
                        }
                    }
                    _ => {}
                }
            }
        })?;
        Ok(())
    }
}

/// In a freshly forked child, after the master's handlers are reset: build the link to the
/// master, arrange to hear of its death, start the stop watcher and restore the signal mask
/// the master had before the fork (every signal is blocked until then).
pub(crate) fn enter_child(slot: Slot, master: Pid, wake: OwnedFd, mask: &SigSet) -> io::Result<WorkerHandle> {
    let handle = WorkerHandle::new(slot, Link::Master { pid: master, wake });
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
    let watcher = StopWatcher::install(Mode::Worker)?;
    // The master may have died before the parent-death signal was armed.
    if nix::unistd::getppid() != master {
        handle.request_stop(Stop::Graceful);
    }
    watcher.spawn(handle.clone(), None)?;
    handle.keep_signals()?;
    sys::set_signal_mask(mask)?;
    Ok(handle)
}

/// Run a worker body; a panic becomes an exit code: a boot failure if the worker never
/// reported ready, a crash (1) otherwise.
pub(crate) fn run_guarded(slot: &Slot, body: impl FnOnce() -> i32) -> i32 {
    panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(if slot.is_ready() {
        1
    } else {
        exit_code::BOOT_FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn single_handle(threads: usize) -> WorkerHandle {
        WorkerHandle::single(Slot::new(SharedMem::private(Slot::words_for(threads))), None)
    }

    #[test]
    fn handles_and_guards_can_move_between_threads() {
        fn shareable<T: Send + Sync + Clone>() {}
        fn sendable<T: Send>() {}
        shareable::<WorkerHandle>();
        sendable::<BusyGuard>();
    }

    #[test]
    fn busy_marks_are_set_and_cleared() {
        let handle = single_handle(1);
        assert_eq!(handle.inner.slot.oldest_busy(), None);
        let first = handle.busy();
        let since = handle.inner.slot.oldest_busy().expect("marked busy");
        let second = handle.busy();
        assert_eq!(handle.inner.slot.oldest_busy(), Some(since), "the oldest mark stays reported");
        drop(first);
        assert!(handle.inner.slot.oldest_busy().is_some(), "the second call is still running");
        drop(second);
        assert_eq!(handle.inner.slot.oldest_busy(), None);
    }

    #[test]
    fn busy_marks_beyond_capacity_are_unwatched_not_lost() {
        let handle = single_handle(1);
        let guards: Vec<BusyGuard> = (0..Slot::words_for(1) - BUSY + 3).map(|_| handle.busy()).collect();
        assert_eq!(guards.iter().filter(|g| g.slot.is_none()).count(), 3);
        drop(guards);
        assert_eq!(handle.inner.slot.oldest_busy(), None);
    }

    #[test]
    fn ready_and_retire_set_flags_and_heartbeat_moves() {
        let handle = single_handle(2);
        assert!(!handle.inner.slot.is_ready());
        handle.ready();
        assert!(handle.inner.slot.is_ready());
        let beat = handle.inner.slot.heartbeat();
        assert!(beat > Duration::ZERO);
        handle.retire();
        assert!(handle.inner.slot.wants_retire());
        handle.heartbeat();
        assert!(handle.inner.slot.heartbeat() >= beat);
    }

    #[test]
    fn each_stop_level_is_handed_out_once() {
        let handle = single_handle(1);
        assert_eq!(handle.stop_requested(), None);
        handle.request_stop(Stop::Graceful);
        assert_eq!(handle.wait_stop(), Stop::Graceful);
        let waiter = {
            let handle = handle.clone();
            std::thread::spawn(move || handle.wait_stop())
        };
        handle.request_stop(Stop::Graceful);
        handle.request_stop(Stop::Fast);
        assert_eq!(waiter.join().expect("waiter"), Stop::Fast);
        assert_eq!(handle.wait_stop(), Stop::Fast);
        handle.request_stop(Stop::Graceful);
        assert_eq!(handle.stop_requested(), Some(Stop::Fast));
    }

    #[test]
    fn signal_dispositions_changed_since_are_put_back() {
        use nix::sys::signal::{signal, SigHandler};
        let handle = single_handle(1);
        handle.keep_signals().expect("read the dispositions");
        assert!(handle.restore_signals().is_empty(), "nothing changed yet");
        // Model code takes a signal of the worker's (as Python's signal.signal would).
        // SAFETY: SIG_IGN runs no code; no other test uses SIGUSR2.
        unsafe { signal(Signal::SIGUSR2, SigHandler::SigIgn) }.expect("ignore SIGUSR2");
        assert_eq!(handle.restore_signals(), ["SIGUSR2"]);
        assert!(handle.restore_signals().is_empty(), "put back once");
    }

    #[test]
    fn max_requests_comes_from_the_slot() {
        let handle = single_handle(1);
        assert_eq!(handle.max_requests(), 0);
        handle.inner.slot.set_max_requests(1234);
        assert_eq!(handle.max_requests(), 1234);
    }

    #[test]
    fn a_panic_before_ready_is_a_boot_failure() {
        let slot = Slot::new(SharedMem::private(Slot::words_for(1)));
        assert_eq!(run_guarded(&slot, || panic!("model did not load")), exit_code::BOOT_FAILURE);
        slot.mark_ready();
        assert_eq!(run_guarded(&slot, || panic!("bug while serving")), 1);
        assert_eq!(run_guarded(&slot, || 0), 0);
    }
}
