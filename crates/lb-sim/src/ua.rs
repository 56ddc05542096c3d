//! User agents (callers) with RFC 3261 client transaction timers, and the stateless SIP proxies
//! that relay them from UDP into persistent TCP connections to the balancers.
//!
//! The UDP leg is modelled as structured datagrams (no bytes: nothing on it reaches the
//! balancer); the proxy writes real SIP onto the TCP leg and reads real SIP from it. The proxy is
//! stateless (RFC 3261 §16.11): its Via branch is derived from the caller's, so retransmissions
//! and CANCEL carry the same branch, and every retransmission reaches the balancer.

use std::time::Duration;

use bytes::Bytes;
use lb_core::{ConnId, T1};
use rand::Rng;
use smallvec::SmallVec;

use crate::sip::{self, Kind, Method, Summary};
use crate::trace::{TraceEvent, TraceKind};
use crate::world::{active_mut, proxy_ip, Active, Call, Ev, Lane, World};

/// RFC 3261 §17.1.2.2: the cap of Timer E's doubling.
const T2: Duration = Duration::from_secs(4);
/// The callee side's hang-up plan may fail (its BYE lost); the caller then hangs up this late.
const HANGUP_FALLBACK: Duration = Duration::from_secs(40);

/// How the call will go, drawn from the seed when it is placed. The backends read it too: the
/// simulated callee "knows" when to answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    /// INVITE received → 180.
    pub(crate) ring: Duration,
    /// 180 → 200; `None`: never answers (rings until cancelled).
    pub(crate) answer: Option<Duration>,
    /// The caller cancels this long after sending the INVITE.
    pub(crate) cancel_after: Option<Duration>,
    /// Established → hang-up.
    pub(crate) talk: Duration,
    /// The callee side hangs up (the backend sends the BYE).
    pub(crate) backend_hangup: bool,
}

/// Caller timers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum UaTimer {
    A,
    B,
    E,
    F,
    Hangup,
    Reinvite,
    Cancel,
    Guard,
}

/// Caller → proxy datagrams.
#[derive(Debug)]
pub(crate) enum UaOut {
    Req {
        method: Method,
        tx: u32,
        cseq: u32,
        dialog: bool,
        to_tag: bool,
        initial: bool,
    },
    ByeOk {
        lb: u8,
        conn: ConnId,
        bye: Bytes,
    },
}

/// Proxy → caller datagrams.
#[derive(Debug)]
pub(crate) enum ToUa {
    Resp {
        status: u16,
        method: Method,
        cseq: u32,
        dialog: Option<Box<DialogInfo>>,
    },
    Bye {
        lb: u8,
        conn: ConnId,
        bye: Bytes,
    },
}

/// What a final response tells the caller about the dialog.
#[derive(Debug, Default)]
pub(crate) struct DialogInfo {
    to_tag: SmallVec<[u8; 32]>,
    route: SmallVec<[u8; 96]>,
    target: SmallVec<[u8; 48]>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Calling,
    Proceeding,
    Confirmed,
    Terminating,
    Done,
}

#[derive(Clone, Copy, Debug)]
struct Tx {
    method: Method,
    tx: u32,
    cseq: u32,
    interval: Duration,
    proceeding: bool,
    reinvite: bool,
}

/// The caller of one call.
#[derive(Debug)]
pub(crate) struct UaState {
    phase: Phase,
    next_tx: u32,
    next_cseq: u32,
    inv: Option<Tx>,
    ni: Option<Tx>,
    inv_gen: u32,
    ni_gen: u32,
    dlg_gen: u32,
    initial_tx: u32,
    initial_cseq: u32,
    cancel_pending: bool,
    cancel_sent: bool,
    dialog: DialogInfo,
}

impl UaState {
    pub(crate) fn new() -> UaState {
        UaState {
            phase: Phase::Calling,
            next_tx: 1,
            next_cseq: 1,
            inv: None,
            ni: None,
            inv_gen: 0,
            ni_gen: 0,
            dlg_gen: 0,
            initial_tx: 0,
            initial_cseq: 0,
            cancel_pending: false,
            cancel_sent: false,
            dialog: DialogInfo::default(),
        }
    }

