//! The drivers' one connection table: what a driver holds per connection the core knows of,
//! indexed by the core's [`ConnId`], with each connection's output-cap budget.
//!
//! Both drivers keep the same facts per connection: the id (a slot and a generation), whether
//! it is a frontend, where it is in its life ([`ConnState`]) and how many bytes wait to be
//! written against the marks and the ceiling ([`Watermarks`]). What differs is the I/O half:
//! lb-mio's socket and `VecDeque<Bytes>`, lb-tokio's task handles and shared outbox. So the
//! table is generic over that half (`T`), and the queued bytes are read through
//! [`OutputGauge`], which lb-mio implements with plain counters ([`QueueGauge`]) and lb-tokio
//! with the atomics its writer task shares.
//!
//! The table keeps three rules the core's contract asks of every driver:
//!
//! - an entry is found only by the id it was inserted with: an id whose slot the core has
//!   reused (a later generation) finds nothing, so a late event for a closed connection is
//!   ignored rather than applied to its successor;
//! - [`ConnTable::finish`] is the one way an entry leaves while the core runs, and it feeds the
//!   core that connection's one `Input::Closed` ([`ConnTable::forget`] is for shutdown, when the
//!   core is not fed any more);
//! - [`ConnTable::admit`] decides every `Output::Send` the same way: dropped silently toward a
//!   connection that is gone or closing, otherwise [`Watermarks::admit`]'s verdict, with the
//!   bytes already counted when they are to be queued.

use std::net::SocketAddr;
use std::time::Instant;

use lb_core::{Balancer, CloseReason, ConnId, Input};

use crate::backpressure::{Admit, QueueLevel, Watermarks};

/// Where a connection is in its life, as the driver sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// The driver is connecting it (`Output::Connect` or `Output::Dial`); sends queue up
    /// meanwhile.
    Connecting,
    /// Connected (or accepted) and reported to the core.
    Open,
    /// `Output::Close` performed: nothing more is read or queued; the driver reports `Closed`
    /// once the queue is written, or when the core gives up on the flush (`Output::Abort`).
    Closing,
}

impl ConnState {
    /// The `Closed` reason to report when the core asks for `Output::Abort` in this state: a
    /// connect given up fails as a refused one does (`Error`); a close's flush given up is
    /// still the close the core asked for (`Requested`).
    pub fn abort_reason(self) -> CloseReason {
        match self {
            ConnState::Connecting => CloseReason::Error,
            ConnState::Open | ConnState::Closing => CloseReason::Requested,
        }
    }

    /// The reason to report when the socket ends with `seen` in this state: once the core asked
    /// for the close, however the socket then ends is the close it asked for.
    pub fn closed_reason(self, seen: CloseReason) -> CloseReason {
        match self {
            ConnState::Closing => CloseReason::Requested,
            ConnState::Connecting | ConnState::Open => seen,
        }
    }
}

/// A connection's queued output, as the table's owner reads and grows it. Only the owner adds;
/// whoever writes (the owner itself, or a writer task) takes away.
pub trait OutputGauge {
    /// Bytes queued and not yet written.
    fn queued(&self) -> usize;
    /// Reported to the core over the high-water mark, and not yet back below the low one.
    fn is_high(&self) -> bool;
    /// `len` more bytes are about to be queued. Counted before the bytes are handed to the
    /// writer, so a writer that takes them at once never counts below zero.
    fn add(&mut self, len: usize);
    /// The queue is reported over the high-water mark from now on.
    fn set_high(&mut self);
}

/// The plain [`OutputGauge`] of a driver that writes on the table owner's thread (lb-mio).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueGauge {
    queued: usize,
    high: bool,
}

impl QueueGauge {
    /// `written` bytes left the queue: `true` when that took a queue reported high below the
    /// low-water mark, which the caller reports to the core as `QueueLevel::Low` (and resumes
    /// reading a paused frontend).
    pub fn written(&mut self, written: usize, marks: &Watermarks) -> bool {
        self.queued = self.queued.saturating_sub(written);
        let drained = marks.drained(self.queued, self.high);
        if drained {
            self.high = false;
        }
        drained
    }
}

