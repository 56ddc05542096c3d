//! A response goes back on the connection its request came on, named by the token in the
//! balancer's own Via, whatever the Vias below it claim: no peer can draw another's responses.
#![allow(clippy::unwrap_used)]

use lb_core::{BackendMode, CloseReason, Input, Output};
use lb_testkit::scenario::*;

#[test]
fn a_response_reaches_its_requests_connection_not_the_one_claiming_its_via() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    // The victim names its listening port in its Via and asks no rport, as proxies do.
    let victim = h.frontend("203.0.113.5:40000");
    let invite = invite("call-v", "z9hG4bKv").replace(";rport", "");
    h.receive(victim, invite.as_bytes());
    let (_, forwarded, _) = h.expect_to_backend();
    // The attacker, on the same IP, claims the same sent-by in a request of its own.
    let attacker = h.frontend("203.0.113.5:40001");
    let claim = "OPTIONS sip:x@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP proxy.example.com:5060;branch=z9hG4bKatt\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:x@example.com>\r\n\
         Call-ID: att-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    h.receive(attacker, claim.as_bytes());
    h.expect_to_backend();
    for status in ["100 Trying", "180 Ringing", "200 OK"] {
        h.backend_sends(0, &response_to(&forwarded, status), None);
        let (conn, out) = h.expect_to_frontend();
        assert_eq!(conn, victim, "{status} went to {conn:?}");
        assert!(out.starts_with(&format!("SIP/2.0 {status}\r\n")));
        assert_eq!(
            out.matches("Via:").count(),
            1,
            "the balancer's Via is popped: {out}"
        );
    }
}

#[test]
fn a_response_whose_connection_closed_is_dialled_to_its_received_address() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let gone = h.frontend("203.0.113.5:40000");
    let _neighbour = h.frontend("203.0.113.5:40001");
    h.receive(gone, invite("call-c", "z9hG4bKc").as_bytes());
    let (_, forwarded, _) = h.expect_to_backend();
    h.input(Input::Closed {
        conn: gone,
        reason: CloseReason::PeerClosed,
    });
    // RFC 3261 §18.2.2 and RFC 3581: a new connection to `received` and `rport` (which the
    // balancer stamped from the closed connection's source), not the neighbour on that IP.
    h.backend_sends(0, &response_to(&forwarded, "180 Ringing"), None);
    let outs = h.drain();
    let [Output::Dial { conn, to }] = outs.as_slice() else {
        panic!("expected a Dial and nothing sent to the neighbour, got {outs:?}");
    };
    assert_eq!(to.to_string(), "203.0.113.5:40000");
    let conn = *conn;
    h.input(Input::Connected { conn });
    let (to, out) = h.expect_to_frontend();
    assert_eq!(to, conn);
    assert!(out.starts_with("SIP/2.0 180 Ringing\r\n"));
}

#[test]
fn a_response_with_a_forged_connection_token_goes_nowhere_else() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend("203.0.113.5:40000");
    let other = h.frontend("203.0.113.9:40000");
    h.receive(fe, invite("call-f", "z9hG4bKf").as_bytes());
    let (_, forwarded, _) = h.expect_to_backend();
    // A backend (or whatever wrote this) names another connection's slot with a bad MAC: the
    // token fails, and the response follows the frontend's own Via, to `fe`.
    let own_via = forwarded.lines().find(|l| l.starts_with("Via:")).unwrap();
    let token = own_via.split(";lbc=").nth(1).unwrap();
    let forged_via = own_via.replace(token, "1.2.0000000000000000");
    let response = response_to(&forwarded, "180 Ringing").replace(own_via, &forged_via);
    h.backend_sends(0, &response, None);
    let (conn, _) = h.expect_to_frontend();
    assert_eq!(conn, fe);
    assert_ne!(conn, other);
}

// The response-time figures come from the send time in the balancer's own Via: exact to the
// microsecond of the core's clock, the first response timed once, the final once, and a
// backend that edits the time is not timed at all.
#[test]
fn response_times_are_read_back_from_the_balancers_via() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend("203.0.113.5:40000");
    h.receive(fe, invite("call-t", "z9hG4bKt").as_bytes());
    let (_, forwarded, _) = h.expect_to_backend();
    for (after_ms, status) in [(3, "100 Trying"), (5, "180 Ringing")] {
        h.advance(std::time::Duration::from_millis(after_ms));
        h.backend_sends(0, &response_to(&forwarded, status), None);
        h.expect_to_frontend();
    }
    h.advance(std::time::Duration::from_millis(12));
    let tag = h.answer_tag(0, &forwarded);
    let b = &h.lb.figures().backends[0];
    assert_eq!(b.responses, [2, 1, 0, 0, 0, 0]);
    assert_eq!(
        (b.first_response.count, b.first_response.sum_us),
        (1, 3_000)
    );
    assert_eq!(
        (b.final_response.count, b.final_response.sum_us),
        (1, 20_000)
    );
    assert_eq!(
        h.lb.figures().requests[0][0],
        1,
        "one INVITE from a frontend"
    );

    // A forged send time fails the MAC: counted by class, timed by nobody.
    h.receive(fe, in_dialog("BYE", "call-t", &tag, 2).as_bytes());
    let (_, bye, _) = h.expect_to_backend();
    let own_via = bye.lines().find(|l| l.starts_with("Via:")).unwrap();
    let token = own_via.split(";lbc=").nth(1).unwrap();
    let mut parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 4, "slot.generation.sent.mac: {token}");
    parts[2] = "0";
    let forged = own_via.replace(token, &parts.join("."));
    h.backend_sends(
        0,
        &response_to(&bye, "200 OK").replace(own_via, &forged),
        None,
    );
    // Where it goes is the forged-token case above; here only the figures matter.
    h.drain();
    let b = &h.lb.figures().backends[0];
    assert_eq!(b.responses[1], 2);
    assert_eq!(
        b.final_response.count, 1,
        "the forged time was not observed"
    );
}
