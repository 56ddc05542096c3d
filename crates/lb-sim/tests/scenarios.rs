//! Every scenario at small size passes its invariants; the same seed gives the same digest; the
//! digest of a fixed seed is pinned; quickcheck over seeds and knobs.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use lb_sim::{Knobs, Report, Scenario, Trace};
use quickcheck::{Arbitrary, Gen, QuickCheck};

fn small(s: Scenario, seed: u64) -> Knobs {
    let mut k = Knobs::preset(s, seed);
    k.calls = 150;
    k.rate = match s {
        Scenario::Expiry => 2.0,
        _ => 50.0,
    };
    k.with_default_outage()
}

#[track_caller]
fn run_ok(k: Knobs) -> Report {
    let r = lb_sim::run(k, Trace::new(None)).unwrap();
    assert!(r.is_ok(), "{r}\n{:#?}", r.violations);
    assert_eq!(
        r.calls,
        r.outcomes.iter().sum::<u64>(),
        "every call ended: {:?}",
        r.outcomes
    );
    r
}

#[test]
fn storm_retransmits_every_invite_and_keeps_affinity() {
    let r = run_ok(small(Scenario::Storm, 7));
    // Backends answer slower than T1: Timer A fires at least once for every call.
    assert!(r.retransmissions >= r.calls, "{r}");
    let s = &r.stats[0];
    assert_eq!(s.new_calls, r.calls);
    assert!(
        s.table_hits >= r.calls / 2,
        "retransmitted INVITEs found by Call-ID: {s}"
    );
    assert!(s.tagged > 0);
    assert_eq!(r.max_table, r.model_max_table);
}

#[test]
fn expiry_has_calls_outliving_the_window_and_long_ringing() {
    let r = run_ok(small(Scenario::Expiry, 3));
    assert!(r.virtual_s > 100.0, "long calls ran: {r:?}");
    assert!(
        r.outcomes[1] > 0,
        "some calls rang for minutes and were cancelled: {:?}",
        r.outcomes
    );
    assert!(
        r.max_table < r.calls,
        "entries expired while calls went on: {r}"
    );
    // Re-INVITEs and BYEs of long calls still found their backend by the tag.
    assert!(r.stats[0].tagged > r.calls, "{}", r.stats[0]);
}

#[test]
fn failover_uses_one_backup_and_recovers() {
    let r = run_ok(small(Scenario::Failover, 11));
    let s = &r.stats[0];
    assert!(s.backend_failures > 0, "{s}");
    assert!(
        s.to_backup > 0,
        "traffic of the dead backend went to its backup: {s}"
    );
}

#[test]
fn scale_spreads_calls_over_three_instances_of_two_workers() {
    let r = run_ok(small(Scenario::Scale, 5));
    assert_eq!(r.stats.len(), 6, "3 instances x 2 workers");
    for s in &r.stats {
        assert!(s.new_calls > 0, "{s}");
    }
    // Instance 1 (workers 2 and 3) died half way; the others carried the dialogs on.
    for s in [&r.stats[0], &r.stats[1], &r.stats[4], &r.stats[5]] {
        assert!(s.tagged > 0, "{s}");
    }
    assert!(r.instance_loss.is_some());
}

