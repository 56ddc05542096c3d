//! Many instances (issue 13, item 2): two siplb processes on 127.0.0.2 and 127.0.0.3, with the
//! same tag key and backends, behind a Kamailio edge proxy that spreads calls over them with a
//! dispatcher set (`tests/peers/kamailio-instances.cfg`). One instance is killed (SIGKILL) while
//! calls are up; the calls set up through it still end correctly through the other one:
//!
//! - the callers' in-dialog requests (re-INVITE, its ACK, BYE) by their tag: the Route entry
//!   names the dead instance, Kamailio's failure route sends them to the live one, which knows
//!   its own entry by the tag (same key), not by the address in it;
//! - the backends' own requests (the callee's BYE) by the shared backend-facing entry: both
//!   instances advertise `--advertise-backend` = one address that reaches a live instance (here
//!   HAProxy in TCP mode, standing in for the VIP or internal L4 service of a real deployment,
//!   docs/deploy.md), and the live instance sends the BYE on by its Route (dial-out when it
//!   holds no connection to the edge proxy's address).
//!
//! What is lost, and checked: only calls in setup on the dead instance (ringing through it when
//! it died: the backend's 200 went to a connection that is gone; the caller gets 408; or whose
//! 200 passed it just before it died while the ACK went to it as it died: no backend saw that
//! ACK, and the caller's SIPp fails the call). Every call set up (ACKed) before the kill, on
//! either instance, ends with a 200 to its BYE in both
//! hang-up directions, and so does every call set up after the kill (new calls that Kamailio
//! tried on the dead instance were refused and went to the live one).
//!
//! Backends are Net::SIP (`tests/peers/netsip-uas.pl`): it rings 1 s (so calls are in setup when
//! the instance dies), hangs up 6 s after the ACK unless the caller hung up first, and sends its
//! BYE over a connection it opens itself to the address in its first Route: the entry.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use siplb_e2e::haproxy;
use siplb_e2e::kamailio::EdgeProxy;
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, LbStats, Runtime};
use siplb_e2e::net::{self, free_port, poll_until};
use siplb_e2e::netsip::{NetsipLog, NetsipOpts, NetsipUas};
use siplb_e2e::process::Proc;
use siplb_e2e::sipp::{Uac, UacOutcome, UacSpec};
use siplb_e2e::trace::{Dir, SipMsg};
use siplb_e2e::RunDir;

/// Calls per caller, at [`RATE`] per second: INVITEs for 2.4 s, so some ring when one
/// instance dies.
const CALLS: u32 = 12;
const RATE: u32 = 5;
/// How long each backend rings before its 200.
const RING_SECS: f64 = 1.0;
/// The callee hangs up this long after the ACK (Net::SIP's own BYE)...
const CALLEE_BYE_SECS: f64 = 6.0;
/// ... and the other caller hangs up (re-INVITE, then BYE) this long after it, first.
const CALLER_HOLD_MS: u64 = 3000;
/// Calls established through the instance to be killed, per caller, before it is killed.
const ESTABLISHED_ON_VICTIM: usize = 2;

/// The same key on every instance: a tag minted by one verifies on all.
const TAG_KEY: &str = "7:5ca1ab1e5ca1ab1e0ddba11c0ffee0005ca1ab1e5ca1ab1e0ddba11c0ffee000\n";

const CONFIG: &str = include_str!("../peers/kamailio-instances.cfg");

fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// HAProxy in TCP mode on 127.0.0.1:`port`, each new connection to one of `instances`: a
/// connection to a dead one is refused and redispatched to the next. What a VIP (keepalived)
/// or an internal L4 service does for the backends in a real deployment.
fn start_entry(dir: &RunDir, port: u16, instances: &[SocketAddr]) -> Proc {
    let servers: String = instances
        .iter()
        .enumerate()
        .map(|(i, a)| format!("    server instance{i} {a}\n"))
        .collect();
    let config = format!(
        "global\n    maxconn 256\n\
         defaults\n    mode tcp\n    timeout connect 1s\n    timeout client 60s\n    \
         timeout server 60s\n    retries 2\n    option redispatch 1\n\
         frontend entry\n    bind 127.0.0.1:{port}\n    default_backend instances\n\
         backend instances\n    balance roundrobin\n{servers}"
    );
    haproxy::start(dir, "entry", port, &config)
}

/// One caller's calls, each classified by what the caller saw.
struct Calls {
    name: String,
    /// Call-ID → the instance whose Record-Route the caller's 200 carried.
    established: Vec<(String, SocketAddr)>,
    /// Calls that never had a 200.
    lost: Vec<String>,
}

