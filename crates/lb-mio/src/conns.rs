//! The I/O half of lb-mio's connections in the shared [`ConnTable`](lb_runtime::ConnTable):
//! reads, non-blocking connects, queued writes and the one `Closed` of each. lb-tokio's
//! `conns.rs` holds the same with tasks.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use lb_core::{CloseReason, ConnId, Input};
use lb_runtime::backpressure::Watermarks;
use lb_runtime::{BackendTls, ConnState, OutputGauge, QueueGauge, BATCH_MAX};
use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::{tls, Driver};

/// What lb-mio holds per connection besides the table's shared facts.
pub(crate) struct Io {
    pub(crate) stream: TcpStream,
    /// A TLS frontend or backend: its rustls state; the core reads and writes the plaintext
    /// inside.
    pub(crate) tls: Option<Box<tls::TlsConn>>,
    /// A TLS backend still connecting: what its session will be made of once TCP is up.
    pub(crate) backend_tls: Option<BackendTls>,
    /// Plaintext waiting to be written (or to go into the TLS session).
    pub(crate) out: VecDeque<Bytes>,
    /// `out`'s bytes against the output cap, and whether the core was told it is high (a
    /// frontend is not read meanwhile).
    pub(crate) gauge: QueueGauge,
    /// What the poll watches for now.
    pub(crate) interest: Interest,
    /// Listed in `Driver::dirty`.
    pub(crate) dirty: bool,
}

impl Io {
    pub(crate) fn new(stream: TcpStream, interest: Interest) -> Io {
        Io {
            stream,
            tls: None,
            backend_tls: None,
            out: VecDeque::new(),
            gauge: QueueGauge::default(),
            interest,
            dirty: false,
        }
    }

    /// Writes the queue until it is empty or the socket would block (through the TLS session,
    /// if there is one); returns the plaintext bytes written. A `Closing` TLS connection ends
    /// its session with close_notify once the queue is written.
    pub(crate) fn write_queue(&mut self, state: ConnState) -> io::Result<usize> {
        match self.tls.as_mut() {
            Some(session) => {
                let closing = state == ConnState::Closing;
                let written = session.write(&mut self.out, &mut self.stream, closing)?;
                // What rustls could not take waits: out of the core's shared chunks, as
                // `lb_runtime::write_queue` does for plain sockets.
                if !self.out.is_empty() {
                    lb_runtime::detach_backlog(&mut self.out);
                }
                Ok(written)
            }
            None => lb_runtime::write_queue(&mut self.out, &mut self.stream),
        }
    }

    /// Nothing is left to write: no plaintext queued, no TLS record (a handshake message, an
    /// alert, data) waiting for the socket.
    pub(crate) fn is_flushed(&self) -> bool {
        self.out.is_empty() && !self.tls.as_ref().is_some_and(|t| t.wants_write())
    }
}

/// The table reads lb-mio's queued bytes from the plain gauge the loop keeps.
impl OutputGauge for Io {
    fn queued(&self) -> usize {
        self.gauge.queued()
    }

    fn is_high(&self) -> bool {
        self.gauge.is_high()
    }

    fn add(&mut self, len: usize) {
        self.gauge.add(len);
    }

    fn set_high(&mut self) {
        self.gauge.set_high();
    }
}

impl Driver {
    /// Readiness of the connection at `slot`: a connect's outcome, then reads and writes.
    pub(crate) fn ready(&mut self, slot: usize, event: &mio::event::Event) {
        let Some(c) = self.conns.at_slot_mut(slot) else {
            return;
        };
        let id = c.id();
        if c.state == ConnState::Connecting {
            match connect_result(&c.io.stream) {
                Ok(false) => return,
                Ok(true) => {
                    c.state = ConnState::Open;
                    let _ = c.io.stream.set_nodelay(true);
                    c.io.tls = c.io.backend_tls.take().and_then(|(config, name)| {
                        // The ClientHello goes out with the first flush; the core's messages
                        // wait in rustls until the handshake is done.
                        match rustls::ClientConnection::new(config, name) {
                            Ok(session) => Some(Box::new(tls::TlsConn::new(session))),
                            Err(e) => {
                                tracing::warn!(conn = %id, error = %e, "TLS to the backend refused");
                                None
                            }
                        }
                    });
                    self.mark_dirty(id);
                    self.lb
                        .handle_input(Instant::now(), Input::Connected { conn: id });
                    self.drain();
                }
                Err(e) => {
                    tracing::debug!(conn = %id, error = %e, "connect failed");
                    self.finish(id, CloseReason::Error);
                    self.drain();
                    return;
                }
            }
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            // After the peer's FIN no further edge comes: read on to the end of the stream.
            self.read(id, event.is_read_closed() || event.is_error());
        }
        if event.is_writable() {
            self.mark_dirty(id);
        }
    }

