//! The scenario harness: a `Balancer` driven through its public API, one input at an explicit
//! instant, its outputs read like a protocol trace, every one of them checked against the output
//! contract ([`crate::Contract`]).
//!
//! Each helper names the *whole* output it accepts. [`Harness::expect`] compares the complete
//! list; [`Harness::expect_one_send`] and the helpers built on it accept exactly one `Send` and
//! nothing else but events (which go to [`Harness::events`], where a test reads them): a forward
//! that comes with a `Close`, `Connect`, `Dial` or `Resolve` fails. [`Harness::drain`] hands a
//! test everything but events and records closes in [`Harness::closed`].
//!
//! The harness panics at the first fault (these are tests); `#[track_caller]` points at the
//! test's line.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_core::envelope::{Envelope, EnvelopeDecoder, Transport};
use lb_core::{
    BackendConfig, BackendId, BackendMode, Balancer, CloseReason, Config, ConnId, Event, Input,
    ListenerId, Output, TagKey,
};

use crate::contract::Contract;

/// The balancer's listening address in [`config`].
pub const LB: &str = "192.0.2.10:5060";

/// A balancer, the driver's view of it, and what it said.
pub struct Harness {
    /// The balancer under test. Feed it through the harness ([`Harness::input`] and friends) so
    /// that the contract sees every input; read it (`stats`, `poll_timeout`) directly.
    pub lb: Balancer,
    /// Every connection and what was sent on it, checked output by output.
    pub contract: Contract,
    /// The instant the balancer was made.
    pub start: Instant,
    /// The virtual now: every input is fed at it.
    pub now: Instant,
    /// Each backend's current connection, by backend index.
    pub backends: Vec<Option<ConnId>>,
    /// Each backend's mode, by backend index.
    pub modes: Vec<BackendMode>,
    /// Every event so far, in order.
    pub events: Vec<Event>,
    /// Every connection the core asked to close, in order.
    pub closed: Vec<ConnId>,
}

/// `backends` backends at 198.51.100.1.. in `mode`, one listener ([`LB`]), one tag key.
///
/// # Panics
/// Never: the addresses are literals.
#[must_use]
pub fn config(backends: usize, mode: BackendMode) -> Config {
    Config {
        listeners: vec![LB.parse().unwrap()],
        backends: (0..backends)
            .map(|i| BackendConfig {
                mode,
                ..BackendConfig::plain(format!("198.51.100.{}:5060", i + 1).parse().unwrap())
            })
            .collect(),
        tag_keys: vec![TagKey {
            id: 1,
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        }],
        ..Config::default()
    }
}

impl Harness {
    /// A balancer on `config` (seed 7) whose backends have all connected.
    ///
    /// # Panics
    /// If the configuration is invalid or the start breaks the contract.
    #[track_caller]
    #[must_use]
    pub fn new(config: Config) -> Harness {
        let modes = config.backends.iter().map(|b| b.mode).collect();
        let n = config.backends.len();
        // The harness is the driver, which owns the clock; then time moves only as tests say.
        let start = Instant::now();
        let valid = config.validate().unwrap();
        let contract = Contract::new(&valid);
        let lb = Balancer::new(valid, 7, start);
        let mut h = Harness {
            lb,
            contract,
            start,
            now: start,
            backends: vec![None; n],
            modes,
            events: Vec::new(),
            closed: Vec::new(),
        };
        let connects = h.drain();
        for out in connects {
            match out {
                Output::Connect { conn, backend, .. } => h.backends[backend.index()] = Some(conn),
                other @ (Output::Send { .. }
                | Output::Dial { .. }
                | Output::Resolve { .. }
                | Output::Close { .. }
                | Output::Abort { .. }
                | Output::Event(_)) => panic!("unexpected {other:?}"),
            }
        }
        for i in 0..n {
            h.connect_backend(i);
        }
        h
    }

