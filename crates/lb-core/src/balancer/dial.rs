//! Dial-out: a request toward a frontend the balancer holds no connection to (the proxy came
//! back from another port, its connection idled out, a backend calls a trunk) opens one, as
//! RFC 3261 §18.1.1 has a client do: a TCP connection to the next hop's address. Messages wait
//! in the connection until the driver reports it connected; if it never does, every request
//! that waited gets a 503 from the balancer, so its sender learns at once instead of by timeout.
//!
//! A next hop named by a host name is resolved first: the core asks the driver with
//! [`Output::Resolve`] (RFC 3263: SRV, then A/AAAA; the driver owns the resolver, so the core
//! stays sans-IO and the simulator can fake DNS), and dials the first address of the answer.
//! While it resolves, the name is an alias of the connection, so later messages to the same
//! name wait on the same dial.
//!
//! Bounded twice: `limits.dial_outs_max` connections open or opening toward frontends at once,
//! `limits.dial_queue_max` messages waiting per connection. A request past either gets 503.

use super::*;

/// A connection the balancer is opening toward a frontend.
#[derive(Debug, Default)]
pub(super) struct Dialling {
    /// Its address is still being resolved: the driver holds nothing of it yet.
    resolving: bool,
    /// Messages written while connecting, in order.
    queued: Vec<Bytes>,
    /// The requests among them, by the connection they came from, to answer 503 if the dial
    /// fails (responses are dropped: the balancer never answers a response).
    requests: Vec<(ConnId, Bytes)>,
}

impl Balancer {
    /// The connection to reach `to` on: one already open or opening toward exactly that
    /// address, else a new dial. `None` when dial-out is at its limit.
    pub(super) fn dial(&mut self, to: SocketAddr) -> Option<ConnId> {
        if let Some(conn) = self.hops.lookup_exact(to).filter(|c| self.is_open(*c)) {
            return Some(conn);
        }
        let conn = self.new_dial(to, SmallVec::new(), Dialling::default())?;
        self.hops.add_peer(conn, to);
        tracing::debug!(%conn, %to, "dialling a frontend");
        self.outputs.push_back(Output::Dial { conn, to });
        self.arm_connect(conn);
        Some(conn)
    }

    /// A new connection toward host name `host` (`port`, or SRV when absent), resolved first.
    /// `None` when dial-out is at its limit or the name is not one a resolver could look up.
    pub(super) fn dial_name(&mut self, host: &[u8], port: Option<u16>) -> Option<ConnId> {
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
        if !valid {
            return None;
        }
        let name = HopName::from_sent_by(host, port.unwrap_or(5060));
        let resolving = Dialling {
            resolving: true,
            ..Dialling::default()
        };
        // No address yet: the peer is set when the name resolves.
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let conn = self.new_dial(unknown, SmallVec::from_elem(name.clone(), 1), resolving)?;
        self.hops.add_alias(conn, &name);
        let host = String::from_utf8_lossy(host).into_owned();
        tracing::debug!(%conn, %host, ?port, "resolving a frontend");
        self.outputs.push_back(Output::Resolve { conn, host, port });
        Some(conn)
    }

    /// A frontend connection the balancer opens, counted against `limits.dial_outs_max`;
    /// `None` at the limit.
    fn new_dial(
        &mut self,
        peer: SocketAddr,
        aliases: SmallVec<[HopName; 1]>,
        dialling: Dialling,
    ) -> Option<ConnId> {
        if self.stats.dial_outs_open as usize >= self.config.config.limits.dial_outs_max {
            return None;
        }
        let conn = self.insert_conn(Side::Frontend {
            peer,
            framer: StreamFramer::default(),
            aliases,
            liveness: Liveness::new(self.now),
            dialling: Some(Box::new(dialling)),
            dialled: true,
            tls: false,
        });
        self.stats.dial_outs += 1;
        self.stats.dial_outs_open += 1;
        Some(conn)
    }

    /// The driver's answer to [`Output::Resolve`]: dial the first address, or fail the dial.
    pub(super) fn handle_resolved(&mut self, id: ConnId, addrs: &[SocketAddr]) {
        let Some(Conn {
            side:
                Side::Frontend {
                    peer,
                    dialling: Some(d),
                    ..
                },
            ..
        }) = self.conn_mut(id)
        else {
            self.stats.stale_inputs += 1;
            return;
        };
        if !d.resolving {
            self.stats.stale_inputs += 1;
            return;
        }
        let Some(&to) = addrs.first() else {
            return self.abandon_resolving(id);
        };
        d.resolving = false;
        *peer = to;
        self.hops.add_peer(id, to);
        self.outputs.push_back(Output::Dial { conn: id, to });
        self.arm_connect(id);
    }

    /// Whether `id` is a dial still resolving its name (the driver knows nothing of it).
    pub(super) fn is_resolving(&self, id: ConnId) -> bool {
        matches!(
            self.conn(id).map(|c| &c.side),
            Some(Side::Frontend { dialling: Some(d), .. }) if d.resolving
        )
    }

    /// Ends a dial that never reached the driver: as if it had been reported closed.
    pub(super) fn abandon_resolving(&mut self, id: ConnId) {
        self.handle_closed(id, CloseReason::Error);
    }

    /// Whether `conn` is a frontend connection over TLS.
    pub(super) fn is_tls(&self, conn: ConnId) -> bool {
        matches!(
            self.conn(conn).map(|c| &c.side),
            Some(Side::Frontend { tls: true, .. })
        )
    }

    /// Whether `conn` exists and is not closing.
    pub(super) fn is_open(&self, conn: ConnId) -> bool {
        self.conn(conn).is_some_and(|c| !c.closing)
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
    pub(super) fn note_dialled_request(&mut self, conn: ConnId, source: ConnId, request: &Bytes) {
        if let Some(Conn {
            side: Side::Frontend {
                dialling: Some(d), ..
            },
            ..
        }) = self.conn_mut(conn)
        {
            d.requests.push((source, request.clone()));
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
            self.drop_message(id, DropCause::NextHopUnreachable);
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
                self.drop_message(source.conn, DropCause::NextHopUnreachableSenderGone);
            }
        }
    }
}
