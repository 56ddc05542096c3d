//! The whole core under fuzz: a `Balancer` driven through its public API by the inputs a fuzz
//! input spells out, every output checked against the contract (see [`core_sequence`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_core::envelope::{self, Envelope, Transport};
use lb_core::{
    Algorithm, BackendChange, BackendConfig, BackendId, BackendMode, Balancer, CloseReason, Config,
    ConnId, Input, Limits, ListenerId, MalformedFault, Output, ProbeConfig, SanityLimits, TagKey,
    ValidConfig,
};

use super::answers::{answer, counters};
use super::Choices;
use crate::contract::{Contract, Role, State, Unframed};

/// Inputs fed to one balancer at most: enough for calls to set up, fail over and expire.
pub(super) const STEPS_MAX: usize = 300;
pub(super) const ADVERTISE: &str = "lb.fuzz.invalid:5060";
/// Backend addresses the configurations draw from (mode fixed per address, except where a
/// reload flips it).
pub(super) const BACKEND_ADDRS: [[u8; 4]; 4] =
    [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3], [10, 0, 0, 4]];

pub(super) fn backend_addr(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::from(BACKEND_ADDRS[i % BACKEND_ADDRS.len()]), 5060)
}

/// A farm of three backends (plain, envelope with b0 backing up to it, plain) or, for reloads,
/// a variant: one removed and one added, keys rotated, a mode flipped. `flags` picks the
/// algorithm, probes, the tag header, draining and the sanity checks; `small` the limits.
pub(super) fn fuzz_config(flags: u8, variant: u8, small: bool) -> ValidConfig {
    let mut b0 = BackendConfig::plain(backend_addr(0));
    b0.backup = Some(backend_addr(1));
    let mut b1 = BackendConfig::plain(backend_addr(1));
    b1.mode = BackendMode::Envelope;
    b1.weight = 2;
    let mut b2 = BackendConfig::plain(backend_addr(2));
    b2.draining = flags & 16 != 0;
    let mut b3 = BackendConfig::plain(backend_addr(3));
    b3.mode = BackendMode::Envelope;
    b3.backup = Some(backend_addr(1));
    let key = |id: u8| TagKey {
        id,
        secret: format!("fuzzing-tag-key-number-{id}").into_bytes(),
    };
    let (backends, tag_keys) = match variant % 4 {
        0 => (vec![b0, b1, b2], vec![key(1)]),
        1 => (vec![b0, b1, b3], vec![key(1)]),
        2 => (vec![b0, b1, b2], vec![key(3), key(1)]),
        _ => {
            b0.mode = BackendMode::Envelope;
            (vec![b0, b1, b2, b3], vec![key(1), key(3)])
        }
    };
    let config = Config {
        listeners: vec![SocketAddr::from(([127, 0, 0, 1], 5060))],
        advertise: Some(ADVERTISE.to_owned()),
        advertise_backend: None,
        // One traced call, so the trace path runs on fuzzed traffic too.
        trace_call_ids: vec!["call1@fuzz".to_owned()],
        tls_listeners: Vec::new(),
        advertise_tls: None,
        backends,
        algorithm: match flags % 4 {
            1 => Algorithm::Weighted,
            2 => Algorithm::LeastLoaded,
            _ => Algorithm::RoundRobin,
        },
        window: Duration::from_secs(4),
        ringing_max: Duration::from_secs(10),
        tag_keys,
        tag_header: (flags & 8 != 0).then(|| "X-LB-Tag".to_owned()),
        retry_after: Duration::from_secs(3),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(2),
        limits: Limits {
            message_bytes_max: if small { 700 } else { 4096 },
            headers_max: if small { 12 } else { 64 },
            buffered_bytes_max: if small { 900 } else { 16384 },
            frontends_max: 3,
            table_capacity: if small { 2 } else { 16 },
            dial_outs_max: 2,
            dial_queue_max: 2,
            table_share_percent: 12,
            frontends_reserve_percent: 34,
            ..Limits::default()
        },
        sanity: SanityLimits {
            enabled: flags & 32 == 0,
            ..SanityLimits::default()
        },
        probe: (flags & 4 != 0).then(|| ProbeConfig {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            failures_to_down: 2,
            successes_to_up: 1,
        }),
        idle_timeout: Duration::from_secs(30),
        partial_timeout: Duration::from_secs(3),
        overload_hold: Duration::from_secs(2),
        overload_hold_max: Duration::from_secs(5),
        stall_timeout: Duration::from_secs(4),
        connect_timeout: lb_core::CONNECT_TIMEOUT_DEFAULT,
        close_linger: lb_core::CLOSE_LINGER_DEFAULT,
        hop_by_unique_ip: true,
        // Off: the model's backends leave INVITEs unanswered at will and it tracks "up" by
        // connection and probes alone (passive health has its own tests).
        passive: lb_core::PassiveHealth {
            unanswered_timeout: Duration::ZERO,
            ..lb_core::PassiveHealth::default()
        },
    };
    match config.validate() {
        Ok(valid) => valid,
        Err(e) => panic!("the fuzz configuration is invalid: {e}"),
    }
}

