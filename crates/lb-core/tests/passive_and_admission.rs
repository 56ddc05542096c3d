//! Passive health and the frontend connection limits (issue 15 items 2 and 3): a backend
//! leaving INVITEs without any response is taken out within the unanswered timeout, held, and
//! let back; at the connection limit silent connections are evicted, a source is held to its
//! own limit, and the reserve is for new sources.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lb_core::{BackendMode, CloseReason, Event, Input, Output};
use lb_testkit::scenario::*;

const PROXY: &str = "203.0.113.7:5060";

/// Sends INVITE `n` from `fe` and returns the backend it went to and the forwarded text.
fn call(h: &mut Harness, fe: lb_core::ConnId, n: usize) -> (usize, String) {
    h.receive(
        fe,
        invite(&format!("pa-{n}"), &format!("z9hG4bKpa{n}")).as_bytes(),
    );
    let (b, fwd, _) = h.expect_to_backend();
    (b, fwd)
}

#[test]
fn a_backend_leaving_invites_unanswered_is_taken_out_held_and_let_back() {
    let mut cfg = config(2, BackendMode::Plain);
    cfg.passive.unanswered_timeout = Duration::from_secs(2);
    cfg.passive.unanswered_to_down = 3;
    cfg.passive.hold = Duration::from_secs(10);
    let mut h = Harness::new(cfg);
    let fe = h.frontend(PROXY);
    let b1 = h.backend_id(1);
    // Round robin: backend 0 answers its calls with 100 Trying, backend 1 stays silent.
    let mut n = 0;
    let mut silent = 0;
    while silent < 3 {
        let (b, fwd) = call(&mut h, fe, n);
        n += 1;
        if b == 0 {
            h.backend_sends(0, &response_to(&fwd, "100 Trying"), None);
            h.expect_to_frontend();
        } else {
            silent += 1;
        }
        h.advance(Duration::from_millis(100));
    }
    assert!(
        h.lb.is_backend_up(b1),
        "judged only when the timeout passes"
    );
    // The third silent INVITE was sent at most 100 ms ago: within its 2 s it is out.
    h.advance(Duration::from_millis(1_900));
    h.drain();
    assert!(!h.lb.is_backend_up(b1));
    assert!(h.events.contains(&Event::BackendDown(b1)));
    let s = h.lb.stats();
    assert_eq!((s.unanswered_invites, s.passive_ejections), (3, 1));
    assert_eq!(s.backends_up, 1);
    for _ in 0..4 {
        let (b, fwd) = call(&mut h, fe, n);
        n += 1;
        assert_eq!(b, 0, "new calls avoid the silent backend");
        h.backend_sends(0, &response_to(&fwd, "100 Trying"), None);
        h.expect_to_frontend();
    }
    // After the hold it is back, and a silent run takes it out for twice as long.
    h.advance(Duration::from_secs(10));
    h.drain();
    assert!(h.lb.is_backend_up(b1), "back after the hold");
    assert!(h.events.ends_with(&[Event::BackendUp(b1)]));
    let mut silent = 0;
    while silent < 3 {
        let (b, fwd) = call(&mut h, fe, n);
        n += 1;
        if b == 0 {
            h.backend_sends(0, &response_to(&fwd, "100 Trying"), None);
            h.expect_to_frontend();
        } else {
            silent += 1;
        }
    }
    h.advance(Duration::from_secs(2));
    assert!(!h.lb.is_backend_up(b1));
    h.advance(Duration::from_secs(10));
    assert!(!h.lb.is_backend_up(b1), "the second hold is 20 s");
    h.advance(Duration::from_secs(10));
    assert!(h.lb.is_backend_up(b1));
    // It answers now: its record is clean, one silent INVITE is no pattern.
    loop {
        let (b, fwd) = call(&mut h, fe, n);
        n += 1;
        h.backend_sends(b, &response_to(&fwd, "180 Ringing"), None);
        h.expect_to_frontend();
        if b == 1 {
            break;
        }
    }
    assert_eq!(h.lb.stats().passive_ejections, 2);
    // Backend 0 has answered all along and was never judged.
    assert!(h.lb.is_backend_up(h.backend_id(0)));
    assert_eq!(h.lb.stats().unanswered_invites, 6);
}

#[test]
fn a_slow_backend_answering_older_invites_is_not_taken_out_a_silent_one_is() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let b0 = h.backend_id(0);
    let fe = h.frontend(PROXY);
    let (_, first) = call(&mut h, fe, 0);
    h.advance(Duration::from_millis(1_500));
    for n in 1..=3 {
        call(&mut h, fe, n);
    }
    // The backlog's oldest INVITE gets its answer late: the backend is alive.
    h.advance(Duration::from_millis(100));
    h.backend_sends(0, &response_to(&first, "100 Trying"), None);
    h.expect_to_frontend();
    h.advance(Duration::from_secs(3));
    assert!(h.lb.is_backend_up(b0), "slow, not stalled");
    assert_eq!(h.lb.stats().unanswered_invites, 3);
    // Three more, and nothing at all from it since: stalled.
    for n in 4..=6 {
        call(&mut h, fe, n);
    }
    h.advance(Duration::from_secs(2));
    assert!(!h.lb.is_backend_up(b0));
    assert_eq!(h.lb.stats().passive_ejections, 1);
}

