//! Push back instead of failing over (issue 15, "overload without collapse").
//!
//! The drivers own the output queues; they tell the core when a connection's queue crosses the
//! high-water mark and when it falls back below the low-water mark (`Input::OutputQueue`). What
//! follows from that is decided here:
//!
//! - **A backend over the mark is held**: it takes no new calls, but it stays up and every
//!   message of its calls still goes to it. A slow backend is not a dead one: moving its calls
//!   to a backup breaks them (RFC 6357 §3 describes the collapse that follows). New calls go to
//!   the backends with room; when none has room the caller gets the balancer's 503 with
//!   `Retry-After`.
//! - **A frontend over the mark is sent nothing more**: what a backend (or the balancer) has
//!   for it is dropped and counted. A backend connection carries the calls of every frontend,
//!   so it must never wait for one that does not read. The drivers also stop reading from that
//!   frontend until its queue is below the low-water mark again, so it cannot pile up more work.
//! - **Minimum progress**: a connection that stays over the mark for `stall_timeout` without
//!   getting back below the low-water mark is closed. Its peer must drain at least the gap
//!   between the marks in that time; a burst the peer reads in time never closes anything.

use std::time::Instant;

use super::{Balancer, Side};
use crate::ids::{BackendId, ConnId};
use crate::io::{Event, Output, QueueLevel};

impl Balancer {
    pub(super) fn handle_queue_level(&mut self, id: ConnId, level: QueueLevel) {
        let now = self.now;
        let stall_timeout = self.config.config.stall_timeout;
        let Some(conn) = self.conn_mut(id) else {
            self.stats.stale_inputs += 1;
            return;
        };
        let was_high = conn.queue_high_since.is_some();
        let high = level == QueueLevel::High;
        if was_high == high {
            return; // a repeated report changes nothing (the stall clock keeps running)
        }
        conn.queue_high_since = high.then_some(now);
        let backend = match conn.side {
            Side::Backend { backend, .. } => Some(backend),
            Side::Frontend { .. } => None,
        };
        if high {
            self.stalls.push_back((now + stall_timeout, id));
        }
        let Some(backend) = backend.filter(|b| self.backends[b.index()].conn == Some(id)) else {
            return;
        };
        if high {
            self.stats.backend_queue_holds += 1;
        }
        tracing::debug!(%backend, held = high, "backend queue level");
        self.outputs
            .push_back(Output::Event(Event::BackendQueueHeld {
                backend,
                held: high,
            }));
        self.count_queue_held();
    }

    /// Closes the connections whose queue has stayed over the high-water mark since their
    /// stall deadline was set.
    pub(super) fn handle_stalls(&mut self) {
        let now = self.now;
        let timeout = self.config.config.stall_timeout;
        while let Some(&(at, id)) = self.stalls.front() {
            if at > now {
                break;
            }
            self.stalls.pop_front();
            let Some(conn) = self.conn(id).filter(|c| !c.closing) else {
                continue;
            };
            // The queue went down and up again since: the later crossing has its own entry.
            let Some(since) = conn.queue_high_since else {
                continue;
            };
            if since + timeout > now {
                continue;
            }
            self.stats.stall_closes += 1;
            let cause = crate::reasons::TimeoutCause::PeerNotReading;
            tracing::debug!(conn = %id, cause = cause.as_str(), "connection stalled, closing");
            self.outputs
                .push_back(Output::Event(Event::TimedOut { conn: id, cause }));
            self.close(id);
        }
    }

    /// Whether `id` is a frontend whose queue is over the high-water mark: a message for it is
    /// dropped (and counted) instead of queued behind what it does not read.
    pub(super) fn frontend_not_reading(&mut self, id: ConnId) -> bool {
        let stalled = self.conn(id).is_some_and(|c| {
            c.queue_high_since.is_some() && matches!(c.side, Side::Frontend { .. })
        });
        if stalled {
            self.stats.frontend_stall_drops += 1;
        }
        stalled
    }

    /// Whether `backend`'s connection queue is over the high-water mark (no new calls).
    pub(super) fn backend_queue_held(&self, backend: BackendId) -> bool {
        self.backends
            .get(backend.index())
            .and_then(|b| b.conn)
            .and_then(|c| self.conn(c))
            .is_some_and(|c| c.queue_high_since.is_some())
    }

    /// Recounts the `backends_queue_held` gauge.
    pub(super) fn count_queue_held(&mut self) {
        let held = (0..self.backends.len())
            .filter(|i| self.backend_queue_held(BackendId::new(*i)))
            .count();
        self.stats.backends_queue_held = held as u64;
    }

    /// Whether any backend that is up is held (by its queue or its own 503): a new call that
    /// finds no backend is then refused for overload, not for want of backends.
    pub(super) fn farm_held(&self) -> bool {
        let now: Instant = self.now;
        (0..self.backends.len()).map(BackendId::new).any(|b| {
            self.is_backend_up(b)
                && (self.backend_queue_held(b)
                    || self.backends[b.index()]
                        .overloaded_until
                        .is_some_and(|t| t > now))
        })
    }
}
