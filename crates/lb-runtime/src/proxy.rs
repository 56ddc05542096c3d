//! `--proxy-protocol`: the PROXY protocol header (HAProxy's v1 text or v2 binary form, as HAProxy
//! `send-proxy[-v2]` and AWS NLB send it) that opens each frontend connection behind an L4
//! balancer, read before any byte reaches the core.
//!
//! [`ProxyHeaderReader`] is sans-IO: a driver hands it the bytes of the first reads of an
//! accepted connection until it answers with the header (the client address it announces, and
//! whatever followed the header, which is the start of the SIP stream) or a fault. Only then
//! does the driver call `Balancer::accept`, with the announced address as the peer, so Via
//! `received`/`rport`, the hop table and dial-out all see the client, not the L4 balancer. A
//! connection that sends garbage, or nothing complete within [`PROXY_HEADER_TIMEOUT`], is
//! closed and counted ([`ProxyReject`], in metrics `siplb_proxy_header_rejected_total`).
//!
//! Parsing is `proxy-header`'s (both versions, TLVs validated, "need more bytes" told apart
//! from "malformed"); this module only buffers and bounds.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use proxy_header::{Error, ParseConfig, ProxyHeader};

/// How long an accepted connection may take to send its whole PROXY header. A proxy sends it
/// with the first segment, so this only bounds connections that are not from the proxy.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(3);

/// Longest header accepted: a v1 header is at most 107 bytes, a v2 header 16 bytes plus its
/// TLVs (a few dozen bytes from HAProxy or an NLB); more is an attack or garbage.
pub const PROXY_HEADER_BYTES_MAX: usize = 1024;

/// Connections per worker that may be waiting for their header at once; one past it is closed
/// at once, so a flood of silent connections cannot take every descriptor for three seconds.
pub const PROXY_PENDING_MAX: usize = 1024;

/// What the first bytes of a connection gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ProxyRead {
    /// No whole header yet: read more (until [`PROXY_HEADER_TIMEOUT`]).
    Incomplete,
    /// The header is complete.
    Header {
        /// The client address it announces; `None` for a `LOCAL` (v2) or `UNKNOWN` (v1)
        /// header, the proxy's own connection (a health check): the socket's peer stands.
        client: Option<SocketAddr>,
        /// The bytes after the header: the start of the SIP stream, for the core.
        rest: BytesMut,
    },
    /// Not a PROXY header: close the connection.
    Rejected(ProxyReject),
}

/// Why a connection was closed before it reached the core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyReject {
    /// Bytes that are not a PROXY header (or one over [`PROXY_HEADER_BYTES_MAX`]).
    Invalid,
    /// No whole header within [`PROXY_HEADER_TIMEOUT`], or the peer closed first.
    TimedOut,
    /// [`PROXY_PENDING_MAX`] connections were already waiting for theirs.
    TooMany,
}

impl ProxyReject {
    /// Every cause, in the order metrics list them.
    pub const ALL: [ProxyReject; 3] = [
        ProxyReject::Invalid,
        ProxyReject::TimedOut,
        ProxyReject::TooMany,
    ];

    /// The `cause` label of the metric.
    pub fn name(self) -> &'static str {
        match self {
            ProxyReject::Invalid => "invalid",
            ProxyReject::TimedOut => "timeout",
            ProxyReject::TooMany => "too_many",
        }
    }

    /// Its slot in per-cause counters.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The first bytes of one accepted connection, until its PROXY header is whole.
#[derive(Debug, Default)]
pub struct ProxyHeaderReader {
    buf: BytesMut,
}

impl ProxyHeaderReader {
    /// A reader for a new connection.
    pub fn new() -> ProxyHeaderReader {
        ProxyHeaderReader::default()
    }

