//! Dial-out: a request toward a frontend the balancer holds no connection to (the proxy came
//! back from another port, its connection idled out, a backend calls a trunk) opens one, as
//! RFC 3261 §18.1.1 has a client do: a TCP connection to the next hop's address. Messages wait
//! in the connection until the driver reports it connected; if it never does, every request
//! that waited gets a 503 from the balancer, so its sender learns at once instead of by timeout.
//!
//! Bounded twice: `limits.dial_outs_max` connections open or opening toward frontends at once,
//! `limits.dial_queue_max` messages waiting per connection. A request past either gets 503.

use super::*;

/// A connection the balancer is opening toward a frontend.
#[derive(Debug, Default)]
pub(super) struct Dialling {
    /// Messages written while connecting, in order.
    queued: Vec<Bytes>,
    /// The requests among them, by the connection they came from, to answer 503 if the dial
    /// fails (responses are dropped: the balancer never answers a response).
    requests: Vec<(ConnId, Bytes)>,
}

impl Balancer {
    /// The connection to reach `to` on: one already open or opening toward it, else a new
    /// dial. `None` when dial-out is at its limit.
    pub(super) fn dial(&mut self, to: SocketAddr) -> Option<ConnId> {
        if let Some(conn) = self.hops.lookup_addr(to) {
            return Some(conn);
        }
        if self.stats.dial_outs_open as usize >= self.config.config.limits.dial_outs_max {
            return None;
        }
        let conn = self.insert_conn(Side::Frontend {
            peer: to,
            framer: StreamFramer::default(),
            aliases: SmallVec::new(),
            liveness: Liveness::new(self.now),
            dialling: Some(Box::default()),
            dialled: true,
        });
        self.stats.dial_outs += 1;
        self.stats.dial_outs_open += 1;
        self.hops.add_peer(conn, to);
        tracing::debug!(%conn, %to, "dialling a frontend");
        self.outputs.push_back(Output::Dial { conn, to });
        Some(conn)
    }

    /// Whether `conn` can take one more message now: open, or dialling with room in its queue.
    pub(super) fn has_room(&self, conn: ConnId) -> bool {
        match self.conn(conn) {
            Some(Conn { closing: true, .. }) | None => false,
            Some(Conn {
                side: Side::Frontend {
                    dialling: Some(d), ..
                },
                ..
            }) => d.queued.len() < self.config.config.limits.dial_queue_max,
            Some(_) => true,
        }
    }

    /// Counts a message forwarded to frontend `conn`, unless it waits for a dial: those count
    /// when the dial connects, or as answered or dropped when it fails.
    pub(super) fn count_to_frontend(&mut self, conn: ConnId) {
        let waits = matches!(
            self.conn(conn).map(|c| &c.side),
            Some(Side::Frontend {
                dialling: Some(_),
                ..
            })
        );
        if !waits {
            self.stats.to_frontend += 1;
        }
    }

    /// Holds `bytes` while `conn` is dialling; gives them back when it is open.
    pub(super) fn hold_while_dialling(&mut self, conn: ConnId, bytes: Bytes) -> Option<Bytes> {
        match self.conn_mut(conn) {
            Some(Conn {
                side: Side::Frontend {
                    dialling: Some(d), ..
                },
                ..
            }) => {
                d.queued.push(bytes);
                None
            }
            _ => Some(bytes),
        }
    }

    /// Remembers `request`, from `source`, as waiting on dialling `conn`, to answer it if the
    /// dial fails.
    pub(super) fn note_dialled_request(&mut self, conn: ConnId, source: ConnId, request: Bytes) {
        if let Some(Conn {
            side: Side::Frontend {
                dialling: Some(d), ..
            },
            ..
        }) = self.conn_mut(conn)
        {
            d.requests.push((source, request));
        }
    }

    /// The driver connected a dial: what waited goes out, and the connection is a frontend
    /// like any other from now on.
    pub(super) fn dial_connected(&mut self, id: ConnId) {
        let Some(Conn {
            side: Side::Frontend { dialling, .. },
            closing: false,
            ..
        }) = self.conn_mut(id)
        else {
            self.stats.stale_inputs += 1;
            return;
        };
        let Some(dialling) = dialling.take() else {
            self.stats.stale_inputs += 1;
            return;
        };
        self.stats.to_frontend += dialling.queued.len() as u64;
        for bytes in dialling.queued {
            self.outputs.push_back(Output::Send { conn: id, bytes });
        }
        self.arm_idle(id);
    }

    /// A dial closed before it connected: its waiting requests get 503, the rest (responses,
    /// ACKs) is dropped.
    pub(super) fn dial_failed(&mut self, id: ConnId, dialling: Dialling) {
        self.stats.dial_out_failures += 1;
        tracing::debug!(conn = %id, "dial-out failed");
        let unanswerable = dialling
            .queued
            .len()
            .saturating_sub(dialling.requests.len());
        for _ in 0..unanswerable {
            self.drop_message(id, "next hop unreachable");
        }
        for (source, request) in dialling.requests {
            let source = Source {
                conn: source,
                peer: None,
                envelope: None,
            };
            let reply = Reply::Unavailable {
                retry_after: self.config.config.retry_after,
                reason: "Next Hop Unreachable",
            };
            if self.reply(source, &request, reply) {
                self.stats.replies_503 += 1;
            } else {
                self.drop_message(source.conn, "next hop unreachable, sender gone");
            }
        }
    }
}
