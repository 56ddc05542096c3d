//! End-to-end tests with Kamailio as the edge proxy (issue 10): the method's own topology.
//!
//! Callers (SIPp UACs on 127.0.0.1) connect to Kamailio (127.0.0.1), which record-routes and
//! multiplexes every call onto its one persistent TCP connection to the balancer; the balancer's
//! backends are SIPp UASs on addresses of their own (127.0.0.2, .3, .4), in plain mode. Kamailio
//! is transaction stateful (`tests/peers/kamailio-edge.cfg`): it answers 100 itself, absorbs the
//! caller's INVITE retransmissions and ACKs of failures, and sends its own CANCEL and its own ACK
//! of a non-2xx hop by hop — so what reaches the balancer is what a production edge proxy sends,
//! not what SIPp sends.
//!
//! Every scenario runs against both binaries (`tokio::NAME`, `mio::NAME`) with `--window 2`
//! and a few calls; each checks the whole outcome: every call of the callers succeeded, every
//! message of a call reached one backend with the whole expected flow, the routing headers on
//! both sides, the balancer's counters, and that Kamailio logged no error.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use siplb_e2e::flows::{UAC_486, UAC_CANCEL, UAS_486, UAS_BASIC, UAS_BYE};
use siplb_e2e::kamailio::EdgeProxy;
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, LbStats, Runtime, CLEAN};
use siplb_e2e::net::{self, free_port};
use siplb_e2e::sipp::{Uac, UacOutcome, UacSpec, Uas};
use siplb_e2e::trace::{
    assert_affinity, assert_signatures, assert_spread, owned_by, per_backend, Dir, SipMsg, Trace,
};
use siplb_e2e::RunDir;

/// Calls per caller: enough for every one of the three backends to get two (round robin).
const CALLS: u32 = 6;

// ---------------------------------------------------------------------------------------------
// The topology

/// Three backends, the balancer in front of them and Kamailio in front of the balancer.
struct Edge {
    // Field order is drop order: callers' peers go before the run directory they log into.
    proxy: Option<EdgeProxy>,
    lb: Balancer,
    backends: Vec<Uas>,
    dir: RunDir,
}

/// What is left when the run is over.
struct Finished {
    stats: LbStats,
    traces: Vec<Trace>,
    lb: SocketAddr,
    proxy: SocketAddr,
}

impl Edge {
    /// Backends `backend-0..3` on 127.0.0.2..4 running `uas_scenario`, the balancer
    /// (`--window 2`) and Kamailio.
    fn start(rt: Runtime, test: &str, uas_scenario: &str) -> Edge {
        let dir = RunDir::new(&format!("edge-{test}-{}", rt.name()));
        let backends: Vec<Uas> = (0..3u8)
            .map(|i| {
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i));
                let addr = SocketAddr::new(ip, free_port());
                Uas::start_at(&dir, &format!("backend-{i}"), uas_scenario, addr, &[])
            })
            .collect();
        let args = backends
            .iter()
            .map(|b| BackendArg::plain(b.addr()))
            .collect();
        let mut spec = LbSpec::new(rt, args);
        spec.window_secs = Some(2.0);
        let lb = Balancer::start(&dir, spec);
        let proxy = EdgeProxy::start(&dir, lb.addr());
        Edge {
            proxy: Some(proxy),
            lb,
            backends,
            dir,
        }
    }

    fn proxy(&self) -> &EdgeProxy {
        self.proxy.as_ref().expect("proxy still running")
    }

    /// A caller of `calls` calls at 10/s through Kamailio.
    fn caller(&self, name: &str, scenario: &str, pause_ms: u64) -> UacSpec {
        let mut spec = UacSpec::new(name, scenario, self.proxy().addr());
        spec.calls = CALLS;
        spec.rate = 10;
        spec.pause_ms = pause_ms;
        spec
    }

    /// Stops Kamailio (asserting it logged no error), waits until the balancer has seen its
    /// connection close, stops the balancer and the backends. Asserts the counters of a clean
    /// run and that Kamailio used one connection for everything.
    fn finish(mut self) -> Finished {
        let proxy = self.proxy().addr();
        self.proxy.take().expect("proxy still running").stop();
        let lb_port = self.lb.port();
        net::wait_until(
            "the balancer to see Kamailio's connection close",
            Duration::from_secs(5),
            || net::accepted_connections(lb_port) == 0,
        );
        // The balancer learns of the close on its next read; give the driver that read.
        std::thread::sleep(Duration::from_millis(100));
        let stats = self.lb.stop();
        let traces: Vec<Trace> = self.backends.drain(..).map(Uas::finish).collect();
        stats.expect(CLEAN);
        // The whole point of the topology: one persistent connection carried every call.
        stats.expect(&[("frontends_accepted", 1)]);
        Finished {
            stats,
            traces,
            lb: self.lb.addr(),
            proxy,
        }
    }
}

