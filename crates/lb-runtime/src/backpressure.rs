//! The drivers' half of overload control: each connection's output queue against two marks
//! and a ceiling, the same arithmetic for lb-tokio and lb-mio.
//!
//! - Past the **high-water mark** the driver reports `Input::OutputQueue { level: High }` once;
//!   the core then holds a backend (no new calls) or stops sending to a frontend, and the driver
//!   stops reading from that frontend ([`Watermarks::pauses_reading`]).
//! - Back below the **low-water mark** it reports `Low` once and reads again. The gap keeps a
//!   queue near one mark from flapping between the two states on every message.
//! - The **ceiling** (`--output-cap`) is the hard bound on what one peer can make the balancer
//!   hold. A frontend past it is closed, as before. A backend past it is not: the message is
//!   dropped and counted, and the backend keeps its connection and its calls. Closing it would
//!   mark it down and move its calls to backups, which is the collapse issue 15 measured.
//!
//! How long a connection may stay above the high mark is the core's decision
//! (`Config::stall_timeout`), so the deadline lives with every other timer.

pub use lb_core::QueueLevel;

/// Smallest kernel send buffer set on a connection the balancer opens: a few messages.
pub const SEND_BUFFER_MIN: usize = 16 * 1024;

/// A connection's output queue marks, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// Report `High` when the queue grows past this.
    pub high: usize,
    /// Report `Low` when the queue falls below this again.
    pub low: usize,
    /// Never queue more than this.
    pub ceiling: usize,
}

/// What to do with bytes about to be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Queue them; `report` is the level crossing to feed the core afterwards, if any.
    Queue {
        /// `Some(High)` when these bytes take the queue past the high-water mark.
        report: Option<QueueLevel>,
    },
    /// Past the ceiling, toward a frontend: close the connection (`OutputOverflow`).
    Close,
    /// Past the ceiling, toward a backend: drop this message, keep the connection.
    Drop,
}

impl Watermarks {
    /// The marks of the running settings (lb-cli's `Settings` converts into them; this crate
    /// sits below the settings, so it takes whatever knows its marks).
    pub fn of(settings: impl Into<Watermarks>) -> Watermarks {
        settings.into()
    }

    /// `len` more bytes for a connection with `queued` bytes waiting, `high` when it was last
    /// reported over the high-water mark.
    pub fn admit(&self, queued: usize, len: usize, high: bool, frontend: bool) -> Admit {
        let after = queued.saturating_add(len);
        if after > self.ceiling {
            return if frontend { Admit::Close } else { Admit::Drop };
        }
        let crossed = !high && after > self.high;
        Admit::Queue {
            report: crossed.then_some(QueueLevel::High),
        }
    }

    /// After a write left `queued` bytes waiting on a connection reported `high`: whether it is
    /// now below the low-water mark (report `Low`, read again).
    pub fn drained(&self, queued: usize, high: bool) -> bool {
        Watermarks::drained_below(self.low, queued, high)
    }

    /// [`Watermarks::drained`] against the low-water mark alone: for a queue that keeps only
    /// that mark (lb-tokio's outbox, one per connection, where every byte counts).
    pub fn drained_below(low: usize, queued: usize, high: bool) -> bool {
        high && (queued < low || queued == 0)
    }

    /// The kernel send buffer for a connection the balancer opens (to a backend, or a dial-out):
    /// a quarter of the high-water mark, at least [`SEND_BUFFER_MIN`]. Left to autotuning,
    /// Linux grows it to `net.ipv4.tcp_wmem`'s maximum (4 MiB by default): thousands of
    /// messages queued where the driver cannot see them, seconds of delay before the high-water
    /// mark is ever reached (measured by `cargo xtask bench overload`: no hold at all, calls
    /// timing out behind the kernel's queue). Bounded, the queue grows where the marks are.
    pub fn kernel_send_buffer(&self) -> usize {
        (self.high / 4).max(SEND_BUFFER_MIN)
    }

    /// Sets `socket`'s send buffer to [`Watermarks::kernel_send_buffer`]; a failure only
    /// leaves the kernel's default, so it is logged and the connection goes on.
    pub fn bound_send_buffer<S: std::os::fd::AsFd>(&self, socket: &S) {
        let bytes = self.kernel_send_buffer();
        if let Err(e) = socket2::SockRef::from(socket).set_send_buffer_size(bytes) {
            tracing::debug!(error = %e, bytes, "cannot bound the send buffer");
        }
    }

    /// Whether a connection over the high-water mark stops being read: frontends only. A
    /// backend connection carries every frontend's calls, and its responses are what drains
    /// the frontends; it is always read.
    pub fn pauses_reading(frontend: bool) -> bool {
        frontend
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKS: Watermarks = Watermarks {
        high: 100,
        low: 40,
        ceiling: 1000,
    };

    #[test]
    fn high_is_reported_once_when_crossed() {
        let none = Admit::Queue { report: None };
        assert_eq!(
            MARKS.admit(0, 100, false, true),
            none,
            "at the mark is not past it"
        );
        let high = Admit::Queue {
            report: Some(QueueLevel::High),
        };
        assert_eq!(MARKS.admit(90, 11, false, true), high);
        assert_eq!(MARKS.admit(200, 10, true, true), none, "already reported");
    }

    #[test]
    fn the_ceiling_closes_frontends_and_drops_for_backends() {
        assert_eq!(MARKS.admit(990, 11, true, true), Admit::Close);
        assert_eq!(MARKS.admit(990, 11, true, false), Admit::Drop);
        assert_eq!(
            MARKS.admit(990, 10, true, false),
            Admit::Queue { report: None }
        );
    }

    #[test]
    fn low_is_reported_below_the_low_mark_only_after_high() {
        assert!(!MARKS.drained(39, false));
        assert!(!MARKS.drained(40, true));
        assert!(MARKS.drained(39, true));
    }
}
