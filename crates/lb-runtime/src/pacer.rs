//! Wake-up pacing: under load, a readiness loop waits at least a *batch window* between two
//! wake-ups, so each wake-up finds several messages waiting and handles them with one read and
//! one write per connection.
//!
//! Why: at 1,000 calls/s siplb's cost was three quarters kernel time, one wake-up, one read and
//! one write per message (docs/performance.md, "Wake-up pacing"). SIP's own clocks are hundreds
//! of milliseconds (T1 = 500 ms), so a bound of a couple of milliseconds on the added delay buys
//! that cost back without a user agent noticing. When wake-ups are already further apart than
//! the window nothing waits: a lightly loaded balancer forwards each message at once.
//!
//! Sans-IO like the core: the driver says when it woke and asks how long to pause before its
//! next blocking wait; it sleeps itself.

use std::time::{Duration, Instant};

/// Wake-up pacing for one event loop (see the module docs).
#[derive(Clone, Debug)]
pub struct WakePacer {
    window: Duration,
    last_wake: Option<Instant>,
}

impl WakePacer {
    /// A pacer that keeps wake-ups at least `window` apart; `Duration::ZERO` never pauses.
    pub fn new(window: Duration) -> WakePacer {
        WakePacer {
            window,
            last_wake: None,
        }
    }

    /// The loop returned from its blocking wait at `now`.
    pub fn woke(&mut self, now: Instant) {
        self.last_wake = Some(now);
    }

    /// How long to sleep at `now` before the next blocking wait: what is left of the window
    /// since the last wake-up, never more than `deadline_in` (the wait's own timeout), so a
    /// timer is not made later than it would be anyway.
    pub fn pause(&self, now: Instant, deadline_in: Option<Duration>) -> Duration {
        let Some(last) = self.last_wake else {
            return Duration::ZERO;
        };
        let rest = self
            .window
            .saturating_sub(now.saturating_duration_since(last));
        deadline_in.map_or(rest, |d| rest.min(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn pauses_for_what_is_left_of_the_window() {
        let t0 = Instant::now();
        let mut p = WakePacer::new(2 * MS);
        assert_eq!(p.pause(t0, None), Duration::ZERO, "never woke yet");
        p.woke(t0);
        assert_eq!(p.pause(t0, None), 2 * MS);
        assert_eq!(p.pause(t0 + MS / 2, None), MS * 3 / 2);
        assert_eq!(p.pause(t0 + 2 * MS, None), Duration::ZERO);
        assert_eq!(
            p.pause(t0 + 5 * MS, None),
            Duration::ZERO,
            "a quiet loop never waits"
        );
    }

    #[test]
    fn never_pauses_past_the_wait_deadline() {
        let t0 = Instant::now();
        let mut p = WakePacer::new(2 * MS);
        p.woke(t0);
        assert_eq!(p.pause(t0, Some(MS / 4)), MS / 4);
        assert_eq!(p.pause(t0, Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(p.pause(t0, Some(10 * MS)), 2 * MS);
    }

    #[test]
    fn a_zero_window_never_pauses() {
        let t0 = Instant::now();
        let mut p = WakePacer::new(Duration::ZERO);
        p.woke(t0);
        assert_eq!(p.pause(t0, None), Duration::ZERO);
    }
}
