//! # lb-runtime: what siplb's drivers use per connection and per loop
//!
//! The drivers (`lb-tokio`, `lb-mio`, `examples/std-loop`) are a loop around the core; this
//! crate is the kit that loop is built from, the same for every I/O runtime. It knows nothing of
//! the command line or the config file: those, and the operator's side of a process (logging,
//! metrics, the admin API, reloads, the `--workers` harness), are `lb-cli`'s, which builds on
//! this crate.
//!
//! - [`ReadBuffer`], [`write_queue`]: socket reads and queued writes for readiness-based loops.
//! - [`WakePacer`]: under load, at most one wake-up per `batch-window`.
//! - [`backpressure`]: each connection's output queue against the high and low marks and the
//!   output cap.
//! - [`ProxyHeaderReader`]: the PROXY protocol header of a connection's first bytes
//!   (`--proxy-protocol`), read before anything reaches the core.
//! - [`tls`]: the TLS listeners' certificates (reloadable) and the client configuration toward
//!   TLS backends.
//! - [`dns`]: the resolver thread behind dial-out (RFC 3263: SRV, then A/AAAA); [`named`]:
//!   backends configured by host name, resolved at start and again every `resolve-interval`.
//! - [`log_frontend_open`], [`log_frontend_closed`]: one line per frontend connection.
//! - [`os_seed`]: the balancer's seed; [`RunError`]: why a driver stopped.
//! - [`ConnTable`]: the drivers' one connection table, indexed by the core's connection ids, with
//!   the output-cap budget every `Send` is admitted against.
//! - The driver knobs both binaries share: [`SHUTDOWN_FLUSH_MAX`], [`READ_CHUNK_BYTES`],
//!   [`BATCH_MAX`]. (How long a connect or a lingering close may take is the core's decision:
//!   `Config::connect_timeout`, `Config::close_linger`.)

#![warn(missing_docs)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]

pub mod backpressure;
mod conn_table;
pub mod dns;
pub mod named;
mod pacer;
mod proxy;
pub mod tls;

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use lb_core::{CloseReason, ConnId};
use rand::TryRngCore;

/// What a TLS backend connection needs: the client configuration and the name its
/// certificate is checked for (`lb_cli::Ops::backend_tls`).
pub type BackendTls = (
    std::sync::Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);
pub use conn_table::{
    log_frontend_opened, Admission, Conn, ConnState, ConnTable, OutputGauge, QueueGauge,
};
pub use pacer::WakePacer;
pub use proxy::{
    ProxyHeaderReader, ProxyRead, ProxyReject, PROXY_HEADER_BYTES_MAX, PROXY_HEADER_TIMEOUT,
    PROXY_PENDING_MAX,
};

/// How long a driver keeps flushing queued output after SIGINT/SIGTERM before it gives up.
pub const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(2);

/// Size of one read: large enough that a busy connection drains in a few reads, small enough
/// that a thousand idle connections hold little.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Inputs a driver handles per wake-up before it yields to its runtime, so one busy connection
/// cannot starve the timer or the others.
pub const BATCH_MAX: usize = 64;

/// Queue entries per vectored write (Linux's IOV_MAX is 1024; a few dozen fill a segment train).
const IOV_BATCH: usize = 64;

/// Entries a drained output queue keeps room for (2 KiB of `Bytes` handles): what one wake-up
/// of a steady load queues, so such a load never reallocates its queue.
pub const QUEUE_KEPT_CAPACITY: usize = 64;

/// The read side of a readiness loop. Reads land in a scratch area zeroed once at start; only
/// the bytes read are then copied into the `BytesMut` whose pieces go to the core. Reading
/// straight into a `BytesMut`'s spare room would need `unsafe` (the room is uninitialised) or a
/// fresh zeroing of a whole chunk per read, which cost more than the copy of a few hundred bytes
/// (a profile at 1,000 calls/s showed the memset at 4.7 % of the balancer's CPU).
pub struct ReadBuffer {
    scratch: Box<[u8]>,
    pending: BytesMut,
}

impl Default for ReadBuffer {
    fn default() -> ReadBuffer {
        ReadBuffer {
            scratch: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            pending: BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }
}

impl ReadBuffer {
    /// Reads once from `source`; `Ok(0)` is the end of the stream. Take the bytes with
    /// [`ReadBuffer::take`].
    pub fn read_some(&mut self, source: &mut impl std::io::Read) -> std::io::Result<usize> {
        let n = source.read(&mut self.scratch)?;
        if self.pending.capacity() - self.pending.len() < n {
            self.pending.reserve(READ_CHUNK_BYTES.max(n));
        }
        self.pending.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }

    /// The bytes read since the last call, as one piece for the core.
    pub fn take(&mut self) -> BytesMut {
        self.pending.split()
    }

