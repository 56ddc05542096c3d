//! The envelope that frames SIP messages between the balancer and an envelope-mode backend.
//! Layout: `docs/envelope.md`. Public so the backend-side crate reuses the one codec.
//!
//! Every message on an envelope-mode connection is a fixed 32-byte header followed by the SIP
//! message bytes. The header, big-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | magic `SL` (0x53 0x4C) |
//! | 2 | 1 | version, 1 |
//! | 3 | 1 | flags: bit 0 = load present; other bits zero |
//! | 4 | 4 | payload length |
//! | 8 | 4 | load (0 when absent) |
//! | 12 | 2 | port |
//! | 14 | 1 | transport: 1 UDP, 2 TCP, 3 TLS |
//! | 15 | 1 | address family: 0 none, 4 IPv4, 6 IPv6 |
//! | 16 | 16 | address (IPv4 in the first 4 bytes, the rest zero) |
//!
//! The header is fixed-size so a reader needs no length-of-length logic and can check a whole
//! header before trusting its length. Every field is validated, including bytes that must be
//! zero, so a byte stream that is not envelopes (a plain-mode peer, a desynchronised stream) is
//! refused at the first header instead of being misread. There is no resynchronisation: after
//! an error the connection is closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the fixed envelope header.
pub const HEADER_LEN: usize = 32;

/// The version this codec writes and the only one it reads.
pub const VERSION: u8 = 1;

/// The two bytes every envelope starts with.
pub const MAGIC: [u8; 2] = *b"SL";

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
///
/// An IPv6 address travels without its flow info and scope id: a decoded address has both 0.
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
///
/// # Panics
///
/// If `payload_len` exceeds `u32::MAX`: callers frame messages already bounded by the
/// configured message size limit, far below that.
pub fn encode_header(out: &mut BytesMut, envelope: &Envelope, payload_len: usize) {
    let payload_len =
        u32::try_from(payload_len).expect("payloads are bounded by the message size limit");
    out.reserve(HEADER_LEN);
    out.put_slice(&MAGIC);
    out.put_u8(VERSION);
    out.put_u8(if envelope.load.is_some() {
        FLAG_LOAD
    } else {
        0
    });
    out.put_u32(payload_len);
    out.put_u32(envelope.load.unwrap_or(0));
    let mut address = [0u8; 16];
    let (port, family) = match envelope.addr {
        None => (0, FAMILY_NONE),
        Some(SocketAddr::V4(a)) => {
            address[..4].copy_from_slice(&a.ip().octets());
            (a.port(), FAMILY_V4)
        }
        Some(SocketAddr::V6(a)) => {
            address.copy_from_slice(&a.ip().octets());
            (a.port(), FAMILY_V6)
        }
    };
    out.put_u16(port);
    out.put_u8(transport_code(envelope.transport));
    out.put_u8(family);
    out.put_slice(&address);
}

/// Rewrites the payload length of a header already written, for a payload written in place
/// after it (encode the header with length 0, write the message, then patch): the message is
/// written once, straight into the output buffer.
///
/// # Panics
///
/// If `header` is shorter than [`HEADER_LEN`] or `payload_len` exceeds `u32::MAX`: both are
/// the caller's own bytes, never a peer's.
pub(crate) fn set_payload_len(header: &mut [u8], payload_len: usize) {
    assert!(
        header.len() >= HEADER_LEN,
        "set_payload_len needs a whole envelope header"
    );
    let payload_len =
        u32::try_from(payload_len).expect("payloads are bounded by the message size limit");
    header[LENGTH_AT..LENGTH_AT + 4].copy_from_slice(&payload_len.to_be_bytes());
}

/// Appends a whole envelope: the header, then `payload`.
pub fn encode(out: &mut BytesMut, envelope: &Envelope, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    encode_header(out, envelope, payload.len());
    out.put_slice(payload);
}

