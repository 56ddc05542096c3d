//! The event loop: connections, calls, and three timer FIFOs.
//!
//! Every timer here is "now + a constant" (retransmission delay, hold, transaction timeout), so
//! each kind is a FIFO already in deadline order; stale entries are skipped by checking the
//! call's state when they come up.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use lb_backend::sip::{frame_len, list_entries, param, uri_of, Message, StartLine};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use crate::msg::{call_number, Dialog};
use crate::{Config, Limit, LoadgenError, Progress, Report};

/// Runs the load described by `config`, calling `progress` about once a second, and returns the
/// report once every call has finished or timed out.
pub fn run(config: &Config, progress: &mut dyn FnMut(&Progress)) -> Result<Report, LoadgenError> {
    if config.connections == 0 {
        return Err(LoadgenError::Config("connections must be at least 1"));
    }
    if config.rate <= 0.0 && config.max_active == 0 {
        return Err(LoadgenError::Config(
            "an unlimited rate needs a limit on active calls",
        ));
    }
    let mut engine = Engine::new(config)?;
    engine.run(progress)?;
    Ok(engine.report)
}

struct Conn {
    stream: TcpStream,
    local: String,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wants_write: bool,
    alive: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Inviting,
    Holding,
    ByeSent,
}

struct Call {
    conn: usize,
    state: State,
    /// Bumped on every state change, so a timeout armed for an earlier state is ignored.
    seq: u32,
    backend: Option<usize>,
    violated: bool,
    to_tag: String,
    route: Vec<String>,
    remote_target: String,
}

struct Engine<'c> {
    config: &'c Config,
    poll: Poll,
    conns: Vec<Conn>,
    target: String,
    run: u64,
    calls: HashMap<u64, Call>,
    next_id: u64,
    next_conn: usize,
    retransmits: VecDeque<(Instant, u64)>,
    holds: VecDeque<(Instant, u64)>,
    timeouts: VecDeque<(Instant, u64, u32)>,
    backends: Vec<String>,
    report: Report,
    scratch: Vec<u8>,
}

