//! Scenarios 1–5 over plain-mode SIPp backends: calls spread over the backends, calls that
//! outlive the new-call window, retransmissions and CANCEL, a backend hanging up, one connection
//! per call.

use std::collections::{BTreeMap, BTreeSet};

use siplb_e2e::flows::{UAC_486, UAC_CANCEL, UAC_RECV_BYE, UAS_486, UAS_BYE};
use siplb_e2e::lb::{Balancer, LbSpec, Runtime, CLEAN};
use siplb_e2e::net::{self, free_port};
use siplb_e2e::sipp::{Transport, Uac, Uas};
use siplb_e2e::trace::{
    assert_affinity, assert_signatures, assert_spread, owned_by, per_backend, Dir,
};
use siplb_e2e::RunDir;

use super::{assert_plain_routing, basic_calls, finish_all, plain_args, refs, start_uas, uac_spec};

// ---------------------------------------------------------------------------------------------
// 1. basic calls spread over all backends, every message of a call on one backend

pub(super) fn s1_basic_calls_one_connection(rt: Runtime) {
    basic_calls(rt, Transport::One, "s1-basic", &[]);
}

/// The same without wake-up pacing: every message forwarded the moment it arrives.
pub(super) fn s1_basic_calls_unpaced(rt: Runtime) {
    basic_calls(rt, Transport::One, "s1-unpaced", &["--batch-window", "0"]);
}

/// The same with the widest pacing window allowed (50 ms per wake-up): slower, still correct.
pub(super) fn s1_basic_calls_widest_batch_window(rt: Runtime) {
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

pub(super) fn s2_long_calls_backend_contact(rt: Runtime) {
    long_calls(rt, false, "s2-long-own-contact");
}

pub(super) fn s2_long_calls_balancer_contact(rt: Runtime) {
    long_calls(rt, true, "s2-long-lb-contact");
}

// ---------------------------------------------------------------------------------------------
// 3. retransmitted INVITE and CANCEL reach the INVITE's backend; so does the ACK of a 486

pub(super) fn s3_retransmitted_invite_and_cancel(rt: Runtime) {
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

pub(super) fn s3_ack_of_486(rt: Runtime) {
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

pub(super) fn s4_backend_hangs_up(rt: Runtime) {
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

pub(super) fn s5_basic_calls_connection_per_call(rt: Runtime) {
    basic_calls(rt, Transport::PerCall, "s5-per-call", &[]);
}
