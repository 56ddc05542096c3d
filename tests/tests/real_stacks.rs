//! End-to-end tests with peers on SIP stacks other than SIPp (issue 10), against both binaries
//! (`tokio::NAME`, `mio::NAME`).
//!
//! A SIPp backend sends its BYE on the connection the INVITE came in on, which is the easy case.
//! A backend on an independent stack (Perl's Net::SIP, `tests/peers/netsip-uas.pl`) resolves
//! its BYE's first Route, the balancer's advertised address, and opens a new connection to the
//! balancer's listener for it: the balancer must know that BYE by its backend-side tag, not by
//! the connection. The other scenarios cover what that change touches: the balancer dialling a
//! caller whose connection is gone, a frontend on a backend's IP that claims to be the backend,
//! IPv6 throughout, and Max-Forwards; and one thing Net::SIP showed on the way, the `received=`
//! it stamps on callers' Vias.
//!
//! Against the binaries built before the fix (issue 10), `netsip_backends_hang_up_to_callers`
//! fails: no caller receives its BYE, because the balancer takes the backend's new connection
//! for a frontend and sends the BYE back to the backend.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

use siplb_e2e::flows::{UAC_RECV_BYE, UAS_BYE};
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, Runtime, CLEAN};
use siplb_e2e::net::{self, free_port, poll_until};
use siplb_e2e::netsip::{NetsipLog, NetsipOpts, NetsipUas};
use siplb_e2e::ops::SipReader;
use siplb_e2e::ops::{self, accept_within, header, status, Answered, SipBackend, SipClient};
use siplb_e2e::sipp::{Uac, UacSpec, Uas};
use siplb_e2e::trace::{assert_affinity, assert_signatures, owned_by, per_backend, Dir, Trace};
use siplb_e2e::RunDir;

// ---------------------------------------------------------------------------------------------
// Shared setup and checks

/// The window of the new-call table: short, so a message that should have been routed by its
/// tag but fell back on the table would fail within the test.
const WINDOW_SECS: f64 = 2.0;

/// How long a backend's BYE may take to arrive after it is due (1 s after the ACK).
const BYE_WAIT: Duration = Duration::from_secs(5);

/// `127.0.0.N`: each Net::SIP backend gets an address of its own, as on a real farm.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// Net::SIP backends `netsip-N` on `127.0.0.N`, for each N in `hosts`.
fn start_netsip(dir: &RunDir, hosts: &[u8], opts: &NetsipOpts) -> Vec<NetsipUas> {
    hosts
        .iter()
        .map(|&n| {
            let addr = SocketAddr::new(loopback(n), free_port());
            NetsipUas::start(dir, &format!("netsip-{n}"), addr, opts)
        })
        .collect()
}

/// The balancer in plain mode in front of `backends`, with the short window.
fn plain_lb(dir: &RunDir, rt: Runtime, backends: &[SocketAddr]) -> Balancer {
    let mut spec = LbSpec::new(
        rt,
        backends.iter().copied().map(BackendArg::plain).collect(),
    )
    .with_args(&["--backend-mode", "plain"]);
    spec.window_secs = Some(WINDOW_SECS);
    Balancer::start(dir, spec)
}

fn addrs(backends: &[NetsipUas]) -> Vec<SocketAddr> {
    backends.iter().map(NetsipUas::addr).collect()
}

/// Waits (bounded) until every BYE the backends sent has had its 200 back; the assertions
/// after it say what is missing when that never happens.
fn wait_for_bye_answers(backends: &[NetsipUas]) {
    poll_until(BYE_WAIT, || {
        backends.iter().all(|b| {
            let log = b.log();
            log.count(Dir::Sent, "BYE") == log.count(Dir::Received, "200/BYE")
        })
    });
}

/// Stops the backends: their line logs and traces, in order.
fn stop_all(backends: Vec<NetsipUas>) -> (Vec<NetsipLog>, Vec<Trace>) {
    backends.into_iter().map(NetsipUas::stop).unzip()
}

