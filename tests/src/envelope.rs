//! The example envelope-mode backend (`envelope-backend`, package example-envelope-backend).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::bins;
use crate::net::{self, free_port};
use crate::process::Proc;
use crate::RunDir;

/// A running example envelope backend.
#[derive(Debug)]
pub struct EnvBackend {
    proc: Proc,
    name: String,
    port: u16,
}

impl EnvBackend {
    /// Starts `envelope-backend --listen 127.0.0.1:PORT --name NAME` (with
    /// `--answer-delay-ms` when `answer_delay_ms` is non-zero) and waits until it listens.
    pub fn start(dir: &RunDir, name: &str, answer_delay_ms: u64) -> EnvBackend {
        let mut args = Vec::new();
        if answer_delay_ms > 0 {
            args = vec!["--answer-delay-ms".to_owned(), answer_delay_ms.to_string()];
        }
        EnvBackend::start_with(dir, name, &args)
    }

    /// The same backend in plain mode (`--plain`): an ordinary SIP UAS over TCP, for plain
    /// backends (`BackendArg::plain`).
    pub fn start_plain(dir: &RunDir, name: &str) -> EnvBackend {
        EnvBackend::start_with(dir, name, &["--plain".to_owned()])
    }

    fn start_with(dir: &RunDir, name: &str, args: &[String]) -> EnvBackend {
        let port = free_port();
        let mut cmd = Command::new(bins::binary("example-envelope-backend", "envelope-backend"));
        cmd.args(["--listen", &net::local(port).to_string()])
            .args(["--name", name])
            .args(args);
        cmd.current_dir(dir.path());
        let mut proc = Proc::spawn(name, cmd, dir.path());
        net::wait_until(
            &format!("envelope backend {name} to listen on {port}"),
            Duration::from_secs(10),
            || {
                assert!(
                    proc.is_running(),
                    "envelope backend {name} exited at start\n{}",
                    proc.output_tail(20)
                );
                net::is_listening(port)
            },
        );
        EnvBackend {
            proc,
            name: name.to_string(),
            port,
        }
    }

    /// Its name (the value of the `X-Backend` header it stamps).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        net::local(self.port)
    }

    /// Stops it (SIGTERM) and returns the counters it prints
    /// (`envelope-backend name=NAME invite=N ack=N …`).
    pub fn finish(mut self) -> BTreeMap<String, u64> {
        let (status, in_time) = self.proc.terminate(Duration::from_secs(5));
        assert!(
            in_time && status.success(),
            "envelope backend {} did not exit cleanly: {status:?}\n{}",
            self.name,
            self.proc.output_tail(20)
        );
        let out = self.proc.stdout();
        let line = out
            .lines()
            .rev()
            .find(|l| l.starts_with("envelope-backend name=") && l.contains("invite="))
            .unwrap_or_else(|| {
                panic!(
                    "envelope backend {} printed no counters\n{}",
                    self.name,
                    self.proc.output_tail(20)
                )
            });
        line.split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect()
    }
}
