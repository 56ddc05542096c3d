//! Just enough SIP for the simulated peers: frame a stream by Content-Length, read the start
//! line, Call-ID, CSeq and To tag, and find header lines to copy into answers.
//!
//! This is test infrastructure, deliberately independent of lb-core's parser: if the two
//! disagreed about a message, the invariants would show it. It only has to understand what the
//! simulated peers and the balancer write (full header names, one value per Via line).

use std::ops::Range;
use std::sync::LazyLock;

use bytes::BytesMut;

/// The SIP methods the simulated peers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// INVITE (initial or re-INVITE).
    Invite,
    /// ACK.
    Ack,
    /// BYE.
    Bye,
    /// CANCEL.
    Cancel,
    /// Anything else.
    Other,
}

impl Method {
    /// The method's name as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Other => "OTHER",
        }
    }

    /// A small number for traces and digests.
    pub fn code(self) -> u16 {
        match self {
            Method::Invite => 1,
            Method::Ack => 2,
            Method::Bye => 3,
            Method::Cancel => 4,
            Method::Other => 5,
        }
    }

    fn parse(s: &[u8]) -> Method {
        match s {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            _ => Method::Other,
        }
    }
}

/// Request or response, from the start line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request with its method.
    Request(Method),
    /// A response with its status code.
    Response(u16),
}

impl std::fmt::Display for Kind {
    /// The method, or the status code.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Request(m) => f.write_str(m.as_str()),
            Kind::Response(s) => write!(f, "{s}"),
        }
    }
}

/// The few facts the simulator reads from every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Start line.
    pub kind: Kind,
    /// The simulator's call number, from a Call-ID of the form `N@sim`; `None` for foreign ones.
    pub call: Option<u64>,
    /// CSeq sequence number.
    pub cseq: u32,
    /// CSeq method.
    pub cseq_method: Method,
    /// The To header has a tag (in-dialog request, or a response past 100).
    pub has_to_tag: bool,
    /// Whole message length in bytes.
    pub len: usize,
}

impl Summary {
    /// A trace code: the method code for requests, the status for responses.
    pub fn code(&self) -> u16 {
        match self.kind {
            Kind::Request(m) => m.code(),
            Kind::Response(s) => s,
        }
    }
}

/// Length of the first complete message at the start of `buf`, or `None` if it is incomplete or
/// unframeable (no Content-Length).
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let head_end = CRLFCRLF.find(buf)? + 4;
    let head = &buf[..head_end];
    let cl = header_value(head, b"Content-Length")
        .or_else(|| header_value(head, b"l"))
        .and_then(parse_u64)?;
    let total = head_end.checked_add(usize::try_from(cl).ok()?)?;
    (total <= buf.len()).then_some(total)
}

/// Reads the summary of one framed message.
pub fn summarize(msg: &[u8]) -> Option<Summary> {
    let line_end = find_crlf(msg)?;
    let line = &msg[..line_end];
    let kind = if let Some(rest) = line.strip_prefix(b"SIP/2.0 ") {
        Kind::Response(parse_u64(rest.get(..3)?).and_then(|s| u16::try_from(s).ok())?)
    } else {
        let sp = memchr::memchr(b' ', line)?;
        Kind::Request(Method::parse(&line[..sp]))
    };
    // One pass over the header lines: this runs for every message of a million-call storm.
    let (mut call, mut cseq_v, mut has_to_tag) = (None, None, false);
    for h in headers(msg) {
        let n = h.name;
        if n.eq_ignore_ascii_case(b"Call-ID") || n == b"i" {
            call = call_number(h.value);
        } else if n.eq_ignore_ascii_case(b"CSeq") {
            cseq_v = Some(h.value);
        } else if n.eq_ignore_ascii_case(b"To") || n == b"t" {
            has_to_tag = param(h.value, b"tag").is_some();
        }
    }
    let cseq_v = cseq_v?;
    let sp = memchr::memchr(b' ', cseq_v)?;
    let cseq = parse_u64(&cseq_v[..sp]).and_then(|n| u32::try_from(n).ok())?;
    let cseq_method = Method::parse(trim(&cseq_v[sp + 1..]));
    Some(Summary {
        kind,
        call,
        cseq,
        cseq_method,
        has_to_tag,
        len: msg.len(),
    })
}

