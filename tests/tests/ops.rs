//! Operating the balancer, against the real binaries (`lb-tokio` and `lb-mio`) on 127.0.0.1:
//! health probes, drain and log level by reload, `/metrics` figures, the slowloris timeout,
//! backend overload and the close linger. Peers are plain Rust sockets (`siplb_e2e::ops`).
//!
//! No assertion depends on speed: waits poll for a state with a generous bound, and the only
//! time-bounded phase (the overload hold) checks just the calls it had time to make.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use siplb_e2e::lb::Runtime;
use siplb_e2e::net::wait_until;
use siplb_e2e::ops::{backend_series, backend_tables, OpsLb, SipBackend, SipClient, PATIENCE};
use siplb_e2e::RunDir;

/// `lb_cli::NOISE_LINES_MAX` (lines per kind and second), not imported: this package depends
/// on no workspace crate.
fn lb_cli_noise_max() -> usize {
    10
}

/// Waits until every backend is up in `/metrics`.
fn ready(lb: &mut OpsLb, backends: &[&SipBackend]) {
    for (i, b) in backends.iter().enumerate() {
        lb.wait_metric(&backend_series("backend_up", i, b.addr), 1.0);
    }
}

fn calls_on(backend: &SipBackend) -> usize {
    backend.received("INVITE").len()
}

// (a) A backend that stops answering OPTIONS goes down, new calls avoid it; it comes back.
fn probes_take_a_silent_backend_down_and_back(rt: Runtime) {
    let dir = RunDir::new(&format!("ops-probe-{}", rt.name()));
    let (a, b) = (SipBackend::start(), SipBackend::start());
    let mut lb = OpsLb::start(
        &dir,
        rt,
        &backend_tables(&[&a, &b]),
        &[
            "--probe-interval",
            "0.2",
            "--probe-timeout",
            "0.1",
            "--probe-failures",
            "2",
            "--probe-successes",
            "1",
        ],
    );
    ready(&mut lb, &[&a, &b]);
    wait_until("probes to reach backend 0", PATIENCE, || {
        !a.received("OPTIONS").is_empty()
    });
    assert_eq!(lb.get("/health"), (200, "ready\n".to_string()));

    a.answer_options(false);
    let silenced = Instant::now();
    let a_up = backend_series("backend_up", 0, a.addr);
    let m = lb.wait_metric(&a_up, 0.0);
    eprintln!(
        "{}: silent backend seen down in /metrics after {:?}",
        rt.name(),
        silenced.elapsed()
    );
    assert!(m.value("siplb_probe_failures_total") >= 2.0);
    assert_eq!(m.value("siplb_backends_up"), 1.0);
    lb.wait_log("backend down");
    assert_eq!(lb.get("/health").0, 200, "one backend is still up");

    let mut client = SipClient::connect(lb.addr());
    let (a_before, b_before) = (calls_on(&a), calls_on(&b));
    for i in 0..4 {
        assert_eq!(client.call(&format!("probe-down-{i}")).status, 200);
    }
    assert_eq!(
        calls_on(&a),
        a_before,
        "a probed-down backend got a new call"
    );
    assert_eq!(calls_on(&b), b_before + 4);

    // Every backend silent: not ready, and new calls get the balancer's own 503.
    b.answer_options(false);
    lb.wait_metric("siplb_backends_up", 0.0);
    assert_eq!(lb.get("/health").0, 503);
    let refused = client.call("probe-all-down");
    assert_eq!(refused.status, 503);
    assert!(
        refused.response.contains("Retry-After:"),
        "{}",
        refused.response
    );

    a.answer_options(true);
    b.answer_options(true);
    lb.wait_metric(&a_up, 1.0);
    lb.wait_metric(&backend_series("backend_up", 1, b.addr), 1.0);
    lb.wait_log("backend up");
    assert_eq!(lb.get("/health").0, 200);
    let a_before = calls_on(&a);
    for i in 0..4 {
        assert_eq!(client.call(&format!("probe-up-{i}")).status, 200);
    }
    assert!(
        calls_on(&a) > a_before,
        "the recovered backend got no new call"
    );
    lb.stop();
}

