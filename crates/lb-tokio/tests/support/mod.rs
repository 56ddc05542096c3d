//! A harness shared by the driver crates' integration tests (lb-tokio, lb-mio, the std-loop
//! example include it with `#[path]`): it runs a driver binary on 127.0.0.1 between a tiny TCP
//! backend and a TCP client and checks what each side sees.
//!
//! Timeouts here only keep a broken build from hanging the test run; no assertion depends on
//! timing.

#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound for each wait; generous because the machine is shared with other builds.
const PATIENCE: Duration = Duration::from_secs(20);

/// A driver process with its stderr lines collected by a thread.
pub struct Balancer {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
    pub port: u16,
}

impl Balancer {
    /// Waits for a stderr line containing `needle`; false if the process ended first.
    fn wait_for_log(&mut self, needle: &str) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return true;
                    }
                }
                Err(_) => return false,
            }
        }
        false
    }

    /// Sends SIGTERM and returns (exit code, stdout).
    pub fn terminate(mut self) -> (Option<i32>, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the balancer did not exit after SIGTERM; stderr: {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        (status.code(), stdout)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts `exe` in front of `backend` and waits until it reports the backend up. Retries with a
/// new port if another process took the listen port between our probe and its bind.
pub fn start(exe: &str, backend: &TcpListener, extra: &[&str]) -> Balancer {
    let backend_addr = backend.local_addr().unwrap().to_string();
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new(exe)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--backend",
                &backend_addr,
            ])
            .args(["--log-level", "info"])
            // One worker: these tests count one balancer's connections and limits.
            .args(["--workers", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut lb = Balancer {
            child,
            stderr: rx,
            seen: Vec::new(),
            port,
        };
        if lb.wait_for_log("backend up") {
            return lb;
        }
        assert!(
            lb.seen.iter().any(|l| l.contains("listen:")),
            "the balancer did not start: {:?}",
            lb.seen
        );
    }
    panic!("no free port after 5 tries");
}

/// A port nobody listens on right now.
/// The body of an HTTP/1.1 GET of `path` at `addr` (empty when it cannot be had).
fn http_get_body(addr: &str, path: &str) -> String {
    let Ok(mut conn) = TcpStream::connect(addr) else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut reply = String::new();
    if conn.write_all(request.as_bytes()).is_err() || conn.read_to_string(&mut reply).is_err() {
        return String::new();
    }
    reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Accepts one connection, giving up after [`PATIENCE`].
pub fn accept(listener: &TcpListener) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(PATIENCE)).unwrap();
                return stream;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "nothing connected");
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Reads one SIP message (headers, then Content-Length bytes of body) from `stream`.
pub fn read_message(stream: &mut TcpStream, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            let body_len = header(&head, "Content-Length")
                .first()
                .map_or(0, |v| v.trim().parse::<usize>().unwrap());
            let total = end + 4 + body_len;
            if pending.len() >= total {
                let message = String::from_utf8_lossy(&pending[..total]).into_owned();
                pending.drain(..total);
                return message;
            }
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(
            n > 0,
            "connection closed; had {:?}",
            String::from_utf8_lossy(pending)
        );
        pending.extend_from_slice(&chunk[..n]);
    }
}

/// The values of every `name` header line, in order (full names only).
pub fn header<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
}

/// A 200 OK for `request` as a UAS writes it: Via, Record-Route, From, Call-ID, CSeq copied,
/// a To tag added.
pub fn ok_for(request: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for via in header(request, "Via") {
        out += &format!("Via: {via}\r\n");
    }
    for rr in header(request, "Record-Route") {
        out += &format!("Record-Route: {rr}\r\n");
    }
    out += &format!("From: {}\r\n", header(request, "From")[0]);
    out += &format!("To: {};tag=backend-1\r\n", header(request, "To")[0]);
    out += &format!("Call-ID: {}\r\n", header(request, "Call-ID")[0]);
    out += &format!("CSeq: {}\r\n", header(request, "CSeq")[0]);
    out += "Contact: <sip:backend@127.0.0.1;transport=tcp>\r\nContent-Length: 0\r\n\r\n";
    out
}

/// An INVITE from a client whose Via names a port it does not use, so the balancer must route
/// the answer by connection (received/rport), not by the Via.
pub fn invite(lb_port: u16, call_id: &str) -> String {
    format!(
        "INVITE sip:service@127.0.0.1:{lb_port} SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-{call_id};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@127.0.0.1>;tag=alice-1\r\n\
         To: <sip:service@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@127.0.0.1:5999;transport=tcp>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: 4\r\n\
         \r\n\
         v=0\n"
    )
}

