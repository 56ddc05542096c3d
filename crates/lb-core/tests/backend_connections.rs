//! Backends that send over connections of their own, dial-out toward frontends, and the proxy
//! rules real SIP stacks rely on (Max-Forwards, loops): core traces, each output checked.
#![allow(clippy::unwrap_used)]

use lb_core::{BackendMode, CloseReason, Input, Output};
use lb_testkit::scenario::*;

const CALLER_PROXY: &str = "203.0.113.5:40000";

/// A call set up through the balancer: the backend index, the INVITE it got and the 200's
/// frontend-facing tag.
fn established(h: &mut Harness, fe: lb_core::ConnId, call_id: &str) -> (usize, String, String) {
    h.receive(fe, invite(call_id, "z9hG4bKinv").as_bytes());
    let (b, forwarded, _) = h.expect_to_backend();
    let tag = h.answer_tag(b, &forwarded);
    (b, forwarded, tag)
}

#[test]
fn backends_see_a_backend_facing_tag_and_callers_a_frontend_facing_one() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let (_, forwarded, tag) = established(&mut h, fe, "call-b");
    let seen_by_backend = record_route_tag(&forwarded).unwrap();
    assert!(seen_by_backend.starts_with("b0.1."), "{seen_by_backend}");
    assert!(tag.starts_with("0.1."), "{tag}");
    assert_ne!(seen_by_backend[1..], tag, "the two sides' MACs differ");
}

#[test]
fn a_backends_bye_on_a_connection_of_its_own_reaches_the_caller() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let (b, forwarded, _) = established(&mut h, fe, "call-b");
    // The backend's stack opens its own connection to the Route's address (the bug of issue
    // 10: this BYE used to go back to the backend).
    let own = h.frontend("198.51.100.1:41000");
    let bye = callee_bye(
        &forwarded,
        b,
        "call-b",
        "sip:alice@203.0.113.5:5060;transport=tcp",
    );
    h.receive(own, bye.as_bytes());
    let (conn, out) = h.expect_to_frontend();
    assert_eq!(conn, fe, "the BYE reaches the caller's connection");
    assert!(out.starts_with("BYE sip:alice@203.0.113.5:5060;transport=tcp SIP/2.0\r\n"));
    assert!(
        !out.contains("Route:"),
        "the balancer's entry is popped: {out}"
    );
    assert!(out.contains("Max-Forwards: 69\r\n"));
    let own_via = out.lines().find(|l| l.starts_with("Via:")).unwrap();
    assert!(
        own_via.contains(";lb=0.1.") && own_via.contains(";lbc="),
        "{own_via}"
    );
    let stats = h.lb.stats();
    assert_eq!(
        (stats.backend_requests_in, stats.frontend_requests_in),
        (1, 1),
        "the BYE counts as the backend's, the INVITE as the caller's"
    );
    // The caller's 200 goes back on the connection the BYE came on, not the balancer's own.
    h.receive(fe, response_to(&out, "200 OK").as_bytes());
    let (back, ok) = h.expect_one_send();
    assert_eq!(back, own);
    let ok = text(&ok);
    assert!(ok.starts_with("SIP/2.0 200 OK\r\n"));
    assert_eq!(
        ok.matches("Via:").count(),
        1,
        "the balancer's Via is stripped: {ok}"
    );
}

#[test]
fn a_frontend_on_a_backends_address_is_still_a_frontend() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let _other = h.frontend("203.0.113.9:40000");
    let (b, _, tag) = established(&mut h, fe, "call-i");
    // On the backend's IP, with everything a caller knows: the frontend-facing tag, and a
    // target naming another frontend. It is a caller's request: to the call's backend.
    let imp = h.frontend("198.51.100.1:42000");
    let forged = in_dialog("BYE", "call-i", &tag, 2)
        .replace("sip:bob@198.51.100.1:5060", "sip:victim@203.0.113.9:40000");
    h.receive(imp, forged.as_bytes());
    let (to, msg, _) = h.expect_to_backend();
    assert_eq!(to, b);
    assert!(msg.starts_with("BYE sip:victim@203.0.113.9:40000 SIP/2.0\r\n"));
    // Prefixing `b` to the tag it knows makes no backend-facing tag: the request is untagged,
    // found in the new-call table (the call is seconds old), and goes to the call's backend;
    // no dial-out toward the address it names.
    let forged = in_dialog("INFO", "call-i", &format!("b{tag}"), 3)
        .replace("sip:bob@198.51.100.1:5060", "sip:victim@203.0.113.77:5060");
    h.receive(imp, forged.as_bytes());
    assert_eq!(h.expect_to_backend().0, b);
    // Past the window, the same forgery finds no owner: 481.
    h.advance(std::time::Duration::from_secs(60));
    h.receive(imp, forged.replace("CSeq: 3", "CSeq: 4").as_bytes());
    let (conn, reply) = h.expect_one_send();
    assert_eq!(conn, imp);
    assert!(text(&reply).starts_with("SIP/2.0 481 "), "{}", text(&reply));
    assert_eq!(h.lb.stats().dial_outs, 0);
    assert_eq!(h.lb.stats().tag_failures, 2);
}

