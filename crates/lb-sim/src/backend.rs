//! Backends: B2BUAs in plain SIP mode. They answer INVITE with 100 / 180 / 200 after the call's
//! planned delays (often slower than T1, so callers retransmit), copy Via / Record-Route / From /
//! To / Call-ID / CSeq as RFC 3261 §8.2.6 and §12.1.1 say, add a To tag, retransmit 2xx until the
//! ACK (§13.3.1.4), answer BYE, CANCEL (+ 487) and re-INVITE, and sometimes hang up themselves
//! with a BYE routed by the Record-Route set they learned.
//!
//! The farm behaves as one B2BUA cluster with replicated call state: a backup that receives a
//! call's messages after its backend died carries on. Which backend received each message is
//! what the affinity invariant checks.
//!
//! A component like [`crate::caller::Callers`]: messages in ([`Farm::handle_message`]), timers
//! in ([`Farm::handle_timer`]), what to send and which timers to arm out ([`Farm::poll_output`]).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lb_core::ConnId;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::caller::Plan;
use crate::sip::{Kind, Method, Summary};
use crate::slots::Slots;
use crate::timers::{OK_GIVE_UP, T1, T2};
use crate::wire::{self, Extras, Template, OUT_CHUNK};

/// One backend.
#[derive(Debug)]
struct Backend {
    up: bool,
    /// Delay before its 100 Trying.
    trying: Duration,
    /// Connected balancer connections `(worker, conn)`.
    conns: Vec<(u8, ConnId)>,
    /// Messages received since the last sample.
    load: u64,
    /// Hung: connections stay open, nothing is answered or sent.
    silent: bool,
}

/// Backend timers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BackendTimer {
    Trying,
    Ringing,
    Answer,
    OkRetransmit,
    Hangup,
}

/// What the farm wants done.
#[derive(Debug)]
pub(crate) enum FarmOut {
    /// Bytes onto a backend's connection to a balancer worker.
    ToLb {
        lb: u8,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
    },
    /// A message a dead or hung backend would have sent.
    Lost,
    /// Arm a timer; it comes back through [`Farm::handle_timer`].
    Timer {
        call: u32,
        timer: BackendTimer,
        gen: u32,
        after: Duration,
    },
}

/// The callee side of one call (replicated across the cluster), in a dense array of them.
/// `repr(C)` and the alignment: what every timer and message checks first sits in the first
/// cache line, the plan, the stored messages and their template after it (see `Ua` in
/// `caller.rs`).
#[derive(Debug)]
#[repr(C, align(64))]
struct Callee {
    gen: u32,
    ok_gen: u32,
    ok_cseq: u32,
    stage: Stage,
    acked_initial: bool,
    ended: bool,
    /// Where the call's latest message came from: `(worker, conn, backend)`.
    last: Option<(u8, ConnId, u16)>,
    /// The 2xx retransmission interval and the time spent retransmitting, in whole
    /// milliseconds (T1 doubled up to T2), so `u32` holds them exactly.
    ok_interval_ms: u32,
    ok_elapsed_ms: u32,
    /// The backend that sent the callee side's BYE: its response belongs there.
    origin: Option<u16>,
    /// The backend that received the INVITE last: where its server transaction lives.
    invite_backend: Option<u16>,
    plan: Plan,
    /// The initial INVITE as received, copied (responses and the callee's BYE are built from it).
    invite: Option<Bytes>,
    ok: Option<Bytes>,
    /// Where the lines its responses copy sit in `invite`.
    template: Template,
}

// What every timer and message reads fills the first cache line, no more.
const _: () = assert!(std::mem::offset_of!(Callee, plan) <= 64);
const T1_MS: u32 = T1.as_millis() as u32;
const T2_MS: u32 = T2.as_millis() as u32;
const OK_GIVE_UP_MS: u32 = OK_GIVE_UP.as_millis() as u32;
const _: () = assert!(T1.as_nanos() == T1_MS as u128 * 1_000_000);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    #[default]
    None,
    Trying,
    Ringing,
    Answered,
    Rejected,
}

