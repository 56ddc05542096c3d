//! Helpers for the operations tests (`tests/tests/ops.rs`): the balancer started from a TOML
//! file with `--metrics`, scraped over HTTP and reloaded with SIGHUP; a tiny SIP backend whose
//! answers to OPTIONS and INVITE the test switches at run time; a SIP client on one TCP
//! connection. Plain std sockets: SIPp cannot stop answering OPTIONS half-way through a run.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lb::Runtime;
use crate::net::{self, free_port, wait_until};
use crate::process::Proc;
use crate::RunDir;

/// Upper bound of every wait; only a broken build reaches it.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// The balancer started from a config file, with `--metrics`.
#[derive(Debug)]
pub struct OpsLb {
    proc: Proc,
    /// Its SIP listen port on 127.0.0.1.
    pub port: u16,
    /// Its metrics port on 127.0.0.1.
    pub metrics_port: u16,
    config: PathBuf,
}

impl OpsLb {
    /// Writes `dir/siplb.toml` (listen, advertise and metrics on free ports, then `body`: more
    /// top-level keys and the `[[backend]]` tables) and starts `runtime` with
    /// `--config FILE` and `flags`; waits until it listens and serves `/metrics`.
    pub fn start(dir: &RunDir, runtime: Runtime, body: &str, flags: &[&str]) -> OpsLb {
        let port = free_port();
        let metrics_port = free_port();
        let config = dir.file("siplb.toml");
        write_config(&config, port, metrics_port, body);
        let mut cmd = Command::new(runtime.binary());
        cmd.arg("--config").arg(&config);
        // A flag would win over the file, so a file that sets the level keeps it reloadable.
        if !body.contains("log-level") {
            cmd.args(["--log-level", "info"]);
        }
        // One worker unless the test says otherwise: counts and limits are one balancer's.
        if !flags.contains(&"--workers") {
            cmd.args(["--workers", "1"]);
        }
        cmd.args(flags).current_dir(dir.path());
        let name = format!("{}-{port}", runtime.name());
        let mut proc = Proc::spawn(&name, cmd, dir.path());
        wait_until(&format!("{name} to listen"), PATIENCE, || {
            assert!(
                proc.is_running(),
                "{name} exited at start\n{}",
                proc.output_tail(30)
            );
            net::is_listening(port) && net::is_listening(metrics_port)
        });
        OpsLb {
            proc,
            port,
            metrics_port,
            config,
        }
    }

    /// Stops the balancer (SIGTERM, a clean exit asserted) and starts `runtime` again on the
    /// same ports with the same config file and `flags`: a restart, as `systemctl restart`
    /// does it. Returns the old process's stdout.
    pub fn restart(&mut self, dir: &RunDir, runtime: Runtime, flags: &[&str]) -> String {
        let out = self.stop();
        let mut cmd = Command::new(runtime.binary());
        cmd.arg("--config").arg(&self.config);
        cmd.args(["--log-level", "info"]);
        if !flags.contains(&"--workers") {
            cmd.args(["--workers", "1"]);
        }
        cmd.args(flags).current_dir(dir.path());
        let name = format!("{}-{}-again", runtime.name(), self.port);
        let mut proc = Proc::spawn(&name, cmd, dir.path());
        let (port, metrics_port) = (self.port, self.metrics_port);
        wait_until(&format!("{name} to listen"), PATIENCE, || {
            assert!(
                proc.is_running(),
                "{name} exited at start\n{}",
                proc.output_tail(30)
            );
            net::is_listening(port) && net::is_listening(metrics_port)
        });
        self.proc = proc;
        out
    }

    /// Replaces the config file (the listen, advertise and metrics keys stay) with `body`.
    pub fn rewrite(&self, body: &str) {
        write_config(&self.config, self.port, self.metrics_port, body);
    }

    /// Its SIP address.
    pub fn addr(&self) -> SocketAddr {
        net::local(self.port)
    }

    /// Sends SIGHUP.
    pub fn hup(&mut self) {
        self.proc.signal("HUP");
    }

    /// What it logged so far (stderr).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Panics if the process is gone.
    pub fn assert_running(&mut self) {
        assert!(
            self.proc.is_running(),
            "the balancer exited\n{}",
            self.proc.output_tail(40)
        );
    }

