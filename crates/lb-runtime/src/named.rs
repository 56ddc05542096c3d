//! Backends by DNS name: `addr = "sip-farm.example.com:5060"` takes the name's A/AAAA records
//! with that port; `addr = "sip-farm.example.com"` (no port) its SRV records
//! `_sip._tcp.NAME` (RFC 3263 §4.2, as dial-out resolves, `crate::dns`), falling back to
//! A/AAAA with 5060. The core knows addresses only: each address a name resolves to is one
//! backend of the configuration, built from the name's table (weight, mode, draining, tls).
//!
//! **SRV priority and weight.** Each target's backend has its record's weight (weight 0 in the
//! record: 1, as RFC 2782 lets a weight-0 target be chosen rarely, not never) and, as
//! `BackendConfig::priority`, the rank of its record's priority among the answer's: 0 for the
//! lowest priority, 1 for the next, and so on. The core gives new calls to the backends of the
//! lowest priority that can take them, so the targets of higher priorities are standbys: no new
//! calls while a backend of a lower priority is up (and not draining, held or weighted 0), the
//! next priority's as soon as none is (RFC 2782: a client uses the lowest-priority targets it
//! can reach). Ranks rather than the records' numbers make a name's primaries peers of the
//! backends given by address (priority 0) and of other names' primaries, as they were before
//! priorities reached the core. Like any backend that is up, a standby also serves the calls a
//! lost backend hands over (its backup, else the rendezvous choice among those up).
//!
//! **Re-resolution.** Every `resolve-interval` (30 s by default) a thread of the process
//! resolves every name again ([`start_refresh`]); when a name's answer changed it hands the new
//! answer to every worker through the admin hub (`admin_hub`), and each applies it to its
//! running configuration ([`apply_resolution`]): an address that appeared is added, one that
//! vanished is drained (its calls go on; it takes no new ones), one that comes back is
//! resumed if it was DNS that drained it. **Runtime overrides stay**: the running backends are
//! edited, not rebuilt from the file, so a weight or a drain set through the admin API for an
//! address or for the name (which also applies to its future addresses) survives any number
//! of re-resolutions; only an explicit reload drops it. A name that does not resolve (a DNS
//! failure, a timeout) changes nothing: the last answer stands.
//!
//! The resolver is the trait [`BackendResolver`], so tests give answers (SRV among them,
//! since no DNS server is reachable where they run) without a server.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use lb_core::BackendConfig;

use crate::dns::{Dns, Target};

/// How often names are resolved again unless `resolve-interval` says otherwise.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Addresses one name may bring in: a name is not a way to grow the backend list unbounded.
pub const ADDRS_PER_NAME_MAX: usize = 32;

/// Resolves backend names; [`SystemResolver`] asks DNS, tests answer themselves.
pub trait BackendResolver: Send + Sync {
    /// The targets of `host`: with `port`, its A/AAAA records; without, its SRV records.
    /// Empty when it does not resolve.
    fn resolve(&self, host: &str, port: Option<u16>) -> Vec<Target>;
}

/// The system's resolver (hickory, `/etc/resolv.conf` and `/etc/hosts`), the one dial-out uses.
pub struct SystemResolver {
    runtime: tokio::runtime::Runtime,
    dns: Dns,
}

impl SystemResolver {
    /// A resolver with a small runtime of its own (callers are plain threads).
    pub fn new() -> std::io::Result<SystemResolver> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let dns = runtime.block_on(async { Dns::from_system() });
        Ok(SystemResolver { runtime, dns })
    }
}

impl BackendResolver for SystemResolver {
    fn resolve(&self, host: &str, port: Option<u16>) -> Vec<Target> {
        self.runtime.block_on(self.dns.resolve_targets(host, port))
    }
}

