//! One balancer worker: the real [`lb_core::Balancer`] with the connection table a driver
//! keeps (which peer each `ConnId` is, whether the world still carries bytes on it, TCP's
//! order on each direction) and the per-worker invariant state (accounting, the new-call table
//! model).
//!
//! A component in the core's own shape: [`Worker::handle_input`] feeds the core,
//! [`Worker::poll_output`] yields what the world must carry out, one SIP message at a time (a
//! `Send` is framed and read here, so the world sees messages, not byte runs). The simulated
//! network has no DNS: a `Resolve` is answered at once with no address, after the outputs that
//! came with it, as a driver would.
//!
//! Every input goes to the core through lb-testkit's [`Contract::feed`] and every output is
//! checked against the core's output contract (the same checks the scenario tests, the
//! properties and the fuzz harness make, among them that an input for a dead connection is
//! counted stale): a breach is a [`ViolationKind::Output`]. The contract only observes, so it
//! changes no digest.
//!
//! Instances are groups of `workers` such workers sharing one address (SO_REUSEPORT): they
//! share nothing but the configuration and the tag key, exactly as `--workers N` runs them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use lb_core::{Balancer, CloseReason, ConnId, Event, Input, ListenerId, Output, ValidConfig};
use lb_testkit::Contract;

use crate::invariants::{table_tolerance, Accounting, TableModel, ViolationKind};
use crate::queue::Nanos;
use crate::scenario::Knobs;
use crate::sip::{self, Kind, Method, Summary};

/// Who is at the other end of a balancer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// A proxy's own persistent connection `k` to this instance.
    Frontend {
        proxy: u16,
        k: u16,
    },
    /// A connection this worker dialled out to a proxy (RFC 3261 §18.1.1).
    Dialled {
        proxy: u16,
    },
    Backend {
        backend: u16,
        connected: bool,
    },
    /// A dial-out toward an address no simulated host listens on: refused.
    Refused,
}

#[derive(Debug)]
struct Slot {
    id: ConnId,
    peer: Peer,
    /// The world still carries bytes on it (cleared when it breaks or is closed).
    open: bool,
    to_lb_last: Nanos,
    from_lb_last: Nanos,
}

/// What a worker wants done.
#[derive(Debug)]
pub(crate) enum WorkerOut {
    /// One SIP message onto `conn`; `generated` when it is the balancer's own answer.
    Message {
        conn: ConnId,
        peer: Peer,
        msg: Bytes,
        summary: Summary,
    },
    /// Open a connection to a backend.
    Connect { conn: ConnId, backend: u16 },
    /// Open a connection toward a frontend.
    Dial { conn: ConnId, to: SocketAddr },
    /// Close a connection.
    Close { conn: ConnId },
    /// Drop a connection unflushed: the core gave up its connect, or its close's flush.
    Abort { conn: ConnId },
    /// A balancer event, with its trace code; `expected` is false for the ones no healthy run
    /// may show.
    Event {
        code: u16,
        expected: bool,
        detail: String,
    },
    /// The worker broke an invariant the world checks.
    Violation { kind: ViolationKind, detail: String },
}

/// One balancer worker. See the module docs.
pub(crate) struct Worker {
    core: Balancer,
    /// The driver's side of the output contract: every accept, input and output goes through
    /// it. `None` when the run was asked not to check it.
    contract: Option<Contract>,
    listener: ListenerId,
    base: Instant,
    now: Nanos,
    /// The instance it belongs to.
    pub(crate) instance: u8,
    /// False once its instance died: it gets no input and its deadline is ignored.
    pub(crate) alive: bool,
    deadline: Option<Nanos>,
    slots: Vec<Option<Slot>>,
    /// Connected backend connections per backend.
    backend_up: Vec<u32>,
    pub(crate) acct: Accounting,
    pub(crate) model: TableModel,
    pub(crate) table_dev_max: u64,
    /// A `Send` being cut into messages: the bytes, the position, the connection.
    sending: Option<(Bytes, usize, ConnId)>,
    /// An output that follows a violation reported first.
    pending: Option<WorkerOut>,
    /// Dial-outs to resolve once the core's outputs are drained, depth first.
    unresolved: VecDeque<ConnId>,
    round: Vec<ConnId>,
    window_us: u64,
    ringing_max_us: u64,
    table_capacity: u64,
}

