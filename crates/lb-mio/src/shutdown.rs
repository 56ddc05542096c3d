//! Shutdown on the mio loop: no more accepts or reads, queued output written for at most
//! [`SHUTDOWN_FLUSH_MAX`], as lb-tokio's `shutdown.rs` does with its writer tasks.

use std::io::ErrorKind;
use std::net::Shutdown;
use std::time::Instant;

use lb_runtime::{ConnState, SHUTDOWN_FLUSH_MAX};
use mio::{Events, Interest, Token};

use crate::{Driver, EVENTS_CAPACITY};

impl Driver {
    /// Shutdown: stop accepting and reading, write what is queued for at most
    /// [`SHUTDOWN_FLUSH_MAX`]. The core is not fed any more: the counters stay as they were.
    pub(crate) fn flush_all(&mut self) {
        tracing::info!("shutting down: no more accepts, flushing queued output");
        for (_, mut socket) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut socket);
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH_MAX;
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        loop {
            let mut pending = 0;
            let registry = self.poll.registry();
            self.conns.retain(|c| {
                let done = c.state == ConnState::Connecting
                    || c.io.write_queue(c.state).is_err()
                    || c.io.out.is_empty();
                if done {
                    let _ = c.io.stream.shutdown(Shutdown::Both);
                    let _ = registry.deregister(&mut c.io.stream);
                    return false;
                }
                if c.io.interest != Interest::WRITABLE {
                    c.io.interest = Interest::WRITABLE;
                    let token = Token(c.id().slot());
                    let _ = registry.reregister(&mut c.io.stream, token, c.io.interest);
                }
                pending += 1;
                true
            });
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
