//! A backend whose connections keep failing soon after they come up (it breaks framing or
//! resets on every message) is held down longer each time, instead of coming back after the
//! shortest backoff to take (and lose) every n-th new call; one that stays up a while is
//! forgiven (issue 15).
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lb_core::{BackendMode, CloseReason, Input, Output};
use lb_testkit::scenario::*;

/// Backend 0 breaks framing; returns how long the core waits before reconnecting it.
fn break_framing_and_wait(h: &mut Harness) -> Duration {
    let conn = h.backends[0].unwrap();
    h.receive(conn, b"SIP/2.0 200 OK\r\nContent-Length: x\r\n\r\n");
    let outs = h.drain();
    assert!(
        outs.contains(&Output::Close { conn }),
        "a backend that breaks framing is closed: {outs:?}"
    );
    h.backends[0] = None;
    h.input(Input::Closed {
        conn,
        reason: CloseReason::Requested,
    });
    h.drain();
    let wait = h.lb.poll_timeout().unwrap() - h.now;
    h.now += wait;
    h.input(Input::Timeout);
    let outs = h.drain();
    assert!(
        outs.iter().any(|o| matches!(o, Output::Connect { .. })),
        "reconnects at the deadline: {outs:?}"
    );
    h.connect_backend(0);
    wait
}

#[test]
fn a_backend_that_breaks_framing_again_and_again_is_held_down_longer_each_time() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    // reconnect-min 100 ms, with jitter in [half, full] of each step.
    let waits: Vec<Duration> = (0..4).map(|_| break_framing_and_wait(&mut h)).collect();
    for (k, wait) in waits.iter().enumerate() {
        let full = Duration::from_millis(100) * (1 << k);
        assert!(
            *wait >= full / 2 && *wait <= full,
            "fault {k}: waited {wait:?}, want within [{:?}, {full:?}]",
            full / 2
        );
    }
    assert_eq!(h.lb.stats().backend_quarantines, 3);
    // Up for longer than the clean period: the next fault starts from the shortest hold.
    h.advance(Duration::from_secs(31));
    let wait = break_framing_and_wait(&mut h);
    assert!(
        wait <= Duration::from_millis(100),
        "forgiven: waited {wait:?}"
    );
    assert_eq!(h.lb.stats().backend_quarantines, 3);
}
