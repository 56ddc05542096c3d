//! End-to-end tests of `lb-tokio` and `lb-mio` with real peers on 127.0.0.1 (issue 3, "End-to-end
//! tests with real peers", items 1–8). Every scenario runs against both binaries: the macro at
//! the bottom generates `tokio::NAME` and `mio::NAME` tests.
//!
//! Peers: SIPp as the proxy-side client (UAC) over one shared TCP connection (`-t t1`, or one per
//! call with `-t tn`), SIPp as three plain-mode backends (UAS), the example envelope backend, and
//! raw Rust sockets for garbage. Which backend saw a call comes from the backend's own SIPp
//! message trace (one file per backend), or for envelope backends from the `X-Backend` header
//! they stamp on every response.
//!
//! The shared setup and checks are here; the scenarios are in [`plain_calls`] (1–5),
//! [`failures`] (6, 7) and [`envelope_calls`] (8).

#![allow(clippy::unwrap_used)]

mod envelope_calls;
mod failures;
mod plain_calls;

use std::net::SocketAddr;

use siplb_e2e::flows::UAS_BASIC;
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, Runtime, CLEAN};
use siplb_e2e::sipp::{Transport, Uac, UacSpec, Uas};
use siplb_e2e::trace::{
    assert_affinity, assert_signatures, assert_spread, expect_sig, owned_by, per_backend, Dir,
    Trace,
};
use siplb_e2e::RunDir;

use envelope_calls::{
    s8_envelope_basic, s8_envelope_long_calls, s8_envelope_retransmission_and_cancel,
};
use failures::{s6_backend_killed, s7_garbage_on_another_connection};
use plain_calls::{
    s1_basic_calls_one_connection, s1_basic_calls_unpaced, s1_basic_calls_widest_batch_window,
    s2_long_calls_backend_contact, s2_long_calls_balancer_contact, s3_ack_of_486,
    s3_retransmitted_invite_and_cancel, s4_backend_hangs_up, s5_basic_calls_connection_per_call,
};

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
