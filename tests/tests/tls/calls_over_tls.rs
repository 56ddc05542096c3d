//! Calls through stunnel over TLS (1–3): the callee hangs up, a retransmitted INVITE and its
//! CANCEL, long calls routed by the tag of the TLS Record-Route.

use std::time::Duration;

use siplb_e2e::flows::{UAC_CANCEL, UAC_RECV_BYE, UAS_BYE};
use siplb_e2e::lb::{Runtime, CLEAN};
use siplb_e2e::net::poll_until;
use siplb_e2e::sipp::Uac;
use siplb_e2e::trace::{assert_affinity, assert_signatures, owned_by, per_backend, Dir};

use super::{
    assert_long_calls, assert_tls_wire, finish_all, setup, setup_with, uac_spec, Setup, LB_A,
};

// ---------------------------------------------------------------------------------------------
// 1. Calls over TLS: the callee hangs up, and its BYE reaches the caller over the caller's TLS
//    connection.

pub(super) fn callee_hangs_up_over_tls(rt: Runtime) {
    const CALLS: u32 = 10;
    let Setup {
        dir,
        backends,
        mut lb,
        stunnel,
        ..
    } = setup(rt, "tls-bye", "uas_bye.xml", None);
    let uac = Uac::run(&dir, uac_spec("uac_recv_bye.xml", &stunnel, CALLS, 20));
    poll_until(Duration::from_secs(5), || {
        backends.iter().all(|b| {
            let t = b.trace();
            t.count(Dir::Sent, "BYE") == t.count(Dir::Received, "200/BYE")
        })
    });
    lb.wait_no_tls_connections();
    // One handshake: stunnel's one connection carried every call, both ways.
    lb.expect_tls_counters(&[("tls_handshakes", 1), ("tls_version_tls13", 1)]);
    let stats = lb.lb.stop();
    let stunnel_log = stunnel.stop();
    let traces = finish_all(backends);

    let got_bye = uac.trace.call_ids_with(Dir::Received, "BYE").len();
    assert_eq!(
        got_bye, CALLS as usize,
        "{got_bye} of {CALLS} callers received their callee's BYE over TLS\n{}",
        stats.line
    );
    uac.assert_all_ok(CALLS.into());
    let owner = assert_affinity(&[&uac.trace], &traces.iter().collect::<Vec<_>>());
    assert_eq!(per_backend(&owner).len(), 2, "{:?}", per_backend(&owner));
    assert_signatures(&uac.trace, owner.keys(), UAC_RECV_BYE);
    for t in &traces {
        assert_signatures(t, owned_by(&owner, &t.name), UAS_BYE);
    }
    assert_tls_wire(&uac.trace, &traces, &lb);
    // The premise: stunnel verified the balancer's chain and name, once.
    assert!(
        stunnel_log.contains("Certificate accepted at depth=0")
            && stunnel_log.contains(&format!("CN={LB_A}"))
            && stunnel_log.matches("s_connect: connected").count() == 1,
        "{stunnel_log}"
    );
    stats.expect(CLEAN);
    stats.expect(&[("new_calls", CALLS.into()), ("dial_outs", 0)]);
}

// ---------------------------------------------------------------------------------------------
// 2. A retransmitted INVITE and its CANCEL over TLS reach the INVITE's backend (through the
//    new-call table: they carry no tag), and the 487 and its ACK get through.

pub(super) fn cancel_over_tls(rt: Runtime) {
    const CALLS: u32 = 8;
    let Setup {
        dir,
        backends,
        mut lb,
        stunnel,
        ..
    } = setup(rt, "tls-cancel", "uas_cancel.xml", None);
    let uac = Uac::run(&dir, uac_spec("uac_cancel.xml", &stunnel, CALLS, 20));
    lb.wait_no_tls_connections();
    lb.expect_tls_counters(&[("tls_handshakes", 1), ("tls_version_tls13", 1)]);
    let stats = lb.lb.stop();
    stunnel.stop();
    let traces = finish_all(backends);

    uac.assert_all_ok(CALLS.into());
    let owner = assert_affinity(&[&uac.trace], &traces.iter().collect::<Vec<_>>());
    assert_eq!(per_backend(&owner).len(), 2, "{:?}", per_backend(&owner));
    assert_signatures(&uac.trace, owner.keys(), UAC_CANCEL);
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
    // The 180s carry the backend's copy of the Record-Route: the caller sees the TLS one.
    assert_tls_wire(&uac.trace, &traces, &lb);
    stats.expect(CLEAN);
    stats.expect(&[
        ("new_calls", CALLS.into()),
        // Per call: the retransmitted INVITE, the CANCEL and the ACK of the 487.
        ("table_hits", 3 * u64::from(CALLS)),
        ("tagged", 0),
    ]);
}

// ---------------------------------------------------------------------------------------------
// 3. Long calls over TLS: held past the window, their re-INVITE, ACKs and BYE are routed by
//    the tag of the TLS Record-Route, which names the balancer by its --advertise-tls name:
//    the balancer knows that Route entry for its own and takes it off.

pub(super) fn long_calls_over_tls(rt: Runtime) {
    const CALLS: u32 = 6;
    let Setup {
        dir,
        backends,
        mut lb,
        stunnel,
        ..
    } = setup_with(
        rt,
        "tls-long",
        "uas_long.xml",
        None,
        &["--advertise-tls", "lb-a.test:5061"],
    );
    assert_eq!(lb.advertised, "lb-a.test:5061");
    let mut spec = uac_spec("uac_long.xml", &stunnel, CALLS, 20);
    spec.pause_ms = 3000;
    let uac = Uac::run(&dir, spec);
    lb.wait_no_tls_connections();
    lb.expect_tls_counters(&[("tls_handshakes", 1), ("tls_version_tls13", 1)]);
    let stats = lb.lb.stop();
    stunnel.stop();
    let traces = finish_all(backends);

    assert_long_calls(&uac, &traces, &lb, CALLS);
    stats.expect(CLEAN);
    stats.expect(&[
        ("new_calls", CALLS.into()),
        // ACK, re-INVITE, its ACK and BYE: all by tag; the table had expired.
        ("tagged", 4 * u64::from(CALLS)),
        ("table_hits", 0),
        ("table_len", 0),
    ]);
}
