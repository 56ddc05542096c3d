//! The contract catches what it promises to: each rule broken once, on ids a real balancer
//! handed out, and the scenario helpers refuse an output a test did not name.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use lb_core::{BackendMode, CloseReason, ConnId, Input, Output};
use lb_testkit::scenario::{config, invite, Harness};
use lb_testkit::{Contract, State};

fn send(conn: ConnId, text: &'static str) -> Output {
    Output::Send {
        conn,
        bytes: Bytes::from_static(text.as_bytes()),
    }
}

const PONG: &str = "\r\n";

/// A harness with one backend and one frontend; returns them.
fn setup() -> (Harness, ConnId, ConnId) {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend("203.0.113.5:40000");
    let be = h.backends[0].unwrap();
    (h, fe, be)
}

#[test]
fn send_only_on_open_connections_and_in_whole_frames() {
    let (mut h, fe, be) = setup();
    let c = &mut h.contract;
    assert!(c.output(&send(fe, PONG)).is_ok());
    assert!(
        c.output(&send(be, "\r\n\r\n")).is_err(),
        "no ping to a backend"
    );
    assert!(
        c.output(&send(fe, "INVITE sip:x SIP/2.0\r\n")).is_err(),
        "a cut message"
    );
    assert!(c.output(&send(fe, "")).is_err(), "an empty Send");
    let mut closing = c.clone();
    closing.output(&Output::Close { conn: fe }).unwrap();
    assert_eq!(closing.state(fe), Some(State::Closing));
    assert!(closing.output(&send(fe, PONG)).is_err(), "Send after Close");
    assert!(
        closing.output(&Output::Close { conn: fe }).is_err(),
        "a second Close"
    );
    closing.input(&Input::Closed {
        conn: fe,
        reason: CloseReason::Requested,
    });
    assert!(
        closing.output(&send(fe, PONG)).is_err(),
        "Send after Closed"
    );
    assert!(
        closing.output(&Output::Close { conn: fe }).is_err(),
        "Close after Closed"
    );
    assert_eq!(c.link(fe).unwrap().sent, vec![Bytes::from_static(b"\r\n")]);
}

#[test]
fn connects_take_fresh_ids_and_the_configured_address() {
    let (mut h, fe, be) = setup();
    let to = "198.51.100.1:5060".parse().unwrap();
    let backend = h.backend_id(0);
    let c = &mut h.contract;
    assert!(
        c.output(&Output::Connect {
            conn: fe,
            backend,
            to
        })
        .is_err(),
        "a used id"
    );
    assert!(
        c.output(&Output::Dial { conn: be, to }).is_err(),
        "a used id"
    );
    // A fresh id, from a second balancer-made connection.
    let fresh = h.frontend("203.0.113.6:40000");
    let mut c = Contract::new(&config(1, BackendMode::Plain).validate().unwrap());
    let other = "198.51.100.9:5060".parse().unwrap();
    assert!(
        c.output(&Output::Connect {
            conn: fresh,
            backend,
            to: other
        })
        .is_err(),
        "not a configured backend"
    );
    c.output(&Output::Connect {
        conn: fresh,
        backend,
        to,
    })
    .unwrap();
    assert!(
        c.output(&send(fresh, PONG)).is_err(),
        "Send before Connected"
    );
    assert!(
        c.output(&Output::Connect {
            conn: be,
            backend,
            to
        })
        .is_err(),
        "a second connection for a backend whose first is connecting"
    );
}

#[test]
fn a_new_id_never_takes_a_slot_before_its_closed() {
    // Two ids of one slot, as the core hands them out: the second only after the first's
    // Closed.
    let (mut h, fe, _) = setup();
    h.input(Input::Closed {
        conn: fe,
        reason: CloseReason::PeerClosed,
    });
    let _ = h.drain();
    let next = h.frontend("203.0.113.7:40000");
    assert_eq!(next.slot(), fe.slot(), "the core reused the slot");
    assert_ne!(next, fe);
    // A contract that never saw that Closed must refuse the second id, in every way a new id
    // can come.
    let peer = "203.0.113.5:40000".parse().unwrap();
    let fresh = || {
        let mut c = Contract::new(&config(1, BackendMode::Plain).validate().unwrap());
        c.accepted(fe, peer).unwrap();
        c
    };
    assert!(fresh().accepted(next, peer).is_err(), "accept");
    let dial = Output::Dial {
        conn: next,
        to: peer,
    };
    assert!(fresh().output(&dial).is_err(), "Dial");
    let resolve = Output::Resolve {
        conn: next,
        host: "proxy.example".to_owned(),
        port: Some(5060),
    };
    assert!(fresh().output(&resolve).is_err(), "Resolve");
    let mut c = fresh();
    c.input(&Input::Closed {
        conn: fe,
        reason: CloseReason::PeerClosed,
    });
    c.accepted(next, peer).unwrap();
}

#[test]
fn a_deadline_left_due_after_a_timeout_is_a_violation() {
    let now = Instant::now();
    assert!(Contract::timed_out(now, None).is_ok());
    assert!(Contract::timed_out(now, Some(now + Duration::from_millis(1))).is_ok());
    assert!(Contract::timed_out(now, Some(now)).is_err());
}

#[test]
#[should_panic(expected = "expected one Send and nothing else")]
fn expect_one_send_refuses_a_forward_that_comes_with_a_close() {
    let (mut h, fe, _) = setup();
    // The forward of an INVITE, then a Close nobody asked for: the harness must see it. The
    // core would never close here, so the test closes through the core's own API: a second
    // connection that loses its framing in the same drain.
    let bad = h.frontend("203.0.113.9:1234");
    h.receive(fe, invite("call-1", "z9hG4bK1").as_bytes());
    h.receive(
        bad,
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: banana\r\n\r\n",
    );
    let _ = h.expect_to_backend();
}
