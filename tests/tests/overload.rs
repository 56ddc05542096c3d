//! Overload without collapse against the real binaries (issue 15, item 6): both backends stop
//! reading while a proxy keeps offering new calls. The balancer holds them (they stay up, no
//! failover), answers the excess with 503 and Retry-After, keeps the established calls on
//! their own backends, and takes new calls again once the backends read.
//!
//! Before the overload hold the flood simply queued up toward the backends (nothing refused
//! until the 4 MB output cap closed their connections and failed the calls over). Every
//! figure asserted here is a count the rules fix: every INVITE gets exactly one final answer,
//! whatever the timing.

#![allow(clippy::unwrap_used)]

use std::io::{ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use siplb_e2e::lb::Runtime;
use siplb_e2e::ops::{header, method, response, status, OpsLb, SipReader, PATIENCE};
use siplb_e2e::RunDir;

/// New calls offered while the backends read nothing, at most, until both are held.
const FLOOD_MAX: usize = 3000;

/// New calls offered once both backends are held: every one must get the balancer's 503.
const WHILE_HELD: usize = 100;

/// Marks small enough that a few dozen (padded) INVITEs fill a backend's queue, and large enough
/// for the bursts toward the proxy: the 100 503s of the held phase, and the backends' answers
/// to their backlog when they wake (up to ~80 at once). The marks hold for the proxy's
/// connection too, and a frontend over its mark gets nothing more (by design): at 16 KiB those
/// bursts alone crossed it on a busy machine and answers were dropped.
const FLAGS: [&str; 4] = [
    "--output-high-water",
    "131072",
    "--output-low-water",
    "32768",
];

/// A SIP backend that answers INVITE and BYE with 200 and can be told to stop reading (a
/// server whose CPU is saturated), with a small receive buffer so the backlog sits in the
/// balancer's queue.
#[derive(Clone)]
struct StallingBackend {
    addr: SocketAddr,
    stalled: Arc<AtomicBool>,
    /// (method, Call-ID) of every request it read.
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

impl StallingBackend {
    fn start() -> StallingBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let backend = StallingBackend {
            addr: listener.local_addr().unwrap(),
            stalled: Arc::default(),
            seen: Arc::default(),
        };
        let b = backend.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let b = b.clone();
                std::thread::spawn(move || b.serve(stream));
            }
        });
        backend
    }

    fn serve(&self, stream: TcpStream) {
        let _ = socket2::SockRef::from(&stream).set_recv_buffer_size(4096);
        let mut out = stream.try_clone().unwrap();
        let mut reader = SipReader::new(stream);
        loop {
            while self.stalled.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let message = match reader.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => return,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue
                }
                Err(_) => return,
            };
            if status(&message).is_some() {
                continue;
            }
            let call_id = header(&message, "Call-ID").unwrap_or_default().to_owned();
            let m = method(&message).to_owned();
            self.seen.lock().unwrap().push((m.clone(), call_id));
            if m == "ACK" {
                continue;
            }
            let extra = format!("Contact: <sip:callee@{};transport=tcp>\r\n", self.addr);
            if out
                .write_all(response(&message, 200, &extra).as_bytes())
                .is_err()
            {
                return;
            }
        }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }

    fn calls(&self, m: &str) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(x, _)| x == m)
            .map(|(_, c)| c.clone())
            .collect()
    }
}

/// A proxy whose reading never stops: a thread hands every message to the test.
struct Proxy {
    out: TcpStream,
    me: SocketAddr,
    lb: SocketAddr,
    inbox: mpsc::Receiver<String>,
}