/// The balancer's own entry (advertised address and a tag) in a Route, Record-Route or Via.
fn is_lb_entry(value: &str, lb: SocketAddr) -> bool {
    value.contains(&lb.to_string()) && value.contains(";lb=")
}

/// Whether a header value carries a backend-side tag (`lb=b<backend>.<key>.<mac>`).
fn has_backend_tag(value: &str) -> bool {
    value.contains(";lb=b")
}

/// [`CLEAN`] less `frontends_open` (Net::SIP keeps the connections it opened to the listener
/// until it exits), with the counters of the fix for issue 10 at 0 too.
fn clean() -> Vec<(&'static str, u64)> {
    CLEAN
        .iter()
        .copied()
        .filter(|(name, _)| *name != "frontends_open")
        .chain([
            ("replies_482", 0),
            ("replies_483", 0),
            ("dial_out_failures", 0),
        ])
        .collect()
}

/// What a Net::SIP backend logs of a call it answers and hangs up.
const NETSIP_HANGS_UP: &[&str] = &[
    "recv INVITE",
    "sent 100/INVITE",
    "sent 180/INVITE",
    "sent 200/INVITE",
    "recv ACK",
    "sent BYE",
    "recv 200/BYE",
];

// ---------------------------------------------------------------------------------------------
// a. Net::SIP backends hang up: each BYE, sent over the backend's own new connection to the
//    balancer's listener, reaches the caller, and the caller's 200 reaches the backend.

fn netsip_backends_hang_up_to_callers(rt: Runtime) {
    const CALLS: u32 = 10;
    let dir = RunDir::new(&format!("netsip-bye-{}", rt.name()));
    let backends = start_netsip(&dir, &[2, 3, 4], &NetsipOpts::default());
    let mut lb = plain_lb(&dir, rt, &addrs(&backends));
    // One caller connection for all calls (`-t t1`), as a proxy multiplexes them.
    let mut spec = UacSpec::new("uac", "uac_recv_bye.xml", lb.addr());
    spec.calls = CALLS;
    spec.rate = 20;
    spec.timeout = Duration::from_secs(20);
    let uac = Uac::run(&dir, spec);
    wait_for_bye_answers(&backends);
    let stats = lb.stop();
    let (logs, traces) = stop_all(backends);

    let got_bye = uac.trace.call_ids_with(Dir::Received, "BYE").len();
    assert_eq!(
        got_bye,
        CALLS as usize,
        "{got_bye} of {CALLS} callers received their callee's BYE (issue 10)\n{}\n{}",
        stats.line,
        logs.iter().map(|l| l.text.as_str()).collect::<String>()
    );
    uac.assert_all_ok(CALLS.into());
    // Every call reached exactly one backend, all three took calls, and each backend's log of
    // each of its calls is the whole flow: INVITE, ACK, its own BYE and that BYE's 200.
    let owner = assert_affinity(&[&uac.trace], &traces.iter().collect::<Vec<_>>());
    assert_eq!(per_backend(&owner).len(), 3, "{:?}", per_backend(&owner));
    for t in &traces {
        assert_signatures(t, owned_by(&owner, &t.name), NETSIP_HANGS_UP);
    }
    // SIPp logs the optional 100 only when it came; Net::SIP always sends one.
    let mut with_trying = UAC_RECV_BYE.to_vec();
    with_trying.push("recv 100/INVITE");
    assert_signatures(&uac.trace, owner.keys(), &with_trying);
    for log in &logs {
        // The premise: Net::SIP sent its BYEs over one connection it opened itself to the
        // balancer's advertised address, never over the balancer's connection to it.
        let peers: Vec<&str> = log.connects.iter().map(|c| c.peer.as_str()).collect();
        assert_eq!(
            peers,
            [lb.addr().to_string()],
            "{}:\n{}",
            log.name,
            log.text
        );
    }
    for m in uac.trace.msgs.iter() {
        // A frontend never sees a backend-side tag (it could not impersonate a backend).
        for (name, value) in &m.headers {
            assert!(
                !has_backend_tag(value),
                "the caller saw a backend-side tag in {name}:\n{}",
                m.raw
            );
        }
        if m.dir == Dir::Received && m.label() == "BYE" {
            let top = m.header("Via").unwrap_or("");
            assert!(
                is_lb_entry(top, lb.addr()),
                "BYE without the balancer's tagged Via on top:\n{}",
                m.raw
            );
        }
    }
    for t in &traces {
        // ... and a backend sees only the backend-side one, which its BYE's Route carries back.
        for m in t
            .msgs
            .iter()
            .filter(|m| m.label() == "INVITE" || m.label() == "BYE")
        {
            let rr = m.header_values(if m.dir == Dir::Received {
                "Record-Route"
            } else {
                "Route"
            });
            assert!(
                rr.first()
                    .is_some_and(|v| is_lb_entry(v, lb.addr()) && has_backend_tag(v)),
                "{}: {} without the balancer's backend-side tag on top:\n{}",
                t.name,
                m.dir_label(),
                m.raw
            );
        }
    }
    stats.expect(&clean());
    stats.expect(&[
        ("new_calls", CALLS.into()),
        // The caller's connection was there for every BYE.
        ("dial_outs", 0),
    ]);
}

