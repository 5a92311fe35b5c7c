//! Binary upgrade (USR2), as nginx and unicorn do it.
//!
//! The master starts a new master from the program it was itself started as (the file at that
//! path now, which a package upgrade has replaced), with the same arguments and environment.
//! The new master is handed the listening sockets as systemd hands them (`LISTEN_FDS`,
//! `LISTEN_PID`, from fd 3 on), so [`crate::bind_listeners`] takes them over and no connection
//! is refused, and the writing end of a pipe (named by [`READY_FD`]). It writes one byte there
//! once every worker of its first generation is ready; the old master then stops its own
//! workers gracefully and exits. If the new master exits first, or is not ready in time, the
//! old one kills it and serves on.
//!
//! The new master is a child of the old one (forked, then exec'd) until the old one exits; it
//! is then reparented (to init, systemd or a subreaper). Its workers are its own children.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;

use crate::sys;

/// The variable that names, in a new master, the descriptor it reports ready on.
pub(crate) const READY_FD: &str = "MLDEPLOY_UPGRADE_FD";

/// Variables of this process's start that a new master gets fresh values for.
const REPLACED: [&str; 4] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", READY_FD];

/// How this process was started: what a new master is started as.
#[derive(Debug, Clone)]
pub(crate) struct Relaunch {
    /// The program `argv[0]` named at start, as an absolute path (symbolic links not followed,
    /// so a link moved to a new release is followed at the upgrade).
    program: PathBuf,
    /// The arguments, `argv[0]` first.
    args: Vec<OsString>,
    /// The environment.
    env: Vec<(OsString, OsString)>,
}

impl Relaunch {
    /// This process's program, arguments and environment. Call it at start, before the
    /// environment is changed (the notification socket is taken out of it later) and before the
    /// program file can be replaced; `None` when the program cannot be found.
    pub(crate) fn capture() -> Option<Relaunch> {
        let args: Vec<OsString> = std::env::args_os().collect();
        // The master never changes directory: a relative name means the same file later.
        let cwd = std::env::current_dir().unwrap_or_default();
        let path = std::env::var_os("PATH");
        let program = (args.first())
            .and_then(|argv0| resolve_program(argv0, &cwd, path.as_deref()))
            .or_else(|| std::env::current_exe().ok())?;
        let env = std::env::vars_os()
            .filter(|(name, _)| !REPLACED.iter().any(|r| name.as_os_str() == OsStr::new(r)))
            .collect();
        Some(Relaunch { program, args, env })
    }

    /// The program a new master runs.
    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// The exec of a new master handed `listeners` sockets, then the ready pipe.
    fn exec(&self, listeners: usize) -> io::Result<sys::Exec> {
        let c_string = |bytes: Vec<u8>| CString::new(bytes).map_err(io::Error::other);
        let ready_fd = sys::LISTEN_FDS_START as usize + listeners;
        let mut env = Vec::with_capacity(self.env.len() + 2);
        for (name, value) in &self.env {
            let mut entry = name.clone().into_vec();
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            env.push(c_string(entry)?);
        }
        env.push(c_string(format!("LISTEN_FDS={listeners}").into_bytes())?);
        env.push(c_string(format!("{READY_FD}={ready_fd}").into_bytes())?);
        Ok(sys::Exec {
            program: c_string(self.program.clone().into_os_string().into_vec())?,
            args: self.args.iter().map(|arg| c_string(arg.clone().into_vec())).collect::<io::Result<_>>()?,
            env,
        })
    }
}