    /// Reads until `WouldBlock`, a short read (unless `to_end`), or [`BATCH_MAX`] times and then
    /// again on the next pass.
    pub(crate) fn read(&mut self, id: ConnId, to_end: bool) {
        for _ in 0..BATCH_MAX {
            let Some(c) = self.conns.get_mut(id) else {
                return;
            };
            if c.state != ConnState::Open {
                return;
            }
            if c.io.gauge.is_high() && Watermarks::pauses_reading(c.is_frontend()) {
                // Its responses cannot be written: reading more would only grow the queue.
                // Resumed by `flush` below the low-water mark.
                return;
            }
            if c.io.tls.is_some() {
                return self.read_tls(id, &[]);
            }
            match self.read_buf.read_some(&mut c.io.stream) {
                Ok(0) => {
                    self.finish(id, CloseReason::PeerClosed);
                    self.drain();
                    return;
                }
                Ok(n) => {
                    let bytes = self.read_buf.take();
                    self.lb
                        .handle_input(Instant::now(), Input::Received { conn: id, bytes });
                    self.drain();
                    if !to_end && self.read_buf.was_short(n) {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(conn = %id, error = %e, "read failed");
                    self.finish(id, CloseReason::Error);
                    self.drain();
                    return;
                }
            }
        }
        self.readable_again.push(id);
    }

    /// Reads a TLS frontend: `prefix` (bytes read with its PROXY header), then every record
    /// the socket has; the plaintext to the core.
    pub(crate) fn read_tls(&mut self, id: ConnId, prefix: &[u8]) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        let Some(session) = c.io.tls.as_mut() else {
            return;
        };
        let mut plain = BytesMut::new();
        let result = session.read(
            &mut std::io::Read::chain(prefix, &mut c.io.stream),
            &mut plain,
        );
        let (handshaking, wants_write, version) = (
            session.handshaking,
            session.wants_write(),
            session.version(),
        );
        // A TLS backend's handshake is not one of the listeners': neither counted nor capped.
        let frontend = c.is_frontend();
        let counters = self
            .tls
            .as_ref()
            .filter(|_| frontend)
            .map(|t| t.counters.clone());
        match result {
            Ok(read) => {
                if read.handshake_done && frontend {
                    self.handshaking = self.handshaking.saturating_sub(1);
                    if let Some(counters) = &counters {
                        counters.handshake_done(version);
                    }
                }
                if wants_write {
                    self.mark_dirty(id);
                }
                if !plain.is_empty() {
                    self.lb.handle_input(
                        Instant::now(),
                        Input::Received {
                            conn: id,
                            bytes: plain,
                        },
                    );
                    self.drain();
                }
                if read.eof {
                    // A hang-up mid-handshake is a failed handshake: its place in the cap is
                    // freed now, not left for a timeout that finds the connection gone (found
                    // by the TLS end-to-end tests).
                    if handshaking && frontend {
                        if let Some(counters) = &counters {
                            counters
                                .failed_other
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                    self.finish(id, CloseReason::PeerClosed);
                    self.drain();
                }
            }
            Err(e) => {
                tracing::debug!(conn = %id, error = %e, "TLS read failed");
                if handshaking && frontend {
                    if let Some(counters) = &counters {
                        counters.handshake_failed(&e);
                    }
                }
                // A TLS error leaves an alert to send; the connection is done either way.
                if let Some(c) = self.conns.get_mut(id) {
                    if let Some(session) = c.io.tls.as_mut() {
                        let _ = session.write(&mut VecDeque::new(), &mut c.io.stream, false);
                    }
                }
                self.finish(id, CloseReason::Error);
                self.drain();
            }
        }
    }

    /// Starts connecting `conn` to `to` (a backend, or a frontend the core dials out to); a
    /// connect that fails at once is reported closed at once. The core gives up on a slow one
    /// with `Output::Abort`.
    pub(crate) fn start_connect(&mut self, conn: ConnId, to: SocketAddr, frontend: bool) {
        match self.connect(conn, to, frontend) {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(conn = %conn, error = %e, "connect failed");
                let reason = CloseReason::Error;
                self.lb
                    .handle_input(Instant::now(), Input::Closed { conn, reason });
            }
        }
    }

    /// Registers a non-blocking connect of `conn` to `to` and its table entry.
    fn connect(&mut self, conn: ConnId, to: SocketAddr, frontend: bool) -> io::Result<()> {
        let mut stream = TcpStream::connect(to)?;
        self.marks.bound_send_buffer(&stream);
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut stream, Token(conn.slot()), interest)?;
        let io = Io::new(stream, interest);
        self.conns.insert(conn, frontend, ConnState::Connecting, io);
        Ok(())
    }

