//! # lb-loadgen: calls through siplb, as a SIP proxy would send them
//!
//! The generator opens a few TCP connections to the balancer and multiplexes many calls over
//! them, the way a proxy in front of a B2BUA farm does. Each call is INVITE → 100 / 180 / 200 →
//! ACK (routed by the Record-Route the balancer inserted) → hold → BYE (same route) → 200. One
//! INVITE in ten is sent a second time shortly after the first, with the same branch, so the
//! balancer's new-call table has retransmissions to match.
//!
//! The affinity check needs nothing from the backends but what every UAS sends: its own To tag
//! on the responses to an INVITE, and its own address in their Contact. A call whose INVITE is
//! answered with two To tags or two Contacts was answered by two backends, an affinity
//! violation, the one thing a SIP balancer must never do (an in-dialog request sent to the
//! wrong backend gets a 481 there and fails the call). Backends are named by their Contact,
//! `user@host:port`. The [`Report`] counts violations, failures, and calls and messages per
//! backend.
//!
//! One thread drives every connection through `mio`: the work per message is a little parsing,
//! so a single event loop keeps up with a few thousand calls per second and leaves the other
//! core to the balancer and the backends.

#![warn(missing_docs)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]

mod engine;
mod msg;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use engine::run;

/// What to generate.
#[derive(Clone, Debug)]
pub struct Config {
    /// The balancer's listen address.
    pub target: SocketAddr,
    /// TCP connections to open; calls are spread over them in turn.
    pub connections: usize,
    /// New calls per second; 0 starts calls as fast as `max_active` allows.
    pub rate: f64,
    /// When to stop starting calls.
    pub limit: Limit,
    /// Time between the ACK and the BYE.
    pub hold: Duration,
    /// Calls in progress at most; a new call waits for a free place (0: no limit).
    pub max_active: usize,
    /// Every n-th INVITE is sent twice (0: never).
    pub retransmit_every: u64,
    /// How long after the INVITE its copy is sent (kept below `hold`).
    pub retransmit_delay: Duration,
    /// How long each transaction (INVITE, BYE) may take before the call counts as failed.
    pub timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            target: SocketAddr::from(([127, 0, 0, 1], 5060)),
            connections: 4,
            rate: 100.0,
            limit: Limit::Calls(1000),
            hold: Duration::from_millis(500),
            max_active: 0,
            retransmit_every: 10,
            retransmit_delay: Duration::from_millis(20),
            timeout: Duration::from_secs(5),
        }
    }
}

/// When to stop starting calls; calls in progress are then finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this many calls.
    Calls(u64),
    /// After this long.
    Duration(Duration),
}

/// A snapshot while running, for a live progress line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Time since the first call.
    pub elapsed: Duration,
    /// Calls started.
    pub started: u64,
    /// Calls completed successfully.
    pub ok: u64,
    /// Calls failed.
    pub failed: u64,
    /// Calls in progress.
    pub active: u64,
    /// Calls answered by two backends.
    pub affinity_violations: u64,
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "t={:.0}s started={} ok={} failed={} active={} affinity_violations={}",
            self.elapsed.as_secs_f64(),
            self.started,
            self.ok,
            self.failed,
            self.active,
            self.affinity_violations
        )
    }
}

/// The result of a run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Calls that got their 200 to the INVITE and to the BYE.
    pub calls_ok: u64,
    /// Calls that timed out, got a non-2xx, or lost their connection.
    pub calls_failed: u64,
    /// Of the failed: no final response in time.
    pub timeouts: u64,
    /// Of the failed: a final response other than 2xx (and other than 503), by status code.
    pub non_2xx: BTreeMap<u16, u64>,
    /// Calls refused with 503 (the balancer or a backend pushing back under overload): not
    /// failed, the caller may retry after Retry-After (RFC 6357). Counted in neither
    /// `calls_ok` nor `calls_failed`.
    pub calls_rejected: u64,
    /// Calls whose INVITE was answered by two backends (two To tags or two Contacts).
    pub affinity_violations: u64,
    /// INVITEs sent a second time.
    pub retransmitted: u64,
    /// Successful calls by the backend that answered them.
    pub calls_per_backend: BTreeMap<String, u64>,
    /// Responses received, by the backend that sent them (its Contact, else the call's).
    pub msgs_per_backend: BTreeMap<String, u64>,
    /// Responses from no known backend (e.g. the balancer's own 503, a 100 before any Contact).
    pub msgs_unnamed: u64,
    /// Messages sent.
    pub msgs_sent: u64,
    /// Connections lost during the run.
    pub connections_lost: u64,
    /// Time from the first call to the end.
    pub elapsed: Duration,
}

impl Report {
    /// Successful calls per second over the whole run.
    pub fn calls_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.calls_ok as f64 / secs
        } else {
            0.0
        }
    }
}

impl fmt::Display for Report {
    /// One machine-readable line of `key=value` pairs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |map: &BTreeMap<String, u64>| {
            map.iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let codes = self
            .non_2xx
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(",");
        write!(
            f,
            "calls_ok={} calls_failed={} affinity_violations={} retransmitted={} per_backend={} \
             msgs_per_backend={} timeouts={} non_2xx={} msgs_unnamed={} msgs_sent={} \
             connections_lost={} elapsed_s={:.3} calls_per_sec={:.0} calls_rejected={}",
            self.calls_ok,
            self.calls_failed,
            self.affinity_violations,
            self.retransmitted,
            list(&self.calls_per_backend),
            list(&self.msgs_per_backend),
            self.timeouts,
            codes,
            self.msgs_unnamed,
            self.msgs_sent,
            self.connections_lost,
            self.elapsed.as_secs_f64(),
            self.calls_per_sec(),
            self.calls_rejected
        )
    }
}

/// Why a run could not start or continue.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// Connecting to the balancer or polling failed.
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    /// Every connection to the balancer is gone.
    #[error("all connections to the balancer are lost")]
    AllConnectionsLost,
    /// The configuration cannot run.
    #[error("bad configuration: {0}")]
    Config(&'static str),
}
