//! The new-call table: Call-ID → backend for the untagged messages of calls being set up.
//!
//! Retransmitted INVITEs, CANCEL and the ACK of a non-2xx carry no tag, so the balancer must
//! remember for a while which backend a new call went to. Established calls are not stored:
//! their tag routes them.
//!
//! # Lifetime rule
//!
//! - An entry lives `window` (default 32 s = 64×T1, RFC 3261 17.1.1.2 Timer B) after creation.
//! - An INVITE entry (`ringing`) lives until its final response passed ([`NewCallTable::settle`])
//!   and then `window` more, because a CANCEL may come any time before the final response and
//!   the ACK of a non-2xx or a retransmission up to the window after it.
//! - A ringing entry never lives beyond `ringing_max + window` after creation (`ringing_max`
//!   default 180 s, RFC 3261 16.6 Timer C). The cap is counted from creation rather than as
//!   "`window` after `ringing_max`" so that it is a constant offset from the insert and fits a
//!   FIFO (below); an INVITE settled late gets `min(settle + window, creation + ringing_max +
//!   window)`.
//! - A repeated insert (a retransmission) keeps the existing entry and its deadline: the first
//!   assignment stands and a retransmission storm cannot prolong an entry.
//!
//! # Expiry in O(1)
//!
//! Every deadline is "some instant + a constant", so two FIFOs in deadline order replace a timer
//! wheel or heap:
//! - the *window* FIFO holds `t + window` items: inserts, and settles;
//! - the *ringing* FIFO holds `creation + window + ringing_max` items. An INVITE is first queued
//!   on the window FIFO like any entry; when that item comes up and the INVITE is still ringing
//!   it moves here with `item deadline + ringing_max`. Items leave the window FIFO in deadline
//!   order, so adding a constant keeps this FIFO sorted too, and an INVITE that is answered
//!   within the window (the common case) never touches it, leaving no item behind for minutes.
//!
//! A settle pushes a new item and leaves the old one in place. An item is current only if its
//! entry still has that deadline in that FIFO's phase: the (deadline, phase) pair is the entry's
//! generation, so stale items are skipped without a separate counter. Deadlines only grow
//! through an entry's life, and a re-inserted Call-ID starts later than any stale item of the
//! previous entry could be due, so a stale item never matches.
//!
//! # Fair shares
//!
//! Each entry remembers the frontend connection its call came on (a `Copy` [`ConnId`], no
//! allocation), and the table counts the entries of each connection in a vector indexed by
//! slab slot, tagged with the slot's generation. Once the table is half full, a connection
//! holding its share (`limits.table_share_percent`) gets no more entries until some expire:
//! one flooding connection can take half the table, never the half the others need
//! (docs/design.md, "Fair shares of the new-call table"). When an entry goes, its
//! connection's count drops only if the slot still holds that generation: the entries of a
//! closed connection expire as before, and their counts go nowhere.
//!
//! The same rule holds per source address ([`SourceKey`], `limits.table_share_per_ip_percent`):
//! each entry also names its source's record, so the entries of a source's closed connections
//! keep counting against it until they expire, and a flooder gains nothing by reconnecting.
//! A source's record goes when its last entry does.
//!
//! # Unanswered INVITEs (passive health)
//!
//! A third FIFO holds `creation + unanswered_timeout` items for INVITE entries (a constant
//! offset again, so it stays sorted). An entry notes whether its backend has answered the
//! INVITE at all ([`NewCallTable::answered`]); when its item comes up and nothing came, the
//! backend goes on the [`NewCallTable::take_unanswered`] list for the farm to judge. That flag
//! fits the entry's padding: passive health costs a FIFO item per INVITE and no state per call
//! beyond the table. The timeout is below the window, so an entry that is still there when its
//! item comes up is the one the item was queued for.
//!
//! # Compact entries
//!
//! The table stores no Call-ID bytes: a [`CallKey`] is a keyed 128-bit SipHash-1-3 of the
//! Call-ID (collision chance 2^-128 per pair), so entries are fixed-size and inserts allocate
//! only when the containers grow. Deadlines are `u32` milliseconds from a base instant: rounded
//! up, so an entry is never removed early, and removed at most 1 ms late. The base moves forward
//! (an O(n) pass) once every ~24 days of uptime. A map slot is 36 bytes plus a control byte and
//! a FIFO item 20 bytes; with the map's load factor and the FIFO's doubling that is 62–125 bytes
//! per entry with one queued item (see [`NewCallTable::memory_bytes`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use siphasher::sip128::SipHasher13;

use crate::ids::{BackendId, ConnId};
use crate::keyed_hash::Keyed;
use crate::source::SourceKey;

/// A Call-ID reduced to a keyed 128-bit fingerprint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CallKey(pub(crate) u128);

/// Why an insert was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The table is at capacity.
    Full,
    /// The table is at least half full and the owning connection holds its share.
    OverShare,
    /// The table is at least half full and the connection's source address holds its share.
    OverSourceShare,
}

/// See the module docs.
pub(crate) struct NewCallTable {
    entries: HashMap<Fingerprint, Entry, PassThrough>,
    /// Items `(t + window)`, in deadline order.
    window_fifo: VecDeque<Item>,
    /// Items `(creation + window + ringing_max)`, in deadline order.
    ringing_fifo: VecDeque<Item>,
    /// Entries per backend index, for [`NewCallTable::assigned`].
    assigned: Vec<u32>,
    /// Entries per owning connection, by slab slot, for the share rule.
    owners: Vec<Owner>,
    /// Entries one connection may hold once the table is half full.
    share: usize,
    /// Entries per source address, for its share.
    sources: SourceCounts,
    /// Entries one source address may hold once the table is half full.
    source_share: usize,
    /// Items `(creation + unanswered_ms)` of INVITE entries, in deadline order.
    answer_fifo: VecDeque<Item>,
    /// 0: INVITEs are not judged.
    unanswered_ms: u32,
    /// Backends of INVITEs found unanswered, with when each INVITE was sent (rounded up to the
    /// millisecond), one per INVITE, until taken.
    unanswered: Vec<(BackendId, Instant)>,
    hasher: SipHasher13,
    capacity: usize,
    window_ms: u32,
    ringing_max_ms: u32,
    /// Offsets are measured from here; moves forward on rebase.
    base: Instant,
    /// Latest `now` seen, in nanoseconds from `base`: `now` is clamped to never go back.
    last_ns: u64,
}

