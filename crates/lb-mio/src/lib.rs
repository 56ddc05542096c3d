//! # lb-mio: the balancer on a mio readiness loop
//!
//! One thread, one [`mio::Poll`], one [`Balancer`] owned by the loop. Each connection's mio
//! `Token` is its `ConnId::slot`; listeners and the signal pipe take tokens at the top of the
//! token space, which slots (below `u32::MAX`) never reach.
//!
//! Per wake-up the loop:
//! 1. accepts on ready listeners, reads ready connections (at most [`lb_runtime::BATCH_MAX`] reads
//!    each, then the connection is revisited on the next pass with a zero poll timeout), and
//!    completes non-blocking connects (`take_error`, then `peer_addr`);
//! 2. after every input, drains the core's outputs: `Send` appends to the connection's
//!    `VecDeque<Bytes>` (past the output cap the connection is closed and reported as
//!    [`CloseReason::OutputOverflow`]), `Close` flushes then closes;
//! 3. writes every queue that grew, vectored, until `WouldBlock`; `WRITABLE` interest is on
//!    only while a queue is non-empty; a connection closing with output still queued flushes
//!    until it is written or the core gives up on it with `Abort` (as it does on a connect);
//! 4. feeds `Input::Timeout` once the core's deadline has passed, and polls again with the
//!    nearest deadline as timeout; under
//!    load it first sleeps out what is left of `--batch-window` since the last wake-up
//!    ([`lb_runtime::WakePacer`]), so the next poll finds a batch.
//!
//! `--workers N` runs N such loops, each on a thread with its own `Poll` and listen sockets of
//! its own on the same addresses ([`lb_cli::run_workers`]). The process takes the signals and
//! sends each loop its [`lb_cli::Command`]s: on stop, accepting stops, queued output is flushed
//! for at most [`lb_runtime::SHUTDOWN_FLUSH_MAX`], and the final counters are returned; SIGHUP's
//! reread configuration is fed as `Input::Reload`. Commands, resolver answers and `--admin`
//! commands all wake the poll through its one `mio::Waker` (mio allows one per `Poll`); admin
//! commands are applied with [`lb_cli::Ops::handle_admin`] between events.
//!
//! With `--proxy-protocol` an accepted socket first waits, under a token above the connection
//! slots, until its PROXY header is whole ([`lb_runtime::ProxyHeaderReader`]); only then does the
//! core learn of it, with the announced client address and the bytes after the header.
//!
//! Logging, the `--metrics` snapshot (published at the end of a wake-up, at most every
//! [`lb_cli::PUBLISH_EVERY`]; the poll timeout includes the pending publish) and rate-limit
//! summaries go through one [`lb_cli::Ops`].

