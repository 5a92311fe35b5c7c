//! A worker killed with SIGKILL under keep-alive load: which requests may fail (those in flight
//! on the connections it held), and that every client is served again afterwards.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::Conn;
use super::libc_sig::SIGKILL;
use super::{wait_until, Server};

/// Inodes of the sockets `pid` holds open.
fn socket_inodes(pid: i32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return HashSet::new() };
    dir.filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// The client ports of the TCP connections to `server_port` that `pid` holds, from
/// /proc/net/tcp{,6}: which client connections that process serves.
fn client_ports_held_by(pid: i32, server_port: u16) -> HashSet<u16> {
    let inodes = socket_inodes(pid);
    let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let mut ports = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(remote), Some(inode)) = (fields.get(1), fields.get(2), fields.get(9))
            else {
                continue;
            };
            let Ok(inode) = inode.parse::<u64>() else { continue };
            if port_of(local) == Some(server_port) && inodes.contains(&inode) {
                if let Some(port) = port_of(remote).filter(|p| *p != 0) {
                    ports.insert(port);
                }
            }
        }
    }
    ports
}

/// One keep-alive load client's record.
#[derive(Default)]
struct ClientRecord {
    ok: AtomicUsize,
    /// Local port of the client's current connection.
    port: AtomicU16,
    /// (local port of the connection, what went wrong) per failed request.
    failures: Mutex<Vec<(u16, String)>>,
}

/// Load `server` with `clients` keep-alive clients POSTing `body` to `path`, kill -9 the worker
/// holding the most of their connections, and assert that at most one request per connection it
/// held failed, none elsewhere, and that every client is served again by the `workers` workers.
pub fn kill_a_worker_under_load(server: &Server, path: &str, body: &str, clients: usize, workers: usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let records: Vec<Arc<ClientRecord>> = (0..clients).map(|_| Arc::default()).collect();
    let threads: Vec<_> = records
        .iter()
        .map(|record| {
            let (addr, body, stop, record, path) =
                (server.addr, body.to_string(), stop.clone(), record.clone(), path.to_string());
            std::thread::spawn(move || {
                let connect = |record: &ClientRecord| loop {
                    match Conn::open(addr) {
                        Ok(c) => {
                            record.port.store(c.local_port(), Ordering::SeqCst);
                            return Some(c);
                        }
                        Err(_) if stop.load(Ordering::SeqCst) => return None,
                        Err(e) => {
                            record.failures.lock().unwrap().push((0, format!("connect: {e}")));
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                };
                let Some(mut client) = connect(&record) else { return };
                while !stop.load(Ordering::SeqCst) {
                    let port = client.local_port();
                    match client.request(
                        "POST",
                        &path,
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    ) {
                        Ok(r) if r.status == 200 => {
                            record.ok.fetch_add(1, Ordering::SeqCst);
                            if r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                                let Some(c) = connect(&record) else { return };
                                client = c;
                            }
                        }
                        Ok(r) => {
                            record.failures.lock().unwrap().push((port, format!("status {}", r.status)));
                        }
                        Err(e) => {
                            record.failures.lock().unwrap().push((port, e.to_string()));
                            let Some(c) = connect(&record) else { return };
                            client = c;
                        }
                    }
                }
            })
        })
        .collect();
    let warmed =
        wait_until(Duration::from_secs(30), || records.iter().all(|r| r.ok.load(Ordering::SeqCst) >= 5));
    assert!(warmed, "clients never got going\n{}", server.output());

    // The victim: the worker holding the most client connections.
    let held: HashMap<i32, HashSet<u16>> = server
        .worker_pids()
        .into_iter()
        .map(|pid| (pid, client_ports_held_by(pid, server.addr.port())))
        .collect();
    let (victim, victim_ports) = held.iter().max_by_key(|(_, ports)| ports.len()).expect("workers");
    let (victim, victim_ports) = (*victim, victim_ports.clone());
    let client_ports: HashSet<u16> = records.iter().map(|r| r.port.load(Ordering::SeqCst)).collect();
    assert!(!victim_ports.is_empty(), "no worker holds a client connection: {held:?}");
    assert!(victim_ports.is_subset(&client_ports), "held {victim_ports:?}, clients use {client_ports:?}");
    let ok_at_kill: Vec<usize> = records.iter().map(|r| r.ok.load(Ordering::SeqCst)).collect();
    super::kill(victim, SIGKILL);

    let replaced = wait_until(Duration::from_secs(30), || {
        let now = server.worker_pids();
        now.len() == workers && !now.contains(&victim)
    });
    assert!(replaced, "worker {victim} not replaced: {:?}\n{}", server.worker_pids(), server.output());
    // Every client serves on after the kill, the victim's clients on new connections.
    let recovered = wait_until(Duration::from_secs(60), || {
        records.iter().zip(&ok_at_kill).all(|(r, before)| r.ok.load(Ordering::SeqCst) >= before + 20)
    });
    stop.store(true, Ordering::SeqCst);
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert!(recovered, "some clients stopped being served after the kill\n{}", server.output());

    let failures: Vec<Vec<(u16, String)>> =
        records.iter().map(|r| r.failures.lock().unwrap().clone()).collect();
    let total: usize = failures.iter().map(Vec::len).sum();
    let ok: usize = records.iter().map(|r| r.ok.load(Ordering::SeqCst)).sum();
    eprintln!(
        "kill -9 of worker {victim} holding {} of {clients} connections: {total} failed, {ok} ok; {failures:?}",
        victim_ports.len()
    );
    // Each connection carries one request at a time, so the victim had at most one request in
    // flight per connection it held; those may fail, nothing else may.
    assert!(
        total <= victim_ports.len(),
        "{total} failures for {} connections: {failures:?}",
        victim_ports.len()
    );
    for f in failures.iter().flatten() {
        assert!(
            victim_ports.contains(&f.0),
            "a request failed on a connection the victim did not hold: {f:?}"
        );
    }
}