// ---------------------------------------------------------------------------------------------
// b. The caller's connection is gone when the backend hangs up: the balancer dials the
//    caller's Contact and sends the BYE on the new connection.

fn dial_out_when_the_callers_connection_is_gone(rt: Runtime) {
    let dir = RunDir::new(&format!("netsip-dial-out-{}", rt.name()));
    let backends = start_netsip(&dir, &[2], &NetsipOpts::default());
    let mut lb = plain_lb(&dir, rt, &addrs(&backends));
    // The caller listens where its Via and Contact say, as a user agent reachable over TCP.
    let listener = TcpListener::bind(net::local(free_port())).unwrap();
    let me = listener.local_addr().unwrap();
    let mut a = SipClient::connect(lb.addr()).advertising(me);
    let call = a.call("dial-out-1");
    assert_eq!(call.status, 200, "{}", call.response);
    a.ack(&call);
    // Connection A closes; the backend hangs up 1 s after the ACK.
    drop(a);

    let stream = accept_within(&listener, BYE_WAIT).unwrap_or_else(|| {
        panic!(
            "the balancer never connected to the caller at {me}\n{}",
            lb.log_tail(20)
        )
    });
    let mut reader = SipReader::new(stream.try_clone().unwrap());
    let bye = reader
        .next_message()
        .expect("reading the dialled connection")
        .expect("the balancer closed the dialled connection");
    assert!(
        bye.starts_with(&format!("BYE sip:caller@{me};transport=tcp SIP/2.0")),
        "{bye}"
    );
    assert_eq!(header(&bye, "Call-ID"), Some("dial-out-1"), "{bye}");
    // Net::SIP sent 70; a backend's request is a forwarded request too.
    assert_eq!(header(&bye, "Max-Forwards"), Some("69"), "{bye}");
    assert!(
        is_lb_entry(header(&bye, "Via").unwrap_or(""), lb.addr()),
        "{bye}"
    );
    (&stream)
        .write_all(ops::response(&bye, 200, "").as_bytes())
        .unwrap();
    let answered = poll_until(BYE_WAIT, || {
        backends[0]
            .log()
            .call_ids_with(Dir::Received, "200/BYE")
            .contains(&"dial-out-1")
    });
    let stats = lb.stop();
    let (logs, _) = stop_all(backends);
    assert!(
        answered,
        "the caller's 200 to the BYE never reached the backend\n{}",
        logs[0].text
    );
    stats.expect(&clean());
    stats.expect(&[("new_calls", 1), ("dial_outs", 1)]);
}

// ---------------------------------------------------------------------------------------------
// c. A frontend connecting from a backend's IP stays a frontend: it cannot send a request on
//    the backend's behalf to another frontend, with the frontend-side tag it learned or with a
//    forged backend-side one.

