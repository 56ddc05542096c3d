//! Plain mode (`--plain`): an ordinary SIP UAS over TCP, without the envelope, for a balancer
//! in plain mode (`--backend ADDR`) or any other SIP proxy (Kamailio's dispatcher in
//! `cargo xtask bench scale`).
//!
//! The same [`Uas`] answers, but one instance serves every connection: a plain backend's
//! dialogs belong to the backend, not to a connection, and a proxy may send a call's ACK or BYE
//! on another connection than its INVITE (a second balancer worker, a reconnect). Responses go
//! back on the connection the request came in on (RFC 3261 §18.2.2); a delayed 200 goes on the
//! INVITE's. The UAS is sans-IO, so each connection's source address stands in for the
//! connection: it is the `source` the UAS hands back with each message.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lb_backend::sip::frame_len;

use crate::uas::{Counters, Out, Uas};

/// The largest message a peer may make us buffer; a longer one closes its connection.
const MESSAGE_MAX: usize = 64 * 1024;
/// Connections served at once at most; more are refused (a thread each).
const CONNECTIONS_MAX: usize = 256;
/// How often the answer timer looks when no delayed answer is due sooner.
const TIMER_IDLE: Duration = Duration::from_millis(50);

/// What every connection's thread shares.
struct Shared {
    uas: Mutex<Uas<'static>>,
    /// Each open connection's writing half, by its peer address.
    writers: Mutex<HashMap<SocketAddr, Arc<Mutex<TcpStream>>>>,
    counters: &'static Counters,
}

/// Accepts connections on `listener` and answers them, forever.
pub(crate) fn serve(
    listener: &TcpListener,
    name: &str,
    contact_host: &str,
    answer_delay: Duration,
    counters: &'static Counters,
) {
    let shared = Arc::new(Shared {
        uas: Mutex::new(Uas::new(name, contact_host, answer_delay, counters)),
        writers: Mutex::new(HashMap::new()),
        counters,
    });
    if !answer_delay.is_zero() {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || answer_timer(&shared));
    }
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        if lock(&shared.writers).len() >= CONNECTIONS_MAX {
            continue;
        }
        let shared = Arc::clone(&shared);
        let name = name.to_owned();
        std::thread::spawn(move || {
            if let Err(e) = connection(stream, &shared) {
                eprintln!("envelope-backend {name} (plain): {e}");
            }
        });
    }
}

/// A poisoned lock only means another connection's thread panicked; the state is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads one connection until it closes, answering every message in each read with one write.
fn connection(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr()?;
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    lock(&shared.writers).insert(peer, Arc::clone(&writer));
    let result = read_loop(stream, peer, &writer, shared);
    lock(&shared.writers).remove(&peer);
    result
}

fn read_loop(
    mut stream: TcpStream,
    peer: SocketAddr,
    writer: &Mutex<TcpStream>,
    shared: &Shared,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; MESSAGE_MAX];
    let mut filled = 0;
    let mut out: Vec<Out> = Vec::new();
    let mut own = Vec::new();
    loop {
        let n = stream.read(&mut buf[filled..])?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        let mut start = 0;
        let now = Instant::now();
        {
            let mut uas = lock(&shared.uas);
            loop {
                // CRLF keep-alives between messages (RFC 5626 §4.4.1) need no answer here.
                while start < filled && matches!(buf[start], b'\r' | b'\n') {
                    start += 1;
                }
                let Some(len) = frame_len(&buf[start..filled])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?
                else {
                    break;
                };
                let sip = Bytes::copy_from_slice(&buf[start..start + len]);
                start += len;
                uas.handle(now, Some(peer), sip, &mut out);
            }
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a message longer than 64 kB",
            ));
        }
        shared
            .counters
            .sent
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        // Our answers in one write; any for another connection (none today: a request is
        // answered where it came from) go to that one.
        for (to, sip) in out.drain(..) {
            if to == Some(peer) {
                own.extend_from_slice(&sip);
            } else {
                send_to(shared, to, &sip);
            }
        }
        if !own.is_empty() {
            lock(writer).write_all(&own)?;
            own.clear();
        }
    }
}

/// Writes `sip` on the connection from `to`, if it is still open (else the answer is lost, as
/// it would be for any UAS whose caller went away).
fn send_to(shared: &Shared, to: Option<SocketAddr>, sip: &[u8]) {
    let Some(addr) = to else { return };
    let writer = lock(&shared.writers).get(&addr).cloned();
    if let Some(w) = writer {
        let _ = lock(&w).write_all(sip);
    }
}

