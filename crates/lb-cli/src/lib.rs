//! # lb-cli: the command line, config file and operator side shared by siplb's binaries
//!
//! Both drivers (`lb-tokio`, `lb-mio`) start the same way and report the same way. What they
//! use per connection (read buffer, write queue, wake pacer, output marks, PROXY headers, TLS,
//! DNS) is `lb-runtime`'s; this crate builds on it with everything that reads the settings:
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
//!   snapshot and HTTP server (module docs of [`Snapshot`]), and SIGHUP reloads. It stays here,
//!   not in `lb-runtime`, because it holds the [`Settings`] and rereads them, and starts the
//!   metrics and admin servers: all of its dependencies are this crate's.
//! - [`stats_line`]: the `siplb-stats …` line printed at exit.
//! - [`main_with`]: the whole `main` of a binary around a driver's `run`.
//! - [`run_workers`]: the process around a driver's per-worker loop (`--workers`): signals,
//!   listeners bound with `SO_REUSEPORT`, one metrics server, reloads handed to every worker,
//!   the workers' counters summed at exit.
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

#![warn(missing_docs)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]

pub mod admin;
mod admin_backends;
mod admin_hub;
pub mod ctl;
mod heap_trim;
mod metrics;
mod ops;
mod settings;
mod workers;

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::OnceLock;

use lb_core::Stats;
// Inside this crate `crate::RunError` names the runtime's; drivers import it from there.
use lb_runtime::RunError;
use tracing_subscriber::{EnvFilter, Registry};

pub use metrics::{Snapshot, PUBLISH_EVERY};

pub use ops::{reload, Noise, Ops, RateLimiter, NOISE_LINES_MAX, NOISE_WINDOW};
pub use settings::{command, parse, read_tag_keys, CliError, Settings};
pub use workers::{bind_listener, run_workers, sum, Command, Commander, Control, Worker};

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

/// The line printed to stdout at exit: `siplb-stats ` then the stats' `key=value` pairs.
pub fn stats_line(stats: &Stats) -> String {
    format!("siplb-stats {stats}")
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
    heap_trim::pin_malloc_thresholds();
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
