//! Every deadline of the balancer and [`Balancer::poll_timeout`]: the new-call table's expiry,
//! the backends' reconnects and probes ([`BackendTimer`], acted on by `farm`), and the frontend
//! connection timeouts, and the two deadlines on the driver's side of a connection: giving up a
//! connect (`Config::connect_timeout`) and a close's flush (`Config::close_linger`), both answered with
//! [`Output::Abort`]. The drivers keep no timers of their own for these: the decision is here,
//! where `lb-sim` and the scenario tests exercise it.
//!
//! Frontend timeouts: idle (nothing received) and partial message (part of a message held too
//! long: the slowloris defence). Each connection has at most one pending timer of each kind in
//! one min-heap; a timer that fires early for a connection that saw traffic since is re-armed
//! for its new deadline instead of closing anything.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::{Balancer, Side};
use crate::ids::{BackendId, ConnId};
use crate::io::{Event, Output};
use crate::reasons::TimeoutCause;

/// Why the balancer asks to be woken: the kind of its earliest deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Wake {
    /// A new-call table entry (or ringing entry) expires.
    CallTable,
    /// A backend reconnect, probe or probe timeout is due.
    Backend(BackendId, BackendTimer),
    /// A frontend idle or partial-message timeout is due.
    Frontend(ConnId, ConnTimer),
    /// A connection's queue has been over the high-water mark for the stall timeout
    /// (`backpressure`).
    Stall(ConnId),
    /// A connect or dial has had `Config::connect_timeout` to report `Input::Connected`.
    Connect(ConnId),
    /// A close has had `Config::close_linger` to flush and report `Input::Closed`.
    Linger(ConnId),
}

/// A backend's irregular deadlines, kept in one min-heap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum BackendTimer {
    Reconnect,
    Probe,
    ProbeTimeout(u32),
    /// A passive-health hold ends (`passive`).
    PassiveHoldEnd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ConnTimer {
    Idle,
    Partial,
}

/// Per-frontend bookkeeping for the two timeouts.
#[derive(Debug)]
pub(super) struct Liveness {
    /// When bytes last arrived (or the connection opened).
    last_rx: Instant,
    /// Since when a message has been incomplete without any message completing.
    partial_since: Option<Instant>,
    /// A `Partial` timer is pending in the heap.
    partial_armed: bool,
    /// When the last SIP message arrived (not a keep-alive): eviction at the connection limit
    /// takes connections that never sent one, or none for a while (`admission`).
    last_message: Option<Instant>,
}

impl Liveness {
    pub(super) fn new(now: Instant) -> Liveness {
        Liveness {
            last_rx: now,
            partial_since: None,
            partial_armed: false,
            last_message: None,
        }
    }

    pub(super) fn last_message(&self) -> Option<Instant> {
        self.last_message
    }
}

