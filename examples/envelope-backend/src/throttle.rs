//! `--max-rate N`: a backend that takes at most N INVITEs per second, for `cargo xtask bench
//! overload` and the overload test. The rate is the process's, shared by all its connections
//! (a balancer with several workers opens one per worker). Past the rate it stops reading from the balancer, as a
//! server whose CPU is busy would: the balancer's queue toward it grows, which is what the
//! balancer's overload hold reacts to. Its socket's receive buffer is kept small, so the
//! backlog sits in the balancer's queue rather than in this socket.

use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use lb_backend::{BackendConn, Received};

use crate::uas::{Counters, Uas};

/// Receive buffer of a throttled backend's socket: a few dozen messages.
const RECV_BUFFER_BYTES: usize = 32 * 1024;

/// Credit an idle backend may save up, so a quiet moment does not turn into a burst above the
/// rate afterwards.
const BURST: Duration = Duration::from_millis(20);

/// Paces INVITEs to a fixed rate.
pub(crate) struct Throttle {
    interval: Duration,
    next: Instant,
}

impl Throttle {
    pub(crate) fn new(per_sec: f64, now: Instant) -> Throttle {
        Throttle {
            interval: Duration::from_secs_f64(1.0 / per_sec.max(0.001)),
            next: now,
        }
    }

    /// How long to wait before taking the next INVITE at `now` (and takes its place).
    pub(crate) fn wait_for_invite(&mut self, now: Instant) -> Duration {
        let floor = now.checked_sub(BURST).unwrap_or(now);
        let at = self.next.max(floor);
        self.next = at + self.interval;
        at.saturating_duration_since(now)
    }
}

/// Answers one balancer connection until it closes, taking at most `per_sec` INVITEs a second.
pub(crate) fn serve_throttled(
    stream: TcpStream,
    name: &str,
    contact_host: &str,
    answer_delay: Duration,
    counters: &Counters,
    throttle: &Mutex<Throttle>,
) -> Result<(), lb_backend::BackendError> {
    // Best effort: without it the backlog also waits in this socket, which changes nothing but
    // where the queue is.
    let _ = socket2::SockRef::from(&stream).set_recv_buffer_size(RECV_BUFFER_BYTES);
    let mut conn = BackendConn::new(stream)?;
    let mut uas = Uas::new(name, contact_host, answer_delay, counters);
    let mut out = Vec::new();
    loop {
        match conn.recv_until(uas.poll_timeout())? {
            Received::Message(inbound) => {
                if inbound.sip.starts_with(b"INVITE ") {
                    let wait = throttle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .wait_for_invite(Instant::now());
                    if !wait.is_zero() {
                        std::thread::sleep(wait);
                    }
                }
                uas.handle(Instant::now(), inbound.source, inbound.sip, &mut out);
            }
            Received::Deadline => uas.handle_timeout(Instant::now(), &mut out),
            Received::Closed => return Ok(()),
        }
        let load = Some(uas.load());
        counters.sent.fetch_add(out.len() as u64, Ordering::Relaxed);
        for (next_hop, sip) in out.drain(..) {
            conn.queue(next_hop, load, &sip);
        }
        conn.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_are_paced_and_idle_time_buys_only_a_small_burst() {
        let start = Instant::now();
        let mut t = Throttle::new(100.0, start);
        let ms = Duration::from_millis;
        assert_eq!(t.wait_for_invite(start), Duration::ZERO);
        assert_eq!(t.wait_for_invite(start), ms(10));
        assert_eq!(t.wait_for_invite(start), ms(20));
        // A second later: at most BURST of credit (two more INVITEs at once), then paced again.
        let later = start + Duration::from_secs(1);
        assert_eq!(t.wait_for_invite(later), Duration::ZERO);
        assert_eq!(t.wait_for_invite(later), Duration::ZERO);
        assert_eq!(t.wait_for_invite(later), Duration::ZERO);
        assert_eq!(t.wait_for_invite(later), ms(10));
    }
}
