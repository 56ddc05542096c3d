//! The output contract of `lb-core` (`crates/lb-core/src/io.rs`), checked in one place.
//!
//! A [`Contract`] plays the driver's bookkeeping: it sees every `accept`, every [`Input`] and
//! every [`Output`], records what was sent on each connection, and returns a [`Violation`] for
//! an output the core must not produce:
//!
//! - `Send` only on a connection that is open: accepted, or reported `Connected` after its
//!   `Connect` / `Dial`; never after `Close` or `Closed`; never empty; and ready for the socket:
//!   whole SIP messages and CRLF pongs on a stream (pongs only to frontends), envelopes that
//!   hold exactly one whole message each to an envelope backend;
//! - `Connect`, `Dial` and `Resolve` with an id never seen before (a `Dial` may also take the
//!   id of a `Resolve` whose answer was not empty), and never in the slot of an id that has not
//!   reported `Closed` (drivers index their tables by [`ConnId::slot`]; `accept` too); a `Connect` goes to a configured backend's
//!   address, always the same one for a backend id, and a backend has at most one connection
//!   open or connecting (one it asked to close may still be flushing);
//! - one `Close` per connection, only for a connection (not a name being resolved) that has not
//!   reported `Closed`;
//! - `FrontendRefused` names an accepted frontend connection;
//! - after `Input::Timeout`, the deadline is `None` or later than `now` ([`Contract::timed_out`]).
//!
//! Inputs for unknown or dead ids are the driver racing the core: allowed, and ignored here;
//! [`Contract::names_dead`] tells a harness to expect them counted as stale. What is sent stays recorded per connection
//! ([`Link::sent`]), so a test can read the whole trace of one connection afterwards; a long
//! run that only wants the checks turns that off with [`Contract::forget_sent`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use lb_core::envelope::{Envelope, EnvelopeDecoder};
use lb_core::{
    BackendId, BackendMode, Balancer, ConnId, Event, Input, Output, QueueLevel, ValidConfig,
};

/// What a connection is, as the driver registered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A frontend: accepted from `peer`, or dialled to it (`dialled`).
    Frontend {
        /// The remote address.
        peer: SocketAddr,
        /// The core asked for it with `Output::Dial`.
        dialled: bool,
    },
    /// A backend connection (`Output::Connect`).
    Backend {
        /// Its backend.
        backend: BackendId,
        /// Where it connects.
        to: SocketAddr,
        /// The backend speaks the envelope protocol.
        envelope: bool,
    },
    /// An id of `Output::Resolve`, not a connection yet.
    Resolving,
}

/// Where a connection stands, as far as the driver knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Asked for (`Connect`, `Dial`, `Resolve`), not reported `Connected` yet.
    Connecting,
    /// Accepted or `Connected`.
    Open,
    /// The core asked for `Close`; `Closed` not reported yet.
    Closing,
    /// The core asked for `Abort` (of a connect, or of a close's flush); `Closed` not reported
    /// yet. Nothing more may be asked for it.
    Aborted,
    /// `Input::Closed` was reported (or an empty `Resolved`): the id is dead.
    Closed,
}

/// One connection's record.
#[derive(Clone, Debug)]
pub struct Link {
    /// What it is.
    pub role: Role,
    /// Where it stands.
    pub state: State,
    /// It was accepted, or reported `Connected` (it may have closed since).
    pub connected: bool,
    /// The bytes of every `Send` on it, in order.
    pub sent: Vec<Bytes>,
    /// The driver last reported its queue over the high-water mark (`Input::OutputQueue`).
    pub queue_high: bool,
}

/// One message of a `Send`: a SIP message and, to an envelope backend, its envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unframed {
    /// The envelope it came in (envelope backends only).
    pub envelope: Option<Envelope>,
    /// The SIP message.
    pub message: Bytes,
}

/// An output the core must not have produced, with what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

impl From<Violation> for String {
    fn from(v: Violation) -> String {
        v.0
    }
}

/// Returns a [`Violation`] from the enclosing function unless `cond` holds.
macro_rules! require {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Violation(format!($($fmt)+)));
        }
    };
}

/// The driver's view of every connection, and the checks of the output contract. See the
/// module docs.
#[derive(Clone, Debug)]
pub struct Contract {
    /// Every id ever seen, dead ones included (ids never repeat: a slot's generation moves).
    links: BTreeMap<ConnId, Link>,
    /// The mode of each backend address in the configuration last given.
    modes: HashMap<SocketAddr, BackendMode>,
    /// Where each backend id connects, once seen: it must never change.
    backend_addrs: BTreeMap<BackendId, SocketAddr>,
    /// The id holding each slot until its `Closed`: a new id must not take a held slot.
    held_slots: HashMap<usize, ConnId>,
    /// Keep the bytes of every `Send` in [`Link::sent`].
    keep_sent: bool,
}

