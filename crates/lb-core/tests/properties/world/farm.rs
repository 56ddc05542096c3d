//! Steps on time and the farm: virtual time, backends killed, reconnected and drained; the
//! early Timeouts and the full table of the options.

use std::time::{Duration, Instant};

use lb_core::{BackendChange, CloseReason, Event, Input};
use lb_testkit::Contract;

use super::World;
use crate::FRONTENDS;

impl World {
    /// Moves time forward by `by`, feeding `Timeout` at every deadline on the way (sometimes a
    /// little late, as a real timer fires).
    pub(super) fn advance(&mut self, by: Duration) -> Result<(), String> {
        self.advance_to(self.now + by)
    }

    pub(super) fn advance_to(&mut self, target: Instant) -> Result<(), String> {
        let mut rounds = 0;
        while let Some(deadline) = self.lb.poll_timeout() {
            if deadline > target {
                break;
            }
            ensure!(deadline > self.now, "an overdue deadline was left behind");
            let late = Duration::from_micros(self.rng.below(4) * self.rng.below(3_000));
            self.now = (deadline + late).min(target);
            self.input(Input::Timeout);
            let outs = self.collect()?;
            ensure!(outs.sends.is_empty(), "a timeout sent {:?}", outs.sends);
            Contract::timed_out(self.now, self.lb.poll_timeout())?;
            rounds += 1;
            ensure!(rounds < 100_000, "deadlines without end");
        }
        self.now = self.now.max(target);
        self.input(Input::Timeout);
        Contract::timed_out(self.now, self.lb.poll_timeout())?;
        let outs = self.collect()?;
        ensure!(outs.sends.is_empty(), "a timeout sent {:?}", outs.sends);
        Ok(())
    }

    pub(super) fn kill(&mut self, j: usize) -> Result<(), String> {
        let Some(conn) = self.be[j].conn.take() else {
            return Ok(());
        };
        let was_up = std::mem::replace(&mut self.be[j].up, false);
        self.input(Input::Closed {
            conn,
            reason: if was_up {
                CloseReason::PeerClosed
            } else {
                CloseReason::Error
            },
        });
        self.dead.push(conn);
        let outs = self.collect()?;
        ensure!(
            outs.sends.is_empty(),
            "a closed backend caused {:?}",
            outs.sends
        );
        ensure!(
            outs.events.contains(&Event::BackendDown(self.id(j))) == was_up,
            "BackendDown({j}) when it was up: {was_up}; events {:?}",
            outs.events
        );
        Ok(())
    }

    pub(super) fn reconnect(&mut self, j: usize) -> Result<(), String> {
        if self.be[j].up {
            return Ok(());
        }
        let mut rounds = 0;
        while self.be[j].conn.is_none() {
            let Some(deadline) = self.lb.poll_timeout() else {
                return Err(format!("backend {j} is down and no reconnection is due"));
            };
            self.advance_to(deadline)?;
            rounds += 1;
            ensure!(rounds < 64, "backend {j} never got a Connect");
        }
        self.connected(j)
    }

    pub(super) fn drain(&mut self, j: usize, on: bool) -> Result<(), String> {
        let id = self.id(j);
        self.input(Input::Backends(if on {
            BackendChange::Drain(id)
        } else {
            BackendChange::Resume(id)
        }));
        let changed = self.be[j].draining != on;
        self.be[j].draining = on;
        let outs = self.collect()?;
        ensure!(outs.sends.is_empty(), "draining sent {:?}", outs.sends);
        let event = Event::BackendDraining {
            backend: id,
            draining: on,
        };
        ensure!(
            outs.events.contains(&event) == changed,
            "draining {j} {on}: events {:?}",
            outs.events
        );
        Ok(())
    }

    /// Fills the table to its capacity with new calls, then requires one more to get 503.
    pub(super) fn fill_table(&mut self) -> Result<(), String> {
        for j in 0..self.n() {
            if self.be[j].draining {
                self.drain(j, false)?;
            }
        }
        if self.up_mask() == 0 {
            self.reconnect(0)?;
        }
        let capacity = self.options.table_capacity as u64;
        let mut k = self.calls.len().max(usize::from(u8::MAX) + 1);
        while self.lb.stats().table_len < capacity {
            let len = self.lb.stats().table_len;
            self.invite(k, k % FRONTENDS)?;
            ensure!(
                matches!(self.calls[k], Some(Some(_))),
                "call {k} refused at {len} of {capacity} entries"
            );
            ensure!(
                self.lb.stats().table_len == len + 1,
                "a new call made no entry"
            );
            k += 1;
        }
        self.invite(k, 0)?;
        ensure!(
            matches!(self.calls[k], Some(None)),
            "a new call was accepted into a full table"
        );
        ensure!(
            self.lb.stats().table_len == capacity,
            "table holds {} of {capacity}",
            self.lb.stats().table_len
        );
        self.invariants()
    }

    pub(super) fn early_timeout(&mut self) -> Result<(), String> {
        let before = self.lb.stats().clone();
        let deadline = self.lb.poll_timeout();
        self.input(Input::Timeout);
        let outs = self.collect()?;
        ensure!(
            outs.sends.is_empty() && outs.events.is_empty(),
            "an early timeout did {outs:?}"
        );
        ensure!(
            *self.lb.stats() == before,
            "an early timeout changed the counters: {before} → {}",
            self.lb.stats()
        );
        ensure!(
            self.lb.poll_timeout() == deadline,
            "an early timeout moved the deadline"
        );
        Ok(())
    }
}
