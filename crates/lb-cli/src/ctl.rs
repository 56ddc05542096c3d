//! `siplb-ctl`: a client of the admin API ([`crate::admin`]) for operators.
//!
//! `siplb-ctl [--admin ADDR] [--token-file FILE] COMMAND`: `backends`, `drain ADDR`,
//! `resume ADDR`, `weight ADDR N`, `add ADDR [--weight N] [--mode M] [--backup ADDR]`,
//! `remove ADDR`, `reload`, `config`. It prints the answer (a table for `backends` unless
//! `--json`) and exits 0 on a 2xx answer, 1 on any other answer, 2 when it cannot ask.
//!
//! The HTTP client is a std `TcpStream`: one request with `Connection: close`, then the status
//! line and the body, read to the end of the stream (the API never answers chunked). Nothing
//! more of HTTP is needed, so no HTTP client crate.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory as _, Parser, Subcommand};
use serde_json::Value;

/// The address `siplb-ctl` asks when neither `--admin` nor `SIPLB_ADMIN` says otherwise; the
/// sample config (`packaging/siplb.toml`) serves the API there.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9091";

/// How long connecting, writing and reading may each take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Parser)]
#[command(
    name = "siplb-ctl",
    version,
    about = "Ask a running siplb balancer over its admin API (--admin)"
)]
struct CtlArgs {
    /// The balancer's admin address [default: $SIPLB_ADMIN, else 127.0.0.1:9091]
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// File holding the bearer token (the balancer's --admin-token-file)
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Print the JSON answer as it came, not a table
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// List the backends with their state, weight and selections
    Backends,
    /// Give a backend no new calls; its established calls go on
    Drain {
        /// The backend's address as configured (IP:PORT, IPv6 in brackets), or the host name
        /// it was configured by
        addr: String,
    },
    /// Give a drained backend new calls again
    Resume {
        /// The backend's address as configured
        addr: String,
    },
    /// Set a backend's weight (used by the weighted algorithm)
    Weight {
        /// The backend's address as configured
        addr: String,
        /// The new weight
        weight: u32,
    },
    /// Add a backend until the next reload
    Add {
        /// Its address, IP:PORT
        addr: String,
        /// Its weight [default: 1]
        #[arg(long)]
        weight: Option<u32>,
        /// plain or envelope [default: plain]
        #[arg(long)]
        mode: Option<String>,
        /// The backend that takes its calls when it is gone
        #[arg(long)]
        backup: Option<String>,
    },
    /// Remove a backend until the next reload
    Remove {
        /// The backend's address as configured
        addr: String,
    },
    /// Log every message of a Call-ID with its route decision, until the next reload; without
    /// CALLID list the traced Call-IDs
    Trace {
        /// The Call-ID to trace
        call_id: Option<String>,
    },
    /// Stop tracing a Call-ID
    Untrace {
        /// The traced Call-ID
        call_id: String,
    },
    /// Reread the config file, as SIGHUP does (drops the changes made with this tool)
    Reload,
    /// Print the running configuration (without secrets)
    Config,
}

/// `siplb-ctl`'s command line definition, for man pages and completions.
pub fn command() -> clap::Command {
    CtlArgs::command()
}

