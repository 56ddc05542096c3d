//! Cuts SIP messages out of a TCP byte stream (RFC 3261 §7.5, §18.3) and recognises CRLF
//! keep-alives (RFC 5626 §4.4.1).
//!
//! A message is its header block (up to and including the first CRLFCRLF) plus exactly
//! Content-Length bytes of body; on a stream the header is mandatory, and without it, or with a
//! value that cannot be trusted, nothing tells where the next message starts, so the stream is
//! lost. Messages leave as `split_to` slices of the receive buffer: no copy.

use std::sync::OnceLock;

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

pub(crate) use crate::lexer::FramingError;
use crate::lexer::{decimal, find_crlf, next_field, Step};
use crate::message::{scan_head, Analysis, Known, ScannedHead};

/// One unit cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole message: start line, headers, empty line, body of Content-Length bytes.
    Message(Bytes),
    /// A double-CRLF keep-alive ping; answer with a single CRLF.
    Ping,
}

/// Per-connection reassembly state.
#[derive(Debug, Default)]
pub(crate) struct StreamFramer {
    buf: BytesMut,
    /// Bytes at the front of `buf` already searched for the end of the header block: a slow
    /// sender costs each byte one scan, not one per read.
    scanned: usize,
    /// Once the header block is read: the whole length of the message at the front of `buf`.
    message_len: Option<usize>,
    /// The stream is lost; every later call reports this again.
    failed: Option<FramingError>,
}

const CRLFCRLF: &[u8] = b"\r\n\r\n";