impl Worker {
    /// Worker of `instance` with its own core; the backend count, the table's window and
    /// ringing time and the contract check come from the run's knobs.
    pub(crate) fn new(
        config: ValidConfig,
        seed: u64,
        base: Instant,
        instance: u8,
        k: &Knobs,
    ) -> Worker {
        let (backends, window, ringing_max) = (k.backends, k.window, k.ringing_max);
        let table_capacity = config.config().limits.table_capacity as u64;
        let contract = k
            .check_contract
            .then(|| Contract::new(&config).forget_sent());
        let core = Balancer::new(config, seed, base);
        let listener = core
            .listeners()
            .next()
            .map(|(l, _)| l)
            .expect("validated: one listener");
        Worker {
            core,
            contract,
            listener,
            base,
            now: 0,
            instance,
            alive: true,
            deadline: None,
            slots: Vec::new(),
            backend_up: vec![0; backends],
            acct: Accounting::default(),
            model: TableModel::default(),
            table_dev_max: 0,
            sending: None,
            pending: None,
            unresolved: VecDeque::new(),
            round: Vec::new(),
            window_us: window.as_micros() as u64,
            ringing_max_us: ringing_max.as_micros() as u64,
            table_capacity,
        }
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    /// Feeds the core one input at `now`; returns a violation of the contract (an input for a
    /// dead connection not counted stale, a deadline that did not move past a `Timeout`).
    pub(crate) fn handle_input(&mut self, now: Nanos, input: Input) -> Option<WorkerOut> {
        self.now = now;
        self.feed(input)
    }

    /// Hands the core `input` at the current instant, through the contract's `feed` (which
    /// records it and checks what the core must do with it); returns its violation.
    fn feed(&mut self, input: Input) -> Option<WorkerOut> {
        let at = self.instant();
        match &mut self.contract {
            Some(contract) => contract
                .feed(&mut self.core, at, input)
                .err()
                .map(output_violation),
            None => {
                self.core.handle_input(at, input);
                None
            }
        }
    }

    /// A frontend connection from `peer` arrives.
    pub(crate) fn handle_accept(
        &mut self,
        now: Nanos,
        peer: SocketAddr,
        who: Peer,
    ) -> (ConnId, Option<WorkerOut>) {
        self.now = now;
        let at = self.instant();
        let conn = self.core.accept(at, self.listener, peer);
        self.put_slot(conn, who);
        let v = self
            .contract
            .as_mut()
            .and_then(|c| c.accepted(conn, peer).err());
        (conn, v.map(output_violation))
    }

    /// Next thing the worker wants done, `None` once the core is drained.
    pub(crate) fn poll_output(&mut self) -> Option<WorkerOut> {
        if let Some(p) = self.pending.take() {
            return Some(p);
        }
        loop {
            if let Some(m) = self.next_message() {
                return Some(m);
            }
            let Some(out) = self.core.poll_output() else {
                for c in self.round.drain(..).rev() {
                    self.unresolved.push_front(c);
                }
                let conn = self.unresolved.pop_front()?;
                let addrs = Vec::new();
                if let Some(v) = self.feed(Input::Resolved { conn, addrs }) {
                    return Some(v);
                }
                continue;
            };
            let violation = self
                .contract
                .as_mut()
                .and_then(|c| c.output(&out).err())
                .map(output_violation);
            let next = match out {
                Output::Send { conn, bytes } => {
                    self.sending = Some((bytes, 0, conn));
                    None
                }
                Output::Connect { conn, backend, .. } => {
                    let backend = backend.index() as u16;
                    let connected = false;
                    self.put_slot(conn, Peer::Backend { backend, connected });
                    Some(WorkerOut::Connect { conn, backend })
                }
                Output::Resolve { conn, .. } => {
                    self.round.push(conn);
                    None
                }
                Output::Dial { conn, to } => {
                    self.put_slot(conn, Peer::Refused);
                    Some(WorkerOut::Dial { conn, to })
                }
                Output::Close { conn } => Some(WorkerOut::Close { conn }),
                Output::Abort { conn } => Some(WorkerOut::Abort { conn }),
                Output::Event(e) => Some(self.event(e)),
            };
            // A breach is reported before the output that broke it, which still happens.
            if let Some(v) = violation {
                self.pending = next;
                return Some(v);
            }
            if next.is_some() {
                return next;
            }
        }
    }

    /// The next message of the `Send` being read. A `Send` on no current connection, or whose
    /// bytes do not frame, breaks the output contract (reported by it); the world cannot carry
    /// it, so it is dropped here.
    fn next_message(&mut self) -> Option<WorkerOut> {
        let (bytes, mut pos, conn) = self.sending.take()?;
        let peer = self.slot(conn)?.peer;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            if rest.starts_with(b"\r\n") {
                pos += 2; // keep-alive pong
                continue;
            }
            let Some((n, summary)) = sip::frame_and_summarize(rest) else {
                // The contract checked the framing; a message that frames but that the
                // simulator's own reader cannot summarize is the simulator's to report.
                let n = sip::frame_len(rest)?;
                self.sending = Some((bytes.clone(), pos + n, conn));
                return Some(WorkerOut::Violation {
                    kind: ViolationKind::Output,
                    detail: format!("unparseable output on {conn:?}"),
                });
            };
            let msg = bytes.slice(pos..pos + n);
            pos += n;
            if pos < bytes.len() {
                self.sending = Some((bytes, pos, conn));
            }
            self.account(peer, summary);
            return Some(WorkerOut::Message {
                conn,
                peer,
                msg,
                summary,
            });
        }
        None
    }

