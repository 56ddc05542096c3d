//! A connection's reader and writer tasks, built so that an idle connection holds no buffer.
//!
//! Measured with heaptrack and `cargo xtask bench memory --idle` (docs/performance.md): with a
//! 64 KiB `BytesMut` held by the reader across its wait and a 64 KiB `BufWriter` held by the
//! writer, each idle connection had about 8 kB of those buffers resident (the pages malloc
//! touched), plus 1.5 kB for an unbounded channel's first block. Now:
//!
//! - the reader waits with no buffer: each wake-up reads into a 4 KiB buffer on the poll's
//!   stack (most SIP messages fit) and hands the core a `BytesMut` of exactly the bytes read;
//!   only when that fills does it go on reading into a heap chunk of [`READ_CHUNK_BYTES`];
//! - the writer takes everything queued at once: one message is written as it is, several are
//!   gathered into one buffer made for that write and dropped after it;
//! - the queue is an [`Outbox`]: a `VecDeque` that allocates only while messages wait, taken
//!   whole by the writer (so a burst's capacity goes with it), and a `Notify`.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::future::Future as _;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use lb_core::{CloseReason, ConnId};
use lb_runtime::backpressure::Watermarks;
use lb_runtime::{DETACH_BELOW_BYTES, READ_CHUNK_BYTES};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

use crate::Note;

/// What the owner tells a writer task.
pub(crate) enum Write {
    Bytes(Bytes),
    /// Flush what came before, shut the socket down, report `Closed { Requested }`.
    Close,
}

/// One connection's queue of writes, shared by the owner (who pushes) and the writer.
pub(crate) struct Outbox {
    queue: Mutex<VecDeque<Write>>,
    ready: Notify,
    /// Bytes pushed and not yet written.
    queued: AtomicUsize,
    /// The owner forgot the connection: the writer ends once the queue is empty.
    gone: AtomicBool,
    /// Reported over the high-water mark, not yet back below the low-water mark
    /// ([`lb_runtime::backpressure`]): the owner raises it, the writer lowers it.
    high: AtomicBool,
    /// Wakes the reader of a frontend paused while `high`.
    resume: Notify,
    /// The low-water mark in force when the connection opened (all the writer needs of the
    /// marks; kept alone, as every idle connection holds one outbox).
    low: usize,
}

