//! Callers: user agents with RFC 3261 client transaction timers (A/B for INVITE, E/F for BYE
//! and CANCEL), placed as a Poisson process.
//!
//! A component in the sans-IO shape of the balancer itself (and of str0m's `netem`): the world
//! hands it inputs ([`Callers::handle_arrival`], [`Callers::handle_timer`],
//! [`Callers::handle_datagram`]) and drains what it wants done with [`Callers::poll_output`]:
//! datagrams for its proxy, timers to arm, calls that ended. It never sees the clock, the
//! queue or another peer; the shared random generator comes in as an argument, so the draws
//! keep one order.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use lb_core::ConnId;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::scenario::{Knobs, Span};
use crate::sip::Method;
use crate::slots::Slots;
use crate::timers::{chance, draw, Delay, Lane, T1, T2};
use crate::wire::{DialogInfo, RequestSpec};

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
    Req(RequestSpec),
    /// The 200 to a BYE the callee side sent, back on the connection the BYE came on.
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

/// What the callers want done.
#[derive(Debug)]
pub(crate) enum CallerOut {
    /// A call was placed: its first instance, its proxy, its plan.
    Placed {
        call: u32,
        home: u8,
        proxy: u16,
        plan: Plan,
    },
    /// A datagram to the call's proxy.
    Datagram { call: u32, msg: UaOut },
    /// Arm a timer; it comes back through [`Callers::handle_timer`].
    Timer {
        call: u32,
        timer: UaTimer,
        gen: u32,
        delay: Delay,
    },
    /// The call ended with an [`outcome`].
    Ended { call: u32, outcome: u8 },
}

/// Call outcomes, as indices into `Report::outcomes`.
pub(crate) mod outcome {
    pub(crate) const COMPLETED: u8 = 0;
    pub(crate) const CANCELLED: u8 = 1;
    pub(crate) const REJECTED: u8 = 2;
    pub(crate) const TIMED_OUT: u8 = 3;
    pub(crate) const ABANDONED: u8 = 4;
    pub(crate) const NONE: u8 = 255;
}

/// Where a call stands, as the caller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Calling,
    Proceeding,
    Confirmed,
    Terminating,
    Done,
}

/// A client transaction. 16 bytes: two fit beside the generations in a call's first cache
/// line. The retransmission interval is whole milliseconds (T1 doubled, or T2), so `u32` ms
/// holds it exactly.
#[derive(Clone, Copy, Debug)]
struct Tx {
    method: Method,
    proceeding: bool,
    reinvite: bool,
    tx: u32,
    cseq: u32,
    interval_ms: u32,
}

impl Tx {
    fn interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.interval_ms))
    }
}

/// T1 and T2 in the unit of [`Tx::interval_ms`].
const T1_MS: u32 = T1.as_millis() as u32;
const T2_MS: u32 = T2.as_millis() as u32;
const _: () = assert!(T1.as_nanos() == T1_MS as u128 * 1_000_000);
// What every timer reads fills the first cache line, no more.
const _: () = assert!(std::mem::offset_of!(Ua, proxy) == 64);

/// The caller of one call, in a dense array of them (see [`Callers`]). `repr(C)` and the
/// alignment keep the fields every timer and response reads first in one cache line of their
/// own (64 bytes: the generations, the phase, both transactions, the counters), and the dialog
/// (written once, read by the proxy) last: a storm touches tens of thousands of these at
/// random.
#[derive(Debug)]
#[repr(C, align(64))]
struct Ua {
    inv_gen: u32,
    ni_gen: u32,
    dlg_gen: u32,
    phase: Phase,
    cancel_pending: bool,
    cancel_sent: bool,
    inv: Option<Tx>,
    ni: Option<Tx>,
    next_tx: u32,
    next_cseq: u32,
    initial_tx: u32,
    initial_cseq: u32,
    proxy: u16,
    /// What the proxy reads for every request (the dialog for in-dialog ones), then the plan
    /// (read when the call is placed and answered).
    dialog: DialogInfo,
    plan: Plan,
}

impl Ua {
    fn tx(&mut self) -> u32 {
        self.next_tx += 1;
        self.next_tx - 1
    }

    fn cseq(&mut self) -> u32 {
        self.next_cseq += 1;
        self.next_cseq - 1
    }
}