    /// Counts a message on its way out and keeps the table model in step.
    fn account(&mut self, peer: Peer, s: Summary) {
        let generated = is_generated(s);
        if generated {
            self.acct.generated += 1;
        } else {
            self.acct.forwarded += 1;
        }
        let Some(c) = s.call else { return };
        let now_us = self.now / 1000;
        match peer {
            Peer::Backend { .. } => {
                if s.kind == Kind::Request(Method::Invite) && !s.has_to_tag {
                    self.model
                        .create(c as u32, now_us, self.ringing_max_us, self.window_us);
                }
            }
            Peer::Frontend { .. } | Peer::Dialled { .. } => {
                if let (Kind::Response(st), Method::Invite) = (s.kind, s.cseq_method) {
                    if st >= 200 && !generated {
                        self.model.settle(c as u32, now_us, self.window_us);
                    }
                }
            }
            Peer::Refused => {}
        }
    }

    fn event(&mut self, e: Event) -> WorkerOut {
        let code = match e {
            Event::BackendUp(_) => 1,
            Event::BackendDown(_) => 2,
            Event::BackendDraining { .. } => 3,
            Event::FrontendRefused(_) => 4,
            Event::FramingLost { .. } => 5,
            Event::Malformed { .. } => 6,
            Event::Dropped { .. } => {
                self.acct.dropped_events += 1;
                7
            }
            Event::BackendOverloaded { .. } => 8,
            Event::Reloaded { .. } => 9,
            Event::TimedOut { .. } => 10,
            Event::BackendQueueHeld { .. } => 11,
        };
        // A connection the balancer dialled idles out like any frontend's.
        let dialled_idle = matches!(e, Event::TimedOut { conn, .. }
            if matches!(self.slot(conn).map(|s| s.peer), Some(Peer::Dialled { .. })));
        let expected = dialled_idle
            || !matches!(
                e,
                Event::FramingLost { .. }
                    | Event::Malformed { .. }
                    | Event::FrontendRefused(_)
                    | Event::TimedOut { .. }
            );
        WorkerOut::Event {
            code,
            expected,
            detail: if expected {
                String::new()
            } else {
                format!("{e:?}")
            },
        }
    }

