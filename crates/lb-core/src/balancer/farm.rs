//! The backend farm: connections and reconnects, health probes, overload holds, drain and
//! reload. Everything here is a decision about a backend's availability; routing asks
//! [`Balancer::is_backend_up`] and [`Balancer::takes_new_calls`].
//!
//! A backend is available when its connection is up, its probes (if configured) have not
//! marked it down, and the operator has not removed it. It takes *new* calls when it is
//! available, not draining, not in an overload hold and of positive weight. Ids are stable for
//! the life of the balancer: a reload appends new backends and marks missing ones removed, so a
//! tag minted before a reload still names the same backend after it.

use std::cmp::Reverse;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::Rng;

use super::timers::BackendTimer;
use super::{write_message, BackendReader, Balancer, Conn, Side};
use crate::config::{BackendConfig, BackendMode, ValidConfig, BACKENDS_MAX};
use crate::envelope::{Envelope, EnvelopeDecoder, Transport};
use crate::failover;
use crate::framing::StreamFramer;
use crate::ids::{BackendId, ConnId};
use crate::io::{BackendChange, Event, Output};
use crate::message::{header_lines, HeaderName, SipMessage, StartLine};
use crate::rewrite::BufWriter;
use crate::select::Selector;
use crate::tag::TagSigner;

/// What an operator sees of one backend (for metrics and health endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendStatus {
    /// Its id.
    pub id: BackendId,
    /// Where the balancer connects.
    pub addr: SocketAddr,
    /// Connected, probes passing, not removed: takes its calls' traffic.
    pub up: bool,
    /// Takes no new calls by the operator's choice.
    pub draining: bool,
    /// Removed by a reload; its tagged traffic goes to a backup.
    pub removed: bool,
    /// In an overload hold after answering a new call with 503.
    pub overloaded: bool,
    /// Held because its connection queue is over the high-water mark (no new calls; its calls'
    /// traffic still flows).
    pub queue_held: bool,
    /// The load it last reported in an envelope.
    pub load: Option<u32>,
    /// New calls assigned to it within the window.
    pub assigned: u32,
    /// Its weight.
    pub weight: u32,
    /// Open connections to it: the balancer keeps one per backend, so 0 or 1.
    pub connections: u32,
}

#[derive(Debug)]
pub(super) struct Backend {
    pub(super) state: BackendState,
    pub(super) draining: bool,
    pub(super) removed: bool,
    pub(super) conn: Option<ConnId>,
    /// The load an envelope backend last reported.
    pub(super) load: Option<u32>,
    /// Consecutive failed connection attempts, for the backoff.
    failures: u32,
    /// Connections lost after they came up, since the backend last stayed up for
    /// [`QUARANTINE_CLEAN`]: each one doubles the hold before the next connection, so a
    /// backend that breaks framing (or resets) on every message stops taking every n-th call.
    faults: u32,
    /// When its connection came up.
    up_since: Option<Instant>,
    /// No new calls before this instant (a 503 from the backend).
    pub(super) overloaded_until: Option<Instant>,
    probe: ProbeState,
    /// Unanswered INVITEs (`passive`).
    pub(super) passive: super::passive::PassiveState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BackendState {
    Connecting,
    Up,
    Down,
}

#[derive(Debug, Default)]
struct ProbeState {
    /// Probes have marked the backend down (its connection may still be open).
    down: bool,
    failures: u32,
    successes: u32,
    /// The CSeq of the probe awaiting its answer.
    outstanding: Option<u32>,
    /// CSeq of the last probe sent; also names the probe's Call-ID and branch.
    seq: u32,
}

/// Call-IDs of the balancer's own probes start with this, so their answers are recognised.
const PROBE_CALL_ID_PREFIX: &[u8] = b"siplb-probe-";

/// A backend whose connection stays up this long is forgiven its earlier faults.
pub(super) const QUARANTINE_CLEAN: Duration = Duration::from_secs(30);

impl Backend {
    pub(super) fn new(config: &BackendConfig) -> Backend {
        Backend {
            state: BackendState::Connecting,
            draining: config.draining,
            removed: false,
            conn: None,
            load: None,
            failures: 0,
            faults: 0,
            up_since: None,
            overloaded_until: None,
            probe: ProbeState::default(),
            passive: super::passive::PassiveState::default(),
        }
    }
}

impl Balancer {
    /// Whether `backend` is connected, passes its probes and was not removed: it takes the
    /// traffic of its calls.
    pub fn is_backend_up(&self, backend: BackendId) -> bool {
        self.backends.get(backend.index()).is_some_and(|b| {
            b.state == BackendState::Up && !b.probe.down && !b.passive.out && !b.removed
        })
    }