/// Per call placed; the heavy state ([`Ua`]) lives in [`Callers::uas`] only while the call
/// is active.
#[derive(Debug)]
struct Record {
    home: u8,
    outcome: u8,
}

/// The knobs that shape the arrival process and the plans.
#[derive(Clone, Debug)]
struct PlanKnobs {
    calls: u64,
    rate: f64,
    proxies: usize,
    instances: usize,
    ring: Span,
    answer: Span,
    talk: Span,
    long_talk: Span,
    long_ring: Span,
    long_ring_fraction: f64,
    cancel_fraction: f64,
    long_fraction: f64,
    backend_hangup_fraction: f64,
    reinvite_every: Option<Duration>,
}

/// Every caller of a run. See the module docs.
#[derive(Debug)]
pub(crate) struct Callers {
    k: PlanKnobs,
    calls: Vec<Record>,
    /// The active calls' state, dense (see [`Slots`]).
    uas: Slots<Ua>,
    out: VecDeque<CallerOut>,
    /// Instances new calls are not sent to (the edge has marked them down).
    down: Vec<bool>,
    active: u64,
    outcomes: [u64; 6],
    retransmissions: u64,
}

impl Callers {
    pub(crate) fn new(k: &Knobs) -> Callers {
        Callers {
            k: PlanKnobs {
                calls: k.calls,
                rate: k.rate,
                proxies: k.proxies,
                instances: k.instances,
                ring: k.ring_delay,
                answer: k.answer_delay,
                talk: k.talk,
                long_talk: k.long_talk,
                long_ring: k.long_ring,
                long_ring_fraction: k.long_ring_fraction,
                cancel_fraction: k.cancel_fraction,
                long_fraction: k.long_fraction,
                backend_hangup_fraction: k.backend_hangup_fraction,
                reinvite_every: k.reinvite_every,
            },
            calls: Vec::new(),
            uas: Slots::new(),
            out: VecDeque::new(),
            down: vec![false; k.instances],
            active: 0,
            outcomes: [0; 6],
            retransmissions: 0,
        }
    }

    /// Next thing the callers want done, `None` once drained.
    pub(crate) fn poll_output(&mut self) -> Option<CallerOut> {
        self.out.pop_front()
    }

    /// Places the next call, if any are left; returns its number.
    pub(crate) fn handle_arrival(&mut self, rng: &mut SmallRng) -> Option<u32> {
        let idx = self.calls.len() as u32;
        if u64::from(idx) >= self.k.calls {
            return None;
        }
        let plan = self.make_plan(rng);
        let proxy = rng.random_range(0..self.k.proxies) as u16;
        let mut home = rng.random_range(0..self.k.instances);
        if self.down[home] {
            // The edge sends new calls only to instances it has not marked down, spread over
            // the live ones.
            let live: Vec<usize> = (0..self.k.instances).filter(|&i| !self.down[i]).collect();
            home = live
                .get(idx as usize % live.len().max(1))
                .copied()
                .unwrap_or(home);
        }
        let home = home as u8;
        let ua = Ua {
            plan,
            proxy,
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
        };
        self.uas.insert(idx, ua);
        self.calls.push(Record {
            home,
            outcome: outcome::NONE,
        });
        self.active += 1;
        self.out.push_back(CallerOut::Placed {
            call: idx,
            home,
            proxy,
            plan,
        });
        self.invite(idx, false);
        if let Some(c) = plan.cancel_after {
            self.timer(idx, UaTimer::Cancel, 0, Delay::After(c));
        }
        Some(idx)
    }

    /// The gap to the next arrival after call `call`, `None` after the last one. Drawn after
    /// the placed call's first datagram went out, as the draws always were.
    pub(crate) fn next_arrival(&mut self, call: u32, rng: &mut SmallRng) -> Option<Duration> {
        if u64::from(call) + 1 >= self.k.calls {
            return None;
        }
        let u: f64 = rng.random();
        let gap = -(1.0 - u).ln() / self.k.rate.max(1e-6);
        Some(Duration::from_secs_f64(gap.min(3600.0)))
    }

    /// The edge marks instance `i` down: no new calls go there.
    pub(crate) fn handle_instance_down(&mut self, i: usize) {
        if let Some(d) = self.down.get_mut(i) {
            *d = true;
        }
    }

