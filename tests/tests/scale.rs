//! End-to-end tests of issue 13 ("Every core, many instances, behind L4 balancers"), against
//! both binaries (`tokio::NAME`, `mio::NAME`):
//!
//! - `--workers 2`: SIPp calls over connections of their own (`-t tn`) are spread by the kernel
//!   (`SO_REUSEPORT`) over both workers, shown by the per-worker metrics, and all pass;
//! - `--workers 2` with a backend on an independent stack (Net::SIP), whose BYE comes over a
//!   connection it opens itself and so lands on either worker: every BYE reaches its caller,
//!   on the caller's own connection when that worker holds it, else over a connection the
//!   worker dials to the caller's Contact, and every 200 reaches the backend;
//! - HAProxy in front with `send-proxy-v2` (`--proxy-protocol`): calls pass, and the Via the
//!   backend sees names the client's address in `received`/`rport`, not HAProxy's; a connection
//!   without a PROXY header is closed and counted;
//! - the same before a TLS listener (`--listen-tls ADDR,proxy-protocol`): stunnel on
//!   127.0.0.6 → HAProxy (`mode tcp`, `send-proxy-v2`) → the TLS listener; the header comes
//!   before the ClientHello, the call passes, the backend's Via and the log name 127.0.0.6,
//!   and a TLS client straight to the listener (no header) is closed and counted.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use siplb_e2e::haproxy;
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, Runtime, CLEAN};
use siplb_e2e::net::{self, free_port, poll_until};
use siplb_e2e::netsip::{NetsipOpts, NetsipUas};
use siplb_e2e::ops::{self, header, headers, http_get, Metrics, SipBackend, SipClient, SipReader};
use siplb_e2e::process::Proc;
use siplb_e2e::sipp::{Transport, Uac, UacSpec, Uas};
use siplb_e2e::tls::{s_client, Pki, Stunnel, StunnelSpec, TlsLb};
use siplb_e2e::trace::Dir;
use siplb_e2e::RunDir;

/// Scrapes the balancer's `/metrics` on 127.0.0.1:`port`.
fn metrics(port: u16) -> Metrics {
    let (status, body) = http_get(net::local(port), "/metrics");
    assert_eq!(status, 200, "{body}");
    Metrics::parse(&body)
}

/// Frontend connections each worker accepted, by the per-worker metrics.
fn accepted_per_worker(port: u16, workers: usize) -> Vec<f64> {
    let m = metrics(port);
    (0..workers)
        .map(|i| {
            m.get(&format!(
                "siplb_worker_frontends_accepted_total{{worker=\"{i}\"}}"
            ))
            .unwrap_or(0.0)
        })
        .collect()
}

/// Waits (bounded: snapshots are at most 100 ms old) until every worker shows an accept.
fn every_worker_accepted(port: u16, workers: usize) -> bool {
    poll_until(Duration::from_millis(600), || {
        accepted_per_worker(port, workers).iter().all(|&n| n > 0.0)
    })
}

