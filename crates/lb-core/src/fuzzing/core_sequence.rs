//! The whole core under fuzz: a `Balancer` driven through its public API by the inputs a fuzz
//! input spells out, every output checked against the contract (see [`core_sequence`]).

use super::outputs::*;
use super::*;

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
        hop_by_unique_ip: true,
        // Off: the model's backends leave INVITEs unanswered at will and it tracks "up" by
        // connection and probes alone (passive health has its own tests).
        passive: crate::config::PassiveHealth {
            unanswered_timeout: Duration::ZERO,
            ..crate::config::PassiveHealth::default()
        },
    };
    match config.validate() {
        Ok(valid) => valid,
        Err(e) => panic!("the fuzz configuration is invalid: {e}"),
    }
}

/// A connection as the harness, playing the driver, sees it.
pub(super) struct Link {
    id: ConnId,
    role: Role,
    /// Backends: `Input::Connected` was reported.
    connected: bool,
    /// The core asked for `Output::Close`.
    closing: bool,
    /// `Input::Closed` was reported: the id is dead.
    closed: bool,
    /// A frontend the core dialled (`Output::Dial`), not one the harness accepted.
    dialled: bool,
}

/// A message the core sent, kept to answer or replay it.
pub(super) struct Sent {
    link: usize,
    message: Bytes,
}

pub(super) struct Harness {
    lb: Balancer,
    now: Instant,
    links: Vec<Link>,
    listener: crate::ids::ListenerId,
    /// Mode of each backend address in the configuration last given.
    modes: HashMap<SocketAddr, BackendMode>,
    /// Where each backend id connects, once seen: it must never change.
    backend_addrs: HashMap<BackendId, SocketAddr>,
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
    /// `SIPLB_FUZZ_TRACE` set: print every input and output (to read a crash).
    trace: bool,
}

