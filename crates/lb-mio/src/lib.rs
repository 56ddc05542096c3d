//! # lb-mio: the balancer on a mio readiness loop
//!
//! One thread, one [`mio::Poll`], one [`Balancer`] owned by the loop. Each connection's mio
//! `Token` is its `ConnId::slot`; listeners and the signal pipe take tokens at the top of the
//! token space, which slots (below `u32::MAX`) never reach.
//!
//! Per wake-up the loop:
//! 1. accepts on ready listeners (`accept.rs`), reads ready connections (`conns.rs`: at most
//!    [`lb_runtime::BATCH_MAX`] reads each, then the connection is revisited on the next pass
//!    with a zero poll timeout), and completes non-blocking connects (`take_error`, then
//!    `peer_addr`);
//! 2. after every input, drains the core's outputs (`outputs.rs`): `Send` appends to the
//!    connection's `VecDeque<Bytes>` within the output-cap budget of the shared
//!    [`lb_runtime::ConnTable`] (past the cap a frontend is closed and reported as
//!    [`CloseReason::OutputOverflow`]), `Close` flushes then closes, `Abort` drops at once;
//! 3. writes every queue that grew, vectored, until `WouldBlock`; `WRITABLE` interest is on
//!    only while a queue is non-empty; a connection closing with output still queued flushes
//!    until it is written or the core gives up on it with `Abort` (as it does on a connect:
//!    the driver keeps no connect or linger timer of its own);
//! 4. feeds `Input::Timeout` once the core's deadline has passed, and polls again with the
//!    nearest deadline as timeout; under load it first sleeps out what is left of
//!    `--batch-window` since the last wake-up ([`lb_runtime::WakePacer`]), so the next poll
//!    finds a batch.
//!
//! `--workers N` runs N such loops, each on a thread with its own `Poll` and listen sockets of
//! its own on the same addresses ([`lb_cli::run_workers`]). The process takes the signals and
//! sends each loop its [`lb_cli::Command`]s: on stop, accepting stops, queued output is flushed
//! for at most [`lb_runtime::SHUTDOWN_FLUSH_MAX`] (`shutdown.rs`), and the final counters are
//! returned; SIGHUP's reread configuration is fed as `Input::Reload`. Commands, resolver
//! answers and `--admin` commands all wake the poll through its one `mio::Waker` (mio allows
//! one per `Poll`); admin commands are applied with [`lb_cli::Ops::handle_admin`] between
//! events.
//!
//! With `--proxy-protocol` an accepted socket first waits, under a token above the connection
//! slots, until its PROXY header is whole ([`lb_runtime::ProxyHeaderReader`]); only then does the
//! core learn of it, with the announced client address and the bytes after the header.
//!
//! Logging, the `--metrics` snapshot (published at the end of a wake-up, at most every
//! [`lb_cli::PUBLISH_EVERY`]; the poll timeout includes the pending publish) and rate-limit
//! summaries go through one [`lb_cli::Ops`].
//!
//! The files follow lb-tokio's: `accept.rs` (listeners, PROXY headers, TLS sessions),
//! `conns.rs` (the connection table's I/O half: reads, connects, writes, the one `Closed`),
//! `outputs.rs` (the core's outputs carried out), `shutdown.rs` (the final flush).
#![warn(missing_docs)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]

mod accept;
mod conns;
mod outputs;
mod shutdown;
mod tls;

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lb_cli::{Command, Control, Ops, Settings, Worker};
use lb_core::{Balancer, CloseReason, ConnId, Input, ListenerId, Stats};
use lb_runtime::backpressure::Watermarks;
use lb_runtime::{ConnTable, ProxyReject, RunError, WakePacer};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use accept::Pending;
use conns::Io;

/// Runs `--workers` balancers, each on a thread with its own `Poll`, until SIGINT or SIGTERM,
/// then flushes queued output (at most [`lb_runtime::SHUTDOWN_FLUSH_MAX`]) and returns the sum
/// of their final counters.
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

/// One worker's loop: the core, its connections and everything the poll watches.
struct Driver {
    lb: Balancer,
    ops: Ops,
    poll: Poll,
    /// The connections the core knows of, by `ConnId::slot`, which is also each one's token.
    conns: ConnTable<Io>,
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
            conns: ConnTable::new(),
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

    /// Carries out every output the core has queued.
    fn drain(&mut self) {
        while let Some(output) = self.lb.poll_output() {
            self.perform(output);
        }
    }

    /// The driver's own deadlines (PROXY headers, TLS handshakes), then the core's.
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
                .conns
                .get(id)
                .and_then(|c| c.io.tls.as_ref())
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
/// token, far below the listeners' (at most [`lb_runtime::PROXY_PENDING_MAX`] keys).
const PENDING_TOKEN_BASE: usize = u32::MAX as usize + 1;

/// Listener `i` has token `LISTENER_TOKEN_TOP - i`; connection slots stay below `u32::MAX`.
const LISTENER_TOKEN_TOP: usize = usize::MAX - 1;

/// Readiness events per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