impl Outbox {
    pub(crate) fn new(marks: Watermarks) -> Arc<Outbox> {
        Arc::new(Outbox {
            queue: Mutex::default(),
            ready: Notify::new(),
            queued: AtomicUsize::new(0),
            gone: AtomicBool::new(false),
            high: AtomicBool::new(false),
            resume: Notify::new(),
            low: marks.low,
        })
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
    fn written(&self, written: usize) -> bool {
        let left = self
            .queued
            .fetch_sub(written, Ordering::Relaxed)
            .saturating_sub(written);
        if Watermarks::drained_below(self.low, left, self.is_high()) {
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

    /// `len` more bytes are about to be pushed (the connection table's output-cap budget counts
    /// them before the writer can take them, so `written` never counts below zero).
    pub(crate) fn add(&self, len: usize) {
        self.queued.fetch_add(len, Ordering::Relaxed);
    }

    /// Queues `write` and wakes the writer. Its bytes are counted already ([`Outbox::add`]).
    pub(crate) fn push(&self, write: Write) {
        let write = match write {
            // The core splits messages off shared 16 KiB chunks. Behind a writer that is not
            // keeping up, a small message gets its own copy, so a slow peer holds its own bytes,
            // not other connections' chunks ([`lb_runtime::detach_backlog`], lb-mio's way).
            // (`queued` counts this message already: `Outbox::add` came first.)
            Write::Bytes(b)
                if b.len() < DETACH_BELOW_BYTES
                    && self.queued.load(Ordering::Relaxed).saturating_sub(b.len())
                        >= DETACH_BELOW_BYTES =>
            {
                Write::Bytes(Bytes::copy_from_slice(&b))
            }
            other @ (Write::Bytes(_) | Write::Close) => other,
        };
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(write);
        self.ready.notify_one();
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// The owner has forgotten the connection (its `Closed` is fed): the writer may end.
    pub(crate) fn forget(&self) {
        self.gone.store(true, Ordering::Relaxed);
        self.ready.notify_one();
    }

    /// Everything queued, or `None` once the owner forgot the connection and nothing is left.
    async fn next_batch(&self) -> Option<VecDeque<Write>> {
        loop {
            let batch =
                std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner));
            if !batch.is_empty() {
                return Some(batch);
            }
            if self.gone.load(Ordering::Relaxed) {
                return None;
            }
            // `notify_one` keeps a permit when nobody waits, so a push between the take and
            // this await is not lost.
            self.ready.notified().await;
        }
    }
}

/// Bytes read at once into the poll's stack before any heap buffer is made.
const STACK_READ_BYTES: usize = 4096;

/// One wake-up's bytes: `Ok(None)` at end of stream.
async fn read_chunk<R: AsyncRead + Unpin>(read: &mut R) -> io::Result<Option<BytesMut>> {
    poll_fn(|cx| poll_read_chunk(&mut *read, cx)).await
}

fn poll_read_chunk<R: AsyncRead + Unpin>(
    read: &mut R,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Option<BytesMut>>> {
    // Uninitialised (safely: `ReadBuf` tracks what the read filled), so a wake-up does not
    // first zero 4 KiB.
    let mut stack = [MaybeUninit::<u8>::uninit(); STACK_READ_BYTES];
    let mut first = ReadBuf::uninit(&mut stack);
    match Pin::new(&mut *read).poll_read(cx, &mut first) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
        Poll::Ready(Ok(())) => {}
    }
    let filled = first.filled();
    if filled.is_empty() {
        return Poll::Ready(Ok(None));
    }
    let mut bytes = BytesMut::from(filled);
    if filled.len() < STACK_READ_BYTES {
        return Poll::Ready(Ok(Some(bytes)));
    }
    // A full stack buffer: more is probably waiting. Read on into a heap chunk until the
    // socket has nothing more for now (its waker is then registered) or the chunk is full.
    bytes.reserve(READ_CHUNK_BYTES - STACK_READ_BYTES);
    while bytes.len() < READ_CHUNK_BYTES {
        let more = std::pin::pin!(read.read_buf(&mut bytes));
        match more.poll(cx) {
            Poll::Ready(Ok(n)) if n > 0 => {}
            // End of stream or an error after some bytes: hand over the bytes now; the next
            // read sees the end or the error again.
            Poll::Ready(_) | Poll::Pending => break,
        }
    }
    Poll::Ready(Ok(Some(bytes)))
}

/// Reads `conn` until it ends. A frontend's reader (`pause`: its outbox) waits before each
/// read while its responses cannot be written, so it cannot pile up more work.
pub(crate) async fn read_loop(
    conn: ConnId,
    mut read: impl AsyncRead + Unpin,
    notes: mpsc::Sender<Note>,
    pause: Option<Arc<Outbox>>,
) {
    let reason = loop {
        if let Some(outbox) = &pause {
            outbox.wait_until_writable().await;
        }
        match read_chunk(&mut read).await {
            Ok(None) => break CloseReason::PeerClosed,
            Ok(Some(bytes)) => {
                let Some(permit) = reserve(&notes).await else {
                    return;
                };
                permit.send(Note::Received { conn, bytes });
            }
            Err(e) => {
                tracing::debug!(conn = %conn, error = %e, "read failed");
                break CloseReason::Error;
            }
        }
    };
    tell_closed(&notes, conn, reason).await;
}

/// Room for one note, `None` once the owner is gone. Every connection's task awaits this, so
/// its future is kept out of theirs: a free slot is taken at once, and only a full channel
/// (a busy owner) costs a boxed wait. The note itself is never held across the wait.
async fn reserve(notes: &mpsc::Sender<Note>) -> Option<mpsc::Permit<'_, Note>> {
    match notes.try_reserve() {
        Ok(permit) => Some(permit),
        Err(mpsc::error::TrySendError::Full(())) => Box::pin(notes.reserve()).await.ok(),
        Err(mpsc::error::TrySendError::Closed(())) => None,
    }
}

/// Writes the messages of `batch` up to its `Close` and flushes; returns the bytes written.
/// Several messages leave in one write (TCP_NODELAY sends it at once); the gathering buffer
/// lives for this write only.
async fn write_batch(
    out: &mut (impl AsyncWrite + Unpin),
    batch: VecDeque<Write>,
) -> io::Result<usize> {
    let parts: Vec<Bytes> = batch
        .into_iter()
        .map_while(|w| match w {
            Write::Bytes(b) => Some(b),
            Write::Close => None,
        })
        .collect();
    let written: usize = parts.iter().map(Bytes::len).sum();
    match parts.as_slice() {
        [] => {}
        [one] => out.write_all(one).await?,
        many => {
            let mut all = Vec::with_capacity(written);
            for part in many {
                all.extend_from_slice(part);
            }
            out.write_all(&all).await?;
        }
    }
    out.flush().await?;
    Ok(written)
}

/// Sends the connection's `Closed` note.
async fn tell_closed(notes: &mpsc::Sender<Note>, conn: ConnId, reason: CloseReason) {
    if let Some(permit) = reserve(notes).await {
        permit.send(Note::Closed { conn, reason });
    }
}

pub(crate) async fn write_loop(
    conn: ConnId,
    mut out: impl AsyncWrite + Unpin,
    outbox: Arc<Outbox>,
    notes: mpsc::Sender<Note>,
) {
    let reason = loop {
        // `None`: the owner forgot the connection, having fed its Closed already.
        let Some(batch) = outbox.next_batch().await else {
            return;
        };
        let close = batch.iter().any(|w| matches!(w, Write::Close));
        // Boxed: an idle writer's task holds only its wait for the next batch.
        let written = match Box::pin(write_batch(&mut out, batch)).await {
            Ok(written) => written,
            Err(e) => {
                tracing::debug!(conn = %conn, error = %e, "write failed");
                break CloseReason::Error;
            }
        };
        if outbox.written(written) {
            let Some(permit) = reserve(&notes).await else {
                return;
            };
            permit.send(Note::Drained { conn });
        }
        if close {
            let _ = out.shutdown().await;
            break CloseReason::Requested;
        }
    };
    tell_closed(&notes, conn, reason).await;
}

/// A TLS frontend's socket: the bytes that came after its PROXY header (the start of the
/// ClientHello, read with the header) are given to rustls first, then the socket's own.
/// Empty, and costing nothing, on a listener without PROXY headers.
pub(crate) struct Prefixed {
    prefix: BytesMut,
    inner: TcpStream,
}

impl Prefixed {
    pub(crate) fn new(prefix: BytesMut, inner: TcpStream) -> Prefixed {
        Prefixed { prefix, inner }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

    fn future_size<A, B, C, D, F: Fn(A, B, C, D) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// Every connection holds a reader and a writer future for its whole life; they were
    /// 536 and 592 bytes while they held a `Note` across their waits (docs/performance.md).
    #[test]
    fn connection_tasks_stay_small() {
        let read = future_size(
            |c: ConnId, r: OwnedReadHalf, n: mpsc::Sender<Note>, p: Option<Arc<Outbox>>| {
                read_loop(c, r, n, p)
            },
        );
        let write = future_size(
            |c: ConnId, w: OwnedWriteHalf, o: Arc<Outbox>, n: mpsc::Sender<Note>| {
                write_loop(c, w, o, n)
            },
        );
        assert!(
            read <= 256 && write <= 320,
            "read_loop {read} B, write_loop {write} B"
        );
    }

    #[tokio::test]
    async fn reads_small_and_large_chunks_and_the_end() {
        let (mut a, mut b) = tokio::io::duplex(256 * 1024);
        a.write_all(b"hello").await.unwrap();
        let got = read_chunk(&mut b).await.unwrap().unwrap();
        assert_eq!(&got[..], b"hello");
        let big: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        a.write_all(&big).await.unwrap();
        drop(a);
        let mut all = Vec::new();
        while let Some(chunk) = read_chunk(&mut b).await.unwrap() {
            assert!(chunk.len() <= READ_CHUNK_BYTES);
            all.extend_from_slice(&chunk);
        }
        assert_eq!(all, big);
    }

    const MARKS: Watermarks = Watermarks {
        high: 100,
        low: 40,
        ceiling: 1000,
    };

    #[test]
    fn the_writer_releases_a_high_queue_below_the_low_mark_only() {
        let q = Outbox::new(MARKS);
        q.queued.store(150, Ordering::Relaxed);
        assert!(!q.written(10), "not reported high: nothing to release");
        q.set_high();
        assert!(!q.written(100), "40 left: not below the low mark");
        assert!(q.is_high());
        assert!(q.written(1), "39 left");
        assert!(!q.is_high());
        assert_eq!(q.queued(), 39);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_paused_reader_waits_until_the_writer_drains() {
        let q = Outbox::new(MARKS);
        q.wait_until_writable().await; // not high: returns at once
        q.queued.store(120, Ordering::Relaxed);
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
