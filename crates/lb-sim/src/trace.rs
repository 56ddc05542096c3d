//! The event trace of a run and its digest. Every event is folded into a 64-bit FNV-1a-style digest
//! (message bytes included, through a word-at-a-time mix so a million-call storm stays fast);
//! JSON lines are written only when asked for.

use std::io::Write;

use serde::Serialize;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TraceKind {
    /// A call was placed.
    CallStart,
    /// A call ended; `code` is its outcome number.
    CallEnd,
    /// A message was fed to a balancer (`conn` is the connection slot).
    ToLb,
    /// A balancer sent a message to a backend connection.
    LbToBackend,
    /// A balancer sent a message to a frontend connection.
    LbToFrontend,
    /// A balancer asked for a backend connection.
    Connect,
    /// A backend connection came up.
    Connected,
    /// A connection closed (`code`: 0 error, 1 requested, 2 peer).
    Closed,
    /// A backend died (`code` = backend index).
    BackendDown,
    /// A backend came back.
    BackendUp,
    /// A balancer event (`code` names it).
    LbEvent,
    /// An invariant broke.
    Violation,
    /// A balancer instance died (`lb` = the instance).
    InstanceDown,
}

/// One trace event. Times are microseconds of virtual time since the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// Virtual time, µs.
    pub t_us: u64,
    /// What happened.
    pub kind: TraceKind,
    /// Balancer instance.
    pub lb: u8,
    /// Connection slot (or backend index), if any.
    pub conn: u32,
    /// Call number, `u64::MAX` for none.
    pub call: u64,
    /// Method code / status / detail.
    pub code: u16,
    /// Message length, or 0.
    pub len: u32,
    /// Hash of the message bytes, or 0.
    pub bytes_hash: u64,
}

/// Collects the digest and, optionally, JSON lines.
pub struct Trace {
    digest: u64,
    events: u64,
    out: Option<Box<dyn Write>>,
    error: Option<std::io::Error>,
}

impl std::fmt::Debug for Trace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trace")
            .field("digest", &self.digest)
            .field("events", &self.events)
            .finish()
    }
}

impl Trace {
    /// A trace that only digests; give `out` to also write JSON lines.
    pub fn new(out: Option<Box<dyn Write>>) -> Trace {
        Trace {
            digest: FNV_OFFSET,
            events: 0,
            out,
            error: None,
        }
    }

    /// Records one event.
    pub fn record(&mut self, ev: TraceEvent) {
        self.events += 1;
        // FNV-1a over 64-bit words rather than bytes: eight multiplies per event instead of
        // sixty-four (tens of millions of events in the million-call storm).
        let mut h = self.digest;
        for word in [
            ev.t_us,
            ev.kind as u64,
            u64::from(ev.lb),
            u64::from(ev.conn),
            ev.call,
            u64::from(ev.code),
            u64::from(ev.len),
            ev.bytes_hash,
        ] {
            h = (h ^ word).wrapping_mul(FNV_PRIME);
            h ^= h >> 32;
        }
        self.digest = h;
        if let Some(out) = self.out.as_mut() {
            if self.error.is_none() {
                let r = serde_json::to_writer(&mut *out, &ev)
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"));
                if let Err(e) = r {
                    self.error = Some(e);
                }
            }
        }
    }

    /// The digest so far.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Events recorded so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Flushes the JSON lines; reports the first write error.
    pub fn finish(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if let Some(out) = self.out.as_mut() {
            out.flush()?;
        }
        Ok(())
    }
}

/// A fast, deterministic 64-bit hash of message bytes (not cryptographic: it only has to change
/// when the bytes change).
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET ^ (bytes.len() as u64);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h ^ u64::from_le_bytes(w))
            .wrapping_mul(MIX)
            .rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(FNV_PRIME);
    }
    h ^ (h >> 31)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const MIX: u64 = 0x9e37_79b9_7f4a_7c15;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_changes_with_any_field() {
        let ev = TraceEvent {
            t_us: 1,
            kind: TraceKind::ToLb,
            lb: 0,
            conn: 2,
            call: 3,
            code: 1,
            len: 10,
            bytes_hash: hash_bytes(b"INVITE sip:x SIP/2.0"),
        };
        let mut a = Trace::new(None);
        a.record(ev);
        let mut b = Trace::new(None);
        b.record(TraceEvent { t_us: 2, ..ev });
        assert_ne!(a.digest(), b.digest());
        assert_ne!(hash_bytes(b"abcdefghij"), hash_bytes(b"abcdefghik"));
    }
}