/// [`frame_len`] and [`summarize`] of the first message in `buf` in one walk over its head
/// (the simulator reads every message a balancer sends this way).
pub fn frame_and_summarize(buf: &[u8]) -> Option<(usize, Summary)> {
    let line_end = find_crlf(buf)?;
    let line = &buf[..line_end];
    let kind = if let Some(rest) = line.strip_prefix(b"SIP/2.0 ") {
        parse_u64(rest.get(..3)?)
            .and_then(|s| u16::try_from(s).ok())
            .map(Kind::Response)
    } else {
        memchr::memchr(b' ', line).map(|sp| Kind::Request(Method::parse(&line[..sp])))
    };
    let (mut call, mut cseq_v, mut has_to_tag, mut cl, mut compact_cl) =
        (None, None, false, None, None);
    let mut it = headers(buf);
    for h in it.by_ref() {
        let n = h.name;
        if n.eq_ignore_ascii_case(b"Call-ID") || n == b"i" {
            call = call_number(h.value);
        } else if n.eq_ignore_ascii_case(b"CSeq") {
            cseq_v = Some(h.value);
        } else if n.eq_ignore_ascii_case(b"To") || n == b"t" {
            has_to_tag = param(h.value, b"tag").is_some();
        } else if cl.is_none() && n.eq_ignore_ascii_case(b"Content-Length") {
            cl = Some(h.value);
        } else if compact_cl.is_none() && n.eq_ignore_ascii_case(b"l") {
            compact_cl = Some(h.value);
        }
    }
    if !buf[it.pos..].starts_with(b"\r\n") {
        // The walk stopped before the blank line (a line without a colon): take the two
        // separate readers, whose rules for that case are the reference.
        let n = frame_len(buf)?;
        return Some((n, summarize(&buf[..n])?));
    }
    let head_end = it.pos + 2;
    let len = parse_u64(cl.or(compact_cl)?)?;
    let total = head_end.checked_add(usize::try_from(len).ok()?)?;
    if total > buf.len() {
        return None;
    }
    let cseq_v = cseq_v?;
    let sp = memchr::memchr(b' ', cseq_v)?;
    let cseq = parse_u64(&cseq_v[..sp]).and_then(|n| u32::try_from(n).ok())?;
    Some((
        total,
        Summary {
            kind: kind?,
            call,
            cseq,
            cseq_method: Method::parse(trim(&cseq_v[sp + 1..])),
            has_to_tag,
            len: total,
        },
    ))
}

/// The call number inside a Call-ID `N@sim`.
pub fn call_number(call_id: &[u8]) -> Option<u64> {
    let at = memchr::memchr(b'@', call_id)?;
    parse_u64(&call_id[..at])
}

/// Header lines (name, value, whole line including CRLF) of a message head, in order.
pub fn headers(msg: &[u8]) -> Headers<'_> {
    let start = find_crlf(msg).map_or(msg.len(), |i| i + 2);
    Headers { msg, pos: start }
}

/// Iterator of [`headers`].
#[derive(Debug)]
pub struct Headers<'a> {
    msg: &'a [u8],
    pos: usize,
}

/// One header line.
#[derive(Clone, Copy, Debug)]
pub struct Header<'a> {
    /// The name as written.
    pub name: &'a [u8],
    /// The value, trimmed.
    pub value: &'a [u8],
    /// The whole line with its CRLF.
    pub line: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = Header<'a>;

    fn next(&mut self) -> Option<Header<'a>> {
        let rest = self.msg.get(self.pos..)?;
        let end = find_crlf(rest)?;
        if end == 0 {
            return None;
        }
        let line = &rest[..end + 2];
        self.pos += end + 2;
        let colon = memchr::memchr(b':', line)?;
        Some(Header {
            name: trim(&line[..colon]),
            value: trim(&line[colon + 1..end]),
            line,
        })
    }
}

/// The value of the first header called `name` (ASCII case-insensitive).
pub fn header_value<'a>(msg: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    headers(msg)
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// The URIs (between `<` and `>`) of every Record-Route entry, in order.
pub fn record_routes(msg: &[u8]) -> impl Iterator<Item = &[u8]> {
    headers(msg)
        .filter(|h| h.name.eq_ignore_ascii_case(b"Record-Route"))
        .flat_map(|h| h.value.split(|&c| c == b','))
        .filter_map(angle)
}