/// The whole scenario: INVITE through the balancer to the backend, 200 OK back, then SIGTERM.
pub fn invite_ok_and_sigterm(exe: &str) {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = start(exe, &backend, &[]);
    let mut backend_conn = accept(&backend);

    let mut client = TcpStream::connect(("127.0.0.1", lb.port)).unwrap();
    client.set_read_timeout(Some(PATIENCE)).unwrap();
    client
        .write_all(invite(lb.port, "call-1@test").as_bytes())
        .unwrap();

    let mut at_backend = Vec::new();
    let request = read_message(&mut backend_conn, &mut at_backend);
    assert!(request.starts_with("INVITE sip:service@"), "{request}");
    let rr = header(&request, "Record-Route");
    assert!(!rr.is_empty(), "no Record-Route inserted: {request}");
    assert!(
        rr[0].contains(";lb=") && rr[0].contains(&format!(":{}", lb.port)),
        "{}",
        rr[0]
    );
    assert!(request.ends_with("\r\n\r\nv=0\n"), "body lost: {request:?}");
    backend_conn.write_all(ok_for(&request).as_bytes()).unwrap();

    let mut at_client = Vec::new();
    let response = read_message(&mut client, &mut at_client);
    assert!(response.starts_with("SIP/2.0 200 OK\r\n"), "{response}");
    assert_eq!(header(&response, "Call-ID"), ["call-1@test"]);
    // The caller sees the same entry, its tag turned to face frontends (`lb=b…` → `lb=…`).
    let upstream = header(&response, "Record-Route");
    let (seen_by_backend, seen_by_caller) = (rr[0].to_string(), upstream[0].to_string());
    let prefix = |e: &str| e.split(";lb=").next().unwrap_or_default().to_owned();
    assert_eq!(prefix(&seen_by_caller), prefix(&seen_by_backend));
    assert!(seen_by_backend.contains(";lb=b"), "{seen_by_backend}");
    assert!(
        seen_by_caller.contains(";lb=") && !seen_by_caller.contains(";lb=b"),
        "{seen_by_caller}"
    );

    let (code, stdout) = lb.terminate();
    assert_eq!(code, Some(0), "stdout: {stdout}");
    let stats = stdout
        .lines()
        .find(|l| l.starts_with("siplb-stats "))
        .unwrap_or_else(|| panic!("no stats line in {stdout:?}"));
    for pair in [
        "new_calls=1",
        "frontends_accepted=1",
        "to_backend=1",
        "to_frontend=1",
    ] {
        assert!(
            stats.split(' ').any(|p| p == pair),
            "{pair} missing: {stats}"
        );
    }
}

/// `--check-config` and refused configurations, as an operator sees them.
pub fn command_line(exe: &str) {
    let ok = Command::new(exe)
        .args([
            "--listen",
            "127.0.0.1:5060",
            "--backend",
            "127.0.0.1:5070",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "config ok\n");

    for (args, expected) in [
        (
            &["--listen", "127.0.0.1:5060"][..],
            "siplb: backend: at least one backend is needed\n",
        ),
        (
            &["--backend", "127.0.0.1:5070"][..],
            "siplb: listen: at least one address is needed\n",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:5060",
                "--backend",
                "127.0.0.1:5070,weight=heavy",
            ][..],
            "siplb: backend: \"127.0.0.1:5070,weight=heavy\": weight \"heavy\" is not a number\n",
        ),
    ] {
        let out = Command::new(exe).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), expected);
    }
    let usage = Command::new(exe).arg("--bogus").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

/// A client that sent one INVITE and reads nothing, and the large answer its backend will flood
/// it with: far more than loopback socket buffers plus the cap can hold.
struct Flood {
    lb: Balancer,
    backend_conn: TcpStream,
    client: TcpStream,
    response: String,
}

impl Flood {
    fn start(exe: &str, backend: &TcpListener, flags: &[&str]) -> Flood {
        let lb = start(exe, backend, flags);
        let mut backend_conn = accept(backend);
        let mut client = TcpStream::connect(("127.0.0.1", lb.port)).unwrap();
        client
            .write_all(invite(lb.port, "flood@test").as_bytes())
            .unwrap();
        let mut at_backend = Vec::new();
        let request = read_message(&mut backend_conn, &mut at_backend);
        let ok = ok_for(&request).replace("Content-Length: 0\r\n\r\n", "");
        let body = "x".repeat(60_000);
        let response = format!(
            "{ok}Content-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Flood {
            lb,
            backend_conn,
            client,
            response,
        }
    }
}

