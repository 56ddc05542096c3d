//! The world: virtual clock, event queue, the balancer instances and the connections between
//! them and the simulated peers, and the main loop.
//!
//! Time is a `u64` of nanoseconds since a base `Instant` taken once; the loop takes the earliest
//! of the queue's next event and every balancer's `poll_timeout()`, moves the clock there and
//! processes that one thing. It never sleeps.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_core::{
    BackendConfig, Balancer, CloseReason, Config, ConnId, Event, Input, Limits, ListenerId, Output,
    TagKey,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::backend::{Backend, BackendTimer, BeState};
use crate::invariants::{Accounting, Affinity, TableModel, Violation, ViolationKind};
use crate::scenario::{Knobs, Span};
use crate::sip::{self, Kind, Method, Summary};
use crate::trace::{hash_bytes, Trace, TraceEvent, TraceKind};
use crate::ua::{Plan, ToUa, UaOut, UaState, UaTimer};
use crate::{Report, Sample};

use crate::queue::EventQueue;
pub(crate) use crate::queue::Nanos;

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
    /// `call` and `code` are what the sender wrote (for the trace, without parsing again).
    TcpToLb {
        lb: u8,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
    },
    TcpToBackend {
        lb: u8,
        conn: ConnId,
        backend: u16,
        bytes: Bytes,
        summary: Summary,
    },
    TcpToProxy {
        lb: u8,
        conn: ConnId,
        bytes: Bytes,
        summary: Summary,
    },
    ConnectResult {
        lb: u8,
        conn: ConnId,
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
    ProxyReconnect {
        proxy: u16,
        lb: u8,
        k: u16,
    },
    Reap {
        call: u32,
    },
    Sample,
}

/// Who is at the other end of a balancer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    Frontend {
        proxy: u16,
        k: u16,
    },
    Backend {
        backend: u16,
        connected: bool,
    },
    /// A dial-out toward a frontend. The simulated proxies keep their connections up and
    /// reconnect on their own, so no simulated host accepts one: it is refused.
    Refused,
}

#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) id: ConnId,
    pub(crate) peer: Peer,
    /// The world still carries bytes on it (cleared when it breaks or is closed).
    pub(crate) open: bool,
    pub(crate) to_lb_last: Nanos,
    pub(crate) from_lb_last: Nanos,
}

pub(crate) struct LbInst {
    pub(crate) core: Balancer,
    pub(crate) listener: ListenerId,
    pub(crate) deadline: Option<Nanos>,
    pub(crate) slots: Vec<Option<Slot>>,
    /// Connected backend connections per backend.
    pub(crate) backend_up: Vec<u32>,
    pub(crate) acct: Accounting,
    pub(crate) model: TableModel,
    pub(crate) table_dev_max: u64,
}

pub(crate) struct Proxy {
    /// `conns[lb][k]`: the proxy's persistent connections; `None` while reconnecting.
    pub(crate) conns: Vec<Vec<Option<ConnId>>>,
}

/// Per call: the heavy state lives only while the call is active.
pub(crate) struct Call {
    pub(crate) home: u8,
    pub(crate) outcome: u8,
    pub(crate) active: Option<Box<Active>>,
}

/// The live state of call `call`, if it is still going. A free function over the slice, not a
/// method, so callers keep using the world's other fields while they hold it.
pub(crate) fn active_mut(calls: &mut [Call], call: u32) -> Option<&mut Active> {
    calls.get_mut(call as usize)?.active.as_deref_mut()
}

pub(crate) struct Active {
    pub(crate) plan: Plan,
    pub(crate) proxy: u16,
    pub(crate) ua: UaState,
    pub(crate) be: BeState,
}

/// Counts for the result line and the plot.
#[derive(Debug, Default, Clone)]
pub(crate) struct Counters {
    pub(crate) retransmissions: u64,
    pub(crate) outcomes: [u64; 6],
    pub(crate) udp_lost: u64,
    pub(crate) tcp_lost: u64,
    pub(crate) active_calls: u64,
    pub(crate) cancel_elsewhere: u64,
}

pub(crate) struct World {
    pub(crate) k: Knobs,
    base: Instant,
    pub(crate) now: Nanos,
    queue: EventQueue<Ev>,
    pub(crate) rng: SmallRng,
    pub(crate) lbs: Vec<LbInst>,
    pub(crate) proxies: Vec<Proxy>,
    pub(crate) backends: Vec<Backend>,
    pub(crate) calls: Vec<Call>,
    pub(crate) affinity: Affinity,
    pub(crate) trace: Trace,
    pub(crate) n: Counters,
    pub(crate) violations: Vec<Violation>,
    pub(crate) violation_count: u64,
    pub(crate) out: BytesMut,
    pub(crate) samples: Vec<Sample>,
    sample_retx: u64,
    next_port: u16,
    steps: u64,
    pub(crate) window_us: u64,
    pub(crate) ringing_max_us: u64,
}