    /// The backend named by the tag in the caller's route (`lb=B.K.MAC`), once established.
    pub(crate) fn tag_backend(&self) -> Option<u16> {
        let tag = sip::param(&self.dialog.route, b"lb")?;
        let dot = memchr::memchr(b'.', tag)?;
        sip::parse_u64(&tag[..dot]).and_then(|b| u16::try_from(b).ok())
    }

    fn tx(&mut self) -> u32 {
        self.next_tx += 1;
        self.next_tx - 1
    }

    fn cseq(&mut self) -> u32 {
        self.next_cseq += 1;
        self.next_cseq - 1
    }
}

/// Call outcomes, as indices into `Counters::outcomes`.
pub(crate) mod outcome {
    pub(crate) const COMPLETED: u8 = 0;
    pub(crate) const CANCELLED: u8 = 1;
    pub(crate) const REJECTED: u8 = 2;
    pub(crate) const TIMED_OUT: u8 = 3;
    pub(crate) const ABANDONED: u8 = 4;
    pub(crate) const NONE: u8 = 255;
}

impl World {
    pub(crate) fn call_arrival(&mut self) {
        let idx = self.calls.len() as u32;
        if u64::from(idx) >= self.k.calls {
            return;
        }
        let plan = self.make_plan();
        let proxy = self.rng.random_range(0..self.k.proxies) as u16;
        let home = self.rng.random_range(0..self.k.instances) as u8;
        self.calls.push(Call {
            home,
            outcome: outcome::NONE,
            active: Some(Box::new(Active {
                plan,
                proxy,
                ua: UaState::new(),
                be: Default::default(),
            })),
        });
        self.n.active_calls += 1;
        self.trace.record(TraceEvent {
            t_us: self.now / 1000,
            kind: TraceKind::CallStart,
            lb: home,
            conn: u32::from(proxy),
            call: u64::from(idx),
            code: 0,
            len: 0,
            bytes_hash: 0,
        });
        self.ua_invite(idx, false);
        if let Some(c) = plan.cancel_after {
            self.after(
                c,
                Ev::UaTimer {
                    call: idx,
                    timer: UaTimer::Cancel,
                    gen: 0,
                },
            );
        }
        if u64::from(idx) + 1 < self.k.calls {
            let u: f64 = self.rng.random();
            let gap = -(1.0 - u).ln() / self.k.rate.max(1e-6);
            self.after(Duration::from_secs_f64(gap.min(3600.0)), Ev::CallArrival);
        }
    }

    fn make_plan(&mut self) -> Plan {
        let k = &self.k;
        let (ring_s, ans_s, long_ring, talk_s, long_talk) = (
            k.ring_delay,
            k.answer_delay,
            k.long_ring,
            k.talk,
            k.long_talk,
        );
        let (lrf, cf, lf, bhf) = (
            k.long_ring_fraction,
            k.cancel_fraction,
            k.long_fraction,
            k.backend_hangup_fraction,
        );
        let ring = self.draw(ring_s);
        let r: f64 = self.rng.random();
        let (answer, cancel_after) = if r < lrf {
            (None, Some(self.draw(long_ring)))
        } else if r < lrf + cf {
            let a = self.draw(ans_s);
            let c = self.draw(crate::scenario::Span {
                lo: Duration::ZERO,
                hi: a,
            });
            (Some(a), Some(ring + c))
        } else {
            (Some(self.draw(ans_s)), None)
        };
        let talk = if self.chance(lf) {
            self.draw(long_talk)
        } else {
            self.draw(talk_s)
        };
        let backend_hangup = self.chance(bhf);
        Plan {
            ring,
            answer,
            cancel_after,
            talk,
            backend_hangup,
        }
    }

    fn ua(&mut self, call: u32) -> Option<&mut UaState> {
        self.calls
            .get_mut(call as usize)?
            .active
            .as_mut()
            .map(|a| &mut a.ua)
    }