// (b) SIGHUP after rewriting the file: a drained backend gets no new calls but its call goes
// on; an added backend takes calls; an invalid file is refused and the old config stays.
fn reload_drains_and_adds_backends_without_dropping_calls(rt: Runtime) {
    let dir = RunDir::new(&format!("ops-reload-{}", rt.name()));
    let (a, b, c) = (
        SipBackend::start(),
        SipBackend::start(),
        SipBackend::start(),
    );
    let mut lb = OpsLb::start(&dir, rt, &backend_tables(&[&a, &b]), &[]);
    ready(&mut lb, &[&a, &b]);
    let mut client = SipClient::connect(lb.addr());
    let mut on_a = None;
    for i in 0..4 {
        let call = client.call(&format!("before-reload-{i}"));
        assert_eq!(call.status, 200);
        if a.received("INVITE").contains(&call.call_id) {
            on_a = Some(call);
            break;
        }
    }
    let on_a = on_a.expect("round robin gave backend 0 no call");

    lb.rewrite(&format!(
        "[[backend]]\naddr = \"{}\"\ndraining = true\n{}",
        a.addr,
        backend_tables(&[&b, &c])
    ));
    lb.hup();
    lb.wait_metric(&backend_series("backend_draining", 0, a.addr), 1.0);
    lb.wait_metric(&backend_series("backend_up", 2, c.addr), 1.0);
    assert_eq!(lb.metrics().value("siplb_reloads_total"), 1.0);
    lb.wait_log("configuration reloaded");

    let (a_before, b_before, c_before) = (calls_on(&a), calls_on(&b), calls_on(&c));
    for i in 0..4 {
        assert_eq!(client.call(&format!("after-reload-{i}")).status, 200);
    }
    assert_eq!(calls_on(&a), a_before, "a draining backend got a new call");
    assert!(calls_on(&b) > b_before && calls_on(&c) > c_before);
    // The call tagged for the draining backend still reaches it.
    assert_eq!(client.bye(&on_a), 200);
    assert!(a.received("BYE").contains(&on_a.call_id));

    // An invalid file: one warning naming the key, the running configuration stays.
    lb.rewrite(&format!("idle-timeout = 0\n{}", backend_tables(&[&a, &b])));
    lb.hup();
    lb.wait_log("configuration refused");
    let log = lb.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("configuration refused"))
        .unwrap();
    assert!(refusal.contains("idle-timeout"), "{refusal}");
    lb.assert_running();
    let a_before = calls_on(&a);
    for i in 0..2 {
        assert_eq!(client.call(&format!("after-refusal-{i}")).status, 200);
    }
    assert_eq!(
        calls_on(&a),
        a_before,
        "the refused file undrained backend 0"
    );
    let m = lb.metrics();
    assert_eq!(m.value("siplb_reloads_total"), 1.0);
    // One frontend connection carried everything: nothing was dropped.
    assert_eq!(m.value("siplb_frontends_accepted_total"), 1.0);
    assert_eq!(m.value("siplb_frontends_open"), 1.0);
    lb.stop();
}

