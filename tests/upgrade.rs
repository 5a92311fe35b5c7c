//! Binary upgrade (USR2) of the real server. A copy of the mldeploy binary runs from a directory
//! of its own; the test replaces that file as a package upgrade does (a new file written next
//! to it, then renamed over it) and sends the master USR2. The new master is the old master's
//! child until the old one exits; this process is a subreaper, so the new master is its child
//! after that, and is reaped here. Every process of a server's group is killed and reaped when
//! the test ends, whatever happened.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use common::libc_sig::{SIGKILL, SIGTERM, SIGUSR2};
use common::wrk::Wrk;
use common::{children_of, wait_until, Server};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const PREDICT: &str = "/api/ml/predict";
const LIMIT: Duration = Duration::from_secs(60);

/// Orphans of the servers started here (a new master whose old master exited) become this
/// process's children, so that they can be reaped.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| nix::sys::prctl::set_child_subreaper(true).expect("become a subreaper"));
}

/// A directory with a copy of the mldeploy binary in it, removed on drop.
struct Install {
    dir: PathBuf,
    program: PathBuf,
}

impl Install {
    fn new(name: &str) -> Install {
        let dir = std::env::temp_dir().join(format!("mldeploy-upgrade-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the install directory");
        let install = Install { program: dir.join("mldeploy"), dir };
        install.replace_with(&std::fs::read(common::binary()).expect("read the mldeploy binary"));
        install
    }

    /// Put `contents` at the program's path as a package manager does: written to a new file,
    /// then renamed over the old one (which running processes keep).
    fn replace_with(&self, contents: &[u8]) {
        let next = self.dir.join(".mldeploy.new");
        std::fs::write(&next, contents).expect("write the new program");
        std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::rename(&next, &self.program).expect("rename the new program into place");
    }

    fn inode(&self) -> u64 {
        std::fs::metadata(&self.program).expect("the program").ino()
    }

    fn pidfile(&self) -> PathBuf {
        self.dir.join("mldeploy.pid")
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server started from an [`Install`]; dropping it kills its process group (old master, new
/// master, every worker) and reaps what became this process's children (fields drop in order:
/// the old master is reaped by its `Server` first).
struct Upgradable {
    server: Server,
    _group: Group,
}

impl Upgradable {
    fn start(install: &Install, workers: &str) -> Upgradable {
        become_subreaper();
        let pidfile = install.pidfile();
        let args = ["serve", "--workers", workers, "--threads", "2", "--pidfile", pidfile.to_str().unwrap()];
        let server = Server::wait_ready(Server::spawn_program(install.program.clone(), &args, &[]));
        let group = Group(server.pid());
        Upgradable { server, _group: group }
    }
}

/// A process group whose processes are killed and reaped on drop.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        common::kill(-self.0, SIGKILL);
        reap_group(self.0);
    }
}

/// `(ppid, pgrp)` of a process, zombies included.
fn parent_and_group(pid: i32) -> Option<(i32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.get(1)?.parse().ok()?, fields.get(2)?.parse().ok()?))
}

