//! The one set of SIP writers the simulated peers use (the proxies' requests, the backends'
//! responses and BYEs, the callers' answers to a BYE), and the dialog facts a caller reads
//! back from a final response.
//!
//! Everything is written with `extend_from_slice` into a reused `BytesMut` and split off: a
//! million-call storm writes some eight million messages.

use bytes::BytesMut;
use smallvec::SmallVec;

use crate::addr::{backend_ip4, proxy_ip};
use crate::sip::{self, Method};

/// A small fixed session description, so bodies are framed by Content-Length like real ones.
pub(crate) const SDP: &[u8] = b"v=0\r\no=- 1 1 IN IP4 10.1.0.1\r\ns=-\r\nc=IN IP4 10.1.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// Reused output buffer chunk for messages the simulated peers write.
pub(crate) const OUT_CHUNK: usize = 64 * 1024;

/// Gives the writer's buffer room again once most of a chunk was split off.
pub(crate) fn reserve(out: &mut BytesMut) {
    if out.capacity() < 4096 {
        out.reserve(OUT_CHUNK);
    }
}

/// A request a caller asks its proxy to send (the UDP leg carries this, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RequestSpec {
    pub(crate) method: Method,
    /// Client transaction number: the proxy derives both Via branches from it.
    pub(crate) tx: u32,
    pub(crate) cseq: u32,
    /// In-dialog: Request-URI = the remote target, Route = the route set.
    pub(crate) dialog: bool,
    /// The To header carries the remote tag.
    pub(crate) to_tag: bool,
    /// The initial INVITE: the proxy Record-Routes it.
    pub(crate) initial: bool,
}

/// What a final response tells the caller about the dialog.
#[derive(Clone, Debug, Default)]
pub(crate) struct DialogInfo {
    pub(crate) to_tag: SmallVec<[u8; 32]>,
    pub(crate) route: SmallVec<[u8; 96]>,
    pub(crate) target: SmallVec<[u8; 48]>,
}

impl DialogInfo {
    /// Reads the remote tag, the balancer's Record-Route entry and the Contact of a response,
    /// in one walk over its head (each the first there is).
    pub(crate) fn from_response(msg: &[u8]) -> DialogInfo {
        let mut d = DialogInfo::default();
        let (mut to, mut rr, mut contact) = (false, false, false);
        for h in sip::headers(msg) {
            let n = h.name;
            if !to && n.eq_ignore_ascii_case(b"To") {
                to = true;
                if let Some(tag) = sip::param(h.value, b"tag") {
                    d.to_tag.extend_from_slice(tag);
                }
            } else if !rr && n.eq_ignore_ascii_case(b"Record-Route") {
                // The caller's route set is the Record-Route list reversed (§12.1.2); the
                // first hop is its own proxy, which pops its entry, so what reaches the
                // balancer is the rest: the balancer's entry.
                let ours = h
                    .value
                    .split(|&c| c == b',')
                    .filter_map(sip::angle)
                    .find(|u| sip::param(u, b"lb").is_some());
                if let Some(u) = ours {
                    rr = true;
                    d.route.extend_from_slice(u);
                }
            } else if !contact && n.eq_ignore_ascii_case(b"Contact") {
                contact = true;
                if let Some(c) = sip::angle(h.value) {
                    d.target.extend_from_slice(c);
                }
            }
        }
        d
    }

    /// The backend named by the tag in the route (`lb=B.K.MAC`), once established.
    pub(crate) fn tag_backend(&self) -> Option<u16> {
        let tag = sip::param(&self.route, b"lb")?;
        let dot = memchr::memchr(b'.', tag)?;
        sip::parse_u64(&tag[..dot]).and_then(|b| u16::try_from(b).ok())
    }
}

