//! Accepting connections and running one: timeouts by phase, drain, and hyper's automatic
//! error answers turned into JSON.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use slog::{debug, warn};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::exchange::{ConnState, ResBody, HEAD, IDLE};
use super::handler;
use super::Server;

/// The longest a worker leaves a waiting connection to a worker that serves fewer, and the
/// pause between two looks at the board meanwhile (tokio's timer counts in milliseconds).
const YIELD_ACCEPT: Duration = Duration::from_millis(2);
const YIELD_STEP: Duration = Duration::from_millis(1);
/// Largest request line plus headers.
pub(crate) const MAX_HEAD: usize = 8 * 1024;
/// How long the last answer of a closing connection may take to go out.
const FLUSH_TIME: Duration = Duration::from_secs(2);
/// While lingering, a client that sends nothing for this long is taken to be done sending
/// (nginx's `lingering_timeout`): closing then leaves no unread byte, so no reset.
const LINGER_QUIET: Duration = Duration::from_secs(5);
/// The buffer lingering reads into.
const LINGER_BUFFER: usize = 64 * 1024;

/// Accept connections until the drain begins; then drop the listener at once.
///
/// When a connection is waiting and another worker of the master serves fewer connections than
/// this one, this one waits up to [`YIELD_ACCEPT`] for that worker to take it (see
/// `mldeploy_prefork::Seat`): every worker is woken for each new connection, and without this
/// whichever wakes first would take most of a burst.
pub(crate) async fn accept_loop(server: Arc<Server>, listener: AsyncFd<std::net::TcpListener>) {
    let drain = server.drain_begun.notified();
    tokio::pin!(drain);
    drain.as_mut().enable();
    if server.draining() {
        return;
    }
    // When this worker began to leave the waiting connection to the others.
    let mut yielding_since: Option<Instant> = None;
    loop {
        let mut ready = tokio::select! {
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(e) => {
                    warn!(server.ctx.log, "listener failed"; "error" => %e);
                    return;
                }
            },
            _ = drain.as_mut() => break,
        };
        if server.seat.as_ref().is_some_and(|seat| seat.others_hold_fewer()) {
            let since = *yielding_since.get_or_insert_with(Instant::now);
            if since.elapsed() < YIELD_ACCEPT {
                // The readiness stays set: the next turn looks again at once after the pause.
                drop(ready);
                tokio::select! {
                    _ = tokio::time::sleep(YIELD_STEP) => continue,
                    _ = drain.as_mut() => break,
                }
            }
        }
        match ready.try_io(|listener| listener.get_ref().accept()) {
            Ok(Ok((stream, remote))) => {
                yielding_since = None;
                match stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) {
                    Ok(stream) => {
                        server.connection_opened();
                        tokio::spawn(run(server.clone(), stream, remote));
                    }
                    Err(e) => warn!(server.ctx.log, "accepted connection unusable"; "error" => %e),
                }
            }
            Ok(Err(e)) => {
                if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted) {
                    // Out of descriptors or memory: pause instead of spinning.
                    warn!(server.ctx.log, "accept failed"; "error" => %e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // Another worker took it: wait for the next one.
            Err(_would_block) => yielding_since = None,
        }
    }
}

/// The per-connection service handed to hyper.
struct ConnService {
    server: Arc<Server>,
    state: Arc<ConnState>,
    remote: SocketAddr,
}

type BoxFuture =
    Pin<Box<dyn std::future::Future<Output = Result<Response<ResBody>, std::convert::Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ResBody>;
    type Error = std::convert::Infallible;
    // Boxed so that the connection can be polled without shutdown (that needs `Unpin`).
    type Future = BoxFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let (started, now, seq) = self.state.begin_request();
        let state = self.state.clone();
        Box::pin(handler::handle(self.server.clone(), state, seq, self.remote, req, started, now))
    }
}

/// How a connection's serving loop ended.
enum End {
    /// hyper finished (client closed, `Connection: close`, error answered).
    Done,
    /// Idle past keep-alive (or the drain grace): close without a word.
    Idle,
    /// A head started and did not complete in time: 408.
    SlowHead,
}

