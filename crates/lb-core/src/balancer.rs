//! The balancer: connections, backends, and the routing of each message.
//!
//! Routing order for a message from a frontend (DESIGN.md "Where the tag lives"):
//! 1. a request whose top Route is the balancer's own entry (`lb=` parameter), or that carries
//!    the extension tag header: the tag names the backend; the Route entry is popped;
//! 2. a response whose top Via is the balancer's own (`lb=`): the tag names the backend that
//!    originated the request; that Via is stripped;
//! 3. an untagged request: the new-call table by Call-ID (retransmitted INVITE, CANCEL, ACK of a
//!    non-2xx), else a new call: a backend is chosen, recorded and named in a Record-Route.
//!
//! A backend that is down hands its traffic to its backup: the configured one, else the winner
//! of a rendezvous hash of the Call-ID over the backends that are up.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::hash::Hasher;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use siphasher::sip::SipHasher13;
use slab::Slab;
use smallvec::SmallVec;

use crate::config::{BackendConfig, BackendMode, ValidConfig};
use crate::conn_token::ConnTokens;
use crate::envelope::{self, Envelope, EnvelopeDecoder, Transport};
use crate::framing::{Frame, StreamFramer};
use crate::ids::{BackendId, ConnId, ListenerId};
use crate::io::{CloseReason, Event, Input, Output};
use crate::message::{
    HostPort, Method, ParseError, SipMessage, StartLine, CONTENT_LENGTH_MISMATCH,
};
use crate::new_call_table::NewCallTable;
use crate::reasons::{DropCause, FramingFault};
use crate::rewrite::{self, Context, Edit, Edits, Insertion};
use crate::select::{Candidate, Selector};
use crate::stats::Stats;
use crate::tag::TagSigner;
use hops::{HopName, HopTable};
use reply::Reply;

mod admission;
mod backpressure;
mod dial;
mod farm;
pub(crate) mod hops;
mod passive;
pub(crate) mod reply;
mod route;
mod sanity;
mod timers;
mod trace;

use farm::Backend;
pub use farm::BackendStatus;
use timers::{BackendTimer, ConnTimer, Liveness};

/// The whole balancing method as a state machine. See the crate docs for the driver loop.
#[derive(Debug)]
pub struct Balancer {
    config: ValidConfig,
    conns: Slab<Conn>,
    generation: u32,
    backends: Vec<Backend>,
    table: NewCallTable,
    selector: Selector,
    signer: TagSigner,
    /// Keys the backup choice; shared by every instance with the same tag keys.
    rendezvous_key: [u8; 16],
    /// Keys the balancer's own Via branches.
    branch_key: [u8; 16],
    /// Names connections in the balancer's own Via.
    tokens: ConnTokens,
    hops: HopTable,
    /// Frontend connections per source, and whom to evict at the limit.
    admission: admission::Admission,
    rng: SmallRng,
    /// Reconnects and probes: irregular deadlines, one min-heap.
    backend_timers: BinaryHeap<Reverse<(Instant, BackendId, BackendTimer)>>,
    /// Frontend idle and partial-message timeouts.
    conn_timers: BinaryHeap<Reverse<(Instant, ConnId, ConnTimer)>>,
    /// Connections whose queue went over the high-water mark, by the instant their stall
    /// timeout is due (one constant, so a FIFO is in deadline order).
    stalls: VecDeque<(Instant, ConnId)>,
    /// Connects and dials asked for, by the instant the core gives up on them
    /// (`Config::connect_timeout`, one value kept across reloads: a FIFO is in deadline order).
    connects: VecDeque<(Instant, ConnId)>,
    /// Closes asked for, by the instant the core stops waiting for the flush
    /// (`Config::close_linger`, likewise).
    lingers: VecDeque<(Instant, ConnId)>,
    outputs: VecDeque<Output>,
    /// Outgoing messages, to every connection, are written here and split off, one
    /// `Output::Send` each (see [`OUT_CHUNK_BYTES`]).
    out: BytesMut,
    stats: Stats,
    /// Labelled figures: requests by method, responses and response times per backend.
    telemetry: crate::stats::Telemetry,
    now: Instant,
}