impl Contract {
    /// A contract for a balancer built from `config`.
    #[must_use]
    pub fn new(config: &ValidConfig) -> Contract {
        let mut contract = Contract {
            links: BTreeMap::new(),
            modes: HashMap::new(),
            backend_addrs: BTreeMap::new(),
            held_slots: HashMap::new(),
            keep_sent: true,
        };
        contract.configure(config);
        contract
    }

    /// The same checks, but [`Link::sent`] stays empty: a run of a million calls (lb-sim's
    /// storms) would otherwise keep every byte the core ever sent.
    #[must_use]
    pub fn forget_sent(mut self) -> Contract {
        self.keep_sent = false;
        self
    }

    fn configure(&mut self, config: &ValidConfig) {
        for b in &config.config().backends {
            self.modes.insert(b.addr, b.mode);
        }
    }

    /// `Balancer::accept` returned `conn` for a frontend from `peer`: it must be a fresh id.
    pub fn accepted(&mut self, conn: ConnId, peer: SocketAddr) -> Result<(), Violation> {
        require!(
            !self.links.contains_key(&conn),
            "accept returned {conn}, an id already used"
        );
        self.hold_slot(conn, "accept")?;
        self.links.insert(
            conn,
            Link {
                role: Role::Frontend {
                    peer,
                    dialled: false,
                },
                state: State::Open,
                connected: true,
                sent: Vec::new(),
                queue_high: false,
            },
        );
        Ok(())
    }

    /// The driver fed `input`: connections open or end, reloads change backend modes.
    pub fn input(&mut self, input: &Input) {
        match input {
            Input::Connected { conn } => {
                if let Some(link) = self.links.get_mut(conn) {
                    if link.role != Role::Resolving && !link.connected {
                        link.connected = true;
                        if link.state == State::Connecting {
                            link.state = State::Open;
                        }
                    }
                }
            }
            Input::Closed { conn, .. } => {
                if let Some(link) = self.links.get_mut(conn) {
                    if link.role != Role::Resolving {
                        link.state = State::Closed;
                        release(&mut self.held_slots, *conn);
                    }
                }
            }
            Input::Resolved { conn, addrs } => {
                if let Some(link) = self.links.get_mut(conn) {
                    // An empty answer ends the id; otherwise a `Dial` for it follows.
                    if link.role == Role::Resolving && addrs.is_empty() {
                        link.state = State::Closed;
                        release(&mut self.held_slots, *conn);
                    }
                }
            }
            Input::OutputQueue { conn, level } => {
                if let Some(link) = self.links.get_mut(conn) {
                    link.queue_high = *level == QueueLevel::High;
                }
            }
            Input::Reload(config) => self.configure(config),
            Input::Received { .. } | Input::Backends(_) | Input::Timeout => {}
        }
    }

