//! Scenarios 6 and 7: a backend killed mid-run, and garbage on one frontend connection while
//! valid calls run on another.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use siplb_e2e::flows::UAS_BASIC;
use siplb_e2e::lb::{Balancer, LbSpec, Runtime};
use siplb_e2e::net;
use siplb_e2e::sipp::Uac;
use siplb_e2e::trace::{
    assert_affinity, assert_signatures, assert_spread, expect_sig, owned_by, Dir, Trace,
};
use siplb_e2e::RunDir;

use super::{finish_all, plain_args, refs, start_uas, uac_spec};

// ---------------------------------------------------------------------------------------------
// 6. a backend killed mid-run

pub(super) fn s6_backend_killed(rt: Runtime) {
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

pub(super) fn s7_garbage_on_another_connection(rt: Runtime) {
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
