#![allow(clippy::unwrap_used)]

use quickcheck::{Arbitrary, Gen};
use quickcheck_macros::quickcheck;

use super::*;

const W: Duration = Duration::from_secs(32);
const R: Duration = Duration::from_secs(180);
const KEY: [u8; 16] = [7; 16];
/// The connection the calls of most tests come on.
const C: ConnId = ConnId::from_parts(0, 1);
/// The source address of most tests' calls.
const S: SourceKey = SourceKey::V4(0x7f00_0001);

fn table(capacity: usize, t0: Instant) -> NewCallTable {
    NewCallTable::new(capacity, W, R, KEY, t0)
}

fn b(i: u16) -> BackendId {
    BackendId::for_test(i)
}

/// Expires at `at` and says whether the call is still there.
fn alive_at(t: &mut NewCallTable, at: Instant, key: CallKey) -> bool {
    t.expire(at);
    t.lookup(key).is_some()
}

const MS: Duration = Duration::from_millis(1);

/// Any instant serves as the origin: every time in these tests is relative to it.
#[allow(clippy::disallowed_methods)]
fn origin() -> Instant {
    Instant::now()
}

#[test]
fn keys_are_keyed_and_stable() {
    let t0 = origin();
    let a = NewCallTable::new(1, W, R, [1; 16], t0);
    let b2 = NewCallTable::new(1, W, R, [2; 16], t0);
    assert_eq!(a.key(b"x@y"), a.key(b"x@y"));
    assert_ne!(a.key(b"x@y"), a.key(b"x@z"));
    assert_ne!(a.key(b"x@y"), b2.key(b"x@y"));
}

#[test]
fn plain_entry_expires_at_window() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"plain");
    t.insert(t0, k, b(3), false, C, S).unwrap();
    assert_eq!(t.lookup(k), Some(b(3)));
    assert_eq!(t.next_deadline(), Some(t0 + W));
    assert!(alive_at(&mut t, t0 + W - MS, k));
    assert!(!alive_at(&mut t, t0 + W, k));
    assert_eq!(t.len(), 0);
    assert_eq!(t.next_deadline(), None);
    assert_eq!(t.assigned(b(3)), 0);
}

#[test]
fn settle_on_plain_entry_changes_nothing() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"subscribe");
    t.insert(t0, k, b(0), false, C, S).unwrap();
    t.settle(t0 + Duration::from_secs(10), k);
    assert!(!alive_at(&mut t, t0 + W, k));
}

#[test]
fn invite_rings_two_minutes_then_lives_window_more() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"invite");
    t.insert(t0, k, b(1), true, C, S).unwrap();
    let answer = t0 + Duration::from_secs(120);
    // Still there through the ringing, with the driver waking at each deadline.
    let mut now = t0;
    while now < answer {
        assert!(alive_at(&mut t, now, k));
        now = t.next_deadline().unwrap().min(answer);
    }
    t.settle(answer, k);
    assert!(alive_at(&mut t, answer + W - MS, k));
    assert!(!alive_at(&mut t, answer + W, k));
    assert_eq!(t.next_deadline().map(|d| d > answer + W), Some(true));
    // The stale ringing item goes at the cap and leaves nothing.
    t.expire(t0 + R + W);
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn invite_answered_quickly_lives_window_after_answer() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"quick");
    t.insert(t0, k, b(1), true, C, S).unwrap();
    let answer = t0 + Duration::from_secs(3);
    t.settle(answer, k);
    assert!(alive_at(&mut t, t0 + W, k));
    assert!(alive_at(&mut t, answer + W - MS, k));
    assert!(!alive_at(&mut t, answer + W, k));
    // Never went to the ringing FIFO.
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn invite_settled_at_creation_instant() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"instant");
    t.insert(t0, k, b(1), true, C, S).unwrap();
    t.settle(t0, k);
    assert!(alive_at(&mut t, t0 + W - MS, k));
    assert!(!alive_at(&mut t, t0 + W, k));
}

