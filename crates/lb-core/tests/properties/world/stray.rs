//! Stray steps: messages outside any call, and the checks of what the balancer answers or drops.

use std::net::SocketAddr;

use bytes::BytesMut;
use lb_core::{ConnId, Event, Input, Stats};

use super::{Fate, Outs, World};
use crate::wire::{lb_tag, response_to};
use crate::{LB, STRAY_KINDS, STRAY_PEER};

impl World {
    pub(super) fn stray(&mut self, kind: u8) -> Result<(), String> {
        self.strays += 1;
        let n = self.strays;
        let call_id = format!("stray-{n}@siplb.test");
        let peer: SocketAddr = STRAY_PEER.parse().unwrap();
        let via = format!("Via: SIP/2.0/TCP {peer};branch=z9hG4bKs{n}");
        let request = |method: &str, to_tag: &str, extra: &str| {
            format!(
                "{method} sip:bob@example.com SIP/2.0\r\n\
                 {via}\r\n\
                 {extra}\
                 Max-Forwards: 70\r\n\
                 From: <sip:carol@example.com>;tag=c{n}\r\n\
                 To: <sip:bob@example.com>{to_tag}\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: 1 {method}\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        };
        let before = self.lb.stats().clone();
        let up = (0..self.n()).find(|j| self.be[*j].up);
        let stray = self.stray;
        match u32::from(kind) % STRAY_KINDS {
            0 => {
                let outs = self.feed(stray, request("CANCEL", "", "").as_bytes())?;
                self.expect_reply(&outs, stray, "SIP/2.0 481 ")
            }
            1 => {
                let outs = self.feed(stray, request("ACK", ";tag=x", "").as_bytes())?;
                self.expect_dropped(&outs, &before)
            }
            2 => {
                // A tag from another call does not verify: an in-dialog request with no valid
                // tag belongs to no backend, so it gets 481 and never a table entry.
                let tag = (0..self.calls.len())
                    .find_map(|k| self.live(k).and_then(|c| c.dialog.clone()))
                    .and_then(|(rr, _)| lb_tag(&rr))
                    .unwrap_or_else(|| "0.1.0123456789abcdef".into());
                let route = format!("Route: <sip:{LB};transport=tcp;lr;lb={tag}>\r\n");
                let outs = self.feed(stray, request("BYE", ";tag=x", &route).as_bytes())?;
                ensure!(
                    self.lb.stats().tag_failures == before.tag_failures + 1,
                    "a forged tag was not counted"
                );
                ensure!(
                    self.lb.stats().table_len <= before.table_len,
                    "a forged in-dialog request made a table entry"
                );
                self.expect_reply(&outs, stray, "SIP/2.0 481 ")
            }
            3 => {
                let bad =
                    request("OPTIONS", "", "").replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS");
                let outs = self.feed(stray, bad.as_bytes())?;
                self.expect_reply(&outs, stray, "SIP/2.0 400 ")?;
                ensure!(
                    self.lb.stats().malformed == before.malformed + 1,
                    "400 not counted as malformed"
                );
                Ok(())
            }
            4 => {
                let response = response_to(&request("OPTIONS", "", ""), "200 OK");
                let outs = self.feed(stray, response.as_bytes())?;
                self.expect_dropped(&outs, &before)
            }
            5 => {
                let outs = self.feed(
                    stray,
                    b"OPTIONS sip:x SIP/2.0\r\nContent-Length: banana\r\n\r\n",
                )?;
                ensure!(
                    outs.sends.is_empty(),
                    "lost framing answered: {:?}",
                    outs.sends
                );
                ensure!(
                    self.stray != stray,
                    "lost framing did not close the connection"
                );
                ensure!(
                    self.lb.stats().framing_errors == before.framing_errors + 1,
                    "framing error not counted"
                );
                Ok(())
            }
            6 => {
                let outs = self.feed(stray, b"\r\n\r\n")?;
                ensure!(
                    outs.sends.len() == 1
                        && outs.sends[0].0 == stray
                        && &outs.sends[0].1[..] == b"\r\n",
                    "ping not ponged: {:?}",
                    outs.sends
                );
                Ok(())
            }
            7 => {
                let Some(j) = up else { return Ok(()) };
                let response = response_to(
                    &request("OPTIONS", "", "")
                        .replace(&via, "Via: SIP/2.0/TCP 192.0.2.77:5060;branch=z9hG4bKu"),
                    "200 OK",
                );
                let outs = self.backend_sends(j, &response, None)?;
                self.expect_dropped(&outs, &before)
            }
            8 => {
                let Some(j) = up else { return Ok(()) };
                let outs =
                    self.backend_sends(j, "SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", None)?;
                self.expect_dropped(&outs, &before)?;
                ensure!(
                    self.lb.stats().malformed == before.malformed + 1,
                    "not counted as malformed"
                );
                Ok(())
            }
            9 => {
                // A backend's request for a frontend the balancer has no connection to: it dials
                // the Request-URI's address, the model's network refuses, and a 503 goes back.
                let Some(j) = up else { return Ok(()) };
                let bye = request("BYE", ";tag=x", "").replace(
                    "sip:bob@example.com SIP/2.0",
                    "sip:dave@192.0.2.77:5060 SIP/2.0",
                );
                let outs = self.backend_sends(j, &bye, None)?;
                match self.fate(&outs, None)? {
                    Fate::Backend(to, msg) => {
                        ensure!(to == j, "the 503 went to backend {to}, not {j}");
                        ensure!(msg.starts_with("SIP/2.0 503 "), "expected 503, got {msg:?}");
                        Ok(())
                    }
                    _ => Err("a backend's request with no route got no 503".into()),
                }
            }
            _ => {
                // Input naming a connection that has ended: counted, ignored.
                let Some(&dead) = self.dead.last() else {
                    return Ok(());
                };
                self.input(Input::Received {
                    conn: dead,
                    bytes: BytesMut::from(&b"OPTIONS"[..]),
                });
                self.input(Input::Connected { conn: dead });
                let outs = self.collect()?;
                ensure!(
                    outs.sends.is_empty(),
                    "a stale input caused {:?}",
                    outs.sends
                );
                ensure!(
                    self.lb.stats().stale_inputs == before.stale_inputs + 2,
                    "stale inputs not counted"
                );
                Ok(())
            }
        }
    }

    pub(super) fn expect_reply(
        &self,
        outs: &Outs,
        conn: ConnId,
        starts: &str,
    ) -> Result<(), String> {
        match self.fate(outs, None)? {
            Fate::Frontend(to, msg) => {
                ensure!(to == conn, "reply went to {to:?}, not {conn:?}");
                ensure!(msg.starts_with(starts), "expected {starts:?}, got {msg:?}");
                Ok(())
            }
            Fate::Backend(j, msg) => Err(format!("expected {starts:?}, backend {j} got {msg:?}")),
            Fate::Nothing => Err(format!("expected {starts:?}, got nothing")),
        }
    }

    pub(super) fn expect_dropped(&self, outs: &Outs, before: &Stats) -> Result<(), String> {
        ensure!(
            outs.sends.is_empty(),
            "expected a drop, got {:?}",
            outs.sends
        );
        ensure!(
            self.lb.stats().dropped == before.dropped + 1,
            "dropped {} → {}",
            before.dropped,
            self.lb.stats().dropped
        );
        ensure!(
            outs.events
                .iter()
                .any(|e| matches!(e, Event::Dropped { .. })),
            "no Dropped event: {:?}",
            outs.events
        );
        Ok(())
    }
}