    /// `GET path` on the metrics port: (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(net::local(self.metrics_port), path)
    }

    /// `/metrics`, parsed.
    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        Metrics::parse(&body)
    }

    /// Scrapes until `series` has `value` (figures lag the balancer by up to 100 ms); returns
    /// that scrape.
    pub fn wait_metric(&mut self, series: &str, value: f64) -> Metrics {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let m = self.metrics();
            let last = m.get(series);
            if last == Some(value) {
                return m;
            }
            if std::time::Instant::now() > deadline {
                self.assert_running();
                panic!(
                    "{series} never became {value} (last {last:?})\n{}",
                    self.proc.output_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_log(&mut self, needle: &str) {
        let proc = &mut self.proc;
        wait_until(&format!("log line {needle:?}"), PATIENCE, || {
            proc.stderr().contains(needle)
        });
    }

    /// SIGTERM; asserts a clean exit and returns stdout (with the `siplb-stats` line).
    pub fn stop(&mut self) -> String {
        let (status, in_time) = self.proc.terminate(PATIENCE);
        assert!(
            in_time && status.success(),
            "no clean exit on SIGTERM ({status:?})\n{}",
            self.proc.output_tail(40)
        );
        self.proc.stdout()
    }
}

/// Writes the config file whole (via a rename, so a reload never reads half of it).
fn write_config(path: &std::path::Path, port: u16, metrics_port: u16, body: &str) {
    let addr = net::local(port);
    let text = format!(
        "listen = [\"{addr}\"]\nadvertise = \"{addr}\"\nmetrics = \"{}\"\n{body}",
        net::local(metrics_port)
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("writing the config file");
    std::fs::rename(&tmp, path).expect("replacing the config file");
}

/// One HTTP/1.1 request with `Connection: close` and `headers` (full lines without CRLF):
/// (status, body). The admin API answers with a Content-Length, never chunked.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[&str],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connecting to the HTTP port");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text)
        .expect("reading the HTTP response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// A minimal HTTP/1.1 GET with `Connection: close`: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connecting to the metrics port");
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text)
        .expect("reading the HTTP response");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// One `/metrics` scrape: series (name with labels, as printed) → value.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Every sample.
    pub samples: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parses the text exposition format.
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                Some((series.to_string(), value.parse().ok()?))
            })
            .collect();
        Metrics { samples }
    }

    /// One sample.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }

    /// One sample that must exist.
    pub fn value(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in {:#?}", self.samples))
    }

    /// `NAME{backend="INDEX",addr="ADDR"}`.
    pub fn backend(&self, name: &str, index: usize, addr: SocketAddr) -> f64 {
        self.value(&backend_series(name, index, addr))
    }
}

/// The series name of a per-backend gauge.
pub fn backend_series(name: &str, index: usize, addr: SocketAddr) -> String {
    format!("siplb_{name}{{backend=\"{index}\",addr=\"{addr}\"}}")
}

/// Reads SIP messages off a TCP stream, framed by Content-Length.
#[derive(Debug)]
pub struct SipReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl SipReader {
    /// Reads from `stream`, with `PATIENCE` as read timeout.
    pub fn new(stream: TcpStream) -> SipReader {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        SipReader {
            stream,
            buf: Vec::new(),
        }
    }

