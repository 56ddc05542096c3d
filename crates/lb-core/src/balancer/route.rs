//! Routing: where each message goes (docs/design.md, "Routing by connection kind").
//!
//! - A request on a frontend connection whose top Route is the balancer's own entry: the tag
//!   names the backend. A *backend-facing* tag there (`lb=b…`, only ever written toward
//!   backends, see `tag`) means the request comes from that backend over a connection of its own
//!   (a stack that does not reuse the balancer's connection): it is routed as that backend's
//!   request. A frontend sees only frontend-facing tags, so it cannot pass for a backend.
//! - A response on a frontend connection carries the balancer's own Via: its tag names the
//!   backend, its `lbc` token the connection the request came on.
//! - An untagged request: the new-call table, else a new call.
//! - From a backend: responses go upstream by the envelope address, else the Via; requests go
//!   to the next Route entry or the Request-URI, over an open connection or a new one.
//!
//! Every forwarded request has its Max-Forwards decremented (RFC 3261 §16.6 step 3), so a loop
//! through a misconfigured peer ends with a 483 instead of circling.

use super::hops::{self, literal_addr, stamp_via, via_addr};
use super::*;
use crate::failover;
use crate::message::Span;
use crate::new_call_table::Refused;
use crate::source::SourceKey;
use crate::tag::Facing;

/// [`crate::stats::REQUEST_SOURCES`] indexes.
const REQUEST_FROM_FRONTEND: usize = 0;
pub(super) const REQUEST_FROM_BACKEND: usize = 1;