#[test]
fn dial_out_when_the_callers_connection_is_gone() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let (b, forwarded, _) = established(&mut h, fe, "call-b");
    h.input(Input::Closed {
        conn: fe,
        reason: CloseReason::PeerClosed,
    });
    let bye = callee_bye(
        &forwarded,
        b,
        "call-b",
        "sip:alice@203.0.113.5:5070;transport=tcp",
    );
    h.backend_sends(b, &bye, None);
    let outs = h.drain();
    let [Output::Dial { conn: dialled, to }] = outs.as_slice() else {
        panic!("expected one Dial and nothing sent yet, got {outs:?}");
    };
    let dialled = *dialled;
    assert_eq!(
        to.to_string(),
        "203.0.113.5:5070",
        "the Request-URI's address"
    );
    h.input(Input::Connected { conn: dialled });
    let (conn, out) = h.expect_to_frontend();
    assert_eq!(conn, dialled);
    assert!(out.starts_with("BYE sip:alice@203.0.113.5:5070;transport=tcp SIP/2.0\r\n"));
    // A second request to the same hop reuses the dialled connection.
    h.backend_sends(b, &bye.replace("CSeq: 1 BYE", "CSeq: 2 BYE"), None);
    assert_eq!(h.expect_to_frontend().0, dialled);
    let stats = h.lb.stats();
    assert_eq!(
        (stats.dial_outs, stats.dial_outs_open, stats.to_frontend),
        (1, 1, 3)
    );
}

#[test]
fn a_dial_that_cannot_connect_answers_503() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let (b, forwarded, _) = established(&mut h, fe, "call-b");
    let bye = callee_bye(
        &forwarded,
        b,
        "call-b",
        "sip:alice@203.0.113.66:5060;transport=tcp",
    );
    h.backend_sends(b, &bye, None);
    let outs = h.drain();
    let [Output::Dial { conn: dialled, .. }] = outs.as_slice() else {
        panic!("expected one Dial, got {outs:?}");
    };
    let dialled = *dialled;
    h.input(Input::Closed {
        conn: dialled,
        reason: CloseReason::Error,
    });
    let (to, reply, _) = h.expect_to_backend();
    assert_eq!(to, b);
    assert!(
        reply.starts_with("SIP/2.0 503 Next Hop Unreachable\r\n"),
        "{reply}"
    );
    let stats = h.lb.stats();
    assert_eq!(
        (
            stats.dial_out_failures,
            stats.replies_503,
            stats.dial_outs_open
        ),
        (1, 1, 0)
    );
}

#[test]
fn max_forwards_is_decremented_added_and_enforced() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    // The INVITE of the harness carries 69.
    h.receive(fe, invite("mf-1", "z9hG4bKm1").as_bytes());
    assert!(h.expect_to_backend().1.contains("\r\nMax-Forwards: 68\r\n"));
    let none = invite("mf-2", "z9hG4bKm2").replace("Max-Forwards: 69\r\n", "");
    h.receive(fe, none.as_bytes());
    let (_, msg, _) = h.expect_to_backend();
    assert_eq!(msg.matches("Max-Forwards:").count(), 1);
    assert!(msg.contains("\r\nMax-Forwards: 70\r\n"), "{msg}");
    let zero = invite("mf-3", "z9hG4bKm3").replace("Max-Forwards: 69", "Max-Forwards: 0");
    h.receive(fe, zero.as_bytes());
    let (conn, reply) = h.expect_one_send();
    assert_eq!(conn, fe);
    assert!(text(&reply).starts_with("SIP/2.0 483 Too Many Hops\r\n"));
    let bad = invite("mf-4", "z9hG4bKm4").replace("Max-Forwards: 69", "Max-Forwards: x");
    h.receive(fe, bad.as_bytes());
    let (_, reply) = h.expect_one_send();
    assert!(text(&reply).starts_with("SIP/2.0 400 Bad Max-Forwards\r\n"));
    let stats = h.lb.stats();
    assert_eq!(
        (stats.new_calls, stats.replies_483, stats.replies_400),
        (2, 1, 1)
    );
}

