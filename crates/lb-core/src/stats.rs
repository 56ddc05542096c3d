//! Counters owned by the core as plain integers. Drivers read them for metrics; the simulator
//! and tests read the same numbers, so there is no global recorder.

/// Monotonic counters since the balancer started, plus a few gauges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// SIP requests received from frontends.
    pub frontend_requests_in: u64,
    /// SIP responses received from frontends.
    pub frontend_responses_in: u64,
    /// SIP requests received from backends.
    pub backend_requests_in: u64,
    /// SIP responses received from backends.
    pub backend_responses_in: u64,
    /// Messages forwarded to a backend.
    pub to_backend: u64,
    /// Messages forwarded to a frontend.
    pub to_frontend: u64,
    /// Bytes received on all connections.
    pub bytes_in: u64,
    /// Bytes handed to the driver for writing.
    pub bytes_out: u64,
    /// Messages routed by a valid tag.
    pub tagged: u64,
    /// Tags present but failing verification (treated as untagged).
    pub tag_failures: u64,
    /// Untagged messages that found their backend in the new-call table (retransmitted INVITEs,
    /// CANCELs, ACKs of non-2xx responses).
    pub table_hits: u64,
    /// New calls: a backend chosen and an entry made.
    pub new_calls: u64,
    /// Messages sent to a backup because their backend is down.
    pub to_backup: u64,
    /// 503 responses the balancer generated.
    pub replies_503: u64,
    /// 400 responses the balancer generated.
    pub replies_400: u64,
    /// 481 responses the balancer generated: a CANCEL of an unknown call, or an in-dialog request
    /// with no tag that verifies.
    pub replies_481: u64,
    /// 505 responses the balancer generated: requests of a SIP version other than 2.0.
    pub replies_505: u64,
    /// Framed messages that could not be parsed.
    pub malformed: u64,
    /// Connections closed because their framing was lost.
    pub framing_errors: u64,
    /// Messages dropped because no response was possible (malformed response, ACK with no
    /// route, no connection to the next hop).
    pub dropped: u64,
    /// CRLF keep-alive pings answered.
    pub keepalives: u64,
    /// Frontend connections accepted.
    pub frontends_accepted: u64,
    /// Frontend connections refused by the connection limit.
    pub frontends_refused: u64,
    /// Inputs naming an unknown or stale connection, ignored.
    pub stale_inputs: u64,
    /// Backend connections lost or refused.
    pub backend_failures: u64,
    /// OPTIONS probes sent to backends.
    pub probes_sent: u64,
    /// Probes that failed (timed out or answered with an error other than 503).
    pub probe_failures: u64,
    /// 503 answers from backends to new calls (each starts an overload hold).
    pub backend_overloads: u64,
    /// Frontend connections closed for sending nothing within the idle timeout.
    pub idle_closes: u64,
    /// Frontend connections closed for holding part of a message too long.
    pub partial_closes: u64,
    /// Configuration reloads applied.
    pub reloads: u64,
    /// Gauge: backends up now.
    pub backends_up: u64,
    /// Gauge: frontend connections open now.
    pub frontends_open: u64,
    /// Gauge: new-call table entries now.
    pub table_len: u64,
    /// Largest number of new-call table entries seen.
    pub table_len_max: u64,
}

impl std::fmt::Display for Stats {
    /// One line of `name=value` pairs, every counter, in declaration order: what the binaries
    /// print at exit and what scripts parse.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, value)) in self.pairs().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

impl Stats {
    /// Responses the balancer generated itself, of every status.
    pub fn replies(&self) -> u64 {
        self.replies_400 + self.replies_481 + self.replies_503 + self.replies_505
    }

    /// Every counter and gauge by name, in declaration order (for metrics exposition).
    pub fn pairs(&self) -> [(&'static str, u64); 35] {
        [
            ("frontend_requests_in", self.frontend_requests_in),
            ("frontend_responses_in", self.frontend_responses_in),
            ("backend_requests_in", self.backend_requests_in),
            ("backend_responses_in", self.backend_responses_in),
            ("to_backend", self.to_backend),
            ("to_frontend", self.to_frontend),
            ("bytes_in", self.bytes_in),
            ("bytes_out", self.bytes_out),
            ("tagged", self.tagged),
            ("tag_failures", self.tag_failures),
            ("table_hits", self.table_hits),
            ("new_calls", self.new_calls),
            ("to_backup", self.to_backup),
            ("replies_503", self.replies_503),
            ("replies_400", self.replies_400),
            ("replies_481", self.replies_481),
            ("replies_505", self.replies_505),
            ("malformed", self.malformed),
            ("framing_errors", self.framing_errors),
            ("dropped", self.dropped),
            ("keepalives", self.keepalives),
            ("frontends_accepted", self.frontends_accepted),
            ("frontends_refused", self.frontends_refused),
            ("stale_inputs", self.stale_inputs),
            ("backend_failures", self.backend_failures),
            ("probes_sent", self.probes_sent),
            ("probe_failures", self.probe_failures),
            ("backend_overloads", self.backend_overloads),
            ("idle_closes", self.idle_closes),
            ("partial_closes", self.partial_closes),
            ("reloads", self.reloads),
            ("backends_up", self.backends_up),
            ("frontends_open", self.frontends_open),
            ("table_len", self.table_len),
            ("table_len_max", self.table_len_max),
        ]
    }
}
