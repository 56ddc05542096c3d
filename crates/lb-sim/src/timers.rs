//! The RFC 3261 timer constants the simulated peers run, random draws of durations, and the
//! constant delays that get their own FIFO lane in the event queue.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::Rng;

use crate::scenario::Span;

pub(crate) use lb_core::T1;

/// RFC 3261 §17.1.2.2 T2: the cap of Timer E's doubling, and (§13.3.1.4) of a UAS's 2xx
/// retransmission interval.
pub(crate) const T2: Duration = Duration::from_secs(4);

/// §13.3.1.4: the UAS gives up retransmitting a 2xx after 64·T1.
pub(crate) const OK_GIVE_UP: Duration = Duration::from_secs(32);

/// The constant delays that get their own FIFO lane in the event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// 64·T1: Timer B, Timer F, reaping a finished call.
    Timer64T1 = 0,
    /// The caller's give-up guard for a call ringing too long.
    Guard = 1,
}

/// Delay of each [`Lane`].
pub(crate) const LANES: [Duration; 2] = [Duration::from_secs(32), Duration::from_secs(240)];

/// When a peer's timer fires: after an irregular delay, or after one of the lanes' constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delay {
    After(Duration),
    Lane(Lane),
}

/// Draws a duration uniformly from a span.
pub(crate) fn draw(rng: &mut SmallRng, s: Span) -> Duration {
    if s.hi <= s.lo {
        return s.lo;
    }
    let lo = s.lo.as_nanos() as u64;
    let hi = s.hi.as_nanos() as u64;
    Duration::from_nanos(rng.random_range(lo..=hi))
}

/// True with probability `p`; draws nothing when `p` is 0, so a knob set to 0 leaves every
/// later draw (and so the digest) as it was.
pub(crate) fn chance(rng: &mut SmallRng, p: f64) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}