fn metrics_flag(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

// ---------------------------------------------------------------------------------------------
// a. SIPp, one connection per call, over two workers.

fn sipp_calls_on_both_workers(rt: Runtime) {
    const CALLS: u32 = 10;
    let dir = RunDir::new(&format!("workers-sipp-{}", rt.name()));
    let backends: Vec<Uas> = (0..2)
        .map(|i| Uas::start(&dir, &format!("backend-{i}"), "uas_basic.xml", &[]))
        .collect();
    let metrics_port = free_port();
    let spec = LbSpec::new(
        rt,
        backends
            .iter()
            .map(|b| BackendArg::plain(b.addr()))
            .collect(),
    )
    .with_workers(2)
    .with_args(&["--metrics", &metrics_flag(metrics_port)]);
    let mut lb = Balancer::start(&dir, spec);
    let mut rounds = 0;
    // Each round opens CALLS connections; the kernel hashes each to a worker, so the chance
    // that one worker gets none of them halves with every connection.
    while rounds < 4 {
        rounds += 1;
        let mut spec = UacSpec::new(&format!("uac-{rounds}"), "uac_basic.xml", lb.addr());
        spec.transport = Transport::PerCall;
        spec.calls = CALLS;
        spec.rate = 50;
        spec.timeout = Duration::from_secs(15);
        let uac = Uac::run(&dir, spec);
        uac.assert_all_ok(CALLS.into());
        if every_worker_accepted(metrics_port, 2) {
            break;
        }
    }
    let calls = u64::from(CALLS) * rounds;
    // The last accepts may be up to 100 ms from the snapshot.
    poll_until(Duration::from_secs(1), || {
        accepted_per_worker(metrics_port, 2).iter().sum::<f64>() as u64 == calls
    });
    let per_worker = accepted_per_worker(metrics_port, 2);
    let total: f64 = per_worker.iter().sum();
    let stats = lb.stop();
    for b in backends {
        b.finish();
    }
    assert!(
        per_worker.iter().all(|&n| n > 0.0),
        "one worker took every connection: {per_worker:?}"
    );
    assert_eq!(total as u64, calls, "{per_worker:?}");
    stats.expect(CLEAN);
    // The stats line at exit is the sum over the workers.
    stats.expect(&[("new_calls", calls), ("frontends_accepted", calls)]);
}

// ---------------------------------------------------------------------------------------------
// b. Net::SIP backend hangs up, two workers: each BYE reaches its caller.

/// A caller: its connection to the balancer, and where it listens (its Via and Contact), for
/// the connection a worker that does not hold its connection dials.
struct Caller {
    client: SipClient,
    listener: TcpListener,
    call: ops::Answered,
}

impl Caller {
    /// Waits for the callee's BYE on the caller's connection or on one the balancer opened
    /// to its listener, and answers it 200 there; returns whether it came dialled.
    fn answer_bye(&mut self, wait: Duration) -> Option<bool> {
        let deadline = Instant::now() + wait;
        self.listener.set_nonblocking(true).unwrap();
        while Instant::now() < deadline {
            if let Some(m) = self.client.read_within(Duration::from_millis(50)) {
                if m.starts_with("BYE ") {
                    self.client.send_raw(ops::response(&m, 200, "").as_bytes());
                    return Some(false);
                }
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    let mut reader = SipReader::new(stream.try_clone().unwrap());
                    let bye = reader.next_message().ok().flatten()?;
                    assert!(bye.starts_with("BYE "), "{bye}");
                    assert_eq!(header(&bye, "Call-ID"), Some(self.call.call_id.as_str()));
                    (&stream)
                        .write_all(ops::response(&bye, 200, "").as_bytes())
                        .unwrap();
                    // Keep the connection until the test ends: the balancer closes it idle.
                    std::mem::forget(stream);
                    return Some(true);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("accepting the balancer's dial-out: {e}"),
            }
        }
        None
    }
}

fn netsip_byes_reach_callers_across_workers(rt: Runtime) {
    let dir = RunDir::new(&format!("workers-netsip-{}", rt.name()));
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), free_port());
    let backend = NetsipUas::start(&dir, "netsip-2", addr, &NetsipOpts::default());
    let metrics_port = free_port();
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr())])
        .with_workers(2)
        .with_args(&[
            "--backend-mode",
            "plain",
            "--metrics",
            &metrics_flag(metrics_port),
        ]);
    let mut lb = Balancer::start(&dir, spec);
    // Callers connect until both workers hold some (bounded): then some BYEs must cross.
    let mut callers = Vec::new();
    while callers.len() < 32 {
        for _ in 0..4 {
            let listener = TcpListener::bind(net::local(free_port())).unwrap();
            let me = listener.local_addr().unwrap();
            let mut client = SipClient::connect(lb.addr()).advertising(me);
            let id = format!("workers-bye-{}", callers.len());
            let call = client.call(&id);
            assert_eq!(call.status, 200, "{}", call.response);
            client.ack(&call);
            callers.push(Caller {
                client,
                listener,
                call,
            });
        }
        if every_worker_accepted(metrics_port, 2) {
            break;
        }
    }
    let per_worker = accepted_per_worker(metrics_port, 2);
    let mut dialled = 0;
    let mut missing = Vec::new();
    for c in &mut callers {
        match c.answer_bye(Duration::from_secs(6)) {
            Some(true) => dialled += 1,
            Some(false) => {}
            None => missing.push(c.call.call_id.clone()),
        }
    }
    let n = callers.len();
    poll_until(Duration::from_secs(5), || {
        backend.log().count(Dir::Received, "200/BYE") >= n
    });
    let stats = lb.stop();
    let (log, _) = backend.stop();
    assert!(
        missing.is_empty(),
        "callers without their BYE: {missing:?}\n{}\n{}",
        stats.line,
        log.text
    );
    assert_eq!(
        log.count(Dir::Received, "200/BYE"),
        n,
        "not every caller's 200 reached the backend\n{}",
        log.text
    );
    assert!(
        per_worker.iter().all(|&w| w > 0.0),
        "one worker took every connection: {per_worker:?}"
    );
    // The backend's BYE connection landed on one worker; the callers of the other were dialled.
    assert!(dialled > 0, "no BYE crossed workers: {per_worker:?}");
    assert_eq!(stats.get("dial_outs"), Some(dialled), "{}", stats.line);
    stats.expect(&[
        ("new_calls", n as u64),
        ("dial_out_failures", 0),
        ("tag_failures", 0),
        ("replies_503", 0),
        ("dropped", 0),
    ]);
}