/// Serve one connection until it closes.
async fn run(server: Arc<Server>, stream: TcpStream, remote: SocketAddr) {
    // Counts the connection closed however the task ends (even by a panic).
    let _open = OpenConnection(server.clone());
    let _ = stream.set_nodelay(true);
    let state = Arc::new(ConnState::new(server.now_nanos(), server.epoch));
    let io = TokioIo::new(Tracked::new(stream, state.clone(), server.clone(), remote));
    let service = ConnService { server: server.clone(), state: state.clone(), remote };
    let mut conn = http1::Builder::new()
        .keep_alive(true)
        .max_header_size(MAX_HEAD)
        .header_read_timeout(None)
        .serve_connection(io, service);

    // The watchdog: one timer, armed at the earliest deadline of the connection's phase. A
    // phase change only re-arms it when the new deadline is earlier; a timer that fires early
    // re-arms itself. It is polled after hyper, so it sees every phase change hyper causes.
    let drain = server.drain_begun.notified();
    tokio::pin!(drain);
    drain.as_mut().enable();
    let mut drain_seen = server.draining();
    let mut armed = Instant::now() + FAR;
    let sleep = tokio::time::sleep_until(armed.into());
    tokio::pin!(sleep);
    let end = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = conn.poll_without_shutdown(cx) {
            if let Err(e) = result {
                debug!(server.ctx.log, "connection ended with an error"; "remote" => %remote, "error" => %e);
                state.mark_linger();
            }
            return Poll::Ready(End::Done);
        }
        if !drain_seen && drain.as_mut().poll(cx).is_ready() {
            drain_seen = true;
        }
        loop {
            if let Some(wake) = phase_deadline(&server, &state).map(|(_, at)| at) {
                if wake < armed {
                    armed = wake;
                    sleep.as_mut().reset(armed.into());
                }
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            match phase_deadline(&server, &state) {
                Some((end, at)) if now >= at => return Poll::Ready(end),
                Some((_, at)) => armed = at,
                None => armed = now + FAR,
            }
            sleep.as_mut().reset(armed.into());
        }
    })
    .await;

    match end {
        End::Idle => drop(conn),
        End::Done => {
            let mut io = conn.into_parts().io.into_inner();
            if state.lingering() {
                linger(&server, &mut io, remote).await;
            } else {
                let _ = tokio::time::timeout(FLUSH_TIME, io.shutdown()).await;
            }
        }
        End::SlowHead => {
            let mut io = conn.into_parts().io.into_inner();
            let id = server.new_request_id();
            let bytes = handler::raw_error(&server, 408, "request_timeout", TIMEOUT_MESSAGE, &id);
            let _ = tokio::time::timeout(FLUSH_TIME, io.write_all(&bytes)).await;
            handler::log_raw(&server, remote, 408, bytes.len(), &id);
            linger(&server, &mut io, remote).await;
        }
    }
}

/// One open connection of the server; closed on drop.
struct OpenConnection(Arc<Server>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connection_closed();
    }
}

const TIMEOUT_MESSAGE: &str = "the request did not arrive in time";

/// A timer far enough away to mean "none".
const FAR: Duration = Duration::from_secs(3600);

/// What the connection's phase allows, until when: idle until keep-alive (or the drain grace)
/// runs out, a head until the request timeout. A request in progress has no deadline here
/// (its body read has its own).
fn phase_deadline(server: &Server, state: &ConnState) -> Option<(End, Instant)> {
    let settings = &server.ctx.settings;
    let (phase, since) = state.phase();
    match phase {
        // An answer still being written: the client has `request_timeout` between two reads.
        IDLE if state.writing() => Some((End::Idle, since + settings.request_timeout)),
        IDLE => {
            let mut deadline = since + settings.keepalive;
            if let Some(drain) = server.drain_started() {
                deadline = deadline.min(since.max(drain) + server.drain_idle_grace());
            }
            Some((End::Idle, deadline))
        }
        HEAD => Some((End::SlowHead, since + settings.request_timeout)),
        _ => None,
    }
}

/// Why a linger ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LingerEnd {
    /// The client closed its side (or the socket failed): nothing is left unread.
    Closed,
    /// The client sent nothing for [`LINGER_QUIET`].
    Quiet,
    /// `linger_bytes` were read and dropped.
    Bytes,
    /// `linger_time` ran out.
    Time,
}

impl LingerEnd {
    fn as_str(self) -> &'static str {
        match self {
            LingerEnd::Closed => "closed",
            LingerEnd::Quiet => "quiet",
            LingerEnd::Bytes => "bytes",
            LingerEnd::Time => "time",
        }
    }
}

