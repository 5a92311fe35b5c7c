//! The fault and bad-input suite, against the real binaries on loopback: reloads and recycling
//! under wrk load, a worker killed under load, slow and idle clients, and malformed, oversized
//! or hostile requests. Every assertion is about counts, statuses and survival, never timings.
//!
//! wrk must be installed (`scripts/setup-test-deps.sh` installs it); the tests that need it
//! fail with a message saying so when it is missing.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::http::Response;
use common::libc_sig::SIGHUP;
use common::wrk::Wrk;
use common::{is_alive, wait_until, Server};

const PREDICT: &str = "/api/ml/predict";
const MIB: usize = 1024 * 1024;

fn demo_sample(server: &Server) -> String {
    server.get("/api/ml/metadata").json()["sample"].to_string()
}

/// Wait until the master has exactly `n` live workers; their pids, sorted.
fn wait_workers(server: &Server, n: usize) -> Vec<i32> {
    let ok = wait_until(Duration::from_secs(30), || server.worker_pids().len() == n);
    assert!(ok, "expected {n} workers, have {:?}\n{}", server.worker_pids(), server.output());
    sorted_workers(server)
}

fn sorted_workers(server: &Server) -> Vec<i32> {
    let mut pids = server.worker_pids();
    pids.sort_unstable();
    pids
}

/// The sum of every sample of `name` whose labels contain all of `labels`, in a Prometheus
/// text exposition.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Predictions answered 200 so far, server-wide.
fn predictions_served(server: &Server) -> f64 {
    let text = server.get("/metrics").text();
    metric_sum(&text, "mldeploy_requests_total", &[r#"route="/api/ml/predict""#, r#"status="200""#])
}

/// VmRSS of each of `pids`, in kB.
fn rss_kb(pids: &[i32]) -> Vec<u64> {
    pids.iter().map(|p| proc_status_kb(*p, "VmRSS").unwrap_or(0)).collect()
}

/// A field of /proc/PID/status in kB (VmRSS, VmHWM), if the process exists.
fn proc_status_kb(pid: i32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// A small HTTP/1.1 client over one socket, for what the shared client cannot do: know its local
// port, half-close, read without blocking forever.

struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn open(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Client { reader: BufReader::new(stream) })
    }

    fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    fn get(&mut self, path: &str) -> std::io::Result<Response> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.reader.get_mut().write_all(head.as_bytes())?;
        self.read_response()
    }

    /// Read one response: a Content-Length body, or everything until EOF after
    /// `Connection: close`.
    fn read_response(&mut self) -> std::io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed before an answer"));
        }
        let status =
            line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                std::io::Error::new(ErrorKind::InvalidData, format!("status line {line:?}"))
            })?;
        let mut headers = Vec::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed in the head"));
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let mut response = Response { status, headers, body: Vec::new() };
        if status == 100 {
            return self.read_response();
        }
        if let Some(len) = response.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            response.body.resize(len, 0);
            self.reader.read_exact(&mut response.body)?;
        } else if response.header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16).map_err(|e| {
                    std::io::Error::new(ErrorKind::InvalidData, format!("chunk size {line:?}: {e}"))
                })?;
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if &chunk[size..] != b"\r\n" {
                    return Err(std::io::Error::new(ErrorKind::InvalidData, "a chunk without its CRLF"));
                }
                if size == 0 {
                    break;
                }
                response.body.extend_from_slice(&chunk[..size]);
            }
        } else if response.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            self.reader.read_to_end(&mut response.body)?;
        }
        Ok(response)
    }

    /// Whether the server has closed the connection without sending anything more: reads
    /// until EOF (true), data (false) or `limit` (false).
    fn closed_without_data(&mut self, limit: Duration) -> bool {
        let _ = self.stream().set_read_timeout(Some(limit.max(Duration::from_millis(1))));
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

/// How a raw request ends on the client's side.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// Keep the connection open, sending nothing more.
    Stop,
    /// Shut down the writing half: the server reads EOF.
    HalfClose,
}

/// Send `bytes` on a fresh connection (from a thread, so a server that answers before reading
/// everything cannot block us) and read the answer.
fn exchange(addr: SocketAddr, bytes: Vec<u8>, ending: Ending) -> std::io::Result<Response> {
    let mut client = Client::open(addr)?;
    let mut writer = client.stream().try_clone()?;
    let sender = std::thread::spawn(move || {
        // The server may answer and close before taking everything: write errors are expected.
        let _ = writer.write_all(&bytes);
        if ending == Ending::HalfClose {
            let _ = writer.shutdown(Shutdown::Write);
        }
    });
    let response = client.read_response();
    // Unblock the sender if the server stopped reading.
    let _ = client.stream().shutdown(Shutdown::Both);
    let _ = sender.join();
    response
}

fn post_head(len: usize, extra: &str) -> String {
    format!(
        "POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n{extra}\r\n"
    )
}

