//! A zero-copy view of one framed SIP message: the received `Bytes` plus the offsets of the few
//! parts the balancer reads or splices (RFC 3261 §7, §20). No maps, no owned strings.
//!
//! [`SipMessage::parse`] walks the head once, front to back, and looks closely only at the
//! headers the balancer routes by (Via, Call-ID, CSeq, To, Route, the optional tag header); the
//! rest is skipped line by line. It is deliberately more lenient than a full user agent where
//! leniency costs nothing (odd whitespace, unknown schemes, odd display names): the backend sees
//! the message unchanged and rejects what it must. It is strict where the balancer itself would
//! otherwise misroute: the start line, CSeq, Call-ID, the top Via and the top Route.

use bytes::Bytes;

mod head;
mod header_name;
mod parts;
mod route;
mod start_line;
mod uri;
mod via;

use head::Head;
pub(crate) use head::{scan_head, Analysis, ScannedHead};
pub(crate) use header_name::{header_lines, HeaderName, Known};
pub(crate) use parts::*;
pub(crate) use route::last_route;
pub(crate) use via::second_via;

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

impl SipMessage {
    /// Analyses a complete message (headers and body) as framed by [`crate::framing`].
    ///
    /// One forward pass over the head, no allocation. `headers_max` bounds the number of header
    /// fields (a folded field counts once).
    // Only the tests and the fuzz targets use this.
    #[cfg(any(test, feature = "fuzzing"))]
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
pub(crate) mod sanity;

#[cfg(test)]
mod rfc4475_tests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::lexer::find_crlf;

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
            Err(error) => error.reason.as_str(),
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
        assert_eq!(too_many.reason.as_str(), "Too Many Headers");
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
