//! Core scenario tests: a `Balancer` driven through its public API, read like protocol traces.
#![allow(clippy::unwrap_used, clippy::needless_range_loop)]

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use lb_core::{
    BackendChange, BackendMode, CloseReason, Event, FramingFault, Input, Output, TimeoutCause,
};
use lb_testkit::scenario::*;

const PROXY: &str = "203.0.113.5:40000";

#[test]
fn new_call_gets_record_route_and_stamped_via() {
    let mut h = Harness::new(config(3, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-1@proxy", "z9hG4bK1").as_bytes());
    let (backend, msg, _) = h.expect_to_backend();
    assert_eq!(backend, 0, "round robin starts at the first backend");
    assert!(record_route_tag(&msg).is_some());
    insta::assert_snapshot!("invite_to_backend", redact_tags(&msg));
}

#[test]
fn calls_spread_round_robin_and_retransmissions_stick() {
    let mut h = Harness::new(config(3, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    let mut first = Vec::new();
    for n in 0..6 {
        h.receive(
            fe,
            invite(&format!("call-{n}"), &format!("z9hG4bK{n}")).as_bytes(),
        );
        first.push(h.expect_to_backend().0);
    }
    assert_eq!(first, [0, 1, 2, 0, 1, 2]);
    // A retransmitted INVITE, then a CANCEL and the ACK of the 487: all to the INVITE's backend.
    for n in 0..6 {
        h.receive(
            fe,
            invite(&format!("call-{n}"), &format!("z9hG4bK{n}")).as_bytes(),
        );
        let (b, retrans, _) = h.expect_to_backend();
        assert_eq!(b, first[n]);
        assert!(
            record_route_tag(&retrans).is_some(),
            "a retransmission is rewritten alike"
        );
        h.receive(
            fe,
            cancel(&format!("call-{n}"), &format!("z9hG4bK{n}")).as_bytes(),
        );
        assert_eq!(h.expect_to_backend().0, first[n]);
    }
    assert_eq!(h.lb.stats().table_hits, 12);
    assert_eq!(h.lb.stats().new_calls, 6);
}

#[test]
fn responses_return_to_the_callers_connection() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe1 = h.frontend(PROXY);
    let fe2 = h.frontend("203.0.113.6:40001");
    let inv = invite("call-r", "z9hG4bKr").replace("proxy.example.com", "203.0.113.6");
    h.receive(fe2, inv.as_bytes());
    let (b, forwarded, _) = h.expect_to_backend();
    h.backend_sends(b, &response_to(&forwarded, "180 Ringing"), None);
    let (conn, ringing) = h.expect_to_frontend();
    assert_eq!(conn, fe2);
    assert_ne!(conn, fe1);
    assert!(ringing.contains("Record-Route:"));
}

#[test]
fn in_dialog_requests_follow_the_tag_after_the_window() {
    let mut h = Harness::new(config(3, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-long", "z9hG4bKl").as_bytes());
    let (b, forwarded, _) = h.expect_to_backend();
    let tag = h.answer_tag(b, &forwarded);
    // Long after the new-call window (within the idle timeout): only the tag can route.
    h.advance(Duration::from_secs(600));
    h.expect_nothing();
    assert_eq!(h.lb.stats().table_len, 0, "the entry expired");
    for (cseq, method) in [(2, "INVITE"), (3, "BYE")] {
        h.receive(fe, in_dialog(method, "call-long", &tag, cseq).as_bytes());
        let (b2, msg, _) = h.expect_to_backend();
        assert_eq!(b2, b);
        assert!(
            !msg.contains("Route:"),
            "the balancer's Route entry is popped: {msg}"
        );
        if method == "BYE" {
            insta::assert_snapshot!("bye_route_popped", msg);
        }
    }
}

#[test]
fn a_forged_tag_is_treated_as_untagged() {
    let mut h = Harness::new(config(3, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-f", "z9hG4bKf").as_bytes());
    let (b, forwarded, _) = h.expect_to_backend();
    let tag = h.answer_tag(b, &forwarded);
    // The tag of another call does not verify for this one.
    h.receive(fe, in_dialog("BYE", "other-call", &tag, 2).as_bytes());
    h.drain();
    assert_eq!(h.lb.stats().tag_failures, 1);
    assert_eq!(h.lb.stats().tagged, 0);
}

#[test]
fn backend_originated_bye_and_its_response() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-b", "z9hG4bKb").as_bytes());
    let (b, forwarded, _) = h.expect_to_backend();
    let bye = callee_bye(
        &forwarded,
        b,
        "call-b",
        "sip:alice@203.0.113.5:5060;transport=tcp",
    );
    h.backend_sends(b, &bye, None);
    let (conn, out) = h.expect_to_frontend();
    assert_eq!(conn, fe, "the BYE reaches the caller's connection");
    assert!(out.starts_with("BYE sip:alice"));
    assert!(!out.contains("Route:"));
    insta::assert_snapshot!("backend_bye_with_own_via", redact_tags(&out));
    // The caller's 200 OK carries the balancer's Via back: it names the backend.
    h.receive(fe, response_to(&out, "200 OK").as_bytes());
    let (b2, ok, _) = h.expect_to_backend();
    assert_eq!(b2, b);
    assert!(ok.starts_with("SIP/2.0 200"));
    assert_eq!(
        ok.matches("Via:").count(),
        1,
        "the balancer's Via is stripped: {ok}"
    );
}

#[test]
fn a_down_backends_calls_go_to_one_backup() {
    let mut h = Harness::new(config(3, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    let mut tags = Vec::new();
    for n in 0..30 {
        let call = format!("call-d{n}");
        h.receive(fe, invite(&call, &format!("z9hG4bKd{n}")).as_bytes());
        let (b, fwd, _) = h.expect_to_backend();
        let tag = h.answer_tag(b, &fwd);
        tags.push((call, b, tag));
    }
    h.kill_backend(1);
    assert!(h.events.contains(&Event::BackendDown(h.backend_id(1))));
    for (call, b, tag) in &tags {
        let mut seen = Vec::new();
        for cseq in 2..5 {
            h.receive(fe, in_dialog("INFO", call, tag, cseq).as_bytes());
            seen.push(h.expect_to_backend().0);
        }
        if *b == 1 {
            assert!(
                seen.iter().all(|s| *s == seen[0] && *s != 1),
                "one backup: {seen:?}"
            );
        } else {
            assert!(seen.iter().all(|s| s == b));
        }
    }
    // New calls skip the down backend.
    for n in 0..6 {
        h.receive(
            fe,
            invite(&format!("new-{n}"), &format!("z9hG4bKn{n}")).as_bytes(),
        );
        assert_ne!(h.expect_to_backend().0, 1);
    }
}

#[test]
fn configured_backup_takes_over_and_reconnect_restores() {
    let mut cfg = config(3, BackendMode::Plain);
    cfg.backends[0].backup = Some(cfg.backends[2].addr);
    let mut h = Harness::new(cfg);
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-c", "z9hG4bKc").as_bytes());
    let (b, fwd, _) = h.expect_to_backend();
    assert_eq!(b, 0);
    let tag = h.answer_tag(b, &fwd);
    h.kill_backend(0);
    h.receive(fe, in_dialog("BYE", "call-c", &tag, 2).as_bytes());
    assert_eq!(h.expect_to_backend().0, 2, "the configured backup");
    // The core asks to reconnect after its backoff; once connected, traffic returns.
    let deadline = h.lb.poll_timeout().unwrap();
    h.now = deadline;
    h.input(Input::Timeout);
    let outs = h.drain();
    assert!(
        matches!(outs.as_slice(), [Output::Connect { .. }]),
        "{outs:?}"
    );
    h.connect_backend(0);
    h.receive(fe, in_dialog("BYE", "call-c", &tag, 3).as_bytes());
    assert_eq!(h.expect_to_backend().0, 0);
}

/// New calls go to the lowest priority that can take them (RFC 2782 standbys); weight 0 takes
/// none under round robin too. When the primary returns, new calls return to it, while a call
/// set up on a standby stays there.
#[test]
fn standbys_take_new_calls_only_while_no_lower_priority_can() {
    let mut cfg = config(4, BackendMode::Plain);
    for (backend, priority) in cfg.backends.iter_mut().zip([0, 0, 1, 1]) {
        backend.priority = priority;
    }
    cfg.backends[1].weight = 0;
    let mut h = Harness::new(cfg);
    let fe = h.frontend(PROXY);
    let mut call = 0;
    let mut new_calls = |h: &mut Harness| -> Vec<usize> {
        (0..4)
            .map(|_| {
                call += 1;
                let id = format!("call-p{call}");
                h.receive(fe, invite(&id, &format!("z9hG4bKp{call}")).as_bytes());
                h.expect_to_backend().0
            })
            .collect()
    };
    assert_eq!(
        new_calls(&mut h),
        [0, 0, 0, 0],
        "the weight-0 primary and the standbys wait"
    );
    h.kill_backend(0);
    assert_eq!(
        new_calls(&mut h),
        [2, 3, 2, 3],
        "no primary can: the standbys take them"
    );
    h.receive(fe, invite("call-on-standby", "z9hG4bKs").as_bytes());
    let (standby, fwd, _) = h.expect_to_backend();
    let tag = h.answer_tag(standby, &fwd);

    let deadline = h.lb.poll_timeout().unwrap();
    h.now = deadline;
    h.input(Input::Timeout);
    let outs = h.drain();
    assert!(
        matches!(outs.as_slice(), [Output::Connect { .. }]),
        "{outs:?}"
    );
    h.connect_backend(0);
    assert_eq!(new_calls(&mut h), [0, 0, 0, 0], "the primary is back");
    h.receive(fe, in_dialog("BYE", "call-on-standby", &tag, 2).as_bytes());
    assert_eq!(
        h.expect_to_backend().0,
        standby,
        "a call stays on its standby"
    );
}

#[test]
fn no_backend_gives_503_and_ack_gets_nothing() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    h.kill_backend(0);
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-503", "z9hG4bK503").as_bytes());
    let (conn, reply) = h.expect_to_frontend();
    assert_eq!(conn, fe);
    insta::assert_snapshot!("reply_503", reply);
    let ack = in_dialog("ACK", "call-x", "0.1.0000000000000000", 1);
    h.receive(fe, ack.as_bytes());
    h.expect_nothing();
    assert_eq!(h.lb.stats().replies_503, 1);
}

#[test]
fn another_sip_version_gets_505_and_the_connection_stays() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    let bad = invite("call-505", "z9hG4bK505").replacen("SIP/2.0\r\n", "SIP/7.0\r\n", 1);
    assert!(
        bad.starts_with("INVITE ") && bad.contains(" SIP/7.0\r\n"),
        "{bad}"
    );
    h.receive(fe, bad.as_bytes());
    let (_, reply) = h.expect_to_frontend();
    assert!(
        reply.starts_with("SIP/2.0 505 Version Not Supported\r\n"),
        "{reply}"
    );
    assert!(reply.contains("Call-ID: call-505\r\n"), "{reply}");
    assert_eq!((h.lb.stats().replies_505, h.lb.stats().replies_400), (1, 0));
    h.receive(fe, invite("call-ok", "z9hG4bKok").as_bytes());
    assert_eq!(h.expect_to_backend().0, 0);
    assert!(h.closed.is_empty());
}

#[test]
fn malformed_request_gets_400_and_the_connection_stays() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    let bad = invite("call-400", "z9hG4bK400").replace("CSeq: 1 INVITE", "CSeq: one INVITE");
    h.receive(fe, bad.as_bytes());
    let (_, reply) = h.expect_to_frontend();
    assert!(reply.starts_with("SIP/2.0 400 "), "{reply}");
    insta::assert_snapshot!("reply_400", reply);
    h.receive(fe, invite("call-ok", "z9hG4bKok").as_bytes());
    assert_eq!(h.expect_to_backend().0, 0);
    assert!(h.closed.is_empty());
}

#[test]
fn lost_framing_closes_only_that_connection() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let good = h.frontend(PROXY);
    let bad = h.frontend("203.0.113.9:1234");
    // The whole output: the event and the one Close, nothing sent.
    h.expect(
        Input::Received {
            conn: bad,
            bytes: BytesMut::from(&b"INVITE sip:x SIP/2.0\r\nContent-Length: banana\r\n\r\n"[..]),
        },
        &[
            Output::Event(Event::FramingLost {
                conn: bad,
                fault: FramingFault::BadContentLength,
            }),
            Output::Close { conn: bad },
        ],
    );
    h.expect(
        Input::Closed {
            conn: bad,
            reason: CloseReason::Requested,
        },
        &[],
    );
    h.receive(good, invite("call-g", "z9hG4bKg").as_bytes());
    assert_eq!(h.expect_to_backend().0, 0);
    // Input for the closed connection is a counted no-op: nothing at all comes out.
    h.expect(
        Input::Received {
            conn: bad,
            bytes: BytesMut::from(&b"OPTIONS"[..]),
        },
        &[],
    );
    assert_eq!(h.lb.stats().stale_inputs, 1);
}

#[test]
fn keepalive_ping_gets_a_pong() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.expect(
        Input::Received {
            conn: fe,
            bytes: BytesMut::from(&b"\r\n\r\n"[..]),
        },
        &[Output::Send {
            conn: fe,
            bytes: Bytes::from_static(b"\r\n"),
        }],
    );
}

#[test]
fn a_call_ringing_two_minutes_can_still_be_cancelled() {
    let mut h = Harness::new(config(3, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-ring", "z9hG4bKring").as_bytes());
    let (b, fwd, _) = h.expect_to_backend();
    h.backend_sends(b, &response_to(&fwd, "180 Ringing"), None);
    h.expect_to_frontend();
    for _ in 0..12 {
        h.advance(Duration::from_secs(10));
    }
    h.receive(fe, cancel("call-ring", "z9hG4bKring").as_bytes());
    assert_eq!(
        h.expect_to_backend().0,
        b,
        "two minutes in, the CANCEL finds its backend"
    );
    h.backend_sends(b, &response_to(&fwd, "487 Request Terminated"), None);
    h.expect_to_frontend();
    // The window after the final response: the ACK of the 487 still finds it…
    h.advance(Duration::from_secs(31));
    let ack = cancel("call-ring", "z9hG4bKring").replace("CANCEL", "ACK");
    h.receive(fe, ack.as_bytes());
    assert_eq!(h.expect_to_backend().0, b);
    // …and then the entry is gone: a late CANCEL gets 481.
    h.advance(Duration::from_secs(2));
    h.receive(fe, cancel("call-ring", "z9hG4bKring").as_bytes());
    let (_, reply) = h.expect_to_frontend();
    assert!(reply.starts_with("SIP/2.0 481"), "{reply}");
}

#[test]
fn deadlines_always_advance_and_early_timeouts_are_harmless() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    for n in 0..50 {
        h.receive(
            fe,
            invite(&format!("t-{n}"), &format!("z9hG4bKt{n}")).as_bytes(),
        );
        h.drain();
        h.now += Duration::from_millis(700);
    }
    h.input(Input::Timeout);
    h.expect_nothing();
    let mut rounds = 0;
    while let Some(deadline) = h.lb.poll_timeout() {
        h.now = deadline;
        h.input(Input::Timeout);
        h.drain();
        assert!(
            h.lb.poll_timeout().is_none_or(|d| d > h.now),
            "the deadline moved on"
        );
        rounds += 1;
        assert!(rounds < 1000);
    }
    assert_eq!(h.lb.stats().table_len, 0);
}

#[test]
fn draining_backend_gets_no_new_calls_but_keeps_its_own() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-dr", "z9hG4bKdr").as_bytes());
    let (b, fwd, _) = h.expect_to_backend();
    let tag = h.answer_tag(b, &fwd);
    let id = h.backend_id(b);
    h.input(Input::Backends(BackendChange::Drain(id)));
    h.drain();
    for n in 0..4 {
        h.receive(
            fe,
            invite(&format!("n-{n}"), &format!("z9hG4bKn{n}")).as_bytes(),
        );
        assert_ne!(h.expect_to_backend().0, b);
    }
    h.receive(fe, in_dialog("BYE", "call-dr", &tag, 2).as_bytes());
    assert_eq!(h.expect_to_backend().0, b);
}

#[test]
fn envelope_backend_round_trip() {
    let mut h = Harness::new(config(2, BackendMode::Envelope));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-e", "z9hG4bKe").as_bytes());
    let (conn_b, frame) = {
        let outs = h.drain();
        match outs.as_slice() {
            [Output::Send { conn, bytes }] => (*conn, bytes.clone()),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(Some(conn_b), h.backends[0]);
    let header_hex: String = frame[..lb_core::envelope::HEADER_LEN]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    insta::assert_snapshot!("envelope_to_backend_header", header_hex);
    let mut d = lb_core::envelope::EnvelopeDecoder::default();
    d.push(bytes::BytesMut::from(&frame[..]));
    let (env, payload) = d.next_envelope(1 << 20).unwrap().unwrap();
    assert_eq!(
        env.addr,
        Some(PROXY.parse().unwrap()),
        "the frontend's source address"
    );
    let forwarded = text(&payload);
    // The backend answers naming the next hop itself.
    h.backend_sends(
        0,
        &response_to(&forwarded, "200 OK"),
        Some(PROXY.parse().unwrap()),
    );
    let (conn, ok) = h.expect_to_frontend();
    assert_eq!(conn, fe);
    assert!(ok.starts_with("SIP/2.0 200 OK"));
}

#[test]
fn a_silent_frontend_is_closed_after_the_idle_timeout() {
    let mut cfg = config(1, BackendMode::Plain);
    cfg.idle_timeout = Duration::from_secs(60);
    let mut h = Harness::new(cfg);
    let silent = h.frontend(PROXY);
    let pinging = h.frontend("203.0.113.7:40002");
    for _ in 0..5 {
        h.advance(Duration::from_secs(20));
        h.receive(pinging, b"\r\n\r\n");
        let outs = h.drain();
        let closes: Vec<_> = outs
            .iter()
            .filter(|o| matches!(o, Output::Close { .. }))
            .collect();
        assert!(
            closes.iter().all(|c| **c == Output::Close { conn: silent }),
            "{outs:?}"
        );
    }
    assert_eq!(
        h.closed,
        vec![silent],
        "only the silent one closed; pings count as traffic"
    );
    assert!(h.events.contains(&Event::TimedOut {
        conn: silent,
        cause: TimeoutCause::Idle
    }));
    assert_eq!(h.lb.stats().idle_closes, 1);
}

#[test]
fn a_slowloris_frontend_is_closed_but_slow_complete_messages_are_not() {
    let mut cfg = config(1, BackendMode::Plain);
    cfg.partial_timeout = Duration::from_secs(5);
    let mut h = Harness::new(cfg);
    let loris = h.frontend(PROXY);
    let slow = h.frontend("203.0.113.7:40002");
    let inv = invite("call-loris", "z9hG4bKlo");
    h.receive(loris, &inv.as_bytes()[..40]);
    // `slow` keeps ending its reads inside a message, but completes one every 3 s.
    for n in 0..4 {
        let m = invite(&format!("slow-{n}"), &format!("z9hG4bKs{n}"));
        let (head, tail) = m.as_bytes().split_at(30);
        h.receive(slow, tail);
        h.receive(slow, head);
        h.advance(Duration::from_secs(3));
    }
    h.drain();
    assert_eq!(h.closed, vec![loris]);
    assert!(h.events.contains(&Event::TimedOut {
        conn: loris,
        cause: TimeoutCause::PartialMessage
    }));
    assert_eq!(h.lb.stats().partial_closes, 1);
}

#[test]
fn probes_take_a_silent_backend_out_and_back() {
    let mut cfg = config(2, BackendMode::Plain);
    cfg.probe = Some(lb_core::ProbeConfig {
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        failures_to_down: 2,
        successes_to_up: 1,
    });
    let mut h = Harness::new(cfg);
    let fe = h.frontend(PROXY);
    let b1 = h.backend_id(1);
    // Backend 0 answers every probe; backend 1 answers none for a while.
    let mut answer_b1 = false;
    for _ in 0..8 {
        h.advance(Duration::from_millis(250));
        for out in h.drain() {
            if let Output::Send { conn, bytes } = out {
                let i = h.backends.iter().position(|c| *c == Some(conn)).unwrap();
                let probe = text(&bytes);
                assert!(probe.starts_with("OPTIONS sip:198.51.100."), "{probe}");
                if i == 0 || answer_b1 {
                    h.backend_sends(i, &response_to(&probe, "200 OK"), None);
                    h.expect_nothing(); // probe answers are the balancer's own
                }
            }
        }
    }
    assert!(!h.lb.is_backend_up(b1));
    assert!(h.events.contains(&Event::BackendDown(b1)));
    assert_eq!(h.lb.stats().backends_up, 1);
    for n in 0..4 {
        h.receive(
            fe,
            invite(&format!("p-{n}"), &format!("z9hG4bKp{n}")).as_bytes(),
        );
        let (b, fwd, _) = h.expect_to_backend();
        assert_eq!(b, 0, "new calls avoid the silent backend");
        // Answered, so passive health keeps backend 0 in.
        h.backend_sends(0, &response_to(&fwd, "180 Ringing"), None);
        h.expect_to_frontend();
    }
    answer_b1 = true;
    for _ in 0..8 {
        h.advance(Duration::from_millis(250));
        for out in h.drain() {
            if let Output::Send { conn, bytes } = out {
                let i = h.backends.iter().position(|c| *c == Some(conn)).unwrap();
                if i == 0 || answer_b1 {
                    h.backend_sends(i, &response_to(&text(&bytes), "200 OK"), None);
                    h.drain();
                }
            }
        }
    }
    assert!(h.lb.is_backend_up(b1), "one good answer brings it back");
    assert_eq!(h.lb.stats().backends_up, 2);
    assert!(h.lb.stats().probe_failures >= 2);
}

#[test]
fn a_503_from_a_backend_sheds_its_new_calls_and_goes_upstream_as_500() {
    let mut h = Harness::new(config(2, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-o", "z9hG4bKo").as_bytes());
    let (b, fwd, _) = h.expect_to_backend();
    let busy = response_to(&fwd, "503 Service Unavailable")
        .replace("Content-Length: 0", "Retry-After: 10\r\nContent-Length: 0");
    h.backend_sends(b, &busy, None);
    let (_, upstream) = h.expect_to_frontend();
    assert!(
        upstream.starts_with("SIP/2.0 500 Server Internal Error\r\n"),
        "{upstream}"
    );
    assert!(h.events.contains(&Event::BackendOverloaded {
        backend: h.backend_id(b),
        hold: Duration::from_secs(10)
    }));
    for n in 0..4 {
        h.receive(
            fe,
            invite(&format!("o-{n}"), &format!("z9hG4bKo{n}")).as_bytes(),
        );
        assert_ne!(h.expect_to_backend().0, b, "held for its Retry-After");
    }
    h.advance(Duration::from_secs(11));
    let mut seen = Vec::new();
    for n in 0..4 {
        h.receive(
            fe,
            invite(&format!("q-{n}"), &format!("z9hG4bKq{n}")).as_bytes(),
        );
        seen.push(h.expect_to_backend().0);
    }
    assert!(seen.contains(&b), "back after the hold: {seen:?}");
}

#[test]
fn a_503_from_the_only_backend_goes_upstream_as_is() {
    let mut h = Harness::new(config(1, BackendMode::Plain));
    let fe = h.frontend(PROXY);
    h.receive(fe, invite("call-o1", "z9hG4bKo1").as_bytes());
    let (b, fwd, _) = h.expect_to_backend();
    h.backend_sends(b, &response_to(&fwd, "503 Service Unavailable"), None);
    let (_, upstream) = h.expect_to_frontend();
    assert!(upstream.starts_with("SIP/2.0 503 "), "{upstream}");
    h.receive(fe, invite("call-o2", "z9hG4bKo2").as_bytes());
    let (_, reply) = h.expect_to_frontend();
    // The backend is up but held: the balancer pushes back for it (RFC 6357).
    assert!(
        reply.starts_with("SIP/2.0 503 Backends Overloaded"),
        "{reply}"
    );
    assert_eq!(h.lb.stats().overload_refused, 1);
}

#[test]
fn reload_adds_drains_and_removes_backends_without_dropping_calls() {
    let cfg = config(2, BackendMode::Plain);
    let mut h = Harness::new(cfg.clone());
    let fe = h.frontend(PROXY);
    let mut tags = Vec::new();
    for n in 0..2 {
        h.receive(
            fe,
            invite(&format!("r-{n}"), &format!("z9hG4bKr{n}")).as_bytes(),
        );
        let (b, fwd, _) = h.expect_to_backend();
        let tag = h.answer_tag(b, &fwd);
        tags.push((format!("r-{n}"), b, tag));
    }
    // Backend 1 removed, backend 0 drained, a new backend added.
    let mut next = cfg.clone();
    next.backends.remove(1);
    next.backends[0].draining = true;
    next.backends.push(lb_core::BackendConfig::plain(
        "198.51.100.9:5060".parse().unwrap(),
    ));
    h.input(Input::Reload(Box::new(next.validate().unwrap())));
    let outs = h.drain();
    assert!(
        outs.contains(&Output::Close {
            conn: h.backends[1].unwrap()
        }),
        "{outs:?}"
    );
    assert!(outs.iter().any(|o| matches!(o, Output::Connect { to, .. } if to.port() == 5060 && to.ip().to_string() == "198.51.100.9")));
    assert!(h.events.contains(&Event::Reloaded {
        added: 1,
        removed: 1
    }));
    h.input(Input::Closed {
        conn: h.backends[1].unwrap(),
        reason: CloseReason::Requested,
    });
    h.connect_backend(2);
    // New calls go only to the added backend (0 drains, 1 is gone)…
    h.receive(fe, invite("r-new", "z9hG4bKrn").as_bytes());
    assert_eq!(h.expect_to_backend().0, 2);
    // …the drained backend keeps its call, the removed one's call goes to a backup.
    for (call, b, tag) in &tags {
        h.receive(fe, in_dialog("BYE", call, tag, 2).as_bytes());
        let got = h.expect_to_backend().0;
        if *b == 0 {
            assert_eq!(got, 0);
        } else {
            assert_ne!(got, 1);
        }
    }
    assert_eq!(h.lb.stats().reloads, 1);
}