/// One backend configured by name, and what it resolved to last.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedBackend {
    /// As configured (`host`, `host:port`): how the admin API and the metrics name it.
    pub name: String,
    /// The host name looked up.
    pub host: String,
    /// The port given with it; `None` looks up SRV records first.
    pub port: Option<u16>,
    /// What each of its addresses is configured as (the address aside).
    pub template: BackendConfig,
    /// Its addresses now, in the configuration.
    pub addrs: Vec<SocketAddr>,
    /// Those of `addrs` that DNS drained (they vanished from the answer).
    pub drained_by_dns: BTreeSet<SocketAddr>,
}

impl NamedBackend {
    /// A backend named `name` (`host`, `host:port`), not yet resolved.
    pub fn new(
        name: String,
        host: String,
        port: Option<u16>,
        template: BackendConfig,
    ) -> NamedBackend {
        NamedBackend {
            name,
            host,
            port,
            template,
            addrs: Vec::new(),
            drained_by_dns: BTreeSet::new(),
        }
    }

    /// Whether `addr` is one of this name's.
    pub fn has(&self, addr: SocketAddr) -> bool {
        self.addrs.contains(&addr)
    }
}

/// `host[:port]` when `text` is a host name (not an IP address): letters, digits, `-` and `.`.
pub fn parse_name(text: &str) -> Option<(String, Option<u16>)> {
    let text = text.trim();
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
        None => (text, None),
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.parse::<std::net::IpAddr>().is_err()
        && host.chars().any(|c| c.is_ascii_alphabetic())
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    valid.then(|| (host.to_ascii_lowercase(), port))
}

/// The backends `targets` make for `named` (module docs: SRV priority and weight), at most
/// [`ADDRS_PER_NAME_MAX`], one per address.
pub fn backends_for(named: &NamedBackend, targets: &[Target]) -> Vec<BackendConfig> {
    // The records' priorities, lowest first: a backend's is the rank of its record's among
    // them, so the name's primaries have 0, as every backend given by address does.
    let priorities: BTreeSet<u16> = targets
        .iter()
        .filter_map(|t| t.srv)
        .map(|(p, _)| p)
        .collect();
    let mut out: Vec<BackendConfig> = Vec::new();
    for t in targets {
        if out.len() == ADDRS_PER_NAME_MAX || out.iter().any(|b| b.addr == t.addr) {
            continue;
        }
        let (priority, weight) = match t.srv {
            None => (named.template.priority, named.template.weight),
            Some((priority, weight)) => {
                let rank = priorities.range(..priority).count();
                (
                    u16::try_from(rank).unwrap_or(u16::MAX),
                    u32::from(weight.max(1)),
                )
            }
        };
        out.push(BackendConfig {
            addr: t.addr,
            weight,
            priority,
            ..named.template.clone()
        });
    }
    out
}

/// Applies a new answer for `named` (its backends, [`backends_for`]) to the running
/// `backends` (module docs: re-resolution); returns whether anything changed.
pub fn apply_resolution(
    backends: &mut Vec<BackendConfig>,
    named: &mut NamedBackend,
    fresh: &[BackendConfig],
) -> bool {
    let mut changed = false;
    for new in fresh {
        match backends.iter_mut().find(|b| b.addr == new.addr) {
            Some(running) => {
                // Back in the answer: undo DNS's drain, not the operator's.
                if named.drained_by_dns.remove(&new.addr) {
                    running.draining = named.template.draining;
                    changed = true;
                }
                // The priority is DNS's alone (no flag or admin call sets it): follow the
                // answer, so a target moved between primaries and standbys moves here too.
                if running.priority != new.priority {
                    running.priority = new.priority;
                    changed = true;
                }
            }
            None => {
                backends.push(new.clone());
                changed = true;
            }
        }
    }
    for old in &named.addrs {
        if fresh.iter().any(|b| b.addr == *old) {
            continue;
        }
        if let Some(running) = backends.iter_mut().find(|b| b.addr == *old) {
            if !running.draining {
                running.draining = true;
                named.drained_by_dns.insert(*old);
                changed = true;
            }
        }
    }
    for new in fresh {
        if !named.addrs.contains(&new.addr) {
            named.addrs.push(new.addr);
        }
    }
    changed
}