impl<'c> Engine<'c> {
    fn new(config: &'c Config) -> Result<Engine<'c>, LoadgenError> {
        let poll = Poll::new().map_err(|e| LoadgenError::Io("creating the poller", e))?;
        let mut conns = Vec::with_capacity(config.connections);
        for i in 0..config.connections {
            // A blocking connect first, so a balancer that is not there is an error at once.
            let std_stream = std::net::TcpStream::connect(config.target)
                .map_err(|e| LoadgenError::Io("connecting to the balancer", e))?;
            std_stream
                .set_nodelay(true)
                .and_then(|()| std_stream.set_nonblocking(true))
                .map_err(|e| LoadgenError::Io("configuring a connection", e))?;
            let local = std_stream
                .local_addr()
                .map_err(|e| LoadgenError::Io("reading the local address", e))?
                .to_string();
            let mut stream = TcpStream::from_std(std_stream);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .map_err(|e| LoadgenError::Io("registering a connection", e))?;
            conns.push(Conn {
                stream,
                local,
                rbuf: vec![0; READ_BUF],
                rstart: 0,
                rend: 0,
                wbuf: Vec::with_capacity(64 * 1024),
                wants_write: false,
                alive: true,
            });
        }
        // Call-IDs must not repeat across runs against the same balancer (its new-call table
        // outlives a run), so the run number mixes the process id and the start time.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let run = (u64::from(std::process::id()) << 40) ^ (nanos & 0xff_ffff_ffff);
        Ok(Engine {
            config,
            poll,
            conns,
            target: config.target.to_string(),
            run,
            calls: HashMap::new(),
            next_id: 0,
            next_conn: 0,
            retransmits: VecDeque::new(),
            holds: VecDeque::new(),
            timeouts: VecDeque::new(),
            backends: Vec::new(),
            report: Report::default(),
            scratch: Vec::with_capacity(1024),
        })
    }

    fn run(&mut self, progress: &mut dyn FnMut(&Progress)) -> Result<(), LoadgenError> {
        let mut events = Events::with_capacity(256);
        let start = Instant::now();
        let mut next_progress = start + PROGRESS_EVERY;
        let interval =
            (self.config.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / self.config.rate));
        let mut started_all_at = None;
        loop {
            let now = Instant::now();
            // 1. Start the calls that are due.
            if started_all_at.is_none() {
                let done = match self.config.limit {
                    Limit::Calls(n) => self.next_id >= n,
                    Limit::Duration(d) => now >= start + d,
                };
                if done {
                    started_all_at = Some(now);
                } else {
                    self.start_due_calls(start, now, interval);
                }
            }
            // 2. Timers.
            self.fire_timers(now);
            self.flush_all();
            if now >= next_progress {
                progress(&self.progress(start, now));
                next_progress += PROGRESS_EVERY;
            }
            if started_all_at.is_some() && self.calls.is_empty() {
                break;
            }
            if self.conns.iter().all(|c| !c.alive) {
                return Err(LoadgenError::AllConnectionsLost);
            }
            // 3. Wait for input or the next deadline.
            let mut deadline = next_progress;
            if started_all_at.is_none() {
                if let Some(interval) = interval {
                    deadline = deadline.min(start + interval.mul_f64(self.next_id as f64));
                }
            }
            let fronts = [
                self.retransmits.front().map(|t| t.0),
                self.holds.front().map(|t| t.0),
                self.timeouts.front().map(|t| t.0),
            ];
            for at in fronts.into_iter().flatten() {
                deadline = deadline.min(at);
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            match self.poll.poll(&mut events, Some(wait)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(LoadgenError::Io("polling", e)),
            }
            for event in &events {
                let i = event.token().0;
                if event.is_writable() {
                    self.flush(i);
                }
                if event.is_readable() || event.is_read_closed() || event.is_error() {
                    self.read(i);
                }
            }
        }
        self.report.elapsed = start.elapsed();
        progress(&self.progress(start, Instant::now()));
        Ok(())
    }

    fn progress(&self, start: Instant, now: Instant) -> Progress {
        Progress {
            elapsed: now.duration_since(start),
            started: self.next_id,
            ok: self.report.calls_ok,
            failed: self.report.calls_failed,
            active: self.calls.len() as u64,
            affinity_violations: self.report.affinity_violations,
        }
    }

    fn start_due_calls(&mut self, start: Instant, now: Instant, interval: Option<Duration>) {
        let mut budget = CALLS_PER_WAKEUP;
        while budget > 0 {
            if let Limit::Calls(n) = self.config.limit {
                if self.next_id >= n {
                    return;
                }
            }
            if self.config.max_active > 0 && self.calls.len() >= self.config.max_active {
                return;
            }
            if let Some(interval) = interval {
                if start + interval.mul_f64(self.next_id as f64) > now {
                    return;
                }
            }
            self.start_call(now);
            budget -= 1;
        }
    }

    fn start_call(&mut self, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let n = self.conns.len();
        let Some(conn) = (0..n)
            .map(|k| (self.next_conn + k) % n)
            .find(|&c| self.conns[c].alive)
        else {
            return;
        };
        self.next_conn = (conn + 1) % n;
        self.write_invite(conn, id);
        self.calls.insert(
            id,
            Call {
                conn,
                state: State::Inviting,
                seq: 0,
                backend: None,
                violated: false,
                to_tag: String::new(),
                route: Vec::new(),
                remote_target: String::new(),
            },
        );
        self.timeouts.push_back((now + self.config.timeout, id, 0));
        let every = self.config.retransmit_every;
        if every > 0 && id % every == every - 1 {
            let delay = self.config.retransmit_delay.min(self.config.hold / 2);
            self.retransmits.push_back((now + delay, id));
        }
    }

    fn write_invite(&mut self, conn: usize, id: u64) {
        let c = &mut self.conns[conn];
        let dialog = Dialog {
            run: self.run,
            id,
            target: &self.target,
            local: &c.local,
        };
        dialog.invite(&mut c.wbuf);
        self.report.msgs_sent += 1;
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.retransmits.front() {
            if at > now {
                break;
            }
            self.retransmits.pop_front();
            // Retransmitted while the call is set up or held, never after its BYE: the backend
            // would take a late copy for a new call.
            let conn = match self.calls.get(&id) {
                Some(call) if call.state != State::ByeSent => call.conn,
                _ => continue,
            };
            self.write_invite(conn, id);
            self.report.retransmitted += 1;
        }
        while let Some(&(at, id)) = self.holds.front() {
            if at > now {
                break;
            }
            self.holds.pop_front();
            self.send_bye(now, id);
        }
        while let Some(&(at, id, seq)) = self.timeouts.front() {
            if at > now {
                break;
            }
            self.timeouts.pop_front();
            if self.calls.get(&id).is_some_and(|c| c.seq == seq) {
                self.report.timeouts += 1;
                self.finish(id, false);
            }
        }
    }

    fn send_bye(&mut self, now: Instant, id: u64) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if call.state != State::Holding {
            return;
        }
        call.state = State::ByeSent;
        call.seq += 1;
        let c = &mut self.conns[call.conn];
        let dialog = Dialog {
            run: self.run,
            id,
            target: &self.target,
            local: &c.local,
        };
        dialog.bye(&mut c.wbuf, &call.to_tag, &call.route, &call.remote_target);
        self.report.msgs_sent += 1;
        self.timeouts
            .push_back((now + self.config.timeout, id, call.seq));
    }