    /// Starts an INVITE client transaction (initial or re-INVITE).
    fn ua_invite(&mut self, call: u32, reinvite: bool) {
        let Some(ua) = self.ua(call) else { return };
        let tx = ua.tx();
        let cseq = ua.cseq();
        ua.inv = Some(Tx {
            method: Method::Invite,
            tx,
            cseq,
            interval: T1,
            proceeding: false,
            reinvite,
        });
        ua.inv_gen += 1;
        let gen = ua.inv_gen;
        if !reinvite {
            ua.initial_tx = tx;
            ua.initial_cseq = cseq;
        }
        let msg = UaOut::Req {
            method: Method::Invite,
            tx,
            cseq,
            dialog: reinvite,
            to_tag: reinvite,
            initial: !reinvite,
        };
        self.udp(Ev::UdpToProxy { call, msg });
        self.after(
            T1,
            Ev::UaTimer {
                call,
                timer: UaTimer::A,
                gen,
            },
        );
        self.after_fixed(
            Lane::Timer64T1,
            Ev::UaTimer {
                call,
                timer: UaTimer::B,
                gen,
            },
        );
    }

    /// Starts a non-INVITE client transaction (BYE or CANCEL).
    fn ua_non_invite(&mut self, call: u32, method: Method) {
        let Some(ua) = self.ua(call) else { return };
        let (tx, cseq) = if method == Method::Cancel {
            ua.cancel_sent = true;
            (ua.initial_tx, ua.initial_cseq)
        } else {
            ua.phase = Phase::Terminating;
            (ua.tx(), ua.cseq())
        };
        ua.ni = Some(Tx {
            method,
            tx,
            cseq,
            interval: T1,
            proceeding: false,
            reinvite: false,
        });
        ua.ni_gen += 1;
        let gen = ua.ni_gen;
        let dialog = method == Method::Bye;
        let msg = UaOut::Req {
            method,
            tx,
            cseq,
            dialog,
            to_tag: dialog,
            initial: false,
        };
        self.udp(Ev::UdpToProxy { call, msg });
        self.after(
            T1,
            Ev::UaTimer {
                call,
                timer: UaTimer::E,
                gen,
            },
        );
        self.after_fixed(
            Lane::Timer64T1,
            Ev::UaTimer {
                call,
                timer: UaTimer::F,
                gen,
            },
        );
    }

