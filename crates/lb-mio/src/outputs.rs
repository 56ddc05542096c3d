//! The core's outputs carried out on the mio loop, in the order lb-tokio's `outputs.rs`
//! takes them: send (within the output-cap budget), connect and dial, resolve, close, abort,
//! event.

use std::time::Instant;

use lb_core::{CloseReason, Input, Output};
use lb_runtime::{Admission, ConnState};

use crate::Driver;

impl Driver {
    /// Carries out one output. Never drains itself: `drain` loops until the queue is empty.
    pub(crate) fn perform(&mut self, output: Output) {
        match output {
            Output::Send { conn, bytes } => {
                let marks = self.marks;
                match self.conns.admit(conn, bytes.len(), &marks) {
                    Admission::Ignore => {}
                    Admission::Overflow => {
                        self.ops
                            .output_overflow(conn, marks.ceiling, Instant::now());
                        self.finish(conn, CloseReason::OutputOverflow);
                    }
                    Admission::Drop => {
                        self.ops
                            .output_cap_drop(conn, marks.ceiling, Instant::now())
                    }
                    Admission::Queue { report } => {
                        if let Some(c) = self.conns.get_mut(conn) {
                            c.io.out.push_back(bytes);
                        }
                        if let Some(level) = report {
                            // A frontend stops being read from here (see `read`).
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
                if let Some(c) = self.conns.get_mut(conn) {
                    c.io.backend_tls = tls;
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
                let Some(c) = self.conns.get_mut(conn) else {
                    return;
                };
                match c.state {
                    // Nothing was written yet, so there is nothing to flush.
                    ConnState::Connecting => self.finish(conn, CloseReason::Requested),
                    ConnState::Open => {
                        c.state = ConnState::Closing;
                        self.mark_dirty(conn);
                    }
                    ConnState::Closing => {}
                }
            }
            Output::Abort { conn } => {
                if let Some(reason) = self.conns.abort_reason(conn) {
                    self.finish(conn, reason);
                }
            }
            Output::Event(event) => self.ops.event(&self.lb, &event, Instant::now()),
        }
    }
}
