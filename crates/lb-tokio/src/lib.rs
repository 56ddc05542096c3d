//! # lb-tokio: the balancer on a current-thread tokio runtime
//!
//! One task (the *owner*) holds the [`Balancer`] by value and is the only code that calls it;
//! nothing is shared behind a lock. Around it:
//!
//! - one accept task per listener sends each accepted socket to the owner, which calls
//!   `Balancer::accept` to learn the connection's id;
//! - per connection, a reader task sends what each wake-up reads through the bounded note
//!   channel (a slow owner therefore slows the readers down), and a writer task drains the
//!   connection's `Outbox` (`conn_io.rs`), whose queued size is counted against the output-cap
//!   budget of the shared [`lb_runtime::ConnTable`] (`conns.rs`): past the cap the owner closes
//!   a frontend and reports [`lb_core::CloseReason::OutputOverflow`]. An idle connection holds
//!   no read or write buffer (`conn_io.rs`: about 2 kB per idle connection);
//! - `Output::Connect` spawns a task that connects and then becomes the writer; the core gives
//!   up on a slow connect, or a close's slow flush, with `Output::Abort`, which ends its tasks.
//! - A TLS listener's accept task (`accept.rs`) hands each socket to a handshake task
//!   (tokio-rustls, at most [`lb_runtime::tls::HANDSHAKES_MAX`] at once, each within
//!   [`lb_runtime::tls::HANDSHAKE_TIMEOUT`]); only a finished handshake reaches the owner, whose reader and writer then see plaintext.
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
//! it feeds it ([`lb_runtime::ConnTable::finish`]), and notes for ids no longer in the table
//! are ignored.
//!
//! The files follow lb-mio's: `accept.rs` (the accept tasks, PROXY headers, TLS handshakes),
//! `conns.rs` (the connection table's I/O half: tasks, connects, the one `Closed`),
//! `outputs.rs` (the core's outputs carried out), `shutdown.rs` (the final flush), and
//! `conn_io.rs` (the reader and writer tasks).
#![warn(missing_docs)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]

mod accept;
mod conn_io;
mod conns;
mod outputs;
mod shutdown;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use lb_cli::{Command, Ops, Settings, Worker};
use lb_core::{Balancer, CloseReason, ConnId, Input, ListenerId, Stats};
use lb_runtime::backpressure::Watermarks;
use lb_runtime::{ConnState, ConnTable, ProxyReject, RunError, WakePacer, BATCH_MAX};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use conn_io::{read_loop, Prefixed};
use conns::Tasks;

/// Runs `--workers` balancers, each on a new current-thread runtime on a thread of its own,
/// until SIGINT or SIGTERM, then flushes queued output (at most
/// [`lb_runtime::SHUTDOWN_FLUSH_MAX`]) and returns the sum of their final counters.
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
/// flushes queued output (at most [`lb_runtime::SHUTDOWN_FLUSH_MAX`]) and returns the final
/// counters.
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

    let acceptors = accept::spawn_acceptors(&lb, &ops, &settings, listeners, &notes_tx)?;

    let mut owner = Owner {
        lb,
        ops,
        conns: ConnTable::new(),
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

/// The task that owns the core: its connections and what it needs to carry out outputs.
struct Owner {
    lb: Balancer,
    ops: Ops,
    /// The connections the core knows of, by `ConnId::slot`.
    conns: ConnTable<Tasks>,
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

    /// Acts on one note from a task, then drains the core's outputs.
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
                if self
                    .conns
                    .get(conn)
                    .is_some_and(|c| c.state == ConnState::Open)
                {
                    self.lb.handle_input(now(), Input::Received { conn, bytes });
                }
            }
            Note::Connected { conn, read } => {
                let notes = self.notes.clone();
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                // While Closing the read half is dropped: the writer reports the close.
                if c.state == ConnState::Connecting {
                    c.state = ConnState::Open;
                    let pause =
                        Watermarks::pauses_reading(c.is_frontend()).then(|| c.io.outbox.clone());
                    let reader = read_loop(conn, read, notes, pause);
                    c.io.reader = Some(tokio::spawn(reader).abort_handle());
                    self.lb.handle_input(now(), Input::Connected { conn });
                }
            }
            Note::Closed { conn, reason } => {
                if let Some(c) = self.conns.get(conn) {
                    let reason = c.state.closed_reason(reason);
                    self.finish(conn, reason);
                }
            }
            Note::Resolved { conn, addrs } => {
                self.lb.handle_input(now(), Input::Resolved { conn, addrs });
            }
            Note::Drained { conn } => {
                if self.conns.get(conn).is_some() {
                    let level = lb_core::QueueLevel::Low;
                    self.lb
                        .handle_input(now(), Input::OutputQueue { conn, level });
                }
            }
        }
        self.drain();
    }

    /// Carries out every output the core has queued.
    fn drain(&mut self) {
        while let Some(output) = self.lb.poll_output() {
            self.perform(output);
        }
    }
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
