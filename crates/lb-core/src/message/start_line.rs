//! The start line (RFC 3261 §7.1, §7.2): a request line or a status line.

use super::parts::*;
use crate::lexer::*;

/// The start line and the offset after its CRLF.
///
/// Runs of SP between the elements and SP before the CRLF are accepted (RFC 4475 §3.1.2.9 and
/// §3.1.2.10 allow a liberal element to; the bytes are forwarded unchanged, as they require).
pub(super) fn parse_start_line(b: &[u8]) -> Result<(StartLine, usize), ParseError> {
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
pub(super) fn parse_status_line(line: &[u8]) -> Result<StartLine, ParseError> {
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

pub(super) fn check_version(version: &[u8], otherwise: ParseError) -> Result<(), ParseError> {
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
pub(super) fn check_request_uri(uri: &[u8]) -> Result<(), ParseError> {
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
