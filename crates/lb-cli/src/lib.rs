//! # lb-cli: the command line, config file and operator output shared by siplb's binaries
//!
//! Both drivers (`lb-tokio`, `lb-mio`) start the same way and report the same way; everything
//! that does not depend on the I/O runtime lives here so the drivers stay a loop around the core:
//!
//! - [`parse`] / [`settings_from_args`]: flags and a TOML file merged into [`Settings`] (flags
//!   win), validated by `lb_core::Config::validate`. Errors are one line, `siplb: <key>: <reason>`,
//!   exit code 2.
//! - [`init_logging`]: `tracing-subscriber` with an `EnvFilter`, to stderr, as text or JSON
//!   lines ([`LogFormat`]).
//! - [`admin`]: the `--admin` API (JSON over HTTP), applied by the drivers between events
//!   through [`Ops::start_admin`] and [`Ops::handle_admin`]; [`ctl`]: its client, `siplb-ctl`.
//!   Operators' guide: `docs/operations.md`.
//! - [`Ops`]: what a driver owes the operator besides bytes: the core's events as log lines
//!   (those a peer can provoke rate limited per kind by a [`RateLimiter`]), the `--metrics`
//!   snapshot and HTTP server (module docs of [`Snapshot`]), and SIGHUP reloads.
//! - [`log_frontend_open`], [`log_frontend_closed`]: one line per frontend connection.
//! - [`stats_line`]: the `siplb-stats …` line printed at exit.
//! - [`ReadBuffer`], [`write_queue`]: socket reads and queued writes for readiness-based loops.
//! - [`WakePacer`]: under load, at most one wake-up per `batch-window`.
//! - [`main_with`]: the whole `main` of a binary around a driver's `run`.
//! - [`run_workers`]: the process around a driver's per-worker loop (`--workers`): signals,
//!   listeners bound with `SO_REUSEPORT`, one metrics server, reloads handed to every worker,
//!   the workers' counters summed at exit.
//! - [`ProxyHeaderReader`]: the PROXY protocol header of a connection's first bytes
//!   (`--proxy-protocol`), read before anything reaches the core.
//! - The driver knobs both binaries share: [`CONNECT_TIMEOUT`], [`CLOSE_LINGER_MAX`],
//!   [`SHUTDOWN_FLUSH_MAX`],
//!   [`READ_CHUNK_BYTES`], [`BATCH_MAX`].
//!
//! ## The config file
//!
//! Keys mirror the flags; a flag given on the command line wins over the file, and a repeatable
//! flag given at all replaces the file's whole list. Durations are seconds (fractions allowed).
//! A relative `tag-key-file` is relative to the config file.
//!
//! ## Reload (SIGHUP)
//!
//! On SIGHUP the binaries reread the config file and the tag key file and merge them with the
//! command line given at start (flags still win). A valid result is applied without dropping a
//! connection or a call: backends added, removed, drained and re-weighted, the algorithm, the
//! tag keys, timeouts, probes, overload holds, the output cap, the log level and the TLS
//! certificates, in every worker (the file is reread once per process). Listen addresses,
//! `metrics`, `admin`, `admin-token-file`, `log-format`, `batch-window`, `workers`,
//! `proxy-protocol`, `window`, `ringing-max` and `limits.table-capacity` change only at a
//! restart. A reload also drops the changes made through the admin API.
//! An invalid file is refused with one warning naming the key, and the running configuration
//! stays. **A config file is needed for a reload to change anything**: the flags do not
//! change, so a balancer started from flags alone can only reread its tag key file.
//!
//! ## Metrics
//!
//! `metrics = "ADDR"` (or `--metrics ADDR`) serves `http://ADDR/metrics` (OpenMetrics text:
//! every counter of `lb_core::Stats` as `siplb_<name>_total`, the gauges `siplb_frontends_open`,
//! `siplb_table_len`, `siplb_table_len_max`, `siplb_backends_up`, `siplb_backends_queue_held`,
//! `siplb_table_capacity`, the driver's `siplb_output_cap_drops_total`, and per backend
//! `siplb_backend_{up,draining,removed,overloaded,queue_held,assigned,weight,load}` labelled
//! `backend="ID",addr="IP:PORT"`; the labelled figures of `lb_core::Figures`:
//! `siplb_requests_total{method,from}`, `siplb_backend_responses_total{backend,addr,class}`, the
//! histograms `siplb_backend_{first,final}_response_seconds{backend,addr}`, and
//! `siplb_table_fill_ratio`) and `http://ADDR/health` (200 `ready` while at least one
//! backend is up, else 503). Figures are at most 100 ms old. Bind it to a private address:
//! the endpoint has no authentication.
//!
//! ```toml
//! listen = ["0.0.0.0:5060"]
//! advertise = "lb.example.com:5060"
//! algorithm = "weighted"          # round-robin | weighted | least-loaded
//! backend-mode = "plain"          # default for backends that do not say
//! window = 32
//! ringing-max = 180
//! tag-key-file = "tag.keys"       # lines `ID:HEXSECRET`, the first signs
//! tag-header = "X-LB-Tag"
//! log-level = "info"
//! log-format = "text"             # text | json (one object per line)
//! output-cap = 4194304
//! retry-after = 5                 # file only: 503 Retry-After, backend reconnect backoff
//! reconnect-min = 0.1
//! reconnect-max = 10
//! probe-interval = 5              # SIP OPTIONS to each backend; no probes without this key
//! probe-timeout = 2
//! probe-failures = 3              # consecutive failures that take a backend down
//! probe-successes = 2             # consecutive successes that bring it back
//! idle-timeout = 900              # a frontend connection silent this long is closed
//! partial-timeout = 10            # ... or holding part of a message this long (slowloris)
//! overload-hold = 5               # no new calls to a backend that answered 503 (no Retry-After)
//! overload-hold-max = 300         # file only: cap on a backend's Retry-After
//! batch-window = 0.002            # under load, wake at most this often (0: at every message)
//! workers = 4                     # balancer cores, one per thread [default: one per core]
//! proxy-protocol = false          # frontends open with a PROXY v1/v2 header (L4 balancer)
//! metrics = "127.0.0.1:9090"      # /metrics and /health
//! admin = "127.0.0.1:9091"        # admin API; elsewhere than loopback needs admin-token-file
//! resolve-interval = 30           # backends given by host name are resolved again this often
//!
//! [[backend]]
//! addr = "10.0.0.1:5060"
//! weight = 2
//!
//! [[backend]]
//! addr = "10.0.0.2:5060"
//! mode = "envelope"
//! backup = "10.0.0.1:5060"
//! draining = false
//!
//! [limits]
//! message-bytes-max = 65536
//! headers-max = 128
//! buffered-bytes-max = 262144
//! frontends-max = 10000
//! table-capacity = 1000000
//! table-share-percent = 12        # once the table is half full, one connection's most
//!
//! [sanity]                        # initial requests from frontends; --no-sanity-checks: off
//! enabled = true                  # a From tag, and these lengths, or 400 naming the fault
//! host-bytes-max = 255
//! uri-bytes-max = 1024
//! field-bytes-max = 2048
//! ```
//!
//! On the command line a backend is `ADDR[,weight=N][,mode=plain|envelope][,backup=ADDR]
//! [,draining]`.

