//! The balancer with a TLS listener and `--metrics`, and its handshake counters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lb::{Balancer, LbSpec};
use crate::net::{self, free_port, wait_until};
use crate::ops::{http_get, Metrics};
use crate::RunDir;

use super::{write_atomically, CertFiles, PATIENCE};

fn write_config(path: &Path, tls: SocketAddr, metrics: SocketAddr, body: &str) {
    let text = format!("listen-tls = [\"{tls}\"]\nmetrics = \"{metrics}\"\n{body}");
    write_atomically(path, text.as_bytes());
}

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