/// After an answer sent before the request was read in full: send what is buffered, stop
/// writing, and read (dropping it) what the client still sends, until it closes or pauses,
/// or up to `linger_bytes` and `linger_time`. A client that sends its whole body before it
/// reads (Python's `http.client`) then finds our answer instead of a reset: closing a socket
/// with unread bytes in it makes the kernel reset the connection, and the client's next write
/// fails before it ever reads. Returns the bytes dropped.
async fn linger(server: &Server, io: &mut Tracked, remote: SocketAddr) -> usize {
    let settings = &server.ctx.settings;
    let deadline = tokio::time::Instant::now() + settings.linger_time;
    let (total, end) = drain_until(io, settings.linger_bytes, deadline, LINGER_QUIET).await;
    debug!(server.ctx.log, "linger ended"; "remote" => %remote, "bytes" => total, "why" => end.as_str());
    total
}

/// Shut down the writing side, then read and drop up to `max_bytes` until `deadline`, the
/// client's end of the stream, or `quiet` without a byte.
async fn drain_until<S>(
    io: &mut S,
    max_bytes: usize,
    deadline: tokio::time::Instant,
    quiet: Duration,
) -> (usize, LingerEnd)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout_at(deadline, io.shutdown()).await {
        Err(_) => return (0, LingerEnd::Time),
        Ok(Err(_)) => return (0, LingerEnd::Closed),
        Ok(Ok(())) => {}
    }
    let mut buf = vec![0u8; LINGER_BUFFER.min(max_bytes)];
    let mut total = 0;
    loop {
        let room = max_bytes - total;
        if room == 0 {
            return (total, LingerEnd::Bytes);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return (total, LingerEnd::Time);
        }
        let until = (now + quiet).min(deadline);
        let limit = room.min(buf.len());
        match tokio::time::timeout_at(until, io.read(&mut buf[..limit])).await {
            Err(_) if until == deadline => return (total, LingerEnd::Time),
            Err(_) => return (total, LingerEnd::Quiet),
            Ok(Ok(0)) | Ok(Err(_)) => return (total, LingerEnd::Closed),
            Ok(Ok(n)) => total += n,
        }
    }
}

/// The connection's socket, watched: reads mark a head as started, and hyper's automatic
/// error answers (431, 400, ...) are replaced by our JSON errors.
pub(crate) struct Tracked {
    stream: TcpStream,
    state: Arc<ConnState>,
    server: Arc<Server>,
    remote: SocketAddr,
    /// Bytes we write in place of what hyper handed us.
    pending: Vec<u8>,
    written: usize,
}

impl Tracked {
    fn new(stream: TcpStream, state: Arc<ConnState>, server: Arc<Server>, remote: SocketAddr) -> Self {
        Self { stream, state, server, remote, pending: Vec::new(), written: 0 }
    }

    /// Write what is pending; ready once it is all written.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.pending.is_empty() {
            self.pending = Vec::new();
            self.written = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// If `buf` ends with a whole automatic answer of hyper (an error head without our request id
/// and without a body), where that answer starts and its status code. What comes before it are
/// our own answers to earlier pipelined requests, which hyper may write in the same buffer.
fn automatic_answer(buf: &[u8]) -> Option<(usize, u16)> {
    // Every write passes here: our answers end with a body, and hyper's heads are short, so
    // only the end of a buffer that ends a head is searched.
    if !buf.ends_with(b"\r\n\r\n") {
        return None;
    }
    let tail = buf.len().saturating_sub(AUTOMATIC_HEAD_MAX);
    let start = tail + memchr::memmem::rfind(&buf[tail..], b"HTTP/1.")?;
    automatic_head(&buf[start..]).map(|code| (start, code))
}

/// More than the longest head hyper writes by itself (status line, `connection`,
/// `content-length` and `date`).
const AUTOMATIC_HEAD_MAX: usize = 512;

/// If `buf` is exactly an automatic answer of hyper, its status code.
fn automatic_head(buf: &[u8]) -> Option<u16> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ").or_else(|| buf.strip_prefix(b"HTTP/1.0 "))?;
    let code = std::str::from_utf8(rest.get(..3)?).ok()?.parse::<u16>().ok()?;
    if !(400..500).contains(&code) {
        return None;
    }
    let head_end = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let head = &buf[..head_end];
    let ours = memchr::memmem::find(head, b"\r\nx-request-id:").is_some();
    let empty = memchr::memmem::find(head, b"\r\ncontent-length: 0\r\n").is_some();
    (!ours && empty && head_end == buf.len()).then_some(code)
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let state = &self.state;
            if state.is_idle() {
                state.head_arriving();
            }
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_pending(cx))?;
        if let Some((start, code)) = automatic_answer(buf) {
            let (error, message) = match code {
                431 => ("header_too_large", "the request line and headers exceed 8 KiB (or 100 headers)"),
                414 => ("uri_too_long", "the request target is too long"),
                _ => ("bad_request", "the request line or a header is malformed"),
            };
            let id = this.server.new_request_id();
            let answer = handler::raw_error(&this.server, code, error, message, &id);
            handler::log_raw(&this.server, this.remote, code, answer.len(), &id);
            this.pending = [&buf[..start], &answer].concat();
            this.written = 0;
            this.state.mark_linger();
            // We own these bytes now; they go out here or on the flush hyper does next.
            let _ = this.poll_pending(cx);
            return Poll::Ready(Ok(buf.len()));
        }
        let result = Pin::new(&mut this.stream).poll_write(cx, buf);
        match result {
            Poll::Pending => this.state.set_writing(true),
            Poll::Ready(Ok(n)) if n > 0 => this.state.wrote(),
            Poll::Ready(_) => {}
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        let result = Pin::new(&mut self.stream).poll_flush(cx);
        if matches!(result, Poll::Ready(Ok(()))) && self.state.take_writing() {
            // Everything hyper had is on its way: the idle clock starts now.
            self.state.wrote();
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        // hyper then writes each answer from one flat buffer, which the check above needs.
        false
    }
}

