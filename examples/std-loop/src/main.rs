//! The balancer's core inside a hand-written loop, with nothing but `std::net`.
//!
//! This is for people who bring their own event loop: it shows everything a driver owes the
//! core, without a runtime or a poller in the way. Sockets are non-blocking and the loop simply
//! tries each of them in turn; when a pass made no progress it sleeps until the core's deadline,
//! but at most 1 ms, so new data waits at most that long. (A real driver would wait for
//! readiness instead: see `lb-mio` and `lb-tokio`.)
//!
//! The contract, in the order the loop meets it:
//! - `Balancer::accept` for each accepted socket returns the id to file it under;
//! - `Input::Received` for each read, `Input::Connected` / `Input::Closed` for each
//!   `Output::Connect`, exactly one `Input::Closed` per id, `Input::Timeout` once the deadline
//!   of `poll_timeout` has passed;
//! - after every input, drain `poll_output` and perform each output in order.
//!
//! Around the core, `lb_cli::Ops` does the operator's part, as in the real binaries: log lines,
//! the `--metrics` snapshot (`Ops::turn` once per pass) and SIGHUP reloads (`Ops::reload`, then
//! `Input::Reload`).
//!
//! Run it like the real binaries (it shares their command line):
//! `cargo run -p example-std-loop -- --listen 127.0.0.1:5060 --backend 127.0.0.1:5070`

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lb_cli::{Ops, Settings};
use lb_core::{Balancer, CloseReason, ConnId, Input, ListenerId, Output, Stats};
use lb_runtime::{RunError, SHUTDOWN_FLUSH_MAX};

fn main() -> std::process::ExitCode {
    lb_cli::main_with(run)
}

/// One connection the loop knows about. `stream` is `None` while a helper thread connects.
struct Conn {
    id: ConnId,
    stream: Option<TcpStream>,
    frontend: bool,
    out: VecDeque<Bytes>,
    queued: usize,
    /// The core asked for `Close`: stop reading, write what is queued, then close.
    closing: bool,
}

struct Driver {
    lb: Balancer,
    ops: Ops,
    /// Indexed by `ConnId::slot`: the core reuses a slot only after we reported `Closed`.
    conns: Vec<Option<Conn>>,
    output_cap: usize,
    /// Results of connects running on helper threads: std has no non-blocking connect.
    connected_tx: mpsc::Sender<(ConnId, std::io::Result<TcpStream>)>,
    /// The resolver thread, started at the first `Output::Resolve`.
    dns: Option<lb_runtime::dns::DnsThread>,
}

fn run(settings: Settings) -> Result<Stats, RunError> {
    // SIGINT/SIGTERM just raise a flag the loop checks on every pass.
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).map_err(RunError::Runtime)?;
    }
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))
        .map_err(RunError::Runtime)?;
    let ops = Ops::new(&settings)?;

    let lb = Balancer::new(
        settings.core.clone(),
        lb_runtime::os_seed()?,
        Instant::now(),
    );
    let mut listeners: Vec<(ListenerId, TcpListener)> = Vec::new();
    for (id, addr) in lb.listeners() {
        let socket = TcpListener::bind(addr).map_err(|source| RunError::Bind { addr, source })?;
        socket.set_nonblocking(true).map_err(RunError::Runtime)?;
        tracing::info!(listener = %id, %addr, "listening");
        listeners.push((id, socket));
    }
    let (connected_tx, connected_rx) = mpsc::channel();
    let mut d = Driver {
        lb,
        ops,
        conns: Vec::new(),
        output_cap: settings.output_cap_bytes,
        connected_tx,
        dns: None,
    };
    // The core asks for its backend connections as soon as it exists.
    d.drain();

    let mut buf = lb_runtime::ReadBuffer::default();
    while !stop.load(Ordering::Relaxed) {
        let mut progress = false;

        // Frontends: accept everything waiting.
        for (listener, socket) in &listeners {
            loop {
                match socket.accept() {
                    Ok((stream, peer)) => {
                        progress = true;
                        d.accept(*listener, stream, peer);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => {
                        d.ops.accept_failed(&e, Instant::now());
                        break;
                    }
                }
            }
        }

        // Backends: connects that finished on their helper threads.
        while let Ok((conn, result)) = connected_rx.try_recv() {
            progress = true;
            d.connected(conn, result);
        }

        // Dial-out: names the resolver thread has answered (the loop polls, so no wake-up).
        let answers: Vec<_> = d.dns.iter().flat_map(|dns| dns.answers()).collect();
        for (conn, addrs) in answers {
            progress = true;
            d.lb.handle_input(Instant::now(), Input::Resolved { conn, addrs });
            d.drain();
        }

        // One read and one write attempt per connection and pass keeps every connection served.
        for slot in 0..d.conns.len() {
            progress |= d.read(slot, &mut buf);
            progress |= d.write(slot);
        }

        // The core's timer: feed `Timeout` once its deadline has passed.
        let now = Instant::now();
        let deadline = d.lb.poll_timeout();
        if deadline.is_some_and(|t| t <= now) {
            d.lb.handle_input(now, Input::Timeout);
            d.drain();
            progress = true;
        }

        // SIGHUP: reread the configuration; a valid one goes to the core.
        if hangup.swap(false, Ordering::Relaxed) {
            if let Some(config) = d.ops.reload() {
                d.output_cap = d.ops.settings().output_cap_bytes;
                d.lb.handle_input(Instant::now(), Input::Reload(Box::new(config)));
                d.drain();
            }
        }
        d.ops.turn(&d.lb, Instant::now());

        if !progress {
            let wait =
                deadline.map_or(IDLE_MAX, |t| t.saturating_duration_since(now).min(IDLE_MAX));
            std::thread::sleep(wait);
        }
    }

    tracing::info!("shutting down: no more accepts, flushing queued output");
    drop(listeners);
    d.flush_all();
    Ok(d.lb.stats().clone())
}

