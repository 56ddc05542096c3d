//! Small copyable handles. Only the core creates them (STYLE.md §3).

use std::fmt;

/// A connection: a frontend accepted by the driver or a backend connection the core asked for.
///
/// A slab slot plus a generation: the slot is reused only after the driver reported
/// [`crate::Input::Closed`] for it, so a driver may index its own table by [`ConnId::slot`]; a
/// stale id is a counted no-op inside the core.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    slot: u32,
    generation: u32,
}

impl ConnId {
    pub(crate) fn new(slot: usize, generation: u32) -> ConnId {
        let slot = u32::try_from(slot).expect("connection slab stays below u32::MAX slots");
        ConnId { slot, generation }
    }

    /// The slab slot, dense from 0: drivers use it to index their own socket tables.
    pub fn slot(self) -> usize {
        self.slot as usize
    }

    pub(crate) fn generation(self) -> u32 {
        self.generation
    }

    /// Slot and generation, for the connection token.
    pub(crate) fn parts(self) -> (u32, u32) {
        (self.slot, self.generation)
    }

    /// The id with these parts; it names a live connection only if the core checks it does.
    pub(crate) const fn from_parts(slot: u32, generation: u32) -> ConnId {
        ConnId { slot, generation }
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.slot)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.{}", self.slot, self.generation)
    }
}

/// One backend of the configuration, by its position in the backend list.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct BackendId(u16);

impl BackendId {
    pub(crate) fn new(index: usize) -> BackendId {
        BackendId(u16::try_from(index).expect("config validation caps the backend count"))
    }

    /// Position in the configured backend list.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }

    #[cfg(test)]
    pub(crate) fn for_test(index: u16) -> BackendId {
        BackendId(index)
    }
}

impl fmt::Display for BackendId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// One listen address of the configuration, by its position in the listener list.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ListenerId(u16);

impl ListenerId {
    pub(crate) fn new(index: usize) -> ListenerId {
        ListenerId(u16::try_from(index).expect("config validation caps the listener count"))
    }

    /// Position in the configured listener list.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "l{}", self.0)
    }
}