    /// Reports the backend's pending connection as established.
    ///
    /// # Panics
    /// If backend `i` has no connection.
    #[track_caller]
    pub fn connect_backend(&mut self, i: usize) {
        let conn = self.backends[i].unwrap();
        self.input(Input::Connected { conn });
        self.drain();
    }

    /// The backend's connection drops; returns nothing pending.
    ///
    /// # Panics
    /// If backend `i` has no connection.
    #[track_caller]
    pub fn kill_backend(&mut self, i: usize) {
        let conn = self.backends[i].take().unwrap();
        self.input(Input::Closed {
            conn,
            reason: CloseReason::PeerClosed,
        });
        self.drain();
    }

    /// Moves time by `by` and feeds `Timeout`; the deadline must then lie past the new now.
    #[track_caller]
    pub fn advance(&mut self, by: Duration) {
        self.now += by;
        self.input(Input::Timeout);
    }

    /// Feeds `input` at the current instant (outputs stay queued for [`Harness::drain`]).
    ///
    /// # Panics
    /// After a `Timeout`, if the deadline did not move past now; for an input naming a dead
    /// connection, if it was not counted as stale.
    #[track_caller]
    pub fn input(&mut self, input: Input) {
        if let Err(v) = self.contract.feed(&mut self.lb, self.now, input) {
            panic!("{v}");
        }
    }

    /// Feeds `input` and requires exactly `expected` out, every output (events included) in
    /// order.
    ///
    /// # Panics
    /// If the outputs differ or one breaks the contract.
    #[track_caller]
    pub fn expect(&mut self, input: Input, expected: &[Output]) {
        self.input(input);
        let mut outs = Vec::new();
        while let Some(o) = self.lb.poll_output() {
            self.check(&o);
            match &o {
                Output::Event(e) => self.events.push(e.clone()),
                Output::Close { conn } => self.closed.push(*conn),
                Output::Send { .. }
                | Output::Connect { .. }
                | Output::Dial { .. }
                | Output::Resolve { .. }
                | Output::Abort { .. } => {}
            }
            outs.push(o);
        }
        assert_eq!(outs, expected, "the whole output");
    }

    /// Accepts a frontend connection from `peer` on the first listener.
    ///
    /// # Panics
    /// If `peer` is not an address, or the id is not fresh.
    #[track_caller]
    pub fn frontend(&mut self, peer: &str) -> ConnId {
        let listener = self.lb.listeners().next().unwrap().0;
        self.accept(listener, peer)
    }

    /// Accepts a frontend connection from `peer` on `listener`.
    ///
    /// # Panics
    /// If `peer` is not an address, or the id is not fresh.
    #[track_caller]
    pub fn accept(&mut self, listener: ListenerId, peer: &str) -> ConnId {
        let peer = peer.parse().unwrap();
        let conn = self.lb.accept(self.now, listener, peer);
        if let Err(v) = self.contract.accepted(conn, peer) {
            panic!("{v}");
        }
        conn
    }

    #[track_caller]
    fn check(&mut self, output: &Output) {
        if let Err(v) = self.contract.output(output) {
            panic!("{v}");
        }
    }

    /// All outputs now but events (recorded in [`Harness::events`]), each checked against the
    /// contract; closes are also recorded in [`Harness::closed`], connects picked up as the
    /// backends' connections.
    ///
    /// # Panics
    /// If an output breaks the contract.
    #[track_caller]
    pub fn drain(&mut self) -> Vec<Output> {
        let mut outs = Vec::new();
        while let Some(o) = self.lb.poll_output() {
            self.check(&o);
            match o {
                Output::Event(e) => self.events.push(e),
                Output::Close { conn } => {
                    self.closed.push(conn);
                    outs.push(Output::Close { conn });
                }
                Output::Connect { conn, backend, .. } => {
                    if self.backends.len() <= backend.index() {
                        // Added by a reload: plain mode, as the reload tests configure it.
                        self.backends.resize(backend.index() + 1, None);
                        self.modes.resize(backend.index() + 1, BackendMode::Plain);
                    }
                    self.backends[backend.index()] = Some(conn);
                    outs.push(o);
                }
                other @ (Output::Send { .. }
                | Output::Dial { .. }
                | Output::Resolve { .. }
                | Output::Abort { .. }) => {
                    outs.push(other);
                }
            }
        }
        outs
    }

