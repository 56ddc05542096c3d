//! The core gives up on the driver's slow work: a connect that never completes and a close
//! that never finishes flushing end in `Output::Abort` (issue 11), each output checked whole.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lb_core::{
    BackendMode, CloseReason, Event, Input, Output, CLOSE_LINGER_DEFAULT, CONNECT_TIMEOUT_DEFAULT,
};
use lb_testkit::scenario::*;

/// Feeds timeouts at each deadline until the core asks for a connection to backend 0.
fn until_reconnect(h: &mut Harness) -> lb_core::ConnId {
    for _ in 0..64 {
        h.now = h.lb.poll_timeout().unwrap();
        h.input(Input::Timeout);
        for out in h.drain() {
            if let Output::Connect { conn, .. } = out {
                return conn;
            }
        }
    }
    panic!("backend 0 was never reconnected");
}

/// Serves every deadline before `at` (probes, expiries), returning their outputs, then moves
/// the clock to `at`.
fn run_until(h: &mut Harness, at: std::time::Instant) -> Vec<Output> {
    let mut outs = Vec::new();
    while let Some(due) = h.lb.poll_timeout().filter(|d| *d < at) {
        h.now = due;
        h.input(Input::Timeout);
        outs.extend(h.drain());
    }
    h.now = at;
    outs
}

/// Serves deadlines until the core closes `conn`.
fn until_closed(h: &mut Harness, conn: lb_core::ConnId) {
    for _ in 0..64 {
        h.now = h.lb.poll_timeout().unwrap();
        h.input(Input::Timeout);
        if h.drain().contains(&Output::Close { conn }) {
            return;
        }
    }
    panic!("{conn} was never closed");
}

#[test]
fn a_connect_that_never_completes_is_given_up_and_fails_the_backend() {
    // A configured deadline, not the default, is the one the core keeps.
    let connect_timeout = Duration::from_millis(1700);
    assert_ne!(connect_timeout, CONNECT_TIMEOUT_DEFAULT);
    let mut h = Harness::new(lb_core::Config {
        connect_timeout,
        ..config(1, BackendMode::Plain)
    });
    h.kill_backend(0);
    let conn = until_reconnect(&mut h);
    let failures = h.lb.stats().backend_failures;
    let asked = h.now;
    // Until the connect deadline the core waits for the driver.
    let before = run_until(&mut h, asked + connect_timeout);
    assert!(
        before.iter().all(|o| !matches!(o, Output::Abort { .. })),
        "{before:?}"
    );
    h.expect(Input::Timeout, &[Output::Abort { conn }]);
    // A Connected that crossed the Abort is stale: the core no longer waits for it.
    let stale = h.lb.stats().stale_inputs;
    h.expect(Input::Connected { conn }, &[]);
    assert_eq!(h.lb.stats().stale_inputs, stale + 1);
    // The driver's Closed fails the backend as a refused connect does, and it reconnects.
    h.expect(
        Input::Closed {
            conn,
            reason: CloseReason::Error,
        },
        &[],
    );
    assert_eq!(h.lb.stats().backend_failures, failures + 1);
    let again = until_reconnect(&mut h);
    assert_ne!(again, conn);
}

#[test]
fn a_connect_that_completes_in_time_is_not_given_up() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    h.kill_backend(0);
    let conn = until_reconnect(&mut h);
    let asked = h.now;
    h.now = asked + CONNECT_TIMEOUT_DEFAULT / 2;
    h.connect_backend(0);
    let mut outs = run_until(&mut h, asked + CONNECT_TIMEOUT_DEFAULT);
    h.input(Input::Timeout);
    outs.extend(h.drain());
    assert!(
        !outs.contains(&Output::Abort { conn }),
        "a connected backend was aborted: {outs:?}"
    );
}

#[test]
fn a_close_that_never_finishes_is_dropped_unflushed_after_the_linger() {
    let close_linger = Duration::from_millis(2300);
    assert_ne!(close_linger, CLOSE_LINGER_DEFAULT);
    let mut h = Harness::new(lb_core::Config {
        close_linger,
        ..config(1, BackendMode::Plain)
    });
    let fe = h.frontend("203.0.113.5:40000");
    // Idle until its timeout: the core closes it.
    until_closed(&mut h, fe);
    assert!(
        h.events
            .iter()
            .any(|e| matches!(e, Event::TimedOut { conn, .. } if *conn == fe)),
        "{:?}",
        h.events
    );
    let closed_at = h.now;
    // The driver never reports it closed (a peer that stops reading): at the linger the core
    // tells it to drop the connection, and nothing else.
    let before = run_until(&mut h, closed_at + close_linger);
    assert!(
        before.iter().all(|o| !matches!(o, Output::Abort { .. })),
        "{before:?}"
    );
    h.expect(Input::Timeout, &[Output::Abort { conn: fe }]);
    h.expect(
        Input::Closed {
            conn: fe,
            reason: CloseReason::Requested,
        },
        &[],
    );
    assert_eq!(h.lb.stats().frontends_open, 0);
}

#[test]
fn a_close_reported_in_time_is_not_dropped() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend("203.0.113.5:40000");
    until_closed(&mut h, fe);
    let closed_at = h.now;
    h.expect(
        Input::Closed {
            conn: fe,
            reason: CloseReason::Requested,
        },
        &[],
    );
    // Its linger deadline passes without an Abort for a connection that is gone.
    let mut outs = run_until(&mut h, closed_at + CLOSE_LINGER_DEFAULT);
    h.input(Input::Timeout);
    outs.extend(h.drain());
    assert!(
        !outs.contains(&Output::Abort { conn: fe }),
        "a closed connection was aborted: {outs:?}"
    );
}

#[test]
fn a_reload_keeps_the_connect_timeout_the_queue_is_ordered_by() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    // A reload asking for a shorter timeout: it takes effect at a restart only, since a
    // shorter deadline would jump the queue of those already armed.
    let reloaded = lb_core::Config {
        connect_timeout: CONNECT_TIMEOUT_DEFAULT / 3,
        ..config(1, BackendMode::Plain)
    };
    h.input(Input::Reload(Box::new(reloaded.validate().unwrap())));
    h.drain();
    h.kill_backend(0);
    let conn = until_reconnect(&mut h);
    let asked = h.now;
    let before = run_until(&mut h, asked + CONNECT_TIMEOUT_DEFAULT);
    assert!(
        !before.contains(&Output::Abort { conn }),
        "aborted at the reloaded timeout: {before:?}"
    );
    h.expect(Input::Timeout, &[Output::Abort { conn }]);
}
