//! Sanity checks at the edge: what an initial request from a frontend (no To tag) must carry
//! before the balancer gives it a table entry and a backend (docs/design.md, "Sanity at the
//! edge").
//!
//! The parser already refuses every message without Via, Call-ID, CSeq, From or To, and a CSeq
//! method other than the request's (RFC 3261 §8.1.1). What it lets through, because a backend's
//! message or an in-dialog request may legitimately lack it or because routing does not need
//! it, is checked here for initial requests only:
//! - a From tag, non-empty (RFC 3261 §8.1.1.3: the UAC MUST add one; `tag = token`);
//! - hosts no longer than a DNS name can be (RFC 1035 §2.3.4: 255 octets): the top Via's
//!   sent-by (which the balancer keeps as a name of the connection), the Request-URI, From, To
//!   and the top Route;
//! - URIs and header field values within sane lengths (the defaults and their reasons are in
//!   [`SanityLimits`]).
//!
//! No second walk over the head: the walk of [`Head`](super::Head) records the longest field
//! value and where From and To are; only those two values are read again, and only here.

use super::head::{tag_param, tag_value};
use super::uri::sip_uri;
use super::{HostPort, SipMessage, Span, StartLine};
use crate::config::SanityLimits;
use crate::lexer::{quoted_end, skip_lws};
use crate::reasons::MalformedFault;

/// The reason phrase of the 400 for the first check `message` fails, if any.
pub(crate) fn check(message: &SipMessage, limits: &SanityLimits) -> Result<(), MalformedFault> {
    let b = &message.bytes[..];
    let (vs, ve) = (message.from.start as usize, message.from.end as usize);
    match tag_param(b, vs, ve) {
        None => return Err(MalformedFault::BadFrom),
        Some(None) => return Err(MalformedFault::MissingFromTag),
        Some(Some(name_end)) if tag_value(b, name_end, ve).is_empty() => {
            return Err(MalformedFault::EmptyFromTag)
        }
        Some(Some(_)) => {}
    }
    let from = AddrUri::of(b, message.from, limits.host_bytes_max);
    let to = AddrUri::of(b, message.to, limits.host_bytes_max);
    let route = message.top_route.map(|r| (r.uri, r.host_port));
    let request_uri = match message.start {
        StartLine::Request { uri, .. } => Some(uri),
        StartLine::Response { .. } => None,
    };

    let hosts = [
        Some(message.top_via.sent_by),
        message.request_uri_host,
        from.host,
        to.host,
        route.map(|(_, hp)| hp),
    ];
    if hosts
        .iter()
        .flatten()
        .any(|hp| hp.host.len() > limits.host_bytes_max)
    {
        return Err(MalformedFault::HostTooLong);
    }
    let uris = [request_uri, from.uri, to.uri, route.map(|(uri, _)| uri)];
    if uris
        .iter()
        .flatten()
        .any(|uri| uri.len() > limits.uri_bytes_max)
    {
        return Err(MalformedFault::UriTooLong);
    }
    if message.longest_field as usize > limits.field_bytes_max {
        return Err(MalformedFault::HeaderTooLong);
    }
    Ok(())
}

/// The URI of a From or To value and, when the URI is longer than a host may be, its host (if
/// it is a SIP URI): a shorter URI cannot hold a host that is too long, so the common case
/// parses no host at all.
struct AddrUri {
    uri: Option<Span>,
    host: Option<HostPort>,
}

impl AddrUri {
    /// `name-addr` (`[display-name] <URI>`) or `addr-spec` (RFC 3261 §20.10): the URI between
    /// `<` and `>`, else up to the first `;` (a header parameter: an addr-spec URI with a `;`
    /// must be written as a name-addr) or whitespace. What cannot be read is not checked: the
    /// parser has already accepted the value, and the backend judges the rest.
    fn of(b: &[u8], value: Span, host_bytes_max: usize) -> AddrUri {
        let (vs, ve) = (value.start as usize, value.end as usize);
        let uri = match angle_uri(b, vs, ve) {
            Some(uri) => Some(uri),
            None => {
                let s = skip_lws(b, vs, ve);
                let e = s + b[s..ve]
                    .iter()
                    .position(|&c| matches!(c, b';' | b' ' | b'\t' | b'\r' | b'\n'))
                    .unwrap_or(ve - s);
                (e > s).then(|| Span::new(s, e))
            }
        };
        let host = uri
            .filter(|u| u.len() > host_bytes_max)
            .and_then(|u| sip_uri(b, u.start as usize, u.end as usize).ok());
        AddrUri {
            uri,
            host: host.map(|(hp, _)| hp),
        }
    }
}