/// Resolves every name again every `interval` and hands changed answers to `deliver` (the
/// admin hub's workers) until `alive` is gone: the process's refresh thread.
pub fn start_refresh<T: Send + Sync + 'static>(
    names: Vec<NamedBackend>,
    interval: Duration,
    resolver: Arc<dyn BackendResolver>,
    alive: Weak<T>,
    deliver: impl Fn(&T, &str, Vec<BackendConfig>) + Send + 'static,
) -> std::io::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("siplb-named".into())
        .spawn(move || {
            // Nothing known yet: the first round hands every answer over once, which changes
            // nothing where it matches the start-up resolution.
            let mut last: Vec<Vec<Target>> = vec![Vec::new(); names.len()];
            loop {
                std::thread::sleep(interval);
                let Some(target) = alive.upgrade() else { return };
                for (named, last) in names.iter().zip(&mut last) {
                    let mut now = resolver.resolve(&named.host, named.port);
                    if now.is_empty() {
                        tracing::warn!(name = %named.name, "backend name did not resolve; keeping its last addresses");
                        continue;
                    }
                    now.sort();
                    if now != *last {
                        tracing::info!(name = %named.name, addrs = now.len(), "backend name resolves differently");
                        deliver(&target, &named.name, backends_for(named, &now));
                        *last = now;
                    }
                }
            }
        })?;
    Ok(())
}

