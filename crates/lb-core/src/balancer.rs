//! The balancer: connections, backends and the routing of each message.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use crate::config::ValidConfig;
use crate::ids::{ConnId, ListenerId};
use crate::io::{Input, Output};
use crate::stats::Stats;

/// The whole balancing method as a state machine. See the crate docs for the driver loop.
#[derive(Debug)]
pub struct Balancer {
    config: ValidConfig,
    outputs: VecDeque<Output>,
    stats: Stats,
    now: Instant,
}

impl Balancer {
    /// A balancer for `config`. `seed` feeds every random choice (tie-breaks, reconnect jitter)
    /// and the keys of its hash tables; `now` is the time origin. Queues an
    /// [`Output::Connect`] for every backend.
    pub fn new(config: ValidConfig, seed: u64, now: Instant) -> Balancer {
        let _ = seed;
        Balancer { config, outputs: VecDeque::new(), stats: Stats::default(), now }
    }

    /// The listeners of the configuration, to bind: report accepted connections with their id.
    pub fn listeners(&self) -> impl Iterator<Item = (ListenerId, SocketAddr)> + '_ {
        self.config.config.listeners.iter().enumerate().map(|(i, a)| (ListenerId::new(i), *a))
    }

    /// A frontend connection was accepted on `listener` from `peer`; returns its id. When the
    /// frontend limit is reached the id comes with an [`Output::Close`] already queued.
    pub fn accept(&mut self, now: Instant, listener: ListenerId, peer: SocketAddr) -> ConnId {
        let _ = (now, listener, peer);
        todo!()
    }

    /// Feeds one input; all protocol work happens here. Drain [`Balancer::poll_output`] after.
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        let _ = (now, input);
        todo!()
    }

    /// The next action, or `None` once drained. Does no work of its own.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest internal deadline: feed [`Input::Timeout`] at or after it. May move after
    /// any `handle_input` or `accept`.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// Counters since start.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}
