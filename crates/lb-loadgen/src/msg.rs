//! The requests a call sends, written straight into a connection's output buffer.

use std::io::Write as _;

/// What every request of one call shares.
pub(crate) struct Dialog<'a> {
    pub(crate) run: u64,
    pub(crate) id: u64,
    /// host:port of the balancer, for the initial Request-URI and To.
    pub(crate) target: &'a str,
    /// This connection's local host:port, for Via and Contact.
    pub(crate) local: &'a str,
}

impl Dialog<'_> {
    /// The Call-ID: the call number first, so a response is matched without a map of strings.
    pub(crate) fn write_call_id(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "Call-ID: {}-{:x}@loadgen\r\n", self.id, self.run);
    }

    fn write_common(&self, out: &mut Vec<u8>, branch: char, to_tag: Option<&str>) {
        let _ = write!(
            out,
            "Via: SIP/2.0/TCP {};branch=z9hG4bK-{:x}-{}-{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:loadgen@{}>;tag=lg{}\r\n",
            self.local, self.run, self.id, self.local, self.id
        );
        match to_tag {
            Some(tag) => {
                let _ = write!(out, "To: <sip:service@{}>;tag={tag}\r\n", self.target);
            }
            None => {
                let _ = write!(out, "To: <sip:service@{}>\r\n", self.target);
            }
        }
        self.write_call_id(out);
    }

    /// The INVITE, byte for byte the same each time it is written (a retransmission must be).
    pub(crate) fn invite(&self, out: &mut Vec<u8>) {
        let _ = write!(out, "INVITE sip:service@{} SIP/2.0\r\n", self.target);
        self.write_common(out, 'i', None);
        let _ = write!(
            out,
            "CSeq: 1 INVITE\r\n\
             Contact: <sip:loadgen@{};transport=tcp>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{SDP}",
            self.local,
            SDP.len()
        );
    }

    /// The ACK of a 2xx (a new transaction, routed like any in-dialog request) or of a non-2xx
    /// (same branch as the INVITE, hop by hop, untagged: the new-call table routes it).
    pub(crate) fn ack(
        &self,
        out: &mut Vec<u8>,
        to_tag: &str,
        route: &[String],
        target: &str,
        of_2xx: bool,
    ) {
        let _ = write!(out, "ACK {target} SIP/2.0\r\n");
        self.write_common(out, if of_2xx { 'a' } else { 'i' }, Some(to_tag));
        write_route(out, route);
        out.extend_from_slice(b"CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n");
    }

    /// The BYE, through the route set the 2xx established.
    pub(crate) fn bye(&self, out: &mut Vec<u8>, to_tag: &str, route: &[String], target: &str) {
        let _ = write!(out, "BYE {target} SIP/2.0\r\n");
        self.write_common(out, 'b', Some(to_tag));
        write_route(out, route);
        out.extend_from_slice(b"CSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n");
    }

    /// The Request-URI of the INVITE.
    pub(crate) fn initial_uri(&self) -> String {
        format!("sip:service@{}", self.target)
    }
}

fn write_route(out: &mut Vec<u8>, route: &[String]) {
    for entry in route {
        let _ = write!(out, "Route: {entry}\r\n");
    }
}

/// The Call-ID's call number, or `None` for a Call-ID this run did not make.
pub(crate) fn call_number(call_id: &str, run: u64) -> Option<u64> {
    let (id, rest) = call_id.split_once('-')?;
    let (run_hex, host) = rest.split_once('@')?;
    if host != "loadgen" || u64::from_str_radix(run_hex, 16).ok()? != run {
        return None;
    }
    id.parse().ok()
}

/// A small audio offer so that INVITEs have the size of real ones.
const SDP: &str = "v=0\r\n\
o=loadgen 1 1 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0 8 101\r\n\
a=rtpmap:101 telephone-event/8000\r\n";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use lb_backend::sip::{frame_len, list_entries, param, Message};

    use super::*;

    #[test]
    fn requests_parse_and_round_trip_the_call_number() {
        let d = Dialog {
            run: 0xabc,
            id: 42,
            target: "127.0.0.1:5060",
            local: "127.0.0.1:40000",
        };
        let mut out = Vec::new();
        d.invite(&mut out);
        let mut again = Vec::new();
        d.invite(&mut again);
        assert_eq!(out, again, "a retransmission is the same bytes");
        assert_eq!(frame_len(&out).unwrap(), Some(out.len()));
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(call_number(m.call_id().unwrap(), 0xabc), Some(42));
        assert_eq!(call_number(m.call_id().unwrap(), 0xabd), None);
        let branch = param(m.header("Via").unwrap(), "branch")
            .unwrap()
            .to_owned();

        let route = vec!["<sip:127.0.0.1:5060;transport=tcp;lr;lb=0.1.ff>".to_owned()];
        out.clear();
        d.bye(
            &mut out,
            "t1",
            &route,
            "sip:b1@127.0.0.1:5070;transport=tcp",
        );
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.method(), Some("BYE"));
        assert_eq!(m.cseq(), Some((2, "BYE")));
        assert_eq!(param(m.header("To").unwrap(), "tag"), Some("t1"));
        assert_eq!(m.header_all("Route").flat_map(list_entries).count(), 1);

        // The ACK of a non-2xx reuses the INVITE's branch; the ACK of a 2xx does not.
        out.clear();
        d.ack(&mut out, "t1", &[], &d.initial_uri(), false);
        let m = Message::parse(&out).unwrap();
        assert_eq!(
            param(m.header("Via").unwrap(), "branch"),
            Some(branch.as_str())
        );
        out.clear();
        d.ack(
            &mut out,
            "t1",
            &route,
            "sip:b1@127.0.0.1:5070;transport=tcp",
            true,
        );
        let m = Message::parse(&out).unwrap();
        assert_ne!(
            param(m.header("Via").unwrap(), "branch"),
            Some(branch.as_str())
        );
    }
}
