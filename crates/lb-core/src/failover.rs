//! Failover: where a call goes while its backend is down (docs/design.md, "Failover").
//!
//! A backend that is down hands its traffic to its backup: the configured one if it is up, else
//! the winner of a rendezvous hash of the Call-ID over the backends that are up. Backup
//! addresses are resolved to ids here, once, for both config validation and reload.

use std::hash::Hasher;
use std::net::SocketAddr;

use siphasher::sip::SipHasher13;

use crate::ids::BackendId;

/// The id of the backend at `backup` among `addrs` (the backends' addresses, in id order);
/// `Err(backup)` when no backend has that address.
pub(crate) fn resolve_backup(
    mut addrs: impl Iterator<Item = SocketAddr>,
    backup: Option<SocketAddr>,
) -> Result<Option<BackendId>, SocketAddr> {
    match backup {
        None => Ok(None),
        Some(addr) => match addrs.position(|o| o == addr) {
            Some(i) => Ok(Some(BackendId::new(i))),
            None => Err(addr),
        },
    }
}

/// The backup for a call of a backend that is down: `fixed` (its configured backup) if it is
/// up, else the rendezvous winner among the `backends` that are up.
pub(crate) fn backup(
    fixed: Option<BackendId>,
    backends: usize,
    is_up: impl Fn(BackendId) -> bool,
    key: [u8; 16],
    call_id: &[u8],
) -> Option<BackendId> {
    match fixed.filter(|b| is_up(*b)) {
        Some(b) => Some(b),
        None => {
            let up = (0..backends).map(BackendId::new).filter(|b| is_up(*b));
            rendezvous(key, call_id, up)
        }
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
    use super::*;

    #[test]
    fn backups_resolve_by_address_or_name_the_missing_one() {
        let addrs: Vec<SocketAddr> = ["127.0.0.1:5060", "127.0.0.1:5061"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let missing: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(resolve_backup(addrs.iter().copied(), None), Ok(None));
        assert_eq!(
            resolve_backup(addrs.iter().copied(), Some(addrs[1])),
            Ok(Some(BackendId::new(1)))
        );
        assert_eq!(
            resolve_backup(addrs.iter().copied(), Some(missing)),
            Err(missing)
        );
    }

    #[test]
    fn the_fixed_backup_wins_only_while_it_is_up() {
        let fixed = Some(BackendId::new(2));
        assert_eq!(backup(fixed, 3, |_| true, [1; 16], b"c"), fixed);
        let other = backup(fixed, 3, |b| b.index() == 1, [1; 16], b"c");
        assert_eq!(other, Some(BackendId::new(1)));
        assert_eq!(backup(fixed, 3, |_| false, [1; 16], b"c"), None);
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