/// The backend farm of a run. See the module docs.
#[derive(Debug)]
pub(crate) struct Farm {
    backends: Vec<Backend>,
    calls: Slots<Callee>,
    spread: bool,
    tx: Tx,
    retransmissions: u64,
}

/// The farm's writer and output queue, borrowed apart from the calls so a stored INVITE or
/// 2xx is written from where it lies, never cloned.
#[derive(Debug)]
struct Tx {
    out: VecDeque<FarmOut>,
    buf: BytesMut,
}

impl Farm {
    /// `trying[b]`: backend `b`'s delay before its 100 Trying.
    pub(crate) fn new(trying: Vec<Duration>, spread: bool) -> Farm {
        Farm {
            backends: trying
                .into_iter()
                .map(|trying| Backend {
                    up: true,
                    trying,
                    conns: Vec::new(),
                    load: 0,
                    silent: false,
                })
                .collect(),
            calls: Slots::new(),
            spread,
            tx: Tx {
                out: VecDeque::new(),
                buf: BytesMut::with_capacity(OUT_CHUNK),
            },
            retransmissions: 0,
        }
    }

    /// Next thing the farm wants done, `None` once drained.
    pub(crate) fn poll_output(&mut self) -> Option<FarmOut> {
        self.tx.out.pop_front()
    }

    /// A call was placed: the callee side learns its plan.
    pub(crate) fn handle_placed(&mut self, call: u32, plan: Plan) {
        self.calls.insert(
            call,
            Callee {
                plan,
                invite: None,
                template: Template::default(),
                stage: Stage::None,
                last: None,
                gen: 0,
                ok: None,
                ok_cseq: 0,
                ok_interval_ms: 0,
                ok_elapsed_ms: 0,
                ok_gen: 0,
                acked_initial: false,
                ended: false,
                origin: None,
                invite_backend: None,
            },
        );
    }

    /// The call is over for good: its state goes.
    pub(crate) fn reap(&mut self, call: u32) {
        if let Some(c) = self.calls.remove(call) {
            // The slot waits for the next call; the stored messages go now.
            c.invite = None;
            c.ok = None;
        }
    }

    /// Whether backend `b` takes bytes now (up and not hung).
    pub(crate) fn is_receiving(&self, b: u16) -> bool {
        is_receiving(&self.backends[usize::from(b)])
    }

    /// Whether backend `b` accepts connections.
    pub(crate) fn is_up(&self, b: u16) -> bool {
        self.backends[usize::from(b)].up
    }

    /// A balancer worker's connection to `b` is up.
    pub(crate) fn handle_connected(&mut self, b: u16, lb: u8, conn: ConnId) {
        self.backends[usize::from(b)].conns.push((lb, conn));
    }

    /// A balancer worker's connection to `b` is gone.
    pub(crate) fn handle_disconnected(&mut self, b: u16, lb: u8, conn: ConnId) {
        self.backends[usize::from(b)]
            .conns
            .retain(|&(l, c)| !(l == lb && c == conn));
    }

    /// Backend `b` dies or returns; a hang (`silent`) keeps its connections. Returns the
    /// connections a reset breaks.
    pub(crate) fn handle_outage(&mut self, b: u16, down: bool, silent: bool) -> Vec<(u8, ConnId)> {
        let be = &mut self.backends[usize::from(b)];
        if silent {
            be.silent = down;
            return Vec::new();
        }
        be.up = !down;
        if down {
            be.conns.clone()
        } else {
            Vec::new()
        }
    }

    /// Messages each backend received since the last call.
    pub(crate) fn take_load(&mut self) -> Vec<u64> {
        self.backends
            .iter_mut()
            .map(|b| std::mem::take(&mut b.load))
            .collect()
    }

    /// 2xx retransmissions so far.
    pub(crate) fn retransmissions(&self) -> u64 {
        self.retransmissions
    }

