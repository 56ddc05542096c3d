//! Backends: B2BUAs in plain SIP mode. They answer INVITE with 100 / 180 / 200 after the call's
//! planned delays (often slower than T1, so callers retransmit), copy Via / Record-Route / From /
//! To / Call-ID / CSeq as RFC 3261 §8.2.6 and §12.1.1 say, add a To tag, retransmit 2xx until the
//! ACK (§13.3.1.4), answer BYE, CANCEL (+ 487) and re-INVITE, and sometimes hang up themselves
//! with a BYE routed by the Record-Route set they learned.
//!
//! The farm behaves as one B2BUA cluster with replicated call state: a backup that receives a
//! call's messages after its backend died carries on. Which backend received each message is
//! what the affinity invariant checks.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lb_core::{ConnId, T1};
use rand::Rng;

use crate::sip::{self, Kind, Method, Summary};
use crate::ua::{put_ip, reserve, SDP};
use crate::world::{active_mut, backend_addr, Ev, World};

/// RFC 3261 §17.1.2.2 T2: cap of the 2xx retransmission interval.
const T2: Duration = Duration::from_secs(4);
/// §13.3.1.4: the UAS gives up retransmitting a 2xx after 64·T1.
const OK_GIVE_UP: Duration = Duration::from_secs(32);

/// One backend.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) up: bool,
    /// Delay before its 100 Trying.
    pub(crate) trying: Duration,
    /// Connected balancer connections `(instance, conn)`.
    pub(crate) conns: Vec<(u8, ConnId)>,
    /// Messages received since the last sample.
    pub(crate) load: u64,
    /// Hung: connections stay open, nothing is answered or sent.
    pub(crate) silent: bool,
}

