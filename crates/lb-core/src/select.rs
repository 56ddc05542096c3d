//! Choosing a backend: for a new call ([`Selector`]) and a backup for a down one
//! ([`rendezvous`]).
//!
//! Least loaded reads the load an envelope-mode backend reports in every envelope — calls in
//! progress as the backend counts them. A balancer that keeps no per-call state cannot count
//! established calls itself, so for plain backends it falls back to the calls assigned to each
//! within the window (the new-call table's entries): that is the recent setup rate per backend,
//! which evens out new load even though it cannot see how long calls last.

use std::hash::Hasher;

use rand::rngs::SmallRng;
use rand::Rng;
use siphasher::sip::SipHasher13;

use crate::config::Algorithm;
use crate::ids::BackendId;

/// A backend that may take a new call, with what the algorithms weigh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) id: BackendId,
    pub(crate) weight: u32,
    /// Reported load, or calls assigned within the window.
    pub(crate) load: u64,
}

/// The state an algorithm keeps between choices.
#[derive(Debug)]
pub(crate) struct Selector {
    algorithm: Algorithm,
    /// Round robin: the backend index after the last one chosen.
    cursor: usize,
    /// Smooth weighted round robin: each backend's running credit.
    credit: Vec<i64>,
}

impl Selector {
    pub(crate) fn new(algorithm: Algorithm, backends: usize) -> Selector {
        Selector {
            algorithm,
            cursor: 0,
            credit: vec![0; backends],
        }
    }

    /// Picks one of `candidates` (ordered by id), or `None` when there is none.
    pub(crate) fn select(
        &mut self,
        candidates: &[Candidate],
        rng: &mut SmallRng,
    ) -> Option<BackendId> {
        if candidates.is_empty() {
            return None;
        }
        let chosen = match self.algorithm {
            Algorithm::RoundRobin => {
                let c = candidates
                    .iter()
                    .find(|c| c.id.index() >= self.cursor)
                    .unwrap_or(&candidates[0]);
                c.id
            }
            Algorithm::Weighted => self.smooth_weighted(candidates)?,
            Algorithm::LeastLoaded => {
                let least = candidates.iter().map(|c| c.load).min()?;
                let tied = candidates.iter().filter(|c| c.load == least).count();
                // Ties are broken at random so equal backends share the load instead of the
                // first one taking every call until its report catches up.
                let pick = rng.random_range(0..tied);
                candidates.iter().filter(|c| c.load == least).nth(pick)?.id
            }
        };
        self.cursor = chosen.index() + 1;
        Some(chosen)
    }

    /// nginx's smooth weighted round robin: every candidate earns its weight, the richest is
    /// chosen and pays the total. Spreads a 5:1:1 farm as a a b a c a a, not a a a a a b c.
    fn smooth_weighted(&mut self, candidates: &[Candidate]) -> Option<BackendId> {
        let total: i64 = candidates.iter().map(|c| i64::from(c.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut best: Option<(usize, i64)> = None;
        for c in candidates {
            let credit = &mut self.credit[c.id.index()];
            *credit += i64::from(c.weight);
            if c.weight > 0 && best.is_none_or(|(_, b)| *credit > b) {
                best = Some((c.id.index(), *credit));
            }
        }
        let (index, _) = best?;
        self.credit[index] -= total;
        Some(BackendId::new(index))
    }
}

/// Rendezvous (highest random weight) hashing: the backup of a call is the candidate scoring
/// highest for its Call-ID. Every message of the call, on every balancer instance sharing `key`,
/// picks the same one, and a backend's failure moves only its own calls.
pub(crate) fn rendezvous(
    key: [u8; 16],
    call_id: &[u8],
    candidates: impl Iterator<Item = BackendId>,
) -> Option<BackendId> {
    let mut hasher = SipHasher13::new_with_key(&key);
    hasher.write(call_id);
    let call = hasher.finish();
    candidates.max_by_key(|b| {
        (
            mix(call ^ (b.index() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            *b,
        )
    })
}

/// SplitMix64's finaliser: spreads a call hash and a backend index into an even score.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Candidate {
                id: BackendId::new(i),
                weight: w,
                load: 0,
            })
            .collect()
    }

    #[test]
    fn round_robin_cycles_and_skips_missing_backends() {
        let mut s = Selector::new(Algorithm::RoundRobin, 4);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut c = candidates(&[1, 1, 1, 1]);
        c.remove(2);
        let picks: Vec<usize> = (0..6)
            .map(|_| s.select(&c, &mut rng).unwrap().index())
            .collect();
        assert_eq!(picks, [0, 1, 3, 0, 1, 3]);
    }

    #[test]
    fn smooth_weighted_spreads_by_weight() {
        let mut s = Selector::new(Algorithm::Weighted, 3);
        let mut rng = SmallRng::seed_from_u64(1);
        let c = candidates(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7)
            .map(|_| s.select(&c, &mut rng).unwrap().index())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        assert!(Selector::new(Algorithm::Weighted, 2)
            .select(&candidates(&[0, 0]), &mut rng)
            .is_none());
    }

    #[test]
    fn least_loaded_takes_the_minimum() {
        let mut s = Selector::new(Algorithm::LeastLoaded, 3);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut c = candidates(&[1, 1, 1]);
        c[0].load = 5;
        c[1].load = 2;
        c[2].load = 9;
        for _ in 0..10 {
            assert_eq!(s.select(&c, &mut rng).unwrap().index(), 1);
        }
    }

    #[test]
    fn rendezvous_moves_only_the_failed_backends_calls() {
        let key = [3; 16];
        let all: Vec<BackendId> = (0..5).map(BackendId::new).collect();
        for n in 0..200 {
            let call = format!("call-{n}@example.com");
            let first = rendezvous(key, call.as_bytes(), all.iter().copied()).unwrap();
            let without: Vec<BackendId> = all.iter().copied().filter(|b| *b != first).collect();
            let second = rendezvous(key, call.as_bytes(), without.iter().copied()).unwrap();
            assert_ne!(first, second);
            // Removing a backend that was not chosen changes nothing.
            let other = without[n % without.len()];
            let rest = all.iter().copied().filter(|b| *b != other);
            assert_eq!(rendezvous(key, call.as_bytes(), rest), Some(first));
        }
    }
}