    pub(crate) fn ua_timer(&mut self, call: u32, timer: UaTimer, gen: u32) {
        let Some(a) = active_mut(&mut self.calls, call) else {
            return;
        };
        let plan = a.plan;
        let ua = &mut a.ua;
        match timer {
            UaTimer::A => {
                let Some(tx) = ua
                    .inv
                    .as_mut()
                    .filter(|t| gen == ua.inv_gen && !t.proceeding)
                else {
                    return;
                };
                tx.interval *= 2;
                let (t, next) = (*tx, tx.interval);
                let msg = UaOut::Req {
                    method: Method::Invite,
                    tx: t.tx,
                    cseq: t.cseq,
                    dialog: t.reinvite,
                    to_tag: t.reinvite,
                    initial: !t.reinvite,
                };
                self.n.retransmissions += 1;
                self.udp(Ev::UdpToProxy { call, msg });
                self.after(
                    next,
                    Ev::UaTimer {
                        call,
                        timer: UaTimer::A,
                        gen,
                    },
                );
            }
            UaTimer::B => {
                let Some(tx) = ua.inv.filter(|t| gen == ua.inv_gen && !t.proceeding) else {
                    return;
                };
                ua.inv = None;
                ua.inv_gen += 1;
                if tx.reinvite {
                    self.ua_non_invite(call, Method::Bye);
                } else {
                    self.ua_done(call, outcome::TIMED_OUT);
                }
            }
            UaTimer::E => {
                let Some(tx) = ua.ni.as_mut().filter(|_| gen == ua.ni_gen) else {
                    return;
                };
                tx.interval = if tx.proceeding {
                    T2
                } else {
                    (tx.interval * 2).min(T2)
                };
                let (t, next) = (*tx, tx.interval);
                let dialog = t.method == Method::Bye;
                let msg = UaOut::Req {
                    method: t.method,
                    tx: t.tx,
                    cseq: t.cseq,
                    dialog,
                    to_tag: dialog,
                    initial: false,
                };
                self.n.retransmissions += 1;
                self.udp(Ev::UdpToProxy { call, msg });
                self.after(
                    next,
                    Ev::UaTimer {
                        call,
                        timer: UaTimer::E,
                        gen,
                    },
                );
            }
            UaTimer::F => {
                let Some(tx) = ua.ni.filter(|_| gen == ua.ni_gen) else {
                    return;
                };
                ua.ni = None;
                ua.ni_gen += 1;
                if tx.method == Method::Bye {
                    self.ua_done(call, outcome::TIMED_OUT);
                }
            }
            UaTimer::Hangup => {
                if gen == ua.dlg_gen && ua.phase == Phase::Confirmed {
                    self.ua_non_invite(call, Method::Bye);
                }
            }
            UaTimer::Reinvite => {
                if gen == ua.dlg_gen && ua.phase == Phase::Confirmed {
                    if ua.inv.is_none() {
                        self.ua_invite(call, true);
                    }
                    if let Some(every) = self.k.reinvite_every {
                        self.after(
                            every,
                            Ev::UaTimer {
                                call,
                                timer: UaTimer::Reinvite,
                                gen,
                            },
                        );
                    }
                }
            }
            UaTimer::Cancel => {
                if ua.cancel_sent {
                    return;
                }
                match ua.phase {
                    Phase::Proceeding => self.ua_non_invite(call, Method::Cancel),
                    Phase::Calling => ua.cancel_pending = true,
                    Phase::Confirmed | Phase::Terminating | Phase::Done => {}
                }
            }
            UaTimer::Guard => {
                if gen == ua.inv_gen && ua.phase == Phase::Proceeding {
                    ua.inv = None;
                    ua.inv_gen += 1;
                    self.ua_done(call, outcome::ABANDONED);
                }
            }
        }
        let _ = plan;
    }

    pub(crate) fn ua_receive(&mut self, call: u32, msg: ToUa) {
        match msg {
            ToUa::Bye { lb, conn, bye } => {
                // Always answer, even a retransmission or after the call is gone (RFC 3261 §15.1.2).
                self.udp(Ev::UdpToProxy {
                    call,
                    msg: UaOut::ByeOk { lb, conn, bye },
                });
                let phase = self.ua(call).map(|u| u.phase);
                if matches!(phase, Some(Phase::Confirmed | Phase::Terminating)) {
                    self.ua_done(call, outcome::COMPLETED);
                }
            }
            ToUa::Resp {
                status,
                method,
                cseq,
                dialog,
            } => self.ua_response(call, status, method, cseq, dialog),
        }
    }