fn post_bytes(body: &[u8]) -> Vec<u8> {
    let mut bytes = post_head(body.len(), "").into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Check that an error answer is JSON `{"error", "message", "request_id"}` with the request
/// id of the `x-request-id` header; returns the `error` code.
fn error_body_problem(r: &Response) -> Result<String, String> {
    let body: serde_json::Value =
        serde_json::from_slice(&r.body).map_err(|e| format!("body is not JSON ({e}): {:?}", r.text()))?;
    let field = |name: &str| body[name].as_str().filter(|s| !s.is_empty()).map(str::to_string);
    let (Some(error), Some(_message), Some(id)) = (field("error"), field("message"), field("request_id"))
    else {
        return Err(format!("error body lacks error/message/request_id: {body}"));
    };
    if r.header("x-request-id") != Some(id.as_str()) {
        return Err(format!("request_id {id:?} differs from x-request-id {:?}", r.header("x-request-id")));
    }
    if !r.header("content-type").is_some_and(|t| t.starts_with("application/json")) {
        return Err(format!("content-type {:?}", r.header("content-type")));
    }
    Ok(error)
}

// ---------------------------------------------------------------------------------------------
// Reload and recycle under wrk

const WRK_CONNECTIONS: usize = 32;
/// Predictions answered before the first reload, between reloads and after the last: spreads
/// the reloads over a run of about 10 s on a 2-core machine (debug build) by counting answers.
const LOAD_BETWEEN_EVENTS: f64 = 2000.0;

/// Wait (bounded) until at least `more` predictions beyond `since` have been answered.
fn wait_predictions(server: &Server, since: f64, more: f64) -> f64 {
    let mut now = since;
    let served = wait_until(Duration::from_secs(60), || {
        now = predictions_served(server);
        now >= since + more
    });
    assert!(served, "load stalled at {now} predictions (from {since})\n{}", server.output());
    now
}

#[test]
fn ten_hup_reloads_under_wrk_fail_no_request() {
    let server = Server::start(&["serve", "--workers", "2", "--threads", "2"]);
    let mut pids: HashSet<i32> = wait_workers(&server, 2).into_iter().collect();
    let mut wrk =
        Wrk::start(server.addr, PREDICT, &demo_sample(&server), WRK_CONNECTIONS, Duration::from_secs(600));
    let mut served = wait_predictions(&server, 0.0, LOAD_BETWEEN_EVENTS);
    for reload in 1..=10 {
        server.signal(SIGHUP);
        let old = pids.clone();
        let replaced = wait_until(Duration::from_secs(60), || {
            let now: HashSet<i32> = server.worker_pids().into_iter().collect();
            now.len() == 2 && now.is_disjoint(&old)
        });
        assert!(
            replaced,
            "reload {reload} did not replace {old:?}: {:?}\n{}",
            server.worker_pids(),
            server.output()
        );
        pids = server.worker_pids().into_iter().collect();
        // The next reload happens under load too: the new generation must be answering.
        served = wait_predictions(&server, served, LOAD_BETWEEN_EVENTS);
        assert!(wrk.running(), "wrk ended before reload {reload}");
    }
    let report = wrk.finish();
    eprintln!("wrk during 10 reloads:\n{}", report.text);
    assert!(report.requests > 0, "wrk sent nothing:\n{}", report.text);
    assert_eq!(report.non_2xx, 0, "non-2xx answers during reloads:\n{}\n{}", report.text, server.output());
    assert_eq!(
        report.socket_errors,
        0,
        "socket errors during reloads:\n{}\n{}",
        report.text,
        server.output()
    );
}

#[test]
fn max_requests_recycling_under_wrk_fails_no_request() {
    let server = Server::start(&[
        "serve",
        "--workers",
        "2",
        "--threads",
        "2",
        "--max-requests",
        "500",
        "--max-requests-jitter",
        "100",
    ]);
    let first = wait_workers(&server, 2);
    let mut seen: HashSet<i32> = first.iter().copied().collect();
    let mut wrk =
        Wrk::start(server.addr, PREDICT, &demo_sample(&server), WRK_CONNECTIONS, Duration::from_secs(600));
    // At least twenty workers retired and replaced, over at least 20000 predictions.
    let mut served = 0.0;
    let recycled = wait_until(Duration::from_secs(180), || {
        seen.extend(server.worker_pids());
        if seen.len() >= first.len() + 20 {
            served = predictions_served(&server);
        }
        (seen.len() >= first.len() + 20 && served >= 10.0 * LOAD_BETWEEN_EVENTS) || !wrk.running()
    });
    assert!(wrk.running(), "wrk ended early");
    assert!(recycled, "only {} workers seen: {seen:?}\n{}", seen.len(), server.output());
    let report = wrk.finish();
    eprintln!("wrk during recycling ({} workers seen):\n{}", seen.len(), report.text);
    assert!(report.requests > 0, "wrk sent nothing:\n{}", report.text);
    assert_eq!(report.non_2xx, 0, "non-2xx answers during recycling:\n{}", report.text);
    assert_eq!(report.socket_errors, 0, "socket errors during recycling:\n{}", report.text);
    assert!(first.iter().all(|p| !is_alive(*p)), "the first workers were retired: {first:?}");
}

// ---------------------------------------------------------------------------------------------
// Worker kill -9 under load

#[test]
fn killing_a_worker_under_load_fails_at_most_its_in_flight_requests() {
    let server = Server::start(&["serve", "--workers", "2", "--threads", "2", "--keepalive", "30"]);
    wait_workers(&server, 2);
    common::kill9::kill_a_worker_under_load(&server, PREDICT, &demo_sample(&server), 8, 2);
}

// ---------------------------------------------------------------------------------------------
// Slow and idle clients

const SLOW_CLIENTS: usize = 500;

/// A 2 x 2 server that closes slow and idle connections after 2 s, and its sample body.
fn start_with_short_timeouts() -> (Server, String) {
    let server = Server::start(&[
        "serve",
        "--workers",
        "2",
        "--threads",
        "2",
        "--request-timeout",
        "2",
        "--keepalive",
        "2",
    ]);
    wait_workers(&server, 2);
    let sample = demo_sample(&server);
    (server, sample)
}

/// Fresh connections are answered: a health check and a prediction.
fn others_are_served(server: &Server, sample: &str) {
    assert_eq!(server.get("/health").status, 200);
    let r = server.post_json(PREDICT, sample);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn slowloris_connections_get_408_and_closed_while_others_are_served() {
    let (server, sample) = start_with_short_timeouts();
    // A head that never ends, one byte per second on each connection: more often than the
    // request timeout, so a server that restarted its clock on every byte would never close them.
    let head: Vec<u8> =
        format!("POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nX-Slow: {}", "s".repeat(200)).into_bytes();
    let mut slow: Vec<(TcpStream, Vec<u8>, bool)> = (0..SLOW_CLIENTS)
        .map(|i| {
            let mut s = TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("slow client {i}: {e}"));
            s.write_all(&head[..1]).expect("first byte");
            s.set_nonblocking(true).unwrap();
            (s, Vec::new(), false)
        })
        .collect();
    // With all of them holding a started request, others are still served.
    for _ in 0..5 {
        others_are_served(&server, &sample);
    }
    let end = Instant::now() + Duration::from_secs(90);
    let mut sent = 1;
    while slow.iter().any(|(_, _, closed)| !closed) && Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        for (stream, answer, closed) in slow.iter_mut().filter(|(_, _, closed)| !closed) {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => {
                        *closed = true;
                        break;
                    }
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *closed = true;
                        break;
                    }
                }
            }
            // Keep dripping until the server answers; then only read until it closes.
            if !*closed && answer.is_empty() {
                let _ = stream.write_all(&head[sent.min(head.len() - 1)..][..1]);
            }
        }
        sent += 1;
        if slow.iter().any(|(_, _, closed)| !closed) {
            others_are_served(&server, &sample);
        }
    }
    let open = slow.iter().filter(|(_, _, closed)| !closed).count();
    assert_eq!(open, 0, "{open} slow connections never closed by the server\n{}", server.output());
    let mut statuses: HashMap<String, usize> = HashMap::new();
    for (_, answer, _) in &slow {
        let text = String::from_utf8_lossy(answer);
        let status = text.lines().next().unwrap_or("(closed without an answer)").to_string();
        *statuses.entry(status).or_default() += 1;
    }
    eprintln!("slowloris answers: {statuses:?}");
    for (_, answer, _) in &slow {
        let text = String::from_utf8_lossy(answer);
        assert!(text.starts_with("HTTP/1.1 408 "), "a slow client got {text:?}");
        assert!(text.contains(r#""error":"request_timeout""#), "{text}");
    }
    others_are_served(&server, &sample);
}

#[test]
fn idle_keepalive_connections_are_closed_after_keepalive_while_others_are_served() {
    let (server, sample) = start_with_short_timeouts();
    // Each idle connection has been used once (keep-alive), then sends nothing.
    let mut idle: Vec<Client> = (0..SLOW_CLIENTS)
        .map(|i| {
            let mut c = Client::open(server.addr).unwrap_or_else(|e| panic!("idle client {i}: {e}"));
            let r = c.get("/health").unwrap_or_else(|e| panic!("idle client {i}: {e}"));
            assert_eq!(r.status, 200);
            assert!(r.header("connection").is_none_or(|v| !v.eq_ignore_ascii_case("close")));
            c
        })
        .collect();
    // Connections that never sent a byte are idle too.
    let mut silent: Vec<Client> = (0..100).map(|_| Client::open(server.addr).expect("connect")).collect();
    for _ in 0..5 {
        others_are_served(&server, &sample);
    }
    let end = Instant::now() + Duration::from_secs(60);
    let mut still_open = 0;
    for c in idle.iter_mut().chain(silent.iter_mut()) {
        if !c.closed_without_data(end.saturating_duration_since(Instant::now())) {
            still_open += 1;
        }
    }
    assert_eq!(
        still_open,
        0,
        "idle connections not closed (or sent data) by the server\n{}",
        server.output()
    );
    others_are_served(&server, &sample);
}

/// A big answer read slowly arrives whole: the keep-alive clock must not run while the
/// answer is still being written.
#[test]
fn a_large_answer_read_slowly_arrives_whole() {
    let server = Server::start_fault(&["serve", "--workers", "1", "--keepalive", "2"], &[]);
    wait_workers(&server, 1);
    // The fault model echoes `data` twice (prediction and input): about 12 MiB of answer,
    // more than the socket buffers hold.
    let numbers: Vec<String> = (0..900_000).map(|i| (100_000 + i).to_string()).collect();
    let body = format!(r#"{{"data": [{}]}}"#, numbers.join(","));
    assert!(body.len() < 10 * MIB);
    let mut client = Client::open(server.addr).expect("connect");
    let head = post_head(body.len(), "");
    client.reader.get_mut().write_all(head.as_bytes()).unwrap();
    client.reader.get_mut().write_all(body.as_bytes()).unwrap();
    let mut line = String::new();
    client.reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200 "), "{line}");
    let mut length = 0;
    loop {
        line.clear();
        client.reader.read_line(&mut line).unwrap();
        if line.trim_end().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().unwrap();
        }
    }
    assert!(length > 10 * MIB, "answer of {length} bytes");
    // A client that pauses longer than the keep-alive timeout before reading on.
    std::thread::sleep(Duration::from_secs(5));
    let mut answer = Vec::new();
    let _ = (&mut client.reader).take(length as u64).read_to_end(&mut answer);
    assert_eq!(answer.len(), length, "the answer was cut after {} of {length} bytes", answer.len());
    assert!(serde_json::from_slice::<serde_json::Value>(&answer).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Early answers to clients that send their whole body before they read

/// Send `head`, then `body_len` bytes of body (in `chunked` encoding if asked), from this one
/// thread and without reading anything: as Python's `http.client` and `requests` do. Then read
/// the answer.
fn send_all_then_read(
    addr: SocketAddr,
    head: &str,
    body_len: usize,
    chunked: bool,
) -> std::io::Result<Response> {
    let mut client = Client::open(addr)?;
    let block = vec![b'1'; MIB];
    let mut stream = client.stream().try_clone()?;
    stream.write_all(head.as_bytes())?;
    let mut left = body_len;
    while left > 0 {
        let n = left.min(block.len());
        if chunked {
            stream.write_all(format!("{n:x}\r\n").as_bytes())?;
            stream.write_all(&block[..n])?;
            stream.write_all(b"\r\n")?;
        } else {
            stream.write_all(&block[..n])?;
        }
        left -= n;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n")?;
    }
    client.read_response()
}

#[test]
fn a_client_that_sends_its_whole_body_before_reading_gets_the_early_answer() {
    let server = Server::start(&["serve", "--workers", "1", "--threads", "2"]);
    let chunked_head =
        format!("POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
    let not_found = "POST /no/such/route HTTP/1.1\r\nHost: localhost\r\nContent-Length: 25165824\r\n\r\n";
    let cases: [(&str, String, usize, bool, u16, &str); 5] = [
        ("24 MiB over --max-body", post_head(24 * MIB, ""), 24 * MIB, false, 413, "payload_too_large"),
        ("64 MiB over --max-body", post_head(64 * MIB, ""), 64 * MIB, false, 413, "payload_too_large"),
        ("24 MiB chunked over --max-body", chunked_head, 24 * MIB, true, 413, "payload_too_large"),
        ("24 MiB to no route", not_found.to_string(), 24 * MIB, false, 404, "not_found"),
        (
            "24 MiB compressed",
            post_head(24 * MIB, "Content-Encoding: gzip\r\n"),
            24 * MIB,
            false,
            415,
            "unsupported_media_type",
        ),
    ];
    for (name, head, len, chunked, status, error) in cases {
        let r = send_all_then_read(server.addr, &head, len, chunked)
            .unwrap_or_else(|e| panic!("{name}: no answer: {e}\n{}", server.output()));
        assert_eq!(r.status, status, "{name}: {}", r.text());
        assert_eq!(error_body_problem(&r).as_deref(), Ok(error), "{name}");
        assert_eq!(r.header("connection"), Some("close"), "{name}");
    }
    others_are_served(&server, &demo_sample(&server));
}

#[test]
fn python_http_client_sending_30_mib_gets_the_413() {
    if !common::python_has("http.client, json") {
        return;
    }
    let server = Server::start(&["serve", "--workers", "1"]);
    // http.client sends the whole body, then reads: a reset before the end of the body is a
    // BrokenPipeError or ConnectionResetError here, and no answer.
    let script = r#"
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=60)
c.request("POST", "/api/ml/predict", body=b"1" * (30 << 20), headers={"Content-Type": "application/json"})
r = c.getresponse()
print(r.status, json.loads(r.read())["error"])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &server.addr.port().to_string()])
        .output()
        .expect("run python3");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.trim() == "413 payload_too_large",
        "python3 printed {printed:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.output()
    );
}

