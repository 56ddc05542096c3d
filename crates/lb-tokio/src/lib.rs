//! # lb-tokio: the balancer on a current-thread tokio runtime
//!
//! One task (the *owner*) holds the [`Balancer`] by value and is the only code that calls it;
//! nothing is shared behind a lock. Around it:
//!
//! - one accept task per listener sends each accepted socket to the owner, which calls
//!   `Balancer::accept` to learn the connection's id;
//! - per connection, a reader task sends what each wake-up reads through the bounded note
//!   channel (a slow owner therefore slows the readers down), and a writer task drains the
//!   connection's `Outbox` (`conn_io.rs`), whose queued size is counted: past the output cap the
//!   owner closes the connection and reports [`CloseReason::OutputOverflow`]. An idle
//!   connection holds no read or write buffer (`conn_io.rs`: about 2 kB per idle connection);
//! - `Output::Connect` spawns a task that connects and then becomes the writer; the core gives
//!   up on a slow connect, or a close's slow flush, with `Output::Abort`, which ends its tasks.
//! - A TLS listener's accept task hands each socket to a handshake task (tokio-rustls, at most
//!   [`lb_runtime::tls::HANDSHAKES_MAX`] at once, each within [`lb_runtime::tls::HANDSHAKE_TIMEOUT`]);
//!   only a finished handshake reaches the owner, whose reader and writer then see plaintext.
//!   On a `--listen-tls ADDR,proxy-protocol` listener the task reads the PROXY header first;
//!   what followed it goes to rustls before the socket's own bytes (`conn_io::Prefixed`).
//!
//! The owner loop waits for a note, the core's deadline (one `Sleep`, reset only when the
//! deadline moves) or the shutdown signal; it handles up to [`lb_runtime::BATCH_MAX`] notes per
//! wake-up and drains every output after each input. Time is read from `tokio::time::Instant`,
//! so a paused test clock drives the core too.
//!
//! `--workers N` runs N such owners, each on a thread and runtime of its own, with listen
//! sockets of its own on the same addresses ([`lb_cli::run_workers`]); the process takes the
//! signals and sends each owner its [`lb_cli::Command`]s: SIGHUP's reread configuration, fed
//! as `Input::Reload`, and the stop. `--admin` commands arrive on a channel the first owner
//! awaits like the notes and applies with [`lb_cli::Ops::handle_admin`]. With
//! `--proxy-protocol` each accepted socket is first read by a task of its own until its PROXY
//! header is whole ([`lb_runtime::ProxyHeaderReader`]); the owner learns of the connection only
//! then, with the client address the header announced and the bytes that followed it.
//! Logging, the `--metrics` snapshot (published after a wake-up, at most every
//! [`lb_cli::PUBLISH_EVERY`]; the owner's one `Sleep` also covers a pending publish) and
//! rate-limit summaries go through one [`lb_cli::Ops`].
//!
//! Each connection id gets exactly one `Input::Closed`: the owner removes its table entry when
//! it feeds it, and notes for ids no longer in the table are ignored.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