impl World {
    pub(crate) fn new(k: Knobs, trace: Trace) -> Result<World, lb_core::ConfigError> {
        let base = Instant::now();
        let mut rng = SmallRng::seed_from_u64(k.seed);
        let cfg = Config {
            listeners: vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)),
                5060,
            )],
            backends: (0..k.backends)
                .map(|b| BackendConfig::plain(backend_addr(b)))
                .collect(),
            tag_keys: vec![TagKey {
                id: 1,
                secret: TAG_SECRET.to_vec(),
            }],
            window: k.window,
            ringing_max: k.ringing_max,
            limits: Limits {
                table_capacity: k.table_capacity,
                ..Limits::default()
            },
            // Off: the model expects a backend to stay up while its connection does, and a
            // silent outage would be taken out by unanswered INVITEs (not yet modelled).
            passive: lb_core::PassiveHealth {
                unanswered_timeout: std::time::Duration::ZERO,
                ..lb_core::PassiveHealth::default()
            },
            ..Config::default()
        };
        let valid = cfg.validate()?;
        let mut lbs = Vec::new();
        for i in 0..k.instances {
            let seed = k.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1));
            let core = Balancer::new(valid.clone(), seed, base);
            let listener = core
                .listeners()
                .next()
                .map(|(l, _)| l)
                .expect("validated: one listener");
            lbs.push(LbInst {
                core,
                listener,
                deadline: None,
                slots: Vec::new(),
                backend_up: vec![0; k.backends],
                acct: Accounting::default(),
                model: TableModel::default(),
                table_dev_max: 0,
            });
        }
        let backends = (0..k.backends)
            .map(|_| Backend::new(draw(&mut rng, k.trying_delay)))
            .collect();
        let proxies = (0..k.proxies)
            .map(|_| Proxy {
                conns: vec![vec![None; k.conns_per_proxy]; k.instances],
            })
            .collect();
        let window_us = k.window.as_micros() as u64;
        let ringing_max_us = k.ringing_max.as_micros() as u64;
        let mut w = World {
            k,
            base,
            now: 0,
            queue: EventQueue::new(LANES.len()),
            rng,
            lbs,
            proxies,
            backends,
            calls: Vec::new(),
            affinity: Affinity::default(),
            trace,
            n: Counters::default(),
            violations: Vec::new(),
            violation_count: 0,
            out: BytesMut::with_capacity(OUT_CHUNK),
            samples: Vec::new(),
            sample_retx: 0,
            next_port: 20_000,
            steps: 0,
            window_us,
            ringing_max_us,
        };
        for i in 0..w.lbs.len() {
            w.drain(i);
        }
        for p in 0..w.k.proxies {
            for i in 0..w.k.instances {
                for kk in 0..w.k.conns_per_proxy {
                    w.proxy_connect(p as u16, i as u8, kk as u16);
                }
            }
        }
        for o in w.k.outages.clone() {
            let (backend, silent) = (o.backend as u16, o.silent);
            w.at(
                o.at.as_nanos() as u64,
                Ev::Outage {
                    backend,
                    down: true,
                    silent,
                },
            );
            w.at(
                o.until.as_nanos() as u64,
                Ev::Outage {
                    backend,
                    down: false,
                    silent,
                },
            );
        }
        w.at(0, Ev::CallArrival);
        w.at(SAMPLE_EVERY, Ev::Sample);
        Ok(w)
    }

    /// Runs to the end and reports.
    pub(crate) fn run(mut self) -> Report {
        let step_limit = 1_000_000 + self.k.calls.saturating_mul(400);
        let mut last_activity = 0;
        loop {
            self.steps += 1;
            if self.steps > step_limit {
                self.violate(
                    ViolationKind::StepLimit,
                    format!("step limit {step_limit} reached"),
                );
                break;
            }
            let mut lb_next: Option<(Nanos, usize)> = None;
            for (i, lb) in self.lbs.iter().enumerate() {
                if let Some(d) = lb.deadline {
                    if lb_next.is_none_or(|(t, _)| d < t) {
                        lb_next = Some((d, i));
                    }
                }
            }
            // An event strictly before the balancers' next deadline goes first; at a tie the
            // balancer's timer is served first.
            match self.queue.pop_before(lb_next.map(|(t, _)| t)) {
                Ok((at, ev)) => {
                    self.now = at;
                    last_activity = self.now;
                    self.handle(ev);
                }
                Err(ev_at) => {
                    let Some((t, i)) = lb_next else { break };
                    // Only the balancers' own timers are left: let the tables drain for the
                    // longest entry lifetime past the last activity, then stop (idle timers may
                    // tick forever).
                    let tail =
                        (self.k.window + self.k.ringing_max).as_nanos() as u64 + 2_000_000_000;
                    if ev_at.is_none() && t > last_activity + tail {
                        break;
                    }
                    self.now = self.now.max(t);
                    self.lb_input(i, Input::Timeout);
                }
            }
        }
        self.finish()
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::CallArrival => self.call_arrival(),
            Ev::UaTimer { call, timer, gen } => self.ua_timer(call, timer, gen),
            Ev::UdpToProxy { call, msg } => self.proxy_from_ua(call, msg),
            Ev::UdpToUa { call, msg } => self.ua_receive(call, msg),
            Ev::TcpToLb {
                lb,
                conn,
                bytes,
                call,
                code,
            } => {
                let i = usize::from(lb);
                if !self.slot_open(i, conn) {
                    self.n.tcp_lost += 1;
                    return;
                }
                self.lbs[i].acct.fed += 1;
                self.trace.record(TraceEvent {
                    t_us: self.now / 1000,
                    kind: TraceKind::ToLb,
                    lb,
                    conn: conn.slot() as u32,
                    call: u64::from(call),
                    code,
                    len: bytes.len() as u32,
                    bytes_hash: hash_bytes(&bytes),
                });
                self.lb_input(i, Input::Received { conn, bytes });
            }
            Ev::TcpToBackend {
                lb,
                conn,
                backend,
                bytes,
                summary,
            } => {
                let be = &self.backends[usize::from(backend)];
                if !self.slot_open(usize::from(lb), conn) || !be.up || be.silent {
                    self.n.tcp_lost += 1;
                    return;
                }
                self.backend_receive(backend, lb, conn, bytes, summary);
            }
            Ev::TcpToProxy {
                lb,
                conn,
                bytes,
                summary,
            } => {
                if !self.slot_open(usize::from(lb), conn) {
                    self.n.tcp_lost += 1;
                    return;
                }
                self.proxy_from_lb(lb, conn, bytes, summary);
            }
            Ev::ConnectResult { lb, conn } => self.connect_result(usize::from(lb), conn),
            Ev::FeedClosed { lb, conn, reason } => {
                let i = usize::from(lb);
                let ours = self.lbs[i]
                    .slots
                    .get(conn.slot())
                    .and_then(Option::as_ref)
                    .is_some_and(|s| s.id == conn);
                if ours {
                    self.lbs[i].slots[conn.slot()] = None;
                    self.trace_simple(
                        TraceKind::Closed,
                        lb,
                        conn.slot() as u32,
                        close_code(reason),
                    );
                    self.lb_input(i, Input::Closed { conn, reason });
                }
            }
            Ev::BackendTimer { call, timer, gen } => self.backend_timer(call, timer, gen),
            Ev::Outage {
                backend,
                down,
                silent,
            } => self.outage(backend, down, silent),
            Ev::ProxyReconnect { proxy, lb, k } => self.proxy_connect(proxy, lb, k),
            Ev::Reap { call } => {
                if let Some(c) = self.calls.get_mut(call as usize) {
                    c.active = None;
                }
            }
            Ev::Sample => self.sample(),
        }
    }

    // ---- balancer glue -------------------------------------------------------------------

    pub(crate) fn instant(&self) -> Instant {
        self.base + Duration::from_nanos(self.now)
    }

    pub(crate) fn lb_input(&mut self, i: usize, input: Input) {
        let now = self.instant();
        self.lbs[i].core.handle_input(now, input);
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        let mut unresolved = Vec::new();
        while let Some(out) = self.lbs[i].core.poll_output() {
            match out {
                Output::Send { conn, bytes } => self.lb_send(i, conn, bytes),
                Output::Connect {
                    conn,
                    backend,
                    to: _,
                } => {
                    let b = backend.index() as u16;
                    self.put_slot(
                        i,
                        conn,
                        Peer::Backend {
                            backend: b,
                            connected: false,
                        },
                    );
                    self.trace_simple(TraceKind::Connect, i as u8, conn.slot() as u32, b);
                    let lat = self.tcp_latency() * 2;
                    self.after(lat, Ev::ConnectResult { lb: i as u8, conn });
                }
                // The simulated network has no DNS: every name fails to resolve.
                Output::Resolve { conn, .. } => unresolved.push(conn),
                Output::Dial { conn, .. } => {
                    self.put_slot(i, conn, Peer::Refused);
                    let lat = self.tcp_latency() * 2;
                    let (lb, reason) = (i as u8, CloseReason::Error);
                    self.after(lat, Ev::FeedClosed { lb, conn, reason });
                }
                Output::Close { conn } => self.close_conn(i, conn, CloseReason::Requested),
                Output::Event(e) => self.lb_event(i, e),
            }
        }
        for conn in unresolved {
            let addrs = Vec::new();
            self.lb_input(i, Input::Resolved { conn, addrs });
        }
        let deadline = self.lbs[i]
            .core
            .poll_timeout()
            .map(|t| t.saturating_duration_since(self.base).as_nanos() as u64);
        // A deadline in the past is served now; the core promises it moves after a Timeout.
        self.lbs[i].deadline = deadline.map(|d| d.max(self.now));
        self.check_table(i);
    }

    fn lb_event(&mut self, i: usize, e: Event) {
        let code = match e {
            Event::BackendUp(_) => 1,
            Event::BackendDown(_) => 2,
            Event::BackendDraining { .. } => 3,
            Event::FrontendRefused(_) => 4,
            Event::FramingLost { .. } => 5,
            Event::Malformed { .. } => 6,
            Event::Dropped { .. } => {
                self.lbs[i].acct.dropped_events += 1;
                7
            }
            Event::BackendOverloaded { .. } => 8,
            Event::Reloaded { .. } => 9,
            Event::TimedOut { .. } => 10,
            Event::BackendQueueHeld { .. } => 11,
        };
        if matches!(
            e,
            Event::FramingLost { .. }
                | Event::Malformed { .. }
                | Event::FrontendRefused(_)
                | Event::TimedOut { .. }
        ) {
            self.violate(ViolationKind::Output, format!("lb{i}: unexpected {e:?}"));
        }
        self.trace_simple(TraceKind::LbEvent, i as u8, 0, code);
    }

    fn lb_send(&mut self, i: usize, conn: ConnId, bytes: Bytes) {
        let peer = match self.lbs[i].slots.get(conn.slot()).and_then(Option::as_ref) {
            Some(s) if s.id == conn => s.peer,
            _ => {
                self.violate(
                    ViolationKind::Output,
                    format!("lb{i}: Send on unknown connection {conn:?}"),
                );
                return;
            }
        };
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            if rest.starts_with(b"\r\n") {
                pos += 2; // keep-alive pong
                continue;
            }
            let Some(n) = sip::frame_len(rest) else {
                self.violate(
                    ViolationKind::Output,
                    format!("lb{i}: unframeable output on {conn:?}"),
                );
                return;
            };
            let msg = bytes.slice(pos..pos + n);
            pos += n;
            let Some(summary) = sip::summarize(&msg) else {
                self.violate(
                    ViolationKind::Output,
                    format!("lb{i}: unparseable output on {conn:?}"),
                );
                continue;
            };
            self.route_output(i, conn, peer, msg, summary);
        }
    }

    fn route_output(&mut self, i: usize, conn: ConnId, peer: Peer, msg: Bytes, s: Summary) {
        let generated = matches!(s.kind, Kind::Response(503 | 400 | 481));
        if generated {
            self.lbs[i].acct.generated += 1;
        } else {
            self.lbs[i].acct.forwarded += 1;
        }
        let call = s.call.unwrap_or(u64::MAX);
        let (kind, dest) = match peer {
            Peer::Backend { backend, .. } => (TraceKind::LbToBackend, backend),
            Peer::Frontend { proxy, .. } => (TraceKind::LbToFrontend, proxy),
            // The core sends nothing on a dial before it connects, and no dial connects here.
            Peer::Refused => return,
        };
        self.trace.record(TraceEvent {
            t_us: self.now / 1000,
            kind,
            lb: i as u8,
            conn: conn.slot() as u32 | (u32::from(dest) << 20),
            call,
            code: s.code(),
            len: s.len as u32,
            bytes_hash: hash_bytes(&msg),
        });
        let lat = self.tcp_latency();
        let open = self.slot_open(i, conn);
        match peer {
            Peer::Backend { backend, .. } => {
                if let Some(c) = s.call.filter(|&c| (c as usize) < self.calls.len()) {
                    let expected = self.expected_backend(c as usize, s);
                    let up = &self.lbs[i].backend_up;
                    if let Some(breach) =
                        self.affinity
                            .observe(c as usize, backend, expected, |o| up[usize::from(o)] > 0)
                    {
                        self.violate(
                            ViolationKind::Affinity,
                            format!(
                                "lb{i} sent {} cseq {} {} of call {c} to backend {backend}: {breach:?}",
                                kind_str(s.kind),
                                s.cseq,
                                s.cseq_method.as_str()
                            ),
                        );
                    }
                    if s.kind == Kind::Request(Method::Cancel) {
                        let inv = self.calls[c as usize]
                            .active
                            .as_ref()
                            .and_then(|a| a.be.invite_backend);
                        let up = &self.lbs[i].backend_up;
                        if inv.is_some_and(|ib| ib != backend && up[usize::from(ib)] > 0) {
                            // Not an affinity breach (the table's backend is up again), but the
                            // INVITE transaction it cancels lives elsewhere: a real B2BUA would
                            // answer 481. Counted and reported.
                            self.n.cancel_elsewhere += 1;
                        }
                    }
                    if s.kind == Kind::Request(Method::Invite) && !s.has_to_tag {
                        let (now_us, rm, w) =
                            (self.now / 1000, self.ringing_max_us, self.window_us);
                        self.lbs[i].model.create(c as u32, now_us, rm, w);
                    }
                }
                if open {
                    let at = self.tcp_at_from_lb(i, conn, lat);
                    self.at(
                        at,
                        Ev::TcpToBackend {
                            lb: i as u8,
                            conn,
                            backend,
                            bytes: msg,
                            summary: s,
                        },
                    );
                } else {
                    self.n.tcp_lost += 1;
                }
            }
            Peer::Refused => {}
            Peer::Frontend { .. } => {
                if let (Kind::Response(st), Method::Invite, Some(c)) =
                    (s.kind, s.cseq_method, s.call)
                {
                    if st >= 200 && !generated {
                        let (now_us, w) = (self.now / 1000, self.window_us);
                        self.lbs[i].model.settle(c as u32, now_us, w);
                    }
                }
                if open {
                    let at = self.tcp_at_from_lb(i, conn, lat);
                    self.at(
                        at,
                        Ev::TcpToProxy {
                            lb: i as u8,
                            conn,
                            bytes: msg,
                            summary: s,
                        },
                    );
                } else {
                    self.n.tcp_lost += 1;
                }
            }
        }
    }

    /// The backend a message names itself, if it does: for an in-dialog request, the backend of
    /// the tag the caller routes by; for a response, the backend whose request it answers.
    fn expected_backend(&self, call: usize, s: Summary) -> Option<u16> {
        let a = self.calls.get(call)?.active.as_ref()?;
        match s.kind {
            Kind::Response(_) => a.be.origin,
            Kind::Request(_) if s.has_to_tag => a.ua.tag_backend(),
            Kind::Request(_) => None,
        }
    }

    fn check_table(&mut self, i: usize) {
        let now_us = self.now / 1000;
        let lb = &mut self.lbs[i];
        lb.model.expire(now_us);
        let st = lb.core.stats();
        let (len, cap) = (st.table_len, self.k.table_capacity as u64);
        let dev = len.abs_diff(lb.model.len());
        lb.table_dev_max = lb.table_dev_max.max(dev);
        let tol = crate::invariants::table_tolerance(lb.model.len());
        if len > cap {
            self.violate(
                ViolationKind::Table,
                format!("lb{i}: table_len {len} exceeds capacity {cap}"),
            );
        } else if dev > tol {
            let m = self.lbs[i].model.len();
            self.violate(
                ViolationKind::Table,
                format!("lb{i}: table_len {len} but the lifetime model has {m}"),
            );
        }
    }

    fn connect_result(&mut self, i: usize, conn: ConnId) {
        let Some(Peer::Backend { backend, .. }) = self.peer(i, conn) else {
            return;
        };
        let b = usize::from(backend);
        if self.backends[b].up {
            if let Some(Some(s)) = self.lbs[i].slots.get_mut(conn.slot()) {
                s.peer = Peer::Backend {
                    backend,
                    connected: true,
                };
            }
            self.lbs[i].backend_up[b] += 1;
            self.backends[b].conns.push((i as u8, conn));
            self.trace_simple(TraceKind::Connected, i as u8, conn.slot() as u32, backend);
            self.lb_input(i, Input::Connected { conn });
        } else {
            self.lbs[i].slots[conn.slot()] = None;
            self.trace_simple(TraceKind::Closed, i as u8, conn.slot() as u32, 0);
            self.lb_input(
                i,
                Input::Closed {
                    conn,
                    reason: CloseReason::Error,
                },
            );
        }
    }

    /// The world stops carrying bytes on `conn` now and tells the balancer right after.
    pub(crate) fn close_conn(&mut self, i: usize, conn: ConnId, reason: CloseReason) {
        let Some(Some(s)) = self.lbs[i].slots.get_mut(conn.slot()) else {
            return;
        };
        if s.id != conn || !s.open {
            return;
        }
        s.open = false;
        let peer = s.peer;
        match peer {
            Peer::Backend { backend, connected } => {
                if connected {
                    self.lbs[i].backend_up[usize::from(backend)] -= 1;
                    if let Some(Some(s)) = self.lbs[i].slots.get_mut(conn.slot()) {
                        s.peer = Peer::Backend {
                            backend,
                            connected: false,
                        };
                    }
                }
                self.backends[usize::from(backend)]
                    .conns
                    .retain(|&(l, c)| !(usize::from(l) == i && c == conn));
            }
            Peer::Refused => {}
            Peer::Frontend { proxy, k } => {
                self.proxies[usize::from(proxy)].conns[i][usize::from(k)] = None;
                self.after(
                    Duration::from_secs(1),
                    Ev::ProxyReconnect {
                        proxy,
                        lb: i as u8,
                        k,
                    },
                );
            }
        }
        self.after(
            Duration::ZERO,
            Ev::FeedClosed {
                lb: i as u8,
                conn,
                reason,
            },
        );
    }

    fn outage(&mut self, backend: u16, down: bool, silent: bool) {
        let b = usize::from(backend);
        self.trace_simple(
            if down {
                TraceKind::BackendDown
            } else {
                TraceKind::BackendUp
            },
            0,
            u32::from(silent),
            backend,
        );
        if silent {
            self.backends[b].silent = down;
            return;
        }
        self.backends[b].up = !down;
        if down {
            for (l, c) in std::mem::take(&mut self.backends[b].conns) {
                // Put it back so close_conn finds and removes it consistently.
                self.backends[b].conns.push((l, c));
                self.close_conn(usize::from(l), c, CloseReason::Error);
            }
        }
    }

    fn proxy_connect(&mut self, proxy: u16, lb: u8, k: u16) {
        let port = self.next_port;
        self.next_port = if self.next_port >= 60_000 {
            20_000
        } else {
            self.next_port + 1
        };
        let peer = SocketAddr::new(IpAddr::V4(proxy_ip(proxy)), port);
        let i = usize::from(lb);
        let now = self.instant();
        let listener = self.lbs[i].listener;
        let conn = self.lbs[i].core.accept(now, listener, peer);
        self.put_slot(i, conn, Peer::Frontend { proxy, k });
        self.proxies[usize::from(proxy)].conns[i][usize::from(k)] = Some(conn);
        self.drain(i);
    }

    fn put_slot(&mut self, i: usize, conn: ConnId, peer: Peer) {
        let slots = &mut self.lbs[i].slots;
        if slots.len() <= conn.slot() {
            slots.resize_with(conn.slot() + 1, || None);
        }
        if slots[conn.slot()].is_some() {
            self.violate(
                ViolationKind::Output,
                format!("lb{i}: slot of {conn:?} reused before Closed"),
            );
        }
        self.lbs[i].slots[conn.slot()] = Some(Slot {
            id: conn,
            peer,
            open: true,
            to_lb_last: 0,
            from_lb_last: 0,
        });
    }

    pub(crate) fn peer(&self, i: usize, conn: ConnId) -> Option<Peer> {
        match self.lbs[i].slots.get(conn.slot()) {
            Some(Some(s)) if s.id == conn => Some(s.peer),
            _ => None,
        }
    }

    pub(crate) fn slot_open(&self, i: usize, conn: ConnId) -> bool {
        matches!(self.lbs[i].slots.get(conn.slot()), Some(Some(s)) if s.id == conn && s.open)
    }

    /// Sends one message from a peer into balancer `i` over `conn`, keeping TCP's order.
    pub(crate) fn send_to_lb(
        &mut self,
        i: usize,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
    ) {
        if !self.slot_open(i, conn) {
            self.n.tcp_lost += 1;
            return;
        }
        let lat = self.tcp_latency();
        let Some(Some(s)) = self.lbs[i].slots.get_mut(conn.slot()) else {
            return;
        };
        let at = (self.now + lat.as_nanos() as u64).max(s.to_lb_last);
        s.to_lb_last = at;
        self.at(
            at,
            Ev::TcpToLb {
                lb: i as u8,
                conn,
                bytes,
                call,
                code,
            },
        );
    }

    fn tcp_at_from_lb(&mut self, i: usize, conn: ConnId, lat: Duration) -> Nanos {
        let now = self.now;
        match self.lbs[i].slots.get_mut(conn.slot()) {
            Some(Some(s)) => {
                let at = (now + lat.as_nanos() as u64).max(s.from_lb_last);
                s.from_lb_last = at;
                at
            }
            _ => now,
        }
    }

    // ---- scheduling, randomness, tracing ---------------------------------------------------

    pub(crate) fn at(&mut self, at: Nanos, ev: Ev) {
        self.queue.push(at.max(self.now), ev);
    }

    /// Schedules `ev` after the constant delay of `lane` (see [`LANES`]).
    pub(crate) fn after_fixed(&mut self, lane: Lane, ev: Ev) {
        let at = self.now + LANES[lane as usize].as_nanos() as u64;
        self.queue.push_fifo(lane as usize, at, ev);
    }

    pub(crate) fn after(&mut self, d: Duration, ev: Ev) {
        self.at(self.now + d.as_nanos() as u64, ev);
    }

    pub(crate) fn draw(&mut self, s: Span) -> Duration {
        draw(&mut self.rng, s)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.rng.random::<f64>() < p
    }

    pub(crate) fn tcp_latency(&mut self) -> Duration {
        let s = self.k.tcp_latency;
        self.draw(s)
    }

    /// A UDP datagram: lost with the configured probability, else delivered after a latency.
    pub(crate) fn udp(&mut self, ev: Ev) {
        if self.chance(self.k.udp_loss) {
            self.n.udp_lost += 1;
            return;
        }
        let lat = self.draw(self.k.udp_latency);
        self.after(lat, ev);
    }

    pub(crate) fn trace_simple(&mut self, kind: TraceKind, lb: u8, conn: u32, code: u16) {
        self.trace.record(TraceEvent {
            t_us: self.now / 1000,
            kind,
            lb,
            conn,
            call: u64::MAX,
            code,
            len: 0,
            bytes_hash: 0,
        });
    }

    pub(crate) fn violate(&mut self, kind: ViolationKind, detail: String) {
        self.violation_count += 1;
        self.trace_simple(TraceKind::Violation, 0, 0, kind as u16);
        if self.violations.len() < 50 {
            self.violations.push(Violation {
                t_us: self.now / 1000,
                kind,
                detail,
            });
        }
    }

    fn sample(&mut self) {
        let table: u64 = self.lbs.iter().map(|l| l.core.stats().table_len).sum();
        let model: u64 = self.lbs.iter().map(|l| l.model.len()).sum();
        let retx = self.n.retransmissions - self.sample_retx;
        self.sample_retx = self.n.retransmissions;
        let load = self
            .backends
            .iter_mut()
            .map(|b| std::mem::take(&mut b.load))
            .collect();
        self.samples.push(Sample {
            t_s: self.now as f64 / 1e9,
            table,
            model,
            retransmissions: retx,
            load,
            active_calls: self.n.active_calls,
        });
        let arrivals_done = self.calls.len() as u64 >= self.k.calls;
        if !(arrivals_done && self.n.active_calls == 0) {
            self.after(Duration::from_nanos(SAMPLE_EVERY), Ev::Sample);
        }
    }

    fn finish(mut self) -> Report {
        let mut lost_total = 0u64;
        for i in 0..self.lbs.len() {
            let stats = self.lbs[i].core.stats().clone();
            let lost = self.lbs[i].acct.lost(&stats);
            if lost != 0 {
                self.violate(
                    ViolationKind::Lost,
                    format!(
                        "lb{i}: {lost} messages unaccounted for ({:?}, {stats})",
                        self.lbs[i].acct
                    ),
                );
            }
            lost_total += lost.unsigned_abs();
            for m in self.lbs[i].acct.counter_mismatches(&stats) {
                self.violate(ViolationKind::Counter, format!("lb{i}: {m}"));
            }
        }
        if self.n.active_calls != 0 {
            self.violate(
                ViolationKind::StepLimit,
                format!("{} calls still active at the end", self.n.active_calls),
            );
        }
        let stats: Vec<lb_core::Stats> = self.lbs.iter().map(|l| l.core.stats().clone()).collect();
        let messages = self.lbs.iter().map(|l| l.acct.fed).sum();
        let max_table = stats.iter().map(|s| s.table_len_max).max().unwrap_or(0);
        if max_table > self.k.table_capacity as u64 {
            self.violate(
                ViolationKind::Table,
                format!(
                    "table_len_max {max_table} exceeds capacity {}",
                    self.k.table_capacity
                ),
            );
        }
        for (i, s) in stats.iter().enumerate() {
            if s.table_len != self.lbs[i].model.len() {
                let m = self.lbs[i].model.len();
                self.violate(
                    ViolationKind::Table,
                    format!(
                        "lb{i}: {} entries left at the end, the model has {m}",
                        s.table_len
                    ),
                );
            }
        }
        let model_max = self.lbs.iter().map(|l| l.model.max()).max().unwrap_or(0);
        let table_dev_max = self.lbs.iter().map(|l| l.table_dev_max).max().unwrap_or(0);
        let mean_ringing_s = self
            .lbs
            .iter()
            .map(|l| l.model.mean_ringing_us())
            .fold(0.0, f64::max)
            / 1e6;
        let mean_lifetime_s = self
            .lbs
            .iter()
            .map(|l| l.model.mean_lifetime_us())
            .fold(0.0, f64::max)
            / 1e6;
        let per_instance_rate = self.k.rate / self.k.instances as f64;
        let expected_table = (per_instance_rate * mean_lifetime_s)
            .min(self.k.calls as f64 / self.k.instances as f64);
        // Only a run that reached a steady state can be held to the figure.
        let arrivals_s = self.k.calls as f64 / self.k.rate;
        if arrivals_s > 3.0 * mean_lifetime_s
            && !crate::invariants::table_max_plausible(max_table, expected_table)
        {
            self.violate(
                ViolationKind::Table,
                format!(
                    "table_len_max {max_table} but setup rate x lifetime gives {expected_table:.0}"
                ),
            );
        }
        let trace_error = self.trace.finish().err().map(|e| e.to_string());
        Report {
            scenario: self.k.scenario,
            seed: self.k.seed,
            calls: self.calls.len() as u64,
            messages,
            retransmissions: self.n.retransmissions,
            affinity_violations: self.affinity.violations(),
            lost: lost_total,
            max_table,
            model_max_table: model_max,
            table_deviation_max: table_dev_max,
            expected_table,
            mean_ringing_s,
            digest: self.trace.digest(),
            violations: self.violations,
            violation_count: self.violation_count,
            outcomes: self.n.outcomes,
            udp_lost: self.n.udp_lost,
            cancel_elsewhere: self.n.cancel_elsewhere,
            tcp_lost: self.n.tcp_lost,
            events: self.steps,
            trace_events: self.trace.events(),
            virtual_s: self.now as f64 / 1e9,
            stats,
            samples: self.samples,
            trace_error,
        }
    }
}