impl Finished {
    fn refs(&self) -> Vec<&Trace> {
        self.traces.iter().collect()
    }

    /// Every call of `callers` reached exactly one backend, all three backends got calls, and
    /// each backend saw `backend_flow` of each of its calls; returns Call-ID → backend.
    fn assert_calls(
        &self,
        callers: &[&UacOutcome],
        backend_flow: &[&str],
    ) -> BTreeMap<String, String> {
        let traces: Vec<&Trace> = callers.iter().map(|u| &u.trace).collect();
        let owner = assert_affinity(&traces, &self.refs());
        assert_spread(&owner, &self.traces, callers.len() * CALLS as usize);
        for t in &self.traces {
            assert_signatures(t, owned_by(&owner, &t.name), backend_flow);
        }
        owner
    }

    /// The routing headers of dialogs through both proxies: a backend's initial INVITE carries
    /// the balancer's tagged Record-Route on top of Kamailio's, and the caller's 2xx both in the
    /// same order; no request reaches a backend with a Route left (Kamailio and the balancer
    /// each popped their own entry).
    fn assert_routing(&self, callers: &[&UacOutcome]) {
        for t in &self.traces {
            for m in t.msgs.iter().filter(|m| m.dir == Dir::Received) {
                if m.label() == "INVITE" && !has_to_tag(m) {
                    self.assert_record_routes(&t.name, m);
                }
                assert!(
                    m.header_values("Route").is_empty(),
                    "{}: received a request with a Route left:\n{}",
                    t.name,
                    m.raw
                );
            }
        }
        for uac in callers {
            for m in uac.trace.msgs.iter().filter(|m| {
                m.dir == Dir::Received
                    && m.label() == "200/INVITE"
                    && m.header("CSeq").is_some_and(|v| v.starts_with("1 "))
            }) {
                self.assert_record_routes(&uac.name, m);
            }
        }
    }

    /// `m` has exactly two Record-Route entries: the balancer's (tagged), then Kamailio's.
    fn assert_record_routes(&self, who: &str, m: &SipMsg) {
        let rr = record_routes(m);
        assert!(
            rr.len() == 2
                && rr[0].contains(&self.lb.to_string())
                && rr[0].contains(";lb=")
                && rr[1].contains(&self.proxy.to_string()),
            "{who}: want Record-Route: <balancer;lb=…>, <Kamailio>, got {rr:?}:\n{}",
            m.raw
        );
    }
}

/// One caller's run through the edge: which scenario each side plays and what each side must
/// see of every call.
struct Case<'a> {
    test: &'a str,
    uas: &'a str,
    backend_flow: &'a [&'a str],
    uac: &'a str,
    uac_flow: &'a [&'a str],
    /// The caller's `-d` (its `<pause/>` between ACK and BYE).
    pause_ms: u64,
}