impl NewCallTable {
    /// An empty table. `window` is raised to at least 1 ms; `window + ringing_max` is capped at
    /// about 24 days (far beyond any sane setting) so deadlines fit the compact form.
    pub(crate) fn new(
        capacity: usize,
        window: Duration,
        ringing_max: Duration,
        hash_key: [u8; 16],
        now: Instant,
    ) -> NewCallTable {
        let window_ms = ceil_ms(window).clamp(1, LIFETIME_MAX_MS);
        let ringing_max_ms = ceil_ms(ringing_max).min(LIFETIME_MAX_MS - window_ms);
        NewCallTable {
            entries: HashMap::with_hasher(PassThrough),
            window_fifo: VecDeque::new(),
            ringing_fifo: VecDeque::new(),
            assigned: Vec::new(),
            owners: Vec::new(),
            share: capacity,
            sources: SourceCounts::new(source_hash_key(hash_key)),
            source_share: capacity,
            answer_fifo: VecDeque::new(),
            unanswered_ms: 0,
            unanswered: Vec::new(),
            hasher: SipHasher13::new_with_key(&hash_key),
            capacity,
            // Both fit: clamped to LIFETIME_MAX_MS < u32::MAX above.
            window_ms: u32::try_from(window_ms).unwrap_or(u32::MAX),
            ringing_max_ms: u32::try_from(ringing_max_ms).unwrap_or(u32::MAX),
            base: now,
            last_ns: 0,
        }
    }

    /// The table with a per-connection share: once it holds half its capacity, a connection
    /// holding `share` entries can add no more until some of them expire (see
    /// [`NewCallTable::insert`]). Without it a connection may fill the table.
    pub(crate) fn with_share(mut self, share: usize) -> NewCallTable {
        self.set_share(share);
        self
    }

    /// A new share (a reload); entries already held stay, over it or not.
    pub(crate) fn set_share(&mut self, share: usize) {
        self.share = share;
    }

    /// The table with a share per source address (the same rule as [`Self::with_share`]).
    pub(crate) fn with_source_share(mut self, share: usize) -> NewCallTable {
        self.set_source_share(share);
        self
    }

    /// A new share per source address (a reload).
    pub(crate) fn set_source_share(&mut self, share: usize) {
        self.source_share = share;
    }

    /// The table judging INVITEs (see [`Self::set_unanswered_timeout`]).
    pub(crate) fn with_unanswered_timeout(mut self, timeout: Duration) -> NewCallTable {
        self.set_unanswered_timeout(timeout);
        self
    }

    /// INVITEs whose backend sends nothing for `timeout` are reported by
    /// [`Self::take_unanswered`]; zero reports none. Capped below the window (see the module
    /// docs). After a reload that shortens it, INVITEs queued before are judged at their old
    /// deadline or later, never early.
    pub(crate) fn set_unanswered_timeout(&mut self, timeout: Duration) {
        let ms = ceil_ms(timeout).min(u64::from(self.window_ms.saturating_sub(1)));
        self.unanswered_ms = u32::try_from(ms).unwrap_or(0);
    }

    /// The backend has sent a response to this INVITE: it is not unanswered. A no-op for an
    /// unknown key.
    pub(crate) fn answered(&mut self, key: CallKey) {
        if let Some(entry) = self.entries.get_mut(&Fingerprint::from(key)) {
            entry.answered = true;
        }
    }

    /// The backends of INVITEs found unanswered since the last call, with when each INVITE
    /// was sent, one per INVITE, in the order they were found.
    pub(crate) fn take_unanswered(&mut self) -> Vec<(BackendId, Instant)> {
        std::mem::take(&mut self.unanswered)
    }

    /// Whether INVITEs were found unanswered and not yet taken.
    pub(crate) fn has_unanswered(&self) -> bool {
        !self.unanswered.is_empty()
    }

    /// The fingerprint of a Call-ID, as used by every other method.
    pub(crate) fn key(&self, call_id: &[u8]) -> CallKey {
        CallKey(self.hasher.hash(call_id).as_u128())
    }

    /// The backend recorded for this call, if its entry has not been expired.
    pub(crate) fn lookup(&self, key: CallKey) -> Option<BackendId> {
        self.entries
            .get(&Fingerprint::from(key))
            .map(|e| BackendId::new(usize::from(e.backend)))
    }

    /// Records a new call that came on connection `owner`. `ringing`: an INVITE, kept until
    /// its final response (see `settle`).
    ///
    /// Expires due entries first. A key still present keeps its entry unchanged and returns
    /// `Ok`: a retransmission must not reassign the call or extend its life. Refused when the
    /// table is full, or when it is at least half full and `owner` already holds its share:
    /// the other half stays for the connections within theirs.
    pub(crate) fn insert(
        &mut self,
        now: Instant,
        key: CallKey,
        backend: BackendId,
        ringing: bool,
        owner: ConnId,
        source: SourceKey,
    ) -> Result<(), Refused> {
        let now_ms = self.advance(now);
        // Entries past their rule are dropped first (amortised O(1)): a Call-ID whose old entry
        // is merely overdue counts as new, and a full table makes room if it can.
        self.expire_until(now_ms);
        let fingerprint = Fingerprint::from(key);
        if self.entries.contains_key(&fingerprint) {
            return Ok(());
        }
        if self.entries.len() >= self.capacity {
            return Err(Refused::Full);
        }
        if self.entries.len() >= self.capacity.div_ceil(2) {
            if self.held_by(owner) >= self.share {
                return Err(Refused::OverShare);
            }
            if self.sources.held(source) >= self.source_share {
                return Err(Refused::OverSourceShare);
            }
        }
        let backend = u16::try_from(backend.index()).unwrap_or(u16::MAX);
        // Rounded up from the precise `now`, so the entry never expires early.
        let created_ms = self.ceil_now_ms();
        let deadline = created_ms + self.window_ms;
        let phase = if ringing {
            Phase::Ringing
        } else {
            Phase::Window
        };
        let source = self.sources.add(source);
        self.entries.insert(
            fingerprint,
            Entry {
                deadline,
                owner,
                source,
                backend,
                phase,
                // Only INVITEs are judged.
                answered: !ringing || self.unanswered_ms == 0,
            },
        );
        self.window_fifo.push_back(Item {
            deadline,
            key: fingerprint,
        });
        if ringing && self.unanswered_ms > 0 {
            self.answer_fifo.push_back(Item {
                deadline: created_ms + self.unanswered_ms,
                key: fingerprint,
            });
        }
        let slot = usize::from(backend);
        if self.assigned.len() <= slot {
            self.assigned.resize(slot + 1, 0);
        }
        self.assigned[slot] += 1;
        let (owner_slot, generation) = owner.parts();
        let owner_slot = owner_slot as usize;
        if self.owners.len() <= owner_slot {
            self.owners.resize(owner_slot + 1, Owner::default());
        }
        let record = &mut self.owners[owner_slot];
        if record.generation != generation {
            // A new connection in the slot: the old one's entries no longer count for anyone.
            *record = Owner {
                generation,
                held: 0,
            };
        }
        record.held += 1;
        Ok(())
    }

