//! What the fuzz harnesses need of crate-private pieces (not an API: hidden from the docs, and
//! compiled only with the `fuzzing` feature). The harnesses themselves, the core-sequence run
//! and its output-contract checks, live in `lb-testkit` (`lb_testkit::fuzz`); `fuzz/` holds the
//! cargo-fuzz targets. What stays here reads private items and nothing else: no clock, no
//! environment, no printing.
//!
//! - [`stream`] and [`analyse`]: the framer and the parser under fuzz; they check the spans the
//!   parser returns, which only the core can see, and panic on purpose when an invariant
//!   breaks: that is how the fuzzer learns of it.
//! - [`frames`], [`parse`] and [`header_lines`]: the framer, the parser and the header walk as
//!   a harness reads what the core sent.

use bytes::{Bytes, BytesMut};

use crate::balancer::hops::parse_ip;
use crate::balancer::reply::{self, Reply};
use crate::config::TagKey;
use crate::framing::{Frame, FramingError, StreamFramer};
use crate::message::{HeaderName, HostPort, Rport, SipMessage, Span, StartLine};
use crate::reasons::{FramingFault, MalformedFault};
use crate::tag::TagSigner;

/// Reads choices off the fuzz input; past its end every choice is 0, so any input is a valid
/// program.
struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    fn new(data: &'a [u8]) -> Choices<'a> {
        Choices { data }
    }

    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((first, rest)) => {
                self.data = rest;
                *first
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// One of `n` (> 0) options.
    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Chunk sizes from a 16-bit seed (xorshift): short reads, long reads, single bytes. The
/// envelope target's harness in `lb-testkit` splits its input with it too.
pub fn chunker(seed: u16) -> impl FnMut() -> usize {
    let mut state = u32::from(seed) | 1 << 16;
    move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        match state % 4 {
            0 => 1,
            1 => (state >> 8) as usize % 8 + 1,
            _ => (state >> 8) as usize % 200 + 1,
        }
    }
}

/// What the framer cut from a stream, comparable across runs.
#[derive(Debug, PartialEq, Eq)]
enum Cut {
    Message(Bytes),
    Ping,
    Lost(FramingError),
}

struct Framed {
    cuts: Vec<Cut>,
    /// Bytes still held at the end (meaningless once the stream is lost).
    buffered: usize,
}

fn frame_all(input: &[u8], max: usize, mut chunk: impl FnMut() -> usize) -> Framed {
    let mut framer = StreamFramer::default();
    let mut cuts = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        let (now, later) = rest.split_at(chunk().clamp(1, rest.len()));
        rest = later;
        framer.push(BytesMut::from(now));
        loop {
            match framer.next_frame(max) {
                None => break,
                Some(Ok(Frame::Message(m))) => cuts.push(Cut::Message(m)),
                Some(Ok(Frame::Ping)) => cuts.push(Cut::Ping),
                Some(Err(error)) => {
                    assert_eq!(
                        framer.next_frame(max),
                        Some(Err(error)),
                        "a lost stream stays lost"
                    );
                    cuts.push(Cut::Lost(error));
                    return Framed { cuts, buffered: 0 };
                }
            }
        }
    }
    Framed {
        cuts,
        buffered: framer.buffered_len(),
    }
}

/// Frames `data` (after a byte choosing the size limit and two seeding the read sizes) twice:
/// pushed whole and pushed in pieces. Asserts both give the same frames; that the frames are
/// the input in order with only CRLFs between them dropped (stray CRLFs, pongs); that no message
/// exceeds the limit; then analyses each message as [`analyse`] does.
pub fn stream(data: &[u8]) {
    let mut c = Choices::new(data);
    let max = [64, 300, 4096, 65536][c.below(4)];
    let flags = c.byte();
    let seed = c.u16();
    let input = c.rest();
    let whole = frame_all(input, max, || usize::MAX);
    let pieces = frame_all(input, max, chunker(seed));
    assert_eq!(whole.cuts, pieces.cuts, "the split changed the frames");
    assert_eq!(whole.buffered, pieces.buffered);

    let mut at = 0;
    let mut lost = false;
    for cut in &whole.cuts {
        let expect: &[u8] = match cut {
            Cut::Message(m) => {
                assert!(m.len() <= max, "a {}-byte frame over {max}", m.len());
                assert!(!m.starts_with(b"\r\n"), "a message starts with CRLF");
                m
            }
            Cut::Ping => b"\r\n\r\n",
            Cut::Lost(_) => {
                lost = true;
                break;
            }
        };
        while !input[at..].starts_with(expect) {
            assert!(
                input[at..].starts_with(b"\r\n"),
                "frame not found at {at}: only CRLFs may be dropped"
            );
            at += 2;
        }
        at += expect.len();
    }
    if !lost {
        let consumed = input.len() - whole.buffered;
        assert!(at <= consumed, "frames beyond what was consumed");
        assert!(
            input[at..consumed].chunks(2).all(|p| p == b"\r\n"),
            "bytes other than CRLFs dropped"
        );
    }
    for cut in whole.cuts {
        if let Cut::Message(m) = cut {
            analyse_message(m, tag_header(flags), headers_max(flags));
        }
    }
}