    fn make_plan(&mut self, rng: &mut SmallRng) -> Plan {
        let k = &self.k;
        let ring = draw(rng, k.ring);
        let r: f64 = rng.random();
        let (answer, cancel_after) = if r < k.long_ring_fraction {
            (None, Some(draw(rng, k.long_ring)))
        } else if r < k.long_ring_fraction + k.cancel_fraction {
            let a = draw(rng, k.answer);
            let c = draw(
                rng,
                Span {
                    lo: Duration::ZERO,
                    hi: a,
                },
            );
            (Some(a), Some(ring + c))
        } else {
            (Some(draw(rng, k.answer)), None)
        };
        let talk = if chance(rng, k.long_fraction) {
            draw(rng, k.long_talk)
        } else {
            draw(rng, k.talk)
        };
        let backend_hangup = chance(rng, k.backend_hangup_fraction);
        Plan {
            ring,
            answer,
            cancel_after,
            talk,
            backend_hangup,
        }
    }

    fn ua(&mut self, call: u32) -> Option<&mut Ua> {
        self.uas.get_mut(call)
    }

    fn ua_ref(&self, call: u32) -> Option<&Ua> {
        self.uas.get(call)
    }

    fn timer(&mut self, call: u32, timer: UaTimer, gen: u32, delay: Delay) {
        self.out.push_back(CallerOut::Timer {
            call,
            timer,
            gen,
            delay,
        });
    }

    fn send(&mut self, call: u32, r: RequestSpec) {
        self.out.push_back(CallerOut::Datagram {
            call,
            msg: UaOut::Req(r),
        });
    }

    /// Starts an INVITE client transaction (initial or re-INVITE).
    fn invite(&mut self, call: u32, reinvite: bool) {
        let Some(ua) = self.ua(call) else { return };
        let tx = ua.tx();
        let cseq = ua.cseq();
        ua.inv = Some(Tx {
            method: Method::Invite,
            tx,
            cseq,
            interval_ms: T1_MS,
            proceeding: false,
            reinvite,
        });
        ua.inv_gen += 1;
        let gen = ua.inv_gen;
        if !reinvite {
            ua.initial_tx = tx;
            ua.initial_cseq = cseq;
        }
        self.send(call, invite_spec(tx, cseq, reinvite));
        self.timer(call, UaTimer::A, gen, Delay::After(T1));
        self.timer(call, UaTimer::B, gen, Delay::Lane(Lane::Timer64T1));
    }