/// A message the core sent, kept to answer or replay it.
pub(super) struct Sent {
    /// The link it was sent on.
    link: usize,
    message: Bytes,
    /// A request the core forwarded to a backend while a frontend link's bytes were being fed:
    /// that link, where every response to it must go back to (RFC 3261 §18.2.2).
    origin: Option<usize>,
}

pub(super) struct Harness {
    lb: Balancer,
    now: Instant,
    /// Every connection (and name being resolved) in the order the harness learnt of it; the
    /// contract holds what each is and where it stands.
    links: Vec<ConnId>,
    contract: Contract,
    listener: ListenerId,
    backend_ids: Vec<BackendId>,
    capacity: u64,
    small: bool,
    tag_header: Option<&'static [u8]>,
    recent: Vec<Sent>,
    /// `Output::Resolve` ids not answered yet.
    resolving: Vec<ConnId>,
    /// Tags the core minted (`lb=` values), with the Call-ID they came with.
    tags: Vec<(Bytes, Bytes)>,
    /// The growing counters of the stats after the last input.
    counters: Vec<u64>,
    /// The input being handled came from this frontend.
    from_frontend: Option<SocketAddr>,
    /// The link whose bytes are being fed.
    feeding: Option<usize>,
    /// The bytes being fed are an unmutated answer to a request that came from this frontend
    /// link.
    answering: Option<usize>,
    /// `SIPLB_FUZZ_TRACE` set: print every input and output (to read a crash).
    trace: bool,
}

/// Runs one balancer on inputs decoded from `data`: accepts, bytes from frontends and backends
/// (raw, templated calls, answers to and replays of what the core sent, mutated), connects,
/// closes, timeouts with time advancing, drain/resume and reloads. Every output is checked
/// against the output contract ([`Contract`]: `Send` and `Close` only on open connections,
/// backends get bytes only once connected, fresh ids, a `Connect` to the backend's configured
/// address, whole frames in every `Send`, deadlines in the future after `Timeout`). On top, it
/// asserts: what reaches a backend parses; an envelope to a backend carries the address of the
/// frontend it came from; a backend's response to a request goes back on the frontend
/// connection the request came on while that is open; the new-call table stays within its
/// capacity; the open-frontend gauge matches and no counter goes down; inputs on dead ids count
/// as stale.
///
/// # Panics
/// When one of those breaks.
pub fn core_sequence(data: &[u8]) {
    let mut c = Choices::new(data);
    let flags = c.byte();
    let mut h = Harness::new(flags);
    h.drain();
    h.check();
    for _ in 0..STEPS_MAX {
        if c.is_empty() {
            break;
        }
        h.step(&mut c);
        h.check();
    }
}

impl Harness {
    fn new(flags: u8) -> Harness {
        let small = flags & 32 != 0;
        let config = fuzz_config(flags, 0, small);
        let capacity = config.config().limits.table_capacity as u64;
        let tag_header = config
            .config()
            .tag_header
            .is_some()
            .then_some(&b"X-LB-Tag"[..]);
        let contract = Contract::new(&config);
        // The harness plays the driver, which owns the clock; time then moves only as the
        // input says.
        let now = Instant::now();
        let lb = Balancer::new(config, u64::from(flags), now);
        let listener = match lb.listeners().next() {
            Some((id, _)) => id,
            None => panic!("no listener"),
        };
        let backend_ids = lb.backends().map(|(id, _)| id).collect();
        Harness {
            lb,
            now,
            links: Vec::new(),
            contract,
            listener,
            backend_ids,
            capacity,
            small,
            tag_header,
            recent: Vec::new(),
            resolving: Vec::new(),
            tags: Vec::new(),
            from_frontend: None,
            feeding: None,
            answering: None,
            counters: Vec::new(),
            trace: std::env::var_os("SIPLB_FUZZ_TRACE").is_some(),
        }
    }