/// The text between the first `<` and the following `>`.
pub fn angle(v: &[u8]) -> Option<&[u8]> {
    let a = memchr::memchr(b'<', v)?;
    let b = memchr::memchr(b'>', &v[a..])?;
    Some(&v[a + 1..a + b])
}

/// The value of parameter `name` (e.g. `tag`) in a header value: after `;name=` up to `;`, `>`,
/// `,` or the end.
pub fn param<'a>(v: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut i = 0;
    while let Some(off) = memchr::memchr(b';', &v[i..]) {
        let s = i + off + 1;
        let rest = &v[s..];
        if rest.len() > name.len()
            && rest[..name.len()].eq_ignore_ascii_case(name)
            && rest[name.len()] == b'='
        {
            let val = &rest[name.len() + 1..];
            let end = val
                .iter()
                .position(|c| matches!(c, b';' | b'>' | b',' | b' '))
                .unwrap_or(val.len());
            return Some(&val[..end]);
        }
        i = s;
    }
    None
}

/// Range of `part` inside `whole` when `part` is a subslice of it.
pub fn offset_of(whole: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    (start + part.len() <= whole.len()).then_some(start..start + part.len())
}

/// Appends a decimal number without going through `fmt`.
pub fn put_u64(out: &mut BytesMut, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// Decimal digits to a number; `None` if empty, not digits, or too large.
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    let s = trim(s);
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(c - b'0');
    }
    Some(n)
}

/// Offset of the first CRLF.
pub fn find_crlf(b: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(o) = memchr::memchr(b'\r', &b[i..]) {
        let p = i + o;
        if b.get(p + 1) == Some(&b'\n') {
            return Some(p);
        }
        i = p + 1;
    }
    None
}

/// Built once: building a searcher per call would dominate the simulator's profile.
static CRLFCRLF: LazyLock<memchr::memmem::Finder<'static>> =
    LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

/// Strips ASCII spaces and tabs at both ends.
pub fn trim(s: &[u8]) -> &[u8] {
    let a = s
        .iter()
        .position(|c| !matches!(c, b' ' | b'\t'))
        .unwrap_or(s.len());
    let b = s
        .iter()
        .rposition(|c| !matches!(c, b' ' | b'\t'))
        .map_or(a, |i| i + 1);
    &s[a..b]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bKp1.1;rport\r\nRecord-Route: <sip:lb:5060;transport=tcp;lr;lb=0.1.abc>, <sip:p;lr>\r\nCall-ID: 17@sim\r\nCSeq: 1 INVITE\r\nTo: <sip:b@x>\r\nContent-Length: 3\r\n\r\nabcREST";

    #[test]
    fn frames_and_summarizes() {
        let n = frame_len(INVITE).unwrap();
        assert_eq!(&INVITE[n..], b"REST");
        let s = summarize(&INVITE[..n]).unwrap();
        assert_eq!(s.kind, Kind::Request(Method::Invite));
        assert_eq!(s.call, Some(17));
        assert_eq!((s.cseq, s.cseq_method), (1, Method::Invite));
        assert!(!s.has_to_tag);
        assert_eq!(frame_len(&INVITE[..n - 1]), None);
    }

    #[test]
    fn reads_record_routes_and_params() {
        let rr: Vec<&[u8]> = record_routes(INVITE).collect();
        assert_eq!(
            rr,
            vec![
                &b"sip:lb:5060;transport=tcp;lr;lb=0.1.abc"[..],
                &b"sip:p;lr"[..]
            ]
        );
        assert_eq!(param(rr[0], b"lb"), Some(&b"0.1.abc"[..]));
        assert_eq!(
            param(header_value(INVITE, b"Via").unwrap(), b"branch"),
            Some(&b"z9hG4bKp1.1"[..])
        );
        let mut b = BytesMut::new();
        put_u64(&mut b, 0);
        put_u64(&mut b, 1234567);
        assert_eq!(&b[..], b"01234567");
    }
}
