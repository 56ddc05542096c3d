//! Sanity checks at the edge (issue 15): an initial request from a frontend that lacks a From
//! tag, or whose hosts, URIs or header fields are too long, gets `400 <fault>` and reaches no
//! backend; in-dialog requests, backends' messages and a balancer with the checks off are not
//! affected. Core traces, every output checked.
#![allow(clippy::unwrap_used)]

use lb_core::{BackendMode, ConnId, Event, MalformedFault, Output};
use lb_testkit::scenario::*;

const PROXY: &str = "203.0.113.5:40000";

/// The only output now is one message to `conn`; returns its text.
#[track_caller]
fn only_send_to(h: &mut Harness, conn: ConnId) -> String {
    let outs = h.drain();
    match outs.as_slice() {
        [Output::Send { conn: to, bytes }] if *to == conn => text(bytes),
        other => panic!("expected one send to {conn}, got {other:?}"),
    }
}

/// The refusal of `request`: status line and the copied headers, To tagged by the balancer.
#[track_caller]
fn assert_refused(reply: &str, fault: &str, request: &str) {
    let mut lines = reply.split("\r\n");
    assert_eq!(lines.next(), Some(&*format!("SIP/2.0 400 {fault}")));
    for name in ["Via:", "From:", "Call-ID:", "CSeq:"] {
        let sent = request.split("\r\n").find(|l| l.starts_with(name)).unwrap();
        assert!(
            reply.contains(&format!("\r\n{sent}\r\n")),
            "{name} not copied"
        );
    }
    assert!(
        reply.contains("\r\nTo: <sip:bob@example.com>;tag=lb"),
        "{reply:.300}"
    );
    assert!(reply.ends_with("Content-Length: 0\r\n\r\n"));
}

#[track_caller]
fn assert_malformed_events(h: &mut Harness, conn: ConnId, faults: &[MalformedFault]) {
    let seen: Vec<MalformedFault> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Malformed { conn: c, fault } if *c == conn => Some(*fault),
            _ => None,
        })
        .collect();
    assert_eq!(seen, faults);
}

fn huge_via_host(invite: &str) -> String {
    let host = format!("{}.example.com", "a".repeat(40_000));
    invite.replace("proxy.example.com:5060", &format!("{host}:5060"))
}

#[test]
fn an_initial_invite_with_a_40_kb_via_host_gets_400_and_goes_nowhere() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    let request = huge_via_host(&invite("call-huge", "z9hG4bKhuge"));
    assert!(request.len() > 40_000);
    h.receive(fe, request.as_bytes());
    let reply = only_send_to(&mut h, fe);
    assert_refused(&reply, "Host Too Long", &request);
    assert_malformed_events(&mut h, fe, &[MalformedFault::HostTooLong]);
    let s = h.lb.stats();
    assert_eq!(
        (s.sanity_refused, s.replies_400, s.malformed, s.to_backend),
        (1, 1, 0, 0)
    );
    assert_eq!((s.new_calls, s.table_len), (0, 0), "no table entry");
    // The connection stays, and a sane call on it goes through.
    h.receive(fe, invite("call-sane", "z9hG4bKsane").as_bytes());
    let (_, forwarded, _) = h.expect_to_backend();
    assert!(forwarded.starts_with("INVITE sip:bob@example.com SIP/2.0\r\n"));
    assert!(h.closed.is_empty());
}

#[test]
fn a_from_without_a_tag_or_with_an_empty_tag_gets_400() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    let tagged = "From: <sip:alice@example.com>;tag=a1\r\n";
    let no_tag =
        invite("call-nt", "z9hG4bKnt").replace(tagged, "From: <sip:alice@example.com>\r\n");
    h.receive(fe, no_tag.as_bytes());
    assert_refused(&only_send_to(&mut h, fe), "Missing From Tag", &no_tag);
    let empty =
        invite("call-et", "z9hG4bKet").replace(tagged, "From: <sip:alice@example.com>;tag=\r\n");
    h.receive(fe, empty.as_bytes());
    assert_refused(&only_send_to(&mut h, fe), "Empty From Tag", &empty);
    // The same checks for any initial request; an ACK that fails is dropped unanswered
    // (RFC 3261 §17.1.1.3).
    let options = no_tag
        .replace("INVITE sip:", "OPTIONS sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
    h.receive(fe, options.as_bytes());
    assert_refused(&only_send_to(&mut h, fe), "Missing From Tag", &options);
    let ack = no_tag
        .replace("INVITE sip:", "ACK sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK");
    h.receive(fe, ack.as_bytes());
    h.expect_nothing();
    assert_malformed_events(
        &mut h,
        fe,
        &[
            MalformedFault::MissingFromTag,
            MalformedFault::EmptyFromTag,
            MalformedFault::MissingFromTag,
            MalformedFault::MissingFromTag,
        ],
    );
    let s = h.lb.stats();
    assert_eq!(
        (s.sanity_refused, s.replies_400, s.dropped, s.to_backend),
        (4, 3, 1, 0)
    );
    assert_eq!((s.new_calls, s.table_len), (0, 0));
}

