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
//! The shared setup and checks are here; the tests are in [`calls_over_tls`] (1–3),
//! [`refusals`] (4, 7), [`certificates`] (5, 6, 9) and [`stalled_handshakes`] (8, 10).
//!
//! Against the binaries of commit aad21df, two tests fail for `lb-mio` only:
//! - `hang_ups_mid_handshake_free_their_place`: a client that closes its connection during the
//!   handshake is neither counted nor freed from the handshakes in progress (`read_tls` takes
//!   the EOF to `finish(PeerClosed)` without decrementing `handshaking`), so after 512 of them
//!   every new TLS client is refused (`tls_refused_busy`) until a restart;
//! - `stalled_handshakes_time_out_and_are_capped`: the handshake deadlines are not part of the
//!   poll timeout, so a stalled handshake is closed only when something else wakes the loop.

#![allow(clippy::unwrap_used)]

mod calls_over_tls;
mod certificates;
mod refusals;
mod stalled_handshakes;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use siplb_e2e::lb::{BackendArg, LbSpec, Runtime};
use siplb_e2e::net::{free_port, poll_until};
use siplb_e2e::sipp::{Uac, UacSpec, Uas};
use siplb_e2e::tls::{s_client, CertFiles, Handshake, Pki, Stunnel, StunnelSpec, TlsLb};
use siplb_e2e::trace::{assert_affinity, assert_signatures, owned_by, per_backend, Dir, Trace};
use siplb_e2e::RunDir;

use calls_over_tls::{callee_hangs_up_over_tls, cancel_over_tls, long_calls_over_tls};
use certificates::{
    certificate_reload_drops_no_call, sni_picks_the_certificate,
    toml_certificates_names_and_client_auth,
};
use refusals::{mutual_tls, old_versions_and_plain_tcp_are_refused};
use stalled_handshakes::{
    hang_ups_mid_handshake_free_their_place, stalled_handshakes_time_out_and_are_capped,
};

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
