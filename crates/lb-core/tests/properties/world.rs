//! The world around the balancer: frontends, backends and calls as the model knows them, the
//! driver that feeds the balancer and checks each output, and the invariants after every step.
//!
//! The steps are in [`calls`] (on calls), [`farm`] (time, backends, the table) and [`stray`]
//! (messages outside any call).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_core::envelope::{self, Envelope, EnvelopeDecoder, Transport};
use lb_core::{
    Algorithm, BackendConfig, BackendId, BackendMode, Balancer, CloseReason, Config, ConnId, Event,
    Input, Limits, Output, Stats, TagKey,
};
use lb_testkit::Contract;

use crate::script::{Script, Step};
use crate::wire::{fe_peer, text};
use crate::{Options, FRONTENDS, LB, RINGING_MAX, STRAY_PEER, TAG_HEADER, WINDOW};

mod calls;
mod farm;
mod stray;

/// A small deterministic generator for the driver's own choices (how bytes are split into
/// reads, whether an envelope names the hop), seeded by the script.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct BackendSlot {
    /// The connection the core asked for last (established or being attempted).
    conn: Option<ConnId>,
    up: bool,
    draining: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Calling,
    Final { at: Instant, ok: bool },
}

#[derive(Clone, Debug)]
struct Call {
    fe: usize,
    call_id: String,
    /// The backend the new-call table names: the one that took the call, or the backup that
    /// took it over while that one was down.
    home: usize,
    /// The INVITE as the caller sends it, for retransmissions.
    invite: String,
    started: Instant,
    /// The INVITE copies backends received (a retransmission may reach a backup).
    copies: Vec<(usize, String)>,
    phase: Phase,
    /// The Record-Route the caller got in the 200 and the backend its tag names.
    dialog: Option<(String, usize)>,
    cseq: u32,
    /// A backend's BYE as the caller received it, and the backend that sent it.
    bye: Option<(String, usize)>,
}

/// What the balancer did with one message.
enum Fate {
    Backend(usize, String),
    Frontend(ConnId, String),
    Nothing,
}

struct World {
    lb: Balancer,
    /// The driver's view of every connection, checking each output.
    contract: Contract,
    now: Instant,
    rng: SplitMix,
    options: Options,
    tag_header: bool,
    addrs: Vec<SocketAddr>,
    modes: Vec<BackendMode>,
    backup_of: Vec<Option<usize>>,
    be: Vec<BackendSlot>,
    fes: Vec<ConnId>,
    stray: ConnId,
    /// `None`: never invited; `Some(None)`: refused with 503.
    calls: Vec<Option<Option<Call>>>,
    /// Per call: the backups chosen so far, with the set of backends up at the time.
    backups: Vec<Vec<(u32, usize)>>,
    /// Connections that have ended, for stale inputs.
    dead: Vec<ConnId>,
    strays: u32,
    sends: u64,
}