impl Backend {
    pub(crate) fn new(trying: Duration) -> Backend {
        Backend {
            up: true,
            trying,
            conns: Vec::new(),
            load: 0,
            silent: false,
        }
    }
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

/// The callee side of one call (replicated across the cluster).
#[derive(Debug, Default)]
pub(crate) struct BeState {
    /// The initial INVITE as received, copied (responses and the callee's BYE are built from it).
    invite: Option<Bytes>,
    stage: Stage,
    /// Where the call's latest message came from: `(instance, conn, backend)`.
    last: Option<(u8, ConnId, u16)>,
    gen: u32,
    ok: Option<Bytes>,
    ok_cseq: u32,
    ok_interval: Duration,
    ok_elapsed: Duration,
    ok_gen: u32,
    acked_initial: bool,
    ended: bool,
    /// The backend that sent the callee side's BYE: its response belongs there.
    pub(crate) origin: Option<u16>,
    /// The backend that received the INVITE last: where its server transaction lives.
    pub(crate) invite_backend: Option<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    #[default]
    None,
    Trying,
    Ringing,
    Answered,
    Rejected,
}

impl World {
    pub(crate) fn backend_receive(
        &mut self,
        b: u16,
        lb: u8,
        conn: ConnId,
        bytes: Bytes,
        s: Summary,
    ) {
        self.backends[usize::from(b)].load += 1;
        let call = s.call.and_then(|c| u32::try_from(c).ok());
        let active = call.is_some_and(|c| {
            self.calls
                .get(c as usize)
                .is_some_and(|x| x.active.is_some())
        });
        let Some(call) = call.filter(|_| active) else {
            // A straggler of a finished call: answer statelessly what needs an answer.
            if matches!(s.kind, Kind::Request(Method::Bye | Method::Cancel)) {
                self.backend_reply(b, lb, conn, &bytes, 200, call.unwrap_or(0), Extras::NONE);
            }
            return;
        };
        let trying = self.backends[usize::from(b)].trying;
        let a = self.calls[call as usize]
            .active
            .as_mut()
            .expect("checked active above");
        let plan = a.plan;
        let be = &mut a.be;
        let previous = be.last.map(|(_, _, pb)| pb);
        if let Kind::Request(_) = s.kind {
            be.last = Some((lb, conn, b));
        }
        match s.kind {
            Kind::Request(Method::Invite) if !s.has_to_tag => {
                be.invite_backend = Some(b);
                if be.invite.is_none() {
                    be.invite = Some(Bytes::copy_from_slice(&bytes));
                    be.gen += 1;
                    let gen = be.gen;
                    self.after(
                        trying,
                        Ev::BackendTimer {
                            call,
                            timer: BackendTimer::Trying,
                            gen,
                        },
                    );
                    self.after(
                        plan.ring,
                        Ev::BackendTimer {
                            call,
                            timer: BackendTimer::Ringing,
                            gen,
                        },
                    );
                    if let Some(ans) = plan.answer {
                        self.after(
                            plan.ring + ans,
                            Ev::BackendTimer {
                                call,
                                timer: BackendTimer::Answer,
                                gen,
                            },
                        );
                    }
                } else {
                    if previous != Some(b) {
                        // Re-routed to this backend: it answers from the INVITE it received,
                        // whose Record-Route carries the tag the balancer wrote for it.
                        be.invite = Some(Bytes::copy_from_slice(&bytes));
                    }
                    // A retransmission: repeat the latest response (§17.2.1).
                    let stage = be.stage;
                    self.backend_repeat(call, stage);
                }
            }
            Kind::Request(Method::Invite) => {
                if be.ok.is_some() && be.ok_cseq == s.cseq {
                    let ok = be.ok.clone();
                    if let Some(ok) = ok {
                        self.backend_send_ok(b, lb, conn, &ok, call);
                    }
                    return;
                }
                let ok =
                    self.backend_reply(b, lb, conn, &bytes, 200, call, Extras::ANSWER_REINVITE);
                self.backend_start_ok(call, s.cseq, ok);
            }
            Kind::Request(Method::Ack) => {
                if be.ok_cseq == s.cseq && be.ok.is_some() {
                    be.ok = None;
                    be.ok_gen += 1;
                    if !be.acked_initial && be.stage == Stage::Answered && s.cseq == 1 {
                        be.acked_initial = true;
                        if plan.backend_hangup {
                            let gen = be.gen;
                            self.after(
                                plan.talk,
                                Ev::BackendTimer {
                                    call,
                                    timer: BackendTimer::Hangup,
                                    gen,
                                },
                            );
                        }
                    }
                }
            }
            Kind::Request(Method::Bye) => {
                be.ended = true;
                be.gen += 1;
                be.ok = None;
                be.ok_gen += 1;
                self.backend_reply(b, lb, conn, &bytes, 200, call, Extras::NONE);
            }
            Kind::Request(Method::Cancel) => {
                let ringing = be.stage < Stage::Answered && be.invite.is_some();
                if ringing {
                    be.stage = Stage::Rejected;
                    be.gen += 1;
                }
                self.backend_reply(b, lb, conn, &bytes, 200, call, Extras::NONE);
                if ringing {
                    self.backend_repeat(call, Stage::Rejected);
                }
            }
            Kind::Request(Method::Other) => {
                self.backend_reply(b, lb, conn, &bytes, 200, call, Extras::NONE);
            }
            Kind::Response(_) => {
                if s.cseq_method == Method::Bye {
                    be.ended = true;
                }
            }
        }
    }

    pub(crate) fn backend_timer(&mut self, call: u32, timer: BackendTimer, gen: u32) {
        let Some(a) = active_mut(&mut self.calls, call) else {
            return;
        };
        let be = &mut a.be;
        match timer {
            BackendTimer::Trying | BackendTimer::Ringing | BackendTimer::Answer => {
                if gen != be.gen {
                    return;
                }
                let stage = match timer {
                    BackendTimer::Trying => Stage::Trying,
                    BackendTimer::Ringing => Stage::Ringing,
                    _ => Stage::Answered,
                };
                if stage <= be.stage {
                    return;
                }
                be.stage = stage;
                self.backend_repeat(call, stage);
            }
            BackendTimer::OkRetransmit => {
                if gen != be.ok_gen || be.ended {
                    return;
                }
                let Some(ok) = be.ok.clone() else { return };
                be.ok_elapsed += be.ok_interval;
                if be.ok_elapsed >= OK_GIVE_UP {
                    be.ok = None;
                    return;
                }
                be.ok_interval = (be.ok_interval * 2).min(T2);
                let next = be.ok_interval;
                if let Some((lb, conn, b)) = be.last {
                    self.n.retransmissions += 1;
                    self.backend_send_ok(b, lb, conn, &ok, call);
                }
                self.after(
                    next,
                    Ev::BackendTimer {
                        call,
                        timer: BackendTimer::OkRetransmit,
                        gen,
                    },
                );
            }
            BackendTimer::Hangup => {
                if gen != be.gen || be.ended || be.stage != Stage::Answered {
                    return;
                }
                be.ended = true;
                let (Some(invite), Some((lb, conn, b))) = (be.invite.clone(), be.last) else {
                    return;
                };
                be.origin = Some(b);
                let (lb, conn) = self.backend_pick_conn(b, lb, conn);
                write_bye(&mut self.out, &invite, b, call);
                let bytes = self.out.split();
                reserve(&mut self.out);
                self.backend_send(b, usize::from(lb), conn, bytes, call, Method::Bye.code());
            }
        }
    }

