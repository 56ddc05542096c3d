//! End-to-end tests of the TLS listeners (`--listen-tls`), against both binaries
//! (`tokio::NAME`, `mio::NAME`).
//!
//! SIPp has no TLS, so the callers are SIPp over plain TCP to `stunnel4` in client mode on
//! 127.0.0.1, which opens one TLS connection to the balancer, verifying its chain against a
//! test CA and its name (`checkHost`, `sni`). The backends are SIPp over TCP on 127.0.0.2 and
//! 127.0.0.3. `openssl s_client` probes what SIPp cannot do: old versions, SNI, client
//! certificates, which certificate is served after a reload. Every certificate is made at run
//! time with `openssl` in the test's run directory.
//!
//! Against the binaries of commit aad21df, two tests fail for `lb-mio` only:
//! - `hang_ups_mid_handshake_free_their_place`: a client that closes its connection during the
//!   handshake is neither counted nor freed from the handshakes in progress (`read_tls` takes
//!   the EOF to `finish(PeerClosed)` without decrementing `handshaking`), so after 512 of them
//!   every new TLS client is refused (`tls_refused_busy`) until a restart;
//! - `stalled_handshakes_time_out_and_are_capped`: the handshake deadlines are not part of the
//!   poll timeout, so a stalled handshake is closed only when something else wakes the loop.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use siplb_e2e::flows::{UAC_CANCEL, UAC_RECV_BYE, UAS_BYE};
use siplb_e2e::lb::{BackendArg, LbSpec, Runtime, CLEAN};
use siplb_e2e::net::{free_port, poll_until};
use siplb_e2e::ops::SipBackend;
use siplb_e2e::sipp::{Uac, UacSpec, Uas};
use siplb_e2e::tls::{
    file_identity, is_closed_within, plain_sip_attempt, s_client, stalled_connection, CertFiles,
    Handshake, Pki, Stunnel, StunnelSpec, TlsLb, Usage,
};
use siplb_e2e::trace::{assert_affinity, assert_signatures, owned_by, per_backend, Dir, Trace};
use siplb_e2e::RunDir;

// ---------------------------------------------------------------------------------------------
// Shared setup and checks

/// The new-call table's window: short, so that long calls outlive it.
const WINDOW_SECS: f64 = 2.0;

/// The balancer's two names; both certificates are valid for 127.0.0.1 too.
const LB_A: &str = "lb-a.test";
const LB_B: &str = "lb-b.test";

/// `127.0.0.N`.
fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// SIPp backends `backend-2` on 127.0.0.2 and `backend-3` on 127.0.0.3 running `scenario`
/// (`-key contact` is each one's own address, for `uas_long.xml`).
fn start_backends(dir: &RunDir, scenario: &str) -> Vec<Uas> {
    [2, 3]
        .into_iter()
        .map(|n| {
            let addr = SocketAddr::new(loopback(n), free_port());
            Uas::start_at(
                dir,
                &format!("backend-{n}"),
                scenario,
                addr,
                &[("contact", addr.to_string())],
            )
        })
        .collect()
}

/// A test CA with the server certificate for [`LB_A`] (serial 1), a balancer serving it on a
/// TLS listener in front of two SIPp backends running `scenario`, and stunnel to it.
struct Setup {
    dir: RunDir,
    pki: Pki,
    cert: CertFiles,
    backends: Vec<Uas>,
    lb: TlsLb,
    stunnel: Stunnel,
}

fn setup(rt: Runtime, test: &str, scenario: &str, max_version: Option<&str>) -> Setup {
    setup_with(rt, test, scenario, max_version, &[])
}