/// The program `argv0` names, as a shell would find it: a name with a slash is a path
/// (relative ones from `cwd`), a plain name is looked up in `path`.
pub(crate) fn resolve_program(argv0: &OsStr, cwd: &Path, path: Option<&OsStr>) -> Option<PathBuf> {
    if argv0.is_empty() {
        return None;
    }
    let named = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        return Some(cwd.join(named));
    }
    std::env::split_paths(path?).map(|dir| cwd.join(dir).join(named)).find(|candidate| {
        std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}

/// A new master on its way.
#[derive(Debug)]
pub(crate) struct Started {
    pub(crate) pid: i32,
    /// The reading end of its ready pipe (non-blocking).
    pub(crate) ready: OwnedFd,
}

/// Start a new master as `relaunch` says, handing it `listeners` and a ready pipe.
pub(crate) fn start(relaunch: &Relaunch, listeners: &[TcpListener]) -> io::Result<Started> {
    let (ready, report) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let exec = relaunch.exec(listeners.len())?;
    let pass: Vec<BorrowedFd<'_>> =
        listeners.iter().map(AsFd::as_fd).chain(std::iter::once(report.as_fd())).collect();
    let pid = sys::fork_exec(&exec, &pass)?;
    // Only the new master holds the writing end now: if it ends, the pipe says so.
    drop(report);
    Ok(Started { pid, ready })
}

/// In a master an upgrade started: the pipe to report ready on, taken out of the environment.
pub(crate) fn take_ready_pipe() -> io::Result<Option<OwnedFd>> {
    let Some(value) = std::env::var_os(READY_FD) else {
        return Ok(None);
    };
    std::env::remove_var(READY_FD);
    let fd = (value.to_str().and_then(|v| v.parse().ok()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{READY_FD} is not a number")))?;
    sys::inherited_pipe(fd).map(Some)
}

/// Tell the old master that this one serves.
pub(crate) fn report_ready(pipe: OwnedFd) -> io::Result<()> {
    nix::unistd::write(&pipe, b"R")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_is_taken_as_it_is_from_the_working_directory() {
        let cwd = Path::new("/srv/app");
        let resolve = |argv0: &str| resolve_program(OsStr::new(argv0), cwd, None);
        assert_eq!(resolve("/usr/local/bin/mldeploy"), Some(PathBuf::from("/usr/local/bin/mldeploy")));
        assert_eq!(resolve("bin/mldeploy"), Some(PathBuf::from("/srv/app/bin/mldeploy")));
        assert_eq!(resolve("./mldeploy"), Some(PathBuf::from("/srv/app/./mldeploy")));
        assert_eq!(resolve(""), None);
        assert_eq!(resolve("mldeploy"), None, "a plain name without PATH");
    }

    #[test]
    fn a_plain_name_is_looked_up_in_path() {
        let dir = std::env::temp_dir().join(format!("prefork-upgrade-path-{}", std::process::id()));
        let (first, second) = (dir.join("first"), dir.join("second"));
        std::fs::create_dir_all(&first).expect("dir");
        std::fs::create_dir_all(&second).expect("dir");
        // Not executable in the first directory, executable in the second.
        std::fs::write(first.join("server"), "").expect("write");
        std::fs::write(second.join("server"), "").expect("write");
        let executable = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(second.join("server"), executable).expect("chmod");
        let path = std::env::join_paths([&first, &second]).expect("PATH");
        let found = resolve_program(OsStr::new("server"), Path::new("/"), Some(&path));
        assert_eq!(found, Some(second.join("server")));
        assert_eq!(resolve_program(OsStr::new("absent"), Path::new("/"), Some(&path)), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_new_master_gets_the_listeners_count_and_the_ready_descriptor() {
        let relaunch = Relaunch {
            program: PathBuf::from("/opt/mldeploy"),
            args: vec!["mldeploy".into(), "serve".into()],
            env: vec![("HOME".into(), "/home/x".into())],
        };
        let exec = relaunch.exec(2).expect("exec");
        assert_eq!(exec.program.as_bytes(), b"/opt/mldeploy");
        assert_eq!(exec.args.len(), 2);
        let env: Vec<&[u8]> = exec.env.iter().map(|e| e.as_bytes()).collect();
        assert_eq!(env, [&b"HOME=/home/x"[..], b"LISTEN_FDS=2", b"MLDEPLOY_UPGRADE_FD=5"]);
    }
}
