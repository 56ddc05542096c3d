//! Handing a burst's freed heap back to the kernel (issue 15 item 5).
//!
//! After a burst (20,000 new calls in 10 ms), the requests read, the responses queued and the
//! new-call table's grown storage are freed again once the burst's entries expire, but glibc's
//! `malloc` keeps free memory in the middle of an arena resident: it only gives back the top
//! of a heap on its own, and a worker thread's arena (every worker runs on a thread of its own,
//! `workers.rs`) is a heap of its own. `malloc_trim(0)` walks every arena and returns the
//! whole free pages inside them (`MADV_DONTNEED`). Measured in `docs/performance.md` ("After a
//! burst"): without it lb-tokio stayed at 2.5× its pre-burst memory 64 s later.
//!
//! [`HeapTrim`] calls it when the table has just shrunk (its bytes fell since the last turn),
//! which is when a burst has ended and its entries have expired, and at most once per
//! [`TRIM_EVERY`]: a shrink within that time is trimmed when it ends. A steady load never
//! shrinks the table, so it never pays for a trim. On targets other than glibc the call
//! compiles to nothing (their allocators return memory by their own rules).

use std::time::{Duration, Instant};

/// The least time between two trims. `malloc_trim` takes the arenas' locks and walks their
/// free lists (well under a millisecond on a heap of tens of MB); once per 5 s bounds that cost
/// while the table shrinks step by step as a burst's entries expire.
pub(crate) const TRIM_EVERY: Duration = Duration::from_secs(5);

/// When to trim: watches the new-call table's bytes turn by turn.
#[derive(Debug, Default)]
pub(crate) struct HeapTrim {
    /// The table's bytes at the last turn.
    table_bytes: usize,
    /// When the heap was last trimmed.
    last_trim: Option<Instant>,
    /// The table shrank since the last trim.
    pending: bool,
}

impl HeapTrim {
    /// One loop turn, with the table's bytes now. Returns whether it trimmed the heap.
    pub(crate) fn turn(&mut self, table_bytes: usize, now: Instant) -> bool {
        if table_bytes < self.table_bytes {
            self.pending = true;
        }
        self.table_bytes = table_bytes;
        if !self.pending || self.cooling(now) {
            return false;
        }
        self.pending = false;
        self.last_trim = Some(now);
        release_free_heap();
        true
    }

    /// When a pending trim is due (a turn must run then), if one is.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if !self.pending {
            return None;
        }
        self.last_trim.map(|t| t + TRIM_EVERY)
    }

    fn cooling(&self, now: Instant) -> bool {
        self.last_trim.is_some_and(|t| now < t + TRIM_EVERY)
    }
}

/// Pins glibc's mmap and trim thresholds at their defaults (128 KiB); call once at start,
/// before the workers' threads exist.
///
/// Left alone, glibc moves both up when a block it had mmap'd is freed: freeing the new-call
/// table's grown map after a burst (about 1.2 MB at 20,000 entries) raised the mmap threshold
/// to that size and the trim threshold to twice it. From then on a worker thread's arena kept
/// up to 2.4 MB of free memory at its top resident, and `malloc_trim` does not help there: it
/// returns free pages inside an arena, but trims the top only of the main one. Measured in
/// `docs/performance.md` ("After a burst"). Pinned, a block of 128 KiB or more has a mapping
/// of its own (given back when freed), and a thread arena's top is trimmed past 128 KiB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub(crate) fn pin_malloc_thresholds() {
    /// glibc's default for both thresholds, pinned.
    const MALLOC_THRESHOLD_BYTES: i32 = 128 * 1024;
    // SAFETY: `mallopt` takes two integers and changes only glibc's allocator settings, under
    // its own lock. Its result (1 on success) is of no use: on failure the defaults stand.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_THRESHOLD_BYTES);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn pin_malloc_thresholds() {}

/// Returns the free pages of every `malloc` arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn release_free_heap() {
    // SAFETY: `malloc_trim` takes no pointers and touches only glibc's own allocator state,
    // under the arenas' locks, so it is safe to call from any thread at any time. Its result
    // (whether memory was released) is of no use here.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_heap() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_the_table_shrinks() {
        let start = Instant::now();
        let mut trim = HeapTrim::default();
        // Growing and steady: never.
        assert!(!trim.turn(0, start));
        assert!(!trim.turn(1 << 20, start));
        assert!(!trim.turn(1 << 20, start + Duration::from_secs(60)));
        assert_eq!(trim.next_deadline(), None);
        // The first shrink trims at once.
        let shrink = start + Duration::from_secs(61);
        assert!(trim.turn(1 << 18, shrink));
        assert_eq!(trim.next_deadline(), None);
        assert!(!trim.turn(1 << 18, shrink + Duration::from_secs(30)));
    }

    #[test]
    fn a_shrink_within_the_cool_down_is_trimmed_when_it_ends() {
        let start = Instant::now();
        let mut trim = HeapTrim::default();
        trim.turn(1 << 20, start);
        assert!(trim.turn(1 << 19, start));
        let soon = start + Duration::from_secs(1);
        assert!(!trim.turn(1 << 18, soon));
        assert_eq!(trim.next_deadline(), Some(start + TRIM_EVERY));
        // Still cooling just before the deadline, even with no new shrink.
        assert!(!trim.turn(1 << 18, start + TRIM_EVERY - Duration::from_millis(1)));
        assert!(trim.turn(1 << 18, start + TRIM_EVERY));
        assert_eq!(trim.next_deadline(), None);
        assert!(!trim.turn(1 << 18, start + TRIM_EVERY * 3));
    }

    /// Resident bytes of this process (`/proc/self/statm`, pages of 4 KiB).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_trim_returns_free_pages_below_a_live_block() {
        // 32 MiB in blocks below glibc's mmap threshold (so they come from the arena), written
        // to, then a live block above them that keeps the arena's top from shrinking: what a
        // burst's buffers and the connections that outlive it leave behind.
        let handle = std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..2048).map(|_| vec![1u8; 16 * 1024]).collect();
            let pin = vec![2u8; 32 * 1024];
            let peak = resident_bytes();
            drop(blocks);
            release_free_heap();
            let after = resident_bytes();
            assert_eq!(pin[0], 2);
            (peak, after)
        });
        let (peak, after) = handle.join().expect("the test thread");
        assert!(
            after + (16 << 20) <= peak,
            "resident {peak} bytes at the peak, {after} after the trim"
        );
    }
}