    /// Feeds `bytes` read from `conn`.
    #[track_caller]
    pub fn receive(&mut self, conn: ConnId, bytes: &[u8]) {
        self.input(Input::Received {
            conn,
            bytes: BytesMut::from(bytes),
        });
    }

    /// Sends `message` from a backend (wrapped in an envelope in envelope mode, naming `hop`).
    ///
    /// # Panics
    /// If backend `i` has no connection.
    #[track_caller]
    pub fn backend_sends(&mut self, i: usize, message: &str, hop: Option<SocketAddr>) {
        let conn = self.backends[i].unwrap();
        match self.modes[i] {
            BackendMode::Plain => self.receive(conn, message.as_bytes()),
            BackendMode::Envelope => {
                let mut out = BytesMut::new();
                let env = Envelope {
                    addr: hop,
                    transport: Transport::Tcp,
                    load: Some(3),
                };
                lb_core::envelope::encode(&mut out, &env, message.as_bytes());
                self.receive(conn, &out);
            }
        }
    }

    /// Exactly one `Send` is pending and nothing else but events; returns its connection and
    /// bytes.
    ///
    /// # Panics
    /// If anything else came out (a `Close`, `Connect`, `Dial`, `Resolve`, a second `Send`).
    #[track_caller]
    pub fn expect_one_send(&mut self) -> (ConnId, Bytes) {
        let mut outs = self.drain();
        match (outs.pop(), outs.is_empty()) {
            (Some(Output::Send { conn, bytes }), true) => (conn, bytes),
            (last, _) => {
                outs.extend(last);
                panic!("expected one Send and nothing else, got {outs:?}")
            }
        }
    }

    /// Exactly one message went to a backend (and nothing else but events); returns the backend
    /// index, the SIP text (unwrapped from its envelope) and the envelope.
    ///
    /// # Panics
    /// If it went elsewhere, or anything else came out.
    #[track_caller]
    pub fn expect_to_backend(&mut self) -> (usize, String, Option<Envelope>) {
        let (conn, bytes) = self.expect_one_send();
        let i = self
            .backends
            .iter()
            .position(|c| *c == Some(conn))
            .unwrap_or_else(|| panic!("send to {conn}, not a backend: {:?}", text(&bytes)));
        match self.modes[i] {
            BackendMode::Plain => (i, text(&bytes), None),
            BackendMode::Envelope => {
                let mut d = EnvelopeDecoder::default();
                d.push(BytesMut::from(&bytes[..]));
                let (env, payload) = d.next_envelope(1 << 20).unwrap().unwrap();
                assert!(d.next_envelope(1 << 20).is_none(), "one envelope per send");
                (i, text(&payload), Some(env))
            }
        }
    }

    /// Exactly one message went to a frontend connection (and nothing else but events);
    /// returns the connection and the text.
    ///
    /// # Panics
    /// If it went to a backend, or anything else came out.
    #[track_caller]
    pub fn expect_to_frontend(&mut self) -> (ConnId, String) {
        let (conn, bytes) = self.expect_one_send();
        assert!(
            !self.backends.contains(&Some(conn)),
            "went to a backend: {}",
            text(&bytes)
        );
        (conn, text(&bytes))
    }

    /// Backend `b` answers the INVITE it got (`forwarded`) with 200; the tag comes from the
    /// Record-Route that reached the frontend: the frontend-facing one a UA's route set holds.
    ///
    /// # Panics
    /// If the 200 does not reach a frontend with the balancer's Record-Route.
    #[track_caller]
    pub fn answer_tag(&mut self, b: usize, forwarded: &str) -> String {
        self.backend_sends(b, &response_to(forwarded, "200 OK"), None);
        let (_, ok) = self.expect_to_frontend();
        record_route_tag(&ok).expect("the 200 carries the balancer's Record-Route")
    }