/// The whole `main` of `siplb-ctl`.
pub fn main() -> ExitCode {
    let args = CtlArgs::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("siplb-ctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// Asks once; `Ok(false)` for an answer that is not 2xx.
fn run(args: &CtlArgs) -> Result<bool, String> {
    let admin = args
        .admin
        .clone()
        .or_else(|| std::env::var("SIPLB_ADMIN").ok())
        .unwrap_or_else(|| DEFAULT_ADMIN.to_string());
    let token = match &args.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("token-file: {}: {e}", path.display()))?;
            let token = text.lines().map(str::trim).find(|l| !l.is_empty());
            Some(token.ok_or("token-file: no token in the file")?.to_string())
        }
        None => None,
    };
    let enc = |a: &str| percent_encode(a.trim());
    let (method, path, body) = match &args.command {
        CtlCommand::Backends => ("GET", "/backends".to_string(), String::new()),
        CtlCommand::Config => ("GET", "/config".to_string(), String::new()),
        CtlCommand::Reload => ("POST", "/reload".to_string(), String::new()),
        CtlCommand::Trace { call_id: None } => ("GET", "/trace".to_string(), String::new()),
        CtlCommand::Trace {
            call_id: Some(call_id),
        } => ("POST", format!("/trace/{}", enc(call_id)), String::new()),
        CtlCommand::Untrace { call_id } => {
            ("DELETE", format!("/trace/{}", enc(call_id)), String::new())
        }
        CtlCommand::Drain { addr } => (
            "POST",
            format!("/backends/{}/drain", enc(addr)),
            String::new(),
        ),
        CtlCommand::Resume { addr } => (
            "POST",
            format!("/backends/{}/resume", enc(addr)),
            String::new(),
        ),
        CtlCommand::Weight { addr, weight } => (
            "PUT",
            format!("/backends/{}/weight", enc(addr)),
            weight.to_string(),
        ),
        CtlCommand::Remove { addr } => {
            ("DELETE", format!("/backends/{}", enc(addr)), String::new())
        }
        CtlCommand::Add {
            addr,
            weight,
            mode,
            backup,
        } => {
            let mut body = serde_json::Map::new();
            body.insert("addr".into(), Value::from(addr.as_str()));
            if let Some(w) = weight {
                body.insert("weight".into(), Value::from(*w));
            }
            if let Some(m) = mode {
                body.insert("mode".into(), Value::from(m.as_str()));
            }
            if let Some(b) = backup {
                body.insert("backup".into(), Value::from(b.as_str()));
            }
            (
                "POST",
                "/backends".to_string(),
                Value::Object(body).to_string(),
            )
        }
    };
    let (status, text) = request(&admin, method, &path, &body, token.as_deref())?;
    let json: Option<Value> = serde_json::from_str(&text).ok();
    let mut out = std::io::stdout().lock();
    let printed = match (&json, &args.command, args.json) {
        (Some(Value::Array(backends)), CtlCommand::Backends, false) if status == 200 => {
            writeln!(out, "{}", table(backends))
        }
        (Some(value), _, false) => match serde_json::to_string_pretty(value) {
            Ok(pretty) => writeln!(out, "{pretty}"),
            Err(_) => write!(out, "{text}"),
        },
        _ => write!(out, "{text}"),
    };
    printed.map_err(|e| format!("writing the answer: {e}"))?;
    if !(200..300).contains(&status) {
        eprintln!("siplb-ctl: {method} {path}: HTTP {status}");
        return Ok(false);
    }
    Ok(true)
}

/// One HTTP/1.1 request with `Connection: close`: (status, body).
pub fn request(
    admin: &str,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<(u16, String), String> {
    let addrs: Vec<SocketAddr> = admin
        .to_socket_addrs()
        .map_err(|e| format!("admin: {admin:?}: {e}"))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| format!("admin: {admin:?} names no address"))?;
    let mut stream = TcpStream::connect_timeout(addr, IO_TIMEOUT)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(body.as_bytes()))
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr} did not answer HTTP: {head:?}"))?;
    Ok((status, body.to_string()))
}

fn table(backends: &[Value]) -> String {
    let mut out = format!(
        "{:<42} {:<9} {:>6} {:<8} {:>10} {:>5}",
        "ADDR", "STATE", "WEIGHT", "MODE", "SELECTIONS", "CONNS"
    );
    for b in backends {
        let s = |k: &str| b[k].as_str().unwrap_or("-").to_string();
        let n = |k: &str| b[k].as_u64().map_or("-".to_string(), |n| n.to_string());
        out.push_str(&format!(
            "\n{:<42} {:<9} {:>6} {:<8} {:>10} {:>5}",
            s("addr"),
            s("state"),
            n("weight"),
            s("mode"),
            n("selections"),
            n("connections")
        ));
    }
    out
}

/// Encodes what a path segment cannot hold as is; `[`, `]` and `:` stay readable, as the API
/// takes them either way.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:[]".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_stay_readable_and_the_rest_is_encoded() {
        assert_eq!(percent_encode("[::1]:5060"), "[::1]:5060");
        assert_eq!(
            percent_encode("[fe80::1%eth0]:5060"),
            "[fe80::1%25eth0]:5060"
        );
        assert_eq!(percent_encode("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }
}
