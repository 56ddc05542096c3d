//! End-to-end tests of `lb-tokio` and `lb-mio` with real peers on 127.0.0.1 (issue 3, "End-to-end
//! tests with real peers", items 1–8). Every scenario runs against both binaries: the macro at
//! the bottom generates `tokio::NAME` and `mio::NAME` tests.
//!
//! Peers: SIPp as the proxy-side client (UAC) over one shared TCP connection (`-t t1`, or one per
//! call with `-t tn`), SIPp as three plain-mode backends (UAS), the example envelope backend, and
//! raw Rust sockets for garbage. Which backend saw a call comes from the backend's own SIPp
//! message trace (one file per backend), or for envelope backends from the `X-Backend` header
//! they stamp on every response.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use siplb_e2e::envelope::EnvBackend;
use siplb_e2e::flows::{UAC_486, UAC_CANCEL, UAC_RECV_BYE, UAS_486, UAS_BASIC, UAS_BYE};
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, Runtime, CLEAN};
use siplb_e2e::net::{self, free_port};
use siplb_e2e::sipp::{Transport, Uac, UacOutcome, UacSpec, Uas};
use siplb_e2e::trace::{
    assert_affinity, assert_signatures, assert_spread, expect_sig, owned_by, per_backend, Dir,
    Trace,
};
use siplb_e2e::RunDir;

// ---------------------------------------------------------------------------------------------
// Shared setup and checks

/// Starts `n` SIPp backends `backend-0..n` running `scenario`.
fn start_uas(dir: &RunDir, scenario: &str, n: usize) -> Vec<Uas> {
    (0..n)
        .map(|i| Uas::start(dir, &format!("backend-{i}"), scenario, &[]))
        .collect()
}

fn plain_args(backends: &[Uas]) -> Vec<BackendArg> {
    backends
        .iter()
        .map(|b| BackendArg::plain(b.addr()))
        .collect()
}

/// Stops the backends and returns their traces, in order.
fn finish_all(backends: Vec<Uas>) -> Vec<Trace> {
    backends.into_iter().map(Uas::finish).collect()
}

fn refs(traces: &[Trace]) -> Vec<&Trace> {
    traces.iter().collect()
}

/// The balancer's own Route/Record-Route entry: its address and an `lb=` tag parameter.
fn is_lb_uri(value: &str, lb: SocketAddr) -> bool {
    value.contains(&lb.to_string()) && value.contains(";lb=")
}

/// Checks on the plain-mode wire: the caller sees the balancer's tagged Record-Route in the
/// 2xx to its INVITE; backends see it on top of the INVITE's Record-Route and never see the
/// balancer's Route entry (loose routing removes it).
fn assert_plain_routing(uac: &Trace, backends: &[Trace], lb: SocketAddr) {
    // The 2xx of each call's initial INVITE (CSeq 1); a re-INVITE's 2xx has no Record-Route.
    for m in uac.msgs.iter().filter(|m| {
        m.dir == Dir::Received
            && m.label() == "200/INVITE"
            && m.header("CSeq").is_some_and(|v| v.starts_with("1 "))
    }) {
        let rr = m.header_values("Record-Route");
        assert!(
            rr.first().is_some_and(|v| is_lb_uri(v, lb)),
            "{}: 200 to INVITE lacks the balancer's tagged Record-Route:\n{}",
            uac.name,
            m.raw
        );
    }
    for t in backends {
        for m in t.msgs.iter().filter(|m| m.dir == Dir::Received) {
            if m.label() == "INVITE" && m.header("To").is_some_and(|to| !to.contains("tag=")) {
                assert!(
                    m.header_values("Record-Route")
                        .first()
                        .is_some_and(|v| is_lb_uri(v, lb)),
                    "{}: initial INVITE without the balancer's Record-Route on top:\n{}",
                    t.name,
                    m.raw
                );
            }
            assert!(
                !m.header_values("Route").iter().any(|v| is_lb_uri(v, lb)),
                "{}: received the balancer's own Route entry:\n{}",
                t.name,
                m.raw
            );
        }
    }
}

fn uac_spec(name: &str, scenario: &str, lb: &Balancer, calls: u32, rate: u32) -> UacSpec {
    let mut spec = UacSpec::new(name, scenario, lb.addr());
    spec.calls = calls;
    spec.rate = rate;
    spec
}

const BASIC_UAC: &[&str] = &[
    "sent INVITE",
    "recv 180/INVITE",
    "recv 200/INVITE",
    "sent ACK",
    "sent BYE",
    "recv 200/BYE",
];