    /// The state of every backend, in id order. Changes after any input.
    pub fn backend_status(&self) -> impl Iterator<Item = BackendStatus> + '_ {
        self.backends.iter().enumerate().map(|(i, b)| {
            let id = BackendId::new(i);
            let config = &self.config.config.backends[i];
            BackendStatus {
                id,
                addr: config.addr,
                up: self.is_backend_up(id),
                draining: b.draining,
                removed: b.removed,
                overloaded: b.overloaded_until.is_some_and(|t| t > self.now),
                queue_held: self.backend_queue_held(id),
                load: b.load,
                assigned: self.table.assigned(id),
                weight: config.weight,
                connections: u32::from(b.state == BackendState::Up && b.conn.is_some()),
            }
        })
    }

    /// Recounts the `backends_up` gauge; called wherever availability can change.
    pub(super) fn count_backends_up(&mut self) {
        let up = (0..self.backends.len()).filter(|i| self.is_backend_up(BackendId::new(*i)));
        self.stats.backends_up = up.count() as u64;
        self.count_queue_held();
    }

    /// Whether a new call may be given to `backend` now (of those that may, `choose_backend`
    /// considers the lowest priority only).
    pub(super) fn takes_new_calls(&mut self, backend: BackendId) -> bool {
        let now = self.now;
        let up = self.is_backend_up(backend) && !self.backend_queue_held(backend);
        let weighted = self.config.config.backends[backend.index()].weight > 0;
        let b = &mut self.backends[backend.index()];
        if b.overloaded_until.is_some_and(|t| t <= now) {
            b.overloaded_until = None;
        }
        up && weighted && !b.draining && b.overloaded_until.is_none()
    }

    pub(super) fn connect_backend(&mut self, backend: BackendId) {
        let config = &self.config.config.backends[backend.index()];
        let reader = match config.mode {
            BackendMode::Plain => BackendReader::Plain(StreamFramer::default()),
            BackendMode::Envelope => BackendReader::Envelope(EnvelopeDecoder::default()),
        };
        let to = config.addr;
        let conn = self.insert_conn(Side::Backend { backend, reader });
        let b = &mut self.backends[backend.index()];
        b.conn = Some(conn);
        // Only the first attempt is "connecting"; a backend that was up stays down until it
        // connects again.
        if b.state != BackendState::Down {
            b.state = BackendState::Connecting;
        }
        self.outputs
            .push_back(Output::Connect { conn, backend, to });
        self.arm_connect(conn);
    }

    pub(super) fn handle_connected(&mut self, id: ConnId) {
        let Some(Conn {
            side: Side::Backend { backend, .. },
            closing: false,
            ..
        }) = self.conn(id)
        else {
            self.stats.stale_inputs += 1;
            return;
        };
        let backend = *backend;
        let b = &mut self.backends[backend.index()];
        if b.conn != Some(id) {
            self.stats.stale_inputs += 1;
            return;
        }
        b.state = BackendState::Up;
        b.failures = 0;
        b.up_since = Some(self.now);
        // A fresh connection starts with a clean probe record: probes judge it from here.
        b.probe = ProbeState {
            seq: b.probe.seq,
            ..ProbeState::default()
        };
        self.outputs
            .push_back(Output::Event(Event::BackendUp(backend)));
        self.count_backends_up();
        if self.config.config.probe.is_some() {
            self.schedule(backend, BackendTimer::Probe, Duration::ZERO);
        }
    }

