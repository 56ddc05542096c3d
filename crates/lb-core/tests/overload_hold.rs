//! Overload without collapse (issue 15, item 6): the drivers report output queues crossing
//! their marks (`Input::OutputQueue`), and the core pushes back instead of failing over. A
//! backend over the mark is held (no new calls, its calls stay on it); with every backend held
//! new calls get 503 with Retry-After; a frontend over the mark is sent nothing, so the shared
//! backend connection never waits for it; a connection that stays over the mark for the stall
//! timeout is closed, a burst is not.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lb_core::{BackendMode, Event, Input, Output, QueueLevel, TimeoutCause};
use lb_testkit::scenario::*;

const PROXY: &str = "203.0.113.5:40000";
const OTHER_PROXY: &str = "203.0.113.6:40000";

fn level(h: &mut Harness, conn: lb_core::ConnId, level: QueueLevel) {
    h.input(Input::OutputQueue { conn, level });
}

#[test]
fn a_backend_over_the_high_water_mark_is_held_and_keeps_its_calls() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-a", "z9hG4bKa").as_bytes());
    let (b, fwd, _) = h.expect_to_backend();
    assert_eq!(b, 0, "round robin starts at the first backend");
    let tag = h.answer_tag(0, &fwd);
    h.events.clear();

    let b0 = h.backends[0].unwrap();
    level(&mut h, b0, QueueLevel::High);
    assert!(h.drain().is_empty(), "a hold sends nothing");
    let held = Event::BackendQueueHeld {
        backend: h.backend_id(0),
        held: true,
    };
    assert_eq!(h.events, [held]);
    let status: Vec<(bool, bool)> =
        h.lb.backend_status()
            .map(|s| (s.up, s.queue_held))
            .collect();
    assert_eq!(status, [(true, true), (true, false)], "held, not down");
    assert_eq!(h.lb.stats().backends_up, 2);
    assert_eq!(h.lb.stats().backends_queue_held, 1);

    // New calls go to the backend with room, every one of them.
    for call in ["call-b", "call-c", "call-d"] {
        h.receive(fe, invite(call, &format!("z9hG4bK{call}")).as_bytes());
        let (b, fwd, _) = h.expect_to_backend();
        assert_eq!(b, 1, "{call} skips the held backend: {fwd}");
    }
    // The established call stays where it is: no failover for a full queue.
    h.receive(fe, in_dialog("ACK", "call-a", &tag, 1).as_bytes());
    let (b, ack, _) = h.expect_to_backend();
    assert_eq!(b, 0, "{ack}");
    h.receive(fe, in_dialog("BYE", "call-a", &tag, 2).as_bytes());
    let (b, bye, _) = h.expect_to_backend();
    assert_eq!(b, 0, "{bye}");
    assert!(
        bye.starts_with("BYE sip:bob@198.51.100.1:5060 SIP/2.0\r\n"),
        "{bye}"
    );

    // Both held: the caller is told to come back later, and nothing reaches a backend.
    let b1 = h.backends[1].unwrap();
    level(&mut h, b1, QueueLevel::High);
    h.drain();
    h.receive(fe, invite("call-e", "z9hG4bKe").as_bytes());
    let (conn, reply) = h.expect_to_frontend();
    assert_eq!(conn, fe);
    let to = reply
        .lines()
        .find(|l| l.starts_with("To: "))
        .unwrap()
        .to_owned();
    assert!(to.starts_with("To: <sip:bob@example.com>;tag=lb"), "{to}");
    assert_eq!(
        reply,
        format!(
            "SIP/2.0 503 Backends Overloaded\r\n\
             Via: SIP/2.0/TCP proxy.example.com:5060;branch=z9hG4bKe;rport\r\n\
             From: <sip:alice@example.com>;tag=a1\r\n\
             {to}\r\n\
             Call-ID: call-e\r\n\
             CSeq: 1 INVITE\r\n\
             Retry-After: 5\r\n\
             Content-Length: 0\r\n\r\n"
        )
    );

    // Below the low-water mark the backend takes new calls again.
    h.events.clear();
    level(&mut h, b0, QueueLevel::Low);
    assert!(h.drain().is_empty());
    let released = Event::BackendQueueHeld {
        backend: h.backend_id(0),
        held: false,
    };
    assert_eq!(h.events, [released]);
    h.receive(fe, invite("call-f", "z9hG4bKf").as_bytes());
    assert_eq!(h.expect_to_backend().0, 0);

    let s = h.lb.stats();
    assert_eq!(
        (
            s.backend_queue_holds,
            s.backends_queue_held,
            s.overload_refused,
            s.replies_503,
            s.to_backup,
            s.backend_failures,
            s.new_calls,
        ),
        (2, 1, 1, 1, 0, 0, 5),
        "holds, held now, refused, 503s, failovers, failures, new calls"
    );
    assert!(h.closed.is_empty(), "no connection closed: {:?}", h.closed);
}