    /// Sends the response of `stage` (built from the stored INVITE) where the call last spoke.
    fn backend_repeat(&mut self, call: u32, stage: Stage) {
        let Some(a) = active_mut(&mut self.calls, call) else {
            return;
        };
        let be = &mut a.be;
        let (Some(invite), Some((lb, conn, b))) = (be.invite.clone(), be.last) else {
            return;
        };
        match stage {
            Stage::None => {}
            Stage::Trying => {
                self.backend_reply(b, lb, conn, &invite, 100, call, Extras::NONE);
            }
            Stage::Ringing => {
                self.backend_reply(b, lb, conn, &invite, 180, call, Extras::RINGING);
            }
            Stage::Answered => {
                if let Some(ok) = be.ok.clone().filter(|_| be.ok_cseq == 1) {
                    self.backend_send_ok(b, lb, conn, &ok, call);
                } else if !be.acked_initial {
                    let ok = self.backend_reply(b, lb, conn, &invite, 200, call, Extras::ANSWER);
                    self.backend_start_ok(call, 1, ok);
                }
            }
            Stage::Rejected => {
                self.backend_reply(b, lb, conn, &invite, 487, call, Extras::NONE);
            }
        }
    }

    fn backend_start_ok(&mut self, call: u32, cseq: u32, ok: Bytes) {
        let Some(a) = active_mut(&mut self.calls, call) else {
            return;
        };
        let be = &mut a.be;
        be.ok = Some(ok);
        be.ok_cseq = cseq;
        be.ok_interval = T1;
        be.ok_elapsed = Duration::ZERO;
        be.ok_gen += 1;
        let gen = be.ok_gen;
        self.after(
            T1,
            Ev::BackendTimer {
                call,
                timer: BackendTimer::OkRetransmit,
                gen,
            },
        );
    }

    /// Builds and sends a response to `req`; returns a copy of it (kept for 2xx retransmission).
    #[allow(clippy::too_many_arguments)]
    fn backend_reply(
        &mut self,
        b: u16,
        lb: u8,
        conn: ConnId,
        req: &[u8],
        status: u16,
        call: u32,
        x: Extras,
    ) -> Bytes {
        write_response(&mut self.out, req, status, b, call, x);
        let bytes = self.out.split();
        reserve(&mut self.out);
        let copy = if (200..300).contains(&status) {
            Bytes::copy_from_slice(&bytes)
        } else {
            Bytes::new()
        };
        self.backend_send(b, usize::from(lb), conn, bytes, call, status);
        copy
    }

    /// Sends a stored 2xx again.
    fn backend_send_ok(&mut self, b: u16, lb: u8, conn: ConnId, ok: &[u8], call: u32) {
        self.out.extend_from_slice(ok);
        let bytes = self.out.split();
        reserve(&mut self.out);
        self.backend_send(b, usize::from(lb), conn, bytes, call, 200);
    }

    fn backend_send(
        &mut self,
        b: u16,
        i: usize,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
    ) {
        if !self.backends[usize::from(b)].up || self.backends[usize::from(b)].silent {
            self.n.tcp_lost += 1;
            return;
        }
        self.send_to_lb(i, conn, bytes, call, code);
    }