    /// Takes the bytes of one read. After anything but [`ProxyRead::Incomplete`] the reader
    /// is spent: drop it.
    pub fn push(&mut self, bytes: &[u8]) -> ProxyRead {
        self.buf.extend_from_slice(bytes);
        let config = ParseConfig {
            include_tlvs: false,
            allow_v1: true,
            allow_v2: true,
        };
        match ProxyHeader::parse(&self.buf, config) {
            Ok((header, len)) => {
                let client = header.proxied_address().map(|a| a.source);
                // `parse` consumed `len` bytes of the buffer it was given.
                let rest = self.buf.split_off(len.min(self.buf.len()));
                ProxyRead::Header { client, rest }
            }
            Err(Error::BufferTooShort) if self.buf.len() < PROXY_HEADER_BYTES_MAX => {
                ProxyRead::Incomplete
            }
            Err(_) => ProxyRead::Rejected(ProxyReject::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn v2(client: SocketAddr, proxy: SocketAddr) -> Vec<u8> {
        let header = ProxyHeader::with_address(proxy_header::ProxiedAddress::stream(client, proxy));
        let mut buf = [0u8; 256];
        let len = header.encode_to_slice_v2(&mut buf).unwrap();
        buf[..len].to_vec()
    }

    #[test]
    fn v1_in_pieces_then_the_sip_stream() {
        let mut r = ProxyHeaderReader::new();
        let all = b"PROXY TCP4 192.0.2.7 127.0.0.1 40123 5060\r\nOPTIONS sip:x SIP/2.0\r\n";
        assert_eq!(r.push(&all[..5]), ProxyRead::Incomplete);
        assert_eq!(r.push(&all[5..30]), ProxyRead::Incomplete);
        match r.push(&all[30..]) {
            ProxyRead::Header { client, rest } => {
                assert_eq!(client, Some("192.0.2.7:40123".parse().unwrap()));
                assert_eq!(&rest[..], b"OPTIONS sip:x SIP/2.0\r\n");
            }
            other @ (ProxyRead::Incomplete | ProxyRead::Rejected(_)) => panic!("{other:?}"),
        }
    }

    #[test]
    fn v2_ipv6_and_local() {
        let client: SocketAddr = "[2001:db8::5]:5061".parse().unwrap();
        let mut bytes = v2(client, "[2001:db8::1]:5060".parse().unwrap());
        bytes.extend_from_slice(b"\r\n\r\n");
        let mut r = ProxyHeaderReader::new();
        assert_eq!(r.push(&bytes[..10]), ProxyRead::Incomplete);
        assert_eq!(
            r.push(&bytes[10..]),
            ProxyRead::Header {
                client: Some(client),
                rest: BytesMut::from(&b"\r\n\r\n"[..])
            }
        );
        let mut buf = [0u8; 64];
        let len = ProxyHeader::with_local()
            .encode_to_slice_v2(&mut buf)
            .unwrap();
        assert_eq!(
            ProxyHeaderReader::new().push(&buf[..len]),
            ProxyRead::Header {
                client: None,
                rest: BytesMut::new()
            }
        );
    }

    #[test]
    fn sip_without_a_header_and_endless_headers_are_rejected() {
        let invalid = ProxyRead::Rejected(ProxyReject::Invalid);
        let mut r = ProxyHeaderReader::new();
        assert_eq!(r.push(b"INVITE sip:bob@example.com SIP/2.0\r\n"), invalid);
        let mut r = ProxyHeaderReader::new();
        assert_eq!(r.push(b"PROXY TCP4 "), ProxyRead::Incomplete);
        let mut last = ProxyRead::Incomplete;
        for _ in 0..PROXY_HEADER_BYTES_MAX {
            last = r.push(b"1");
            if last != ProxyRead::Incomplete {
                break;
            }
        }
        assert_eq!(last, invalid);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator: every prefix of many random streams, with the two
        // signatures' first bytes made likely.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            let mut r = ProxyHeaderReader::new();
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pick = [
                    b'P', b'\r', b'\n', b' ', b'R', b'O', b'X', b'Y', b'1', 0x21, 0,
                ];
                let byte = if x.is_multiple_of(3) {
                    pick[(x >> 8) as usize % pick.len()]
                } else {
                    (x >> 16) as u8
                };
                if r.push(&[byte]) != ProxyRead::Incomplete {
                    break;
                }
            }
        }
    }
}