/// Sends the delayed 200s when they are due (only runs with `--answer-delay-ms`).
fn answer_timer(shared: &Shared) {
    let mut out = Vec::new();
    loop {
        let next = lock(&shared.uas).poll_timeout();
        let now = Instant::now();
        match next {
            Some(at) if at <= now => lock(&shared.uas).handle_timeout(now, &mut out),
            Some(at) => std::thread::sleep((at - now).min(TIMER_IDLE)),
            None => std::thread::sleep(TIMER_IDLE),
        }
        shared
            .counters
            .sent
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        for (to, sip) in out.drain(..) {
            send_to(shared, to, &sip);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use lb_backend::sip::{param, Message};

    use super::*;

    fn start(delay: Duration) -> (SocketAddr, &'static Counters) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let counters: &'static Counters = Box::leak(Box::default());
        std::thread::spawn(move || serve(&listener, "bp", "127.0.0.1:1", delay, counters));
        (addr, counters)
    }

    fn request(method: &str, to_tag: Option<&str>, cseq: u32) -> String {
        let to = to_tag.map_or(String::new(), |t| format!(";tag={t}"));
        format!(
            "{method} sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK-{method}\r\n\
             From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>{to}\r\nCall-ID: k1\r\n\
             CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// Reads whole messages from `conn` until `count` have come.
    fn read_messages(conn: &mut TcpStream, count: usize) -> Vec<Vec<u8>> {
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < count {
            if let Some(len) = frame_len(&buf).unwrap() {
                got.push(buf.drain(..len).collect());
                continue;
            }
            let n = conn.read(&mut chunk).unwrap();
            assert!(n > 0, "backend closed early");
            buf.extend_from_slice(&chunk[..n]);
        }
        got
    }

    fn status(sip: &[u8]) -> u16 {
        Message::parse(sip).unwrap().status().unwrap()
    }

    /// A whole call as plain SIP, its BYE on a second connection: one dialog for the backend.
    #[test]
    fn answers_plain_sip_and_keeps_dialogs_across_connections() {
        let (addr, counters) = start(Duration::ZERO);
        let mut first = TcpStream::connect(addr).unwrap();
        // A keep-alive before the INVITE is skipped.
        first
            .write_all(format!("\r\n\r\n{}", request("INVITE", None, 1)).as_bytes())
            .unwrap();
        let got = read_messages(&mut first, 3);
        assert_eq!(
            got.iter().map(|m| status(m)).collect::<Vec<_>>(),
            [100, 180, 200]
        );
        let ok = Message::parse(&got[2]).unwrap();
        let tag = param(ok.header("To").unwrap(), "tag").unwrap().to_owned();
        assert_eq!(tag, "bp-1");
        assert_eq!(
            ok.header("Contact"),
            Some("<sip:bp@127.0.0.1:1;transport=tcp>")
        );
        first
            .write_all(request("ACK", Some(&tag), 1).as_bytes())
            .unwrap();

        let mut second = TcpStream::connect(addr).unwrap();
        second
            .write_all(request("BYE", Some(&tag), 2).as_bytes())
            .unwrap();
        let got = read_messages(&mut second, 1);
        assert_eq!(status(&got[0]), 200);
        // The dialog is gone: a second BYE gets a 481.
        second
            .write_all(request("BYE", Some(&tag), 3).as_bytes())
            .unwrap();
        assert_eq!(status(&read_messages(&mut second, 1)[0]), 481);
        // The ACK went on the first connection, which another thread reads: it may be counted
        // a moment after the BYE's answers came back on the second.
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.ack.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(counters.completed.load(Ordering::Relaxed), 1);
        assert_eq!(counters.ack.load(Ordering::Relaxed), 1);
        assert_eq!(counters.sent.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn a_delayed_answer_goes_on_the_invite_connection() {
        let (addr, _) = start(Duration::from_millis(100));
        let mut conn = TcpStream::connect(addr).unwrap();
        let began = Instant::now();
        conn.write_all(request("INVITE", None, 1).as_bytes())
            .unwrap();
        let got = read_messages(&mut conn, 3);
        assert_eq!(
            got.iter().map(|m| status(m)).collect::<Vec<_>>(),
            [100, 180, 200]
        );
        assert!(began.elapsed() >= Duration::from_millis(100));
    }

    #[test]
    fn garbage_closes_the_connection() {
        let (addr, _) = start(Duration::ZERO);
        let mut conn = TcpStream::connect(addr).unwrap();
        // A head with a Content-Length that is not a number: framing is lost.
        conn.write_all(b"INVITE sip:b@x SIP/2.0\r\nContent-Length: many\r\n\r\n")
            .unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(conn.read(&mut byte).unwrap(), 0, "closed");
    }
}
