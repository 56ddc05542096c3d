//! The envelope that frames SIP messages between the balancer and an envelope-mode backend.
//! Layout: `docs/envelope.md`. Public so the backend-side crate reuses the one codec.
//!
//! INTERFACE STUB: being written; the types below are the contract.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

/// Bytes of the fixed envelope header.
pub const HEADER_LEN: usize = 32;

/// Transport of the address an envelope names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
}

/// The header fields of one envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Balancer → backend: the frontend's source address. Backend → balancer: the resolved next
    /// hop, or `None` to let the balancer derive it from Via / Route.
    pub addr: Option<SocketAddr>,
    /// Transport of `addr`.
    pub transport: Transport,
    /// Backend → balancer: the backend's load (e.g. calls in progress), if it reports one.
    pub load: Option<u32>,
}

/// Why bytes are not an envelope; the stream cannot be resynchronised after one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The magic bytes are wrong.
    #[error("bad envelope magic")]
    BadMagic,
    /// A version this codec does not speak.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// A field holds a value the layout does not define.
    #[error("bad envelope field: {0}")]
    BadField(&'static str),
    /// The payload is longer than the limit.
    #[error("envelope payload of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// Appends the envelope header for a payload of `payload_len` bytes.
pub fn encode_header(out: &mut BytesMut, envelope: &Envelope, payload_len: usize) {
    let _ = (out, envelope, payload_len);
    todo!()
}

/// Reads a header from the start of `buf`: `Ok(None)` when fewer than [`HEADER_LEN`] bytes are
/// there, else the envelope and its payload length.
pub fn decode_header(
    buf: &[u8],
    payload_max: usize,
) -> Result<Option<(Envelope, usize)>, EnvelopeError> {
    let _ = (buf, payload_max);
    todo!()
}

/// Per-connection reassembly of envelopes from a byte stream.
#[derive(Debug, Default)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
}

impl EnvelopeDecoder {
    /// Appends received bytes (no copy when nothing is pending).
    pub fn push(&mut self, bytes: BytesMut) {
        if self.buf.is_empty() {
            self.buf = bytes;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// The next whole envelope and its payload, `None` when more bytes are needed. After an
    /// `Err` the stream is lost.
    pub fn next_envelope(
        &mut self,
        payload_max: usize,
    ) -> Option<Result<(Envelope, Bytes), EnvelopeError>> {
        let _ = payload_max;
        todo!()
    }

    /// Bytes held waiting for the rest of an envelope.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}
