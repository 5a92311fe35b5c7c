//! Every `unsafe` operation of the crate, each behind a small safe function: shared memory,
//! the master's signal handlers, fork, fork and exec of a new master, inherited sockets and
//! pipes, the allocator's purge.
//!
//! Contract: the master runs no thread besides its main one whenever it forks (the crate starts
//! none, and [`App`](crate::App) implementations must not start any in the master), so a forked
//! child is a complete, consistent copy of the master.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::ManuallyDrop;
use std::net::TcpListener;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::socket::{self, sockopt, AddressFamily, SockaddrLike, SockaddrStorage};
use nix::unistd::ForkResult;

/// Time on `CLOCK_MONOTONIC`, which every process of the machine shares: workers write heartbeats
/// with it and the master compares them with its own reading.
pub(crate) fn monotonic() -> Duration {
    // CLOCK_MONOTONIC cannot fail on Linux; zero only makes a heartbeat look old.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map(Duration::from).unwrap_or_default()
}

/// Hands the free pages of every jemalloc arena back to the system at once, instead of
/// letting jemalloc's decay return them over the next seconds.
pub(crate) fn trim_heap() {
    // "arena.<MALLCTL_ARENAS_ALL>.purge"; MALLCTL_ARENAS_ALL is 4096 in jemalloc 5.
    const PURGE_ALL_ARENAS: &[u8] = b"arena.4096.purge\0";
    // SAFETY: the name is a NUL-terminated mallctl name; purging reads and writes no value, so
    // both value pointers are null and the new value's length is zero, as mallctl expects.
    let status = unsafe {
        tikv_jemalloc_sys::mallctl(
            PURGE_ALL_ARENAS.as_ptr().cast(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    debug_assert_eq!(status, 0, "jemalloc refused to purge its arenas");
}

/// Words of memory: either an anonymous shared mapping (inherited by children forked after it
/// was made, so they and the master see the same words) or ordinary private memory.
pub(crate) struct SharedMem {
    ptr: NonNull<AtomicU64>,
    len: usize,
    mapped: bool,
}

// SAFETY: `SharedMem` owns its words like a `Box<[AtomicU64]>` and only lends shared references
// to atomics, which may be used from any thread.
unsafe impl Send for SharedMem {}
// SAFETY: as above: all access goes through `&AtomicU64`.
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// `len` zeroed words in a `MAP_SHARED | MAP_ANONYMOUS` mapping.
    pub(crate) fn shared(len: usize) -> io::Result<SharedMem> {
        let bytes = len
            .checked_mul(size_of::<AtomicU64>())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "shared memory size overflows"))?;
        let Some(bytes) = NonZeroUsize::new(bytes) else {
            return Ok(SharedMem::private(0));
        };
        // SAFETY: a new anonymous mapping aliases no memory of this process; the kernel fills it
        // with zero bytes, which are valid `AtomicU64`s, and page alignment satisfies theirs.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                bytes,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
            )
        }?;
        Ok(SharedMem { ptr: ptr.cast(), len, mapped: true })
    }

    /// `len` zeroed words of private memory (one process, tests).
    pub(crate) fn private(len: usize) -> SharedMem {
        let words: Box<[AtomicU64]> = (0..len).map(|_| AtomicU64::new(0)).collect();
        let ptr = NonNull::from(Box::leak(words)).cast::<AtomicU64>();
        SharedMem { ptr, len, mapped: false }
    }

    pub(crate) fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` points to `len` initialised words owned by `self`, alive while it is.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Keep the memory for the rest of the process.
    pub(crate) fn leak(self) -> &'static [AtomicU64] {
        let kept = ManuallyDrop::new(self);
        // SAFETY: `Drop` never runs for `kept`, so the words are never unmapped or freed.
        unsafe { std::slice::from_raw_parts(kept.ptr.as_ptr(), kept.len) }
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: the mapping was made by `shared` with this length, and no reference into it
            // outlives `self` (`words` borrows `self`).
            let _ = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len * size_of::<AtomicU64>()) };
        } else {
            let slice = std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
            // SAFETY: `ptr` and `len` come from `Box::leak` of a `Box<[AtomicU64]>` in `private`.
            drop(unsafe { Box::from_raw(slice) });
        }
    }
}

/// The signals the master acts on.
pub(crate) const MASTER_SIGNALS: [Signal; 9] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Signals received by the master and not yet taken, counted per signal number.
static PENDING: [AtomicU32; 32] = [const { AtomicU32::new(0) }; 32];
/// Write end of the master's wake pipe, or -1.
static WAKE_FD: AtomicI32 = AtomicI32::new(-1);

/// The master's handler: count the signal and wake the loop; nothing else.
extern "C" fn queue_master_signal(signo: libc::c_int) {
    let saved = Errno::last_raw();
    if let Some(count) = usize::try_from(signo).ok().and_then(|i| PENDING.get(i)) {
        count.fetch_add(1, Ordering::Relaxed);
    }
    let fd = WAKE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe and the buffer is a valid static byte; the pipe is
        // non-blocking, so a full pipe returns EAGAIN (the loop is awake anyway).
        unsafe { libc::write(fd, b"s".as_ptr().cast(), 1) };
    }
    Errno::set_raw(saved);
}

fn set_disposition(signal: Signal, handler: SigHandler, flags: SaFlags) -> io::Result<()> {
    let action = SigAction::new(handler, flags, SigSet::empty());
    // SAFETY: the handlers used here are SIG_DFL, SIG_IGN or `queue_master_signal`, which only
    // touches atomics and calls write(2), all async-signal-safe.
    unsafe { signal::sigaction(signal, &action) }?;
    Ok(())
}

/// Route the master's signals to [`queue_master_signal`], which writes a byte to `wake`.
pub(crate) fn install_master_handlers(wake: RawFd) -> io::Result<()> {
    WAKE_FD.store(wake, Ordering::Relaxed);
    for signal in MASTER_SIGNALS {
        set_disposition(
            signal,
            SigHandler::Handler(queue_master_signal),
            SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        )?;
    }
    Ok(())
}

/// Put the master's signals back to their defaults.
pub(crate) fn remove_master_handlers() {
    for signal in MASTER_SIGNALS {
        let _ = set_disposition(signal, SigHandler::SigDfl, SaFlags::empty());
    }
    WAKE_FD.store(-1, Ordering::Relaxed);
}

/// How many times `signal` arrived since the last call.
pub(crate) fn take_pending(signal: Signal) -> u32 {
    PENDING[signal as usize].swap(0, Ordering::Relaxed)
}

/// Fork a child that runs `child` and exits with the code it returns; the parent gets the
/// child's pid. The child starts with the master's handlers reset (the result of that is
/// handed to `child`) and every signal blocked: `child` restores the mask it is given once its
/// own signal handling is in place.
pub(crate) fn fork_child(child: impl FnOnce(io::Result<()>, &SigSet) -> i32) -> io::Result<i32> {
    // Block every signal across fork so the child cannot run a master handler before it has
    // reset them.
    let mut mask = SigSet::empty();
    signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), Some(&mut mask))?;
    // SAFETY: per the module contract the master has no other thread, so the child is a
    // consistent copy (no lock held elsewhere); the child runs `child` and leaves through
    // `process::exit` without ever returning into the master's code.
    let forked = unsafe { nix::unistd::fork() };
    if let Ok(ForkResult::Child) = forked {
        let code = child(reset_signals_in_worker(), &mask);
        std::process::exit(code);
    }
    let restored = set_signal_mask(&mask);
    let ForkResult::Parent { child } = forked? else {
        unreachable!("the child branch exits above");
    };
    restored?;
    Ok(child.as_raw())
}

/// In a freshly forked worker: forget the master's handlers. Stop, log and reload signals get
/// their worker meaning later; terminal and scaling signals are the master's business.
fn reset_signals_in_worker() -> io::Result<()> {
    WAKE_FD.store(-1, Ordering::Relaxed);
    for signal in MASTER_SIGNALS {
        set_disposition(signal, SigHandler::SigDfl, SaFlags::empty())?;
    }
    for signal in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGTTIN, Signal::SIGTTOU, Signal::SIGUSR2] {
        set_disposition(signal, SigHandler::SigIgn, SaFlags::empty())?;
    }
    Ok(())
}

/// The signals whose handling a worker keeps as it set it up: model code that changes one
/// (Python's `signal.signal` in a model's `load()`) is undone by [`restore_dispositions`].
pub(crate) const WORKER_SIGNALS: [Signal; 9] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGPIPE,
];

/// Linux's flag for the C library's signal-return trampoline (not exported by `libc` for every
/// target).
const SA_RESTORER: libc::c_int = 0x0400_0000;

/// A signal's disposition as the kernel holds it.
#[derive(Clone, Copy)]
pub(crate) struct Disposition {
    signal: Signal,
    action: libc::sigaction,
}

// SAFETY: a `sigaction` is plain data (a handler address, a mask and flags), valid in any thread
// of the process it was read in.
unsafe impl Send for Disposition {}
// SAFETY: as above; it is only read.
unsafe impl Sync for Disposition {}

fn read_disposition(signal: Signal) -> io::Result<Disposition> {
    // SAFETY: an all-zero `sigaction` is a valid value (SIG_DFL, empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: a null new action makes sigaction(2) only write the current one into `action`,
    // a valid, writable `sigaction`.
    if unsafe { libc::sigaction(signal as libc::c_int, std::ptr::null(), &mut action) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Disposition { signal, action })
}

/// The current dispositions of [`WORKER_SIGNALS`].
pub(crate) fn worker_dispositions() -> io::Result<Vec<Disposition>> {
    WORKER_SIGNALS.into_iter().map(read_disposition).collect()
}

/// Put back every disposition of `saved` that differs from the current one; the signals put
/// back.
pub(crate) fn restore_dispositions(saved: &[Disposition]) -> Vec<Signal> {
    let mut restored = Vec::new();
    for saved in saved {
        let Ok(now) = read_disposition(saved.signal) else { continue };
        // The C library adds SA_RESTORER (its return trampoline) to every action it installs.
        let flags = |d: &Disposition| d.action.sa_flags & !SA_RESTORER;
        if now.action.sa_sigaction == saved.action.sa_sigaction && flags(&now) == flags(saved) {
            continue;
        }
        // SAFETY: `saved.action` was read from the kernel for this signal in this process: its
        // handler (SIG_DFL, SIG_IGN or the handler installed then, which is still mapped) is
        // what the worker itself installed.
        if unsafe { libc::sigaction(saved.signal as libc::c_int, &saved.action, std::ptr::null_mut()) } == 0 {
            restored.push(saved.signal);
        }
    }
    restored
}

/// What a new master is started with: the program, its arguments (`argv[0]` first) and its
/// environment, without `LISTEN_PID` (the child adds its own pid).
pub(crate) struct Exec {
    pub(crate) program: CString,
    pub(crate) args: Vec<CString>,
    pub(crate) env: Vec<CString>,
}

/// Fork a child that runs `exec.program` with the descriptors `pass` at 3, 4, ... (inherited
/// across exec, every other descriptor of the process being close-on-exec) and `LISTEN_PID`
/// set to its own pid, as systemd passes sockets. The child gets the master's signals (and
/// SIGPIPE) at their default disposition and the caller's signal mask; unlike a worker, it is
/// not told when the master dies. Returns the child's pid; if exec fails, the child says why
/// on standard error and exits with 127.
pub(crate) fn fork_exec(exec: &Exec, pass: &[BorrowedFd<'_>]) -> io::Result<i32> {
    let start = LISTEN_FDS_START + i32::try_from(pass.len()).unwrap_or(i32::MAX - LISTEN_FDS_START);
    let mut mask = SigSet::empty();
    signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::all()), Some(&mut mask))?;
    // SAFETY: by the crate's contract the master has no other thread, so the child is a
    // consistent copy (no lock held elsewhere; allocating is safe). The child only rearranges
    // its descriptors and signals and replaces itself with `execve`, or leaves with `_exit`
    // without running any of the master's code or destructors.
    let forked = unsafe { nix::unistd::fork() };
    if let Ok(ForkResult::Child) = forked {
        let error = exec_in_child(exec, pass, start, &mask);
        eprintln!("cannot start {:?}: {error}", exec.program);
        // SAFETY: _exit ends this forked child at once, without running the master's atexit
        // handlers or destructors; it has no other precondition.
        unsafe { libc::_exit(127) };
    }
    let restored = set_signal_mask(&mask);
    let ForkResult::Parent { child } = forked? else {
        unreachable!("the child branch exits above");
    };
    restored?;
    Ok(child.as_raw())
}

/// The child's side of [`fork_exec`]; returns only if something failed.
fn exec_in_child(exec: &Exec, pass: &[BorrowedFd<'_>], start: RawFd, mask: &SigSet) -> io::Error {
    let attempt = || -> io::Result<()> {
        WAKE_FD.store(-1, Ordering::Relaxed);
        for signal in MASTER_SIGNALS.into_iter().chain([Signal::SIGPIPE]) {
            set_disposition(signal, SigHandler::SigDfl, SaFlags::empty())?;
        }
        // Copies above the target range first, so that no target overwrites a source.
        let mut high = Vec::with_capacity(pass.len());
        for fd in pass {
            high.push(fcntl(*fd, FcntlArg::F_DUPFD_CLOEXEC(start))?);
        }
        for (target, fd) in (LISTEN_FDS_START..).zip(&high) {
            // SAFETY: dup2 only makes `target` a copy of an open descriptor; whatever `target`
            // was in this child (which is about to exec) is closed by it. The new descriptor
            // is not close-on-exec: it is handed to the new program.
            if unsafe { libc::dup2(*fd, target) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut env = exec.env.clone();
        env.push(CString::new(format!("LISTEN_PID={}", std::process::id())).map_err(io::Error::other)?);
        set_signal_mask(mask)?;
        let program: &CStr = &exec.program;
        match nix::unistd::execve(program, &exec.args, &env) {
            Ok(never) => match never {},
            Err(e) => Err(e.into()),
        }
    };
    match attempt() {
        Ok(()) => io::Error::other("execve returned"),
        Err(e) => e,
    }
}

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub(crate) const LISTEN_FDS_START: RawFd = 3;

/// Take over the writing end of a pipe inherited across exec (`fd`): the new master's line to
/// the master that started it.
pub(crate) fn inherited_pipe(fd: RawFd) -> io::Result<OwnedFd> {
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("inherited fd {fd}: {what}"));
    if fd < 0 {
        return Err(invalid("not a descriptor"));
    }
    // SAFETY: F_GETFD reads descriptor flags and touches no memory; it fails with EBADF if `fd`
    // is not open, which is what this checks before taking ownership.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(invalid("not an open file descriptor"));
    }
    // SAFETY: the fd is open and was passed to this process to own; the caller removed the
    // variable naming it from the environment, so it is taken only once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(owned.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    let stat = nix::sys::stat::fstat(&owned)?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(invalid("not a pipe"));
    }
    Ok(owned)
}

/// Set the signal mask of the calling thread.
pub(crate) fn set_signal_mask(mask: &SigSet) -> io::Result<()> {
    signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(mask), None)?;
    Ok(())
}

/// Take over a socket inherited from systemd (`LISTEN_FDS`) as a listener.
pub(crate) fn inherited_listener(fd: RawFd) -> io::Result<TcpListener> {
    let invalid =
        |what: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("inherited fd {fd}: {what}"));
    // SAFETY: F_GETFD reads descriptor flags and touches no memory; it fails with EBADF if `fd`
    // is not open, which is what this checks before taking ownership.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(invalid("not an open file descriptor"));
    }
    // SAFETY: the fd is open and systemd passed it to this process to own; the caller removed
    // LISTEN_FDS from the environment, so it is taken only once.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    fcntl(owned.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    if socket::getsockopt(&owned, sockopt::SockType).ok() != Some(socket::SockType::Stream) {
        return Err(invalid("not a stream socket"));
    }
    let local: SockaddrStorage = socket::getsockname(owned.as_raw_fd())?;
    if !matches!(local.family(), Some(AddressFamily::Inet | AddressFamily::Inet6)) {
        return Err(invalid("not an IPv4 or IPv6 socket"));
    }
    if !socket::getsockopt(&owned, sockopt::AcceptConn)? {
        return Err(invalid("not listening"));
    }
    Ok(TcpListener::from(owned))
}
