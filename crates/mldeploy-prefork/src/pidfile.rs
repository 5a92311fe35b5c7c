//! The pidfile: the master's pid written at start (atomically, through a temporary file and a
//! rename) and removed at exit if it still names this process. A pidfile naming a live process
//! other than this one is refused, so two masters are not started on one pidfile.
//!
//! During an upgrade (USR2) the old master renames its pidfile to `<pidfile>.oldbin`, as nginx
//! does, and the new master writes `<pidfile>`; if the new master fails, the old one renames
//! `<pidfile>.oldbin` back. So `<pidfile>` names the master that serves.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::Error;

/// A written pidfile; removed on drop.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    pid: u32,
    /// It was moved to [`Pidfile::aside_path`] for an upgrade.
    aside: bool,
}

fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn is_alive(pid: i32) -> bool {
    // EPERM means it exists but belongs to someone else.
    pid > 0
        && !matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        )
}

impl Pidfile {
    /// Write this process's pid to `path`.
    pub fn create(path: &Path) -> Result<Pidfile, Error> {
        let pid = std::process::id();
        if let Some(other) = read_pid(path) {
            if u32::try_from(other).ok() != Some(pid) && is_alive(other) {
                return Err(Error::AlreadyRunning { path: path.to_owned(), pid: other });
            }
        }
        let io_error =
            |source: io::Error| Error::Io { what: format!("writing pidfile {}", path.display()), source };
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(format!(".{pid}.tmp"));
        fs::write(&temporary, format!("{pid}\n")).map_err(io_error)?;
        fs::rename(&temporary, path).map_err(|e| {
            let _ = fs::remove_file(&temporary);
            io_error(e)
        })?;
        Ok(Pidfile { path: path.to_owned(), pid, aside: false })
    }

    /// Where it was written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it goes while a new master starts: `<pidfile>.oldbin`.
    pub fn aside_path(&self) -> PathBuf {
        let mut aside = self.path.as_os_str().to_owned();
        aside.push(".oldbin");
        PathBuf::from(aside)
    }

    /// Where it is now.
    fn location(&self) -> PathBuf {
        if self.aside {
            self.aside_path()
        } else {
            self.path.clone()
        }
    }

    /// Rename it to [`Pidfile::aside_path`], so that a new master can write its own.
    pub(crate) fn move_aside(&mut self) -> Result<(), Error> {
        if self.aside {
            return Ok(());
        }
        let aside = self.aside_path();
        fs::rename(&self.path, &aside).map_err(|source| Error::Io {
            what: format!("renaming pidfile {} to {}", self.path.display(), aside.display()),
            source,
        })?;
        self.aside = true;
        Ok(())
    }

    /// Rename it back (the new master failed): the pidfile names this master again, whatever
    /// the new master wrote there.
    pub(crate) fn restore(&mut self) -> Result<(), Error> {
        if !self.aside {
            return Ok(());
        }
        let aside = self.aside_path();
        fs::rename(&aside, &self.path).map_err(|source| Error::Io {
            what: format!("renaming pidfile {} back to {}", aside.display(), self.path.display()),
            source,
        })?;
        self.aside = false;
        Ok(())
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let location = self.location();
        if read_pid(&location).and_then(|pid| u32::try_from(pid).ok()) == Some(self.pid) {
            let _ = fs::remove_file(&location);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("prefork-{name}-{}.pid", std::process::id()))
    }

    #[test]
    fn written_then_removed() {
        let path = temp_path("written");
        let pidfile = Pidfile::create(&path).expect("create");
        assert_eq!(read_pid(&path), Some(std::process::id() as i32));
        drop(pidfile);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_pidfile_is_replaced() {
        let path = temp_path("stale");
        // No process has pid i32::MAX (above pid_max).
        fs::write(&path, format!("{}\n", i32::MAX)).expect("write");
        let pidfile = Pidfile::create(&path).expect("a dead pid is stale");
        assert_eq!(read_pid(&path), Some(std::process::id() as i32));
        drop(pidfile);
    }

    #[test]
    fn a_live_other_process_is_refused() {
        let path = temp_path("live");
        // The process that started this test is alive and is not this one.
        let parent = nix::unistd::getppid().as_raw();
        fs::write(&path, format!("{parent}\n")).expect("write");
        let result = Pidfile::create(&path);
        assert!(matches!(result, Err(Error::AlreadyRunning { pid, .. }) if pid == parent));
        assert_eq!(read_pid(&path), Some(parent), "left as it was");
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn moved_aside_for_an_upgrade_and_back() {
        let path = temp_path("aside");
        let mut pidfile = Pidfile::create(&path).expect("create");
        pidfile.move_aside().expect("aside");
        let aside = pidfile.aside_path();
        assert!(!path.exists());
        assert_eq!(read_pid(&aside), Some(std::process::id() as i32));
        // A new master writes its own, then fails: ours is put back over it.
        fs::write(&path, "1\n").expect("the new master's pidfile");
        pidfile.restore().expect("restore");
        assert!(!aside.exists());
        assert_eq!(read_pid(&path), Some(std::process::id() as i32));
        // Aside again, and the new master serves: dropping removes the .oldbin file only.
        pidfile.move_aside().expect("aside");
        fs::write(&path, "1\n").expect("the new master's pidfile");
        drop(pidfile);
        assert!(!aside.exists());
        assert_eq!(read_pid(&path), Some(1));
        let _ = fs::remove_file(&path);
    }

    #[test]
    fn not_removed_when_taken_over() {
        let path = temp_path("taken");
        let pidfile = Pidfile::create(&path).expect("create");
        fs::write(&path, "1\n").expect("another master took over");
        drop(pidfile);
        assert_eq!(read_pid(&path), Some(1));
        let _ = fs::remove_file(&path);
    }
}
