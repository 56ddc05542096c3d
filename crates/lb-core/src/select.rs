//! Choosing a backend for a new call ([`Selector`]); a backup for a down one is `failover`'s.
//!
//! Least loaded reads the load an envelope-mode backend reports in every envelope — calls in
//! progress as the backend counts them. A balancer that keeps no per-call state cannot count
//! established calls itself, so for plain backends it falls back to the calls assigned to each
//! within the window (the new-call table's entries): that is the recent setup rate per backend,
//! which evens out new load even though it cannot see how long calls last.

use rand::rngs::SmallRng;
use rand::Rng;

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
}