#[derive(Debug)]
struct Conn {
    generation: u32,
    /// The core asked the driver to close it; bytes still arriving are ignored.
    closing: bool,
    /// Asked for with `Output::Connect` or `Output::Dial`; `Input::Connected` has not come.
    connecting: bool,
    side: Side,
    /// Since when the driver reports its output queue over the high-water mark
    /// (`Input::OutputQueue`); `None` below the low-water mark.
    queue_high_since: Option<Instant>,
}

#[derive(Debug)]
enum Side {
    /// A connection to a SIP peer in front of the balancer: accepted, or dialled out.
    Frontend {
        peer: SocketAddr,
        framer: StreamFramer,
        aliases: SmallVec<[HopName; 1]>,
        liveness: Liveness,
        /// A dial-out not yet connected, with what waits for it.
        dialling: Option<Box<dial::Dialling>>,
        /// The balancer opened it (counted against `limits.dial_outs_max`).
        dialled: bool,
        /// Accepted on a TLS listener: what the balancer writes toward it names TLS.
        tls: bool,
    },
    Backend {
        backend: BackendId,
        reader: BackendReader,
    },
}

#[derive(Debug)]
enum BackendReader {
    Plain(StreamFramer),
    Envelope(EnvelopeDecoder),
}

impl Side {
    /// The bytes its reader holds toward the next message; when there are none, the reader
    /// starts afresh. A drained framer or decoder keeps an empty `BytesMut` that still shares
    /// the allocation its last bytes arrived in (the driver's 64 KiB read chunk, whose messages
    /// have long been handled): with one such chunk pinned per connection, a burst's reads
    /// stayed resident after it (docs/performance.md, "After a burst"). An empty reader holds
    /// no other state (no partial head, no scan position, and a failed one has closed the
    /// connection), so a fresh one reads the next bytes the same way; it costs no allocation.
    fn release_drained_reader(&mut self) -> usize {
        match self {
            Side::Frontend { framer, .. }
            | Side::Backend {
                reader: BackendReader::Plain(framer),
                ..
            } => {
                let held = framer.buffered_len();
                if held == 0 {
                    *framer = StreamFramer::default();
                }
                held
            }
            Side::Backend {
                reader: BackendReader::Envelope(decoder),
                ..
            } => {
                let held = decoder.buffered_len();
                if held == 0 {
                    *decoder = EnvelopeDecoder::default();
                }
                held
            }
        }
    }
}

/// Where a message came from, as routing needs it.
#[derive(Clone, Copy)]
struct Source {
    conn: ConnId,
    /// Frontend peer address (for `received`/`rport` and envelopes to backends).
    peer: Option<SocketAddr>,
    /// The envelope it came in, from an envelope backend.
    envelope: Option<Envelope>,
}

