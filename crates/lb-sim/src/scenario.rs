//! The named scenarios and every knob of a run. A run is fully described by its [`Knobs`]:
//! the same knobs (seed included) give the same trace, byte for byte.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A named scenario: a preset of [`Knobs`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Backends slower than T1: every INVITE is retransmitted at least once.
    Storm,
    /// Long calls that outlive the window, re-INVITEs, calls ringing for minutes then cancelled.
    Expiry,
    /// A storm during which one backend dies and later returns.
    Failover,
    /// Three balancer instances of two workers each, sharing nothing but config and keys;
    /// in-dialog requests reach any of them, and one instance dies half way through the
    /// arrivals.
    Scale,
}

impl Scenario {
    /// Every scenario, for tests and help texts.
    pub const ALL: [Scenario; 4] = [
        Scenario::Storm,
        Scenario::Expiry,
        Scenario::Failover,
        Scenario::Scale,
    ];

    /// The name used on the command line and in the result line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Storm => "storm",
            Scenario::Expiry => "expiry",
            Scenario::Failover => "failover",
            Scenario::Scale => "scale",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown scenario name.
#[derive(Debug, thiserror::Error)]
#[error("unknown scenario {0:?} (storm, expiry, failover, scale)")]
pub struct UnknownScenario(String);

impl FromStr for Scenario {
    type Err = UnknownScenario;

    fn from_str(s: &str) -> Result<Scenario, UnknownScenario> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| UnknownScenario(s.to_owned()))
    }
}

/// A uniform range of durations `[lo, hi]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// Lower bound.
    pub lo: Duration,
    /// Upper bound (inclusive).
    pub hi: Duration,
}

impl Span {
    /// `[lo_ms, hi_ms]` in milliseconds.
    pub const fn ms(lo_ms: u64, hi_ms: u64) -> Span {
        Span {
            lo: Duration::from_millis(lo_ms),
            hi: Duration::from_millis(hi_ms),
        }
    }
}

/// A backend outage during `[at, until)`, measured from the start of the run: the backend either
/// resets its connections and refuses new ones, or (`silent`) keeps them open and ignores
/// everything it receives — a hang the balancer cannot see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outage {
    /// Which backend (index into the configured list).
    pub backend: usize,
    /// When it dies.
    pub at: Duration,
    /// When it accepts connections again.
    pub until: Duration,
    /// Hangs instead of resetting.
    pub silent: bool,
}

/// Everything that shapes a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Knobs {
    /// The scenario name (for the result line).
    pub scenario: Scenario,
    /// Seeds every random draw of the world and of the balancers.
    pub seed: u64,
    /// Calls to place.
    pub calls: u64,
    /// New calls per second of virtual time (Poisson arrivals).
    pub rate: f64,
    /// Backends in the farm.
    pub backends: usize,
    /// Balancer instances sharing nothing but the configuration and the tag key.
    pub instances: usize,
    /// Workers per instance: independent cores behind one address (SO_REUSEPORT), as
    /// `--workers N` runs them; each has its own connections to every backend.
    pub workers: usize,
    /// Instance `.0` dies at `.1` from the start (every worker of it, with its connections).
    pub instance_death: Option<(usize, Duration)>,
    /// SIP proxies between the user agents and the balancers.
    pub proxies: usize,
    /// Persistent TCP connections from each proxy to each balancer instance.
    pub conns_per_proxy: usize,
    /// One-way latency of the UDP legs (user agent ↔ proxy).
    pub udp_latency: Span,
    /// Probability that a UDP datagram is lost.
    pub udp_loss: f64,
    /// One-way latency of the TCP legs (proxy ↔ balancer ↔ backend); order is preserved.
    pub tcp_latency: Span,
    /// Delay before a backend answers 100 Trying, per backend drawn once from this range.
    pub trying_delay: Span,
    /// Delay from the INVITE to 180 Ringing.
    pub ring_delay: Span,
    /// Further delay from 180 to 200 OK.
    pub answer_delay: Span,
    /// How long an answered call lasts.
    pub talk: Span,
    /// Share of calls that are long (talk drawn from `long_talk`).
    pub long_fraction: f64,
    /// Duration of long calls.
    pub long_talk: Span,
    /// Established calls send a re-INVITE this often (refresh), if set.
    pub reinvite_every: Option<Duration>,
    /// Share of calls the caller cancels while it rings (shortly).
    pub cancel_fraction: f64,
    /// Share of calls that ring for minutes and are then cancelled.
    pub long_ring_fraction: f64,
    /// How long those ring before the CANCEL.
    pub long_ring: Span,
    /// Share of answered calls that the backend (callee side) hangs up.
    pub backend_hangup_fraction: f64,
    /// Backend outages.
    pub outages: Vec<Outage>,
    /// In-dialog requests go to a random balancer instance (the scale-out story).
    pub spread_in_dialog: bool,
    /// The balancers' new-call table window.
    pub window: Duration,
    /// The balancers' longest ringing time kept in the table.
    pub ringing_max: Duration,
    /// The balancers' table capacity.
    pub table_capacity: usize,
    /// Check every balancer output against the core's output contract (lb-testkit's
    /// `Contract`): a breach is a [`crate::ViolationKind::Output`]. On in every preset.
    pub check_contract: bool,
}