impl Balancer {
    pub(super) fn route_frontend_request(&mut self, source: Source, message: SipMessage) {
        self.note_frontend_message(source.conn);
        let call_id = message.call_id();
        let method = message.method().unwrap_or(Method::Other);
        let mut target = None;
        let mut initial = false;
        let mut table_key = None;
        let mut edits = Edits::new();

        if let Some(tag) = message.request_uri_lb {
            // A strict router upstream sent the request to the balancer's own Record-Route
            // URI and moved the real target into the last Route entry (RFC 3261 §16.4):
            // restore it and take the tag from the URI.
            let tag = message.slice(tag);
            if let Some((backend, Facing::Frontends)) = self.verify_facing(tag, call_id) {
                target = Some(backend);
                if let (StartLine::Request { uri, .. }, Some(last)) = (
                    message.start,
                    crate::message::last_route(&message.bytes, message.start_line_end as usize),
                ) {
                    edits.push(Edit {
                        at: uri.start,
                        cut: uri.end - uri.start,
                        insert: Insertion::Copy(last.uri),
                    });
                    edits.push(Edit::cut(last.cut));
                }
            }
        }
        if let Some((route, tag)) = message
            .top_route
            .and_then(|r| r.lb.map(|tag| (r, message.slice(tag))))
        {
            match self.verify_facing(tag, call_id) {
                Some((backend, Facing::Backends)) => {
                    self.stats.backend_requests_in += 1;
                    self.count_request(REQUEST_FROM_BACKEND, &message);
                    return self.route_backend_request(source, backend, message);
                }
                Some((backend, Facing::Frontends)) => target = target.or(Some(backend)),
                None => {}
            }
            // The balancer's own entry: a loose router removes it (RFC 3261 §16.4). After a
            // strict router the last entry is cut instead; a sole entry would be cut twice.
            if message.request_uri_lb.is_none() {
                edits.push(cut_entry(
                    route.line,
                    route.sole_entry,
                    route.entry_with_comma,
                ));
            }
        }
        self.stats.frontend_requests_in += 1;
        self.count_request(REQUEST_FROM_FRONTEND, &message);
        if !self.passes_sanity(source, &message) {
            return;
        }
        self.learn_alias(source.conn, &message);
        let Some(hops) = self.hop_limit(source, &message) else {
            return;
        };
        edits.push(hops);
        if target.is_none() {
            if let Some(span) = message.tag_header {
                target = self.verify(message.slice(span), call_id);
            }
        }
        if target.is_some() {
            self.stats.tagged += 1;
        } else {
            let key = self.table.key(call_id);
            table_key = Some(key);
            initial = !message.to_tag
                && !matches!(method, Method::Ack | Method::Cancel | Method::Register);
            if let Some(backend) = self.table.lookup(key) {
                self.stats.table_hits += 1;
                target = Some(backend);
            } else {
                if method == Method::Ack {
                    return self.drop_message(source.conn, DropCause::AckOfUnknownCall);
                }
                // A CANCEL of a call never seen, or an in-dialog request (To tag) without a tag
                // that verifies: no backend can own it, and making it a new call would let
                // forged requests fill the table.
                if method == Method::Cancel || message.to_tag {
                    self.stats.replies_481 += 1;
                    self.reply(source, &message.bytes, Reply::NoTransaction);
                    return;
                }
                let Some(backend) = self.choose_backend() else {
                    if self.farm_held() {
                        // Every backend with calls is busy: push back (RFC 6357), the caller
                        // retries after Retry-After; no backend is failed over.
                        self.stats.overload_refused += 1;
                        return self.unavailable(source, &message, DropCause::BackendsOverloaded);
                    }
                    return self.unavailable(source, &message, DropCause::NoBackendAvailable);
                };
                let ringing = method == Method::Invite;
                // A frontend request always has its peer; the unspecified address is a
                // bucket no real peer shares.
                let from = source
                    .peer
                    .map_or(SourceKey::V4(0), |p| SourceKey::from(p.ip()));
                let inserted =
                    self.table
                        .insert(self.now, key, backend, ringing, source.conn, from);
                self.judge_unanswered();
                match inserted {
                    Ok(()) => {}
                    Err(Refused::Full) => {
                        return self.unavailable(
                            source,
                            &message,
                            DropCause::TooManyCallsBeingSetUp,
                        );
                    }
                    Err(Refused::OverShare) => {
                        self.stats.table_share_refused += 1;
                        let reason = DropCause::TooManyCallsOnThisConnection;
                        return self.unavailable(source, &message, reason);
                    }
                    Err(Refused::OverSourceShare) => {
                        self.stats.table_share_refused += 1;
                        let reason = DropCause::TooManyCallsFromThisAddress;
                        return self.unavailable(source, &message, reason);
                    }
                }
                self.stats.new_calls += 1;
                target = Some(backend);
            }
        }
        let Some(tagged_backend) = target else { return };
        let Some(backend) = self.available(tagged_backend, call_id) else {
            if method == Method::Ack {
                return self.drop_message(source.conn, DropCause::AckForDownBackend);
            }
            return self.unavailable(source, &message, DropCause::NoBackendAvailable);
        };
        if let Some(key) = table_key.filter(|_| backend != tagged_backend) {
            // The call continues on the backup; its later untagged messages must follow it.
            self.table.reassign(key, backend);
        }

        if let Some(peer) = source.peer {
            stamp_via(&message, peer, &mut edits);
        }
        // Right above the top Via, so the Via lines stay together (a peer reading "the Via
        // block" as one run of lines still gets them all).
        edits.push(Edit::insert(
            message.top_via.line.start,
            Insertion::ProxyVia {
                branch: self.proxy_branch(&message, source.conn),
                came_on: source.conn,
                sent_us: self.tokens.stamp(self.now),
            },
        ));
        if initial {
            edits.push(Edit::insert(message.start_line_end, Insertion::RecordRoute));
            if self.config.config.tag_header.is_some() {
                edits.push(Edit::insert(message.start_line_end, Insertion::TagHeader));
            }
        }
        let envelope = Envelope {
            addr: source.peer,
            transport: Transport::Tcp,
            load: None,
        };
        self.forward_to_backend(backend, envelope, &message, &mut edits);
    }

    pub(super) fn route_frontend_response(&mut self, source: Source, message: SipMessage) {
        self.note_frontend_message(source.conn);
        let via = message.top_via;
        let Some(tag) = via.lb else {
            return self.drop_message(source.conn, DropCause::ResponseWithoutOwnVia);
        };
        let Some(tagged) = self.verify(message.slice(tag), message.call_id()) else {
            return self.drop_message(source.conn, DropCause::ResponseWithBadTag);
        };
        self.stats.tagged += 1;
        let mut edits = Edits::new();
        edits.push(cut_entry(via.line, via.sole_value, via.value_with_comma));
        // The request came on a connection the backend opened: the answer goes back on it.
        let came_on = via
            .lbc
            .and_then(|t| self.tokens.verify(message.slice(t), message.call_id()))
            .map(|t| t.conn)
            .filter(|c| self.conn(*c).is_some_and(|c| !c.closing));
        if let Some(conn) = came_on {
            self.stats.to_backend += 1;
            self.send_rewritten(conn, tagged, &message, &mut edits, None);
            return;
        }
        let Some(backend) = self.available(tagged, message.call_id()) else {
            return self.drop_message(source.conn, DropCause::ResponseForDownBackend);
        };
        let envelope = Envelope {
            addr: source.peer,
            transport: Transport::Tcp,
            load: None,
        };
        self.forward_to_backend(backend, envelope, &message, &mut edits);
    }

