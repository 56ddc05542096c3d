//! The edge: stateless SIP proxies (RFC 3261 §16.11) that relay callers from UDP into
//! persistent TCP connections to the balancer instances, and back.
//!
//! A component like [`crate::caller::Callers`]: inputs from callers
//! ([`Proxies::handle_from_ua`]) and from balancers ([`Proxies::handle_from_lb`]), outputs
//! drained with [`Proxies::poll_output`]. The proxy's Via branch is derived from the caller's,
//! so retransmissions and CANCEL carry the same branch, and every retransmission reaches the
//! balancer.
//!
//! Which instance a request goes to is the edge's choice, as a Kamailio dispatcher's or a DNS
//! SRV client's would be: untagged requests of a call stay on its home instance (the new-call
//! table lives there, on the worker that holds the connection); in-dialog requests carry the
//! tag, so when the scenario spreads them they go to any instance, and to another live one when
//! the chosen one is down or its connection broke under the request.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use lb_core::ConnId;
use rand::rngs::SmallRng;
use rand::Rng;

use crate::caller::{Callers, ToUa, UaOut};
use crate::sip::{Kind, Method, Summary};
use crate::wire::{self, DialogInfo, OUT_CHUNK};

/// One end of a connection to a balancer: the worker (global index) and its id there.
pub(crate) type Link = (u8, ConnId);

/// What the proxies want done.
#[derive(Debug)]
pub(crate) enum ProxyOut {
    /// Bytes onto a TCP connection to a balancer worker. `edge` names the proxy when the edge
    /// would re-send the request to another instance should the connection break under it.
    ToLb {
        lb: u8,
        conn: ConnId,
        bytes: BytesMut,
        call: u32,
        code: u16,
        edge: Option<u16>,
    },
    /// A datagram to a caller.
    ToUa { call: u32, msg: ToUa },
    /// No connection to carry a request.
    Lost,
}

/// Every proxy of a run. See the module docs.
#[derive(Debug)]
pub(crate) struct Proxies {
    /// `conns[proxy][instance][k]`: the persistent connections; `None` while reconnecting.
    conns: Vec<Vec<Vec<Option<Link>>>>,
    per_instance: usize,
    spread: bool,
    out: VecDeque<ProxyOut>,
    buf: BytesMut,
}

impl Proxies {
    pub(crate) fn new(
        proxies: usize,
        instances: usize,
        per_instance: usize,
        spread: bool,
    ) -> Proxies {
        Proxies {
            conns: vec![vec![vec![None; per_instance]; instances]; proxies],
            per_instance,
            spread,
            out: VecDeque::new(),
            buf: BytesMut::with_capacity(OUT_CHUNK),
        }
    }

    /// Next thing the proxies want done, `None` once drained.
    pub(crate) fn poll_output(&mut self) -> Option<ProxyOut> {
        self.out.pop_front()
    }

    /// Connection `k` of `proxy` to `instance` is up on `link`.
    pub(crate) fn handle_connected(&mut self, proxy: u16, instance: usize, k: u16, link: Link) {
        self.conns[usize::from(proxy)][instance][usize::from(k)] = Some(link);
    }

    /// Connection `k` of `proxy` to `instance` broke.
    pub(crate) fn handle_disconnected(&mut self, proxy: u16, instance: usize, k: u16) {
        self.conns[usize::from(proxy)][instance][usize::from(k)] = None;
    }

    /// A datagram from a caller: a request to relay, or the caller's 200 to a callee's BYE.
    pub(crate) fn handle_from_ua(
        &mut self,
        call: u32,
        msg: UaOut,
        callers: &Callers,
        rng: &mut SmallRng,
    ) {
        match msg {
            UaOut::Req(r) => {
                let Some((proxy, _)) = callers.proxy_and_dialog(call) else {
                    return;
                };
                let home = callers.home(call).map_or(0, usize::from);
                let Some((lb, conn)) = self.pick(call, proxy, home, r.dialog, rng) else {
                    self.out.push_back(ProxyOut::Lost);
                    return;
                };
                let Some((_, dialog)) = callers.proxy_and_dialog(call) else {
                    return;
                };
                wire::write_request(&mut self.buf, dialog, proxy, call, r);
                let bytes = self.take();
                self.out.push_back(ProxyOut::ToLb {
                    lb,
                    conn,
                    bytes,
                    call,
                    code: r.method.code(),
                    edge: r.dialog.then_some(proxy),
                });
            }
            UaOut::ByeOk { lb, conn, bye } => {
                wire::write_bye_ok(&mut self.buf, &bye);
                let bytes = self.take();
                self.out.push_back(ProxyOut::ToLb {
                    lb,
                    conn,
                    bytes,
                    call,
                    code: 200,
                    edge: None,
                });
            }
        }
    }

    /// An in-dialog request's connection broke under it (its instance died): the edge sends it
    /// again, as it was, to another live instance.
    pub(crate) fn handle_resend(
        &mut self,
        proxy: u16,
        dead: usize,
        call: u32,
        bytes: BytesMut,
        code: u16,
    ) {
        let n = self.conns[usize::from(proxy)].len();
        let k0 = call as usize % self.per_instance;
        let next = (1..n).find_map(|d| self.live_link(proxy, (dead + d) % n, k0));
        match next {
            Some((lb, conn)) => self.out.push_back(ProxyOut::ToLb {
                lb,
                conn,
                bytes,
                call,
                code,
                edge: None,
            }),
            None => self.out.push_back(ProxyOut::Lost),
        }
    }

    /// The balancer connection for a request: see the module docs.
    fn pick(
        &mut self,
        call: u32,
        proxy: u16,
        home: usize,
        dialog: bool,
        rng: &mut SmallRng,
    ) -> Option<Link> {
        let kc = self.per_instance;
        let n = self.conns[usize::from(proxy)].len();
        if dialog && self.spread {
            let i = rng.random_range(0..n);
            let k0 = rng.random_range(0..kc);
            // The chosen instance is down: the edge fails over to the next live one.
            return (0..n).find_map(|d| self.live_link(proxy, (i + d) % n, k0));
        }
        self.live_link(proxy, home, call as usize % kc)
    }

    /// The first live connection of `proxy` to `instance`, trying `k0` first.
    fn live_link(&self, proxy: u16, instance: usize, k0: usize) -> Option<Link> {
        let kc = self.per_instance;
        let conns = &self.conns[usize::from(proxy)][instance];
        (0..kc).find_map(|d| conns[(k0 + d) % kc])
    }

    /// A message from a balancer: responses and the callee side's BYE go to the caller.
    pub(crate) fn handle_from_lb(&mut self, lb: u8, conn: ConnId, bytes: Bytes, s: Summary) {
        let Some(call) = s.call.and_then(|c| u32::try_from(c).ok()) else {
            return;
        };
        match s.kind {
            Kind::Response(status) => {
                let dialog = (status >= 200 && s.cseq_method == Method::Invite)
                    .then(|| Box::new(DialogInfo::from_response(&bytes)));
                self.out.push_back(ProxyOut::ToUa {
                    call,
                    msg: ToUa::Resp {
                        status,
                        method: s.cseq_method,
                        cseq: s.cseq,
                        dialog,
                    },
                });
            }
            Kind::Request(Method::Bye) => self.out.push_back(ProxyOut::ToUa {
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

    fn take(&mut self) -> BytesMut {
        let bytes = self.buf.split();
        wire::reserve(&mut self.buf);
        bytes
    }
}
