//! What the world schedules ([`Ev`]), and what it counts and records itself.

use bytes::{Bytes, BytesMut};
use lb_core::{CloseReason, ConnId};

use crate::backend::{BackendTimer, Farm};
use crate::caller::{outcome, Callers, Phase, ToUa, UaOut, UaTimer};
use crate::queue::Nanos;
use crate::sip::{Kind, Method, Summary};

/// Something scheduled to happen.
#[derive(Debug)]
pub(crate) enum Ev {
    CallArrival,
    UaTimer {
        call: u32,
        timer: UaTimer,
        gen: u32,
    },
    UdpToProxy {
        call: u32,
        msg: UaOut,
    },
    UdpToUa {
        call: u32,
        msg: ToUa,
    },
    /// `call` and `code` are what the sender wrote (for the trace, without parsing again);
    /// `edge` names the proxy that re-sends it elsewhere if the connection broke under it.
    TcpToLb {
        lb: u8,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
        edge: Option<u16>,
    },
    TcpToBackend {
        lb: u8,
        conn: ConnId,
        backend: u16,
        bytes: Bytes,
        summary: Brief,
    },
    TcpToProxy {
        lb: u8,
        conn: ConnId,
        bytes: Bytes,
        summary: Brief,
    },
    ConnectResult {
        lb: u8,
        conn: ConnId,
    },
    /// A proxy accepted a worker's dial-out.
    DialAnswered {
        lb: u8,
        conn: ConnId,
        proxy: u16,
    },
    FeedClosed {
        lb: u8,
        conn: ConnId,
        reason: CloseReason,
    },
    BackendTimer {
        call: u32,
        timer: BackendTimer,
        gen: u32,
    },
    Outage {
        backend: u16,
        down: bool,
        silent: bool,
    },
    /// Every worker of an instance dies at once (the machine or process is gone).
    InstanceDeath {
        instance: u8,
    },
    ProxyReconnect {
        proxy: u16,
        instance: u8,
        k: u16,
    },
    Reap {
        call: u32,
    },
    Sample,
}

impl Ev {
    /// Reads the call state handling this event will read first, and returns a word of it: the
    /// world does this for a millisecond's events at once before handling them. A storm's
    /// timers and messages reach tens of thousands of calls in random order, and one cache
    /// miss after another was a tenth of its time; reads side by side overlap.
    pub(crate) fn warm(&self, callers: &Callers, farm: &Farm) -> u32 {
        match self {
            Ev::UaTimer { call, .. } | Ev::UdpToUa { call, .. } => callers.warm(*call),
            Ev::UdpToProxy { call, .. } => callers.warm_dialog(*call),
            Ev::Reap { call } => callers.warm(*call) ^ farm.warm(*call),
            Ev::BackendTimer { call, .. } => farm.warm(*call),
            Ev::TcpToBackend { summary, .. } => farm.warm(summary.call),
            // The core's state is its own; the rest touch no call.
            Ev::TcpToLb { .. }
            | Ev::TcpToProxy { .. }
            | Ev::CallArrival
            | Ev::ConnectResult { .. }
            | Ev::DialAnswered { .. }
            | Ev::FeedClosed { .. }
            | Ev::Outage { .. }
            | Ev::InstanceDeath { .. }
            | Ev::ProxyReconnect { .. }
            | Ev::Sample => 0,
        }
    }
}

/// What the world counts itself (the components count the rest).
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub(crate) udp_lost: u64,
    pub(crate) tcp_lost: u64,
    pub(crate) cancel_elsewhere: u64,
    /// Edge re-sends of in-dialog requests whose instance died under them.
    pub(crate) edge_resends: u64,
}

/// Where each call stood when its instance died: see [`crate::InstanceLoss`].
#[derive(Debug)]
pub(crate) struct Death {
    pub(crate) instance: u8,
    pub(crate) at: Nanos,
    /// Per call placed by then: 0 ended, 1 in setup on a live instance, 2 established, 3 in
    /// setup on the instance that died.
    pub(crate) phase: Vec<u8>,
}

impl Death {
    /// Instance `instance` dies at `at`: notes where each call placed so far stands.
    pub(crate) fn snapshot(callers: &Callers, instance: u8, at: Nanos) -> Death {
        let phase = (0..callers.placed() as u32)
            .map(|c| match callers.phase(c) {
                _ if callers.outcome(c) != outcome::NONE => 0,
                Some(Phase::Calling | Phase::Proceeding) if callers.home(c) == Some(instance) => 3,
                Some(Phase::Calling | Phase::Proceeding) => 1,
                Some(_) => 2,
                None => 0,
            })
            .collect();
        Death {
            instance,
            at,
            phase,
        }
    }
}

/// A [`Summary`] packed for the queue: the TCP deliveries are most of the events in flight,
/// and every byte of an event is written and read again (20 bytes here against 40).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Brief {
    /// The call number, `u32::MAX` for none (the simulator's calls are numbered in `u32`).
    call: u32,
    cseq: u32,
    len: u32,
    kind: Kind,
    cseq_method: Method,
    has_to_tag: bool,
}

impl Brief {
    pub(crate) fn of(s: Summary) -> Brief {
        Brief {
            call: s
                .call
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(u32::MAX),
            cseq: s.cseq,
            len: s.len as u32,
            kind: s.kind,
            cseq_method: s.cseq_method,
            has_to_tag: s.has_to_tag,
        }
    }

    pub(crate) fn summary(self) -> Summary {
        Summary {
            kind: self.kind,
            call: (self.call != u32::MAX).then_some(u64::from(self.call)),
            cseq: self.cseq,
            cseq_method: self.cseq_method,
            has_to_tag: self.has_to_tag,
            len: self.len as usize,
        }
    }
}
