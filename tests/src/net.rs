//! Ports and readiness, without touching the peers.
//!
//! Readiness is read from `/proc/net/tcp{,6}` rather than probed with a connection: a probe
//! connection to a SIPp server or to the balancer would be a real peer they have to handle and
//! would show up in their statistics.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

/// Lowest port handed out; below the kernel's ephemeral range (32768–60999 by default) so the
/// balancer's and SIPp's outgoing connections never take a port a test is about to listen on.
const PORT_MIN: u16 = 20_000;
/// One past the highest port handed out.
const PORT_END: u16 = 32_000;

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A free TCP port on 127.0.0.1.
///
/// Ports come from a per-process counter (starting at an offset derived from the process id, so
/// two concurrent runs of the suite start far apart) and are checked by binding, so parallel
/// tests in this process never get the same port.
pub fn free_port() -> u16 {
    let span = PORT_END - PORT_MIN;
    let _ = NEXT_PORT.compare_exchange(
        0,
        // The modulo keeps the value below `span`, so the cast cannot truncate.
        ((std::process::id() % 40) as u16) * (span / 40),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let n = NEXT_PORT.fetch_add(1, Ordering::Relaxed) % span;
        let port = PORT_MIN + n;
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        if TcpListener::bind(addr).is_ok() && !is_listening(port) {
            return port;
        }
    }
    panic!("no free port in {PORT_MIN}..{PORT_END}");
}

/// `127.0.0.1:port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// One TCP socket as the kernel lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketEntry {
    /// Local port.
    pub local_port: u16,
    /// Remote port (0 for listening sockets).
    pub remote_port: u16,
    /// Kernel state number: 0x01 ESTABLISHED, 0x0A LISTEN.
    pub state: u8,
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0A;
const TCP_CLOSE_WAIT: u8 = 0x08;

/// All TCP sockets of the host (IPv4 and IPv6 tables).
pub fn tcp_sockets() -> Vec<SocketEntry> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace();
            let (Some(_sl), Some(local), Some(remote), Some(state)) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            let port = |a: &str| {
                a.rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
            };
            if let (Some(local_port), Some(remote_port), Ok(state)) =
                (port(local), port(remote), u8::from_str_radix(state, 16))
            {
                out.push(SocketEntry {
                    local_port,
                    remote_port,
                    state,
                });
            }
        }
    }
    out
}

/// Whether something listens on `port`.
pub fn is_listening(port: u16) -> bool {
    tcp_sockets()
        .iter()
        .any(|s| s.local_port == port && s.state == TCP_LISTEN)
}

/// How many established connections have `port` as their local port (i.e. were accepted by
/// the server listening there).
pub fn accepted_connections(port: u16) -> usize {
    tcp_sockets()
        .iter()
        .filter(|s| s.local_port == port && s.state == TCP_ESTABLISHED)
        .count()
}

/// How many connections accepted on `port` the peer closed and the server has not closed yet
/// (`CLOSE_WAIT`): a close the server has still to notice.
pub fn unnoticed_closes(port: u16) -> usize {
    tcp_sockets()
        .iter()
        .filter(|s| s.local_port == port && s.state == TCP_CLOSE_WAIT)
        .count()
}

/// Polls `ready` every 20 ms until it is true; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, ready: impl FnMut() -> bool) {
    assert!(
        poll_until(timeout, ready),
        "timed out after {timeout:?} waiting for {what}"
    );
}

/// Polls `ready` every 20 ms until it is true (returns true) or `timeout` passes (false): for
/// a state a test waits for but whose absence its own assertions then explain better.
pub fn poll_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