fn tag_header(flags: u8) -> Option<&'static [u8]> {
    (flags & 1 != 0).then_some(&b"X-LB-Tag"[..])
}

fn headers_max(flags: u8) -> usize {
    if flags & 2 != 0 {
        6
    } else {
        128
    }
}

/// Analyses one message (after a flags byte: tag header configured, a low header limit) as the
/// balancer would: parse, header iteration, the 400 built from it, tag checks. Asserts every
/// span the parser returns lies in the message and in the part it belongs to, and that the
/// balancer's own reply frames as exactly one message.
pub fn analyse(data: &[u8]) {
    let mut c = Choices::new(data);
    let flags = c.byte();
    let bytes = Bytes::copy_from_slice(c.rest());
    analyse_message(bytes, tag_header(flags), headers_max(flags));
}

fn signer() -> TagSigner {
    TagSigner::new(&[
        TagKey {
            id: 1,
            secret: b"fuzzing-secret-0123456789".to_vec(),
        },
        TagKey {
            id: 2,
            secret: b"another-fuzzing-secret".to_vec(),
        },
    ])
}

fn analyse_message(bytes: Bytes, tag_header: Option<&[u8]>, headers_max: usize) {
    let len = bytes.len();
    let mut next = None;
    for (_, span) in crate::message::header_lines(&bytes) {
        let r = span.range();
        assert!(
            r.start < r.end && r.end <= len,
            "header line {r:?} of {len}"
        );
        if let Some(expected) = next {
            assert_eq!(r.start, expected, "header lines are contiguous");
        }
        next = Some(r.end);
    }

    let mut out = BytesMut::new();
    let fuzzed = Reply::Malformed {
        status: 400,
        reason: "Fuzzed",
    };
    if reply::write(&mut out, &bytes, fuzzed) {
        assert_single_frame(&out);
    }

    let Ok(m) = SipMessage::parse(bytes.clone(), tag_header, headers_max) else {
        return;
    };
    let start_line_end = m.start_line_end as usize;
    let header_end = m.header_end as usize;
    assert!(start_line_end <= header_end + 2);
    assert_eq!(
        bytes.get(header_end..header_end + 2),
        Some(&b"\r\n"[..]),
        "header_end is the empty line"
    );
    let head = Span::new(start_line_end, header_end);
    if let StartLine::Request {
        method_span, uri, ..
    } = m.start
    {
        let line = Span::new(0, start_line_end);
        within(method_span, line);
        within(uri, line);
        if let Some(host) = m.request_uri_host {
            within_host(host, uri);
        }
    }
    within(m.call_id, head);
    assert!(!m.call_id().is_empty(), "empty Call-ID accepted");

    let via = m.top_via;
    within(via.line, head);
    for span in [via.value, via.value_with_comma, via.transport] {
        within(span, via.line);
    }
    within(via.value, via.value_with_comma);
    within_host(via.sent_by, via.value);
    for span in [via.branch, via.received, via.lb].into_iter().flatten() {
        within(span, via.value);
    }
    if let Rport::Empty { name_end } = via.rport {
        within(Span::new(name_end as usize, name_end as usize), via.value);
    }
    if let Some(route) = m.top_route {
        within(route.line, head);
        within(route.entry_with_comma, route.line);
        within(route.uri, route.line);
        within_host(route.host_port, route.line);
        if let Some(lb) = route.lb {
            within(lb, route.line);
        }
    }
    if let Some(second) = m.second_route {
        within_host(second, head);
    }
    if let Some(tag) = m.tag_header {
        within(tag, head);
    }

    // What routing does with the pieces must not panic either.
    let signer = signer();
    for span in [via.lb, m.top_route.and_then(|r| r.lb), m.tag_header]
        .into_iter()
        .flatten()
    {
        let _ = signer.verify(m.slice(span), m.call_id());
    }
    for host in [Some(via.sent_by), m.top_route.map(|r| r.host_port)]
        .into_iter()
        .flatten()
    {
        let _ = parse_ip(m.slice(host.host));
    }
}

