//! stunnel in client mode: plain TCP in on 127.0.0.1, TLS out to the balancer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::net::{self, free_port, wait_until};
use crate::process::Proc;
use crate::RunDir;

use super::{stunnel, CertFiles, PATIENCE};

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