/// [`setup`] with more balancer flags.
fn setup_with(
    rt: Runtime,
    test: &str,
    scenario: &str,
    max_version: Option<&str>,
    flags: &[&str],
) -> Setup {
    let dir = RunDir::new(&format!("{test}-{}", rt.name()));
    let pki = Pki::new(&dir, "pki");
    let cert = pki.server("lb-a", LB_A, 1);
    let backends = start_backends(&dir, scenario);
    let mut spec = LbSpec::new(
        rt,
        backends
            .iter()
            .map(|b| BackendArg::plain(b.addr()))
            .collect(),
    );
    spec.window_secs = Some(WINDOW_SECS);
    let lb = TlsLb::start(&dir, spec, &[&cert], flags);
    let stunnel = Stunnel::start(
        &dir,
        "uac",
        &StunnelSpec {
            connect: lb.tls,
            name: LB_A.to_string(),
            ca: pki.ca().to_path_buf(),
            client_cert: None,
            max_version: max_version.map(str::to_string),
            source: None,
        },
    );
    Setup {
        dir,
        pki,
        cert,
        backends,
        lb,
        stunnel,
    }
}

/// A SIPp caller on one connection to stunnel.
fn uac_spec(scenario: &str, stunnel: &Stunnel, calls: u32, rate: u32) -> UacSpec {
    let mut spec = UacSpec::new("uac", scenario, stunnel.addr());
    spec.calls = calls;
    spec.rate = rate;
    spec.timeout = Duration::from_secs(20);
    spec
}

/// Waits (bounded) until the caller has had its 200 to each of `calls` initial INVITEs, so
/// that the calls are established; the test's own assertions explain a shortfall.
fn wait_established(uac: &Uac, calls: u32) {
    poll_until(Duration::from_secs(10), || {
        uac.trace().count(Dir::Received, "200/INVITE") >= calls as usize
    });
}

/// What the TLS side of the wire must look like, and that the backend side never sees it.
///
/// Caller: every Record-Route it receives (in the 18x and 2xx of its INVITEs) has on top the
/// balancer's entry at the TLS listener with `transport=tls` and a tag; every request it
/// receives (the callee's BYE) has the balancer's `SIP/2.0/TLS` Via on top.
/// Backends: the initial INVITE's Record-Route names the balancer's TCP address, and nothing
/// they receive names the TLS listener or TLS.
fn assert_tls_wire(uac: &Trace, backends: &[Trace], lb: &TlsLb) {
    let rr_prefix = format!("<sip:{};transport=tls;lr;lb=", lb.advertised);
    let via_prefix = format!("SIP/2.0/TLS {};", lb.advertised);
    let mut record_routes = 0;
    for m in uac.msgs.iter().filter(|m| m.dir == Dir::Received) {
        if let Some(rr) = m.header_values("Record-Route").first() {
            record_routes += 1;
            assert!(
                rr.starts_with(&rr_prefix),
                "{}: the caller's {} has Record-Route {rr}, want {rr_prefix}…:\n{}",
                uac.name,
                m.label(),
                m.raw
            );
        }
        if m.method().is_some() {
            let via = m.header("Via").unwrap_or("");
            assert!(
                via.starts_with(&via_prefix) && via.contains(";lb="),
                "{}: {} reached the caller without the balancer's TLS Via on top:\n{}",
                uac.name,
                m.label(),
                m.raw
            );
        }
    }
    assert!(
        record_routes > 0,
        "{}: the caller saw no Record-Route at all",
        uac.name
    );
    let tcp_rr = format!("<sip:{};transport=tcp;lr;lb=b", lb.lb.addr());
    let tls_addr = lb.advertised.clone();
    for t in backends {
        for m in t.msgs.iter().filter(|m| m.dir == Dir::Received) {
            if m.label() == "INVITE" && m.header("To").is_some_and(|to| !to.contains("tag=")) {
                let rr = m.header_values("Record-Route");
                assert!(
                    rr.first().is_some_and(|v| v.starts_with(&tcp_rr)),
                    "{}: initial INVITE without the balancer's TCP Record-Route {tcp_rr}… on \
                     top:\n{}",
                    t.name,
                    m.raw
                );
            }
            let leak = m.raw.contains(&tls_addr)
                || m.raw.to_ascii_lowercase().contains("transport=tls")
                || m.raw.contains("SIP/2.0/TLS");
            assert!(
                !leak,
                "{}: a message on the TCP backend leg names the TLS side:\n{}",
                t.name, m.raw
            );
        }
    }
}

fn finish_all(backends: Vec<Uas>) -> Vec<Trace> {
    backends.into_iter().map(Uas::finish).collect()
}

