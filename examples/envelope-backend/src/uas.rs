//! The UAS logic, sans-IO: messages and time in, messages out. The socket loop in `main.rs`
//! feeds it; tests call it directly.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lb_backend::sip::{long_form, param, push_header, Message};

mod hangup;
pub(crate) mod keep;

/// Counters shared by every connection's UAS, printed as one line at exit.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) invite: AtomicU64,
    pub(crate) ack: AtomicU64,
    pub(crate) bye: AtomicU64,
    pub(crate) cancel: AtomicU64,
    pub(crate) options: AtomicU64,
    pub(crate) other: AtomicU64,
    pub(crate) responses: AtomicU64,
    pub(crate) unparsable: AtomicU64,
    pub(crate) sent: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) answered: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) retransmissions: AtomicU64,
    pub(crate) no_dialog: AtomicU64,
}

impl Counters {
    /// `name=value` pairs, the format of the balancer's stats line, so one parser reads both.
    pub(crate) fn line(&self) -> String {
        let pairs = [
            ("invite", &self.invite),
            ("ack", &self.ack),
            ("bye", &self.bye),
            ("cancel", &self.cancel),
            ("options", &self.options),
            ("other", &self.other),
            ("responses", &self.responses),
            ("unparsable", &self.unparsable),
            ("sent", &self.sent),
            ("calls", &self.calls),
            ("answered", &self.answered),
            ("completed", &self.completed),
            ("cancelled", &self.cancelled),
            ("retransmissions", &self.retransmissions),
            ("no_dialog", &self.no_dialog),
        ];
        let mut line = String::new();
        for (name, value) in pairs {
            let _ = write!(line, " {name}={}", value.load(Ordering::Relaxed));
        }
        line
    }
}

/// One message to send: where to (the request's source), and the bytes.
pub(crate) type Out = (Option<SocketAddr>, Vec<u8>);

/// A UAS answering calls on one balancer connection.
pub(crate) struct Uas<'c> {
    name: String,
    contact: String,
    answer_delay: Duration,
    counters: &'c Counters,
    calls: HashMap<String, Call>,
    /// Calls waiting for their 200, in deadline order: the delay is one constant, so a FIFO is
    /// already sorted.
    answers: VecDeque<(Instant, String)>,
    next_tag: u64,
}

struct Call {
    to_tag: String,
    state: CallState,
    /// The INVITE, kept to build its 200 or 487 later.
    invite: Bytes,
    source: Option<SocketAddr>,
    /// The latest response to the INVITE, resent when the INVITE is retransmitted
    /// (RFC 3261 §17.2.1).
    last: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum CallState {
    Ringing,
    Answered,
    Cancelled,
}

impl<'c> Uas<'c> {
    /// A UAS that names itself `name` in `X-Backend` and its Contact (`contact_host` is
    /// host:port), answering INVITEs after `answer_delay`.
    pub(crate) fn new(
        name: &str,
        contact_host: &str,
        answer_delay: Duration,
        counters: &'c Counters,
    ) -> Uas<'c> {
        Uas {
            name: name.to_owned(),
            contact: format!("<sip:{name}@{contact_host};transport=tcp>"),
            answer_delay,
            counters,
            calls: HashMap::new(),
            answers: VecDeque::new(),
            next_tag: 1,
        }
    }

    /// Calls in progress (ringing or answered): the load reported in every envelope.
    pub(crate) fn load(&self) -> u32 {
        u32::try_from(self.calls.len()).unwrap_or(u32::MAX)
    }