    /// A read of `n` bytes left the socket empty at that moment: with edge-triggered
    /// readiness, a new event comes when more arrives, so reading again now would only find
    /// `WouldBlock` (one wasted syscall per wake-up).
    pub fn was_short(&self, n: usize) -> bool {
        n < self.scratch.len()
    }
}

/// Writes `queue` front to back (vectored, up to 64 entries per call) until it is empty or
/// the sink would block; returns the bytes written, also when it stopped at `WouldBlock`. Each
/// `Bytes` is dropped as soon as it is written, so the core's buffers can reuse the space.
pub fn write_queue(
    queue: &mut VecDeque<Bytes>,
    sink: &mut impl std::io::Write,
) -> std::io::Result<usize> {
    let mut total = 0;
    while !queue.is_empty() {
        let mut slices = [IoSlice::new(&[]); IOV_BATCH];
        let mut count = 0;
        for (slice, bytes) in slices.iter_mut().zip(queue.iter()) {
            *slice = IoSlice::new(bytes);
            count += 1;
        }
        match sink.write_vectored(&slices[..count]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                total += n;
                while n > 0 {
                    let Some(front) = queue.front_mut() else {
                        break;
                    };
                    if front.len() <= n {
                        n -= front.len();
                        queue.pop_front();
                    } else {
                        front.advance(n);
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                detach_backlog(queue);
                return Ok(total);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    release_drained(queue);
    Ok(total)
}

/// Queue entries shorter than this are copied out of the core's output chunks when they have to
/// wait (the core's chunk size, `lb_core`'s `OUT_CHUNK_BYTES`).
pub const DETACH_BELOW_BYTES: usize = 16 * 1024;

/// Makes what waits in `queue` hold only its own bytes. The core splits each message off a
/// shared 16 KiB chunk, and one small message left in a slow peer's queue would keep its whole
/// chunk alive: a peer that reads nothing could make the balancer hold many times the output
/// cap. So each run of entries shorter than [`DETACH_BELOW_BYTES`] becomes one copy of exactly
/// its bytes; longer entries, which hold at most about twice their own length, stay as they
/// are. A copy that is still short is copied again next time, with the entries after it, so a
/// call copies at most [`DETACH_BELOW_BYTES`] besides the new entries: a long backlog is copied
/// about once, not once per write.
/// Called when a write would block; a connection that keeps up never pays for it.
pub fn detach_backlog(queue: &mut VecDeque<Bytes>) {
    if queue.iter().all(|b| b.len() >= DETACH_BELOW_BYTES) {
        return;
    }
    let mut detached = VecDeque::with_capacity(queue.len());
    let mut run: Vec<u8> = Vec::new();
    for entry in queue.drain(..) {
        if entry.len() < DETACH_BELOW_BYTES {
            run.extend_from_slice(&entry);
            continue;
        }
        if !run.is_empty() {
            detached.push_back(Bytes::from(std::mem::take(&mut run)));
        }
        detached.push_back(entry);
    }
    if !run.is_empty() {
        detached.push_back(Bytes::from(run));
    }
    *queue = detached;
}

/// Gives back the room a burst made in an output queue once the queue is empty. A `VecDeque`
/// never shrinks on its own: 20,000 answers queued on four connections left each with room
/// for 4,096 entries (128 KiB, a mapping of its own) for as long as it stayed open
/// (docs/performance.md, "After a burst"). Keeps [`QUEUE_KEPT_CAPACITY`].
pub fn release_drained(queue: &mut VecDeque<Bytes>) {
    if queue.is_empty() && queue.capacity() > QUEUE_KEPT_CAPACITY {
        queue.shrink_to(QUEUE_KEPT_CAPACITY);
    }
}

/// Why a driver stopped with an error after start-up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listen address could not be bound.
    #[error("listen: {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The metrics address could not be served.
    #[error("metrics: {addr}: {reason}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The admin API address could not be served.
    #[error("admin: {addr}: {reason}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The runtime or the poller failed.
    #[error("runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A setting whose value does not load (a TLS certificate or key file, say): the key at fault
/// and why. `lb-cli` reports it as its own `CliError::Invalid`, `siplb: <key>: <reason>`.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidSetting {
    /// The flag / config key at fault, without dashes.
    pub key: &'static str,
    /// What was wrong, one line.
    pub reason: String,
}

impl InvalidSetting {
    pub(crate) fn new(key: &'static str, reason: impl Into<String>) -> InvalidSetting {
        InvalidSetting {
            key,
            reason: reason.into(),
        }
    }
}

/// A seed for `Balancer::new` from the OS's randomness, so two instances never share hash keys.
pub fn os_seed() -> Result<u64, RunError> {
    rand::rngs::OsRng
        .try_next_u64()
        .map_err(|e| RunError::Runtime(std::io::Error::other(e.to_string())))
}

/// Logs a frontend connection the driver accepted.
pub fn log_frontend_open(conn: ConnId, peer: SocketAddr) {
    tracing::info!(conn = %conn, peer = %peer, "frontend connection open");
}

/// Logs a frontend connection accepted behind an L4 balancer: `peer` is the client its PROXY
/// header announced, `proxy` the socket's own peer.
pub fn log_frontend_open_proxied(conn: ConnId, peer: SocketAddr, proxy: SocketAddr) {
    tracing::info!(conn = %conn, peer = %peer, proxy = %proxy, "frontend connection open");
}

/// Logs the end of a frontend connection.
pub fn log_frontend_closed(conn: ConnId, reason: CloseReason) {
    tracing::info!(conn = %conn, ?reason, "frontend connection closed");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Takes `room` bytes, then would block.
    struct Slow {
        room: usize,
        got: Vec<u8>,
    }

    impl std::io::Write for Slow {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Messages split off one chunk, as the core makes them.
    fn chunk_messages(sizes: &[usize]) -> (Vec<Bytes>, Vec<u8>) {
        let mut chunk = BytesMut::with_capacity(DETACH_BELOW_BYTES);
        let mut all = Vec::new();
        let mut messages = Vec::new();
        for (i, &size) in sizes.iter().enumerate() {
            let bytes: Vec<u8> = (0..size).map(|j| (i * 7 + j) as u8).collect();
            all.extend_from_slice(&bytes);
            chunk.extend_from_slice(&bytes);
            messages.push(chunk.split().freeze());
        }
        (messages, all)
    }

    #[test]
    fn what_waits_after_a_blocked_write_holds_only_its_own_bytes() {
        let (messages, all) = chunk_messages(&[300, 500, 200, 700]);
        let mut queue: VecDeque<Bytes> = messages.into();
        let mut sink = Slow {
            room: 450,
            got: Vec::new(),
        };
        assert_eq!(write_queue(&mut queue, &mut sink).unwrap(), 450);
        assert_eq!(queue.len(), 1, "the rest is one copy");
        assert!(queue[0].is_unique(), "it shares no chunk");
        sink.room = usize::MAX;
        assert_eq!(write_queue(&mut queue, &mut sink).unwrap(), all.len() - 450);
        assert!(queue.is_empty());
        assert_eq!(sink.got, all, "every byte once, in order");
    }

    #[test]
    fn long_entries_wait_as_they_are() {
        let long = Bytes::from(vec![7u8; DETACH_BELOW_BYTES]);
        let (small, _) = chunk_messages(&[100, 100]);
        let mut queue: VecDeque<Bytes> = [small[0].clone(), long.clone(), small[1].clone()].into();
        detach_backlog(&mut queue);
        assert_eq!(queue.len(), 3);
        assert_eq!(queue[1].as_ptr(), long.as_ptr(), "not copied");
        assert_ne!(queue[0].as_ptr(), small[0].as_ptr(), "copied");
        assert_eq!(&queue[0][..], &small[0][..]);
        assert_eq!(&queue[2][..], &small[1][..]);
    }

    #[test]
    fn a_queue_that_empties_is_not_copied() {
        let (messages, all) = chunk_messages(&[300, 500]);
        let mut queue: VecDeque<Bytes> = messages.into();
        let mut sink = Slow {
            room: usize::MAX,
            got: Vec::new(),
        };
        assert_eq!(write_queue(&mut queue, &mut sink).unwrap(), all.len());
        assert_eq!(sink.got, all);
    }

    #[test]
    fn a_drained_queue_gives_back_its_burst_room_and_keeps_a_steady_loads() {
        // A burst: 4,096 messages queued, then all written.
        let mut queue: VecDeque<Bytes> = (0..4096).map(|_| Bytes::from_static(b"x")).collect();
        assert!(queue.capacity() >= 4096);
        let mut sink = Vec::new();
        assert_eq!(write_queue(&mut queue, &mut sink).ok(), Some(4096));
        assert!(queue.is_empty());
        assert!(
            queue.capacity() <= QUEUE_KEPT_CAPACITY,
            "{}",
            queue.capacity()
        );
        // A steady load's room stays: no reallocation per wake-up.
        let mut steady: VecDeque<Bytes> = VecDeque::with_capacity(16);
        let room = steady.capacity();
        steady.push_back(Bytes::from_static(b"y"));
        assert_eq!(write_queue(&mut steady, &mut sink).ok(), Some(1));
        assert_eq!(steady.capacity(), room);
        // A queue that still holds bytes keeps its room.
        let mut pending: VecDeque<Bytes> = (0..200).map(|_| Bytes::from_static(b"z")).collect();
        let before = pending.capacity();
        release_drained(&mut pending);
        assert_eq!(pending.capacity(), before);
    }
}
