//! Who gets a TLS connection (4, 7): old versions and plain TCP are refused, TLS 1.2 and 1.3
//! accepted; client certificates required or optional.

use siplb_e2e::lb::{BackendArg, LbSpec, Runtime, CLEAN};
use siplb_e2e::ops::SipBackend;
use siplb_e2e::sipp::Uac;
use siplb_e2e::tls::{plain_sip_attempt, CertFiles, Pki, TlsLb};
use siplb_e2e::RunDir;

use super::{
    assert_long_calls, finish_all, probe, setup, uac_spec, verifying, wait_established, Setup, LB_A,
};

// ---------------------------------------------------------------------------------------------
// 4. TLS 1.1 and a plain-TCP SIP client are refused and counted, each under its reason;
//    TLS 1.2 and 1.3 are accepted;
//    calls established over another TLS connection (stunnel, TLS 1.2) are unaffected.

pub(super) fn old_versions_and_plain_tcp_are_refused(rt: Runtime) {
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
// 7. Client certificates: with --tls-client-ca a client without one (TLS 1.2 or 1.3) or with
//    one from another CA is refused, one with a certificate of the CA is served; with
//    --tls-client-auth optional, none is fine too (a presented one must still verify).

pub(super) fn mutual_tls(rt: Runtime) {
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
