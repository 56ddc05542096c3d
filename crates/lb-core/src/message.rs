//! A zero-copy view of one framed SIP message: the received `Bytes` plus the offsets of the few
//! parts the balancer reads or splices (RFC 3261 §7, §20). No maps, no owned strings.
//!
//! INTERFACE STUB: the parser is being written; the types below are the contract.

use std::ops::Range;

use bytes::Bytes;

/// A byte range into [`SipMessage::bytes`]. `u32` offsets keep the view small; messages are
/// bounded far below 4 GiB by `limits.message_bytes_max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span { start: start as u32, end: end as u32 }
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

/// The first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartLine {
    Request { method: Method, method_span: Span, uri: Span },
    Response { status: u16 },
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
    Empty { name_end: u32 },
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
    /// and the whitespace after it.
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
}

/// The first route-param of the first Route header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Route {
    /// The whole header line including CRLF.
    pub(crate) line: Span,
    /// The line holds only this entry.
    pub(crate) sole_entry: bool,
    /// When not sole: the span to cut to remove this entry (from `<` through the comma and
    /// whitespace after it).
    pub(crate) entry_with_comma: Span,
    /// The URI between `<` and `>`.
    pub(crate) uri: Span,
    pub(crate) host_port: HostPort,
    /// Value of the `lb` URI parameter.
    pub(crate) lb: Option<Span>,
}

/// A framed, analysed SIP message.
#[derive(Clone, Debug)]
pub(crate) struct SipMessage {
    pub(crate) bytes: Bytes,
    pub(crate) start: StartLine,
    /// Offset just after the start line's CRLF: new header lines are inserted here.
    pub(crate) start_line_end: u32,
    /// Offset of the CRLF of the empty line that ends the headers.
    pub(crate) header_end: u32,
    pub(crate) call_id: Span,
    pub(crate) cseq_number: u32,
    pub(crate) cseq_method: Method,
    /// The To header has a `tag` parameter (the request is in a dialog).
    pub(crate) to_tag: bool,
    pub(crate) top_via: Via,
    pub(crate) top_route: Option<Route>,
    /// host:port of the route entry after the top one (in the same or the next Route header).
    pub(crate) second_route: Option<HostPort>,
    /// host:port of the Request-URI (requests only, `sip:`/`sips:` URIs only).
    pub(crate) request_uri_host: Option<HostPort>,
    /// Value of the configured extension tag header, when present.
    pub(crate) tag_header: Option<Span>,
}

/// Why a framed message is malformed: the reason phrase of the 400 the balancer answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) reason: &'static str,
}

impl SipMessage {
    /// Analyses a complete message (headers and body) as framed by [`crate::framing`].
    pub(crate) fn parse(
        bytes: Bytes,
        tag_header: Option<&[u8]>,
        headers_max: usize,
    ) -> Result<SipMessage, ParseError> {
        let _ = (bytes, tag_header, headers_max);
        todo!("message parser")
    }

    pub(crate) fn slice(&self, span: Span) -> &[u8] {
        &self.bytes[span.range()]
    }

    pub(crate) fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub(crate) fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub(crate) fn call_id(&self) -> &[u8] {
        self.slice(self.call_id)
    }
}

/// Canonical names of the headers the balancer copies into its own responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Other,
}

/// Iterates the header lines of a message head (after the start line, up to the empty line):
/// each item is the canonical name (long or compact form, any case) and the whole line span with
/// its CRLF and continuation lines. Used on the cold path (building 400/503).
pub(crate) fn header_lines(bytes: &[u8]) -> impl Iterator<Item = (HeaderName, Span)> + '_ {
    let _ = bytes;
    std::iter::empty()
}
