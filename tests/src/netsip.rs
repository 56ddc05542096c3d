//! A plain-mode backend on an independent SIP stack: `tests/peers/netsip-uas.pl`, a user agent
//! server on Perl's Net::SIP (Debian's `libnet-sip-perl`). Unlike a SIPp scenario, it builds its
//! own requests from the dialog state and routes them through its own transport layer, which
//! opens a new TCP connection to the balancer's advertised address for its BYE (the script's
//! header says why): the case of issue 10.
//!
//! It writes two logs: one line per message and per connection it opens on stdout (parsed by
//! [`NetsipLog`]), and every message whole in SIPp's `-trace_msg` format, read as a [`Trace`]
//! so the per-call checks of [`crate::trace`] apply to it as to SIPp's backends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::net;
use crate::process::Proc;
use crate::trace::{Dir, Trace};
use crate::RunDir;

/// The message a test fails with when Perl's Net::SIP is not installed.
pub const NETSIP_MISSING: &str =
    "Net::SIP missing: run `cargo xtask test`, which installs it (Debian package libnet-sip-perl)";

/// How the backend answers.
#[derive(Debug, Clone)]
pub struct NetsipOpts {
    /// Seconds after the ACK of its 200 until it sends its own BYE; 0: never.
    pub bye_after: f64,
    /// Final status for each INVITE (200 with SDP, else a rejection).
    pub answer: u16,
    /// Seconds between the 180 and the final answer.
    pub ring: f64,
}

impl Default for NetsipOpts {
    fn default() -> NetsipOpts {
        NetsipOpts {
            bye_after: 1.0,
            answer: 200,
            ring: 0.0,
        }
    }
}

/// A running Net::SIP backend.
#[derive(Debug)]
pub struct NetsipUas {
    proc: Proc,
    name: String,
    addr: SocketAddr,
    trace: PathBuf,
}

/// The path of the script.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join("netsip-uas.pl")
}

impl NetsipUas {
    /// Starts the backend listening on `addr` (any loopback address: 127.0.0.2 gives a backend
    /// an address of its own) and waits until it listens.
    pub fn start(dir: &RunDir, name: &str, addr: SocketAddr, opts: &NetsipOpts) -> NetsipUas {
        let trace = dir.file(&format!("{name}_messages.log"));
        let mut cmd = Command::new("perl");
        cmd.arg(script())
            .args(["--listen", &addr.to_string()])
            .args(["--bye-after", &opts.bye_after.to_string()])
            .args(["--answer", &opts.answer.to_string()])
            .args(["--ring", &opts.ring.to_string()])
            .arg("--trace")
            .arg(&trace)
            .current_dir(dir.path());
        let mut proc = Proc::spawn(name, cmd, dir.path());
        net::wait_until(
            &format!("Net::SIP backend {name} to listen on {addr}"),
            Duration::from_secs(10),
            || {
                if !proc.is_running() {
                    let hint = if proc.stderr().contains("Can't locate Net/SIP") {
                        NETSIP_MISSING
                    } else {
                        "it exited at start"
                    };
                    panic!("Net::SIP backend {name}: {hint}\n{}", proc.output_tail(20));
                }
                proc.stdout().starts_with("listening ") && net::is_listening(addr.port())
            },
        );
        NetsipUas {
            proc,
            name: name.to_string(),
            addr,
            trace,
        }
    }

    /// Its name (also the name of its trace).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its line log so far.
    pub fn log(&self) -> NetsipLog {
        NetsipLog::parse(&self.name, &self.proc.stdout())
    }

    /// Its message trace so far.
    pub fn trace(&self) -> Trace {
        Trace::load(&self.name, &self.trace)
    }

    /// Stops it (SIGTERM) and returns its line log and its trace. Panics if it had exited on
    /// its own: its logs would then explain nothing.
    pub fn stop(mut self) -> (NetsipLog, Trace) {
        let status = self.proc.try_status();
        assert!(
            status.is_none(),
            "Net::SIP backend {} exited before the test ended ({status:?})\n{}",
            self.name,
            self.proc.output_tail(20)
        );
        self.proc.terminate(Duration::from_secs(5));
        (self.log(), self.trace())
    }
}

