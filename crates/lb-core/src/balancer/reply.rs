//! The balancer's own stateless responses (RFC 3261 §8.2.6, §16.11): built from the request's
//! Via, From, To, Call-ID and CSeq lines, copied as received; and the glue that sends one back
//! on the connection its request came on (framed in an envelope toward envelope backends).

use std::fmt::Write as _;
use std::time::Duration;

use bytes::{BufMut, BytesMut};

use super::{write_message, BackendReader, Balancer, Side, Source};
use crate::envelope::{Envelope, Transport};
use crate::message::{header_lines, HeaderName, Method, SipMessage};
use crate::reasons::DropCause;
use crate::rewrite::BufWriter as Writer;

/// A response the balancer answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// A malformed request: `400` with the parser's reason phrase, or `505 Version Not
    /// Supported`.
    Malformed { status: u16, reason: &'static str },
    /// `481 Call/Transaction Does Not Exist`: a CANCEL for a call the balancer never saw.
    NoTransaction,
    /// `483 Too Many Hops`: Max-Forwards reached zero (RFC 3261 §16.3 item 3).
    TooManyHops,
    /// `482 Loop Detected`: the request would go back where it came from (RFC 3261 §21.4.20).
    LoopDetected,
    /// `503 Service Unavailable` with `Retry-After` (RFC 3261 §21.5.4).
    Unavailable {
        retry_after: Duration,
        reason: &'static str,
    },
}

/// Appends the response to `request` to `out`. Returns `false`, writing nothing, when the
/// request lacks a header a response must copy (then no response is possible: drop it).
pub(crate) fn write(out: &mut BytesMut, request: &[u8], reply: Reply) -> bool {
    let head = request;
    let mut seen = [false; 4]; // Via, From, To, Call-ID + CSeq counted below
    let mut cseq = false;
    for (name, _) in header_lines(head) {
        match name {
            HeaderName::Via => seen[0] = true,
            HeaderName::From => seen[1] = true,
            HeaderName::To => seen[2] = true,
            HeaderName::CallId => seen[3] = true,
            HeaderName::CSeq => cseq = true,
            HeaderName::Other => {}
        }
    }
    if !(seen.iter().all(|s| *s) && cseq) {
        return false;
    }
    let mut w = Writer(out);
    let _ = match reply {
        Reply::Malformed { status, reason } => write!(w, "SIP/2.0 {status} {reason}\r\n"),
        Reply::NoTransaction => write!(w, "SIP/2.0 481 Call/Transaction Does Not Exist\r\n"),
        Reply::TooManyHops => write!(w, "SIP/2.0 483 Too Many Hops\r\n"),
        Reply::LoopDetected => write!(w, "SIP/2.0 482 Loop Detected\r\n"),
        Reply::Unavailable { reason, .. } => write!(w, "SIP/2.0 503 {reason}\r\n"),
    };
    for (name, span) in header_lines(head) {
        let line = &head[span.range()];
        match name {
            HeaderName::Via | HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                out.put_slice(line);
            }
            HeaderName::To => write_to(out, line, request),
            HeaderName::Other => {}
        }
    }
    if let Reply::Unavailable { retry_after, .. } = reply {
        let _ = write!(
            Writer(out),
            "Retry-After: {}\r\n",
            retry_after.as_secs().max(1)
        );
    }
    out.put_slice(b"Content-Length: 0\r\n\r\n");
    true
}

/// Copies the To line, adding a To tag when it has none (RFC 3261 §8.2.6.2): derived from the
/// request so a retransmission gets the same response.
fn write_to(out: &mut BytesMut, line: &[u8], request: &[u8]) {
    let body = line.strip_suffix(b"\r\n").unwrap_or(line);
    out.put_slice(body);
    if !has_tag_param(body) {
        out.put_slice(b";tag=lb");
        let _ = write!(Writer(out), "{:08x}", fnv1a(request) as u32);
    }
    out.put_slice(b"\r\n");
}

/// A `;tag=` parameter after the URI (outside `<>` and quotes).
fn has_tag_param(line: &[u8]) -> bool {
    let after_uri = match memchr::memrchr(b'>', line) {
        Some(i) => &line[i..],
        None => line,
    };
    after_uri
        .windows(5)
        .any(|w| w.eq_ignore_ascii_case(b";tag="))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

impl Balancer {
    /// Answers `request` on the connection it came from. Returns `false` when no response can
    /// be built (a header it must copy is missing).
    pub(super) fn reply(&mut self, source: Source, request: &[u8], reply: Reply) -> bool {
        let envelope_mode = match self
            .conn(source.conn)
            .filter(|c| !c.closing)
            .map(|c| &c.side)
        {
            Some(Side::Backend {
                reader: BackendReader::Envelope(_),
                ..
            }) => true,
            Some(_) => false,
            None => return false,
        };
        if self.conns.get(source.conn.slot()).is_none() {
            return false;
        }
        // Back to a backend, the envelope names no address: the answer is to its own request.
        let envelope = Envelope {
            addr: None,
            transport: Transport::Tcp,
            load: None,
        };
        let framing = envelope_mode.then_some(&envelope);
        let Some(bytes) = write_message(&mut self.out, framing, |out| write(out, request, reply))
        else {
            return false;
        };
        self.send(source.conn, bytes);
        true
    }

    /// A stateless 503 for a request nothing can take (never for ACK, RFC 3261 §17.1.1.3).
    pub(super) fn unavailable(&mut self, source: Source, message: &SipMessage, reason: DropCause) {
        if message.method() == Some(Method::Ack) {
            return self.drop_message(source.conn, reason);
        }
        let retry_after = self.config.config.retry_after;
        if self.reply(
            source,
            &message.bytes,
            Reply::Unavailable {
                retry_after,
                reason: reason.as_str(),
            },
        ) {
            self.stats.replies_503 += 1;
        } else {
            self.drop_message(source.conn, reason);
        }
    }
}
