//! The TLS pieces of `bench peer --tls` and `bench memory --idle`: a throw-away PKI, stunnel
//! in client mode in front of SIPp (Debian's SIPp has no TLS), Kamailio's `tls` module, and
//! idle client connections (plain and TLS, the TLS ones made with rustls in this process).
//!
//! Nothing is installed: a missing `openssl`, `stunnel4` or Kamailio `tls.so` is named with
//! its Debian package and the task fails.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::{find_program, listening, wait_until, Tree};
use crate::procs::{free_port, TempDir};

/// The name the server certificate is for (and 127.0.0.1, its IP SAN).
pub(crate) const SERVER_NAME: &str = "lb.siplb.test";

/// A CA and a server certificate it issued, made with the `openssl` CLI in a folder of their
/// own (removed with it).
pub(crate) struct Pki {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    _dir: TempDir,
}

impl Pki {
    pub(crate) fn new() -> Result<Pki> {
        let openssl = find_program("openssl")
            .context("openssl not found; on Debian/Ubuntu: sudo apt-get install openssl")?;
        let dir = TempDir::new("bench-pki")?;
        let run = |args: &[&str]| -> Result<()> {
            let out = Command::new(&openssl)
                .args(args)
                .current_dir(&dir.0)
                .stdin(Stdio::null())
                .output()
                .context("running openssl")?;
            ensure!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        let mut ca = vec![
            "req", "-x509", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        ];
        ca.extend(ec);
        ca.extend(["-days", "2", "-subj", "/O=siplb bench/CN=bench CA"]);
        ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        ca.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        run(&ca)?;
        let mut csr = vec![
            "req", "-new", "-nodes", "-keyout", "lb.key", "-out", "lb.csr",
        ];
        csr.extend(ec);
        let subject = format!("/O=siplb bench/CN={SERVER_NAME}");
        csr.extend(["-subj", &subject]);
        run(&csr)?;
        std::fs::write(
            dir.path("lb.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                 extendedKeyUsage=serverAuth\nsubjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1\n"
            ),
        )?;
        run(&[
            "x509",
            "-req",
            "-in",
            "lb.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "7",
            "-days",
            "2",
            "-extfile",
            "lb.ext",
            "-out",
            "lb.pem",
        ])?;
        Ok(Pki {
            ca: dir.path("ca.pem"),
            cert: dir.path("lb.pem"),
            key: dir.path("lb.key"),
            _dir: dir,
        })
    }

    /// A rustls client configuration that trusts only this CA.
    pub(crate) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&self.ca).context("reading the CA")? {
            roots.add(cert.context("reading the CA")?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

/// stunnel in client mode: plain TCP in on a free port of 127.0.0.1 (where SIPp connects),
/// TLS out to `connect`, verifying the chain and the name. Its CPU is its own tree's, never
/// the balancer's.
pub(crate) fn start_stunnel(
    dir: &TempDir,
    connect: SocketAddr,
    pki: &Pki,
) -> Result<(Tree, SocketAddr)> {
    let stunnel = find_program("stunnel4")
        .or_else(|| find_program("stunnel"))
        .context("stunnel not found; on Debian/Ubuntu: sudo apt-get install stunnel4")?;
    let accept = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let conf = dir.path("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\ndebug = warning\n[sip]\nclient = yes\n\
             accept = {accept}\nconnect = {connect}\nverifyChain = yes\nCAfile = {}\n\
             checkHost = {SERVER_NAME}\nsni = {SERVER_NAME}\n",
            pki.ca.display()
        ),
    )?;
    let mut proc = Tree::spawn("stunnel", Command::new(stunnel).arg(&conf), dir)?;
    wait_until("stunnel", Duration::from_secs(10), &mut proc, || {
        listening(accept.port())
    })?;
    Ok((proc, accept))
}

/// Kamailio's `tls.so`, next to `dispatcher.so`; named with its package when missing.
pub(crate) fn check_kamailio_tls(mpath: &Path) -> Result<()> {
    if !mpath.join("tls.so").is_file() {
        bail!(
            "Kamailio's tls module ({}/tls.so) not found; on Debian/Ubuntu: \
             sudo apt-get install kamailio-tls-modules",
            mpath.display()
        );
    }
    Ok(())
}

/// The dispatcher configuration made a TLS edge: the callers' listener is TLS (the tls
/// module, with OpenSSL, TLS 1.2 and later), and a TCP listener on `tcp_port` is the socket
/// its backend leg leaves from. Everything else, routing included, stays as it is.
pub(crate) fn kamailio_tls_cfg(cfg: &str, port: u16, tcp_port: u16, pki: &Pki) -> Result<String> {
    let listen = format!("listen=tcp:127.0.0.1:{port}\n");
    ensure!(
        cfg.contains(&listen),
        "the Kamailio template has no {listen:?}"
    );
    let cfg = cfg.replacen(
        &listen,
        &format!("enable_tls=yes\nlisten=tls:127.0.0.1:{port}\nlisten=tcp:127.0.0.1:{tcp_port}\n"),
        1,
    );
    let first_module = "loadmodule \"maxfwd.so\"\n";
    ensure!(
        cfg.contains(first_module),
        "the Kamailio template loads no maxfwd.so"
    );
    // The tls module goes first: it must set OpenSSL up before any other module may use it.
    let tls = format!(
        "loadmodule \"tls.so\"\n\
         modparam(\"tls\", \"certificate\", \"{}\")\n\
         modparam(\"tls\", \"private_key\", \"{}\")\n\
         modparam(\"tls\", \"tls_method\", \"TLSv1.2+\")\n\
         modparam(\"tls\", \"verify_certificate\", 0)\n\
         modparam(\"tls\", \"require_certificate\", 0)\n",
        pki.cert.display(),
        pki.key.display()
    );
    Ok(cfg.replacen(first_module, &format!("{tls}{first_module}"), 1))
}

/// `count` plain TCP connections to `to`, left idle.
pub(crate) fn open_plain(to: SocketAddr, count: usize) -> Result<Vec<TcpStream>> {
    (0..count)
        .map(|i| TcpStream::connect(to).with_context(|| format!("plain connection {i} to {to}")))
        .collect()
}

/// One idle TLS connection: the socket and its finished rustls session.
pub(crate) struct IdleTls {
    _sock: TcpStream,
    _session: rustls::ClientConnection,
}

/// `count` TLS connections to `to`, each with its handshake done (and the server's
/// post-handshake messages, TLS 1.3 session tickets, read), then left idle.
pub(crate) fn open_tls(
    to: SocketAddr,
    count: usize,
    config: &Arc<rustls::ClientConfig>,
) -> Result<Vec<IdleTls>> {
    let name = ServerName::try_from(SERVER_NAME)?;
    let mut all = Vec::with_capacity(count);
    for i in 0..count {
        let mut sock = TcpStream::connect(to).with_context(|| format!("TLS connection {i}"))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut session = rustls::ClientConnection::new(config.clone(), name.clone())?;
        while session.is_handshaking() {
            session
                .complete_io(&mut sock)
                .with_context(|| format!("TLS handshake {i} with {to}"))?;
        }
        // Flush the client's last flight so the server finishes its side too.
        while session.wants_write() {
            session.write_tls(&mut sock)?;
        }
        all.push(IdleTls {
            _sock: sock,
            _session: session,
        });
    }
    Ok(all)
}