fn within(inner: Span, outer: Span) {
    assert!(
        outer.start <= inner.start && inner.start <= inner.end && inner.end <= outer.end,
        "span {inner:?} outside {outer:?}"
    );
}

fn within_host(host: HostPort, outer: Span) {
    within(host.host, outer);
}

/// `bytes` is exactly one well-framed message.
fn assert_single_frame(bytes: &[u8]) {
    let mut framer = StreamFramer::default();
    framer.push(BytesMut::from(bytes));
    match framer.next_frame(usize::MAX) {
        Some(Ok(Frame::Message(m))) => assert_eq!(m.len(), bytes.len(), "trailing bytes"),
        other => panic!("the balancer's reply does not frame: {other:?}"),
    }
}

/// What a stream's bytes frame into, read as the core's own framer reads them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Frames {
    /// The SIP messages, in order.
    pub messages: Vec<Bytes>,
    /// How many CRLFCRLF keepalive pings came between them.
    pub pings: usize,
    /// The stream was lost here: nothing after it frames.
    pub lost: Option<FramingFault>,
    /// Bytes left over at the end, waiting for more (a message cut short, or a lone CRLF).
    pub buffered: usize,
}

/// Frames `bytes` as one stream, without size limit.
pub fn frames(bytes: &[u8]) -> Frames {
    let mut framer = StreamFramer::default();
    framer.push(BytesMut::from(bytes));
    let mut out = Frames::default();
    while let Some(next) = framer.next_frame(usize::MAX) {
        match next {
            Ok(Frame::Message(m)) => out.messages.push(m),
            Ok(Frame::Ping) => out.pings += 1,
            Err(e) => {
                out.lost = Some(FramingFault::from(e));
                return out;
            }
        }
    }
    out.buffered = framer.buffered_len();
    out
}

/// The Call-ID of a framed message that parses as the balancer parses it (`tag_header` the
/// configured extension header, if any), or the fault that makes it malformed.
pub fn parse(
    message: Bytes,
    tag_header: Option<&[u8]>,
    headers_max: usize,
) -> Result<Bytes, MalformedFault> {
    match SipMessage::parse(message.clone(), tag_header, headers_max) {
        Ok(m) => {
            let call_id = m.call_id;
            Ok(message.slice(call_id.range()))
        }
        Err(e) => Err(e.reason),
    }
}

/// The headers a response copies from its request, as the balancer's own answers name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopiedHeader {
    /// `Via` / `v`.
    Via,
    /// `From` / `f`.
    From,
    /// `To` / `t`.
    To,
    /// `Call-ID` / `i`.
    CallId,
    /// `CSeq`.
    CSeq,
    /// Any other line, or one without a colon.
    Other,
}

/// The header lines of a message head (after the start line, up to the empty line), each with
/// the byte range of the whole line (CRLF and continuation lines included), as the balancer
/// walks them to build its answers.
pub fn header_lines(bytes: &[u8]) -> Vec<(CopiedHeader, std::ops::Range<usize>)> {
    crate::message::header_lines(bytes)
        .map(|(name, span)| {
            let name = match name {
                HeaderName::Via => CopiedHeader::Via,
                HeaderName::From => CopiedHeader::From,
                HeaderName::To => CopiedHeader::To,
                HeaderName::CallId => CopiedHeader::CallId,
                HeaderName::CSeq => CopiedHeader::CSeq,
                HeaderName::Other => CopiedHeader::Other,
            };
            (name, span.range())
        })
        .collect()
}
