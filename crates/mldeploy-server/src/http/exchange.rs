//! One exchange on a connection: the connection's phase, shared by its I/O wrapper, its
//! requests and its watchdog, and the response body whose end marks the connection idle.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::Server;
use crate::protocol::Chunks;

/// Where a connection is between requests.
pub(crate) const IDLE: u8 = 0;
/// Bytes of a request head have arrived; the head is not complete.
pub(crate) const HEAD: u8 = 1;
/// A request is being served (from its complete head until its answer is handed to hyper).
const BUSY: u8 = 2;

/// A connection's phase, shared by its I/O wrapper, its requests and its watchdog (all on
/// the connection's task: the atomics are uncontended).
pub(crate) struct ConnState {
    phase: AtomicU8,
    /// Nanoseconds after the server's epoch when the phase began.
    since: AtomicU64,
    /// The connection must linger before closing: request bytes may be left unread.
    linger: AtomicBool,
    /// An answer is still being written (the socket pushed back): the connection is not idle
    /// until it is flushed, however long the client takes to read it.
    writing: AtomicBool,
    /// Requests begun on this connection.
    seq: AtomicU64,
    epoch: Instant,
}

impl ConnState {
    /// A connection opened `now` nanoseconds after `epoch`.
    pub(crate) fn new(now: u64, epoch: Instant) -> Self {
        Self {
            phase: AtomicU8::new(IDLE),
            since: AtomicU64::new(now),
            linger: AtomicBool::new(false),
            writing: AtomicBool::new(false),
            seq: AtomicU64::new(0),
            epoch,
        }
    }

    fn now_nanos(&self) -> u64 {
        (self.epoch.elapsed().as_nanos() as u64).max(1)
    }

    fn set(&self, phase: u8, at: u64) {
        self.since.store(at, Ordering::Relaxed);
        self.phase.store(phase, Ordering::Relaxed);
    }

    pub(crate) fn phase(&self) -> (u8, Instant) {
        let phase = self.phase.load(Ordering::Relaxed);
        let since = self.epoch + Duration::from_nanos(self.since.load(Ordering::Relaxed));
        (phase, since)
    }

    /// A request head is complete; returns when its first byte arrived, now (one reading of
    /// the clock for both), and the request's number on this connection.
    pub(crate) fn begin_request(&self) -> (Instant, Instant, u64) {
        let now = self.now_nanos();
        let started =
            if self.phase.load(Ordering::Relaxed) == HEAD { self.since.load(Ordering::Relaxed) } else { now };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.set(BUSY, now);
        (self.epoch + Duration::from_nanos(started), self.epoch + Duration::from_nanos(now), seq)
    }

    /// Request `seq` has handed over its answer: the connection idles from now (unless a
    /// later request has begun meanwhile).
    pub(crate) fn end_request(&self, seq: u64) {
        if self.seq.load(Ordering::Relaxed) == seq {
            self.set(IDLE, self.now_nanos());
        }
    }

    /// The socket took some of an answer: an idle connection's clock restarts, so a client
    /// that reads a large answer slowly is not cut off while it reads.
    pub(crate) fn wrote(&self) {
        if self.phase.load(Ordering::Relaxed) == IDLE {
            self.since.store(self.now_nanos(), Ordering::Relaxed);
        }
    }

    /// Close with a linger: the answer was sent before the request was read in full.
    pub(crate) fn mark_linger(&self) {
        self.linger.store(true, Ordering::Relaxed);
    }

    /// Whether the connection must linger before closing.
    pub(crate) fn lingering(&self) -> bool {
        self.linger.load(Ordering::Relaxed)
    }

    /// Whether nothing is happening on the connection.
    pub(crate) fn is_idle(&self) -> bool {
        self.phase.load(Ordering::Relaxed) == IDLE
    }

    /// The first bytes of a request head arrived.
    pub(crate) fn head_arriving(&self) {
        self.set(HEAD, self.now_nanos());
    }

    /// Whether an answer is still being written.
    pub(crate) fn writing(&self) -> bool {
        self.writing.load(Ordering::Relaxed)
    }

    /// The socket pushed back (or took everything).
    pub(crate) fn set_writing(&self, writing: bool) {
        self.writing.store(writing, Ordering::Relaxed);
    }

    /// Whether an answer was being written, and clear it.
    pub(crate) fn take_writing(&self) -> bool {
        self.writing.swap(false, Ordering::Relaxed)
    }
}

/// A response body: one buffer, or chunks written as hyper asks for them. Dropping it (hyper
/// does once the answer is handed over) marks the connection idle, which starts its
/// keep-alive clock.
pub(crate) struct ResBody {
    data: Option<Bytes>,
    /// A large answer still being written: chunked transfer encoding, no Content-Length.
    chunks: Option<Chunks>,
    /// The connection was told the answer is handed over (its first chunk was asked for).
    handed: bool,
    state: Arc<ConnState>,
    /// The request this answers, on its connection.
    seq: u64,
    /// Set when the exchange was large: told when it is over (see [`Server::large_exchange_ended`]).
    large: Option<Arc<Server>>,
}

/// A request or answer body at least this large counts as a large exchange: once the worker
/// has had none for a moment, it returns its free memory to the system.
pub(crate) const LARGE_EXCHANGE_BYTES: usize = 1 << 20;

impl ResBody {
    pub(crate) fn new(data: Bytes, state: Arc<ConnState>, seq: u64, large: Option<Arc<Server>>) -> Self {
        Self { data: (!data.is_empty()).then_some(data), chunks: None, handed: false, state, seq, large }
    }

    /// A body written chunk by chunk while it is sent.
    pub(crate) fn chunked(
        chunks: Chunks,
        state: Arc<ConnState>,
        seq: u64,
        large: Option<Arc<Server>>,
    ) -> Self {
        Self { data: None, chunks: Some(chunks), handed: false, state, seq, large }
    }
}

impl Body for ResBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        if let Some(chunks) = &mut this.chunks {
            // hyper has the answer once it asks for its body: from here the connection's clock
            // runs as for a one-buffer answer being written (a client that stops reading is cut
            // off after the request timeout, not kept forever).
            if !std::mem::replace(&mut this.handed, true) {
                this.state.end_request(this.seq);
            }
            let next = (chunks.0)();
            if next.is_none() {
                this.chunks = None;
            }
            return Poll::Ready(next.map(|d| Ok(Frame::data(d))));
        }
        Poll::Ready(this.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.chunks.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.chunks {
            // Unknown length: hyper sends it chunked (or until close, to an HTTP/1.0 client).
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64)),
        }
    }
}

impl Drop for ResBody {
    fn drop(&mut self) {
        self.state.end_request(self.seq);
        if let Some(server) = &self.large {
            server.large_exchange_ended();
        }
    }
}