/// The balancer entry of a 200's Record-Route: which instance the call was set up through.
fn instance_of(m: &SipMsg, instances: &[SocketAddr]) -> Option<SocketAddr> {
    let rr = m.header_values("Record-Route").join(",");
    instances
        .iter()
        .copied()
        .find(|a| rr.contains(&format!("sip:{a};")) && rr.contains(";lb="))
}

/// The Call-ID in the prefix of a Kamailio log line (`log_prefix="{$mt $cs $ci} "`).
fn kamailio_call_id(line: &str) -> Option<&str> {
    let prefix = &line[line.find('{')? + 1..];
    let prefix = &prefix[..prefix.find('}')?];
    prefix.split(' ').nth(2)
}

/// `acked`: the Call-IDs whose ACK reached a backend. A call is set up once its ACK arrives:
/// one whose 200 passed the killed instance just before it died, but whose ACK went to it as
/// it died, is lost in setup like the calls still ringing there.
fn classify(
    uac: &UacOutcome,
    instances: &[SocketAddr],
    victim: SocketAddr,
    acked: &BTreeSet<&str>,
) -> Calls {
    let mut calls = Calls {
        name: uac.name.clone(),
        established: Vec::new(),
        lost: Vec::new(),
    };
    for (id, msgs) in uac.trace.calls() {
        let ok = msgs.iter().find(|m| {
            m.dir == Dir::Received
                && m.label() == "200/INVITE"
                && m.header("CSeq").is_some_and(|v| v.starts_with("1 "))
        });
        match ok {
            Some(m) => {
                let at = instance_of(m, instances).unwrap_or_else(|| {
                    panic!(
                        "{}: a 200 without an instance's Record-Route:\n{}",
                        uac.name, m.raw
                    )
                });
                if at == victim && !acked.contains(id.as_str()) {
                    calls.lost.push(id);
                    continue;
                }
                calls.established.push((id, at));
            }
            None => calls.lost.push(id),
        }
    }
    calls
}