#[test]
fn a_backend_request_back_to_the_balancer_is_a_loop() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let (b, forwarded, _) = established(&mut h, fe, "call-b");
    // A target naming the balancer itself (its listener and advertised address).
    let bye = callee_bye(
        &forwarded,
        b,
        "call-b",
        &format!("sip:alice@{LB};transport=tcp"),
    );
    h.backend_sends(b, &bye, None);
    let (to, reply, _) = h.expect_to_backend();
    assert_eq!(to, b);
    assert!(
        reply.starts_with("SIP/2.0 482 Loop Detected\r\n"),
        "{reply}"
    );
    assert_eq!((h.lb.stats().replies_482, h.lb.stats().dial_outs), (1, 0));
}

#[test]
fn a_strict_router_upstream_is_undone() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let (b, _, tag) = established(&mut h, fe, "call-s");
    // RFC 3261 §16.4: a strict router put the balancer's Record-Route URI into the
    // Request-URI and the real target (the callee's Contact) last in Route.
    let strict = in_dialog("BYE", "call-s", &tag, 2)
        .replace(
            "BYE sip:bob@198.51.100.1:5060 SIP/2.0",
            &format!("BYE sip:{LB};transport=tcp;lr;lb={tag} SIP/2.0"),
        )
        .replace(
            &format!("Route: <sip:{LB};transport=tcp;lr;lb={tag}>"),
            "Route: <sip:edge.example.com;lr>, <sip:bob@198.51.100.1:5060>",
        );
    h.receive(fe, strict.as_bytes());
    let (to, msg, _) = h.expect_to_backend();
    assert_eq!(to, b);
    assert!(
        msg.starts_with("BYE sip:bob@198.51.100.1:5060 SIP/2.0\r\n"),
        "{msg}"
    );
    assert!(
        msg.contains("\r\nRoute: <sip:edge.example.com;lr>\r\n"),
        "{msg}"
    );
    assert!(!msg.contains("lb="), "no tag left: {msg}");
}

#[test]
fn a_next_hop_named_by_host_name_is_resolved_by_the_driver_then_dialled() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let (b, forwarded, _) = established(&mut h, fe, "call-b");
    let bye = callee_bye(
        &forwarded,
        b,
        "call-b",
        "sip:alice@Caller.example.com:5070;transport=tcp",
    );
    h.backend_sends(b, &bye, None);
    let outs = h.drain();
    let [Output::Resolve { conn, host, port }] = outs.as_slice() else {
        panic!("expected one Resolve, got {outs:?}");
    };
    let conn = *conn;
    assert_eq!((host.as_str(), *port), ("Caller.example.com", Some(5070)));
    // A second message to the same name waits on the same resolution.
    h.backend_sends(b, &bye.replace("CSeq: 1 BYE", "CSeq: 2 BYE"), None);
    h.expect_nothing();
    let addrs = vec!["203.0.113.50:5070".parse().unwrap()];
    h.input(Input::Resolved { conn, addrs });
    let outs = h.drain();
    assert_eq!(
        outs,
        [Output::Dial {
            conn,
            to: "203.0.113.50:5070".parse().unwrap()
        }]
    );
    h.input(Input::Connected { conn });
    let outs = h.drain();
    let sent: Vec<String> = outs
        .iter()
        .map(|o| match o {
            Output::Send { conn: c, bytes } if *c == conn => text(bytes),
            other => panic!("expected the two BYEs on {conn:?}, got {other:?}"),
        })
        .collect();
    assert_eq!(sent.len(), 2);
    assert!(sent[0].contains("CSeq: 1 BYE") && sent[1].contains("CSeq: 2 BYE"));
}

#[test]
fn a_name_that_does_not_resolve_answers_503_and_leaves_nothing_behind() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(CALLER_PROXY);
    let (b, forwarded, _) = established(&mut h, fe, "call-b");
    let bye = callee_bye(
        &forwarded,
        b,
        "call-b",
        "sip:alice@nowhere.invalid;transport=tcp",
    );
    h.backend_sends(b, &bye, None);
    let outs = h.drain();
    let [Output::Resolve {
        conn, port: None, ..
    }] = outs.as_slice()
    else {
        panic!("expected one Resolve without a port (SRV first), got {outs:?}");
    };
    let conn = *conn;
    h.input(Input::Resolved {
        conn,
        addrs: Vec::new(),
    });
    let (to, reply, _) = h.expect_to_backend();
    assert_eq!(to, b);
    assert!(
        reply.starts_with("SIP/2.0 503 Next Hop Unreachable\r\n"),
        "{reply}"
    );
    let stats = h.lb.stats();
    assert_eq!((stats.dial_outs_open, stats.dial_out_failures), (0, 1));
    // The id is gone: a late report about it is a counted no-op.
    h.input(Input::Connected { conn });
    h.expect_nothing();
    assert_eq!(h.lb.stats().stale_inputs, 1);
}