impl Proxy {
    fn connect(lb: SocketAddr) -> Proxy {
        // The test's high-water mark (16 KiB) holds for frontends too: a frontend whose queue
        // passes it gets nothing more (dropped and counted, by design). When the backends wake
        // they answer a few hundred INVITEs at once; a receive buffer that holds them all keeps
        // this reader's pace (slow on a busy machine) out of the balancer's queue.
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4 << 20).unwrap();
        socket.connect(&lb.into()).unwrap();
        let out = TcpStream::from(socket);
        out.set_nodelay(true).unwrap();
        let me = out.local_addr().unwrap();
        let mut reader = SipReader::new(out.try_clone().unwrap());
        let (tx, inbox) = mpsc::channel();
        std::thread::spawn(move || loop {
            match reader.next_message() {
                Ok(Some(m)) => {
                    if tx.send(m).is_err() {
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Ok(None) | Err(_) => return,
            }
        });
        Proxy { out, me, lb, inbox }
    }

    fn send(&mut self, text: &str) {
        self.out.write_all(text.as_bytes()).unwrap();
    }

    /// An INVITE padded to about 2 kB, as one with a large SDP body would be.
    fn invite(&self, call_id: &str) -> String {
        format!(
            "INVITE sip:service@{lb} SIP/2.0\r\n\
             Via: SIP/2.0/TCP {me};branch=z9hG4bK-{call_id}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:caller@{me}>;tag=c-{call_id}\r\n\
             To: <sip:service@{lb}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:caller@{me};transport=tcp>\r\n\
             X-Padding: {pad}\r\n\
             Content-Length: 0\r\n\r\n",
            lb = self.lb,
            me = self.me,
            pad = "p".repeat(1800),
        )
    }

    /// A BYE in the dialog its 200 set up (routed by the balancer's Record-Route).
    fn bye(&self, ok: &str) -> String {
        let route = header(ok, "Record-Route").expect("a Record-Route in the 200");
        let contact = header(ok, "Contact").unwrap();
        let target = contact.trim_start_matches('<').trim_end_matches('>');
        let call_id = header(ok, "Call-ID").unwrap();
        format!(
            "BYE {target} SIP/2.0\r\n\
             Route: {route}\r\n\
             Via: SIP/2.0/TCP {me};branch=z9hG4bK-{call_id}-bye\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:caller@{me}>;tag=c-{call_id}\r\n\
             To: {to}\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 2 BYE\r\n\
             Content-Length: 0\r\n\r\n",
            me = self.me,
            to = header(ok, "To").unwrap(),
        )
    }

    /// Final responses until `until` holds for what was collected, or `PATIENCE` passes.
    fn collect_until(&self, got: &mut Vec<String>, until: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !until(got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.inbox.recv_timeout(left) {
                Ok(m) if status(&m).is_some_and(|s| s >= 200) => got.push(m),
                Ok(_) => {}
                Err(_) => panic!("gave up waiting; {} final responses so far", got.len()),
            }
        }
    }
}

fn finals_for<'a>(got: &'a [String], call_id: &str) -> Vec<&'a String> {
    got.iter()
        .filter(|m| header(m, "Call-ID") == Some(call_id))
        .collect()
}

fn gauge(lb: &OpsLb, series: &str) -> f64 {
    lb.metrics().value(series)
}

