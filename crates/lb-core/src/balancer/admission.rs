//! Who gets a frontend slot (docs/design.md, "Fair shares"): the connection limits at accept.
//!
//! - A source address ([`SourceKey`]: the PROXY-protocol source where the driver had one) may
//!   hold `limits.frontends_per_ip_max` connections; more are refused.
//! - The last `limits.frontends_reserve_percent` of `limits.frontends_max` go only to sources with
//!   no connection open, so a new peer finds room when the known ones hold everything.
//! - At either limit, a connection that never sent a SIP message, or none for
//!   `limits.frontend_evict_idle`, is closed to make room for the new one; only when there is
//!   none is the new one refused. CRLF keep-alives are no SIP message: a slot held by pings
//!   alone is taken back when it is needed.
//!
//! The candidates are found without a scan of all connections: accepted connections wait in a
//! queue in accept order, and eviction looks at the front, closing the first candidate and
//! moving busy connections to the back (a second chance, as the CLOCK page-replacement
//! algorithm does), at most [`EVICT_LOOKS`] per accept. The queue keeps one id per open
//! connection: ids of closed ones are dropped as they come up, and the queue is compacted
//! when they outnumber the open ones.
//!
//! Each worker's core counts its own connections: with `--workers N` and the kernel spreading
//! connections over the workers, a source may hold up to N × `frontends_per_ip_max` in the
//! process (docs/operations.md, "Fair shares").

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use super::{Balancer, Side};
use crate::ids::ConnId;
use crate::io::{Event, Output};
use crate::keyed_hash::Keyed;
use crate::source::SourceKey;

/// Queue entries looked at per accept at the limit: bounds the work a connection flood causes.
const EVICT_LOOKS: usize = 64;

/// Open accepted frontend connections per source, and the eviction queue.
#[derive(Debug)]
pub(super) struct Admission {
    per_source: HashMap<SourceKey, u32, Keyed>,
    queue: VecDeque<ConnId>,
}

/// The verdict on a new connection.
pub(super) enum Admit {
    Yes,
    /// Refused; the reason for the log.
    No(&'static str),
}

impl Admission {
    pub(super) fn new(key: [u8; 16]) -> Admission {
        Admission {
            per_source: HashMap::with_hasher(Keyed(key)),
            queue: VecDeque::new(),
        }
    }

    /// Open accepted connections from `source`.
    pub(super) fn open_from(&self, source: SourceKey) -> usize {
        self.per_source.get(&source).map_or(0, |&n| n as usize)
    }
}

impl Balancer {
    /// Decides on a connection from `peer` about to be accepted, evicting one to make room if
    /// it must and can.
    pub(super) fn admit(&mut self, peer: SocketAddr) -> Admit {
        let l = &self.config.config.limits;
        let (max, per_ip) = (l.frontends_max, l.frontends_per_ip_max);
        // At 100 % a source already connected gets no second connection.
        let reserve = l.frontends_reserve().min(max);
        let source = SourceKey::from(peer.ip());
        let from_source = self.admission.open_from(source);
        if from_source >= per_ip {
            return Admit::No("connections from this address at their limit");
        }
        // A source already connected may not take the reserve.
        let limit = if from_source > 0 { max - reserve } else { max };
        if (self.stats.frontends_open as usize) < limit {
            return Admit::Yes;
        }
        match self.evict_one() {
            true => Admit::Yes,
            false => Admit::No("frontend connections at their limit"),
        }
    }

    /// A frontend connection from `peer` was accepted as `conn` (refused or not): it counts for
    /// its source until it is closed.
    pub(super) fn admitted(&mut self, conn: ConnId, peer: SocketAddr) {
        *self
            .admission
            .per_source
            .entry(SourceKey::from(peer.ip()))
            .or_insert(0) += 1;
        let open = self.stats.frontends_open as usize;
        let queue = &mut self.admission.queue;
        queue.push_back(conn);
        if queue.len() > 2 * open + EVICT_LOOKS {
            let conns = &self.conns;
            queue.retain(|id| {
                conns
                    .get(id.slot())
                    .is_some_and(|c| c.generation == id.generation() && !c.closing)
            });
        }
    }

    /// An accepted frontend connection from `peer` is gone.
    pub(super) fn released(&mut self, peer: SocketAddr) {
        let source = SourceKey::from(peer.ip());
        if let Some(n) = self.admission.per_source.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.admission.per_source.remove(&source);
            }
        }
    }

    /// Closes the first evictable connection in the queue, looking at [`EVICT_LOOKS`] at most;
    /// `false` if none was found.
    fn evict_one(&mut self) -> bool {
        let idle_for = self.config.config.limits.frontend_evict_idle;
        let now = self.now;
        for _ in 0..EVICT_LOOKS {
            let Some(id) = self.admission.queue.pop_front() else {
                return false;
            };
            let Some(conn) = self.conn(id).filter(|c| !c.closing) else {
                continue; // closed: its id leaves the queue
            };
            let Side::Frontend { liveness, .. } = &conn.side else {
                continue;
            };
            let evictable = liveness
                .last_message()
                .is_none_or(|at| now.saturating_duration_since(at) >= idle_for);
            if evictable {
                self.stats.frontends_evicted += 1;
                tracing::debug!(conn = %id, "frontend evicted at the connection limit");
                self.outputs.push_back(Output::Event(Event::TimedOut {
                    conn: id,
                    cause: crate::reasons::TimeoutCause::EvictedAtConnectionLimit,
                }));
                self.close(id);
                return true;
            }
            self.admission.queue.push_back(id);
        }
        false
    }
}
