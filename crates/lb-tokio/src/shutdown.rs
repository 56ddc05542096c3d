//! Shutdown of the owner: no more accepts or reads; every writer flushes what is queued and
//! shuts its socket down, waited for at most [`SHUTDOWN_FLUSH_MAX`], as lb-mio's
//! `shutdown.rs` does on its loop.

use lb_runtime::{ConnState, SHUTDOWN_FLUSH_MAX};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use crate::conn_io::Write;
use crate::{Note, Owner};

impl Owner {
    /// Shutdown: stop reading, let every writer flush and shut down, wait for them at most
    /// [`SHUTDOWN_FLUSH_MAX`]. The core is not fed any more: the counters stay as they were.
    pub(crate) async fn flush_all(&mut self, notes: &mut mpsc::Receiver<Note>) {
        let mut pending = 0usize;
        self.conns.retain(|c| {
            if let Some(reader) = c.io.reader.take() {
                reader.abort();
            }
            match c.state {
                ConnState::Open => {
                    c.io.outbox.push(Write::Close);
                    c.state = ConnState::Closing;
                    pending += 1;
                    true
                }
                ConnState::Closing => {
                    pending += 1;
                    true
                }
                ConnState::Connecting => {
                    c.io.writer.abort();
                    false
                }
            }
        });
        let deadline = TokioInstant::now() + SHUTDOWN_FLUSH_MAX;
        while pending > 0 {
            match tokio::time::timeout_at(deadline, notes.recv()).await {
                Ok(Some(Note::Closed { conn, .. })) => {
                    if self.conns.forget(conn).is_some() {
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
