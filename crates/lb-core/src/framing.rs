//! Cuts SIP messages out of a TCP byte stream (RFC 3261 §7.5, §18.3) and recognises CRLF
//! keep-alives (RFC 5626 §4.4.1).
//!
//! A message is its header block (up to and including the first CRLFCRLF) plus exactly
//! Content-Length bytes of body; on a stream the header is mandatory, and without it, or with a
//! value that cannot be trusted, nothing tells where the next message starts, so the stream is
//! lost. Messages leave as `split_to` slices of the receive buffer: no copy.

use bytes::{Buf, Bytes, BytesMut};
use memchr::memmem;

use crate::message::{find_crlf, next_field, Known, Step};

/// One unit cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole message: start line, headers, empty line, body of Content-Length bytes.
    Message(Bytes),
    /// A double-CRLF keep-alive ping; answer with a single CRLF.
    Ping,
}

/// Why the stream cannot be framed any more: the connection must close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// No Content-Length header (mandatory on streams, RFC 3261 §18.3).
    MissingContentLength,
    /// A Content-Length that is not a number, or two that disagree.
    BadContentLength,
    /// The header block did not end within `message_bytes_max`.
    HeaderTooLarge,
    /// Headers plus the announced body exceed `message_bytes_max`.
    MessageTooLarge,
}

impl FramingError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FramingError::MissingContentLength => "missing Content-Length",
            FramingError::BadContentLength => "bad Content-Length",
            FramingError::HeaderTooLarge => "header block too large",
            FramingError::MessageTooLarge => "message too large",
        }
    }
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
    pub(crate) fn next_frame(
        &mut self,
        message_bytes_max: usize,
    ) -> Option<Result<Frame, FramingError>> {
        if let Some(error) = self.failed {
            return Some(Err(error));
        }
        match self.next_frame_inner(message_bytes_max) {
            Some(Err(error)) => {
                self.failed = Some(error);
                Some(Err(error))
            }
            other => other,
        }
    }

    fn next_frame_inner(&mut self, max: usize) -> Option<Result<Frame, FramingError>> {
        let len = match self.message_len {
            Some(len) => len,
            None => {
                if self.scanned == 0 && self.skip_keepalives()? {
                    return Some(Ok(Frame::Ping));
                }
                match self.read_head(max)? {
                    Ok(len) => len,
                    Err(error) => return Some(Err(error)),
                }
            }
        };
        if self.buf.len() < len {
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
                Some(_) => self.buf.advance(2),
            }
        }
        Some(false)
    }

    /// Finds the end of the header block and reads Content-Length: the message's whole length,
    /// `None` to wait.
    fn read_head(&mut self, max: usize) -> Option<Result<usize, FramingError>> {
        if self.buf.is_empty() {
            return None;
        }
        // Only the first `max` bytes can hold a header block that fits.
        let window = self.buf.len().min(max);
        let from = self.scanned.saturating_sub(CRLFCRLF.len() - 1);
        let found = self.buf.get(from..window).and_then(|tail| memmem::find(tail, CRLFCRLF));
        let Some(at) = found else {
            if self.buf.len() >= max {
                return Some(Err(FramingError::HeaderTooLarge));
            }
            self.scanned = window;
            return None;
        };
        let head_len = from + at + CRLFCRLF.len();
        if head_len > max {
            return Some(Err(FramingError::HeaderTooLarge));
        }
        self.scanned = head_len;
        let result = content_length(&self.buf[..head_len]).and_then(|body| {
            match head_len.checked_add(body) {
                Some(len) if len <= max => Ok(len),
                _ => Err(FramingError::MessageTooLarge),
            }
        });
        if let Ok(len) = result {
            self.message_len = Some(len);
        }
        Some(result)
    }

    /// Bytes held waiting for the rest of a message.
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}

/// The Content-Length of a complete header block (long or compact `l`, any case, folded or
/// not). Repeated headers must agree (RFC 4475 §3.3.9 shows why a guess is unsafe).
fn content_length(head: &[u8]) -> Result<usize, FramingError> {
    let mut found: Option<usize> = None;
    let mut pos = find_crlf(head, 0).map_or(head.len(), |crlf| crlf + 2);
    loop {
        match next_field(head, pos) {
            Step::End | Step::Truncated => break,
            // Not the framer's business: the parser answers 400 for it.
            Step::Malformed { line_end } => pos = line_end,
            Step::Field(field) => {
                if Known::of(&head[field.name]) == Known::ContentLength {
                    let value = decimal(&head[field.value])?;
                    if found.is_some_and(|earlier| earlier != value) {
                        return Err(FramingError::BadContentLength);
                    }
                    found = Some(value);
                }
                pos = field.line_end;
            }
        }
    }
    found.ok_or(FramingError::MissingContentLength)
}

/// `LWS 1*DIGIT LWS` as a `usize`; signs, other characters and overflow are errors.
fn decimal(value: &[u8]) -> Result<usize, FramingError> {
    let lws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let start = value.iter().position(|c| !lws(c)).unwrap_or(value.len());
    let end = value.iter().rposition(|c| !lws(c)).map_or(start, |last| last + 1);
    let digits = &value[start..end];
    if digits.is_empty() {
        return Err(FramingError::BadContentLength);
    }
    digits.iter().try_fold(0usize, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(d - b'0')))
                .ok_or(FramingError::BadContentLength)
        } else {
            Err(FramingError::BadContentLength)
        }
    })
}
