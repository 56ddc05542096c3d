//! One balancer connection seen from the backend: envelopes in, envelopes out.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_core::envelope::{encode_header, Envelope, EnvelopeDecoder, EnvelopeError, Transport};

/// Largest SIP payload accepted in one envelope unless [`BackendConn::with_payload_max`] says
/// otherwise: the same 64 KiB a SIP message over TCP is usually limited to.
pub const PAYLOAD_MAX_DEFAULT: usize = 64 * 1024;

/// A SIP message the balancer forwarded to this backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    /// The frontend the message came from; hand it back as the next hop of the answers.
    pub source: Option<SocketAddr>,
    /// Transport of `source`.
    pub transport: Transport,
    /// The whole SIP message, exactly as the balancer sent it.
    pub sip: Bytes,
}

/// What [`BackendConn::recv_until`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// A whole message.
    Message(Inbound),
    /// The deadline passed first; the connection is still usable.
    Deadline,
    /// The balancer closed the connection cleanly between envelopes.
    Closed,
}

/// Why a [`BackendConn`] call failed. After any error the connection should be dropped: the
/// stream cannot be resynchronised.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The socket failed.
    #[error("balancer connection: {0}")]
    Io(#[from] io::Error),
    /// The balancer sent bytes that are not an envelope.
    #[error("balancer connection: {0}")]
    Envelope(#[from] EnvelopeError),
    /// The balancer closed the connection in the middle of an envelope.
    #[error("balancer connection closed inside an envelope ({0} bytes pending)")]
    Truncated(usize),
}

/// A blocking connection from the balancer, carrying envelopes.
///
/// Reads go through one large buffer handed to the decoder in pieces, so a message is copied
/// only when it straddles two reads. Writes are queued with [`BackendConn::queue`] and written
/// by [`BackendConn::flush`], so a backend answering one request with several responses pays one
/// system call.
#[derive(Debug)]
pub struct BackendConn {
    stream: TcpStream,
    peer: SocketAddr,
    decoder: EnvelopeDecoder,
    read_buf: BytesMut,
    out: BytesMut,
    payload_max: usize,
    read_timeout: Option<Duration>,
}

impl BackendConn {
    /// Waits for the balancer to connect on `listener` and wraps the connection.
    pub fn accept(listener: &TcpListener) -> io::Result<BackendConn> {
        let (stream, _) = listener.accept()?;
        BackendConn::new(stream)
    }

    /// Wraps an established connection from the balancer (Nagle off: SIP messages are small and
    /// each one is latency).
    pub fn new(stream: TcpStream) -> io::Result<BackendConn> {
        stream.set_nodelay(true)?;
        let peer = stream.peer_addr()?;
        Ok(BackendConn {
            stream,
            peer,
            decoder: EnvelopeDecoder::default(),
            read_buf: BytesMut::new(),
            out: BytesMut::with_capacity(OUT_CAPACITY),
            payload_max: PAYLOAD_MAX_DEFAULT,
            read_timeout: None,
        })
    }

    /// Sets the largest payload accepted in one envelope; a larger one is an error.
    #[must_use]
    pub fn with_payload_max(mut self, payload_max: usize) -> BackendConn {
        self.payload_max = payload_max;
        self
    }

    /// The balancer's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Blocks for the next message; `Ok(None)` when the balancer closed the connection cleanly.
    pub fn recv(&mut self) -> Result<Option<Inbound>, BackendError> {
        match self.recv_until(None)? {
            Received::Message(inbound) => Ok(Some(inbound)),
            Received::Closed => Ok(None),
            // Without a deadline the socket has no read timeout, so it cannot report one.
            Received::Deadline => Err(BackendError::Io(io::ErrorKind::TimedOut.into())),
        }
    }

    /// Blocks for the next message or until `deadline`, whichever comes first; `None` waits
    /// for ever. A backend with timers of its own (delayed answers) calls this in its loop.
    pub fn recv_until(&mut self, deadline: Option<Instant>) -> Result<Received, BackendError> {
        loop {
            if let Some(next) = self.decoder.next_envelope(self.payload_max) {
                let (envelope, sip) = next?;
                return Ok(Received::Message(Inbound {
                    source: envelope.addr,
                    transport: envelope.transport,
                    sip,
                }));
            }
            let timeout = match deadline {
                None => None,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(Received::Deadline);
                    }
                    Some(left)
                }
            };
            self.set_read_timeout(timeout)?;
            if self.read_buf.len() < READ_MIN {
                self.read_buf.reserve(READ_CHUNK);
                self.read_buf.resize(READ_CHUNK, 0);
            }
            let n = match self.stream.read(&mut self.read_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) && deadline.is_some() =>
                {
                    return Ok(Received::Deadline);
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return match self.decoder.buffered_len() {
                    0 => Ok(Received::Closed),
                    pending => Err(BackendError::Truncated(pending)),
                };
            }
            self.decoder.push(self.read_buf.split_to(n));
        }
    }

    /// Queues one SIP message for the balancer without writing it yet: `next_hop` is where the
    /// balancer should send it (for answers, the [`Inbound::source`] of the request), `None` to
    /// let the balancer derive it from Via / Route; `load` is this backend's load (calls in
    /// progress) for least-loaded selection, if it reports one.
    pub fn queue(&mut self, next_hop: Option<SocketAddr>, load: Option<u32>, sip: &[u8]) {
        let envelope = Envelope {
            addr: next_hop,
            transport: Transport::Tcp,
            load,
        };
        encode_header(&mut self.out, &envelope, sip.len());
        self.out.extend_from_slice(sip);
    }

    /// Writes everything queued, blocking until the socket took it.
    pub fn flush(&mut self) -> Result<(), BackendError> {
        if self.out.is_empty() {
            return Ok(());
        }
        // A write must not inherit the read deadline of `recv_until`: the socket's timeouts are
        // per direction, so only the read side ever has one.
        let result = self.stream.write_all(&self.out);
        self.out.clear();
        result.map_err(BackendError::from)
    }

    /// Queues one message (see [`BackendConn::queue`]) and writes everything queued.
    pub fn send(
        &mut self,
        next_hop: Option<SocketAddr>,
        load: Option<u32>,
        sip: &[u8],
    ) -> Result<(), BackendError> {
        self.queue(next_hop, load, sip);
        self.flush()
    }

    /// Bytes queued and not yet written.
    pub fn queued_len(&self) -> usize {
        self.out.len()
    }

    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        // Rounded up to whole milliseconds so that a tiny remainder cannot become a busy loop,
        // and only changed when it differs: one system call saved per read.
        let timeout = timeout.map(|t| {
            Duration::from_millis(u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
        });
        if timeout != self.read_timeout {
            self.stream.set_read_timeout(timeout)?;
            self.read_timeout = timeout;
        }
        Ok(())
    }
}

