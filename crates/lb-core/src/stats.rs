//! Counters owned by the core as plain integers. Drivers read them for metrics; the simulator
//! and tests read the same numbers, so there is no global recorder.
//!
//! One table below declares every counter and gauge with its help text: the struct fields, the
//! [`Stats::pairs`] order, the metrics' help and their counter/gauge type all come from it, so a
//! new counter is one line.

/// Whether a figure only grows or is a level now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic since start.
    Counter,
    /// A level now (or a high-water mark).
    Gauge,
}

/// One figure of [`Stats`]: its name, help text and kind, as metrics expose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Series {
    /// The field name, also the metric name (after the exporter's prefix).
    pub name: &'static str,
    /// One line describing it.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
}

macro_rules! kind {
    (counter) => {
        Kind::Counter
    };
    (gauge) => {
        Kind::Gauge
    };
}

macro_rules! stats_table {
    ($($kind:ident $name:ident: $help:literal;)*) => {
        /// Monotonic counters since the balancer started, plus a few gauges.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct Stats {
            $(
                #[doc = $help]
                pub $name: u64,
            )*
        }

        impl Stats {
            /// How many figures [`Stats`] holds.
            pub const LEN: usize = [$(stringify!($name),)*].len();

            /// Every figure's name, help and kind, in declaration order.
            pub const SERIES: [Series; Stats::LEN] = [
                $(Series { name: stringify!($name), help: $help, kind: kind!($kind) },)*
            ];

            /// Every counter and gauge by name, in declaration order (for metrics exposition).
            pub fn pairs(&self) -> [(&'static str, u64); Stats::LEN] {
                [$((stringify!($name), self.$name),)*]
            }

            /// Adds every figure of `other` to this one, gauges too: the sum over several
            /// balancers (one process's workers). A caller for whom a summed gauge means
            /// nothing (`backends_up`) sets it afterwards.
            pub fn accumulate(&mut self, other: &Stats) {
                $(self.$name = self.$name.saturating_add(other.$name);)*
            }
        }
    };
}

stats_table! {
    counter frontend_requests_in: "SIP requests received from frontends";
    counter frontend_responses_in: "SIP responses received from frontends";
    counter backend_requests_in: "SIP requests received from backends";
    counter backend_responses_in: "SIP responses received from backends";
    counter to_backend: "Messages forwarded to a backend";
    counter to_frontend: "Messages forwarded to a frontend";
    counter bytes_in: "Bytes received on all connections";
    counter bytes_out: "Bytes handed to the driver for writing";
    counter tagged: "Messages routed by a valid tag";
    counter tag_failures: "Tags present but failing verification (treated as untagged)";
    counter table_hits: "Untagged messages that found their backend in the new-call table (retransmitted INVITEs, CANCELs, ACKs of non-2xx responses)";
    counter new_calls: "New calls: a backend chosen and an entry made";
    counter to_backup: "Messages sent to a backup because their backend is down";
    counter replies_503: "503 responses the balancer generated";
    counter replies_400: "400 responses the balancer generated";
    counter replies_481: "481 responses the balancer generated: a CANCEL of an unknown call, or an in-dialog request with no tag that verifies";
    counter replies_505: "505 responses the balancer generated: requests of a SIP version other than 2.0";
    counter replies_482: "482 responses the balancer generated: a request that would loop back to where it came from";
    counter replies_483: "483 responses the balancer generated: a request whose Max-Forwards reached zero";
    counter malformed: "Framed messages that could not be parsed";
    counter framing_errors: "Connections closed because their framing was lost";
    counter dropped: "Messages dropped because no response was possible (malformed response, ACK with no route, no connection to the next hop)";
    counter keepalives: "CRLF keep-alive pings answered";
    counter frontends_accepted: "Frontend connections accepted";
    counter frontends_refused: "Frontend connections refused by the connection limit";
    counter stale_inputs: "Inputs naming an unknown or stale connection, ignored";
    counter backend_failures: "Backend connections lost or refused";
    counter probes_sent: "OPTIONS probes sent to backends";
    counter probe_failures: "Probes that failed (timed out or answered with an error other than 503)";
    counter backend_quarantines: "Backend connections lost again soon after the last loss: their next reconnect waits twice as long";
    counter backend_overloads: "503 answers from backends to new calls (each starts an overload hold)";
    counter idle_closes: "Frontend connections closed for sending nothing within the idle timeout";
    counter partial_closes: "Frontend connections closed for holding part of a message too long";
    counter reloads: "Configuration reloads applied";
    counter dial_outs: "Connections the balancer opened toward frontends (dial-out, RFC 3261 §18.1.1)";
    counter dial_out_failures: "Dial-outs that failed to connect; their queued requests got 503";
    counter dial_out_refused: "Requests refused with 503 because dial-out was at its limits";
    counter sanity_refused: "Initial requests from frontends refused with 400 by the sanity checks (no From tag, a host, URI or header field too long)";
    counter table_share_refused: "New calls refused with 503 because their connection held its share of a new-call table at least half full";
    counter unanswered_invites: "INVITEs forwarded to a backend that sent no response to them within unanswered-timeout";
    counter passive_ejections: "Backends taken out for unanswered-to-down unanswered INVITEs in a row (passive health)";
    counter frontends_evicted: "Frontend connections closed at the connection limit to make room: they had sent no SIP message, or none for frontend-evict-idle";
    counter backend_queue_holds: "Times a backend's connection queue grew past the high-water mark: no new calls for it until the queue falls below the low-water mark (its calls' traffic still flows)";
    counter overload_refused: "New calls refused with 503 and Retry-After because every backend that is up is held (queue over the high-water mark, or a 503 of its own)";
    counter frontend_stall_drops: "Messages dropped because the frontend they were bound for had its queue over the high-water mark (it is not reading); the backend connection they came on never waits";
    counter stall_closes: "Connections closed because their queue stayed over the high-water mark for the stall timeout (the peer stopped reading)";
    gauge backends_up: "Backends up now";
    gauge backends_queue_held: "Backends whose connection queue is over the high-water mark now (held: no new calls)";
    gauge frontends_open: "Frontend connections open now";
    gauge dial_outs_open: "Connections toward frontends the balancer opened, open or opening now";
    gauge table_len: "New-call table entries now";
    gauge table_len_max: "Largest number of new-call table entries seen";
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
        self.replies_400
            + self.replies_481
            + self.replies_482
            + self.replies_483
            + self.replies_503
            + self.replies_505
    }
}
