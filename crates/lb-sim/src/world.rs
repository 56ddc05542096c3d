//! The world: virtual clock, event queue, the shared random generator, and the wiring between
//! the components (balancer workers, callers, proxies, backends). It owns no peer's state; it
//! carries each component's outputs over the simulated network and feeds them back in as
//! inputs, in the order they were emitted.
//!
//! Time is a `u64` of nanoseconds since a base `Instant` taken once; the loop takes the earliest
//! of the queue's next event and every worker's `poll_timeout()`, moves the clock there and
//! processes that one thing. It never sleeps.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_core::{BackendConfig, CloseReason, Config, ConnId, Input, Limits, TagKey};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::addr::{backend_addr, balancer_vip, proxy_at, proxy_ip};
use crate::backend::{Farm, FarmOut};
use crate::caller::{CallerOut, Callers};
use crate::event::{Brief, Counters, Death, Ev};
use crate::instance::{close_code, Peer, Worker, WorkerOut};
use crate::invariants::{Affinity, Violation, ViolationKind};
use crate::proxy::{Proxies, ProxyOut};
use crate::queue::{EventQueue, Nanos};
use crate::scenario::Knobs;
use crate::sip::{Kind, Method, Summary};
use crate::timers::{draw, Delay, Lane, LANES};
use crate::trace::{hash_bytes, Trace, TraceEvent, TraceKind};
use crate::Sample;

mod observe;
use observe::SAMPLE_EVERY;

pub(crate) struct World {
    pub(crate) k: Knobs,
    pub(crate) now: Nanos,
    queue: EventQueue<Ev>,
    rng: SmallRng,
    pub(crate) workers: Vec<Worker>,
    pub(crate) callers: Callers,
    proxies: Proxies,
    pub(crate) farm: Farm,
    pub(crate) affinity: Affinity,
    /// Calls a message of which reached a wrong backend.
    pub(crate) breached: Vec<u32>,
    pub(crate) trace: Trace,
    pub(crate) n: Counters,
    pub(crate) violations: Vec<Violation>,
    pub(crate) violation_count: u64,
    pub(crate) samples: Vec<Sample>,
    pub(crate) death: Option<Death>,
    sample_retx: u64,
    next_port: u16,
    pub(crate) steps: u64,
}