impl OutputGauge for QueueGauge {
    fn queued(&self) -> usize {
        self.queued
    }

    fn is_high(&self) -> bool {
        self.high
    }

    fn add(&mut self, len: usize) {
        self.queued = self.queued.saturating_add(len);
    }

    fn set_high(&mut self) {
        self.high = true;
    }
}

/// One connection's entry: the facts both drivers keep, and the driver's own I/O half.
#[derive(Debug)]
pub struct Conn<T> {
    id: ConnId,
    frontend: bool,
    /// Where the connection is in its life.
    pub state: ConnState,
    /// The driver's I/O half: socket, queue, tasks, TLS state.
    pub io: T,
}

impl<T> Conn<T> {
    /// The core's id of the connection.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// A frontend (accepted, or dialled out to): its reading pauses while its queue is high
    /// ([`Watermarks::pauses_reading`]) and a full queue closes it; a backend's drops a message.
    pub fn is_frontend(&self) -> bool {
        self.frontend
    }
}

/// What to do with an `Output::Send`'s bytes, from [`ConnTable::admit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// The connection is gone or closing: drop the bytes, say nothing (the core learns of the
    /// end from the `Closed` that is, or was, reported).
    Ignore,
    /// Queue them: they are counted already. `report` is the level crossing to feed the core
    /// afterwards (`Input::OutputQueue`), if any; the gauge is marked high already.
    Queue {
        /// `Some(High)` when these bytes took the queue past the high-water mark.
        report: Option<QueueLevel>,
    },
    /// Past the ceiling toward a frontend: close it with `CloseReason::OutputOverflow`.
    Overflow,
    /// Past the ceiling toward a backend: drop this message (counted), keep the connection.
    Drop,
}

/// The connections a driver holds, by slot of the core's [`ConnId`].
///
/// The core hands out small, dense slots and reuses one only after its connection's `Closed`,
/// so a `Vec` indexed by slot is both the map and the reuse; the generation in the id tells a
/// reused slot's new connection from its old one.
#[derive(Debug)]
pub struct ConnTable<T> {
    slots: Vec<Option<Conn<T>>>,
    len: usize,
}