/// A BYE as the callee (the backend at `backend`) would send it, routed by `route`, to
/// `target`; written by whoever holds the caller's view of `call`.
fn bye_claiming_to_be(
    backend: SocketAddr,
    call: &Answered,
    route: &str,
    target: SocketAddr,
    cseq: u32,
) -> String {
    let id = &call.call_id;
    format!(
        "BYE sip:other@{target};transport=tcp SIP/2.0\r\n\
         Route: {route}\r\n\
         Via: SIP/2.0/TCP {backend};rport;branch=z9hG4bK-claim-{id}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: {callee}\r\n\
         To: {caller}\r\n\
         Call-ID: {id}\r\n\
         CSeq: {cseq} BYE\r\n\
         Content-Length: 0\r\n\r\n",
        callee = header(&call.response, "To").unwrap_or_default(),
        caller = header(&call.response, "From").unwrap_or_default(),
    )
}

fn a_frontend_on_a_backend_address_is_still_a_frontend(rt: Runtime) {
    let dir = RunDir::new(&format!("impostor-{}", rt.name()));
    // A SIPp backend on the backend address: Net::SIP would stamp `received=` with the
    // balancer's address on the callers' Vias (see netsip-uas.pl), which misroutes the
    // impostor's own 200 to the other frontend on 127.0.0.1 (what
    // `responses_reach_callers_on_other_addresses` covers); here only the impostor's requests
    // are under test.
    let uas = Uas::start_at(
        &dir,
        "backend-0",
        "uas_basic.xml",
        SocketAddr::new(loopback(2), free_port()),
        &[],
    );
    let backend = uas.addr();
    let mut lb = plain_lb(&dir, rt, &[backend]);
    // Another frontend, reachable at its listening address, with a call of its own: the
    // balancer knows a connection to it.
    let other_listener = TcpListener::bind(net::local(free_port())).unwrap();
    let other_addr = other_listener.local_addr().unwrap();
    let mut other = SipClient::connect(lb.addr()).advertising(other_addr);
    let other_call = other.call("other-1");
    assert_eq!(other_call.status, 200, "{}", other_call.response);
    other.ack(&other_call);

    let mut impostor = SipClient::connect_from(lb.addr(), backend.ip());
    assert_eq!(impostor.local_addr().ip(), backend.ip());
    let call = impostor.call("impostor-1");
    assert_eq!(call.status, 200, "{}", call.response);
    impostor.ack(&call);
    let rr = header(&call.response, "Record-Route")
        .unwrap_or_default()
        .to_string();
    assert!(is_lb_entry(&rr, lb.addr()) && !has_backend_tag(&rr), "{rr}");
    let byes_at_backend = || {
        let trace = uas.trace();
        trace
            .msgs
            .iter()
            .filter(|m| m.dir == Dir::Received && m.label() == "BYE")
            .filter(|m| m.call_id() == "impostor-1")
            .count()
    };

    // 1. The frontend-side tag it learned, a Request-URI naming the other frontend, the
    //    backend's Via: routed as a frontend request, by the tag, to the call's backend,
    //    which answers it.
    let claim = bye_claiming_to_be(backend, &call, &rr, other_addr, 2);
    impostor.send_raw(claim.as_bytes());
    let answer = impostor.final_response_within("impostor-1", BYE_WAIT);
    assert_eq!(
        answer.as_deref().and_then(status),
        Some(200),
        "the BYE with the frontend-side tag: {answer:?}\n{}",
        lb.log_tail(20)
    );
    assert_eq!(
        byes_at_backend(),
        1,
        "{}",
        uas.trace().dump_call("impostor-1")
    );

    // 2. A forged backend-side tag: not a backend's request (no dial-out); the balancer
    //    refuses it (481) or, at most, it reaches the backend.
    let forged = format!(
        "<sip:{};transport=tcp;lr;lb=b0.0.0000000000000000>",
        lb.addr()
    );
    impostor.send_raw(bye_claiming_to_be(backend, &call, &forged, other_addr, 3).as_bytes());
    let answer = impostor.final_response_within("impostor-1", BYE_WAIT);
    let refused = answer.as_deref().and_then(status) == Some(481);
    assert!(
        refused || byes_at_backend() == 2,
        "the BYE with a forged backend-side tag was neither refused nor sent to the backend: \
         {answer:?}\n{}",
        lb.log_tail(20)
    );

    // Neither request went to the other frontend, on its connection or a dialled one.
    let leaked = other.read_within(Duration::from_millis(300));
    assert!(leaked.is_none(), "the other frontend received {leaked:?}");
    assert!(
        accept_within(&other_listener, Duration::ZERO).is_none(),
        "the balancer dialled the other frontend"
    );
    let stats = lb.stop();
    uas.finish();
    stats.expect(&[("new_calls", 2), ("dial_outs", 0), ("dial_out_failures", 0)]);
}