impl Knobs {
    /// The preset of `scenario` with `seed`.
    pub fn preset(scenario: Scenario, seed: u64) -> Knobs {
        let base = Knobs {
            scenario,
            seed,
            calls: 20_000,
            rate: 500.0,
            backends: 4,
            instances: 1,
            workers: 1,
            instance_death: None,
            proxies: 4,
            conns_per_proxy: 2,
            udp_latency: Span::ms(5, 40),
            udp_loss: 0.005,
            tcp_latency: Span::ms(0, 2),
            trying_delay: Span::ms(600, 1400),
            ring_delay: Span::ms(700, 3000),
            answer_delay: Span::ms(500, 6000),
            talk: Span::ms(2_000, 20_000),
            long_fraction: 0.0,
            long_talk: Span::ms(60_000, 300_000),
            reinvite_every: None,
            cancel_fraction: 0.05,
            long_ring_fraction: 0.0,
            long_ring: Span::ms(60_000, 150_000),
            backend_hangup_fraction: 0.2,
            outages: Vec::new(),
            spread_in_dialog: false,
            window: lb_core::WINDOW_DEFAULT,
            ringing_max: lb_core::TIMER_C,
            table_capacity: 1_000_000,
            check_contract: true,
        };
        match scenario {
            Scenario::Storm => Knobs {
                rate: 2_000.0,
                calls: 100_000,
                ..base
            },
            Scenario::Expiry => Knobs {
                calls: 3_000,
                rate: 20.0,
                long_fraction: 0.5,
                reinvite_every: Some(Duration::from_secs(30)),
                long_ring_fraction: 0.1,
                trying_delay: Span::ms(50, 700),
                ..base
            },
            Scenario::Failover => Knobs {
                calls: 20_000,
                rate: 400.0,
                ..base
            }
            .with_default_outage(),
            Scenario::Scale => Knobs {
                calls: 20_000,
                rate: 2_000.0,
                instances: 3,
                workers: 2,
                // One connection per proxy and instance, as Kamailio keeps one per
                // destination: it reaches one worker, so a callee's BYE that lands on the
                // other is dialled out to the proxy.
                conns_per_proxy: 1,
                spread_in_dialog: true,
                long_fraction: 0.05,
                reinvite_every: Some(Duration::from_secs(20)),
                ..base
            }
            .with_default_outage(),
        }
    }

    /// Recomputes the scenario's failures for the current call count and rate. Failover:
    /// backend 1 resets a third of the way through the arrivals and returns at two thirds;
    /// backend 2 (if any) hangs silently from half way to 60 %. Scale: instance 1 dies half way
    /// through the arrivals, for good.
    pub fn with_default_outage(mut self) -> Knobs {
        let arrivals = self.calls as f64 / self.rate.max(0.001);
        let at = |f: f64| Duration::from_secs_f64(arrivals * f);
        if self.scenario == Scenario::Scale && self.instances >= 2 {
            self.instance_death = Some((1, at(0.5)));
        }
        if self.scenario == Scenario::Failover {
            self.outages = vec![Outage {
                backend: 1 % self.backends.max(1),
                at: at(1.0 / 3.0),
                until: at(2.0 / 3.0),
                silent: false,
            }];
            if self.backends >= 3 {
                self.outages.push(Outage {
                    backend: 2,
                    at: at(0.5),
                    until: at(0.6),
                    silent: true,
                });
            }
        }
        self
    }
}