    /// The next message; `Ok(None)` at EOF.
    pub fn next_message(&mut self) -> io::Result<Option<String>> {
        loop {
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let body_len: usize = header(&head, "Content-Length")
                    .or_else(|| header(&head, "l"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let total = end + 4 + body_len;
                if self.buf.len() >= total {
                    let message: Vec<u8> = self.buf.drain(..total).collect();
                    return Ok(Some(String::from_utf8_lossy(&message).to_string()));
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of the first header `name` (case-insensitive).
pub fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    headers(message, name).into_iter().next()
}

/// The values of every header line `name`, in order.
pub fn headers<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect()
}

/// The status code of a response.
pub fn status(message: &str) -> Option<u16> {
    let line = message.lines().next()?;
    line.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// The method of a request.
pub fn method(message: &str) -> &str {
    message.split(' ').next().unwrap_or_default()
}

/// What the test backend saw.
#[derive(Debug, Default)]
struct BackendShared {
    answer_options: AtomicBool,
    /// Status for INVITE (200 normally).
    invite_status: AtomicU16,
    /// `Retry-After` seconds on a 503; 0 for none.
    retry_after: AtomicU32,
    /// (method, Call-ID, whole message) of every request, in arrival order.
    requests: Mutex<Vec<(String, String, String)>>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// A SIP backend on 127.0.0.1: answers OPTIONS 200 (until told not to), INVITE with a
/// settable status (200 with Contact and the Record-Route echoed, or 503 with Retry-After),
/// any other request 200; ignores responses.
#[derive(Debug, Clone)]
pub struct SipBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<BackendShared>,
}

impl SipBackend {
    /// Starts listening on a free port.
    pub fn start() -> SipBackend {
        let listener = TcpListener::bind(net::local(free_port())).expect("binding a backend");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(BackendShared {
            answer_options: AtomicBool::new(true),
            invite_status: AtomicU16::new(200),
            ..BackendShared::default()
        });
        let accept_shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let shared = Arc::clone(&accept_shared);
                std::thread::spawn(move || serve_backend(stream, addr, &shared));
            }
        });
        SipBackend { addr, shared }
    }

    /// Answer OPTIONS (probes) or stay silent.
    pub fn answer_options(&self, on: bool) {
        self.shared.answer_options.store(on, Ordering::SeqCst);
    }

    /// Answer INVITE with `status`, adding `Retry-After: SECS` when given.
    pub fn answer_invite(&self, status: u16, retry_after: Option<u32>) {
        self.shared.invite_status.store(status, Ordering::SeqCst);
        self.shared
            .retry_after
            .store(retry_after.unwrap_or(0), Ordering::SeqCst);
    }

    /// Call-IDs of the requests with `method` received so far.
    pub fn received(&self, method: &str) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _, _)| m == method)
            .map(|(_, c, _)| c.clone())
            .collect()
    }

    /// The requests with `method` received so far, whole.
    pub fn received_messages(&self, method: &str) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _, _)| m == method)
            .map(|(_, _, text)| text.clone())
            .collect()
    }

    /// (bytes read, bytes written) on all its connections.
    pub fn bytes(&self) -> (u64, u64) {
        (
            self.shared.bytes_in.load(Ordering::SeqCst),
            self.shared.bytes_out.load(Ordering::SeqCst),
        )
    }
}