    pub(super) fn route_backend_response(
        &mut self,
        source: Source,
        backend: BackendId,
        message: SipMessage,
    ) {
        let mut edits = Edits::new();
        if let StartLine::Response { status } = message.start {
            if message.cseq_method == Method::Invite {
                // Any response shows the backend alive (passive health); a final one ends the
                // ringing.
                let key = self.table.key(message.call_id());
                self.table.answered(key);
                self.invite_answered(backend);
                if status >= 200 {
                    self.table.settle(self.now, key);
                }
            }
            if message.cseq_method == Method::Invite && status == 503 {
                self.note_overload(backend, &message);
                // RFC 3261 §16.7 step 6: a 503 goes upstream only when every later request
                // would get one too; otherwise it becomes a 500, so the proxy retries the call
                // (landing on another backend) instead of treating the whole farm as down.
                let farm_can_take_calls =
                    (0..self.backends.len()).any(|i| self.takes_new_calls(BackendId::new(i)));
                if farm_can_take_calls {
                    edits.push(Edit {
                        at: 0,
                        cut: message.start_line_end,
                        insert: Insertion::Raw(b"SIP/2.0 500 Server Internal Error\r\n"),
                    });
                }
            }
        }
        let via = message.top_via;
        let mut came_on = None;
        if let Some(token) = via.lbc {
            // The balancer's own Via: it names the frontend connection the request came on.
            edits.push(cut_entry(via.line, via.sole_value, via.value_with_comma));
            came_on = self.tokens.verify(message.slice(token), message.call_id());
        }
        self.count_backend_response(backend, &message, came_on);
        let came_on = came_on.map(|t| t.conn);
        // Back on the connection the request came on, and no other (RFC 3261 §18.2.2). If it is
        // gone: a new connection to the address the next Via names (`received`, `rport`),
        // never some other connection that happens to share an address or a name.
        let conn = match came_on.filter(|c| self.is_open(*c)) {
            Some(conn) => Some(conn),
            None => {
                let to = if via.lbc.is_some() {
                    // Our Via was on top: the next one is the frontend's.
                    crate::message::second_via(&message.bytes, message.start_line_end as usize)
                        .and_then(|v| via_addr(&message, &v))
                } else {
                    // A backend that dropped our Via: its envelope, else the top Via.
                    source
                        .envelope
                        .and_then(|e| e.addr)
                        .or_else(|| via_addr(&message, &via))
                };
                to.and_then(|to| self.dial(to))
            }
        };
        let Some(conn) = conn else {
            return self.drop_message(source.conn, DropCause::NoConnectionToNextHop);
        };
        if !self.has_room(conn) {
            return self.drop_message(source.conn, DropCause::NextHopQueueFull);
        }
        if let Some(uri) = message.own_record_route {
            // The backend echoed the entry it saw; upstream sees the frontend-facing one, in
            // the transport of the connection it goes to.
            edits.push(Edit {
                at: uri.start,
                cut: uri.end - uri.start,
                insert: Insertion::FrontendRouteUri {
                    tls: self.is_tls(conn),
                },
            });
        }
        self.count_to_frontend(conn);
        if edits.is_empty() {
            // Nothing to change: the received bytes go out as they are, without a copy.
            return self.send(conn, message.bytes);
        }
        self.send_rewritten(conn, backend, &message, &mut edits, None);
    }