    /// The connection for a request the backend originates: with spreading, any live connection
    /// of this backend to any instance (a tagged request may reach any instance); else the one
    /// the call last used, if it is still alive.
    fn backend_pick_conn(&mut self, b: u16, lb: u8, conn: ConnId) -> (u8, ConnId) {
        let live = &self.backends[usize::from(b)].conns;
        if self.k.spread_in_dialog && !live.is_empty() {
            let n = live.len();
            let pick = self.rng.random_range(0..n);
            return self.backends[usize::from(b)].conns[pick];
        }
        if self.slot_open(usize::from(lb), conn) || live.is_empty() {
            (lb, conn)
        } else {
            live[0]
        }
    }
}

/// What a response carries beyond the copied headers.
#[derive(Clone, Copy, Debug)]
struct Extras {
    record_route: bool,
    contact: bool,
    sdp: bool,
}

impl Extras {
    const NONE: Extras = Extras {
        record_route: false,
        contact: false,
        sdp: false,
    };
    const RINGING: Extras = Extras {
        record_route: true,
        contact: true,
        sdp: false,
    };
    const ANSWER: Extras = Extras {
        record_route: true,
        contact: true,
        sdp: true,
    };
    const ANSWER_REINVITE: Extras = Extras {
        record_route: false,
        contact: true,
        sdp: true,
    };
}

fn write_response(out: &mut BytesMut, req: &[u8], status: u16, b: u16, call: u32, x: Extras) {
    out.extend_from_slice(b"SIP/2.0 ");
    sip::put_u64(out, u64::from(status));
    out.extend_from_slice(match status {
        100 => &b" Trying\r\n"[..],
        180 => b" Ringing\r\n",
        200 => b" OK\r\n",
        487 => b" Request Terminated\r\n",
        _ => b" Whatever\r\n",
    });
    for h in sip::headers(req) {
        let n = h.name;
        if n.eq_ignore_ascii_case(b"Via")
            || n.eq_ignore_ascii_case(b"From")
            || n.eq_ignore_ascii_case(b"Call-ID")
            || n.eq_ignore_ascii_case(b"CSeq")
            || (x.record_route && n.eq_ignore_ascii_case(b"Record-Route"))
        {
            out.extend_from_slice(h.line);
        } else if n.eq_ignore_ascii_case(b"To") {
            if status == 100 || sip::param(h.value, b"tag").is_some() {
                out.extend_from_slice(h.line);
            } else {
                out.extend_from_slice(b"To: ");
                out.extend_from_slice(h.value);
                out.extend_from_slice(b";tag=b");
                sip::put_u64(out, u64::from(call));
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    if x.contact {
        contact(out, b);
    }
    if x.sdp {
        out.extend_from_slice(b"Content-Type: application/sdp\r\nContent-Length: ");
        sip::put_u64(out, SDP.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(SDP);
    } else {
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
}

/// The callee side's BYE (§15.1.1): Request-URI = the caller's Contact, Route = the
/// Record-Route set in order (the UAS's route set, §12.1.1), From/To swapped with our tag.
fn write_bye(out: &mut BytesMut, invite: &[u8], b: u16, call: u32) {
    let target = sip::header_value(invite, b"Contact")
        .and_then(sip::angle)
        .unwrap_or(b"sip:caller@ua.sim");
    out.extend_from_slice(b"BYE ");
    out.extend_from_slice(target);
    out.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/TCP ");
    put_ip(out, ip4(b));
    out.extend_from_slice(b":5070;branch=z9hG4bKb");
    sip::put_u64(out, u64::from(call));
    out.extend_from_slice(b".1\r\nMax-Forwards: 70\r\n");
    for (i, rr) in sip::record_routes(invite).enumerate() {
        out.extend_from_slice(if i == 0 {
            &b"Route: <"[..]
        } else {
            b"Route: <"
        });
        out.extend_from_slice(rr);
        out.extend_from_slice(b">\r\n");
    }
    if let Some(to) = sip::header_value(invite, b"To") {
        out.extend_from_slice(b"From: ");
        out.extend_from_slice(to);
        out.extend_from_slice(b";tag=b");
        sip::put_u64(out, u64::from(call));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(from) = sip::header_value(invite, b"From") {
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(from);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Call-ID: ");
    sip::put_u64(out, u64::from(call));
    out.extend_from_slice(b"@sim\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n");
}

fn contact(out: &mut BytesMut, b: u16) {
    out.extend_from_slice(b"Contact: <sip:b2bua@");
    put_ip(out, ip4(b));
    out.extend_from_slice(b":5070>\r\n");
}

fn ip4(b: u16) -> [u8; 4] {
    match backend_addr(usize::from(b)).ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => [10, 2, 0, 1],
    }
}
