//! The fuzz harnesses behind the targets of `fuzz/`, and the tools to replay what they found.
//!
//! Each target takes raw bytes and derives every choice from them (limits, split points, the
//! inputs of a whole balancer run), so a crash file replays in a plain `#[test]`
//! (`crates/lb-testkit/tests/fuzz.rs`, which `cargo test --workspace` runs) with no fuzzing
//! crate in the workspace. They panic on purpose when an invariant breaks: that is how the
//! fuzzer learns of it.
//!
//! | target | harness |
//! |---|---|
//! | `stream_demux` | `lb_core::fuzzing::stream` (it reads the parser's private spans) |
//! | `envelope_decoder` | [`envelope`] |
//! | `core_sequence` | [`core_sequence`], its outputs checked by [`crate::Contract`] |

use bytes::{Bytes, BytesMut};
use lb_core::envelope::{self, Envelope, EnvelopeDecoder, EnvelopeError, HEADER_LEN};
use lb_core::fuzzing::chunker;

mod answers;
mod core_sequence;

pub use core_sequence::core_sequence;

/// The targets of `fuzz/Cargo.toml`, by name.
pub const TARGETS: [&str; 3] = ["stream_demux", "envelope_decoder", "core_sequence"];

/// Runs target `target` (one of [`TARGETS`]) on `data`.
///
/// # Panics
/// When an invariant breaks, and for an unknown target.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "stream_demux" => lb_core::fuzzing::stream(data),
        "envelope_decoder" => envelope(data),
        "core_sequence" => core_sequence(data),
        _ => panic!("no fuzz target {target:?}; the targets are {TARGETS:?}"),
    }
}

/// Reads choices off the fuzz input; past its end every choice is 0, so any input is a valid
/// program.
pub(crate) struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Choices<'a> {
        Choices { data }
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((first, rest)) => {
                self.data = rest;
                *first
            }
            None => 0,
        }
    }

    pub(crate) fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// One of `n` (> 0) options.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        taken
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Deterministic pseudo-random bytes (xorshift) for `seed`, so a test on noise is the same every
/// run.
#[must_use]
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
enum Unwrapped {
    Envelope(Envelope, Bytes),
    Lost(EnvelopeError),
}

fn unwrap_all(
    input: &[u8],
    max: usize,
    mut chunk: impl FnMut() -> usize,
) -> (Vec<Unwrapped>, usize) {
    let mut decoder = EnvelopeDecoder::default();
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(chunk().clamp(1, rest.len()));
        rest = later;
        decoder.push(BytesMut::from(now));
        loop {
            match decoder.next_envelope(max) {
                None => break,
                Some(Ok((e, payload))) => {
                    assert!(payload.len() <= max, "payload over the limit");
                    out.push(Unwrapped::Envelope(e, payload));
                }
                Some(Err(error)) => {
                    assert_eq!(decoder.next_envelope(max), Some(Err(error)));
                    decoder.push(BytesMut::from(&b"more"[..]));
                    assert_eq!(decoder.buffered_len(), 0, "a lost decoder holds nothing");
                    out.push(Unwrapped::Lost(error));
                    return (out, 0);
                }
            }
        }
    }
    (out, decoder.buffered_len())
}

/// Decodes `data` (after a byte choosing the payload limit and two seeding the read sizes) as
/// an envelope stream, whole and in pieces. Asserts both give the same envelopes; that each
/// header re-encodes to the bytes it was read from (one encoding per envelope) and its payload
/// follows it; and that a failed decoder stays failed and holds nothing.
///
/// # Panics
/// When one of those breaks.
pub fn envelope(data: &[u8]) {
    let mut c = Choices::new(data);
    let max = [0, 16, 1024, 65536][c.below(4)];
    let seed = c.u16();
    let input = c.rest();

    if let Ok(Some((e, len))) = envelope::decode_header(input, max) {
        assert!(len <= max);
        let mut again = BytesMut::new();
        envelope::encode_header(&mut again, &e, len);
        assert_eq!(
            &again[..],
            &input[..HEADER_LEN],
            "header does not round-trip"
        );
    }

    let (whole, buffered) = unwrap_all(input, max, || usize::MAX);
    let (pieces, pieces_buffered) = unwrap_all(input, max, chunker(seed));
    assert_eq!(whole, pieces, "the split changed the envelopes");
    assert_eq!(buffered, pieces_buffered);
    let mut at = 0;
    for item in &whole {
        let Unwrapped::Envelope(e, payload) = item else {
            return;
        };
        let mut again = BytesMut::new();
        envelope::encode(&mut again, e, payload);
        assert_eq!(&input[at..at + again.len()], &again[..]);
        at += again.len();
    }
    assert_eq!(at + buffered, input.len(), "bytes lost between envelopes");
}
