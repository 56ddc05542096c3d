//! A zero-copy view of one framed SIP message: the received `Bytes` plus the offsets of the few
//! parts the balancer reads or splices (RFC 3261 §7, §20). No maps, no owned strings.
//!
//! [`SipMessage::parse`] walks the head once, front to back, and looks closely only at the
//! headers the balancer routes by (Via, Call-ID, CSeq, To, Route, the optional tag header); the
//! rest is skipped line by line. It is deliberately more lenient than a full user agent where
//! leniency costs nothing (odd whitespace, unknown schemes, odd display names): the backend sees
//! the message unchanged and rejects what it must. It is strict where the balancer itself would
//! otherwise misroute: the start line, CSeq, Call-ID, the top Via and the top Route.

use std::ops::Range;

use bytes::Bytes;

use crate::framing::{decimal, FramingError};

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
    fn from_token(token: &[u8]) -> Method {
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

/// A framed, analysed SIP message.
#[derive(Clone, Debug)]
pub(crate) struct SipMessage {
    pub(crate) bytes: Bytes,
    pub(crate) start: StartLine,
    /// Offset just after the start line's CRLF: new header lines are inserted here.
    pub(crate) start_line_end: u32,
    /// Offset of the CRLF of the empty line that ends the headers.
    #[allow(
        dead_code,
        reason = "part of the view; read by tests, kept for the balancer"
    )]
    pub(crate) header_end: u32,
    pub(crate) call_id: Span,
    #[allow(
        dead_code,
        reason = "part of the view; read by tests, kept for the balancer"
    )]
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
    /// The value of the first Max-Forwards header: its digits and their number.
    pub(crate) max_forwards: Option<(Span, u32)>,
    /// Responses: the URI (between `<` and `>`) of the first Record-Route entry that carries
    /// an `lb` parameter, the balancer's own, which it rewrites on the way upstream.
    pub(crate) own_record_route: Option<Span>,
    /// Requests: value of an `lb` parameter in the Request-URI (a strict router upstream put
    /// the balancer's Record-Route URI there, RFC 3261 §16.4).
    pub(crate) request_uri_lb: Option<Span>,
    /// The From and To values as written (untrimmed), for the sanity checks of initial
    /// requests (`message/sanity.rs`), which read them only when they run.
    pub(crate) from: Span,
    pub(crate) to: Span,
    /// Length of the longest header field value (continuation lines included).
    pub(crate) longest_field: u32,
}

/// Why a framed message is malformed: the status and reason phrase of the response the balancer
/// answers a malformed request with (400, or 505 for a SIP version other than 2.0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
}

const fn fail(reason: &'static str) -> ParseError {
    ParseError {
        status: 400,
        reason,
    }
}

/// An enveloped message whose own Content-Length disagrees with the envelope's framing.
pub(crate) const CONTENT_LENGTH_MISMATCH: ParseError = fail("Content-Length Mismatch");

const BAD_REQUEST_LINE: ParseError = fail("Bad Request Line");
const BAD_STATUS_LINE: ParseError = fail("Bad Status Line");
/// RFC 3261 §8.2.x leaves other versions to the 505 of §21.5.7, as RFC 4475 §3.1.2.16 expects.
const BAD_VERSION: ParseError = ParseError {
    status: 505,
    reason: "Version Not Supported",
};
const BAD_REQUEST_URI: ParseError = fail("Bad Request-URI");
const MALFORMED_HEADER: ParseError = fail("Malformed Header");
const TOO_MANY_HEADERS: ParseError = fail("Too Many Headers");
const INCOMPLETE: ParseError = fail("Incomplete Header Block");
const TOO_LARGE: ParseError = fail("Message Too Large");
const BAD_VIA: ParseError = fail("Bad Via");
const BAD_CSEQ: ParseError = fail("Bad CSeq");
const BAD_CALL_ID: ParseError = fail("Bad Call-ID");
const BAD_TO: ParseError = fail("Bad To");
const BAD_ROUTE: ParseError = fail("Bad Route");
const CSEQ_MISMATCH: ParseError = fail("CSeq Method Mismatch");
const BAD_MAX_FORWARDS: ParseError = fail("Bad Max-Forwards");

impl SipMessage {
    /// Analyses a complete message (headers and body) as framed by [`crate::framing`].
    ///
    /// One forward pass over the head, no allocation. `headers_max` bounds the number of header
    /// fields (a folded field counts once).
    pub(crate) fn parse(
        bytes: Bytes,
        tag_header: Option<&[u8]>,
        headers_max: usize,
    ) -> Result<SipMessage, ParseError> {
        let head = Head::parse(&bytes, tag_header, headers_max)?;
        Ok(SipMessage::with_head(bytes, head))
    }