impl Driver {
    fn accept(&mut self, listener: ListenerId, stream: TcpStream, peer: SocketAddr) {
        let conn = self.lb.accept(Instant::now(), listener, peer);
        lb_runtime::log_frontend_open(conn, peer);
        // Accepted sockets do not inherit the listener's non-blocking mode.
        if stream.set_nonblocking(true).is_err() {
            self.closed(conn, true, CloseReason::Error);
        } else {
            let _ = stream.set_nodelay(true);
            self.insert(Conn {
                id: conn,
                stream: Some(stream),
                frontend: true,
                out: VecDeque::new(),
                queued: 0,
                closing: false,
            });
        }
        self.drain();
    }

    fn connected(&mut self, conn: ConnId, result: std::io::Result<TcpStream>) {
        let Some(c) = self.get(conn) else { return };
        let closing = c.closing;
        match result {
            // Closed while connecting: the `Close` is done now.
            Ok(_) if closing => self.finish(conn, CloseReason::Requested),
            Ok(stream) if stream.set_nonblocking(true).is_ok() => {
                let _ = stream.set_nodelay(true);
                c.stream = Some(stream);
                self.lb
                    .handle_input(Instant::now(), Input::Connected { conn });
            }
            Ok(_) | Err(_) => {
                let reason = if closing {
                    CloseReason::Requested
                } else {
                    CloseReason::Error
                };
                self.finish(conn, reason);
            }
        }
        self.drain();
    }

