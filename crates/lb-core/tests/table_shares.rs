//! Fair shares of the new-call table (issue 15): once the table is half full, a frontend
//! connection holding its share gets 503 for new calls while other connections' calls go on.
//! Core traces, every output checked.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lb_core::{BackendMode, CloseReason, Config, ConnId, Input, Output, TABLE_SHARE_MIN};
use lb_testkit::scenario::*;

const CAPACITY: usize = 64;

fn small_table() -> Config {
    let mut c = config(1, BackendMode::Plain);
    c.limits.table_capacity = CAPACITY;
    // The INVITEs here ring unanswered on purpose; passive health would take the backend out.
    c.passive.unanswered_timeout = Duration::ZERO;
    c
}

fn options(call_id: &str) -> String {
    format!(
        "OPTIONS sip:bob@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP flood.example.com:5060;branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:flood@example.com>;tag=f1\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// The only output now is a response to `conn`; returns its first line.
#[track_caller]
fn only_reply_to(h: &mut Harness, conn: ConnId) -> String {
    let outs = h.drain();
    match outs.as_slice() {
        [Output::Send { conn: to, bytes }] if *to == conn => {
            text(bytes).lines().next().unwrap().to_string()
        }
        other => panic!("expected one reply to {conn}, got {other:?}"),
    }
}

const OVER_SHARE: &str = "SIP/2.0 503 Too Many Calls Being Set Up On This Connection";
const FULL: &str = "SIP/2.0 503 Too Many Calls Being Set Up";

/// Sends new calls on `fe` until one is refused; returns how many were forwarded and the
/// refusal's status line.
fn flood_until_refused(h: &mut Harness, fe: ConnId, prefix: &str) -> (usize, String) {
    for i in 0..CAPACITY * 2 {
        h.receive(fe, options(&format!("{prefix}-{i}")).as_bytes());
        let outs = h.drain();
        match outs.as_slice() {
            [Output::Send { conn, .. }] if Some(*conn) == h.backends[0] => {}
            [Output::Send { conn, bytes }] if *conn == fe => {
                let reply = text(bytes);
                assert!(reply.contains("\r\nRetry-After: 5\r\n"), "{reply}");
                return (i, reply.lines().next().unwrap().to_string());
            }
            other => panic!("call {i}: {other:?}"),
        }
    }
    panic!("never refused");
}

#[test]
fn a_flooding_connection_gets_503_while_another_connections_calls_go_on() {
    let mut h = Harness::new(small_table());
    let flood = h.frontend("203.0.113.66:40000");
    let proxy = h.frontend("203.0.113.5:40000");
    // The table is half full (32 of 64) when the flooder holds its share (at least 32).
    assert_eq!(
        flood_until_refused(&mut h, flood, "flood"),
        (TABLE_SHARE_MIN, OVER_SHARE.to_string())
    );
    assert_eq!(h.lb.stats().table_len, 32);
    // Every further new call from it is refused, INVITEs too; its calls' retransmissions pass.
    h.receive(flood, invite("flood-invite", "z9hG4bKfi").as_bytes());
    assert_eq!(only_reply_to(&mut h, flood), OVER_SHARE);
    h.receive(flood, options("flood-3").as_bytes());
    let (_, out, _) = h.expect_to_backend();
    assert!(out.contains("\r\nCall-ID: flood-3\r\n"));
    // The other connection's calls go through, up to the table's capacity.
    for i in 0..CAPACITY - 32 {
        h.receive(proxy, invite(&format!("legit-{i}"), "z9hG4bKl").as_bytes());
        let (_, out, _) = h.expect_to_backend();
        assert!(
            out.starts_with("INVITE sip:bob@example.com SIP/2.0\r\n"),
            "{i}"
        );
    }
    h.receive(proxy, invite("legit-over", "z9hG4bKl").as_bytes());
    assert_eq!(only_reply_to(&mut h, proxy), FULL);
    let s = h.lb.stats();
    assert_eq!(
        (
            s.table_share_refused,
            s.replies_503,
            s.new_calls,
            s.table_len
        ),
        (2, 3, 64, 64)
    );
    // Once the flooder's entries expire it has its room back, though the table is still half
    // full: the other connection's INVITEs ring on (unanswered, they keep their entries).
    h.advance(Duration::from_secs(33));
    assert_eq!(h.lb.stats().table_len, 32);
    h.receive(flood, options("flood-again").as_bytes());
    let (_, out, _) = h.expect_to_backend();
    assert!(out.contains("\r\nCall-ID: flood-again\r\n"));
}

#[test]
fn a_closed_connections_entries_expire_and_count_for_nobody() {
    let mut h = Harness::new(small_table());
    let flood = h.frontend("203.0.113.66:40000");
    assert_eq!(
        flood_until_refused(&mut h, flood, "gone"),
        (32, OVER_SHARE.to_string())
    );
    h.input(Input::Closed {
        conn: flood,
        reason: CloseReason::PeerClosed,
    });
    h.expect_nothing();
    assert_eq!(
        h.lb.stats().table_len,
        32,
        "its calls are still being set up"
    );
    // The next connection takes the slot; the old entries are not its own.
    h.advance(Duration::from_secs(10));
    let next = h.frontend("203.0.113.67:40000");
    assert_eq!(next.slot(), flood.slot());
    assert_eq!(
        flood_until_refused(&mut h, next, "next"),
        (32, FULL.to_string()),
        "within its share until the table is full"
    );
    assert_eq!(h.lb.stats().table_len, 64);
    // The closed connection's entries go at their time; the new one's count stays 32, so
    // with the table half full again it is over its share.
    h.advance(Duration::from_secs(22));
    assert_eq!(h.lb.stats().table_len, 32);
    h.receive(next, options("next-more").as_bytes());
    assert_eq!(only_reply_to(&mut h, next), OVER_SHARE);
    assert_eq!(h.lb.stats().table_share_refused, 2);
}

#[test]
fn at_a_hundred_percent_one_connection_may_fill_the_table() {
    let mut c = small_table();
    c.limits.table_share_percent = 100;
    c.limits.table_share_per_ip_percent = 100;
    let mut h = Harness::new(c);
    let fe = h.frontend("203.0.113.5:40000");
    for i in 0..CAPACITY {
        h.receive(fe, options(&format!("all-{i}")).as_bytes());
        h.expect_to_backend();
    }
    h.receive(fe, options("all-over").as_bytes());
    assert_eq!(only_reply_to(&mut h, fe), FULL);
    assert_eq!(h.lb.stats().table_share_refused, 0);
}

#[test]
fn the_share_follows_a_reload() {
    let mut h = Harness::new(small_table());
    let fe = h.frontend("203.0.113.5:40000");
    assert_eq!(
        flood_until_refused(&mut h, fe, "before"),
        (32, OVER_SHARE.to_string())
    );
    let mut next = small_table();
    next.limits.table_share_percent = 100;
    next.limits.table_share_per_ip_percent = 100;
    h.input(Input::Reload(Box::new(next.validate().unwrap())));
    h.drain();
    assert_eq!(
        flood_until_refused(&mut h, fe, "after"),
        (32, FULL.to_string()),
        "the rest of the table"
    );
    assert_eq!(h.lb.stats().table_share_refused, 1);
}