/// The URI between the first `<` outside a quoted display name and the `>` after it.
fn angle_uri(b: &[u8], vs: usize, ve: usize) -> Option<Span> {
    let mut i = vs;
    loop {
        let at = memchr::memchr2(b'"', b'<', &b[i..ve])?;
        i += at;
        if b[i] == b'"' {
            i = quoted_end(b, i, ve)?;
            continue;
        }
        let close = memchr::memchr(b'>', &b[i + 1..ve])?;
        return Some(Span::new(i + 1, i + 1 + close));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;

    use super::*;

    fn request(from: &str, to: &str, extra: &str) -> SipMessage {
        let text = format!(
            "INVITE sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bK1\r\n\
             From: {from}\r\n\
             To: {to}\r\n\
             Call-ID: c1\r\n\
             CSeq: 1 INVITE\r\n\
             {extra}\
             Content-Length: 0\r\n\r\n"
        );
        SipMessage::parse(Bytes::from(text), None, 128).unwrap()
    }

    fn verdict(from: &str, to: &str, extra: &str) -> Result<(), MalformedFault> {
        check(&request(from, to, extra), &SanityLimits::default())
    }

    #[test]
    fn from_tag_forms() {
        let to = "<sip:bob@example.com>";
        assert_eq!(verdict("<sip:a@example.com>;tag=x", to, ""), Ok(()));
        assert_eq!(verdict("sip:a@example.com ; TAG = x", to, ""), Ok(()));
        assert_eq!(
            verdict("\"a;tag=x\" <sip:a@example.com;tag=y>", to, ""),
            Err(MalformedFault::MissingFromTag),
            "neither the display name nor the URI holds header parameters"
        );
        assert_eq!(
            verdict("<sip:a@example.com>", to, ""),
            Err(MalformedFault::MissingFromTag)
        );
        assert_eq!(
            verdict("<sip:a@example.com>;tag=", to, ""),
            Err(MalformedFault::EmptyFromTag)
        );
        assert_eq!(
            verdict("<sip:a@example.com>;tag", to, ""),
            Err(MalformedFault::EmptyFromTag)
        );
        assert_eq!(
            verdict("\"open <sip:a@example.com>", to, ""),
            Err(MalformedFault::BadFrom)
        );
    }

    #[test]
    fn hosts_uris_and_fields_at_and_over_their_limits() {
        let ok_from = "<sip:a@example.com>;tag=1";
        let host = |n: usize| "h".repeat(n);
        let at = format!("<sip:bob@{}>", host(255));
        let over = format!("<sip:bob@{}>", host(256));
        assert_eq!(verdict(ok_from, &at, ""), Ok(()));
        assert_eq!(
            verdict(ok_from, &over, ""),
            Err(MalformedFault::HostTooLong)
        );
        assert_eq!(
            verdict(&format!("sip:a@{};tag=1", host(256)), "<sip:b@x>", ""),
            Err(MalformedFault::HostTooLong),
            "a bare addr-spec's host"
        );
        let long_user = format!("<sip:{}@example.com>", "u".repeat(1100));
        assert_eq!(
            verdict(ok_from, &long_user, ""),
            Err(MalformedFault::UriTooLong)
        );
        let field = format!("Subject: {}\r\n", "s".repeat(2047));
        assert_eq!(verdict(ok_from, "<sip:b@x>", &field), Ok(()));
        let field = format!("Subject:  {}\r\n", "s".repeat(2047));
        assert_eq!(
            verdict(ok_from, "<sip:b@x>", &field),
            Err(MalformedFault::HeaderTooLong)
        );
        // Non-SIP URIs have no host to measure; their length still counts.
        assert_eq!(verdict(ok_from, "<tel:+15551234>", ""), Ok(()));
    }
}