    /// A request `backend` originated, on its own connection to the balancer or on one it
    /// opened (`source`), to the frontend its route names.
    pub(super) fn route_backend_request(
        &mut self,
        source: Source,
        backend: BackendId,
        message: SipMessage,
    ) {
        let Some(hops) = self.hop_limit(source, &message) else {
            return;
        };
        let mut edits = Edits::new();
        edits.push(hops);
        let mut next = message.top_route.map(|r| r.host_port);
        if let Some(route) = message.top_route.filter(|r| r.lb.is_some()) {
            edits.push(cut_entry(
                route.line,
                route.sole_entry,
                route.entry_with_comma,
            ));
            next = message.second_route;
        }
        let next = next.or(message.request_uri_host);
        let named = source.envelope.and_then(|e| e.addr);
        let found = named
            .and_then(|addr| self.hops.lookup_addr(addr))
            .or_else(|| next.and_then(|hp| self.host_port_hop(&message, hp)));
        if found == Some(source.conn) || next.is_some_and(|hp| self.names_balancer(&message, hp)) {
            return self.refuse_loop(source, &message);
        }
        let conn = match found.filter(|c| self.conn(*c).is_some_and(|c| !c.closing)) {
            Some(conn) => conn,
            None => {
                let dialled = match (named, next) {
                    (Some(to), _) => self.dial(to),
                    (None, Some(hp)) => match literal_addr(&message, hp) {
                        Some(to) => self.dial(to),
                        None => self.dial_name(message.slice(hp.host), hp.port),
                    },
                    (None, None) => {
                        return self.unroutable(source, &message, DropCause::NoRouteToFrontend);
                    }
                };
                let Some(conn) = dialled else {
                    self.stats.dial_out_refused += 1;
                    return self.unroutable(source, &message, DropCause::CannotReachNextHop);
                };
                conn
            }
        };
        if !self.has_room(conn) {
            self.stats.dial_out_refused += 1;
            return self.unroutable(source, &message, DropCause::NextHopStillConnecting);
        }
        if message.method() != Some(Method::Ack) {
            self.note_dialled_request(conn, source.conn, &message.bytes);
        }
        let branch = message
            .top_via
            .branch
            .map_or(message.call_id(), |b| message.slice(b));
        let mut hasher = SipHasher13::new_with_key(&self.branch_key);
        hasher.write(branch);
        let own_conn = self.backends[backend.index()].conn == Some(source.conn);
        edits.push(Edit::insert(
            message.top_via.line.start,
            Insertion::OwnVia {
                branch: hasher.finish(),
                came_on: (!own_conn).then_some(source.conn),
                tls: self.is_tls(conn),
                sent_us: self.tokens.stamp(self.now),
            },
        ));
        self.count_to_frontend(conn);
        self.send_rewritten(conn, backend, &message, &mut edits, None);
    }

    /// Requests by method, and per backend responses by class and response times.
    pub fn figures(&self) -> &crate::stats::Figures {
        &self.telemetry.figures
    }

    /// One request received, for the per-method counts.
    pub(super) fn count_request(&mut self, from: usize, message: &SipMessage) {
        if let StartLine::Request { method_span, .. } = message.start {
            self.telemetry
                .count_request(from, message.slice(method_span));
        }
    }

    /// One response from `backend`, for the per-class counts and, when it carries the
    /// balancer's own Via with a send time (`token`), the response-time histograms.
    fn count_backend_response(
        &mut self,
        backend: BackendId,
        message: &SipMessage,
        token: Option<crate::conn_token::Token>,
    ) {
        let StartLine::Response { status } = message.start else {
            return;
        };
        let timed = token.and_then(|t| {
            let elapsed_us = self.tokens.elapsed_us(&t, self.now)?;
            Some(crate::stats::Timed {
                elapsed_us,
                key: t.mac,
            })
        });
        self.telemetry
            .count_response(backend.index(), status, timed);
    }

    /// The Max-Forwards edit of a request the balancer forwards: the value less one, or a
    /// `Max-Forwards: 70` where there was none (RFC 3261 §16.6 step 3). At zero the request
    /// goes no further: 483 (§16.3 item 3), or dropped for an ACK, which has no response.
    fn hop_limit(&mut self, source: Source, message: &SipMessage) -> Option<Edit> {
        match message.max_forwards {
            None => Some(Edit::insert(message.start_line_end, Insertion::MaxForwards)),
            Some((span, left)) if left > 0 => Some(Edit {
                at: span.start,
                cut: span.end - span.start,
                insert: Insertion::Decimal(left - 1),
            }),
            Some(_) => {
                if message.method() == Some(Method::Ack) {
                    self.drop_message(source.conn, DropCause::AckMaxForwardsZero);
                } else if self.reply(source, &message.bytes, Reply::TooManyHops) {
                    self.stats.replies_483 += 1;
                }
                None
            }
        }
    }

    /// 482 for a request that would go back where it came from.
    fn refuse_loop(&mut self, source: Source, message: &SipMessage) {
        if message.method() == Some(Method::Ack) {
            return self.drop_message(source.conn, DropCause::AckWouldLoop);
        }
        if self.reply(source, &message.bytes, Reply::LoopDetected) {
            self.stats.replies_482 += 1;
        }
    }