    /// Points an entry at another backend, keeping its lifetime: a call being set up whose
    /// backend failed continues on the backup, so its CANCEL and the ACK of a failure must
    /// follow there even after the first backend returns. A no-op for an unknown key.
    pub(crate) fn reassign(&mut self, key: CallKey, backend: BackendId) {
        let Some(entry) = self.entries.get_mut(&Fingerprint::from(key)) else {
            return;
        };
        let old = usize::from(entry.backend);
        let new = backend.index();
        entry.backend = backend.index() as u16;
        // The backend it was sent to is already down; the backup got only a later message of
        // it, so its silence proves nothing.
        entry.answered = true;
        if let Some(count) = self.assigned.get_mut(old) {
            *count = count.saturating_sub(1);
        }
        if self.assigned.len() <= new {
            self.assigned.resize(new + 1, 0);
        }
        self.assigned[new] += 1;
    }

    /// A final response to the INVITE passed: the entry lives the window from now.
    ///
    /// Bounded by the ringing cap; a no-op for an entry already settled or not an INVITE, and
    /// for an unknown key.
    pub(crate) fn settle(&mut self, now: Instant, key: CallKey) {
        self.advance(now);
        let settled = self.ceil_now_ms() + self.window_ms;
        let Some(entry) = self.entries.get_mut(&Fingerprint::from(key)) else {
            return;
        };
        let cap = match entry.phase {
            Phase::Window => return,
            Phase::Ringing => entry.deadline + self.ringing_max_ms,
            Phase::Capped => entry.deadline,
        };
        if settled >= cap {
            // The cap comes first; the ringing path already leads there.
            return;
        }
        entry.phase = Phase::Window;
        if settled != entry.deadline {
            entry.deadline = settled;
            self.window_fifo.push_back(Item {
                deadline: settled,
                key: Fingerprint::from(key),
            });
        }
    }

    /// Removes the entries whose lifetime ended at or before `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        let now_ms = self.advance(now);
        self.expire_until(now_ms);
        self.shrink_if_sparse();
    }

    /// Gives a burst's memory back once its entries are gone: a container using under a
    /// quarter of its capacity (past [`SHRINK_MIN`] slots) shrinks to twice its length. The
    /// next shrink needs at least half of those entries gone, so the O(len) copy is amortised
    /// over as many removals, and growth after a shrink starts with room to spare.
    fn shrink_if_sparse(&mut self) {
        fn sparse(len: usize, capacity: usize) -> bool {
            capacity > SHRINK_MIN && len < capacity / 4
        }
        if sparse(self.entries.len(), self.entries.capacity()) {
            self.entries.shrink_to(self.entries.len() * 2);
        }
        for fifo in [&mut self.window_fifo, &mut self.ringing_fifo] {
            if sparse(fifo.len(), fifo.capacity()) {
                fifo.shrink_to(fifo.len() * 2);
            }
        }
    }

    /// When the next entry may expire.
    ///
    /// May name a stale item's deadline; expiring at it then removes nothing but moves the
    /// deadline on. After `expire(now)` it is `None` or later than `now`.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let earliest = [&self.window_fifo, &self.ringing_fifo, &self.answer_fifo]
            .into_iter()
            .filter_map(|fifo| fifo.front().map(|i| i.deadline))
            .min()?;
        Some(self.base + Duration::from_millis(u64::from(earliest)))
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries that came on connection `conn` and are still held.
    pub(crate) fn held_by(&self, conn: ConnId) -> usize {
        let (slot, generation) = conn.parts();
        self.owners
            .get(slot as usize)
            .filter(|o| o.generation == generation)
            .map_or(0, |o| o.held as usize)
    }

    /// Entries naming `backend`: the calls assigned to it within the window.
    pub(crate) fn assigned(&self, backend: BackendId) -> u32 {
        self.assigned.get(backend.index()).copied().unwrap_or(0)
    }

    /// Bytes the table holds now, from its containers' capacities; divided by [`Self::len`] it
    /// is the benchmark's `table_bytes_per_entry`.
    ///
    /// Counts the map's buckets and control bytes (as laid out by std's SwissTable) and both
    /// FIFOs' buffers, stale items included; not the per-backend counts (a few bytes per
    /// backend).
    pub(crate) fn memory_bytes(&self) -> usize {
        let buckets = match self.entries.capacity() {
            0 => 0,
            // Small tables have `capacity + 1` buckets, larger ones a power of two at 7/8 load.
            c if c < 8 => (c + 1).next_power_of_two(),
            c => (c * 8 / 7).next_power_of_two(),
        };
        let map = if buckets == 0 {
            0
        } else {
            buckets * (size_of::<(Fingerprint, Entry)>() + 1) + MAP_GROUP_WIDTH
        };
        let fifos = (self.window_fifo.capacity()
            + self.ringing_fifo.capacity()
            + self.answer_fifo.capacity())
            * size_of::<Item>();
        map + fifos + self.sources.memory_bytes()
    }

    /// Moves the clamped clock to `now` and returns it in whole milliseconds (rounded down)
    /// from `base`, rebasing first if offsets are about to outgrow `u32`.
    fn advance(&mut self, now: Instant) -> u32 {
        let mut ns = duration_ns(now.saturating_duration_since(self.base)).max(self.last_ns);
        if ns >= REBASE_AT_MS * NS_PER_MS {
            // Expire everything due, so that every remaining deadline is after `now`, then
            // shift all offsets down by `now`: order and distances are kept exactly.
            let now_ms = ns / NS_PER_MS;
            self.expire_until_u64(now_ms);
            let shift = u32::try_from(now_ms).unwrap_or(u32::MAX);
            // Every remaining deadline is above `now_ms`; when `now_ms` is beyond u32 no
            // deadline remains at all (they are all u32).
            for entry in self.entries.values_mut() {
                entry.deadline -= shift.min(entry.deadline);
            }
            for item in self
                .window_fifo
                .iter_mut()
                .chain(self.ringing_fifo.iter_mut())
                .chain(self.answer_fifo.iter_mut())
            {
                item.deadline -= shift.min(item.deadline);
            }
            self.base += Duration::from_millis(now_ms);
            ns -= now_ms * NS_PER_MS;
        }
        self.last_ns = ns;
        // Below REBASE_AT_MS, so it fits.
        u32::try_from(ns / NS_PER_MS).unwrap_or(u32::MAX)
    }

    /// The clamped `now` in whole milliseconds from `base`, rounded up.
    fn ceil_now_ms(&self) -> u32 {
        u32::try_from(self.last_ns.div_ceil(NS_PER_MS)).unwrap_or(u32::MAX)
    }

    fn expire_until(&mut self, now_ms: u32) {
        self.expire_until_u64(u64::from(now_ms));
    }

    /// Pops every item due at `now_ms`: the window FIFO first, since it may move ringing
    /// entries to the ringing FIFO with deadlines that are due as well.
    fn expire_until_u64(&mut self, now_ms: u64) {
        // Judged first: an INVITE's entry outlives its answer deadline (see the module docs).
        while let Some(item) = self.answer_fifo.front().copied() {
            if u64::from(item.deadline) > now_ms {
                break;
            }
            self.answer_fifo.pop_front();
            if let Some(entry) = self.entries.get_mut(&item.key) {
                if !entry.answered {
                    entry.answered = true;
                    let sent_ms = item.deadline.saturating_sub(self.unanswered_ms);
                    let sent = self.base + Duration::from_millis(u64::from(sent_ms));
                    self.unanswered
                        .push((BackendId::new(usize::from(entry.backend)), sent));
                }
            }
        }
        while let Some(item) = self.window_fifo.front().copied() {
            if u64::from(item.deadline) > now_ms {
                break;
            }
            self.window_fifo.pop_front();
            let Some(entry) = self.entries.get_mut(&item.key) else {
                continue;
            };
            if entry.deadline != item.deadline {
                continue;
            }
            match entry.phase {
                Phase::Window => self.remove(item.key),
                Phase::Ringing => {
                    // Still ringing at creation + window: hold it until the cap. `item.deadline`
                    // is creation + window, and items arrive here in deadline order, so the
                    // ringing FIFO stays sorted.
                    let cap = item.deadline + self.ringing_max_ms;
                    entry.deadline = cap;
                    entry.phase = Phase::Capped;
                    self.ringing_fifo.push_back(Item {
                        deadline: cap,
                        key: item.key,
                    });
                }
                Phase::Capped => {}
            }
        }
        while let Some(item) = self.ringing_fifo.front().copied() {
            if u64::from(item.deadline) > now_ms {
                break;
            }
            self.ringing_fifo.pop_front();
            let current = self
                .entries
                .get(&item.key)
                .is_some_and(|e| e.phase == Phase::Capped && e.deadline == item.deadline);
            if current {
                self.remove(item.key);
            }
        }
    }

    fn remove(&mut self, key: Fingerprint) {
        if let Some(entry) = self.entries.remove(&key) {
            if let Some(count) = self.assigned.get_mut(usize::from(entry.backend)) {
                *count = count.saturating_sub(1);
            }
            let (slot, generation) = entry.owner.parts();
            // Entries of a closed connection whose slot was reused count for nobody.
            if let Some(o) = self
                .owners
                .get_mut(slot as usize)
                .filter(|o| o.generation == generation)
            {
                o.held = o.held.saturating_sub(1);
            }
            self.sources.release(entry.source);
        }
    }
}