/// Issue 13: one instance dies mid-storm. Established calls all end well through the others
/// (in-dialog requests by their tag through the edge, the callee's BYE through a live worker
/// that dials out to the caller's proxy when it holds no connection from it); only calls in
/// setup on the dead instance are lost; no message of a surviving call reaches a wrong backend.
#[test]
fn an_instance_dies_mid_storm_and_only_its_calls_in_setup_are_lost() {
    let mut k = Knobs::preset(Scenario::Scale, 2026);
    k.calls = 1_000;
    k.rate = 100.0;
    let r = run_ok(k.with_default_outage());
    let loss = r.instance_loss.clone().unwrap();
    assert_eq!(r.affinity_violations, 0, "{r}");
    assert_eq!(loss.survivor_affinity_violations, 0, "{loss}");
    assert_eq!(loss.lost_established, 0, "{loss}");
    assert!(loss.established > 0 && loss.in_setup_on_dead > 0, "{loss}");
    assert!(
        loss.lost_in_setup - loss.lost_in_setup_elsewhere <= loss.in_setup_on_dead,
        "{loss}"
    );
    assert!(
        loss.dial_outs > 0,
        "some BYE was dialled out to a proxy: {loss}"
    );
    let dialled_ok: u64 = r
        .stats
        .iter()
        .map(|s| s.dial_outs - s.dial_out_failures)
        .sum();
    assert!(dialled_ok > 0, "a proxy accepted a dial-out");
    // The whole outcome, pinned: the same knobs give the same losses.
    assert_eq!(
        loss.to_string(),
        "instance_died=1 at_s=5.0 in_setup=430 in_setup_on_dead=144 lost_in_setup=143 \
         lost_in_setup_elsewhere=0 established=65 lost_established=0 \
         survivor_affinity_violations=0 edge_resends=0 dial_outs=8"
    );
}

#[test]
fn a_full_table_answers_503_and_loses_nothing() {
    let mut k = small(Scenario::Storm, 9);
    k.table_capacity = 10;
    let r = run_ok(k);
    assert!(r.stats[0].replies_503 > 0, "{}", r.stats[0]);
    assert!(
        r.outcomes[2] > 0,
        "some calls were rejected: {:?}",
        r.outcomes
    );
    assert!(r.max_table <= 10);
}

#[test]
fn same_seed_same_digest_other_seed_other_digest() {
    let a = lb_sim::run(small(Scenario::Scale, 42), Trace::new(None)).unwrap();
    let b = lb_sim::run(small(Scenario::Scale, 42), Trace::new(None)).unwrap();
    let c = lb_sim::run(small(Scenario::Scale, 43), Trace::new(None)).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(a.to_string(), b.to_string());
    assert_ne!(a.digest, c.digest);
}

#[test]
fn trace_lines_are_json() {
    let mut k = small(Scenario::Storm, 1);
    k.calls = 5;
    let buf = SharedBuf::default();
    let r = lb_sim::run(k, Trace::new(Some(Box::new(buf.clone())))).unwrap();
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count() as u64, r.trace_events);
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v.get("kind").is_some() && v.get("t_us").is_some(), "{line}");
    }
}

#[test]
fn digest_of_a_fixed_seed_is_pinned() {
    let lines: Vec<String> = Scenario::ALL
        .into_iter()
        .map(|s| {
            let mut k = small(s, 2026);
            k.calls = 60;
            lb_sim::run(k.with_default_outage(), Trace::new(None))
                .unwrap()
                .to_string()
        })
        .collect();
    insta::assert_snapshot!(lines.join("\n"));
}

/// A scenario with every knob drawn: the seed rides along, so a shrunk failure is a replay.
#[derive(Clone, Debug)]
struct Case {
    scenario: Scenario,
    seed: u64,
    calls: u64,
    rate: f64,
    backends: usize,
    loss: f64,
    trying_ms: u64,
    backend_hangup: f64,
    instances: usize,
    outage: Option<(usize, u64, u64, bool)>,
}