impl Balancer {
    /// A balancer for `config`. `seed` feeds every random choice (tie-breaks, reconnect jitter)
    /// and the keys of its hash tables; `now` is the time origin. Queues an
    /// [`Output::Connect`] for every backend.
    pub fn new(config: ValidConfig, seed: u64, now: Instant) -> Balancer {
        let mut rng = SmallRng::seed_from_u64(seed);
        let table_key: [u8; 16] = rng.random();
        let hop_key: [u8; 16] = rng.random();
        let branch_key: [u8; 16] = rng.random();
        // Derived, not drawn: the seeded stream stays what it was before connection tokens
        // existed, so simulator runs of a seed still replay.
        let token_key = derive_key(&branch_key, b"siplb connection tokens");
        let c = &config.config;
        let signer = TagSigner::new(&c.tag_keys);
        let backends = c.backends.iter().map(Backend::new).collect();
        let mut lb = Balancer {
            table: NewCallTable::new(
                c.limits.table_capacity,
                c.window,
                c.ringing_max,
                table_key,
                now,
            )
            .with_share(c.limits.table_share())
            .with_source_share(c.limits.table_share_per_ip())
            .with_unanswered_timeout(c.passive.unanswered_timeout),
            selector: Selector::new(c.algorithm, c.backends.len()),
            rendezvous_key: signer.shared_hash_key(),
            signer,
            branch_key,
            tokens: ConnTokens::new(token_key, now),
            hops: HopTable::new(hop_key, c.hop_by_unique_ip),
            admission: admission::Admission::new(derive_key(&hop_key, b"admission")),
            conns: Slab::new(),
            generation: 0,
            backends,
            rng,
            backend_timers: BinaryHeap::new(),
            conn_timers: BinaryHeap::new(),
            stalls: VecDeque::new(),
            connects: VecDeque::new(),
            lingers: VecDeque::new(),
            outputs: VecDeque::new(),
            out: BytesMut::new(),
            stats: Stats::default(),
            telemetry: crate::stats::Telemetry::default(),
            now,
            config,
        };
        for index in 0..lb.backends.len() {
            lb.connect_backend(BackendId::new(index));
        }
        lb
    }