#[test]
fn long_uris_and_header_fields_get_400() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    let long_user = invite("call-uri", "z9hG4bKuri").replace(
        "INVITE sip:bob@example.com",
        &format!("INVITE sip:{}@example.com", "b".repeat(1100)),
    );
    h.receive(fe, long_user.as_bytes());
    assert_refused(&only_send_to(&mut h, fe), "URI Too Long", &long_user);
    let long_field = invite("call-field", "z9hG4bKfield").replace(
        "Content-Type:",
        &format!("Subject: {}\r\nContent-Type:", "s".repeat(3000)),
    );
    h.receive(fe, long_field.as_bytes());
    assert_refused(&only_send_to(&mut h, fe), "Header Too Long", &long_field);
    let long_to_host = invite("call-to", "z9hG4bKto").replace(
        "To: <sip:bob@example.com>",
        &format!("To: <sip:bob@{}.example.com>", "t".repeat(300)),
    );
    h.receive(fe, long_to_host.as_bytes());
    let reply = only_send_to(&mut h, fe);
    assert!(
        reply.starts_with("SIP/2.0 400 Host Too Long\r\n"),
        "{reply:.200}"
    );
    assert_eq!(
        (h.lb.stats().sanity_refused, h.lb.stats().to_backend),
        (3, 0)
    );
}

#[test]
fn in_dialog_requests_and_backends_messages_are_not_checked() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-d", "z9hG4bKinv").as_bytes());
    let (b, forwarded, _) = h.expect_to_backend();
    let tag = h.answer_tag(b, &forwarded);
    // In the dialog (To tag), with no From tag and a long header: routed by its tag.
    let bye = in_dialog("BYE", "call-d", &tag, 2)
        .replace(";tag=a1", "")
        .replace(
            "Content-Length:",
            &format!("Subject: {}\r\nContent-Length:", "s".repeat(3000)),
        );
    h.receive(fe, bye.as_bytes());
    let (to, out, _) = h.expect_to_backend();
    assert_eq!(to, b);
    assert!(out.starts_with("BYE sip:bob@198.51.100.1:5060 SIP/2.0\r\n"));
    assert!(out.contains("\r\nFrom: <sip:alice@example.com>\r\n"));
    // A backend's own initial request with no From tag reaches the frontend.
    let options = format!(
        "OPTIONS sip:alice@{PROXY};transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/TCP 198.51.100.{}:5060;branch=z9hG4bKbeopt\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:backend@example.com>\r\n\
         To: <sip:alice@example.com>\r\n\
         Call-ID: backend-options\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        b + 1
    );
    h.backend_sends(b, &options, None);
    let (conn, out) = h.expect_to_frontend();
    assert_eq!(conn, fe);
    assert!(out.starts_with(&format!(
        "OPTIONS sip:alice@{PROXY};transport=tcp SIP/2.0\r\n"
    )));
    let s = h.lb.stats();
    assert_eq!((s.sanity_refused, s.replies_400), (0, 0));
    assert!(h
        .events
        .iter()
        .all(|e| !matches!(e, Event::Malformed { .. })));
}

#[test]
fn switched_off_the_same_requests_are_forwarded() {
    let mut c = config(1, BackendMode::Plain);
    c.sanity.enabled = false;
    let mut h = Harness::new(c);
    let fe = h.frontend(PROXY);
    let huge = huge_via_host(&invite("call-huge", "z9hG4bKhuge"));
    h.receive(fe, huge.as_bytes());
    let (_, out, _) = h.expect_to_backend();
    assert!(out.contains(&format!(
        "Via: SIP/2.0/TCP {}.example.com:5060;",
        "a".repeat(40_000)
    )));
    let no_tag = invite("call-nt", "z9hG4bKnt").replace(";tag=a1", "");
    h.receive(fe, no_tag.as_bytes());
    let (_, out, _) = h.expect_to_backend();
    assert!(out.contains("\r\nFrom: <sip:alice@example.com>\r\n"));
    let s = h.lb.stats();
    assert_eq!((s.sanity_refused, s.replies_400, s.new_calls), (0, 0, 2));
}