/// Reap the processes of group `pgid` that are this process's children, until the group is
/// empty (bounded).
fn reap_group(pgid: i32) {
    let me = std::process::id() as i32;
    wait_until(LIMIT, || {
        let ours: Vec<i32> = (std::fs::read_dir("/proc").into_iter().flatten().flatten())
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter(|&pid| parent_and_group(pid) == Some((me, pgid)))
            .collect();
        for pid in ours {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
        nix::sys::signal::killpg(Pid::from_raw(pgid), None).is_err()
    });
}

/// The pid in the pidfile.
fn pidfile_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Predictions answered 200 by the master that serves now (each master has its own metrics).
fn predictions_served(server: &Server) -> f64 {
    let text = common::http::get(server.addr, "/metrics").map(|r| r.text()).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("mldeploy_requests_total{"))
        .filter(|l| l.contains(r#"route="/api/ml/predict""#) && l.contains(r#"status="200""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn wait_predictions(server: &Server, more: f64) {
    let ok = wait_until(LIMIT, || predictions_served(server) >= more);
    assert!(ok, "fewer than {more} predictions served\n{}", server.output());
}

/// Wait until the pidfile names a master other than `old`; that pid.
fn wait_new_master(server: &Server, pidfile: &Path, old: i32) -> i32 {
    let mut new = None;
    let named = wait_until(LIMIT, || {
        new = pidfile_pid(pidfile).filter(|&pid| pid != old);
        new.is_some()
    });
    assert!(named, "the pidfile still names {old}\n{}", server.output());
    new.expect("set when named")
}

/// Stop the new master (this process's child now) with TERM, reap it; its exit status.
fn stop_adopted(server: &Server, pid: i32) -> WaitStatus {
    common::kill(pid, SIGTERM);
    let mut status = None;
    let stopped = wait_until(LIMIT, || {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(other) => status = Some(other),
            Err(e) => panic!("the new master {pid} is not this process's child: {e}"),
        }
        status.is_some()
    });
    assert!(stopped, "the new master did not stop\n{}", server.output());
    status.expect("set when stopped")
}

#[test]
fn usr2_to_a_replaced_binary_under_wrk_fails_no_request() {
    let install = Install::new("wrk");
    let pidfile = install.pidfile();
    let mut up = Upgradable::start(&install, "2");
    let old_master = up.server.pid();
    assert_eq!(pidfile_pid(&pidfile), Some(old_master));
    let sample = up.server.get("/api/ml/metadata").json()["sample"].to_string();
    let mut wrk = Wrk::start(up.server.addr, PREDICT, &sample, 32, Duration::from_secs(600));
    wait_predictions(&up.server, 2000.0);

    install.replace_with(&std::fs::read(common::binary()).expect("read the mldeploy binary"));
    let new_build = install.inode();
    up.server.signal(SIGUSR2);
    let new_master = wait_new_master(&up.server, &pidfile, old_master);
    let exe = std::fs::metadata(format!("/proc/{new_master}/exe")).expect("the new master's program");
    assert_eq!(exe.ino(), new_build, "the new master runs the file now at the program's path");
    let status = up.server.wait_exit(LIMIT).expect("the old master exits");
    assert_eq!(status.code(), Some(0), "{}", up.server.output());
    let serving = wait_until(LIMIT, || children_of(new_master).len() == 2);
    assert!(serving, "the new master's workers: {:?}", children_of(new_master));
    // The new master's own count: it serves the load now.
    wait_predictions(&up.server, 2000.0);
    assert!(wrk.running(), "wrk ended early");
    let report = wrk.finish();
    eprintln!("wrk across USR2:\n{}", report.text);
    assert!(report.requests > 0, "wrk sent nothing:\n{}", report.text);
    assert_eq!(report.non_2xx, 0, "non-2xx answers:\n{}\n{}", report.text, up.server.output());
    assert_eq!(report.socket_errors, 0, "socket errors:\n{}\n{}", report.text, up.server.output());

    assert_eq!(stop_adopted(&up.server, new_master), WaitStatus::Exited(Pid::from_raw(new_master), 0));
    assert!(!pidfile.exists(), "the new master removed its pidfile");
}

#[test]
fn usr2_to_a_binary_that_cannot_start_keeps_the_old_master_serving() {
    let install = Install::new("broken");
    let pidfile = install.pidfile();
    let mut up = Upgradable::start(&install, "2");
    let old_master = up.server.pid();
    let mut workers = children_of(old_master);
    workers.sort_unstable();
    let sample = up.server.get("/api/ml/metadata").json()["sample"].to_string();

    install.replace_with(b"#!/bin/sh\necho 'this build cannot start' >&2\nexit 1\n");
    up.server.signal(SIGUSR2);
    let failed = wait_until(LIMIT, || up.server.output().contains("upgrade finished"));
    let output = up.server.output();
    assert!(failed && output.contains("ok: false"), "no failed upgrade logged:\n{output}");
    assert!(output.contains("this build cannot start"), "{output}");
    assert!(output.contains("exited with code 1"), "the log says why:\n{output}");
    assert_eq!(pidfile_pid(&pidfile), Some(old_master), "the pidfile names the old master");
    assert!(!install.dir.join("mldeploy.pid.oldbin").exists());
    let mut now = children_of(old_master);
    now.sort_unstable();
    assert_eq!(now, workers, "the same workers serve");
    for _ in 0..20 {
        let r = up.server.post_json(PREDICT, &sample);
        assert_eq!(r.status, 200, "{}", r.text());
    }

    // Once a build that starts is in place, the same master upgrades.
    install.replace_with(&std::fs::read(common::binary()).expect("read the mldeploy binary"));
    up.server.signal(SIGUSR2);
    let new_master = wait_new_master(&up.server, &pidfile, old_master);
    let status = up.server.wait_exit(LIMIT).expect("the old master exits");
    assert_eq!(status.code(), Some(0), "{}", up.server.output());
    let r = up.server.post_json(PREDICT, &sample);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(stop_adopted(&up.server, new_master), WaitStatus::Exited(Pid::from_raw(new_master), 0));
}