/// Entries per source address: records in a slab, found by address through a keyed map (the
/// addresses are the peers' choice). A record goes with its source's last entry, so the map
/// holds no more sources than the table holds entries.
struct SourceCounts {
    index: HashMap<SourceKey, u32, Keyed>,
    records: Vec<SourceRecord>,
    free: Vec<u32>,
}

#[derive(Clone, Copy)]
struct SourceRecord {
    key: SourceKey,
    held: u32,
}

impl SourceCounts {
    fn new(key: [u8; 16]) -> SourceCounts {
        SourceCounts {
            index: HashMap::with_hasher(Keyed(key)),
            records: Vec::new(),
            free: Vec::new(),
        }
    }

    fn held(&self, source: SourceKey) -> usize {
        self.index
            .get(&source)
            .and_then(|&i| self.records.get(i as usize))
            .map_or(0, |r| r.held as usize)
    }

    /// Counts one more entry for `source`; returns its record's index.
    fn add(&mut self, source: SourceKey) -> u32 {
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
    fn release(&mut self, i: u32) {
        let Some(r) = self.records.get_mut(i as usize) else {
            return;
        };
        r.held = r.held.saturating_sub(1);
        if r.held == 0 {
            self.index.remove(&r.key);
            self.free.push(i);
        }
    }

    fn memory_bytes(&self) -> usize {
        let map = self.index.capacity() * (size_of::<(SourceKey, u32)>() + 1);
        map + self.records.capacity() * size_of::<SourceRecord>()
            + self.free.capacity() * size_of::<u32>()
    }
}

/// The source map's key, apart from the Call-ID fingerprints' so neither hash tells of the other.
fn source_hash_key(key: [u8; 16]) -> [u8; 16] {
    let mut k = key;
    for (b, x) in k.iter_mut().zip(b"siplb-table-srcs") {
        *b ^= x;
    }
    k
}

impl fmt::Debug for NewCallTable {
    /// A summary: the entries themselves are opaque fingerprints, and the hash key stays out
    /// of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewCallTable")
            .field("len", &self.entries.len())
            .field("capacity", &self.capacity)
            .field("window_ms", &self.window_ms)
            .field("ringing_max_ms", &self.ringing_max_ms)
            .field(
                "queued",
                &(self.window_fifo.len() + self.ringing_fifo.len()),
            )
            .finish()
    }
}

/// A [`CallKey`] stored as four `u32`s: alignment 4 instead of `u128`'s 16 keeps map slots at
/// 36 bytes and FIFO items at 20.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u32; 4]);

impl From<CallKey> for Fingerprint {
    fn from(key: CallKey) -> Fingerprint {
        let k = key.0;
        // Truncating casts on purpose: each takes one 32-bit quarter.
        Fingerprint([
            k as u32,
            (k >> 32) as u32,
            (k >> 64) as u32,
            (k >> 96) as u32,
        ])
    }
}

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | (u64::from(self.0[1]) << 32));
    }
}

/// Hashing for keys that are already keyed hashes.
///
/// Call-IDs are chosen by peers, so a map keyed by them needs a keyed hash against HashDoS
/// (crafted keys that all land in one bucket). A [`Fingerprint`] already is one: SipHash-1-3
/// under a key the peer does not know, so its low 64 bits are as unpredictable to an attacker as
/// the output of a second keyed hash would be. Hashing it again would only cost time; this
/// hasher passes those bits through.
#[derive(Clone, Copy, Default)]
struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;

    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