/// Bytes read per system call at most; several envelopes fit.
const READ_CHUNK: usize = 64 * 1024;
/// Below this much free buffer a new chunk is prepared, so reads stay large.
const READ_MIN: usize = 4 * 1024;
/// Initial capacity of the write queue: a few answers.
const OUT_CAPACITY: usize = 8 * 1024;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A connected pair: the balancer's end as a raw stream, the backend's end wrapped.
    fn pair() -> (TcpStream, BackendConn) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let balancer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let backend = BackendConn::accept(&listener).unwrap();
        (balancer, backend)
    }

    fn frame(addr: Option<SocketAddr>, load: Option<u32>, sip: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        let envelope = Envelope {
            addr,
            transport: Transport::Tcp,
            load,
        };
        encode_header(&mut out, &envelope, sip.len());
        out.extend_from_slice(sip);
        out
    }

    const INVITE: &[u8] =
        b"INVITE sip:b@example.com SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 0\r\n\r\n";
    const OPTIONS: &[u8] =
        b"OPTIONS sip:b@example.com SIP/2.0\r\nCall-ID: 2\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn receives_messages_with_their_source_in_any_split() {
        let (mut balancer, mut backend) = pair();
        let source: SocketAddr = "192.0.2.7:5060".parse().unwrap();
        let mut bytes = frame(Some(source), None, INVITE);
        bytes.extend_from_slice(&frame(None, None, OPTIONS));
        // Byte by byte, flushing each: the decoder must reassemble across many reads.
        let writer = std::thread::spawn(move || {
            balancer.set_nodelay(true).unwrap();
            for b in bytes.iter() {
                balancer.write_all(&[*b]).unwrap();
            }
            balancer
        });
        let first = backend.recv().unwrap().unwrap();
        assert_eq!(first.source, Some(source));
        assert_eq!(first.transport, Transport::Tcp);
        assert_eq!(&first.sip[..], INVITE);
        let second = backend.recv().unwrap().unwrap();
        assert_eq!(second.source, None);
        assert_eq!(&second.sip[..], OPTIONS);
        drop(writer.join().unwrap());
        assert!(backend.recv().unwrap().is_none(), "clean close is None");
    }

    #[test]
    fn sends_envelopes_the_core_decodes() {
        let (mut balancer, mut backend) = pair();
        let hop: SocketAddr = "[2001:db8::1]:5061".parse().unwrap();
        backend.queue(Some(hop), Some(17), b"SIP/2.0 100 Trying\r\n\r\n");
        backend.queue(None, None, b"SIP/2.0 180 Ringing\r\n\r\n");
        assert!(backend.queued_len() > 2 * lb_core::envelope::HEADER_LEN);
        backend.flush().unwrap();
        assert_eq!(backend.queued_len(), 0);
        drop(backend);

        let mut all = Vec::new();
        balancer.read_to_end(&mut all).unwrap();
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(BytesMut::from(&all[..]));
        let (env, sip) = decoder.next_envelope(PAYLOAD_MAX_DEFAULT).unwrap().unwrap();
        assert_eq!(env.addr, Some(hop));
        assert_eq!(env.load, Some(17));
        assert_eq!(&sip[..], b"SIP/2.0 100 Trying\r\n\r\n");
        let (env, sip) = decoder.next_envelope(PAYLOAD_MAX_DEFAULT).unwrap().unwrap();
        assert_eq!(env.addr, None);
        assert_eq!(env.load, None);
        assert_eq!(&sip[..], b"SIP/2.0 180 Ringing\r\n\r\n");
        assert!(decoder.next_envelope(PAYLOAD_MAX_DEFAULT).is_none());
    }

    #[test]
    fn deadline_then_message() {
        let (mut balancer, mut backend) = pair();
        // A deadline already passed returns at once, without reading.
        let got = backend.recv_until(Some(Instant::now())).unwrap();
        assert_eq!(got, Received::Deadline);
        // Half an envelope, then the deadline: the half is kept for the next call.
        let bytes = frame(None, None, INVITE);
        balancer.write_all(&bytes[..10]).unwrap();
        let got = backend
            .recv_until(Some(Instant::now() + Duration::from_millis(20)))
            .unwrap();
        assert_eq!(got, Received::Deadline);
        balancer.write_all(&bytes[10..]).unwrap();
        match backend.recv_until(None).unwrap() {
            Received::Message(m) => assert_eq!(&m.sip[..], INVITE),
            other @ (Received::Deadline | Received::Closed) => {
                panic!("expected a message, got {other:?}")
            }
        }
    }

    #[test]
    fn garbage_is_an_error_and_truncation_is_reported() {
        let (mut balancer, mut backend) = pair();
        balancer.write_all(&[0xAB; 40]).unwrap();
        assert!(matches!(backend.recv(), Err(BackendError::Envelope(_))));

        let (mut balancer, mut backend) = pair();
        let bytes = frame(None, None, INVITE);
        balancer.write_all(&bytes[..bytes.len() - 1]).unwrap();
        drop(balancer);
        assert!(matches!(backend.recv(), Err(BackendError::Truncated(_))));
    }

    #[test]
    fn oversized_payload_is_refused() {
        let (mut balancer, backend) = pair();
        let mut backend = backend.with_payload_max(16);
        balancer.write_all(&frame(None, None, INVITE)).unwrap();
        assert!(matches!(
            backend.recv(),
            Err(BackendError::Envelope(EnvelopeError::TooLarge(_)))
        ));
    }
}