impl<T> Default for ConnTable<T> {
    fn default() -> ConnTable<T> {
        ConnTable {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ConnTable<T> {
    /// An empty table.
    pub fn new() -> ConnTable<T> {
        ConnTable::default()
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no connection is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `id`'s entry and returns it. The core reuses a slot only after the `Closed` of the
    /// connection that held it, and the driver removes the entry when it reports that, so the
    /// slot is free; if a driver bug left it taken, the old entry is replaced (and a debug
    /// build stops here).
    pub fn insert(&mut self, id: ConnId, frontend: bool, state: ConnState, io: T) -> &mut Conn<T> {
        let slot = id.slot();
        if slot >= self.slots.len() {
            self.slots.resize_with(slot + 1, || None);
        }
        let entry = &mut self.slots[slot];
        debug_assert!(entry.is_none(), "the core reuses a slot only after Closed");
        if entry.is_none() {
            self.len += 1;
        }
        entry.insert(Conn {
            id,
            frontend,
            state,
            io,
        })
    }

    /// The entry of `id`, if it is still the connection at its slot.
    pub fn get(&self, id: ConnId) -> Option<&Conn<T>> {
        self.slots.get(id.slot())?.as_ref().filter(|c| c.id == id)
    }

    /// The entry of `id`, if it is still the connection at its slot.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut Conn<T>> {
        self.slots
            .get_mut(id.slot())?
            .as_mut()
            .filter(|c| c.id == id)
    }

    /// The entry at `slot`, whichever connection holds it (lb-mio's poll tokens are slots).
    pub fn at_slot_mut(&mut self, slot: usize) -> Option<&mut Conn<T>> {
        self.slots.get_mut(slot)?.as_mut()
    }

    /// Removes `id`'s entry and feeds the core its one `Input::Closed` with `reason` (logging
    /// a frontend's end). Returns the entry, for the driver to release its I/O (deregister a
    /// socket, stop tasks) before it next drains the core's outputs; `None`, and nothing fed,
    /// if `id` is not held (already finished).
    pub fn finish(
        &mut self,
        lb: &mut Balancer,
        now: Instant,
        id: ConnId,
        reason: CloseReason,
    ) -> Option<Conn<T>> {
        let c = self.forget(id)?;
        if c.frontend {
            crate::log_frontend_closed(id, reason);
        }
        lb.handle_input(now, Input::Closed { conn: id, reason });
        Some(c)
    }

    /// Removes `id`'s entry without telling the core: only for shutdown, once the core is no
    /// longer fed. While the core runs, use [`ConnTable::finish`].
    pub fn forget(&mut self, id: ConnId) -> Option<Conn<T>> {
        let c = self.slots.get_mut(id.slot())?.take_if(|c| c.id == id)?;
        self.len -= 1;
        Some(c)
    }

    /// Every entry, in slot order.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Conn<T>> + '_ {
        self.slots.iter_mut().flatten()
    }

    /// Keeps the entries for which `keep` is true, forgetting the others without telling the
    /// core (shutdown, like [`ConnTable::forget`]).
    pub fn retain(&mut self, mut keep: impl FnMut(&mut Conn<T>) -> bool) {
        for slot in &mut self.slots {
            if slot.as_mut().is_some_and(|c| !keep(c)) {
                *slot = None;
                self.len -= 1;
            }
        }
    }
}

impl<T: OutputGauge> ConnTable<T> {
    /// Decides an `Output::Send` of `len` bytes to `id` against `marks` (the output-cap
    /// budget). When the answer is [`Admission::Queue`] the bytes are counted already and the
    /// gauge marked high if they crossed the mark: the caller queues them, then feeds the
    /// report to the core.
    pub fn admit(&mut self, id: ConnId, len: usize, marks: &Watermarks) -> Admission {
        let Some(c) = self.get_mut(id) else {
            return Admission::Ignore;
        };
        if c.state == ConnState::Closing {
            return Admission::Ignore;
        }
        match marks.admit(c.io.queued(), len, c.io.is_high(), c.frontend) {
            Admit::Close => Admission::Overflow,
            Admit::Drop => Admission::Drop,
            Admit::Queue { report } => {
                c.io.add(len);
                if report.is_some() {
                    c.io.set_high();
                }
                Admission::Queue { report }
            }
        }
    }

    /// The reason an `Output::Abort` of `id` closes it with (the core gave up its connect or
    /// its lingering close), logging what a lingering close leaves unsent; `None` when `id` is
    /// gone. The caller then [`ConnTable::finish`]es it with that reason.
    pub fn abort_reason(&self, id: ConnId) -> Option<CloseReason> {
        let c = self.get(id)?;
        if c.state == ConnState::Closing {
            let unsent = c.io.queued();
            tracing::debug!(conn = %id, unsent, "peer not reading; closed unflushed");
        }
        Some(c.state.abort_reason())
    }
}

/// Logs the opening of frontend `conn` from `peer`: `proxy` is the socket's own peer when
/// `peer` came from a PROXY header. One line per frontend, as [`ConnTable::finish`] logs its
/// end.
pub fn log_frontend_opened(conn: ConnId, peer: SocketAddr, proxy: Option<SocketAddr>) {
    match proxy {
        Some(proxy) => crate::log_frontend_open_proxied(conn, peer, proxy),
        None => crate::log_frontend_open(conn, peer),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use lb_core::{BackendConfig, Config, TagKey};

    use super::*;

    const MARKS: Watermarks = Watermarks {
        high: 100,
        low: 40,
        ceiling: 1000,
    };

    // Tests may read the clock: they are the driver here.
    #[allow(clippy::disallowed_methods)]
    fn balancer() -> (Balancer, ConnId) {
        let config = Config {
            listeners: vec!["127.0.0.1:5060".parse().unwrap()],
            backends: vec![BackendConfig::plain("127.0.0.1:5070".parse().unwrap())],
            tag_keys: vec![TagKey {
                id: 1,
                secret: vec![7; 32],
            }],
            ..Config::default()
        };
        let now = Instant::now();
        let mut lb = Balancer::new(config.validate().unwrap(), 1, now);
        let listener = lb.listeners().next().unwrap().0;
        let conn = lb.accept(now, listener, "127.0.0.1:40000".parse().unwrap());
        (lb, conn)
    }

    #[test]
    fn an_id_finds_only_its_own_connection() {
        let (mut lb, conn) = balancer();
        let mut table = ConnTable::new();
        table.insert(conn, true, ConnState::Open, QueueGauge::default());
        assert_eq!(table.len(), 1);
        assert_eq!(table.get(conn).map(Conn::id), Some(conn));
        assert!(table.get(conn).is_some_and(Conn::is_frontend));
        // Finished: the Closed is fed once, and the id finds nothing after.
        let now = Instant::now();
        let reason = CloseReason::PeerClosed;
        assert!(table.finish(&mut lb, now, conn, reason).is_some());
        assert!(table.finish(&mut lb, now, conn, reason).is_none());
        assert!(table.get(conn).is_none() && table.is_empty());
        assert_eq!(lb.stats().frontends_open, 0);
        // The core's next connection may take the same slot with a new generation: the old
        // id does not find it.
        let listener = lb.listeners().next().unwrap().0;
        let next = lb.accept(now, listener, "127.0.0.1:40001".parse().unwrap());
        table.insert(next, true, ConnState::Open, QueueGauge::default());
        if next.slot() == conn.slot() {
            assert!(table.get_mut(conn).is_none());
            assert!(table.forget(conn).is_none());
        }
        assert!(table.get_mut(next).is_some());
    }

    #[test]
    fn sends_are_counted_against_the_marks_and_the_ceiling() {
        let (_, conn) = balancer();
        let mut table = ConnTable::new();
        table.insert(conn, true, ConnState::Open, QueueGauge::default());
        let none = Admission::Queue { report: None };
        assert_eq!(table.admit(conn, 100, &MARKS), none, "at the mark");
        let high = Admission::Queue {
            report: Some(QueueLevel::High),
        };
        assert_eq!(table.admit(conn, 1, &MARKS), high, "past it, once");
        assert_eq!(table.admit(conn, 1, &MARKS), none);
        assert_eq!(table.get(conn).unwrap().io.queued(), 102);
        assert_eq!(table.admit(conn, 899, &MARKS), Admission::Overflow);
        assert_eq!(table.get(conn).unwrap().io.queued(), 102, "not counted");
        // A backend keeps its connection past the ceiling: only the message is dropped.
        table.get_mut(conn).unwrap().state = ConnState::Closing;
        assert_eq!(table.admit(conn, 1, &MARKS), Admission::Ignore);
        let c = table.forget(conn).unwrap();
        let mut backend = ConnTable::new();
        backend.insert(conn, false, ConnState::Connecting, c.io);
        assert_eq!(backend.admit(conn, 899, &MARKS), Admission::Drop);
        // Written below the low mark: drained once.
        let gauge = &mut backend.get_mut(conn).unwrap().io;
        assert!(
            !gauge.written(62, &MARKS),
            "40 left: not below the low mark"
        );
        assert!(gauge.written(1, &MARKS));
        assert!(!gauge.is_high() && !gauge.written(39, &MARKS));
        assert_eq!(gauge.queued(), 0);
    }

    #[test]
    fn the_reasons_follow_the_state() {
        assert_eq!(ConnState::Connecting.abort_reason(), CloseReason::Error);
        assert_eq!(ConnState::Closing.abort_reason(), CloseReason::Requested);
        assert_eq!(ConnState::Open.abort_reason(), CloseReason::Requested);
        let seen = CloseReason::Error;
        assert_eq!(
            ConnState::Closing.closed_reason(seen),
            CloseReason::Requested
        );
        assert_eq!(ConnState::Open.closed_reason(seen), seen);
    }

    #[test]
    fn retain_forgets_what_it_drops() {
        let (_, conn) = balancer();
        let mut table = ConnTable::new();
        table.insert(conn, false, ConnState::Connecting, QueueGauge::default());
        table.retain(|c| c.state != ConnState::Connecting);
        assert!(table.is_empty() && table.get(conn).is_none());
        assert_eq!(table.iter_mut().count(), 0);
    }
}