fn serve_backend(stream: TcpStream, addr: SocketAddr, shared: &BackendShared) {
    let mut out = stream.try_clone().expect("cloning a backend socket");
    let mut reader = SipReader::new(stream);
    // No read timeout: a balancer connection may stay quiet for the whole test.
    reader.stream.set_read_timeout(None).unwrap();
    while let Ok(Some(message)) = reader.next_message() {
        shared
            .bytes_in
            .fetch_add(message.len() as u64, Ordering::SeqCst);
        if status(&message).is_some() {
            continue;
        }
        let method = method(&message).to_string();
        let call_id = header(&message, "Call-ID").unwrap_or_default().to_string();
        shared
            .requests
            .lock()
            .unwrap()
            .push((method.clone(), call_id, message.clone()));
        let reply = match method.as_str() {
            "ACK" => continue,
            "OPTIONS" if !shared.answer_options.load(Ordering::SeqCst) => continue,
            "INVITE" => {
                let code = shared.invite_status.load(Ordering::SeqCst);
                let retry = shared.retry_after.load(Ordering::SeqCst);
                let extra = match (code, retry) {
                    (200, _) => format!("Contact: <sip:callee@{addr};transport=tcp>\r\n"),
                    (_, 0) => String::new(),
                    (_, secs) => format!("Retry-After: {secs}\r\n"),
                };
                response(&message, code, &extra)
            }
            _ => response(&message, 200, ""),
        };
        // Counted before the write: once the balancer has the reply, the client may get its
        // answer and read the counter before this thread would run again.
        shared
            .bytes_out
            .fetch_add(reply.len() as u64, Ordering::SeqCst);
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// A response to `request`: its Vias, Record-Routes, From, To (tagged), Call-ID and CSeq.
pub fn response(request: &str, code: u16, extra: &str) -> String {
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let mut r = format!("SIP/2.0 {code} {reason}\r\n");
    for via in headers(request, "Via") {
        r.push_str(&format!("Via: {via}\r\n"));
    }
    if code == 200 {
        for rr in headers(request, "Record-Route") {
            r.push_str(&format!("Record-Route: {rr}\r\n"));
        }
    }
    let to = header(request, "To").unwrap_or_default();
    let to = if to.contains(";tag=") {
        to.to_string()
    } else {
        format!("{to};tag=be")
    };
    for (name, value) in [
        ("From", header(request, "From").unwrap_or_default()),
        ("To", to.as_str()),
        ("Call-ID", header(request, "Call-ID").unwrap_or_default()),
        ("CSeq", header(request, "CSeq").unwrap_or_default()),
    ] {
        r.push_str(&format!("{name}: {value}\r\n"));
    }
    r.push_str(extra);
    r.push_str("Content-Length: 0\r\n\r\n");
    r
}

/// A frontend (a proxy) on one TCP connection to the balancer.
#[derive(Debug)]
pub struct SipClient {
    out: TcpStream,
    reader: SipReader,
    /// The address named in its Via, Contact and From: the socket's own unless it
    /// [advertises](SipClient::advertising) a listening one.
    me: SocketAddr,
    lb: SocketAddr,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes of whole messages read.
    pub bytes_in: u64,
}

/// A call as the client saw its INVITE answered.
#[derive(Debug, Clone)]
pub struct Answered {
    /// Its Call-ID.
    pub call_id: String,
    /// The final status.
    pub status: u16,
    /// The whole final response.
    pub response: String,
}

impl SipClient {
    /// Connects to the balancer.
    pub fn connect(lb: SocketAddr) -> SipClient {
        SipClient::over(
            TcpStream::connect(lb).expect("connecting to the balancer"),
            lb,
        )
    }

    /// Connects to the balancer from a socket bound to `ip` first (port chosen by the kernel):
    /// a frontend on an address of the test's choosing, e.g. a backend's.
    pub fn connect_from(lb: SocketAddr, ip: IpAddr) -> SipClient {
        let domain = socket2::Domain::for_address(lb);
        let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
            .expect("creating a client socket");
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .unwrap_or_else(|e| panic!("binding a client socket to {ip}: {e}"));
        socket
            .connect(&lb.into())
            .expect("connecting to the balancer");
        SipClient::over(socket.into(), lb)
    }

    fn over(stream: TcpStream, lb: SocketAddr) -> SipClient {
        stream.set_nodelay(true).unwrap();
        let me = stream.local_addr().unwrap();
        SipClient {
            out: stream.try_clone().unwrap(),
            reader: SipReader::new(stream),
            me,
            lb,
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    /// Names `addr` (where the test listens) in Via sent-by, Contact and From from now on, as
    /// a user agent reachable there does; the connection stays the same.
    pub fn advertising(mut self, addr: SocketAddr) -> SipClient {
        self.me = addr;
        self
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.out.local_addr().unwrap()
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.out.write_all(bytes).expect("writing to the balancer");
        self.bytes_out += bytes.len() as u64;
    }

    /// The next message from the balancer (panics at EOF or after `PATIENCE`).
    pub fn read(&mut self) -> String {
        let m = self
            .reader
            .next_message()
            .expect("reading from the balancer")
            .expect("the balancer closed the connection");
        self.bytes_in += m.len() as u64;
        m
    }

    /// The next message if one arrives within `wait`; `None` after that or at EOF.
    pub fn read_within(&mut self, wait: Duration) -> Option<String> {
        self.reader.stream.set_read_timeout(Some(wait)).unwrap();
        let m = self.reader.next_message();
        self.reader.stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let m = m.ok().flatten()?;
        self.bytes_in += m.len() as u64;
        Some(m)
    }

    /// An initial INVITE for call `call_id`, with `Max-Forwards` when given.
    pub fn invite(&self, call_id: &str, max_forwards: Option<u32>) -> String {
        let max_forwards = max_forwards.map_or(String::new(), |n| format!("Max-Forwards: {n}\r\n"));
        format!(
            "INVITE sip:service@{lb} SIP/2.0\r\n\
             Via: SIP/2.0/TCP {me};branch=z9hG4bK-{call_id}-1\r\n\
             {max_forwards}\
             From: <sip:caller@{me}>;tag=c-{call_id}\r\n\
             To: <sip:service@{lb}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:caller@{me};transport=tcp>\r\n\
             Content-Length: 0\r\n\r\n",
            lb = self.lb,
            me = self.me,
        )
    }

    /// Sends an INVITE for a new call `call_id` and waits for its final response (the ACK of a
    /// non-2xx is sent; a 2xx is left unacknowledged, harmless here).
    pub fn call(&mut self, call_id: &str) -> Answered {
        self.call_with(call_id, Some(70))
    }

    /// [`SipClient::call`] with this `Max-Forwards` (`None`: no such header).
    pub fn call_with(&mut self, call_id: &str, max_forwards: Option<u32>) -> Answered {
        let invite = self.invite(call_id, max_forwards);
        self.send_raw(invite.as_bytes());
        let response = self.final_response(call_id);
        if status(&response).is_some_and(|s| s >= 300) {
            // RFC 3261 §17.1.1.3: the ACK of a non-2xx is part of the INVITE transaction.
            let ack = format!(
                "ACK sip:service@{lb} SIP/2.0\r\n\
                 Via: SIP/2.0/TCP {me};branch=z9hG4bK-{call_id}-1\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:caller@{me}>;tag=c-{call_id}\r\n\
                 To: {to}\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: 1 ACK\r\n\
                 Content-Length: 0\r\n\r\n",
                lb = self.lb,
                me = self.me,
                to = header(&response, "To").unwrap_or_default(),
            );
            self.send_raw(ack.as_bytes());
        }
        Answered {
            call_id: call_id.to_string(),
            status: status(&response).unwrap_or(0),
            response,
        }
    }

    /// A request in the dialog of an answered call, from the caller: its Request-URI is the
    /// callee's Contact and its Route the Record-Route of the 2xx (the balancer's tag).
    pub fn in_dialog(&self, method: &str, call: &Answered, cseq: u32, branch: &str) -> String {
        let route = header(&call.response, "Record-Route").expect("a Record-Route in the 200");
        let to = header(&call.response, "To").unwrap_or_default();
        let contact = header(&call.response, "Contact").unwrap_or_default();
        let target = contact.trim_start_matches('<').trim_end_matches('>');
        let id = &call.call_id;
        format!(
            "{method} {target} SIP/2.0\r\n\
             Route: {route}\r\n\
             Via: SIP/2.0/TCP {me};branch=z9hG4bK-{id}-{branch}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:caller@{me}>;tag=c-{id}\r\n\
             To: {to}\r\n\
             Call-ID: {id}\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            me = self.me,
        )
    }

    /// Sends the ACK of an answered call's 2xx (a transaction of its own: new branch).
    pub fn ack(&mut self, call: &Answered) {
        let ack = self.in_dialog("ACK", call, 1, "ack");
        self.send_raw(ack.as_bytes());
    }

    /// Sends BYE in the dialog of an answered call, routed by its Record-Route (the
    /// balancer's tag); returns the final status.
    pub fn bye(&mut self, call: &Answered) -> u16 {
        let bye = self.in_dialog("BYE", call, 2, "2");
        self.send_raw(bye.as_bytes());
        status(&self.final_response(&call.call_id)).unwrap_or(0)
    }

    /// Reads until the final response of call `call_id` (other messages are skipped).
    pub fn final_response(&mut self, call_id: &str) -> String {
        self.final_response_within(call_id, PATIENCE)
            .unwrap_or_else(|| panic!("no final response for {call_id} within {PATIENCE:?} (or the connection closed)"))
    }

    /// [`SipClient::final_response`], `None` if it has not come within `wait`.
    pub fn final_response_within(&mut self, call_id: &str, wait: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let m = self.read_within(left.max(Duration::from_millis(1)))?;
            let final_for_us =
                header(&m, "Call-ID") == Some(call_id) && status(&m).is_some_and(|s| s >= 200);
            if final_for_us {
                return Some(m);
            }
        }
    }
}

/// `[[backend]]` tables for these backends, in order.
pub fn backend_tables(backends: &[&SipBackend]) -> String {
    backends
        .iter()
        .map(|b| format!("[[backend]]\naddr = \"{}\"\n", b.addr))
        .collect()
}

/// The next connection `listener` accepts within `wait` (set to blocking), `None` if none
/// comes: for a peer the balancer must dial, or must not.
pub fn accept_within(listener: &TcpListener, wait: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).unwrap();
    let mut accepted = None;
    net::poll_until(wait, || match listener.accept() {
        Ok((stream, _)) => {
            accepted = Some(stream);
            true
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accepting on {:?}: {e}", listener.local_addr()),
    });
    listener.set_nonblocking(false).unwrap();
    let stream = accepted?;
    stream.set_nonblocking(false).unwrap();
    Some(stream)
}
