//! The core's outputs carried out by the owner, in the order lb-mio's `outputs.rs` takes
//! them: send (within the output-cap budget), connect and dial, resolve, close, abort, event.

use lb_core::{CloseReason, Input, Output};
use lb_runtime::{Admission, ConnState};

use crate::conn_io::Write;
use crate::{now, Note, Owner};

impl Owner {
    /// Carries out one output. Never drains itself: `drain` loops until the queue is empty.
    pub(crate) fn perform(&mut self, output: Output) {
        match output {
            Output::Send { conn, bytes } => {
                let marks = self.marks;
                match self.conns.admit(conn, bytes.len(), &marks) {
                    Admission::Ignore => {}
                    Admission::Overflow => {
                        self.ops.output_overflow(conn, marks.ceiling, now());
                        self.finish(conn, CloseReason::OutputOverflow);
                    }
                    Admission::Drop => self.ops.output_cap_drop(conn, marks.ceiling, now()),
                    Admission::Queue { report } => {
                        // If the writer already ended, its Closed note is on its way.
                        if let Some(c) = self.conns.get(conn) {
                            c.io.outbox.push(Write::Bytes(bytes));
                        }
                        if let Some(level) = report {
                            // A frontend's reader waits from its next read on (the table
                            // marked the outbox high).
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
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                if c.state == ConnState::Closing {
                    return;
                }
                c.state = ConnState::Closing;
                if let Some(reader) = c.io.reader.take() {
                    reader.abort();
                }
                c.io.outbox.push(Write::Close);
            }
            Output::Abort { conn } => {
                if let Some(reason) = self.conns.abort_reason(conn) {
                    self.finish(conn, reason);
                }
            }
            Output::Event(event) => self.ops.event(&self.lb, &event, now()),
        }
    }
}