/// Reads a header from the start of `buf`: `Ok(None)` when fewer than [`HEADER_LEN`] bytes are
/// there, else the envelope and its payload length.
pub fn decode_header(
    buf: &[u8],
    payload_max: usize,
) -> Result<Option<(Envelope, usize)>, EnvelopeError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let mut h = header;
    let mut magic = [0u8; 2];
    h.copy_to_slice(&mut magic);
    if magic != MAGIC {
        return Err(EnvelopeError::BadMagic);
    }
    let version = h.get_u8();
    if version != VERSION {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let flags = h.get_u8();
    if flags & !FLAG_LOAD != 0 {
        return Err(EnvelopeError::BadField("flags"));
    }
    // u32 always fits usize on the targets this crate builds for (32 and 64 bit).
    let payload_len =
        usize::try_from(h.get_u32()).map_err(|_| EnvelopeError::BadField("length"))?;
    let load = h.get_u32();
    let load = if flags & FLAG_LOAD != 0 {
        Some(load)
    } else if load != 0 {
        return Err(EnvelopeError::BadField("load"));
    } else {
        None
    };
    let port = h.get_u16();
    let transport = match h.get_u8() {
        1 => Transport::Udp,
        2 => Transport::Tcp,
        3 => Transport::Tls,
        _ => return Err(EnvelopeError::BadField("transport")),
    };
    let family = h.get_u8();
    let mut address = [0u8; 16];
    h.copy_to_slice(&mut address);
    let addr = match family {
        FAMILY_NONE => {
            if port != 0 {
                return Err(EnvelopeError::BadField("port"));
            }
            if address != [0u8; 16] {
                return Err(EnvelopeError::BadField("address"));
            }
            None
        }
        FAMILY_V4 => {
            if address[4..] != [0u8; 12] {
                return Err(EnvelopeError::BadField("address"));
            }
            let ip = Ipv4Addr::new(address[0], address[1], address[2], address[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        FAMILY_V6 => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(address)), port)),
        _ => return Err(EnvelopeError::BadField("family")),
    };
    // Checked last: the limit only matters for a header that is otherwise well formed.
    if payload_len > payload_max {
        return Err(EnvelopeError::TooLarge(payload_len));
    }
    Ok(Some((
        Envelope {
            addr,
            transport,
            load,
        },
        payload_len,
    )))
}

/// Per-connection reassembly of envelopes from a byte stream.
///
/// Holds at most one header and one payload of `payload_max` bytes, so a peer cannot make it
/// buffer more. After an error it stays failed and drops whatever is pushed.
#[derive(Debug, Default)]
pub struct EnvelopeDecoder {
    buf: BytesMut,
    failed: Option<EnvelopeError>,
}