/// `s_client` options that verify the balancer's chain against the test CA and its name.
fn verifying(pki: &Pki, name: &str) -> Vec<String> {
    [
        "-servername",
        name,
        "-verify_hostname",
        name,
        "-verify_return_error",
        "-CAfile",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([pki.ca().display().to_string()])
    .collect()
}

fn probe(lb: &TlsLb, args: &[String], more: &[&str]) -> Handshake {
    let all: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .chain(more.iter().copied())
        .collect();
    s_client(lb.tls, &all)
}

/// The call flow of `uac_long.xml` at the caller and of `uas_long.xml` at its backend.
const UAC_LONG: &[&str] = &[
    "sent INVITE",
    "recv 180/INVITE",
    "recv 200/INVITE",
    "sent ACK",
    "sent INVITE",
    "recv 200/INVITE",
    "sent ACK",
    "sent BYE",
    "recv 200/BYE",
];
const UAS_LONG: &[&str] = &[
    "recv INVITE",
    "sent 180/INVITE",
    "sent 200/INVITE",
    "recv ACK",
    "recv INVITE",
    "sent 200/INVITE",
    "recv ACK",
    "recv BYE",
    "sent 200/BYE",
];

/// Checks of a run of long calls through stunnel: all succeed, each with one backend, both
/// backends used, the whole flow on both sides, the TLS wire, and every in-dialog request
/// routed by its tag.
fn assert_long_calls(uac: &siplb_e2e::sipp::UacOutcome, traces: &[Trace], lb: &TlsLb, calls: u32) {
    uac.assert_all_ok(calls.into());
    let owner = assert_affinity(&[&uac.trace], &traces.iter().collect::<Vec<_>>());
    assert_eq!(per_backend(&owner).len(), 2, "{:?}", per_backend(&owner));
    assert_signatures(&uac.trace, owner.keys(), UAC_LONG);
    for t in traces {
        assert_signatures(t, owned_by(&owner, &t.name), UAS_LONG);
    }
    assert_tls_wire(&uac.trace, traces, lb);
}

// ---------------------------------------------------------------------------------------------
// 1. Calls over TLS: the callee hangs up, and its BYE reaches the caller over the caller's TLS
//    connection.

fn callee_hangs_up_over_tls(rt: Runtime) {
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

fn cancel_over_tls(rt: Runtime) {
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

fn long_calls_over_tls(rt: Runtime) {
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

// ---------------------------------------------------------------------------------------------
// 4. TLS 1.1 and a plain-TCP SIP client are refused and counted, each under its reason;
//    TLS 1.2 and 1.3 are accepted;
//    calls established over another TLS connection (stunnel, TLS 1.2) are unaffected.

fn old_versions_and_plain_tcp_are_refused(rt: Runtime) {
    const CALLS: u32 = 4;
    let Setup {
        dir,
        pki,
        backends,
        mut lb,
        stunnel,
        ..
    } = setup(rt, "tls-refused", "uas_long.xml", Some("TLSv1.2"));
    let mut spec = uac_spec("uac_long.xml", &stunnel, CALLS, 20);
    spec.pause_ms = 4000;
    let uac = Uac::spawn(&dir, spec);
    wait_established(&uac, CALLS);
    let verify = verifying(&pki, LB_A);

    // TLS 1.1 (the security level lowered so that this openssl offers it at all).
    let tls11 = probe(&lb, &verify, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    tls11.assert_refused();
    assert_eq!(tls11.version, None, "{}", tls11.output);
    lb.expect_tls_counters(&[
        ("tls_handshakes", 1),
        ("tls_version_tls12", 1),
        ("tls_handshakes_failed_version", 1),
    ]);

    // SIP in clear on the TLS port: at most a TLS alert back, then the connection closes.
    let plain = plain_sip_attempt(lb.tls);
    assert!(
        plain.closed
            && !String::from_utf8_lossy(&plain.reply).contains("SIP/2.0")
            && plain.reply.first().is_none_or(|b| *b == 0x15),
        "a plain SIP request on the TLS listener got {:?} (closed: {})",
        String::from_utf8_lossy(&plain.reply),
        plain.closed
    );
    lb.expect_tls_counters(&[
        ("tls_handshakes", 1),
        ("tls_version_tls12", 1),
        ("tls_handshakes_failed_version", 1),
        ("tls_handshakes_failed_not_tls", 1),
    ]);

    // The listener still takes both versions it supports.
    let tls12 = probe(&lb, &verify, &["-tls1_2"]);
    tls12.assert_ok();
    assert_eq!(
        tls12.version.as_deref(),
        Some("TLSv1.2"),
        "{}",
        tls12.output
    );
    let tls13 = probe(&lb, &verify, &["-tls1_3"]);
    tls13.assert_ok();
    assert_eq!(
        tls13.version.as_deref(),
        Some("TLSv1.3"),
        "{}",
        tls13.output
    );
    for h in [&tls12, &tls13] {
        assert_eq!(h.verify.as_deref(), Some("0 (ok)"), "{}", h.output);
        assert!(
            h.answer
                .as_deref()
                .is_some_and(|a| a.starts_with("SIP/2.0 483")),
            "{h:?}"
        );
    }

    let uac = uac.wait();
    lb.wait_no_tls_connections();
    lb.expect_tls_counters(&[
        ("tls_handshakes", 3),
        ("tls_version_tls12", 2),
        ("tls_version_tls13", 1),
        ("tls_handshakes_failed_version", 1),
        ("tls_handshakes_failed_not_tls", 1),
    ]);
    let stats = lb.lb.stop();
    let stunnel_log = stunnel.stop();
    let traces = finish_all(backends);
    assert_long_calls(&uac, &traces, &lb, CALLS);
    // The calls stayed on their one TLS connection throughout.
    assert_eq!(
        stunnel_log.matches("s_connect: connected").count(),
        1,
        "{stunnel_log}"
    );
    // Refused handshakes never reach SIP: nothing malformed, nothing dropped, no frontend left.
    stats.expect(CLEAN);
    stats.expect(&[("new_calls", CALLS.into()), ("replies_483", 2)]);
}

// ---------------------------------------------------------------------------------------------
// 5. Certificates reread on SIGHUP while calls run: none is dropped, new handshakes get the new
//    certificate; a broken file (or a key that does not fit) is refused and the running
//    certificate stays.

fn certificate_reload_drops_no_call(rt: Runtime) {
    const CALLS: u32 = 6;
    let Setup {
        dir,
        pki,
        cert,
        backends,
        mut lb,
        stunnel,
    } = setup(rt, "tls-reload", "uas_long.xml", None);
    let mut spec = uac_spec("uac_long.xml", &stunnel, CALLS, 20);
    spec.pause_ms = 4000;
    let uac = Uac::spawn(&dir, spec);
    wait_established(&uac, CALLS);
    let verify = verifying(&pki, LB_A);
    let first = file_identity(&cert);
    let before = probe(&lb, &verify, &[]);
    before.assert_ok();
    assert_eq!(
        (before.subject.clone(), before.serial.clone()),
        (Some(first.0.clone()), Some(first.1.clone())),
        "{}",
        before.output
    );

    // A new certificate for the same name: another key, serial and subject.
    let next = pki.issue("lb-a-2", LB_A, "siplb e2e reloaded", 2, Usage::Server);
    let second = file_identity(&next);
    assert_ne!(first, second);
    cert.replace_with(&next);
    assert!(
        lb.hup(),
        "SIGHUP refused a good certificate\n{}",
        lb.lb.log()
    );
    let after = probe(&lb, &verify, &[]);
    after.assert_ok();
    assert_eq!(
        (after.subject.clone(), after.serial.clone()),
        (Some(second.0.clone()), Some(second.1.clone())),
        "after SIGHUP a new handshake still got the old certificate\n{}",
        after.output
    );
    assert_eq!(after.verify.as_deref(), Some("0 (ok)"), "{}", after.output);

    // A truncated certificate file: refused, the running certificate stays.
    let pem = std::fs::read_to_string(&next.cert).unwrap();
    cert.overwrite_cert(&pem[..pem.len() / 2]);
    assert!(!lb.hup(), "SIGHUP took a truncated certificate file");
    let broken = probe(&lb, &verify, &[]);
    broken.assert_ok();
    assert_eq!(broken.serial, Some(second.1.clone()), "{}", broken.output);

    // A good certificate with a key that does not fit it: refused too.
    let third = pki.issue("lb-a-3", LB_A, "siplb e2e third", 3, Usage::Server);
    cert.overwrite_cert(&std::fs::read_to_string(&third.cert).unwrap());
    cert.replace_key_with(&next);
    assert!(
        !lb.hup(),
        "SIGHUP took a key that does not fit its certificate"
    );
    let mismatched = probe(&lb, &verify, &[]);
    mismatched.assert_ok();
    assert_eq!(
        mismatched.serial,
        Some(second.1.clone()),
        "{}",
        mismatched.output
    );

    let uac = uac.wait();
    lb.wait_no_tls_connections();
    lb.expect_tls_counters(&[("tls_handshakes", 5), ("tls_version_tls13", 5)]);
    let log = lb.lb.log();
    let stats = lb.lb.stop();
    let stunnel_log = stunnel.stop();
    let traces = finish_all(backends);
    assert_long_calls(&uac, &traces, &lb, CALLS);
    assert_eq!(
        stunnel_log.matches("s_connect: connected").count(),
        1,
        "{stunnel_log}"
    );
    assert_eq!(
        (
            log.matches("TLS certificates reread").count(),
            log.matches("TLS certificates refused").count()
        ),
        (1, 2),
        "{log}"
    );
    stats.expect(CLEAN);
    stats.expect(&[("new_calls", CALLS.into())]);
}

// ---------------------------------------------------------------------------------------------
// 6. SNI: two certificates, each chosen by the names it is valid for; the first without SNI
//    or for a name neither serves.

fn sni_picks_the_certificate(rt: Runtime) {
    let dir = RunDir::new(&format!("tls-sni-{}", rt.name()));
    let pki = Pki::new(&dir, "pki");
    let a = pki.server("lb-a", LB_A, 1);
    let b = pki.server("lb-b", LB_B, 2);
    let backend = SipBackend::start();
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]);
    let mut lb = TlsLb::start(&dir, spec, &[&a, &b], &[]);
    let (a_id, b_id) = (file_identity(&a), file_identity(&b));

    for (name, want) in [(LB_A, &a_id), (LB_B, &b_id)] {
        let h = probe(&lb, &verifying(&pki, name), &[]);
        h.assert_ok();
        assert_eq!(
            (h.subject.as_ref(), h.serial.as_ref()),
            (Some(&want.0), Some(&want.1)),
            "SNI {name}: wrong certificate\n{}",
            h.output
        );
        assert_eq!(h.verify.as_deref(), Some("0 (ok)"), "{}", h.output);
    }
    let ca = pki.ca().display().to_string();
    for args in [
        vec!["-noservername", "-CAfile", &ca],
        vec!["-servername", "other.test", "-CAfile", &ca],
    ] {
        let h = s_client(lb.tls, &args);
        h.assert_ok();
        assert_eq!(
            h.serial.as_ref(),
            Some(&a_id.1),
            "{args:?}: not the first certificate\n{}",
            h.output
        );
    }
    lb.wait_no_tls_connections();
    lb.expect_tls_counters(&[("tls_handshakes", 4), ("tls_version_tls13", 4)]);
    let stats = lb.lb.stop();
    stats.expect(&[("replies_483", 4), ("frontends_open", 0)]);
}

// ---------------------------------------------------------------------------------------------
// 7. Client certificates: with --tls-client-ca a client without one (TLS 1.2 or 1.3) or with
//    one from another CA is refused, one with a certificate of the CA is served; with
//    --tls-client-auth optional, none is fine too (a presented one must still verify).

fn mutual_tls(rt: Runtime) {
    let dir = RunDir::new(&format!("tls-mutual-{}", rt.name()));
    let pki = Pki::new(&dir, "pki");
    let cert = pki.server("lb-a", LB_A, 1);
    let client = pki.client("client", "client.test", 10);
    let rogue = Pki::new(&dir, "rogue-ca").client("rogue", "client.test", 11);
    let ca = pki.ca().display().to_string();
    let with = |c: &CertFiles| {
        vec![
            "-cert".to_string(),
            c.cert.display().to_string(),
            "-key".to_string(),
            c.key.display().to_string(),
        ]
    };
    let verify = verifying(&pki, LB_A);
    let run = |lb: &TlsLb, cert: Option<&CertFiles>, version: &str| {
        let mut args = verify.clone();
        args.extend(cert.map(with).unwrap_or_default());
        probe(lb, &args, &[version])
    };
    let backend = SipBackend::start();

    // Required (the default with a CA).
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]);
    let mut lb = TlsLb::start(&dir, spec, &[&cert], &["--tls-client-ca", &ca]);
    for version in ["-tls1_3", "-tls1_2"] {
        run(&lb, None, version).assert_refused();
    }
    run(&lb, Some(&rogue), "-tls1_3").assert_refused();
    lb.expect_tls_counters(&[("tls_handshakes_failed_certificate", 3)]);
    for version in ["-tls1_3", "-tls1_2"] {
        run(&lb, Some(&client), version).assert_ok();
    }
    lb.wait_no_tls_connections();
    lb.expect_tls_counters(&[
        ("tls_handshakes", 2),
        ("tls_version_tls12", 1),
        ("tls_version_tls13", 1),
        ("tls_handshakes_failed_certificate", 3),
    ]);
    lb.lb
        .stop()
        .expect(&[("replies_483", 2), ("frontends_open", 0)]);

    // Optional.
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]);
    let mut lb = TlsLb::start(
        &dir,
        spec,
        &[&cert],
        &["--tls-client-ca", &ca, "--tls-client-auth", "optional"],
    );
    for version in ["-tls1_3", "-tls1_2"] {
        run(&lb, None, version).assert_ok();
    }
    run(&lb, Some(&client), "-tls1_3").assert_ok();
    run(&lb, Some(&rogue), "-tls1_3").assert_refused();
    lb.wait_no_tls_connections();
    lb.expect_tls_counters(&[
        ("tls_handshakes", 3),
        ("tls_version_tls12", 1),
        ("tls_version_tls13", 2),
        ("tls_handshakes_failed_certificate", 1),
    ]);
    lb.lb
        .stop()
        .expect(&[("replies_483", 3), ("frontends_open", 0)]);
}