impl Case<'_> {
    /// Runs the case: all calls succeed, each reaches one backend, both sides see their whole
    /// flow. Returns the caller's outcome and what the run left.
    fn run(&self, rt: Runtime) -> (UacOutcome, Finished) {
        let edge = Edge::start(rt, self.test, self.uas);
        let uac = Uac::run(&edge.dir, edge.caller("uac", self.uac, self.pause_ms));
        let done = edge.finish();
        uac.assert_all_ok(CALLS.into());
        let owner = done.assert_calls(&[&uac], self.backend_flow);
        assert_signatures(&uac.trace, owner.keys(), self.uac_flow);
        eprintln!(
            "{}: calls per backend {:?}; {}",
            self.test,
            per_backend(&owner),
            done.stats.line
        );
        (uac, done)
    }
}

/// Each Record-Route entry of `m`, whether on one line or several.
fn record_routes(m: &SipMsg) -> Vec<String> {
    m.header_values("Record-Route")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_string())
        .collect()
}

fn has_to_tag(m: &SipMsg) -> bool {
    m.header("To").is_some_and(|v| v.contains("tag="))
}

/// The branch parameter of the top Via.
fn top_branch(m: &SipMsg) -> &str {
    m.header("Via")
        .and_then(|v| v.split(',').next())
        .map_or("", branch_of)
}

/// The `branch` parameter of one Via value.
fn branch_of(via: &str) -> &str {
    via.split(";branch=")
        .nth(1)
        .map_or("", |b| b.split(';').next().unwrap_or(b))
}

/// The caller's side of a `uas_basic.xml` call (`uac_basic.xml`): the 100 comes from Kamailio.
const BASIC_UAC: &[&str] = &[
    "sent INVITE",
    "recv 100/INVITE",
    "recv 180/INVITE",
    "recv 200/INVITE",
    "sent ACK",
    "sent BYE",
    "recv 200/BYE",
];

/// The caller's side of a `uas_bye.xml` call (`uac_recv_bye.xml`), the 100 from Kamailio.
const CALLEE_BYE_UAC: &[&str] = &[
    "sent INVITE",
    "recv 100/INVITE",
    "recv 180/INVITE",
    "recv 200/INVITE",
    "sent ACK",
    "recv BYE",
    "sent 200/BYE",
];

// ---------------------------------------------------------------------------------------------
// Calls through Kamailio, the balancer and three backends

/// `pause_ms` between the ACK and the BYE: short, or past the balancer's 2 s window.
fn calls_through_kamailio(rt: Runtime, test: &str, pause_ms: u64) {
    let (uac, done) = Case {
        test,
        uas: "uas_basic.xml",
        backend_flow: UAS_BASIC,
        uac: "uac_basic.xml",
        uac_flow: BASIC_UAC,
        pause_ms,
    }
    .run(rt);
    done.assert_routing(&[&uac]);
    done.stats.expect(&[
        ("new_calls", CALLS.into()),
        // The ACK and the BYE of every call came back through the balancer's Route entry.
        ("tagged", 2 * u64::from(CALLS)),
        ("table_hits", 0),
    ]);
}

fn calls_reach_one_backend_each(rt: Runtime) {
    calls_through_kamailio(rt, "basic", 50);
}

/// Held 3 s with `--window 2`: the new-call table has forgotten the call when its BYE comes,
/// so only the tag in the Route entry Kamailio kept for the caller can take it to its backend.
fn long_call_bye_reaches_its_backend_by_tag(rt: Runtime) {
    calls_through_kamailio(rt, "long", 3000);
}

// ---------------------------------------------------------------------------------------------
// CANCEL of a ringing call