#[test]
fn invite_never_settled_expires_at_cap() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"forever");
    t.insert(t0, k, b(1), true, C, S).unwrap();
    assert!(alive_at(&mut t, t0 + W, k));
    assert_eq!(t.next_deadline(), Some(t0 + R + W));
    assert!(alive_at(&mut t, t0 + R + W - MS, k));
    assert!(!alive_at(&mut t, t0 + R + W, k));
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn invite_settled_near_cap_keeps_cap() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"late");
    t.insert(t0, k, b(1), true, C, S).unwrap();
    t.expire(t0 + W);
    t.settle(t0 + R + Duration::from_secs(1), k);
    assert!(alive_at(&mut t, t0 + R + W - MS, k));
    assert!(!alive_at(&mut t, t0 + R + W, k));
}

#[test]
fn expire_called_late_still_applies_the_cap() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"sleepy");
    t.insert(t0, k, b(1), true, C, S).unwrap();
    // No expire for a long time: the ringing move and the cap happen in one call.
    assert!(!alive_at(&mut t, t0 + R + W + Duration::from_secs(100), k));
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn ringing_max_shorter_than_window() {
    let t0 = origin();
    let r = Duration::from_secs(5);
    let mut t = NewCallTable::new(10, W, r, KEY, t0);
    let k = t.key(b"short");
    t.insert(t0, k, b(1), true, C, S).unwrap();
    // Settled after the ringing cap but before the window: the cap (r + W) rules.
    t.settle(t0 + Duration::from_secs(10), k);
    assert!(alive_at(&mut t, t0 + r + W - MS, k));
    assert!(!alive_at(&mut t, t0 + r + W, k));
}

#[test]
fn retransmission_does_not_reset_or_reassign() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"retx");
    t.insert(t0, k, b(1), false, C, S).unwrap();
    t.insert(t0 + Duration::from_secs(20), k, b(2), true, C, S)
        .unwrap();
    assert_eq!(t.lookup(k), Some(b(1)));
    assert_eq!(t.assigned(b(1)), 1);
    assert_eq!(t.assigned(b(2)), 0);
    assert_eq!(t.len(), 1);
    assert!(!alive_at(&mut t, t0 + W, k));
}

#[test]
fn capacity() {
    let t0 = origin();
    let mut t = table(2, t0);
    let keys: Vec<CallKey> = (0..3u8).map(|i| t.key(&[i])).collect();
    t.insert(t0, keys[0], b(0), false, C, S).unwrap();
    t.insert(t0 + MS, keys[1], b(0), false, C, S).unwrap();
    assert_eq!(
        t.insert(t0 + MS, keys[2], b(0), false, C, S),
        Err(Refused::Full)
    );
    // A retransmission of a held call is still fine at capacity.
    assert_eq!(t.insert(t0 + MS, keys[1], b(0), false, C, S), Ok(()));
    assert_eq!(t.len(), 2);
    // Once the first is due, inserting makes room without a separate expire.
    assert_eq!(t.insert(t0 + W, keys[2], b(1), false, C, S), Ok(()));
    assert_eq!(t.lookup(keys[0]), None);
    assert_eq!(t.len(), 2);
}