// ---------------------------------------------------------------------------------------------
// 8. Handshakes that stall: they do not hold up other clients, are closed after the handshake
//    timeout (10 s) and counted; at the cap of handshakes in progress (512) a further
//    connection is refused at once.

/// `HANDSHAKE_TIMEOUT` and `HANDSHAKES_MAX` of crates/lb-runtime/src/tls.rs.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKES_MAX: usize = 512;

fn stalled_handshakes_time_out_and_are_capped(rt: Runtime) {
    let dir = RunDir::new(&format!("tls-stalled-{}", rt.name()));
    let pki = Pki::new(&dir, "pki");
    let cert = pki.server("lb-a", LB_A, 1);
    let backend = SipBackend::start();
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]);
    let mut lb = TlsLb::start(&dir, spec, &[&cert], &[]);
    let verify = verifying(&pki, LB_A);
    let started = Instant::now();
    // One says nothing; one sends a TLS record header announcing 255 bytes, and no more.
    let mut stalled = vec![
        stalled_connection(lb.tls, b""),
        stalled_connection(lb.tls, &[0x16, 0x03, 0x01, 0x00, 0xff]),
    ];
    probe(&lb, &verify, &[]).assert_ok();

    // Up to the cap, then one more.
    while stalled.len() < HANDSHAKES_MAX {
        stalled.push(stalled_connection(lb.tls, b""));
    }
    let mut over = stalled_connection(lb.tls, b"");
    assert!(
        is_closed_within(&mut over, Duration::from_secs(2)),
        "the connection past {HANDSHAKES_MAX} handshakes in progress was not refused"
    );
    let refused = probe(&lb, &verify, &[]);
    refused.assert_refused();
    lb.expect_tls_counters(&[
        ("tls_handshakes", 1),
        ("tls_version_tls13", 1),
        ("tls_refused_busy", 2),
    ]);

    // The first stalled handshake is closed at its timeout, not before and not much later.
    let first_open = started.elapsed();
    assert!(
        is_closed_within(&mut stalled[0], HANDSHAKE_TIMEOUT + Duration::from_secs(3)),
        "a silent client was still connected {:?} after it connected (handshake timeout \
         {HANDSHAKE_TIMEOUT:?}, nothing else happening)\n{}",
        started.elapsed(),
        lb.lb.log_tail(10)
    );
    let closed_after = started.elapsed();
    assert!(
        closed_after >= HANDSHAKE_TIMEOUT - Duration::from_millis(500) && first_open < closed_after,
        "a silent client was closed after {closed_after:?}, before the handshake timeout"
    );
    let open: Vec<usize> = stalled
        .iter_mut()
        .enumerate()
        .filter_map(|(i, s)| (!is_closed_within(s, Duration::from_secs(3))).then_some(i))
        .collect();
    assert!(
        open.is_empty(),
        "{} stalled handshakes still open after {:?}: {:?}…",
        open.len(),
        started.elapsed(),
        &open[..open.len().min(10)]
    );
    probe(&lb, &verify, &[]).assert_ok();
    lb.expect_tls_counters(&[
        ("tls_handshakes", 2),
        ("tls_version_tls13", 2),
        ("tls_refused_busy", 2),
        ("tls_handshakes_failed_timeout", HANDSHAKES_MAX as u64),
    ]);
    lb.wait_no_tls_connections();
    lb.lb
        .stop()
        .expect(&[("replies_483", 2), ("frontends_open", 0)]);
}

