//! Handshakes that stall or hang up half-way (8, 10): they time out, are counted, and the cap
//! of handshakes in progress refuses more without holding up other clients.

use std::time::{Duration, Instant};

use siplb_e2e::lb::{BackendArg, LbSpec, Runtime};
use siplb_e2e::ops::SipBackend;
use siplb_e2e::tls::{is_closed_within, stalled_connection, Pki, TlsLb};
use siplb_e2e::RunDir;

use super::{probe, verifying, LB_A};

// ---------------------------------------------------------------------------------------------
// 8. Handshakes that stall: they do not hold up other clients, are closed after the handshake
//    timeout (10 s) and counted; at the cap of handshakes in progress (512) a further
//    connection is refused at once.

/// `HANDSHAKE_TIMEOUT` and `HANDSHAKES_MAX` of crates/lb-runtime/src/tls.rs.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKES_MAX: usize = 512;

pub(super) fn stalled_handshakes_time_out_and_are_capped(rt: Runtime) {
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
// 10. Clients that hang up half-way through their ClientHello, more of them than the cap of
//     handshakes in progress: each is counted (failed_other) and frees its place, so the
//     listener still takes new clients.

pub(super) fn hang_ups_mid_handshake_free_their_place(rt: Runtime) {
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