/// Items 1 and 5: basic calls over three plain backends on one connection or one per call;
/// `flags` go to the balancer's command line.
fn basic_calls(rt: Runtime, transport: Transport, test: &str, flags: &[&str]) {
    const CALLS: u32 = 30;
    let dir = RunDir::new(&format!("{test}-{}", rt.name()));
    let backends = start_uas(&dir, "uas_basic.xml", 3);
    let mut spec = LbSpec::new(rt, plain_args(&backends));
    spec.extra_args = flags.iter().map(|f| f.to_string()).collect();
    let mut lb = Balancer::start(&dir, spec);
    let mut spec = uac_spec("uac", "uac_basic.xml", &lb, CALLS, 60);
    spec.transport = transport;
    spec.pause_ms = 50;
    let uac = Uac::run(&dir, spec);
    let stats = lb.stop();
    let traces = finish_all(backends);
    uac.assert_all_ok(CALLS.into());

    let owner = assert_affinity(&[&uac.trace], &refs(&traces));
    assert_spread(&owner, &traces, CALLS as usize);
    for t in &traces {
        assert_signatures(t, owned_by(&owner, &t.name), UAS_BASIC);
    }
    stats.expect(CLEAN);
    let conns = if transport == Transport::One {
        1
    } else {
        CALLS.into()
    };
    stats.expect(&[
        ("new_calls", CALLS.into()),
        // ACK and BYE of every call came back through the balancer's tagged Route.
        ("tagged", 2 * u64::from(CALLS)),
        ("table_hits", 0),
        ("frontends_accepted", conns),
    ]);
    if transport == Transport::One {
        assert_signatures(&uac.trace, owner.keys(), BASIC_UAC);
    } else {
        // With `-t tn` SIPp writes each call's INVITE while its new connection is still being
        // set up; such buffered writes are missing from SIPp's message trace. The backends'
        // traces above show every INVITE arriving; here the rest of the caller's side is checked.
        let want: Vec<String> = expect_sig(BASIC_UAC)
            .into_iter()
            .filter(|l| l != "sent INVITE")
            .collect();
        for id in owner.keys() {
            let mut got = uac.trace.signature(id);
            got.retain(|l| l != "sent INVITE");
            assert_eq!(got, want, "{}", uac.trace.dump_call(id));
        }
    }
    assert_plain_routing(&uac.trace, &traces, lb.addr());
    eprintln!(
        "{}: calls per backend {:?}; {}",
        test,
        per_backend(&owner),
        stats.line
    );
}

// ---------------------------------------------------------------------------------------------
// 1. basic calls spread over all backends, every message of a call on one backend

fn s1_basic_calls_one_connection(rt: Runtime) {
    basic_calls(rt, Transport::One, "s1-basic", &[]);
}

/// The same without wake-up pacing: every message forwarded the moment it arrives.
fn s1_basic_calls_unpaced(rt: Runtime) {
    basic_calls(rt, Transport::One, "s1-unpaced", &["--batch-window", "0"]);
}

/// The same with the widest pacing window allowed (50 ms per wake-up): slower, still correct.
fn s1_basic_calls_widest_batch_window(rt: Runtime) {
    basic_calls(rt, Transport::One, "s1-widest", &["--batch-window", "0.05"]);
}

// ---------------------------------------------------------------------------------------------
// 2. calls that outlive the new-call window: re-INVITE and BYE still reach the call's backend