// ---------------------------------------------------------------------------------------------
// d. IPv6 throughout: listener, backends and callers on [::1]; the callee's BYE reaches the
//    caller.

fn ipv6_end_to_end(rt: Runtime) {
    const CALLS: u32 = 4;
    let dir = RunDir::new(&format!("ipv6-{}", rt.name()));
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let backends: Vec<Uas> = (0..2)
        .map(|i| {
            let addr = SocketAddr::new(v6, free_port());
            Uas::start_at(&dir, &format!("backend-{i}"), "uas_bye.xml", addr, &[])
        })
        .collect();
    let mut spec = LbSpec::new(
        rt,
        backends
            .iter()
            .map(|b| BackendArg::plain(b.addr()))
            .collect(),
    );
    spec.window_secs = Some(WINDOW_SECS);
    spec.ip = v6;
    let mut lb = Balancer::start(&dir, spec);
    assert!(lb.addr().is_ipv6());
    let mut spec = UacSpec::new("uac", "uac_recv_bye.xml", lb.addr());
    spec.calls = CALLS;
    spec.rate = 10;
    spec.local_ip = v6;
    spec.timeout = Duration::from_secs(20);
    let uac = Uac::run(&dir, spec);
    let stats = lb.stop();
    let traces: Vec<Trace> = backends.into_iter().map(Uas::finish).collect();
    uac.assert_all_ok(CALLS.into());
    let owner = assert_affinity(&[&uac.trace], &traces.iter().collect::<Vec<_>>());
    assert_signatures(&uac.trace, owner.keys(), UAC_RECV_BYE);
    for t in &traces {
        assert_signatures(t, owned_by(&owner, &t.name), UAS_BYE);
    }
    // The tags name the balancer by its IPv6 address, bracketed.
    for m in uac.trace.msgs.iter().filter(|m| m.label() == "200/INVITE") {
        let rr = m.header("Record-Route").unwrap_or("");
        assert!(
            is_lb_entry(rr, lb.addr()) && rr.contains("[::1]"),
            "{}",
            m.raw
        );
    }
    stats.expect(&clean());
    stats.expect(&[("new_calls", CALLS.into()), ("dial_outs", 0)]);
}

// ---------------------------------------------------------------------------------------------
// e. Max-Forwards: 0 is answered 483 and goes nowhere; otherwise one less reaches the backend,
//    and a request without one gets 70.

fn max_forwards(rt: Runtime) {
    let dir = RunDir::new(&format!("max-forwards-{}", rt.name()));
    let backend = SipBackend::start();
    let mut spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]);
    spec.window_secs = Some(WINDOW_SECS);
    let mut lb = Balancer::start(&dir, spec);
    let mut client = SipClient::connect(lb.addr());

    let zero = client.call_with("mf-0", Some(0));
    assert_eq!(zero.status, 483, "{}", zero.response);
    let five = client.call_with("mf-5", Some(5));
    assert_eq!(five.status, 200, "{}", five.response);
    let absent = client.call_with("mf-none", None);
    assert_eq!(absent.status, 200, "{}", absent.response);

    // The backend answered the later calls, so it has read all that was forwarded before them.
    let invites = backend.received_messages("INVITE");
    let seen = |id: &str| {
        invites
            .iter()
            .find(|m| header(m, "Call-ID") == Some(id))
            .map(|m| header(m, "Max-Forwards").unwrap_or("none").to_string())
    };
    assert_eq!(
        seen("mf-0"),
        None,
        "the INVITE with Max-Forwards 0 was forwarded"
    );
    assert!(!backend.received("ACK").contains(&"mf-0".to_string()));
    assert_eq!(seen("mf-5").as_deref(), Some("4"));
    assert_eq!(seen("mf-none").as_deref(), Some("70"));
    let stats = lb.stop();
    // Whether the refused INVITE counts as a new call is the balancer's business; that it went
    // nowhere is checked above.
    stats.expect(&[("replies_483", 1), ("replies_482", 0)]);
}