    /// 503 for a backend's request with no way to its frontend (never for ACK).
    fn unroutable(&mut self, source: Source, message: &SipMessage, reason: DropCause) {
        if message.method() == Some(Method::Ack) {
            return self.drop_message(source.conn, DropCause::AckNoRouteToFrontend);
        }
        self.unavailable(source, message, reason);
    }

    /// Whether `hp` names the balancer itself: one of its advertised addresses or listeners.
    fn names_balancer(&self, message: &SipMessage, hp: HostPort) -> bool {
        let host = message.slice(hp.host);
        let port = hp.port.unwrap_or(5060);
        let advertised = [&self.config.advertise, &self.config.advertise_backend];
        if advertised
            .iter()
            .any(|a| hops::same_host_port(a, host, port))
        {
            return true;
        }
        hops::parse_ip(host).is_some_and(|ip| {
            self.config
                .config
                .listeners
                .iter()
                .any(|l| l.ip() == ip && l.port() == port)
        })
    }

    /// The balancer's Via branch for a request from `conn`: a keyed hash of the frontend's
    /// branch, the Call-ID and the connection, so a retransmission, its CANCEL and the ACK of
    /// a failure get the same one (RFC 3261 §16.11), and no other connection can produce it
    /// (a CANCEL copied by another peer matches no transaction at the backend).
    fn proxy_branch(&self, message: &SipMessage, conn: ConnId) -> u64 {
        let mut hasher = SipHasher13::new_with_key(&self.branch_key);
        if let Some(b) = message.top_via.branch {
            hasher.write(message.slice(b));
        }
        hasher.write(message.call_id());
        let (slot, generation) = conn.parts();
        hasher.write_u32(slot);
        hasher.write_u32(generation);
        hasher.finish()
    }

    fn host_port_hop(&self, message: &SipMessage, hp: HostPort) -> Option<ConnId> {
        self.hops
            .lookup_host(message.slice(hp.host), hp.port.unwrap_or(5060))
    }

    pub(super) fn verify(&mut self, tag: &[u8], call_id: &[u8]) -> Option<BackendId> {
        self.verify_facing(tag, call_id).map(|(backend, _)| backend)
    }

    fn verify_facing(&mut self, tag: &[u8], call_id: &[u8]) -> Option<(BackendId, Facing)> {
        match self.signer.verify_facing(tag, call_id) {
            Ok((b, facing)) if b.index() < self.backends.len() => Some((b, facing)),
            Ok(_) | Err(_) => {
                self.stats.tag_failures += 1;
                None
            }
        }
    }

    /// A backend for a new call among those that take new calls (see `farm`) and, of those,
    /// the ones of the lowest priority: RFC 2782's standbys wait until every backend of a
    /// lower priority is out (`BackendConfig::priority`).
    pub(super) fn choose_backend(&mut self) -> Option<BackendId> {
        let mut candidates: SmallVec<[Candidate; 16]> = SmallVec::new();
        let mut lowest = u16::MAX;
        for i in 0..self.backends.len() {
            let id = BackendId::new(i);
            if self.takes_new_calls(id) {
                let config = &self.config.config.backends[i];
                if config.priority > lowest {
                    continue;
                }
                if config.priority < lowest {
                    lowest = config.priority;
                    candidates.clear();
                }
                let load = match self.backends[i].load {
                    Some(l) => u64::from(l),
                    None => u64::from(self.table.assigned(id)),
                };
                let weight = config.weight;
                candidates.push(Candidate { id, weight, load });
            }
        }
        self.selector.select(&candidates, &mut self.rng)
    }

    /// `backend` if it is up, else its backup (`failover`), counted as a failover. Draining
    /// backends count as up: they still serve calls.
    pub(super) fn available(&mut self, backend: BackendId, call_id: &[u8]) -> Option<BackendId> {
        if self.is_backend_up(backend) {
            return Some(backend);
        }
        let fixed = self.config.backups[backend.index()];
        let is_up = |b: BackendId| self.is_backend_up(b);
        let backup = failover::backup(
            fixed,
            self.backends.len(),
            is_up,
            self.rendezvous_key,
            call_id,
        );
        if backup.is_some() {
            self.stats.to_backup += 1;
        }
        backup
    }
}

/// The edit removing a Route entry or Via value: the whole line when it is the only one there.
fn cut_entry(line: Span, sole: bool, with_comma: Span) -> Edit {
    Edit::cut(if sole { line } else { with_comma })
}
