//! The balancer under test as a child process.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::bins;
use crate::net::{self, free_port};
use crate::process::Proc;
use crate::RunDir;

/// Which driver binary to test; every scenario runs against both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `lb-tokio`.
    Tokio,
    /// `lb-mio`.
    Mio,
}

impl Runtime {
    /// The binary (and package) name.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Tokio => "lb-tokio",
            Runtime::Mio => "lb-mio",
        }
    }

    /// Path to the built binary.
    pub fn binary(self) -> PathBuf {
        bins::binary(self.name(), self.name())
    }
}

/// How the balancer talks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Unmodified SIP over TCP.
    Plain,
    /// siplb's binary envelope around each message.
    Envelope,
}

/// One `--backend` argument.
#[derive(Debug, Clone)]
pub struct BackendArg {
    /// Where the backend listens.
    pub addr: SocketAddr,
    /// Wire mode.
    pub mode: Mode,
    /// Backup that takes its tagged traffic while it is down.
    pub backup: Option<SocketAddr>,
}

impl BackendArg {
    /// A plain-mode backend without backup.
    pub fn plain(addr: SocketAddr) -> BackendArg {
        BackendArg {
            addr,
            mode: Mode::Plain,
            backup: None,
        }
    }

    /// An envelope-mode backend without backup.
    pub fn envelope(addr: SocketAddr) -> BackendArg {
        BackendArg {
            addr,
            mode: Mode::Envelope,
            backup: None,
        }
    }

    fn to_flag(&self) -> String {
        let mut s = format!(
            "{},mode={}",
            self.addr,
            match self.mode {
                Mode::Plain => "plain",
                Mode::Envelope => "envelope",
            }
        );
        if let Some(b) = self.backup {
            s.push_str(&format!(",backup={b}"));
        }
        s
    }
}

/// Counters every run without failures must show (with [`LbStats::expect`]).
pub const CLEAN: &[(&str, u64)] = &[
    ("tag_failures", 0),
    ("to_backup", 0),
    ("replies_503", 0),
    ("replies_400", 0),
    ("replies_481", 0),
    ("malformed", 0),
    ("framing_errors", 0),
    ("dropped", 0),
    ("backend_failures", 0),
    ("frontends_open", 0),
];

/// How to start the balancer.
#[derive(Debug, Clone)]
pub struct LbSpec {
    /// Which binary.
    pub runtime: Runtime,
    /// Its backends, in order (index = the backend number in tags).
    pub backends: Vec<BackendArg>,
    /// `--window SECS`, if not the default.
    pub window_secs: Option<f64>,
    /// Any further flags.
    pub extra_args: Vec<String>,
    /// Listen port chosen beforehand (when a backend must know it); a free one if `None`.
    pub port: Option<u16>,
    /// Address to listen on and advertise (127.0.0.1 unless a test needs another, e.g. ::1).
    pub ip: IpAddr,
    /// `--workers N`: 1 unless the test is about workers, so counts and limits are one
    /// balancer's.
    pub workers: usize,
}

impl LbSpec {
    /// A balancer with these backends and default settings.
    pub fn new(runtime: Runtime, backends: Vec<BackendArg>) -> LbSpec {
        LbSpec {
            runtime,
            backends,
            window_secs: None,
            extra_args: Vec::new(),
            port: None,
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            workers: 1,
        }
    }

    /// Runs `n` workers (`--workers n`).
    pub fn with_workers(mut self, n: usize) -> LbSpec {
        self.workers = n;
        self
    }

    /// Appends flags to the command line.
    pub fn with_args(mut self, args: &[&str]) -> LbSpec {
        self.extra_args.extend(args.iter().map(|a| a.to_string()));
        self
    }
}

/// A running balancer.
#[derive(Debug)]
pub struct Balancer {
    proc: Proc,
    port: u16,
    spec: LbSpec,
}

/// The `siplb-stats key=value …` line the balancer prints on SIGTERM.
#[derive(Debug, Clone, Default)]
pub struct LbStats {
    /// Key → value as printed.
    pub values: BTreeMap<String, String>,
    /// The line itself.
    pub line: String,
}

impl LbStats {
    /// A numeric counter, `None` if absent or not a number.
    pub fn get(&self, key: &str) -> Option<u64> {
        self.values.get(key).and_then(|v| v.parse().ok())
    }

    /// Asserts each named counter has exactly the given value (a missing counter fails too).
    pub fn expect(&self, want: &[(&str, u64)]) {
        let wrong: Vec<String> = want
            .iter()
            .filter(|(k, v)| self.get(k) != Some(*v))
            .map(|(k, v)| format!("{k}: want {v}, got {:?}", self.values.get(*k)))
            .collect();
        assert!(
            wrong.is_empty(),
            "balancer counters differ:\n{}\n{}",
            wrong.join("\n"),
            self.line
        );
    }