#[test]
fn a_connection_holding_its_share_is_refused_once_the_table_is_half_full() {
    let t0 = origin();
    let mut t = table(8, t0).with_share(2);
    let (c1, c2, c3, c4) = (
        ConnId::from_parts(0, 1),
        ConnId::from_parts(1, 2),
        ConnId::from_parts(2, 3),
        ConnId::from_parts(3, 4),
    );
    let keys: Vec<CallKey> = (0..12u8).map(|i| t.key(&[i])).collect();
    // Below half full anyone may insert, beyond its share too.
    for k in &keys[..4] {
        assert_eq!(t.insert(t0, *k, b(0), false, c1, S), Ok(()));
    }
    assert_eq!(
        t.insert(t0, keys[4], b(0), false, c1, S),
        Err(Refused::OverShare)
    );
    // A retransmission of a call it holds is no new entry: still fine.
    assert_eq!(t.insert(t0, keys[0], b(0), false, c1, S), Ok(()));
    assert_eq!(t.insert(t0, keys[4], b(0), false, c2, S), Ok(()));
    assert_eq!(t.insert(t0, keys[5], b(0), false, c2, S), Ok(()));
    assert_eq!(
        t.insert(t0, keys[6], b(0), false, c2, S),
        Err(Refused::OverShare)
    );
    assert_eq!(t.insert(t0, keys[6], b(0), false, c3, S), Ok(()));
    assert_eq!(t.insert(t0, keys[7], b(0), false, c3, S), Ok(()));
    assert_eq!(
        t.insert(t0, keys[8], b(0), false, c4, S),
        Err(Refused::Full)
    );
    assert_eq!(
        (t.held_by(c1), t.held_by(c2), t.held_by(c3), t.held_by(c4)),
        (4, 2, 2, 0)
    );
    // Expiry gives each its room back.
    t.expire(t0 + W);
    assert_eq!((t.len(), t.held_by(c1), t.held_by(c2)), (0, 0, 0));
    assert_eq!(t.insert(t0 + W, keys[9], b(0), false, c1, S), Ok(()));
    assert_eq!(t.held_by(c1), 1);
}

#[test]
fn a_source_holds_its_share_over_all_its_connections_closed_ones_too() {
    let t0 = origin();
    // Capacity 20: contended from 10 entries on; 3 per connection, 5 per source.
    let mut t = table(20, t0).with_share(3).with_source_share(5);
    let (flooder, other) = (SourceKey::V4(1), SourceKey::V4(2));
    let mut n = 0u32;
    let mut key = |t: &NewCallTable| {
        n += 1;
        t.key(&n.to_be_bytes())
    };
    // Ten entries from other connections of another source fill the uncontended half.
    for slot in 10..20 {
        let k = key(&t);
        t.insert(t0, k, b(0), false, ConnId::from_parts(slot, 1), other)
            .unwrap();
    }
    // The flooder's connections, each within its share, stop at the source's five, even
    // after the first ones closed (their slots reused by new generations).
    let mut results = Vec::new();
    for conn in 0..4 {
        for _ in 0..2 {
            let k = key(&t);
            results.push(t.insert(t0, k, b(0), false, ConnId::from_parts(0, conn + 1), flooder));
        }
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 5, "{results:?}");
    assert!(results[5..]
        .iter()
        .all(|r| *r == Err(Refused::OverSourceShare)));
    // The other source still has room; its record goes with its last entry.
    let k = key(&t);
    assert_eq!(
        t.insert(
            t0,
            k,
            b(0),
            false,
            ConnId::from_parts(30, 1),
            SourceKey::V4(3)
        ),
        Ok(())
    );
    t.expire(t0 + W);
    assert_eq!(t.len(), 0);
    assert_eq!((t.sources.held(flooder), t.sources.index.len()), (0, 0));
    assert_eq!(t.sources.free.len(), t.sources.records.len());
}

#[test]
fn an_invite_without_any_response_is_reported_once_and_an_answered_one_never() {
    let t0 = origin();
    let mut t = table(100, t0);
    t.set_unanswered_timeout(Duration::from_secs(2));
    let (silent, answered, options) = (t.key(b"silent"), t.key(b"answered"), t.key(b"o"));
    t.insert(t0, silent, b(4), true, C, S).unwrap();
    t.insert(t0, answered, b(5), true, C, S).unwrap();
    t.insert(t0, options, b(6), false, C, S).unwrap();
    t.answered(answered);
    assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(2)));
    t.expire(t0 + Duration::from_secs(2) - MS);
    assert!(!t.has_unanswered());
    t.expire(t0 + Duration::from_secs(2));
    assert_eq!(t.take_unanswered(), vec![(b(4), t0)]);
    assert!(t.take_unanswered().is_empty());
    // The entry itself lives on by its own rule.
    assert!(alive_at(&mut t, t0 + W, silent));
    assert!(!t.has_unanswered());
    // Off: nothing is judged.
    let mut off = table(100, t0);
    let k = off.key(b"x");
    off.insert(t0, k, b(1), true, C, S).unwrap();
    off.expire(t0 + W);
    assert!(!off.has_unanswered());
}

