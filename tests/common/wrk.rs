//! wrk, for load while something happens to the server: a run in its own process group,
//! stopped with SIGINT, its summary parsed.

use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::libc_sig::{SIGINT, SIGKILL};
use super::{kill, wait_until};

/// A wrk run in its own process group, stopped with SIGINT (wrk then prints its summary).
/// Dropping it kills the group.
pub struct Wrk {
    child: Child,
    script: PathBuf,
}

/// What wrk reported.
#[derive(Debug)]
pub struct WrkReport {
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: u64,
    pub text: String,
}

impl Wrk {
    /// Keep-alive POSTs of `body` to `path` on `connections` connections, for at most `limit`
    /// (tests stop it earlier).
    pub fn start(addr: SocketAddr, path: &str, body: &str, connections: usize, limit: Duration) -> Wrk {
        if Command::new("wrk").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err()
        {
            panic!("wrk is not installed: run scripts/setup-test-deps.sh (it installs the Debian package)");
        }
        let script =
            std::env::temp_dir().join(format!("mldeploy-wrk-{}-{}.lua", std::process::id(), addr.port()));
        let lua = format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.body = [==[{body}]==]\n"
        );
        std::fs::write(&script, lua).expect("write the wrk script");
        let mut cmd = Command::new("wrk");
        cmd.args(["-t", "2", "-c", &connections.to_string(), "-d", &format!("{}s", limit.as_secs())])
            // A slow answer is not a failure here: only errors and statuses count.
            .args(["--timeout", "60s", "-s"])
            .arg(&script)
            .arg(format!("http://{addr}{path}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = cmd.spawn().expect("start wrk");
        Wrk { child, script }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stop wrk (SIGINT) and parse its summary.
    pub fn finish(mut self) -> WrkReport {
        kill(self.child.id() as i32, SIGINT);
        let exited = wait_until(Duration::from_secs(30), || !self.running());
        assert!(exited, "wrk did not stop on SIGINT");
        let mut text = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut text);
        }
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut text);
        }
        parse_wrk(text)
    }
}

impl Drop for Wrk {
    fn drop(&mut self) {
        if self.running() {
            kill(-(self.child.id() as i32), SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.script);
    }
}

/// The numbers of wrk's summary; the error lines are printed only when their counts are not 0.
fn parse_wrk(text: String) -> WrkReport {
    let numbers = |line: &str| -> Vec<u64> {
        line.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse().ok()).collect()
    };
    let mut report = WrkReport { requests: 0, non_2xx: 0, socket_errors: 0, text: String::new() };
    for line in text.lines().map(str::trim) {
        if line.contains(" requests in ") {
            report.requests = numbers(line).first().copied().unwrap_or(0);
        } else if line.starts_with("Non-2xx or 3xx responses:") {
            report.non_2xx = numbers(line).last().copied().unwrap_or(0);
        } else if line.starts_with("Socket errors:") {
            report.socket_errors = numbers(line).iter().sum();
        }
    }
    report.text = text;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_wrk_reads_requests_and_errors() {
        let clean = "Running 1m test @ http://127.0.0.1:1/x\n  2 threads and 32 connections\n  \
                     54675 requests in 3.00s, 12.24MB read\nRequests/sec:  18205.33\n";
        let r = parse_wrk(clean.to_string());
        assert_eq!((r.requests, r.non_2xx, r.socket_errors), (54675, 0, 0));
        let failing = "  1200 requests in 10.00s, 1.00MB read\n  Socket errors: connect 0, read 3, write 1, \
                       timeout 2\n  Non-2xx or 3xx responses: 7\n";
        let r = parse_wrk(failing.to_string());
        assert_eq!((r.requests, r.non_2xx, r.socket_errors), (1200, 7, 6));
    }
}
