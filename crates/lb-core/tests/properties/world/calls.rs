//! Steps on calls: set up, retransmitted, cancelled, answered, acknowledged, in-dialog requests
//! both ways.

use bytes::BytesMut;
use lb_core::{ConnId, Input};

use super::{Call, Fate, Phase, World};
use crate::script::DialogMethod;
use crate::wire::{check_copy, dialect, fe_peer, fe_via, lb_tag, response_to, tag_backend};
use crate::{CALLEE_TAG, LB, TAG_HEADER};

impl World {
    pub(super) fn invite(&mut self, k: usize, f: usize) -> Result<(), String> {
        if self.calls.len() <= k {
            self.calls.resize(k + 1, None);
            self.backups.resize(k + 1, Vec::new());
        }
        let call_id = format!("call-{k}@siplb.test");
        let peer = fe_peer(f);
        let invite = dialect(
            f,
            format!(
                "INVITE sip:bob@example.com SIP/2.0\r\n\
             {}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=a{k}\r\n\
             To: <sip:bob@example.com>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:alice@{}:5060;transport=tcp>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: 4\r\n\r\nv=0\n",
                fe_via(f, &format!("z9hG4bKi{k}")),
                peer.ip()
            ),
        );
        let available = (0..self.n()).any(|j| self.be[j].up && !self.be[j].draining);
        let full = self.lb.stats().table_len >= self.options.table_capacity as u64;
        let outs = self.feed(self.fes[f], invite.as_bytes())?;
        match self.fate(&outs, Some(peer))? {
            Fate::Backend(j, msg) => {
                ensure!(
                    available && !full,
                    "new call {k} forwarded to {j} (available: {available}, table full: {full})"
                );
                ensure!(
                    !self.be[j].draining,
                    "new call {k} given to draining backend {j}"
                );
                check_copy(&msg, j, &call_id, self.tag_header)?;
                let mut vias = msg
                    .lines()
                    .filter(|l| l.starts_with("Via:") || l.starts_with("v:"));
                let own = vias.next().unwrap_or_default();
                ensure!(
                    own.starts_with(&format!("Via: SIP/2.0/TCP {LB};branch=z9hG4bK"))
                        && own.contains(";lbc="),
                    "the balancer's own Via is not on top: {own}"
                );
                let via = vias.next().unwrap_or_default();
                let (received, rport) = match f % 3 {
                    0 => (true, true),
                    1 => (false, false),
                    _ => (false, true),
                };
                ensure!(
                    via.contains(";received=") == received
                        && via.contains(&format!(";rport={}", peer.port())) == rport,
                    "Via from {peer} stamped wrongly: {via}"
                );
                self.calls[k] = Some(Some(Call {
                    fe: f,
                    call_id,
                    home: j,
                    invite,
                    started: self.now,
                    copies: vec![(j, msg)],
                    phase: Phase::Calling,
                    dialog: None,
                    cseq: 1,
                    bye: None,
                }));
            }
            Fate::Frontend(conn, msg) => {
                ensure!(
                    conn == self.fes[f],
                    "503 went to {conn:?}, not {:?}",
                    self.fes[f]
                );
                let reason = if available {
                    "Too Many Calls Being Set Up"
                } else {
                    "No Backend Available"
                };
                ensure!(
                    !available || full,
                    "new call {k} refused with a backend available and room: {msg:?}"
                );
                ensure!(
                    msg.starts_with(&format!("SIP/2.0 503 {reason}\r\n")),
                    "expected 503 {reason}, got {msg:?}"
                );
                self.calls[k] = Some(None);
            }
            Fate::Nothing => {
                return Err(format!("new call {k} got nothing: {:?}", outs.events));
            }
        }
        Ok(())
    }

