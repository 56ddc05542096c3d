//! Which certificate the balancer serves (5, 6, 9): reread on SIGHUP while calls run, chosen
//! by SNI, and the same from the TOML file's `[[tls.cert]]` tables.

use siplb_e2e::lb::{BackendArg, LbSpec, Runtime, CLEAN};
use siplb_e2e::ops::SipBackend;
use siplb_e2e::sipp::Uac;
use siplb_e2e::tls::{file_identity, s_client, Pki, TlsLb, Usage};
use siplb_e2e::RunDir;

use super::{
    assert_long_calls, finish_all, probe, setup, uac_spec, verifying, wait_established, Setup,
    LB_A, LB_B,
};

// ---------------------------------------------------------------------------------------------
// 5. Certificates reread on SIGHUP while calls run: none is dropped, new handshakes get the new
//    certificate; a broken file (or a key that does not fit) is refused and the running
//    certificate stays.

pub(super) fn certificate_reload_drops_no_call(rt: Runtime) {
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

pub(super) fn sni_picks_the_certificate(rt: Runtime) {
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
// 9. The same from the TOML file: `listen-tls`, `[tls]` with an optional client CA, and
//    `[[tls.cert]]` tables whose `names` replace the names the certificate is valid for;
//    SIGHUP rereads the tables.

pub(super) fn toml_certificates_names_and_client_auth(rt: Runtime) {
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