impl Arbitrary for Case {
    fn arbitrary(g: &mut Gen) -> Case {
        Case {
            scenario: *g.choose(&Scenario::ALL).unwrap(),
            seed: u64::arbitrary(g),
            calls: 10 + u64::arbitrary(g) % 50,
            rate: 5.0 + f64::from(u8::arbitrary(g)),
            backends: 1 + usize::arbitrary(g) % 5,
            loss: f64::from(u8::arbitrary(g) % 8) / 100.0,
            trying_ms: u64::from(u16::arbitrary(g) % 2000),
            backend_hangup: f64::from(u8::arbitrary(g) % 100) / 100.0,
            instances: 1 + usize::arbitrary(g) % 3,
            outage: bool::arbitrary(g).then(|| {
                (
                    usize::arbitrary(g) % 5,
                    u64::from(u16::arbitrary(g) % 8000),
                    u64::from(u16::arbitrary(g) % 60_000),
                    bool::arbitrary(g),
                )
            }),
        }
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Case>> {
        let c = self.clone();
        let fewer = (c.calls > 1).then(|| Case {
            calls: c.calls / 2,
            ..c.clone()
        });
        let no_loss = (c.loss > 0.0).then(|| Case {
            loss: 0.0,
            ..c.clone()
        });
        let no_outage = c.outage.is_some().then(|| Case {
            outage: None,
            ..c.clone()
        });
        Box::new(fewer.into_iter().chain(no_loss).chain(no_outage))
    }
}

#[test]
fn invariants_hold_for_any_seed_and_knobs() {
    // A modest number of small cases keeps the suite quick in debug builds; LB_SIM_QC_TESTS
    // asks for a longer hunt (e.g. 2000 in release).
    let n = std::env::var("LB_SIM_QC_TESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    QuickCheck::new()
        .tests(n)
        .max_tests(2 * n)
        .quickcheck(invariants_hold as fn(Case) -> bool);
}

/// Found by the property above: call 19's INVITE reached backend 1, a retransmission went to
/// backup 0 while 1 was down, and its CANCEL came after 1 had returned. The new-call table
/// follows the call to the backup, so the CANCEL goes there.
#[test]
fn a_call_set_up_on_its_backup_stays_there_after_the_first_backend_returns() {
    assert!(invariants_hold(Case {
        scenario: Scenario::Expiry,
        seed: 5974591078610735362,
        calls: 30,
        rate: 251.0,
        backends: 2,
        loss: 0.07,
        trying_ms: 1602,
        backend_hangup: 0.02,
        instances: 1,
        outage: Some((1, 4028, 8423, false)),
    }));
}

fn invariants_hold(c: Case) -> bool {
    let mut k = Knobs::preset(c.scenario, c.seed);
    k.calls = c.calls;
    k.rate = c.rate;
    k.backends = c.backends;
    k.udp_loss = c.loss;
    k.trying_delay = lb_sim::scenario::Span {
        lo: Duration::from_millis(c.trying_ms / 2),
        hi: Duration::from_millis(c.trying_ms),
    };
    k.backend_hangup_fraction = c.backend_hangup;
    k.long_talk = lb_sim::scenario::Span::ms(33_000, 60_000);
    let mut k = k.with_default_outage();
    if c.instances > 1 {
        k.instances = c.instances;
        k.spread_in_dialog = true;
    }
    if let Some((b, at, dur, silent)) = c.outage {
        // One backend reset at a time: while two are down, a call's backup can change when the
        // preferred one returns (rendezvous over the backends that are up), which is the
        // stateless design's known limit rather than a fault (see the crate docs).
        k.outages.retain(|o| o.silent);
        k.outages.push(lb_sim::Outage {
            backend: b % k.backends,
            at: Duration::from_millis(at),
            until: Duration::from_millis(at + dur),
            silent,
        });
    }
    let r = lb_sim::run(k, Trace::new(None)).unwrap();
    if !r.is_ok() {
        eprintln!("{c:?}\n{r}\n{:#?}", r.violations);
    }
    r.is_ok() && r.calls == r.outcomes.iter().sum::<u64>()
}

#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Found by quickcheck: backend 0 resets while backend 1 is still down and backend 2 hangs; the
/// call's INVITE retransmission is re-routed to backend 2, which must answer with the tag the
/// balancer wrote for it, so the dialog stays on one backup.
#[test]
fn two_backends_down_at_once_keeps_one_backup() {
    let mut k = Knobs::preset(Scenario::Failover, 3_700_237_238_422_613_634);
    k.calls = 34;
    k.rate = 5.0;
    k.udp_loss = 0.07;
    k.trying_delay = lb_sim::scenario::Span::ms(0, 1);
    k.backend_hangup_fraction = 0.29;
    k.long_talk = lb_sim::scenario::Span::ms(33_000, 60_000);
    let mut k = k.with_default_outage();
    k.outages.push(lb_sim::Outage {
        backend: 0,
        at: Duration::from_millis(3501),
        until: Duration::from_millis(9693),
        silent: false,
    });
    let r = run_ok(k);
    assert!(r.stats[0].to_backup > 0);
}
