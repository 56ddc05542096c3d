//! A small SIP reader and writer for test peers: the example backend and the load generator.
//!
//! It reads a whole message into a list of header lines (owned nothing, borrowed everything) and
//! answers the few questions a simple UAS or UAC asks: method or status, a header by its long
//! or compact name (RFC 3261 §7.3.3), the `tag` parameter, the entries of a list header. It is
//! deliberately not the balancer's zero-copy scanner: peers that test the balancer should not
//! share its parser, or a parsing bug would hide on both sides.

use memchr::memmem;

/// The first line of a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartLine<'a> {
    /// `METHOD Request-URI SIP/2.0`.
    Request {
        /// The method, e.g. `INVITE`.
        method: &'a str,
        /// The Request-URI.
        uri: &'a str,
    },
    /// `SIP/2.0 CODE Reason`.
    Response {
        /// The status code.
        code: u16,
        /// The reason phrase.
        reason: &'a str,
    },
}

/// A parsed view of one SIP message.
#[derive(Clone, Debug)]
pub struct Message<'a> {
    /// The start line.
    pub start: StartLine<'a>,
    /// Header lines as (name, value), in order, values trimmed; folded lines joined into the
    /// value they continue are not supported (test peers never send them).
    pub headers: Vec<(&'a str, &'a str)>,
    /// The body (as framed by the caller).
    pub body: &'a [u8],
}

/// Why bytes are not a SIP message this module can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No empty line ends the header block.
    #[error("no end of headers")]
    Incomplete,
    /// The header block is not UTF-8.
    #[error("headers are not UTF-8")]
    NotUtf8,
    /// The start line is neither a request line nor a status line.
    #[error("bad start line")]
    BadStartLine,
    /// A header line without a colon.
    #[error("header line without a colon")]
    BadHeader,
    /// Content-Length missing on a stream, or not a number.
    #[error("missing or bad Content-Length")]
    BadContentLength,
}

impl<'a> Message<'a> {
    /// Parses one whole message (header block and body, nothing after it).
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let end = memmem::find(bytes, b"\r\n\r\n").ok_or(ParseError::Incomplete)?;
        let head = std::str::from_utf8(&bytes[..end]).map_err(|_| ParseError::NotUtf8)?;
        let body = &bytes[end + 4..];
        let mut lines = head.split("\r\n");
        let first = lines.next().ok_or(ParseError::BadStartLine)?;
        let start = parse_start_line(first)?;
        let mut headers = Vec::with_capacity(16);
        for line in lines {
            let (name, value) = line.split_once(':').ok_or(ParseError::BadHeader)?;
            headers.push((name.trim(), value.trim()));
        }
        Ok(Message {
            start,
            headers,
            body,
        })
    }

    /// The method of a request, `None` for a response.
    pub fn method(&self) -> Option<&'a str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code of a response, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Request { .. } => None,
            StartLine::Response { code, .. } => Some(code),
        }
    }

    /// The first value of a header, by its long or compact name, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.header_all(name).next()
    }

    /// Every value of a header in order, by its long or compact name, case-insensitively (each
    /// line once; split comma lists with [`list_entries`]).
    pub fn header_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        let compact = compact_form(name);
        self.headers.iter().filter_map(move |(n, v)| {
            let hit = n.eq_ignore_ascii_case(name)
                || compact.is_some_and(|c| n.len() == 1 && n.eq_ignore_ascii_case(c));
            hit.then_some(*v)
        })
    }

    /// The CSeq header as (number, method).
    pub fn cseq(&self) -> Option<(u32, &'a str)> {
        let value = self.header("CSeq")?;
        let (number, method) = value.split_once(char::is_whitespace)?;
        Some((number.parse().ok()?, method.trim()))
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&'a str> {
        self.header("Call-ID")
    }
}

/// The length of the first whole message at the start of a stream buffer: `Ok(None)` when more
/// bytes are needed. Content-Length is required on a stream (RFC 3261 §18.3).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let Some(end) = memmem::find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &buf[..end];
    let mut length = None;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = trim(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = std::str::from_utf8(trim(&line[colon + 1..]))
                .map_err(|_| ParseError::BadContentLength)?;
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| ParseError::BadContentLength)?,
            );
        }
    }
    let length = length.ok_or(ParseError::BadContentLength)?;
    let total = end + 4 + length;
    Ok((buf.len() >= total).then_some(total))
}

/// A parameter of a header value (`;name=value`), e.g. `tag` of To / From or `branch` of Via.
/// Matches the name case-insensitively; a parameter without a value gives `""`.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    // Parameters of the header, not of a URI inside angle brackets.
    let params = match value.rfind('>') {
        Some(close) => &value[close + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|p| {
        let (n, v) = p.split_once('=').unwrap_or((p, ""));
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The entries of a comma-separated list header (Record-Route, Route, Via), commas inside
/// `<...>` or quotes not splitting.
pub fn list_entries(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(value);
    std::iter::from_fn(move || {
        let s = rest?;
        let mut depth_angle = false;
        let mut quoted = false;
        for (i, c) in s.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '<' if !quoted => depth_angle = true,
                '>' if !quoted => depth_angle = false,
                ',' if !quoted && !depth_angle => {
                    rest = Some(&s[i + 1..]);
                    return Some(s[..i].trim());
                }
                _ => {}
            }
        }
        rest = None;
        Some(s.trim())
    })
    .filter(|e| !e.is_empty())
}

/// The URI inside a name-addr (`"Bob" <sip:bob@host>;tag=1` → `sip:bob@host`), or the addr-spec
/// itself up to its parameters.
pub fn uri_of(value: &str) -> &str {
    if let (Some(open), Some(close)) = (value.find('<'), value.rfind('>')) {
        if open < close {
            return &value[open + 1..close];
        }
    }
    value.split(';').next().unwrap_or(value).trim()
}

/// Appends `Name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The long name of a header given in compact form (RFC 3261 §7.3.3 and later RFCs), or the
/// name itself.
pub fn long_form(name: &str) -> &str {
    COMPACT
        .iter()
        .find(|(c, _)| name.len() == 1 && name.eq_ignore_ascii_case(c))
        .map_or(name, |(_, long)| long)
}

fn compact_form(long: &str) -> Option<&'static str> {
    COMPACT
        .iter()
        .find(|(_, l)| l.eq_ignore_ascii_case(long))
        .map(|(c, _)| *c)
}

