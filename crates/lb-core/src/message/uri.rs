//! The SIP URI grammar the balancer needs (RFC 3261 §19.1.1): host, port and the `lb`
//! parameter of `sip:`/`sips:` URIs.

use super::parts::*;
use crate::lexer::*;

/// host:port and the `lb` parameter of a `sip:`/`sips:` URI in `b[s..e]` (RFC 3261 §19.1.1).
/// The userinfo (up to `@`, which cannot occur unescaped elsewhere) is skipped.
pub(super) fn sip_uri(b: &[u8], s: usize, e: usize) -> Result<(HostPort, Option<Span>), ()> {
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
pub(super) fn host_end(b: &[u8], s: usize, e: usize) -> Option<usize> {
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