pub mod admin;
mod admin_backends;
mod admin_hub;
pub mod backpressure;
pub mod ctl;
pub mod dns;
mod heap_trim;
mod metrics;
pub mod named;
mod ops;
mod pacer;
mod proxy;
mod settings;
pub mod tls;
mod workers;

use std::collections::VecDeque;
use std::fmt::Display;
use std::io::{ErrorKind, IoSlice, IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use lb_core::{CloseReason, ConnId, Stats};
use rand::TryRngCore;
use tracing_subscriber::{EnvFilter, Registry};

pub use metrics::{Snapshot, PUBLISH_EVERY};

/// What a TLS backend connection needs: the client configuration and the name its
/// certificate is checked for ([`Ops::backend_tls`]).
pub type BackendTls = (
    std::sync::Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);
pub use ops::{reload, Noise, Ops, RateLimiter, NOISE_LINES_MAX, NOISE_WINDOW};
pub use pacer::WakePacer;
pub use proxy::{
    ProxyHeaderReader, ProxyRead, ProxyReject, PROXY_HEADER_BYTES_MAX, PROXY_HEADER_TIMEOUT,
    PROXY_PENDING_MAX,
};
pub use settings::{command, parse, read_tag_keys, CliError, Settings};
pub use workers::{bind_listener, run_workers, sum, Command, Commander, Control, Worker};

/// How long a backend connect may take before the driver reports it closed; the core then
/// retries with backoff.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a connection the core asked to close may take to flush its queued output before the
/// driver drops it: a peer that stops reading cannot hold the socket, and up to the output cap
/// of memory, for longer.
pub const CLOSE_LINGER_MAX: Duration = Duration::from_secs(5);

/// How long a driver keeps flushing queued output after SIGINT/SIGTERM before it gives up.
pub const SHUTDOWN_FLUSH_MAX: Duration = Duration::from_secs(2);

/// Size of one read: large enough that a busy connection drains in a few reads, small enough
/// that a thousand idle connections hold little.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Inputs a driver handles per wake-up before it yields to its runtime, so one busy connection
/// cannot starve the timer or the others.
pub const BATCH_MAX: usize = 64;

/// Queue entries per vectored write (Linux's IOV_MAX is 1024; a few dozen fill a segment train).
const IOV_BATCH: usize = 64;

/// The read side of a readiness loop. Reads land in a scratch area zeroed once at start; only
/// the bytes read are then copied into the `BytesMut` whose pieces go to the core. Reading
/// straight into a `BytesMut`'s spare room would need `unsafe` (the room is uninitialised) or a
/// fresh zeroing of a whole chunk per read, which cost more than the copy of a few hundred bytes
/// (a profile at 1,000 calls/s showed the memset at 4.7 % of the balancer's CPU).
pub struct ReadBuffer {
    scratch: Box<[u8]>,
    pending: BytesMut,
}

impl Default for ReadBuffer {
    fn default() -> ReadBuffer {
        ReadBuffer {
            scratch: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            pending: BytesMut::with_capacity(READ_CHUNK_BYTES),
        }
    }
}

impl ReadBuffer {
    /// Reads once from `source`; `Ok(0)` is the end of the stream. Take the bytes with
    /// [`ReadBuffer::take`].
    pub fn read_some(&mut self, source: &mut impl std::io::Read) -> std::io::Result<usize> {
        let n = source.read(&mut self.scratch)?;
        if self.pending.capacity() - self.pending.len() < n {
            self.pending.reserve(READ_CHUNK_BYTES.max(n));
        }
        self.pending.extend_from_slice(&self.scratch[..n]);
        Ok(n)
    }

    /// The bytes read since the last call, as one piece for the core.
    pub fn take(&mut self) -> BytesMut {
        self.pending.split()
    }

    /// A read of `n` bytes left the socket empty at that moment: with edge-triggered
    /// readiness, a new event comes when more arrives, so reading again now would only find
    /// `WouldBlock` (one wasted syscall per wake-up).
    pub fn was_short(&self, n: usize) -> bool {
        n < self.scratch.len()
    }
}

/// Writes `queue` front to back (vectored, up to 64 entries per call) until it is empty or
/// the sink would block; returns the bytes written, also when it stopped at `WouldBlock`. Each
/// `Bytes` is dropped as soon as it is written, so the core's buffers can reuse the space.
pub fn write_queue(
    queue: &mut VecDeque<Bytes>,
    sink: &mut impl std::io::Write,
) -> std::io::Result<usize> {
    let mut total = 0;
    while !queue.is_empty() {
        let mut slices = [IoSlice::new(&[]); IOV_BATCH];
        let mut count = 0;
        for (slice, bytes) in slices.iter_mut().zip(queue.iter()) {
            *slice = IoSlice::new(bytes);
            count += 1;
        }
        match sink.write_vectored(&slices[..count]) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(mut n) => {
                total += n;
                while n > 0 {
                    let Some(front) = queue.front_mut() else {
                        break;
                    };
                    if front.len() <= n {
                        n -= front.len();
                        queue.pop_front();
                    } else {
                        front.advance(n);
                        n = 0;
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(total),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// Why a driver stopped with an error after start-up.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listen address could not be bound.
    #[error("listen: {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The metrics address could not be served.
    #[error("metrics: {addr}: {reason}")]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The admin API address could not be served.
    #[error("admin: {addr}: {reason}")]
    Admin {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The runtime or the poller failed.
    #[error("runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Parses the process's arguments; on error prints `siplb: <key>: <reason>` (or clap's usage
/// text) to stderr and exits with code 2 (`--help` and `--version` exit 0).
pub fn settings_from_args() -> Settings {
    match parse(std::env::args_os()) {
        Ok(settings) => settings,
        Err(CliError::Usage(e)) => e.exit(),
        Err(e) => {
            eprintln!("siplb: {e}");
            std::process::exit(2)
        }
    }
}

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// tracing-subscriber's human format: `TIMESTAMP LEVEL target: message key=value…`.
    #[default]
    Text,
    /// One JSON object per line, tracing-subscriber's JSON format: `timestamp` (RFC 3339,
    /// UTC), `level` (`INFO`…), `target` (the module), `fields` (`message` and the event's
    /// own fields), and `span` / `spans` when the event happened inside a span.
    Json,
}

impl LogFormat {
    /// `text` or `json`.
    pub fn parse(text: &str) -> Option<LogFormat> {
        match text.trim() {
            "text" => Some(LogFormat::Text),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }

    /// The name [`LogFormat::parse`] takes.
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Installs the `tracing` subscriber (stderr, `settings.log_level` as filter,
/// `settings.log_format` as format) and logs the start-up warnings the settings imply. Call
/// once, before the driver starts.
pub fn init_logging(settings: &Settings) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    // The level was checked by `parse`; falling back to `info` only guards a hand-built Settings.
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    // One of the two is installed; `Option<Layer>` is a layer that does nothing when `None`.
    let (text, json) = match settings.log_format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    if tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .try_init()
        .is_ok()
    {
        let _ = LOG_FILTER.set(handle);
    }
    if settings.tag_key_generated {
        tracing::warn!(
            "no --tag-key-file: using a random tag key; tags will not survive a restart"
        );
    }
}

/// The filter [`init_logging`] installed, so a reload can change the log level in place.
static LOG_FILTER: OnceLock<tracing_subscriber::reload::Handle<EnvFilter, Registry>> =
    OnceLock::new();

/// Replaces the log level set by [`init_logging`] (SIGHUP). `Ok(false)` when this process did
/// not install siplb's logging (an embedder's own subscriber is left alone).
pub(crate) fn set_log_level(level: &str) -> Result<bool, String> {
    let Some(handle) = LOG_FILTER.get() else {
        return Ok(false);
    };
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    Ok(true)
}

/// A seed for `Balancer::new` from the OS's randomness, so two instances never share hash keys.
pub fn os_seed() -> Result<u64, RunError> {
    rand::rngs::OsRng
        .try_next_u64()
        .map_err(|e| RunError::Runtime(std::io::Error::other(e.to_string())))
}

/// The line printed to stdout at exit: `siplb-stats ` then the stats' `key=value` pairs.
pub fn stats_line(stats: &Stats) -> String {
    format!("siplb-stats {stats}")
}

/// Logs a frontend connection the driver accepted.
pub fn log_frontend_open(conn: ConnId, peer: SocketAddr) {
    tracing::info!(conn = %conn, peer = %peer, "frontend connection open");
}

/// Logs a frontend connection accepted behind an L4 balancer: `peer` is the client its PROXY
/// header announced, `proxy` the socket's own peer.
pub fn log_frontend_open_proxied(conn: ConnId, peer: SocketAddr, proxy: SocketAddr) {
    tracing::info!(conn = %conn, peer = %peer, proxy = %proxy, "frontend connection open");
}

/// Logs the end of a frontend connection.
pub fn log_frontend_closed(conn: ConnId, reason: CloseReason) {
    tracing::info!(conn = %conn, ?reason, "frontend connection closed");
}

/// A whole binary's `main`: settings from the arguments, `--check-config`, logging, then
/// `run`; prints the stats line when `run` returns them. Exit codes: 0 after a clean stop,
/// 1 if `run` failed, 2 for a bad command line or config.
pub fn main_with<E: Display>(run: impl FnOnce(Settings) -> Result<Stats, E>) -> ExitCode {
    let settings = settings_from_args();
    if settings.check_config {
        let _ = writeln!(std::io::stdout().lock(), "config ok");
        return ExitCode::SUCCESS;
    }
    init_logging(&settings);
    match run(settings) {
        Ok(stats) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", stats_line(&stats));
            let _ = out.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("siplb: {e}");
            ExitCode::FAILURE
        }
    }
}