/// The first Via line, in either form.
fn config(script: &Script, options: Options) -> Config {
    let n = usize::from(script.backends.clamp(2, 4));
    let mut backends: Vec<BackendConfig> = (0..n)
        .map(|i| BackendConfig {
            mode: if script.envelope & (1 << i) != 0 {
                BackendMode::Envelope
            } else {
                BackendMode::Plain
            },
            weight: [1, 2, 3, 1][i],
            ..BackendConfig::plain(format!("198.51.100.{}:5060", i + 1).parse().unwrap())
        })
        .collect();
    if script.backup {
        backends[0].backup = Some(backends[n - 1].addr);
    }
    Config {
        listeners: vec![LB.parse().unwrap()],
        backends,
        algorithm: match script.algorithm % 3 {
            0 => Algorithm::RoundRobin,
            1 => Algorithm::Weighted,
            _ => Algorithm::LeastLoaded,
        },
        window: WINDOW,
        ringing_max: RINGING_MAX,
        tag_header: script.tag_header.then(|| TAG_HEADER.to_string()),
        tag_keys: vec![TagKey {
            id: 1,
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        }],
        limits: Limits {
            table_capacity: options.table_capacity,
            ..Limits::default()
        },
        // The scripts model routing, not idle connections: frontends here may stay silent for
        // days of virtual time. Idle closing has its own scenario tests.
        idle_timeout: std::time::Duration::from_secs(365 * 24 * 3600),
        // Likewise a backend connect the model leaves unanswered may wait for days of virtual
        // time: given up every few seconds, it would be retried (and given up) hundreds of
        // thousands of times in one `Advance`. Giving up has its own scenario tests
        // (`tests/give_up.rs`); an `Abort` here is still handled and checked.
        connect_timeout: std::time::Duration::from_secs(365 * 24 * 3600),
        // The model's backends leave INVITEs unanswered at will, and it judges "up" by
        // connection and probes; passive health has its own tests.
        passive: lb_core::PassiveHealth {
            unanswered_timeout: std::time::Duration::ZERO,
            ..lb_core::PassiveHealth::default()
        },
        ..Config::default()
    }
}

/// Runs a script; returns the final counters and how many times a rendezvous backup was
/// chosen, for the coverage test.
pub(crate) fn run(script: &Script, options: Options) -> Result<(Stats, usize), String> {
    let mut w = World::new(script, options)?;
    for (i, step) in script.steps.iter().enumerate() {
        w.step(step)
            .and_then(|()| w.invariants())
            .map_err(|e| format!("step {i} {step:?}: {e}"))?;
        if options.early_timeouts {
            w.early_timeout()
                .map_err(|e| format!("early timeout after step {i} {step:?}: {e}"))?;
        }
    }
    if options.fill_table {
        w.fill_table()
            .map_err(|e| format!("filling the table: {e}"))?;
    }
    // Once every rule has run out, the table is empty.
    w.advance(RINGING_MAX + WINDOW + Duration::from_secs(1))
        .and_then(|()| w.invariants())
        .map_err(|e| format!("final advance: {e}"))?;
    let len = w.lb.stats().table_len;
    ensure!(
        len == 0,
        "{len} table entries left after every lifetime ran out"
    );
    Ok((w.lb.stats().clone(), w.backups.iter().map(Vec::len).sum()))
}

impl World {
    fn new(script: &Script, options: Options) -> Result<World, String> {
        let config = config(script, options);
        let n = config.backends.len();
        let addrs: Vec<SocketAddr> = config.backends.iter().map(|b| b.addr).collect();
        let modes = config.backends.iter().map(|b| b.mode).collect();
        let backup_of = config
            .backends
            .iter()
            .map(|b| b.backup.and_then(|a| addrs.iter().position(|x| *x == a)))
            .collect();
        let now = Instant::now();
        let valid = config.validate().map_err(|e| e.to_string())?;
        let mut contract = Contract::new(&valid);
        let mut lb = Balancer::new(valid, script.seed, now);
        let listener = lb.listeners().next().unwrap().0;
        let mut fes = Vec::new();
        for f in 0..FRONTENDS {
            let conn = lb.accept(now, listener, fe_peer(f));
            contract.accepted(conn, fe_peer(f))?;
            fes.push(conn);
        }
        let stray = lb.accept(now, listener, STRAY_PEER.parse().unwrap());
        contract.accepted(stray, STRAY_PEER.parse().unwrap())?;
        let mut w = World {
            lb,
            contract,
            now,
            rng: SplitMix(script.seed ^ 0x5EED),
            options,
            tag_header: script.tag_header,
            addrs,
            modes,
            backup_of,
            be: vec![BackendSlot::default(); n],
            fes,
            stray,
            calls: Vec::new(),
            backups: Vec::new(),
            dead: Vec::new(),
            strays: 0,
            sends: 0,
        };
        let outs = w.collect()?;
        ensure!(outs.sends.is_empty(), "sends at start: {:?}", outs.sends);
        for j in 0..n {
            ensure!(
                w.be[j].conn.is_some(),
                "no Connect for backend {j} at start"
            );
            w.connected(j)?;
        }
        w.invariants()?;
        Ok(w)
    }

