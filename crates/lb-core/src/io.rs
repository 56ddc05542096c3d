//! The values that cross the core's boundary: [`Input`] in, [`Output`] out.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use crate::config::ValidConfig;
use crate::ids::{BackendId, ConnId};
use crate::reasons::{DropCause, FramingFault, MalformedFault, TimeoutCause};

/// Something that happened in the world, fed to [`crate::Balancer::handle_input`]. Inputs
/// clone and compare, so a recorded script can be replayed and two recordings diffed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Bytes read from a connection, in order. Any split is fine: the core reassembles.
    Received {
        /// Where they were read.
        conn: ConnId,
        /// The bytes; the core keeps slices of them, so hand over a `split_to` of the read buffer.
        bytes: BytesMut,
    },
    /// A connection asked for by [`Output::Connect`] or [`Output::Dial`] is established.
    Connected {
        /// The connection.
        conn: ConnId,
    },
    /// A connection is gone: the peer closed it, an error occurred, or the driver carried out
    /// [`Output::Close`]. Every [`ConnId`] ends with exactly one `Closed`, after which its slot
    /// may be reused.
    Closed {
        /// The connection.
        conn: ConnId,
        /// Why, for logs and counters.
        reason: CloseReason,
    },
    /// The answer to [`Output::Resolve`]: the addresses to try, best first; empty when the
    /// name did not resolve.
    Resolved {
        /// The connection the resolution is for.
        conn: ConnId,
        /// Addresses with their ports (from SRV, or the port asked for).
        addrs: Vec<SocketAddr>,
    },
    /// The operator changed the backend farm.
    Backends(BackendChange),
    /// The operator reloaded the configuration (e.g. on SIGHUP). Backends are matched by
    /// address: new ones are added (and connected), missing ones removed (no new calls; their
    /// tagged traffic goes to a backup), weights, modes of new backends, draining, algorithm,
    /// window, limits and the tag keys take effect. Listeners cannot change without a restart.
    /// No connection and no call is dropped.
    Reload(Box<ValidConfig>),
    /// A connection's queue of bytes written but not yet taken by the peer crossed a mark:
    /// above the driver's high-water mark, or back below its low-water mark. Report `High` once
    /// when the queue grows past the high mark and `Low` once when it then falls below the low
    /// mark (the gap between them keeps a level near one mark from flapping).
    ///
    /// A backend above the mark gets no new calls (its calls' traffic still goes to it); a
    /// frontend above it gets nothing more (what is bound for it is dropped and counted, so a
    /// shared backend connection never waits for it). A connection that stays above the mark
    /// for `Config::stall_timeout` is closed: its peer has stopped reading.
    OutputQueue {
        /// The connection.
        conn: ConnId,
        /// Which mark it crossed.
        level: QueueLevel,
    },
    /// The deadline of [`crate::Balancer::poll_timeout`] has passed (early calls are harmless).
    Timeout,
}

/// Which mark of a connection's output queue was crossed ([`Input::OutputQueue`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueLevel {
    /// The queue grew past the high-water mark: the peer reads slower than the balancer writes.
    High,
    /// The queue fell below the low-water mark again.
    Low,
}

/// Why a connection closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side.
    PeerClosed,
    /// A socket error (reset, refused, timed out).
    Error,
    /// The driver performed an [`Output::Close`] the core asked for.
    Requested,
    /// The driver's per-connection output cap was exceeded (a reader too slow).
    OutputOverflow,
}

/// An operator's change to the backend farm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChange {
    /// Stop giving the backend new calls; its established and ringing calls still reach it.
    Drain(BackendId),
    /// Give the backend new calls again.
    Resume(BackendId),
}