    /// The backend's connection `id` is gone: down, and reconnect after a backoff (unless the
    /// backend was removed).
    pub(super) fn backend_closed(&mut self, backend: BackendId, id: ConnId) {
        let b = &mut self.backends[backend.index()];
        if b.conn != Some(id) {
            return;
        }
        let was_up = self.is_backend_up(backend);
        let now = self.now;
        let b = &mut self.backends[backend.index()];
        // A connection that was up is a fault against the backend; one that stayed up long
        // enough clears the earlier ones first (a restart now and then is no pattern).
        if let Some(since) = b.up_since.take() {
            if now.saturating_duration_since(since) >= QUARANTINE_CLEAN {
                b.faults = 0;
            }
            b.faults = b.faults.saturating_add(1);
            if b.faults > 1 {
                self.stats.backend_quarantines += 1;
            }
        }
        let b = &mut self.backends[backend.index()];
        b.conn = None;
        b.load = None;
        b.probe.outstanding = None;
        b.failures = b.failures.saturating_add(1);
        b.state = BackendState::Down;
        self.stats.backend_failures += 1;
        if was_up {
            self.outputs
                .push_back(Output::Event(Event::BackendDown(backend)));
        }
        self.count_backends_up();
        if !self.backends[backend.index()].removed {
            let delay = self.reconnect_delay(backend);
            self.schedule(backend, BackendTimer::Reconnect, delay);
        }
    }

    /// Exponential backoff from `reconnect_min`, capped at `reconnect_max`, with jitter drawn
    /// from the seeded generator so a farm restarting together does not reconnect in lockstep.
    fn reconnect_delay(&mut self, backend: BackendId) -> Duration {
        let c = &self.config.config;
        let b = &self.backends[backend.index()];
        // Failed attempts and faults of connections that came up both lengthen the hold.
        let failures = (b.failures + b.faults.saturating_sub(1)).clamp(1, 16);
        let full = c
            .reconnect_min
            .saturating_mul(1 << (failures - 1).min(15))
            .min(c.reconnect_max);
        let half = full / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }

    /// Fires the backend timers due at `now`.
    pub(super) fn handle_backend_timers(&mut self) {
        // The table was just expired: INVITEs it found unanswered are judged first.
        self.judge_unanswered();
        let now = self.now;
        while let Some(Reverse((at, backend, timer))) = self.backend_timers.peek().copied() {
            if at > now {
                break;
            }
            self.backend_timers.pop();
            let b = &self.backends[backend.index()];
            match timer {
                BackendTimer::Reconnect => {
                    if b.conn.is_none() && !b.removed {
                        self.connect_backend(backend);
                    }
                }
                BackendTimer::Probe => {
                    if b.state == BackendState::Up && !b.removed {
                        self.send_probe(backend);
                    }
                }
                BackendTimer::PassiveHoldEnd => self.end_passive_hold(backend),
                BackendTimer::ProbeTimeout(seq) => {
                    if b.probe.outstanding == Some(seq) {
                        self.backends[backend.index()].probe.outstanding = None;
                        self.probe_result(backend, false);
                    }
                }
            }
        }
    }

    fn send_probe(&mut self, backend: BackendId) {
        let Some(probe) = self.config.config.probe.clone() else {
            return;
        };
        let b = &mut self.backends[backend.index()];
        let Some(conn) = b.conn else { return };
        // While the last probe is still out, its timeout judges it; no second one is sent.
        if b.probe.outstanding.is_none() {
            b.probe.seq = b.probe.seq.wrapping_add(1);
            let seq = b.probe.seq;
            b.probe.outstanding = Some(seq);
            let envelope_mode =
                self.config.config.backends[backend.index()].mode == BackendMode::Envelope;
            let target = self.config.config.backends[backend.index()].addr;
            let advertise = &self.config.advertise;
            if self.conns.get(conn.slot()).is_none() {
                return;
            }
            let envelope = Envelope {
                addr: None,
                transport: Transport::Tcp,
                load: None,
            };
            let framing = envelope_mode.then_some(&envelope);
            let Some(bytes) = write_message(&mut self.out, framing, |out| {
                write_probe(out, advertise, target, backend, seq);
                true
            }) else {
                return;
            };
            self.stats.probes_sent += 1;
            self.send(conn, bytes);
            self.schedule(backend, BackendTimer::ProbeTimeout(seq), probe.timeout);
        }
        self.schedule(backend, BackendTimer::Probe, probe.interval);
    }