// ---------------------------------------------------------------------------------------------
// c. HAProxy in front, PROXY protocol v2.

/// HAProxy in TCP mode on 127.0.0.1:`port` in front of `to`, announcing each client with a
/// PROXY v2 header; in the foreground (`-db`), its config in the run dir.
fn start_haproxy(dir: &RunDir, port: u16, to: SocketAddr) -> Proc {
    let config = format!(
        "global\n    maxconn 256\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30s\n    \
         timeout server 30s\n\
         frontend sip\n    bind 127.0.0.1:{port}\n    default_backend balancer\n\
         backend balancer\n    server lb0 {to} send-proxy-v2\n"
    );
    haproxy::start(dir, "haproxy", port, &config)
}

/// Reads until the peer closes (`true`) or `wait` passes (`false`).
fn closed_within(mut stream: &TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn haproxy_announces_the_client(rt: Runtime) {
    let dir = RunDir::new(&format!("proxy-protocol-{}", rt.name()));
    let backend = SipBackend::start();
    let metrics_port = free_port();
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]).with_args(&[
        "--proxy-protocol",
        "--metrics",
        &metrics_flag(metrics_port),
    ]);
    let mut lb = Balancer::start(&dir, spec);
    let proxy_port = free_port();
    let _haproxy = start_haproxy(&dir, proxy_port, lb.addr());

    // A client on 127.0.0.5 behind a NAT (its Via names a private address, with rport).
    let client_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    let mut client = SipClient::connect_from(net::local(proxy_port), client_ip);
    let me = client.local_addr();
    let invite = format!(
        "INVITE sip:service@{lb} SIP/2.0\r\n\
         Via: SIP/2.0/TCP 192.0.2.1:5060;rport;branch=z9hG4bK-pp-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@192.0.2.1>;tag=c-pp-1\r\n\
         To: <sip:service@{lb}>\r\n\
         Call-ID: pp-1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@192.0.2.1:5060;transport=tcp>\r\n\
         Content-Length: 0\r\n\r\n",
        lb = lb.addr()
    );
    client.send_raw(invite.as_bytes());
    let answer = client.final_response("pp-1");
    assert_eq!(ops::status(&answer), Some(200), "{answer}");
    let seen = backend.received_messages("INVITE");
    let seen = seen
        .iter()
        .find(|m| header(m, "Call-ID") == Some("pp-1"))
        .expect("the INVITE reached the backend");
    let via = headers(seen, "Via")
        .into_iter()
        .find(|v| v.contains("z9hG4bK-pp-1"))
        .unwrap_or_else(|| panic!("the caller's Via is gone:\n{seen}"));
    assert!(
        via.contains(&format!("received={client_ip}"))
            && via.contains(&format!("rport={}", me.port())),
        "the Via names HAProxy, not the client {me}: {via}"
    );

    // Straight to the balancer without a header: closed at once; silent: closed at 3 s.
    let mut bare = TcpStream::connect(lb.addr()).unwrap();
    bare.write_all(invite.replace("pp-1", "pp-bare").as_bytes())
        .unwrap();
    assert!(
        closed_within(&bare, Duration::from_secs(2)),
        "a connection without a PROXY header stayed open"
    );
    let silent = TcpStream::connect(lb.addr()).unwrap();
    let t0 = Instant::now();
    assert!(
        closed_within(&silent, Duration::from_secs(6)),
        "a silent connection stayed open"
    );
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    let rejected = |cause: &str| {
        metrics(metrics_port)
            .get(&format!(
                "siplb_proxy_header_rejected_total{{cause=\"{cause}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert!(poll_until(Duration::from_secs(1), || rejected("invalid")
        == 1.0
        && rejected("timeout") == 1.0));
    drop(client);
    let stats = lb.stop();
    assert!(
        !backend.received("INVITE").contains(&"pp-bare".to_string()),
        "the bare connection's INVITE went through"
    );
    // Only HAProxy's connection reached the core.
    stats.expect(&[
        ("new_calls", 1),
        ("frontends_accepted", 1),
        ("malformed", 0),
        ("framing_errors", 0),
    ]);
}