// ---------------------------------------------------------------------------------------------
// 9. The same from the TOML file: `listen-tls`, `[tls]` with an optional client CA, and
//    `[[tls.cert]]` tables whose `names` replace the names the certificate is valid for;
//    SIGHUP rereads the tables.

fn toml_certificates_names_and_client_auth(rt: Runtime) {
    let dir = RunDir::new(&format!("tls-toml-{}", rt.name()));
    let pki = Pki::new(&dir, "pki");
    let a = pki.server("lb-a", LB_A, 1);
    let b = pki.server("lb-b", LB_B, 2);
    let client = pki.client("client", "client.test", 10);
    let rogue = Pki::new(&dir, "rogue-ca").client("rogue", "client.test", 11);
    let (a_id, b_id) = (file_identity(&a), file_identity(&b));
    // Paths relative to the file (in the run directory).
    let body = |b_names: &str| {
        format!(
            "[tls]\n\
             client-ca = \"pki/ca.pem\"\n\
             client-auth = \"optional\"\n\
             [[tls.cert]]\n\
             cert = \"pki/lb-a.pem\"\n\
             key = \"pki/lb-a.key\"\n\
             [[tls.cert]]\n\
             cert = \"pki/lb-b.pem\"\n\
             key = \"pki/lb-b.key\"\n\
             names = [{b_names}]\n"
        )
    };
    let backend = SipBackend::start();
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]);
    let mut lb = TlsLb::start_with_config(&dir, spec, &body("\"alias.test\""));
    let ca = pki.ca().display().to_string();
    let served = |lb: &TlsLb, sni: &str, more: &[&str]| {
        let mut args = vec!["-servername", sni, "-CAfile", &ca];
        args.extend(more);
        let h = s_client(lb.tls, &args);
        h.assert_ok();
        h.serial.clone().unwrap_or_default()
    };
    // lb-b serves only its configured name; lb-a (no names) those it is valid for.
    assert_eq!(served(&lb, "alias.test", &[]), b_id.1, "SNI alias.test");
    assert_eq!(
        served(&lb, LB_B, &[]),
        a_id.1,
        "SNI {LB_B}: names replace the SAN"
    );
    assert_eq!(served(&lb, LB_A, &[]), a_id.1, "SNI {LB_A}");
    // Optional client certificates: none, or one of the CA; not one of another CA.
    let (cert, key) = (
        client.cert.display().to_string(),
        client.key.display().to_string(),
    );
    assert_eq!(served(&lb, LB_A, &["-cert", &cert, "-key", &key]), a_id.1);
    let (rcert, rkey) = (
        rogue.cert.display().to_string(),
        rogue.key.display().to_string(),
    );
    s_client(
        lb.tls,
        &["-servername", LB_A, "-cert", &rcert, "-key", &rkey],
    )
    .assert_refused();

    // SIGHUP rereads the tables: lb-b now answers to its own name and a new alias.
    lb.rewrite_config(&body(&format!("\"{LB_B}\", \"alias2.test\"")));
    assert!(lb.hup(), "SIGHUP refused the certificates\n{}", lb.lb.log());
    assert_eq!(
        served(&lb, "alias2.test", &[]),
        b_id.1,
        "after SIGHUP: alias2.test"
    );
    assert_eq!(served(&lb, LB_B, &[]), b_id.1, "after SIGHUP: {LB_B}");
    assert_eq!(
        served(&lb, "alias.test", &[]),
        a_id.1,
        "after SIGHUP: alias.test"
    );
    lb.wait_no_tls_connections();
    lb.expect_tls_counters(&[
        ("tls_handshakes", 7),
        ("tls_version_tls13", 7),
        ("tls_handshakes_failed_certificate", 1),
    ]);
    lb.lb
        .stop()
        .expect(&[("replies_483", 7), ("frontends_open", 0)]);
}