    /// The listeners of the configuration, to bind: report accepted connections with their id.
    /// The TCP listeners come first, then the TLS ones ([`Balancer::is_tls_listener`]).
    pub fn listeners(&self) -> impl Iterator<Item = (ListenerId, SocketAddr)> + '_ {
        let c = &self.config.config;
        c.listeners
            .iter()
            .chain(&c.tls_listeners)
            .enumerate()
            .map(|(i, a)| (ListenerId::new(i), *a))
    }

    /// Whether `listener` takes TLS: the driver runs the handshake and hands the core plaintext.
    pub fn is_tls_listener(&self, listener: ListenerId) -> bool {
        listener.index() >= self.config.config.listeners.len()
    }

    /// The configured backends with their ids, in configuration order.
    pub fn backends(&self) -> impl Iterator<Item = (BackendId, &BackendConfig)> + '_ {
        self.config
            .config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (BackendId::new(i), b))
    }

    /// A frontend connection was accepted on `listener` from `peer`; returns its id. When the
    /// frontend limit is reached the id comes with an [`Output::Close`] already queued.
    pub fn accept(&mut self, now: Instant, listener: ListenerId, peer: SocketAddr) -> ConnId {
        self.advance(now);
        let tls = self.is_tls_listener(listener);
        let admit = self.admit(peer);
        let side = Side::Frontend {
            peer,
            framer: StreamFramer::default(),
            aliases: SmallVec::new(),
            liveness: Liveness::new(self.now),
            dialling: None,
            dialled: false,
            tls,
        };
        let conn = self.insert_conn(side);
        self.admitted(conn, peer);
        self.stats.frontends_open += 1;
        if let admission::Admit::No(why) = admit {
            tracing::debug!(%conn, %peer, why, "frontend refused");
            self.stats.frontends_refused += 1;
            self.outputs
                .push_back(Output::Event(Event::FrontendRefused(conn)));
            self.close(conn);
        } else {
            self.stats.frontends_accepted += 1;
            self.hops.add_peer(conn, peer);
            self.arm_idle(conn);
        }
        conn
    }

    /// Feeds one input; all protocol work happens here. Drain [`Balancer::poll_output`] after.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        self.advance(now);
        match input {
            Input::Received { conn, bytes } => self.handle_received(conn, bytes),
            Input::Connected { conn } => match self.connected(conn).map(|c| &c.side) {
                Some(Side::Frontend { .. }) => self.dial_connected(conn),
                _ => self.handle_connected(conn),
            },
            Input::Closed { conn, reason } => {
                if self.is_resolving(conn) {
                    // A driver's stale report: this id never reached it.
                    self.stats.stale_inputs += 1;
                } else {
                    self.handle_closed(conn, reason);
                }
            }
            Input::Resolved { conn, addrs } => self.handle_resolved(conn, &addrs),
            Input::Backends(change) => self.handle_backend_change(change),
            Input::Reload(config) => self.handle_reload(*config),
            Input::OutputQueue { conn, level } => self.handle_queue_level(conn, level),
            Input::Timeout => self.handle_timeout(),
        }
        self.stats.table_len = self.table.len() as u64;
        self.stats.table_len_max = self.stats.table_len_max.max(self.stats.table_len);
    }

    /// The next action, or `None` once drained. Does no work of its own.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes the new-call table holds now (its map and expiry queues, at their capacities):
    /// with `stats().table_len`, the memory cost of one entry.
    pub fn table_bytes(&self) -> usize {
        self.table.memory_bytes()
    }

    /// `now` never goes backwards inside the core.
    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn insert_conn(&mut self, side: Side) -> ConnId {
        self.generation = self.generation.wrapping_add(1);
        let generation = self.generation;
        let slot = self.conns.insert(Conn {
            generation,
            closing: false,
            connecting: false,
            side,
            queue_high_since: None,
        });
        ConnId::new(slot, generation)
    }

    fn conn(&self, id: ConnId) -> Option<&Conn> {
        self.conns
            .get(id.slot())
            .filter(|c| c.generation == id.generation())
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.slot())
            .filter(|c| c.generation == id.generation())
    }

    fn close(&mut self, id: ConnId) {
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        if conn.closing {
            return;
        }
        if self.is_resolving(id) {
            // Not yet the driver's: no Close to ask for, no Closed will come.
            return self.abandon_resolving(id);
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        conn.closing = true;
        let backend = match conn.side {
            Side::Backend { backend, .. } => Some(backend),
            Side::Frontend { .. } => None,
        };
        self.outputs.push_back(Output::Close { conn: id });
        self.arm_linger(id);
        // A backend is down from the moment its connection is closing: nothing more may be
        // sent on it (found by fuzzing), and its reconnect starts now.
        if let Some(backend) = backend {
            self.backend_closed(backend, id);
        }
    }

    // ----- connections -----

    fn handle_closed(&mut self, id: ConnId, reason: CloseReason) {
        if self.conn(id).is_none() {
            self.stats.stale_inputs += 1;
            return;
        }
        let conn = self.conns.remove(id.slot());
        tracing::debug!(conn = %id, ?reason, "connection closed");
        match conn.side {
            Side::Frontend {
                peer,
                aliases,
                dialling,
                dialled,
                ..
            } => {
                if dialled {
                    self.stats.dial_outs_open -= 1;
                } else {
                    self.stats.frontends_open -= 1;
                    self.released(peer);
                }
                self.hops.remove_peer(id, peer);
                for alias in &aliases {
                    self.hops.remove_alias(id, alias);
                }
                if let Some(dialling) = dialling {
                    self.dial_failed(id, *dialling);
                }
            }
            Side::Backend { backend, .. } => self.backend_closed(backend, id),
        }
    }

    // ----- bytes in -----

    fn handle_received(&mut self, id: ConnId, bytes: BytesMut) {
        let message_max = self.config.config.limits.message_bytes_max;
        let buffered_max = self.config.config.limits.buffered_bytes_max;
        let Some(conn) = self
            .conns
            .get_mut(id.slot())
            .filter(|c| c.generation == id.generation())
        else {
            self.stats.stale_inputs += 1;
            return;
        };
        self.stats.bytes_in += bytes.len() as u64;
        if conn.closing {
            return;
        }
        match &mut conn.side {
            Side::Frontend { framer, .. } => framer.push(bytes),
            Side::Backend {
                reader: BackendReader::Plain(framer),
                ..
            } => framer.push(bytes),
            Side::Backend {
                reader: BackendReader::Envelope(decoder),
                ..
            } => decoder.push(bytes),
        }
        let headers_max = self.config.config.limits.headers_max;
        let mut completed = false;
        loop {
            // Field by field (not `conn_mut`): the framer reads the tag header name from the
            // config while it analyses the head.
            let Some(conn) = self
                .conns
                .get_mut(id.slot())
                .filter(|c| c.generation == id.generation())
            else {
                return;
            };
            if conn.closing {
                return;
            }
            let tag_header = self.config.config.tag_header.as_deref().map(str::as_bytes);
            let mut analysis = crate::message::Analysis::NONE;
            let next = match &mut conn.side {
                Side::Frontend { framer, .. }
                | Side::Backend {
                    reader: BackendReader::Plain(framer),
                    ..
                } => {
                    match framer.next_analysed(message_max, tag_header, headers_max, &mut analysis)
                    {
                        None => None,
                        Some(Ok(Frame::Message(m))) => Some(Ok((None, m))),
                        Some(Ok(Frame::Ping)) => {
                            completed = true;
                            self.stats.keepalives += 1;
                            self.send(id, Bytes::from_static(b"\r\n"));
                            continue;
                        }
                        Some(Err(e)) => Some(Err(FramingFault::from(e))),
                    }
                }
                Side::Backend {
                    reader: BackendReader::Envelope(decoder),
                    ..
                } => match decoder.next_envelope(message_max) {
                    None => None,
                    Some(Ok((env, m))) => Some(Ok((Some(env), m))),
                    Some(Err(_)) => Some(Err(FramingFault::BadEnvelope)),
                },
            };
            match next {
                None => break,
                Some(Ok((envelope, message))) => {
                    completed = true;
                    self.handle_message(id, envelope, message, analysis);
                }
                Some(Err(fault)) => {
                    self.framing_lost(id, fault);
                    return;
                }
            }
        }
        let Some(conn) = self.conn_mut(id) else {
            return;
        };
        let buffered = conn.side.release_drained_reader();
        let frontend = matches!(conn.side, Side::Frontend { .. });
        if frontend {
            self.note_frontend_progress(id, completed, buffered > 0);
        }
        if buffered > buffered_max {
            self.framing_lost(id, FramingFault::BufferedBytesOverLimit);
        }
    }

    fn framing_lost(&mut self, conn: ConnId, fault: FramingFault) {
        self.stats.framing_errors += 1;
        tracing::debug!(%conn, fault = fault.as_str(), "framing lost, closing");
        self.outputs
            .push_back(Output::Event(Event::FramingLost { conn, fault }));
        self.close(conn);
    }

    fn handle_message(
        &mut self,
        conn: ConnId,
        envelope: Option<Envelope>,
        bytes: Bytes,
        analysis: crate::message::Analysis,
    ) {
        let Some(c) = self.conn(conn) else { return };
        let (source, from_backend) = match &c.side {
            Side::Frontend { peer, .. } => (
                Source {
                    conn,
                    peer: Some(*peer),
                    envelope,
                },
                None,
            ),
            Side::Backend { backend, .. } => (
                Source {
                    conn,
                    peer: None,
                    envelope,
                },
                Some(*backend),
            ),
        };
        let tag_header = self.config.config.tag_header.as_deref().map(str::as_bytes);
        let headers_max = self.config.config.limits.headers_max;
        let message = match analysis.into_message(bytes, tag_header, headers_max) {
            Ok(m) => m,
            Err((bytes, e)) => return self.handle_malformed(source, &bytes, e),
        };
        if envelope.is_some() && !frames_alone(&message.bytes, tag_header, headers_max) {
            // The envelope framed it, but a frontend's plain stream will be framed by its
            // Content-Length: forwarding it would desynchronise that stream (found by fuzzing).
            return self.handle_malformed(source, &message.bytes, CONTENT_LENGTH_MISMATCH);
        }
        let traced = self.is_traced(message.call_id()).then(|| {
            let call_id = String::from_utf8_lossy(message.call_id()).into_owned();
            let end = (message.start_line_end as usize).saturating_sub(2);
            let line = String::from_utf8_lossy(&message.bytes[..end]).into_owned();
            (call_id, line, self.outputs.len())
        });
        self.route_message(source, from_backend, envelope, message);
        if let Some((call_id, line, mark)) = traced {
            self.log_trace(conn, &call_id, &line, mark);
        }
    }

    fn route_message(
        &mut self,
        source: Source,
        from_backend: Option<BackendId>,
        envelope: Option<Envelope>,
        message: SipMessage,
    ) {
        match from_backend {
            None => {
                if message.is_request() {
                    self.route_frontend_request(source, message);
                } else {
                    self.stats.frontend_responses_in += 1;
                    self.route_frontend_response(source, message);
                }
            }
            Some(backend) => {
                if let Some(load) = envelope.and_then(|e| e.load) {
                    self.backends[backend.index()].load = Some(load);
                }
                if message.is_request() {
                    self.stats.backend_requests_in += 1;
                    self.count_request(route::REQUEST_FROM_BACKEND, &message);
                    self.route_backend_request(source, backend, message);
                } else if !self.handle_probe_response(backend, &message) {
                    self.stats.backend_responses_in += 1;
                    self.route_backend_response(source, backend, message);
                }
            }
        }
    }

    fn handle_malformed(&mut self, source: Source, bytes: &Bytes, error: ParseError) {
        let fault = error.reason;
        self.stats.malformed += 1;
        tracing::debug!(conn = %source.conn, fault = fault.as_str(), "malformed message");
        self.outputs.push_back(Output::Event(Event::Malformed {
            conn: source.conn,
            fault,
        }));
        let reply = Reply::Malformed {
            status: error.status,
            reason: fault.as_str(),
        };
        if bytes.starts_with(b"SIP/") || !self.reply(source, bytes, reply) {
            self.drop_message(source.conn, DropCause::MalformedUnanswerable);
        } else if error.status == 505 {
            self.stats.replies_505 += 1;
        } else {
            self.stats.replies_400 += 1;
        }
    }

    // ----- bytes out -----

    fn forward_to_backend(
        &mut self,
        backend: BackendId,
        envelope: Envelope,
        message: &SipMessage,
        edits: &mut Edits,
    ) {
        let Some(conn) = self.backends[backend.index()].conn else {
            return;
        };
        let envelope_mode =
            self.config.config.backends[backend.index()].mode == BackendMode::Envelope;
        // The tag written into Record-Route names the backend that actually takes the call.
        let framing = envelope_mode.then_some(&envelope);
        if self.send_rewritten(conn, backend, message, edits, framing) {
            self.stats.to_backend += 1;
        }
    }

    /// Writes `message` with `edits` applied (tags naming `backend`) to `conn`, framed in
    /// `envelope` when given. `false` when `conn` is gone.
    fn send_rewritten(
        &mut self,
        conn: ConnId,
        backend: BackendId,
        message: &SipMessage,
        edits: &mut Edits,
        envelope: Option<&Envelope>,
    ) -> bool {
        let cx = context(
            &self.config,
            &self.signer,
            &self.tokens,
            backend,
            message.call_id(),
        );
        if self.conns.get(conn.slot()).is_none() {
            return false;
        }
        let Some(bytes) = write_message(&mut self.out, envelope, |out| {
            rewrite::write(out, &message.bytes, edits, &cx);
            true
        }) else {
            return false;
        };
        self.send(conn, bytes);
        true
    }

    fn send(&mut self, conn: ConnId, bytes: Bytes) {
        if self.frontend_not_reading(conn) {
            return;
        }
        self.stats.bytes_out += bytes.len() as u64;
        if let Some(bytes) = self.hold_while_dialling(conn, bytes) {
            self.outputs.push_back(Output::Send { conn, bytes });
        }
    }

    fn drop_message(&mut self, conn: ConnId, cause: DropCause) {
        self.stats.dropped += 1;
        tracing::debug!(%conn, cause = cause.as_str(), "message dropped");
        self.outputs
            .push_back(Output::Event(Event::Dropped { conn, cause }));
    }
}