#[test]
fn a_frontend_that_does_not_read_is_sent_nothing_and_the_backend_goes_on() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let slow = h.frontend(PROXY);
    let fast = h.frontend(OTHER_PROXY);
    h.receive(slow, invite("call-slow", "z9hG4bKs").as_bytes());
    let (_, to_slow, _) = h.expect_to_backend();
    h.receive(fast, invite("call-fast", "z9hG4bKf").as_bytes());
    let (_, to_fast, _) = h.expect_to_backend();

    h.events.clear();
    level(&mut h, slow, QueueLevel::High);
    assert!(h.drain().is_empty());
    // One read from the shared backend connection carries a response for each frontend.
    let both = format!(
        "{}{}",
        response_to(&to_slow, "180 Ringing"),
        response_to(&to_fast, "180 Ringing")
    );
    h.backend_sends(0, &both, None);
    let outs = h.drain();
    assert_eq!(
        outs.len(),
        1,
        "only the reading frontend gets its message: {outs:?}"
    );
    let Output::Send { conn, bytes } = &outs[0] else {
        panic!("{outs:?}")
    };
    assert_eq!(*conn, fast);
    let sent = text(bytes);
    assert!(sent.starts_with("SIP/2.0 180 Ringing\r\n"), "{sent}");
    assert!(sent.contains("Call-ID: call-fast\r\n"), "{sent}");
    assert_eq!(h.lb.stats().frontend_stall_drops, 1);
    assert!(
        h.events.is_empty(),
        "a drop for a stalled frontend is counted, not an event"
    );

    // Reading again: it gets what comes next.
    level(&mut h, slow, QueueLevel::Low);
    h.backend_sends(0, &response_to(&to_slow, "200 OK"), None);
    let (conn, ok) = h.expect_to_frontend();
    assert_eq!(conn, slow);
    assert!(ok.contains("Call-ID: call-slow\r\n"), "{ok}");
    assert_eq!(h.lb.stats().frontend_stall_drops, 1);
    assert!(h.closed.is_empty());
}

#[test]
fn a_burst_read_in_time_closes_nothing_but_a_stall_does() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.events.clear();
    let stall = Duration::from_secs(32);
    // A burst: over the mark, drained again before the stall timeout.
    level(&mut h, fe, QueueLevel::High);
    h.advance(stall - Duration::from_secs(1));
    level(&mut h, fe, QueueLevel::Low);
    h.advance(Duration::from_secs(60));
    assert!(
        h.drain().is_empty(),
        "a burst alone never closes a connection"
    );
    assert!(h.closed.is_empty());

    // Over the mark and never drained: closed at the stall timeout, not before.
    level(&mut h, fe, QueueLevel::High);
    h.advance(stall - Duration::from_millis(1));
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(1));
    assert_eq!(h.drain(), [Output::Close { conn: fe }]);
    assert_eq!(
        h.events,
        [Event::TimedOut {
            conn: fe,
            cause: TimeoutCause::PeerNotReading
        }]
    );
    assert_eq!(h.lb.stats().stall_closes, 1);
}

#[test]
fn a_repeated_report_does_not_restart_the_stall_clock() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let b0 = h.backends[0].unwrap();
    level(&mut h, b0, QueueLevel::High);
    h.advance(Duration::from_secs(20));
    level(&mut h, b0, QueueLevel::High);
    h.advance(Duration::from_secs(12));
    assert_eq!(h.drain(), [Output::Close { conn: b0 }]);
    assert_eq!(
        h.lb.stats().backend_queue_holds,
        1,
        "one hold, reported twice"
    );
    assert_eq!(h.lb.stats().stall_closes, 1);
}

#[test]
fn a_paused_frontend_is_not_closed_for_the_half_message_the_balancer_did_not_read() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.events.clear();
    // Part of a message, then the driver stops reading it (its queue is over the mark).
    h.receive(fe, b"OPTIONS sip:service@192.0.2.10 SIP/2.0\r\nVia: ");
    level(&mut h, fe, QueueLevel::High);
    h.advance(Duration::from_secs(11)); // past the 10 s partial timeout
    assert!(
        h.drain().is_empty(),
        "not a slowloris: the balancer stopped reading"
    );
    // Read again: the partial timeout counts from the moment it can send again.
    level(&mut h, fe, QueueLevel::Low);
    h.advance(Duration::from_secs(9));
    assert!(h.drain().is_empty());
    h.advance(Duration::from_secs(11));
    assert_eq!(h.drain(), [Output::Close { conn: fe }]);
    assert_eq!(
        h.events,
        [Event::TimedOut {
            conn: fe,
            cause: TimeoutCause::PartialMessage
        }]
    );
    assert_eq!(h.lb.stats().stall_closes, 0);
}