#[test]
fn entries_of_a_closed_connection_expire_and_count_for_nobody() {
    let t0 = origin();
    let mut t = table(100, t0).with_share(10);
    let old = ConnId::from_parts(5, 1);
    // The slot's next connection: same slot, another generation.
    let new = ConnId::from_parts(5, 9);
    for i in 0..3u8 {
        t.insert(t0, t.key(&[i]), b(0), false, old, S).unwrap();
    }
    let later = t0 + Duration::from_secs(10);
    t.insert(later, t.key(b"new"), b(0), false, new, S).unwrap();
    assert_eq!((t.held_by(old), t.held_by(new)), (0, 1));
    // The old entries expire on time; the new connection's count is untouched.
    t.expire(t0 + W);
    assert_eq!((t.len(), t.held_by(new)), (1, 1));
    t.expire(later + W);
    assert_eq!((t.len(), t.held_by(new)), (0, 0));
}

#[test]
fn reassign_moves_the_entry_and_its_count() {
    let t0 = origin();
    let mut t = table(100, t0);
    let k = t.key(b"call");
    t.insert(t0, k, b(1), true, C, S).unwrap();
    t.reassign(k, b(2));
    assert_eq!(t.lookup(k), Some(b(2)));
    assert_eq!((t.assigned(b(1)), t.assigned(b(2))), (0, 1));
    t.reassign(t.key(b"unknown"), b(0));
    assert_eq!(t.len(), 1);
}

#[test]
fn assigned_counts_per_backend() {
    let t0 = origin();
    let mut t = table(100, t0);
    for i in 0..10u8 {
        let k = t.key(&[i]);
        t.insert(t0, k, b(u16::from(i % 3)), i % 2 == 0, C, S)
            .unwrap();
    }
    assert_eq!(
        (t.assigned(b(0)), t.assigned(b(1)), t.assigned(b(2))),
        (4, 3, 3)
    );
    assert_eq!(t.assigned(b(900)), 0);
    t.expire(t0 + W);
    // The five INVITEs are still ringing.
    assert_eq!(t.len(), 5);
    let total: u32 = (0..3).map(|i| t.assigned(b(i))).sum();
    assert_eq!(total, 5);
}

#[test]
fn storage_shrinks_after_a_burst_expires() {
    let t0 = origin();
    let mut t = table(100_000, t0);
    for i in 0..20_000u32 {
        let key = t.key(format!("burst-{i}").as_bytes());
        assert!(t.insert(t0, key, b(0), false, C, S).is_ok());
    }
    let full = t.memory_bytes();
    assert!(full > 20_000 * 40, "{full}");
    let late = t0 + W + MS;
    let key = t.key(b"after");
    assert!(t.insert(late, key, b(0), false, C, S).is_ok());
    t.expire(late);
    assert_eq!(t.len(), 1);
    let after = t.memory_bytes();
    assert!(
        after * 20 < full,
        "{after} bytes after, {full} during the burst"
    );
    assert!(alive_at(&mut t, late, key));
}

#[test]
fn time_going_back_is_clamped() {
    let t0 = origin() + Duration::from_secs(1000);
    let mut t = table(10, t0);
    let k = t.key(b"a");
    t.insert(t0 + Duration::from_secs(10), k, b(0), false, C, S)
        .unwrap();
    // Earlier instants, even before the table's base, neither panic nor move time back.
    let k2 = t.key(b"b");
    t.insert(t0 - Duration::from_secs(500), k2, b(0), false, C, S)
        .unwrap();
    t.expire(t0 - Duration::from_secs(999));
    assert_eq!(t.len(), 2);
    // k2 counts as created at the latest time seen (t0 + 10 s).
    assert!(alive_at(&mut t, t0 + Duration::from_secs(10) + W - MS, k2));
    assert!(!alive_at(&mut t, t0 + Duration::from_secs(10) + W, k2));
}

