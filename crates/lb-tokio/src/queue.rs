//! A connection's output queue as the owner and the connection's tasks share it: its size, and
//! whether it was reported over the high-water mark ([`lb_cli::backpressure`]).
//!
//! The owner adds what it hands the writer and raises `high` when a send takes the queue past
//! the high-water mark; the writer subtracts what it wrote and, below the low-water mark,
//! lowers `high`, wakes a paused reader and tells the owner. A worker's tasks all run on one
//! thread, so the atomics only make the queue `Send`; relaxed ordering is enough.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use lb_cli::backpressure::Watermarks;
use tokio::sync::Notify;

#[derive(Debug)]
pub(crate) struct Queue {
    /// Bytes handed to the writer and not yet written.
    pub(crate) bytes: AtomicUsize,
    /// Reported over the high-water mark, not yet back below the low-water mark.
    high: AtomicBool,
    /// Wakes the reader of a frontend paused while `high`.
    resume: Notify,
    /// The marks in force when the connection opened.
    marks: Watermarks,
}

impl Queue {
    pub(crate) fn new(marks: Watermarks) -> Queue {
        Queue {
            bytes: AtomicUsize::new(0),
            high: AtomicBool::new(false),
            resume: Notify::new(),
            marks,
        }
    }

    /// The marks the connection opened with.
    pub(crate) fn marks(&self) -> &Watermarks {
        &self.marks
    }

    pub(crate) fn is_high(&self) -> bool {
        self.high.load(Ordering::Relaxed)
    }

    /// The owner reported the queue over the high-water mark.
    pub(crate) fn set_high(&self) {
        self.high.store(true, Ordering::Relaxed);
    }

    /// The writer wrote `written` bytes: `true` when that took a queue reported high below the
    /// low-water mark (the caller tells the owner; a paused reader is woken here).
    pub(crate) fn written(&self, written: usize) -> bool {
        let left = self
            .bytes
            .fetch_sub(written, Ordering::Relaxed)
            .saturating_sub(written);
        if self.marks.drained(left, self.is_high()) {
            self.high.store(false, Ordering::Relaxed);
            self.resume.notify_one();
            return true;
        }
        false
    }

    /// A frontend's reader waits here while its responses cannot be written.
    pub(crate) async fn wait_until_writable(&self) {
        while self.is_high() {
            // `notify_one` keeps a permit when nobody waits yet, so a wake-up between the
            // check and the wait is not lost.
            self.resume.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKS: Watermarks = Watermarks {
        high: 100,
        low: 40,
        ceiling: 1000,
    };

    #[test]
    fn the_writer_releases_a_high_queue_below_the_low_mark_only() {
        let q = Queue::new(MARKS);
        q.bytes.store(150, Ordering::Relaxed);
        assert!(!q.written(10), "not reported high: nothing to release");
        q.set_high();
        assert!(!q.written(100), "40 left: not below the low mark");
        assert!(q.is_high());
        assert!(q.written(1), "39 left");
        assert!(!q.is_high());
        assert_eq!(q.bytes.load(Ordering::Relaxed), 39);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_paused_reader_waits_until_the_writer_drains() {
        let q = std::sync::Arc::new(Queue::new(MARKS));
        q.wait_until_writable().await; // not high: returns at once
        q.bytes.store(120, Ordering::Relaxed);
        q.set_high();
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.wait_until_writable().await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "a high queue keeps the reader waiting"
        );
        assert!(q.written(100));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken once drained")
            .expect("the waiter did not panic");
    }
}
