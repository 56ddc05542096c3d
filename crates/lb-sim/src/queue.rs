//! The event queue, ordered by (time, sequence number) so equal times keep their scheduling
//! order and every run is deterministic.
//!
//! Three structures, chosen by measurement (the million-call storm, where a plain binary heap of
//! events was a fifth of the profile):
//! - irregular delays go to a timing wheel of ~1 ms buckets spanning ~69 s (later ones wait in an
//!   overflow heap); only the current bucket's events are ordered, by a small binary heap of
//!   24-byte keys over the bucket's events staged beside it;
//! - each constant delay (Timer B/F, the caller's guard) has a FIFO lane, in which deadlines
//!   arrive already sorted because the clock never goes back.
//!
//! Events live inline in the buckets, not in a slab beside them: a bucket is read front to
//! back into the staging area when its millisecond comes, where a slab slot written up to a
//! minute earlier was a cache miss on every pop (a twentieth of the storm's time). A drained
//! bucket gives its memory back, so the wheel holds only what is scheduled.
//!
//! Exact (time, sequence) order is kept throughout: the wheel only decides when an event enters
//! the heap, never its order.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

/// Nanoseconds of virtual time.
pub(crate) type Nanos = u64;

/// See the module docs.
#[derive(Debug)]
pub(crate) struct EventQueue<T> {
    /// Keys of the events of buckets up to `cursor`, which wait in `staged`.
    heap: BinaryHeap<Key>,
    staged: Vec<Option<T>>,
    /// Staged events handed to [`EventQueue::warm`] already.
    warmed: usize,
    wheel: Vec<Vec<Entry<T>>>,
    in_wheel: usize,
    /// Events at or beyond bucket `cursor + SLOTS`.
    far: BinaryHeap<Entry<T>>,
    cursor: u64,
    fifos: Vec<VecDeque<(Nanos, u64, T)>>,
    /// Per lane: how many of its first events [`EventQueue::warm`] handed out already.
    fifo_warmed: Vec<usize>,
    seq: u64,
}

