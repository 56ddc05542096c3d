//! `--trace-call-id`: every message of the Call-IDs an operator names is logged with its route
//! decision, read off the outputs its routing produced (where each went, or why none did).
//! What operators reach for before a packet capture; off, it costs one empty-list check.

use super::*;

impl Balancer {
    /// Whether messages of `call_id` are traced.
    pub(super) fn is_traced(&self, call_id: &[u8]) -> bool {
        let ids = &self.config.config.trace_call_ids;
        !ids.is_empty() && ids.iter().any(|id| id.as_bytes() == call_id)
    }

    /// Logs a traced message from `from` (its first line) and what its routing queued since
    /// output `mark`.
    pub(super) fn log_trace(&self, from: ConnId, call_id: &str, first_line: &str, mark: usize) {
        let mut decisions = Vec::new();
        for output in self.outputs.iter().skip(mark) {
            decisions.push(match output {
                Output::Send { conn, bytes } => {
                    let line = bytes
                        .split(|&b| b == b'\r')
                        .next()
                        .map(String::from_utf8_lossy)
                        .unwrap_or_default();
                    format!("{} <- {line}", self.describe(*conn))
                }
                Output::Dial { to, .. } => format!("dial-out to {to}"),
                Output::Resolve { host, port, .. } => format!("resolving {host} (port {port:?})"),
                Output::Connect { backend, .. } => format!("connecting backend {backend}"),
                Output::Close { conn } => format!("closing {}", self.describe(*conn)),
                Output::Abort { conn } => format!("dropping {}", self.describe(*conn)),
                Output::Event(Event::Dropped { cause, .. }) => format!("dropped: {cause}"),
                Output::Event(e) => format!("{e:?}"),
            });
        }
        if decisions.is_empty() {
            decisions.push("held (waiting for a dial-out to connect)".into());
        }
        tracing::info!(
            target: "siplb::trace",
            call_id,
            from = %self.describe(from),
            sip = %first_line,
            decision = %decisions.join("; "),
            "traced call"
        );
    }

    /// A connection as an operator reads it: the backend it leads to, or the frontend peer.
    fn describe(&self, conn: ConnId) -> String {
        match self.conn(conn).map(|c| &c.side) {
            Some(Side::Backend { backend, .. }) => {
                let addr = self
                    .config
                    .config
                    .backends
                    .get(backend.index())
                    .map(|b| b.addr);
                match addr {
                    Some(addr) => format!("backend {backend} ({addr})"),
                    None => format!("backend {backend}"),
                }
            }
            Some(Side::Frontend { peer, .. }) => format!("frontend {conn} ({peer})"),
            None => format!("{conn} (gone)"),
        }
    }
}
