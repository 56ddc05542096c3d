//! Passive health (docs/design.md, "Passive health"): a backend that leaves
//! `passive.unanswered_to_down` forwarded INVITEs in a row without any response, provisional or
//! final, within `passive.unanswered_timeout` is taken out of rotation for a hold, as Envoy's
//! outlier detection ejects a host after consecutive gateway failures. Probes see a stalled
//! backend only at their interval and need several failures; the INVITEs of live traffic show
//! it within the timeout.
//!
//! The new-call table finds the unanswered INVITEs (its entries are the only per-call state);
//! this module counts them per backend. An INVITE counts only if the backend has answered no
//! INVITE at all since it was sent: a slow backend working through a backlog keeps answering
//! older calls, and is not dead (its overload is the overload hold's business); a stalled one
//! answers nothing. A backend that is taken out again without having
//! answered an INVITE in between is held twice as long each time, up to [`HOLD_MAX_FACTOR`]
//! times the base. While out it is down like a backend whose probes failed: no new calls, and
//! its calls' traffic goes to its backup.

use std::time::{Duration, Instant};

use super::timers::BackendTimer;
use super::Balancer;
use crate::ids::BackendId;
use crate::io::{Event, Output};

/// The longest hold, in multiples of the configured one (10 s × 32 ≈ 5 min by default).
const HOLD_MAX_FACTOR: u32 = 32;

/// One backend's record of unanswered INVITEs.
#[derive(Debug, Default)]
pub(super) struct PassiveState {
    /// Unanswered INVITEs since its last response to an INVITE.
    unanswered: u32,
    /// Holds since its last response to an INVITE: each doubles the next.
    holds: u32,
    /// Taken out now; cleared by its `PassiveHoldEnd` timer.
    pub(super) out: bool,
    /// When it last sent a response to an INVITE.
    last_answer: Option<Instant>,
}

impl Balancer {
    /// Judges the backends of the INVITEs the table found unanswered since the last call.
    pub(super) fn judge_unanswered(&mut self) {
        if !self.table.has_unanswered() {
            return;
        }
        for (backend, sent) in self.table.take_unanswered() {
            self.invite_unanswered(backend, sent);
        }
    }

    /// `backend` sent a response to an INVITE: it is alive, whatever came before.
    pub(super) fn invite_answered(&mut self, backend: BackendId) {
        let now = self.now;
        if let Some(b) = self.backends.get_mut(backend.index()) {
            b.passive.unanswered = 0;
            b.passive.holds = 0;
            b.passive.last_answer = Some(now);
        }
    }

    /// The INVITE sent to `backend` at `sent` got no response within the timeout.
    fn invite_unanswered(&mut self, backend: BackendId, sent: Instant) {
        self.stats.unanswered_invites += 1;
        let passive = self.config.config.passive.clone();
        let was_up = self.is_backend_up(backend);
        let Some(b) = self.backends.get_mut(backend.index()) else {
            return;
        };
        // `sent` is rounded up to the millisecond: an answer in that millisecond may look
        // earlier than the INVITE, and the INVITE then counts (the safe side for detection).
        if b.passive.last_answer.is_some_and(|at| at >= sent) {
            // Slow, not stalled: it answered another INVITE since.
            return;
        }
        if b.passive.out {
            // INVITEs sent before it was taken out: already judged.
            return;
        }
        b.passive.unanswered += 1;
        if b.passive.unanswered < passive.unanswered_to_down {
            return;
        }
        let factor = 1u32 << b.passive.holds.min(HOLD_MAX_FACTOR.trailing_zeros());
        let hold: Duration = passive.hold.saturating_mul(factor);
        b.passive.unanswered = 0;
        b.passive.holds = b.passive.holds.saturating_add(1);
        b.passive.out = true;
        self.stats.passive_ejections += 1;
        tracing::warn!(%backend, ?hold, "backend left INVITEs unanswered: taken out");
        if was_up {
            self.outputs
                .push_back(Output::Event(Event::BackendDown(backend)));
        }
        self.count_backends_up();
        self.schedule(backend, BackendTimer::PassiveHoldEnd, hold);
    }

    pub(super) fn end_passive_hold(&mut self, backend: BackendId) {
        let Some(b) = self.backends.get_mut(backend.index()) else {
            return;
        };
        if !b.passive.out {
            return;
        }
        b.passive.out = false;
        if self.is_backend_up(backend) {
            self.outputs
                .push_back(Output::Event(Event::BackendUp(backend)));
        }
        self.count_backends_up();
    }
}