fn parse_start_line(line: &str) -> Result<StartLine<'_>, ParseError> {
    let mut parts = line.splitn(3, ' ');
    let first = parts.next().ok_or(ParseError::BadStartLine)?;
    let second = parts.next().ok_or(ParseError::BadStartLine)?;
    let third = parts.next().unwrap_or("");
    if first == "SIP/2.0" {
        let code = second.parse().map_err(|_| ParseError::BadStartLine)?;
        Ok(StartLine::Response {
            code,
            reason: third,
        })
    } else if third == "SIP/2.0" && !first.is_empty() && !second.is_empty() {
        Ok(StartLine::Request {
            method: first,
            uri: second,
        })
    } else {
        Err(ParseError::BadStartLine)
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// Compact header names: RFC 3261 §7.3.3 and the RFCs that added more.
const COMPACT: [(&str, &str); 16] = [
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("e", "Content-Encoding"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("f", "From"),
    ("s", "Subject"),
    ("k", "Supported"),
    ("t", "To"),
    ("v", "Via"),
    ("o", "Event"),
    ("u", "Allow-Events"),
    ("r", "Refer-To"),
    ("b", "Referred-By"),
    ("x", "Session-Expires"),
    ("a", "Accept-Contact"),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
        v: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
        Record-Route: <sip:lb.example;lr;lb=1.1.ab>, <sip:p2;lr>\r\n\
        Record-Route: <sip:p3;lr>\r\n\
        f: \"A, B\" <sip:a@example.com>;tag=x1\r\n\
        To: <sip:bob@example.com>\r\n\
        i: abc@host\r\n\
        CSeq: 7 INVITE\r\n\
        l: 4\r\n\r\nbodyNEXT";

    #[test]
    fn reads_requests_with_compact_names() {
        let len = frame_len(INVITE).unwrap().unwrap();
        assert_eq!(&INVITE[len..], b"NEXT");
        let m = Message::parse(&INVITE[..len]).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.status(), None);
        assert_eq!(m.call_id(), Some("abc@host"));
        assert_eq!(m.cseq(), Some((7, "INVITE")));
        assert_eq!(m.body, b"body");
        assert_eq!(param(m.header("Via").unwrap(), "branch"), Some("z9hG4bK1"));
        assert_eq!(param(m.header("From").unwrap(), "tag"), Some("x1"));
        assert_eq!(param(m.header("to").unwrap(), "tag"), None);
        let routes: Vec<&str> = m
            .header_all("Record-Route")
            .flat_map(list_entries)
            .collect();
        assert_eq!(
            routes,
            [
                "<sip:lb.example;lr;lb=1.1.ab>",
                "<sip:p2;lr>",
                "<sip:p3;lr>"
            ]
        );
        assert_eq!(uri_of(routes[0]), "sip:lb.example;lr;lb=1.1.ab");
        // The quoted comma in From's display name does not split it.
        assert_eq!(list_entries(m.header("f").unwrap()).count(), 1);
        assert_eq!(long_form("I"), "Call-ID");
        assert_eq!(long_form("X-Backend"), "X-Backend");
    }

    #[test]
    fn reads_responses_and_frames_partial_input() {
        let bytes = b"SIP/2.0 180 Ringing\r\nContent-Length: 0\r\nX-Backend: b2\r\n\r\n";
        assert_eq!(frame_len(&bytes[..20]).unwrap(), None);
        assert_eq!(frame_len(bytes).unwrap(), Some(bytes.len()));
        let m = Message::parse(bytes).unwrap();
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.header("x-backend"), Some("b2"));
        assert!(matches!(
            m.start,
            StartLine::Response {
                reason: "Ringing",
                ..
            }
        ));
    }

    #[test]
    fn rejects_what_it_cannot_read() {
        assert_eq!(
            frame_len(b"SIP/2.0 200 OK\r\nCall-ID: 1\r\n\r\n"),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            frame_len(b"SIP/2.0 200 OK\r\nl: x\r\n\r\n"),
            Err(ParseError::BadContentLength)
        );
        assert_eq!(
            Message::parse(b"HELLO\r\n\r\n").unwrap_err(),
            ParseError::BadStartLine
        );
        assert_eq!(
            Message::parse(b"SIP/2.0 200 OK\r\nno colon\r\n\r\n").unwrap_err(),
            ParseError::BadHeader
        );
        assert_eq!(
            Message::parse(b"SIP/2.0 200 OK\r\n").unwrap_err(),
            ParseError::Incomplete
        );
    }
}