    fn with_head(bytes: Bytes, head: Head) -> SipMessage {
        SipMessage {
            start: head.start,
            start_line_end: head.start_line_end,
            header_end: head.header_end,
            call_id: head.call_id,
            cseq_number: head.cseq_number,
            cseq_method: head.cseq_method,
            to_tag: head.to_tag,
            top_via: head.top_via,
            top_route: head.top_route,
            second_route: head.second_route,
            request_uri_host: head.request_uri_host,
            tag_header: head.tag_header,
            max_forwards: head.max_forwards,
            own_record_route: head.own_record_route,
            request_uri_lb: head.request_uri_lb,
            from: head.from,
            to: head.to,
            longest_field: head.longest_field,
            bytes,
        }
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

/// What the framer learnt about a head while framing it: the analysis [`SipMessage::parse`]
/// would give, when the framer could run it, so the head is walked once, not twice.
#[derive(Debug)]
pub(crate) struct Analysis(Option<Result<Head, ParseError>>);

impl Analysis {
    /// Nothing known yet: [`Analysis::into_message`] parses.
    pub(crate) const NONE: Analysis = Analysis(None);

    /// The message view of `bytes`, exactly as `SipMessage::parse(bytes, tag_header,
    /// headers_max)` gives it; parses only if the framer could not. On error the bytes come
    /// back for the 400.
    pub(crate) fn into_message(
        self,
        bytes: Bytes,
        tag_header: Option<&[u8]>,
        headers_max: usize,
    ) -> Result<SipMessage, (Bytes, ParseError)> {
        let head = match self.0 {
            // The size check comes first in `parse` too; the framer analysed only the head.
            Some(_) if u32::try_from(bytes.len()).is_err() => Err(TOO_LARGE),
            Some(head) => head,
            None => Head::parse(&bytes, tag_header, headers_max),
        };
        match head {
            Ok(head) => Ok(SipMessage::with_head(bytes, head)),
            Err(error) => Err((bytes, error)),
        }
    }
}

/// A head the analysis walked to its empty line (see [`scan_head`]).
pub(crate) struct ScannedHead {
    /// The header block's length through its CRLFCRLF.
    pub(crate) head_len: usize,
    /// The body length its Content-Length fields give, as the framer must read them.
    pub(crate) body: Result<usize, FramingError>,
}

/// Runs the analysis of [`SipMessage::parse`] over a buffer that starts with a start line and
/// may hold more than one head (or less). When the walk over its fields reaches the empty line,
/// this gives where the head ends and its Content-Length, and leaves the analysis in
/// `analysis`; `None` when the walk stopped earlier: an incomplete head, or one the parser
/// rejects before its end (the framer then finds the end and the length its own way).
///
/// The walk visits every CRLF in order, so its empty line is the buffer's first CRLFCRLF, where
/// the framer's own search stops. Every field of a head that parses is a field the framer's
/// Content-Length scan reads, so the two agree on the length.
///
/// The analysis is written in place: it is large, and moving it up through the framer's
/// return values cost more than a tenth of what the single walk saves.
pub(crate) fn scan_head(
    b: &[u8],
    tag_header: Option<&[u8]>,
    headers_max: usize,
    analysis: &mut Analysis,
) -> Option<ScannedHead> {
    let walked = Head::walk(b, tag_header, headers_max, &mut analysis.0).ok()?;
    Some(ScannedHead {
        head_len: walked.header_end + 2,
        body: walked.body,
    })
}

/// A walk over a head's fields that reached the empty line.
struct Walked {
    /// Offset of the empty line's CRLF.
    header_end: usize,
    body: Result<usize, FramingError>,
}

/// Everything [`SipMessage`] holds except the bytes, so the parser can borrow them.
#[derive(Debug)]
pub(crate) struct Head {
    start: StartLine,
    start_line_end: u32,
    header_end: u32,
    call_id: Span,
    cseq_number: u32,
    cseq_method: Method,
    to_tag: bool,
    top_via: Via,
    top_route: Option<Route>,
    second_route: Option<HostPort>,
    request_uri_host: Option<HostPort>,
    tag_header: Option<Span>,
    max_forwards: Option<(Span, u32)>,
    own_record_route: Option<Span>,
    request_uri_lb: Option<Span>,
    from: Span,
    to: Span,
    longest_field: u32,
}

impl Head {
    fn parse(b: &[u8], tag_header: Option<&[u8]>, headers_max: usize) -> Result<Head, ParseError> {
        if u32::try_from(b.len()).is_err() {
            return Err(TOO_LARGE);
        }
        let mut head = None;
        Head::walk(b, tag_header, headers_max, &mut head)?;
        // A walk that reached the empty line always leaves a result.
        head.unwrap_or(Err(INCOMPLETE))
    }

    /// The start line and the fields up to the empty line (`Err` if the walk stops before it),
    /// then the checks that need the whole head, whose result goes to `head`.
    #[inline]
    fn walk(
        b: &[u8],
        tag_header: Option<&[u8]>,
        headers_max: usize,
        head: &mut Option<Result<Head, ParseError>>,
    ) -> Result<Walked, ParseError> {
        let (start, start_line_end) = parse_start_line(b)?;
        let (request_uri_host, request_uri_lb) = match start {
            StartLine::Request { uri, .. } => {
                match sip_uri(b, uri.start as usize, uri.end as usize) {
                    Ok((host_port, lb)) => (Some(host_port), lb),
                    Err(()) => (None, None),
                }
            }
            StartLine::Response { .. } => (None, None),
        };
        let is_response = matches!(start, StartLine::Response { .. });
        let mut max_forwards: Option<(Span, u32)> = None;
        let mut own_record_route: Option<Span> = None;

        let mut via: Option<Via> = None;
        let mut call_id: Option<Span> = None;
        let mut cseq: Option<(u32, Method, Range<usize>)> = None;
        let mut from: Option<Span> = None;
        let mut to: Option<(Span, bool)> = None;
        let mut longest_field = 0usize;
        let mut top_route: Option<Route> = None;
        // The top Route was the last entry of its line: the next Route line holds the second.
        let mut second_route_pending = false;
        let mut second_route: Option<HostPort> = None;
        let mut tag_span: Option<Span> = None;
        // As the framer reads it: any unreadable or disagreeing value makes it bad.
        let mut body: Result<Option<usize>, FramingError> = Ok(None);
        let mut fields = 0usize;
        let mut pos = start_line_end;

        let header_end = loop {
            let field = match next_field(b, pos) {
                Step::End => break pos,
                Step::Truncated => return Err(INCOMPLETE),
                Step::Malformed { .. } => return Err(MALFORMED_HEADER),
                Step::Field(field) => field,
            };
            fields += 1;
            if fields > headers_max {
                return Err(TOO_MANY_HEADERS);
            }
            let name = &b[field.name.clone()];
            let (vs, ve) = (field.value.start, field.value.end);
            longest_field = longest_field.max(ve - vs);
            if let Some(wanted) = tag_header {
                if tag_span.is_none() && name.eq_ignore_ascii_case(wanted) {
                    let (s, e) = trim_lws(b, vs, ve);
                    tag_span = Some(Span::new(s, e));
                }
            }
            match Known::of(name) {
                Known::Via if via.is_none() => {
                    via = Some(parse_via(b, Span::new(pos, field.line_end), vs, ve)?);
                }
                Known::CallId => {
                    if call_id.is_some() {
                        return Err(fail("Duplicate Call-ID"));
                    }
                    let (s, e) = trim_lws(b, vs, ve);
                    if s == e {
                        return Err(BAD_CALL_ID);
                    }
                    call_id = Some(Span::new(s, e));
                }
                Known::CSeq => {
                    if cseq.is_some() {
                        return Err(fail("Duplicate CSeq"));
                    }
                    cseq = Some(parse_cseq(b, vs, ve)?);
                }
                Known::From => {
                    if from.is_some() {
                        return Err(fail("Duplicate From"));
                    }
                    from = Some(Span::new(vs, ve));
                }
                Known::To => {
                    if to.is_some() {
                        return Err(fail("Duplicate To"));
                    }
                    let tagged = tag_param(b, vs, ve).ok_or(BAD_TO)?.is_some();
                    to = Some((Span::new(vs, ve), tagged));
                }
                Known::Route if top_route.is_none() => {
                    let entry = route_entry(b, vs, ve)?;
                    let line = Span::new(pos, field.line_end);
                    let (sole_entry, entry_with_comma) = match entry.next {
                        Some(next) => {
                            second_route = Some(route_entry(b, next, ve)?.host_port);
                            (false, Span::new(entry.start, next))
                        }
                        None => {
                            second_route_pending = true;
                            (true, Span::new(entry.start, entry.end))
                        }
                    };
                    top_route = Some(Route {
                        line,
                        sole_entry,
                        entry_with_comma,
                        uri: entry.uri,
                        host_port: entry.host_port,
                        lb: entry.lb,
                    });
                }
                Known::Route if second_route_pending => {
                    second_route_pending = false;
                    second_route = Some(route_entry(b, vs, ve)?.host_port);
                }
                Known::MaxForwards if max_forwards.is_none() => {
                    let (s, e) = trim_lws(b, vs, ve);
                    let value = (e > s && e - s <= 9 && b[s..e].iter().all(u8::is_ascii_digit))
                        .then(|| parse_u32(&b[s..e]))
                        .flatten()
                        .ok_or(BAD_MAX_FORWARDS)?;
                    max_forwards = Some((Span::new(s, e), value));
                }
                Known::RecordRoute if is_response && own_record_route.is_none() => {
                    own_record_route = own_entry(b, vs, ve);
                }
                Known::ContentLength => {
                    body = body.and_then(|found| match decimal(&b[vs..ve]) {
                        Ok(value) if found.is_none_or(|earlier| earlier == value) => {
                            Ok(Some(value))
                        }
                        _ => Err(FramingError::BadContentLength),
                    });
                }
                _ => {}
            }
            pos = field.line_end;
        };

        *head = Some('checks: {
            let Some(top_via) = via else {
                break 'checks Err(fail("Missing Via"));
            };
            let Some(call_id) = call_id else {
                break 'checks Err(fail("Missing Call-ID"));
            };
            let Some((cseq_number, cseq_method, cseq_method_range)) = cseq else {
                break 'checks Err(fail("Missing CSeq"));
            };
            let Some(from) = from else {
                break 'checks Err(fail("Missing From"));
            };
            let Some((to, to_tag)) = to else {
                break 'checks Err(fail("Missing To"));
            };
            if let StartLine::Request { method_span, .. } = start {
                // RFC 3261 §8.1.1.5; RFC 4475 §3.1.2.17-18. The balancer keys CANCEL and ACK
                // handling on the method, so a disagreement is a routing ambiguity, not a nit.
                if b[method_span.range()] != b[cseq_method_range] {
                    break 'checks Err(CSEQ_MISMATCH);
                }
            }
            Ok(Head {
                start,
                start_line_end: start_line_end as u32,
                header_end: header_end as u32,
                call_id,
                cseq_number,
                cseq_method,
                to_tag,
                top_via,
                top_route,
                second_route,
                request_uri_host,
                tag_header: tag_span,
                max_forwards,
                own_record_route,
                request_uri_lb,
                from,
                to,
                // Below the message size, which fits u32 (checked by `parse` and the framer).
                longest_field: u32::try_from(longest_field).unwrap_or(u32::MAX),
            })
        });
        Ok(Walked {
            header_end,
            body: body.and_then(|found| found.ok_or(FramingError::MissingContentLength)),
        })
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
///
/// Works on messages that failed [`SipMessage::parse`] too: a line without a colon is yielded
/// as [`HeaderName::Other`]; iteration stops at the empty line or at an unterminated line.
pub(crate) fn header_lines(bytes: &[u8]) -> impl Iterator<Item = (HeaderName, Span)> + '_ {
    let mut pos = find_crlf(bytes, 0).map(|p| p + 2);
    std::iter::from_fn(move || {
        let start = pos?;
        let (name, line_end) = match next_field(bytes, start) {
            Step::Field(field) => (Known::of(&bytes[field.name]).public(), field.line_end),
            Step::Malformed { line_end } => (HeaderName::Other, line_end),
            Step::End | Step::Truncated => {
                pos = None;
                return None;
            }
        };
        pos = Some(line_end);
        Some((name, Span::new(start, line_end)))
    })
}

// ---------------------------------------------------------------------------------------------
// Header fields
// ---------------------------------------------------------------------------------------------

/// The headers the parser and the framer look at, long and compact forms (RFC 3261 §7.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Known {
    Via,
    From,
    To,
    CallId,
    CSeq,
    Route,
    RecordRoute,
    MaxForwards,
    ContentLength,
    Other,
}

impl Known {
    pub(crate) fn of(name: &[u8]) -> Known {
        // Length and first byte pick the one candidate; only then are the remaining bytes
        // compared, so most unknown names cost two comparisons.
        let Some(first) = name.first() else {
            return Known::Other;
        };
        let rest = &name[1..];
        let (known, rest_lower): (Known, &[u8]) = match (name.len(), first.to_ascii_lowercase()) {
            (1, b'v') => return Known::Via,
            (1, b'f') => return Known::From,
            (1, b't') => return Known::To,
            (1, b'i') => return Known::CallId,
            (1, b'l') => return Known::ContentLength,
            (2, b't') => (Known::To, b"o"),
            (3, b'v') => (Known::Via, b"ia"),
            (4, b'f') => (Known::From, b"rom"),
            (4, b'c') => (Known::CSeq, b"seq"),
            (5, b'r') => (Known::Route, b"oute"),
            (7, b'c') => (Known::CallId, b"all-id"),
            (12, b'm') => (Known::MaxForwards, b"ax-forwards"),
            (12, b'r') => (Known::RecordRoute, b"ecord-route"),
            (14, b'c') => (Known::ContentLength, b"ontent-length"),
            _ => return Known::Other,
        };
        // A plain loop that stops at the first difference: std's `eq_ignore_ascii_case`
        // lower-cases whole chunks first, which costs more on these short names.
        let same = rest.len() == rest_lower.len()
            && rest
                .iter()
                .zip(rest_lower)
                .all(|(&c, &lower)| c.to_ascii_lowercase() == lower);
        if same {
            known
        } else {
            Known::Other
        }
    }