struct PassThroughHasher(u64);

impl Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `Fingerprint` is hashed here, through `write_u64`; fold anything else anyway so
        // the hasher stays correct if that changes.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
}

/// One table entry: 20 bytes besides the key.
#[derive(Clone, Copy)]
struct Entry {
    /// Milliseconds from `base` at which the current phase ends.
    deadline: u32,
    /// The frontend connection the call came on: its share counts this entry.
    owner: ConnId,
    /// The record of the connection's source address: its share counts this entry.
    source: u32,
    backend: u16,
    phase: Phase,
    /// Not an INVITE, or its backend has sent a response to it, or it was judged.
    answered: bool,
}

/// The entries one connection slot holds, for the connection of that generation.
#[derive(Clone, Copy, Default)]
struct Owner {
    generation: u32,
    held: u32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Removed at `deadline`; on the window FIFO.
    Window,
    /// An INVITE without its final response, on the window FIFO until creation + window.
    Ringing,
    /// An INVITE past creation + window, on the ringing FIFO until the cap.
    Capped,
}

/// A queued deadline.
#[derive(Clone, Copy)]
struct Item {
    deadline: u32,
    key: Fingerprint,
}

/// Containers at most this large are never shrunk: a quiet table keeps a little room.
const SHRINK_MIN: usize = 1024;

