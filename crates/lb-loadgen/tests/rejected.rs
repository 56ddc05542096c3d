//! A 503 is the balancer pushing back under overload (RFC 6357): the load generator counts the
//! call as rejected, not failed, so a benchmark can tell shed load from broken calls.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use lb_backend::sip::{frame_len, long_form, param, push_header, Message};
use lb_loadgen::{Config, Limit};

/// Answers every odd-numbered call's INVITE with 503 and Retry-After, as the balancer does when
/// every backend is held; the others get 200, and their BYE 200.
fn serve(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Ok(Some(len)) = frame_len(&buf) {
            let bytes: Vec<u8> = buf.drain(..len).collect();
            let msg = Message::parse(&bytes).unwrap();
            let number: u64 = msg
                .call_id()
                .unwrap()
                .split('-')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let (code, reason) = match msg.method().unwrap() {
                "INVITE" if number % 2 == 1 => (503, "Backends Overloaded"),
                "INVITE" | "BYE" => (200, "OK"),
                _ => continue,
            };
            let mut out = format!("SIP/2.0 {code} {reason}\r\n").into_bytes();
            for (name, value) in &msg.headers {
                let long = long_form(name);
                if long == "To" && param(value, "tag").is_none() {
                    push_header(&mut out, "To", &format!("{value};tag=t1"));
                } else if ["Via", "From", "To", "Call-ID", "CSeq"].contains(&long) {
                    push_header(&mut out, long, value);
                }
            }
            if code == 503 {
                push_header(&mut out, "Retry-After", "5");
            } else {
                push_header(&mut out, "X-Backend", "b1");
            }
            out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
            stream.write_all(&out).unwrap();
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_503_is_a_rejected_call_not_a_failed_one() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            std::thread::spawn(move || serve(stream.unwrap()));
        }
    });
    let config = Config {
        target,
        connections: 1,
        rate: 0.0,
        limit: Limit::Calls(20),
        hold: Duration::ZERO,
        max_active: 4,
        retransmit_every: 0,
        retransmit_delay: Duration::ZERO,
        timeout: Duration::from_secs(30),
    };
    let report = lb_loadgen::run(&config, &mut |_| {}).unwrap();
    assert_eq!(
        (report.calls_ok, report.calls_rejected, report.calls_failed),
        (10, 10, 0),
        "ok, rejected, failed"
    );
    assert!(report.non_2xx.is_empty(), "{:?}", report.non_2xx);
    assert_eq!(report.timeouts, 0);
    assert!(
        report.to_string().ends_with(" calls_rejected=10"),
        "{report}"
    );
}