    /// After a drain: the deadline to wake at and the table check. Returns a violation.
    pub(crate) fn handle_drained(&mut self) -> Option<(ViolationKind, String)> {
        let deadline = self
            .core
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base).as_nanos() as u64);
        // A deadline in the past is served now; the core promises it moves after a Timeout.
        self.deadline = deadline.map(|d| d.max(self.now));
        let now_us = self.now / 1000;
        self.model.expire(now_us);
        let len = self.core.stats().table_len;
        let dev = len.abs_diff(self.model.len());
        self.table_dev_max = self.table_dev_max.max(dev);
        let tol = table_tolerance(self.model.len());
        if len > self.table_capacity {
            let cap = self.table_capacity;
            Some((
                ViolationKind::Table,
                format!("table_len {len} exceeds capacity {cap}"),
            ))
        } else if dev > tol {
            let m = self.model.len();
            Some((
                ViolationKind::Table,
                format!("table_len {len} but the lifetime model has {m}"),
            ))
        } else {
            None
        }
    }

    /// When the worker next wants a `Timeout`.
    pub(crate) fn deadline(&self) -> Option<Nanos> {
        self.deadline.filter(|_| self.alive)
    }

    pub(crate) fn stats(&self) -> &lb_core::Stats {
        self.core.stats()
    }

    /// Files `conn` in its slot (the contract checks the core freed it first).
    fn put_slot(&mut self, conn: ConnId, peer: Peer) {
        if self.slots.len() <= conn.slot() {
            self.slots.resize_with(conn.slot() + 1, || None);
        }
        self.slots[conn.slot()] = Some(Slot {
            id: conn,
            peer,
            open: true,
            to_lb_last: 0,
            from_lb_last: 0,
        });
    }

    fn slot(&self, conn: ConnId) -> Option<&Slot> {
        self.slots
            .get(conn.slot())?
            .as_ref()
            .filter(|s| s.id == conn)
    }

    fn slot_mut(&mut self, conn: ConnId) -> Option<&mut Slot> {
        self.slots
            .get_mut(conn.slot())?
            .as_mut()
            .filter(|s| s.id == conn)
    }

    /// Who `conn` is, if it is a current connection.
    pub(crate) fn peer(&self, conn: ConnId) -> Option<Peer> {
        self.slot(conn).map(|s| s.peer)
    }

    /// Whether the world still carries bytes on `conn`.
    pub(crate) fn is_open(&self, conn: ConnId) -> bool {
        self.slot(conn).is_some_and(|s| s.open)
    }

    /// Whether backend `b` has a connected connection from this worker.
    pub(crate) fn is_backend_up(&self, b: u16) -> bool {
        self.backend_up[usize::from(b)] > 0
    }

    /// A dial-out connected: the peer is now a proxy that accepted it.
    pub(crate) fn handle_dial_answered(&mut self, conn: ConnId, proxy: u16) {
        if let Some(s) = self.slot_mut(conn) {
            s.peer = Peer::Dialled { proxy };
        }
    }

    /// A backend connection came up.
    pub(crate) fn handle_backend_connected(&mut self, conn: ConnId, backend: u16) {
        if let Some(s) = self.slot_mut(conn) {
            s.peer = Peer::Backend {
                backend,
                connected: true,
            };
        }
        self.backend_up[usize::from(backend)] += 1;
    }

    /// The world stops carrying bytes on `conn`; returns who it was, when it was open.
    pub(crate) fn break_conn(&mut self, conn: ConnId) -> Option<Peer> {
        let s = self.slot_mut(conn).filter(|s| s.open)?;
        s.open = false;
        let peer = s.peer;
        if let Peer::Backend {
            backend,
            connected: true,
        } = peer
        {
            s.peer = Peer::Backend {
                backend,
                connected: false,
            };
            self.backend_up[usize::from(backend)] -= 1;
        }
        Some(peer)
    }

    /// Forgets `conn` (before its `Closed` is fed); false when it is not current.
    pub(crate) fn forget(&mut self, conn: ConnId) -> bool {
        if self.slot(conn).is_none() {
            return false;
        }
        self.slots[conn.slot()] = None;
        true
    }

    /// The open connections, for an instance that dies.
    pub(crate) fn open_conns(&self) -> Vec<ConnId> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.open)
            .map(|s| s.id)
            .collect()
    }

    /// The arrival time of bytes sent toward the worker on `conn` after `lat`, keeping TCP's
    /// order; `None` when the connection is not current.
    pub(crate) fn schedule_in(&mut self, conn: ConnId, now: Nanos, lat: Duration) -> Option<Nanos> {
        let s = self.slot_mut(conn)?;
        let at = (now + lat.as_nanos() as u64).max(s.to_lb_last);
        s.to_lb_last = at;
        Some(at)
    }

    /// The same for bytes the worker sends on `conn`.
    pub(crate) fn schedule_out(&mut self, conn: ConnId, now: Nanos, lat: Duration) -> Nanos {
        match self.slot_mut(conn) {
            Some(s) => {
                let at = (now + lat.as_nanos() as u64).max(s.from_lb_last);
                s.from_lb_last = at;
                at
            }
            None => now,
        }
    }
}

/// A breach of the output contract, as the world reports it.
fn output_violation(v: lb_testkit::Violation) -> WorkerOut {
    WorkerOut::Violation {
        kind: ViolationKind::Output,
        detail: v.0,
    }
}

/// The balancer's own answers, as opposed to forwarded messages.
pub(crate) fn is_generated(s: Summary) -> bool {
    matches!(s.kind, Kind::Response(503 | 400 | 481))
}

/// The trace code of a close reason.
pub(crate) fn close_code(r: CloseReason) -> u16 {
    match r {
        CloseReason::Error => 0,
        CloseReason::Requested => 1,
        CloseReason::PeerClosed => 2,
        CloseReason::OutputOverflow => 3,
    }
}