impl StreamFramer {
    /// Appends received bytes. When nothing is pending the buffer is taken as is (no copy).
    pub(crate) fn push(&mut self, bytes: BytesMut) {
        if self.buf.is_empty() {
            self.buf = bytes;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// The next frame, `None` when more bytes are needed. After an `Err` the stream is lost.
    // Only the tests and the fuzz targets use this.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn next_frame(
        &mut self,
        message_bytes_max: usize,
    ) -> Option<Result<Frame, FramingError>> {
        // The same framing as the balancer's: the analysis is run (so tests of this method
        // cover it) and dropped.
        let mut analysis = Analysis::NONE;
        self.next_analysed(message_bytes_max, None, usize::MAX, &mut analysis)
    }

    /// [`StreamFramer::next_frame`], and with a message, in `analysis`, what
    /// `SipMessage::parse(_, tag_header, headers_max)` would give, when the framer ran the
    /// parser's walk to find the head's end (usually: the head is walked once, not once here
    /// and once by the parser); otherwise `analysis` is left [`Analysis::NONE`].
    /// [`Analysis::into_message`] completes it.
    pub(crate) fn next_analysed(
        &mut self,
        message_bytes_max: usize,
        tag_header: Option<&[u8]>,
        headers_max: usize,
        analysis: &mut Analysis,
    ) -> Option<Result<Frame, FramingError>> {
        if let Some(error) = self.failed {
            return Some(Err(error));
        }
        let next = self.next_frame_inner(message_bytes_max, tag_header, headers_max, analysis);
        if !matches!(next, Some(Ok(Frame::Message(_)))) {
            // Only a message comes with its analysis.
            *analysis = Analysis::NONE;
        }
        match next {
            Some(Err(error)) => {
                self.failed = Some(error);
                Some(Err(error))
            }
            other => other,
        }
    }

    fn next_frame_inner(
        &mut self,
        max: usize,
        tag_header: Option<&[u8]>,
        headers_max: usize,
        analysis: &mut Analysis,
    ) -> Option<Result<Frame, FramingError>> {
        let len = match self.message_len {
            Some(len) => len,
            None => {
                if self.scanned == 0 && self.skip_keepalives()? {
                    return Some(Ok(Frame::Ping));
                }
                match self.read_head(max, tag_header, headers_max, analysis)? {
                    Ok(len) => len,
                    Err(error) => return Some(Err(error)),
                }
            }
        };
        if self.buf.len() < len {
            // The body is still coming: the message is parsed when it is complete.
            return None;
        }
        self.message_len = None;
        self.scanned = 0;
        Some(Ok(Frame::Message(self.buf.split_to(len).freeze())))
    }

    /// Handles CRLFs before a start line: `Some(true)` a ping was consumed, `Some(false)` a
    /// message (or garbage) starts at the front, `None` wait for more bytes.
    fn skip_keepalives(&mut self) -> Option<bool> {
        while self.buf.starts_with(b"\r\n") {
            match (self.buf.get(2), self.buf.get(3)) {
                (Some(b'\r'), Some(b'\n')) => {
                    self.buf.advance(4);
                    return Some(true);
                }
                // A lone CRLF, maybe followed by the CR of a ping's second CRLF: wait.
                (None, _) | (Some(b'\r'), None) => return None,
                // A pong (RFC 5626 §4.4.1) or stray CRLF before a start line: drop it.
                _ => self.buf.advance(2),
            }
        }
        if self.buf[..] == b"\r"[..] {
            // May be the start of a CRLF: deciding now would misread a split ping.
            return None;
        }
        Some(false)
    }

    /// Finds the end of the header block and reads Content-Length: the message's whole length
    /// (and the head's analysis when it was run), `None` to wait.
    fn read_head(
        &mut self,
        max: usize,
        tag_header: Option<&[u8]>,
        headers_max: usize,
        analysis: &mut Analysis,
    ) -> Option<Result<usize, FramingError>> {
        if self.buf.is_empty() {
            return None;
        }
        // Only the first `max` bytes can hold a header block that fits.
        let window = self.buf.len().min(max);
        if self.scanned == 0 {
            // The usual case, a whole head in the buffer that parses: the parser's walk finds
            // its end and its Content-Length (no separate walk here).
            if let Some(scanned) = scan_head(&self.buf[..window], tag_header, headers_max, analysis)
            {
                return Some(self.head_read(scanned, max));
            }
        }
        let (found, walk) = if self.scanned == 0 {
            // Incomplete, or a head the parser rejects: one walk over its lines finds both the
            // end and the lines that may be Content-Length.
            let walk = HeadWalk::new(&self.buf[..window]);
            (walk.head_len, Some(walk))
        } else {
            // A head arriving in pieces: search only the new bytes (and three before them, a
            // CRLFCRLF may straddle reads), so each byte is searched once.
            let from = self.scanned.saturating_sub(CRLFCRLF.len() - 1);
            let found = self
                .buf
                .get(from..window)
                .and_then(|tail| head_end_finder().find(tail))
                .map(|at| from + at + CRLFCRLF.len());
            (found, None)
        };
        let Some(head_len) = found else {
            if self.buf.len() >= max {
                return Some(Err(FramingError::HeaderTooLarge));
            }
            self.scanned = window;
            return None;
        };
        if head_len > max {
            return Some(Err(FramingError::HeaderTooLarge));
        }
        let head = &self.buf[..head_len];
        let length = match walk {
            Some(walk) if walk.count <= walk.candidates.len() => {
                content_length_at(head, &walk.candidates[..walk.count])
            }
            Some(_) => content_length(head),
            // Found by the search: the parser's walk reads the Content-Length, unless it stops.
            None => match scan_head(head, tag_header, headers_max, analysis) {
                Some(scanned) => return Some(self.head_read(scanned, max)),
                None => content_length(head),
            },
        };
        self.scanned = head_len;
        Some(self.length_read(head_len, length, max))
    }

    fn head_read(&mut self, scanned: ScannedHead, max: usize) -> Result<usize, FramingError> {
        // The walk stayed within the window, so the head is within `max`.
        self.scanned = scanned.head_len;
        self.length_read(scanned.head_len, scanned.body, max)
    }

    /// The whole message length from the head's length and its Content-Length.
    fn length_read(
        &mut self,
        head_len: usize,
        body: Result<usize, FramingError>,
        max: usize,
    ) -> Result<usize, FramingError> {
        let result = body.and_then(|body| match head_len.checked_add(body) {
            Some(len) if len <= max => Ok(len),
            _ => Err(FramingError::MessageTooLarge),
        });
        if let Ok(len) = result {
            self.message_len = Some(len);
        }
        result
    }

    /// Bytes held waiting for the rest of a message.
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}

/// The searcher for the end of a header block, built once: building one per call cost more
/// than the search itself.
fn head_end_finder() -> &'static memmem::Finder<'static> {
    static FINDER: OnceLock<memmem::Finder<'static>> = OnceLock::new();
    FINDER.get_or_init(|| memmem::Finder::new(CRLFCRLF))
}

/// One pass over the lines of a buffer that starts with a start line: where the header block
/// ends, and the lines that may be a Content-Length field.
struct HeadWalk {
    /// Length of the header block through its CRLFCRLF, if the buffer holds it.
    head_len: Option<usize>,
    /// Starts of the lines [`is_length_candidate`] picks, in order; `count` beyond the array's
    /// length means some were not recorded.
    candidates: [usize; 3],
    count: usize,
}

impl HeadWalk {
    /// Visits every CRLF in order (so the first CRLF followed by CRLF ends the head, exactly
    /// where a CRLFCRLF search would), classifying each completed line on the way.
    fn new(b: &[u8]) -> HeadWalk {
        let mut walk = HeadWalk {
            head_len: None,
            candidates: [0; 3],
            count: 0,
        };
        let mut line = 0;
        while let Some(crlf) = find_crlf(b, line) {
            // The start line (at 0) is no header field.
            if line > 0 && is_length_candidate(b, line, crlf) {
                if let Some(slot) = walk.candidates.get_mut(walk.count) {
                    *slot = line;
                }
                walk.count += 1;
            }
            let next = crlf + 2;
            if b.get(next..next + 2) == Some(b"\r\n") {
                walk.head_len = Some(next + 2);
                break;
            }
            line = next;
        }
        walk
    }
}

/// Whether the line `b[line..crlf]` may start a Content-Length field: first byte `l`/`L`, or
/// its first 14 bytes spell the long name. Continuation lines start with SP or HTAB, so they
/// never qualify. The same test as [`content_length`] applies (14 bytes past a line shorter
/// than 14 would include its CRLF, so they could not spell the name either).
fn is_length_candidate(b: &[u8], line: usize, crlf: usize) -> bool {
    match b[line] {
        b'l' | b'L' => true,
        b'c' | b'C' => {
            crlf - line >= 14 && b[line..line + 14].eq_ignore_ascii_case(b"content-length")
        }
        _ => false,
    }
}

/// [`content_length`] restricted to lines already known to be its only candidates.
fn content_length_at(head: &[u8], lines: &[usize]) -> Result<usize, FramingError> {
    let mut found: Option<usize> = None;
    for &pos in lines {
        if let Step::Field(field) = next_field(head, pos) {
            if Known::of(&head[field.name]) == Known::ContentLength {
                let value = decimal(&head[field.value])?;
                if found.is_some_and(|earlier| earlier != value) {
                    return Err(FramingError::BadContentLength);
                }
                found = Some(value);
            }
        }
    }
    found.ok_or(FramingError::MissingContentLength)
}

/// The Content-Length of a complete header block (long or compact `l`, any case, folded or
/// not). Repeated headers must agree (RFC 4475 §3.3.9 shows why a guess is unsafe).
///
/// Every field starts just after a CRLF that is not followed by SP or HTAB, so instead of
/// reading each field, the scan visits every CRLF and reads a field only where the next byte
/// can begin `Content-Length` or `l`: the other lines cost one `memchr` each. A position after
/// a CRLF that is followed by SP or HTAB starts with that byte, so it is never read as a field.
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let mut found: Option<usize> = None;
    let mut pos = find_crlf(head, 0).map_or(head.len(), |crlf| crlf + 2);
    while let Some(&first) = head.get(pos) {
        let candidate = match first {
            b'l' | b'L' => true,
            // The long name must be the first 14 bytes of the line.
            b'c' | b'C' => head
                .get(pos..pos + 14)
                .is_some_and(|name| name.eq_ignore_ascii_case(b"content-length")),
            _ => false,
        };
        if candidate {
            match next_field(head, pos) {
                Step::End | Step::Truncated => break,
                // Not the framer's business: the parser answers 400 for it.
                Step::Malformed { .. } => {}
                Step::Field(field) => {
                    if Known::of(&head[field.name]) == Known::ContentLength {
                        let value = decimal(&head[field.value])?;
                        if found.is_some_and(|earlier| earlier != value) {
                            return Err(FramingError::BadContentLength);
                        }
                        found = Some(value);
                    }
                }
            }
        } else if head[pos..].starts_with(b"\r\n") {
            break;
        }
        let Some(crlf) = find_crlf(head, pos) else {
            break;
        };
        pos = crlf + 2;
    }
    found.ok_or(FramingError::MissingContentLength)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use quickcheck_macros::quickcheck;

