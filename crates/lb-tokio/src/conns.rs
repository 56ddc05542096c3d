//! The I/O half of lb-tokio's connections in the shared [`ConnTable`](lb_runtime::ConnTable):
//! each connection's reader and writer tasks (or the connect task that becomes its writer),
//! their start and their end with the one `Closed`. lb-mio's `conns.rs` holds the same on its
//! loop.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use lb_core::{CloseReason, ConnId, Input, ListenerId};
use lb_runtime::backpressure::Watermarks;
use lb_runtime::{BackendTls, ConnState, OutputGauge};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::conn_io::{read_loop, write_loop, Outbox};
use crate::{now, Note, Owner};

/// What lb-tokio holds per connection besides the table's shared facts.
pub(crate) struct Tasks {
    /// The writer's queue: the bytes not yet written, and their level.
    pub(crate) outbox: Arc<Outbox>,
    pub(crate) reader: Option<AbortHandle>,
    /// The writer task, or the connect task that becomes it.
    pub(crate) writer: AbortHandle,
}

/// The table reads lb-tokio's queued bytes from the outbox the writer task shares: the owner
/// counts what it queues, the writer what it wrote.
impl OutputGauge for Tasks {
    fn queued(&self) -> usize {
        self.outbox.queued()
    }

    fn is_high(&self) -> bool {
        self.outbox.is_high()
    }

    fn add(&mut self, len: usize) {
        self.outbox.add(len);
    }

    fn set_high(&mut self) {
        self.outbox.set_high();
    }
}

impl Owner {
    /// A frontend connection (TCP, or TLS after its handshake) is the core's from now on: its
    /// reader and writer tasks start.
    pub(crate) fn start_frontend<R, W>(
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
        lb_runtime::log_frontend_opened(conn, peer, proxy);
        let outbox = Outbox::new(self.marks);
        let writer = tokio::spawn(write_loop(conn, write, outbox.clone(), self.notes.clone()));
        let pause = Some(outbox.clone());
        let reader = tokio::spawn(read_loop(conn, read, self.notes.clone(), pause));
        let tasks = Tasks {
            outbox,
            reader: Some(reader.abort_handle()),
            writer: writer.abort_handle(),
        };
        self.conns.insert(conn, true, ConnState::Open, tasks);
        // Bytes that came after a PROXY header, read before the connection was the core's.
        if !first.is_empty() {
            let bytes = first;
            self.lb.handle_input(now(), Input::Received { conn, bytes });
        }
    }

    /// Starts connecting `conn` to `to` (a backend, or a frontend the core dials out to).
    pub(crate) fn connect(
        &mut self,
        conn: ConnId,
        to: SocketAddr,
        frontend: bool,
        tls: Option<BackendTls>,
    ) {
        let outbox = Outbox::new(self.marks);
        let task = tokio::spawn(connect_task(
            conn,
            to,
            tls,
            self.marks,
            outbox.clone(),
            self.notes.clone(),
        ));
        let tasks = Tasks {
            outbox,
            reader: None,
            writer: task.abort_handle(),
        };
        self.conns
            .insert(conn, frontend, ConnState::Connecting, tasks);
    }

    /// Feeds the one `Closed` of `conn` and forgets it; its tasks stop.
    pub(crate) fn finish(&mut self, conn: ConnId, reason: CloseReason) {
        let Some(c) = self.conns.finish(&mut self.lb, now(), conn, reason) else {
            return;
        };
        if let Some(reader) = c.io.reader {
            reader.abort();
        }
        c.io.writer.abort();
        c.io.outbox.forget();
    }
}

/// Connects `conn` to `to` (then its TLS session, for a TLS backend), reports it connected with
/// its read half, and becomes its writer.
async fn connect_task(
    conn: ConnId,
    to: SocketAddr,
    tls: Option<BackendTls>,
    marks: Watermarks,
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
    marks.bound_send_buffer(&stream);
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