impl EnvelopeDecoder {
    /// Appends received bytes (no copy when nothing is pending).
    pub fn push(&mut self, bytes: BytesMut) {
        if self.failed.is_some() {
            return;
        }
        if self.buf.is_empty() {
            self.buf = bytes;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// The next whole envelope and its payload, `None` when more bytes are needed. After an
    /// `Err` the stream is lost.
    ///
    /// The payload is a zero-copy slice of the received bytes. Once an error was returned, every
    /// later call returns the same error.
    pub fn next_envelope(
        &mut self,
        payload_max: usize,
    ) -> Option<Result<(Envelope, Bytes), EnvelopeError>> {
        if let Some(error) = self.failed {
            return Some(Err(error));
        }
        match decode_header(&self.buf, payload_max) {
            Ok(None) => None,
            Ok(Some((envelope, payload_len))) => {
                if self.buf.len() - HEADER_LEN < payload_len {
                    return None;
                }
                let mut frame = self.buf.split_to(HEADER_LEN + payload_len);
                frame.advance(HEADER_LEN);
                Some(Ok((envelope, frame.freeze())))
            }
            Err(error) => {
                self.failed = Some(error);
                // Nothing after a bad header can be trusted; free it now.
                self.buf = BytesMut::new();
                Some(Err(error))
            }
        }
    }

    /// Bytes held waiting for the rest of an envelope.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}

fn transport_code(transport: Transport) -> u8 {
    match transport {
        Transport::Udp => 1,
        Transport::Tcp => 2,
        Transport::Tls => 3,
    }
}

/// Offset of the payload length in the header.
const LENGTH_AT: usize = 4;
const FLAG_LOAD: u8 = 0x01;
const FAMILY_NONE: u8 = 0;
const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::fmt::Write as _;
    use std::net::{SocketAddrV4, SocketAddrV6};

    use quickcheck::{Arbitrary, Gen};
    use quickcheck_macros::quickcheck;

    use super::*;

    const MAX: usize = 65_536;

    fn frame(envelope: &Envelope, payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        encode(&mut out, envelope, payload);
        out
    }

    fn v4(a: [u8; 4], port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(a), port)))
    }

    /// Classic 16-bytes-a-line dump with offsets, for snapshots a reviewer can read.
    fn hex_dump(bytes: &[u8]) -> String {
        let mut s = String::new();
        for (i, line) in bytes.chunks(16).enumerate() {
            let mut hex = String::new();
            for b in line {
                write!(hex, " {b:02x}").unwrap();
            }
            // Padded so the text column lines up on a short last line.
            write!(s, "{:04x}:{hex:<48}  ", i * 16).unwrap();
            s.extend(
                line.iter()
                    .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' }),
            );
            s.push('\n');
        }
        s
    }

    fn sample(addr: Option<SocketAddr>, load: Option<u32>) -> Envelope {
        Envelope {
            addr,
            transport: Transport::Tcp,
            load,
        }
    }

    #[test]
    fn header_layout() {
        let env = sample(v4([192, 0, 2, 7], 5060), Some(42));
        let bytes = frame(&env, b"OPTIONS");
        assert_eq!(bytes.len(), HEADER_LEN + 7);
        assert_eq!(&bytes[0..2], b"SL");
        assert_eq!(bytes[2], 1);
        assert_eq!(bytes[3], 1);
        assert_eq!(&bytes[4..8], &7u32.to_be_bytes());
        assert_eq!(&bytes[8..12], &42u32.to_be_bytes());
        assert_eq!(&bytes[12..14], &5060u16.to_be_bytes());
        assert_eq!(bytes[14], 2);
        assert_eq!(bytes[15], 4);
        assert_eq!(&bytes[16..20], &[192, 0, 2, 7]);
        assert_eq!(&bytes[20..32], &[0u8; 12]);
        assert_eq!(&bytes[32..], b"OPTIONS");
        assert_eq!(decode_header(&bytes, MAX), Ok(Some((env, 7))));
    }

    #[test]
    fn short_header_needs_more() {
        let bytes = frame(&sample(None, None), b"x");
        for n in 0..HEADER_LEN {
            assert_eq!(decode_header(&bytes[..n], MAX), Ok(None));
        }
        assert!(decode_header(&bytes[..HEADER_LEN], MAX).unwrap().is_some());
    }

    #[track_caller]
    fn assert_refused(patch: impl Fn(&mut [u8]), expected: EnvelopeError) {
        let mut bytes = frame(&sample(v4([10, 0, 0, 1], 5060), None), b"INVITE");
        patch(&mut bytes);
        assert_eq!(decode_header(&bytes, MAX), Err(expected));
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(bytes);
        assert_eq!(decoder.next_envelope(MAX), Some(Err(expected)));
        // Sticky: the stream is lost, and later bytes are not buffered.
        decoder.push(frame(&sample(None, None), b"x"));
        assert_eq!(decoder.buffered_len(), 0);
        assert_eq!(decoder.next_envelope(MAX), Some(Err(expected)));
    }

    #[test]
    fn refuses_every_bad_field() {
        assert_refused(|b| b[0] = b'X', EnvelopeError::BadMagic);
        assert_refused(|b| b[1] = b'l', EnvelopeError::BadMagic);
        assert_refused(|b| b[2] = 0, EnvelopeError::UnsupportedVersion(0));
        assert_refused(|b| b[2] = 2, EnvelopeError::UnsupportedVersion(2));
        assert_refused(|b| b[3] = 0x02, EnvelopeError::BadField("flags"));
        assert_refused(|b| b[3] = 0x81, EnvelopeError::BadField("flags"));
        assert_refused(|b| b[11] = 1, EnvelopeError::BadField("load"));
        assert_refused(|b| b[14] = 0, EnvelopeError::BadField("transport"));
        assert_refused(|b| b[14] = 4, EnvelopeError::BadField("transport"));
        assert_refused(|b| b[15] = 5, EnvelopeError::BadField("family"));
        assert_refused(|b| b[31] = 1, EnvelopeError::BadField("address"));
        assert_refused(|b| b[20] = 1, EnvelopeError::BadField("address"));
        // No address: port and address must be zero.
        assert_refused(|b| b[15] = 0, EnvelopeError::BadField("port"));
        assert_refused(
            |b| {
                b[15] = 0;
                b[12] = 0;
                b[13] = 0;
            },
            EnvelopeError::BadField("address"),
        );
        assert_refused(
            |b| b[4..8].copy_from_slice(&70_000u32.to_be_bytes()),
            EnvelopeError::TooLarge(70_000),
        );
    }

    #[test]
    fn payload_length_patched_in_place() {
        let env = sample(v4([10, 1, 2, 3], 5060), Some(9));
        let mut out = BytesMut::from(&b"earlier"[..]);
        let start = out.len();
        encode_header(&mut out, &env, 0);
        let payload_start = out.len();
        out.extend_from_slice(b"MESSAGE sip:x SIP/2.0\r\n");
        let len = out.len() - payload_start;
        set_payload_len(&mut out[start..payload_start], len);
        assert_eq!(
            &out[start..],
            &frame(&env, b"MESSAGE sip:x SIP/2.0\r\n")[..]
        );
    }

    #[test]
    fn load_flag_with_zero_load_is_some_zero() {
        let env = sample(None, Some(0));
        let bytes = frame(&env, b"");
        assert_eq!(decode_header(&bytes, MAX), Ok(Some((env, 0))));
    }

    #[test]
    fn payload_limit_is_inclusive() {
        let bytes = frame(&sample(None, None), &[b'a'; 10]);
        assert_eq!(decode_header(&bytes, 10).unwrap().unwrap().1, 10);
        assert_eq!(decode_header(&bytes, 9), Err(EnvelopeError::TooLarge(10)));
    }

    #[test]
    fn decoder_is_zero_copy() {
        let bytes = frame(&sample(None, None), b"SIP/2.0 200 OK\r\n\r\n");
        let start = bytes.as_ptr() as usize;
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(bytes);
        let (_, payload) = decoder.next_envelope(MAX).unwrap().unwrap();
        assert_eq!(&payload[..], b"SIP/2.0 200 OK\r\n\r\n");
        assert_eq!(payload.as_ptr() as usize, start + HEADER_LEN);
        assert_eq!(decoder.next_envelope(MAX), None);
        assert_eq!(decoder.buffered_len(), 0);
    }

    #[test]
    fn decoder_waits_for_payload() {
        let bytes = frame(&sample(v4([127, 0, 0, 1], 5070), Some(3)), b"hello");
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(BytesMut::from(&bytes[..HEADER_LEN + 2]));
        assert_eq!(decoder.next_envelope(MAX), None);
        assert_eq!(decoder.buffered_len(), HEADER_LEN + 2);
        decoder.push(BytesMut::from(&bytes[HEADER_LEN + 2..]));
        let (env, payload) = decoder.next_envelope(MAX).unwrap().unwrap();
        assert_eq!(env.load, Some(3));
        assert_eq!(&payload[..], b"hello");
    }

    #[test]
    fn snapshot_ipv4() {
        let env = Envelope {
            addr: v4([192, 0, 2, 10], 5060),
            transport: Transport::Tcp,
            load: None,
        };
        insta::assert_snapshot!(hex_dump(&frame(&env, b"OPTIONS sip:b SIP/2.0\r\n")), @r"
        0000: 53 4c 01 00 00 00 00 17 00 00 00 00 13 c4 02 04  SL..............
        0010: c0 00 02 0a 00 00 00 00 00 00 00 00 00 00 00 00  ................
        0020: 4f 50 54 49 4f 4e 53 20 73 69 70 3a 62 20 53 49  OPTIONS.sip:b.SI
        0030: 50 2f 32 2e 30 0d 0a                             P/2.0..
        ");
    }

    #[test]
    fn snapshot_ipv6() {
        let ip: Ipv6Addr = "2001:db8::5".parse().unwrap();
        let env = Envelope {
            addr: Some(SocketAddr::V6(SocketAddrV6::new(ip, 5061, 0, 0))),
            transport: Transport::Tls,
            load: Some(17),
        };
        insta::assert_snapshot!(hex_dump(&frame(&env, b"BYE")), @r"
        0000: 53 4c 01 01 00 00 00 03 00 00 00 11 13 c5 03 06  SL..............
        0010: 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 05  ................
        0020: 42 59 45                                         BYE
        ");
    }

    #[test]
    fn snapshot_no_address() {
        let env = Envelope {
            addr: None,
            transport: Transport::Udp,
            load: Some(1000),
        };
        insta::assert_snapshot!(hex_dump(&frame(&env, b"SIP/2.0 180 Ringing\r\n")), @r"
        0000: 53 4c 01 01 00 00 00 15 00 00 03 e8 00 00 01 00  SL..............
        0010: 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00  ................
        0020: 53 49 50 2f 32 2e 30 20 31 38 30 20 52 69 6e 67  SIP/2.0.180.Ring
        0030: 69 6e 67 0d 0a                                   ing..
        ");
    }

    #[test]
    fn documented_example_decodes() {
        // The dump in docs/envelope.md, so the document cannot drift from the code.
        let doc = include_str!("../../../docs/envelope.md");
        let mut bytes = BytesMut::new();
        for line in doc.lines() {
            let Some((offset, rest)) = line.split_once(": ") else {
                continue;
            };
            if offset.len() != 4 || !offset.bytes().all(|c| c.is_ascii_hexdigit()) {
                continue;
            }
            for pair in rest.get(..48).unwrap_or(rest).split_whitespace() {
                bytes.extend_from_slice(&[u8::from_str_radix(pair, 16).unwrap()]);
            }
        }
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(bytes);
        let (env, payload) = decoder.next_envelope(MAX).unwrap().unwrap();
        assert_eq!(
            env,
            Envelope {
                addr: v4([192, 0, 2, 10], 5060),
                transport: Transport::Tcp,
                load: Some(12)
            }
        );
        assert_eq!(payload.len(), 136);
        assert!(payload.starts_with(b"SIP/2.0 200 OK\r\n"));
        assert!(payload.ends_with(b"Content-Length: 0\r\n\r\n"));
        assert_eq!(decoder.next_envelope(MAX), None);
    }

    #[derive(Clone, Debug)]
    struct ArbEnvelope(Envelope);

    impl Arbitrary for ArbEnvelope {
        fn arbitrary(g: &mut Gen) -> Self {
            let addr = match u8::arbitrary(g) % 3 {
                0 => None,
                1 => Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::arbitrary(g)),
                    u16::arbitrary(g),
                )),
                // Flow info and scope id are not carried.
                _ => Some(SocketAddr::new(
                    IpAddr::V6(Ipv6Addr::arbitrary(g)),
                    u16::arbitrary(g),
                )),
            };
            let transport = *g
                .choose(&[Transport::Udp, Transport::Tcp, Transport::Tls])
                .unwrap();
            ArbEnvelope(Envelope {
                addr,
                transport,
                load: Option::<u32>::arbitrary(g),
            })
        }
    }

    #[quickcheck]
    fn roundtrip(env: ArbEnvelope, payload: Vec<u8>) -> bool {
        let bytes = frame(&env.0, &payload);
        let header_ok = decode_header(&bytes, payload.len()) == Ok(Some((env.0, payload.len())));
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(bytes);
        let next = decoder.next_envelope(payload.len());
        header_ok
            && next == Some(Ok((env.0, Bytes::from(payload))))
            && decoder.next_envelope(MAX).is_none()
    }

    #[quickcheck]
    fn arbitrary_bytes_never_panic(chunks: Vec<Vec<u8>>, payload_max: u16) -> bool {
        let mut decoder = EnvelopeDecoder::default();
        for chunk in chunks {
            let _ = decode_header(&chunk, usize::from(payload_max));
            decoder.push(BytesMut::from(&chunk[..]));
            while let Some(result) = decoder.next_envelope(usize::from(payload_max)) {
                match result {
                    Ok((_, payload)) => {
                        if payload.len() > usize::from(payload_max) {
                            return false;
                        }
                    }
                    Err(_) => break,
                }
            }
            if decoder.buffered_len() > HEADER_LEN + usize::from(payload_max) {
                return false;
            }
        }
        true
    }

    #[quickcheck]
    fn arbitrary_bytes_after_valid_magic_never_panic(rest: Vec<u8>) -> bool {
        // Random bytes almost never pass the magic check; this reaches the later fields.
        let mut bytes = BytesMut::from(&b"SL\x01"[..]);
        bytes.extend_from_slice(&rest);
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(bytes);
        while let Some(Ok(_)) = decoder.next_envelope(MAX) {}
        true
    }

    #[quickcheck]
    fn any_split_gives_the_same_frames(
        frames: Vec<(ArbEnvelope, Vec<u8>)>,
        cuts: Vec<usize>,
    ) -> bool {
        let mut stream = BytesMut::new();
        for (env, payload) in &frames {
            encode(&mut stream, &env.0, payload);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut decoder = EnvelopeDecoder::default();
        let mut got = Vec::new();
        let mut at = 0;
        for cut in cuts.into_iter().chain([stream.len()]) {
            decoder.push(BytesMut::from(&stream[at..cut]));
            at = cut;
            while let Some(next) = decoder.next_envelope(MAX) {
                let Ok((env, payload)) = next else {
                    return false;
                };
                got.push((env, payload.to_vec()));
            }
        }
        let want: Vec<(Envelope, Vec<u8>)> = frames
            .into_iter()
            .map(|(env, payload)| (env.0, payload))
            .collect();
        got == want && decoder.buffered_len() == 0
    }
}