// (c) /metrics over HTTP agrees with what the peers sent and received.
fn metrics_match_the_traffic(rt: Runtime) {
    let dir = RunDir::new(&format!("ops-metrics-{}", rt.name()));
    let (a, b) = (SipBackend::start(), SipBackend::start());
    let mut lb = OpsLb::start(&dir, rt, &backend_tables(&[&a, &b]), &[]);
    ready(&mut lb, &[&a, &b]);
    let mut client = SipClient::connect(lb.addr());
    const CALLS: u64 = 5;
    for i in 0..CALLS {
        assert_eq!(client.call(&format!("metrics-{i}")).status, 200);
    }
    // The peers' own counters move as their threads read and write (a backend reads the last
    // ACK after the client has moved on), so both sides are sampled afresh until they agree.
    let bytes_agree = || {
        let (a_in, a_out) = a.bytes();
        let (b_in, b_out) = b.bytes();
        let m = lb.metrics();
        m.get("siplb_bytes_in_total") == Some((client.bytes_out + a_out + b_out) as f64)
            && m.get("siplb_bytes_out_total") == Some((client.bytes_in + a_in + b_in) as f64)
    };
    wait_until("byte counters to match the peers'", PATIENCE, bytes_agree);
    let m = lb.metrics();
    let n = CALLS as f64;
    for (series, want) in [
        ("siplb_new_calls_total", n),
        ("siplb_frontend_requests_in_total", n),
        ("siplb_backend_responses_in_total", n),
        ("siplb_to_backend_total", n),
        ("siplb_to_frontend_total", n),
        ("siplb_table_len", n),
        ("siplb_table_len_max", n),
        ("siplb_frontends_open", 1.0),
        ("siplb_frontends_accepted_total", 1.0),
        ("siplb_backends_up", 2.0),
        ("siplb_replies_503_total", 0.0),
        ("siplb_replies_400_total", 0.0),
        ("siplb_table_capacity", 1_000_000.0),
    ] {
        assert_eq!(m.value(series), want, "{series}");
    }
    let assigned_a = m.backend("backend_assigned", 0, a.addr);
    let assigned_b = m.backend("backend_assigned", 1, b.addr);
    assert_eq!(assigned_a, calls_on(&a) as f64);
    assert_eq!(assigned_a + assigned_b, n);

    // Well-framed requests with a Route that is not a SIP URI: 400 each, counted; a flood of
    // them is logged at most NOISE_LINES_MAX times, then summed up in one line.
    let lb_addr = lb.addr();
    let bad = |i: usize| {
        format!(
            "INVITE sip:service@{lb} SIP/2.0\r\n\
             Via: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKbad{i}\r\n\
             Route: <tel:+123>\r\n\
             From: <sip:caller@127.0.0.1>;tag=bad\r\n\
             To: <sip:service@{lb}>\r\n\
             Call-ID: metrics-bad-{i}\r\n\
             CSeq: 1 INVITE\r\n\
             Content-Length: 0\r\n\r\n",
            lb = lb_addr
        )
    };
    client.send_raw(bad(0).as_bytes());
    let answer = client.read();
    assert!(answer.starts_with("SIP/2.0 400"), "{answer}");
    let m = lb.wait_metric("siplb_replies_400_total", 1.0);
    assert_eq!(m.value("siplb_malformed_total"), 1.0);
    const FLOOD: usize = 40;
    let flood: String = (1..=FLOOD).map(bad).collect();
    client.send_raw(flood.as_bytes());
    for _ in 0..FLOOD {
        assert!(client.read().starts_with("SIP/2.0 400"));
    }
    let m = lb.wait_metric("siplb_replies_400_total", (FLOOD + 1) as f64);
    assert_eq!(m.value("siplb_malformed_total"), (FLOOD + 1) as f64);
    lb.wait_log("suppressed");
    let logged = lb
        .log()
        .lines()
        .filter(|l| l.contains("malformed message"))
        .count();
    assert!(
        logged <= 2 * lb_cli_noise_max(),
        "{logged} malformed-message lines for {} messages",
        FLOOD + 1
    );
    assert_eq!(lb.get("/health"), (200, "ready\n".to_string()));
    assert_eq!(lb.get("/nowhere").0, 404);
    let stdout = lb.stop();
    assert!(stdout.contains(&format!("new_calls={CALLS}")), "{stdout}");
}

// (d) A connection holding half a message is closed after --partial-timeout while calls on
// another connection go on.
fn slowloris_is_closed_while_other_calls_go_on(rt: Runtime) {
    let dir = RunDir::new(&format!("ops-slowloris-{}", rt.name()));
    let a = SipBackend::start();
    let mut lb = OpsLb::start(
        &dir,
        rt,
        &backend_tables(&[&a]),
        &["--partial-timeout", "1"],
    );
    ready(&mut lb, &[&a]);

    let mut slow = TcpStream::connect(lb.addr()).unwrap();
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let sent_at = Instant::now();
    slow.write_all(
        b"INVITE sip:service@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKslow\r\nCall-ID: slow\r\n",
    )
    .unwrap();
    let watcher = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        let result = slow.read(&mut buf);
        let closed = match result {
            Ok(0) => true,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        (closed, sent_at.elapsed())
    });

    let mut client = SipClient::connect(lb.addr());
    let mut calls = 0;
    while sent_at.elapsed() < Duration::from_millis(2500) || !watcher.is_finished() {
        assert!(
            sent_at.elapsed() < PATIENCE,
            "the slowloris connection was never closed"
        );
        assert_eq!(
            client.call(&format!("beside-slowloris-{calls}")).status,
            200
        );
        calls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (closed, after) = watcher.join().unwrap();
    eprintln!(
        "{}: slowloris closed {after:?} after its bytes (--partial-timeout 1), {calls} calls beside it",
        rt.name()
    );
    assert!(
        closed,
        "the slowloris connection got data instead of a close"
    );
    assert!(
        after >= Duration::from_millis(1000),
        "closed too early: {after:?}"
    );
    assert_eq!(
        calls_on(&a),
        calls,
        "calls on the other connection were lost"
    );
    let m = lb.wait_metric("siplb_partial_closes_total", 1.0);
    assert_eq!(m.value("siplb_frontends_open"), 1.0);
    lb.wait_log("partial message");
    lb.stop();
}