impl Balancer {
    /// The earliest internal deadline: feed [`Input::Timeout`](crate::Input::Timeout) at or
    /// after it. May move after any `handle_input` or `accept`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let backend = self.backend_timers.peek().map(|Reverse((at, ..))| *at);
        let conn = self.conn_timers.peek().map(|Reverse((at, ..))| *at);
        let stall = self.stalls.front().map(|(at, _)| *at);
        let connect = self.connects.front().map(|(at, _)| *at);
        let linger = self.lingers.front().map(|(at, _)| *at);
        [
            self.table.next_deadline(),
            backend,
            conn,
            stall,
            connect,
            linger,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The earliest deadline and why: what an [`Input::Timeout`](crate::Input::Timeout) at that
    /// instant will act on first. Agrees with [`Balancer::poll_timeout`]; ties go to the table,
    /// then backends, then frontends, then stalls, connects and lingers (the order
    /// `handle_timeout` serves them).
    pub(super) fn next_wake(&self) -> Option<(Instant, Wake)> {
        let table = self.table.next_deadline().map(|at| (at, Wake::CallTable));
        let backend = self
            .backend_timers
            .peek()
            .map(|Reverse((at, b, timer))| (*at, Wake::Backend(*b, *timer)));
        let conn = self
            .conn_timers
            .peek()
            .map(|Reverse((at, c, timer))| (*at, Wake::Frontend(*c, *timer)));
        let stall = self.stalls.front().map(|(at, c)| (*at, Wake::Stall(*c)));
        let connect = self
            .connects
            .front()
            .map(|(at, c)| (*at, Wake::Connect(*c)));
        let linger = self.lingers.front().map(|(at, c)| (*at, Wake::Linger(*c)));
        [table, backend, conn, stall, connect, linger]
            .into_iter()
            .flatten()
            .min_by_key(|(at, _)| *at)
    }

    /// Serves every deadline due at `now`.
    pub(super) fn handle_timeout(&mut self) {
        tracing::trace!(woke = ?self.next_wake(), "timeout");
        self.table.expire(self.now);
        self.handle_backend_timers();
        self.handle_conn_timers();
        self.handle_stalls();
        self.handle_connect_timeouts();
        self.handle_lingers();
    }

    /// After an `Output::Connect` or `Output::Dial` for `conn`: give up on it at
    /// `Config::connect_timeout` unless `Input::Connected` comes first.
    pub(super) fn arm_connect(&mut self, conn: ConnId) {
        if let Some(c) = self.conn_mut(conn) {
            c.connecting = true;
        }
        let at = self.now + self.config.config.connect_timeout;
        self.connects.push_back((at, conn));
    }

    /// After an `Output::Close` for `conn`: drop it unflushed at `Config::close_linger` unless
    /// `Input::Closed` comes first.
    pub(super) fn arm_linger(&mut self, conn: ConnId) {
        let at = self.now + self.config.config.close_linger;
        self.lingers.push_back((at, conn));
    }

    /// `Input::Connected` for `conn`: its connect deadline no longer applies. The connection,
    /// if it is still the one the id names.
    pub(super) fn connected(&mut self, conn: ConnId) -> Option<&super::Conn> {
        let c = self.conn_mut(conn)?;
        if !c.closing {
            c.connecting = false;
        }
        Some(c)
    }

    /// Connects that did not report `Connected` in time: the driver drops the attempt and
    /// reports `Closed`, which fails the connection as a refused connect does (a backend
    /// reconnects with backoff, a dial's waiting requests get 503). Until then the id is
    /// closing, so a late `Connected` is stale.
    fn handle_connect_timeouts(&mut self) {
        let now = self.now;
        while let Some(&(at, conn)) = self.connects.front() {
            if at > now {
                break;
            }
            self.connects.pop_front();
            let Some(c) = self.conn_mut(conn) else {
                continue;
            };
            if !c.connecting || c.closing {
                continue;
            }
            c.connecting = false;
            c.closing = true;
            tracing::debug!(%conn, "connect timed out");
            self.outputs.push_back(Output::Abort { conn });
        }
    }

    /// Closes whose flush did not finish in time: the driver drops what is still queued.
    fn handle_lingers(&mut self) {
        let now = self.now;
        while let Some(&(at, conn)) = self.lingers.front() {
            if at > now {
                break;
            }
            self.lingers.pop_front();
            if self.conn(conn).is_some_and(|c| c.closing) {
                tracing::debug!(%conn, "close did not finish flushing; dropping it");
                self.outputs.push_back(Output::Abort { conn });
            }
        }
    }

    pub(super) fn schedule(&mut self, backend: BackendId, timer: BackendTimer, after: Duration) {
        self.backend_timers
            .push(Reverse((self.now + after, backend, timer)));
    }

    pub(super) fn arm_idle(&mut self, conn: ConnId) {
        let at = self.now + self.config.config.idle_timeout;
        self.conn_timers.push(Reverse((at, conn, ConnTimer::Idle)));
    }

    /// After bytes from a frontend were framed: `completed` whether a message (or ping) was cut
    /// out, `holding` whether part of one is buffered.
    pub(super) fn note_frontend_progress(&mut self, conn: ConnId, completed: bool, holding: bool) {
        let now = self.now;
        let timeout = self.config.config.partial_timeout;
        let Some(c) = self.conn_mut(conn) else { return };
        let Side::Frontend { liveness, .. } = &mut c.side else {
            return;
        };
        liveness.last_rx = now;
        if completed || !holding {
            liveness.partial_since = None;
        }
        if holding && liveness.partial_since.is_none() {
            liveness.partial_since = Some(now);
            if !liveness.partial_armed {
                liveness.partial_armed = true;
                self.conn_timers
                    .push(Reverse((now + timeout, conn, ConnTimer::Partial)));
            }
        }
    }

    /// A SIP message from frontend `conn` is being routed.
    pub(super) fn note_frontend_message(&mut self, conn: ConnId) {
        let now = self.now;
        if let Some(Side::Frontend { liveness, .. }) = self.conn_mut(conn).map(|c| &mut c.side) {
            liveness.last_message = Some(now);
        }
    }

    /// Fires the connection timers due at `now`.
    pub(super) fn handle_conn_timers(&mut self) {
        let now = self.now;
        let (idle, partial) = (
            self.config.config.idle_timeout,
            self.config.config.partial_timeout,
        );
        while let Some(Reverse((at, conn, timer))) = self.conn_timers.peek().copied() {
            if at > now {
                break;
            }
            self.conn_timers.pop();
            let Some(c) = self.conn_mut(conn) else {
                continue;
            };
            if c.closing {
                continue;
            }
            let paused = c.queue_high_since.is_some();
            let Side::Frontend { liveness, .. } = &mut c.side else {
                continue;
            };
            if paused {
                // The drivers do not read a frontend whose queue is over the high-water mark:
                // its silence, or its half message, is the balancer's doing. The stall timeout
                // judges it meanwhile; these timers start over.
                let after = match timer {
                    ConnTimer::Idle => idle,
                    ConnTimer::Partial => partial,
                };
                if timer == ConnTimer::Partial && liveness.partial_since.is_some() {
                    liveness.partial_since = Some(now);
                }
                if timer == ConnTimer::Idle {
                    liveness.last_rx = now;
                }
                self.conn_timers.push(Reverse((now + after, conn, timer)));
                continue;
            }
            let (due, cause) = match timer {
                ConnTimer::Idle => (Some(liveness.last_rx + idle), TimeoutCause::Idle),
                ConnTimer::Partial => {
                    liveness.partial_armed = false;
                    (
                        liveness.partial_since.map(|t| t + partial),
                        TimeoutCause::PartialMessage,
                    )
                }
            };
            match due {
                Some(due) if due <= now => {
                    match timer {
                        ConnTimer::Idle => self.stats.idle_closes += 1,
                        ConnTimer::Partial => self.stats.partial_closes += 1,
                    }
                    tracing::debug!(%conn, cause = cause.as_str(), "frontend timed out");
                    self.outputs
                        .push_back(Output::Event(Event::TimedOut { conn, cause }));
                    self.close(conn);
                }
                Some(due) => {
                    if timer == ConnTimer::Partial {
                        liveness.partial_armed = true;
                    }
                    self.conn_timers.push(Reverse((due, conn, timer)));
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackendConfig, Config, TagKey};

    fn balancer(now: Instant) -> Balancer {
        let config = Config {
            listeners: vec!["127.0.0.1:5060".parse().unwrap()],
            backends: vec![BackendConfig::plain("127.0.0.1:5070".parse().unwrap())],
            tag_keys: vec![TagKey {
                id: 1,
                secret: vec![7; 32],
            }],
            ..Config::default()
        };
        Balancer::new(config.validate().unwrap(), 1, now)
    }

    #[test]
    // Tests may read the clock: they are the driver here.
    #[allow(clippy::disallowed_methods)]
    fn the_wake_reason_names_the_earliest_deadline() {
        let now = Instant::now();
        let mut b = balancer(now);
        let Some(Output::Connect { conn: backend, .. }) = b.poll_output() else {
            panic!("no Connect for the backend");
        };
        assert_eq!(b.poll_output(), None);
        let give_up = now + b.config.config.connect_timeout;
        assert_eq!(b.next_wake(), Some((give_up, Wake::Connect(backend))));
        assert_eq!(b.poll_timeout(), Some(give_up));
        // A frontend's idle timeout comes later than the connect's: the connect still wakes.
        let listener = b.listeners().next().unwrap().0;
        let conn = b.accept(now, listener, "127.0.0.1:40000".parse().unwrap());
        let idle = now + b.config.config.idle_timeout;
        assert!(idle > give_up);
        assert_eq!(b.next_wake(), Some((give_up, Wake::Connect(backend))));
        // Given up: the driver is told to drop it, and the frontend's idle timeout is next.
        b.handle_input(give_up, crate::Input::Timeout);
        assert_eq!(b.poll_output(), Some(Output::Abort { conn: backend }));
        assert_eq!(b.poll_output(), None);
        assert_eq!(
            b.next_wake(),
            Some((idle, Wake::Frontend(conn, ConnTimer::Idle)))
        );
        assert_eq!(b.poll_timeout(), Some(idle));
    }
}