/// The largest buffer the kernel may give one TCP socket, from a `tcp_rmem`/`tcp_wmem` file.
fn tcp_buffer_max(name: &str) -> usize {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap_or_default();
    text.split_whitespace().nth(2).and_then(|n| n.parse().ok()).unwrap_or(64 * MIB)
}

/// Send on `stream` until a write fails, `pace` between writes, at most `cap` bytes; the bytes
/// the socket accepted and the error that ended it (none: the cap was reached).
fn send_until_cut_off(
    stream: &mut TcpStream,
    block: usize,
    pace: Option<Duration>,
    cap: usize,
) -> (usize, Option<std::io::Error>) {
    let bytes = vec![b'1'; block];
    let mut accepted = 0;
    while accepted < cap {
        match stream.write(&bytes) {
            Ok(n) => accepted += n,
            Err(e) => return (accepted, Some(e)),
        }
        if let Some(pace) = pace {
            std::thread::sleep(pace);
        }
    }
    (accepted, None)
}

#[test]
fn a_client_that_never_stops_sending_is_cut_off_at_the_linger_bounds() {
    let linger_bytes = 64 * MIB;
    let server = Server::start(&[
        "serve",
        "--workers",
        "1",
        "--linger-bytes",
        &linger_bytes.to_string(),
        "--linger-time",
        "600",
    ]);
    // A body declared far over --max-body: 413 at once, then the server lingers.
    let endless = post_head(1 << 40, "");
    let mut client = Client::open(server.addr).expect("connect");
    let mut stream = client.stream().try_clone().expect("clone");
    stream.write_all(endless.as_bytes()).expect("head");
    let (accepted, error) = send_until_cut_off(&mut stream, 64 * 1024, None, 4096 * MIB);
    let error = error.unwrap_or_else(|| panic!("never cut off after {accepted} bytes\n{}", server.output()));
    // What the socket accepted beyond what the server read sits in the two kernel buffers.
    let slack = tcp_buffer_max("tcp_rmem") + tcp_buffer_max("tcp_wmem") + MIB;
    eprintln!("bytes bound {linger_bytes}: {accepted} bytes accepted before {error} (slack {slack})");
    assert!(
        matches!(error.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
        "cut off by a reset, not {error}"
    );
    assert!(accepted >= linger_bytes, "closed after {accepted} bytes, before the bound of {linger_bytes}");
    assert!(accepted <= linger_bytes + slack, "{accepted} bytes accepted, over the bound of {linger_bytes}");
    // The answer went out before the server read on: it may still be readable, unless the reset
    // discarded it.
    if let Ok(r) = client.read_response() {
        assert_eq!(r.status, 413, "{}", r.text());
    }
    drop(client);

    // The time bound: a client that trickles its body is cut off once linger_time passes,
    // long before the bytes bound.
    let server = Server::start(&[
        "serve",
        "--workers",
        "1",
        "--linger-bytes",
        &(1024 * MIB).to_string(),
        "--linger-time",
        "1",
    ]);
    let client = Client::open(server.addr).expect("connect");
    let mut stream = client.stream().try_clone().expect("clone");
    stream.write_all(endless.as_bytes()).expect("head");
    // 16 KiB every 10 ms, about 1.6 MB/s: 200 MB would take two minutes.
    let cap = 200 * MIB;
    let (accepted, error) = send_until_cut_off(&mut stream, 16 * 1024, Some(Duration::from_millis(10)), cap);
    let error = error.unwrap_or_else(|| panic!("never cut off after {accepted} bytes\n{}", server.output()));
    eprintln!("time bound 1 s: {accepted} bytes accepted before {error}");
    assert!(
        matches!(error.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
        "cut off by a reset, not {error}"
    );
    others_are_served(&server, &demo_sample(&server));
}

// ---------------------------------------------------------------------------------------------
// Bad input

/// A bad request and the answers it may get.
struct BadCase {
    name: &'static str,
    bytes: Vec<u8>,
    ending: Ending,
    /// Acceptable (status, error code) pairs.
    expect: &'static [(u16, &'static str)],
}

