//! What the world observes of itself as it runs: the trace's simple events, invariant
//! violations, and the once-a-second samples the plots are drawn from.

use std::time::Duration;

use super::World;
use crate::event::Ev;
use crate::invariants::{Violation, ViolationKind};
use crate::queue::Nanos;
use crate::trace::{TraceEvent, TraceKind};
use crate::Sample;

/// Plot sampling period, ns of virtual time.
pub(super) const SAMPLE_EVERY: Nanos = 1_000_000_000;

impl World {
    pub(super) fn trace_simple(&mut self, kind: TraceKind, lb: u8, conn: u32, code: u16) {
        self.trace.record(TraceEvent {
            t_us: self.now / 1000,
            kind,
            lb,
            conn,
            call: u64::MAX,
            code,
            len: 0,
            bytes_hash: 0,
        });
    }

    pub(crate) fn violate(&mut self, kind: ViolationKind, detail: String) {
        self.violation_count += 1;
        self.trace_simple(TraceKind::Violation, 0, 0, kind as u16);
        if self.violations.len() < 50 {
            self.violations.push(Violation {
                t_us: self.now / 1000,
                kind,
                detail,
            });
        }
    }

    /// Caller and backend retransmissions so far.
    pub(crate) fn retransmissions(&self) -> u64 {
        self.callers.retransmissions() + self.farm.retransmissions()
    }

    pub(super) fn sample(&mut self) {
        let table: u64 = self.workers.iter().map(|l| l.stats().table_len).sum();
        let model: u64 = self.workers.iter().map(|l| l.model.len()).sum();
        let retx = self.retransmissions() - self.sample_retx;
        self.sample_retx = self.retransmissions();
        self.samples.push(Sample {
            t_s: self.now as f64 / 1e9,
            table,
            model,
            retransmissions: retx,
            load: self.farm.take_load(),
            active_calls: self.callers.active(),
        });
        let arrivals_done = self.callers.placed() >= self.k.calls;
        if !(arrivals_done && self.callers.active() == 0) {
            self.after(Duration::from_nanos(SAMPLE_EVERY), Ev::Sample);
        }
    }
}