/// The start-up resolution of every name: fills `addrs` and returns the backends they make.
pub fn resolve_all(
    names: &mut [NamedBackend],
    resolver: &dyn BackendResolver,
) -> Vec<BackendConfig> {
    let mut out = Vec::new();
    for named in names {
        let targets = resolver.resolve(&named.host, named.port);
        if targets.is_empty() {
            tracing::warn!(name = %named.name, "backend name did not resolve; retried every resolve-interval");
        }
        let backends = backends_for(named, &targets);
        named.addrs = backends.iter().map(|b| b.addr).collect();
        out.extend(backends);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;

    /// Answers from a table, changeable between calls: SRV without a DNS server.
    #[derive(Default)]
    struct FakeResolver(Mutex<HashMap<String, Vec<Target>>>);

    impl FakeResolver {
        fn set(&self, host: &str, targets: Vec<Target>) {
            self.0.lock().unwrap().insert(host.to_string(), targets);
        }
    }

    impl BackendResolver for FakeResolver {
        fn resolve(&self, host: &str, port: Option<u16>) -> Vec<Target> {
            let key = match port {
                Some(p) => format!("{host}:{p}"),
                None => host.to_string(),
            };
            self.0
                .lock()
                .unwrap()
                .get(&key)
                .cloned()
                .unwrap_or_default()
        }
    }

    fn srv(addr: &str, priority: u16, weight: u16) -> Target {
        Target {
            addr: addr.parse().unwrap(),
            srv: Some((priority, weight)),
        }
    }

    fn farm() -> NamedBackend {
        let (host, port) = parse_name("Farm.example.com").unwrap();
        let template = BackendConfig::plain("0.0.0.0:0".parse().unwrap());
        NamedBackend::new("farm.example.com".into(), host, port, template)
    }

    #[test]
    fn names_are_told_from_addresses() {
        assert_eq!(
            parse_name("localhost:5070"),
            Some(("localhost".into(), Some(5070)))
        );
        assert_eq!(
            parse_name("SIP.example.com"),
            Some(("sip.example.com".into(), None))
        );
        for not_a_name in [
            "127.0.0.1:5060",
            "[::1]:5060",
            "",
            "a b:1",
            "host:99999",
            "::1",
            "1.2.3.4",
        ] {
            assert_eq!(parse_name(not_a_name), None, "{not_a_name:?}");
        }
    }

    #[test]
    fn srv_records_give_each_backend_their_priority_and_weight() {
        let resolver = FakeResolver::default();
        resolver.set(
            "farm.example.com",
            vec![
                srv("10.0.0.1:5060", 10, 60),
                srv("10.0.0.2:5070", 10, 20),
                srv("10.0.0.3:5060", 10, 0),
                srv("10.0.0.9:5060", 20, 100),
                srv("10.0.0.8:5060", 500, 0),
            ],
        );
        let mut names = vec![farm()];
        let backends = resolve_all(&mut names, &resolver);
        let got: Vec<(String, u16, u32)> = backends
            .iter()
            .map(|b| (b.addr.to_string(), b.priority, b.weight))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:5060".to_string(), 0, 60),
                ("10.0.0.2:5070".to_string(), 0, 20),
                ("10.0.0.3:5060".to_string(), 0, 1),
                ("10.0.0.9:5060".to_string(), 1, 100),
                ("10.0.0.8:5060".to_string(), 2, 1),
            ]
        );
        assert_eq!(names[0].addrs.len(), 5);
    }

    /// RFC 2782: a client uses the targets of the lowest priority it can reach. While a primary
    /// is up no standby takes a new call; once every primary is down the next priority takes
    /// them, and only when that one is down too the one after it. Under every algorithm.
    #[test]
    fn standbys_take_new_calls_once_every_lower_priority_is_down() {
        use lb_core::{Algorithm, BackendMode, Config};
        use lb_testkit::scenario::{config, invite, Harness};

        let targets = [
            srv("198.51.100.1:5060", 10, 1),
            srv("198.51.100.2:5060", 10, 3),
            srv("198.51.100.3:5060", 20, 1),
            srv("198.51.100.4:5060", 30, 1),
        ];
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::Weighted,
            Algorithm::LeastLoaded,
        ] {
            let mut h = Harness::new(Config {
                backends: backends_for(&farm(), &targets),
                algorithm,
                ..config(0, BackendMode::Plain)
            });
            let mut call = 0;
            let mut new_calls_go_to = |h: &mut Harness, expected: &[usize]| {
                for _ in 0..8 {
                    call += 1;
                    let frontend = h.frontend("203.0.113.5:40000");
                    h.receive(
                        frontend,
                        invite(&format!("c{call}"), &format!("b{call}")).as_bytes(),
                    );
                    let (backend, _, _) = h.expect_to_backend();
                    assert!(
                        expected.contains(&backend),
                        "{algorithm:?}: call {call} went to backend {backend}, not one of {expected:?}"
                    );
                }
            };
            new_calls_go_to(&mut h, &[0, 1]);
            h.kill_backend(0);
            new_calls_go_to(&mut h, &[1]);
            h.kill_backend(1);
            new_calls_go_to(&mut h, &[2]);
            h.kill_backend(2);
            new_calls_go_to(&mut h, &[3]);
        }
    }

    /// A name's primaries are peers of a backend given by address: its SRV priority numbers do
    /// not make the address's backend (priority 0) a primary above them, or them its standbys.
    #[test]
    fn a_names_primaries_share_new_calls_with_backends_given_by_address() {
        use lb_core::{BackendMode, Config};
        use lb_testkit::scenario::{config, invite, Harness};

        let mut backends = vec![BackendConfig::plain("198.51.100.1:5060".parse().unwrap())];
        backends.extend(backends_for(
            &farm(),
            &[
                srv("198.51.100.2:5060", 10, 1),
                srv("198.51.100.3:5060", 20, 1),
            ],
        ));
        let mut h = Harness::new(Config {
            backends,
            ..config(0, BackendMode::Plain)
        });
        let mut went_to = Vec::new();
        for call in 0..4 {
            let frontend = h.frontend("203.0.113.5:40000");
            h.receive(
                frontend,
                invite(&format!("c{call}"), &format!("b{call}")).as_bytes(),
            );
            went_to.push(h.expect_to_backend().0);
        }
        assert_eq!(
            went_to,
            [0, 1, 0, 1],
            "round robin over the address and the primary"
        );
    }

    #[test]
    fn re_resolution_adds_drains_resumes_and_keeps_overrides() {
        let resolver = FakeResolver::default();
        resolver.set(
            "farm.example.com",
            vec![srv("10.0.0.1:5060", 10, 1), srv("10.0.0.2:5060", 10, 1)],
        );
        let mut names = vec![farm()];
        let mut running = resolve_all(&mut names, &resolver);
        let mut named = names.remove(0);
        // The operator sets a weight on one address and drains the other at runtime.
        running[0].weight = 7;
        running[1].draining = true;

        // .2 vanishes, .3 appears.
        resolver.set(
            "farm.example.com",
            vec![srv("10.0.0.1:5060", 10, 1), srv("10.0.0.3:5060", 10, 1)],
        );
        let fresh = backends_for(&named, &resolver.resolve("farm.example.com", None));
        assert!(apply_resolution(&mut running, &mut named, &fresh));
        let state: Vec<(String, u32, bool)> = running
            .iter()
            .map(|b| (b.addr.to_string(), b.weight, b.draining))
            .collect();
        assert_eq!(
            state,
            [
                ("10.0.0.1:5060".to_string(), 7, false),
                ("10.0.0.2:5060".to_string(), 1, true),
                ("10.0.0.3:5060".to_string(), 1, false),
            ]
        );
        // .2 was drained by the operator, not by DNS: coming back does not resume it.
        assert!(named.drained_by_dns.is_empty());

        // .3 vanishes (DNS drains it) and comes back (DNS resumes it); the same answer twice
        // changes nothing.
        let only_one = backends_for(&named, &[srv("10.0.0.1:5060", 10, 1)]);
        assert!(apply_resolution(&mut running, &mut named, &only_one));
        assert!(running[2].draining);
        assert!(apply_resolution(&mut running, &mut named, &fresh));
        assert!(!running[2].draining);
        assert!(running[1].draining, "the operator's drain stays");
        assert_eq!(running[0].weight, 7, "the operator's weight stays");
        assert!(!apply_resolution(&mut running, &mut named, &fresh));
    }

    #[test]
    fn a_target_moved_to_another_priority_moves_with_the_answer() {
        let mut named = farm();
        let first = backends_for(
            &named,
            &[srv("10.0.0.1:5060", 10, 1), srv("10.0.0.2:5060", 20, 1)],
        );
        let mut running = first.clone();
        named.addrs = first.iter().map(|b| b.addr).collect();
        // The standby becomes a primary, and the primary a standby; weights stay the operator's.
        running[1].weight = 5;
        let swapped = backends_for(
            &named,
            &[srv("10.0.0.1:5060", 20, 1), srv("10.0.0.2:5060", 10, 1)],
        );
        assert!(apply_resolution(&mut running, &mut named, &swapped));
        let state: Vec<(u16, u32)> = running.iter().map(|b| (b.priority, b.weight)).collect();
        assert_eq!(state, [(1, 1), (0, 5)]);
        assert!(!apply_resolution(&mut running, &mut named, &swapped));
    }

    #[test]
    fn a_name_brings_at_most_its_share_of_addresses() {
        let targets: Vec<Target> = (0..100u16)
            .map(|i| srv(&format!("10.0.1.{}:5060", i % 250), 1, 1))
            .collect();
        assert_eq!(backends_for(&farm(), &targets).len(), ADDRS_PER_NAME_MAX);
    }

    /// `localhost` from the hosts file, through the system resolver (A, and AAAA when the
    /// machine maps `localhost` to `::1` too).
    #[test]
    fn localhost_resolves_through_the_system_resolver() {
        let resolver = SystemResolver::new().unwrap();
        let targets = resolver.resolve("localhost", Some(5070));
        assert!(
            targets
                .iter()
                .any(|t| t.addr == "127.0.0.1:5070".parse().unwrap()),
            "{targets:?}"
        );
        assert!(targets
            .iter()
            .all(|t| t.addr.ip().is_loopback() && t.addr.port() == 5070 && t.srv.is_none()));
    }
}