/// `contact_is_lb`: the backends put the balancer's address in their Contact, so the in-dialog
/// requests' Request-URI names the balancer and only the tag can say which backend owns the call.
fn long_calls(rt: Runtime, contact_is_lb: bool, test: &str) {
    const CALLS: u32 = 10;
    let dir = RunDir::new(&format!("{test}-{}", rt.name()));
    let lb_port = free_port();
    let backends: Vec<Uas> = (0..3)
        .map(|i| {
            let port = free_port();
            let contact = if contact_is_lb { lb_port } else { port };
            Uas::start_on(
                &dir,
                &format!("backend-{i}"),
                "uas_long.xml",
                port,
                &[("contact", net::local(contact).to_string())],
            )
        })
        .collect();
    let mut spec = LbSpec::new(rt, plain_args(&backends));
    spec.window_secs = Some(2.0);
    spec.port = Some(lb_port);
    let ports: BTreeMap<String, u16> = backends
        .iter()
        .map(|b| (b.name().to_string(), b.port()))
        .collect();
    let mut lb = Balancer::start(&dir, spec);
    let mut uspec = uac_spec("uac", "uac_long.xml", &lb, CALLS, 20);
    // Held 5 s after the ACK: the 2 s window has long expired when the re-INVITE and BYE go.
    uspec.pause_ms = 5000;
    let uac = Uac::run(&dir, uspec);
    let stats = lb.stop();
    let traces = finish_all(backends);
    uac.assert_all_ok(CALLS.into());

    let owner = assert_affinity(&[&uac.trace], &refs(&traces));
    assert_spread(&owner, &traces, CALLS as usize);
    for t in &traces {
        assert_signatures(
            t,
            owned_by(&owner, &t.name),
            &[
                "recv INVITE",
                "sent 180/INVITE",
                "sent 200/INVITE",
                "recv ACK",
                "recv INVITE",
                "sent 200/INVITE",
                "recv ACK",
                "recv BYE",
                "sent 200/BYE",
            ],
        );
        // The in-dialog requests' target is what the backend advertised in its Contact: its
        // own address, or the balancer's (then only the tag can have routed them here).
        let want = if contact_is_lb {
            lb.addr()
        } else {
            net::local(ports[&t.name])
        };
        for m in t.msgs.iter().filter(|m| {
            m.dir == Dir::Received
                && m.method().is_some_and(|x| x != "CANCEL")
                && m.header("To").is_some_and(|v| v.contains("tag="))
        }) {
            let uri = m.request_uri().unwrap_or("");
            assert!(
                uri.contains(&format!("b2bua@{want}")),
                "{}: in-dialog Request-URI {uri}, want the Contact b2bua@{want}",
                t.name
            );
        }
    }
    assert_signatures(
        &uac.trace,
        owner.keys(),
        &[
            "sent INVITE",
            "recv 180/INVITE",
            "recv 200/INVITE",
            "sent ACK",
            "sent INVITE",
            "recv 200/INVITE",
            "sent ACK",
            "sent BYE",
            "recv 200/BYE",
        ],
    );
    assert_plain_routing(&uac.trace, &traces, lb.addr());
    stats.expect(CLEAN);
    stats.expect(&[
        ("new_calls", CALLS.into()),
        // ACK, re-INVITE, its ACK and BYE: all by tag, none through the new-call table, which
        // had expired (it is empty at the end).
        ("tagged", 4 * u64::from(CALLS)),
        ("table_hits", 0),
        ("table_len", 0),
    ]);
    eprintln!(
        "{}: calls per backend {:?}; {}",
        test,
        per_backend(&owner),
        stats.line
    );
}

fn s2_long_calls_backend_contact(rt: Runtime) {
    long_calls(rt, false, "s2-long-own-contact");
}

fn s2_long_calls_balancer_contact(rt: Runtime) {
    long_calls(rt, true, "s2-long-lb-contact");
}

// ---------------------------------------------------------------------------------------------
// 3. retransmitted INVITE and CANCEL reach the INVITE's backend; so does the ACK of a 486

fn s3_retransmitted_invite_and_cancel(rt: Runtime) {
    const CALLS: u32 = 9;
    let dir = RunDir::new(&format!("s3-cancel-{}", rt.name()));
    let backends = start_uas(&dir, "uas_cancel.xml", 3);
    let mut lb = Balancer::start(&dir, LbSpec::new(rt, plain_args(&backends)));
    let uac = Uac::run(&dir, uac_spec("uac", "uac_cancel.xml", &lb, CALLS, 30));
    let stats = lb.stop();
    let traces = finish_all(backends);
    uac.assert_all_ok(CALLS.into());

    let owner = assert_affinity(&[&uac.trace], &refs(&traces));
    assert_spread(&owner, &traces, CALLS as usize);
    // The retransmission really is one (same top Via branch), on both sides, and so are the
    // CANCEL and the ACK of the 487 (RFC 3261 9.1, 17.1.1.3).
    for t in std::iter::once(&uac.trace).chain(&traces) {
        for (id, msgs) in t.calls() {
            let branches: BTreeSet<&str> = msgs
                .iter()
                .filter(|m| m.method().is_some())
                .filter_map(|m| m.header("Via"))
                .filter_map(|v| v.split(";branch=").nth(1))
                .map(|b| b.split(';').next().unwrap_or(b))
                .collect();
            assert_eq!(branches.len(), 1, "{}: {id}: branches {branches:?}", t.name);
        }
    }
    for t in &traces {
        assert_signatures(
            t,
            owned_by(&owner, &t.name),
            &[
                "recv INVITE",
                "sent 100/INVITE",
                "sent 180/INVITE",
                "recv INVITE",
                "sent 180/INVITE",
                "recv CANCEL",
                "sent 200/CANCEL",
                "sent 487/INVITE",
                "recv ACK",
            ],
        );
    }
    assert_signatures(&uac.trace, owner.keys(), UAC_CANCEL);
    stats.expect(CLEAN);
    // Per call: the retransmitted INVITE, the CANCEL and the ACK of the 487, all untagged.
    stats.expect(&[
        ("new_calls", CALLS.into()),
        ("table_hits", 3 * u64::from(CALLS)),
        ("tagged", 0),
    ]);
}