fn haproxy_before_a_tls_listener(rt: Runtime) {
    let dir = RunDir::new(&format!("proxy-protocol-tls-{}", rt.name()));
    let pki = Pki::new(&dir, "pp-tls");
    let cert = pki.server("lb", "lb.pp.test", 2);
    let backend = SipBackend::start();
    let spec = LbSpec::new(rt, vec![BackendArg::plain(backend.addr)]);
    let mut lb = TlsLb::start_proxied(&dir, spec, &[&cert], &[]);
    let proxy_port = free_port();
    let _haproxy = start_haproxy(&dir, proxy_port, lb.tls);
    // The caller's TLS leaves from 127.0.0.6; HAProxy reaches the balancer from 127.0.0.1.
    let client_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));
    let stunnel = Stunnel::start(
        &dir,
        "pp",
        &StunnelSpec {
            connect: net::local(proxy_port),
            name: "lb.pp.test".to_string(),
            ca: pki.ca().to_path_buf(),
            client_cert: None,
            max_version: None,
            source: Some(client_ip),
        },
    );
    let mut client = SipClient::connect(stunnel.addr());
    let target = lb.advertised.clone();
    let invite = format!(
        "INVITE sip:service@{target};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 192.0.2.1:5061;rport;branch=z9hG4bK-pptls-1\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:caller@192.0.2.1>;tag=c-pptls-1\r\n\
         To: <sip:service@{target}>\r\n\
         Call-ID: pptls-1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:caller@192.0.2.1:5061;transport=tls>\r\n\
         Content-Length: 0\r\n\r\n"
    );
    client.send_raw(invite.as_bytes());
    let answer = client.final_response("pptls-1");
    assert_eq!(ops::status(&answer), Some(200), "{answer}");
    let seen = backend.received_messages("INVITE");
    let seen = seen
        .iter()
        .find(|m| header(m, "Call-ID") == Some("pptls-1"))
        .expect("the INVITE reached the backend");
    let via = headers(seen, "Via")
        .into_iter()
        .find(|v| v.contains("z9hG4bK-pptls-1"))
        .unwrap_or_else(|| panic!("the caller's Via is gone:\n{seen}"));
    assert!(
        via.contains(&format!("received={client_ip}")) && via.contains("rport="),
        "the Via names HAProxy, not the client {client_ip}: {via}"
    );
    let opened = lb
        .lb
        .log()
        .lines()
        .filter(|l| l.contains("frontend connection open"))
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert!(
        opened.len() == 1 && opened[0].contains(&format!("{client_ip}:")),
        "the log should name the client {client_ip}: {opened:?}"
    );

    // A TLS client straight to the listener sends its ClientHello where the header belongs:
    // closed and counted, no handshake.
    let direct = s_client(lb.tls, &["-servername", "lb.pp.test"]);
    direct.assert_refused();
    let rejected = |cause: &str| {
        lb.scrape()
            .get(&format!(
                "siplb_proxy_header_rejected_total{{cause=\"{cause}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert!(
        poll_until(Duration::from_secs(3), || rejected("invalid") == 1.0),
        "the headerless connection was not counted: invalid={}",
        rejected("invalid")
    );
    lb.expect_tls_counters(&[("tls_handshakes", 1), ("tls_version_tls13", 1)]);
    drop(client);
    stunnel.stop();
    lb.wait_no_tls_connections();
    let stats = lb.lb.stop();
    stats.expect(&[
        ("new_calls", 1),
        ("frontends_accepted", 1),
        ("malformed", 0),
        ("framing_errors", 0),
    ]);
}

siplb_e2e::for_both_runtimes!(
    sipp_calls_on_both_workers,
    netsip_byes_reach_callers_across_workers,
    haproxy_announces_the_client,
    haproxy_before_a_tls_listener,
);
