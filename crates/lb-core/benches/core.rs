//! `cargo bench -p lb-core --bench core` (or `cargo xtask bench core`): a realistic mix through
//! the core, printing `core_msgs_per_sec=N allocs_per_msg=X table_bytes_per_entry=B`.
//!
//! Per call: INVITE, 100, 180, 200, ACK, BYE, 200, and one retransmitted INVITE in ten calls;
//! calls interleaved in batches, in-dialog requests routed by their tag. A recording balancer
//! plays the backends' side once to build the input script; a second balancer with the same
//! seed and config replays it under the clock, so the timed loop does no SIP formatting. Virtual
//! time advances 0.5 ms per call (2,000 calls/s), so the new-call table reaches its steady size
//! (rate × window) and expires as it would in production.
#![allow(
    clippy::unwrap_used,
    clippy::print_stdout,
    clippy::disallowed_methods,
    unsafe_code
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_core::{BackendConfig, Balancer, Config, ConnId, Input, Output, TagKey};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY-free wrapper: forwards to the system allocator and counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const BACKENDS: usize = 3;
const FRONTENDS: usize = 4;
const BATCH: usize = 500;
const CALLS: usize = 150_000;
const PER_CALL: Duration = Duration::from_micros(500);

/// One balancer and what it knows of its connections.
struct Side {
    lb: Balancer,
    frontends: Vec<ConnId>,
    backends: Vec<ConnId>,
}

impl Side {
    fn new(start: Instant) -> Side {
        let config = Config {
            listeners: vec!["192.0.2.10:5060".parse().unwrap()],
            backends: (0..BACKENDS)
                .map(|i| {
                    BackendConfig::plain(format!("198.51.100.{}:5060", i + 1).parse().unwrap())
                })
                .collect(),
            tag_keys: vec![TagKey {
                id: 1,
                secret: vec![0x5a; 32],
            }],
            ..Config::default()
        };
        let mut lb = Balancer::new(config.validate().unwrap(), 1, start);
        let mut backends = Vec::new();
        while let Some(o) = lb.poll_output() {
            if let Output::Connect { conn, .. } = o {
                backends.push(conn);
            }
        }
        for &conn in &backends {
            lb.handle_input(start, Input::Connected { conn });
        }
        while lb.poll_output().is_some() {}
        let listener = lb.listeners().next().unwrap().0;
        let frontends = (0..FRONTENDS)
            .map(|i| {
                let peer: SocketAddr = format!("203.0.113.{}:40000", i + 1).parse().unwrap();
                lb.accept(start, listener, peer)
            })
            .collect();
        Side {
            lb,
            frontends,
            backends,
        }
    }
}

/// One input of the script: which connection (frontend `f` or backend `b`), the bytes, the time.
struct Step {
    from_backend: bool,
    index: usize,
    at: Instant,
    bytes: Bytes,
}

fn main() {
    let start = Instant::now();
    let mut recorder = Side::new(start);
    let mut replayer = Side::new(start);
    let mut now = start;
    let mut messages = 0u64;
    let mut busy = Duration::ZERO;
    let mut allocs = 0u64;
    let mut table_bytes = 0.0f64;
    let mut n = 0usize;
    while n < CALLS {
        let script = record_batch(&mut recorder, n, &mut now);
        n += BATCH;
        // Hand the core owned buffers as a driver would, outside the clock.
        // A driver reads into one large buffer and hands the core `split_to` pieces of it.
        let mut read_buffer = BytesMut::with_capacity(script.iter().map(|s| s.bytes.len()).sum());
        for s in &script {
            read_buffer.extend_from_slice(&s.bytes);
        }
        // The script's own copies are freed here, outside the clock.
        let inputs: Vec<(bool, usize, Instant, BytesMut)> = script
            .into_iter()
            .map(|s| {
                (
                    s.from_backend,
                    s.index,
                    s.at,
                    read_buffer.split_to(s.bytes.len()),
                )
            })
            .collect();
        let before = ALLOCS.load(Ordering::Relaxed);
        let t = Instant::now();
        for (from_backend, index, at, bytes) in inputs {
            let conn = if from_backend {
                replayer.backends[index]
            } else {
                replayer.frontends[index]
            };
            replayer
                .lb
                .handle_input(at, Input::Received { conn, bytes });
            replayer.lb.handle_input(at, Input::Timeout);
            while let Some(out) = replayer.lb.poll_output() {
                drop(out);
            }
            messages += 1;
        }
        busy += t.elapsed();
        allocs += ALLOCS.load(Ordering::Relaxed) - before;
        let stats = replayer.lb.stats();
        if stats.table_len > 0 {
            table_bytes = replayer.lb.table_bytes() as f64 / stats.table_len as f64;
        }
    }
    let per_sec = messages as f64 / busy.as_secs_f64();
    println!(
        "core_msgs_per_sec={:.0} allocs_per_msg={:.4} table_bytes_per_entry={:.0}",
        per_sec,
        allocs as f64 / messages as f64,
        table_bytes
    );
    eprintln!(
        "messages={messages} calls={CALLS} table_len={} table_hits={} busy_s={:.3}",
        replayer.lb.stats().table_len,
        replayer.lb.stats().table_hits,
        busy.as_secs_f64()
    );
}

