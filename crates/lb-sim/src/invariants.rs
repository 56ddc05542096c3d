//! The invariants checked on every run, as small pieces the world feeds and tests can feed with
//! fabricated observations (so a checker that can never fail would be caught).
//!
//! - [`Affinity`]: every message of a call reaches the backend that took it while that backend
//!   is up, and one and the same backup while it is down.
//! - [`Accounting`]: every message a balancer received was forwarded, answered with a counted
//!   error or counted as dropped, and the balancer's counters agree with what the world saw.
//! - [`TableModel`]: the new-call table follows DESIGN.md's lifetime rule (created with the
//!   INVITE, kept while it rings up to `ringing_max`, then the window after the final response),
//!   within a small tolerance, and never exceeds its capacity.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use lb_core::Stats;

/// One broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Virtual time, µs.
    pub t_us: u64,
    /// Which invariant.
    pub kind: ViolationKind,
    /// What exactly, for the replay.
    pub detail: String,
}

/// The invariant a [`Violation`] broke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// A message reached the wrong backend.
    Affinity,
    /// Messages in and out of a balancer do not add up.
    Lost,
    /// A balancer counter disagrees with what the world observed.
    Counter,
    /// The new-call table exceeded its capacity or strayed from the lifetime model.
    Table,
    /// The run did not finish within its step limit (a livelock).
    StepLimit,
    /// The balancer emitted something the world cannot accept (unparseable, unknown connection).
    Output,
}

/// Per-call owner and backup backends.
#[derive(Debug, Default)]
pub struct Affinity {
    owner: Vec<u16>,
    backup: Vec<u16>,
    violations: u64,
}

/// Why [`Affinity::observe`] refused a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AffinityBreach {
    /// The backend the message belonged to was up, yet the message went elsewhere.
    ExpectedUp {
        /// The backend it belonged to.
        expected: u16,
    },
    /// That backend was down and the message went to a second, different backup.
    SecondBackup {
        /// The backup used before.
        backup: u16,
    },
}

impl Affinity {
    /// A message of `call` was sent to `backend`. It belongs to `expected` when the message
    /// names its backend itself (an in-dialog request: the backend its tag names; a response to
    /// a backend's own request: that backend), else to the backend that took the call (the first
    /// one seen). `is_up` tells whether a backend is up as far as the sending balancer can know.
    ///
    /// The rule: the message reaches the backend it belongs to while that is up; otherwise the
    /// call's one backup, the same for every message of the call. A call whose INVITE was
    /// re-routed to the backup has its dialog there (its tag names the backup) and its new-call
    /// table entry too, so it may stay there after the first backend returns; it may never
    /// reach a third backend.
    pub fn observe(
        &mut self,
        call: usize,
        backend: u16,
        expected: Option<u16>,
        is_up: impl FnOnce(u16) -> bool,
    ) -> Option<AffinityBreach> {
        if call >= self.owner.len() {
            self.owner.resize(call + 1, NONE);
            self.backup.resize(call + 1, NONE);
        }
        if self.owner[call] == NONE {
            self.owner[call] = expected.unwrap_or(backend);
        }
        let want = expected.unwrap_or(self.owner[call]);
        if want == backend {
            return None;
        }
        if expected.is_none() && self.backup[call] == backend {
            // The new-call table follows a call set up on its backup: its CANCEL and the ACK of
            // a failure stay with the backup even after the first backend returns.
            return None;
        }
        let breach = if is_up(want) {
            Some(AffinityBreach::ExpectedUp { expected: want })
        } else if self.backup[call] == NONE {
            self.backup[call] = backend;
            None
        } else if self.backup[call] != backend {
            Some(AffinityBreach::SecondBackup {
                backup: self.backup[call],
            })
        } else {
            None
        };
        if breach.is_some() {
            self.violations += 1;
        }
        breach
    }

    /// The backend that took `call`, if any.
    pub fn owner(&self, call: usize) -> Option<u16> {
        self.owner.get(call).copied().filter(|&b| b != NONE)
    }

    /// Breaches so far.
    pub fn violations(&self) -> u64 {
        self.violations
    }
}

