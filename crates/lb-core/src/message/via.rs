//! The Via grammar (RFC 3261 §20.42, RFC 3581 `rport`): the top via-parm the walk reads and the
//! second one, found on the cold path.

use super::header_name::Known;
use super::parts::*;
use super::uri::*;
use crate::lexer::*;

/// The first via-parm of a Via value (RFC 3261 §20.42). Whitespace is accepted wherever the
/// grammar's SWS/LWS allow it (RFC 4475 §3.1.1.1), including around `/`.
pub(super) fn parse_via(b: &[u8], line: Span, vs: usize, ve: usize) -> Result<Via, ParseError> {
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
pub(super) fn expect_slash(
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
pub(super) fn param_value_end(b: &[u8], start: usize, ve: usize) -> Option<usize> {
    if start < ve && b[start] == b'"' {
        return quoted_end(b, start, ve);
    }
    let i = run_end(b, start, ve, |c| {
        !matches!(c, b';' | b',' | b'"' | b'<' | b'>' | b'?') && !is_lws(c)
    });
    (i > start).then_some(i)
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