// ---------------------------------------------------------------------------------------------
// f. Responses of a Net::SIP backend reach callers that are not on the balancer's IP. The
//    balancer adds no Via, so Net::SIP (RFC 3261 §18.2.1) stamps `received=` with the
//    balancer's own address on each caller's Via, replacing the one the balancer stamped for a
//    caller behind NAT. The balancer's hop lookup then tries that address, and its last resort
//    ("the IP alone when exactly one connection comes from it") finds a frontend on the
//    balancer's own IP, a co-located proxy, which gets other callers' responses. Without that
//    frontend the lookup falls through to the Via sent-by and every 200 arrives (checked by
//    hand against the binaries of the fix).

fn responses_reach_callers_on_other_addresses(rt: Runtime) {
    let dir = RunDir::new(&format!("netsip-received-{}", rt.name()));
    let quiet = NetsipOpts {
        bye_after: 0.0,
        ..NetsipOpts::default()
    };
    let backends = start_netsip(&dir, &[2], &quiet);
    let mut lb = plain_lb(&dir, rt, &addrs(&backends));
    // A proxy on the balancer's host, a proxy on another address, and one behind NAT (its Via
    // names a private address it is not seen from).
    let mut colocated = SipClient::connect(lb.addr());
    let mut remote = SipClient::connect_from(lb.addr(), loopback(5));
    let behind_nat = SocketAddr::new(loopback(9), free_port());
    let mut natted = SipClient::connect_from(lb.addr(), loopback(6)).advertising(behind_nat);
    let local = colocated.call("colocated-1");
    assert_eq!(local.status, 200, "{}", local.response);
    let mut lost = Vec::new();
    for (client, id) in [(&mut remote, "remote-1"), (&mut natted, "natted-1")] {
        client.send_raw(client.invite(id, Some(70)).as_bytes());
        let answer = client.final_response_within(id, Duration::from_secs(3));
        if answer.as_deref().and_then(status) != Some(200) {
            lost.push(id);
        }
    }
    let misdelivered = colocated.read_within(Duration::from_millis(300));
    let stats = lb.stop();
    let (logs, traces) = stop_all(backends);
    assert!(
        lost.is_empty() && misdelivered.is_none(),
        "200s lost: {lost:?}; the co-located frontend received {misdelivered:?}\n{}\n{}",
        logs[0].text,
        traces[0]
            .msgs
            .iter()
            .filter(|m| m.label() == "200/INVITE")
            .map(|m| m.raw.as_str())
            .collect::<String>()
    );
    stats.expect(&[("new_calls", 3)]);
}

siplb_e2e::for_both_runtimes!(
    netsip_backends_hang_up_to_callers,
    dial_out_when_the_callers_connection_is_gone,
    a_frontend_on_a_backend_address_is_still_a_frontend,
    ipv6_end_to_end,
    max_forwards,
    responses_reach_callers_on_other_addresses,
);

/// Perl's Net::SIP must be there: the suite fails (never skips) without it.
#[test]
fn netsip_is_installed() {
    let out = std::process::Command::new("perl")
        .args(["-MNet::SIP", "-e", "print $Net::SIP::VERSION"])
        .output()
        .expect("running perl");
    assert!(
        out.status.success(),
        "{}",
        siplb_e2e::netsip::NETSIP_MISSING
    );
}