    pub(super) fn retransmit(&mut self, k: usize) -> Result<(), String> {
        let call = self.live(k).unwrap();
        let (f, home, invite, call_id) = (
            call.fe,
            call.home,
            call.invite.clone(),
            call.call_id.clone(),
        );
        // Sometimes two copies arrive in one read: both are handled, alike.
        let outs = if self.rng.below(4) == 0 {
            self.input(Input::Received {
                conn: self.fes[f],
                bytes: BytesMut::from(invite.repeat(2).as_bytes()),
            });
            let mut outs = self.collect()?;
            ensure!(
                outs.sends.len() == 2 && outs.sends[0] == outs.sends[1],
                "two identical INVITEs in one read gave {:?}",
                outs.sends
            );
            outs.sends.pop();
            outs
        } else {
            self.feed(self.fes[f], invite.as_bytes())?
        };
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, msg) => {
                self.check_route(k, home, Some(j), "retransmitted INVITE")?;
                // The new-call table follows a call set up on a backup.
                self.live_mut(k).unwrap().home = j;
                check_copy(&msg, j, &call_id, self.tag_header)?;
                self.live_mut(k).unwrap().copies.push((j, msg));
            }
            Fate::Frontend(conn, msg) => {
                self.check_refusal(k, conn, &msg)?;
                self.check_route(k, home, None, "retransmitted INVITE")?;
            }
            Fate::Nothing => return Err("retransmitted INVITE got nothing".into()),
        }
        Ok(())
    }

    /// A 503 for call `k` goes back to the caller.
    pub(super) fn check_refusal(&self, k: usize, conn: ConnId, msg: &str) -> Result<(), String> {
        let fe = self.fes[self.live(k).unwrap().fe];
        ensure!(
            conn == fe,
            "reply for call {k} went to {conn:?}, not {fe:?}"
        );
        ensure!(
            msg.starts_with("SIP/2.0 503 No Backend Available\r\n"),
            "expected 503 No Backend Available, got {msg:?}"
        );
        Ok(())
    }

    pub(super) fn cancel(&mut self, k: usize, answer: bool) -> Result<(), String> {
        let call = self.live(k).unwrap();
        let (f, home) = (call.fe, call.home);
        let cancel = format!(
            "CANCEL sip:bob@example.com SIP/2.0\r\n\
             {}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=a{k}\r\n\
             To: <sip:bob@example.com>\r\n\
             Call-ID: {}\r\n\
             CSeq: 1 CANCEL\r\n\
             Content-Length: 0\r\n\r\n",
            fe_via(f, &format!("z9hG4bKi{k}")),
            call.call_id
        );
        let outs = self.feed(self.fes[f], dialect(f, cancel).as_bytes())?;
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, msg) => {
                self.check_route(k, home, Some(j), "CANCEL")?;
                // The new-call table follows a call set up on a backup.
                self.live_mut(k).unwrap().home = j;
                if answer {
                    let outs =
                        self.backend_sends(j, &response_to(&msg, "200 OK"), Some(fe_peer(f)))?;
                    self.expect_at_caller(k, &outs, "SIP/2.0 200 OK")?;
                }
            }
            Fate::Frontend(conn, msg) => {
                self.check_refusal(k, conn, &msg)?;
                self.check_route(k, home, None, "CANCEL")?;
            }
            Fate::Nothing => return Err("CANCEL got nothing".into()),
        }
        Ok(())
    }

    pub(super) fn answer(&mut self, k: usize, who: usize, status: u16) -> Result<(), String> {
        let call = self.live(k).unwrap();
        let up: Vec<&(usize, String)> =
            call.copies.iter().filter(|(j, _)| self.be[*j].up).collect();
        let (j, copy) = up[who % up.len()].clone();
        let f = call.fe;
        let reason = match status {
            180 => "180 Ringing",
            200 => "200 OK",
            _ => "486 Busy Here",
        };
        let outs = self.backend_sends(j, &response_to(&copy, reason), Some(fe_peer(f)))?;
        let msg = self.expect_at_caller(k, &outs, &format!("SIP/2.0 {reason}\r\n"))?;
        let now = self.now;
        let call = self.live_mut(k).unwrap();
        if status >= 200 {
            call.phase = Phase::Final {
                at: now,
                ok: status < 300,
            };
        }
        if status == 200 {
            let rr = msg
                .lines()
                .find(|l| l.starts_with("Record-Route:"))
                .ok_or_else(|| format!("200 without Record-Route at the caller: {msg:?}"))?;
            let tagged = lb_tag(rr).and_then(|t| tag_backend(&t));
            ensure!(
                tagged == Some(j),
                "the 200 from backend {j} carries a tag naming {tagged:?}"
            );
            call.dialog = Some((rr.to_string(), j));
        }
        Ok(())
    }

    pub(super) fn ack_non_2xx(&mut self, k: usize) -> Result<(), String> {
        let call = self.live(k).unwrap();
        let (f, home) = (call.fe, call.home);
        let ack = format!(
            "ACK sip:bob@example.com SIP/2.0\r\n\
             {}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=a{k}\r\n\
             To: <sip:bob@example.com>;tag={CALLEE_TAG}\r\n\
             Call-ID: {}\r\n\
             CSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            fe_via(f, &format!("z9hG4bKi{k}")),
            call.call_id
        );
        let dropped = self.lb.stats().dropped;
        let outs = self.feed(self.fes[f], dialect(f, ack).as_bytes())?;
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, _) => {
                self.check_route(k, home, Some(j), "ACK of a non-2xx")?;
                self.live_mut(k).unwrap().home = j;
                Ok(())
            }
            Fate::Frontend(conn, msg) => Err(format!("an ACK was answered on {conn:?}: {msg:?}")),
            Fate::Nothing => {
                ensure!(
                    self.lb.stats().dropped == dropped + 1,
                    "ACK vanished uncounted"
                );
                self.check_route(k, home, None, "ACK of a non-2xx")
            }
        }
    }

    pub(super) fn in_dialog(
        &mut self,
        k: usize,
        method: DialogMethod,
        answer: bool,
        route: u8,
    ) -> Result<(), String> {
        let Some(call) = self.live_mut(k) else {
            return Ok(());
        };
        let Some((rr, tagged)) = call.dialog.clone() else {
            return Ok(());
        };
        call.cseq += 1;
        let (f, cseq, call_id) = (call.fe, call.cseq, call.call_id.clone());
        let variant = if self.tag_header {
            route % 4
        } else {
            route % 3
        };
        let route = rr.replacen("Record-Route:", "Route:", 1);
        // The route set as the caller may write it: the balancer alone, the balancer then a
        // second proxy (one header or two), or (with the extension header) the tag alone.
        let routing = match variant {
            0 => route,
            1 => format!("{route}, <sip:proxy2.example.net;lr>"),
            2 => format!("{route}\r\nRoute: <sip:proxy2.example.net;lr>"),
            _ => format!("{TAG_HEADER}: {}", lb_tag(&rr).unwrap_or_default()),
        };
        let name = method.name();
        let request = format!(
            "{name} sip:bob@198.51.100.1:5060;transport=tcp SIP/2.0\r\n\
             {}\r\n\
             {routing}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=a{k}\r\n\
             To: <sip:bob@example.com>;tag={CALLEE_TAG}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {name}\r\n\
             Content-Length: 0\r\n\r\n",
            fe_via(f, &format!("z9hG4bKd{k}.{cseq}")),
            call_id
        );
        let outs = self.feed(self.fes[f], dialect(f, request).as_bytes())?;
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, msg) => {
                self.check_route(k, tagged, Some(j), name)?;
                let routes: Vec<&str> = msg.lines().filter(|l| l.starts_with("Route:")).collect();
                let rest: &[&str] = match variant {
                    1 | 2 => &["Route: <sip:proxy2.example.net;lr>"],
                    _ => &[],
                };
                ensure!(
                    routes == rest,
                    "the balancer's Route entry was not popped cleanly: {routes:?} left of \
                     {msg:?}"
                );
                if answer && method != DialogMethod::Ack {
                    let outs =
                        self.backend_sends(j, &response_to(&msg, "200 OK"), Some(fe_peer(f)))?;
                    self.expect_at_caller(k, &outs, "SIP/2.0 200 OK")?;
                }
                Ok(())
            }
            Fate::Frontend(conn, msg) => {
                ensure!(method != DialogMethod::Ack, "an ACK was answered: {msg:?}");
                self.check_refusal(k, conn, &msg)?;
                self.check_route(k, tagged, None, name)
            }
            Fate::Nothing => {
                ensure!(
                    method == DialogMethod::Ack,
                    "{name} got nothing: {:?}",
                    outs.events
                );
                self.check_route(k, tagged, None, name)
            }
        }
    }

    /// The backend serving a dialog named `tagged`: the one the routing rule gives, if known.
    pub(super) fn serving(&self, k: usize, tagged: usize) -> Option<usize> {
        if self.be[tagged].up {
            return Some(tagged);
        }
        if let Some(b) = self.backup_of[tagged].filter(|b| self.be[*b].up) {
            return Some(b);
        }
        let up = self.up_mask();
        self.backups[k]
            .iter()
            .rev()
            .find(|(m, _)| *m == up)
            .map(|(_, b)| *b)
    }

    pub(super) fn backend_bye(&mut self, k: usize, by_route: bool) -> Result<(), String> {
        let Some(call) = self.live(k).filter(|c| c.bye.is_none()) else {
            return Ok(());
        };
        let Some((rr, tagged)) = call.dialog.clone() else {
            return Ok(());
        };
        let Some(j) = self.serving(k, tagged) else {
            return Ok(());
        };
        let (f, cseq, call_id) = (call.fe, call.cseq + 100, call.call_id.clone());
        let route = rr.replacen("Record-Route:", "Route:", 1);
        // The next hop by the Request-URI (the caller's Contact), or by a second Route entry
        // naming the caller's proxy while the Request-URI names a host beyond it.
        let (target, routing) = if by_route {
            (
                "10.9.9.9".to_string(),
                format!("{route}, <sip:{}:5060;transport=tcp;lr>", fe_peer(f).ip()),
            )
        } else {
            (fe_peer(f).ip().to_string(), route)
        };
        let bye = format!(
            "BYE sip:alice@{target}:5060;transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP 198.51.100.{}:5060;branch=z9hG4bKb{k}.{cseq}\r\n\
             {routing}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:bob@example.com>;tag={CALLEE_TAG}\r\n\
             To: <sip:alice@example.com>;tag=a{k}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} BYE\r\n\
             Content-Length: 0\r\n\r\n",
            j + 1,
            call_id
        );
        let outs = self.backend_sends(j, &bye, Some(fe_peer(f)))?;
        let msg = self.expect_at_caller(k, &outs, "BYE sip:alice@")?;
        let routes: Vec<&str> = msg.lines().filter(|l| l.starts_with("Route:")).collect();
        let rest = format!("Route: <sip:{}:5060;transport=tcp;lr>", fe_peer(f).ip());
        ensure!(
            routes
                == if by_route {
                    vec![rest.as_str()]
                } else {
                    vec![]
                },
            "the balancer's Route entry was not popped cleanly: {routes:?} left of {msg:?}"
        );
        let top = msg.lines().find(|l| l.starts_with("Via:")).unwrap_or("");
        let named = lb_tag(top).and_then(|t| tag_backend(&t));
        ensure!(
            named == Some(j),
            "the balancer's Via on a BYE from backend {j} names {named:?}: {top}"
        );
        ensure!(
            msg.matches("\r\nVia:").count() == 2,
            "expected the balancer's Via on top of the backend's: {msg:?}"
        );
        self.live_mut(k).unwrap().bye = Some((msg, j));
        Ok(())
    }

    pub(super) fn caller_ok(&mut self, k: usize) -> Result<(), String> {
        let Some(call) = self.live_mut(k) else {
            return Ok(());
        };
        let Some((bye, sender)) = call.bye.take() else {
            return Ok(());
        };
        let f = call.fe;
        let dropped = self.lb.stats().dropped;
        let outs = self.feed(
            self.fes[f],
            dialect(f, response_to(&bye, "200 OK")).as_bytes(),
        )?;
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, msg) => {
                self.check_route(k, sender, Some(j), "the caller's 200 to a BYE")?;
                ensure!(
                    msg.lines()
                        .filter(|l| l.starts_with("Via:") || l.starts_with("v:"))
                        .count()
                        == 1
                        && !msg.contains(";lb="),
                    "the balancer's Via was not stripped: {msg:?}"
                );
                Ok(())
            }
            Fate::Frontend(conn, msg) => {
                Err(format!("a response was answered on {conn:?}: {msg:?}"))
            }
            Fate::Nothing => {
                ensure!(
                    self.lb.stats().dropped == dropped + 1,
                    "a response vanished uncounted"
                );
                self.check_route(k, sender, None, "the caller's 200 to a BYE")
            }
        }
    }
}