/// A staged event's place in the order.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    at: Nanos,
    seq: u64,
    idx: u32,
}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Key) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Key {
    // Reversed: BinaryHeap is a max-heap and the earliest (time, seq) must come first.
    fn cmp(&self, o: &Key) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// An event and when it is due; ordered by `(at, seq)` alone.
#[derive(Debug)]
struct Entry<T> {
    at: Nanos,
    seq: u64,
    ev: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, o: &Entry<T>) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, o: &Entry<T>) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl<T> Ord for Entry<T> {
    // Reversed: BinaryHeap is a max-heap and the earliest (time, seq) must come first.
    fn cmp(&self, o: &Entry<T>) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

impl<T> EventQueue<T> {
    /// A queue with `fifos` constant-delay lanes.
    pub(crate) fn new(fifos: usize) -> EventQueue<T> {
        EventQueue {
            heap: BinaryHeap::new(),
            staged: Vec::new(),
            warmed: 0,
            wheel: (0..SLOTS).map(|_| Vec::new()).collect(),
            in_wheel: 0,
            far: BinaryHeap::new(),
            cursor: 0,
            fifos: (0..fifos).map(|_| VecDeque::new()).collect(),
            fifo_warmed: vec![0; fifos],
            seq: 0,
        }
    }

    /// Schedules `ev` at `at`.
    pub(crate) fn push(&mut self, at: Nanos, ev: T) {
        self.seq += 1;
        self.place(Entry {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn place(&mut self, e: Entry<T>) {
        let bucket = e.at >> SHIFT;
        if bucket <= self.cursor {
            self.stage(e);
        } else if bucket < self.cursor + SLOTS as u64 {
            self.wheel[(bucket as usize) & (SLOTS - 1)].push(e);
            self.in_wheel += 1;
        } else {
            self.far.push(e);
        }
    }

    /// Moves the next non-empty bucket into the heap once the heap runs dry.
    fn refill(&mut self) {
        while self.heap.is_empty() && (self.in_wheel > 0 || !self.far.is_empty()) {
            // Every staged event was popped (the heap is empty): start the area afresh, before
            // the overflow heap stages events due at the new cursor.
            self.staged.clear();
            self.warmed = 0;
            self.cursor += 1;
            if self.in_wheel == 0 {
                if let Some(e) = self.far.peek() {
                    self.cursor = self.cursor.max(e.at >> SHIFT);
                }
            }
            while self
                .far
                .peek()
                .is_some_and(|e| (e.at >> SHIFT) < self.cursor + SLOTS as u64)
            {
                let e = self.far.pop().expect("peeked");
                self.place(e);
            }
            let idx = (self.cursor as usize) & (SLOTS - 1);
            let bucket = std::mem::take(&mut self.wheel[idx]);
            self.in_wheel -= bucket.len();
            for e in bucket {
                self.stage(e);
            }
        }
    }

    fn stage(&mut self, e: Entry<T>) {
        let idx = self.staged.len() as u32;
        self.staged.push(Some(e.ev));
        self.heap.push(Key {
            at: e.at,
            seq: e.seq,
            idx,
        });
    }

    /// Hands `f` each event staged since the last call, and each lane event due in the same
    /// millisecond not handed out yet: the events the next pops return. The world reads the
    /// call state they will touch, all at once, so the processor fetches those cache lines side
    /// by side instead of one stall per event.
    pub(crate) fn warm(&mut self, mut f: impl FnMut(&T)) {
        for ev in self.staged[self.warmed..].iter().flatten() {
            f(ev);
        }
        self.warmed = self.staged.len();
        for (lane, warmed) in self.fifos.iter().zip(&mut self.fifo_warmed) {
            while let Some((at, _, ev)) = lane.get(*warmed) {
                if (at >> SHIFT) > self.cursor {
                    break;
                }
                f(ev);
                *warmed += 1;
            }
        }
    }

    /// Schedules `ev` at `at` in constant-delay lane `lane`; the caller guarantees that `at` is
    /// not earlier than anything already in that lane.
    pub(crate) fn push_fifo(&mut self, lane: usize, at: Nanos, ev: T) {
        self.seq += 1;
        debug_assert!(
            self.fifos[lane].back().is_none_or(|b| b.0 <= at),
            "lane deadlines must not go back"
        );
        self.fifos[lane].push_back((at, self.seq, ev));
    }

    /// Removes and returns the earliest event.
    #[cfg(test)]
    pub(crate) fn pop(&mut self) -> Option<(Nanos, T)> {
        self.pop_before(None).ok()
    }

    /// Removes and returns the earliest event if it is due strictly before `limit` (or there is
    /// no limit). Otherwise `Err` with the earliest time, `None` when empty. One call where
    /// peek-then-pop would search twice: this is the simulator's innermost loop.
    pub(crate) fn pop_before(&mut self, limit: Option<Nanos>) -> Result<(Nanos, T), Option<Nanos>> {
        self.refill();
        let Some((at, _, lane)) = self.earliest() else {
            return Err(None);
        };
        if limit.is_some_and(|l| at >= l) {
            return Err(Some(at));
        }
        let popped = match lane {
            None => self
                .heap
                .pop()
                .and_then(|k| self.staged[k.idx as usize].take().map(|ev| (k.at, ev))),
            Some(l) => {
                self.fifo_warmed[l] = self.fifo_warmed[l].saturating_sub(1);
                self.fifos[l].pop_front().map(|(at, _, ev)| (at, ev))
            }
        };
        popped.ok_or(Some(at))
    }

    /// Events waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
            + self.in_wheel
            + self.far.len()
            + self.fifos.iter().map(VecDeque::len).sum::<usize>()
    }

    fn earliest(&self) -> Option<(Nanos, u64, Option<usize>)> {
        let mut best = self.heap.peek().map(|k| (k.at, k.seq, None));
        for (l, f) in self.fifos.iter().enumerate() {
            if let Some(&(at, seq, _)) = f.front() {
                if best.is_none_or(|(bat, bseq, _)| (at, seq) < (bat, bseq)) {
                    best = Some((at, seq, Some(l)));
                }
            }
        }
        best
    }
}

/// log2 of a wheel bucket's width in ns (~1 ms).
const SHIFT: u32 = 20;
/// Buckets in the wheel (a power of two): ~69 s.
const SLOTS: usize = 1 << 16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_time_then_schedule_order_across_heap_and_lanes() {
        let mut q = EventQueue::new(1);
        q.push(10, "b");
        q.push_fifo(0, 10, "c");
        q.push(5, "a");
        q.push(10, "d");
        q.push_fifo(0, 20, "e");
        let order: Vec<&str> = std::iter::from_fn(|| q.pop().map(|(_, e)| e)).collect();
        assert_eq!(order, ["a", "b", "c", "d", "e"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn wheel_and_overflow_keep_exact_order() {
        let mut q = EventQueue::new(0);
        let times = [
            500_000_000_000u64,
            3,
            1 << 20,
            (1 << 20) + 1,
            70_000_000_000,
            3,
            1,
            2 << 20,
        ];
        for (i, &t) in times.iter().enumerate() {
            q.push(t, i);
        }
        let mut expect: Vec<(u64, usize)> = times.iter().copied().zip(0..).collect();
        expect.sort();
        let mut got = Vec::new();
        while let Some((at, i)) = q.pop() {
            got.push((at, i));
            if i == 6 {
                // Pushed while draining: lands in the current bucket, still in order.
                q.push(at + 1, 100);
                expect.push((at + 1, 100));
                expect.sort();
            }
        }
        assert_eq!(got, expect);
    }

    #[test]
    fn random_times_across_wheel_and_overflow_pop_in_exact_order() {
        // Times from 0 to ~300 s (the wheel and the overflow heap), some equal, some pushed while
        // draining (at or after the time just popped, as the world does).
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut q = EventQueue::new(0);
        let mut expect = Vec::new();
        let mut seq = 0u64;
        for _ in 0..5_000 {
            let t = match next() % 4 {
                0 => next() % (2 << 20),
                1 => next() % 3_000_000_000,
                2 => next() % 300_000_000_000,
                _ => (next() % 8) << 30,
            };
            seq += 1;
            q.push(t, seq);
            expect.push((t, seq));
        }
        let mut got = Vec::new();
        while let Some((at, s)) = q.pop() {
            got.push((at, s));
            if s % 7 == 0 && seq < 8_000 {
                let t = at + next() % 200_000_000_000;
                seq += 1;
                q.push(t, seq);
                expect.push((t, seq));
            }
        }
        expect.sort();
        assert_eq!(got, expect);
    }
}