    /// Checks one output against the contract and records it. For a `Send`, returns the
    /// messages it carries.
    pub fn output(&mut self, output: &Output) -> Result<Vec<Unframed>, Violation> {
        match output {
            Output::Send { conn, bytes } => {
                let Some(link) = self.links.get_mut(conn) else {
                    return Err(Violation(format!("Send to {conn}, never opened")));
                };
                require!(
                    link.state != State::Closed,
                    "Send to {conn} after its Closed"
                );
                require!(link.state != State::Closing, "Send to {conn} after Close");
                require!(link.state != State::Aborted, "Send to {conn} after Abort");
                require!(link.state == State::Open, "Send to {conn} before Connected");
                require!(link.role != Role::Resolving, "Send to {conn}, a name");
                require!(!bytes.is_empty(), "empty Send to {conn}");
                // A frontend that is not reading is sent nothing: what is bound for it is
                // dropped, so the backend connection it came on never waits for it.
                require!(
                    !(link.queue_high && matches!(link.role, Role::Frontend { .. })),
                    "Send to frontend {conn} while its queue is over the high-water mark"
                );
                let messages = unframe(link.role, bytes).map_err(|fault| {
                    Violation(format!(
                        "the core sent {conn} {fault}: {:?}",
                        String::from_utf8_lossy(bytes)
                    ))
                })?;
                if self.keep_sent {
                    link.sent.push(bytes.clone());
                }
                Ok(messages)
            }
            Output::Connect { conn, backend, to } => {
                self.fresh(*conn, "Connect")?;
                let Some(mode) = self.modes.get(to) else {
                    return Err(Violation(format!(
                        "Connect to {to}, not a configured backend"
                    )));
                };
                let known = *self.backend_addrs.entry(*backend).or_insert(*to);
                require!(known == *to, "{backend} moved from {known} to {to}");
                let envelope = *mode == BackendMode::Envelope;
                // One that is closing may still be flushing: the core need not wait for it.
                let other = self.links.iter().find(|(_, l)| {
                    matches!(l.state, State::Connecting | State::Open)
                        && matches!(l.role, Role::Backend { backend: b, .. } if b == *backend)
                });
                if let Some((other, _)) = other {
                    return Err(Violation(format!(
                        "Connect for {backend} while its {other} is open or connecting"
                    )));
                }
                self.hold_slot(*conn, "Connect")?;
                self.insert(
                    *conn,
                    Role::Backend {
                        backend: *backend,
                        to: *to,
                        envelope,
                    },
                );
                Ok(Vec::new())
            }
            Output::Dial { conn, to } => {
                let resolved = self
                    .links
                    .get(conn)
                    .is_some_and(|l| l.role == Role::Resolving && l.state == State::Connecting);
                if !resolved {
                    self.fresh(*conn, "Dial")?;
                    self.hold_slot(*conn, "Dial")?;
                }
                self.insert(
                    *conn,
                    Role::Frontend {
                        peer: *to,
                        dialled: true,
                    },
                );
                Ok(Vec::new())
            }
            Output::Resolve { conn, .. } => {
                self.fresh(*conn, "Resolve")?;
                self.hold_slot(*conn, "Resolve")?;
                self.insert(*conn, Role::Resolving);
                Ok(Vec::new())
            }
            Output::Close { conn } => {
                let Some(link) = self.links.get_mut(conn) else {
                    return Err(Violation(format!("Close of {conn}, never opened")));
                };
                require!(
                    link.state != State::Closed,
                    "Close of {conn} after its Closed"
                );
                require!(link.state != State::Closing, "Close of {conn} twice");
                require!(link.state != State::Aborted, "Close of {conn} after Abort");
                require!(link.role != Role::Resolving, "Close of {conn}, a name");
                link.state = State::Closing;
                Ok(Vec::new())
            }
            Output::Abort { conn } => {
                let Some(link) = self.links.get_mut(conn) else {
                    return Err(Violation(format!("Abort of {conn}, never opened")));
                };
                require!(
                    link.state != State::Closed,
                    "Abort of {conn} after its Closed"
                );
                require!(link.state != State::Aborted, "Abort of {conn} twice");
                require!(link.role != Role::Resolving, "Abort of {conn}, a name");
                // The core gives up a connect, or a close's flush; an open connection it
                // closes with `Close`.
                require!(
                    matches!(link.state, State::Connecting | State::Closing),
                    "Abort of {conn}, open and not closing"
                );
                link.state = State::Aborted;
                Ok(Vec::new())
            }
            Output::Event(Event::FrontendRefused(conn)) => {
                let role = self.links.get(conn).map(|l| l.role);
                require!(
                    matches!(role, Some(Role::Frontend { dialled: false, .. })),
                    "refused {conn} is no accepted frontend"
                );
                Ok(Vec::new())
            }
            Output::Event(_) => Ok(Vec::new()),
        }
    }

    /// Pops every output of `lb`, checking each; returns them in order.
    pub fn drain(&mut self, lb: &mut Balancer) -> Result<Vec<Output>, Violation> {
        let mut outputs = Vec::new();
        while let Some(output) = lb.poll_output() {
            self.output(&output)?;
            outputs.push(output);
        }
        Ok(outputs)
    }

    /// Feeds `input` to `lb` at `now` under the contract: records it, hands it over, then checks
    /// that an input naming a dead connection was counted stale and that after a `Timeout` the
    /// deadline moved past `now`. Every harness feeds the core through here.
    pub fn feed(&mut self, lb: &mut Balancer, now: Instant, input: Input) -> Result<(), Violation> {
        let dead = self.names_dead(&input);
        let stale_before = lb.stats().stale_inputs;
        self.input(&input);
        let timeout = matches!(input, Input::Timeout);
        lb.handle_input(now, input);
        if let Some(conn) = dead {
            require!(
                lb.stats().stale_inputs == stale_before + 1,
                "an input for dead {conn} was not counted stale"
            );
        }
        if timeout {
            Contract::timed_out(now, lb.poll_timeout())?;
        }
        Ok(())
    }