/// An action for the driver, drained from [`crate::Balancer::poll_output`]. Perform them in
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write these bytes to the connection, after everything written before. They are ready for
    /// the socket: envelope framing included.
    Send {
        /// Target connection.
        conn: ConnId,
        /// Bytes to write.
        bytes: Bytes,
    },
    /// Open a TCP connection to a backend and register it as `conn`; then report
    /// [`Input::Connected`] or [`Input::Closed`].
    Connect {
        /// The id the core gave the new connection.
        conn: ConnId,
        /// The backend it belongs to.
        backend: BackendId,
        /// Where to connect.
        to: SocketAddr,
    },
    /// Open a TCP connection to a frontend (dial-out) and register it as `conn`; then report
    /// [`Input::Connected`] or [`Input::Closed`]. The core sends nothing on it before
    /// `Connected`; from then on it is a frontend connection like an accepted one.
    Dial {
        /// The id the core gave the new connection.
        conn: ConnId,
        /// Where to connect.
        to: SocketAddr,
    },
    /// Resolve a next hop's host name as RFC 3263 §4 has a client do for TCP: with `port`,
    /// its A/AAAA records; without, the SRV records of `_sip._tcp.HOST` in priority and weight
    /// order, then A/AAAA with port 5060. Report [`Input::Resolved`] for `conn`. The id is not
    /// a connection yet: a [`Output::Dial`] for it follows a non-empty answer; after an empty
    /// one the core forgets it, and the driver reports nothing else for it.
    Resolve {
        /// The dial the answer is for.
        conn: ConnId,
        /// The host name, as written in the URI.
        host: String,
        /// The URI's port, if it has one.
        port: Option<u16>,
    },
    /// Flush what was sent, close the connection, then report [`Input::Closed`] with
    /// [`CloseReason::Requested`].
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Drop the connection now, without flushing: give up a connect or dial still in progress,
    /// or discard what a [`Output::Close`] is still flushing. Then report [`Input::Closed`]:
    /// [`CloseReason::Error`] for a connect given up (as for one refused),
    /// [`CloseReason::Requested`] for a close. The core asks for it when
    /// [`Config::connect_timeout`](crate::Config::connect_timeout) has passed without
    /// [`Input::Connected`], or [`Config::close_linger`](crate::Config::close_linger) without
    /// [`Input::Closed`]; nothing follows it for `conn`.
    Abort {
        /// The connection.
        conn: ConnId,
    },
    /// Something worth a log line or a metric.
    Event(Event),
}

/// Operator news from the core. Per-message detail stays in the counters of
/// [`crate::Stats`]; events are state changes and faults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A backend connection came up; the backend takes calls.
    BackendUp(BackendId),
    /// A backend connection was lost or refused; its calls go to its backup.
    BackendDown(BackendId),
    /// A backend stopped or resumed taking new calls.
    BackendDraining {
        /// The backend.
        backend: BackendId,
        /// Draining now.
        draining: bool,
    },
    /// A frontend connection was refused at accept because of `limits.frontends_max`.
    FrontendRefused(ConnId),
    /// A connection's stream could not be framed any more; the core closes it.
    FramingLost {
        /// The connection.
        conn: ConnId,
        /// What was wrong.
        fault: FramingFault,
    },
    /// A framed message was malformed, or an initial request failed the edge checks
    /// (`Config::sanity`); requests got a 400 with this reason.
    Malformed {
        /// The connection.
        conn: ConnId,
        /// What was wrong.
        fault: MalformedFault,
    },
    /// A backend answered a new call with 503: it gets no new calls for `hold`.
    BackendOverloaded {
        /// The backend.
        backend: BackendId,
        /// How long it is skipped by selection (its Retry-After, or the configured default).
        hold: std::time::Duration,
    },
    /// A backend's connection queue crossed the high-water mark (`held`: it gets no new calls,
    /// its calls' traffic still flows) or fell back below the low-water mark (it takes new calls
    /// again). Not a failure: the backend stays up and keeps its calls.
    BackendQueueHeld {
        /// The backend.
        backend: BackendId,
        /// Held now.
        held: bool,
    },
    /// A reloaded configuration took effect.
    Reloaded {
        /// Backends added.
        added: usize,
        /// Backends removed.
        removed: usize,
    },
    /// A connection was closed for a timeout: a frontend's `idle` or `partial message`, or any
    /// connection's `peer not reading` (its output queue stayed above the high-water mark for
    /// `Config::stall_timeout`).
    TimedOut {
        /// The connection.
        conn: ConnId,
        /// Which timer.
        cause: TimeoutCause,
    },
    /// A message could not be delivered and was dropped (no response is possible for it).
    Dropped {
        /// The connection it came from.
        conn: ConnId,
        /// Why.
        cause: DropCause,
    },
}