fn ceil_ms(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(u128::from(NS_PER_MS))).unwrap_or(u64::MAX)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const NS_PER_MS: u64 = 1_000_000;
/// Offsets stay below 2^31 ms (~24.8 days): the base moves forward past that.
const REBASE_AT_MS: u64 = 1 << 31;
/// Longest `window + ringing_max`, so `now + lifetime` stays below 2^32 ms.
const LIFETIME_MAX_MS: u64 = (1 << 31) - 1;
/// SwissTable control bytes mirrored after the table (the SSE2 group width).
const MAP_GROUP_WIDTH: usize = 16;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use quickcheck::{Arbitrary, Gen};
    use quickcheck_macros::quickcheck;

    use super::*;

    const W: Duration = Duration::from_secs(32);
    const R: Duration = Duration::from_secs(180);
    const KEY: [u8; 16] = [7; 16];
    /// The connection the calls of most tests come on.
    const C: ConnId = ConnId::from_parts(0, 1);
    /// The source address of most tests' calls.
    const S: SourceKey = SourceKey::V4(0x7f00_0001);

    fn table(capacity: usize, t0: Instant) -> NewCallTable {
        NewCallTable::new(capacity, W, R, KEY, t0)
    }

    fn b(i: u16) -> BackendId {
        BackendId::for_test(i)
    }

    /// Expires at `at` and says whether the call is still there.
    fn alive_at(t: &mut NewCallTable, at: Instant, key: CallKey) -> bool {
        t.expire(at);
        t.lookup(key).is_some()
    }

    const MS: Duration = Duration::from_millis(1);

    /// Any instant serves as the origin: every time in these tests is relative to it.
    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    #[test]
    fn keys_are_keyed_and_stable() {
        let t0 = origin();
        let a = NewCallTable::new(1, W, R, [1; 16], t0);
        let b2 = NewCallTable::new(1, W, R, [2; 16], t0);
        assert_eq!(a.key(b"x@y"), a.key(b"x@y"));
        assert_ne!(a.key(b"x@y"), a.key(b"x@z"));
        assert_ne!(a.key(b"x@y"), b2.key(b"x@y"));
    }

    #[test]
    fn plain_entry_expires_at_window() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"plain");
        t.insert(t0, k, b(3), false, C, S).unwrap();
        assert_eq!(t.lookup(k), Some(b(3)));
        assert_eq!(t.next_deadline(), Some(t0 + W));
        assert!(alive_at(&mut t, t0 + W - MS, k));
        assert!(!alive_at(&mut t, t0 + W, k));
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.assigned(b(3)), 0);
    }

    #[test]
    fn settle_on_plain_entry_changes_nothing() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"subscribe");
        t.insert(t0, k, b(0), false, C, S).unwrap();
        t.settle(t0 + Duration::from_secs(10), k);
        assert!(!alive_at(&mut t, t0 + W, k));
    }

    #[test]
    fn invite_rings_two_minutes_then_lives_window_more() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"invite");
        t.insert(t0, k, b(1), true, C, S).unwrap();
        let answer = t0 + Duration::from_secs(120);
        // Still there through the ringing, with the driver waking at each deadline.
        let mut now = t0;
        while now < answer {
            assert!(alive_at(&mut t, now, k));
            now = t.next_deadline().unwrap().min(answer);
        }
        t.settle(answer, k);
        assert!(alive_at(&mut t, answer + W - MS, k));
        assert!(!alive_at(&mut t, answer + W, k));
        assert_eq!(t.next_deadline().map(|d| d > answer + W), Some(true));
        // The stale ringing item goes at the cap and leaves nothing.
        t.expire(t0 + R + W);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn invite_answered_quickly_lives_window_after_answer() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"quick");
        t.insert(t0, k, b(1), true, C, S).unwrap();
        let answer = t0 + Duration::from_secs(3);
        t.settle(answer, k);
        assert!(alive_at(&mut t, t0 + W, k));
        assert!(alive_at(&mut t, answer + W - MS, k));
        assert!(!alive_at(&mut t, answer + W, k));
        // Never went to the ringing FIFO.
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn invite_settled_at_creation_instant() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"instant");
        t.insert(t0, k, b(1), true, C, S).unwrap();
        t.settle(t0, k);
        assert!(alive_at(&mut t, t0 + W - MS, k));
        assert!(!alive_at(&mut t, t0 + W, k));
    }

    #[test]
    fn invite_never_settled_expires_at_cap() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"forever");
        t.insert(t0, k, b(1), true, C, S).unwrap();
        assert!(alive_at(&mut t, t0 + W, k));
        assert_eq!(t.next_deadline(), Some(t0 + R + W));
        assert!(alive_at(&mut t, t0 + R + W - MS, k));
        assert!(!alive_at(&mut t, t0 + R + W, k));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn invite_settled_near_cap_keeps_cap() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"late");
        t.insert(t0, k, b(1), true, C, S).unwrap();
        t.expire(t0 + W);
        t.settle(t0 + R + Duration::from_secs(1), k);
        assert!(alive_at(&mut t, t0 + R + W - MS, k));
        assert!(!alive_at(&mut t, t0 + R + W, k));
    }

    #[test]
    fn expire_called_late_still_applies_the_cap() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"sleepy");
        t.insert(t0, k, b(1), true, C, S).unwrap();
        // No expire for a long time: the ringing move and the cap happen in one call.
        assert!(!alive_at(&mut t, t0 + R + W + Duration::from_secs(100), k));
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn ringing_max_shorter_than_window() {
        let t0 = origin();
        let r = Duration::from_secs(5);
        let mut t = NewCallTable::new(10, W, r, KEY, t0);
        let k = t.key(b"short");
        t.insert(t0, k, b(1), true, C, S).unwrap();
        // Settled after the ringing cap but before the window: the cap (r + W) rules.
        t.settle(t0 + Duration::from_secs(10), k);
        assert!(alive_at(&mut t, t0 + r + W - MS, k));
        assert!(!alive_at(&mut t, t0 + r + W, k));
    }

    #[test]
    fn retransmission_does_not_reset_or_reassign() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"retx");
        t.insert(t0, k, b(1), false, C, S).unwrap();
        t.insert(t0 + Duration::from_secs(20), k, b(2), true, C, S)
            .unwrap();
        assert_eq!(t.lookup(k), Some(b(1)));
        assert_eq!(t.assigned(b(1)), 1);
        assert_eq!(t.assigned(b(2)), 0);
        assert_eq!(t.len(), 1);
        assert!(!alive_at(&mut t, t0 + W, k));
    }

    #[test]
    fn capacity() {
        let t0 = origin();
        let mut t = table(2, t0);
        let keys: Vec<CallKey> = (0..3u8).map(|i| t.key(&[i])).collect();
        t.insert(t0, keys[0], b(0), false, C, S).unwrap();
        t.insert(t0 + MS, keys[1], b(0), false, C, S).unwrap();
        assert_eq!(
            t.insert(t0 + MS, keys[2], b(0), false, C, S),
            Err(Refused::Full)
        );
        // A retransmission of a held call is still fine at capacity.
        assert_eq!(t.insert(t0 + MS, keys[1], b(0), false, C, S), Ok(()));
        assert_eq!(t.len(), 2);
        // Once the first is due, inserting makes room without a separate expire.
        assert_eq!(t.insert(t0 + W, keys[2], b(1), false, C, S), Ok(()));
        assert_eq!(t.lookup(keys[0]), None);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn a_connection_holding_its_share_is_refused_once_the_table_is_half_full() {
        let t0 = origin();
        let mut t = table(8, t0).with_share(2);
        let (c1, c2, c3, c4) = (
            ConnId::from_parts(0, 1),
            ConnId::from_parts(1, 2),
            ConnId::from_parts(2, 3),
            ConnId::from_parts(3, 4),
        );
        let keys: Vec<CallKey> = (0..12u8).map(|i| t.key(&[i])).collect();
        // Below half full anyone may insert, beyond its share too.
        for k in &keys[..4] {
            assert_eq!(t.insert(t0, *k, b(0), false, c1, S), Ok(()));
        }
        assert_eq!(
            t.insert(t0, keys[4], b(0), false, c1, S),
            Err(Refused::OverShare)
        );
        // A retransmission of a call it holds is no new entry: still fine.
        assert_eq!(t.insert(t0, keys[0], b(0), false, c1, S), Ok(()));
        assert_eq!(t.insert(t0, keys[4], b(0), false, c2, S), Ok(()));
        assert_eq!(t.insert(t0, keys[5], b(0), false, c2, S), Ok(()));
        assert_eq!(
            t.insert(t0, keys[6], b(0), false, c2, S),
            Err(Refused::OverShare)
        );
        assert_eq!(t.insert(t0, keys[6], b(0), false, c3, S), Ok(()));
        assert_eq!(t.insert(t0, keys[7], b(0), false, c3, S), Ok(()));
        assert_eq!(
            t.insert(t0, keys[8], b(0), false, c4, S),
            Err(Refused::Full)
        );
        assert_eq!(
            (t.held_by(c1), t.held_by(c2), t.held_by(c3), t.held_by(c4)),
            (4, 2, 2, 0)
        );
        // Expiry gives each its room back.
        t.expire(t0 + W);
        assert_eq!((t.len(), t.held_by(c1), t.held_by(c2)), (0, 0, 0));
        assert_eq!(t.insert(t0 + W, keys[9], b(0), false, c1, S), Ok(()));
        assert_eq!(t.held_by(c1), 1);
    }

    #[test]
    fn a_source_holds_its_share_over_all_its_connections_closed_ones_too() {
        let t0 = origin();
        // Capacity 20: contended from 10 entries on; 3 per connection, 5 per source.
        let mut t = table(20, t0).with_share(3).with_source_share(5);
        let (flooder, other) = (SourceKey::V4(1), SourceKey::V4(2));
        let mut n = 0u32;
        let mut key = |t: &NewCallTable| {
            n += 1;
            t.key(&n.to_be_bytes())
        };
        // Ten entries from other connections of another source fill the uncontended half.
        for slot in 10..20 {
            let k = key(&t);
            t.insert(t0, k, b(0), false, ConnId::from_parts(slot, 1), other)
                .unwrap();
        }
        // The flooder's connections, each within its share, stop at the source's five, even
        // after the first ones closed (their slots reused by new generations).
        let mut results = Vec::new();
        for conn in 0..4 {
            for _ in 0..2 {
                let k = key(&t);
                results.push(t.insert(
                    t0,
                    k,
                    b(0),
                    false,
                    ConnId::from_parts(0, conn + 1),
                    flooder,
                ));
            }
        }
        let ok = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(ok, 5, "{results:?}");
        assert!(results[5..]
            .iter()
            .all(|r| *r == Err(Refused::OverSourceShare)));
        // The other source still has room; its record goes with its last entry.
        let k = key(&t);
        assert_eq!(
            t.insert(
                t0,
                k,
                b(0),
                false,
                ConnId::from_parts(30, 1),
                SourceKey::V4(3)
            ),
            Ok(())
        );
        t.expire(t0 + W);
        assert_eq!(t.len(), 0);
        assert_eq!((t.sources.held(flooder), t.sources.index.len()), (0, 0));
        assert_eq!(t.sources.free.len(), t.sources.records.len());
    }

    #[test]
    fn an_invite_without_any_response_is_reported_once_and_an_answered_one_never() {
        let t0 = origin();
        let mut t = table(100, t0);
        t.set_unanswered_timeout(Duration::from_secs(2));
        let (silent, answered, options) = (t.key(b"silent"), t.key(b"answered"), t.key(b"o"));
        t.insert(t0, silent, b(4), true, C, S).unwrap();
        t.insert(t0, answered, b(5), true, C, S).unwrap();
        t.insert(t0, options, b(6), false, C, S).unwrap();
        t.answered(answered);
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(2)));
        t.expire(t0 + Duration::from_secs(2) - MS);
        assert!(!t.has_unanswered());
        t.expire(t0 + Duration::from_secs(2));
        assert_eq!(t.take_unanswered(), vec![(b(4), t0)]);
        assert!(t.take_unanswered().is_empty());
        // The entry itself lives on by its own rule.
        assert!(alive_at(&mut t, t0 + W, silent));
        assert!(!t.has_unanswered());
        // Off: nothing is judged.
        let mut off = table(100, t0);
        let k = off.key(b"x");
        off.insert(t0, k, b(1), true, C, S).unwrap();
        off.expire(t0 + W);
        assert!(!off.has_unanswered());
    }

    #[test]
    fn entries_of_a_closed_connection_expire_and_count_for_nobody() {
        let t0 = origin();
        let mut t = table(100, t0).with_share(10);
        let old = ConnId::from_parts(5, 1);
        // The slot's next connection: same slot, another generation.
        let new = ConnId::from_parts(5, 9);
        for i in 0..3u8 {
            t.insert(t0, t.key(&[i]), b(0), false, old, S).unwrap();
        }
        let later = t0 + Duration::from_secs(10);
        t.insert(later, t.key(b"new"), b(0), false, new, S).unwrap();
        assert_eq!((t.held_by(old), t.held_by(new)), (0, 1));
        // The old entries expire on time; the new connection's count is untouched.
        t.expire(t0 + W);
        assert_eq!((t.len(), t.held_by(new)), (1, 1));
        t.expire(later + W);
        assert_eq!((t.len(), t.held_by(new)), (0, 0));
    }

    #[test]
    fn reassign_moves_the_entry_and_its_count() {
        let t0 = origin();
        let mut t = table(100, t0);
        let k = t.key(b"call");
        t.insert(t0, k, b(1), true, C, S).unwrap();
        t.reassign(k, b(2));
        assert_eq!(t.lookup(k), Some(b(2)));
        assert_eq!((t.assigned(b(1)), t.assigned(b(2))), (0, 1));
        t.reassign(t.key(b"unknown"), b(0));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn assigned_counts_per_backend() {
        let t0 = origin();
        let mut t = table(100, t0);
        for i in 0..10u8 {
            let k = t.key(&[i]);
            t.insert(t0, k, b(u16::from(i % 3)), i % 2 == 0, C, S)
                .unwrap();
        }
        assert_eq!(
            (t.assigned(b(0)), t.assigned(b(1)), t.assigned(b(2))),
            (4, 3, 3)
        );
        assert_eq!(t.assigned(b(900)), 0);
        t.expire(t0 + W);
        // The five INVITEs are still ringing.
        assert_eq!(t.len(), 5);
        let total: u32 = (0..3).map(|i| t.assigned(b(i))).sum();
        assert_eq!(total, 5);
    }

    #[test]
    fn storage_shrinks_after_a_burst_expires() {
        let t0 = origin();
        let mut t = table(100_000, t0);
        for i in 0..20_000u32 {
            let key = t.key(format!("burst-{i}").as_bytes());
            assert!(t.insert(t0, key, b(0), false, C, S).is_ok());
        }
        let full = t.memory_bytes();
        assert!(full > 20_000 * 40, "{full}");
        let late = t0 + W + MS;
        let key = t.key(b"after");
        assert!(t.insert(late, key, b(0), false, C, S).is_ok());
        t.expire(late);
        assert_eq!(t.len(), 1);
        let after = t.memory_bytes();
        assert!(
            after * 20 < full,
            "{after} bytes after, {full} during the burst"
        );
        assert!(alive_at(&mut t, late, key));
    }

    #[test]
    fn time_going_back_is_clamped() {
        let t0 = origin() + Duration::from_secs(1000);
        let mut t = table(10, t0);
        let k = t.key(b"a");
        t.insert(t0 + Duration::from_secs(10), k, b(0), false, C, S)
            .unwrap();
        // Earlier instants, even before the table's base, neither panic nor move time back.
        let k2 = t.key(b"b");
        t.insert(t0 - Duration::from_secs(500), k2, b(0), false, C, S)
            .unwrap();
        t.expire(t0 - Duration::from_secs(999));
        assert_eq!(t.len(), 2);
        // k2 counts as created at the latest time seen (t0 + 10 s).
        assert!(alive_at(&mut t, t0 + Duration::from_secs(10) + W - MS, k2));
        assert!(!alive_at(&mut t, t0 + Duration::from_secs(10) + W, k2));
    }

    #[test]
    fn rebase_after_weeks_keeps_deadlines() {
        let t0 = origin();
        let mut t = table(10, t0);
        let day = Duration::from_secs(86_400);
        let mut now = t0;
        // Long uptime with live entries across the rebase points.
        for i in 0..70u32 {
            now += day;
            let k = t.key(&i.to_be_bytes());
            t.insert(now, k, b(0), true, C, S).unwrap();
            if i % 2 == 0 {
                t.settle(now + Duration::from_secs(40), k);
                assert!(alive_at(&mut t, now + Duration::from_secs(40) + W - MS, k));
                assert!(!alive_at(&mut t, now + Duration::from_secs(40) + W, k));
            } else {
                assert!(alive_at(&mut t, now + R + W - MS, k));
                assert_eq!(t.next_deadline(), Some(now + R + W));
                assert!(!alive_at(&mut t, now + R + W, k));
            }
        }
        // A jump past u32 milliseconds with entries held.
        let k = t.key(b"jump");
        t.insert(now, k, b(0), false, C, S).unwrap();
        assert!(!alive_at(&mut t, now + day * 100, k));
        assert_eq!(t.len(), 0);
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn sub_millisecond_times_never_expire_early() {
        let t0 = origin();
        let mut t = table(10, t0);
        let k = t.key(b"fine");
        let created = t0 + Duration::from_micros(1_500);
        t.insert(created, k, b(0), false, C, S).unwrap();
        assert!(alive_at(&mut t, created + W - Duration::from_nanos(1), k));
        // At most 1 ms late.
        assert!(!alive_at(&mut t, created + W + MS, k));
    }

    #[test]
    fn entry_layout_is_compact() {
        // The owner (8 bytes) is what the per-connection share costs.
        assert_eq!(size_of::<(Fingerprint, Entry)>(), 36);
        assert_eq!(size_of::<Item>(), 20);
    }

    #[test]
    fn bytes_per_entry_within_budget() {
        // A steady state: 10 000 calls set up one per ms, half INVITEs answered after 2 s.
        let t0 = origin();
        let mut t = table(1_000_000, t0);
        let mut worst = 0;
        for i in 0..200_000u32 {
            let now = t0 + MS * i;
            let k = t.key(&i.to_be_bytes());
            t.insert(now, k, b(0), i % 2 == 0, C, S).unwrap();
            if i >= 2000 && (i - 2000) % 2 == 0 {
                let answered = t.key(&(i - 2000).to_be_bytes());
                t.settle(now, answered);
            }
            t.expire(now);
            if i > 50_000 {
                worst = worst.max(t.memory_bytes() / t.len());
            }
        }
        assert!(
            worst <= 128,
            "{worst} bytes per entry at worst, {} entries at the end",
            t.len()
        );
    }

    /// One step of a random workload.
    #[derive(Clone, Debug)]
    enum Op {
        Insert {
            call: u8,
            backend: u8,
            ringing: bool,
        },
        Settle {
            call: u8,
        },
        Expire,
        /// Milliseconds forward (the clock is in whole ms, so the checks can be exact).
        Advance(u32),
        /// A `now` earlier than the latest, by mistake.
        Back(u16),
        /// Expire exactly at the earliest deadline the rule gives (or 1 ms before it): random
        /// times would almost never hit a boundary.
        ExpireAtBoundary {
            early: bool,
        },
    }

    impl Arbitrary for Op {
        fn arbitrary(g: &mut Gen) -> Op {
            let call = u8::arbitrary(g) % 24;
            match u8::arbitrary(g) % 10 {
                0..=2 => Op::Insert {
                    call,
                    backend: u8::arbitrary(g) % 4,
                    ringing: bool::arbitrary(g),
                },
                3 | 4 => Op::Settle { call },
                5 => Op::Expire,
                6..=8 => Op::Advance(match u8::arbitrary(g) % 16 {
                    0..=4 => u32::from(u8::arbitrary(g)),
                    5..=9 => u32::from(u16::arbitrary(g)),
                    // Close to the ~24.8-day rebase point, so that entries live across it.
                    10 => (1 << 31) - 100_000,
                    _ => u32::arbitrary(g) % 400_000,
                }),
                9 if bool::arbitrary(g) => Op::Back(u16::arbitrary(g)),
                _ => Op::ExpireAtBoundary {
                    early: bool::arbitrary(g),
                },
            }
        }
    }

    /// The rule, computed the slow way: when each held call must be gone.
    #[derive(Clone, Copy)]
    struct Model {
        backend: u16,
        created: u64,
        ringing: bool,
        deadline: u64,
    }

    #[quickcheck]
    fn lifetime_rule_holds(ops: Vec<Op>, capacity: u8, window_s: u8, ringing_s: u8) -> bool {
        let capacity = usize::from(capacity % 16) + 1;
        let w = u64::from(window_s % 64 + 1) * 1000;
        let r = u64::from(ringing_s) * 1000;
        let t0 = origin();
        let mut t = NewCallTable::new(
            capacity,
            Duration::from_millis(w),
            Duration::from_millis(r),
            KEY,
            t0,
        );
        let mut model: HashMap<u8, Model> = HashMap::new();
        let mut now_ms: u64 = 0;
        // The latest `now` the table was given: its clamped clock.
        let mut seen: u64 = 0;
        for op in ops {
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            match op {
                Op::Insert {
                    call,
                    backend,
                    ringing,
                } => {
                    let k = t.key(&[call]);
                    let result = t.insert(at(now_ms), k, b(u16::from(backend)), ringing, C, S);
                    let eff = now_ms.max(seen);
                    seen = eff;
                    model.retain(|_, m| m.deadline > eff);
                    if let Some(m) = model.get(&call) {
                        if result != Ok(()) || t.lookup(k) != Some(b(m.backend)) {
                            return false;
                        }
                    } else if model.len() >= capacity {
                        if result != Err(Refused::Full) {
                            return false;
                        }
                    } else {
                        if result != Ok(()) {
                            return false;
                        }
                        let deadline = if ringing { eff + r + w } else { eff + w };
                        model.insert(
                            call,
                            Model {
                                backend: u16::from(backend),
                                created: eff,
                                ringing,
                                deadline,
                            },
                        );
                    }
                }
                Op::Settle { call } => {
                    let k = t.key(&[call]);
                    t.settle(at(now_ms), k);
                    let eff = now_ms.max(seen);
                    seen = eff;
                    if let Some(m) = model.get_mut(&call) {
                        if m.ringing && m.deadline > eff {
                            m.ringing = false;
                            m.deadline = (eff + w).min(m.created + r + w);
                        }
                    }
                }
                Op::Expire | Op::ExpireAtBoundary { .. } => {
                    if let Op::ExpireAtBoundary { early } = op {
                        let next = model
                            .values()
                            .map(|m| m.deadline)
                            .filter(|d| *d > seen)
                            .min();
                        if let Some(next) = next {
                            now_ms = next - u64::from(early);
                        }
                    }
                    t.expire(at(now_ms));
                    let eff = now_ms.max(seen);
                    seen = eff;
                    model.retain(|_, m| m.deadline > eff);
                    // Every survivor of the rule is held with its backend, nothing else is.
                    if t.len() != model.len() {
                        return false;
                    }
                    for (call, m) in &model {
                        if t.lookup(t.key(&[*call])) != Some(b(m.backend)) {
                            return false;
                        }
                    }
                    if t.next_deadline().is_some_and(|d| d <= at(eff)) {
                        return false;
                    }
                    // Every call came on `C`: its count is the table's.
                    if t.held_by(C) != model.len() {
                        return false;
                    }
                    for backend in 0..4u16 {
                        let want = model.values().filter(|m| m.backend == backend).count();
                        if t.assigned(b(backend)) as usize != want {
                            return false;
                        }
                    }
                }
                Op::Advance(ms) => now_ms += u64::from(ms),
                Op::Back(ms) => now_ms = now_ms.saturating_sub(u64::from(ms)),
            }
            // Entries past their rule but not yet expired are allowed between expire calls; an
            // entry the rule still keeps must always be there.
            for (call, m) in &model {
                if m.deadline > seen && t.lookup(t.key(&[*call])).is_none() {
                    return false;
                }
            }
            if t.len() > capacity {
                return false;
            }
        }
        true
    }
}
