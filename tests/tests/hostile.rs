//! Hostile peers against the real binaries (`lb-tokio` and `lb-mio`) on 127.0.0.1 (issue 15,
//! "no peer can misroute, starve or poison another"): initial requests that fail the edge
//! checks get 400 and reach no backend; a connection flooding the new-call table gets 503
//! while another connection's calls go on; a flood of silent connections against the
//! connection limit leaves room for a new peer and for a proxy on the flooder's address. Peers are plain Rust sockets (`siplb_e2e::ops`).
//!
//! No assertion depends on speed: every figure is a count the balancer's rules fix exactly
//! (nothing expires within the 32 s window), read when the traffic is over.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpStream;

use siplb_e2e::lb::Runtime;
use siplb_e2e::ops::{
    backend_series, backend_tables, header, status, OpsLb, SipBackend, SipClient,
};
use siplb_e2e::RunDir;

fn ready(lb: &mut OpsLb, backend: &SipBackend) {
    lb.wait_metric(&backend_series("backend_up", 0, backend.addr), 1.0);
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or_default()
}

// (a) A 40 kB Via host and a From without a tag: 400 naming the fault, nothing forwarded; the
// connection stays and a sane call on it goes through.
fn insane_initial_requests_get_400_and_reach_no_backend(rt: Runtime) {
    let dir = RunDir::new(&format!("hostile-sanity-{}", rt.name()));
    let a = SipBackend::start();
    let mut lb = OpsLb::start(&dir, rt, &backend_tables(&[&a]), &[]);
    ready(&mut lb, &a);
    let mut client = SipClient::connect(lb.addr());
    let me = client.local_addr();

    let host = format!("{}.example.com", "a".repeat(40_000));
    let huge = client.invite("huge-via", Some(70)).replacen(
        &format!("Via: SIP/2.0/TCP {me};"),
        &format!("Via: SIP/2.0/TCP {host}:{};", me.port()),
        1,
    );
    assert!(huge.len() > 40_000 && huge.contains(&host));
    client.send_raw(huge.as_bytes());
    let answer = client.final_response("huge-via");
    assert_eq!(first_line(&answer), "SIP/2.0 400 Host Too Long");
    assert!(header(&answer, "Via").is_some_and(|v| v.contains(&host)));

    let tagless = client
        .invite("no-from-tag", Some(70))
        .replace(";tag=c-no-from-tag", "");
    assert!(!header(&tagless, "From").unwrap().contains("tag"));
    client.send_raw(tagless.as_bytes());
    let answer = client.final_response("no-from-tag");
    assert_eq!(first_line(&answer), "SIP/2.0 400 Missing From Tag");

    // One backend connection carries everything in order: once the sane call is answered, the
    // refused requests would have arrived before it.
    assert_eq!(client.call("sane-after").status, 200);
    assert_eq!(a.received("INVITE"), vec!["sane-after".to_string()]);
    assert_eq!(a.received_messages("INVITE").len(), 1);
    let m = lb.wait_metric("siplb_sanity_refused_total", 2.0);
    for (series, want) in [
        ("siplb_replies_400_total", 2.0),
        ("siplb_malformed_total", 0.0),
        ("siplb_new_calls_total", 1.0),
        ("siplb_to_backend_total", 1.0),
        ("siplb_frontends_open", 1.0),
    ] {
        assert_eq!(m.value(series), want, "{series}");
    }
    let stdout = lb.stop();
    assert!(stdout.contains("sanity_refused=2 "), "{stdout}");
}

// (b) The flood, scaled down: with a table of 200, one connection sends 150 OPTIONS;
// the first 100 fill half the table, the other 50 get 503, and 20 calls on another peer's
// connection all go through. A new connection from the flooder's address gains it nothing:
// the address holds more than its share (25 %, 50 entries) over all its connections.
fn a_flooding_connection_cannot_starve_another(rt: Runtime) {
    const FLOOD: usize = 150;
    const HALF: usize = 100;
    const CALLS: usize = 20;
    let dir = RunDir::new(&format!("hostile-share-{}", rt.name()));
    let a = SipBackend::start();
    let body = format!("{}[limits]\ntable-capacity = 200\n", backend_tables(&[&a]));
    let mut lb = OpsLb::start(&dir, rt, &body, &[]);
    ready(&mut lb, &a);

    let mut flooder = SipClient::connect(lb.addr());
    let me = flooder.local_addr();
    let lb_addr = lb.addr();
    let flood: String = (0..FLOOD)
        .map(|i| {
            format!(
                "OPTIONS sip:service@{lb_addr} SIP/2.0\r\n\
                 Via: SIP/2.0/TCP {me};branch=z9hG4bK-flood-{i}\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:flood@{me}>;tag=f{i}\r\n\
                 To: <sip:service@{lb_addr}>\r\n\
                 Call-ID: flood-{i}\r\n\
                 CSeq: 1 OPTIONS\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        })
        .collect();
    flooder.send_raw(flood.as_bytes());
    // The balancer's 503s come at once, the backend's 200s a hop later: count by Call-ID.
    let mut answers: BTreeMap<String, String> = BTreeMap::new();
    while answers.len() < FLOOD {
        let m = flooder.read();
        let call_id = header(&m, "Call-ID").unwrap_or_default().to_string();
        answers.insert(call_id, first_line(&m).to_string());
    }
    let refused: Vec<&String> = answers
        .values()
        .filter(|l| l.as_str() == "SIP/2.0 503 Too Many Calls Being Set Up On This Connection")
        .collect();
    let ok = answers
        .values()
        .filter(|l| l.as_str() == "SIP/2.0 200 OK")
        .count();
    assert_eq!((ok, refused.len()), (HALF, FLOOD - HALF), "{answers:?}");
    assert_eq!(a.received("OPTIONS").len(), HALF);

    let other_peer: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let mut proxy = SipClient::connect_from(lb.addr(), other_peer);
    for i in 0..CALLS {
        let call = proxy.call(&format!("legit-{i}"));
        assert_eq!(call.status, 200, "{}", call.response);
    }
    assert_eq!(a.received("INVITE").len(), CALLS);
    // The flooder stays refused, INVITEs too.
    let invite = flooder.invite("flood-invite", Some(70));
    flooder.send_raw(invite.as_bytes());
    let answer = flooder.final_response("flood-invite");
    assert_eq!(status(&answer), Some(503));
    assert!(answer.contains("\r\nRetry-After: 5\r\n"), "{answer}");
    let mut reconnected = SipClient::connect(lb.addr());
    let invite = reconnected.invite("flood-reconnected", Some(70));
    reconnected.send_raw(invite.as_bytes());
    let answer = reconnected.final_response("flood-reconnected");
    assert_eq!(
        first_line(&answer),
        "SIP/2.0 503 Too Many Calls Being Set Up From This Address"
    );

    let m = lb.wait_metric("siplb_table_share_refused_total", (FLOOD - HALF + 2) as f64);
    for (series, want) in [
        ("siplb_table_len", (HALF + CALLS) as f64),
        ("siplb_new_calls_total", (HALF + CALLS) as f64),
        ("siplb_replies_503_total", (FLOOD - HALF + 2) as f64),
        ("siplb_table_capacity", 200.0),
    ] {
        assert_eq!(m.value(series), want, "{series}");
    }
    lb.stop();
}

/// A connection from `ip` that sends nothing.
fn silent_from(lb: std::net::SocketAddr, ip: &str) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{ip}:0").parse().unwrap();
    socket.bind(&local.into()).unwrap();
    socket.connect(&lb.into()).unwrap();
    socket.into()
}

/// Whether the balancer closed `stream` (EOF within `wait`).
fn closed_within(stream: &mut TcpStream, wait: std::time::Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0))
}