fn s3_ack_of_486(rt: Runtime) {
    const CALLS: u32 = 9;
    let dir = RunDir::new(&format!("s3-486-{}", rt.name()));
    let backends = start_uas(&dir, "uas_486.xml", 3);
    let mut lb = Balancer::start(&dir, LbSpec::new(rt, plain_args(&backends)));
    let uac = Uac::run(&dir, uac_spec("uac", "uac_486.xml", &lb, CALLS, 30));
    let stats = lb.stop();
    let traces = finish_all(backends);
    uac.assert_all_ok(CALLS.into());

    let owner = assert_affinity(&[&uac.trace], &refs(&traces));
    assert_spread(&owner, &traces, CALLS as usize);
    for t in &traces {
        assert_signatures(t, owned_by(&owner, &t.name), UAS_486);
    }
    assert_signatures(&uac.trace, owner.keys(), UAC_486);
    stats.expect(CLEAN);
    // Per call: the ACK of the 486, untagged.
    stats.expect(&[
        ("new_calls", CALLS.into()),
        ("table_hits", CALLS.into()),
        ("tagged", 0),
    ]);
}

// ---------------------------------------------------------------------------------------------
// 4. a backend hangs up: its BYE reaches the caller on the caller's connection, the caller's
//    200 reaches that backend

fn s4_backend_hangs_up(rt: Runtime) {
    const CALLS: u32 = 6;
    let dir = RunDir::new(&format!("s4-backend-bye-{}", rt.name()));
    let backends = start_uas(&dir, "uas_bye.xml", 3);
    let mut lb = Balancer::start(&dir, LbSpec::new(rt, plain_args(&backends)));
    // Two callers, each on its own connection: a BYE delivered on the wrong connection reaches
    // the other SIPp, which does not know the call (its trace then holds a foreign Call-ID and
    // the right caller's call times out).
    let a = Uac::spawn(&dir, uac_spec("uac-a", "uac_recv_bye.xml", &lb, CALLS, 20));
    let b = Uac::spawn(&dir, uac_spec("uac-b", "uac_recv_bye.xml", &lb, CALLS, 20));
    let (a, b) = (a.wait(), b.wait());
    let stats = lb.stop();
    let traces = finish_all(backends);
    a.assert_all_ok(CALLS.into());
    b.assert_all_ok(CALLS.into());
    let a_calls = a.trace.call_ids();
    let b_calls = b.trace.call_ids();
    assert!(a_calls.is_disjoint(&b_calls));

    let owner = assert_affinity(&[&a.trace, &b.trace], &refs(&traces));
    assert_spread(&owner, &traces, 2 * CALLS as usize);
    for t in &traces {
        assert_signatures(t, owned_by(&owner, &t.name), UAS_BYE);
        // The 200 to its BYE arrives with the backend's own Via on top: the balancer's is gone.
        for m in t
            .msgs
            .iter()
            .filter(|m| m.dir == Dir::Received && m.label() == "200/BYE")
        {
            let top = m.header("Via").unwrap_or("");
            assert!(
                !top.contains(";lb=") && !top.contains(&lb.addr().to_string()),
                "{}: 200 to BYE still carries the balancer's Via:\n{}",
                t.name,
                m.raw
            );
        }
    }
    for uac in [&a, &b] {
        assert_signatures(&uac.trace, uac.trace.call_ids().iter(), UAC_RECV_BYE);
        // The BYE came through the balancer: its Via (with the tag) is on top.
        for m in uac
            .trace
            .msgs
            .iter()
            .filter(|m| m.dir == Dir::Received && m.label() == "BYE")
        {
            let top = m.header("Via").unwrap_or("");
            assert!(
                top.contains(&lb.addr().to_string()) && top.contains(";lb="),
                "{}: BYE without the balancer's tagged Via on top:\n{}",
                uac.name,
                m.raw
            );
        }
    }
    let calls = 2 * u64::from(CALLS);
    stats.expect(CLEAN);
    stats.expect(&[
        ("new_calls", calls),
        // Each backend BYE went out and its 200 came back.
        ("backend_requests_in", calls),
        ("frontend_responses_in", calls),
        ("frontends_accepted", 2),
    ]);
}