/// A client that sends but never reads, while its backend answers with a flood: past the
/// high-water mark the balancer sends that client nothing more (what the backend has for it is
/// dropped and counted; the backend connection, read all along, is never closed), and once the
/// client has read nothing for the stall timeout it is closed. The output cap is never reached.
pub fn slow_reader_is_paused_then_closed(exe: &str) {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let flags = [
        "--output-cap",
        "1000000",
        "--stall-timeout",
        "1",
        "--metrics",
        &metrics,
    ];
    let Flood {
        mut lb,
        mut backend_conn,
        client,
        response,
    } = Flood::start(exe, &backend, &flags);
    // What is dropped while the client's queue is high never reaches the kernel, so how much
    // must be offered before the socket buffers fill depends on how fast the writer drains:
    // keep the flood going until the balancer gives up on the client (bounded in time).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut closed = false;
    while !closed && std::time::Instant::now() < deadline {
        // The balancer keeps reading the backend: these writes never block for long.
        backend_conn.write_all(response.as_bytes()).unwrap();
        while let Ok(line) = lb.stderr.try_recv() {
            closed |= line.contains("frontend connection closed");
            lb.seen.push(line);
        }
    }
    assert!(
        closed || lb.wait_for_log("frontend connection closed"),
        "{:?}",
        lb.seen
    );
    assert!(
        lb.seen.iter().any(|l| l.contains("peer not reading")),
        "{:?}",
        lb.seen
    );
    assert!(
        !lb.seen.iter().any(|l| l.contains("output cap")),
        "{:?}",
        lb.seen
    );
    drop(client);
    // The balancer decided the close, but its socket lingers (its FIN waits behind the bytes the
    // client never read) until the client goes away: the core hears of the close a moment after
    // `drop`, later still on a busy machine. Wait for that before reading the final figures.
    let gauge = |body: &str, name: &str| {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let heard = (0..200).any(|_| {
        let body = http_get_body(&metrics, "/metrics");
        let settled = gauge(&body, "siplb_frontends_open") <= gauge(&body, "siplb_dial_outs_open");
        if !settled {
            std::thread::sleep(Duration::from_millis(50));
        }
        settled
    });
    assert!(heard, "the stalled client's close never reached the core");

    let (code, stdout) = lb.terminate();
    assert_eq!(code, Some(0));
    // Responses that were in flight when the client was closed go by dial-out to its Via
    // (RFC 3261 §18.2.2): the only frontends left open are those dial-outs.
    let figure = |name: &str| {
        stdout.split_whitespace().find_map(|kv| {
            kv.strip_prefix(name)?
                .strip_prefix('=')?
                .parse::<u64>()
                .ok()
        })
    };
    // (A dial-out still connecting is counted in `dial_outs_open` and not yet as a frontend.)
    assert!(
        figure("frontends_open") <= figure("dial_outs_open"),
        "{stdout}"
    );
    assert!(stdout.contains(" stall_closes=1 "), "{stdout}");
    assert!(stdout.contains(" backend_failures=0 "), "{stdout}");
    assert!(!stdout.contains(" frontend_stall_drops=0 "), "{stdout}");
}

/// A client that sends but never reads, while its backend answers with a flood: the driver must
/// close that client once `--output-cap` bytes are queued, and report it closed to the core.
/// For the std-loop example, which has no overload hold (the binaries pause such a client
/// instead: [`slow_reader_is_paused_then_closed`]).
pub fn slow_reader_hits_the_output_cap(exe: &str) {
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let Flood {
        mut lb,
        mut backend_conn,
        client,
        response,
    } = Flood::start(exe, &backend, &["--output-cap", "1000000"]);
    for _ in 0..600 {
        if backend_conn.write_all(response.as_bytes()).is_err() {
            break;
        }
        if lb.seen.iter().any(|l| l.contains("output cap exceeded")) {
            break;
        }
        while let Ok(line) = lb.stderr.try_recv() {
            lb.seen.push(line);
        }
    }
    let closed = lb
        .seen
        .iter()
        .any(|l| l.contains("frontend connection closed"));
    assert!(
        closed || lb.wait_for_log("frontend connection closed"),
        "{:?}",
        lb.seen
    );
    assert!(
        lb.seen.iter().any(|l| l.contains("output cap exceeded")),
        "{:?}",
        lb.seen
    );
    assert!(
        lb.seen.iter().any(|l| l.contains("OutputOverflow")),
        "{:?}",
        lb.seen
    );
    drop(client);

    let (code, stdout) = lb.terminate();
    assert_eq!(code, Some(0));
    assert!(stdout.contains(" frontends_open=0 "), "{stdout}");
}

/// `[limits] frontends-max = 1` from a config file: a second client is accepted, then closed
/// by the driver carrying out the core's `Close` (it sees end of stream).
pub fn refused_frontend_is_closed(exe: &str) {
    let dir = std::env::temp_dir().join(format!("lb-driver-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join(format!("{}.toml", exe.rsplit('/').next().unwrap()));
    std::fs::write(&config, "[limits]\nfrontends-max = 1\n").unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut lb = start(exe, &backend, &["--config", config.to_str().unwrap()]);
    let mut backend_conn = accept(&backend);

    let mut first = TcpStream::connect(("127.0.0.1", lb.port)).unwrap();
    assert!(lb.wait_for_log("frontend connection open"));
    // A silent connection would be evicted to make room (issue 15): the first one is in use.
    first
        .write_all(
            b"OPTIONS sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:1;branch=z9hG4bKr1\r\n\
              From: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: refused-1\r\n\
              CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        )
        .unwrap();
    // Forwarded: the core has seen its message before the second connection comes.
    let mut forwarded = [0u8; 64];
    assert!(backend_conn.read(&mut forwarded).unwrap() > 0);
    let mut second = TcpStream::connect(("127.0.0.1", lb.port)).unwrap();
    second.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        second.read(&mut buf).unwrap(),
        0,
        "the refused client is closed"
    );
    assert!(lb.wait_for_log("reason=Requested"), "{:?}", lb.seen);
    drop(first);

    let (code, stdout) = lb.terminate();
    assert_eq!(code, Some(0));
    assert!(stdout.contains(" frontends_refused=1 "), "{stdout}");
}