    /// When [`Uas::handle_timeout`] should next be called.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.answers.front().map(|(at, _)| *at)
    }

    /// Answers the calls whose delay has passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Out>) {
        while let Some((at, _)) = self.answers.front() {
            if *at > now {
                break;
            }
            let Some((_, call_id)) = self.answers.pop_front() else {
                break;
            };
            if let Some(call) = self.calls.get_mut(&call_id) {
                if call.state == CallState::Ringing {
                    answer(&self.name, &self.contact, call, self.counters, out);
                }
            }
        }
    }

    /// Handles one message from the balancer, appending what to send.
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        source: Option<SocketAddr>,
        sip: Bytes,
        out: &mut Vec<Out>,
    ) {
        let Ok(msg) = Message::parse(&sip) else {
            self.counters.unparsable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(method) = msg.method() else {
            self.counters.responses.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(call_id) = msg.call_id() else {
            self.counters.unparsable.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let in_dialog = msg.header("To").and_then(|to| param(to, "tag")).is_some();
        let counters = self.counters;
        let count = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
        match method {
            "INVITE" if !in_dialog => {
                count(&counters.invite);
                self.invite(now, source, call_id, &msg, sip.clone(), out);
            }
            "ACK" => {
                count(&counters.ack);
                // The ACK of a 487 ends a cancelled call; the ACK of a 200 needs nothing.
                if self
                    .calls
                    .get(call_id)
                    .is_some_and(|c| c.state == CallState::Cancelled)
                {
                    self.calls.remove(call_id);
                }
            }
            "CANCEL" => {
                count(&counters.cancel);
                self.cancel(source, call_id, &msg, out);
            }
            "OPTIONS" if !in_dialog => {
                count(&counters.options);
                out.push((source, self.response(&msg, 200, "OK", None, false)));
            }
            _ if !in_dialog => {
                count(&counters.other);
                out.push((source, self.response(&msg, 200, "OK", None, false)));
            }
            _ => {
                let c = match method {
                    "BYE" => &counters.bye,
                    "INVITE" => &counters.invite,
                    "OPTIONS" => &counters.options,
                    _ => &counters.other,
                };
                count(c);
                if !self.calls.contains_key(call_id) {
                    count(&counters.no_dialog);
                    let text = "Call/Transaction Does Not Exist";
                    out.push((source, self.response(&msg, 481, text, None, false)));
                    return;
                }
                if method == "BYE" {
                    self.calls.remove(call_id);
                    count(&counters.completed);
                }
                // A re-INVITE gets the Contact again (its 200 refreshes the target).
                let contact = method == "INVITE";
                out.push((source, self.response(&msg, 200, "OK", None, contact)));
            }
        }
    }

    fn invite(
        &mut self,
        now: Instant,
        source: Option<SocketAddr>,
        call_id: &str,
        msg: &Message<'_>,
        sip: Bytes,
        out: &mut Vec<Out>,
    ) {
        if let Some(call) = self.calls.get(call_id) {
            self.counters
                .retransmissions
                .fetch_add(1, Ordering::Relaxed);
            if !call.last.is_empty() {
                out.push((source, call.last.clone()));
            }
            return;
        }
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let to_tag = format!("{}-{:x}", self.name, self.next_tag);
        self.next_tag += 1;
        out.push((source, self.response(msg, 100, "Trying", None, false)));
        let ringing = self.response(msg, 180, "Ringing", Some(&to_tag), true);
        out.push((source, ringing.clone()));
        let mut call = Call {
            to_tag,
            state: CallState::Ringing,
            invite: sip,
            source,
            last: ringing,
        };
        if self.answer_delay.is_zero() {
            answer(&self.name, &self.contact, &mut call, self.counters, out);
        } else {
            self.answers
                .push_back((now + self.answer_delay, call_id.to_owned()));
        }
        self.calls.insert(call_id.to_owned(), call);
    }

    fn cancel(
        &mut self,
        source: Option<SocketAddr>,
        call_id: &str,
        msg: &Message<'_>,
        out: &mut Vec<Out>,
    ) {
        let Some(call) = self.calls.get_mut(call_id) else {
            self.counters.no_dialog.fetch_add(1, Ordering::Relaxed);
            let text = "Call/Transaction Does Not Exist";
            out.push((source, self.response(msg, 481, text, None, false)));
            return;
        };
        let ok = build_response(&self.name, &self.contact, msg, 200, "OK", None, false);
        out.push((source, ok));
        // A CANCEL after the final response has no effect (RFC 3261 §9.2).
        if call.state != CallState::Ringing {
            return;
        }
        call.state = CallState::Cancelled;
        self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        if let Ok(invite) = Message::parse(&call.invite) {
            let terminated = build_response(
                &self.name,
                &self.contact,
                &invite,
                487,
                "Request Terminated",
                Some(&call.to_tag),
                false,
            );
            call.last.clone_from(&terminated);
            out.push((call.source, terminated));
        }
    }

    fn response(
        &self,
        req: &Message<'_>,
        code: u16,
        reason: &str,
        to_tag: Option<&str>,
        dialog: bool,
    ) -> Vec<u8> {
        build_response(&self.name, &self.contact, req, code, reason, to_tag, dialog)
    }
}

fn answer(name: &str, contact: &str, call: &mut Call, counters: &Counters, out: &mut Vec<Out>) {
    let Ok(invite) = Message::parse(&call.invite) else {
        return;
    };
    let ok = build_response(name, contact, &invite, 200, "OK", Some(&call.to_tag), true);
    call.last.clone_from(&ok);
    call.state = CallState::Answered;
    counters.answered.fetch_add(1, Ordering::Relaxed);
    out.push((call.source, ok));
}

/// A response to `req` (RFC 3261 §8.2.6): Via, From, Call-ID and CSeq copied, a To tag added
/// when the request had none; for responses that make a dialog (`dialog`), Record-Route copied
/// and a Contact of our own (§12.1.1).
fn build_response(
    name: &str,
    contact: &str,
    req: &Message<'_>,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    dialog: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let _ = write!(Fmt(&mut out), "SIP/2.0 {code} {reason}\r\n");
    for (n, v) in &req.headers {
        let long = long_form(n);
        let copy = long.eq_ignore_ascii_case("Via")
            || long.eq_ignore_ascii_case("From")
            || long.eq_ignore_ascii_case("Call-ID")
            || long.eq_ignore_ascii_case("CSeq")
            || (dialog && long.eq_ignore_ascii_case("Record-Route"));
        if copy {
            push_header(&mut out, long, v);
        } else if long.eq_ignore_ascii_case("To") {
            match to_tag {
                Some(tag) if param(v, "tag").is_none() => {
                    push_header(&mut out, "To", &format!("{v};tag={tag}"));
                }
                _ => push_header(&mut out, "To", v),
            }
        }
    }
    if dialog {
        push_header(&mut out, "Contact", contact);
    }
    push_header(&mut out, "X-Backend", name);
    push_header(&mut out, "Content-Length", "0");
    out.extend_from_slice(b"\r\n");
    out
}

/// `fmt::Write` onto a byte vector, so `write!` needs no intermediate `String`.
struct Fmt<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Fmt<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn invite(call_id: &str) -> Bytes {
        Bytes::from(format!(
            "INVITE sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK-{call_id}\r\n\
             Record-Route: <sip:127.0.0.1:5060;transport=tcp;lr;lb=0.1.00ff>\r\n\
             From: <sip:alice@example.com>;tag=a1\r\n\
             To: <sip:bob@example.com>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:alice@10.0.0.1:5060;transport=tcp>\r\n\
             Content-Length: 0\r\n\r\n"
        ))
    }

    fn request(method: &str, call_id: &str, to_tag: Option<&str>, cseq: u32) -> Bytes {
        let to = match to_tag {
            Some(t) => format!("<sip:bob@example.com>;tag={t}"),
            None => "<sip:bob@example.com>".to_owned(),
        };
        Bytes::from(format!(
            "{method} sip:bob@example.com SIP/2.0\r\n\
             Via: SIP/2.0/TCP 10.0.0.1:5060;branch=z9hG4bK-{method}\r\n\
             From: <sip:alice@example.com>;tag=a1\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n"
        ))
    }

    fn status(out: &Out) -> u16 {
        Message::parse(&out.1).unwrap().status().unwrap()
    }

    fn source() -> Option<SocketAddr> {
        Some("10.0.0.1:40000".parse().unwrap())
    }

    #[test]
    fn invite_is_answered_with_tag_record_route_contact_and_name() {
        let counters = Counters::default();
        let mut uas = Uas::new("b1", "127.0.0.1:5070", Duration::ZERO, &counters);
        let mut out = Vec::new();
        uas.handle(Instant::now(), source(), invite("c1"), &mut out);
        let codes: Vec<u16> = out.iter().map(status).collect();
        assert_eq!(codes, [100, 180, 200]);
        assert!(out.iter().all(|o| o.0 == source()));
        let ok = Message::parse(&out[2].1).unwrap();
        assert_eq!(ok.header("X-Backend"), Some("b1"));
        assert_eq!(param(ok.header("To").unwrap(), "tag"), Some("b1-1"));
        assert_eq!(
            ok.header("Record-Route"),
            Some("<sip:127.0.0.1:5060;transport=tcp;lr;lb=0.1.00ff>")
        );
        assert_eq!(
            ok.header("Contact"),
            Some("<sip:b1@127.0.0.1:5070;transport=tcp>")
        );
        assert_eq!(ok.cseq(), Some((1, "INVITE")));
        let trying = Message::parse(&out[0].1).unwrap();
        assert_eq!(trying.header("Record-Route"), None);
        assert_eq!(uas.load(), 1);

        // A retransmitted INVITE gets the last response again, and makes no second call.
        out.clear();
        uas.handle(Instant::now(), source(), invite("c1"), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(status(&out[0]), 200);
        assert_eq!(counters.retransmissions.load(Ordering::Relaxed), 1);
        assert_eq!(counters.calls.load(Ordering::Relaxed), 1);

        out.clear();
        uas.handle(
            Instant::now(),
            source(),
            request("ACK", "c1", Some("b1-1"), 1),
            &mut out,
        );
        assert!(out.is_empty());
        uas.handle(
            Instant::now(),
            source(),
            request("BYE", "c1", Some("b1-1"), 2),
            &mut out,
        );
        assert_eq!(out.iter().map(status).collect::<Vec<_>>(), [200]);
        assert_eq!(uas.load(), 0);
        out.clear();
        uas.handle(
            Instant::now(),
            source(),
            request("BYE", "c1", Some("b1-1"), 2),
            &mut out,
        );
        assert_eq!(out.iter().map(status).collect::<Vec<_>>(), [481]);
    }

    #[test]
    fn delayed_answer_and_cancel() {
        let counters = Counters::default();
        let delay = Duration::from_millis(600);
        let mut uas = Uas::new("b2", "127.0.0.1:5071", delay, &counters);
        let t0 = Instant::now();
        let mut out = Vec::new();
        uas.handle(t0, source(), invite("c1"), &mut out);
        uas.handle(t0, source(), invite("c2"), &mut out);
        assert_eq!(
            out.iter().map(status).collect::<Vec<_>>(),
            [100, 180, 100, 180]
        );
        assert_eq!(uas.poll_timeout(), Some(t0 + delay));

        out.clear();
        uas.handle(t0, source(), request("CANCEL", "c2", None, 1), &mut out);
        let codes: Vec<u16> = out.iter().map(status).collect();
        assert_eq!(codes, [200, 487]);
        let terminated = Message::parse(&out[1].1).unwrap();
        assert_eq!(terminated.cseq(), Some((1, "INVITE")));
        assert_eq!(param(terminated.header("To").unwrap(), "tag"), Some("b2-2"));

        out.clear();
        uas.handle_timeout(t0 + delay / 2, &mut out);
        assert!(out.is_empty(), "early timeout does nothing");
        uas.handle_timeout(t0 + delay, &mut out);
        assert_eq!(out.iter().map(status).collect::<Vec<_>>(), [200]);
        assert_eq!(uas.poll_timeout(), None);
        assert_eq!(counters.answered.load(Ordering::Relaxed), 1);

        // CANCEL after the answer: 200 to the CANCEL only. CANCEL of nothing: 481.
        out.clear();
        uas.handle(t0, source(), request("CANCEL", "c1", None, 1), &mut out);
        uas.handle(t0, source(), request("CANCEL", "zz", None, 1), &mut out);
        assert_eq!(out.iter().map(status).collect::<Vec<_>>(), [200, 481]);
        // The ACK of the 487 ends the cancelled call.
        uas.handle(
            t0,
            source(),
            request("ACK", "c2", Some("b2-2"), 1),
            &mut out,
        );
        assert_eq!(uas.load(), 1);
    }

    #[test]
    fn options_unknown_dialogs_and_counters() {
        let counters = Counters::default();
        let mut uas = Uas::new("b3", "127.0.0.1:5072", Duration::ZERO, &counters);
        let mut out = Vec::new();
        uas.handle(
            Instant::now(),
            None,
            request("OPTIONS", "o", None, 1),
            &mut out,
        );
        uas.handle(
            Instant::now(),
            None,
            request("INFO", "x", Some("t"), 3),
            &mut out,
        );
        uas.handle(
            Instant::now(),
            None,
            Bytes::from_static(b"garbage"),
            &mut out,
        );
        let codes: Vec<u16> = out.iter().map(status).collect();
        assert_eq!(codes, [200, 481]);
        assert!(out.iter().all(|o| o.0.is_none()));
        let line = counters.line();
        assert!(line.contains(" options=1 other=1 "), "{line}");
        assert!(line.contains(" unparsable=1 "), "{line}");
        assert!(line.contains(" no_dialog=1"), "{line}");
    }
}