    /// Starts a non-INVITE client transaction (BYE or CANCEL).
    fn non_invite(&mut self, call: u32, method: Method) {
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
            interval_ms: T1_MS,
            proceeding: false,
            reinvite: false,
        });
        ua.ni_gen += 1;
        let gen = ua.ni_gen;
        self.send(call, non_invite_spec(method, tx, cseq));
        self.timer(call, UaTimer::E, gen, Delay::After(T1));
        self.timer(call, UaTimer::F, gen, Delay::Lane(Lane::Timer64T1));
    }

    /// A timer armed by a [`CallerOut::Timer`] fired.
    pub(crate) fn handle_timer(&mut self, call: u32, timer: UaTimer, gen: u32) {
        let reinvite_every = self.k.reinvite_every;
        let Some(ua) = self.ua(call) else { return };
        match timer {
            UaTimer::A => {
                let Some(tx) = ua
                    .inv
                    .as_mut()
                    .filter(|t| gen == ua.inv_gen && !t.proceeding)
                else {
                    return;
                };
                tx.interval_ms *= 2;
                let (t, next) = (*tx, tx.interval());
                self.retransmissions += 1;
                self.send(call, invite_spec(t.tx, t.cseq, t.reinvite));
                self.timer(call, UaTimer::A, gen, Delay::After(next));
            }
            UaTimer::B => {
                let Some(tx) = ua.inv.filter(|t| gen == ua.inv_gen && !t.proceeding) else {
                    return;
                };
                ua.inv = None;
                ua.inv_gen += 1;
                if tx.reinvite {
                    self.non_invite(call, Method::Bye);
                } else {
                    self.done(call, outcome::TIMED_OUT);
                }
            }
            UaTimer::E => {
                let Some(tx) = ua.ni.as_mut().filter(|_| gen == ua.ni_gen) else {
                    return;
                };
                tx.interval_ms = if tx.proceeding {
                    T2_MS
                } else {
                    (tx.interval_ms * 2).min(T2_MS)
                };
                let (t, next) = (*tx, tx.interval());
                self.retransmissions += 1;
                self.send(call, non_invite_spec(t.method, t.tx, t.cseq));
                self.timer(call, UaTimer::E, gen, Delay::After(next));
            }
            UaTimer::F => {
                let Some(tx) = ua.ni.filter(|_| gen == ua.ni_gen) else {
                    return;
                };
                ua.ni = None;
                ua.ni_gen += 1;
                if tx.method == Method::Bye {
                    self.done(call, outcome::TIMED_OUT);
                }
            }
            UaTimer::Hangup => {
                if gen == ua.dlg_gen && ua.phase == Phase::Confirmed {
                    self.non_invite(call, Method::Bye);
                }
            }
            UaTimer::Reinvite => {
                if gen == ua.dlg_gen && ua.phase == Phase::Confirmed {
                    if ua.inv.is_none() {
                        self.invite(call, true);
                    }
                    if let Some(every) = reinvite_every {
                        self.timer(call, UaTimer::Reinvite, gen, Delay::After(every));
                    }
                }
            }
            UaTimer::Cancel => {
                if ua.cancel_sent {
                    return;
                }
                match ua.phase {
                    Phase::Proceeding => self.non_invite(call, Method::Cancel),
                    Phase::Calling => ua.cancel_pending = true,
                    Phase::Confirmed | Phase::Terminating | Phase::Done => {}
                }
            }
            UaTimer::Guard => {
                if gen == ua.inv_gen && ua.phase == Phase::Proceeding {
                    ua.inv = None;
                    ua.inv_gen += 1;
                    self.done(call, outcome::ABANDONED);
                }
            }
        }
    }

    /// A datagram from the call's proxy.
    pub(crate) fn handle_datagram(&mut self, call: u32, msg: ToUa) {
        match msg {
            ToUa::Bye { lb, conn, bye } => {
                // Always answer, even a retransmission or after the call is gone (RFC 3261 §15.1.2).
                self.out.push_back(CallerOut::Datagram {
                    call,
                    msg: UaOut::ByeOk { lb, conn, bye },
                });
                let phase = self.ua(call).map(|u| u.phase);
                if matches!(phase, Some(Phase::Confirmed | Phase::Terminating)) {
                    self.done(call, outcome::COMPLETED);
                }
            }
            ToUa::Resp {
                status,
                method,
                cseq,
                dialog,
            } => self.response(call, status, method, cseq, dialog),
        }
    }

    fn response(
        &mut self,
        call: u32,
        status: u16,
        method: Method,
        cseq: u32,
        dialog: Option<Box<DialogInfo>>,
    ) {
        let reinvite_every = self.k.reinvite_every;
        let Some(ua) = self.ua(call) else { return };
        let plan = ua.plan;
        match method {
            Method::Invite => {
                let Some(tx) = ua.inv.as_mut().filter(|t| t.cseq == cseq) else {
                    // A retransmitted 2xx (our ACK was lost): ACK it again (RFC 3261 §13.2.2.4).
                    if (200..300).contains(&status)
                        && matches!(ua.phase, Phase::Confirmed | Phase::Terminating)
                    {
                        let tx = ua.tx();
                        self.send(call, ack_spec(tx, cseq, true));
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
                            self.timer(call, UaTimer::Guard, gen, Delay::Lane(Lane::Guard));
                            if pending {
                                self.non_invite(call, Method::Cancel);
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
                    self.send(call, ack_spec(ack_tx, cseq, true));
                    if t.reinvite {
                        return;
                    }
                    if cancelled {
                        // The CANCEL lost the race with the 200: hang up at once (§9.1).
                        self.non_invite(call, Method::Bye);
                        return;
                    }
                    let hangup = if plan.backend_hangup {
                        plan.talk + HANGUP_FALLBACK
                    } else {
                        plan.talk
                    };
                    self.timer(call, UaTimer::Hangup, gen, Delay::After(hangup));
                    if let Some(every) = reinvite_every {
                        self.timer(call, UaTimer::Reinvite, gen, Delay::After(every));
                    }
                } else {
                    if let Some(d) = dialog {
                        ua.dialog.to_tag = d.to_tag;
                    }
                    // ACK of a non-2xx: same branch as the INVITE, hop by hop (§17.1.1.3).
                    self.send(call, ack_spec(t.tx, cseq, t.reinvite));
                    if !t.reinvite {
                        let o = if status == 487 {
                            outcome::CANCELLED
                        } else {
                            outcome::REJECTED
                        };
                        self.done(call, o);
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
                        self.done(call, outcome::COMPLETED);
                    }
                }
            }
            Method::Ack | Method::Other => {}
        }
    }

    fn done(&mut self, call: u32, o: u8) {
        let Some(c) = self.calls.get_mut(call as usize) else {
            return;
        };
        let Some(ua) = self.uas.get_mut(call) else {
            return;
        };
        if ua.phase == Phase::Done {
            return;
        }
        ua.phase = Phase::Done;
        ua.dlg_gen += 1;
        ua.inv_gen += 1;
        c.outcome = o;
        self.outcomes[usize::from(o)] += 1;
        self.active -= 1;
        self.out.push_back(CallerOut::Ended { call, outcome: o });
    }

    /// Frees a finished call's state (kept a while for stragglers: late retransmissions, the
    /// backend's 2xx retransmissions).
    pub(crate) fn reap(&mut self, call: u32) {
        self.uas.remove(call);
    }

    /// Reads the first word of the call's state, to bring it into the cache (see
    /// `World::warm`).
    pub(crate) fn warm(&self, call: u32) -> u32 {
        self.uas.get(call).map_or(0, |u| u.inv_gen)
    }

    /// Reads what the proxy reads of the call's state for a request (see `World::warm`).
    pub(crate) fn warm_dialog(&self, call: u32) -> u32 {
        self.uas.get(call).map_or(0, |u| {
            let d = &u.dialog;
            let first = |v: &[u8]| u32::from(v.first().copied().unwrap_or(0));
            u32::from(u.proxy) ^ first(&d.to_tag) ^ first(&d.route) ^ first(&d.target)
        })
    }

    /// The instance the call's untagged requests go to.
    pub(crate) fn home(&self, call: u32) -> Option<u8> {
        self.calls.get(call as usize).map(|c| c.home)
    }

    /// The proxy and dialog of a call still going (or not yet reaped).
    pub(crate) fn proxy_and_dialog(&self, call: u32) -> Option<(u16, &DialogInfo)> {
        let ua = self.ua_ref(call)?;
        Some((ua.proxy, &ua.dialog))
    }

    /// The backend named by the tag in the caller's route, once established.
    pub(crate) fn tag_backend(&self, call: u32) -> Option<u16> {
        self.ua_ref(call)?.dialog.tag_backend()
    }

    /// The call's phase while its state lives.
    pub(crate) fn phase(&self, call: u32) -> Option<Phase> {
        Some(self.ua_ref(call)?.phase)
    }

    /// The call's outcome, [`outcome::NONE`] while it goes on.
    pub(crate) fn outcome(&self, call: u32) -> u8 {
        self.calls
            .get(call as usize)
            .map_or(outcome::NONE, |c| c.outcome)
    }

    /// Calls placed so far.
    pub(crate) fn placed(&self) -> u64 {
        self.calls.len() as u64
    }

    /// Calls going on.
    pub(crate) fn active(&self) -> u64 {
        self.active
    }

    /// Calls ended, by outcome.
    pub(crate) fn outcomes(&self) -> [u64; 6] {
        self.outcomes
    }

    /// Timer A and E retransmissions so far.
    pub(crate) fn retransmissions(&self) -> u64 {
        self.retransmissions
    }
}

fn invite_spec(tx: u32, cseq: u32, reinvite: bool) -> RequestSpec {
    RequestSpec {
        method: Method::Invite,
        tx,
        cseq,
        dialog: reinvite,
        to_tag: reinvite,
        initial: !reinvite,
    }
}

fn non_invite_spec(method: Method, tx: u32, cseq: u32) -> RequestSpec {
    let dialog = method == Method::Bye;
    RequestSpec {
        method,
        tx,
        cseq,
        dialog,
        to_tag: dialog,
        initial: false,
    }
}

fn ack_spec(tx: u32, cseq: u32, dialog: bool) -> RequestSpec {
    RequestSpec {
        method: Method::Ack,
        tx,
        cseq,
        dialog,
        to_tag: true,
        initial: false,
    }
}