fn wait_gauge(lb: &mut OpsLb, series: &str, want: f64) {
    let deadline = Instant::now() + PATIENCE;
    while gauge(lb, series) != want {
        assert!(Instant::now() < deadline, "{series} never became {want}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn held_backends_refuse_new_calls_and_keep_their_calls(rt: Runtime) {
    let dir = RunDir::new(&format!("overload-{}", rt.name()));
    let (a, b) = (StallingBackend::start(), StallingBackend::start());
    let tables = format!(
        "[[backend]]\naddr = \"{}\"\n[[backend]]\naddr = \"{}\"\n",
        a.addr, b.addr
    );
    let mut lb = OpsLb::start(&dir, rt, &tables, &FLAGS);
    wait_gauge(&mut lb, "siplb_backends_up", 2.0);
    let mut proxy = Proxy::connect(lb.addr());

    // Two established calls, one on each backend (round robin).
    let mut got = Vec::new();
    for call in ["est-1", "est-2"] {
        proxy.send(&proxy.invite(call));
        proxy.collect_until(&mut got, |g| !finals_for(g, call).is_empty());
    }
    let oks = std::mem::take(&mut got);
    assert!(oks.iter().all(|m| status(m) == Some(200)), "{oks:?}");
    assert_eq!(
        (a.calls("INVITE"), b.calls("INVITE")),
        (vec!["est-1".to_owned()], vec!["est-2".to_owned()])
    );

    // The backends stop reading; the proxy offers far more than they take.
    a.stall(true);
    b.stall(true);
    // Until both queues are over the mark with the kernel's buffers full behind them, a queue
    // may still drain into the kernel and release its backend for a moment.
    let mut sent = 0;
    while gauge(&lb, "siplb_backends_queue_held") < 2.0 {
        assert!(sent < FLOOD_MAX, "never both held after {sent} INVITEs");
        for _ in 0..20 {
            proxy.send(&proxy.invite(&format!("flood-{sent}")));
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Held with nothing moving: these are all refused.
    let held_from = sent;
    for _ in 0..WHILE_HELD {
        proxy.send(&proxy.invite(&format!("flood-{sent}")));
        sent += 1;
    }
    // Held, not down: the established calls' BYEs still go to their own backends.
    for ok in &oks {
        proxy.send(&proxy.bye(ok));
    }
    // The excess is refused (the figures lag the balancer by up to 100 ms).
    let deadline = Instant::now() + PATIENCE;
    while gauge(&lb, "siplb_overload_refused_total") < WHILE_HELD as f64 {
        assert!(Instant::now() < deadline, "the excess is not refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        gauge(&lb, "siplb_backends_up"),
        2.0,
        "held backends stay up"
    );

    // The backends read again: every INVITE gets exactly one final answer, either the
    // backend's 200 or the balancer's 503 with Retry-After; both BYEs are answered.
    a.stall(false);
    b.stall(false);
    proxy.collect_until(&mut got, |g| g.len() >= sent + 2);
    let (mut ok, mut refused) = (0, 0);
    for (i, id) in (0..sent).map(|i| (i, format!("flood-{i}"))) {
        let id = &id;
        let answers = finals_for(&got, id);
        assert_eq!(answers.len(), 1, "{id}: {answers:?}");
        match status(answers[0]) {
            Some(200) => ok += 1,
            Some(503) => {
                let first = answers[0].lines().next().unwrap();
                assert_eq!(first, "SIP/2.0 503 Backends Overloaded", "{id}");
                assert_eq!(header(answers[0], "Retry-After"), Some("5"), "{id}");
                refused += 1;
            }
            other => panic!("{id}: {other:?}\n{}", answers[0]),
        }
        if i >= held_from {
            assert_eq!(
                status(answers[0]),
                Some(503),
                "{id}, sent while both were held"
            );
        }
    }
    for call in ["est-1", "est-2"] {
        let answers = finals_for(&got, call);
        assert_eq!(answers.len(), 1, "{call}: {answers:?}");
        assert_eq!(status(answers[0]), Some(200), "{}", answers[0]);
        assert!(answers[0].contains("CSeq: 2 BYE\r\n"), "{}", answers[0]);
    }
    assert!(
        refused >= WHILE_HELD,
        "{refused} of {sent} refused, {ok} taken"
    );
    assert_eq!(ok + refused, sent);
    // The calls stayed where they were: each BYE reached the backend of its INVITE.
    assert_eq!(a.calls("BYE"), vec!["est-1".to_owned()]);
    assert_eq!(b.calls("BYE"), vec!["est-2".to_owned()]);
    let taken = a.calls("INVITE").len() + b.calls("INVITE").len();
    assert_eq!(
        taken,
        2 + ok,
        "the backends saw exactly the INVITEs answered 200"
    );

    // Drained below the low-water mark: new calls are taken again.
    wait_gauge(&mut lb, "siplb_backends_queue_held", 0.0);
    proxy.send(&proxy.invite("after"));
    proxy.collect_until(&mut got, |g| !finals_for(g, "after").is_empty());
    assert_eq!(status(finals_for(&got, "after")[0]), Some(200));

    let m = lb.metrics();
    for (series, want) in [
        ("siplb_overload_refused_total", refused as f64),
        ("siplb_replies_503_total", refused as f64),
        ("siplb_to_backup_total", 0.0),
        ("siplb_backend_failures_total", 0.0),
        ("siplb_stall_closes_total", 0.0),
        ("siplb_frontends_open", 1.0),
    ] {
        assert_eq!(m.value(series), want, "{series}");
    }
    assert!(m.value("siplb_backend_queue_holds_total") >= 2.0);
    lb.stop();
}

siplb_e2e::for_both_runtimes!(held_backends_refuse_new_calls_and_keep_their_calls);
