//! Entries per source address, for the per-source share of the new-call table.

use std::collections::HashMap;

use crate::keyed_hash::Keyed;
use crate::source::SourceKey;

/// Entries per source address: records in a slab, found by address through a keyed map (the
/// addresses are the peers' choice). A record goes with its source's last entry, so the map
/// holds no more sources than the table holds entries.
pub(super) struct SourceCounts {
    pub(super) index: HashMap<SourceKey, u32, Keyed>,
    pub(super) records: Vec<SourceRecord>,
    pub(super) free: Vec<u32>,
}

#[derive(Clone, Copy)]
pub(super) struct SourceRecord {
    key: SourceKey,
    held: u32,
}

impl SourceCounts {
    pub(super) fn new(key: [u8; 16]) -> SourceCounts {
        SourceCounts {
            index: HashMap::with_hasher(Keyed(key)),
            records: Vec::new(),
            free: Vec::new(),
        }
    }

    pub(super) fn held(&self, source: SourceKey) -> usize {
        self.index
            .get(&source)
            .and_then(|&i| self.records.get(i as usize))
            .map_or(0, |r| r.held as usize)
    }

    /// Counts one more entry for `source`; returns its record's index.
    pub(super) fn add(&mut self, source: SourceKey) -> u32 {
        if let Some(&i) = self.index.get(&source) {
            if let Some(r) = self.records.get_mut(i as usize) {
                r.held += 1;
            }
            return i;
        }
        let record = SourceRecord {
            key: source,
            held: 1,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.records[i as usize] = record;
                i
            }
            None => {
                // The table's capacity bounds the records; it fits u32 (config checks).
                self.records.push(record);
                u32::try_from(self.records.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.index.insert(source, i);
        i
    }

    /// One entry of the record `i` is gone.
    pub(super) fn release(&mut self, i: u32) {
        let Some(r) = self.records.get_mut(i as usize) else {
            return;
        };
        r.held = r.held.saturating_sub(1);
        if r.held == 0 {
            self.index.remove(&r.key);
            self.free.push(i);
        }
    }

    pub(super) fn memory_bytes(&self) -> usize {
        let map = self.index.capacity() * (size_of::<(SourceKey, u32)>() + 1);
        map + self.records.capacity() * size_of::<SourceRecord>()
            + self.free.capacity() * size_of::<u32>()
    }
}

/// The source map's key, apart from the Call-ID fingerprints' so neither hash tells of the other.
pub(super) fn source_hash_key(key: [u8; 16]) -> [u8; 16] {
    let mut k = key;
    for (b, x) in k.iter_mut().zip(b"siplb-table-srcs") {
        *b ^= x;
    }
    k
}