    fn finish(&mut self, id: u64, ok: bool) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        if ok {
            self.report.calls_ok += 1;
            if let Some(b) = call.backend {
                *self
                    .report
                    .calls_per_backend
                    .entry(self.backends[b].clone())
                    .or_default() += 1;
            }
        } else {
            self.report.calls_failed += 1;
        }
    }

    /// The call was refused with 503: pushed back, not failed.
    fn reject(&mut self, id: u64) {
        if self.calls.remove(&id).is_some() {
            self.report.calls_rejected += 1;
        }
    }

    fn read(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            if !c.alive {
                return;
            }
            if c.rend == c.rbuf.len() {
                if c.rstart > 0 {
                    c.rbuf.copy_within(c.rstart..c.rend, 0);
                    c.rend -= c.rstart;
                    c.rstart = 0;
                } else {
                    // A message larger than the buffer: the balancer never sends one to us.
                    self.lose(i);
                    return;
                }
            }
            match c.stream.read(&mut c.rbuf[c.rend..]) {
                Ok(0) => {
                    self.lose(i);
                    return;
                }
                Ok(n) => {
                    c.rend += n;
                    if !self.parse_all(i) {
                        self.lose(i);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.lose(i);
                    return;
                }
            }
        }
    }

    /// Handles every whole message buffered on connection `i`; `false` when framing is lost.
    fn parse_all(&mut self, i: usize) -> bool {
        let now = Instant::now();
        loop {
            let c = &mut self.conns[i];
            // CRLF keep-alives (RFC 5626 §4.4.1) between messages.
            while c.rstart < c.rend && matches!(c.rbuf[c.rstart], b'\r' | b'\n') {
                c.rstart += 1;
            }
            let pending = &c.rbuf[c.rstart..c.rend];
            let len = match frame_len(pending) {
                Ok(Some(len)) => len,
                Ok(None) => {
                    if c.rstart == c.rend {
                        c.rstart = 0;
                        c.rend = 0;
                    }
                    return true;
                }
                Err(_) => return false,
            };
            let start = c.rstart;
            c.rstart += len;
            // The message is copied out so that answering it may write to the connection.
            self.scratch.clear();
            self.scratch
                .extend_from_slice(&self.conns[i].rbuf[start..start + len]);
            let bytes = std::mem::take(&mut self.scratch);
            self.handle(now, i, &bytes);
            self.scratch = bytes;
        }
    }

    fn handle(&mut self, now: Instant, conn: usize, bytes: &[u8]) {
        let Ok(msg) = Message::parse(bytes) else {
            return;
        };
        match msg.start {
            StartLine::Request { .. } => self.answer_request(conn, &msg),
            StartLine::Response { code, .. } => self.handle_response(now, &msg, code),
        }
    }

    /// Requests towards us (a backend hanging up) are answered 200 and end the call.
    fn answer_request(&mut self, conn: usize, msg: &Message<'_>) {
        if msg.method() == Some("ACK") {
            return;
        }
        let out = &mut self.conns[conn].wbuf;
        out.extend_from_slice(b"SIP/2.0 200 OK\r\n");
        for (name, value) in &msg.headers {
            let long = lb_backend::sip::long_form(name);
            if ["Via", "From", "To", "Call-ID", "CSeq"]
                .iter()
                .any(|h| h.eq_ignore_ascii_case(long))
            {
                lb_backend::sip::push_header(out, long, value);
            }
        }
        out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
        self.report.msgs_sent += 1;
        if msg.method() == Some("BYE") {
            if let Some(id) = msg.call_id().and_then(|c| call_number(c, self.run)) {
                self.finish(id, true);
            }
        }
    }

    fn handle_response(&mut self, now: Instant, msg: &Message<'_>, code: u16) {
        // Every UAS names itself in the Contact of the responses that make a dialog, 101–299
        // (RFC 3261 §12.1.1); the balancer leaves Contact alone. An error response makes no
        // dialog (a 3xx's Contact is somewhere else, a balancer's own 503 has its own tag).
        let makes_dialog = (101..300).contains(&code);
        let named = msg
            .header("Contact")
            .filter(|_| makes_dialog)
            .map(|c| self.backend_index(backend_key(uri_of(c))));
        let call = msg
            .call_id()
            .and_then(|c| call_number(c, self.run))
            .and_then(|id| Some((id, msg.cseq()?.1)));
        let Some((id, method, call)) =
            call.and_then(|(id, method)| Some((id, method, self.calls.get_mut(&id)?)))
        else {
            // A late answer to a call already finished: counted, nothing else.
            self.count_msg(named);
            return;
        };
        if method == "INVITE" && makes_dialog {
            check_affinity(call, named, msg, &mut self.report.affinity_violations);
        }
        // A response without a Contact (a 100, the 200 to a BYE) comes from the call's backend.
        let from = named.or(call.backend);
        self.count_msg(from);
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if code < 200 {
            return;
        }
        match (method, call.state) {
            ("INVITE", State::Inviting) if code < 300 => {
                call.to_tag = msg
                    .header("To")
                    .and_then(|to| param(to, "tag"))
                    .unwrap_or_default()
                    .to_owned();
                // The UAC's route set is the Record-Route list reversed (RFC 3261 §12.1.2).
                call.route = msg
                    .header_all("Record-Route")
                    .flat_map(list_entries)
                    .map(str::to_owned)
                    .collect();
                call.route.reverse();
                call.remote_target = msg.header("Contact").map_or_else(
                    || format!("sip:service@{}", self.target),
                    |c| uri_of(c).to_owned(),
                );
                call.state = State::Holding;
                call.seq += 1;
                let c = &mut self.conns[call.conn];
                let dialog = Dialog {
                    run: self.run,
                    id,
                    target: &self.target,
                    local: &c.local,
                };
                dialog.ack(
                    &mut c.wbuf,
                    &call.to_tag,
                    &call.route,
                    &call.remote_target,
                    true,
                );
                self.report.msgs_sent += 1;
                self.holds.push_back((now + self.config.hold, id));
                if self.config.hold.is_zero() {
                    self.send_bye(now, id);
                }
            }
            ("INVITE", State::Inviting) => {
                let to_tag = msg
                    .header("To")
                    .and_then(|to| param(to, "tag"))
                    .unwrap_or_default();
                let c = &mut self.conns[call.conn];
                let dialog = Dialog {
                    run: self.run,
                    id,
                    target: &self.target,
                    local: &c.local,
                };
                let uri = dialog.initial_uri();
                dialog.ack(&mut c.wbuf, to_tag, &[], &uri, false);
                self.report.msgs_sent += 1;
                if code == 503 {
                    self.reject(id);
                } else {
                    *self.report.non_2xx.entry(code).or_default() += 1;
                    self.finish(id, false);
                }
            }
            ("BYE", State::ByeSent) => {
                if code >= 300 {
                    *self.report.non_2xx.entry(code).or_default() += 1;
                }
                self.finish(id, code < 300);
            }
            // A 200 repeated for a retransmitted INVITE, or a late answer: only counted above.
            _ => {}
        }
    }

    /// Counts a response for the backend `named`, or as unnamed (e.g. the balancer's own 503).
    fn count_msg(&mut self, named: Option<usize>) {
        match named {
            Some(b) => {
                *self
                    .report
                    .msgs_per_backend
                    .entry(self.backends[b].clone())
                    .or_default() += 1;
            }
            None => self.report.msgs_unnamed += 1,
        }
    }

    fn backend_index(&mut self, name: &str) -> usize {
        match self.backends.iter().position(|b| b == name) {
            Some(i) => i,
            None => {
                self.backends.push(name.to_owned());
                self.backends.len() - 1
            }
        }
    }

    fn flush_all(&mut self) {
        for i in 0..self.conns.len() {
            if !self.conns[i].wbuf.is_empty() && !self.conns[i].wants_write {
                self.flush(i);
            }
        }
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.alive {
            return;
        }
        let mut written = 0;
        while written < c.wbuf.len() {
            match c.stream.write(&c.wbuf[written..]) {
                Ok(0) => break,
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.lose(i);
                    return;
                }
            }
        }
        c.wbuf.drain(..written);
        let wants_write = !c.wbuf.is_empty();
        if wants_write != c.wants_write {
            let interest = if wants_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut c.stream, Token(i), interest)
                .is_err()
            {
                self.lose(i);
                return;
            }
            c.wants_write = wants_write;
        }
    }

    /// The connection is gone: its calls fail now rather than at their timeouts.
    fn lose(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.alive {
            return;
        }
        c.alive = false;
        c.wbuf = Vec::new();
        let _ = self.poll.registry().deregister(&mut c.stream);
        self.report.connections_lost += 1;
        let ids: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, call)| call.conn == i)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.finish(id, false);
        }
    }
}