fn cancel_of_a_ringing_call(rt: Runtime) {
    // Kamailio answers the caller's retransmission (with the 180 again) and its CANCEL (200)
    // and absorbs the caller's ACK of the 487; the backend that got the INVITE gets Kamailio's
    // own CANCEL and Kamailio's own ACK of the 487.
    let (uac, done) = Case {
        test: "cancel",
        uas: "uas_ring.xml",
        backend_flow: &[
            "recv INVITE",
            "sent 100/INVITE",
            "sent 180/INVITE",
            "recv CANCEL",
            "sent 200/CANCEL",
            "sent 487/INVITE",
            "recv ACK",
        ],
        uac: "uac_cancel.xml",
        uac_flow: UAC_CANCEL,
        pause_ms: 0,
    }
    .run(rt);
    assert_hop_by_hop(&done.traces, &uac, &["CANCEL", "ACK"]);
    // The 487 reached the caller with its own Via: the backend answered the INVITE's Via list.
    for m in uac.trace.msgs.iter().filter(|m| m.label() == "487/INVITE") {
        let sent =
            uac.trace.msgs.iter().find(|s| {
                s.dir == Dir::Sent && s.label() == "INVITE" && s.call_id() == m.call_id()
            });
        assert_eq!(
            top_branch(m),
            sent.map_or("", top_branch),
            "{}: 487 without the caller's Via:\n{}",
            uac.name,
            m.raw
        );
    }
    done.stats.expect(&[
        ("new_calls", CALLS.into()),
        // Per call: Kamailio's CANCEL and its ACK of the 487, untagged, by Call-ID.
        ("table_hits", 2 * u64::from(CALLS)),
        ("tagged", 0),
    ]);
}