mod tls;

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_cli::{Command, Control, Ops, Settings, Worker};
use lb_core::{Balancer, CloseReason, ConnId, Input, ListenerId, Output, Stats};
use lb_runtime::backpressure::{Admit, Watermarks};
use lb_runtime::{
    ProxyHeaderReader, ProxyRead, ProxyReject, RunError, WakePacer, BATCH_MAX,
    PROXY_HEADER_TIMEOUT, PROXY_PENDING_MAX, SHUTDOWN_FLUSH_MAX,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

/// Runs `--workers` balancers, each on a thread with its own `Poll`, until SIGINT or SIGTERM,
/// then flushes queued output (at most [`SHUTDOWN_FLUSH_MAX`]) and returns the sum of their
/// final counters.
pub fn run(settings: Settings) -> Result<Stats, RunError> {
    lb_cli::run_workers(settings, run_worker)
}

/// Runs one worker on the calling thread until the process tells it to stop.
pub fn run_worker(worker: Worker) -> Result<Stats, RunError> {
    let mut driver = Driver::new(worker)?;
    driver.serve()?;
    driver.flush_all();
    Ok(driver.lb.stats().clone())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Non-blocking connect in progress; sends queue up meanwhile.
    Connecting,
    Open,
    /// `Output::Close` performed: no more reading; closes once the queue is written.
    Closing,
}

struct Conn {
    id: ConnId,
    stream: TcpStream,
    frontend: bool,
    /// A TLS frontend or backend: its rustls state; the core reads and writes the plaintext
    /// inside.
    tls: Option<Box<tls::TlsConn>>,
    /// A TLS backend still connecting: what its session will be made of once TCP is up.
    backend_tls: Option<lb_runtime::BackendTls>,
    state: State,
    out: VecDeque<Bytes>,
    /// Sum of `out`'s lengths, checked against the output cap.
    queued: usize,
    /// Reported to the core over the high-water mark (and not yet back below the low one):
    /// a frontend is not read meanwhile.
    above_high: bool,
    interest: Interest,
    /// Listed in `Driver::dirty`.
    dirty: bool,
}

/// An accepted connection waiting for its PROXY header (`--proxy-protocol`).
struct Pending {
    stream: TcpStream,
    listener: ListenerId,
    peer: SocketAddr,
    reader: ProxyHeaderReader,
    deadline: Instant,
}

struct Driver {
    lb: Balancer,
    ops: Ops,
    poll: Poll,
    /// Indexed by `ConnId::slot`, which is also the connection's token.
    conns: Vec<Option<Conn>>,
    listeners: Vec<(ListenerId, TcpListener)>,
    /// Commands from the process (stop, reload), announced by the control waker.
    control: Control,
    /// Per listener (by index): accepted connections first wait for their PROXY header
    /// (`--proxy-protocol` for plain listeners, `--listen-tls ADDR,proxy-protocol`).
    proxied: Vec<bool>,
    /// Token `PENDING_TOKEN_BASE + key`.
    pending: slab::Slab<Pending>,
    /// Header deadlines in accept order (all have the same timeout).
    pending_deadlines: VecDeque<(Instant, usize)>,
    read_buf: lb_runtime::ReadBuffer,
    /// The output queues' marks and ceiling ([`lb_runtime::backpressure`]).
    marks: Watermarks,
    /// Connections whose queue grew since they were last written.
    dirty: Vec<ConnId>,
    /// Connections that hit the per-wake-up read bound and may have more to read.
    readable_again: Vec<ConnId>,
    /// Keeps busy wake-ups `--batch-window` apart.
    pacer: WakePacer,
    /// Wakes `poll` when a name is resolved or an admin command waits (mio allows one waker
    /// per `Poll`).
    dns_waker: std::sync::Arc<mio::Waker>,
    /// `--admin` commands, applied between events.
    admin: lb_cli::admin::AdminQueue,
    /// Started at the first `Output::Resolve`: most runs never dial a host name.
    dns: Option<lb_runtime::dns::DnsThread>,
    /// TLS listeners' configuration, if any.
    tls: Option<std::sync::Arc<lb_runtime::tls::Tls>>,
    /// TLS handshakes in progress, each abandoned at its deadline.
    handshakes: VecDeque<(Instant, ConnId)>,
    /// How many of `handshakes` are still handshaking.
    handshaking: usize,
}

impl Driver {
    fn new(worker: Worker) -> Result<Driver, RunError> {
        let Worker {
            settings,
            ops,
            listeners: sockets,
            control,
            ..
        } = worker;
        let poll = Poll::new().map_err(RunError::Runtime)?;
        let mut ops = ops;
        let dns_waker = mio::Waker::new(poll.registry(), WAKE_TOKEN).map_err(RunError::Runtime)?;
        let dns_waker = std::sync::Arc::new(dns_waker);
        let control_waker = dns_waker.clone();
        control.on_command(move || {
            let _ = control_waker.wake();
        });
        let admin_waker = dns_waker.clone();
        let admin = ops.start_admin(move || {
            let _ = admin_waker.wake();
        })?;
        let lb = Balancer::new(
            settings.core.clone(),
            lb_runtime::os_seed()?,
            Instant::now(),
        );
        let mut listeners = Vec::new();
        let mut proxied = Vec::new();
        let ids: Vec<(ListenerId, SocketAddr)> = lb.listeners().collect();
        for ((id, addr), socket) in ids.into_iter().zip(sockets) {
            let mut socket = TcpListener::from_std(socket);
            poll.registry()
                .register(
                    &mut socket,
                    listener_token(listeners.len()),
                    Interest::READABLE,
                )
                .map_err(RunError::Runtime)?;
            tracing::info!(listener = %id, %addr, "listening");
            // Plain listeners follow `--proxy-protocol`; a TLS one its own `,proxy-protocol`.
            proxied.push(if lb.is_tls_listener(id) {
                settings.proxy_protocol_tls.contains(&addr)
            } else {
                settings.proxy_protocol
            });
            listeners.push((id, socket));
        }
        let mut driver = Driver {
            lb,
            ops,
            poll,
            conns: Vec::new(),
            listeners,
            control,
            proxied,
            pending: slab::Slab::new(),
            pending_deadlines: VecDeque::new(),
            read_buf: lb_runtime::ReadBuffer::default(),
            marks: Watermarks::of(&settings),
            dirty: Vec::new(),
            readable_again: Vec::new(),
            pacer: WakePacer::new(settings.batch_window),
            dns_waker,
            admin,
            dns: None,
            tls: None,
            handshakes: VecDeque::new(),
            handshaking: 0,
        };
        driver.tls = driver.ops.tls().cloned();
        driver.drain();
        driver.flush_dirty();
        driver.ops.turn(&driver.lb, Instant::now());
        Ok(driver)
    }

    /// The loop, until a signal arrives.
    fn serve(&mut self) -> Result<(), RunError> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let mut timeout = self.poll_timeout();
            let pause = self.pacer.pause(Instant::now(), timeout);
            if !pause.is_zero() {
                std::thread::sleep(pause);
                timeout = self.poll_timeout();
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(RunError::Runtime(e));
            }
            if !events.is_empty() {
                self.pacer.woke(Instant::now());
            }
            let mut stop = false;
            for id in std::mem::take(&mut self.readable_again) {
                self.read(id, true);
            }
            for event in &events {
                let token = event.token();
                if token == WAKE_TOKEN {
                    // Commands from the process are drained below, every turn.
                    self.resolved();
                    self.admin();
                } else if let Some(index) = listener_index(token, self.listeners.len()) {
                    self.accept(index);
                } else if let Some(key) = token.0.checked_sub(PENDING_TOKEN_BASE) {
                    self.read_proxy_header(key);
                } else {
                    self.ready(token.0, event);
                }
            }
            while let Some(command) = self.control.try_recv() {
                match command {
                    Command::Stop => stop = true,
                    Command::Reload(settings) if !stop => self.reload(*settings),
                    Command::Reload(_) => {}
                }
            }
            self.flush_dirty();
            self.handle_deadlines();
            self.flush_dirty();
            self.ops.turn(&self.lb, Instant::now());
            if stop {
                return Ok(());
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.readable_again.is_empty() {
            return Some(Duration::ZERO);
        }
        let header = self.pending_deadlines.front().map(|(d, _)| *d);
        // A stalled handshake must time out even when nothing else wakes the loop (found by
        // the TLS end-to-end tests).
        let handshake = self.handshakes.front().map(|(d, _)| *d);
        [
            self.lb.poll_timeout(),
            header,
            handshake,
            self.ops.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// SIGHUP: the process's reread configuration goes to the core; the output cap applies to
    /// the next sends.
    fn reload(&mut self, settings: Settings) {
        let config = self.ops.adopt(settings);
        self.marks = Watermarks::of(self.ops.settings());
        self.lb
            .handle_input(Instant::now(), Input::Reload(Box::new(config)));
        self.drain();
    }

    fn accept(&mut self, index: usize) {
        loop {
            let (listener, socket) = &self.listeners[index];
            let listener = *listener;
            match socket.accept() {
                Ok((stream, peer)) if self.proxied.get(index).copied().unwrap_or(false) => {
                    self.await_proxy_header(listener, stream, peer)
                }
                Ok((stream, peer)) => {
                    self.open_frontend(listener, stream, peer, None, BytesMut::new());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Usually out of file descriptors; the next connection's event retries.
                    self.ops.accept_failed(&e, Instant::now());
                    return;
                }
            }
        }
    }

    /// Hands an accepted connection to the core as `peer` and registers it under its slot;
    /// `proxy` is the socket's peer when it was waiting for its PROXY header (registered under
    /// a pending token), `first` what followed the header.
    fn open_frontend(
        &mut self,
        listener: ListenerId,
        mut stream: TcpStream,
        peer: SocketAddr,
        proxy: Option<SocketAddr>,
        first: BytesMut,
    ) {
        let tls = match self.tls_session(listener) {
            Ok(tls) => tls,
            // Refused before the core knew of it: dropping the socket closes it.
            Err(()) => return,
        };
        let conn = self.lb.accept(Instant::now(), listener, peer);
        match proxy {
            Some(proxy) => lb_runtime::log_frontend_open_proxied(conn, peer, proxy),
            None => lb_runtime::log_frontend_open(conn, peer),
        }
        let _ = stream.set_nodelay(true);
        let (registry, token) = (self.poll.registry(), Token(conn.slot()));
        let registered = match proxy {
            Some(_) => registry.reregister(&mut stream, token, Interest::READABLE),
            None => registry.register(&mut stream, token, Interest::READABLE),
        };
        match registered {
            Ok(()) => {
                self.insert(conn, stream, true, State::Open, Interest::READABLE);
                if let Some(tls) = tls {
                    if let Some(c) = self.get(conn) {
                        c.tls = Some(tls);
                    }
                    self.handshaking += 1;
                    let deadline = Instant::now() + lb_runtime::tls::HANDSHAKE_TIMEOUT;
                    self.handshakes.push_back((deadline, conn));
                }
                if self.get(conn).is_some_and(|c| c.tls.is_some()) {
                    // What followed the PROXY header is the start of the ClientHello: rustls'
                    // to read, before the socket's own bytes.
                    if !first.is_empty() {
                        self.read_tls(conn, &first);
                    }
                } else if !first.is_empty() {
                    let bytes = first;
                    self.lb
                        .handle_input(Instant::now(), Input::Received { conn, bytes });
                }
            }
            Err(e) => {
                tracing::warn!(conn = %conn, error = %e, "register failed");
                lb_runtime::log_frontend_closed(conn, CloseReason::Error);
                let reason = CloseReason::Error;
                self.lb
                    .handle_input(Instant::now(), Input::Closed { conn, reason });
            }
        }
        self.drain();
    }

    /// `--proxy-protocol`: parks an accepted connection until its header is whole.
    fn await_proxy_header(
        &mut self,
        listener: ListenerId,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) {
        let now = Instant::now();
        if self.pending.len() >= PROXY_PENDING_MAX {
            self.ops.proxy_rejected(peer, ProxyReject::TooMany, now);
            return;
        }
        let entry = self.pending.vacant_entry();
        let token = Token(PENDING_TOKEN_BASE + entry.key());
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            tracing::warn!(%peer, error = %e, "register failed");
            return;
        }
        let deadline = now + PROXY_HEADER_TIMEOUT;
        self.pending_deadlines.push_back((deadline, entry.key()));
        entry.insert(Pending {
            stream,
            listener,
            peer,
            reader: ProxyHeaderReader::new(),
            deadline,
        });
    }

    /// Reads a parked connection until its PROXY header is whole (then it goes to the core), a
    /// fault (then it is closed and counted), or `WouldBlock`.
    fn read_proxy_header(&mut self, key: usize) {
        let mut buf = [0u8; 512];
        let outcome = loop {
            let Some(p) = self.pending.get_mut(key) else {
                return;
            };
            match std::io::Read::read(&mut p.stream, &mut buf) {
                Ok(0) => break ProxyRead::Rejected(ProxyReject::TimedOut),
                Ok(n) => match p.reader.push(&buf[..n]) {
                    ProxyRead::Incomplete => {}
                    done => break done,
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break ProxyRead::Rejected(ProxyReject::TimedOut),
            }
        };
        let mut p = self.pending.remove(key);
        match outcome {
            ProxyRead::Header { client, rest } => {
                let peer = client.unwrap_or(p.peer);
                self.open_frontend(p.listener, p.stream, peer, Some(p.peer), rest);
            }
            ProxyRead::Rejected(cause) => {
                let _ = self.poll.registry().deregister(&mut p.stream);
                self.ops.proxy_rejected(p.peer, cause, Instant::now());
            }
            ProxyRead::Incomplete => {}
        }
    }

    fn ready(&mut self, slot: usize, event: &mio::event::Event) {
        let Some(c) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let id = c.id;
        if c.state == State::Connecting {
            match connect_result(&c.stream) {
                Ok(false) => return,
                Ok(true) => {
                    c.state = State::Open;
                    let _ = c.stream.set_nodelay(true);
                    c.tls = c.backend_tls.take().and_then(|(config, name)| {
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
    fn read(&mut self, id: ConnId, to_end: bool) {
        for _ in 0..BATCH_MAX {
            let Some(c) = self.conns.get_mut(id.slot()).and_then(Option::as_mut) else {
                return;
            };
            if c.id != id || c.state != State::Open {
                return;
            }
            if c.above_high && Watermarks::pauses_reading(c.frontend) {
                // Its responses cannot be written: reading more would only grow the queue.
                // Resumed by `flush` below the low-water mark.
                return;
            }
            if c.tls.is_some() {
                return self.read_tls(id, &[]);
            }
            match self.read_buf.read_some(&mut c.stream) {
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

    /// A new TLS session for a connection accepted on `listener`, `None` for a TCP listener;
    /// `Err` when the socket is refused (too many handshakes in progress).
    fn tls_session(&mut self, listener: ListenerId) -> Result<Option<Box<tls::TlsConn>>, ()> {
        let Some(config) = self
            .tls
            .as_ref()
            .filter(|_| self.lb.is_tls_listener(listener))
        else {
            return Ok(None);
        };
        let counters = &config.counters;
        if self.handshaking >= lb_runtime::tls::HANDSHAKES_MAX {
            counters
                .refused_busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(());
        }
        match rustls::ServerConnection::new(config.config()) {
            Ok(session) => Ok(Some(Box::new(tls::TlsConn::new(session)))),
            Err(e) => {
                tracing::warn!(error = %e, "TLS session refused");
                counters
                    .failed_other
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(())
            }
        }
    }

    /// Reads a TLS frontend: `prefix` (bytes read with its PROXY header), then every record
    /// the socket has; the plaintext to the core.
    fn read_tls(&mut self, id: ConnId, prefix: &[u8]) {
        let Some(c) = self.conns.get_mut(id.slot()).and_then(Option::as_mut) else {
            return;
        };
        let Some(session) = c.tls.as_mut() else {
            return;
        };
        let mut plain = BytesMut::new();
        let result = session.read(&mut std::io::Read::chain(prefix, &mut c.stream), &mut plain);
        let (handshaking, wants_write, version) = (
            session.handshaking,
            session.wants_write(),
            session.version(),
        );
        // A TLS backend's handshake is not one of the listeners': neither counted nor capped.
        let frontend = c.frontend;
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
                if let Some(Some(c)) = self.conns.get_mut(id.slot()) {
                    if let Some(session) = c.tls.as_mut() {
                        let _ = session.write(&mut VecDeque::new(), &mut c.stream, false);
                    }
                }
                self.finish(id, CloseReason::Error);
                self.drain();
            }
        }
    }

    /// Applies the admin commands waiting since the last wake-up.
    fn admin(&mut self) {
        while let Some(command) = self.admin.try_next() {
            self.ops.handle_admin(&mut self.lb, Instant::now(), command);
            self.marks = Watermarks::of(self.ops.settings());
            self.drain();
        }
    }

    /// Feeds the names resolved since the last wake-up.
    fn resolved(&mut self) {
        let Some(dns) = &self.dns else { return };
        let answers: Vec<_> = dns.answers().collect();
        for (conn, addrs) in answers {
            self.lb
                .handle_input(Instant::now(), Input::Resolved { conn, addrs });
            self.drain();
        }
    }

    fn drain(&mut self) {
        while let Some(output) = self.lb.poll_output() {
            self.perform(output);
        }
    }

    /// Carries out one output. Never drains itself: `drain` loops until the queue is empty.
    fn perform(&mut self, output: Output) {
        match output {
            Output::Send { conn, bytes } => {
                let marks = self.marks;
                let Some(c) = self.get(conn) else { return };
                if c.state == State::Closing {
                    return;
                }
                match marks.admit(c.queued, bytes.len(), c.above_high, c.frontend) {
                    Admit::Close => {
                        self.ops
                            .output_overflow(conn, marks.ceiling, Instant::now());
                        self.finish(conn, CloseReason::OutputOverflow);
                    }
                    Admit::Drop => self
                        .ops
                        .output_cap_drop(conn, marks.ceiling, Instant::now()),
                    Admit::Queue { report } => {
                        c.queued += bytes.len();
                        c.out.push_back(bytes);
                        if let Some(level) = report {
                            // A frontend stops being read from here (see `read`).
                            c.above_high = true;
                            let input = Input::OutputQueue { conn, level };
                            self.lb.handle_input(Instant::now(), input);
                        }
                        self.mark_dirty(conn);
                    }
                }
            }
            Output::Connect { conn, backend, to } => {
                tracing::debug!(conn = %conn, backend = %backend, %to, "connecting");
                let tls = self.ops.backend_tls(&self.lb, backend);
                self.start_connect(conn, to, false);
                if let Some(c) = self.get(conn) {
                    c.backend_tls = tls;
                }
            }
            Output::Dial { conn, to } => {
                tracing::debug!(conn = %conn, %to, "dialling a frontend");
                self.start_connect(conn, to, true);
            }
            Output::Resolve { conn, host, port } => {
                tracing::debug!(conn = %conn, %host, ?port, "resolving");
                if self.dns.is_none() {
                    let waker = self.dns_waker.clone();
                    match lb_runtime::dns::DnsThread::start(move || {
                        let _ = waker.wake();
                    }) {
                        Ok(dns) => self.dns = Some(dns),
                        Err(e) => tracing::warn!(error = %e, "cannot start the resolver thread"),
                    }
                }
                match &self.dns {
                    Some(dns) => dns.resolve(conn, host, port),
                    None => {
                        let addrs = Vec::new();
                        self.lb
                            .handle_input(Instant::now(), Input::Resolved { conn, addrs });
                    }
                }
            }
            Output::Close { conn } => {
                let Some(c) = self.get(conn) else { return };
                match c.state {
                    // Nothing was written yet, so there is nothing to flush.
                    State::Connecting => self.finish(conn, CloseReason::Requested),
                    State::Open => {
                        c.state = State::Closing;
                        self.mark_dirty(conn);
                    }
                    State::Closing => {}
                }
            }
            Output::Abort { conn } => {
                let Some(c) = self.get(conn) else { return };
                let reason = match c.state {
                    State::Connecting => CloseReason::Error,
                    State::Open | State::Closing => CloseReason::Requested,
                };
                if c.state == State::Closing {
                    tracing::debug!(conn = %conn, unsent = c.queued, "peer not reading; closed unflushed");
                }
                self.finish(conn, reason);
            }
            Output::Event(event) => self.ops.event(&self.lb, &event, Instant::now()),
        }
    }

    /// Starts connecting `conn` to `to` (a backend, or a frontend the core dials out to); a
    /// connect that fails at once is reported closed at once. The core gives up on a slow one
    /// with `Output::Abort`.
    fn start_connect(&mut self, conn: ConnId, to: SocketAddr, frontend: bool) {
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

    fn connect(&mut self, conn: ConnId, to: SocketAddr, frontend: bool) -> io::Result<()> {
        let mut stream = TcpStream::connect(to)?;
        self.marks.bound_send_buffer(&stream);
        let interest = Interest::READABLE | Interest::WRITABLE;
        self.poll
            .registry()
            .register(&mut stream, Token(conn.slot()), interest)?;
        self.insert(conn, stream, frontend, State::Connecting, interest);
        Ok(())
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.get(id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Writes every queue that grew; closes connections whose `Close` is now flushed.
    fn flush_dirty(&mut self) {
        while !self.dirty.is_empty() {
            for id in std::mem::take(&mut self.dirty) {
                self.flush(id);
            }
            self.drain();
        }
    }

    fn flush(&mut self, id: ConnId) {
        let slot = self.conns.get_mut(id.slot()).and_then(Option::as_mut);
        let Some(c) = slot.filter(|c| c.id == id) else {
            return;
        };
        c.dirty = false;
        if c.state == State::Connecting {
            return;
        }
        if let Err(e) = write_queue(c) {
            tracing::debug!(conn = %id, error = %e, "write failed");
            let reason = if c.state == State::Closing {
                CloseReason::Requested
            } else {
                CloseReason::Error
            };
            self.finish(id, reason);
            return;
        }
        if c.state == State::Closing && c.out.is_empty() && !tls_wants_write(c) {
            let _ = c.stream.shutdown(Shutdown::Both);
            self.finish(id, CloseReason::Requested);
            return;
        }
        let drained = self.marks.drained(c.queued, c.above_high);
        if drained {
            c.above_high = false;
        }
        let paused = c.above_high && Watermarks::pauses_reading(c.frontend);
        let want = match (c.state, c.out.is_empty() && !tls_wants_write(c), paused) {
            (State::Closing, ..) | (_, false, true) => Interest::WRITABLE,
            (_, true, _) => Interest::READABLE,
            (_, false, false) => Interest::READABLE | Interest::WRITABLE,
        };
        if want != c.interest {
            c.interest = want;
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut c.stream, Token(id.slot()), want)
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

    fn handle_deadlines(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, key)) = self.pending_deadlines.front() {
            if deadline > now {
                break;
            }
            self.pending_deadlines.pop_front();
            // The slot may hold a later connection by now, with a later deadline.
            if self
                .pending
                .get(key)
                .is_some_and(|p| p.deadline == deadline)
            {
                let mut p = self.pending.remove(key);
                let _ = self.poll.registry().deregister(&mut p.stream);
                self.ops.proxy_rejected(p.peer, ProxyReject::TimedOut, now);
            }
        }
        while let Some(&(deadline, id)) = self.handshakes.front() {
            if deadline > now {
                break;
            }
            self.handshakes.pop_front();
            let stalled = self
                .get(id)
                .and_then(|c| c.tls.as_ref())
                .is_some_and(|t| t.handshaking);
            if stalled {
                tracing::debug!(conn = %id, "TLS handshake timed out");
                if let Some(tls) = &self.tls {
                    tls.counters
                        .failed_timeout
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                self.finish(id, CloseReason::Error);
                self.drain();
            }
        }
        if self.lb.poll_timeout().is_some_and(|d| d <= now) {
            self.lb.handle_input(now, Input::Timeout);
            self.drain();
        }
    }

    /// Feeds the one `Closed` of `id` and forgets its socket. The caller drains.
    fn finish(&mut self, id: ConnId, reason: CloseReason) {
        let Some(slot) = self.conns.get_mut(id.slot()) else {
            return;
        };
        let Some(mut c) = slot.take_if(|c| c.id == id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut c.stream);
        if c.frontend {
            lb_runtime::log_frontend_closed(id, reason);
            // However it ends, a handshake in progress frees its place in the cap here.
            if c.tls.as_ref().is_some_and(|t| t.handshaking) {
                self.handshaking = self.handshaking.saturating_sub(1);
            }
        }
        self.lb
            .handle_input(Instant::now(), Input::Closed { conn: id, reason });
    }

    fn get(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.slot())?
            .as_mut()
            .filter(|c| c.id == id)
    }

    fn insert(
        &mut self,
        id: ConnId,
        stream: TcpStream,
        frontend: bool,
        state: State,
        interest: Interest,
    ) {
        let slot = id.slot();
        if slot >= self.conns.len() {
            self.conns.resize_with(slot + 1, || None);
        }
        debug_assert!(
            self.conns[slot].is_none(),
            "the core reuses a slot only after Closed"
        );
        self.conns[slot] = Some(Conn {
            id,
            stream,
            frontend,
            state,
            out: VecDeque::new(),
            queued: 0,
            above_high: false,
            interest,
            dirty: false,
            tls: None,
            backend_tls: None,
        });
    }

    /// Shutdown: stop accepting and reading, write what is queued for at most
    /// [`SHUTDOWN_FLUSH_MAX`]. The core is not fed any more: the counters stay as they were.
    fn flush_all(&mut self) {
        tracing::info!("shutting down: no more accepts, flushing queued output");
        for (_, mut socket) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut socket);
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH_MAX;
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let mut pending = 0;
            for slot in &mut self.conns {
                let Some(c) = slot else { continue };
                let done =
                    c.state == State::Connecting || write_queue(c).is_err() || c.out.is_empty();
                if done {
                    let _ = c.stream.shutdown(Shutdown::Both);
                    let _ = self.poll.registry().deregister(&mut c.stream);
                    *slot = None;
                } else {
                    if c.interest != Interest::WRITABLE {
                        c.interest = Interest::WRITABLE;
                        let token = Token(c.id.slot());
                        let _ = self
                            .poll
                            .registry()
                            .reregister(&mut c.stream, token, c.interest);
                    }
                    pending += 1;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if pending == 0 {
                return;
            }
            if left.is_zero() {
                tracing::warn!(pending, "shutdown: gave up flushing some connections");
                return;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(left)) {
                if e.kind() != ErrorKind::Interrupted {
                    return;
                }
            }
        }
    }
}

/// Writes the connection's queue until it is empty or the socket would block (through its
/// TLS session, if it has one).
fn write_queue(c: &mut Conn) -> io::Result<()> {
    let written = match c.tls.as_mut() {
        Some(session) => session.write(&mut c.out, &mut c.stream, c.state == State::Closing)?,
        None => lb_runtime::write_queue(&mut c.out, &mut c.stream)?,
    };
    c.queued -= written;
    Ok(())
}

/// TLS records (a handshake message, an alert, data) wait for the socket.
fn tls_wants_write(c: &Conn) -> bool {
    c.tls.as_ref().is_some_and(|t| t.wants_write())
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

fn listener_token(index: usize) -> Token {
    Token(LISTENER_TOKEN_TOP - index)
}

fn listener_index(token: Token, count: usize) -> Option<usize> {
    let index = LISTENER_TOKEN_TOP.checked_sub(token.0)?;
    (index < count).then_some(index)
}

/// The loop's one waker (the process's commands, resolver answers, admin commands): above
/// every connection slot (those stay below `u32::MAX`), below the listeners'.
const WAKE_TOKEN: Token = Token(u32::MAX as usize);

/// Connections waiting for their PROXY header: `PENDING_TOKEN_BASE + key`, above the DNS
/// token, far below the listeners' (at most [`PROXY_PENDING_MAX`] keys).
const PENDING_TOKEN_BASE: usize = u32::MAX as usize + 1;

/// Listener `i` has token `LISTENER_TOKEN_TOP - i`; connection slots stay below `u32::MAX`.
const LISTENER_TOKEN_TOP: usize = usize::MAX - 1;

/// Readiness events per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