    /// Reads the first word of the call's state, to bring it into the cache (see
    /// `World::warm`).
    pub(crate) fn warm(&self, call: u32) -> u32 {
        self.calls.get(call).map_or(0, |c| c.gen)
    }

    /// The backend that sent the callee side's BYE of `call`.
    pub(crate) fn origin(&self, call: u32) -> Option<u16> {
        self.calls.get(call)?.origin
    }

    /// The backend where `call`'s INVITE server transaction lives.
    pub(crate) fn invite_backend(&self, call: u32) -> Option<u16> {
        self.calls.get(call)?.invite_backend
    }

    /// Backend `b` received a message on worker `lb`'s connection `conn`.
    pub(crate) fn handle_message(
        &mut self,
        b: u16,
        lb: u8,
        conn: ConnId,
        bytes: Bytes,
        s: Summary,
    ) {
        self.backends[usize::from(b)].load += 1;
        let call = s.call.and_then(|c| u32::try_from(c).ok());
        let active = call.is_some_and(|c| self.calls.get(c).is_some());
        let Some(call) = call.filter(|_| active) else {
            // A straggler of a finished call: answer statelessly what needs an answer.
            if matches!(s.kind, Kind::Request(Method::Bye | Method::Cancel)) {
                let receiving = self.is_receiving(b);
                let call = call.unwrap_or(0);
                self.tx.answer(receiving, (b, lb, conn), &bytes, 200, call);
            }
            return;
        };
        let trying = self.backends[usize::from(b)].trying;
        let receiving = self.is_receiving(b);
        let Farm { calls, tx, .. } = self;
        let Some(be) = calls.get_mut(call) else {
            return;
        };
        let plan = be.plan;
        let previous = be.last.map(|(_, _, pb)| pb);
        if let Kind::Request(_) = s.kind {
            be.last = Some((lb, conn, b));
        }
        match s.kind {
            Kind::Request(Method::Invite) if !s.has_to_tag => {
                be.invite_backend = Some(b);
                if be.invite.is_none() {
                    be.template = Template::of(&bytes);
                    be.invite = Some(Bytes::copy_from_slice(&bytes));
                    be.gen += 1;
                    let gen = be.gen;
                    tx.timer(call, BackendTimer::Trying, gen, trying);
                    tx.timer(call, BackendTimer::Ringing, gen, plan.ring);
                    if let Some(ans) = plan.answer {
                        tx.timer(call, BackendTimer::Answer, gen, plan.ring + ans);
                    }
                } else {
                    if previous != Some(b) {
                        // Re-routed to this backend: it answers from the INVITE it received,
                        // whose Record-Route carries the tag the balancer wrote for it.
                        be.template = Template::of(&bytes);
                        be.invite = Some(Bytes::copy_from_slice(&bytes));
                    }
                    // A retransmission: repeat the latest response (§17.2.1).
                    let stage = be.stage;
                    self.repeat(call, stage);
                }
            }
            Kind::Request(Method::Invite) => {
                if be.ok_cseq == s.cseq {
                    if let Some(ok) = &be.ok {
                        tx.send_ok(receiving, lb, conn, ok, call);
                        return;
                    }
                }
                let t = Template::of(&bytes);
                let ok = tx.reply(
                    receiving,
                    (b, lb, conn),
                    &bytes,
                    &t,
                    200,
                    call,
                    Extras::ANSWER_REINVITE,
                );
                be.start_ok(s.cseq, ok, call, tx);
            }
            Kind::Request(Method::Ack) => {
                if be.ok_cseq == s.cseq && be.ok.is_some() {
                    be.ok = None;
                    be.ok_gen += 1;
                    if !be.acked_initial && be.stage == Stage::Answered && s.cseq == 1 {
                        be.acked_initial = true;
                        if plan.backend_hangup {
                            let gen = be.gen;
                            tx.timer(call, BackendTimer::Hangup, gen, plan.talk);
                        }
                    }
                }
            }
            Kind::Request(Method::Bye) => {
                be.ended = true;
                be.gen += 1;
                be.ok = None;
                be.ok_gen += 1;
                tx.answer(receiving, (b, lb, conn), &bytes, 200, call);
            }
            Kind::Request(Method::Cancel) => {
                let ringing = be.stage < Stage::Answered && be.invite.is_some();
                if ringing {
                    be.stage = Stage::Rejected;
                    be.gen += 1;
                }
                tx.answer(receiving, (b, lb, conn), &bytes, 200, call);
                if ringing {
                    self.repeat(call, Stage::Rejected);
                }
            }
            Kind::Request(Method::Other) => {
                tx.answer(receiving, (b, lb, conn), &bytes, 200, call);
            }
            Kind::Response(_) => {
                if s.cseq_method == Method::Bye {
                    be.ended = true;
                }
            }
        }
    }

