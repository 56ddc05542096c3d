//! TLS peers for the balancer's `--listen-tls` listeners, all on loopback and made at run time
//! in the test's [`RunDir`] (nothing is committed, nothing leaves the machine):
//! - [`Pki`]: a test CA and the certificates it issues (servers with a DNS name and IP SAN
//!   127.0.0.1, clients), made with the `openssl` CLI;
//! - [`TlsLb`]: the balancer with a TLS listener and `--metrics`, its handshake counters;
//! - [`Stunnel`]: `stunnel4` in client mode, so SIPp (which has no TLS) talks plain TCP to
//!   stunnel on 127.0.0.1 and stunnel talks TLS to the balancer, verifying its chain and name;
//! - [`s_client`]: one `openssl s_client` connection with given options, which says whether the
//!   handshake succeeded (the balancer answered a SIP request over it), the version and which
//!   certificate the balancer presented.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::lb::{Balancer, LbSpec};
use crate::net::{self, free_port, wait_until};
use crate::ops::{http_get, Metrics};
use crate::process::{find_program, Proc};
use crate::RunDir;

/// The message a test fails with when `openssl` is not installed.
pub const OPENSSL_MISSING: &str =
    "openssl missing: run `cargo xtask test`, which installs it (Debian package openssl)";

/// The message a test fails with when stunnel is not installed.
pub const STUNNEL_MISSING: &str =
    "stunnel missing: run `cargo xtask test`, which installs it (Debian package stunnel4)";

/// Upper bound of every wait here; only a broken peer or balancer reaches it.
const PATIENCE: Duration = Duration::from_secs(10);

/// The `openssl` executable (or `$OPENSSL`); panics with [`OPENSSL_MISSING`] when absent.
pub fn openssl() -> PathBuf {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_program("openssl", "OPENSSL"))
        .clone()
        .unwrap_or_else(|| panic!("{OPENSSL_MISSING}"))
}

/// The `stunnel4` executable (or `stunnel`, or `$STUNNEL`); panics with [`STUNNEL_MISSING`].
pub fn stunnel() -> PathBuf {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            find_program("stunnel4", "STUNNEL").or_else(|| find_program("stunnel", "STUNNEL"))
        })
        .clone()
        .unwrap_or_else(|| panic!("{STUNNEL_MISSING}"))
}

/// Runs `openssl ARGS` in `dir` and panics with its output unless it exits 0.
fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(openssl())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running openssl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Certificates

/// A PEM certificate and its PEM private key.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The certificate (end-entity only; the test CA is the trust anchor).
    pub cert: PathBuf,
    /// Its private key (PKCS#8).
    pub key: PathBuf,
}

impl CertFiles {
    /// Replaces these two files with copies of `other`'s, each by a rename, so that a reader
    /// never sees half a file.
    pub fn replace_with(&self, other: &CertFiles) {
        for (from, to) in [(&other.cert, &self.cert), (&other.key, &self.key)] {
            let text = std::fs::read(from).expect("reading the new certificate file");
            write_atomically(to, &text);
        }
    }

    /// Overwrites the certificate file with `text` (e.g. a broken one), by a rename.
    pub fn overwrite_cert(&self, text: &str) {
        write_atomically(&self.cert, text.as_bytes());
    }

    /// Overwrites only the key file with a copy of `other`'s key, by a rename.
    pub fn replace_key_with(&self, other: &CertFiles) {
        let text = std::fs::read(&other.key).expect("reading the other key");
        write_atomically(&self.key, &text);
    }

    /// `--tls-cert CERT --tls-key KEY`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

fn write_config(path: &Path, tls: SocketAddr, metrics: SocketAddr, body: &str) {
    let text = format!("listen-tls = [\"{tls}\"]\nmetrics = \"{metrics}\"\n{body}");
    write_atomically(path, text.as_bytes());
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("replacing {}: {e}", path.display()));
}

/// A test CA in a folder of the run directory, and the certificates it issues there.
#[derive(Debug)]
pub struct Pki {
    dir: PathBuf,
    ca: CertFiles,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server (`serverAuth`), valid for its DNS name and for IP 127.0.0.1.
    Server,
    /// A TLS client (`clientAuth`).
    Client,
}