#[test]
fn rebase_after_weeks_keeps_deadlines() {
    let t0 = origin();
    let mut t = table(10, t0);
    let day = Duration::from_secs(86_400);
    let mut now = t0;
    // Long uptime with live entries across the rebase points.
    for i in 0..70u32 {
        now += day;
        let k = t.key(&i.to_be_bytes());
        t.insert(now, k, b(0), true, C, S).unwrap();
        if i % 2 == 0 {
            t.settle(now + Duration::from_secs(40), k);
            assert!(alive_at(&mut t, now + Duration::from_secs(40) + W - MS, k));
            assert!(!alive_at(&mut t, now + Duration::from_secs(40) + W, k));
        } else {
            assert!(alive_at(&mut t, now + R + W - MS, k));
            assert_eq!(t.next_deadline(), Some(now + R + W));
            assert!(!alive_at(&mut t, now + R + W, k));
        }
    }
    // A jump past u32 milliseconds with entries held.
    let k = t.key(b"jump");
    t.insert(now, k, b(0), false, C, S).unwrap();
    assert!(!alive_at(&mut t, now + day * 100, k));
    assert_eq!(t.len(), 0);
    assert_eq!(t.next_deadline(), None);
}

#[test]
fn sub_millisecond_times_never_expire_early() {
    let t0 = origin();
    let mut t = table(10, t0);
    let k = t.key(b"fine");
    let created = t0 + Duration::from_micros(1_500);
    t.insert(created, k, b(0), false, C, S).unwrap();
    assert!(alive_at(&mut t, created + W - Duration::from_nanos(1), k));
    // At most 1 ms late.
    assert!(!alive_at(&mut t, created + W + MS, k));
}

#[test]
fn entry_layout_is_compact() {
    // The owner (8 bytes) is what the per-connection share costs.
    assert_eq!(size_of::<(Fingerprint, Entry)>(), 36);
    assert_eq!(size_of::<Item>(), 20);
}

#[test]
fn bytes_per_entry_within_budget() {
    // A steady state: 10 000 calls set up one per ms, half INVITEs answered after 2 s.
    let t0 = origin();
    let mut t = table(1_000_000, t0);
    let mut worst = 0;
    for i in 0..200_000u32 {
        let now = t0 + MS * i;
        let k = t.key(&i.to_be_bytes());
        t.insert(now, k, b(0), i % 2 == 0, C, S).unwrap();
        if i >= 2000 && (i - 2000) % 2 == 0 {
            let answered = t.key(&(i - 2000).to_be_bytes());
            t.settle(now, answered);
        }
        t.expire(now);
        if i > 50_000 {
            worst = worst.max(t.memory_bytes() / t.len());
        }
    }
    assert!(
        worst <= 128,
        "{worst} bytes per entry at worst, {} entries at the end",
        t.len()
    );
}

/// One step of a random workload.
#[derive(Clone, Debug)]
enum Op {
    Insert {
        call: u8,
        backend: u8,
        ringing: bool,
    },
    Settle {
        call: u8,
    },
    Expire,
    /// Milliseconds forward (the clock is in whole ms, so the checks can be exact).
    Advance(u32),
    /// A `now` earlier than the latest, by mistake.
    Back(u16),
    /// Expire exactly at the earliest deadline the rule gives (or 1 ms before it): random
    /// times would almost never hit a boundary.
    ExpireAtBoundary {
        early: bool,
    },
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Op {
        let call = u8::arbitrary(g) % 24;
        match u8::arbitrary(g) % 10 {
            0..=2 => Op::Insert {
                call,
                backend: u8::arbitrary(g) % 4,
                ringing: bool::arbitrary(g),
            },
            3 | 4 => Op::Settle { call },
            5 => Op::Expire,
            6..=8 => Op::Advance(match u8::arbitrary(g) % 16 {
                0..=4 => u32::from(u8::arbitrary(g)),
                5..=9 => u32::from(u16::arbitrary(g)),
                // Close to the ~24.8-day rebase point, so that entries live across it.
                10 => (1 << 31) - 100_000,
                _ => u32::arbitrary(g) % 400_000,
            }),
            9 if bool::arbitrary(g) => Op::Back(u16::arbitrary(g)),
            _ => Op::ExpireAtBoundary {
                early: bool::arbitrary(g),
            },
        }
    }
}