    fn public(self) -> HeaderName {
        match self {
            Known::Via => HeaderName::Via,
            Known::From => HeaderName::From,
            Known::To => HeaderName::To,
            Known::CallId => HeaderName::CallId,
            Known::CSeq => HeaderName::CSeq,
            Known::Route
            | Known::RecordRoute
            | Known::MaxForwards
            | Known::ContentLength
            | Known::Other => HeaderName::Other,
        }
    }
}

/// One header field: `name` trimmed, `value` from after the colon to before the final CRLF
/// (untrimmed, continuation lines included), `line_end` just after the final CRLF.
pub(crate) struct Field {
    pub(crate) name: Range<usize>,
    pub(crate) value: Range<usize>,
    pub(crate) line_end: usize,
}

/// What starts at a line boundary of a head.
pub(crate) enum Step {
    Field(Field),
    /// The empty line: the offset given is the header end.
    End,
    /// A line that is no header field (no colon, bad name, or a continuation line with nothing
    /// to continue); `line_end` lets a lenient reader skip it.
    Malformed {
        line_end: usize,
    },
    /// No CRLF ends the line.
    Truncated,
}

/// Reads the header field starting at `pos`, which must be at the start of a line. Continuation
/// lines (CRLF then SP or HTAB, RFC 3261 §7.3.1) belong to the field, so a name is only ever
/// recognised at the start of a line.
pub(crate) fn next_field(b: &[u8], pos: usize) -> Step {
    let Some(rest) = b.get(pos..) else {
        return Step::Truncated;
    };
    if rest.starts_with(b"\r\n") {
        return Step::End;
    }
    let mut from = pos;
    let crlf = loop {
        let Some(crlf) = find_crlf(b, from) else {
            return Step::Truncated;
        };
        match b.get(crlf + 2) {
            Some(b' ' | b'\t') => from = crlf + 2,
            _ => break crlf,
        }
    };
    let line_end = crlf + 2;
    // `token *WSP ":"`: one pass over the name finds the colon and validates the name. Neither
    // a token character nor WSP is a colon, so this is the line's first colon.
    let name_end = token_end(b, pos, crlf);
    let mut colon = name_end;
    while colon < crlf && is_wsp(b[colon]) {
        colon += 1;
    }
    if name_end == pos || colon >= crlf || b[colon] != b':' {
        return Step::Malformed { line_end };
    }
    Step::Field(Field {
        name: pos..name_end,
        value: colon + 1..crlf,
        line_end,
    })
}

/// Offset of the first CRLF at or after `from`. A CR alone is ordinary data.
///
/// Looks for the LF (at `from + 1` or later) and checks the byte before it: the first LF
/// preceded by a CR is the first CRLF.
pub(crate) fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    let mut at = from.checked_add(1)?;
    loop {
        let lf = find_lf(b, at)?;
        if b[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        at = lf + 1;
    }
}

/// Offset of the first LF at or after `from`, eight bytes per step.
///
/// Header lines are mostly 20–80 bytes: at that length the setup of a vectorised `memchr`
/// costs more than this loop, which inlines into the line walkers.
#[inline]
fn find_lf(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LFS: u64 = ONES * b'\n' as u64;
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ LFS;
        // The lowest byte flagged here is the first zero byte of `x`, i.e. the first LF; a
        // borrow can only flag bytes above a real zero, never below it.
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(|&c| c == b'\n')
        .map(|at| i + at)
}

// ---------------------------------------------------------------------------------------------
// Start line
// ---------------------------------------------------------------------------------------------

/// The start line and the offset after its CRLF.
///
/// Runs of SP between the elements and SP before the CRLF are accepted (RFC 4475 §3.1.2.9 and
/// §3.1.2.10 allow a liberal element to; the bytes are forwarded unchanged, as they require).
fn parse_start_line(b: &[u8]) -> Result<(StartLine, usize), ParseError> {
    let is_response = b.len() >= 4 && b[..4].eq_ignore_ascii_case(b"SIP/");
    let bad_line = if is_response {
        BAD_STATUS_LINE
    } else {
        BAD_REQUEST_LINE
    };
    let line_end = find_crlf(b, 0).ok_or(bad_line)?;
    let line = &b[..line_end];
    if is_response {
        return parse_status_line(line).map(|start| (start, line_end + 2));
    }

    let method_end = token_end(line, 0, line.len());
    if method_end == 0 || line.get(method_end) != Some(&b' ') {
        return Err(BAD_REQUEST_LINE);
    }
    let uri_start = skip_sp(line, method_end);
    let uri_end = uri_start + memchr::memchr(b' ', &line[uri_start..]).ok_or(BAD_REQUEST_LINE)?;
    if uri_start == uri_end {
        return Err(BAD_REQUEST_LINE);
    }
    let version_start = skip_sp(line, uri_end);
    let version_end =
        memchr::memchr(b' ', &line[version_start..]).map_or(line.len(), |at| version_start + at);
    if skip_sp(line, version_end) != line.len() {
        // A fourth element: typically whitespace inside the Request-URI (RFC 4475 §3.1.2.8).
        return Err(BAD_REQUEST_LINE);
    }
    check_version(&line[version_start..version_end], BAD_REQUEST_LINE)?;
    check_request_uri(&line[uri_start..uri_end])?;
    let start = StartLine::Request {
        method: Method::from_token(&line[..method_end]),
        method_span: Span::new(0, method_end),
        uri: Span::new(uri_start, uri_end),
    };
    Ok((start, line_end + 2))
}

/// `SIP/2.0 SP 3DIGIT SP reason-phrase`; the reason phrase may be empty or any UTF-8.
fn parse_status_line(line: &[u8]) -> Result<StartLine, ParseError> {
    let version_end = memchr::memchr(b' ', line).ok_or(BAD_STATUS_LINE)?;
    check_version(&line[..version_end], BAD_STATUS_LINE)?;
    let code_start = skip_sp(line, version_end);
    let code = line
        .get(code_start..code_start + 3)
        .ok_or(BAD_STATUS_LINE)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(BAD_STATUS_LINE);
    }
    if !matches!(line.get(code_start + 3), None | Some(b' ')) {
        // More than three digits (RFC 4475 §3.1.2.19) or junk after the code.
        return Err(BAD_STATUS_LINE);
    }
    let status = code.iter().fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&status) {
        return Err(BAD_STATUS_LINE);
    }
    Ok(StartLine::Response { status })
}

fn check_version(version: &[u8], otherwise: ParseError) -> Result<(), ParseError> {
    if version.eq_ignore_ascii_case(b"SIP/2.0") {
        Ok(())
    } else if version.len() >= 4 && version[..4].eq_ignore_ascii_case(b"SIP/") {
        Err(BAD_VERSION)
    } else {
        Err(otherwise)
    }
}

/// An absolute URI: `scheme ":" …` with no control characters (rejects `<sip:…>`, RFC 4475
/// §3.1.2.7). Unknown schemes pass: the backend answers 416 if it must.
fn check_request_uri(uri: &[u8]) -> Result<(), ParseError> {
    let scheme_ok = uri.first().is_some_and(u8::is_ascii_alphabetic)
        && match uri.iter().position(|&c| c == b':') {
            Some(colon) => uri[..colon]
                .iter()
                .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')),
            None => false,
        };
    if scheme_ok && !uri.iter().any(|&c| c < 0x20 || c == 0x7f) {
        Ok(())
    } else {
        Err(BAD_REQUEST_URI)
    }
}

// ---------------------------------------------------------------------------------------------
// Field values
// ---------------------------------------------------------------------------------------------

/// `CSeq: 1*DIGIT LWS Method`: the number, the method, and where the method is written.
fn parse_cseq(b: &[u8], vs: usize, ve: usize) -> Result<(u32, Method, Range<usize>), ParseError> {
    let digits_start = skip_lws(b, vs, ve);
    let digits_end = digits_end(b, digits_start, ve);
    let number = parse_u32(&b[digits_start..digits_end]).ok_or(BAD_CSEQ)?;
    let method_start = skip_lws(b, digits_end, ve);
    if method_start == digits_end {
        return Err(BAD_CSEQ);
    }
    let method_end = token_end(b, method_start, ve);
    if method_end == method_start || skip_lws(b, method_end, ve) != ve {
        return Err(BAD_CSEQ);
    }
    let method = Method::from_token(&b[method_start..method_end]);
    Ok((number, method, method_start..method_end))
}