impl Pki {
    /// Makes a CA (ECDSA P-256, valid two days) in `dir/NAME/`, subject `O=siplb e2e, CN=NAME`.
    pub fn new(dir: &RunDir, name: &str) -> Pki {
        let path = dir.file(name);
        std::fs::create_dir_all(&path).expect("creating the PKI folder");
        let ca = CertFiles {
            cert: path.join("ca.pem"),
            key: path.join("ca.key"),
        };
        let subj = format!("/O=siplb e2e/CN={name}");
        run_openssl(
            &path,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Pki { dir: path, ca }
    }

    /// The CA certificate (the trust anchor to give peers).
    pub fn ca(&self) -> &Path {
        &self.ca.cert
    }

    /// Issues a certificate for `cn` (a DNS name, also its SAN) with serial `serial` and
    /// subject `O=ORG, CN=cn`, as `dir/FILE.pem` and `dir/FILE.key` (a new key each time).
    pub fn issue(&self, file: &str, cn: &str, org: &str, serial: u32, usage: Usage) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        let csr = format!("{file}.csr");
        let ext = format!("{file}.ext");
        let (eku, san) = match usage {
            Usage::Server => ("serverAuth", format!("DNS:{cn},IP:127.0.0.1")),
            Usage::Client => ("clientAuth", format!("DNS:{cn}")),
        };
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\n\
                 keyUsage=critical,digitalSignature\n\
                 extendedKeyUsage={eku}\n\
                 subjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid\n\
                 subjectAltName={san}\n"
            ),
        )
        .expect("writing the extensions file");
        let key = files.key.display().to_string();
        let cert = files.cert.display().to_string();
        run_openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/O={org}/CN={cn}"),
            ],
        );
        run_openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                &serial.to_string(),
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &cert,
            ],
        );
        files
    }

    /// A server certificate for `name` (and 127.0.0.1), subject `O=siplb e2e, CN=name`.
    pub fn server(&self, file: &str, name: &str, serial: u32) -> CertFiles {
        self.issue(file, name, "siplb e2e", serial, Usage::Server)
    }

    /// A client certificate for `name`.
    pub fn client(&self, file: &str, name: &str, serial: u32) -> CertFiles {
        self.issue(file, name, "siplb e2e", serial, Usage::Client)
    }
}