    /// One read from the connection at `slot`; true if anything happened.
    fn read(&mut self, slot: usize, buf: &mut lb_runtime::ReadBuffer) -> bool {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return false;
        };
        let id = c.id;
        let Some(stream) = c.stream.as_mut().filter(|_| !c.closing) else {
            return false;
        };
        match buf.read_some(stream) {
            Ok(0) => self.finish(id, CloseReason::PeerClosed),
            // `split` hands the core exactly the bytes just read; `buf` keeps its spare room.
            Ok(_) => self.lb.handle_input(
                Instant::now(),
                Input::Received {
                    conn: id,
                    bytes: buf.take(),
                },
            ),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return false
            }
            Err(_) => self.finish(id, CloseReason::Error),
        }
        self.drain();
        true
    }

    /// Writes what is queued for the connection at `slot`; true if anything happened.
    fn write(&mut self, slot: usize) -> bool {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return false;
        };
        let id = c.id;
        let Some(stream) = c.stream.as_mut() else {
            return false;
        };
        match lb_runtime::write_queue(&mut c.out, stream) {
            Ok(written) => {
                c.queued -= written;
                if c.closing && c.out.is_empty() {
                    let _ = stream.shutdown(Shutdown::Both);
                    self.finish(id, CloseReason::Requested);
                } else if written == 0 {
                    return false;
                }
            }
            Err(_) => {
                let reason = if c.closing {
                    CloseReason::Requested
                } else {
                    CloseReason::Error
                };
                self.finish(id, reason);
            }
        }
        self.drain();
        true
    }

    /// Performs every queued output. Outputs may feed inputs back (a failed connect, an output
    /// overflow), whose own outputs this same loop then performs.
    fn drain(&mut self) {
        while let Some(output) = self.lb.poll_output() {
            match output {
                Output::Send { conn, bytes } => {
                    let cap = self.output_cap;
                    let Some(c) = self.get(conn) else { continue };
                    if c.closing {
                        continue;
                    }
                    if c.queued + bytes.len() > cap {
                        self.ops.output_overflow(conn, cap, Instant::now());
                        self.finish(conn, CloseReason::OutputOverflow);
                        continue;
                    }
                    c.queued += bytes.len();
                    c.out.push_back(bytes);
                }
                Output::Connect { conn, backend, to } => {
                    tracing::debug!(conn = %conn, backend = %backend, %to, "connecting");
                    self.connect(conn, to, false);
                }
                Output::Dial { conn, to } => {
                    tracing::debug!(conn = %conn, %to, "dialling a frontend");
                    self.connect(conn, to, true);
                }
                Output::Resolve { conn, host, port } => {
                    if self.dns.is_none() {
                        self.dns = lb_runtime::dns::DnsThread::start(|| {}).ok();
                    }
                    match &self.dns {
                        Some(dns) => dns.resolve(conn, host, port),
                        None => self.lb.handle_input(
                            Instant::now(),
                            Input::Resolved {
                                conn,
                                addrs: Vec::new(),
                            },
                        ),
                    }
                }
                Output::Close { conn } => {
                    // The write step closes it once the queue is empty (or the connect ends).
                    if let Some(c) = self.get(conn) {
                        c.closing = true;
                    }
                }
                Output::Abort { conn } => {
                    // The core gave up its connect (a failed one, as if refused) or its flush.
                    let Some(c) = self.get(conn) else { continue };
                    let reason = if c.stream.is_none() {
                        CloseReason::Error
                    } else {
                        CloseReason::Requested
                    };
                    self.finish(conn, reason);
                }
                Output::Event(event) => self.ops.event(&self.lb, &event, Instant::now()),
            }
        }
    }

    /// Connects `conn` to `to` on a thread of its own (std has no non-blocking connect).
    fn connect(&mut self, conn: ConnId, to: SocketAddr, frontend: bool) {
        self.insert(Conn {
            id: conn,
            stream: None,
            frontend,
            out: VecDeque::new(),
            queued: 0,
            closing: false,
        });
        let tx = self.connected_tx.clone();
        // The core gives up sooner (`Output::Abort`); this bound only frees the thread.
        let bound = self.ops.settings().core.config().connect_timeout * 2;
        std::thread::spawn(move || {
            let _ = tx.send((conn, TcpStream::connect_timeout(&to, bound)));
        });
    }

    /// Forgets `conn` (dropping closes the socket) and reports it closed.
    fn finish(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(slot) = self.conns.get_mut(conn.slot()) else {
            return;
        };
        if let Some(c) = slot.take_if(|c| c.id == conn) {
            self.closed(conn, c.frontend, reason);
        }
    }

    /// The one `Input::Closed` of `conn`.
    fn closed(&mut self, conn: ConnId, frontend: bool, reason: CloseReason) {
        if frontend {
            lb_runtime::log_frontend_closed(conn, reason);
        }
        self.lb
            .handle_input(Instant::now(), Input::Closed { conn, reason });
    }

    fn get(&mut self, conn: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(conn.slot())?
            .as_mut()
            .filter(|c| c.id == conn)
    }

    fn insert(&mut self, conn: Conn) {
        let slot = conn.id.slot();
        if slot >= self.conns.len() {
            self.conns.resize_with(slot + 1, || None);
        }
        self.conns[slot] = Some(conn);
    }

    /// At exit: write what is queued, for at most [`SHUTDOWN_FLUSH_MAX`]. The core is not fed
    /// any more, so the final counters are those of the moment the signal arrived.
    fn flush_all(&mut self) {
        let deadline = Instant::now() + SHUTDOWN_FLUSH_MAX;
        while Instant::now() < deadline {
            let mut pending = false;
            for c in self.conns.iter_mut().flatten() {
                if let Some(stream) = c.stream.as_mut() {
                    // A connection that failed is given up; one that would block is retried.
                    pending |=
                        lb_runtime::write_queue(&mut c.out, stream).is_ok() && !c.out.is_empty();
                }
            }
            if !pending {
                return;
            }
            std::thread::sleep(IDLE_MAX);
        }
    }
}

/// Longest nap when nothing happened: the latency a new message may see.
const IDLE_MAX: Duration = Duration::from_millis(1);