    /// `Input::Timeout` was handled at `now`: the next deadline must have moved past it, or a
    /// driver that re-arms its timer would spin.
    pub fn timed_out(now: Instant, deadline: Option<Instant>) -> Result<(), Violation> {
        require!(
            deadline.is_none_or(|d| d > now),
            "after a Timeout at {now:?}, the deadline is {deadline:?}: not in the future"
        );
        Ok(())
    }

    /// The connection `input` names, when it is one that has ended: the core must count the
    /// input as stale (`Stats::stale_inputs`) and ignore it.
    #[must_use]
    pub fn names_dead(&self, input: &Input) -> Option<ConnId> {
        let conn = match input {
            Input::Received { conn, .. }
            | Input::Connected { conn }
            | Input::Closed { conn, .. }
            | Input::Resolved { conn, .. }
            | Input::OutputQueue { conn, .. } => *conn,
            Input::Backends(_) | Input::Reload(_) | Input::Timeout => return None,
        };
        (self.state(conn) == Some(State::Closed)).then_some(conn)
    }

    /// The record of `conn`, if the core or `accept` ever named it.
    #[must_use]
    pub fn link(&self, conn: ConnId) -> Option<&Link> {
        self.links.get(&conn)
    }

    /// Where `conn` stands; `None` for an id never seen.
    #[must_use]
    pub fn state(&self, conn: ConnId) -> Option<State> {
        self.links.get(&conn).map(|l| l.state)
    }

    /// Every connection ever seen, by id.
    pub fn links(&self) -> impl Iterator<Item = (ConnId, &Link)> {
        self.links.iter().map(|(id, l)| (*id, l))
    }

    fn fresh(&self, conn: ConnId, what: &str) -> Result<(), Violation> {
        require!(
            !self.links.contains_key(&conn),
            "{what} with {conn}, an id already used"
        );
        Ok(())
    }

    /// `conn` takes its slot: no other id may hold it (the core frees a slot only at `Closed`).
    fn hold_slot(&mut self, conn: ConnId, what: &str) -> Result<(), Violation> {
        let holder = *self.held_slots.entry(conn.slot()).or_insert(conn);
        require!(
            holder == conn,
            "{what} with {conn:?}, in the slot of {holder:?} before its Closed"
        );
        Ok(())
    }

    fn insert(&mut self, conn: ConnId, role: Role) {
        self.links.insert(
            conn,
            Link {
                role,
                state: State::Connecting,
                connected: false,
                sent: Vec::new(),
                queue_high: false,
            },
        );
    }
}

/// `conn` ended: its slot is free for the next id.
fn release(held_slots: &mut HashMap<usize, ConnId>, conn: ConnId) {
    if held_slots.get(&conn.slot()) == Some(&conn) {
        held_slots.remove(&conn.slot());
    }
}

/// The messages in one `Send`, or why it does not hold whole frames: SIP messages and CRLF
/// pongs on a stream, envelopes of exactly one message each to an envelope backend.
fn unframe(role: Role, bytes: &Bytes) -> Result<Vec<Unframed>, String> {
    if let Role::Backend { envelope: true, .. } = role {
        let mut messages = Vec::new();
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(BytesMut::from(&bytes[..]));
        while let Some(next) = decoder.next_envelope(usize::MAX) {
            match next {
                Ok((e, payload)) => {
                    let frames = lb_core::fuzzing::frames(&payload);
                    if frames.messages.len() != 1
                        || frames.pings != 0
                        || frames.lost.is_some()
                        || frames.buffered != 0
                    {
                        return Err(format!("an envelope that is not one message ({frames:?})"));
                    }
                    messages.push(Unframed {
                        envelope: Some(e),
                        message: payload,
                    });
                }
                Err(e) => return Err(format!("a bad envelope: {e:?}")),
            }
        }
        if decoder.buffered_len() != 0 {
            return Err("a Send ends inside an envelope".to_owned());
        }
        return Ok(messages);
    }
    let frames = lb_core::fuzzing::frames(bytes);
    if let Some(fault) = frames.lost {
        return Err(format!("bytes that do not frame ({fault})"));
    }
    if frames.pings != 0 && !matches!(role, Role::Frontend { .. }) {
        return Err("CRLFCRLF sent to a backend".to_owned());
    }
    // A trailing pong (a lone CRLF) waits in the framer; anything else is a cut message.
    let rest = frames.buffered;
    if rest == 0 || (rest == 2 && bytes.ends_with(b"\r\n")) {
        Ok(frames
            .messages
            .into_iter()
            .map(|message| Unframed {
                envelope: None,
                message,
            })
            .collect())
    } else {
        Err("a Send that ends inside a message".to_owned())
    }
}