    fn input(&mut self, input: Input) {
        if self.trace {
            eprintln!("{:?} in: {input:?}", self.now);
        }
        if let Err(v) = self.contract.feed(&mut self.lb, self.now, input) {
            panic!("{v}");
        }
        self.drain();
    }

    fn role(&self, i: usize) -> Role {
        match self.contract.link(self.links[i]) {
            Some(link) => link.role,
            None => panic!("link {i} unknown to the contract"),
        }
    }

    fn state(&self, i: usize) -> State {
        self.contract.state(self.links[i]).unwrap_or(State::Closed)
    }

    fn connected(&self, i: usize) -> bool {
        self.contract
            .link(self.links[i])
            .is_some_and(|l| l.connected)
    }

    fn is_frontend(&self, i: usize) -> bool {
        matches!(self.role(i), Role::Frontend { .. })
    }

    fn is_backend(&self, i: usize) -> bool {
        matches!(self.role(i), Role::Backend { .. })
    }

    /// Picks one link satisfying `keep`.
    fn pick(&self, c: &mut Choices<'_>, keep: impl Fn(usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.links.len()).filter(|&i| keep(i)).collect();
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[c.below(candidates.len())])
    }

    fn step(&mut self, c: &mut Choices<'_>) {
        match c.below(13) {
            0 => {
                let peer = SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::new(10, 1, 0, c.byte() % 4)),
                    5060 + u16::from(c.byte() % 3),
                );
                let id = self.lb.accept(self.now, self.listener, peer);
                if self.trace {
                    eprintln!("accept {peer} -> {id:?}");
                }
                if let Err(v) = self.contract.accepted(id, peer) {
                    panic!("{v}");
                }
                self.links.push(id);
                self.drain();
            }
            1..=3 => {
                let Some(i) =
                    self.pick(c, |i| self.state(i) != State::Closed && self.is_frontend(i))
                else {
                    return;
                };
                let payload = self.payload(c, i);
                self.feed(c, i, payload);
            }
            4..=6 => {
                let Some(i) = self.pick(c, |i| {
                    self.state(i) != State::Closed && self.connected(i) && self.is_backend(i)
                }) else {
                    return;
                };
                let mut payload = self.payload(c, i);
                if let Role::Backend { envelope: true, .. } = self.role(i) {
                    payload = self.wrap(c, &payload);
                }
                self.feed(c, i, payload);
            }
            7 => {
                if let Some(conn) = self.resolving.pop() {
                    // Half the names resolve (to a host the harness then plays), half do not.
                    let addrs = if c.byte().is_multiple_of(2) {
                        vec![SocketAddr::from(([198, 51, 100, 250], 5060))]
                    } else {
                        Vec::new()
                    };
                    return self.input(Input::Resolved { conn, addrs });
                }
                let Some(i) =
                    self.pick(c, |i| self.state(i) != State::Closed && !self.connected(i))
                else {
                    return;
                };
                let conn = self.links[i];
                self.input(Input::Connected { conn });
            }
            8 => {
                let Some(i) = self.pick(c, |i| self.state(i) != State::Closed) else {
                    return;
                };
                let reason = if matches!(self.state(i), State::Closing | State::Aborted) {
                    CloseReason::Requested
                } else {
                    [
                        CloseReason::PeerClosed,
                        CloseReason::Error,
                        CloseReason::OutputOverflow,
                    ][c.below(3)]
                };
                let conn = self.links[i];
                self.input(Input::Closed { conn, reason });
            }
            9 => {
                // The driver carries out the closes and aborts it was asked for.
                while let Some(i) = (0..self.links.len())
                    .find(|&i| matches!(self.state(i), State::Closing | State::Aborted))
                {
                    let conn = self.links[i];
                    self.input(Input::Closed {
                        conn,
                        reason: CloseReason::Requested,
                    });
                }
            }
            10 => {
                let advance = match c.below(4) {
                    0 => u64::from(c.byte()),
                    1 => u64::from(c.u16()),
                    _ => match self.lb.poll_timeout() {
                        Some(at) => at.saturating_duration_since(self.now).as_millis() as u64,
                        None => 0,
                    },
                };
                self.now += Duration::from_millis(advance);
                self.input(Input::Timeout);
            }
            11 => match c.below(4) {
                0 | 1 => {
                    let backend = self.backend_ids[c.below(self.backend_ids.len())];
                    let change = if c.byte() & 1 == 0 {
                        BackendChange::Drain(backend)
                    } else {
                        BackendChange::Resume(backend)
                    };
                    self.input(Input::Backends(change));
                }
                _ => {
                    let (flags, variant) = (c.byte(), c.byte());
                    let config = fuzz_config(flags, variant, self.small);
                    self.tag_header = config
                        .config()
                        .tag_header
                        .is_some()
                        .then_some(&b"X-LB-Tag"[..]);
                    self.input(Input::Reload(Box::new(config)));
                    self.backend_ids = self.lb.backends().map(|(id, _)| id).collect();
                }
            },
            _ => {
                // Inputs for a dead id: the driver raced the core.
                let Some(i) = self.pick(c, |i| self.state(i) == State::Closed) else {
                    return;
                };
                let conn = self.links[i];
                // `input` checks it is counted as stale.
                let input = if c.byte() & 1 == 0 {
                    Input::Received {
                        conn,
                        bytes: BytesMut::from(&b"OPTIONS sip:x SIP/2.0\r\n"[..]),
                    }
                } else {
                    Input::Closed {
                        conn,
                        reason: CloseReason::PeerClosed,
                    }
                };
                self.input(input);
            }
        }
    }

    /// Hands `payload` to link `i` in up to three reads.
    fn feed(&mut self, c: &mut Choices<'_>, i: usize, payload: Vec<u8>) {
        let conn = self.links[i];
        self.from_frontend = match self.role(i) {
            Role::Frontend { peer, .. } => Some(peer),
            Role::Backend { .. } | Role::Resolving => None,
        };
        self.feeding = Some(i);
        let mut rest = &payload[..];
        for n in 0..3 {
            // The third read takes the rest.
            let cut = if n == 2 {
                rest.len()
            } else {
                usize::from(c.u16()) % (rest.len() + 1)
            };
            let (now, later) = rest.split_at(cut);
            if !now.is_empty() {
                self.input(Input::Received {
                    conn,
                    bytes: BytesMut::from(now),
                });
            }
            rest = later;
            if self.state(i) == State::Closed {
                break;
            }
        }
        self.from_frontend = None;
        self.feeding = None;
        self.answering = None;
    }

    /// Wraps a payload in an envelope from a backend: next hop none, a frontend's address or
    /// another, sometimes a load report.
    fn wrap(&self, c: &mut Choices<'_>, payload: &[u8]) -> Vec<u8> {
        let addr = match c.below(3) {
            0 => None,
            1 => (0..self.links.len())
                .rev()
                .find_map(|i| match self.role(i) {
                    Role::Frontend { peer, .. } => Some(peer),
                    Role::Backend { .. } | Role::Resolving => None,
                }),
            _ => Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 1, 0, c.byte() % 4)),
                5060,
            )),
        };
        let flags = c.byte();
        let envelope = Envelope {
            addr,
            transport: Transport::Tcp,
            load: (flags & 1 != 0).then_some(u32::from(flags >> 1)),
        };
        let mut out = BytesMut::new();
        envelope::encode(&mut out, &envelope, payload);
        out.to_vec()
    }

    /// Bytes for link `i` to send: raw, a templated request, an answer to or a replay of a
    /// message the core sent; sometimes mutated.
    fn payload(&mut self, c: &mut Choices<'_>, i: usize) -> Vec<u8> {
        let mut bytes = match c.below(8) {
            0 => {
                let n = usize::from(c.u16()) % 1500;
                c.take(n).to_vec()
            }
            1..=3 => self.request(c, i),
            4..=6 => {
                let here: Vec<usize> = (0..self.recent.len())
                    .filter(|&r| self.recent[r].link == i)
                    .collect();
                let pick = if here.is_empty() {
                    (!self.recent.is_empty()).then(|| c.below(self.recent.len()))
                } else {
                    Some(here[c.below(here.len())])
                };
                match pick {
                    Some(r) => {
                        let sent = &self.recent[r];
                        self.answering = sent.origin.filter(|_| self.is_backend(i));
                        answer(c, &sent.message)
                    }
                    None => self.request(c, i),
                }
            }
            _ => match self.recent.len() {
                0 => self.request(c, i),
                n => self.recent[c.below(n)].message.to_vec(),
            },
        };
        if c.byte() & 7 == 0 && !bytes.is_empty() {
            // A mutated answer may name any connection, or none.
            self.answering = None;
            for _ in 0..=c.below(4) {
                let at = usize::from(c.u16()) % bytes.len().max(1);
                match c.below(4) {
                    0 => {
                        bytes.remove(at.min(bytes.len().saturating_sub(1)));
                    }
                    1 => {
                        bytes.splice(at..at, *b"\r\n");
                    }
                    _ => {
                        if let Some(b) = bytes.get_mut(at) {
                            *b = c.byte();
                        }
                    }
                }
                if bytes.is_empty() {
                    break;
                }
            }
        }
        bytes
    }

    /// A request in the style of the side sending it: a frontend's new call or in-dialog
    /// request (with the balancer's Route entry and tag when one is known for the call), or a
    /// backend's request towards a frontend.
    fn request(&self, c: &mut Choices<'_>, i: usize) -> Vec<u8> {
        let from_backend = self.is_backend(i);
        let method = [
            "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "INFO", "invite",
        ][c.below(8)];
        let call = c.below(6);
        let call_id = format!("call{call}@fuzz");
        let flags = c.byte();
        let tag = self
            .tags
            .iter()
            .rev()
            .find(|(id, _)| id[..] == *call_id.as_bytes() || flags & 64 != 0)
            .map(|(_, tag)| String::from_utf8_lossy(tag).into_owned());
        let host = if from_backend {
            let f = c.byte() % 4;
            format!("10.1.0.{f}:{}", 5060 + u16::from(c.byte() % 3))
        } else {
            "fuzz.invalid".to_owned()
        };
        let mut m = format!("{method} sip:user@{host};transport=tcp SIP/2.0\r\n");
        let via_host = match (from_backend, c.below(3)) {
            (true, _) => "10.0.0.1:5060".to_owned(),
            (false, 0) => format!("10.1.0.{}:5060", c.byte() % 4),
            (false, 1) => format!("proxy{}.fuzz.invalid", c.byte() % 3),
            (false, _) => "10.1.0.1".to_owned(),
        };
        let rport = [";rport", "", ";rport=5060"][c.below(3)];
        m.push_str(&format!(
            "Via: SIP/2.0/TCP {via_host};branch=z9hG4bK{}{rport}\r\n",
            c.u16()
        ));
        if flags & 1 != 0 {
            let tag = tag
                .clone()
                .unwrap_or_else(|| "1.1.0123456789abcdef".to_owned());
            m.push_str(&format!(
                "Route: <sip:{ADVERTISE};transport=tcp;lr;lb={tag}>"
            ));
            if flags & 2 != 0 {
                m.push_str(&format!(", <sip:{host};transport=tcp;lr>"));
            }
            m.push_str("\r\n");
        }
        if flags & 4 != 0 {
            if let Some(tag) = &tag {
                m.push_str(&format!("X-LB-Tag: {tag}\r\n"));
            }
        }
        m.push_str("Max-Forwards: 70\r\nFrom: <sip:a@fuzz.invalid>;tag=f1\r\n");
        m.push_str("To: <sip:b@fuzz.invalid>");
        if flags & 8 != 0 {
            m.push_str(";tag=t1");
        }
        // Mismatched now and then, which the balancer must refuse.
        let cseq_method = if flags & 16 != 0 { "INVITE" } else { method };
        let body = if flags & 32 != 0 { "v=0\r\n" } else { "" };
        m.push_str(&format!(
            "\r\nCall-ID: {call_id}\r\nCSeq: {} {cseq_method}\r\nContent-Length: {}\r\n\r\n{body}",
            c.byte() % 4 + 1,
            body.len()
        ));
        m.into_bytes()
    }

    /// Performs every output, each checked against the contract, and what the harness knows
    /// of where messages must go.
    fn drain(&mut self) {
        while let Some(output) = self.lb.poll_output() {
            if self.trace {
                eprintln!("  out: {output:?}");
            }
            let messages = match self.contract.output(&output) {
                Ok(messages) => messages,
                Err(v) => panic!("{v}"),
            };
            match output {
                Output::Send { conn, .. } => {
                    let Some(i) = self.links.iter().rposition(|l| *l == conn) else {
                        panic!("Send to {conn}, which the harness never saw opened");
                    };
                    let role = self.role(i);
                    for Unframed { envelope, message } in messages {
                        if let (Some(e), Some(peer)) = (envelope, self.from_frontend) {
                            assert_eq!(
                                e.addr,
                                Some(peer),
                                "an envelope to a backend does not carry the frontend's address"
                            );
                        }
                        self.check_return_path(i, role, &message);
                        self.observe(i, role, message);
                    }
                }
                Output::Connect { conn, .. } => self.links.push(conn),
                Output::Resolve { conn, .. } => self.resolving.push(conn),
                Output::Dial { conn, .. } => {
                    self.resolving.retain(|r| *r != conn);
                    self.links.push(conn);
                }
                Output::Close { .. } | Output::Abort { .. } | Output::Event(_) => {}
            }
        }
    }

    /// A backend's response to a request that came on frontend link `origin` goes back on that
    /// connection while it is open, and on no other (RFC 3261 §18.2.2; issue 15): not on
    /// another connection from the same address or with the same Via name.
    fn check_return_path(&self, i: usize, role: Role, message: &Bytes) {
        let (Some(origin), Role::Frontend { .. }) = (self.answering, role) else {
            return;
        };
        if !message.starts_with(b"SIP/2.0 ") || self.state(origin) != State::Open {
            return;
        }
        assert_eq!(
            self.links[i],
            self.links[origin],
            "a response to a request from {} was delivered on {}: {:?}",
            self.links[origin],
            self.links[i],
            String::from_utf8_lossy(message)
        );
    }

    /// A message the core sent on link `i`: what reaches a backend must parse; keep it to
    /// answer or replay, and learn the tags it carries.
    fn observe(&mut self, i: usize, role: Role, message: Bytes) {
        let parsed = lb_core::fuzzing::parse(message.clone(), self.tag_header, 1024);
        // The balancer's own 400 or 505 copies the lines of a request it could not parse. The
        // parser checks only the top Via and Route, so removing the balancer's own entry may
        // expose a bad one below it (or none): the next hop's business, not a rewriting fault.
        let own_reject =
            message.starts_with(b"SIP/2.0 400 ") || message.starts_with(b"SIP/2.0 505 ");
        if let (Role::Backend { .. }, false) = (role, own_reject) {
            if let Err(e) = &parsed {
                if matches!(
                    e,
                    MalformedFault::BadVia | MalformedFault::MissingVia | MalformedFault::BadRoute
                ) {
                    return;
                }
                panic!(
                    "the core sent a backend a message that does not parse ({e}): {:?}",
                    String::from_utf8_lossy(&message)
                );
            }
        }
        let Ok(call_id) = parsed else {
            return;
        };
        if let Some(at) = memchr::memmem::find(&message, b";lb=") {
            let value = &message[at + 4..];
            let len = value
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'.'))
                .unwrap_or(value.len());
            if self.tags.len() >= 8 {
                self.tags.remove(0);
            }
            self.tags
                .push((call_id, message.slice(at + 4..at + 4 + len)));
        }
        if self.recent.len() >= 16 {
            self.recent.remove(0);
        }
        // A request forwarded to a backend while a frontend's bytes were fed came from it.
        let origin = self
            .feeding
            .filter(|&f| self.is_frontend(f) && self.is_backend(i))
            .filter(|_| !message.starts_with(b"SIP/2.0 "));
        self.recent.push(Sent {
            link: i,
            message,
            origin,
        });
    }

    /// Invariants that hold between any two inputs.
    fn check(&mut self) {
        let stats = self.lb.stats();
        let now = counters(stats);
        for (i, (before, after)) in self.counters.iter().zip(&now).enumerate() {
            assert!(after >= before, "counter {i} of Stats went down");
        }
        self.counters = now;
        assert!(
            stats.table_len <= self.capacity,
            "new-call table holds {} > capacity {}",
            stats.table_len,
            self.capacity
        );
        assert!(stats.table_len <= stats.table_len_max);
        let frontends = (0..self.links.len())
            .filter(|&i| {
                self.state(i) != State::Closed
                    && matches!(self.role(i), Role::Frontend { dialled: false, .. })
            })
            .count() as u64;
        assert_eq!(stats.frontends_open, frontends, "frontends_open gauge");
        let connected = (0..self.links.len())
            .filter(|&i| self.state(i) != State::Closed && self.connected(i) && self.is_backend(i))
            .count() as u64;
        assert!(
            stats.backends_up <= connected,
            "{} backends up on {connected} connections",
            stats.backends_up
        );
    }
}
