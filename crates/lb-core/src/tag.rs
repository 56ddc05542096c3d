//! The tag: a short token naming a backend, authenticated by a truncated HMAC-SHA256 bound to
//! the Call-ID, with the key id inside so keys rotate without dropping calls.
//!
//! INTERFACE STUB: being written; the types below are the contract.

use bytes::BytesMut;

use crate::config::TagKey;
use crate::ids::BackendId;

/// Longest tag text [`TagSigner::write`] produces.
pub(crate) const TAG_LEN_MAX: usize = 32;

/// Why a tag was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagError {
    /// Not of the tag's shape.
    Malformed,
    /// The key id is not among the accepted keys.
    UnknownKey,
    /// The MAC does not match.
    BadMac,
}

/// Signs and verifies tags with the configured keys.
#[derive(Clone)]
pub(crate) struct TagSigner {}

impl TagSigner {
    /// Keys in configuration order; the first signs. `keys` is non-empty (validated).
    pub(crate) fn new(keys: &[TagKey]) -> TagSigner {
        let _ = keys;
        todo!()
    }

    /// Appends the tag for `backend` and this Call-ID to `out` (URI-parameter and token safe).
    pub(crate) fn write(&self, out: &mut BytesMut, backend: BackendId, call_id: &[u8]) {
        let _ = (out, backend, call_id);
        todo!()
    }

    /// The backend named by `tag`, if its MAC verifies for this Call-ID (constant-time compare).
    pub(crate) fn verify(&self, tag: &[u8], call_id: &[u8]) -> Result<BackendId, TagError> {
        let _ = (tag, call_id);
        todo!()
    }

    /// 16 bytes derived from the signing key, the same on every balancer instance sharing the
    /// key list: keys the rendezvous hash so all instances pick the same backup for a call.
    pub(crate) fn shared_hash_key(&self) -> [u8; 16] {
        todo!()
    }
}
