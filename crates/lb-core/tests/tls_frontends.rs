//! TLS frontends as the core sees them: plaintext, with the transport named in what the
//! balancer writes toward them (RFC 3261 §26.2; the driver runs TLS itself).
#![allow(clippy::unwrap_used)]

use lb_core::BackendMode;
use lb_testkit::scenario::*;

const LB_TLS: &str = "192.0.2.10:5061";

#[test]
fn a_tls_frontend_sees_a_tls_record_route_and_a_tls_via() {
    let mut cfg = config(1, BackendMode::Plain);
    cfg.tls_listeners = vec![LB_TLS.parse().unwrap()];
    let mut h = Harness::new(cfg);
    let (tls_listener, addr) = h.lb.listeners().nth(1).unwrap();
    assert!(h.lb.is_tls_listener(tls_listener));
    assert_eq!(addr.to_string(), LB_TLS);
    let fe = h.accept(tls_listener, "203.0.113.5:40000");
    let invite = invite("call-t", "z9hG4bKt").replace("SIP/2.0/TCP proxy", "SIP/2.0/TLS proxy");
    h.receive(fe, invite.as_bytes());
    let (b, forwarded, _) = h.expect_to_backend();
    // The backend leg is TCP: the entry it sees says so.
    let rr = forwarded
        .lines()
        .find(|l| l.starts_with("Record-Route:"))
        .unwrap();
    assert!(
        rr.starts_with(&format!("Record-Route: <sip:{LB};transport=tcp;lr;lb=b")),
        "{rr}"
    );
    h.backend_sends(b, &response_to(&forwarded, "200 OK"), None);
    let (conn, ok) = h.expect_to_frontend();
    assert_eq!(conn, fe);
    let rr = ok.lines().find(|l| l.starts_with("Record-Route:")).unwrap();
    assert!(
        rr.starts_with(&format!(
            "Record-Route: <sip:{LB_TLS};transport=tls;lr;lb=0.1."
        )),
        "the caller's leg is TLS: {rr}"
    );
    // The callee's BYE toward the TLS caller carries the balancer's TLS Via.
    let route = forwarded
        .lines()
        .find(|l| l.starts_with("Record-Route:"))
        .unwrap()
        .replacen("Record-Route:", "Route:", 1);
    let bye = format!(
        "BYE sip:alice@203.0.113.5:5061;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TCP 198.51.100.1:5060;branch=z9hG4bKbye\r\n{route}\r\n\
         From: <sip:bob@example.com>;tag=b1\r\nTo: <sip:alice@example.com>;tag=a1\r\n\
         Call-ID: call-t\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    h.backend_sends(b, &bye, None);
    let (conn, out) = h.expect_to_frontend();
    assert_eq!(conn, fe);
    let via = out.lines().find(|l| l.starts_with("Via:")).unwrap();
    assert!(
        via.starts_with(&format!("Via: SIP/2.0/TLS {LB_TLS};branch=z9hG4bK")),
        "{via}"
    );
}
