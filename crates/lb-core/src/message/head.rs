//! The head walk: one pass over the start line and the fields to the empty line, shared by the
//! parser and the framer (which learns the head's end and its Content-Length from it), and the
//! field values the walk reads itself (CSeq, the To tag).

use std::ops::Range;

use super::header_name::Known;
use super::parts::*;
use super::route::*;
use super::start_line::*;
use super::uri::*;
use super::via::*;
use crate::lexer::*;
use crate::reasons::MalformedFault;

/// What the framer learnt about a head while framing it: the analysis [`SipMessage::parse`]
/// would give, when the framer could run it, so the head is walked once, not twice.
#[derive(Debug)]
pub(crate) struct Analysis(pub(super) Option<Result<Head, ParseError>>);

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
pub(super) struct Walked {
    /// Offset of the empty line's CRLF.
    pub(super) header_end: usize,
    pub(super) body: Result<usize, FramingError>,
}

/// Everything [`SipMessage`] holds except the bytes, so the parser can borrow them.
#[derive(Debug)]
pub(crate) struct Head {
    pub(super) start: StartLine,
    pub(super) start_line_end: u32,
    pub(super) header_end: u32,
    pub(super) call_id: Span,
    pub(super) cseq_number: u32,
    pub(super) cseq_method: Method,
    pub(super) to_tag: bool,
    pub(super) top_via: Via,
    pub(super) top_route: Option<Route>,
    pub(super) second_route: Option<HostPort>,
    pub(super) request_uri_host: Option<HostPort>,
    pub(super) tag_header: Option<Span>,
    pub(super) max_forwards: Option<(Span, u32)>,
    pub(super) own_record_route: Option<Span>,
    pub(super) request_uri_lb: Option<Span>,
    pub(super) from: Span,
    pub(super) to: Span,
    pub(super) longest_field: u32,
}

impl Head {
    pub(super) fn parse(
        b: &[u8],
        tag_header: Option<&[u8]>,
        headers_max: usize,
    ) -> Result<Head, ParseError> {
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
    pub(super) fn walk(
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
                        return Err(fail(MalformedFault::DuplicateCallId));
                    }
                    let (s, e) = trim_lws(b, vs, ve);
                    if s == e {
                        return Err(BAD_CALL_ID);
                    }
                    call_id = Some(Span::new(s, e));
                }
                Known::CSeq => {
                    if cseq.is_some() {
                        return Err(fail(MalformedFault::DuplicateCseq));
                    }
                    cseq = Some(parse_cseq(b, vs, ve)?);
                }
                Known::From => {
                    if from.is_some() {
                        return Err(fail(MalformedFault::DuplicateFrom));
                    }
                    from = Some(Span::new(vs, ve));
                }
                Known::To => {
                    if to.is_some() {
                        return Err(fail(MalformedFault::DuplicateTo));
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
                // A later Via, Route, Record-Route or Max-Forwards than the one the walk
                // reads, or a header it does not read at all.
                Known::Via
                | Known::Route
                | Known::RecordRoute
                | Known::MaxForwards
                | Known::Other => {}
            }
            pos = field.line_end;
        };

        *head = Some('checks: {
            let Some(top_via) = via else {
                break 'checks Err(fail(MalformedFault::MissingVia));
            };
            let Some(call_id) = call_id else {
                break 'checks Err(fail(MalformedFault::MissingCallId));
            };
            let Some((cseq_number, cseq_method, cseq_method_range)) = cseq else {
                break 'checks Err(fail(MalformedFault::MissingCseq));
            };
            let Some(from) = from else {
                break 'checks Err(fail(MalformedFault::MissingFrom));
            };
            let Some((to, to_tag)) = to else {
                break 'checks Err(fail(MalformedFault::MissingTo));
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

/// `CSeq: 1*DIGIT LWS Method`: the number, the method, and where the method is written.
pub(super) fn parse_cseq(
    b: &[u8],
    vs: usize,
    ve: usize,
) -> Result<(u32, Method, Range<usize>), ParseError> {
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
pub(super) fn tag_param(b: &[u8], vs: usize, ve: usize) -> Option<Option<usize>> {
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
pub(super) fn tag_value(b: &[u8], name_end: usize, ve: usize) -> Span {
    let eq = skip_lws(b, name_end, ve);
    if eq >= ve || b[eq] != b'=' {
        return Span::new(name_end, name_end);
    }
    let start = skip_lws(b, eq + 1, ve);
    let end = param_value_end(b, start, ve).unwrap_or(start);
    Span::new(start, end)
}