#[test]
fn passive_health_off_leaves_a_silent_backend_in() {
    let mut cfg = config(1, BackendMode::Plain);
    cfg.passive.unanswered_timeout = Duration::ZERO;
    let mut h = Harness::new(cfg);
    let fe = h.frontend(PROXY);
    for n in 0..5 {
        call(&mut h, fe, n);
    }
    h.advance(Duration::from_secs(40));
    assert!(h.lb.is_backend_up(h.backend_id(0)));
    assert_eq!(h.lb.stats().unanswered_invites, 0);
}

fn closed_now(h: &mut Harness) -> Vec<lb_core::ConnId> {
    let closes: Vec<_> = h
        .drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Close { conn } => Some(conn),
            _ => None,
        })
        .collect();
    for conn in &closes {
        h.input(Input::Closed {
            conn: *conn,
            reason: CloseReason::Requested,
        });
    }
    h.drain();
    closes
}

#[test]
fn at_the_limit_silent_connections_make_room_and_busy_ones_stay() {
    let mut cfg = config(1, BackendMode::Plain);
    cfg.limits.frontends_max = 4;
    cfg.limits.frontends_reserve_percent = 25; // 1 of 4
    cfg.limits.frontend_evict_idle = Duration::from_secs(60);
    let mut h = Harness::new(cfg);
    // A proxy with calls and three flood connections that never send anything, each from
    // its own address (the per-source limit is not what is tested here).
    let proxy = h.frontend(PROXY);
    call(&mut h, proxy, 0);
    let flood: Vec<_> = (1..=3)
        .map(|i| h.frontend(&format!("203.0.113.{i}:4000")))
        .collect();
    assert!(closed_now(&mut h).is_empty());
    // The limit is reached: each newcomer evicts the oldest silent one, never the proxy.
    let newcomer = h.frontend("203.0.113.50:4000");
    assert_eq!(closed_now(&mut h), vec![flood[0]]);
    let next = h.frontend("203.0.113.51:4000");
    assert_eq!(closed_now(&mut h), vec![flood[1]]);
    // The newcomer calls; the proxy stays quiet for a while and is then evictable too.
    call(&mut h, newcomer, 1);
    h.advance(Duration::from_secs(61));
    call(&mut h, newcomer, 2);
    // Candidates in accept order, busy ones moved to the back as they are passed over:
    // the last flood connection, then the proxy, silent for 61 s, then the silent newcomer.
    h.frontend("203.0.113.52:4000");
    assert_eq!(closed_now(&mut h), vec![flood[2]]);
    h.frontend("203.0.113.53:4000");
    assert_eq!(closed_now(&mut h), vec![proxy]);
    h.frontend("203.0.113.54:4000");
    assert_eq!(closed_now(&mut h), vec![next]);
    let s = h.lb.stats();
    assert_eq!(
        (s.frontends_evicted, s.frontends_refused, s.frontends_open),
        (5, 0, 4)
    );
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::TimedOut {
            cause: lb_core::TimeoutCause::EvictedAtConnectionLimit,
            ..
        }
    )));
}

#[test]
fn a_source_is_held_to_its_limit_and_the_reserve_is_for_new_sources() {
    let mut cfg = config(1, BackendMode::Plain);
    cfg.limits.frontends_max = 6;
    cfg.limits.frontends_reserve_percent = 34; // 2 of 6
    cfg.limits.frontends_per_ip_max = 3;
    let mut h = Harness::new(cfg);
    // Three from one address, each busy: the fourth is refused by the per-source limit.
    let mut n = 0;
    for port in 1..=3 {
        let fe = h.frontend(&format!("203.0.113.1:{port}"));
        call(&mut h, fe, n);
        n += 1;
    }
    let refused = h.frontend("203.0.113.1:4");
    assert_eq!(closed_now(&mut h), vec![refused]);
    // A second address, busy, takes the 4th slot.
    let fe = h.frontend("203.0.113.2:1");
    call(&mut h, fe, n);
    n += 1;
    // Slots 5 and 6 are the reserve: a known address gets none, new addresses get both.
    let known = h.frontend("203.0.113.2:2");
    assert_eq!(closed_now(&mut h), vec![known]);
    for i in 3..=4 {
        let fe = h.frontend(&format!("203.0.113.{i}:1"));
        call(&mut h, fe, n);
        n += 1;
        assert!(closed_now(&mut h).is_empty());
    }
    // Full and every connection busy: a new address too is refused.
    let late = h.frontend("203.0.113.9:1");
    assert_eq!(closed_now(&mut h), vec![late]);
    let s = h.lb.stats();
    assert_eq!(
        (s.frontends_refused, s.frontends_evicted, s.frontends_open),
        (3, 0, 6)
    );
    // An IPv6 source counts by its /64.
    let mut cfg = config(1, BackendMode::Plain);
    cfg.limits.frontends_per_ip_max = 1;
    let mut h = Harness::new(cfg);
    h.frontend("[2001:db8:1:2::1]:5060");
    let same_64 = h.frontend("[2001:db8:1:2::99]:5060");
    h.frontend("[2001:db8:1:3::1]:5060");
    assert_eq!(closed_now(&mut h), vec![same_64]);
}