    /// Consumes a backend's answer to one of the balancer's probes; `false` when the response
    /// is not one (it is routed as usual).
    pub(super) fn handle_probe_response(
        &mut self,
        backend: BackendId,
        message: &SipMessage,
    ) -> bool {
        if !message.call_id().starts_with(PROBE_CALL_ID_PREFIX) {
            return false;
        }
        let StartLine::Response { status } = message.start else {
            return false;
        };
        if status < 200 {
            return true;
        }
        let b = &mut self.backends[backend.index()];
        if b.probe.outstanding != Some(message.cseq_number) {
            return true; // late answer to a probe already judged
        }
        b.probe.outstanding = None;
        // Any final answer but a server error shows a live SIP stack (RFC 3261 §11.2).
        self.probe_result(backend, status < 500);
        true
    }

    fn probe_result(&mut self, backend: BackendId, ok: bool) {
        let Some(config) = self.config.config.probe.clone() else {
            return;
        };
        let was_up = self.is_backend_up(backend);
        let p = &mut self.backends[backend.index()].probe;
        if ok {
            p.failures = 0;
            p.successes = p.successes.saturating_add(1);
            if p.down && p.successes >= config.successes_to_up {
                p.down = false;
            }
        } else {
            self.stats.probe_failures += 1;
            p.successes = 0;
            p.failures = p.failures.saturating_add(1);
            if !p.down && p.failures >= config.failures_to_down {
                p.down = true;
            }
        }
        match (was_up, self.is_backend_up(backend)) {
            (true, false) => self
                .outputs
                .push_back(Output::Event(Event::BackendDown(backend))),
            (false, true) => self
                .outputs
                .push_back(Output::Event(Event::BackendUp(backend))),
            _ => {}
        }
        self.count_backends_up();
    }

    /// A backend answered an INVITE with 503: no new calls for its Retry-After (capped), or the
    /// configured hold. RFC 6357 §3: load must be shed, not retried blindly.
    pub(super) fn note_overload(&mut self, backend: BackendId, message: &SipMessage) {
        let c = &self.config.config;
        let hold =
            retry_after(&message.bytes).map_or(c.overload_hold, |d| d.min(c.overload_hold_max));
        self.backends[backend.index()].overloaded_until = Some(self.now + hold);
        self.stats.backend_overloads += 1;
        self.outputs
            .push_back(Output::Event(Event::BackendOverloaded { backend, hold }));
    }

    pub(super) fn handle_backend_change(&mut self, change: BackendChange) {
        let (backend, draining) = match change {
            BackendChange::Drain(b) => (b, true),
            BackendChange::Resume(b) => (b, false),
        };
        if let Some(b) = self.backends.get_mut(backend.index()) {
            if b.draining != draining {
                b.draining = draining;
                self.outputs
                    .push_back(Output::Event(Event::BackendDraining { backend, draining }));
            }
        }
    }

