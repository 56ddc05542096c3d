//! The hasher of every map keyed by something a peer chose (Via hosts, source addresses,
//! Call-IDs): SipHash-1-3 keyed from the balancer's seed.

use std::hash::BuildHasher;

use siphasher::sip::SipHasher13;

/// SipHash-1-3 keyed from the balancer's seed: the keys come from the network (Via hosts), so
/// an unkeyed or OS-seeded hasher would be either attackable or nondeterministic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keyed(pub(crate) [u8; 16]);

impl BuildHasher for Keyed {
    type Hasher = SipHasher13;

    fn build_hasher(&self) -> SipHasher13 {
        SipHasher13::new_with_key(&self.0)
    }
}
