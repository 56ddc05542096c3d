//! Per-call state in a dense array, indexed by call number through a small index.
//!
//! A storm places a million calls but keeps only tens of thousands going, and their timers
//! and messages touch them in random order. One heap box per call (as before) cost an
//! allocation and a free per call and scattered the live state over the heap; here the live
//! state sits in as many slots as calls are live: a finished call's slot is taken by the next
//! call placed, so the slots in use stay few, dense and warm. The index costs 4 bytes per call
//! placed.

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Slots<T> {
    /// Per call number: its slot in `slots`, [`EMPTY`] before it is placed and once removed.
    index: Vec<u32>,
    slots: Vec<T>,
    /// Slots of removed calls, taken last in, first out (the most recently used memory).
    free: Vec<u32>,
}

/// [`Slots::index`] of a call that holds no slot.
const EMPTY: u32 = u32::MAX;

impl<T> Slots<T> {
    pub(crate) fn new() -> Slots<T> {
        Slots {
            index: Vec::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }

    /// Call `call`'s state, while it holds a slot.
    pub(crate) fn get(&self, call: u32) -> Option<&T> {
        let slot = *self.index.get(call as usize)?;
        self.slots.get(slot as usize)
    }

    /// Call `call`'s state, while it holds a slot.
    pub(crate) fn get_mut(&mut self, call: u32) -> Option<&mut T> {
        let slot = *self.index.get(call as usize)?;
        self.slots.get_mut(slot as usize)
    }

    /// Gives `call` the state `value` (replacing any it held).
    pub(crate) fn insert(&mut self, call: u32, value: T) {
        let c = call as usize;
        if self.index.len() <= c {
            self.index.resize(c + 1, EMPTY);
        }
        if let Some(held) = self.slots.get_mut(self.index[c] as usize) {
            *held = value;
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = value;
                slot
            }
            None => {
                self.slots.push(value);
                (self.slots.len() - 1) as u32
            }
        };
        self.index[c] = slot;
    }

    /// Frees `call`'s slot for the next call placed; returns its state, which stays in the
    /// slot until then (the caller drops what it must not keep).
    pub(crate) fn remove(&mut self, call: u32) -> Option<&mut T> {
        let entry = self.index.get_mut(call as usize)?;
        let slot = std::mem::replace(entry, EMPTY);
        let value = self.slots.get_mut(slot as usize)?;
        self.free.push(slot);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_calls_slot_goes_to_the_next_call_and_the_old_number_finds_nothing() {
        let mut s = Slots::new();
        s.insert(0, "a");
        s.insert(2, "c");
        assert_eq!(s.get(1), None);
        assert_eq!(s.get(2), Some(&"c"));
        assert_eq!(s.remove(0), Some(&mut "a"));
        assert_eq!(s.remove(0), None);
        assert_eq!(s.get(0), None);
        s.insert(3, "d");
        assert_eq!(s.get(3), Some(&"d"));
        assert_eq!(s.get(0), None);
        assert_eq!(s.slots.len(), 2, "call 3 took call 0's slot");
        s.insert(3, "e");
        assert_eq!(s.get(3), Some(&"e"));
        assert_eq!(s.slots.len(), 2, "replacing keeps the slot");
        assert_eq!(s.get(99), None);
        assert_eq!(s.remove(99), None);
    }
}
