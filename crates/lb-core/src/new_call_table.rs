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
use crate::source::SourceKey;

mod sources;

use sources::{source_hash_key, SourceCounts};

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
mod tests;