/// Runs one balancer on inputs decoded from `data`: accepts, bytes from frontends and backends
/// (raw, templated calls, answers to and replays of what the core sent, mutated), connects,
/// closes, timeouts with time advancing, drain/resume and reloads. After every input it
/// asserts, playing the driver: every `Send` and `Close` names a connection that is open and not
/// already asked to close; backends get bytes only once connected; a `Connect` gets a fresh id
/// and the backend's configured address; every `Send` carries whole frames (SIP messages, CRLF
/// pongs, or envelopes each holding one message) and what reaches a backend parses; the
/// new-call table stays within its capacity; the open-frontend gauge matches and no counter
/// goes down; after a `Timeout` the next deadline is in the future; inputs on dead ids count as
/// stale.
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
        let modes = config
            .config()
            .backends
            .iter()
            .map(|b| (b.addr, b.mode))
            .collect();
        // The harness plays the driver, which owns the clock; time then moves only as the
        // input says.
        #[allow(clippy::disallowed_methods, reason = "the driver's clock, read once")]
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
            listener,
            modes,
            backend_addrs: HashMap::new(),
            backend_ids,
            capacity,
            small,
            tag_header,
            recent: Vec::new(),
            resolving: Vec::new(),
            tags: Vec::new(),
            from_frontend: None,
            counters: Vec::new(),
            trace: std::env::var_os("SIPLB_FUZZ_TRACE").is_some(),
        }
    }

    fn input(&mut self, input: Input) {
        if self.trace {
            eprintln!("{:?} in: {input:?}", self.now);
        }
        self.lb.handle_input(self.now, input);
        self.drain();
    }

    /// Picks one link satisfying `keep`.
    fn pick(&self, c: &mut Choices<'_>, keep: impl Fn(&Link) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.links.len())
            .filter(|&i| keep(&self.links[i]))
            .collect();
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
                assert!(
                    self.links.iter().all(|l| l.closed || l.id != id),
                    "accept returned {id:?}, which is open"
                );
                self.links.push(Link {
                    id,
                    role: Role::Frontend { peer },
                    connected: true,
                    closing: false,
                    closed: false,
                    dialled: false,
                });
                self.drain();
            }
            1..=3 => {
                let Some(i) =
                    self.pick(c, |l| !l.closed && matches!(l.role, Role::Frontend { .. }))
                else {
                    return;
                };
                let payload = self.payload(c, i);
                self.feed(c, i, payload);
            }
            4..=6 => {
                let Some(i) = self.pick(c, |l| {
                    !l.closed && l.connected && matches!(l.role, Role::Backend { .. })
                }) else {
                    return;
                };
                let mut payload = self.payload(c, i);
                if let Role::Backend { envelope: true, .. } = self.links[i].role {
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
                let Some(i) = self.pick(c, |l| !l.closed && !l.connected) else {
                    return;
                };
                self.links[i].connected = true;
                let conn = self.links[i].id;
                self.input(Input::Connected { conn });
            }
            8 => {
                let Some(i) = self.pick(c, |l| !l.closed) else {
                    return;
                };
                let reason = if self.links[i].closing {
                    CloseReason::Requested
                } else {
                    [
                        CloseReason::PeerClosed,
                        CloseReason::Error,
                        CloseReason::OutputOverflow,
                    ][c.below(3)]
                };
                self.links[i].closed = true;
                let conn = self.links[i].id;
                self.input(Input::Closed { conn, reason });
            }
            9 => {
                // The driver carries out the closes it was asked for.
                while let Some(i) = self.links.iter().position(|l| l.closing && !l.closed) {
                    self.links[i].closed = true;
                    let conn = self.links[i].id;
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
                if let Some(next) = self.lb.poll_timeout() {
                    assert!(next > self.now, "a deadline left due after Timeout");
                }
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
                    for b in &config.config().backends {
                        self.modes.insert(b.addr, b.mode);
                    }
                    self.input(Input::Reload(Box::new(config)));
                    self.backend_ids = self.lb.backends().map(|(id, _)| id).collect();
                }
            },
            _ => {
                // Inputs for a dead id: the driver raced the core.
                let Some(i) = self.pick(c, |l| l.closed) else {
                    return;
                };
                let conn = self.links[i].id;
                let before = self.lb.stats().stale_inputs;
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
                assert_eq!(
                    self.lb.stats().stale_inputs,
                    before + 1,
                    "an input for dead {conn:?} was not counted stale"
                );
            }
        }
    }

    /// Hands `payload` to link `i` in up to three reads.
    fn feed(&mut self, c: &mut Choices<'_>, i: usize, payload: Vec<u8>) {
        let conn = self.links[i].id;
        self.from_frontend = match self.links[i].role {
            Role::Frontend { peer } => Some(peer),
            Role::Backend { .. } => None,
        };
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
            if self.links[i].closed {
                break;
            }
        }
        self.from_frontend = None;
    }

    /// Wraps a payload in an envelope from a backend: next hop none, a frontend's address or
    /// another, sometimes a load report.
    fn wrap(&self, c: &mut Choices<'_>, payload: &[u8]) -> Vec<u8> {
        let addr = match c.below(3) {
            0 => None,
            1 => self.links.iter().rev().find_map(|l| match l.role {
                Role::Frontend { peer } => Some(peer),
                Role::Backend { .. } => None,
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
                    Some(r) => answer(c, &self.recent[r].message),
                    None => self.request(c, i),
                }
            }
            _ => match self.recent.len() {
                0 => self.request(c, i),
                n => self.recent[c.below(n)].message.to_vec(),
            },
        };
        if c.byte() & 7 == 0 && !bytes.is_empty() {
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
        let from_backend = matches!(self.links[i].role, Role::Backend { .. });
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

    /// Performs every output, asserting it makes sense for the connections as they stand.
    fn drain(&mut self) {
        while let Some(output) = self.lb.poll_output() {
            if self.trace {
                eprintln!("  out: {output:?}");
            }
            match output {
                Output::Send { conn, bytes } => {
                    let Some(i) = self.links.iter().rposition(|l| l.id == conn) else {
                        panic!("Send to {conn:?}, never opened");
                    };
                    let link = &self.links[i];
                    assert!(!link.closed, "Send to {conn:?} after its Closed");
                    assert!(!link.closing, "Send to {conn:?} after Close");
                    assert!(link.connected, "Send to {conn:?} before Connected");
                    assert!(!bytes.is_empty(), "empty Send to {conn:?}");
                    let role = link.role;
                    let messages = match unframe(role, &bytes) {
                        Ok(messages) => messages,
                        Err(fault) => panic!(
                            "the core sent {conn:?} {fault}: {:?}",
                            String::from_utf8_lossy(&bytes)
                        ),
                    };
                    for (envelope, message) in messages {
                        if let (Some(e), Some(peer)) = (envelope, self.from_frontend) {
                            assert_eq!(
                                e.addr,
                                Some(peer),
                                "an envelope to a backend does not carry the frontend's address"
                            );
                        }
                        self.observe(i, role, message);
                    }
                }
                Output::Connect { conn, backend, to } => {
                    assert!(
                        self.links.iter().all(|l| l.closed || l.id != conn),
                        "Connect with {conn:?}, which is open"
                    );
                    let known = *self.backend_addrs.entry(backend).or_insert(to);
                    assert_eq!(known, to, "{backend:?} moved");
                    let Some(mode) = self.modes.get(&to) else {
                        panic!("Connect to {to}, not a configured backend");
                    };
                    self.links.push(Link {
                        id: conn,
                        role: Role::Backend {
                            backend,
                            envelope: *mode == BackendMode::Envelope,
                        },
                        connected: false,
                        closing: false,
                        closed: false,
                        dialled: false,
                    });
                }
                Output::Resolve { conn, .. } => {
                    assert!(
                        self.links.iter().all(|l| l.closed || l.id != conn),
                        "Resolve with {conn:?}, which is open"
                    );
                    self.resolving.push(conn);
                }
                Output::Dial { conn, to } => {
                    assert!(
                        self.links.iter().all(|l| l.closed || l.id != conn),
                        "Dial with {conn:?}, which is open"
                    );
                    self.resolving.retain(|r| *r != conn);
                    self.links.push(Link {
                        id: conn,
                        role: Role::Frontend { peer: to },
                        connected: false,
                        closing: false,
                        closed: false,
                        dialled: true,
                    });
                }
                Output::Close { conn } => {
                    let Some(link) = self.links.iter_mut().rfind(|l| l.id == conn) else {
                        panic!("Close of {conn:?}, never opened");
                    };
                    assert!(!link.closed, "Close of {conn:?} after its Closed");
                    assert!(!link.closing, "Close of {conn:?} twice");
                    link.closing = true;
                }
                Output::Event(Event::FrontendRefused(conn)) => {
                    let link = self.links.iter().rfind(|l| l.id == conn);
                    assert!(
                        matches!(link.map(|l| l.role), Some(Role::Frontend { .. })),
                        "refused {conn:?} is no frontend"
                    );
                }
                Output::Event(_) => {}
            }
        }
    }

    /// A message the core sent on link `i`: what reaches a backend must parse; keep it to
    /// answer or replay, and learn the tags it carries.
    fn observe(&mut self, i: usize, role: Role, message: Bytes) {
        let parsed = SipMessage::parse(message.clone(), self.tag_header, 1024);
        // The balancer's own 400 or 505 copies the lines of a request it could not parse. The
        // parser checks only the top Via and Route, so removing the balancer's own entry may
        // expose a bad one below it (or none): the next hop's business, not a rewriting fault.
        let own_reject =
            message.starts_with(b"SIP/2.0 400 ") || message.starts_with(b"SIP/2.0 505 ");
        if let (Role::Backend { .. }, false) = (role, own_reject) {
            if let Err(e) = parsed.as_ref().map(|_| ()).map_err(|e| e.reason) {
                if matches!(e, "Bad Via" | "Missing Via" | "Bad Route") {
                    return;
                }
                panic!(
                    "the core sent a backend a message that does not parse ({e}): {:?}",
                    String::from_utf8_lossy(&message)
                );
            }
        }
        let Ok(m) = parsed else {
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
            self.tags.push((
                Bytes::copy_from_slice(m.call_id()),
                message.slice(at + 4..at + 4 + len),
            ));
        }
        if self.recent.len() >= 16 {
            self.recent.remove(0);
        }
        self.recent.push(Sent { link: i, message });
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
        let frontends = self
            .links
            .iter()
            .filter(|l| !l.closed && !l.dialled && matches!(l.role, Role::Frontend { .. }))
            .count() as u64;
        assert_eq!(stats.frontends_open, frontends, "frontends_open gauge");
        let connected = self
            .links
            .iter()
            .filter(|l| !l.closed && l.connected && matches!(l.role, Role::Backend { .. }))
            .count() as u64;
        assert!(
            stats.backends_up <= connected,
            "{} backends up on {connected} connections",
            stats.backends_up
        );
    }
}