    /// Applies a reloaded configuration; see [`crate::Input::Reload`].
    pub(super) fn handle_reload(&mut self, new: ValidConfig) {
        let (mut added, mut removed) = (0, 0);
        let mut backends = self.config.config.backends.clone();
        let mut seen = vec![false; backends.len()];
        for nb in &new.config.backends {
            match backends.iter().position(|b| b.addr == nb.addr) {
                Some(i) => {
                    seen[i] = true;
                    let mode_changed = backends[i].mode != nb.mode;
                    backends[i] = nb.clone();
                    let b = &mut self.backends[i];
                    b.draining = nb.draining;
                    let was_removed = std::mem::replace(&mut b.removed, false);
                    if mode_changed {
                        // The framing of the open connection no longer fits: reconnect.
                        if let Some(conn) = b.conn {
                            self.close(conn);
                        }
                    } else if was_removed && b.conn.is_none() {
                        self.schedule(BackendId::new(i), BackendTimer::Reconnect, Duration::ZERO);
                    }
                }
                None if backends.len() < BACKENDS_MAX => {
                    backends.push(nb.clone());
                    seen.push(true);
                    self.backends.push(Backend::new(nb));
                    added += 1;
                }
                None => {
                    tracing::warn!(addr = %nb.addr, "reload: backend limit reached, not added");
                }
            }
        }
        for (i, seen) in seen.iter().enumerate() {
            let b = &mut self.backends[i];
            if !seen && !b.removed {
                b.removed = true;
                removed += 1;
                if let Some(conn) = b.conn {
                    self.close(conn);
                }
            }
        }
        // Every backup resolves: the new config was validated against its own backends, and
        // the merged list holds them all (a backend that left keeps its already valid backup).
        let backups = backends
            .iter()
            .map(|b| failover::resolve_backup(backends.iter().map(|o| o.addr), b.backup))
            .map(|resolved| resolved.ok().flatten())
            .collect();
        // The new-call table keeps its window, ringing cap and capacity: its expiry queues are
        // ordered by them. They take effect at a restart.
        let old = &self.config.config;
        let mut config = new.config;
        config.listeners = old.listeners.clone();
        config.window = old.window;
        config.ringing_max = old.ringing_max;
        config.limits.table_capacity = old.limits.table_capacity;
        // Likewise the connect and linger deadline queues (FIFOs: one timeout each).
        config.connect_timeout = old.connect_timeout;
        config.close_linger = old.close_linger;
        config.backends = backends;
        self.table.set_share(config.limits.table_share());
        self.table
            .set_source_share(config.limits.table_share_per_ip());
        self.table
            .set_unanswered_timeout(config.passive.unanswered_timeout);
        self.signer = TagSigner::new(&config.tag_keys);
        self.rendezvous_key = self.signer.shared_hash_key();
        self.selector = Selector::new(config.algorithm, config.backends.len());
        let probing_started = old.probe.is_none() && config.probe.is_some();
        self.config = ValidConfig {
            config,
            advertise: new.advertise,
            advertise_backend: new.advertise_backend,
            advertise_tls: new.advertise_tls,
            backups,
        };
        for i in self.config.config.backends.len() - added..self.config.config.backends.len() {
            self.connect_backend(BackendId::new(i));
        }
        if probing_started {
            for i in 0..self.backends.len() {
                if self.backends[i].state == BackendState::Up {
                    self.schedule(BackendId::new(i), BackendTimer::Probe, Duration::ZERO);
                }
            }
        }
        self.stats.reloads += 1;
        self.count_backends_up();
        self.outputs
            .push_back(Output::Event(Event::Reloaded { added, removed }));
    }
}

/// `OPTIONS` to the backend itself (RFC 3261 §11.1), from the balancer.
fn write_probe(
    out: &mut BytesMut,
    advertise: &str,
    target: SocketAddr,
    backend: BackendId,
    seq: u32,
) {
    let _ = write!(
        BufWriter(out),
        "OPTIONS sip:{target};transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/TCP {advertise};branch=z9hG4bKsiplbprobe{}x{seq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:siplb@{advertise}>;tag=siplb{}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: siplb-probe-{}-{seq}@{advertise}\r\n\
         CSeq: {seq} OPTIONS\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        backend.index(),
        backend.index(),
        backend.index(),
    );
}

/// The delta-seconds of a `Retry-After` header (RFC 3261 §20.33), if present and readable.
fn retry_after(message: &[u8]) -> Option<Duration> {
    header_lines(message).find_map(|(name, span)| {
        if name != HeaderName::Other {
            return None;
        }
        let line = &message[span.range()];
        let colon = line.iter().position(|c| *c == b':')?;
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"Retry-After")
        {
            return None;
        }
        let value = line[colon + 1..].trim_ascii();
        let digits = value.iter().take_while(|c| c.is_ascii_digit()).count();
        let secs: u64 = std::str::from_utf8(&value[..digits]).ok()?.parse().ok()?;
        Some(Duration::from_secs(secs))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_delta_seconds() {
        let m = b"SIP/2.0 503 Busy\r\nVia: x\r\nretry-after : 17 ;duration=5\r\n\r\n";
        assert_eq!(retry_after(m), Some(Duration::from_secs(17)));
        assert_eq!(retry_after(b"SIP/2.0 503 Busy\r\nVia: x\r\n\r\n"), None);
    }
}