// ---------------------------------------------------------------------------------------------
// 5. many connections (one per call) as well as one

fn s5_basic_calls_connection_per_call(rt: Runtime) {
    basic_calls(rt, Transport::PerCall, "s5-per-call", &[]);
}

// ---------------------------------------------------------------------------------------------
// 6. a backend killed mid-run

fn s6_backend_killed(rt: Runtime) {
    const CALLS: u32 = 9;
    let dir = RunDir::new(&format!("s6-kill-{}", rt.name()));
    let mut backends = start_uas(&dir, "uas_basic.xml", 3);
    let mut args = plain_args(&backends);
    // backend-0 dies; backend-1 is its backup.
    args[0].backup = Some(backends[1].addr());
    let mut lb = Balancer::start(&dir, LbSpec::new(rt, args));

    // Phase 1: calls established on all backends, held 2.5 s before their BYE.
    let mut spec = uac_spec("uac-held", "uac_basic.xml", &lb, CALLS, 30);
    spec.pause_ms = 2500;
    let held = Uac::spawn(&dir, spec);
    net::wait_until(
        "all held calls to be established",
        Duration::from_secs(10),
        || held.trace().count(Dir::Sent, "ACK") == CALLS as usize,
    );
    let victim_port = backends[0].port();
    backends[0].kill();
    // Let the driver see the connection drop before new calls arrive.
    std::thread::sleep(Duration::from_millis(300));
    lb.assert_running();

    // Phase 2: new calls while backend-0 is down.
    let fresh = Uac::run(&dir, uac_spec("uac-new", "uac_basic.xml", &lb, CALLS, 30));
    let held = held.wait();
    assert!(!net::is_listening(victim_port));
    let stats = lb.stop();
    let traces = finish_all(backends);
    held.assert_all_ok(CALLS.into());
    fresh.assert_all_ok(CALLS.into());

    let (dead, backup, other) = (&traces[0], &traces[1], &traces[2]);
    // Calls that were on the dead backend: it got their INVITE and ACK, nothing more.
    let dead_calls = dead.call_ids();
    assert!(
        !dead_calls.is_empty(),
        "no held call was on backend-0; nothing was tested"
    );
    for id in &dead_calls {
        assert!(
            held.trace.call_ids().contains(id),
            "{id} on backend-0 is not a held call"
        );
        assert_eq!(
            dead.signature(id),
            expect_sig(&[
                "recv INVITE",
                "sent 180/INVITE",
                "sent 200/INVITE",
                "recv ACK"
            ]),
            "{}",
            dead.dump_call(id)
        );
        // Their tagged BYE went to the configured backup, and only there.
        assert_eq!(
            backup.signature(id),
            expect_sig(&["recv BYE", "sent 200/BYE"]),
            "BYE of {id} (backend-0's call) did not reach the backup:\n{}{}{}",
            dead.dump_call(id),
            backup.dump_call(id),
            other.dump_call(id)
        );
        assert!(other.signature(id).is_empty(), "{}", other.dump_call(id));
    }
    // Every other call, old or new, lived entirely on backend-1 or backend-2.
    let live: Vec<&Trace> = vec![backup, other];
    let all_calls: BTreeSet<String> = held
        .trace
        .call_ids()
        .union(&fresh.trace.call_ids())
        .cloned()
        .collect();
    for id in all_calls.difference(&dead_calls) {
        let on: Vec<&&Trace> = live
            .iter()
            .filter(|t| !t.signature(id).is_empty())
            .collect();
        assert_eq!(on.len(), 1, "call {id} on {} backends", on.len());
        assert_eq!(
            on[0].signature(id),
            expect_sig(UAS_BASIC),
            "{}",
            on[0].dump_call(id)
        );
    }
    for id in fresh.trace.call_ids() {
        assert!(!dead_calls.contains(&id));
    }
    stats.expect(&[
        ("new_calls", 2 * u64::from(CALLS)),
        ("to_backup", dead_calls.len() as u64),
        ("tag_failures", 0),
        ("replies_503", 0),
        ("dropped", 0),
    ]);
    assert!(
        stats.get("backend_failures").is_some_and(|n| n >= 1),
        "the killed backend is not counted as failed: {}",
        stats.line
    );
    eprintln!(
        "s6: {} held calls were on the killed backend; {}",
        dead_calls.len(),
        stats.line
    );
}

