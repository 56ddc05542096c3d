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

/// SIP methods counted on their own in [`Telemetry::requests`]; any other is `other`. A fixed
/// list, so a peer inventing methods cannot grow the metrics.
pub const METHODS: [&str; 15] = [
    "INVITE",
    "ACK",
    "CANCEL",
    "BYE",
    "REGISTER",
    "OPTIONS",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "PRACK",
    "UPDATE",
    "INFO",
    "MESSAGE",
    "PUBLISH",
    "other",
];

/// Where a request came from, the other label of [`Telemetry::requests`].
pub const REQUEST_SOURCES: [&str; 2] = ["frontend", "backend"];

/// Upper bounds of the response-time histograms' buckets, in microseconds (the `le` labels
/// are these in seconds); the `+Inf` bucket follows.
pub const RESPONSE_BUCKETS_US: [u64; 15] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A histogram of durations, with [`RESPONSE_BUCKETS_US`] bounds: counts per bucket (not
/// cumulative; the last one is `+Inf`), their sum and their number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations per bucket: `buckets[i]` those above bound `i - 1` and at most bound `i`;
    /// the last those above every bound.
    pub buckets: [u64; RESPONSE_BUCKETS_US.len() + 1],
    /// The sum of the observations, in microseconds.
    pub sum_us: u64,
    /// How many observations.
    pub count: u64,
}

impl Histogram {
    /// Counts one duration of `us` microseconds.
    pub fn observe(&mut self, us: u64) {
        let bucket = RESPONSE_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
        self.count += 1;
    }

    fn accumulate(&mut self, other: &Histogram) {
        for (sum, n) in self.buckets.iter_mut().zip(other.buckets) {
            *sum = sum.saturating_add(n);
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.count = self.count.saturating_add(other.count);
    }
}

/// What the core counts per backend besides its state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendFigures {
    /// Responses the backend sent (probe answers aside), by status class: `[0]` 1xx … `[5]` 6xx.
    pub responses: [u64; 6],
    /// Time from forwarding a request to the backend to its first response (provisional or
    /// final), per request.
    pub first_response: Histogram,
    /// Time from forwarding a request to the backend to its final response, per request.
    pub final_response: Histogram,
}

/// The labelled figures of the core: requests by method and source, and per backend the
/// responses by class and the response-time histograms. Kept apart from [`Stats`] (plain
/// named integers), summed over workers the same way ([`Figures::accumulate`]).
///
/// Response times need no per-transaction state: the balancer's own Via on a request to a
/// backend carries the send time inside its MAC-covered `lbc` token (`conn_token`), and the
/// backend echoes it in every response. Only telling a *first* response from a later one
/// needs memory: a small fixed array remembers the tokens of transactions that have had a
/// provisional response ([`FIRST_SEEN_SLOTS`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    /// Requests received, `[source][method]` in [`REQUEST_SOURCES`] × [`METHODS`] order.
    pub requests: [[u64; METHODS.len()]; REQUEST_SOURCES.len()],
    /// Per backend, in id order (backends added at runtime extend it).
    pub backends: Vec<BackendFigures>,
}

impl Default for Figures {
    fn default() -> Figures {
        Figures {
            requests: [[0; METHODS.len()]; REQUEST_SOURCES.len()],
            backends: Vec::new(),
        }
    }
}

/// [`Figures`] and the memory that tells first responses from later ones.
#[derive(Debug)]
pub(crate) struct Telemetry {
    pub(crate) figures: Figures,
    /// Direct-mapped: the token MACs of transactions whose provisional response was timed as
    /// their first; a collision costs one final response also counted as a first.
    first_seen: Box<[u64]>,
}

/// Slots of the array that tells first responses from later ones (8 bytes each).
pub const FIRST_SEEN_SLOTS: usize = 4096;

impl Default for Telemetry {
    fn default() -> Telemetry {
        Telemetry {
            figures: Figures::default(),
            first_seen: vec![0; FIRST_SEEN_SLOTS].into_boxed_slice(),
        }
    }
}

/// A response's send time, read back from the balancer's own Via.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timed {
    /// Microseconds since the request was forwarded.
    pub(crate) elapsed_us: u64,
    /// The token's MAC: names the forwarded request.
    pub(crate) key: u64,
}

impl Telemetry {
    /// The [`METHODS`] index of a request's method token.
    pub(crate) fn method_index(token: &[u8]) -> usize {
        METHODS[..METHODS.len() - 1]
            .iter()
            .position(|m| m.as_bytes() == token)
            .unwrap_or(METHODS.len() - 1)
    }

    /// One request received from `source` ([`REQUEST_SOURCES`] index).
    pub(crate) fn count_request(&mut self, source: usize, method_token: &[u8]) {
        self.figures.requests[source][Telemetry::method_index(method_token)] += 1;
    }

