//! Running SIPp as the proxy-side client (UAC) and as plain-mode backends (UAS).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::net::{self, free_port};
use crate::process::{find_program, Proc};
use crate::trace::Trace;
use crate::RunDir;

/// The message a test fails with when SIPp is not installed.
pub const SIPP_MISSING: &str =
    "SIPp missing: run `cargo xtask test`, which installs it (Debian package sip-tester)";

/// The `sipp` executable on `PATH` (or `$SIPP`). Panics with [`SIPP_MISSING`] when absent: the
/// end-to-end tests never skip silently.
pub fn sipp() -> PathBuf {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| find_program("sipp", "SIPP"));
    match found {
        Some(p) => p.clone(),
        None => panic!("{SIPP_MISSING}"),
    }
}

/// Path of a scenario file in `tests/scenarios/`.
pub fn scenario(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    assert!(p.is_file(), "scenario {} does not exist", p.display());
    p
}

/// SIPp's TCP transport modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `-t t1`: one TCP connection for all calls (a proxy's multiplexed connection).
    One,
    /// `-t tn`: one TCP connection per call.
    PerCall,
}

impl Transport {
    fn flag(self) -> &'static str {
        match self {
            Transport::One => "t1",
            Transport::PerCall => "tn",
        }
    }
}

/// A SIPp server instance: one plain-mode backend.
#[derive(Debug)]
pub struct Uas {
    proc: Proc,
    killed: bool,
    name: String,
    addr: SocketAddr,
    trace: PathBuf,
    errors: PathBuf,
}

impl Uas {
    /// Starts SIPp with `scenario` (a file in `tests/scenarios/`) listening on a free port of
    /// 127.0.0.1 with one TCP socket per accepted connection (`-t t1`), and waits until it
    /// listens. `keys` become `-key NAME VALUE` (`[NAME]` in the scenario).
    pub fn start(dir: &RunDir, name: &str, scenario_file: &str, keys: &[(&str, String)]) -> Uas {
        Uas::start_on(dir, name, scenario_file, free_port(), keys)
    }

    /// Like [`Uas::start`] on a port chosen beforehand (when the scenario needs to know it).
    pub fn start_on(
        dir: &RunDir,
        name: &str,
        scenario_file: &str,
        port: u16,
        keys: &[(&str, String)],
    ) -> Uas {
        Uas::start_at(dir, name, scenario_file, net::local(port), keys)
    }

    /// Like [`Uas::start_on`] on another loopback address too (`127.0.0.2:port`, …), so that
    /// each backend of a farm has an address of its own, as real ones do.
    pub fn start_at(
        dir: &RunDir,
        name: &str,
        scenario_file: &str,
        addr: SocketAddr,
        keys: &[(&str, String)],
    ) -> Uas {
        assert!(addr.ip().is_loopback(), "backends stay on loopback: {addr}");
        let port = addr.port();
        let trace = dir.file(&format!("{name}_messages.log"));
        let errors = dir.file(&format!("{name}_errors.log"));
        let mut cmd = Command::new(sipp());
        cmd.arg("-sf")
            .arg(scenario(scenario_file))
            .args([
                "-t",
                "t1",
                "-i",
                &addr.ip().to_string(),
                "-bind_local",
                "-nostdin",
            ])
            .args(["-p", &port.to_string()])
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&trace)
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&errors);
        for (k, v) in keys {
            cmd.args(["-key", k, v]);
        }
        cmd.current_dir(dir.path());
        let mut proc = Proc::spawn(name, cmd, dir.path());
        net::wait_until(
            &format!("SIPp backend {name} to listen on {addr}"),
            Duration::from_secs(10),
            || {
                assert!(
                    proc.is_running(),
                    "SIPp backend {name} exited at start\n{}",
                    proc.output_tail(20)
                );
                net::is_listening(port)
            },
        );
        Uas {
            proc,
            killed: false,
            name: name.to_string(),
            addr,
            trace,
            errors,
        }
    }

    /// The backend's name (also the name of its trace).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The address it listens on (`127.0.0.1:port` unless started with [`Uas::start_at`]).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The trace so far (SIPp writes each message as it goes).
    pub fn trace(&self) -> Trace {
        Trace::load(&self.name, &self.trace)
    }

    /// Sends it a signal by name: `STOP` freezes it with its connections open (a backend
    /// that stalls), `CONT` lets it go on.
    pub fn signal(&mut self, sig: &str) {
        self.proc.signal(sig);
    }

    /// Kills the backend abruptly (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.killed = true;
        self.proc.kill();
    }

    /// Stops the backend (SIGTERM) and returns its trace.
    ///
    /// Panics if the backend had already exited without the test killing it: its trace would
    /// then explain nothing, and the cause is outside the balancer.
    pub fn finish(mut self) -> Trace {
        if !self.killed {
            let status = self.proc.try_status();
            assert!(
                status.is_none(),
                "SIPp backend {} exited before the test ended ({status:?}); was it killed \
                 from outside (e.g. `pkill sipp`)?\n{}",
                self.name,
                self.proc.output_tail(5)
            );
        }
        self.proc.terminate(Duration::from_secs(5));
        self.trace()
    }

    /// The unexpected-message log, for failure messages.
    pub fn errors(&self) -> String {
        std::fs::read_to_string(&self.errors).unwrap_or_default()
    }
}