    fn n(&self) -> usize {
        self.be.len()
    }

    fn up_mask(&self) -> u32 {
        (0..self.n())
            .filter(|j| self.be[*j].up)
            .fold(0, |m, j| m | 1 << j)
    }

    fn id(&self, j: usize) -> BackendId {
        self.lb.backends().nth(j).unwrap().0
    }

    fn backend_of(&self, conn: ConnId) -> Option<usize> {
        self.be.iter().position(|b| b.conn == Some(conn))
    }

    fn input(&mut self, input: Input) {
        self.contract.input(&input);
        self.lb.handle_input(self.now, input);
    }

    /// Drains the outputs like a driver: records Connects, performs Closes (reporting them
    /// back), counts Sends.
    fn collect(&mut self) -> Result<Outs, String> {
        let mut outs = Outs::default();
        let mut closes = Vec::new();
        let mut dials: Vec<ConnId> = Vec::new();
        let mut aborts: Vec<ConnId> = Vec::new();
        while let Some(o) = self.lb.poll_output() {
            self.contract.output(&o)?;
            match o {
                Output::Send { conn, bytes } => {
                    self.sends += 1;
                    outs.sends.push((conn, bytes));
                }
                Output::Connect { conn, backend, to } => {
                    let j = backend.index();
                    ensure!(j < self.n(), "Connect for unknown backend {j}");
                    ensure!(to == self.addrs[j], "Connect for backend {j} to {to}");
                    ensure!(
                        self.be[j].conn.is_none(),
                        "Connect for backend {j} while {:?} is still open",
                        self.be[j].conn
                    );
                    self.be[j].conn = Some(conn);
                    self.be[j].up = false;
                }
                Output::Resolve { host, .. } => {
                    return Err(format!(
                        "resolving {host:?}: the model names hops by address"
                    ));
                }
                Output::Dial { conn, to } => {
                    ensure!(
                        to.ip().to_string() == "192.0.2.77",
                        "dialled {to}, which no message named as a next hop"
                    );
                    dials.push(conn);
                }
                Output::Close { conn } => closes.push(conn),
                Output::Abort { conn } => aborts.push(conn),
                Output::Event(e) => outs.events.push(e),
            }
        }
        // The model performs every Close at once, so only a backend connect left unanswered
        // for the connect timeout is ever given up; the driver reports it failed.
        for conn in aborts {
            let Some(j) = self.backend_of(conn).filter(|j| !self.be[*j].up) else {
                return Err(format!("the core aborted {conn:?}, no backend connect"));
            };
            self.be[j].conn = None;
            self.input(Input::Closed {
                conn,
                reason: CloseReason::Error,
            });
            self.dead.push(conn);
            let more = self.collect()?;
            outs.sends.extend(more.sends);
            outs.events.extend(more.events);
        }
        // The model's network reaches no host but its own peers: every dial-out is refused.
        for conn in dials {
            self.input(Input::Closed {
                conn,
                reason: CloseReason::Error,
            });
            let more = self.collect()?;
            outs.sends.extend(more.sends);
            outs.events.extend(more.events);
        }
        for conn in closes {
            ensure!(
                conn == self.stray,
                "the core closed {conn:?}, which only ever carried valid SIP"
            );
            self.input(Input::Closed {
                conn,
                reason: CloseReason::Requested,
            });
            self.dead.push(conn);
            let listener = self.lb.listeners().next().unwrap().0;
            self.stray = self
                .lb
                .accept(self.now, listener, STRAY_PEER.parse().unwrap());
            self.contract
                .accepted(self.stray, STRAY_PEER.parse().unwrap())?;
            let more = self.collect()?;
            outs.sends.extend(more.sends);
            outs.events.extend(more.events);
        }
        Ok(outs)
    }