/// Where the `tag` header parameter of a From or To value is: `Some(Some(offset))` just after
/// its name (see [`tag_value`]), `Some(None)` without one. A `;` outside the display name's
/// quotes and outside `<>` starts a header parameter (for a bare addr-spec every `;` does,
/// RFC 3261 §20). An unterminated quote or `<` makes the answer unknowable: `None`.
///
/// Stops at the name: the To of nearly every message has a tag, and routing needs only that.
#[inline]
fn tag_param(b: &[u8], vs: usize, ve: usize) -> Option<Option<usize>> {
    let mut i = vs;
    // Jumps from one byte that matters to the next: inside `<>` only the closing `>` does.
    loop {
        let Some(at) = memchr::memchr3(b'"', b'<', b';', &b[i.min(ve)..ve]) else {
            return Some(None);
        };
        i += at;
        match b[i] {
            b'"' => i = quoted_end(b, i, ve)?,
            b'<' => {
                let close = memchr::memchr(b'>', &b[i + 1..ve])?;
                i += close + 2;
            }
            _ => {
                let name_start = skip_lws(b, i + 1, ve);
                let name_end = token_end(b, name_start, ve);
                if b[name_start..name_end].eq_ignore_ascii_case(b"tag") {
                    return Some(Some(name_end));
                }
                i = name_end.max(i + 1);
            }
        }
    }
}

/// The value of the parameter whose name ends at `name_end` (from [`tag_param`]): empty for a
/// bare `;tag` or `;tag=`.
fn tag_value(b: &[u8], name_end: usize, ve: usize) -> Span {
    let eq = skip_lws(b, name_end, ve);
    if eq >= ve || b[eq] != b'=' {
        return Span::new(name_end, name_end);
    }
    let start = skip_lws(b, eq + 1, ve);
    let end = param_value_end(b, start, ve).unwrap_or(start);
    Span::new(start, end)
}

/// The first via-parm of a Via value (RFC 3261 §20.42). Whitespace is accepted wherever the
/// grammar's SWS/LWS allow it (RFC 4475 §3.1.1.1), including around `/`.
fn parse_via(b: &[u8], line: Span, vs: usize, ve: usize) -> Result<Via, ParseError> {
    let value_start = skip_lws(b, vs, ve);
    // sent-protocol: name SLASH version SLASH transport
    let name_end = token_end(b, value_start, ve);
    let mut p = expect_slash(b, value_start, name_end, ve)?;
    let version_end = token_end(b, p, ve);
    p = expect_slash(b, p, version_end, ve)?;
    let transport_start = p;
    let transport_end = token_end(b, p, ve);
    if transport_end == transport_start {
        return Err(BAD_VIA);
    }
    let host_start = skip_lws(b, transport_end, ve);
    if host_start == transport_end {
        return Err(BAD_VIA);
    }
    let host_end = host_end(b, host_start, ve).ok_or(BAD_VIA)?;
    let mut last = host_end;
    let mut port = None;
    let after_host = skip_lws(b, host_end, ve);
    if b.get(after_host) == Some(&b':') && after_host < ve {
        let port_start = skip_lws(b, after_host + 1, ve);
        let port_end = digits_end(b, port_start, ve);
        port = Some(parse_port(&b[port_start..port_end]).ok_or(BAD_VIA)?);
        last = port_end;
    }

    let mut via = Via {
        line,
        value: Span::default(),
        sole_value: true,
        value_with_comma: Span::default(),
        transport: Span::new(transport_start, transport_end),
        sent_by: HostPort {
            host: Span::new(host_start, host_end),
            port,
        },
        branch: None,
        received: None,
        rport: Rport::Absent,
        lb: None,
        lbc: None,
    };
    let mut p = skip_lws(b, last, ve);
    while p < ve && b[p] == b';' {
        let name_start = skip_lws(b, p + 1, ve);
        let name_end = token_end(b, name_start, ve);
        if name_end == name_start {
            // `;;` or `;,`: RFC 4475 §3.1.2.1.
            return Err(BAD_VIA);
        }
        last = name_end;
        let mut value = None;
        let eq = skip_lws(b, name_end, ve);
        if eq < ve && b[eq] == b'=' {
            let value_start = skip_lws(b, eq + 1, ve);
            let value_end = param_value_end(b, value_start, ve).ok_or(BAD_VIA)?;
            value = Some(Span::new(value_start, value_end));
            last = value_end;
        }
        let name = &b[name_start..name_end];
        if name.eq_ignore_ascii_case(b"branch") {
            via.branch = via.branch.or(value);
        } else if name.eq_ignore_ascii_case(b"received") {
            via.received = via.received.or(value);
        } else if name.eq_ignore_ascii_case(b"lb") {
            via.lb = via.lb.or(value);
        } else if name.eq_ignore_ascii_case(b"lbc") {
            via.lbc = via.lbc.or(value);
        } else if name.eq_ignore_ascii_case(b"rport") && via.rport == Rport::Absent {
            via.rport = match value {
                None => Rport::Empty {
                    name_end: name_end as u32,
                },
                Some(v) => Rport::Value(parse_port(&b[v.range()]).ok_or(BAD_VIA)?),
            };
        }
        p = skip_lws(b, last, ve);
    }
    via.value = Span::new(value_start, last);
    via.value_with_comma = via.value;
    if p < ve {
        if b[p] != b',' {
            return Err(BAD_VIA);
        }
        let next = skip_lws(b, p + 1, ve);
        if next == ve {
            return Err(BAD_VIA);
        }
        via.sole_value = false;
        via.value_with_comma = Span::new(value_start, next);
    }
    Ok(via)
}

/// After a token ending at `token_end` (which must not be empty): optional LWS, `/`, optional
/// LWS; returns the offset of what follows.
fn expect_slash(
    b: &[u8],
    token_start: usize,
    token_end: usize,
    ve: usize,
) -> Result<usize, ParseError> {
    let slash = skip_lws(b, token_end, ve);
    if token_end == token_start || slash >= ve || b[slash] != b'/' {
        return Err(BAD_VIA);
    }
    Ok(skip_lws(b, slash + 1, ve))
}

/// End of a generic parameter value: a quoted string, or a run of characters up to the next
/// separator (token characters, and `[`, `]`, `:` for IPv6 `received` values). Never empty.
fn param_value_end(b: &[u8], start: usize, ve: usize) -> Option<usize> {
    if start < ve && b[start] == b'"' {
        return quoted_end(b, start, ve);
    }
    let i = run_end(b, start, ve, |c| {
        !matches!(c, b';' | b',' | b'"' | b'<' | b'>' | b'?') && !is_lws(c)
    });
    (i > start).then_some(i)
}

/// One route-param of a Route value: where it starts and ends, and where the next begins.
struct RouteEntry {
    start: usize,
    end: usize,
    next: Option<usize>,
    uri: Span,
    host_port: HostPort,
    lb: Option<Span>,
}

/// The first entry of a Route value starting at `vs` (RFC 3261 §20.34): `[display-name] <uri>
/// *(;rr-param)`, or by laxness a bare URI. Its URI must be a `sip:`/`sips:` URI: the balancer
/// forwards to it.
fn route_entry(b: &[u8], vs: usize, ve: usize) -> Result<RouteEntry, ParseError> {
    let start = skip_lws(b, vs, ve);
    if start == ve {
        return Err(BAD_ROUTE);
    }
    let mut i = start;
    while i < ve && !matches!(b[i], b'<' | b',' | b';') {
        if b[i] == b'"' {
            i = quoted_end(b, i, ve).ok_or(BAD_ROUTE)?;
        } else {
            i += 1;
        }
    }
    let (uri_start, uri_end, mut i) = if i < ve && b[i] == b'<' {
        let uri_start = i + 1;
        let gt = memchr::memchr(b'>', &b[uri_start..ve]).ok_or(BAD_ROUTE)? + uri_start;
        (uri_start, gt, gt + 1)
    } else {
        let mut end = start;
        while end < ve && b[end] != b',' && !is_lws(b[end]) {
            end += 1;
        }
        (start, end, end)
    };
    let (host_port, lb) = sip_uri(b, uri_start, uri_end).map_err(|()| BAD_ROUTE)?;
    // rr-params up to the comma that separates entries.
    while i < ve && b[i] != b',' {
        if b[i] == b'"' {
            i = quoted_end(b, i, ve).ok_or(BAD_ROUTE)?;
        } else {
            i += 1;
        }
    }
    let mut end = i;
    while end > start && is_lws(b[end - 1]) {
        end -= 1;
    }
    let next = if i < ve {
        let next = skip_lws(b, i + 1, ve);
        if next == ve {
            return Err(BAD_ROUTE);
        }
        Some(next)
    } else {
        None
    };
    Ok(RouteEntry {
        start,
        end,
        next,
        uri: Span::new(uri_start, uri_end),
        host_port,
        lb,
    })
}

