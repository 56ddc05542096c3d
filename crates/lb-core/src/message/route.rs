//! The Route grammar (RFC 3261 §20.34, §20.30): route entries, the balancer's own entry, and
//! the last entry of a head.

use super::header_name::Known;
use super::parts::*;
use super::uri::*;
use crate::lexer::*;

/// One route-param of a Route value: where it starts and ends, and where the next begins.
pub(super) struct RouteEntry {
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) next: Option<usize>,
    pub(super) uri: Span,
    pub(super) host_port: HostPort,
    pub(super) lb: Option<Span>,
}

/// The first entry of a Route value starting at `vs` (RFC 3261 §20.34): `[display-name] <uri>
/// *(;rr-param)`, or by laxness a bare URI. Its URI must be a `sip:`/`sips:` URI: the balancer
/// forwards to it.
pub(super) fn route_entry(b: &[u8], vs: usize, ve: usize) -> Result<RouteEntry, ParseError> {
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
pub(super) fn own_entry(b: &[u8], vs: usize, ve: usize) -> Option<Span> {
    let mut at = vs;
    loop {
        let entry = route_entry(b, at, ve).ok()?;
        if entry.lb.is_some() {
            return Some(entry.uri);
        }
        at = entry.next?;
    }
}