    /// Lists `id` for the next write pass.
    pub(crate) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.conns.get_mut(id) {
            if !c.io.dirty {
                c.io.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Writes every queue that grew; closes connections whose `Close` is now flushed.
    pub(crate) fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            for id in std::mem::take(&mut self.dirty) {
                self.flush(id);
            }
            self.drain();
        }
    }

    /// Writes `id`'s queue; closes it once a requested close is flushed, sets its interest, and
    /// reports a queue drained below the low-water mark.
    fn flush(&mut self, id: ConnId) {
        let Some(c) = self.conns.get_mut(id) else {
            return;
        };
        c.io.dirty = false;
        if c.state == ConnState::Connecting {
            return;
        }
        let written = match c.io.write_queue(c.state) {
            Ok(written) => written,
            Err(e) => {
                tracing::debug!(conn = %id, error = %e, "write failed");
                let reason = c.state.closed_reason(CloseReason::Error);
                self.finish(id, reason);
                return;
            }
        };
        if c.state == ConnState::Closing && c.io.is_flushed() {
            let _ = c.io.stream.shutdown(Shutdown::Both);
            self.finish(id, CloseReason::Requested);
            return;
        }
        let drained = c.io.gauge.written(written, &self.marks);
        let paused = c.io.gauge.is_high() && Watermarks::pauses_reading(c.is_frontend());
        let want = match (c.state, c.io.is_flushed(), paused) {
            (ConnState::Closing, ..) | (_, false, true) => Interest::WRITABLE,
            (_, true, _) => Interest::READABLE,
            (_, false, false) => Interest::READABLE | Interest::WRITABLE,
        };
        if want != c.io.interest {
            c.io.interest = want;
            if let Err(e) =
                self.poll
                    .registry()
                    .reregister(&mut c.io.stream, Token(id.slot()), want)
            {
                tracing::warn!(conn = %id, error = %e, "reregister failed");
                self.finish(id, CloseReason::Error);
                return;
            }
        }
        if drained {
            let level = lb_runtime::backpressure::QueueLevel::Low;
            self.lb
                .handle_input(Instant::now(), Input::OutputQueue { conn: id, level });
            // Bytes that arrived while it was paused raised no new edge: read them now.
            self.readable_again.push(id);
        }
    }

    /// Feeds the one `Closed` of `id` and forgets its socket. The caller drains.
    pub(crate) fn finish(&mut self, id: ConnId, reason: CloseReason) {
        let Some(mut c) = self.conns.finish(&mut self.lb, Instant::now(), id, reason) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.io.stream);
        // However it ends, a handshake in progress frees its place in the cap here.
        if c.is_frontend() && c.io.tls.as_ref().is_some_and(|t| t.handshaking) {
            self.handshaking = self.handshaking.saturating_sub(1);
        }
    }
}

/// Whether a non-blocking connect finished: `Ok(true)` connected, `Ok(false)` still in progress,
/// `Err` failed (mio's documented recipe: `take_error`, then `peer_addr`).
fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(e) = stream.take_error()? {
        return Err(e);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotConnected || is_in_progress(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(unix)]
fn is_in_progress(e: &io::Error) -> bool {
    // `ErrorKind::InProgress` is not stable yet.
    e.raw_os_error() == Some(libc::EINPROGRESS)
}

#[cfg(not(unix))]
fn is_in_progress(_: &io::Error) -> bool {
    false
}