    fn connected(&mut self, j: usize) -> Result<(), String> {
        let conn = self.be[j].conn.unwrap();
        self.input(Input::Connected { conn });
        self.be[j].up = true;
        let outs = self.collect()?;
        ensure!(outs.sends.is_empty(), "sends on connect: {:?}", outs.sends);
        ensure!(
            outs.events.contains(&Event::BackendUp(self.id(j))),
            "no BackendUp({j}): {:?}",
            outs.events
        );
        Ok(())
    }

    /// Feeds bytes as the driver would read them: in one to three pieces. Nothing may come out
    /// before the last piece completes the message.
    fn feed(&mut self, conn: ConnId, bytes: &[u8]) -> Result<Outs, String> {
        let mut cuts = Vec::new();
        if bytes.len() > 2 {
            for _ in 0..self.rng.below(3) {
                cuts.push(1 + self.rng.below(bytes.len() as u64 - 1) as usize);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut start = 0;
        for cut in cuts {
            self.input(Input::Received {
                conn,
                bytes: BytesMut::from(&bytes[start..cut]),
            });
            start = cut;
            let early = self.collect()?;
            ensure!(
                early.sends.is_empty(),
                "output before the message was complete: {:?}",
                early.sends
            );
        }
        self.input(Input::Received {
            conn,
            bytes: BytesMut::from(&bytes[start..]),
        });
        self.collect()
    }

    /// A backend sends `message`; an envelope backend names the hop `hop` or, at random,
    /// leaves it to the balancer.
    fn backend_sends(
        &mut self,
        j: usize,
        message: &str,
        hop: Option<SocketAddr>,
    ) -> Result<Outs, String> {
        let conn = self.be[j].conn.unwrap();
        match self.modes[j] {
            BackendMode::Plain => self.feed(conn, message.as_bytes()),
            BackendMode::Envelope => {
                let addr = hop.filter(|_| self.rng.below(2) == 0);
                let load = u32::try_from(self.rng.below(20)).ok();
                let mut out = BytesMut::new();
                let env = Envelope {
                    addr,
                    transport: Transport::Tcp,
                    load,
                };
                envelope::encode(&mut out, &env, message.as_bytes());
                self.feed(conn, &out)
            }
        }
    }

    /// Where the one message went: a backend (unwrapped; an envelope must carry `source`), a
    /// frontend, or nowhere.
    fn fate(&self, outs: &Outs, source: Option<SocketAddr>) -> Result<Fate, String> {
        ensure!(
            outs.sends.len() <= 1,
            "one message in, {} out: {:?}",
            outs.sends.len(),
            outs.sends
        );
        let Some((conn, bytes)) = outs.sends.first() else {
            return Ok(Fate::Nothing);
        };
        let Some(j) = self.backend_of(*conn) else {
            return Ok(Fate::Frontend(*conn, text(bytes)));
        };
        ensure!(self.be[j].up, "sent to backend {j}, which is not up");
        match self.modes[j] {
            BackendMode::Plain => Ok(Fate::Backend(j, text(bytes))),
            BackendMode::Envelope => {
                let mut d = EnvelopeDecoder::default();
                d.push(BytesMut::from(&bytes[..]));
                let (env, payload) = match d.next_envelope(1 << 20) {
                    Some(Ok(x)) => x,
                    other => return Err(format!("not an envelope: {other:?}")),
                };
                ensure!(
                    d.next_envelope(1 << 20).is_none(),
                    "more than one envelope in one send"
                );
                if let Some(peer) = source {
                    ensure!(
                        env.addr == Some(peer),
                        "envelope names {:?}, not the frontend {peer}",
                        env.addr
                    );
                }
                Ok(Fate::Backend(j, text(&payload)))
            }
        }
    }

    /// The routing rule: `got` is where a message naming backend `named` went.
    fn check_route(
        &mut self,
        k: usize,
        named: usize,
        got: Option<usize>,
        what: &str,
    ) -> Result<(), String> {
        let up = self.up_mask();
        if self.be[named].up {
            ensure!(
                got == Some(named),
                "{what} of call {k} names backend {named}, which is up, but went to {got:?}"
            );
            return Ok(());
        }
        if let Some(b) = self.backup_of[named].filter(|b| self.be[*b].up) {
            ensure!(
                got == Some(b),
                "{what} of call {k}: backend {named} is down, its configured backup {b} is up, \
                 but it went to {got:?}"
            );
            return Ok(());
        }
        if up == 0 {
            ensure!(
                got.is_none(),
                "{what} of call {k} went to {got:?} with no backend up"
            );
            return Ok(());
        }
        let Some(g) = got else {
            return Err(format!(
                "{what} of call {k} (backend {named} down) went nowhere though backends \
                 {up:#b} are up"
            ));
        };
        ensure!(
            g != named,
            "{what} of call {k} went to down backend {named}"
        );
        for &(before, chosen) in &self.backups[k] {
            // One preference order per Call-ID: if either choice was available to the other,
            // they agree.
            ensure!(
                !(up & (1 << chosen) != 0 && before & (1 << g) != 0 && chosen != g),
                "{what} of call {k}: backup {g} with backends {up:#b} up, but backup {chosen} \
                 with {before:#b} up before"
            );
        }
        self.backups[k].push((up, g));
        Ok(())
    }

    /// Everything a backend sends for call `k` reaches the call's frontend connection, once.
    fn expect_at_caller(&self, k: usize, outs: &Outs, starts: &str) -> Result<String, String> {
        let call = self.live(k).unwrap();
        match self.fate(outs, None)? {
            Fate::Frontend(conn, msg) => {
                ensure!(
                    conn == self.fes[call.fe],
                    "message for call {k} went to {conn:?}, not its frontend {:?}",
                    self.fes[call.fe]
                );
                ensure!(
                    msg.starts_with(starts),
                    "expected {starts:?} at the caller, got {msg:?}"
                );
                Ok(msg)
            }
            Fate::Backend(j, msg) => Err(format!(
                "message for the caller of call {k} went to backend {j}: {msg:?}"
            )),
            Fate::Nothing => Err(format!(
                "message for the caller of call {k} went nowhere: {:?}",
                outs.events
            )),
        }
    }

    fn live(&self, k: usize) -> Option<&Call> {
        self.calls
            .get(k)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.as_ref())
    }

    fn live_mut(&mut self, k: usize) -> Option<&mut Call> {
        self.calls
            .get_mut(k)
            .and_then(|c| c.as_mut())
            .and_then(|c| c.as_mut())
    }

    /// The `sel`-th (modulo) of the calls a step applies to now.
    fn select(&self, sel: u8, applies: Applies) -> Option<usize> {
        let now = self.now;
        let fits: Vec<usize> = (0..self.calls.len())
            .filter(|k| {
                let Some(c) = self.live(*k) else { return false };
                match applies {
                    Applies::Retransmit => c.phase == Phase::Calling && now - c.started < WINDOW,
                    Applies::Cancel => c.phase == Phase::Calling && now - c.started < RINGING_MAX,
                    Applies::Answer => {
                        c.phase == Phase::Calling && c.copies.iter().any(|(j, _)| self.be[*j].up)
                    }
                    Applies::AckNon2xx => match c.phase {
                        Phase::Final { at, ok: false } => {
                            now - at < WINDOW && now - c.started < RINGING_MAX + WINDOW
                        }
                        _ => false,
                    },
                    Applies::InDialog => c.dialog.is_some(),
                    Applies::BackendBye => {
                        c.bye.is_none()
                            && c.dialog
                                .as_ref()
                                .is_some_and(|(_, t)| self.serving(*k, *t).is_some())
                    }
                    Applies::CallerOk => c.bye.is_some(),
                }
            })
            .collect();
        if fits.is_empty() {
            return None;
        }
        Some(fits[usize::from(sel) % fits.len()])
    }

    // ----- steps -----

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Invite { fe } => self.invite(self.calls.len(), usize::from(fe) % FRONTENDS),
            Step::Retransmit { call } => match self.select(call, Applies::Retransmit) {
                Some(k) => self.retransmit(k),
                None => Ok(()),
            },
            Step::Cancel { call, answer } => match self.select(call, Applies::Cancel) {
                Some(k) => self.cancel(k, answer),
                None => Ok(()),
            },
            Step::Answer { call, who, status } => match self.select(call, Applies::Answer) {
                Some(k) => self.answer(k, usize::from(who), status),
                None => Ok(()),
            },
            Step::AckNon2xx { call } => match self.select(call, Applies::AckNon2xx) {
                Some(k) => self.ack_non_2xx(k),
                None => Ok(()),
            },
            Step::InDialog {
                call,
                method,
                answer,
                route,
            } => match self.select(call, Applies::InDialog) {
                Some(k) => self.in_dialog(k, method, answer, route),
                None => Ok(()),
            },
            Step::BackendBye { call, by_route } => match self.select(call, Applies::BackendBye) {
                Some(k) => self.backend_bye(k, by_route),
                None => Ok(()),
            },
            Step::CallerOk { call } => match self.select(call, Applies::CallerOk) {
                Some(k) => self.caller_ok(k),
                None => Ok(()),
            },
            Step::Advance { ms } => self.advance(Duration::from_millis(u64::from(ms))),
            Step::Kill { backend } => self.kill(usize::from(backend) % self.n()),
            Step::Reconnect { backend } => self.reconnect(usize::from(backend) % self.n()),
            Step::Drain { backend, on } => self.drain(usize::from(backend) % self.n(), on),
            Step::Stray { kind } => self.stray(kind),
        }
    }

    /// What holds after every step.
    fn invariants(&self) -> Result<(), String> {
        let s = self.lb.stats();
        let messages_in = s.frontend_requests_in
            + s.frontend_responses_in
            + s.backend_requests_in
            + s.backend_responses_in
            + s.malformed;
        let outcomes = s.to_backend + s.to_frontend + s.replies() + s.dropped;
        ensure!(
            messages_in == outcomes,
            "{messages_in} messages in (malformed included), {outcomes} forwarded, answered or \
             dropped: {s}"
        );
        let counted = s.to_backend + s.to_frontend + s.replies() + s.keepalives;
        ensure!(
            self.sends == counted,
            "{} sends, {counted} counted: {s}",
            self.sends
        );
        ensure!(
            s.table_len <= self.options.table_capacity as u64
                && s.table_len_max <= self.options.table_capacity as u64,
            "table holds {} (max {}) of {}",
            s.table_len,
            s.table_len_max,
            self.options.table_capacity
        );
        ensure!(
            s.frontends_open == FRONTENDS as u64 + 1,
            "{} frontends open, {} expected",
            s.frontends_open,
            FRONTENDS + 1
        );
        for j in 0..self.n() {
            ensure!(
                self.lb.is_backend_up(self.id(j)) == self.be[j].up,
                "the core says backend {j} up: {}, the driver: {}",
                self.lb.is_backend_up(self.id(j)),
                self.be[j].up
            );
        }
        if let Some(d) = self.lb.poll_timeout() {
            ensure!(
                d > self.now,
                "a deadline is overdue without a Timeout being due"
            );
        }
        Ok(())
    }
}

/// The step kinds that act on a call, for [`World::select`].
#[derive(Clone, Copy)]
enum Applies {
    Retransmit,
    Cancel,
    Answer,
    AckNon2xx,
    InDialog,
    BackendBye,
    CallerOk,
}

#[derive(Debug, Default)]
struct Outs {
    sends: Vec<(ConnId, Bytes)>,
    events: Vec<Event>,
}