/// Draws a duration uniformly from a span.
pub(crate) fn draw(rng: &mut SmallRng, s: Span) -> Duration {
    if s.hi <= s.lo {
        return s.lo;
    }
    let lo = s.lo.as_nanos() as u64;
    let hi = s.hi.as_nanos() as u64;
    Duration::from_nanos(rng.random_range(lo..=hi))
}

pub(crate) fn backend_addr(b: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 2, (b / 250) as u8, (b % 250 + 1) as u8)),
        5070,
    )
}

pub(crate) fn proxy_ip(p: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, (p / 250) as u8, (p % 250 + 1) as u8)
}

fn close_code(r: CloseReason) -> u16 {
    match r {
        CloseReason::Error => 0,
        CloseReason::Requested => 1,
        CloseReason::PeerClosed => 2,
        CloseReason::OutputOverflow => 3,
    }
}

fn kind_str(k: Kind) -> String {
    match k {
        Kind::Request(m) => m.as_str().to_owned(),
        Kind::Response(s) => s.to_string(),
    }
}

/// The constant delays that get their own FIFO lane in the event queue.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Lane {
    /// 64·T1: Timer B, Timer F, reaping a finished call.
    Timer64T1 = 0,
    /// The caller's give-up guard for a call ringing too long.
    Guard = 1,
}

/// Delay of each [`Lane`].
pub(crate) const LANES: [Duration; 2] = [Duration::from_secs(32), Duration::from_secs(240)];

/// The tag key every instance shares (DESIGN.md: scale-out needs the same key everywhere).
const TAG_SECRET: &[u8; 32] = b"siplb-sim-shared-tag-key-000001!";
/// Reused output buffer chunk for messages the simulated peers write.
pub(crate) const OUT_CHUNK: usize = 64 * 1024;
/// Plot sampling period, ns of virtual time.
const SAMPLE_EVERY: Nanos = 1_000_000_000;