    fn ua_response(
        &mut self,
        call: u32,
        status: u16,
        method: Method,
        cseq: u32,
        dialog: Option<Box<DialogInfo>>,
    ) {
        let Some(a) = active_mut(&mut self.calls, call) else {
            return;
        };
        let plan = a.plan;
        let ua = &mut a.ua;
        match method {
            Method::Invite => {
                let Some(tx) = ua.inv.as_mut().filter(|t| t.cseq == cseq) else {
                    // A retransmitted 2xx (our ACK was lost): ACK it again (RFC 3261 §13.2.2.4).
                    if (200..300).contains(&status)
                        && matches!(ua.phase, Phase::Confirmed | Phase::Terminating)
                    {
                        let tx = ua.tx();
                        let msg = UaOut::Req {
                            method: Method::Ack,
                            tx,
                            cseq,
                            dialog: true,
                            to_tag: true,
                            initial: false,
                        };
                        self.udp(Ev::UdpToProxy { call, msg });
                    }
                    return;
                };
                if status < 200 {
                    if !tx.proceeding {
                        tx.proceeding = true;
                        if !tx.reinvite && ua.phase == Phase::Calling {
                            ua.phase = Phase::Proceeding;
                            let gen = ua.inv_gen;
                            let pending = ua.cancel_pending;
                            self.after_fixed(
                                Lane::Guard,
                                Ev::UaTimer {
                                    call,
                                    timer: UaTimer::Guard,
                                    gen,
                                },
                            );
                            if pending {
                                self.ua_non_invite(call, Method::Cancel);
                            }
                        }
                    }
                    return;
                }
                let t = *tx;
                ua.inv = None;
                ua.inv_gen += 1;
                if status < 300 {
                    if !t.reinvite {
                        if let Some(d) = dialog {
                            ua.dialog = *d;
                        }
                        ua.phase = Phase::Confirmed;
                    }
                    let ack_tx = ua.tx();
                    let cancelled = ua.cancel_sent || ua.cancel_pending;
                    let gen = ua.dlg_gen;
                    let msg = UaOut::Req {
                        method: Method::Ack,
                        tx: ack_tx,
                        cseq,
                        dialog: true,
                        to_tag: true,
                        initial: false,
                    };
                    self.udp(Ev::UdpToProxy { call, msg });
                    if t.reinvite {
                        return;
                    }
                    if cancelled {
                        // The CANCEL lost the race with the 200: hang up at once (§9.1).
                        self.ua_non_invite(call, Method::Bye);
                        return;
                    }
                    let hangup = if plan.backend_hangup {
                        plan.talk + HANGUP_FALLBACK
                    } else {
                        plan.talk
                    };
                    self.after(
                        hangup,
                        Ev::UaTimer {
                            call,
                            timer: UaTimer::Hangup,
                            gen,
                        },
                    );
                    if let Some(every) = self.k.reinvite_every {
                        self.after(
                            every,
                            Ev::UaTimer {
                                call,
                                timer: UaTimer::Reinvite,
                                gen,
                            },
                        );
                    }
                } else {
                    if let Some(d) = dialog {
                        ua.dialog.to_tag = d.to_tag;
                    }
                    // ACK of a non-2xx: same branch as the INVITE, hop by hop (§17.1.1.3).
                    let msg = UaOut::Req {
                        method: Method::Ack,
                        tx: t.tx,
                        cseq,
                        dialog: t.reinvite,
                        to_tag: true,
                        initial: false,
                    };
                    self.udp(Ev::UdpToProxy { call, msg });
                    if !t.reinvite {
                        let o = if status == 487 {
                            outcome::CANCELLED
                        } else {
                            outcome::REJECTED
                        };
                        self.ua_done(call, o);
                    }
                }
            }
            Method::Bye | Method::Cancel => {
                if status < 200 {
                    if let Some(tx) = ua.ni.as_mut() {
                        tx.proceeding = true;
                    }
                    return;
                }
                if ua.ni.is_some_and(|t| t.method == method && t.cseq == cseq) {
                    ua.ni = None;
                    ua.ni_gen += 1;
                    if method == Method::Bye {
                        self.ua_done(call, outcome::COMPLETED);
                    }
                }
            }
            Method::Ack | Method::Other => {}
        }
    }

    fn ua_done(&mut self, call: u32, o: u8) {
        let Some(c) = self.calls.get_mut(call as usize) else {
            return;
        };
        let Some(a) = c.active.as_mut() else { return };
        if a.ua.phase == Phase::Done {
            return;
        }
        a.ua.phase = Phase::Done;
        a.ua.dlg_gen += 1;
        a.ua.inv_gen += 1;
        c.outcome = o;
        self.n.outcomes[usize::from(o)] += 1;
        self.n.active_calls -= 1;
        self.trace.record(TraceEvent {
            t_us: self.now / 1000,
            kind: TraceKind::CallEnd,
            lb: 0,
            conn: 0,
            call: u64::from(call),
            code: u16::from(o),
            len: 0,
            bytes_hash: 0,
        });
        // Keep the state a while for stragglers (late retransmissions, the backend's 2xx
        // retransmissions), then free it.
        self.after_fixed(Lane::Timer64T1, Ev::Reap { call });
    }

    // ---- proxy -------------------------------------------------------------------------------