/// The via-parm after the top one: the next hop back for a response whose top Via was the
/// balancer's own. The cold path (a response whose connection is gone): a fresh walk.
pub(crate) fn second_via(b: &[u8], start_line_end: usize) -> Option<Via> {
    let mut pos = start_line_end;
    let mut seen_top = false;
    while let Step::Field(field) = next_field(b, pos) {
        if matches!(Known::of(&b[field.name.clone()]), Known::Via) {
            let (vs, ve) = (field.value.start, field.value.end);
            let line = Span::new(pos, field.line_end);
            let via = parse_via(b, line, vs, ve).ok()?;
            if seen_top {
                return Some(via);
            }
            if !via.sole_value {
                return parse_via(b, line, via.value_with_comma.end as usize, ve).ok();
            }
            seen_top = true;
        }
        pos = field.line_end;
    }
    None
}

/// The last Route entry of a head, for a request that a strict router upstream sent to the
/// balancer's own URI (RFC 3261 §16.4): `uri` goes back into the Request-URI, `cut` removes
/// the entry (its whole line when alone there, else with the comma before it). The cold path:
/// a fresh walk over the header lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LastRoute {
    pub(crate) uri: Span,
    pub(crate) cut: Span,
}

pub(crate) fn last_route(b: &[u8], start_line_end: usize) -> Option<LastRoute> {
    let mut pos = start_line_end;
    let mut last = None;
    while let Step::Field(field) = next_field(b, pos) {
        if matches!(Known::of(&b[field.name.clone()]), Known::Route) {
            let (vs, ve) = (field.value.start, field.value.end);
            let mut entry = route_entry(b, vs, ve).ok()?;
            let mut cut = Span::new(pos, field.line_end);
            while let Some(next) = entry.next {
                let following = route_entry(b, next, ve).ok()?;
                cut = Span::new(entry.end, following.end);
                entry = following;
            }
            last = Some(LastRoute {
                uri: entry.uri,
                cut,
            });
        }
        pos = field.line_end;
    }
    last
}

/// The URI of the first entry of a Record-Route value that carries an `lb` parameter. An
/// entry this grammar cannot read ends the search: the header is someone else's, and a
/// response is never refused for it.
fn own_entry(b: &[u8], vs: usize, ve: usize) -> Option<Span> {
    let mut at = vs;
    loop {
        let entry = route_entry(b, at, ve).ok()?;
        if entry.lb.is_some() {
            return Some(entry.uri);
        }
        at = entry.next?;
    }
}

/// host:port and the `lb` parameter of a `sip:`/`sips:` URI in `b[s..e]` (RFC 3261 §19.1.1).
/// The userinfo (up to `@`, which cannot occur unescaped elsewhere) is skipped.
fn sip_uri(b: &[u8], s: usize, e: usize) -> Result<(HostPort, Option<Span>), ()> {
    let uri = &b[s..e];
    let scheme_len = if uri.len() >= 4 && uri[..4].eq_ignore_ascii_case(b"sip:") {
        4
    } else if uri.len() >= 5 && uri[..5].eq_ignore_ascii_case(b"sips:") {
        5
    } else {
        return Err(());
    };
    let host_start = match memchr::memchr(b'@', &uri[scheme_len..]) {
        Some(at) => s + scheme_len + at + 1,
        None => s + scheme_len,
    };
    let host_end = host_end(b, host_start, e).ok_or(())?;
    let mut port = None;
    let mut i = host_end;
    if i < e && b[i] == b':' {
        let port_end = digits_end(b, i + 1, e);
        port = Some(parse_port(&b[i + 1..port_end]).ok_or(())?);
        i = port_end;
    }
    let mut lb = None;
    while i < e && b[i] == b';' {
        let name_start = i + 1;
        let name_end = token_end(b, name_start, e);
        i = name_end;
        let mut value = None;
        if i < e && b[i] == b'=' {
            let value_start = i + 1;
            i = value_start;
            while i < e && !matches!(b[i], b';' | b'?') {
                i += 1;
            }
            value = Some(Span::new(value_start, i));
        }
        if lb.is_none() && b[name_start..name_end].eq_ignore_ascii_case(b"lb") {
            lb = value;
        }
        if i == name_start {
            break;
        }
    }
    Ok((
        HostPort {
            host: Span::new(host_start, host_end),
            port,
        },
        lb,
    ))
}

/// End of a host (hostname, IPv4 address or bracketed IPv6 reference) starting at `s`; `None`
/// if there is none or it is followed by something that cannot follow a host.
fn host_end(b: &[u8], s: usize, e: usize) -> Option<usize> {
    let end = if s < e && b[s] == b'[' {
        let close = s + 1 + memchr::memchr(b']', &b[s + 1..e])?;
        let inside = &b[s + 1..close];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|&c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return None;
        }
        close + 1
    } else {
        let i = run_end(b, s, e, |c| {
            c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_')
        });
        if i == s {
            return None;
        }
        i
    };
    match b.get(end) {
        Some(&c) if end < e && !matches!(c, b':' | b';' | b',' | b'?' | b'>') && !is_lws(c) => None,
        _ => Some(end),
    }
}

// ---------------------------------------------------------------------------------------------
// Bytes
// ---------------------------------------------------------------------------------------------

/// `token` characters of RFC 3261 §25.1.
const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    table
};

fn is_token(c: u8) -> bool {
    TOKEN[c as usize]
}

fn is_wsp(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Inside a field value CR and LF occur only as part of a fold, so all four are LWS.
fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

fn skip_lws(b: &[u8], i: usize, e: usize) -> usize {
    run_end(b, i, e, is_lws)
}

/// The end of the run of bytes satisfying `keep` in `b[i..e]` (`i` when `i >= e`). Iterating
/// the subslice lets the compiler drop the per-byte bounds check of an indexed loop.
#[inline(always)]
fn run_end(b: &[u8], i: usize, e: usize, keep: impl Fn(u8) -> bool) -> usize {
    match b.get(i..e.min(b.len())) {
        Some(run) => i + run.iter().position(|&c| !keep(c)).unwrap_or(run.len()),
        None => i,
    }
}

fn skip_sp(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    i
}

fn trim_lws(b: &[u8], s: usize, e: usize) -> (usize, usize) {
    let s = skip_lws(b, s, e);
    let mut e = e;
    while e > s && is_lws(b[e - 1]) {
        e -= 1;
    }
    (s, e)
}

fn token_end(b: &[u8], i: usize, e: usize) -> usize {
    run_end(b, i, e, is_token)
}

fn digits_end(b: &[u8], i: usize, e: usize) -> usize {
    run_end(b, i, e, |c| c.is_ascii_digit())
}

/// The offset after the closing quote of the quoted string opening at `open` (backslash
/// escapes honoured), `None` if unterminated.
fn quoted_end(b: &[u8], open: usize, e: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < e {
        match b[i] {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Decimal digits only, at least one, overflow checked.
pub(crate) fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        } else {
            None
        }
    })
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    parse_u32(digits).and_then(|n| u16::try_from(n).ok())
}

pub(crate) mod sanity;