/// What a SIPp client run should do.
#[derive(Debug, Clone)]
pub struct UacSpec {
    /// Name of the run (trace and log file names).
    pub name: String,
    /// Scenario file in `tests/scenarios/`.
    pub scenario: String,
    /// Where to send (the balancer).
    pub target: SocketAddr,
    /// One shared connection or one per call.
    pub transport: Transport,
    /// Number of calls (`-m`).
    pub calls: u32,
    /// Calls per second (`-r`).
    pub rate: u32,
    /// Duration of `<pause/>` without a duration, in ms (`-d`).
    pub pause_ms: u64,
    /// `-key NAME VALUE` pairs.
    pub keys: Vec<(String, String)>,
    /// SIPp's own global timeout; the run fails when reached.
    pub timeout: Duration,
    /// Local address (`-i`), 127.0.0.1 by default.
    pub local_ip: IpAddr,
}

impl UacSpec {
    /// A spec with the common defaults: one connection, 10 calls at 20/s, no pause, 30 s.
    pub fn new(name: &str, scenario: &str, target: SocketAddr) -> UacSpec {
        UacSpec {
            name: name.to_string(),
            scenario: scenario.to_string(),
            target,
            transport: Transport::One,
            calls: 10,
            rate: 20,
            pause_ms: 0,
            keys: Vec::new(),
            timeout: Duration::from_secs(30),
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// A running SIPp client.
#[derive(Debug)]
pub struct Uac {
    proc: Proc,
    spec: UacSpec,
    port: u16,
    trace: PathBuf,
    errors: PathBuf,
    stats: PathBuf,
}

/// The result of a finished SIPp client run.
#[derive(Debug)]
pub struct UacOutcome {
    /// The run's name.
    pub name: String,
    /// The local port SIPp used for its Via and Contact.
    pub port: u16,
    /// SIPp's exit code (0: all calls succeeded, 1: some failed, …).
    pub exit_code: Option<i32>,
    /// `SuccessfulCall(C)` from SIPp's statistics.
    pub successful: u64,
    /// `FailedCall(C)` from SIPp's statistics.
    pub failed: u64,
    /// The client's message trace.
    pub trace: Trace,
    /// SIPp's unexpected-message log.
    pub errors: String,
    /// The tail of SIPp's screen output.
    pub screen: String,
}

impl Uac {
    /// Starts the client.
    pub fn spawn(dir: &RunDir, spec: UacSpec) -> Uac {
        let port = free_port();
        let trace = dir.file(&format!("{}_messages.log", spec.name));
        let errors = dir.file(&format!("{}_errors.log", spec.name));
        let stats = dir.file(&format!("{}_stats.csv", spec.name));
        let mut cmd = Command::new(sipp());
        cmd.arg("-sf")
            .arg(scenario(&spec.scenario))
            .arg(spec.target.to_string())
            .args(["-t", spec.transport.flag()])
            .args(["-i", &spec.local_ip.to_string(), "-bind_local", "-nostdin"])
            .args(["-p", &port.to_string()])
            .args(["-m", &spec.calls.to_string()])
            .args(["-r", &spec.rate.to_string(), "-rp", "1000"])
            .args(["-l", "10000"])
            // SIPp refuses `-t tn` when its default socket limit exceeds `ulimit -n`.
            .args(["-max_socket", "1000"])
            .args(["-d", &spec.pause_ms.to_string()])
            .args(["-recv_timeout", "8000"])
            .args(["-timeout", &format!("{}s", spec.timeout.as_secs().max(1))])
            .arg("-timeout_error")
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&trace)
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&errors)
            .arg("-trace_stat")
            .arg("-stf")
            .arg(&stats);
        for (k, v) in &spec.keys {
            cmd.args(["-key", k, v]);
        }
        cmd.current_dir(dir.path());
        let proc = Proc::spawn(&spec.name, cmd, dir.path());
        Uac {
            proc,
            spec,
            port,
            trace,
            errors,
            stats,
        }
    }

    /// Starts the client and waits for it to finish.
    pub fn run(dir: &RunDir, spec: UacSpec) -> UacOutcome {
        Uac::spawn(dir, spec).wait()
    }

    /// Its process id, which SIPp writes into every Call-ID (`N-PID@IP`).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The local port SIPp uses in its Via and Contact.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The trace so far.
    pub fn trace(&self) -> Trace {
        Trace::load(&self.spec.name, &self.trace)
    }

    /// Waits for the run to end (SIPp's own timeout plus a margin; killed after that).
    pub fn wait(mut self) -> UacOutcome {
        let limit = self.spec.timeout + Duration::from_secs(10);
        let status = match self.proc.wait_timeout(limit) {
            Some(s) => s,
            None => {
                self.proc.kill();
                panic!(
                    "SIPp client {} still running after {limit:?}\n{}",
                    self.spec.name,
                    self.proc.output_tail(30)
                );
            }
        };
        let (successful, failed) = read_stats(&self.stats);
        UacOutcome {
            name: self.spec.name.clone(),
            port: self.port,
            exit_code: status.code(),
            successful,
            failed,
            trace: Trace::load(&self.spec.name, &self.trace),
            errors: std::fs::read_to_string(&self.errors).unwrap_or_default(),
            screen: self.proc.output_tail(25),
        }
    }
}

impl UacOutcome {
    /// Asserts SIPp exited 0 with exactly `calls` successful calls, none failed, and that its
    /// trace holds exactly `calls` Call-IDs.
    pub fn assert_all_ok(&self, calls: u64) {
        let ids = self.trace.call_ids().len() as u64;
        assert!(
            self.exit_code == Some(0)
                && self.successful == calls
                && self.failed == 0
                && ids == calls,
            "SIPp client {}: exit code {:?}, successful {} (want {calls}), failed {}, \
             Call-IDs in trace {ids}\n--- unexpected messages ---\n{}\n{}",
            self.name,
            self.exit_code,
            self.successful,
            self.failed,
            truncate(&self.errors, 6000),
            self.screen
        );
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Reads `SuccessfulCall(C)` and `FailedCall(C)` from the last line of a SIPp statistics file.
fn read_stats(path: &std::path::Path) -> (u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let (Some(header), Some(last)) = (lines.first(), lines.last()) else {
        return (0, 0);
    };
    if lines.len() < 2 {
        return (0, 0);
    }
    let names: Vec<&str> = header.split(';').collect();
    let values: Vec<&str> = last.split(';').collect();
    let get = |want: &str| {
        names
            .iter()
            .position(|n| *n == want)
            .and_then(|i| values.get(i))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}