fn case(name: &'static str, bytes: Vec<u8>, expect: &'static [(u16, &'static str)]) -> BadCase {
    BadCase { name, bytes, ending: Ending::Stop, expect }
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> Vec<u8> {
    let mut s = open.repeat(depth);
    s.push_str(inner);
    s.push_str(&close.repeat(depth));
    s.into_bytes()
}

/// How many copies of `row` make a list of at least `bytes`.
fn rows_for(row: &str, bytes: usize) -> usize {
    bytes / (row.len() + 1) + 1
}

/// `{"data": [row, row, ...]}` with `count` copies of `row`.
fn data_of_rows(row: &str, count: usize) -> Vec<u8> {
    let mut s = String::with_capacity(count * (row.len() + 1) + 16);
    s.push_str(r#"{"data": ["#);
    for i in 0..count {
        if i > 0 {
            s.push(',');
        }
        s.push_str(row);
    }
    s.push_str("]}");
    s.into_bytes()
}

fn bad_cases() -> Vec<BadCase> {
    const HEAD_431: &[(u16, &str)] = &[(431, "header_too_large"), (414, "uri_too_long")];
    const TOO_LARGE: &[(u16, &str)] = &[(413, "payload_too_large")];
    const CUT_SHORT: &[(u16, &str)] = &[(400, "bad_request")];
    const TIMEOUT: &[(u16, &str)] = &[(408, "request_timeout")];
    const BAD_JSON: &[(u16, &str)] = &[(400, "invalid_json")];
    const OUT_OF_RANGE: &[(u16, &str)] = &[(400, "invalid_json"), (422, "invalid_input")];
    const INVALID: &[(u16, &str)] = &[(422, "invalid_input")];
    const BAD_SHAPE: &[(u16, &str)] = &[(400, "bad_request"), (422, "invalid_input")];
    const MALFORMED: &[(u16, &str)] = &[(400, "bad_request")];

    let over_body = 11 * MIB;
    let chunked = {
        let mut b =
            format!("POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n")
                .into_bytes();
        let chunk = vec![b'1'; 64 * 1024];
        for _ in 0..over_body / chunk.len() + 1 {
            b.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            b.extend_from_slice(&chunk);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"0\r\n\r\n");
        b
    };
    let mut over_with_body = post_head(over_body, "").into_bytes();
    over_with_body.resize(over_with_body.len() + over_body, b'1');
    let truncated = {
        let mut b = post_head(1000, "").into_bytes();
        b.extend_from_slice(br#"{"data": [[5.1, 3.5"#);
        b
    };
    let truncated_chunked = format!(
        "POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n{{\"data\": [["
    )
    .into_bytes();

    vec![
        case(
            "request line over 8 KiB",
            format!("GET /health?pad={} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(9000)).into_bytes(),
            HEAD_431,
        ),
        case(
            "request line of 64 KiB",
            format!("GET /health?pad={} HTTP/1.1\r\nHost: localhost\r\n\r\n", "a".repeat(64 * 1024))
                .into_bytes(),
            HEAD_431,
        ),
        case(
            "one header over 8 KiB",
            format!("GET /health HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}\r\n\r\n", "a".repeat(9000))
                .into_bytes(),
            HEAD_431,
        ),
        case(
            "headers over 8 KiB in total",
            format!(
                "GET /health HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
                (0..90).map(|i| format!("X-Pad-{i}: {}\r\n", "b".repeat(100))).collect::<String>()
            )
            .into_bytes(),
            HEAD_431,
        ),
        case(
            "more than 100 headers",
            format!(
                "GET /health HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
                (0..120).map(|i| format!("X-H{i}: 1\r\n")).collect::<String>()
            )
            .into_bytes(),
            HEAD_431,
        ),
        case(
            "Content-Length over --max-body, body not sent",
            post_head(over_body, "").into_bytes(),
            TOO_LARGE,
        ),
        case("Content-Length over --max-body, body sent", over_with_body, TOO_LARGE),
        case("chunked body over --max-body", chunked, TOO_LARGE),
        BadCase {
            ending: Ending::HalfClose,
            ..case("body cut short, then half-close", truncated.clone(), CUT_SHORT)
        },
        case("body cut short, then silence", truncated, TIMEOUT),
        BadCase {
            ending: Ending::HalfClose,
            ..case("chunked body cut short, then half-close", truncated_chunked.clone(), CUT_SHORT)
        },
        case("chunked body cut short, then silence", truncated_chunked, TIMEOUT),
        case(
            "head cut short, then silence",
            format!("POST {PREDICT} HTTP/1.1\r\nHost: loc").into_bytes(),
            TIMEOUT,
        ),
        case(
            "invalid UTF-8 in a JSON string",
            post_bytes(b"{\"data\": [[\"\xff\xfe\", 3.5, 1.4, 0.2]]}"),
            BAD_JSON,
        ),
        case("invalid UTF-8 in a JSON key", post_bytes(b"[{\"sepal\xc3\x28\": 5.1}]"), BAD_JSON),
        case(
            "invalid UTF-8 outside strings",
            post_bytes(b"{\"data\": [[5.1, 3.5, 1.4, 0.2]]}\xc3\x28"),
            BAD_JSON,
        ),
        case("100000 unclosed [", post_bytes(&nested(100_000, "[", "", "")), BAD_JSON),
        case("100000 nested lists", post_bytes(&nested(100_000, "[", "]", "")), BAD_JSON),
        case("100000 nested objects", post_bytes(&nested(100_000, r#"{"a":"#, "}", "1")), BAD_JSON),
        case("100000 nested in data", post_bytes(&nested(100_000, r#"{"data":"#, "}", "[]")), BAD_JSON),
        case("number 1e400", post_bytes(br#"{"data": [[1e400, 3.5, 1.4, 0.2]]}"#), OUT_OF_RANGE),
        case("number -1e400", post_bytes(br#"{"data": [[5.1, -1e400, 1.4, 0.2]]}"#), OUT_OF_RANGE),
        case("number 1e400 in a record", post_bytes(br#"[{"sepal_length": 1e400}]"#), OUT_OF_RANGE),
        case("string \"1e400\"", post_bytes(br#"{"data": [["1e400", 3.5, 1.4, 0.2]]}"#), INVALID),
        case("9 MiB row of numbers", one_huge_row(), BAD_SHAPE),
        case(
            "9 MiB flat list of numbers",
            post_bytes(&data_of_rows("5.1", rows_for("5.1", 9 * MIB))),
            BAD_SHAPE,
        ),
        case(
            "9 MiB of one-value rows",
            post_bytes(&data_of_rows("[5.1]", rows_for("[5.1]", 9 * MIB))),
            INVALID,
        ),
        case("empty body", post_bytes(b""), BAD_JSON),
        case("malformed request line", b"\x00\x01 garbage\r\n\r\n".to_vec(), MALFORMED),
        case(
            "Content-Length not a number",
            format!("POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nContent-Length: ten\r\n\r\n").into_bytes(),
            MALFORMED,
        ),
    ]
}

/// One row of about 9 MiB of numbers, as a whole request.
fn one_huge_row() -> Vec<u8> {
    let count = 9 * MIB / 4;
    let mut s = String::with_capacity(9 * MIB + 32);
    s.push_str(r#"{"data": [["#);
    for i in 0..count {
        if i > 0 {
            s.push(',');
        }
        s.push_str("5.1");
    }
    s.push_str("]]}");
    post_bytes(s.as_bytes())
}

#[test]
fn bad_requests_get_their_4xx_and_the_workers_survive_with_bounded_memory() {
    let server = Server::start(&["serve", "--workers", "2", "--threads", "2", "--request-timeout", "2"]);
    let pids = wait_workers(&server, 2);
    let sample = demo_sample(&server);
    let mut problems: Vec<String> = Vec::new();
    for c in bad_cases() {
        match exchange(server.addr, c.bytes, c.ending) {
            Err(e) => problems.push(format!("{}: no answer: {e}", c.name)),
            Ok(r) => {
                let code = error_body_problem(&r);
                eprintln!("{}: {} {:?}; workers' VmRSS kB: {:?}", c.name, r.status, code, rss_kb(&pids));
                match code {
                    Err(p) => problems.push(format!("{}: status {}: {p}", c.name, r.status)),
                    Ok(code) if !c.expect.iter().any(|(s, e)| *s == r.status && *e == code) => problems.push(
                        format!("{}: got {} {code:?}, expected one of {:?}", c.name, r.status, c.expect),
                    ),
                    Ok(_) => {}
                }
            }
        }
        let now = sorted_workers(&server);
        if now != pids {
            problems.push(format!("{}: workers {pids:?} became {now:?}", c.name));
        }
        if server.get("/health").status != 200 {
            problems.push(format!("{}: not healthy after it", c.name));
        }
    }
    // A valid batch of about 1 MiB is predicted whole.
    let row = "[5.1,3.5,1.4,0.2]";
    let rows = rows_for(row, MIB);
    let batch = data_of_rows(row, rows);
    let r = server.post_json(PREDICT, std::str::from_utf8(&batch).unwrap());
    if r.status != 200 {
        problems.push(format!("1 MiB valid batch: status {}: {}", r.status, r.text()));
    } else {
        let predicted = r.json()["target"]["y_predicted"].as_array().map_or(0, Vec::len);
        if predicted != rows {
            problems.push(format!("1 MiB valid batch: {predicted} predictions for {rows} rows"));
        }
    }
    others_are_served(&server, &sample);
    if sorted_workers(&server) != pids {
        problems.push(format!("workers {pids:?} became {:?}", sorted_workers(&server)));
    }
    // The heaviest of them again: the memory the workers keep reaches a plateau (allocator
    // retention), it does not grow with every request.
    let heavy = post_bytes(&data_of_rows("[5.1]", rows_for("[5.1]", 9 * MIB)));
    for round in 1..=4 {
        let r = exchange(server.addr, heavy.clone(), Ending::Stop);
        if r.as_ref().map(|r| r.status).ok() != Some(422) {
            problems.push(format!("9 MiB of one-value rows, again ({round}): {r:?}"));
        }
        eprintln!("9 MiB of one-value rows, again ({round}): workers' VmRSS kB: {:?}", rss_kb(&pids));
    }
    if sorted_workers(&server) != pids {
        problems.push(format!("workers {pids:?} became {:?}", sorted_workers(&server)));
    }
    // A 9 MiB body of small values costs a worker about 350 MB while it is decoded, and the
    // allocator keeps it (per serving thread): about 750 MB per worker were seen after these
    // requests with --threads 2 (debug build). The cap leaves a margin over that; leaks are
    // the next test's business.
    const RSS_CAP_KB: u64 = 1536 * 1024;
    for pid in &pids {
        let rss = proc_status_kb(*pid, "VmRSS").unwrap_or(0);
        let peak = proc_status_kb(*pid, "VmHWM").unwrap_or(0);
        eprintln!("worker {pid}: VmRSS {rss} kB, VmHWM {peak} kB");
        if rss > RSS_CAP_KB {
            problems.push(format!("worker {pid} holds {rss} kB after the bad requests"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n{}",
        problems.len(),
        problems.join("\n"),
        server.output()
    );
}

#[test]
fn memory_reaches_a_plateau_under_repeated_huge_bodies() {
    // One worker with one serving thread: every request lands on the same allocator arena.
    let server = Server::start(&["serve", "--workers", "1", "--threads", "1"]);
    let worker = wait_workers(&server, 1)[0];
    let heavy = post_bytes(&data_of_rows("[5.1]", rows_for("[5.1]", 4 * MIB)));
    let send = |what: &str| {
        let r = exchange(server.addr, heavy.clone(), Ending::Stop).expect("answered");
        assert_eq!(r.status, 422, "{what}: {}", r.text());
        let rss = proc_status_kb(worker, "VmRSS").expect("the worker lives");
        eprintln!("{what}: VmRSS {rss} kB");
        rss
    };
    // Back to back, such requests reuse what the allocator keeps (about 125 MB from the first
    // on, debug build; it goes back to the system a second after the last)...
    let warm: Vec<u64> = (1..=6).map(|i| send(&format!("warm-up {i}"))).collect();
    // ...and then serve the same requests again from what it holds. Now and then one request
    // finds no kept extent that fits and maps more for itself (one reading 65 MB higher, the
    // next ones back down), so the floor of the last three readings is compared, not the
    // highest: each of those is six requests after its counterpart, and a request that leaked
    // 7 MB or more would lift it by over 40 MB.
    let after: Vec<u64> = (1..=6).map(|i| send(&format!("round {i}"))).collect();
    let floor = |readings: &[u64]| readings[3..].iter().copied().min().unwrap_or(0);
    assert!(
        floor(&after) <= floor(&warm) + 40 * 1024,
        "worker memory grew from {warm:?} kB to {after:?} kB over six identical requests"
    );
    assert_eq!(server.worker_pids(), vec![worker]);
}

#[test]
fn a_large_prediction_hands_its_memory_back_afterwards() {
    let server = Server::start(&["serve", "--workers", "1", "--threads", "1"]);
    let worker = wait_workers(&server, 1)[0];
    let idle = proc_status_kb(worker, "VmRSS").expect("the worker lives");
    let row = "[5.1, 3.5, 1.4, 0.2]";
    let r = exchange(server.addr, post_bytes(&data_of_rows(row, rows_for(row, 8 * MIB))), Ending::Stop)
        .expect("answered");
    assert_eq!(r.status, 200, "{}", r.text());
    let peak = proc_status_kb(worker, "VmHWM").expect("the worker lives");
    // Three quarters of what the request took above the idle worker must be given back at
    // once (without the purge, 3 runs out of 3 still held 44-54% of it after 3 s). Without
    // the worker's purge, jemalloc gives pages back only over its decay time (in a release
    // build, 134 to 277 MB of a 210 to 349 MB peak were still resident 2 s later).
    let settled = wait_until(Duration::from_secs(3), || {
        proc_status_kb(worker, "VmRSS").is_some_and(|rss| rss < idle + peak.saturating_sub(idle) / 4)
    });
    assert!(
        settled,
        "the worker still holds {:?} kB after a request that peaked at {peak} kB (idle: {idle} kB)",
        proc_status_kb(worker, "VmRSS")
    );
    // Small requests are served as before.
    assert_eq!(server.post_json(PREDICT, &demo_sample(&server)).status, 200);
}

/// An answer over a MiB is written while it is sent, in chunks: the client gets it whole
/// (chunked, without a Content-Length), row for row what small requests are answered, and the
/// worker serves on.
#[test]
fn a_large_answer_goes_out_in_chunks_equal_to_small_answers() {
    let server = Server::start(&["serve", "--workers", "1", "--threads", "2"]);
    wait_workers(&server, 1);
    // Cells the echo copies from the request (5.1) and cells it formats (3.50, 1.4e0, 2).
    let row = |i: usize| {
        let a = 4.3 + (i % 36) as f64 / 10.0;
        let c = 1.0 + (i % 59) as f64 / 10.0;
        let d = ["0.2", "1.4e0", "2", "0.50"][i % 4];
        format!("[{a:.1}, {:.2}, {c:.1}, {d}]", 2.0 + (i % 24) as f64 / 10.0)
    };
    let rows = 40_000;
    let body = format!("{{\"data\": [{}]}}", (0..rows).map(row).collect::<Vec<_>>().join(", "));
    let big = exchange(server.addr, post_bytes(body.as_bytes()), Ending::Stop).expect("answered");
    assert_eq!(big.status, 200, "{}", big.text());
    assert_eq!(big.header("transfer-encoding"), Some("chunked"));
    assert_eq!(big.header("content-length"), None);
    assert!(big.body.len() > 2 * MIB, "an answer of {} bytes", big.body.len());
    let big = big.json();
    assert_eq!(big["input"].as_array().map(Vec::len), Some(rows));
    for i in [0, 1, 2, 3, 7, 12_345, rows - 1] {
        let small = server.post_json(PREDICT, &format!("{{\"data\": [{}]}}", row(i)));
        assert_eq!(small.status, 200, "{}", small.text());
        assert!(small.header("content-length").is_some(), "a small answer goes out whole");
        let small = small.json();
        assert_eq!(big["input"][i], small["input"][0], "row {i}");
        let (big_target, small_target) = (&big["target"], &small["target"]);
        for (key, value) in small_target.as_object().expect("a target object") {
            let value = if key == "classes" { value } else { &value[0] };
            let at = if key == "classes" { &big_target[key] } else { &big_target[key][i] };
            // Large batches take the dense engine's blocked path, small ones plain loops:
            // scores may differ in the last bit (the engine's tests bound it by 1e-12).
            match (at.as_array(), value.as_array()) {
                (Some(at), Some(value)) if at.iter().all(serde_json::Value::is_f64) => {
                    assert_eq!(at.len(), value.len(), "row {i}, {key}");
                    for (x, y) in at.iter().zip(value) {
                        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                        assert!((x - y).abs() <= 1e-12, "row {i}, {key}: {x} against {y}");
                    }
                }
                _ => assert_eq!(at, value, "row {i}, {key}"),
            }
        }
        for key in ["model", "version", "topics", "list_metrics"] {
            assert_eq!(big[key], small[key], "{key}");
        }
    }
    assert_eq!(server.post_json(PREDICT, &demo_sample(&server)).status, 200);
}