    /// A response from `backend` with `status`; `timed` when it carries the balancer's Via
    /// with a send time.
    pub(crate) fn count_response(&mut self, backend: usize, status: u16, timed: Option<Timed>) {
        let Some(class) = (100..700)
            .contains(&status)
            .then(|| usize::from(status / 100 - 1))
        else {
            return;
        };
        let Some(timed) = timed else {
            self.figures.backend(backend).responses[class] += 1;
            return;
        };
        let slot = (timed.key % FIRST_SEEN_SLOTS as u64) as usize;
        // 0 marks an empty slot: a MAC of 0 is simply never remembered.
        let seen = timed.key != 0 && self.first_seen[slot] == timed.key;
        if status >= 200 {
            if seen {
                self.first_seen[slot] = 0;
            }
        } else if !seen {
            self.first_seen[slot] = timed.key;
        }
        let figures = self.figures.backend(backend);
        figures.responses[class] += 1;
        if !seen {
            figures.first_response.observe(timed.elapsed_us);
        }
        if status >= 200 {
            figures.final_response.observe(timed.elapsed_us);
        }
    }
}

impl Figures {
    fn backend(&mut self, backend: usize) -> &mut BackendFigures {
        if self.backends.len() <= backend {
            self.backends
                .resize_with(backend + 1, BackendFigures::default);
        }
        &mut self.backends[backend]
    }

    /// Adds `other`'s figures to these (the sum over one process's workers).
    pub fn accumulate(&mut self, other: &Figures) {
        for (mine, theirs) in self.requests.iter_mut().zip(&other.requests) {
            for (sum, n) in mine.iter_mut().zip(theirs) {
                *sum = sum.saturating_add(*n);
            }
        }
        for (i, theirs) in other.backends.iter().enumerate() {
            let mine = self.backend(i);
            for (sum, n) in mine.responses.iter_mut().zip(theirs.responses) {
                *sum = sum.saturating_add(n);
            }
            mine.first_response.accumulate(&theirs.first_response);
            mine.final_response.accumulate(&theirs.final_response);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let mut h = Histogram::default();
        for us in [0, 500, 501, 1_000, 30_000_000, 30_000_001, u64::MAX] {
            h.observe(us);
        }
        assert_eq!(h.buckets[0], 2, "0 and 500 are at most 500 µs");
        assert_eq!(h.buckets[1], 2, "501 and 1000");
        assert_eq!(h.buckets[RESPONSE_BUCKETS_US.len() - 1], 1);
        assert_eq!(h.buckets[RESPONSE_BUCKETS_US.len()], 2, "+Inf");
        assert_eq!(h.count, 7);
        assert_eq!(h.sum_us, u64::MAX, "saturates");
    }

    #[test]
    fn a_first_response_is_timed_once_and_every_final_once() {
        let mut t = Telemetry::default();
        let invite = |elapsed_us| {
            Some(Timed {
                elapsed_us,
                key: 77,
            })
        };
        t.count_response(0, 100, invite(1_000));
        t.count_response(0, 180, invite(2_000));
        t.count_response(0, 200, invite(3_000));
        let bye = Some(Timed {
            elapsed_us: 700,
            key: 78,
        });
        t.count_response(1, 200, bye);
        t.count_response(1, 404, None);
        t.count_response(1, 99, None);
        let b0 = &t.figures.backends[0];
        assert_eq!(b0.responses, [2, 1, 0, 0, 0, 0]);
        assert_eq!(
            (b0.first_response.count, b0.first_response.sum_us),
            (1, 1_000)
        );
        assert_eq!(
            (b0.final_response.count, b0.final_response.sum_us),
            (1, 3_000)
        );
        let b1 = &t.figures.backends[1];
        assert_eq!(b1.responses, [0, 1, 0, 1, 0, 0]);
        assert_eq!(b1.first_response.count, 1);
        assert_eq!(b1.final_response.count, 1);
        // The final response cleared the slot: a later transaction with the same key starts anew.
        assert!(t.first_seen.iter().all(|&k| k == 0));

        let mut sum = Figures::default();
        sum.accumulate(&t.figures);
        sum.accumulate(&t.figures);
        assert_eq!(sum.backends[0].responses[0], 4);
        assert_eq!(sum.backends[1].final_response.count, 2);
    }

    #[test]
    fn methods_outside_the_list_are_other() {
        let mut t = Telemetry::default();
        t.count_request(0, b"INVITE");
        t.count_request(0, b"invite");
        t.count_request(1, b"PRACK");
        assert_eq!(t.figures.requests[0][0], 1);
        assert_eq!(t.figures.requests[0][METHODS.len() - 1], 1);
        assert_eq!(t.figures.requests[1][9], 1);
    }
}