/// What one balancer instance got and gave, as the world saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Accounting {
    /// SIP messages fed to the balancer.
    pub fed: u64,
    /// SIP messages it forwarded (to backends and frontends), excluding its own answers.
    pub forwarded: u64,
    /// Answers it generated (503, 400, 481).
    pub generated: u64,
    /// `Event::Dropped` events seen.
    pub dropped_events: u64,
}

impl Accounting {
    /// Messages unaccounted for: received but neither forwarded, answered nor counted as dropped
    /// (negative: more came out than went in).
    pub fn lost(&self, stats: &Stats) -> i64 {
        let out = self.forwarded + self.generated + stats.dropped;
        self.fed as i64 - out as i64
    }

    /// Counters of `stats` that disagree with the world's observations, by name.
    pub fn counter_mismatches(&self, stats: &Stats) -> Vec<String> {
        let mut bad = Vec::new();
        let received = stats.frontend_requests_in
            + stats.frontend_responses_in
            + stats.backend_requests_in
            + stats.backend_responses_in;
        if received != self.fed {
            bad.push(format!("messages_in={received} but world fed {}", self.fed));
        }
        let forwarded = stats.to_backend + stats.to_frontend;
        if forwarded != self.forwarded && forwarded != self.forwarded + self.generated {
            bad.push(format!(
                "to_backend+to_frontend={forwarded} but world saw {} forwarded",
                self.forwarded
            ));
        }
        let replies = stats.replies();
        if replies != self.generated {
            bad.push(format!(
                "replies={replies} but world saw {} generated",
                self.generated
            ));
        }
        if stats.dropped != self.dropped_events {
            bad.push(format!(
                "dropped={} but {} Dropped events",
                stats.dropped, self.dropped_events
            ));
        }
        bad
    }
}

/// The expected new-call table of one balancer instance under DESIGN.md's lifetime rule.
#[derive(Debug, Default)]
pub struct TableModel {
    /// Per call: the live entry's deadline (µs), `u64::MAX` when none.
    deadline: Vec<u64>,
    settled: Vec<bool>,
    created: Vec<u64>,
    queue: BinaryHeap<Reverse<(u64, u32)>>,
    len: u64,
    max: u64,
    ringing_sum_us: u128,
    ringing_n: u64,
    lifetime_sum_us: u128,
    lifetime_n: u64,
}

impl TableModel {
    /// An initial INVITE of `call` reached a backend at `t_us`; returns whether it made a new
    /// entry (no live one existed).
    pub fn create(&mut self, call: u32, t_us: u64, ringing_max_us: u64, window_us: u64) -> bool {
        let c = call as usize;
        if c >= self.deadline.len() {
            self.deadline.resize(c + 1, u64::MAX);
            self.settled.resize(c + 1, false);
            self.created.resize(c + 1, 0);
        }
        if self.deadline[c] != u64::MAX {
            return false;
        }
        let d = t_us + ringing_max_us + window_us;
        self.deadline[c] = d;
        self.settled[c] = false;
        self.created[c] = t_us;
        self.queue.push(Reverse((d, call)));
        self.len += 1;
        self.max = self.max.max(self.len);
        true
    }

    /// A final response to the INVITE of `call` passed at `t_us`: the entry lives the window from
    /// now (first final response only; the ringing cap still bounds it).
    pub fn settle(&mut self, call: u32, t_us: u64, window_us: u64) {
        let c = call as usize;
        if c >= self.deadline.len() || self.deadline[c] == u64::MAX || self.settled[c] {
            return;
        }
        self.settled[c] = true;
        self.ringing_sum_us += u128::from(t_us - self.created[c]);
        self.ringing_n += 1;
        let d = (t_us + window_us).min(self.deadline[c]);
        self.deadline[c] = d;
        self.queue.push(Reverse((d, call)));
    }

    /// Removes entries whose lifetime ended at or before `t_us`.
    pub fn expire(&mut self, t_us: u64) {
        while let Some(&Reverse((d, call))) = self.queue.peek() {
            if d > t_us {
                break;
            }
            self.queue.pop();
            let c = call as usize;
            if self.deadline[c] == d {
                self.deadline[c] = u64::MAX;
                self.len -= 1;
                self.lifetime_sum_us += u128::from(d - self.created[c]);
                self.lifetime_n += 1;
            }
        }
    }

