//! Header names: [`Known`], the headers the parser and the framer look at (long and compact
//! forms), and [`HeaderName`], the few the rest of the balancer reads lines of.

use super::parts::Span;
use crate::lexer::*;

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

    pub(super) fn public(self) -> HeaderName {
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