// ---------------------------------------------------------------------------------------------
// 10. Clients that hang up half-way through their ClientHello, more of them than the cap of
//     handshakes in progress: each is counted (failed_other) and frees its place, so the
//     listener still takes new clients.

fn hang_ups_mid_handshake_free_their_place(rt: Runtime) {
    const BATCH: usize = 100;
    let dir = RunDir::new(&format!("tls-hang-ups-{}", rt.name()));
    let pki = Pki::new(&dir, "pki");
    let cert = pki.server("lb-a", LB_A, 1);
    let backend = SipBackend::start();
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]);
    let mut lb = TlsLb::start(&dir, spec, &[&cert], &[]);
    // A record header announcing 255 bytes, one of them, and the connection closes.
    let hello_start = [0x16, 0x03, 0x01, 0x00, 0xff, 0x01];
    let mut done = 0;
    while done < HANDSHAKES_MAX + BATCH {
        for _ in 0..BATCH {
            drop(stalled_connection(lb.tls, &hello_start));
        }
        done += BATCH;
        // The balancer has closed its side of each before the next batch.
        lb.wait_no_tls_connections();
    }
    let h = probe(&lb, &verifying(&pki, LB_A), &[]);
    assert!(
        h.ok(),
        "after {done} clients hung up mid-handshake the TLS listener refuses a new one \
         (version {:?}, answer {:?}); counters {:?}\n{}",
        h.version,
        h.answer,
        lb.tls_counters(),
        h.output
    );
    lb.expect_tls_counters(&[
        ("tls_handshakes", 1),
        ("tls_version_tls13", 1),
        ("tls_handshakes_failed_other", done as u64),
    ]);
    lb.wait_no_tls_connections();
    lb.lb
        .stop()
        .expect(&[("replies_483", 1), ("frontends_open", 0)]);
}

siplb_e2e::for_both_runtimes!(
    callee_hangs_up_over_tls,
    cancel_over_tls,
    long_calls_over_tls,
    old_versions_and_plain_tcp_are_refused,
    certificate_reload_drops_no_call,
    sni_picks_the_certificate,
    mutual_tls,
    stalled_handshakes_time_out_and_are_capped,
    toml_certificates_names_and_client_auth,
    hang_ups_mid_handshake_free_their_place,
);

/// The peers these tests need are there: the suite fails (never skips) without them.
#[test]
fn openssl_and_stunnel_are_installed() {
    for program in [siplb_e2e::tls::openssl(), siplb_e2e::tls::stunnel()] {
        assert!(program.is_file(), "{}", program.display());
    }
}