impl Calls {
    fn on(&self, instance: SocketAddr) -> Vec<&str> {
        self.established
            .iter()
            .filter(|(_, a)| *a == instance)
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Every established call ended with a 200 to its BYE (`hangup` says whose BYE), and the
    /// lost calls are exactly SIPp's failed ones.
    fn assert_ended(&self, uac: &UacOutcome, hangup: &[(Dir, &str)]) {
        let lost = self.lost.len() as u64;
        assert!(
            uac.successful == self.established.len() as u64
                && uac.failed == lost
                && uac.successful + uac.failed == u64::from(CALLS),
            "{}: {} calls had a 200, {lost} none, SIPp counts {} successful and {} failed\n{}\n{}",
            self.name,
            self.established.len(),
            uac.successful,
            uac.failed,
            uac.errors,
            uac.screen
        );
        for (id, _) in &self.established {
            for (dir, label) in hangup {
                assert!(
                    uac.trace
                        .msgs
                        .iter()
                        .any(|m| m.call_id() == id && m.dir == *dir && m.label() == *label),
                    "{}: established call {id} without `{dir} {label}`:\n{}",
                    self.name,
                    uac.trace.dump_call(id)
                );
            }
        }
    }
}

fn an_instance_dies_with_calls_up(rt: Runtime) {
    let dir = RunDir::new(&format!("instances-{}", rt.name()));
    let keys = dir.file("tag.keys");
    std::fs::write(&keys, TAG_KEY).unwrap();
    let opts = NetsipOpts {
        bye_after: CALLEE_BYE_SECS,
        answer: 200,
        ring: RING_SECS,
    };
    let backends: Vec<NetsipUas> = [4u8, 5]
        .iter()
        .map(|&n| {
            let addr = SocketAddr::new(loopback(n), free_port());
            NetsipUas::start(&dir, &format!("netsip-{n}"), addr, &opts)
        })
        .collect();
    let instances: Vec<SocketAddr> = [2u8, 3]
        .iter()
        .map(|&n| SocketAddr::new(loopback(n), free_port()))
        .collect();
    let entry_port = free_port();
    let entry = start_entry(&dir, entry_port, &instances);
    let entry_addr = net::local(entry_port).to_string();
    let mut lbs: Vec<Balancer> = instances
        .iter()
        .map(|a| {
            let mut spec = LbSpec::new(
                rt,
                backends
                    .iter()
                    .map(|b| BackendArg::plain(b.addr()))
                    .collect(),
            )
            .with_args(&[
                "--backend-mode",
                "plain",
                "--advertise-backend",
                &entry_addr,
            ])
            .with_args(&["--tag-key-file", keys.to_str().unwrap()]);
            spec.ip = a.ip();
            spec.port = Some(a.port());
            Balancer::start(&dir, spec)
        })
        .collect();
    net::wait_until(
        "both instances to connect to every backend",
        Duration::from_secs(10),
        || {
            backends
                .iter()
                .all(|b| net::accepted_connections(b.addr().port()) >= 2)
        },
    );
    std::thread::sleep(Duration::from_millis(200));
    let list = dir.file("dispatcher.list");
    let set: String = instances
        .iter()
        .map(|a| format!("1 sip:{a};transport=tcp\n"))
        .collect();
    std::fs::write(&list, set).unwrap();
    let proxy = EdgeProxy::start_with(&dir, |port| {
        CONFIG
            .replace("@PORT@", &port.to_string())
            .replace("@DISPATCHER_LIST@", list.to_str().unwrap())
    });

    let caller = |name: &str, scenario: &str, pause_ms: u64| {
        let mut spec = UacSpec::new(name, scenario, proxy.addr());
        spec.calls = CALLS;
        spec.rate = RATE;
        spec.pause_ms = pause_ms;
        spec.timeout = Duration::from_secs(40);
        Uac::spawn(&dir, spec)
    };
    let caller_bye = caller("uac-caller-bye", "uac_long.xml", CALLER_HOLD_MS);
    let callee_bye = caller("uac-callee-bye", "uac_recv_bye.xml", 0);
    let (victim, survivor) = (instances[0], instances[1]);
    // SIPp writes its trace when it exits; Kamailio logs each reply as it relays it, with the
    // Call-ID (`N-PID@IP`: which caller) in the line's prefix (`{2 1 CALL-ID} `). A call is
    // set up through the victim once a backend logged its ACK: killing it at the 200 alone
    // races the ACK, which then dies with the instance (the call is lost in setup).
    let answered_by_victim = format!("<script>: reply 200 OK to 1 INVITE from {victim}");
    let ready = poll_until(Duration::from_secs(20), || {
        let log = proxy.log();
        let acks: Vec<NetsipLog> = backends.iter().map(|b| b.log()).collect();
        let acked: BTreeSet<&str> = acks
            .iter()
            .flat_map(|l| l.call_ids_with(Dir::Received, "ACK"))
            .collect();
        let on_victim: BTreeSet<&str> = log
            .lines()
            .filter(|l| l.contains(&answered_by_victim))
            .filter_map(kamailio_call_id)
            .filter(|id| acked.contains(id))
            .collect();
        [&caller_bye, &callee_bye].iter().all(|u| {
            let caller = format!("-{}@", u.pid());
            on_victim.iter().filter(|id| id.contains(&caller)).count() >= ESTABLISHED_ON_VICTIM
        })
    });
    assert!(
        ready,
        "calls were not set up through {victim}\n{}\n{}",
        lbs[0].log_tail(20),
        proxy.log_tail(30)
    );
    lbs[0].kill();
    let (caller_bye, callee_bye) = (caller_bye.wait(), callee_bye.wait());
    // The backends' last BYEs may still wait for their 200.
    poll_until(Duration::from_secs(5), || {
        backends.iter().all(|b| {
            let log = b.log();
            log.count(Dir::Sent, "BYE") == log.count(Dir::Received, "200/BYE")
        })
    });
    let stats = lbs[1].stop();
    let proxy_log = proxy.log();
    // Kamailio logs at ERROR its connection to the dead instance reset, and each new one
    // refused (naming it), with the read or send that failed with it (naming nothing); nothing
    // else may fail.
    let victim_names = [
        victim.to_string(),
        format!("[{}]:{}", victim.ip(), victim.port()),
    ];
    proxy.stop_allowing(|e| {
        victim_names.iter().any(|v| e.contains(v.as_str()))
            || e.ends_with("msg_send_buffer(): tcp_send failed")
            || e.ends_with("ERROR (111) Connection refused")
            || e.contains("tcp_read_req(): ERROR: tcp_read_req: error reading")
    });
    let logs: Vec<NetsipLog> = backends.into_iter().map(|b| b.stop().0).collect();
    drop(entry);

    let acked: BTreeSet<&str> = logs
        .iter()
        .flat_map(|l| l.call_ids_with(Dir::Received, "ACK"))
        .collect();
    let a = classify(&caller_bye, &instances, victim, &acked);
    let b = classify(&callee_bye, &instances, victim, &acked);
    eprintln!(
        "{}: caller hang-up: {} on {victim} (killed), {} on {survivor}, {} lost; \
         callee hang-up: {} / {} / {} lost\n{}",
        rt.name(),
        a.on(victim).len(),
        a.on(survivor).len(),
        a.lost.len(),
        b.on(victim).len(),
        b.on(survivor).len(),
        b.lost.len(),
        stats.line
    );
    // 1. Every established call ended with a 200 to its BYE, whoever hung up.
    a.assert_ended(
        &caller_bye,
        &[(Dir::Sent, "BYE"), (Dir::Received, "200/BYE")],
    );
    b.assert_ended(
        &callee_bye,
        &[(Dir::Received, "BYE"), (Dir::Sent, "200/BYE")],
    );
    for calls in [&a, &b] {
        assert!(
            calls.on(victim).len() >= ESTABLISHED_ON_VICTIM,
            "{}: too few calls established through the killed instance",
            calls.name
        );
    }
    // The re-INVITE of each caller-hangup call completed too (two 200s to INVITEs).
    for (id, _) in &a.established {
        let oks = caller_bye
            .trace
            .msgs
            .iter()
            .filter(|m| m.call_id() == id && m.dir == Dir::Received && m.label() == "200/INVITE")
            .count();
        assert_eq!(
            oks,
            2,
            "{id}: re-INVITE unanswered\n{}",
            caller_bye.trace.dump_call(id)
        );
    }

    // 2. The calls of the dead instance went on through the live one: the callers' requests by
    //    Kamailio's failure route, the callee's BYE (its balancer Via names the instance that
    //    handled it) through the entry.
    for id in a.on(victim) {
        let to_survivor = format!("relay BYE {id} to sip:{survivor}");
        assert!(
            proxy_log.contains(&to_survivor),
            "{id}: Kamailio never sent the caller's BYE to {survivor}\n{}",
            grep(&proxy_log, id)
        );
    }
    for id in b.on(victim) {
        let bye = callee_bye
            .trace
            .msgs
            .iter()
            .find(|m| m.call_id() == id && m.dir == Dir::Received && m.label() == "BYE")
            .unwrap();
        let vias: Vec<&str> = bye
            .header_values("Via")
            .into_iter()
            .flat_map(|v| v.split(','))
            .collect();
        assert!(
            vias.get(1)
                .is_some_and(|v| v.contains(&survivor.to_string()) && v.contains(";lb=")),
            "{id}: the callee's BYE did not come through {survivor}:\n{}",
            bye.raw
        );
    }
    // Every BYE a backend sent went to the entry (its first Route) and had its 200. (Net::SIP
    // also dials the dead instance's old source address to answer the INVITEs of the lost
    // calls, RFC 3261 §18.2.2; nothing listens there.)
    let mut backend_byes = 0;
    for log in &logs {
        let byes: Vec<&str> = log
            .messages
            .iter()
            .filter(|m| m.dir == Dir::Sent && m.label == "BYE")
            .map(|m| m.peer.as_str())
            .collect();
        assert!(
            byes.iter().all(|p| *p == entry_addr)
                && byes.len() == log.count(Dir::Received, "200/BYE"),
            "{}: a BYE not sent to the entry {entry_addr}, or without its 200\n{}",
            log.name,
            log.text
        );
        backend_byes += byes.len();
    }
    // (Which backend took which caller's calls is the balancers' choice: one backend may have
    // had only calls whose caller hung up.)
    assert_eq!(
        backend_byes,
        b.established.len(),
        "the backends sent a BYE for other calls than the established callee-hangup ones"
    );

    // 3. What is lost: only calls in setup through the dead instance (Kamailio sent their
    //    INVITE there, and no 200 came back, or its ACK died with the instance).
    let lost: BTreeSet<&String> = a.lost.iter().chain(&b.lost).collect();
    for id in &lost {
        assert!(
            proxy_log.contains(&format!("relay INVITE {id} to sip:{victim}")),
            "{id} was lost but was never in setup on {victim}:\n{}",
            grep(&proxy_log, id)
        );
    }
    assert!(
        !lost.is_empty(),
        "no call was ringing through {victim} when it died: the test shows no loss (timing?)"
    );

    // 4. The live instance: every tag verified, nothing refused or malformed.
    assert_survivor_clean(&stats);
}

/// The counters of the instance that stayed: tags from the other instance verified (no 481, no
/// tag failure), nothing looped, every dial-out connected.
fn assert_survivor_clean(stats: &LbStats) {
    stats.expect(&[
        ("tag_failures", 0),
        ("replies_400", 0),
        ("replies_481", 0),
        ("replies_482", 0),
        ("replies_483", 0),
        ("malformed", 0),
        ("framing_errors", 0),
        ("backend_failures", 0),
        ("dial_out_failures", 0),
    ]);
    assert!(
        stats.get("tagged").is_some_and(|n| n > 0)
            && stats.get("backend_requests_in").is_some_and(|n| n > 0),
        "the live instance routed no tagged request or no backend request\n{}",
        stats.line
    );
}

/// The lines of `log` that mention `what`.
fn grep(log: &str, what: &str) -> String {
    log.lines()
        .filter(|l| l.contains(what))
        .collect::<Vec<_>>()
        .join("\n")
}

siplb_e2e::for_both_runtimes!(an_instance_dies_with_calls_up);