mod conn_io;
use conn_io::{read_loop, write_loop, Outbox, Prefixed, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use lb_cli::{Command, Ops, Settings, Worker};
use lb_core::{Balancer, CloseReason, ConnId, Input, ListenerId, Output, Stats};
use lb_runtime::backpressure::{Admit, Watermarks};
use lb_runtime::{
    BackendTls, ProxyHeaderReader, ProxyRead, ProxyReject, RunError, WakePacer, BATCH_MAX,
    PROXY_HEADER_TIMEOUT, PROXY_PENDING_MAX, SHUTDOWN_FLUSH_MAX,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant as TokioInstant;

/// Runs `--workers` balancers, each on a new current-thread runtime on a thread of its own,
/// until SIGINT or SIGTERM, then flushes queued output (at most [`SHUTDOWN_FLUSH_MAX`]) and
/// returns the sum of their final counters.
pub fn run(settings: Settings) -> Result<Stats, RunError> {
    lb_cli::run_workers(settings, run_worker)
}

/// Runs one worker on a new current-thread runtime until the process tells it to stop. The
/// runtime's park hook paces its wake-ups to `--batch-window` ([`WakePacer`]).
pub fn run_worker(worker: Worker) -> Result<Stats, RunError> {
    let pacer = Arc::new(Mutex::new(WakePacer::new(worker.settings.batch_window)));
    let woke = Arc::clone(&pacer);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        // The park hook runs when every task is idle, just before the runtime blocks in its
        // poll: the one place where a pause delays nothing already ready.
        .on_thread_park(move || {
            let pause = lock(&pacer).pause(std::time::Instant::now(), None);
            if !pause.is_zero() {
                std::thread::sleep(pause);
            }
        })
        .on_thread_unpark(move || lock(&woke).woke(std::time::Instant::now()))
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(serve(worker))
}

/// The pacer is only touched by the runtime's own thread, so the lock is never contended; a
/// poisoned lock still holds a valid pacer.
fn lock(pacer: &Mutex<WakePacer>) -> std::sync::MutexGuard<'_, WakePacer> {
    pacer.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs one worker's balancer inside the caller's runtime until its control says stop, then
/// flushes queued output (at most [`SHUTDOWN_FLUSH_MAX`]) and returns the final counters.
/// Spawns tasks with `tokio::spawn`; meant for a current-thread runtime (one balancer per
/// thread). Pacing belongs to the runtime, not to this function: an embedder who wants it
/// installs a [`WakePacer`] in its own runtime's park hooks, as [`run_worker`] does.
pub async fn serve(worker: Worker) -> Result<Stats, RunError> {
    let Worker {
        settings,
        ops,
        listeners,
        mut control,
        ..
    } = worker;
    let seed = lb_runtime::os_seed()?;
    let mut ops = ops;
    // The owner awaits the admin queue itself: no waker needed.
    let mut admin = ops.start_admin(|| {})?;
    let lb = Balancer::new(settings.core.clone(), seed, now());
    let (notes_tx, mut notes) = mpsc::channel(NOTES_CAPACITY);

    let ids: Vec<(ListenerId, SocketAddr)> = lb.listeners().collect();
    let mut acceptors = Vec::with_capacity(ids.len());
    for ((id, addr), socket) in ids.into_iter().zip(listeners) {
        let socket =
            TcpListener::from_std(socket).map_err(|source| RunError::Bind { addr, source })?;
        let task = match ops.tls().filter(|_| lb.is_tls_listener(id)) {
            Some(tls) => {
                let proxied = settings.proxy_protocol_tls.contains(&addr);
                if proxied {
                    tracing::info!(listener = %id, %addr, "listening (PROXY header, then TLS)");
                } else {
                    tracing::info!(listener = %id, %addr, "listening (TLS)");
                }
                let accept = tls_accept_loop(id, socket, proxied, tls.clone(), notes_tx.clone());
                tokio::spawn(accept)
            }
            None => {
                tracing::info!(listener = %id, %addr, "listening");
                let accept = accept_loop(id, socket, settings.proxy_protocol, notes_tx.clone());
                tokio::spawn(accept)
            }
        };
        acceptors.push(task.abort_handle());
    }

    let mut owner = Owner {
        lb,
        ops,
        conns: Vec::new(),
        notes: notes_tx,
        marks: Watermarks::of(&settings),
        dns: None,
    };
    owner.drain();
    owner.ops.turn(&owner.lb, now());

    let sleep = tokio::time::sleep_until(far_future());
    tokio::pin!(sleep);
    let mut armed: Option<std::time::Instant> = None;
    loop {
        let deadline = [owner.lb.poll_timeout(), owner.ops.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        if deadline != armed {
            armed = deadline;
            sleep
                .as_mut()
                .reset(deadline.map_or_else(far_future, TokioInstant::from_std));
        }
        tokio::select! {
            biased;
            command = control.recv() => match command {
                Command::Stop => break,
                Command::Reload(settings) => owner.reload(*settings),
            },
            note = notes.recv() => {
                // The owner holds a sender itself, so the channel never ends while it runs.
                let Some(note) = note else { break };
                owner.handle_note(note);
                for _ in 1..BATCH_MAX {
                    match notes.try_recv() {
                        Ok(note) => owner.handle_note(note),
                        Err(_) => break,
                    }
                }
            }
            () = &mut sleep, if armed.is_some() => {
                // Forget the fired deadline so the next one is armed even if it is equal.
                armed = None;
                let now = now();
                if owner.lb.poll_timeout().is_some_and(|d| d <= now) {
                    owner.lb.handle_input(now, Input::Timeout);
                    owner.drain();
                }
            }
            command = admin.next() => {
                owner.ops.handle_admin(&mut owner.lb, now(), command);
                owner.marks = Watermarks::of(owner.ops.settings());
                owner.drain();
            }
        }
        owner.ops.turn(&owner.lb, now());
    }

    tracing::info!("shutting down: no more accepts, flushing queued output");
    for acceptor in acceptors {
        acceptor.abort();
    }
    owner.flush_all(&mut notes).await;
    Ok(owner.lb.stats().clone())
}

/// What the tasks tell the owner.
pub(crate) enum Note {
    Accepted {
        listener: ListenerId,
        stream: TcpStream,
        /// The socket's peer, or the client its PROXY header announced.
        peer: SocketAddr,
        /// The socket's peer when `peer` came from a PROXY header.
        proxy: Option<SocketAddr>,
        /// Bytes read after the PROXY header: the start of the SIP stream.
        first: BytesMut,
    },
    /// A connection closed for want of a valid PROXY header.
    ProxyRejected {
        peer: SocketAddr,
        cause: ProxyReject,
    },
    /// A TLS frontend whose handshake finished.
    AcceptedTls {
        listener: ListenerId,
        stream: Box<tokio_rustls::server::TlsStream<Prefixed>>,
        /// The socket's peer, or the client its PROXY header announced.
        peer: SocketAddr,
        /// The socket's peer when `peer` came from a PROXY header.
        proxy: Option<SocketAddr>,
    },
    Received {
        conn: ConnId,
        bytes: BytesMut,
    },
    Connected {
        conn: ConnId,
        /// The read half: of the TCP stream, or of the TLS stream to a TLS backend.
        read: Box<dyn AsyncRead + Send + Unpin>,
    },
    Closed {
        conn: ConnId,
        reason: CloseReason,
    },
    /// The answer to an `Output::Resolve`.
    Resolved {
        conn: ConnId,
        addrs: Vec<SocketAddr>,
    },
    /// The writer took a queue reported over the high-water mark below the low-water mark.
    Drained {
        conn: ConnId,
    },
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Backend connect in progress; writes queue up in the channel meanwhile.
    Connecting,
    Open,
    /// `Output::Close` performed; waiting for the writer to flush and report.
    Closing,
}

struct Conn {
    id: ConnId,
    frontend: bool,
    state: State,
    /// The writer's queue: the bytes not yet written, and their level.
    outbox: Arc<Outbox>,
    reader: Option<AbortHandle>,
    /// The writer task, or the connect task that becomes it.
    writer: AbortHandle,
}

struct Owner {
    lb: Balancer,
    ops: Ops,
    /// Indexed by `ConnId::slot`.
    conns: Vec<Option<Conn>>,
    notes: mpsc::Sender<Note>,
    /// The output queues' marks and ceiling ([`lb_runtime::backpressure`]).
    marks: Watermarks,
    /// Made at the first `Output::Resolve`: most runs never dial a host name.
    dns: Option<lb_runtime::dns::Dns>,
}

impl Owner {
    /// SIGHUP: the process's reread configuration goes to the core; the output cap applies to
    /// the next sends.
    fn reload(&mut self, settings: Settings) {
        let config = self.ops.adopt(settings);
        self.marks = Watermarks::of(self.ops.settings());
        self.lb.handle_input(now(), Input::Reload(Box::new(config)));
        self.drain();
    }

    fn handle_note(&mut self, note: Note) {
        match note {
            Note::Accepted {
                listener,
                stream,
                peer,
                proxy,
                first,
            } => {
                let _ = stream.set_nodelay(true);
                let (read, write) = stream.into_split();
                self.start_frontend(listener, peer, proxy, first, read, write);
            }
            Note::AcceptedTls {
                listener,
                stream,
                peer,
                proxy,
            } => {
                let (read, write) = tokio::io::split(*stream);
                self.start_frontend(listener, peer, proxy, BytesMut::new(), read, write);
            }
            Note::ProxyRejected { peer, cause } => self.ops.proxy_rejected(peer, cause, now()),
            Note::Received { conn, bytes } => {
                if self.get(conn).is_some_and(|c| c.state == State::Open) {
                    self.lb.handle_input(now(), Input::Received { conn, bytes });
                }
            }
            Note::Connected { conn, read } => {
                let notes = self.notes.clone();
                let Some(c) = self.get(conn) else { return };
                // While Closing the read half is dropped: the writer reports the close.
                if c.state == State::Connecting {
                    c.state = State::Open;
                    let pause = Watermarks::pauses_reading(c.frontend).then(|| c.outbox.clone());
                    let reader = read_loop(conn, read, notes, pause);
                    c.reader = Some(tokio::spawn(reader).abort_handle());
                    self.lb.handle_input(now(), Input::Connected { conn });
                }
            }
            Note::Closed { conn, reason } => {
                if let Some(c) = self.get(conn) {
                    let reason = if c.state == State::Closing {
                        CloseReason::Requested
                    } else {
                        reason
                    };
                    self.finish(conn, reason);
                }
            }
            Note::Resolved { conn, addrs } => {
                self.lb.handle_input(now(), Input::Resolved { conn, addrs });
            }
            Note::Drained { conn } => {
                if self.get(conn).is_some() {
                    let level = lb_core::QueueLevel::Low;
                    self.lb
                        .handle_input(now(), Input::OutputQueue { conn, level });
                }
            }
        }
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(output) = self.lb.poll_output() {
            self.perform(output);
        }
    }

    fn perform(&mut self, output: Output) {
        match output {
            Output::Send { conn, bytes } => {
                let marks = self.marks;
                let Some(c) = self.get(conn) else { return };
                if c.state == State::Closing {
                    return;
                }
                let len = bytes.len();
                let queued = c.outbox.queued();
                match marks.admit(queued, len, c.outbox.is_high(), c.frontend) {
                    Admit::Close => {
                        self.ops.output_overflow(conn, marks.ceiling, now());
                        self.finish(conn, CloseReason::OutputOverflow);
                    }
                    Admit::Drop => self.ops.output_cap_drop(conn, marks.ceiling, now()),
                    Admit::Queue { report } => {
                        // If the writer already ended, its Closed note is on its way.
                        c.outbox.push(Write::Bytes(bytes));
                        if let Some(level) = report {
                            // A frontend's reader waits from its next read on.
                            c.outbox.set_high();
                            self.lb
                                .handle_input(now(), Input::OutputQueue { conn, level });
                        }
                    }
                }
            }
            Output::Connect { conn, backend, to } => {
                tracing::debug!(conn = %conn, backend = %backend, %to, "connecting");
                let tls = self.ops.backend_tls(&self.lb, backend);
                self.connect(conn, to, false, tls);
            }
            Output::Dial { conn, to } => {
                tracing::debug!(conn = %conn, %to, "dialling a frontend");
                self.connect(conn, to, true, None);
            }
            Output::Resolve { conn, host, port } => {
                tracing::debug!(conn = %conn, %host, ?port, "resolving");
                let dns = self
                    .dns
                    .get_or_insert_with(lb_runtime::dns::Dns::from_system)
                    .clone();
                let notes = self.notes.clone();
                tokio::spawn(async move {
                    let addrs = dns.resolve(&host, port).await;
                    let _ = notes.send(Note::Resolved { conn, addrs }).await;
                });
            }
            Output::Close { conn } => {
                let Some(c) = self.get(conn) else { return };
                if c.state == State::Closing {
                    return;
                }
                c.state = State::Closing;
                if let Some(reader) = c.reader.take() {
                    reader.abort();
                }
                c.outbox.push(Write::Close);
            }
            Output::Abort { conn } => {
                let Some(c) = self.get(conn) else { return };
                let reason = match c.state {
                    State::Connecting => CloseReason::Error,
                    State::Open | State::Closing => CloseReason::Requested,
                };
                if c.state == State::Closing {
                    let unsent = c.outbox.queued();
                    tracing::debug!(conn = %conn, unsent, "peer not reading; closed unflushed");
                }
                self.finish(conn, reason);
            }
            Output::Event(event) => self.ops.event(&self.lb, &event, now()),
        }
    }

    /// A frontend connection (TCP, or TLS after its handshake) is the core's from now on: its
    /// reader and writer tasks start.
    fn start_frontend<R, W>(
        &mut self,
        listener: ListenerId,
        peer: SocketAddr,
        proxy: Option<SocketAddr>,
        first: BytesMut,
        read: R,
        write: W,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let conn = self.lb.accept(now(), listener, peer);
        match proxy {
            Some(proxy) => lb_runtime::log_frontend_open_proxied(conn, peer, proxy),
            None => lb_runtime::log_frontend_open(conn, peer),
        }
        let outbox = Outbox::new(self.marks);
        let writer = tokio::spawn(write_loop(conn, write, outbox.clone(), self.notes.clone()));
        let pause = Some(outbox.clone());
        let reader = tokio::spawn(read_loop(conn, read, self.notes.clone(), pause));
        self.insert(Conn {
            id: conn,
            frontend: true,
            state: State::Open,
            outbox,
            reader: Some(reader.abort_handle()),
            writer: writer.abort_handle(),
        });
        // Bytes that came after a PROXY header, read before the connection was the core's.
        if !first.is_empty() {
            let bytes = first;
            self.lb.handle_input(now(), Input::Received { conn, bytes });
        }
    }

    /// Starts connecting `conn` to `to` (a backend, or a frontend the core dials out to).
    fn connect(&mut self, conn: ConnId, to: SocketAddr, frontend: bool, tls: Option<BackendTls>) {
        let outbox = Outbox::new(self.marks);
        let task = tokio::spawn(connect_task(
            conn,
            to,
            tls,
            outbox.clone(),
            self.notes.clone(),
        ));
        self.insert(Conn {
            id: conn,
            frontend,
            state: State::Connecting,
            outbox,
            reader: None,
            writer: task.abort_handle(),
        });
    }

    /// Feeds the one `Closed` of `conn` and forgets it; its tasks stop.
    fn finish(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.get_mut(conn.slot()).and_then(Option::take) else {
            return;
        };
        if let Some(reader) = c.reader {
            reader.abort();
        }
        c.writer.abort();
        c.outbox.forget();
        if c.frontend {
            lb_runtime::log_frontend_closed(conn, reason);
        }
        self.lb.handle_input(now(), Input::Closed { conn, reason });
    }

    /// The entry of `conn` if it is still the one registered at its slot.
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
        debug_assert!(
            self.conns[slot].is_none(),
            "the core reuses a slot only after Closed"
        );
        self.conns[slot] = Some(conn);
    }

    /// Shutdown: stop reading, let every writer flush and shut down, wait for them at most
    /// [`SHUTDOWN_FLUSH_MAX`]. The core is not fed any more: the counters stay as they were.
    async fn flush_all(&mut self, notes: &mut mpsc::Receiver<Note>) {
        let mut pending = 0usize;
        for slot in &mut self.conns {
            let Some(c) = slot else { continue };
            if let Some(reader) = c.reader.take() {
                reader.abort();
            }
            match c.state {
                State::Open => {
                    c.outbox.push(Write::Close);
                    c.state = State::Closing;
                    pending += 1;
                }
                State::Closing => pending += 1,
                State::Connecting => {
                    c.writer.abort();
                    *slot = None;
                }
            }
        }
        let deadline = TokioInstant::now() + SHUTDOWN_FLUSH_MAX;
        while pending > 0 {
            match tokio::time::timeout_at(deadline, notes.recv()).await {
                Ok(Some(Note::Closed { conn, .. })) => {
                    if self.get(conn).is_some() {
                        self.conns[conn.slot()] = None;
                        pending -= 1;
                    }
                }
                Ok(Some(
                    Note::Accepted { .. }
                    | Note::AcceptedTls { .. }
                    | Note::ProxyRejected { .. }
                    | Note::Received { .. }
                    | Note::Connected { .. }
                    | Note::Resolved { .. }
                    | Note::Drained { .. },
                )) => {}
                Ok(None) | Err(_) => break,
            }
        }
        if pending > 0 {
            tracing::warn!(pending, "shutdown: gave up flushing some connections");
        }
    }
}

async fn accept_loop(
    listener: ListenerId,
    socket: TcpListener,
    proxy_protocol: bool,
    notes: mpsc::Sender<Note>,
) {
    // Connections still reading their PROXY header.
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        match socket.accept().await {
            Ok((stream, peer)) if proxy_protocol => {
                if pending.load(Ordering::Relaxed) >= PROXY_PENDING_MAX {
                    drop(stream);
                    let cause = ProxyReject::TooMany;
                    let _ = notes.try_send(Note::ProxyRejected { peer, cause });
                    continue;
                }
                pending.fetch_add(1, Ordering::Relaxed);
                let (pending, notes) = (Arc::clone(&pending), notes.clone());
                tokio::spawn(async move {
                    let note = match proxy_header(stream).await {
                        Ok((stream, client, first)) => Note::Accepted {
                            listener,
                            stream,
                            peer: client.unwrap_or(peer),
                            proxy: Some(peer),
                            first,
                        },
                        Err(cause) => Note::ProxyRejected { peer, cause },
                    };
                    pending.fetch_sub(1, Ordering::Relaxed);
                    let _ = notes.send(note).await;
                });
            }
            Ok((stream, peer)) => {
                let first = BytesMut::new();
                let note = Note::Accepted {
                    listener,
                    stream,
                    peer,
                    proxy: None,
                    first,
                };
                if notes.send(note).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Usually out of file descriptors: retrying at once would spin.
                tracing::warn!(listener = %listener, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Accepts TLS frontends: each socket gets a handshake task, within the cap on handshakes in
/// progress and the handshake timeout; only a finished handshake reaches the owner. Failures
/// close that socket alone and are counted by reason. With `proxied` (`--listen-tls
/// ADDR,proxy-protocol`) the task first reads the PROXY header (within its own timeout, under
/// the same cap); the bytes after it go to rustls, and the client it names is the peer.
async fn tls_accept_loop(
    listener: ListenerId,
    socket: TcpListener,
    proxied: bool,
    tls: Arc<lb_runtime::tls::Tls>,
    notes: mpsc::Sender<Note>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(lb_runtime::tls::HANDSHAKES_MAX));
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(listener = %listener, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tls.counters
                .refused_busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let (counters, notes) = (tls.counters.clone(), notes.clone());
        tokio::spawn(async move {
            let (stream, client, proxy) = if proxied {
                match proxy_header(stream).await {
                    Ok((stream, client, rest)) => (
                        Prefixed::new(rest, stream),
                        client.unwrap_or(peer),
                        Some(peer),
                    ),
                    Err(cause) => {
                        let _ = notes.send(Note::ProxyRejected { peer, cause }).await;
                        return;
                    }
                }
            } else {
                (Prefixed::new(BytesMut::new(), stream), peer, None)
            };
            let handshake =
                tokio::time::timeout(lb_runtime::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %client, error = %e, "TLS handshake failed");
                    return counters.handshake_failed(&e);
                }
                Err(_) => {
                    tracing::debug!(peer = %client, "TLS handshake timed out");
                    counters
                        .failed_timeout
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            };
            drop(permit);
            counters.handshake_done(stream.get_ref().1.protocol_version());
            let stream = Box::new(stream);
            let _ = notes
                .send(Note::AcceptedTls {
                    listener,
                    stream,
                    peer: client,
                    proxy,
                })
                .await;
        });
    }
}

/// Reads an accepted connection's PROXY header: the stream, the client it announces (`None`:
/// the proxy's own connection) and the bytes after it. A fault closes the stream.
async fn proxy_header(
    mut stream: TcpStream,
) -> Result<(TcpStream, Option<SocketAddr>, BytesMut), ProxyReject> {
    let mut reader = ProxyHeaderReader::new();
    let mut buf = [0u8; 512];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Err(ProxyReject::TimedOut),
                Ok(n) => match reader.push(&buf[..n]) {
                    ProxyRead::Incomplete => {}
                    ProxyRead::Header { client, rest } => return Ok((client, rest)),
                    ProxyRead::Rejected(cause) => return Err(cause),
                },
            }
        }
    };
    match tokio::time::timeout(PROXY_HEADER_TIMEOUT, read).await {
        Ok(Ok((client, rest))) => Ok((stream, client, rest)),
        Ok(Err(cause)) => Err(cause),
        Err(_) => Err(ProxyReject::TimedOut),
    }
}

async fn connect_task(
    conn: ConnId,
    to: SocketAddr,
    tls: Option<BackendTls>,
    outbox: Arc<Outbox>,
    notes: mpsc::Sender<Note>,
) {
    // No timeout here: the core gives up on a connect (TLS handshake included) with
    // `Output::Abort`, which ends this task.
    let stream = match TcpStream::connect(to).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(conn = %conn, %to, error = %e, "connect failed");
            let _ = notes
                .send(Note::Closed {
                    conn,
                    reason: CloseReason::Error,
                })
                .await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    outbox.marks().bound_send_buffer(&stream);
    let Some((config, name)) = tls else {
        let (read, write) = stream.into_split();
        // The owner spawns the reader, so no data can overtake this note.
        let read = Box::new(read);
        if notes.send(Note::Connected { conn, read }).await.is_err() {
            return;
        }
        return write_loop(conn, write, outbox, notes).await;
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = match connector.connect(name, stream).await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(conn = %conn, %to, error = %e, "TLS to the backend failed");
            let reason = CloseReason::Error;
            let _ = notes.send(Note::Closed { conn, reason }).await;
            return;
        }
    };
    let (read, write) = tokio::io::split(stream);
    let read = Box::new(read);
    if notes.send(Note::Connected { conn, read }).await.is_err() {
        return;
    }
    write_loop(conn, write, outbox, notes).await;
}

fn now() -> std::time::Instant {
    TokioInstant::now().into_std()
}

/// A deadline that never comes, for the `Sleep` while the core has none.
fn far_future() -> TokioInstant {
    TokioInstant::now() + Duration::from_secs(365 * 24 * 3600)
}

/// Notes in flight before readers wait for the owner: enough for one wake-up's batch per
/// busy connection without letting readers run far ahead of the core.
const NOTES_CAPACITY: usize = 1024;

/// Pause after a failed accept (typically EMFILE) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