/// Each `methods` request a backend received is Kamailio's own, hop by hop (RFC 3261 9.1,
/// 17.1.1.3): two Vias, the balancer's over Kamailio's, with the branches of the INVITE they
/// forwarded (the balancer derives its branch from Kamailio's), never the caller's branch.
fn assert_hop_by_hop(traces: &[Trace], uac: &UacOutcome, methods: &[&str]) {
    for t in traces {
        for (id, msgs) in t.calls() {
            let invite = msgs
                .iter()
                .find(|m| m.dir == Dir::Received && m.label() == "INVITE")
                .unwrap_or_else(|| panic!("{}: {id} without an INVITE", t.name));
            for m in msgs
                .iter()
                .filter(|m| m.dir == Dir::Received && methods.contains(&m.label().as_str()))
            {
                let caller_branches: Vec<&str> = uac
                    .trace
                    .msgs
                    .iter()
                    .filter(|c| c.call_id() == id && c.dir == Dir::Sent)
                    .map(top_branch)
                    .collect();
                let vias = m.header_values("Via");
                let invite_vias = invite.header_values("Via");
                assert!(
                    vias.len() == 2
                        && vias[0].contains(";lbc=")
                        && top_branch(m) == top_branch(invite)
                        && branch_of(vias[1]) == invite_vias.get(1).map_or("", |v| branch_of(v))
                        && !caller_branches.contains(&branch_of(vias[1])),
                    "{}: {} is not Kamailio's own (its Via under the balancer's, the INVITE's branches, top {}):\n{}",
                    t.name,
                    m.label(),
                    top_branch(invite),
                    m.raw
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A rejected call: the ACK of the 486

fn ack_of_a_rejected_call(rt: Runtime) {
    let (uac, done) = Case {
        test: "busy",
        uas: "uas_486.xml",
        backend_flow: UAS_486,
        uac: "uac_486.xml",
        uac_flow: UAC_486,
        pause_ms: 0,
    }
    .run(rt);
    // Kamailio's tm acknowledged the 486 itself; the caller's ACK stopped at Kamailio.
    assert_hop_by_hop(&done.traces, &uac, &["ACK"]);
    done.stats.expect(&[
        ("new_calls", CALLS.into()),
        ("table_hits", CALLS.into()),
        ("tagged", 0),
    ]);
}

// ---------------------------------------------------------------------------------------------
// The callee hangs up

/// The backend's BYE goes up its route set (the balancer's entry, then Kamailio's); Kamailio
/// must deliver it to the caller on the caller's own connection (its config forbids opening a
/// new one and `finish` fails on any error it logged). Two callers, so a BYE on the wrong
/// connection reaches a SIPp that does not know the call and that call fails.
fn callee_hangs_up(rt: Runtime) {
    let edge = Edge::start(rt, "callee-bye", "uas_bye.xml");
    let a = Uac::spawn(&edge.dir, edge.caller("uac-a", "uac_recv_bye.xml", 0));
    let b = Uac::spawn(&edge.dir, edge.caller("uac-b", "uac_recv_bye.xml", 0));
    let (a, b) = (a.wait(), b.wait());
    let done = edge.finish();
    a.assert_all_ok(CALLS.into());
    b.assert_all_ok(CALLS.into());
    assert!(a.trace.call_ids().is_disjoint(&b.trace.call_ids()));

    let owner = done.assert_calls(&[&a, &b], UAS_BYE);
    done.assert_routing(&[&a, &b]);
    let (lb, proxy) = (done.lb.to_string(), done.proxy.to_string());
    for uac in [&a, &b] {
        assert_signatures(&uac.trace, uac.trace.call_ids().iter(), CALLEE_BYE_UAC);
        // The BYE came down both proxies: Kamailio's Via on top, the balancer's tagged one
        // below it, the backend's last.
        for m in uac.trace.msgs.iter().filter(|m| m.label() == "BYE") {
            let vias: Vec<&str> = m
                .header_values("Via")
                .into_iter()
                .flat_map(|v| v.split(','))
                .collect();
            assert!(
                vias.len() == 3
                    && vias[0].contains(&proxy)
                    && vias[1].contains(&lb)
                    && vias[1].contains(";lb="),
                "{}: BYE without Kamailio's and the balancer's Vias on top:\n{}",
                uac.name,
                m.raw
            );
        }
    }
    // The 200 to each BYE reached its backend with both proxies' Vias gone.
    for t in &done.traces {
        for m in t.msgs.iter().filter(|m| m.label() == "200/BYE") {
            assert_eq!(
                m.header_values("Via").len(),
                1,
                "{}: 200 to BYE still carries a proxy's Via:\n{}",
                t.name,
                m.raw
            );
        }
    }
    let calls = 2 * u64::from(CALLS);
    done.stats.expect(&[
        ("new_calls", calls),
        ("backend_requests_in", calls),
        ("frontend_responses_in", calls),
    ]);
    eprintln!(
        "callee-bye: calls per backend {:?}; {}",
        per_backend(&owner),
        done.stats.line
    );
}

// ---------------------------------------------------------------------------------------------
// Max-Forwards across both proxies

/// Every proxy on the way decrements Max-Forwards (RFC 3261 16.6 step 3), the balancer too:
/// the caller's 70 reaches the backend as 68 (Kamailio, then the balancer), and the backend's
/// 70 on its BYE reaches the caller as 68 (the balancer, then Kamailio).
fn max_forwards_counts_both_proxies(rt: Runtime) {
    let (uac, done) = Case {
        test: "max-forwards",
        uas: "uas_bye.xml",
        backend_flow: UAS_BYE,
        uac: "uac_recv_bye.xml",
        uac_flow: CALLEE_BYE_UAC,
        pause_ms: 0,
    }
    .run(rt);
    let requests = done
        .traces
        .iter()
        .chain(std::iter::once(&uac.trace))
        .flat_map(|t| t.msgs.iter().map(move |m| (t, m)))
        .filter(|(_, m)| m.dir == Dir::Received && m.method().is_some());
    for (t, m) in requests {
        assert_eq!(
            m.header("Max-Forwards"),
            Some("68"),
            "{}: {} after two proxies, sent with Max-Forwards 70:\n{}",
            t.name,
            m.label(),
            m.raw
        );
    }
}

siplb_e2e::for_both_runtimes!(
    calls_reach_one_backend_each,
    long_call_bye_reaches_its_backend_by_tag,
    cancel_of_a_ringing_call,
    ack_of_a_rejected_call,
    callee_hangs_up,
    max_forwards_counts_both_proxies,
);

/// Kamailio must be there: the suite fails (never skips) without it.
#[test]
fn kamailio_is_installed() {
    let bin = siplb_e2e::kamailio::kamailio();
    assert!(bin.is_file(), "{}", siplb_e2e::kamailio::KAMAILIO_MISSING);
}