/// The affinity check for one dialog-making response (101–299) to a call's INVITE, with no help
/// from the backend: every UAS answers an INVITE with its own To tag (RFC 3261 §8.2.6.2) and
/// names itself in the Contact of such a response. A second tag, or a second Contact, means a second UAS answered
/// the same call: the balancer sent a copy of the INVITE to another backend.
fn check_affinity(call: &mut Call, named: Option<usize>, msg: &Message<'_>, violations: &mut u64) {
    let mut violated = false;
    if let Some(b) = named {
        match call.backend {
            None => call.backend = Some(b),
            Some(first) => violated |= first != b,
        }
    }
    if let Some(tag) = msg.header("To").and_then(|to| param(to, "tag")) {
        if call.to_tag.is_empty() {
            tag.clone_into(&mut call.to_tag);
        } else {
            violated |= call.to_tag != tag;
        }
    }
    if violated && !call.violated {
        call.violated = true;
        *violations += 1;
    }
}

/// A backend's name from its Contact URI: `user@host:port`, scheme and parameters dropped (the
/// host alone names SIPp and other stacks that all use one user part).
pub(crate) fn backend_key(uri: &str) -> &str {
    let bare = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .unwrap_or(uri);
    bare.split([';', '?', '>']).next().unwrap_or(bare).trim()
}

