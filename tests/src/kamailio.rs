//! Kamailio as the edge proxy in front of the balancer (`tests/peers/kamailio-edge.cfg`).
//!
//! A peer no one on the project wrote, behaving as production edge proxies do: it is
//! transaction stateful, record-routes and loose-routes itself, and multiplexes every call of its
//! callers onto one persistent TCP connection to the balancer.
//!
//! Kamailio runs in the foreground (`-DD`: the main process stays the test's child and forks its
//! workers) and logs to stderr (`-E`), into the test's [`RunDir`], which also holds the generated
//! configuration and Kamailio's runtime files (`-Y`), so parallel tests share nothing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::net::{self, free_port};
use crate::process::{child_pids, find_program, signal_pid, Proc};
use crate::RunDir;

/// The message a test fails with when Kamailio is not installed: the tests never skip.
pub const KAMAILIO_MISSING: &str =
    "Kamailio missing: run `cargo xtask test`, which installs it (Debian package kamailio)";

/// The configuration template; `@PORT@` and `@BALANCER@` are filled in at start.
const EDGE_CFG: &str = include_str!("../peers/kamailio-edge.cfg");

/// The `kamailio` executable (`$KAMAILIO`, `PATH`, or `/usr/sbin` where Debian puts it).
/// Panics with [`KAMAILIO_MISSING`] when absent.
pub fn kamailio() -> PathBuf {
    find_program("kamailio", "KAMAILIO").unwrap_or_else(|| panic!("{KAMAILIO_MISSING}"))
}

/// The configuration for an edge proxy listening on `127.0.0.1:port` that sends every new call
/// to `balancer`.
/// Modules load from the binary's own default folder (the package's), so the config names none.
pub fn edge_config(port: u16, balancer: SocketAddr) -> String {
    EDGE_CFG
        .replace("@PORT@", &port.to_string())
        .replace("@BALANCER@", &balancer.to_string())
}

/// A running Kamailio edge proxy. Dropping it stops the main process and every worker.
#[derive(Debug)]
pub struct EdgeProxy {
    proc: Proc,
    port: u16,
}

impl EdgeProxy {
    /// Writes the configuration into `dir`, starts Kamailio on a free port of 127.0.0.1 and
    /// waits until it listens.
    pub fn start(dir: &RunDir, balancer: SocketAddr) -> EdgeProxy {
        EdgeProxy::start_with(dir, |port| edge_config(port, balancer))
    }

    /// Like [`EdgeProxy::start`] with the configuration `config(port)` makes for the port.
    pub fn start_with(dir: &RunDir, config: impl FnOnce(u16) -> String) -> EdgeProxy {
        let bin = kamailio();
        let port = free_port();
        let cfg = dir.file("kamailio.cfg");
        std::fs::write(&cfg, config(port))
            .unwrap_or_else(|e| panic!("writing {}: {e}", cfg.display()));
        let runtime = dir.file("kamailio-run");
        std::fs::create_dir_all(&runtime).expect("creating Kamailio's runtime dir");
        let mut cmd = Command::new(bin);
        cmd.arg("-f")
            .arg(&cfg)
            .args(["-DD", "-E"])
            .arg("-Y")
            .arg(&runtime)
            .arg("-w")
            .arg(dir.path());
        cmd.current_dir(dir.path());
        let name = format!("kamailio-{port}");
        let mut proc = Proc::spawn(&name, cmd, dir.path());
        net::wait_until(
            &format!("{name} to listen"),
            Duration::from_secs(10),
            || {
                assert!(
                    proc.is_running(),
                    "{name} exited at start (a config error?)\n{}",
                    proc.output_tail(30)
                );
                net::is_listening(port)
            },
        );
        EdgeProxy { proc, port }
    }

    /// Where callers send: `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        net::local(self.port)
    }

    /// Kamailio's log lines at level ERROR or worse (a relay that failed, a parse error, …).
    pub fn errors(&self) -> Vec<String> {
        self.proc
            .stderr()
            .lines()
            .filter(|l| {
                ["ERROR:", "CRITICAL:", "ALERT:", "BUG:"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .map(str::to_string)
            .collect()
    }

    /// The log tail, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.proc.output_tail(lines)
    }

    /// Everything it logged so far (stderr).
    pub fn log(&self) -> String {
        self.proc.stderr()
    }

    /// Stops Kamailio (SIGTERM) after asserting it is still running and logged no error.
    pub fn stop(self) {
        self.stop_allowing(|_| false);
    }

    /// Like [`EdgeProxy::stop`], allowing the errors `expected` accepts (a peer the test
    /// killed on purpose).
    pub fn stop_allowing(mut self, expected: impl Fn(&str) -> bool) {
        let status = self.proc.try_status();
        assert!(
            status.is_none(),
            "{} exited during the test ({status:?})\n{}",
            self.proc.name(),
            self.proc.output_tail(40)
        );
        let errors: Vec<String> = self.errors().into_iter().filter(|e| !expected(e)).collect();
        assert!(
            errors.is_empty(),
            "{} logged errors:\n{}",
            self.proc.name(),
            errors.join("\n")
        );
        self.shut_down();
    }

    /// SIGTERM to the main process, which stops its workers; SIGKILL to whatever is left.
    fn shut_down(&mut self) {
        let workers = child_pids(self.proc.pid());
        self.proc.terminate(Duration::from_secs(5));
        for pid in workers {
            if Path::new(&format!("/proc/{pid}")).exists() {
                signal_pid(pid, "KILL");
            }
        }
    }
}

impl Drop for EdgeProxy {
    fn drop(&mut self) {
        // The Proc's own drop would SIGKILL the main process alone and orphan the workers, one
        // of which holds the listening socket.
        self.shut_down();
    }
}
