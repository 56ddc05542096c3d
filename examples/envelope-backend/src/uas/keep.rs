//! Dialogs that outlive a balancer connection (issue 15 item 7).
//!
//! A dialog is between the user agents, not bound to one transport connection (RFC 3261 §12;
//! §18 lets every request open a new one). When the balancer restarts, its connection to the
//! backend closes and a new one comes; the calls answered on the old one must still take their
//! BYEs and re-INVITEs. [`Keeping`] wraps the UAS of one connection: when the connection ends
//! its answered calls go to a process-wide store, and the UAS of the next connection takes them
//! over. Calls still ringing are not kept: their INVITE transaction died with the connection.
//!
//! With several balancer connections at once (a balancer with `--workers`), each holds the
//! dialogs it answered; the store only bridges a connection that ended to the next one.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

use super::{Call, CallState, Uas};

/// Answered calls of connections that ended, waiting for the next connection.
static KEPT: Mutex<Option<HashMap<String, Call>>> = Mutex::new(None);

/// A connection's UAS that takes over the kept dialogs at start and keeps its answered ones
/// when dropped, however the connection ended.
pub(crate) struct Keeping<'c>(pub(super) Uas<'c>);

impl<'c> Keeping<'c> {
    pub(crate) fn new(mut uas: Uas<'c>) -> Keeping<'c> {
        let kept = KEPT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .unwrap_or_default();
        for (call_id, call) in kept {
            uas.calls.entry(call_id).or_insert(call);
        }
        Keeping(uas)
    }
}

impl Drop for Keeping<'_> {
    fn drop(&mut self) {
        let mut kept = KEPT.lock().unwrap_or_else(PoisonError::into_inner);
        let store = kept.get_or_insert_with(HashMap::new);
        for (call_id, call) in self.0.calls.drain() {
            if call.state == CallState::Answered {
                store.insert(call_id, call);
            }
        }
    }
}

impl<'c> Deref for Keeping<'c> {
    type Target = Uas<'c>;

    fn deref(&self) -> &Uas<'c> {
        &self.0
    }
}

impl<'c> DerefMut for Keeping<'c> {
    fn deref_mut(&mut self) -> &mut Uas<'c> {
        &mut self.0
    }
}