// (c) A connection flood against the limit (20 slots, 2 of them reserved for new addresses,
// 12 per address). Flooder A (127.0.0.2) opens 15 silent connections: 12 stay, 3 are refused.
// Flooder B (127.0.0.4) opens 10: 6 fill the slots outside the reserve, and each of the other
// 4 evicts the oldest silent connection (A's first four). A new peer (127.0.0.3) gets a slot of
// the reserve, and a proxy on the flooder's own address evicts A's fifth: both make their calls.
fn a_connection_flood_leaves_room_for_legitimate_peers(rt: Runtime) {
    let dir = RunDir::new(&format!("hostile-conn-flood-{}", rt.name()));
    let a = SipBackend::start();
    let body = format!(
        "{}[limits]\nfrontends-max = 20\nfrontends-reserve-percent = 10\nfrontends-per-ip-max = 12\n",
        backend_tables(&[&a])
    );
    let mut lb = OpsLb::start(&dir, rt, &body, &[]);
    ready(&mut lb, &a);
    let mut flood_a = Vec::new();
    for i in 0..15 {
        flood_a.push(silent_from(lb.addr(), "127.0.0.2"));
        // One at a time, each accepted or refused before the next comes.
        lb.wait_metric("siplb_frontends_accepted_total", f64::from(i.min(11) + 1));
    }
    lb.wait_metric("siplb_frontends_refused_total", 3.0);
    lb.wait_metric("siplb_frontends_open", 12.0);
    for refused in &mut flood_a[12..] {
        assert!(closed_within(refused, std::time::Duration::from_secs(5)));
    }
    let mut flood_b = Vec::new();
    for i in 0..10 {
        flood_b.push(silent_from(lb.addr(), "127.0.0.4"));
        lb.wait_metric("siplb_frontends_accepted_total", f64::from(12 + i + 1));
    }
    let m = lb.wait_metric("siplb_frontends_evicted_total", 4.0);
    assert_eq!(m.value("siplb_frontends_refused_total"), 3.0);
    for evicted in &mut flood_a[..4] {
        assert!(closed_within(evicted, std::time::Duration::from_secs(5)));
    }
    lb.wait_metric("siplb_frontends_open", 18.0);

    let newcomer_ip: std::net::IpAddr = "127.0.0.3".parse().unwrap();
    let mut newcomer = SipClient::connect_from(lb.addr(), newcomer_ip);
    for i in 0..5 {
        let call = newcomer.call(&format!("newcomer-{i}"));
        assert_eq!(call.status, 200, "{}", call.response);
    }
    let flooder_ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    let mut neighbour = SipClient::connect_from(lb.addr(), flooder_ip);
    for i in 0..5 {
        let call = neighbour.call(&format!("neighbour-{i}"));
        assert_eq!(call.status, 200, "{}", call.response);
    }
    assert!(closed_within(
        &mut flood_a[4],
        std::time::Duration::from_secs(5)
    ));
    let m = lb.wait_metric("siplb_frontends_evicted_total", 5.0);
    for (series, want) in [
        ("siplb_frontends_refused_total", 3.0),
        ("siplb_frontends_accepted_total", 24.0),
        ("siplb_frontends_open", 19.0),
        ("siplb_new_calls_total", 10.0),
    ] {
        assert_eq!(m.value(series), want, "{series}");
    }
    // B's connections and A's later ones are still held: silent, but nobody needed the room.
    assert!(!closed_within(
        &mut flood_b[0],
        std::time::Duration::from_millis(200)
    ));
    lb.stop();
}

siplb_e2e::for_both_runtimes!(
    insane_initial_requests_get_400_and_reach_no_backend,
    a_flooding_connection_cannot_starve_another,
    a_connection_flood_leaves_room_for_legitimate_peers,
);