// ---------------------------------------------------------------------------------------------
// 7. garbage on one frontend connection while valid calls run on another

/// Reads until the peer closes, `until` is found in what was read, or `timeout` passes.
/// Returns what was read and whether the connection was closed.
fn read_for(stream: &mut TcpStream, until: Option<&[u8]>, timeout: Duration) -> (Vec<u8>, bool) {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if until.is_some_and(|u| got.windows(u.len()).any(|w| w == u)) {
                    return (got, false);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, false)
            }
            Err(_) => return (got, true),
        }
    }
}

/// Writes `bytes`; a write error means the balancer already closed the connection.
fn send_all(stream: &mut TcpStream, bytes: &[u8]) -> bool {
    stream.write_all(bytes).is_ok()
}

fn s7_garbage_on_another_connection(rt: Runtime) {
    const CALLS: u32 = 30;
    let dir = RunDir::new(&format!("s7-garbage-{}", rt.name()));
    let backends = start_uas(&dir, "uas_basic.xml", 3);
    let mut lb = Balancer::start(&dir, LbSpec::new(rt, plain_args(&backends)));
    let mut spec = uac_spec("uac", "uac_basic.xml", &lb, CALLS, 20);
    spec.pause_ms = 200;
    let uac = Uac::spawn(&dir, spec);
    let wait = Duration::from_secs(5);
    let mut report = Vec::new();
    // What the balancer's counters must show for the garbage below.
    let mut framing_errors = 0;
    let mut replies_400 = 0;

    // a) a bad Content-Length loses the framing: that connection is closed.
    let mut s = TcpStream::connect(lb.addr()).unwrap();
    let sent = send_all(
        &mut s,
        b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKbadcl\r\n\
          Call-ID: garbage-a\r\nCSeq: 1 INVITE\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\n\
          Max-Forwards: 70\r\nContent-Length: abc\r\n\r\nhello",
    );
    let (got, closed) = read_for(&mut s, None, wait);
    report.push(format!(
        "bad Content-Length: sent={sent} closed={closed} reply={:?}",
        String::from_utf8_lossy(&got)
    ));
    assert!(
        closed,
        "bad Content-Length: connection not closed; got {:?}",
        String::from_utf8_lossy(&got)
    );
    framing_errors += 1;

    // b) a framed request with a header line without a colon: 400, and the connection stays
    //    open (a CRLFCRLF ping then gets its CRLF pong).
    let mut s = TcpStream::connect(lb.addr()).unwrap();
    send_all(
        &mut s,
        b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKnocolon\r\n\
          This line has no colon\r\nCall-ID: garbage-b\r\nCSeq: 1 OPTIONS\r\n\
          From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
    );
    let (got, closed) = read_for(&mut s, Some(b"\r\n\r\n"), wait);
    let text = String::from_utf8_lossy(&got).into_owned();
    report.push(format!("no colon: closed={closed} reply={text:?}"));
    assert!(
        text.starts_with("SIP/2.0 400"),
        "header line without a colon: want a 400, got {text:?} (closed: {closed})"
    );
    assert!(
        text.contains("garbage-b"),
        "the 400 names the request's Call-ID: {text:?}"
    );
    assert!(!closed, "connection closed after a 400 to a framed message");
    replies_400 += 1;
    send_all(&mut s, b"\r\n\r\n");
    let (pong, closed) = read_for(&mut s, Some(b"\r\n"), wait);
    assert_eq!(
        pong, b"\r\n",
        "CRLFCRLF ping after the 400: no pong (closed: {closed})"
    );

    // c) 200 KB without the end of a header block: closed.
    let mut s = TcpStream::connect(lb.addr()).unwrap();
    let mut big = b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nX-Filler: ".to_vec();
    big.resize(200 * 1024, b'a');
    let sent = send_all(&mut s, &big);
    let (got, closed) = read_for(&mut s, None, wait);
    report.push(format!(
        "200 KB header: sent_all={sent} closed={closed} reply={:?}",
        String::from_utf8_lossy(&got)
    ));
    assert!(closed, "200 KB without a header end: connection not closed");
    framing_errors += 1;

    // d) binary: 4 KB of bytes that are no SIP (no CR or LF), then CRLFCRLF. Not a framed SIP
    //    message (no Content-Length on a stream): closed, or at most answered 400.
    let mut s = TcpStream::connect(lb.addr()).unwrap();
    let mut x: u32 = 0x1234_5678;
    let mut bin: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // Truncation to a byte is the point here.
            match (x & 0xff) as u8 {
                b'\r' | b'\n' => 0,
                b => b,
            }
        })
        .collect();
    bin.extend_from_slice(b"\r\n\r\n");
    let sent = send_all(&mut s, &bin);
    let (got, closed) = read_for(&mut s, None, wait);
    let text = String::from_utf8_lossy(&got).into_owned();
    report.push(format!(
        "binary: sent={sent} closed={closed} reply={text:?}"
    ));
    assert!(
        closed || text.starts_with("SIP/2.0 400"),
        "binary garbage: neither closed nor answered 400: {text:?}"
    );
    if text.starts_with("SIP/2.0 400") {
        replies_400 += 1;
    } else {
        framing_errors += 1;
    }
    drop(s);

    let uac = uac.wait();
    lb.assert_running();
    // The process still serves new connections after all that.
    let after = Uac::run(&dir, uac_spec("uac-after", "uac_basic.xml", &lb, 6, 30));
    let stats = lb.stop();
    let traces = finish_all(backends);
    uac.assert_all_ok(CALLS.into());
    after.assert_all_ok(6);
    let owner = assert_affinity(&[&uac.trace, &after.trace], &refs(&traces));
    assert_spread(&owner, &traces, CALLS as usize + 6);
    for t in &traces {
        assert_signatures(t, owned_by(&owner, &t.name), UAS_BASIC);
    }
    stats.expect(&[
        ("new_calls", u64::from(CALLS) + 6),
        ("framing_errors", framing_errors),
        ("replies_400", replies_400),
        ("keepalives", 1),
        ("frontends_accepted", 6),
        ("tag_failures", 0),
        ("replies_503", 0),
        ("backend_failures", 0),
    ]);
    eprintln!("s7: {}\n{}", report.join("\n"), stats.line);
}