    pub(crate) fn proxy_from_ua(&mut self, call: u32, msg: UaOut) {
        match msg {
            UaOut::Req {
                method,
                tx,
                cseq,
                dialog,
                to_tag,
                initial,
            } => {
                let Some(a) = self
                    .calls
                    .get(call as usize)
                    .and_then(|c| c.active.as_ref())
                else {
                    return;
                };
                let proxy = a.proxy;
                let Some((i, conn)) = self.proxy_pick(call, proxy, dialog) else {
                    self.n.tcp_lost += 1;
                    return;
                };
                let Some(a) = self
                    .calls
                    .get(call as usize)
                    .and_then(|c| c.active.as_ref())
                else {
                    return;
                };
                write_request(
                    &mut self.out,
                    &a.ua.dialog,
                    proxy,
                    call,
                    method,
                    tx,
                    cseq,
                    dialog,
                    to_tag,
                    initial,
                );
                let bytes = self.out.split();
                reserve(&mut self.out);
                self.send_to_lb(i, conn, bytes, call, method.code());
            }
            UaOut::ByeOk { lb, conn, bye } => {
                write_bye_ok(&mut self.out, &bye);
                let bytes = self.out.split();
                reserve(&mut self.out);
                self.send_to_lb(usize::from(lb), conn, bytes, call, 200);
            }
        }
    }

    /// The balancer connection for a request: untagged ones stay on the call's home instance
    /// (the new-call table lives there); in-dialog ones may go to any instance when spreading.
    fn proxy_pick(&mut self, call: u32, proxy: u16, dialog: bool) -> Option<(usize, ConnId)> {
        let kc = self.k.conns_per_proxy;
        let (i, k0) = if dialog && self.k.spread_in_dialog {
            (
                self.rng.random_range(0..self.k.instances),
                self.rng.random_range(0..kc),
            )
        } else {
            (
                usize::from(self.calls[call as usize].home),
                call as usize % kc,
            )
        };
        let conns = &self.proxies[usize::from(proxy)].conns[i];
        (0..kc).find_map(|d| conns[(k0 + d) % kc]).map(|c| (i, c))
    }

    pub(crate) fn proxy_from_lb(&mut self, lb: u8, conn: ConnId, bytes: Bytes, s: Summary) {
        let Some(call) = s.call.and_then(|c| u32::try_from(c).ok()) else {
            return;
        };
        match s.kind {
            Kind::Response(status) => {
                let dialog = (status >= 200 && s.cseq_method == Method::Invite)
                    .then(|| Box::new(dialog_info(&bytes)));
                self.udp(Ev::UdpToUa {
                    call,
                    msg: ToUa::Resp {
                        status,
                        method: s.cseq_method,
                        cseq: s.cseq,
                        dialog,
                    },
                });
            }
            Kind::Request(Method::Bye) => self.udp(Ev::UdpToUa {
                call,
                msg: ToUa::Bye {
                    lb,
                    conn,
                    bye: bytes,
                },
            }),
            Kind::Request(_) => {}
        }
    }
}

fn dialog_info(msg: &[u8]) -> DialogInfo {
    let mut d = DialogInfo::default();
    if let Some(tag) = sip::header_value(msg, b"To").and_then(|v| sip::param(v, b"tag")) {
        d.to_tag.extend_from_slice(tag);
    }
    // The caller's route set is the Record-Route list reversed (§12.1.2); the first hop is its
    // own proxy, which pops its entry, so what reaches the balancer is the rest: the
    // balancer's entry.
    if let Some(rr) = sip::record_routes(msg).find(|u| sip::param(u, b"lb").is_some()) {
        d.route.extend_from_slice(rr);
    }
    if let Some(c) = sip::header_value(msg, b"Contact").and_then(sip::angle) {
        d.target.extend_from_slice(c);
    }
    d
}

pub(crate) fn reserve(out: &mut bytes::BytesMut) {
    if out.capacity() < 4096 {
        out.reserve(crate::world::OUT_CHUNK);
    }
}