/// The output buffer's allocation: messages are split off it until it is full, and the next one
/// is as large. A driver drops what it wrote by the end of its wake-up, so the next `reserve`
/// finds the chunk unshared and reuses it in place. Before, each
/// connection had a buffer sized to its first message, and a driver holding one wake-up's
/// messages made every later one allocate a new buffer and its shared header (two `malloc`s
/// and two `free`s per message, about 12 % of lb-mio's CPU at 20,000 calls/s); now that is two
/// per chunk of some 30 messages. A message that waits in a driver's queue keeps its chunk
/// alive; `lb_runtime::write_queue` copies the small ones out once a socket would block, so a
/// slow peer holds its own bytes, not chunks.
pub(crate) const OUT_CHUNK_BYTES: usize = 16 * 1024;

/// Appends one message to the output buffer — wrapped in `envelope` when given, its
/// payload length patched in once known — and splits it off for one `Output::Send`. `write`
/// appends the SIP message; when it returns `false` the buffer is left as it was.
fn write_message(
    out: &mut BytesMut,
    envelope: Option<&Envelope>,
    write: impl FnOnce(&mut BytesMut) -> bool,
) -> Option<Bytes> {
    if out.capacity() == 0 {
        *out = BytesMut::with_capacity(OUT_CHUNK_BYTES);
    }
    let start = out.len();
    if let Some(envelope) = envelope {
        envelope::encode_header(out, envelope, 0);
    }
    let payload_start = out.len();
    if !write(out) {
        out.truncate(start);
        return None;
    }
    if envelope.is_some() {
        let len = out.len() - payload_start;
        envelope::set_payload_len(&mut out[start..payload_start], len);
    }
    Some(out.split().freeze())
}