// (e) A backend answering 503 (Retry-After) gets no new calls for that long, the caller sees
// 500 while another backend is up; only when every backend refuses does the caller see 503.
fn overloaded_backend_sheds_load_to_the_others(rt: Runtime) {
    let dir = RunDir::new(&format!("ops-overload-{}", rt.name()));
    let (a, b) = (SipBackend::start(), SipBackend::start());
    const HOLD_SECS: u32 = 3;
    a.answer_invite(503, Some(HOLD_SECS));
    let mut lb = OpsLb::start(&dir, rt, &backend_tables(&[&a, &b]), &[]);
    ready(&mut lb, &[&a, &b]);
    let mut client = SipClient::connect(lb.addr());

    let mut held_at = None;
    for i in 0..4 {
        let call = client.call(&format!("overload-{i}"));
        if a.received("INVITE").contains(&call.call_id) {
            assert_eq!(call.status, 500, "{}", call.response);
            held_at = Some(Instant::now());
            break;
        }
        assert_eq!(call.status, 200);
    }
    let held_at = held_at.expect("round robin gave backend 0 no call");
    let a_count = calls_on(&a);
    // Only the calls made well inside the hold are checked: a slow machine makes fewer.
    let mut during = 0;
    while held_at.elapsed() < Duration::from_secs(u64::from(HOLD_SECS) - 1) && during < 6 {
        assert_eq!(client.call(&format!("held-{during}")).status, 200);
        during += 1;
    }
    assert_eq!(calls_on(&a), a_count, "the held backend got a new call");
    let m = lb.wait_metric("siplb_backend_overloads_total", 1.0);
    assert_eq!(m.value("siplb_replies_503_total"), 0.0);
    lb.wait_log("backend overloaded");

    // After the hold the backend takes calls again.
    a.answer_invite(200, None);
    let hold_end = held_at + Duration::from_millis(u64::from(HOLD_SECS) * 1000 + 200);
    std::thread::sleep(hold_end.saturating_duration_since(Instant::now()));
    for i in 0..4 {
        assert_eq!(client.call(&format!("after-hold-{i}")).status, 200);
    }
    assert!(calls_on(&a) > a_count, "the backend never left its hold");

    // Both refuse: the first refusal still leaves one backend (500), the second leaves none,
    // so the backend's 503 goes upstream; then the balancer answers 503 itself.
    a.answer_invite(503, Some(30));
    b.answer_invite(503, Some(30));
    let statuses: Vec<u16> = (0..3)
        .map(|i| client.call(&format!("all-held-{i}")).status)
        .collect();
    assert_eq!(statuses, [500, 503, 503]);
    assert_eq!(lb.get("/health").0, 200, "held backends are still up");
    lb.stop();
}