    /// A timer armed by a [`FarmOut::Timer`] fired.
    pub(crate) fn handle_timer(
        &mut self,
        call: u32,
        timer: BackendTimer,
        gen: u32,
        rng: &mut SmallRng,
    ) {
        let Farm {
            calls,
            tx,
            backends,
            spread,
            retransmissions,
        } = self;
        let Some(be) = calls.get_mut(call) else {
            return;
        };
        match timer {
            BackendTimer::Trying | BackendTimer::Ringing | BackendTimer::Answer => {
                if gen != be.gen {
                    return;
                }
                let stage = match timer {
                    BackendTimer::Trying => Stage::Trying,
                    BackendTimer::Ringing => Stage::Ringing,
                    // Only the three stage timers reach this arm.
                    BackendTimer::Answer | BackendTimer::OkRetransmit | BackendTimer::Hangup => {
                        Stage::Answered
                    }
                };
                if stage <= be.stage {
                    return;
                }
                be.stage = stage;
                self.repeat(call, stage);
            }
            BackendTimer::OkRetransmit => {
                if gen != be.ok_gen || be.ended {
                    return;
                }
                if be.ok.is_none() {
                    return;
                }
                be.ok_elapsed_ms += be.ok_interval_ms;
                if be.ok_elapsed_ms >= OK_GIVE_UP_MS {
                    be.ok = None;
                    return;
                }
                be.ok_interval_ms = (be.ok_interval_ms * 2).min(T2_MS);
                let next = Duration::from_millis(u64::from(be.ok_interval_ms));
                if let (Some((lb, conn, b)), Some(ok)) = (be.last, &be.ok) {
                    *retransmissions += 1;
                    let receiving = is_receiving(&backends[usize::from(b)]);
                    tx.send_ok(receiving, lb, conn, ok, call);
                }
                tx.timer(call, BackendTimer::OkRetransmit, gen, next);
            }
            BackendTimer::Hangup => {
                if gen != be.gen || be.ended || be.stage != Stage::Answered {
                    return;
                }
                be.ended = true;
                let (Some(invite), Some((lb, conn, b))) = (&be.invite, be.last) else {
                    return;
                };
                be.origin = Some(b);
                let (lb, conn) = pick_conn(&backends[usize::from(b)].conns, *spread, lb, conn, rng);
                wire::write_bye(&mut tx.buf, invite, b, call);
                let bytes = tx.take();
                let receiving = is_receiving(&backends[usize::from(b)]);
                tx.send(receiving, lb, conn, bytes, call, Method::Bye.code());
            }
        }
    }

    /// Sends the response of `stage` (built from the stored INVITE) where the call last spoke.
    fn repeat(&mut self, call: u32, stage: Stage) {
        let Farm {
            calls,
            tx,
            backends,
            ..
        } = self;
        let Some(be) = calls.get_mut(call) else {
            return;
        };
        let (Some(invite), Some((lb, conn, b))) = (&be.invite, be.last) else {
            return;
        };
        let receiving = is_receiving(&backends[usize::from(b)]);
        let to = (b, lb, conn);
        let (t, x) = (&be.template, Extras::NONE);
        match stage {
            Stage::None => {}
            Stage::Trying => {
                tx.reply(receiving, to, invite, t, 100, call, x);
            }
            Stage::Ringing => {
                tx.reply(receiving, to, invite, t, 180, call, Extras::RINGING);
            }
            Stage::Answered => {
                if let Some(ok) = be.ok.as_ref().filter(|_| be.ok_cseq == 1) {
                    tx.send_ok(receiving, lb, conn, ok, call);
                } else if !be.acked_initial {
                    let ok = tx.reply(receiving, to, invite, t, 200, call, Extras::ANSWER);
                    be.start_ok(1, ok, call, tx);
                }
            }
            Stage::Rejected => {
                tx.reply(receiving, to, invite, t, 487, call, x);
            }
        }
    }
}