// ---------------------------------------------------------------------------------------------
// 8. envelope mode with the example backend: the same call flows

/// Groups the responses the client received by Call-ID and asserts each call's responses all
/// carry one and the same `X-Backend`; returns Call-ID → backend name.
fn envelope_owner(uac: &UacOutcome) -> BTreeMap<String, String> {
    let mut owner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in uac.trace.msgs.iter().filter(|m| m.dir == Dir::Received) {
        let name = m
            .header("X-Backend")
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{}: message without X-Backend:\n{}", uac.name, m.raw));
        owner
            .entry(m.call_id().to_string())
            .or_default()
            .insert(name);
    }
    owner
        .into_iter()
        .map(|(id, names)| {
            assert_eq!(
                names.len(),
                1,
                "call {id} answered by several backends {names:?}:\n{}",
                uac.trace.dump_call(&id)
            );
            let name = names.into_iter().next().unwrap();
            (id, name)
        })
        .collect()
}

/// One envelope-mode case: three example backends, one SIPp client run.
struct EnvCase<'a> {
    test: &'a str,
    scenario: &'a str,
    /// The backends' `--answer-delay-ms`.
    answer_delay_ms: u64,
    /// The balancer's `--window`.
    window: Option<f64>,
    /// The client's `-d`.
    pause_ms: u64,
    calls: u32,
    /// What the client must see of every call.
    uac_flow: &'a [&'a str],
    /// Balancer counters beyond the clean-run ones.
    lb_expect: &'a [(&'a str, u64)],
}

fn envelope_calls(rt: Runtime, case: &EnvCase<'_>) -> Vec<BTreeMap<String, u64>> {
    let EnvCase {
        test,
        scenario,
        answer_delay_ms,
        window,
        pause_ms,
        calls,
        uac_flow,
        lb_expect,
    } = *case;
    let dir = RunDir::new(&format!("{test}-{}", rt.name()));
    let backends: Vec<EnvBackend> = (0..3)
        .map(|i| EnvBackend::start(&dir, &format!("env-{i}"), answer_delay_ms))
        .collect();
    let mut spec = LbSpec::new(
        rt,
        backends
            .iter()
            .map(|b| BackendArg::envelope(b.addr()))
            .collect(),
    );
    spec.window_secs = window;
    let mut lb = Balancer::start(&dir, spec);
    let mut uspec = uac_spec("uac", scenario, &lb, calls, 30);
    uspec.pause_ms = pause_ms;
    let uac = Uac::run(&dir, uspec);
    let stats = lb.stop();
    let names: Vec<String> = backends.iter().map(|b| b.name().to_string()).collect();
    let counters: Vec<BTreeMap<String, u64>> =
        backends.into_iter().map(EnvBackend::finish).collect();
    uac.assert_all_ok(calls.into());

    let owner = envelope_owner(&uac);
    assert_eq!(owner.len(), calls as usize);
    assert_signatures(&uac.trace, owner.keys(), uac_flow);
    let counts = per_backend(&owner);
    for (name, c) in names.iter().zip(&counters) {
        let n = counts.get(name).copied().unwrap_or(0) as u64;
        assert!(n >= 1, "{name} got no call: {counts:?}");
        // The backend's own count of new calls agrees with the X-Backend attribution, and it
        // never saw an in-dialog request for a call it does not have.
        assert_eq!(c.get("calls").copied(), Some(n), "{name}: counters {c:?}");
        assert_eq!(
            c.get("no_dialog").copied(),
            Some(0),
            "{name}: counters {c:?}"
        );
    }
    stats.expect(CLEAN);
    stats.expect(&[("new_calls", calls.into())]);
    stats.expect(lb_expect);
    eprintln!("{test}: calls per backend {counts:?}; {}", stats.line);
    counters
}