/// The rule, computed the slow way: when each held call must be gone.
#[derive(Clone, Copy)]
struct Model {
    backend: u16,
    created: u64,
    ringing: bool,
    deadline: u64,
}

#[quickcheck]
fn lifetime_rule_holds(ops: Vec<Op>, capacity: u8, window_s: u8, ringing_s: u8) -> bool {
    let capacity = usize::from(capacity % 16) + 1;
    let w = u64::from(window_s % 64 + 1) * 1000;
    let r = u64::from(ringing_s) * 1000;
    let t0 = origin();
    let mut t = NewCallTable::new(
        capacity,
        Duration::from_millis(w),
        Duration::from_millis(r),
        KEY,
        t0,
    );
    let mut model: HashMap<u8, Model> = HashMap::new();
    let mut now_ms: u64 = 0;
    // The latest `now` the table was given: its clamped clock.
    let mut seen: u64 = 0;
    for op in ops {
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        match op {
            Op::Insert {
                call,
                backend,
                ringing,
            } => {
                let k = t.key(&[call]);
                let result = t.insert(at(now_ms), k, b(u16::from(backend)), ringing, C, S);
                let eff = now_ms.max(seen);
                seen = eff;
                model.retain(|_, m| m.deadline > eff);
                if let Some(m) = model.get(&call) {
                    if result != Ok(()) || t.lookup(k) != Some(b(m.backend)) {
                        return false;
                    }
                } else if model.len() >= capacity {
                    if result != Err(Refused::Full) {
                        return false;
                    }
                } else {
                    if result != Ok(()) {
                        return false;
                    }
                    let deadline = if ringing { eff + r + w } else { eff + w };
                    model.insert(
                        call,
                        Model {
                            backend: u16::from(backend),
                            created: eff,
                            ringing,
                            deadline,
                        },
                    );
                }
            }
            Op::Settle { call } => {
                let k = t.key(&[call]);
                t.settle(at(now_ms), k);
                let eff = now_ms.max(seen);
                seen = eff;
                if let Some(m) = model.get_mut(&call) {
                    if m.ringing && m.deadline > eff {
                        m.ringing = false;
                        m.deadline = (eff + w).min(m.created + r + w);
                    }
                }
            }
            Op::Expire | Op::ExpireAtBoundary { .. } => {
                if let Op::ExpireAtBoundary { early } = op {
                    let next = model
                        .values()
                        .map(|m| m.deadline)
                        .filter(|d| *d > seen)
                        .min();
                    if let Some(next) = next {
                        now_ms = next - u64::from(early);
                    }
                }
                t.expire(at(now_ms));
                let eff = now_ms.max(seen);
                seen = eff;
                model.retain(|_, m| m.deadline > eff);
                // Every survivor of the rule is held with its backend, nothing else is.
                if t.len() != model.len() {
                    return false;
                }
                for (call, m) in &model {
                    if t.lookup(t.key(&[*call])) != Some(b(m.backend)) {
                        return false;
                    }
                }
                if t.next_deadline().is_some_and(|d| d <= at(eff)) {
                    return false;
                }
                // Every call came on `C`: its count is the table's.
                if t.held_by(C) != model.len() {
                    return false;
                }
                for backend in 0..4u16 {
                    let want = model.values().filter(|m| m.backend == backend).count();
                    if t.assigned(b(backend)) as usize != want {
                        return false;
                    }
                }
            }
            Op::Advance(ms) => now_ms += u64::from(ms),
            Op::Back(ms) => now_ms = now_ms.saturating_sub(u64::from(ms)),
        }
        // Entries past their rule but not yet expired are allowed between expire calls; an
        // entry the rule still keeps must always be there.
        for (call, m) in &model {
            if m.deadline > seen && t.lookup(t.key(&[*call])).is_none() {
                return false;
            }
        }
        if t.len() > capacity {
            return false;
        }
    }
    true
}
