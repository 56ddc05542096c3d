//! The RFC 4475 torture messages through the framer and the parser, as a TCP stream delivers
//! them: each file whole, split in two at every byte, and byte by byte must give the same
//! outcomes, and those must match the table below (also in docs/rfc4475.md, with the reasons).

#![allow(clippy::unwrap_used)]

use bytes::BytesMut;

use super::*;
use crate::config::SanityLimits;
use crate::framing::{Frame, FramingError, StreamFramer};
use crate::reasons::MalformedFault;

const MAX: usize = 64 * 1024;
const HEADERS_MAX: usize = 128;

/// What the balancer does with one thing cut from the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Framed and parsed: routed onwards.
    Forward,
    /// A framed request that does not parse: answered `400 <reason>`.
    Reject(&'static str),
    /// A framed response that does not parse: dropped.
    Drop(&'static str),
    /// Framing lost: the connection is closed.
    Close(FramingError),
}

use FramingError::{BadContentLength, MissingContentLength};
use Outcome::{Close, Drop, Forward, Reject};

/// Per file: the outcomes in stream order, then the bytes left waiting for more.
const EXPECTED: &[(&str, &[Outcome], usize)] = &[
    // §3.1.1 valid messages
    ("wsinv.dat", &[Forward], 0),
    ("intmeth.dat", &[Forward], 0),
    ("esc01.dat", &[Forward], 0),
    ("escnull.dat", &[Forward], 0),
    ("esc02.dat", &[Forward], 0),
    ("lwsdisp.dat", &[Forward], 0),
    ("longreq.dat", &[Forward], 0),
    // The REGISTER, then (a stream has no datagram end) the INVITE, then 5 octets beyond its
    // Content-Length that begin a head with no Content-Length.
    (
        "dblreq.dat",
        &[Forward, Forward, Close(MissingContentLength)],
        0,
    ),
    ("semiuri.dat", &[Forward], 0),
    ("transports.dat", &[Forward], 0),
    ("mpart01.dat", &[Forward], 0),
    ("unreason.dat", &[Forward], 0),
    ("noreason.dat", &[Forward], 0),
    // §3.1.2 invalid messages
    ("badinv01.dat", &[Reject("Bad Via")], 0),
    ("clerr.dat", &[], 498),
    ("ncl.dat", &[Close(BadContentLength)], 0),
    ("scalar02.dat", &[Reject("Bad CSeq")], 0),
    ("scalarlg.dat", &[Drop("Bad CSeq")], 0),
    ("quotbal.dat", &[Reject("Bad To")], 0),
    ("ltgtruri.dat", &[Reject("Bad Request-URI")], 0),
    ("lwsruri.dat", &[Reject("Bad Request Line")], 0),
    ("lwsstart.dat", &[Forward], 0),
    ("trws.dat", &[Forward], 0),
    ("escruri.dat", &[Forward], 0),
    ("baddate.dat", &[Forward], 0),
    ("regbadct.dat", &[Forward], 0),
    ("badaspec.dat", &[Forward], 0),
    ("baddn.dat", &[Forward], 0),
    ("badvers.dat", &[Reject("Version Not Supported")], 0),
    ("mismatch01.dat", &[Reject("CSeq Method Mismatch")], 0),
    ("mismatch02.dat", &[Reject("CSeq Method Mismatch")], 0),
    ("bigcode.dat", &[Drop("Bad Status Line")], 0),
    // §3.2 transaction layer
    ("badbranch.dat", &[Forward], 0),
    // §3.3 application layer
    ("insuf.dat", &[Reject("Missing Call-ID")], 0),
    ("unkscm.dat", &[Forward], 0),
    ("novelsc.dat", &[Forward], 0),
    ("unksm2.dat", &[Forward], 0),
    ("bext01.dat", &[Forward], 0),
    ("invut.dat", &[Forward], 0),
    ("regaut01.dat", &[Forward], 0),
    ("multi01.dat", &[Reject("Duplicate CSeq")], 0),
    ("mcl01.dat", &[Close(BadContentLength)], 0),
    ("bcast.dat", &[Forward], 0),
    ("zeromf.dat", &[Forward], 0),
    ("cparam01.dat", &[Forward], 0),
    ("cparam02.dat", &[Forward], 0),
    ("regescrt.dat", &[Forward], 0),
    ("sdp01.dat", &[Forward], 0),
    // §3.4 backward compatibility
    ("inv2543.dat", &[Close(MissingContentLength)], 0),
];

/// The outcomes, the messages forwarded, and the bytes left waiting for more.
#[derive(Debug)]
struct Run {
    outcomes: Vec<Outcome>,
    forwarded: Vec<SipMessage>,
    waiting: usize,
}

impl PartialEq for Run {
    fn eq(&self, other: &Run) -> bool {
        let bytes = |run: &Run| {
            run.forwarded
                .iter()
                .map(|m| m.bytes.clone())
                .collect::<Vec<_>>()
        };
        self.outcomes == other.outcomes
            && self.waiting == other.waiting
            && bytes(self) == bytes(other)
    }
}

fn closed(outcomes: &[Outcome]) -> bool {
    matches!(outcomes.last(), Some(Close(_)))
}

fn run(chunks: &[&[u8]]) -> Run {
    let mut framer = StreamFramer::default();
    let mut run = Run {
        outcomes: Vec::new(),
        forwarded: Vec::new(),
        waiting: 0,
    };
    for chunk in chunks {
        framer.push(BytesMut::from(*chunk));
        while !closed(&run.outcomes) {
            let Some(frame) = framer.next_frame(MAX) else {
                break;
            };
            let outcome = match frame {
                Err(error) => Close(error),
                // The files hold no keep-alives; one here would be a framer bug.
                Ok(Frame::Ping) => panic!("ping in a torture message"),
                Ok(Frame::Message(bytes)) => {
                    let is_response = bytes.starts_with(b"SIP/");
                    match SipMessage::parse(bytes, None, HEADERS_MAX) {
                        // As from a frontend: an initial request must pass the edge checks.
                        Ok(message) if message.is_request() && !message.to_tag => {
                            match sanity::check(&message, &SanityLimits::default()) {
                                Ok(()) => {
                                    run.forwarded.push(message);
                                    Forward
                                }
                                Err(fault) => Reject(fault.as_str()),
                            }
                        }
                        Ok(message) => {
                            run.forwarded.push(message);
                            Forward
                        }
                        Err(error) if is_response => Drop(error.reason.as_str()),
                        Err(error) => Reject(error.reason.as_str()),
                    }
                }
            };
            run.outcomes.push(outcome);
        }
    }
    run.waiting = if closed(&run.outcomes) {
        0
    } else {
        framer.buffered_len()
    };
    run
}

fn read(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/rfc4475")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_table_covers_every_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".dat"))
        .collect();
    on_disk.sort();
    let mut in_table: Vec<String> = EXPECTED.iter().map(|(name, ..)| name.to_string()).collect();
    in_table.sort();
    assert_eq!(on_disk, in_table);
    assert_eq!(in_table.len(), 49);
}

#[test]
fn every_file_has_its_expected_outcome_however_it_is_split() {
    for &(name, outcomes, waiting) in EXPECTED {
        let bytes = read(name);
        let whole = run(&[&bytes]);
        assert_eq!(
            (&whole.outcomes[..], whole.waiting),
            (outcomes, waiting),
            "{name}"
        );
        for cut in 0..=bytes.len() {
            assert_eq!(
                run(&[&bytes[..cut], &bytes[cut..]]),
                whole,
                "{name} split at {cut}"
            );
        }
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(run(&bytewise), whole, "{name} byte by byte");
    }
}

/// The forwarded message of a one-message file.
fn forwarded(name: &str) -> SipMessage {
    let mut run = run(&[&read(name)]);
    assert_eq!(run.forwarded.len(), 1, "{name}");
    run.forwarded.remove(0)
}

fn text(message: &SipMessage, span: Span) -> &[u8] {
    message.slice(span)
}

fn host(message: &SipMessage, host_port: Option<HostPort>) -> Option<(&[u8], Option<u16>)> {
    host_port.map(|hp| (message.slice(hp.host), hp.port))
}

#[test]
fn wsinv_fields_survive_the_whitespace() {
    let m = forwarded("wsinv.dat");
    assert_eq!(m.method(), Some(Method::Invite));
    assert_eq!(m.call_id(), b"wsinv.ndaksdj@192.0.2.1");
    assert_eq!((m.cseq_number, m.cseq_method), (9, Method::Invite));
    assert!(m.to_tag);
    assert_eq!(text(&m, m.top_via.transport), b"UDP");
    assert_eq!(
        host(&m, Some(m.top_via.sent_by)),
        Some((&b"192.0.2.2"[..], None))
    );
    assert_eq!(
        m.top_via.branch.map(|b| text(&m, b)),
        Some(&b"390skdjuw"[..])
    );
    let route = m.top_route.unwrap();
    assert!(route.sole_entry);
    assert_eq!(
        host(&m, Some(route.host_port)),
        Some((&b"services.example.com"[..], None))
    );
    assert_eq!(m.second_route, None);
    assert_eq!(
        host(&m, m.request_uri_host),
        Some((&b"chair-dnrc.example.com"[..], None))
    );
    assert_eq!(
        &m.bytes[m.header_end as usize..m.header_end as usize + 5],
        b"\r\nv=0"
    );
}

#[test]
fn odd_but_valid_values() {
    let m = forwarded("intmeth.dat");
    assert_eq!(
        (m.method(), m.cseq_method, m.cseq_number),
        (Some(Method::Other), Method::Other, 139122385)
    );
    assert_eq!(
        m.call_id(),
        &b"intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"[..]
    );
    assert!(!m.to_tag);
    assert_eq!(
        host(&m, m.request_uri_host),
        Some((&b"example.com"[..], None))
    );

    let m = forwarded("esc01.dat");
    assert_eq!(m.call_id(), b"esc01.239409asdfakjkn23onasd0-3234");
    assert_eq!(
        host(&m, m.request_uri_host),
        Some((&b"example.net"[..], None))
    );

    let m = forwarded("esc02.dat");
    assert_eq!(
        (m.method(), m.cseq_method),
        (Some(Method::Other), Method::Other)
    );
    assert_eq!(
        m.top_via.branch.map(|b| text(&m, b)),
        Some(&b"z9hG4bK209%fzsnel234"[..])
    );

    let m = forwarded("longreq.dat");
    assert_eq!(
        host(&m, Some(m.top_via.sent_by)),
        Some((&b"sip33.example.com"[..], None))
    );
    assert!(m.call_id().ends_with(b"reallylongcallid"));
    assert!(!m.to_tag);

    let m = forwarded("mpart01.dat");
    assert_eq!(
        host(&m, Some(m.top_via.sent_by)),
        Some((&b"127.0.0.1"[..], Some(5070)))
    );
    assert!(matches!(m.top_via.rport, Rport::Empty { .. }));
    assert_eq!(
        host(&m, m.top_route.map(|r| r.host_port)),
        Some((&b"127.0.0.1"[..], Some(5080)))
    );

    let m = forwarded("transports.dat");
    assert_eq!(m.call_id(), b"transports.kijh4akdnaqjkwendsasfdj");

    let m = forwarded("semiuri.dat");
    assert_eq!(
        host(&m, m.request_uri_host),
        Some((&b"example.com"[..], None))
    );
    let m = forwarded("escruri.dat");
    assert_eq!(
        host(&m, m.request_uri_host),
        Some((&b"example.com"[..], None))
    );
    assert_eq!(forwarded("unkscm.dat").request_uri_host, None);
    assert_eq!(forwarded("novelsc.dat").request_uri_host, None);

    let m = forwarded("lwsstart.dat");
    let StartLine::Request { uri, .. } = m.start else {
        panic!()
    };
    assert_eq!(text(&m, uri), b"sip:user@example.com");

    assert_eq!(
        forwarded("noreason.dat").start,
        StartLine::Response { status: 100 }
    );
    assert_eq!(
        forwarded("unreason.dat").start,
        StartLine::Response { status: 200 }
    );
    let m = forwarded("bcast.dat");
    assert_eq!(
        host(&m, Some(m.top_via.sent_by)),
        Some((&b"192.0.2.198"[..], None))
    );
}

#[test]
fn dblreq_gives_both_requests_on_a_stream() {
    let run = run(&[&read("dblreq.dat")]);
    let [register, invite] = &run.forwarded[..] else {
        panic!("{run:?}")
    };
    assert_eq!(register.method(), Some(Method::Register));
    assert_eq!(
        register.call_id(),
        b"dblreq.0ha0isndaksdj99sdfafnl3lk233412"
    );
    assert_eq!(invite.method(), Some(Method::Invite));
    assert_eq!(invite.call_id(), b"dblreq.0ha0isnda977644900765@192.0.2.15");
}

#[test]
fn the_edge_checks_pass_every_torture_request_with_room_to_spare() {
    // The table above runs the checks on every initial request; none fails them. The
    // longest values RFC 4475 has, in longreq.dat, against tighter limits, show by how much.
    let m = forwarded("longreq.dat");
    assert!(m.is_request() && !m.to_tag);
    let tight = |host, uri, field| SanityLimits {
        enabled: true,
        host_bytes_max: host,
        uri_bytes_max: uri,
        field_bytes_max: field,
    };
    assert_eq!(sanity::check(&m, &tight(255, 1024, 2048)), Ok(()));
    assert_eq!(m.longest_field, 591);
    assert_eq!(
        sanity::check(&m, &tight(255, 1024, 590)),
        Err(MalformedFault::HeaderTooLong)
    );
    assert_eq!(
        sanity::check(&m, &tight(255, 300, 2048)),
        Err(MalformedFault::UriTooLong)
    );
    assert_eq!(
        sanity::check(&m, &tight(16, 1024, 2048)),
        Err(MalformedFault::HostTooLong)
    );
}