#[cfg(test)]
mod tests {
    use super::{automatic_answer, drain_until, LingerEnd};
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    const LONG: Duration = Duration::from_secs(60);
    const SHORT: Duration = Duration::from_millis(50);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
    }

    #[test]
    fn lingering_reads_until_the_client_closes() {
        runtime().block_on(async {
            let (mut server, mut client) = tokio::io::duplex(1024);
            let sender = tokio::spawn(async move {
                client.write_all(&[b'x'; 5000]).await.expect("write");
            });
            let drained = drain_until(&mut server, 1 << 20, Instant::now() + LONG, LONG).await;
            assert_eq!(drained, (5000, LingerEnd::Closed));
            sender.await.expect("sender");
        });
    }

    #[test]
    fn lingering_stops_at_the_byte_bound_exactly() {
        runtime().block_on(async {
            let (mut server, mut client) = tokio::io::duplex(64 * 1024);
            let sender = tokio::spawn(async move {
                // Never stops on its own: only the server's close ends it.
                while client.write_all(&[b'x'; 10_000]).await.is_ok() {}
            });
            let drained = drain_until(&mut server, 1_000_003, Instant::now() + LONG, LONG).await;
            assert_eq!(drained, (1_000_003, LingerEnd::Bytes));
            drop(server);
            sender.await.expect("sender");
        });
    }

    #[test]
    fn lingering_stops_when_the_client_pauses_or_the_time_runs_out() {
        runtime().block_on(async {
            let (mut server, mut client) = tokio::io::duplex(1024);
            client.write_all(b"some bytes").await.expect("write");
            let drained = drain_until(&mut server, 1 << 20, Instant::now() + LONG, SHORT).await;
            assert_eq!(drained, (10, LingerEnd::Quiet));

            let (mut server, _client) = tokio::io::duplex(1024);
            let drained = drain_until(&mut server, 1 << 20, Instant::now() + SHORT, LONG).await;
            assert_eq!(drained, (0, LingerEnd::Time));
        });
    }

    const AUTO_431: &[u8] =
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n";

    #[test]
    fn recognises_hyper_automatic_answers_only() {
        assert_eq!(automatic_answer(AUTO_431), Some((0, 431)));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nx-request-id: 1\r\n\r\n";
        assert_eq!(automatic_answer(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\nHTTP/1.1 200 OK\r\n";
        assert_eq!(automatic_answer(with_body), None);
        assert_eq!(automatic_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"), None);
        assert_eq!(automatic_answer(b"{\"a\": 1}"), None);
    }

    #[test]
    fn finds_an_automatic_answer_after_answers_to_earlier_pipelined_requests() {
        let ours = b"HTTP/1.1 200 OK\r\ncontent-length: 15\r\nx-request-id: 1\r\n\r\n{\"status\":\"ok\"}";
        let both = [&ours[..], AUTO_431].concat();
        assert_eq!(automatic_answer(&both), Some((ours.len(), 431)));
        // Our answer alone, or followed by part of another of ours, is left alone.
        assert_eq!(automatic_answer(ours), None);
        let ours_then_ours = [&ours[..], &ours[..]].concat();
        assert_eq!(automatic_answer(&ours_then_ours), None);
    }
}