// (f) A connection the balancer closes while its peer reads nothing is dropped once the close
// linger (`lb_core::Config::close_linger`, 5 s by default) has passed, instead of holding its socket and queued
// output for ever.
fn a_closing_connection_whose_peer_never_reads_is_dropped(rt: Runtime) {
    // About 40 MB of responses: well over the kernel buffers between the balancer and a peer
    // that never reads (send buffer at most 4 MB by default, receive buffer not grown without
    // reads), so the balancer's own queue still holds output when it decides to close.
    const REQUESTS: usize = 16_000;
    const LINGER: Duration = Duration::from_secs(5);
    let dir = RunDir::new(&format!("ops-linger-{}", rt.name()));
    let a = SipBackend::start();
    let mut lb = OpsLb::start(
        &dir,
        rt,
        &backend_tables(&[&a]),
        // The high-water mark as high as the cap: the balancer must keep reading `stuck` (past
        // the mark it would stop, and the 16,000 requests would not all reach the backend).
        &[
            "--partial-timeout",
            "1",
            "--output-cap",
            "500000000",
            "--output-high-water",
            "500000000",
        ],
    );
    ready(&mut lb, &[&a]);

    let mut stuck = TcpStream::connect(lb.addr()).unwrap();
    let me = stuck.local_addr().unwrap();
    let to = lb.addr();
    // Two padded Vias, which every response copies: one of 2,400 bytes would be a field over
    // the edge checks' 2 KiB.
    let pad = "p".repeat(1200);
    let mut requests = String::new();
    for i in 0..REQUESTS {
        requests.push_str(&format!(
            "OPTIONS sip:service@{to} SIP/2.0\r\n\
             Via: SIP/2.0/TCP {me};branch=z9hG4bK-stuck-{i};pad={pad}\r\n\
             Via: SIP/2.0/TCP {me};branch=z9hG4bK-pad;pad={pad}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:stuck@{me}>;tag=s{i}\r\n\
             To: <sip:service@{to}>\r\n\
             Call-ID: stuck-{i}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        ));
    }
    stuck.write_all(requests.as_bytes()).unwrap();
    wait_until("the backend to answer every request", PATIENCE, || {
        a.received("OPTIONS").len() >= REQUESTS
    });
    // The answers reach the balancer's queue for `stuck`, which reads nothing. Half a message
    // then makes the balancer close it after --partial-timeout.
    std::thread::sleep(Duration::from_millis(500));
    stuck
        .write_all(b"OPTIONS sip:service@127.0.0.1 SIP/2.0\r\nVia: ")
        .unwrap();
    let partial_at = Instant::now();
    lb.wait_metric("siplb_partial_closes_total", 1.0);
    let m = lb.wait_metric("siplb_frontends_open", 0.0);
    let dropped_after = partial_at.elapsed();
    eprintln!(
        "{}: closing connection with output queued dropped {dropped_after:?} after its partial message",
        rt.name()
    );
    assert!(
        dropped_after >= Duration::from_secs(1) + LINGER,
        "dropped after {dropped_after:?}: its output flushed, so this run did not hold any back"
    );
    assert_eq!(m.value("siplb_partial_closes_total"), 1.0);
    // The balancer still serves others.
    let mut client = SipClient::connect(lb.addr());
    assert_eq!(client.call("after-the-stuck-one").status, 200);
    drop(stuck);
    lb.stop();
}

// (g) SIGHUP applies the config file's new log level without a restart.
fn reload_changes_the_log_level(rt: Runtime) {
    let dir = RunDir::new(&format!("ops-log-level-{}", rt.name()));
    let a = SipBackend::start();
    let mut lb = OpsLb::start(
        &dir,
        rt,
        &format!("log-level = \"info\"\n{}", backend_tables(&[&a])),
        &[],
    );
    ready(&mut lb, &[&a]);
    // At info a frontend's close is one line; the core's debug lines are not written.
    drop(SipClient::connect(lb.addr()));
    lb.wait_log("frontend connection closed");
    assert!(!lb.log().contains("DEBUG"), "{}", lb.log());

    lb.rewrite(&format!("log-level = \"debug\"\n{}", backend_tables(&[&a])));
    lb.hup();
    lb.wait_log("reload: log level");
    drop(SipClient::connect(lb.addr()));
    lb.wait_log("DEBUG");
    let mut client = SipClient::connect(lb.addr());
    assert_eq!(client.call("after-log-level").status, 200);
    lb.stop();
}

siplb_e2e::for_both_runtimes!(
    probes_take_a_silent_backend_down_and_back,
    reload_drains_and_adds_backends_without_dropping_calls,
    metrics_match_the_traffic,
    slowloris_is_closed_while_other_calls_go_on,
    overloaded_backend_sheds_load_to_the_others,
    a_closing_connection_whose_peer_never_reads_is_dropped,
    reload_changes_the_log_level,
);