    use super::*;
    use crate::message::SipMessage;

    const MAX: usize = 64 * 1024;

    fn message(extra: &str, body: &str) -> String {
        format!(
            "INVITE sip:b@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nTo: <sip:b@h>\r\n\
             From: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n{extra}\r\n{body}"
        )
    }

    fn with_length(body: &str) -> String {
        message(&format!("Content-Length: {}\r\n", body.len()), body)
    }

    fn framer(bytes: &[u8]) -> StreamFramer {
        let mut framer = StreamFramer::default();
        framer.push(BytesMut::from(bytes));
        framer
    }

    fn frame_text(frame: Option<Result<Frame, FramingError>>) -> String {
        match frame {
            Some(Ok(Frame::Message(bytes))) => String::from_utf8(bytes.to_vec()).unwrap(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    fn error_of(head_extra: &str) -> Option<Result<Frame, FramingError>> {
        framer(message(head_extra, "").as_bytes()).next_frame(MAX)
    }

    #[test]
    fn frames_one_message_with_its_body() {
        let text = with_length("v=0\r\n");
        let mut f = framer(text.as_bytes());
        assert_eq!(frame_text(f.next_frame(MAX)), text);
        assert_eq!(f.next_frame(MAX), None);
        assert_eq!(f.buffered_len(), 0);
    }

    #[test]
    fn pipelined_messages_and_partial_tail() {
        let a = with_length("first");
        let b = message("l: 6\r\n", "second");
        let c = with_length("third");
        let stream = format!("{a}{b}{c}");
        let cut = stream.len() - 3;
        let mut f = framer(&stream.as_bytes()[..cut]);
        assert_eq!(frame_text(f.next_frame(MAX)), a);
        assert_eq!(frame_text(f.next_frame(MAX)), b);
        assert_eq!(f.next_frame(MAX), None);
        assert_eq!(f.buffered_len(), c.len() - 3);
        f.push(BytesMut::from(&stream.as_bytes()[cut..]));
        assert_eq!(frame_text(f.next_frame(MAX)), c);
        assert_eq!(f.next_frame(MAX), None);
    }

    #[test]
    fn messages_are_slices_of_the_received_buffer() {
        let text = format!("{}{}", with_length("x"), with_length("yz"));
        let buf = BytesMut::from(text.as_bytes());
        let base = buf.as_ptr() as usize;
        let mut f = StreamFramer::default();
        f.push(buf);
        let Some(Ok(Frame::Message(first))) = f.next_frame(MAX) else {
            panic!()
        };
        let Some(Ok(Frame::Message(second))) = f.next_frame(MAX) else {
            panic!()
        };
        assert_eq!(first.as_ptr() as usize, base);
        assert_eq!(second.as_ptr() as usize, base + first.len());
    }

    #[test]
    fn content_length_forms() {
        for header in [
            "Content-Length: 4\r\n",
            "content-length:4\r\n",
            "CONTENT-LENGTH   :   4  \r\n",
            "l: 4\r\n",
            "L\t:\t0004\r\n",
            "Content-Length:\r\n 4\r\n",
            "Content-Length: 4\r\nl: 4\r\n",
        ] {
            let text = message(header, "body");
            let mut f = framer(text.as_bytes());
            assert_eq!(frame_text(f.next_frame(MAX)), text, "{header:?}");
        }
    }

    #[test]
    fn content_length_must_start_a_line() {
        // In a value, or on a continuation line of another header: not a Content-Length.
        for header in [
            "Subject: see Content-Length: 0\r\n",
            "Subject: x\r\n Content-Length: 0\r\n",
        ] {
            assert_eq!(
                error_of(header),
                Some(Err(FramingError::MissingContentLength)),
                "{header:?}"
            );
        }
    }

    #[test]
    fn framing_errors() {
        use FramingError::*;
        assert_eq!(error_of(""), Some(Err(MissingContentLength)));
        for header in [
            "Content-Length: -999\r\n",
            "Content-Length: +1\r\n",
            "Content-Length: 1 2\r\n",
            "Content-Length: 0x10\r\n",
            "Content-Length: \r\n",
            "Content-Length: 99999999999999999999999999\r\n",
            "Content-Length: 13\r\nContent-Length: 5\r\n",
        ] {
            assert_eq!(error_of(header), Some(Err(BadContentLength)), "{header:?}");
        }
        let text = message("Content-Length: 100\r\n", "");
        assert_eq!(
            framer(text.as_bytes()).next_frame(text.len() + 99),
            Some(Err(MessageTooLarge))
        );
        let mut f = framer(text.as_bytes());
        assert_eq!(f.next_frame(text.len() + 100), None);
        assert_eq!(f.buffered_len(), text.len());
        let text = message(&format!("Content-Length: {}\r\n", usize::MAX), "");
        assert_eq!(
            framer(text.as_bytes()).next_frame(MAX),
            Some(Err(MessageTooLarge))
        );
    }

    #[test]
    fn header_limit() {
        let text = with_length("");
        // The header block ends exactly at the limit: fine; one byte less: too large.
        assert!(matches!(
            framer(text.as_bytes()).next_frame(text.len()),
            Some(Ok(_))
        ));
        assert_eq!(
            framer(text.as_bytes()).next_frame(text.len() - 1),
            Some(Err(FramingError::HeaderTooLarge))
        );
        // No header end yet: wait below the limit, fail at it.
        let mut f = framer(&text.as_bytes()[..50]);
        assert_eq!(f.next_frame(51), None);
        assert_eq!(f.next_frame(50), Some(Err(FramingError::HeaderTooLarge)));
    }

    #[test]
    fn errors_are_sticky() {
        let mut f = framer(message("", "").as_bytes());
        assert_eq!(
            f.next_frame(MAX),
            Some(Err(FramingError::MissingContentLength))
        );
        f.push(BytesMut::from(with_length("").as_bytes()));
        assert_eq!(
            f.next_frame(MAX),
            Some(Err(FramingError::MissingContentLength))
        );
    }

    #[test]
    fn keepalives() {
        let text = with_length("");
        // Ping, pong, ping, message, trailing lone CRLF (wait: may become a ping).
        let stream = format!("\r\n\r\n\r\n\r\n\r\n{text}\r\n");
        let mut f = framer(stream.as_bytes());
        assert_eq!(f.next_frame(MAX), Some(Ok(Frame::Ping)));
        assert_eq!(f.next_frame(MAX), Some(Ok(Frame::Ping)));
        assert_eq!(frame_text(f.next_frame(MAX)), text);
        assert_eq!(f.next_frame(MAX), None);
        assert_eq!(f.buffered_len(), 2);
        f.push(BytesMut::from(&b"\r"[..]));
        assert_eq!(f.next_frame(MAX), None);
        f.push(BytesMut::from(&b"\n"[..]));
        assert_eq!(f.next_frame(MAX), Some(Ok(Frame::Ping)));
        assert_eq!(f.buffered_len(), 0);
        // A ping split after its first CR.
        f.push(BytesMut::from(&b"\r"[..]));
        assert_eq!(f.next_frame(MAX), None);
        f.push(BytesMut::from(&b"\n\r\n"[..]));
        assert_eq!(f.next_frame(MAX), Some(Ok(Frame::Ping)));
        // A pong then a message arriving later.
        f.push(BytesMut::from(&b"\r\n"[..]));
        assert_eq!(f.next_frame(MAX), None);
        f.push(BytesMut::from(text.as_bytes()));
        assert_eq!(frame_text(f.next_frame(MAX)), text);
    }

    #[test]
    fn an_incomplete_head_is_scanned_once() {
        let text = with_length("body");
        let mut f = StreamFramer::default();
        let head_len = text.find("\r\n\r\n").unwrap() + 4;
        for (i, byte) in text.bytes().enumerate() {
            f.push(BytesMut::from(&[byte][..]));
            let frame = f.next_frame(MAX);
            if i + 1 < text.len() {
                assert_eq!(frame, None);
                // Never further back than three bytes (a CRLFCRLF may straddle reads).
                assert_eq!(f.scanned, (i + 1).min(head_len));
            } else {
                assert_eq!(frame_text(frame), text);
                assert_eq!(f.scanned, 0);
            }
        }
    }

    /// A stream of messages (bodies, header styles) with keep-alives between them, and the
    /// frames it must give.
    fn build_stream(items: &[(u8, u8)]) -> (Vec<u8>, Vec<Frame>) {
        let mut stream = Vec::new();
        let mut frames = Vec::new();
        for (n, &(kind, size)) in items.iter().enumerate() {
            if kind % 4 == 0 {
                stream.extend_from_slice(b"\r\n\r\n");
                frames.push(Frame::Ping);
                continue;
            }
            if kind % 4 == 1 {
                stream.extend_from_slice(b"\r\n");
            }
            // Bodies may contain CRLFCRLF and things that look like headers.
            let body: String = "x\r\n\r\nContent-Length: 99\r\n"
                .chars()
                .cycle()
                .take(size as usize)
                .collect();
            let header = match size % 3 {
                0 => format!("Content-Length: {}\r\n", body.len()),
                1 => format!("l :{}\r\n", body.len()),
                _ => format!("Content-Length:\r\n  {}\r\n", body.len()),
            };
            let text = message(&format!("X-N: {n}\r\n{header}"), &body);
            stream.extend_from_slice(text.as_bytes());
            frames.push(Frame::Message(Bytes::from(text)));
        }
        (stream, frames)
    }

    fn drain(framer: &mut StreamFramer, frames: &mut Vec<Frame>) {
        while let Some(frame) = framer.next_frame(MAX) {
            frames.push(frame.unwrap());
        }
    }

    #[quickcheck]
    fn any_split_gives_the_same_frames(items: Vec<(u8, u8)>, cuts: Vec<u8>) -> bool {
        let (stream, expected) = build_stream(&items);
        let mut whole = Vec::new();
        drain(&mut framer(&stream), &mut whole);

        let mut chunked = Vec::new();
        let mut f = StreamFramer::default();
        let mut rest = &stream[..];
        let mut sizes = cuts.iter().map(|&c| usize::from(c % 64) + 1).cycle();
        while !rest.is_empty() {
            let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
            f.push(BytesMut::from(&rest[..n]));
            rest = &rest[n..];
            drain(&mut f, &mut chunked);
        }
        whole == expected && chunked == expected && f.buffered_len() == 0
    }

    /// Where the parser's walk reaches the empty line, it agrees with the framer's own search
    /// and Content-Length scan, and its analysis is what `SipMessage::parse` gives.
    #[quickcheck]
    fn the_analysis_frames_like_the_framer(edits: Vec<(u16, u8)>, cut: u16) -> bool {
        const ALPHABET: &[u8] = b"\r\n\r\n \t:;,<>0123456789lLcC-ontentgh";
        let mut text = format!(
            "{}{}",
            message("Content-Length: 3\r\nl: 3\r\nX: 1\r\n", "abc"),
            with_length("v=0")
        )
        .into_bytes();
        for &(at, pick) in &edits {
            let at = usize::from(at) % text.len();
            text[at] = ALPHABET[usize::from(pick) % ALPHABET.len()];
        }
        let b = &text[..usize::from(cut) % (text.len() + 1)];
        let mut analysis = Analysis::NONE;
        let Some(scanned) = scan_head(b, None, 128, &mut analysis) else {
            return true;
        };
        let walk = HeadWalk::new(b);
        let head = &b[..scanned.head_len];
        let bytes = Bytes::copy_from_slice(head);
        let view = analysis.into_message(bytes.clone(), None, 128);
        let parsed = SipMessage::parse(bytes, None, 128);
        walk.head_len == Some(scanned.head_len)
            && content_length(head) == scanned.body
            && format!("{:?}", view.map_err(|(_, e)| e)) == format!("{parsed:?}")
    }

    fn no_panic(chunks: &[Vec<u8>], max: usize) {
        let mut f = StreamFramer::default();
        for chunk in chunks {
            f.push(BytesMut::from(&chunk[..]));
            // Bounded: every frame consumes bytes, and an error ends the stream.
            for _ in 0..=chunk.len() + 1 {
                match f.next_frame(max) {
                    Some(Ok(Frame::Message(bytes))) => {
                        assert!(bytes.len() <= max);
                        let _ = SipMessage::parse(bytes, Some(b"X-LB-Tag"), 16);
                    }
                    Some(Ok(Frame::Ping)) => {}
                    Some(Err(_)) | None => break,
                }
            }
        }
        let joined: Vec<u8> = chunks.concat();
        let _ = SipMessage::parse(Bytes::from(joined.clone()), Some(b"x"), 16);
        let _ = crate::message::header_lines(&joined).count();
    }

    #[quickcheck]
    fn arbitrary_bytes_never_panic(chunks: Vec<Vec<u8>>, max: u16) -> bool {
        no_panic(&chunks, usize::from(max));
        true
    }

    /// Random edits of valid messages reach far deeper into the parser than random bytes.
    #[quickcheck]
    fn mangled_messages_never_panic(edits: Vec<(u16, u8)>, cut: u16) -> bool {
        const ALPHABET: &[u8] = b"\r\n\r\n \t:;,<>\"\\@=/[]0123456789.SIPsipVvialtTf-rportbranch";
        let mut text = format!(
            "{}\r\n\r\n{}",
            message(
                "Route: <sip:lb.example.com;lr;lb=1.2.3>, \"d\" <sips:u@[::1]:5061>\r\n\
                 Via: SIP/2.0/UDP [2001:db8::1]:5060;rport;received=192.0.2.1\r\nl: 3\r\n",
                "abc"
            ),
            with_length("v=0")
        )
        .into_bytes();
        for &(at, pick) in &edits {
            let at = usize::from(at) % text.len();
            text[at] = ALPHABET[usize::from(pick) % ALPHABET.len()];
        }
        let cut = usize::from(cut) % text.len();
        no_panic(&[text[..cut].to_vec(), text[cut..].to_vec()], MAX);
        true
    }
}
