//! Frontend connection timeouts: idle (nothing received) and partial message (part of a message
//! held too long: the slowloris defence). Each connection has at most one pending timer of each
//! kind in one min-heap; a timer that fires early for a connection that saw traffic since is
//! re-armed for its new deadline instead of closing anything.

use std::cmp::Reverse;
use std::time::Instant;

use super::{Balancer, Side};
use crate::ids::ConnId;
use crate::io::{Event, Output};

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
}

impl Liveness {
    pub(super) fn new(now: Instant) -> Liveness {
        Liveness {
            last_rx: now,
            partial_since: None,
            partial_armed: false,
        }
    }
}

impl Balancer {
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
                ConnTimer::Idle => (Some(liveness.last_rx + idle), "idle"),
                ConnTimer::Partial => {
                    liveness.partial_armed = false;
                    (
                        liveness.partial_since.map(|t| t + partial),
                        "partial message",
                    )
                }
            };
            match due {
                Some(due) if due <= now => {
                    match timer {
                        ConnTimer::Idle => self.stats.idle_closes += 1,
                        ConnTimer::Partial => self.stats.partial_closes += 1,
                    }
                    tracing::debug!(%conn, cause, "frontend timed out");
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