#[cfg(test)]
mod rfc4475_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TAG_HEADER: &[u8] = b"X-LB-Tag";

    /// The reference: a byte-by-byte search for the first CRLF at or after `from`.
    fn find_crlf_slow(b: &[u8], from: usize) -> Option<usize> {
        (from..b.len().saturating_sub(1)).find(|&i| b[i] == b'\r' && b[i + 1] == b'\n')
    }

    #[quickcheck_macros::quickcheck]
    fn find_crlf_agrees_with_a_byte_search(picks: Vec<u8>, from: u8) -> bool {
        // Mostly CR, LF and one other byte, so CRLFs, lone CRs and LFs all occur.
        let b: Vec<u8> = picks
            .iter()
            .map(|p| b"\r\nx\n\rab"[usize::from(p % 7)])
            .collect();
        let from = usize::from(from) % (b.len() + 2);
        find_crlf(&b, from) == find_crlf_slow(&b, from)
    }

    fn parse(text: &str) -> Result<SipMessage, ParseError> {
        SipMessage::parse(
            Bytes::copy_from_slice(text.as_bytes()),
            Some(TAG_HEADER),
            128,
        )
    }

    fn ok(text: &str) -> SipMessage {
        match parse(text) {
            Ok(message) => message,
            Err(error) => panic!("{error:?} for\n{text}"),
        }
    }

    fn reason(text: &str) -> &'static str {
        match parse(text) {
            Ok(_) => panic!("parsed but should not:\n{text}"),
            Err(error) => error.reason,
        }
    }

    fn s(message: &SipMessage, span: Span) -> &str {
        std::str::from_utf8(message.slice(span)).unwrap()
    }

    fn hp(message: &SipMessage, host_port: HostPort) -> (&str, Option<u16>) {
        (s(message, host_port.host), host_port.port)
    }

    /// A request with the six headers, `extra` inserted after Via.
    fn request(extra: &str) -> String {
        format!(
            "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds\r\n\
             {extra}\
             Max-Forwards: 70\r\n\
             To: Bob <sip:bob@biloxi.example.com>\r\n\
             From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
             Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
             CSeq: 314159 INVITE\r\n\
             Content-Length: 4\r\n\
             \r\n\
             body"
        )
    }

    /// A request whose headers are exactly `headers` (each with its CRLF).
    fn with_headers(start: &str, headers: &str) -> String {
        format!("{start}\r\n{headers}\r\n")
    }

    const VIA: &str = "Via: SIP/2.0/TCP h;branch=z9hG4bK1\r\n";
    const TO: &str = "To: <sip:b@h>\r\n";
    const FROM: &str = "From: <sip:a@h>;tag=1\r\n";
    const CALL_ID: &str = "Call-ID: c1\r\n";
    const CSEQ: &str = "CSeq: 1 OPTIONS\r\n";

    fn options(headers: &str) -> String {
        with_headers("OPTIONS sip:h SIP/2.0", headers)
    }

    #[test]
    fn parses_a_basic_invite() {
        let text = request("");
        let m = ok(&text);
        assert!(m.is_request());
        assert_eq!(m.method(), Some(Method::Invite));
        let StartLine::Request {
            method,
            method_span,
            uri,
        } = m.start
        else {
            panic!()
        };
        assert_eq!(method, Method::Invite);
        assert_eq!(s(&m, method_span), "INVITE");
        assert_eq!(s(&m, uri), "sip:bob@biloxi.example.com");
        assert_eq!(
            m.request_uri_host.map(|h| hp(&m, h)),
            Some(("biloxi.example.com", None))
        );
        assert_eq!(
            &text[..m.start_line_end as usize],
            "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
        );
        assert_eq!(&text[m.header_end as usize..], "\r\nbody");
        assert_eq!(m.call_id(), b"a84b4c76e66710@pc33.atlanta.example.com");
        assert_eq!((m.cseq_number, m.cseq_method), (314159, Method::Invite));
        assert!(!m.to_tag);
        let via = m.top_via;
        assert_eq!(
            s(&m, via.line),
            "Via: SIP/2.0/TCP pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds\r\n"
        );
        assert_eq!(
            s(&m, via.value),
            "SIP/2.0/TCP pc33.atlanta.example.com:5061;branch=z9hG4bK776asdhds"
        );
        assert!(via.sole_value);
        assert_eq!(via.value_with_comma, via.value);
        assert_eq!(s(&m, via.transport), "TCP");
        assert_eq!(
            hp(&m, via.sent_by),
            ("pc33.atlanta.example.com", Some(5061))
        );
        assert_eq!(via.branch.map(|b| s(&m, b)), Some("z9hG4bK776asdhds"));
        assert_eq!(
            (via.received, via.rport, via.lb),
            (None, Rport::Absent, None)
        );
        assert_eq!(m.top_route, None);
        assert_eq!(m.second_route, None);
        assert_eq!(m.tag_header, None);
    }

    #[test]
    fn parses_a_response() {
        let m = ok("SIP/2.0 180 Ringing\r\n\
                    Via: SIP/2.0/TCP h:5060;branch=z9hG4bK1;received=192.0.2.1;rport=5070;lb=1.2.3\r\n\
                    To: <sip:b@h>;tag=x\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 7 INVITE\r\n\
                    Content-Length: 0\r\n\r\n");
        assert!(!m.is_request());
        assert_eq!(m.method(), None);
        assert_eq!(m.start, StartLine::Response { status: 180 });
        assert_eq!(m.request_uri_host, None);
        assert!(m.to_tag);
        assert_eq!((m.cseq_number, m.cseq_method), (7, Method::Invite));
        let via = m.top_via;
        assert_eq!(via.received.map(|r| s(&m, r)), Some("192.0.2.1"));
        assert_eq!(via.rport, Rport::Value(5070));
        assert_eq!(via.lb.map(|r| s(&m, r)), Some("1.2.3"));
        assert!(s(&m, via.value).ends_with(";lb=1.2.3"));
        // Responses with an empty or unusual reason phrase (RFC 4475 §3.1.1.12-13).
        assert_eq!(
            ok(&with_headers(
                "SIP/2.0 100 ",
                &[VIA, TO, FROM, CALL_ID, CSEQ].concat()
            ))
            .start,
            StartLine::Response { status: 100 }
        );
        assert_eq!(
            ok(&with_headers(
                "SIP/2.0 699 \u{44d} ~!",
                &[VIA, TO, FROM, CALL_ID, CSEQ].concat()
            ))
            .start,
            StartLine::Response { status: 699 }
        );
    }

    #[test]
    fn maps_methods_case_sensitively() {
        for (name, method) in [
            ("INVITE", Method::Invite),
            ("ACK", Method::Ack),
            ("CANCEL", Method::Cancel),
            ("BYE", Method::Bye),
            ("REGISTER", Method::Register),
            ("OPTIONS", Method::Options),
            ("SUBSCRIBE", Method::Subscribe),
            ("NOTIFY", Method::Notify),
            ("REFER", Method::Refer),
            ("invite", Method::Other),
            ("PUBLISH", Method::Other),
        ] {
            let text = with_headers(
                &format!("{name} sip:h SIP/2.0"),
                &[VIA, TO, FROM, CALL_ID, &format!("CSeq: 1 {name}\r\n")].concat(),
            );
            let m = ok(&text);
            assert_eq!(
                (m.method(), m.cseq_method),
                (Some(method), method),
                "{name}"
            );
        }
    }

    #[test]
    fn reads_compact_forms_in_any_case() {
        let m = ok(&options(
            "v: SIP/2.0/UDP h2:5062;branch=z9hG4bK2\r\n\
             T: <sip:b@h>;TAG=q\r\n\
             f: <sip:a@h>;tag=1\r\n\
             I: compact@h\r\n\
             cSeQ: 1 OPTIONS\r\n\
             L: 0\r\n",
        ));
        assert_eq!(hp(&m, m.top_via.sent_by), ("h2", Some(5062)));
        assert_eq!(m.call_id(), b"compact@h");
        assert!(m.to_tag);
        // Long forms in odd case, whitespace before the colon.
        let m = ok(&options(
            "vIA : SIP/2.0/UDP h3;branch=z9hG4bK3\r\n\
             tO\t: <sip:b@h>\r\n\
             FROM: <sip:a@h>;tag=1\r\n\
             call-id:   spaced@h   \r\n\
             CSEQ: 1 OPTIONS\r\n",
        ));
        assert_eq!(hp(&m, m.top_via.sent_by), ("h3", None));
        assert_eq!(m.call_id(), b"spaced@h");
        assert!(!m.to_tag);
    }

    #[test]
    fn folded_lines_belong_to_their_header() {
        let text = options(
            "Via: SIP/2.0/UDP\r\n  h4\r\n\t;branch=z9hG4bK4\r\n\
             To:\r\n <sip:b@h>\r\n  ;tag=t\r\n\
             From: <sip:a@h>;tag=1\r\n\
             X-Folded: a\r\n Call-ID: not-this\r\n\
             Call-ID: folded@h\r\n\
             CSeq: 0009\r\n  OPTIONS\r\n",
        );
        let m = ok(&text);
        assert_eq!(
            s(&m, m.top_via.line),
            "Via: SIP/2.0/UDP\r\n  h4\r\n\t;branch=z9hG4bK4\r\n"
        );
        assert_eq!(
            s(&m, m.top_via.value),
            "SIP/2.0/UDP\r\n  h4\r\n\t;branch=z9hG4bK4"
        );
        assert_eq!(hp(&m, m.top_via.sent_by), ("h4", None));
        assert!(m.to_tag);
        assert_eq!(m.call_id(), b"folded@h");
        assert_eq!((m.cseq_number, m.cseq_method), (9, Method::Options));
    }

    #[test]
    fn via_with_whitespace_around_separators() {
        // RFC 4475 §3.1.1.1's top Via.
        let m = ok(&options(
            "Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n\
             To: <sip:b@h>\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n",
        ));
        assert_eq!(s(&m, m.top_via.transport), "UDP");
        assert_eq!(hp(&m, m.top_via.sent_by), ("192.0.2.2", None));
        assert_eq!(m.top_via.branch.map(|b| s(&m, b)), Some("390skdjuw"));
        let m = ok(&options(
            "v:  SIP  / 2.0  / TCP     spindle.example.com : 5060  ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n \
             SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n\
             To: <sip:b@h>\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n",
        ));
        let via = m.top_via;
        assert_eq!(hp(&m, via.sent_by), ("spindle.example.com", Some(5060)));
        assert_eq!(via.branch.map(|b| s(&m, b)), Some("z9hG4bK9ikj8"));
        assert_eq!(
            s(&m, via.value),
            "SIP  / 2.0  / TCP     spindle.example.com : 5060  ;\r\n  branch  =   z9hG4bK9ikj8"
        );
        assert!(!via.sole_value);
        assert!(s(&m, via.value_with_comma).ends_with("z9hG4bK9ikj8  ,\r\n "));
    }

    #[test]
    fn ipv6_via_with_rport_and_received() {
        let m = ok(&options(
            "Via: SIP/2.0/TCP [2001:db8::1]:5070;branch=z9hG4bK1;rport;received=[2001:db8::2]\r\n\
             To: <sip:b@h>\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n",
        ));
        let via = m.top_via;
        assert_eq!(hp(&m, via.sent_by), ("[2001:db8::1]", Some(5070)));
        assert_eq!(via.received.map(|r| s(&m, r)), Some("[2001:db8::2]"));
        let Rport::Empty { name_end } = via.rport else {
            panic!("{:?}", via.rport)
        };
        assert!(m.bytes[..name_end as usize].ends_with(b";rport"));
        assert_eq!(m.bytes[name_end as usize], b';');
    }

    #[test]
    fn rport_at_the_end_and_trailing_whitespace() {
        let m = ok(&options(
            "Via: SIP/2.0/TCP h:5060;branch=z9hG4bK1;rport  \r\n\
             To: <sip:b@h>\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n",
        ));
        let Rport::Empty { name_end } = m.top_via.rport else {
            panic!()
        };
        assert_eq!(name_end, m.top_via.value.end);
        assert_eq!(
            s(&m, m.top_via.value),
            "SIP/2.0/TCP h:5060;branch=z9hG4bK1;rport"
        );
    }

    #[test]
    fn comma_combined_via() {
        let text = options(
            "Via: SIP/2.0/TCP a.example.com;branch=z9hG4bKa;lb=0.1.ff ,  SIP/2.0/UDP b;branch=z9hG4bKb\r\n\
             Via: SIP/2.0/UDP c;branch=z9hG4bKc\r\n\
             To: <sip:b@h>\r\nFrom: <sip:a@h>;tag=1\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\n",
        );
        let m = ok(&text);
        let via = m.top_via;
        assert!(!via.sole_value);
        assert_eq!(
            s(&m, via.value),
            "SIP/2.0/TCP a.example.com;branch=z9hG4bKa;lb=0.1.ff"
        );
        assert_eq!(
            s(&m, via.value_with_comma),
            "SIP/2.0/TCP a.example.com;branch=z9hG4bKa;lb=0.1.ff ,  "
        );
        assert_eq!(via.lb.map(|l| s(&m, l)), Some("0.1.ff"));
        // Cutting value_with_comma leaves a valid Via holding the rest.
        let mut cut = text.clone();
        cut.replace_range(via.value_with_comma.range(), "");
        let rest = ok(&cut);
        assert_eq!(hp(&rest, rest.top_via.sent_by), ("b", None));
        assert!(rest.top_via.sole_value);
    }

    #[test]
    fn to_tag_outside_quotes_and_brackets_only() {
        let cases = [
            ("To: \"semi;tag=no <x>\" <sip:b@h;tag=no>\r\n", false),
            ("To: \"semi;tag=no <x>\" <sip:b@h;tag=no>;tag=yes\r\n", true),
            ("To: \"esc \\\" ;tag=no\" <sip:b@h>\r\n", false),
            ("To: sip:b@h ;   tag    = 1918181833n\r\n", true),
            ("To: sip:b@h;tagx=1\r\n", false),
            ("To: Bob <sip:b@h> ; Tag=1\r\n", true),
            ("To: isbn:2983792873\r\n", false),
        ];
        for (to, expected) in cases {
            let m = ok(&options(&[VIA, to, FROM, CALL_ID, CSEQ].concat()));
            assert_eq!(m.to_tag, expected, "{to}");
        }
        assert_eq!(
            reason(&options(
                &[VIA, "To: \"unterminated <sip:b@h>\r\n", FROM, CALL_ID, CSEQ].concat()
            )),
            "Bad To"
        );
        assert_eq!(
            reason(&options(
                &[VIA, "To: <sip:b@h;tag=1\r\n", FROM, CALL_ID, CSEQ].concat()
            )),
            "Bad To"
        );
    }

    #[test]
    fn top_route_alone_then_second_on_next_line() {
        let text = request(
            "Route: <sip:lb.example.com;transport=tcp;lr;lb=2.1.9f3a0c1d2e4b5a69>\r\n\
             Route: <sip:user@[2001:db8::9]:5080;lr>\r\n",
        );
        let m = ok(&text);
        let route = m.top_route.unwrap();
        assert!(route.sole_entry);
        assert_eq!(
            s(&m, route.line),
            "Route: <sip:lb.example.com;transport=tcp;lr;lb=2.1.9f3a0c1d2e4b5a69>\r\n"
        );
        assert_eq!(
            s(&m, route.uri),
            "sip:lb.example.com;transport=tcp;lr;lb=2.1.9f3a0c1d2e4b5a69"
        );
        assert_eq!(
            s(&m, route.entry_with_comma),
            "<sip:lb.example.com;transport=tcp;lr;lb=2.1.9f3a0c1d2e4b5a69>"
        );
        assert_eq!(hp(&m, route.host_port), ("lb.example.com", None));
        assert_eq!(route.lb.map(|l| s(&m, l)), Some("2.1.9f3a0c1d2e4b5a69"));
        assert_eq!(
            m.second_route.map(|h| hp(&m, h)),
            Some(("[2001:db8::9]", Some(5080)))
        );
    }

    #[test]
    fn comma_combined_route() {
        let text = request(
            "Route: \"LB, the\" <sip:10.0.0.1:5060;lr;lb=x>;rrp=\"a,b\" ,\r\n <sips:p2.example.com;lr>, <sip:p3>\r\n\
             Route: <sip:p4>\r\n",
        );
        let m = ok(&text);
        let route = m.top_route.unwrap();
        assert!(!route.sole_entry);
        assert_eq!(
            s(&m, route.entry_with_comma),
            "\"LB, the\" <sip:10.0.0.1:5060;lr;lb=x>;rrp=\"a,b\" ,\r\n "
        );
        assert_eq!(hp(&m, route.host_port), ("10.0.0.1", Some(5060)));
        assert_eq!(route.lb.map(|l| s(&m, l)), Some("x"));
        assert_eq!(
            m.second_route.map(|h| hp(&m, h)),
            Some(("p2.example.com", None))
        );
        let mut cut = text.clone();
        cut.replace_range(route.entry_with_comma.range(), "");
        let rest = ok(&cut);
        assert_eq!(
            rest.top_route.map(|r| hp(&rest, r.host_port)),
            Some(("p2.example.com", None))
        );
        assert_eq!(rest.second_route.map(|h| hp(&rest, h)), Some(("p3", None)));
    }

    #[test]
    fn bare_route_by_laxness() {
        let m = ok(&request(
            "Route: sip:proxy.example.com:5070;lr;lb=abc, <sip:next>\r\n",
        ));
        let route = m.top_route.unwrap();
        assert_eq!(s(&m, route.uri), "sip:proxy.example.com:5070;lr;lb=abc");
        assert_eq!(hp(&m, route.host_port), ("proxy.example.com", Some(5070)));
        assert_eq!(route.lb.map(|l| s(&m, l)), Some("abc"));
        assert_eq!(m.second_route.map(|h| hp(&m, h)), Some(("next", None)));
    }

    #[test]
    fn bad_routes_are_rejected() {
        for route in [
            "Route: <tel:+123>\r\n",
            "Route: <sip:h\r\n",
            "Route: \r\n",
            "Route: <sip:h>,\r\n",
            "Route: <sip:h:99999>\r\n",
            "Route: <sip:h>, <urn:x>\r\n",
        ] {
            assert_eq!(reason(&request(route)), "Bad Route", "{route}");
        }
        assert_eq!(
            reason(&request("Route: <sip:h>\r\nRoute: <http://x>\r\n")),
            "Bad Route"
        );
    }

    #[test]
    fn request_uri_host_forms() {
        let cases = [
            ("sip:h.example.com", Some(("h.example.com", None))),
            (
                "sips:alice:pw@h.example.com:5061;transport=tcp?subject=x",
                Some(("h.example.com", Some(5061))),
            ),
            (
                "SIP:user;par=u%40example.net@example.com",
                Some(("example.com", None)),
            ),
            ("sip:[::1]:5060", Some(("[::1]", Some(5060)))),
            ("tel:+12125551212", None),
            ("nobodyKnowsThisScheme:totallyopaquecontent", None),
            ("sip:h:70000", None),
        ];
        for (uri, expected) in cases {
            let m = ok(&with_headers(
                &format!("OPTIONS {uri} SIP/2.0"),
                &[VIA, TO, FROM, CALL_ID, CSEQ].concat(),
            ));
            assert_eq!(m.request_uri_host.map(|h| hp(&m, h)), expected, "{uri}");
        }
    }

    #[test]
    fn tag_header_by_name() {
        let m = ok(&request("x-lb-tag:  2.1.00ff  \r\nX-LB-Tag: second\r\n"));
        assert_eq!(m.tag_header.map(|t| s(&m, t)), Some("2.1.00ff"));
        let m = SipMessage::parse(Bytes::from(request("X-LB-Tag: t\r\n")), None, 128).unwrap();
        assert_eq!(m.tag_header, None);
    }

    #[test]
    fn liberal_start_lines() {
        let headers = [VIA, TO, FROM, CALL_ID, CSEQ].concat();
        // RFC 4475 §3.1.2.9-10: extra SP between elements or before the CRLF.
        let m = ok(&with_headers("OPTIONS  sip:h  SIP/2.0  ", &headers));
        let StartLine::Request { uri, .. } = m.start else {
            panic!()
        };
        assert_eq!(s(&m, uri), "sip:h");
        ok(&with_headers("OPTIONS sip:h sip/2.0", &headers));
    }

    #[test]
    fn every_parse_error_reason() {
        let six = [VIA, TO, FROM, CALL_ID, CSEQ].concat();
        let line = |start: &str| reason(&with_headers(start, &six));
        assert_eq!(line("OPTIONS sip:h"), "Bad Request Line");
        assert_eq!(line("OPTIONS"), "Bad Request Line");
        assert_eq!(line("OPT\tIONS sip:h SIP/2.0"), "Bad Request Line");
        assert_eq!(line("OPTIONS sip:h; lr SIP/2.0"), "Bad Request Line");
        assert_eq!(line(" OPTIONS sip:h SIP/2.0"), "Bad Request Line");
        assert_eq!(line("OPTIONS sip:h HTTP/1.1"), "Bad Request Line");
        assert_eq!(line("OPTIONS sip:h SIP/7.0"), "Version Not Supported");
        assert_eq!(line("SIP/3.0 200 OK"), "Version Not Supported");
        assert_eq!(line("OPTIONS <sip:h> SIP/2.0"), "Bad Request-URI");
        assert_eq!(line("OPTIONS h.example.com SIP/2.0"), "Bad Request-URI");
        assert_eq!(line("SIP/2.0 4294967301 big"), "Bad Status Line");
        assert_eq!(line("SIP/2.0 099 low"), "Bad Status Line");
        assert_eq!(line("SIP/2.0 700 high"), "Bad Status Line");
        assert_eq!(line("SIP/2.0 2x0 what"), "Bad Status Line");
        assert_eq!(line("SIP/2.0"), "Bad Status Line");
        assert_eq!(reason("OPTIONS sip:h SIP/2.0"), "Bad Request Line");

        let req = |headers: &[&str]| reason(&options(&headers.concat()));
        assert_eq!(
            req(&[VIA, "no colon here\r\n", TO, FROM, CALL_ID, CSEQ]),
            "Malformed Header"
        );
        assert_eq!(
            req(&[" leading: fold\r\n", VIA, TO, FROM, CALL_ID, CSEQ]),
            "Malformed Header"
        );
        assert_eq!(
            req(&[VIA, ": empty name\r\n", TO, FROM, CALL_ID, CSEQ]),
            "Malformed Header"
        );
        assert_eq!(
            req(&[VIA, "Bad Name: x\r\n", TO, FROM, CALL_ID, CSEQ]),
            "Malformed Header"
        );
        assert_eq!(req(&[TO, FROM, CALL_ID, CSEQ]), "Missing Via");
        assert_eq!(req(&[VIA, TO, FROM, CSEQ]), "Missing Call-ID");
        assert_eq!(req(&[VIA, TO, FROM, CALL_ID]), "Missing CSeq");
        assert_eq!(req(&[VIA, TO, CALL_ID, CSEQ]), "Missing From");
        assert_eq!(req(&[VIA, FROM, CALL_ID, CSEQ]), "Missing To");
        assert_eq!(
            req(&[VIA, TO, FROM, CALL_ID, CALL_ID, CSEQ]),
            "Duplicate Call-ID"
        );
        assert_eq!(req(&[VIA, TO, FROM, CALL_ID, CSEQ, CSEQ]), "Duplicate CSeq");
        assert_eq!(req(&[VIA, TO, FROM, FROM, CALL_ID, CSEQ]), "Duplicate From");
        assert_eq!(req(&[VIA, TO, TO, FROM, CALL_ID, CSEQ]), "Duplicate To");
        assert_eq!(req(&[VIA, TO, FROM, "Call-ID:  \r\n", CSEQ]), "Bad Call-ID");
        for cseq in [
            "CSeq: OPTIONS\r\n",
            "CSeq: 1\r\n",
            "CSeq: 1OPTIONS\r\n",
            "CSeq: -1 OPTIONS\r\n",
            "CSeq: 4294967296 OPTIONS\r\n",
            "CSeq: 1 OPTIONS x\r\n",
            "CSeq: 1 <OPTIONS>\r\n",
        ] {
            assert_eq!(req(&[VIA, TO, FROM, CALL_ID, cseq]), "Bad CSeq", "{cseq}");
        }
        assert_eq!(
            ok(&options(
                &[VIA, TO, FROM, CALL_ID, "CSeq: 4294967295 OPTIONS\r\n"].concat()
            ))
            .cseq_number,
            u32::MAX
        );
        assert_eq!(
            req(&[VIA, TO, FROM, CALL_ID, "CSeq: 1 INVITE\r\n"]),
            "CSeq Method Mismatch"
        );
        assert_eq!(
            req(&[VIA, TO, FROM, CALL_ID, "CSeq: 1 options\r\n"]),
            "CSeq Method Mismatch"
        );
        for via in [
            "Via: SIP/2.0/UDP 192.0.2.15;;,;,,\r\n",
            "Via: SIP/2.0/UDP\r\n",
            "Via: SIP/2.0 h\r\n",
            "Via: SIP/2.0/UDPh\r\n",
            "Via: SIP/2.0/UDP h:x\r\n",
            "Via: SIP/2.0/UDP h:65536\r\n",
            "Via: SIP/2.0/UDP h/x\r\n",
            "Via: SIP/2.0/UDP [::1\r\n",
            "Via: SIP/2.0/UDP h;rport=abc\r\n",
            "Via: SIP/2.0/UDP h;branch=\r\n",
            "Via: SIP/2.0/UDP h;branch=\"open\r\n",
            "Via: SIP/2.0/UDP h;branch=1 x\r\n",
            "Via: SIP/2.0/UDP h;branch=1,\r\n",
            "Via: \r\n",
        ] {
            assert_eq!(req(&[via, TO, FROM, CALL_ID, CSEQ]), "Bad Via", "{via}");
        }
        let many: String = (0..130).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            req(&[VIA, TO, FROM, CALL_ID, CSEQ, &many]),
            "Too Many Headers"
        );
        let exactly = options(&[VIA, TO, FROM, CALL_ID, CSEQ].concat());
        assert!(SipMessage::parse(Bytes::from(exactly.clone()), None, 5).is_ok());
        let too_many = SipMessage::parse(Bytes::from(exactly), None, 4).unwrap_err();
        assert_eq!(too_many.reason, "Too Many Headers");
        assert_eq!(
            reason("OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nTo: x"),
            "Incomplete Header Block"
        );
        assert_eq!(
            reason("OPTIONS sip:h SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n"),
            "Incomplete Header Block"
        );
    }

    #[test]
    fn header_lines_yields_whole_lines() {
        let text = "SIP/2.0 400 Bad\r\n\
                    v: SIP/2.0/UDP h\r\n ;branch=z9hG4bK1\r\n\
                    Via: SIP/2.0/UDP g\r\n\
                    f: a\r\nTO : b\r\ni: c\r\nCSEQ: 1 X\r\nRoute: <sip:r>\r\nno colon\r\nl: 0\r\n\r\n\
                    Via: in the body\r\n";
        let lines: Vec<(HeaderName, &str)> = header_lines(text.as_bytes())
            .map(|(name, span)| (name, &text[span.range()]))
            .collect();
        assert_eq!(
            lines,
            [
                (HeaderName::Via, "v: SIP/2.0/UDP h\r\n ;branch=z9hG4bK1\r\n"),
                (HeaderName::Via, "Via: SIP/2.0/UDP g\r\n"),
                (HeaderName::From, "f: a\r\n"),
                (HeaderName::To, "TO : b\r\n"),
                (HeaderName::CallId, "i: c\r\n"),
                (HeaderName::CSeq, "CSEQ: 1 X\r\n"),
                (HeaderName::Other, "Route: <sip:r>\r\n"),
                (HeaderName::Other, "no colon\r\n"),
                (HeaderName::Other, "l: 0\r\n"),
            ]
        );
        // Stops at an unterminated line; nothing at all without a start line.
        assert_eq!(header_lines(b"A\r\nVia: x\r\nTo: y").count(), 1);
        assert_eq!(header_lines(b"no start line").count(), 0);
    }

    #[test]
    fn spans_fit_the_parsed_message() {
        let text = request("Route: <sip:lb;lr;lb=1>\r\nX-LB-Tag: t\r\n");
        let m = ok(&text);
        let len = m.bytes.len() as u32;
        let via = m.top_via;
        let route = m.top_route.unwrap();
        for span in [
            via.line,
            via.value,
            via.transport,
            via.sent_by.host,
            route.line,
            route.uri,
            m.call_id,
        ] {
            assert!(span.start <= span.end && span.end <= len && !span.is_empty());
            assert_eq!(span.len(), (span.end - span.start) as usize);
        }
        assert!(via.line.start >= m.start_line_end && via.line.end <= m.header_end);
    }
}
