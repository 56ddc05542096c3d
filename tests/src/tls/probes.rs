//! Single connections to a TLS listener: `openssl s_client` with given options, and clients
//! that do not speak TLS (a plain SIP request, a stalled connection).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{cert_identity, openssl};

static PROBES: AtomicU32 = AtomicU32::new(0);

/// A SIP request the balancer answers itself (483: Max-Forwards 0), so that an answer proves
/// the TLS connection carries SIP both ways.
pub fn probe_request(to: SocketAddr) -> (String, String) {
    let n = PROBES.fetch_add(1, Ordering::Relaxed);
    let call_id = format!("tls-probe-{}-{n}@siplb.test", std::process::id());
    let text = format!(
        "OPTIONS sip:lb@{to} SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK-tls-probe-{n}\r\n\
         Max-Forwards: 0\r\n\
         From: <sip:probe@siplb.test>;tag=probe-{n}\r\n\
         To: <sip:lb@{to}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    );
    (call_id, text)
}

/// What one `openssl s_client` connection found.
#[derive(Debug, Clone)]
pub struct Handshake {
    /// The options it ran with.
    pub args: Vec<String>,
    /// The version s_client negotiated (`New, TLSv1.3, Cipher is …`), `None` when it had none.
    pub version: Option<String>,
    /// Subject (RFC 2253) of the certificate the server presented.
    pub subject: Option<String>,
    /// Serial (hex) of that certificate.
    pub serial: Option<String>,
    /// s_client's verification result (`Verify return code: 0 (ok)`).
    pub verify: Option<String>,
    /// The status line of the SIP answer to the probe request, if one came back.
    pub answer: Option<String>,
    /// s_client's exit code.
    pub exit_code: Option<i32>,
    /// Its whole output (stdout, then stderr), for failure messages.
    pub output: String,
}

impl Handshake {
    /// The handshake completed and the connection carried SIP: the balancer answered.
    pub fn ok(&self) -> bool {
        self.version.is_some() && self.answer.is_some()
    }

    /// Panics with the output unless [`Handshake::ok`].
    pub fn assert_ok(&self) -> &Handshake {
        assert!(
            self.ok(),
            "s_client {:?}: expected a TLS connection answering SIP, got version {:?}, answer \
             {:?}\n{}",
            self.args,
            self.version,
            self.answer,
            self.output
        );
        self
    }

    /// Panics unless the connection was refused: no SIP answer came over it.
    pub fn assert_refused(&self) -> &Handshake {
        assert!(
            self.answer.is_none(),
            "s_client {:?}: expected the balancer to refuse the connection, but it answered \
             {:?} (version {:?})\n{}",
            self.args,
            self.answer,
            self.version,
            self.output
        );
        self
    }
}

/// Connects with `openssl s_client -connect ADDR ARGS`, sends [`probe_request`] once connected
/// and waits (bounded) for the balancer's answer or for s_client to give up; then closes.
pub fn s_client(addr: SocketAddr, args: &[&str]) -> Handshake {
    let mut child = Command::new(openssl())
        .args(["s_client", "-connect", &addr.to_string(), "-nocommands"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl s_client");
    let collect = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::<u8>::new()));
        let b = buf.clone();
        let t = std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        (buf, t)
    };
    let (out, out_t) = collect(Box::new(child.stdout.take().expect("stdout")));
    let (err, err_t) = collect(Box::new(child.stderr.take().expect("stderr")));
    let mut stdin = child.stdin.take();
    let (call_id, request) = probe_request(addr);
    if let Some(s) = stdin.as_mut() {
        // s_client may be gone already (a refused handshake): a write error says nothing more.
        let _ = s.write_all(request.as_bytes());
    }
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut status = None;
    while Instant::now() < deadline {
        status = child.try_wait().ok().flatten();
        if status.is_some() || answer_line(&text(&out), &call_id).is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Closing stdin makes s_client close the connection (close_notify) and exit.
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(3);
    while status.is_none() && Instant::now() < deadline {
        status = child.try_wait().ok().flatten();
        std::thread::sleep(Duration::from_millis(20));
    }
    if status.is_none() {
        let _ = child.kill();
    }
    // Reaps it in every case (after `try_wait` found it gone, this returns that status).
    let status = child.wait().ok().or(status);
    let _ = out_t.join();
    let _ = err_t.join();
    let stdout = text(&out);
    let stderr = text(&err);
    let version = stdout
        .lines()
        .find_map(|l| l.strip_prefix("New, "))
        .and_then(|l| l.split(',').next())
        .filter(|v| *v != "(NONE)")
        .map(str::to_string);
    let pem = stdout
        .find("-----BEGIN CERTIFICATE-----")
        .and_then(|start| {
            let end = stdout[start..].find("-----END CERTIFICATE-----")?;
            Some(&stdout[start..start + end + "-----END CERTIFICATE-----".len()])
        });
    let (subject, serial) = match pem {
        Some(p) => {
            let (s, n) = cert_identity(p);
            (Some(s), Some(n))
        }
        None => (None, None),
    };
    Handshake {
        args: args.iter().map(|s| s.to_string()).collect(),
        version,
        subject,
        serial,
        verify: stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix("Verify return code: "))
            .map(str::to_string),
        answer: answer_line(&stdout, &call_id),
        exit_code: status.and_then(|s| s.code()),
        output: format!("--- s_client stdout ---\n{stdout}\n--- s_client stderr ---\n{stderr}"),
    }
}

/// The status line of a SIP response to `call_id` in s_client's output.
fn answer_line(stdout: &str, call_id: &str) -> Option<String> {
    let start = stdout.find("SIP/2.0 ")?;
    let rest = &stdout[start..];
    rest.contains(call_id)
        .then(|| rest.lines().next().unwrap_or_default().trim().to_string())
}

// ---------------------------------------------------------------------------------------------
// A client that does not speak TLS

/// What a plain-TCP client got from a TLS listener.
#[derive(Debug, Clone)]
pub struct PlainAttempt {
    /// Bytes the listener sent back before closing.
    pub reply: Vec<u8>,
    /// Whether the listener closed the connection (EOF or reset) within the wait.
    pub closed: bool,
}

/// Connects to `addr` over plain TCP, sends a SIP request in clear and reads until the other
/// side closes (at most 5 s).
pub fn plain_sip_attempt(addr: SocketAddr) -> PlainAttempt {
    let mut s = TcpStream::connect(addr).expect("connecting to the TLS listener");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (_, request) = probe_request(addr);
    s.write_all(request.as_bytes())
        .expect("writing a plain SIP request");
    let mut reply = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut chunk = [0u8; 4096];
    let mut closed = false;
    while Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    PlainAttempt { reply, closed }
}

/// A TCP connection to `addr` that sends `bytes` (nothing, or the start of a ClientHello) and
/// then stalls.
pub fn stalled_connection(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connecting to the TLS listener");
    s.write_all(bytes).expect("writing to the TLS listener");
    s
}

/// Whether the other side has closed `s`: reads (discarding) until EOF or an error, waiting
/// at most `wait`.
pub fn is_closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return true,
        }
    }
}