    /// Entries now.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the model is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Largest size seen.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean lifetime of the entries expired so far, µs: with the setup rate, Little's law gives
    /// the steady-state table size.
    pub fn mean_lifetime_us(&self) -> f64 {
        if self.lifetime_n == 0 {
            0.0
        } else {
            self.lifetime_sum_us as f64 / self.lifetime_n as f64
        }
    }

    /// Mean time from an entry's creation to its INVITE's final response, µs.
    pub fn mean_ringing_us(&self) -> f64 {
        if self.ringing_n == 0 {
            0.0
        } else {
            self.ringing_sum_us as f64 / self.ringing_n as f64
        }
    }
}

/// How far the balancer's table may stray from the model: the core keeps deadlines in whole
/// milliseconds rounded up (an entry leaves at most 1 ms late), and entries that expire or settle
/// at the same instant may be counted on either side of it. Measured: at most 13 apart in a
/// million-call storm with 75 000 entries.
pub fn table_tolerance(model_len: u64) -> u64 {
    16 + model_len / 1000
}

/// Whether a table maximum `max` agrees with DESIGN.md's figure `expected` = setup rate ×
/// (ringing time + window): within 15 % plus the Poisson spread of the arrivals.
pub fn table_max_plausible(max: u64, expected: f64) -> bool {
    let slack = 0.15 * expected + 5.0 * expected.sqrt() + 10.0;
    (max as f64 - expected).abs() <= slack
}

const NONE: u16 = u16::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_flags_a_fabricated_wrong_backend() {
        let mut a = Affinity::default();
        assert_eq!(a.observe(3, 0, None, |_| true), None);
        assert_eq!(a.observe(3, 0, None, |_| true), None);
        assert_eq!(
            a.observe(3, 2, None, |_| true),
            Some(AffinityBreach::ExpectedUp { expected: 0 })
        );
        // Owner down: the first backup is accepted, a second different one is not.
        assert_eq!(a.observe(3, 1, None, |_| false), None);
        assert_eq!(a.observe(3, 1, None, |_| false), None);
        assert_eq!(
            a.observe(3, 2, None, |_| false),
            Some(AffinityBreach::SecondBackup { backup: 1 })
        );
        // A tag naming backend 1 (the dialog lives there): 1 is right even with 0 up.
        assert_eq!(a.observe(3, 1, Some(1), |_| true), None);
        assert_eq!(
            a.observe(3, 0, Some(1), |_| true),
            Some(AffinityBreach::ExpectedUp { expected: 1 })
        );
        assert_eq!(a.owner(3), Some(0));
        assert_eq!(a.violations(), 3);
    }

    #[test]
    fn accounting_flags_a_fabricated_loss_and_miscount() {
        let acct = Accounting {
            fed: 10,
            forwarded: 8,
            generated: 1,
            dropped_events: 0,
        };
        let stats = Stats {
            frontend_requests_in: 10,
            to_backend: 8,
            replies_503: 1,
            ..Stats::default()
        };
        assert_eq!(acct.lost(&stats), 1);
        assert!(acct.counter_mismatches(&stats).is_empty());
        let wrong = Stats {
            frontend_requests_in: 9,
            ..stats
        };
        assert_eq!(acct.counter_mismatches(&wrong).len(), 1);
    }

    #[test]
    fn table_model_follows_the_lifetime_rule() {
        let (ring_max, window) = (180_000_000, 32_000_000);
        let mut m = TableModel::default();
        assert!(m.create(1, 0, ring_max, window));
        assert!(!m.create(1, 10, ring_max, window));
        assert!(m.create(2, 0, ring_max, window));
        m.settle(1, 5_000_000, window);
        m.expire(36_999_999);
        assert_eq!(m.len(), 2);
        m.expire(37_000_000);
        assert_eq!(m.len(), 1);
        // Never settled: lives ringing_max + window.
        m.expire(211_999_999);
        assert_eq!(m.len(), 1);
        m.expire(212_000_000);
        assert!(m.is_empty());
        assert_eq!(m.max(), 2);
    }
}
