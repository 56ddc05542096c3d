//! The callee hangs up on request: an in-dialog request carrying `X-Hang-Up: now` is answered
//! as usual, and then the backend sends a BYE of its own in that dialog (RFC 3261 §15.1.1).
//! Tests use it to make the backend end a call at a moment of their choosing, e.g. after the
//! balancer restarted, when the balancer must dial out to the caller to deliver it.
//!
//! The BYE is built from the INVITE the call began with, as a UAS builds its route set and
//! target (RFC 3261 §12.1.1): Request-URI the caller's Contact, Route the INVITE's
//! Record-Route entries in order, From and To swapped with the call's own tag, a CSeq of the
//! callee's own.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use lb_backend::sip::{param, push_header, uri_of, Message};

use super::keep::Keeping;
use super::{CallState, Out, Uas};

/// The header that asks for the hang-up.
const HANG_UP: &str = "X-Hang-Up";

impl Keeping<'_> {
    /// [`Uas::handle`], and the BYE after the answer when the request asks for a hang-up.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        source: Option<SocketAddr>,
        sip: Bytes,
        out: &mut Vec<Out>,
    ) {
        let hang_up = Message::parse(&sip).ok().and_then(|m| {
            let asked =
                m.method().is_some_and(|method| method != "BYE") && m.header(HANG_UP).is_some();
            asked.then(|| m.call_id().map(str::to_owned)).flatten()
        });
        self.0.handle(now, source, sip, out);
        if let Some(call_id) = hang_up {
            if let Some(bye) = self.0.bye(&call_id) {
                // No next hop: the balancer routes it by its Route header.
                out.push((None, bye));
            }
        }
    }
}

impl Uas<'_> {
    /// The BYE ending answered call `call_id` from this side; the call is forgotten (the
    /// caller's 200 to it needs nothing more).
    fn bye(&mut self, call_id: &str) -> Option<Vec<u8>> {
        let call = self.calls.get(call_id)?;
        if call.state != CallState::Answered {
            return None;
        }
        let invite = Message::parse(&call.invite).ok()?;
        let target = uri_of(invite.header("Contact")?);
        let (from, to) = (invite.header("From")?, invite.header("To")?);
        let to_tagged = match param(to, "tag") {
            Some(_) => to.to_owned(),
            None => format!("{to};tag={}", call.to_tag),
        };
        // The contact is `<sip:NAME@HOST:PORT;transport=tcp>`: its host:port names us in Via.
        let host = self
            .contact
            .split_once('@')
            .map_or("", |(_, rest)| rest.split(';').next().unwrap_or(""));
        let mut bye = Vec::with_capacity(512);
        bye.extend_from_slice(format!("BYE {target} SIP/2.0\r\n").as_bytes());
        push_header(
            &mut bye,
            "Via",
            &format!("SIP/2.0/TCP {host};branch=z9hG4bK-hangup-{}", self.next_tag),
        );
        self.next_tag += 1;
        for route in invite.header_all("Record-Route") {
            push_header(&mut bye, "Route", route);
        }
        push_header(&mut bye, "Max-Forwards", "70");
        push_header(&mut bye, "From", &to_tagged);
        push_header(&mut bye, "To", from);
        push_header(&mut bye, "Call-ID", call_id);
        push_header(&mut bye, "CSeq", "1 BYE");
        push_header(&mut bye, "X-Backend", &self.name);
        push_header(&mut bye, "Content-Length", "0");
        bye.extend_from_slice(b"\r\n");
        self.calls.remove(call_id);
        Some(bye)
    }
}