impl Callee {
    /// Starts retransmitting a 2xx until its ACK (§13.3.1.4).
    fn start_ok(&mut self, cseq: u32, ok: Bytes, call: u32, tx: &mut Tx) {
        self.ok = Some(ok);
        self.ok_cseq = cseq;
        self.ok_interval_ms = T1_MS;
        self.ok_elapsed_ms = 0;
        self.ok_gen += 1;
        tx.timer(call, BackendTimer::OkRetransmit, self.ok_gen, T1);
    }
}

impl Tx {
    fn timer(&mut self, call: u32, timer: BackendTimer, gen: u32, after: Duration) {
        self.out.push_back(FarmOut::Timer {
            call,
            timer,
            gen,
            after,
        });
    }

    /// Builds and sends a response to `req` on `(backend, worker, conn)`; returns a copy of it
    /// (kept for 2xx retransmission).
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &mut self,
        receiving: bool,
        (b, lb, conn): (u16, u8, ConnId),
        req: &[u8],
        t: &Template,
        status: u16,
        call: u32,
        x: Extras,
    ) -> Bytes {
        wire::write_response_from(&mut self.buf, req, t, status, b, call, x);
        let bytes = self.take();
        let copy = if (200..300).contains(&status) {
            Bytes::copy_from_slice(&bytes)
        } else {
            Bytes::new()
        };
        self.send(receiving, lb, conn, bytes, call, status);
        copy
    }

    /// A response nobody keeps (to BYE, CANCEL and other requests).
    fn answer(
        &mut self,
        receiving: bool,
        to: (u16, u8, ConnId),
        req: &[u8],
        status: u16,
        call: u32,
    ) {
        wire::write_response(&mut self.buf, req, status, to.0, call, Extras::NONE);
        let bytes = self.take();
        self.send(receiving, to.1, to.2, bytes, call, status);
    }

    /// Sends a stored 2xx again.
    fn send_ok(&mut self, receiving: bool, lb: u8, conn: ConnId, ok: &[u8], call: u32) {
        self.buf.extend_from_slice(ok);
        let bytes = self.take();
        self.send(receiving, lb, conn, bytes, call, 200);
    }

    fn send(
        &mut self,
        receiving: bool,
        lb: u8,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
    ) {
        if !receiving {
            self.out.push_back(FarmOut::Lost);
            return;
        }
        self.out.push_back(FarmOut::ToLb {
            lb,
            conn,
            bytes,
            call,
            code,
        });
    }

    fn take(&mut self) -> BytesMut {
        let bytes = self.buf.split();
        wire::reserve(&mut self.buf);
        bytes
    }
}

/// Whether a backend takes bytes now (up and not hung).
fn is_receiving(be: &Backend) -> bool {
    be.up && !be.silent
}

/// The connection for a request a backend originates: with spreading, any live connection
/// of this backend to any worker of any instance (a tagged request may reach any of them);
/// else the one the call last used, if it is still alive.
fn pick_conn(
    live: &[(u8, ConnId)],
    spread: bool,
    lb: u8,
    conn: ConnId,
    rng: &mut SmallRng,
) -> (u8, ConnId) {
    if spread && !live.is_empty() {
        return live[rng.random_range(0..live.len())];
    }
    if live.contains(&(lb, conn)) || live.is_empty() {
        (lb, conn)
    } else {
        live[0]
    }
}