/// A 16-byte key for another purpose, from `key` and a label.
fn derive_key(key: &[u8; 16], label: &[u8]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, half) in out.chunks_exact_mut(8).enumerate() {
        let mut hasher = SipHasher13::new_with_key(key);
        hasher.write(label);
        hasher.write_u8(i as u8);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    out
}

/// Whether `bytes` is exactly one message by its own Content-Length, as a stream would frame it.
fn frames_alone(bytes: &[u8], tag_header: Option<&[u8]>, headers_max: usize) -> bool {
    let mut scratch = crate::message::Analysis::NONE;
    crate::message::scan_head(bytes, tag_header, headers_max, &mut scratch).is_some_and(|head| {
        head.body
            .is_ok_and(|len| head.head_len + len == bytes.len())
    })
}

/// What insertions need, borrowed field by field so the target's buffer stays writable.
fn context<'a>(
    config: &'a ValidConfig,
    signer: &'a TagSigner,
    tokens: &'a ConnTokens,
    backend: BackendId,
    call_id: &'a [u8],
) -> Context<'a> {
    Context {
        advertise: &config.advertise,
        advertise_backend: &config.advertise_backend,
        advertise_tls: &config.advertise_tls,
        backend_tls: config
            .config
            .backends
            .get(backend.index())
            .is_some_and(|b| b.tls.is_some()),
        signer,
        tokens,
        backend,
        call_id,
        tag_header: config.config.tag_header.as_deref(),
    }
}

#[cfg(test)]
mod reader_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_drained_reader_lets_go_of_its_read_chunk() {
        // The driver's read chunk, one whole message read into it and handed to the core.
        let mut chunk = BytesMut::with_capacity(4096);
        chunk.extend_from_slice(b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n");
        let mut side = Side::Backend {
            backend: BackendId::new(0),
            reader: BackendReader::Plain(StreamFramer::default()),
        };
        let Side::Backend {
            reader: BackendReader::Plain(framer),
            ..
        } = &mut side
        else {
            unreachable!()
        };
        framer.push(chunk.split());
        let frame = framer.next_frame(usize::MAX);
        assert!(matches!(frame, Some(Ok(Frame::Message(_)))), "{frame:?}");
        drop(frame);
        // The message is gone, but the empty framer still shares the chunk.
        assert!(!chunk.try_reclaim(4096));
        assert_eq!(side.release_drained_reader(), 0);
        assert!(chunk.try_reclaim(4096), "the chunk is still shared");
    }
}
