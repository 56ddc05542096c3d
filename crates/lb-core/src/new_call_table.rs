//! The new-call table: Call-ID → backend for the untagged messages of calls being set up.
//!
//! INTERFACE STUB: being written; the types below are the contract.

use std::time::{Duration, Instant};

use crate::ids::BackendId;

/// A Call-ID reduced to a keyed 128-bit fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CallKey(pub(crate) u128);

/// The table is at capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableFull;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct NewCallTable {}

impl NewCallTable {
    pub(crate) fn new(
        capacity: usize,
        window: Duration,
        ringing_max: Duration,
        hash_key: [u8; 16],
        now: Instant,
    ) -> NewCallTable {
        let _ = (capacity, window, ringing_max, hash_key, now);
        todo!()
    }

    pub(crate) fn key(&self, call_id: &[u8]) -> CallKey {
        let _ = call_id;
        todo!()
    }

    pub(crate) fn lookup(&self, key: CallKey) -> Option<BackendId> {
        let _ = key;
        todo!()
    }

    /// Records a new call. `ringing`: an INVITE, kept until its final response (see `settle`).
    pub(crate) fn insert(
        &mut self,
        now: Instant,
        key: CallKey,
        backend: BackendId,
        ringing: bool,
    ) -> Result<(), TableFull> {
        let _ = (now, key, backend, ringing);
        todo!()
    }

    /// A final response to the INVITE passed: the entry lives the window from now.
    pub(crate) fn settle(&mut self, now: Instant, key: CallKey) {
        let _ = (now, key);
        todo!()
    }

    /// Removes the entries whose lifetime ended at or before `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        let _ = now;
        todo!()
    }

    /// When the next entry may expire.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        todo!()
    }

    pub(crate) fn len(&self) -> usize {
        todo!()
    }

    /// Entries naming `backend`: the calls assigned to it within the window.
    pub(crate) fn assigned(&self, backend: BackendId) -> u32 {
        let _ = backend;
        todo!()
    }
}
