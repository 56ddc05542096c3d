//! The load generator against a fake balancer-plus-backend that speaks plain SIP over TCP: the
//! call flow, the Route set, the retransmissions and the affinity check, without the balancer.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_backend::sip::{frame_len, long_form, param, push_header, Message};
use lb_loadgen::{Config, Limit};

const RR: &str = "<sip:127.0.0.1:9;transport=tcp;lr;lb=0.1.abcd>";

#[derive(Default)]
struct Seen {
    invites: AtomicU64,
    acks: AtomicU64,
    byes: AtomicU64,
    unrouted: AtomicU64,
}

/// The two UASes the fake can answer as: (To tag, Contact).
const UAS1: (&str, &str) = ("t1", "<sip:uas@127.0.0.1:9;transport=tcp>");
const UAS2: (&str, &str) = ("t2", "<sip:uas@127.0.0.2:9;transport=tcp>");

/// Answers like a UAS, naming itself only as every UAS does (To tag, Contact). With `flaky`,
/// the copy of every retransmitted INVITE is answered as a second UAS would answer it: exactly
/// what the affinity check must catch when a balancer sends the copy to another backend.
fn serve(stream: TcpStream, flaky: bool, seen: &Seen) {
    let mut stream = stream;
    let mut invited = HashSet::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Ok(Some(len)) = frame_len(&buf) {
            let msg_bytes: Vec<u8> = buf.drain(..len).collect();
            let msg = Message::parse(&msg_bytes).unwrap();
            let call = msg.call_id().unwrap();
            let routed = msg.header("Route") == Some(RR);
            let mut out = Vec::new();
            match msg.method().unwrap() {
                "INVITE" => {
                    seen.invites.fetch_add(1, Ordering::Relaxed);
                    let copy = !invited.insert(call.to_owned());
                    let uas = if flaky && copy { UAS2 } else { UAS1 };
                    for (code, reason) in [(100, "Trying"), (180, "Ringing"), (200, "OK")] {
                        respond(&mut out, &msg, code, reason, uas, code > 100);
                    }
                }
                "ACK" => {
                    seen.acks.fetch_add(1, Ordering::Relaxed);
                    if !routed {
                        seen.unrouted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                "BYE" => {
                    seen.byes.fetch_add(1, Ordering::Relaxed);
                    if !routed {
                        seen.unrouted.fetch_add(1, Ordering::Relaxed);
                    }
                    respond(&mut out, &msg, 200, "OK", UAS1, false);
                }
                other => panic!("unexpected {other}"),
            }
            stream.write_all(&out).unwrap();
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn respond(
    out: &mut Vec<u8>,
    req: &Message<'_>,
    code: u16,
    reason: &str,
    (tag, contact): (&str, &str),
    dialog: bool,
) {
    out.extend_from_slice(format!("SIP/2.0 {code} {reason}\r\n").as_bytes());
    if dialog {
        push_header(out, "Record-Route", RR);
        push_header(out, "Contact", contact);
    }
    for (n, v) in &req.headers {
        let long = long_form(n);
        if long == "To" && dialog && param(v, "tag").is_none() {
            push_header(out, "To", &format!("{v};tag={tag}"));
        } else if ["Via", "From", "To", "Call-ID", "CSeq"].contains(&long) {
            push_header(out, long, v);
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

fn run_against_fake(flaky: bool) -> (lb_loadgen::Report, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let seen2 = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let seen = Arc::clone(&seen2);
            std::thread::spawn(move || serve(stream.unwrap(), flaky, &seen));
        }
    });
    let config = Config {
        target,
        connections: 2,
        rate: 0.0,
        limit: Limit::Calls(40),
        hold: Duration::ZERO,
        max_active: 8,
        retransmit_every: 10,
        retransmit_delay: Duration::ZERO,
        timeout: Duration::from_secs(30),
    };
    let report = lb_loadgen::run(&config, &mut |_| {}).unwrap();
    (report, seen)
}

#[test]
fn calls_complete_through_the_route_set() {
    let (report, seen) = run_against_fake(false);
    assert_eq!(report.calls_ok, 40);
    assert_eq!(report.calls_failed, 0);
    assert_eq!(report.affinity_violations, 0);
    assert_eq!(report.retransmitted, 4);
    assert_eq!(report.calls_per_backend.get("uas@127.0.0.1:9"), Some(&40));
    assert_eq!(seen.invites.load(Ordering::Relaxed), 44);
    assert_eq!(seen.acks.load(Ordering::Relaxed), 40);
    assert_eq!(seen.byes.load(Ordering::Relaxed), 40);
    assert_eq!(
        seen.unrouted.load(Ordering::Relaxed),
        0,
        "ACK and BYE carry the Route"
    );
    let line = report.to_string();
    assert!(
        line.starts_with(
            "calls_ok=40 calls_failed=0 affinity_violations=0 retransmitted=4 per_backend=uas@127.0.0.1:9:40 "
        ),
        "{line}"
    );
}

#[test]
fn a_call_answered_by_two_backends_is_a_violation() {
    let (report, _) = run_against_fake(true);
    // The calls still complete (the copy's 200 comes after the first one's): only the check
    // sees that a second UAS answered.
    assert_eq!(report.calls_ok, 40);
    assert_eq!(report.retransmitted, 4);
    assert_eq!(report.affinity_violations, 4);
    // The copy's 180 and 200 name the second UAS. A 100 has no Contact: the first one of a call
    // comes before any backend is known (unnamed), the copy's counts for the call's backend, as
    // do the 180, the 200 and the 200 to the BYE.
    assert_eq!(report.msgs_per_backend.get("uas@127.0.0.2:9"), Some(&8));
    assert_eq!(
        report.msgs_per_backend.get("uas@127.0.0.1:9"),
        Some(&(40 * 3 + 4))
    );
    assert_eq!(report.msgs_unnamed, 40);
}