    fn parse(text: &str) -> Option<LbStats> {
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.find("siplb-stats").map(|i| &l[i..]))?;
        let values = line
            .split_whitespace()
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(LbStats {
            values,
            line: line.to_string(),
        })
    }
}

impl Balancer {
    /// Starts the balancer on a free port of `spec.ip` (advertising that address) and waits
    /// until it listens and has a connection to every backend that is listening.
    pub fn start(dir: &RunDir, spec: LbSpec) -> Balancer {
        let port = spec.port.unwrap_or_else(free_port);
        let listen = SocketAddr::new(spec.ip, port);
        let mut cmd = Command::new(spec.runtime.binary());
        cmd.args(["--listen", &listen.to_string()])
            .args(["--advertise", &listen.to_string()])
            .args(["--log-level", "info"])
            .args(["--workers", &spec.workers.to_string()]);
        for b in &spec.backends {
            cmd.args(["--backend", &b.to_flag()]);
        }
        if let Some(w) = spec.window_secs {
            cmd.args(["--window", &w.to_string()]);
        }
        cmd.args(&spec.extra_args);
        cmd.current_dir(dir.path());
        let name = format!("{}-{port}", spec.runtime.name());
        let mut proc = Proc::spawn(&name, cmd, dir.path());
        let backend_ports: Vec<u16> = spec
            .backends
            .iter()
            .map(|b| b.addr.port())
            .filter(|p| net::is_listening(*p))
            .collect();
        net::wait_until(
            &format!("{name} to listen and connect to its backends {backend_ports:?}"),
            Duration::from_secs(10),
            || {
                assert!(
                    proc.is_running(),
                    "{name} exited at start\n{}",
                    proc.output_tail(30)
                );
                net::is_listening(port)
                    && backend_ports
                        .iter()
                        .all(|p| net::accepted_connections(*p) >= spec.workers)
            },
        );
        // The kernel completes the handshake before the driver has told the core the backend
        // is up; give the driver a moment so the first calls see every backend.
        std::thread::sleep(Duration::from_millis(200));
        Balancer { proc, port, spec }
    }

    /// Its listen (and advertised) address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.spec.ip, self.port)
    }

    /// Its listen port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Which runtime this is.
    pub fn runtime(&self) -> Runtime {
        self.spec.runtime
    }

    /// Panics (with the log tail) if the process has exited.
    pub fn assert_running(&mut self) {
        let status = self.proc.try_status();
        assert!(
            status.is_none(),
            "{} exited unexpectedly with {status:?}\n{}",
            self.proc.name(),
            self.proc.output_tail(40)
        );
    }

    /// The log tail, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.output_tail(lines)
    }

    /// Everything it logged so far (stderr).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Kills it abruptly (SIGKILL), as a crash or a lost machine would: no draining, no
    /// `siplb-stats` line. Its log stays readable.
    pub fn kill(&mut self) {
        self.assert_running();
        self.proc.kill();
    }

    /// Sends SIGHUP (reread the config, key and certificate files).
    pub fn hup(&mut self) {
        self.assert_running();
        self.proc.signal("HUP");
    }

    /// Sends SIGTERM and asserts a clean exit (status 0 within 10 s) with a `siplb-stats`
    /// line, which it returns.
    pub fn stop(&mut self) -> LbStats {
        self.assert_running();
        // A peer that just closed (SIPp at its exit) may not have been noticed yet, least of
        // all under a wide --batch-window: the gauges would then count it. Let the balancer
        // see it first; the counters are what the test checks, not this race.
        net::poll_until(Duration::from_secs(2), || {
            net::unnoticed_closes(self.port()) == 0
        });
        let (status, in_time) = self.proc.terminate(Duration::from_secs(10));
        assert!(
            in_time && status.success(),
            "{} did not exit cleanly on SIGTERM (status {status:?}, within 10 s: {in_time})\n{}",
            self.proc.name(),
            self.proc.output_tail(40)
        );
        let text = format!("{}\n{}", self.proc.stdout(), self.proc.stderr());
        LbStats::parse(&text).unwrap_or_else(|| {
            panic!(
                "{} printed no siplb-stats line on SIGTERM\n{}",
                self.proc.name(),
                self.proc.output_tail(40)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_stats_line() {
        let s = LbStats::parse("INFO something\nsiplb-stats calls_new=12 conns=3 x=y\n").unwrap();
        assert_eq!(s.get("calls_new"), Some(12));
        assert_eq!(s.get("x"), None);
        assert!(LbStats::parse("nothing here").is_none());
    }
}