    /// Nothing is pending but events.
    ///
    /// # Panics
    /// If anything else came out.
    #[track_caller]
    pub fn expect_nothing(&mut self) {
        let outs = self.drain();
        assert!(outs.is_empty(), "expected no output, got {outs:?}");
    }

    /// The id of backend `i`.
    ///
    /// # Panics
    /// If there is no backend `i`.
    #[must_use]
    pub fn backend_id(&self, i: usize) -> BackendId {
        self.lb.backends().nth(i).unwrap().0
    }
}

/// `b` as text (invalid UTF-8 replaced).
#[must_use]
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The value of the `lb` parameter in the first Record-Route of `message`.
#[must_use]
pub fn record_route_tag(message: &str) -> Option<String> {
    let line = message.lines().find(|l| l.starts_with("Record-Route:"))?;
    let start = line.find(";lb=")? + 4;
    let end = line[start..]
        .find(['>', ';'])
        .map_or(line.len(), |e| start + e);
    Some(line[start..end].to_string())
}

/// Replaces the tag text in a message by `TAG`, for snapshots independent of key and layout.
#[must_use]
pub fn redact_tags(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(i) = rest.find("lb=") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .unwrap_or(rest.len());
        out.push_str("TAG");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// An INVITE as a proxy at 203.0.113.5 relays it.
#[must_use]
pub fn invite(call_id: &str, branch: &str) -> String {
    format!(
        "INVITE sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP proxy.example.com:5060;branch={branch};rport\r\n\
         Max-Forwards: 69\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@203.0.113.5:5060;transport=tcp>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: 4\r\n\r\nv=0\n"
    )
}

/// The CANCEL of [`invite`] (same branch).
#[must_use]
pub fn cancel(call_id: &str, branch: &str) -> String {
    format!(
        "CANCEL sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP proxy.example.com:5060;branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 CANCEL\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// An in-dialog request from the caller, routed by the balancer's Record-Route.
#[must_use]
pub fn in_dialog(method: &str, call_id: &str, tag: &str, cseq: u32) -> String {
    format!(
        "{method} sip:bob@198.51.100.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/TCP proxy.example.com:5060;branch=z9hG4bK{method}{cseq}\r\n\
         Route: <sip:{LB};transport=tcp;lr;lb={tag}>\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a1\r\n\
         To: <sip:bob@example.com>;tag=b1\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The callee's BYE for `call_id` as backend `b`'s stack writes it: its route set is the
/// Record-Route of the INVITE it received (RFC 3261 §12.1.1), its target the caller's Contact.
///
/// # Panics
/// If `forwarded` has no Record-Route.
#[must_use]
pub fn callee_bye(forwarded: &str, b: usize, call_id: &str, request_uri: &str) -> String {
    let rr = forwarded
        .lines()
        .find(|l| l.starts_with("Record-Route:"))
        .expect("the INVITE carries the balancer's Record-Route");
    let route = rr.replacen("Record-Route:", "Route:", 1);
    format!(
        "BYE {request_uri} SIP/2.0\r\n\
         Via: SIP/2.0/TCP 198.51.100.{}:5060;branch=z9hG4bKbye1\r\n\
         {route}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:bob@example.com>;tag=b1\r\n\
         To: <sip:alice@example.com>;tag=a1\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        b + 1
    )
}

/// A response from the backend to `request` (Via/From/To/Call-ID/CSeq copied).
#[must_use]
pub fn response_to(request: &str, status: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line.split(':').next().unwrap_or("");
        match name {
            "Via" | "From" | "Call-ID" | "CSeq" | "Record-Route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "To" => {
                out.push_str(line);
                if !line.contains("tag=") {
                    out.push_str(";tag=b1");
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}