/// `openssl x509` on a PEM certificate: (subject in RFC 2253 form, serial in hex).
pub fn cert_identity(pem: &str) -> (String, String) {
    let mut child = Command::new(openssl())
        .args([
            "x509", "-noout", "-subject", "-serial", "-nameopt", "RFC2253",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running openssl x509");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(pem.as_bytes())
        .expect("writing to openssl x509");
    let out = child.wait_with_output().expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "openssl x509 on {pem:?}: {text}");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    (field("subject="), field("serial="))
}

/// The identity of a certificate file.
pub fn file_identity(cert: &CertFiles) -> (String, String) {
    cert_identity(&std::fs::read_to_string(&cert.cert).expect("reading a certificate"))
}

// ---------------------------------------------------------------------------------------------
// The balancer with a TLS listener

/// The balancer with `--listen-tls` on a free port of 127.0.0.1 and `--metrics`.
#[derive(Debug)]
pub struct TlsLb {
    /// The balancer (its TCP listener faces the backends).
    pub lb: Balancer,
    /// The TLS listener (also what it advertises toward TLS frontends).
    pub tls: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// What it advertises toward TLS frontends (`--advertise-tls`, else the TLS listener).
    pub advertised: String,
    /// The TOML file, when started from one.
    config: Option<PathBuf>,
}

/// The handshake counters of `/metrics` (each `siplb_NAME_total`).
pub const TLS_COUNTERS: &[&str] = &[
    "tls_handshakes",
    "tls_handshakes_failed_not_tls",
    "tls_handshakes_failed_version",
    "tls_handshakes_failed_certificate",
    "tls_handshakes_failed_other",
    "tls_handshakes_failed_timeout",
    "tls_refused_busy",
    "tls_version_tls12",
    "tls_version_tls13",
];

impl TlsLb {
    /// Starts the balancer of `spec` with a TLS listener serving `certs` (in order: the first
    /// is the default) and `extra` flags (e.g. `--tls-client-ca`); waits until the TLS and
    /// metrics listeners are up too.
    pub fn start(dir: &RunDir, spec: LbSpec, certs: &[&CertFiles], extra: &[&str]) -> TlsLb {
        TlsLb::start_listener(dir, spec, "", certs, extra)
    }

    /// [`TlsLb::start`] with `--listen-tls ADDR,proxy-protocol`: each connection opens with a
    /// PROXY header before its ClientHello.
    pub fn start_proxied(
        dir: &RunDir,
        spec: LbSpec,
        certs: &[&CertFiles],
        extra: &[&str],
    ) -> TlsLb {
        TlsLb::start_listener(dir, spec, ",proxy-protocol", certs, extra)
    }

    fn start_listener(
        dir: &RunDir,
        spec: LbSpec,
        options: &str,
        certs: &[&CertFiles],
        extra: &[&str],
    ) -> TlsLb {
        let tls = net::local(free_port());
        let metrics = net::local(free_port());
        let mut args = vec![
            "--listen-tls".to_string(),
            format!("{tls}{options}"),
            "--metrics".to_string(),
            metrics.to_string(),
        ];
        for c in certs {
            args.extend(c.flags());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        TlsLb::launch(dir, spec, &args, tls, metrics, None)
    }

    /// Starts the balancer of `spec` with `--config dir/siplb-tls.toml`: `listen-tls` (a free
    /// port) and `metrics`, then `body` (the `[tls]` and `[[tls.cert]]` tables; relative paths
    /// are relative to the run directory).
    pub fn start_with_config(dir: &RunDir, spec: LbSpec, body: &str) -> TlsLb {
        let tls = net::local(free_port());
        let metrics = net::local(free_port());
        let config = dir.file("siplb-tls.toml");
        write_config(&config, tls, metrics, body);
        let args = vec!["--config".to_string(), config.display().to_string()];
        TlsLb::launch(dir, spec, &args, tls, metrics, Some(config))
    }

    /// Replaces the TOML file's body (the listen-tls and metrics keys stay), by a rename.
    pub fn rewrite_config(&self, body: &str) {
        let config = self.config.as_ref().expect("started without a config file");
        write_config(config, self.tls, self.metrics, body);
    }

    fn launch(
        dir: &RunDir,
        spec: LbSpec,
        args: &[String],
        tls: SocketAddr,
        metrics: SocketAddr,
        config: Option<PathBuf>,
    ) -> TlsLb {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut lb = Balancer::start(dir, spec.with_args(&args));
        wait_until(
            &format!("the balancer's TLS listener {tls} and metrics {metrics}"),
            PATIENCE,
            || {
                lb.assert_running();
                net::is_listening(tls.port()) && net::is_listening(metrics.port())
            },
        );
        let advertised = args
            .iter()
            .position(|a| *a == "--advertise-tls")
            .and_then(|i| args.get(i + 1))
            .map_or_else(|| tls.to_string(), |a| a.to_string());
        TlsLb {
            lb,
            tls,
            metrics,
            advertised,
            config,
        }
    }

    /// `/metrics`, parsed.
    pub fn scrape(&self) -> Metrics {
        let (status, body) = http_get(self.metrics, "/metrics");
        assert_eq!(status, 200, "/metrics answered {status}: {body}");
        Metrics::parse(&body)
    }

    /// The TLS counters, `name` → value, from one scrape (a missing one fails).
    pub fn tls_counters(&self) -> Vec<(&'static str, u64)> {
        let m = self.scrape();
        TLS_COUNTERS
            .iter()
            .map(|name| {
                let v = m.value(&format!("siplb_{name}_total"));
                // Counters are whole numbers printed as such.
                (*name, v as u64)
            })
            .collect()
    }

    /// Waits (figures lag the balancer by up to 100 ms) until the TLS counters are exactly
    /// `want` (each counter not named: 0), and panics with the last scrape otherwise.
    pub fn expect_tls_counters(&mut self, want: &[(&str, u64)]) {
        let expected: Vec<(&'static str, u64)> = TLS_COUNTERS
            .iter()
            .map(|n| {
                let v = want.iter().find(|(w, _)| w == n).map_or(0, |(_, v)| *v);
                (*n, v)
            })
            .collect();
        for (name, _) in want {
            assert!(TLS_COUNTERS.contains(name), "no TLS counter {name}");
        }
        let mut last = Vec::new();
        let ok = net::poll_until(Duration::from_secs(3), || {
            last = self.tls_counters();
            last == expected
        });
        if !ok {
            let diff: Vec<String> = expected
                .iter()
                .zip(&last)
                .filter(|(w, g)| w != g)
                .map(|((n, w), (_, g))| format!("{n}: want {w}, got {g}"))
                .collect();
            panic!(
                "TLS counters in /metrics differ:\n{}\n{}",
                diff.join("\n"),
                self.lb.log_tail(30)
            );
        }
    }

    /// How many times the log says the certificates were reread / refused on SIGHUP.
    pub fn reloads(&self) -> (usize, usize) {
        let log = self.lb.log();
        (
            log.matches("TLS certificates reread").count(),
            log.matches("TLS certificates refused").count(),
        )
    }

    /// SIGHUP, then waits until the log shows its outcome for the certificates; returns
    /// whether they were reread (true) or refused (false).
    pub fn hup(&mut self) -> bool {
        let before = self.reloads();
        self.lb.hup();
        let mut now = before;
        wait_until(
            "the balancer to log the outcome of SIGHUP",
            PATIENCE,
            || {
                now = self.reloads();
                now != before
            },
        );
        now.0 > before.0
    }

    /// Waits until the balancer has closed every connection its TLS listener accepted
    /// (none left established or half-closed by the peer), so that `frontends_open` is 0 when
    /// it stops; panics if one stays.
    pub fn wait_no_tls_connections(&self) {
        /// `/proc/net/tcp` states: the balancer's end of a connection it has not closed.
        const ESTABLISHED: u8 = 0x01;
        const CLOSE_WAIT: u8 = 0x08;
        let port = self.tls.port();
        let open = || {
            net::tcp_sockets()
                .iter()
                .filter(|s| s.local_port == port && matches!(s.state, ESTABLISHED | CLOSE_WAIT))
                .count()
        };
        let closed = net::poll_until(PATIENCE, || open() == 0);
        assert!(
            closed,
            "{} connections to the TLS listener {} still open on the balancer's side after \
             {PATIENCE:?}\n{}",
            open(),
            self.tls,
            self.lb.log_tail(10)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// stunnel

/// What a stunnel client should do.
#[derive(Debug, Clone)]
pub struct StunnelSpec {
    /// Where to connect over TLS (the balancer's TLS listener).
    pub connect: SocketAddr,
    /// The SNI name sent, which is also the name the certificate must be valid for.
    pub name: String,
    /// Trust anchor for the balancer's chain.
    pub ca: PathBuf,
    /// Client certificate to present, if any.
    pub client_cert: Option<CertFiles>,
    /// `sslVersionMax`, e.g. `TLSv1.2`.
    pub max_version: Option<String>,
    /// The address its TLS connections leave from (`local`), e.g. another loopback address.
    pub source: Option<std::net::IpAddr>,
}

/// A stunnel client: plain TCP in on 127.0.0.1, TLS out to the balancer.
#[derive(Debug)]
pub struct Stunnel {
    proc: Proc,
    accept: SocketAddr,
}

impl Stunnel {
    /// Writes `dir/stunnel-NAME.conf` and starts stunnel in the foreground with it; waits until
    /// it listens.
    pub fn start(dir: &RunDir, name: &str, spec: &StunnelSpec) -> Stunnel {
        let accept = net::local(free_port());
        let mut conf = format!(
            "foreground = yes\n\
             pid =\n\
             debug = notice\n\
             [sip]\n\
             client = yes\n\
             accept = {accept}\n\
             connect = {}\n\
             verifyChain = yes\n\
             CAfile = {}\n\
             checkHost = {}\n\
             sni = {}\n",
            spec.connect,
            spec.ca.display(),
            spec.name,
            spec.name
        );
        if let Some(c) = &spec.client_cert {
            conf.push_str(&format!(
                "cert = {}\nkey = {}\n",
                c.cert.display(),
                c.key.display()
            ));
        }
        if let Some(v) = &spec.max_version {
            conf.push_str(&format!("sslVersionMax = {v}\n"));
        }
        if let Some(ip) = spec.source {
            conf.push_str(&format!("local = {ip}\n"));
        }
        let path = dir.file(&format!("stunnel-{name}.conf"));
        std::fs::write(&path, conf).expect("writing the stunnel config");
        let mut cmd = Command::new(stunnel());
        cmd.arg(&path).current_dir(dir.path());
        let proc_name = format!("stunnel-{name}");
        let mut proc = Proc::spawn(&proc_name, cmd, dir.path());
        wait_until(
            &format!("{proc_name} to listen on {accept}"),
            PATIENCE,
            || {
                assert!(
                    proc.is_running(),
                    "{proc_name} exited at start\n{}",
                    proc.output_tail(20)
                );
                net::is_listening(accept.port())
            },
        );
        Stunnel { proc, accept }
    }

    /// Where SIPp connects (plain TCP).
    pub fn addr(&self) -> SocketAddr {
        self.accept
    }

    /// What stunnel logged so far.
    pub fn log(&self) -> String {
        format!("{}{}", self.proc.stdout(), self.proc.stderr())
    }

    /// How many TLS connections it made to the balancer.
    pub fn connections(&self) -> usize {
        self.log().matches("s_connect: connected").count()
    }

    /// Stops stunnel; returns its log.
    pub fn stop(mut self) -> String {
        self.proc.terminate(Duration::from_secs(5));
        self.log()
    }
}

// ---------------------------------------------------------------------------------------------
// openssl s_client

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