/// A proxy's request on the TCP leg: its own Via above the caller's, Record-Route on the
/// initial INVITE, the caller's route set and target in dialog.
pub(crate) fn write_request(
    out: &mut BytesMut,
    d: &DialogInfo,
    proxy: u16,
    call: u32,
    r: RequestSpec,
) {
    let ip = proxy_ip(proxy).octets();
    let m = r.method.as_str().as_bytes();
    let (call64, tx64) = (u64::from(call), u64::from(r.tx));
    out.extend_from_slice(m);
    if r.dialog && !d.target.is_empty() {
        out.extend_from_slice(b" ");
        out.extend_from_slice(&d.target);
        out.extend_from_slice(b" SIP/2.0\r\n");
    } else {
        out.extend_from_slice(b" sip:callee@sim SIP/2.0\r\n");
    }
    out.extend_from_slice(b"Via: SIP/2.0/TCP ");
    put_ip(out, ip);
    out.extend_from_slice(b":5060;branch=z9hG4bKp");
    sip::put_u64(out, call64);
    out.extend_from_slice(b".");
    sip::put_u64(out, tx64);
    out.extend_from_slice(b";rport\r\nVia: SIP/2.0/UDP 10.1.");
    put_caller_ip_tail(out, call);
    out.extend_from_slice(b":5060;branch=z9hG4bKu");
    sip::put_u64(out, call64);
    out.extend_from_slice(b".");
    sip::put_u64(out, tx64);
    out.extend_from_slice(b"\r\nMax-Forwards: 69\r\n");
    if r.initial {
        out.extend_from_slice(b"Record-Route: <sip:");
        put_ip(out, ip);
        out.extend_from_slice(b":5060;transport=tcp;lr>\r\n");
    }
    if r.dialog && !d.route.is_empty() {
        out.extend_from_slice(b"Route: <");
        out.extend_from_slice(&d.route);
        out.extend_from_slice(b">\r\n");
    }
    out.extend_from_slice(b"From: <sip:caller@ua.sim>;tag=u");
    sip::put_u64(out, call64);
    out.extend_from_slice(b"\r\nTo: <sip:callee@sim>");
    if r.to_tag && !d.to_tag.is_empty() {
        out.extend_from_slice(b";tag=");
        out.extend_from_slice(&d.to_tag);
    }
    out.extend_from_slice(b"\r\nCall-ID: ");
    sip::put_u64(out, call64);
    out.extend_from_slice(b"@sim\r\nCSeq: ");
    sip::put_u64(out, u64::from(r.cseq));
    out.extend_from_slice(b" ");
    out.extend_from_slice(m);
    out.extend_from_slice(b"\r\n");
    if r.method == Method::Invite {
        out.extend_from_slice(b"Contact: <sip:ua");
        sip::put_u64(out, call64);
        out.extend_from_slice(b"@10.1.");
        put_caller_ip_tail(out, call);
        out.extend_from_slice(b":5060>\r\nContent-Type: application/sdp\r\nContent-Length: ");
        sip::put_u64(out, SDP.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(SDP);
    } else {
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
}

/// The last two octets of caller `call`'s address 10.1.X.Y.
fn put_caller_ip_tail(out: &mut BytesMut, call: u32) {
    sip::put_u64(out, u64::from((call >> 8) & 0xff));
    out.extend_from_slice(b".");
    sip::put_u64(out, u64::from(call & 0xff));
}

/// The caller's 200 to a BYE the callee side sent: Via, From, To, Call-ID and CSeq copied.
pub(crate) fn write_bye_ok(out: &mut BytesMut, bye: &[u8]) {
    out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
    for h in sip::headers(bye) {
        if [&b"Via"[..], b"From", b"To", b"Call-ID", b"CSeq"]
            .iter()
            .any(|n| h.name.eq_ignore_ascii_case(n))
        {
            out.extend_from_slice(h.line);
        }
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
}

/// What a backend's response carries beyond the copied headers.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extras {
    record_route: bool,
    contact: bool,
    sdp: bool,
}

impl Extras {
    pub(crate) const NONE: Extras = Extras {
        record_route: false,
        contact: false,
        sdp: false,
    };
    pub(crate) const RINGING: Extras = Extras {
        record_route: true,
        contact: true,
        sdp: false,
    };
    pub(crate) const ANSWER: Extras = Extras {
        record_route: true,
        contact: true,
        sdp: true,
    };
    pub(crate) const ANSWER_REINVITE: Extras = Extras {
        record_route: false,
        contact: true,
        sdp: true,
    };
}

/// Where the header lines a response copies sit in a request, found in one walk: a backend
/// answers one INVITE up to five times (100, 180, 200, its retransmissions, 487).
#[derive(Clone, Debug, Default)]
pub(crate) struct Template {
    lines: SmallVec<[Line; 12]>,
}

#[derive(Clone, Copy, Debug)]
struct Line {
    /// The whole line with its CRLF.
    start: u32,
    end: u32,
    kind: LineKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineKind {
    /// Via, From, Call-ID, CSeq: copied as they are.
    Copied,
    RecordRoute,
    /// The To line: its value, and whether it has a tag.
    To {
        value: (u32, u32),
        tagged: bool,
    },
}

impl Template {
    /// The copied lines of `req`.
    pub(crate) fn of(req: &[u8]) -> Template {
        let mut t = Template::default();
        let at = |part: &[u8]| {
            let r = sip::offset_of(req, part).unwrap_or(0..0);
            (r.start as u32, r.end as u32)
        };
        for h in sip::headers(req) {
            let n = h.name;
            let kind = if n.eq_ignore_ascii_case(b"Via")
                || n.eq_ignore_ascii_case(b"From")
                || n.eq_ignore_ascii_case(b"Call-ID")
                || n.eq_ignore_ascii_case(b"CSeq")
            {
                LineKind::Copied
            } else if n.eq_ignore_ascii_case(b"Record-Route") {
                LineKind::RecordRoute
            } else if n.eq_ignore_ascii_case(b"To") {
                LineKind::To {
                    value: at(h.value),
                    tagged: sip::param(h.value, b"tag").is_some(),
                }
            } else {
                continue;
            };
            let (start, end) = at(h.line);
            t.lines.push(Line { start, end, kind });
        }
        t
    }
}

/// A backend's response to `req` (§8.2.6): Via, From, Call-ID, CSeq (and Record-Route, §12.1.1)
/// copied, the To tag added.
pub(crate) fn write_response(
    out: &mut BytesMut,
    req: &[u8],
    status: u16,
    b: u16,
    call: u32,
    x: Extras,
) {
    write_response_from(out, req, &Template::of(req), status, b, call, x);
}

/// [`write_response`] with the request's [`Template`] already found.
pub(crate) fn write_response_from(
    out: &mut BytesMut,
    req: &[u8],
    t: &Template,
    status: u16,
    b: u16,
    call: u32,
    x: Extras,
) {
    out.extend_from_slice(b"SIP/2.0 ");
    sip::put_u64(out, u64::from(status));
    out.extend_from_slice(match status {
        100 => &b" Trying\r\n"[..],
        180 => b" Ringing\r\n",
        200 => b" OK\r\n",
        487 => b" Request Terminated\r\n",
        _ => b" Whatever\r\n",
    });
    for l in &t.lines {
        let line = &req[l.start as usize..l.end as usize];
        match l.kind {
            LineKind::Copied => out.extend_from_slice(line),
            LineKind::RecordRoute if x.record_route => out.extend_from_slice(line),
            LineKind::RecordRoute => {}
            LineKind::To { value, tagged } => {
                if status == 100 || tagged {
                    out.extend_from_slice(line);
                } else {
                    out.extend_from_slice(b"To: ");
                    out.extend_from_slice(&req[value.0 as usize..value.1 as usize]);
                    out.extend_from_slice(b";tag=b");
                    sip::put_u64(out, u64::from(call));
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }
    if x.contact {
        out.extend_from_slice(b"Contact: <sip:b2bua@");
        put_ip(out, backend_ip4(b));
        out.extend_from_slice(b":5070>\r\n");
    }
    if x.sdp {
        out.extend_from_slice(b"Content-Type: application/sdp\r\nContent-Length: ");
        sip::put_u64(out, SDP.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(SDP);
    } else {
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    }
}

/// The callee side's BYE (§15.1.1): Request-URI = the caller's Contact, Route = the
/// Record-Route set in order (the UAS's route set, §12.1.1), From/To swapped with our tag.
pub(crate) fn write_bye(out: &mut BytesMut, invite: &[u8], b: u16, call: u32) {
    let target = sip::header_value(invite, b"Contact")
        .and_then(sip::angle)
        .unwrap_or(b"sip:caller@ua.sim");
    out.extend_from_slice(b"BYE ");
    out.extend_from_slice(target);
    out.extend_from_slice(b" SIP/2.0\r\nVia: SIP/2.0/TCP ");
    put_ip(out, backend_ip4(b));
    out.extend_from_slice(b":5070;branch=z9hG4bKb");
    sip::put_u64(out, u64::from(call));
    out.extend_from_slice(b".1\r\nMax-Forwards: 70\r\n");
    for rr in sip::record_routes(invite) {
        out.extend_from_slice(b"Route: <");
        out.extend_from_slice(rr);
        out.extend_from_slice(b">\r\n");
    }
    if let Some(to) = sip::header_value(invite, b"To") {
        out.extend_from_slice(b"From: ");
        out.extend_from_slice(to);
        out.extend_from_slice(b";tag=b");
        sip::put_u64(out, u64::from(call));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(from) = sip::header_value(invite, b"From") {
        out.extend_from_slice(b"To: ");
        out.extend_from_slice(from);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Call-ID: ");
    sip::put_u64(out, u64::from(call));
    out.extend_from_slice(b"@sim\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n");
}

/// Dotted-quad IPv4.
pub(crate) fn put_ip(out: &mut BytesMut, ip: [u8; 4]) {
    for (i, o) in ip.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b".");
        }
        sip::put_u64(out, u64::from(*o));
    }
}