impl World {
    pub(crate) fn new(k: Knobs, trace: Trace) -> Result<World, lb_core::ConfigError> {
        let base = Instant::now();
        let mut rng = SmallRng::seed_from_u64(k.seed);
        let cores = k.instances * k.workers;
        let cfg = Config {
            listeners: vec![balancer_vip()],
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
            // As lb-cli does with `--workers` above 1, and as instances behind one edge need:
            // a core that sees only part of a proxy's connections must not take the one it
            // holds from that IP for the next hop of every request (docs/design.md, "Workers").
            hop_by_unique_ip: cores == 1,
            ..Config::default()
        };
        let valid = cfg.validate()?;
        let workers = (0..cores)
            .map(|i| {
                let seed = k.seed ^ (0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1));
                let instance = (i / k.workers) as u8;
                Worker::new(valid.clone(), seed, base, instance, &k)
            })
            .collect();
        let trying = (0..k.backends)
            .map(|_| draw(&mut rng, k.trying_delay))
            .collect();
        let mut w = World {
            callers: Callers::new(&k),
            proxies: Proxies::new(
                k.proxies,
                k.instances,
                k.conns_per_proxy,
                k.spread_in_dialog,
            ),
            farm: Farm::new(trying, k.spread_in_dialog),
            k,
            now: 0,
            queue: EventQueue::new(LANES.len()),
            rng,
            workers,
            affinity: Affinity::default(),
            breached: Vec::new(),
            trace,
            n: Counters::default(),
            violations: Vec::new(),
            violation_count: 0,
            samples: Vec::new(),
            death: None,
            sample_retx: 0,
            next_port: 20_000,
            steps: 0,
        };
        for i in 0..w.workers.len() {
            w.drain_worker(i);
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
            let down = |down| Ev::Outage {
                backend,
                down,
                silent,
            };
            w.at(o.at.as_nanos() as u64, down(true));
            w.at(o.until.as_nanos() as u64, down(false));
        }
        if let Some((instance, at)) = w.k.instance_death {
            let instance = instance as u8;
            w.at(at.as_nanos() as u64, Ev::InstanceDeath { instance });
        }
        w.at(0, Ev::CallArrival);
        w.at(SAMPLE_EVERY, Ev::Sample);
        Ok(w)
    }

    /// Runs to the end; `report::finish` reads what it found.
    pub(crate) fn run(mut self) -> World {
        let step_limit = 1_000_000 + self.k.calls.saturating_mul(400);
        let tail = (self.k.window + self.k.ringing_max).as_nanos() as u64 + 2_000_000_000;
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
            for (i, lb) in self.workers.iter().enumerate() {
                if let Some(d) = lb.deadline() {
                    if lb_next.is_none_or(|(t, _)| d < t) {
                        lb_next = Some((d, i));
                    }
                }
            }
            self.warm();
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
                    if ev_at.is_none() && t > last_activity + tail {
                        break;
                    }
                    self.now = self.now.max(t);
                    self.lb_input(i, Input::Timeout);
                }
            }
        }
        self
    }

    /// Reads the call state the newly staged events will read (`EventQueue::warm`, `Ev::warm`).
    fn warm(&mut self) {
        let (callers, farm) = (&self.callers, &self.farm);
        let mut touched = 0u32;
        self.queue.warm(|ev| touched ^= ev.warm(callers, farm));
        std::hint::black_box(touched);
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::CallArrival => {
                let Some(call) = self.callers.handle_arrival(&mut self.rng) else {
                    return;
                };
                self.drain_callers();
                if let Some(gap) = self.callers.next_arrival(call, &mut self.rng) {
                    self.after(gap, Ev::CallArrival);
                }
            }
            Ev::UaTimer { call, timer, gen } => {
                self.callers.handle_timer(call, timer, gen);
                self.drain_callers();
            }
            Ev::UdpToProxy { call, msg } => {
                self.proxies
                    .handle_from_ua(call, msg, &self.callers, &mut self.rng);
                self.drain_proxies();
            }
            Ev::UdpToUa { call, msg } => {
                self.callers.handle_datagram(call, msg);
                self.drain_callers();
            }
            Ev::TcpToLb {
                lb,
                conn,
                bytes,
                call,
                code,
                edge,
            } => self.deliver_to_lb(lb, conn, bytes, call, code, edge),
            Ev::TcpToBackend {
                lb,
                conn,
                backend,
                bytes,
                summary,
            } => {
                if !self.workers[usize::from(lb)].is_open(conn) || !self.farm.is_receiving(backend)
                {
                    self.n.tcp_lost += 1;
                    return;
                }
                self.farm
                    .handle_message(backend, lb, conn, bytes, summary.summary());
                self.drain_farm();
            }
            Ev::TcpToProxy {
                lb,
                conn,
                bytes,
                summary,
            } => {
                if !self.workers[usize::from(lb)].is_open(conn) {
                    self.n.tcp_lost += 1;
                    return;
                }
                self.proxies
                    .handle_from_lb(lb, conn, bytes, summary.summary());
                self.drain_proxies();
            }
            Ev::ConnectResult { lb, conn } => self.connect_result(usize::from(lb), conn),
            Ev::DialAnswered { lb, conn, proxy } => {
                let i = usize::from(lb);
                if !self.workers[i].alive || !self.workers[i].is_open(conn) {
                    return;
                }
                self.workers[i].handle_dial_answered(conn, proxy);
                self.trace_simple(TraceKind::Connected, lb, conn.slot() as u32, proxy);
                self.lb_input(i, Input::Connected { conn });
            }
            Ev::FeedClosed { lb, conn, reason } => {
                let i = usize::from(lb);
                if self.workers[i].forget(conn) {
                    self.trace_simple(
                        TraceKind::Closed,
                        lb,
                        conn.slot() as u32,
                        close_code(reason),
                    );
                    if self.workers[i].alive {
                        self.lb_input(i, Input::Closed { conn, reason });
                    }
                }
            }
            Ev::BackendTimer { call, timer, gen } => {
                self.farm.handle_timer(call, timer, gen, &mut self.rng);
                self.drain_farm();
            }
            Ev::Outage {
                backend,
                down,
                silent,
            } => self.outage(backend, down, silent),
            Ev::InstanceDeath { instance } => self.instance_death(instance),
            Ev::ProxyReconnect { proxy, instance, k } => {
                if self.instance_alive(usize::from(instance)) {
                    self.proxy_connect(proxy, instance, k);
                }
            }
            Ev::Reap { call } => {
                self.callers.reap(call);
                self.farm.reap(call);
            }
            Ev::Sample => self.sample(),
        }
    }

    // ---- the components' outputs, carried out in the order they came -----------------------

    fn drain_callers(&mut self) {
        while let Some(o) = self.callers.poll_output() {
            match o {
                CallerOut::Placed {
                    call,
                    home,
                    proxy,
                    plan,
                } => {
                    self.farm.handle_placed(call, plan);
                    self.trace.record(TraceEvent {
                        t_us: self.now / 1000,
                        kind: TraceKind::CallStart,
                        lb: home,
                        conn: u32::from(proxy),
                        call: u64::from(call),
                        code: 0,
                        len: 0,
                        bytes_hash: 0,
                    });
                }
                CallerOut::Datagram { call, msg } => self.udp(Ev::UdpToProxy { call, msg }),
                CallerOut::Timer {
                    call,
                    timer,
                    gen,
                    delay,
                } => {
                    let ev = Ev::UaTimer { call, timer, gen };
                    match delay {
                        Delay::After(d) => self.after(d, ev),
                        Delay::Lane(lane) => self.after_fixed(lane, ev),
                    }
                }
                CallerOut::Ended { call, outcome } => {
                    self.trace.record(TraceEvent {
                        t_us: self.now / 1000,
                        kind: TraceKind::CallEnd,
                        lb: 0,
                        conn: 0,
                        call: u64::from(call),
                        code: u16::from(outcome),
                        len: 0,
                        bytes_hash: 0,
                    });
                    self.after_fixed(Lane::Timer64T1, Ev::Reap { call });
                }
            }
        }
    }

    fn drain_proxies(&mut self) {
        while let Some(o) = self.proxies.poll_output() {
            match o {
                ProxyOut::ToLb {
                    lb,
                    conn,
                    bytes,
                    call,
                    code,
                    edge,
                } => self.send_to_lb(lb, conn, bytes, call, code, edge),
                ProxyOut::ToUa { call, msg } => self.udp(Ev::UdpToUa { call, msg }),
                ProxyOut::Lost => self.n.tcp_lost += 1,
            }
        }
    }

    fn drain_farm(&mut self) {
        while let Some(o) = self.farm.poll_output() {
            match o {
                FarmOut::ToLb {
                    lb,
                    conn,
                    bytes,
                    call,
                    code,
                } => self.send_to_lb(lb, conn, bytes, call, code, None),
                FarmOut::Lost => self.n.tcp_lost += 1,
                FarmOut::Timer {
                    call,
                    timer,
                    gen,
                    after,
                } => self.after(after, Ev::BackendTimer { call, timer, gen }),
            }
        }
    }

    pub(crate) fn lb_input(&mut self, i: usize, input: Input) {
        if let Some(WorkerOut::Violation { kind, detail }) =
            self.workers[i].handle_input(self.now, input)
        {
            self.violate(kind, format!("lb{i}: {detail}"));
        }
        self.drain_worker(i);
    }

    fn drain_worker(&mut self, i: usize) {
        let lb = i as u8;
        while let Some(o) = self.workers[i].poll_output() {
            match o {
                WorkerOut::Message {
                    conn,
                    peer,
                    msg,
                    summary,
                } => self.route_output(i, conn, peer, msg, summary),
                WorkerOut::Connect { conn, backend } => {
                    self.trace_simple(TraceKind::Connect, lb, conn.slot() as u32, backend);
                    let lat = self.tcp_latency() * 2;
                    self.after(lat, Ev::ConnectResult { lb, conn });
                }
                WorkerOut::Dial { conn, to } => {
                    let lat = self.tcp_latency() * 2;
                    match proxy_at(to, self.k.proxies) {
                        Some(proxy) => self.after(lat, Ev::DialAnswered { lb, conn, proxy }),
                        None => {
                            let reason = CloseReason::Error;
                            self.after(lat, Ev::FeedClosed { lb, conn, reason });
                        }
                    }
                }
                WorkerOut::Close { conn } => self.close_conn(i, conn, CloseReason::Requested),
                WorkerOut::Abort { conn } => {
                    // A connect given up is reported as a failed one, as a driver does.
                    let reason = match self.workers[i].peer(conn) {
                        Some(Peer::Backend {
                            connected: false, ..
                        })
                        | Some(Peer::Refused) => CloseReason::Error,
                        Some(
                            Peer::Backend {
                                connected: true, ..
                            }
                            | Peer::Dialled { .. }
                            | Peer::Frontend { .. },
                        )
                        | None => CloseReason::Requested,
                    };
                    self.close_conn(i, conn, reason);
                }
                WorkerOut::Event {
                    code,
                    expected,
                    detail,
                } => {
                    if !expected {
                        self.violate(ViolationKind::Output, format!("lb{i}: unexpected {detail}"));
                    }
                    self.trace_simple(TraceKind::LbEvent, lb, 0, code);
                }
                WorkerOut::Violation { kind, detail } => {
                    self.violate(kind, format!("lb{i}: {detail}"));
                }
            }
        }
        if let Some((kind, detail)) = self.workers[i].handle_drained() {
            self.violate(kind, format!("lb{i}: {detail}"));
        }
    }

    /// One message a worker sent: traced, checked for affinity when it goes to a backend, then
    /// carried over its connection.
    fn route_output(&mut self, i: usize, conn: ConnId, peer: Peer, msg: Bytes, s: Summary) {
        let call = s.call.unwrap_or(u64::MAX);
        let (kind, dest) = match peer {
            Peer::Backend { backend, .. } => (TraceKind::LbToBackend, backend),
            Peer::Frontend { proxy, .. } | Peer::Dialled { proxy } => {
                (TraceKind::LbToFrontend, proxy)
            }
            // The core sends nothing on a dial before it connects.
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
        let open = self.workers[i].is_open(conn);
        if let Peer::Backend { backend, .. } = peer {
            if let Some(c) = s.call.filter(|&c| c < self.callers.placed()) {
                self.check_affinity(i, c as u32, backend, s);
            }
        }
        if !open {
            self.n.tcp_lost += 1;
            return;
        }
        let at = self.workers[i].schedule_out(conn, self.now, lat);
        let lb = i as u8;
        let ev = match peer {
            Peer::Backend { backend, .. } => Ev::TcpToBackend {
                lb,
                conn,
                backend,
                bytes: msg,
                summary: Brief::of(s),
            },
            Peer::Frontend { .. } | Peer::Dialled { .. } | Peer::Refused => Ev::TcpToProxy {
                lb,
                conn,
                bytes: msg,
                summary: Brief::of(s),
            },
        };
        self.at(at, ev);
    }

    fn check_affinity(&mut self, i: usize, c: u32, backend: u16, s: Summary) {
        // The backend a message names itself, if it does: for an in-dialog request, the backend
        // of the tag the caller routes by; for a response, the backend whose request it answers.
        let expected = match s.kind {
            Kind::Response(_) => self.farm.origin(c),
            Kind::Request(_) if s.has_to_tag => self.callers.tag_backend(c),
            Kind::Request(_) => None,
        };
        let w = &self.workers[i];
        if let Some(breach) = self
            .affinity
            .observe(c as usize, backend, expected, |o| w.is_backend_up(o))
        {
            self.breached.push(c);
            self.violate(
                ViolationKind::Affinity,
                format!(
                    "lb{i} sent {} cseq {} {} of call {c} to backend {backend}: {breach:?}",
                    s.kind,
                    s.cseq,
                    s.cseq_method.as_str()
                ),
            );
        }
        if s.kind == Kind::Request(Method::Cancel) {
            let inv = self.farm.invite_backend(c);
            let w = &self.workers[i];
            if inv.is_some_and(|ib| ib != backend && w.is_backend_up(ib)) {
                // Not an affinity breach (the table's backend is up again), but the INVITE
                // transaction it cancels lives elsewhere: a real B2BUA would answer 481.
                // Counted and reported.
                self.n.cancel_elsewhere += 1;
            }
        }
    }

    // ---- the network: connections, latency, loss --------------------------------------------

    /// Sends one message from a peer into worker `lb` over `conn`, keeping TCP's order.
    fn send_to_lb(
        &mut self,
        lb: u8,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
        edge: Option<u16>,
    ) {
        let i = usize::from(lb);
        if !self.workers[i].is_open(conn) {
            self.n.tcp_lost += 1;
            return;
        }
        let lat = self.tcp_latency();
        let Some(at) = self.workers[i].schedule_in(conn, self.now, lat) else {
            return;
        };
        let ev = Ev::TcpToLb {
            lb,
            conn,
            bytes,
            call,
            code,
            edge,
        };
        self.at(at, ev);
    }

    fn deliver_to_lb(
        &mut self,
        lb: u8,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
        edge: Option<u16>,
    ) {
        let i = usize::from(lb);
        if !self.workers[i].is_open(conn) {
            match edge.filter(|_| !self.workers[i].alive) {
                // The instance died under an in-dialog request: the edge sees the reset and
                // sends it to another instance (a dispatcher's failover, or the next SRV target).
                Some(proxy) => {
                    self.n.edge_resends += 1;
                    let dead = usize::from(self.workers[i].instance);
                    self.proxies.handle_resend(proxy, dead, call, bytes, code);
                    self.drain_proxies();
                }
                None => self.n.tcp_lost += 1,
            }
            return;
        }
        self.workers[i].acct.fed += 1;
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

    fn connect_result(&mut self, i: usize, conn: ConnId) {
        // A connect the core gave up on (`Output::Abort`) is no longer open: its answer is lost.
        if !self.workers[i].alive || !self.workers[i].is_open(conn) {
            return;
        }
        let Some(Peer::Backend { backend, .. }) = self.workers[i].peer(conn) else {
            return;
        };
        let lb = i as u8;
        if self.farm.is_up(backend) {
            self.workers[i].handle_backend_connected(conn, backend);
            self.farm.handle_connected(backend, lb, conn);
            self.trace_simple(TraceKind::Connected, lb, conn.slot() as u32, backend);
            self.lb_input(i, Input::Connected { conn });
        } else {
            self.workers[i].forget(conn);
            self.trace_simple(TraceKind::Closed, lb, conn.slot() as u32, 0);
            let reason = CloseReason::Error;
            self.lb_input(i, Input::Closed { conn, reason });
        }
    }

    /// The world stops carrying bytes on `conn` now and tells the balancer right after.
    fn close_conn(&mut self, i: usize, conn: ConnId, reason: CloseReason) {
        let Some(peer) = self.workers[i].break_conn(conn) else {
            return;
        };
        let lb = i as u8;
        match peer {
            Peer::Backend { backend, .. } => self.farm.handle_disconnected(backend, lb, conn),
            Peer::Refused | Peer::Dialled { .. } => {}
            Peer::Frontend { proxy, k } => {
                let instance = self.workers[i].instance;
                self.proxies
                    .handle_disconnected(proxy, usize::from(instance), k);
                let ev = Ev::ProxyReconnect { proxy, instance, k };
                self.after(Duration::from_secs(1), ev);
            }
        }
        self.after(Duration::ZERO, Ev::FeedClosed { lb, conn, reason });
    }

    fn outage(&mut self, backend: u16, down: bool, silent: bool) {
        let kind = if down {
            TraceKind::BackendDown
        } else {
            TraceKind::BackendUp
        };
        self.trace_simple(kind, 0, u32::from(silent), backend);
        for (l, c) in self.farm.handle_outage(backend, down, silent) {
            self.close_conn(usize::from(l), c, CloseReason::Error);
        }
    }

    /// Every worker of `instance` stops: its connections break (proxies and backends see
    /// resets), nothing reaches its cores again, and the edge sends it no new calls.
    fn instance_death(&mut self, instance: u8) {
        self.trace_simple(TraceKind::InstanceDown, instance, 0, 0);
        self.death = Some(Death::snapshot(&self.callers, instance, self.now));
        for i in 0..self.workers.len() {
            if self.workers[i].instance != instance {
                continue;
            }
            self.workers[i].alive = false;
            for conn in self.workers[i].open_conns() {
                self.close_conn(i, conn, CloseReason::Error);
            }
        }
        self.callers.handle_instance_down(usize::from(instance));
    }

    fn instance_alive(&self, instance: usize) -> bool {
        self.workers
            .iter()
            .any(|w| usize::from(w.instance) == instance && w.alive)
    }

    fn proxy_connect(&mut self, proxy: u16, instance: u8, k: u16) {
        let port = self.next_port;
        self.next_port = if self.next_port >= 60_000 {
            20_000
        } else {
            self.next_port + 1
        };
        let peer = SocketAddr::new(IpAddr::V4(proxy_ip(proxy)), port);
        // SO_REUSEPORT: the kernel hashes the connection to one of the instance's workers.
        let i = usize::from(instance) * self.k.workers + usize::from(port) % self.k.workers;
        let (conn, v) = self.workers[i].handle_accept(self.now, peer, Peer::Frontend { proxy, k });
        if let Some(WorkerOut::Violation { kind, detail }) = v {
            self.violate(kind, format!("lb{i}: {detail}"));
        }
        self.proxies
            .handle_connected(proxy, usize::from(instance), k, (i as u8, conn));
        self.drain_worker(i);
    }

    // ---- scheduling, randomness, tracing ---------------------------------------------------

    fn at(&mut self, at: Nanos, ev: Ev) {
        self.queue.push(at.max(self.now), ev);
    }

    /// Schedules `ev` after the constant delay of `lane` (see [`LANES`]).
    fn after_fixed(&mut self, lane: Lane, ev: Ev) {
        let at = self.now + LANES[lane as usize].as_nanos() as u64;
        self.queue.push_fifo(lane as usize, at, ev);
    }

    fn after(&mut self, d: Duration, ev: Ev) {
        self.at(self.now + d.as_nanos() as u64, ev);
    }

    fn tcp_latency(&mut self) -> Duration {
        draw(&mut self.rng, self.k.tcp_latency)
    }

    /// A UDP datagram: lost with the configured probability, else delivered after a latency.
    fn udp(&mut self, ev: Ev) {
        if crate::timers::chance(&mut self.rng, self.k.udp_loss) {
            self.n.udp_lost += 1;
            return;
        }
        let lat = draw(&mut self.rng, self.k.udp_latency);
        self.after(lat, ev);
    }
}

/// The tag key every instance shares (DESIGN.md: scale-out needs the same key everywhere).
const TAG_SECRET: &[u8; 32] = b"siplb-sim-shared-tag-key-000001!";