/// Read buffer per connection: many messages per read system call.
const READ_BUF: usize = 256 * 1024;
/// Calls started per loop iteration at most, so a late wake-up does not starve the reads.
const CALLS_PER_WAKEUP: u32 = 64;
/// How often the progress callback runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn call() -> Call {
        Call {
            conn: 0,
            state: State::Inviting,
            seq: 0,
            backend: None,
            violated: false,
            to_tag: String::new(),
            route: Vec::new(),
            remote_target: String::new(),
        }
    }

    fn response(to_tag: &str) -> Vec<u8> {
        format!(
            "SIP/2.0 180 Ringing\r\nTo: <sip:service@h>;tag={to_tag}\r\nCall-ID: 1-a@loadgen\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    #[test]
    fn backends_are_named_by_their_contact() {
        assert_eq!(
            backend_key("sip:b1@127.0.0.1:5070;transport=tcp"),
            "b1@127.0.0.1:5070"
        );
        assert_eq!(backend_key("sips:10.0.0.9:5061"), "10.0.0.9:5061");
        assert_eq!(backend_key("sip:sipp@[::1]:5080?x=y"), "sipp@[::1]:5080");
    }

    #[test]
    fn a_second_tag_or_contact_is_one_violation() {
        let mut violations = 0;
        // Tags alone (a backend whose Contact is the balancer's, say) are enough.
        let mut c = call();
        let first = response("x1");
        let again = response("x1");
        let other = response("x2");
        for bytes in [&first, &again] {
            let msg = Message::parse(bytes).unwrap();
            check_affinity(&mut c, None, &msg, &mut violations);
        }
        assert_eq!((violations, c.to_tag.as_str()), (0, "x1"));
        let msg = Message::parse(&other).unwrap();
        check_affinity(&mut c, None, &msg, &mut violations);
        check_affinity(&mut c, None, &msg, &mut violations);
        assert_eq!(violations, 1, "counted once per call");

        // Contacts: same tag, another backend's Contact.
        let mut c = call();
        let msg = Message::parse(&first).unwrap();
        check_affinity(&mut c, Some(0), &msg, &mut violations);
        check_affinity(&mut c, Some(0), &msg, &mut violations);
        assert_eq!(violations, 1);
        check_affinity(&mut c, Some(1), &msg, &mut violations);
        assert_eq!(violations, 2);
        assert_eq!(c.backend, Some(0), "the first backend stays the call's");
    }
}