/// One message line of the log: `recv 200 BYE call-id=ID peer=IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Received or sent.
    pub dir: Dir,
    /// `INVITE` for a request, `200/BYE` for a response (as [`crate::trace::SipMsg::label`]).
    pub label: String,
    /// Its Call-ID.
    pub call_id: String,
    /// The socket address it came from or was sent to (for a request the stack sends: its
    /// first Route's address, not the connection it went on).
    pub peer: String,
}

/// A connection the backend opened itself: `connect local=IP:PORT peer=IP:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Its local address.
    pub local: String,
    /// Where it goes.
    pub peer: String,
}

/// The line log of one backend.
#[derive(Debug, Clone, Default)]
pub struct NetsipLog {
    /// Which backend.
    pub name: String,
    /// Message lines, in order.
    pub messages: Vec<LogLine>,
    /// Connections it opened, in order.
    pub connects: Vec<Connect>,
    /// The text, for failure messages.
    pub text: String,
}

impl NetsipLog {
    /// Parses the stdout of `netsip-uas.pl`; lines of other shapes are skipped.
    pub fn parse(name: &str, text: &str) -> NetsipLog {
        let mut log = NetsipLog {
            name: name.to_string(),
            text: text.to_string(),
            ..NetsipLog::default()
        };
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let value = |key: &str| {
                words
                    .iter()
                    .find_map(|w| w.strip_prefix(key))
                    .unwrap_or_default()
                    .to_string()
            };
            let dir = match words.first() {
                Some(&"recv") => Dir::Received,
                Some(&"sent") => Dir::Sent,
                Some(&"connect") => {
                    log.connects.push(Connect {
                        local: value("local="),
                        peer: value("peer="),
                    });
                    continue;
                }
                _ => continue,
            };
            // `recv INVITE call-id=…` or `recv 200 BYE call-id=…`.
            let label = match (words.get(1), words.get(2)) {
                (Some(code), Some(method)) if code.parse::<u16>().is_ok() => {
                    format!("{code}/{method}")
                }
                (Some(method), _) => (*method).to_string(),
                _ => continue,
            };
            log.messages.push(LogLine {
                dir,
                label,
                call_id: value("call-id="),
                peer: value("peer="),
            });
        }
        log
    }

    /// How many lines match `dir` and `label`.
    pub fn count(&self, dir: Dir, label: &str) -> usize {
        self.messages
            .iter()
            .filter(|m| m.dir == dir && m.label == label)
            .count()
    }

    /// The Call-IDs of the lines matching `dir` and `label`.
    pub fn call_ids_with(&self, dir: Dir, label: &str) -> Vec<&str> {
        self.messages
            .iter()
            .filter(|m| m.dir == dir && m.label == label)
            .map(|m| m.call_id.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_messages_and_connections() {
        let log = NetsipLog::parse(
            "b",
            "listening 127.0.0.2:5060\n\
             recv INVITE call-id=1@x peer=127.0.0.1:40000\n\
             sent 180 INVITE call-id=1@x peer=127.0.0.1:40000\n\
             sent BYE call-id=1@x peer=127.0.0.1:5070\n\
             connect local=127.0.0.2:41000 peer=127.0.0.1:5070\n\
             recv 200 BYE call-id=1@x peer=127.0.0.1:40000\n\
             exit\n",
        );
        assert_eq!(log.messages.len(), 4);
        assert_eq!(log.messages[1].label, "180/INVITE");
        assert_eq!(log.count(Dir::Received, "200/BYE"), 1);
        assert_eq!(log.call_ids_with(Dir::Sent, "BYE"), vec!["1@x"]);
        assert_eq!(
            log.connects,
            vec![Connect {
                local: "127.0.0.2:41000".into(),
                peer: "127.0.0.1:5070".into()
            }]
        );
    }
}