/// Plays `BATCH` calls through the recording balancer, answering as the backends would, and
/// returns every input it was fed.
fn record_batch(side: &mut Side, first: usize, now: &mut Instant) -> Vec<Step> {
    let mut script = Vec::new();
    let mut invites = Vec::new();
    for c in first..first + BATCH {
        *now += PER_CALL;
        let fe = c % FRONTENDS;
        let invite = invite(c, fe);
        feed(side, &mut script, false, fe, *now, invite.clone());
        let (b, forwarded) = to_backend(side);
        if c % 10 == 0 {
            feed(side, &mut script, false, fe, *now, invite);
            to_backend(side);
        }
        invites.push((c, fe, b, forwarded));
    }
    for (c, fe, b, forwarded) in &invites {
        let mut ok = None;
        for status in ["100 Trying", "180 Ringing", "200 OK"] {
            feed(
                side,
                &mut script,
                true,
                *b,
                *now,
                response(forwarded, status),
            );
            ok = to_frontend(side);
        }
        // The frontend-facing tag, as the caller's route set holds it (the Record-Route the
        // backend saw carries the backend-facing one).
        let tag = tag_of(&ok.expect("the 200 reaches the caller"));
        feed(
            side,
            &mut script,
            false,
            *fe,
            *now,
            in_dialog("ACK", *c, *fe, &tag, 1),
        );
        drain(side);
        let bye = in_dialog("BYE", *c, *fe, &tag, 2);
        feed(side, &mut script, false, *fe, *now, bye);
        let (_, forwarded_bye) = to_backend(side);
        feed(
            side,
            &mut script,
            true,
            *b,
            *now,
            response(&forwarded_bye, "200 OK"),
        );
        drain(side);
    }
    script
}

fn feed(
    side: &mut Side,
    script: &mut Vec<Step>,
    from_backend: bool,
    index: usize,
    at: Instant,
    text: String,
) {
    let bytes = Bytes::from(text);
    let conn = if from_backend {
        side.backends[index]
    } else {
        side.frontends[index]
    };
    side.lb.handle_input(
        at,
        Input::Received {
            conn,
            bytes: BytesMut::from(&bytes[..]),
        },
    );
    side.lb.handle_input(at, Input::Timeout);
    script.push(Step {
        from_backend,
        index,
        at,
        bytes,
    });
}

fn to_backend(side: &mut Side) -> (usize, String) {
    let mut found = None;
    while let Some(o) = side.lb.poll_output() {
        if let Output::Send { conn, bytes } = o {
            if let Some(b) = side.backends.iter().position(|c| *c == conn) {
                found = Some((b, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    found.unwrap_or_else(|| panic!("no backend; stats {}", side.lb.stats()))
}

/// The last message sent to a frontend, if any; everything else is drained.
fn to_frontend(side: &mut Side) -> Option<String> {
    let mut found = None;
    while let Some(o) = side.lb.poll_output() {
        if let Output::Send { conn, bytes } = o {
            if side.frontends.contains(&conn) {
                found = Some(String::from_utf8_lossy(&bytes).into_owned());
            }
        }
    }
    found
}

fn drain(side: &mut Side) {
    while side.lb.poll_output().is_some() {}
}

fn tag_of(message: &str) -> String {
    let line = message
        .lines()
        .find(|l| l.starts_with("Record-Route:"))
        .unwrap();
    let start = line.find(";lb=").unwrap() + 4;
    let end = line[start..].find('>').unwrap() + start;
    line[start..end].to_string()
}

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 203.0.113.9\r\ns=-\r\nc=IN IP4 203.0.113.9\r\n\
    t=0 0\r\nm=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n";

fn invite(c: usize, fe: usize) -> String {
    format!(
        "INVITE sip:+1555{c:07}@example.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP 203.0.113.{p}:5060;branch=z9hG4bK{c:x}-inv;rport\r\n\
         Max-Forwards: 69\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=f{c:x}\r\n\
         To: <sip:+1555{c:07}@example.com>\r\n\
         Call-ID: {c:016x}-4a7c-9c1e-5d2b7e1f3a90@203.0.113.{p}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@203.0.113.{p}:5060;transport=tcp>\r\n\
         Allow: INVITE, ACK, CANCEL, BYE, OPTIONS\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{SDP}",
        p = fe + 1,
        len = SDP.len()
    )
}

fn in_dialog(method: &str, c: usize, fe: usize, tag: &str, cseq: u32) -> String {
    format!(
        "{method} sip:b2bua@198.51.100.1:5060;transport=tcp SIP/2.0\r\n\
         Via: SIP/2.0/TCP 203.0.113.{p}:5060;branch=z9hG4bK{c:x}-{method};rport\r\n\
         Route: <sip:192.0.2.10:5060;transport=tcp;lr;lb={tag}>\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=f{c:x}\r\n\
         To: <sip:+1555{c:07}@example.com>;tag=b{c:x}\r\n\
         Call-ID: {c:016x}-4a7c-9c1e-5d2b7e1f3a90@203.0.113.{p}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        p = fe + 1
    )
}

fn response(request: &str, status: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1).take_while(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("");
        match name {
            "Via" | "From" | "Call-ID" | "CSeq" | "Record-Route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "To" if line.contains("tag=") => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "To" => {
                out.push_str(line);
                out.push_str(";tag=b1\r\n");
            }
            _ => {}
        }
    }
    out.push_str(
        "Contact: <sip:b2bua@198.51.100.1:5060;transport=tcp>\r\nContent-Length: 0\r\n\r\n",
    );
    out
}
