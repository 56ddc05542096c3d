//! The parts a message view points at: spans, the method, the start line, host:port, Via and
//! Route values, and the parse errors with the status each is answered with.

use std::ops::Range;

use crate::reasons::MalformedFault;

/// A byte range into [`SipMessage::bytes`]. `u32` offsets keep the view small; messages are
/// bounded far below 4 GiB by `limits.message_bytes_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    pub(crate) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    pub(crate) fn len(self) -> usize {
        (self.end - self.start) as usize
    }

    pub(crate) fn is_empty(self) -> bool {
        self.start == self.end
    }
}

/// SIP methods the balancer treats specially; the rest are [`Method::Other`].
/// Methods are case-sensitive (RFC 3261 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Invite,
    Ack,
    Cancel,
    Bye,
    Register,
    Options,
    Subscribe,
    Notify,
    Refer,
    Other,
}

impl Method {
    /// Case-sensitive, as RFC 3261 §7.1 requires: `invite` is an extension method.
    pub(crate) fn from_token(token: &[u8]) -> Method {
        match token {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"CANCEL" => Method::Cancel,
            b"BYE" => Method::Bye,
            b"REGISTER" => Method::Register,
            b"OPTIONS" => Method::Options,
            b"SUBSCRIBE" => Method::Subscribe,
            b"NOTIFY" => Method::Notify,
            b"REFER" => Method::Refer,
            _ => Method::Other,
        }
    }
}

/// The first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartLine {
    Request {
        method: Method,
        method_span: Span,
        uri: Span,
    },
    Response {
        status: u16,
    },
}

/// `host[:port]` as written: `host` is the text between the scheme/user part and the port,
/// brackets included for an IPv6 reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct HostPort {
    pub(crate) host: Span,
    pub(crate) port: Option<u16>,
}

/// The `rport` parameter of a Via (RFC 3581).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rport {
    Absent,
    /// `;rport` without a value; `name_end` is the offset just after `rport`, where `=PORT` goes.
    Empty {
        name_end: u32,
    },
    Value(u16),
}

/// The first via-parm of the first Via header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Via {
    /// The whole header line, from the name to the end of its CRLF (continuation lines included).
    pub(crate) line: Span,
    /// The first via-parm: from `SIP/2.0/...` to the end of its last parameter, no trailing
    /// whitespace; a parameter is appended at `value.end`.
    pub(crate) value: Span,
    /// The line holds only this value (no `,` and further via-parms).
    pub(crate) sole_value: bool,
    /// When not sole: the span to cut to remove this value: from `value.start` through the comma
    /// and the whitespace after it. When sole: equal to `value`.
    pub(crate) value_with_comma: Span,
    /// `TCP`, `UDP`, `TLS`… as written.
    pub(crate) transport: Span,
    pub(crate) sent_by: HostPort,
    pub(crate) branch: Option<Span>,
    /// Value of `received`.
    pub(crate) received: Option<Span>,
    pub(crate) rport: Rport,
    /// Value of the balancer's `lb` parameter.
    pub(crate) lb: Option<Span>,
    /// Value of the balancer's `lbc` parameter: the connection a request came on.
    pub(crate) lbc: Option<Span>,
}

/// The first route-param of the first Route header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// The whole header line including CRLF.
    pub(crate) line: Span,
    /// The line holds only this entry.
    pub(crate) sole_entry: bool,
    /// When not sole: the span to cut to remove this entry (from `<` — or the display name, if
    /// the entry has one — through the comma and whitespace after it). When sole: the entry
    /// without the whitespace around it.
    pub(crate) entry_with_comma: Span,
    /// The URI between `<` and `>` (for a bare addr-spec, accepted by laxness: the URI up to the
    /// comma or whitespace, its parameters included).
    pub(crate) uri: Span,
    pub(crate) host_port: HostPort,
    /// Value of the `lb` URI parameter.
    pub(crate) lb: Option<Span>,
}

/// Why a framed message is malformed: the status and reason phrase of the response the balancer
/// answers a malformed request with (400, or 505 for a SIP version other than 2.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) status: u16,
    pub(crate) reason: MalformedFault,
}

pub(crate) const fn fail(reason: MalformedFault) -> ParseError {
    ParseError {
        status: 400,
        reason,
    }
}

/// An enveloped message whose own Content-Length disagrees with the envelope's framing.
pub(crate) const CONTENT_LENGTH_MISMATCH: ParseError = fail(MalformedFault::ContentLengthMismatch);

pub(crate) const BAD_REQUEST_LINE: ParseError = fail(MalformedFault::BadRequestLine);

pub(crate) const BAD_STATUS_LINE: ParseError = fail(MalformedFault::BadStatusLine);

/// RFC 3261 §8.2.x leaves other versions to the 505 of §21.5.7, as RFC 4475 §3.1.2.16 expects.
pub(crate) const BAD_VERSION: ParseError = ParseError {
    status: 505,
    reason: MalformedFault::VersionNotSupported,
};

pub(crate) const BAD_REQUEST_URI: ParseError = fail(MalformedFault::BadRequestUri);

pub(crate) const MALFORMED_HEADER: ParseError = fail(MalformedFault::MalformedHeader);

pub(crate) const TOO_MANY_HEADERS: ParseError = fail(MalformedFault::TooManyHeaders);

pub(crate) const INCOMPLETE: ParseError = fail(MalformedFault::IncompleteHeaderBlock);

pub(crate) const TOO_LARGE: ParseError = fail(MalformedFault::MessageTooLarge);

pub(crate) const BAD_VIA: ParseError = fail(MalformedFault::BadVia);

pub(crate) const BAD_CSEQ: ParseError = fail(MalformedFault::BadCseq);

pub(crate) const BAD_CALL_ID: ParseError = fail(MalformedFault::BadCallId);

pub(crate) const BAD_TO: ParseError = fail(MalformedFault::BadTo);

pub(crate) const BAD_ROUTE: ParseError = fail(MalformedFault::BadRoute);

pub(crate) const CSEQ_MISMATCH: ParseError = fail(MalformedFault::CseqMethodMismatch);

pub(crate) const BAD_MAX_FORWARDS: ParseError = fail(MalformedFault::BadMaxForwards);