#[allow(clippy::too_many_arguments)]
fn write_request(
    out: &mut bytes::BytesMut,
    d: &DialogInfo,
    proxy: u16,
    call: u32,
    method: Method,
    tx: u32,
    cseq: u32,
    dialog: bool,
    to_tag: bool,
    initial: bool,
) {
    let ip = proxy_ip(proxy).octets();
    let m = method.as_str().as_bytes();
    out.extend_from_slice(m);
    if dialog && !d.target.is_empty() {
        out.extend_from_slice(b" ");
        out.extend_from_slice(&d.target);
        out.extend_from_slice(b" SIP/2.0\r\n");
    } else {
        out.extend_from_slice(b" sip:callee@sim SIP/2.0\r\n");
    }
    out.extend_from_slice(b"Via: SIP/2.0/TCP ");
    put_ip(out, ip);
    out.extend_from_slice(b":5060;branch=z9hG4bKp");
    sip::put_u64(out, u64::from(call));
    out.extend_from_slice(b".");
    sip::put_u64(out, u64::from(tx));
    out.extend_from_slice(b";rport\r\nVia: SIP/2.0/UDP 10.1.");
    sip::put_u64(out, u64::from((call >> 8) & 0xff));
    out.extend_from_slice(b".");
    sip::put_u64(out, u64::from(call & 0xff));
    out.extend_from_slice(b":5060;branch=z9hG4bKu");
    sip::put_u64(out, u64::from(call));
    out.extend_from_slice(b".");
    sip::put_u64(out, u64::from(tx));
    out.extend_from_slice(b"\r\nMax-Forwards: 69\r\n");
    if initial {
        out.extend_from_slice(b"Record-Route: <sip:");
        put_ip(out, ip);
        out.extend_from_slice(b":5060;transport=tcp;lr>\r\n");
    }
    if dialog && !d.route.is_empty() {
        out.extend_from_slice(b"Route: <");
        out.extend_from_slice(&d.route);
        out.extend_from_slice(b">\r\n");
    }
    out.extend_from_slice(b"From: <sip:caller@ua.sim>;tag=u");
    sip::put_u64(out, u64::from(call));
    out.extend_from_slice(b"\r\nTo: <sip:callee@sim>");
    if to_tag && !d.to_tag.is_empty() {
        out.extend_from_slice(b";tag=");
        out.extend_from_slice(&d.to_tag);
    }
    out.extend_from_slice(b"\r\nCall-ID: ");
    sip::put_u64(out, u64::from(call));
    out.extend_from_slice(b"@sim\r\nCSeq: ");
    sip::put_u64(out, u64::from(cseq));
    out.extend_from_slice(b" ");
    out.extend_from_slice(m);
    out.extend_from_slice(b"\r\n");
    if method == Method::Invite {
        out.extend_from_slice(b"Contact: <sip:ua");
        sip::put_u64(out, u64::from(call));
        out.extend_from_slice(b"@10.1.");
        sip::put_u64(out, u64::from((call >> 8) & 0xff));
        out.extend_from_slice(b".");
        sip::put_u64(out, u64::from(call & 0xff));
        out.extend_from_slice(b":5060>\r\nContent-Type: application/sdp\r\nContent-Length: ");
        sip::put_u64(out, SDP.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(SDP);
    } else {
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
}

/// The caller's 200 to a BYE the callee side sent: Via, From, To, Call-ID and CSeq copied.
fn write_bye_ok(out: &mut bytes::BytesMut, bye: &[u8]) {
    out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
    for h in sip::headers(bye) {
        if [&b"Via"[..], b"From", b"To", b"Call-ID", b"CSeq"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
        {
            out.extend_from_slice(h.line);
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

pub(crate) fn put_ip(out: &mut bytes::BytesMut, ip: [u8; 4]) {
    for (i, o) in ip.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b".");
        }
        sip::put_u64(out, u64::from(*o));
    }
}

/// A small fixed session description, so bodies are framed by Content-Length like real ones.
pub(crate) const SDP: &[u8] = b"v=0\r\no=- 1 1 IN IP4 10.1.0.1\r\ns=-\r\nc=IN IP4 10.1.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