fn s8_envelope_basic(rt: Runtime) {
    let counters = envelope_calls(
        rt,
        &EnvCase {
            test: "s8-env-basic",
            scenario: "uac_basic.xml",
            answer_delay_ms: 0,
            window: None,
            pause_ms: 50,
            calls: 30,
            uac_flow: &[
                "sent INVITE",
                "recv 100/INVITE",
                "recv 180/INVITE",
                "recv 200/INVITE",
                "sent ACK",
                "sent BYE",
                "recv 200/BYE",
            ],
            lb_expect: &[("tagged", 60), ("table_hits", 0)],
        },
    );
    let completed: u64 = counters.iter().filter_map(|c| c.get("completed")).sum();
    assert_eq!(completed, 30, "{counters:?}");
}

fn s8_envelope_long_calls(rt: Runtime) {
    let counters = envelope_calls(
        rt,
        &EnvCase {
            test: "s8-env-long",
            scenario: "uac_long.xml",
            answer_delay_ms: 0,
            window: Some(2.0),
            pause_ms: 5000,
            calls: 10,
            uac_flow: &[
                "sent INVITE",
                "recv 100/INVITE",
                "recv 180/INVITE",
                "recv 200/INVITE",
                "sent ACK",
                "sent INVITE",
                "recv 200/INVITE",
                "sent ACK",
                "sent BYE",
                "recv 200/BYE",
            ],
            lb_expect: &[("tagged", 40), ("table_hits", 0), ("table_len", 0)],
        },
    );
    let completed: u64 = counters.iter().filter_map(|c| c.get("completed")).sum();
    assert_eq!(completed, 10, "{counters:?}");
}

fn s8_envelope_retransmission_and_cancel(rt: Runtime) {
    // The backends answer only after 10 s, so every call is still ringing when it is cancelled.
    let counters = envelope_calls(
        rt,
        &EnvCase {
            test: "s8-env-cancel",
            scenario: "uac_cancel.xml",
            answer_delay_ms: 10_000,
            window: None,
            pause_ms: 0,
            calls: 9,
            uac_flow: UAC_CANCEL,
            lb_expect: &[("tagged", 0), ("table_hits", 27)],
        },
    );
    let sum = |k: &str| counters.iter().filter_map(|c| c.get(k)).sum::<u64>();
    assert_eq!(sum("cancelled"), 9, "{counters:?}");
    assert_eq!(sum("retransmissions"), 9, "{counters:?}");
    assert_eq!(sum("ack"), 9, "{counters:?}");
}

// ---------------------------------------------------------------------------------------------

siplb_e2e::for_both_runtimes!(
    s1_basic_calls_one_connection,
    s1_basic_calls_unpaced,
    s1_basic_calls_widest_batch_window,
    s2_long_calls_backend_contact,
    s2_long_calls_balancer_contact,
    s3_retransmitted_invite_and_cancel,
    s3_ack_of_486,
    s4_backend_hangs_up,
    s5_basic_calls_connection_per_call,
    s6_backend_killed,
    s7_garbage_on_another_connection,
    s8_envelope_basic,
    s8_envelope_long_calls,
    s8_envelope_retransmission_and_cancel,
);

/// SIPp must be there: the suite fails (never skips) without it.
#[test]
fn sipp_is_installed() {
    let sipp = siplb_e2e::sipp::sipp();
    assert!(sipp.is_file(), "{}", siplb_e2e::sipp::SIPP_MISSING);
}
