//! Flags and the TOML file, merged into one [`Settings`].
//!
//! Every value arrives as text (or a TOML number) and is parsed here, so a flag and the same key
//! in the file fail with the same one-line message naming the key. Flags override the file;
//! a repeatable flag (`--listen`, `--backend`) given at all replaces the file's whole list,
//! because merging two lists of backends has no obvious meaning.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use lb_core::{
    Algorithm, BackendConfig, BackendMode, Config, ConfigError, ProbeConfig, TagKey, ValidConfig,
};
use rand::TryRngCore;
use serde::Deserialize;

/// Everything a binary needs to start: the core's validated configuration plus the drivers'
/// own knobs. Built once by [`parse`] or [`crate::settings_from_args`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// The core's configuration, already validated.
    pub core: ValidConfig,
    /// A `tracing` `EnvFilter` directive, already checked (`info` by default).
    pub log_level: String,
    /// Validate, print `config ok`, exit 0 without binding anything.
    pub check_config: bool,
    /// Bytes a connection may have queued for writing at most: a frontend past it is closed,
    /// a message to a backend past it is dropped ([`lb_runtime::backpressure`]).
    pub output_cap_bytes: usize,
    /// `--output-high-water`: a connection's queue past this holds a backend (no new calls) or
    /// pauses a frontend (not read, sent nothing) until it is below the low-water mark.
    pub output_high_water_bytes: usize,
    /// `--output-low-water`: where a held backend or paused frontend is released.
    pub output_low_water_bytes: usize,
    /// No key file was given, so the tag key was made at start; tags issued now will not verify
    /// after a restart. [`crate::init_logging`] warns about it.
    pub tag_key_generated: bool,
    /// `--metrics`: where to serve `/metrics` and `/health`.
    pub metrics: Option<SocketAddr>,
    /// `--batch-window`: under load, the least time between two wake-ups of the event loop
    /// ([`lb_runtime::WakePacer`]); zero wakes for every message.
    pub batch_window: Duration,
    /// Certificates for the TLS listeners (`--listen-tls`), when there are any.
    pub tls: Option<lb_runtime::tls::TlsSettings>,
    /// What TLS backends (`--backend ADDR,tls`) are verified with, when there are any.
    pub backend_tls: Option<lb_runtime::tls::BackendTlsSettings>,
    /// `--log-format`: human text (default) or JSON lines.
    pub log_format: crate::LogFormat,
    /// `--admin` and `--admin-token-file`: the admin API ([`crate::admin`]).
    pub admin: crate::admin::AdminSettings,
    /// `--workers`: balancer cores, one per thread, each with its own event loop, listeners
    /// (`SO_REUSEPORT`), backend connections and new-call table; at least 1 (default: one per
    /// available core). Changes only at a restart.
    pub workers: usize,
    /// `--proxy-protocol`: every frontend connection accepted on a `--listen` (plain)
    /// listener must open with a PROXY protocol v1 or v2 header, whose client address then
    /// stands for the peer's. Changes only at a restart.
    pub proxy_protocol: bool,
    /// Backends configured by DNS name (`lb_runtime::named`), with what they resolved to; their
    /// addresses are among `core`'s backends.
    pub named: Vec<lb_runtime::named::NamedBackend>,
    /// `--resolve-interval`: how often backend names are resolved again.
    pub resolve_interval: Duration,
    /// The `--listen-tls ADDR,proxy-protocol` listeners: their connections open with a PROXY
    /// header, then the TLS ClientHello. Changes only at a restart.
    pub proxy_protocol_tls: Vec<SocketAddr>,
    /// The command line as given, so [`Settings::reload`] can merge it with the file again.
    args: Args,
}

impl Settings {
    /// Rereads the config file named by `--config` and merges it with the original command
    /// line again (flags still win), for SIGHUP. Without `--config` the result equals the
    /// running settings: a reload changes nothing then.
    ///
    /// A key file is reread too (key rotation). A key made at start because no key file was
    /// given is kept, so tags issued before the reload still verify after it. Listeners,
    /// `--metrics` and `--batch-window` take effect only at a restart; the drivers warn when the
    /// file changes them ([`crate::Ops::reload`], which also applies a new log level).
    pub fn reload(&self) -> Result<Settings, CliError> {
        let file = match &self.args.config {
            Some(path) => Some((read_file(path)?, path.clone())),
            None => None,
        };
        let keys = self
            .tag_key_generated
            .then(|| self.core.config().tag_keys.as_slice());
        merge(self.args.clone(), file, keys)
    }

    /// The file given with `--config`, which [`Settings::reload`] rereads.
    pub fn config_file(&self) -> Option<&Path> {
        self.args.config.as_deref()
    }
}

/// The command line's definition (both binaries share it; `name` is the binary's), for man
/// pages and shell completions (`cargo xtask dist`).
pub fn command(name: &'static str) -> clap::Command {
    use clap::CommandFactory as _;
    Args::command().name(name).bin_name(name)
}

/// Why the command line or config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// clap's own verdict (bad flag, `--help`, `--version`); [`clap::Error::exit`] prints it and
    /// exits with clap's code (2 for usage errors, 0 for help).
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// A value that does not parse, or a file that cannot be read.
    #[error("{key}: {reason}")]
    Invalid {
        /// The flag / config key at fault, without dashes.
        key: &'static str,
        /// What was wrong, one line.
        reason: String,
    },
    /// The core's validation refused the merged configuration.
    #[error("{0}")]
    Config(#[from] ConfigError),
}

impl From<lb_runtime::InvalidSetting> for CliError {
    fn from(e: lb_runtime::InvalidSetting) -> CliError {
        CliError::Invalid {
            key: e.key,
            reason: e.reason,
        }
    }
}

impl From<&Settings> for lb_runtime::backpressure::Watermarks {
    fn from(settings: &Settings) -> lb_runtime::backpressure::Watermarks {
        lb_runtime::backpressure::Watermarks {
            high: settings.output_high_water_bytes,
            low: settings.output_low_water_bytes,
            ceiling: settings.output_cap_bytes,
        }
    }
}

impl CliError {
    pub(crate) fn invalid(key: &'static str, reason: impl Into<String>) -> CliError {
        CliError::Invalid {
            key,
            reason: reason.into(),
        }
    }

    /// The config key at fault (`backend`, `window`, `limits.headers-max`…); `None` for clap's
    /// usage errors.
    pub fn key(&self) -> Option<String> {
        let key = match self {
            CliError::Usage(_) => return None,
            CliError::Invalid { key, .. } => key,
            CliError::Config(e) => match e {
                ConfigError::NoListener => "listen",
                ConfigError::NoBackend
                | ConfigError::DuplicateBackend(_)
                | ConfigError::UnknownBackup { .. } => "backend",
                ConfigError::TooMany { key, .. } => key,
                ConfigError::NoTagKey
                | ConfigError::ShortTagKey(_)
                | ConfigError::DuplicateTagKey(_) => "tag-keys",
                ConfigError::ZeroDuration(key) => key,
                ConfigError::ZeroLimit(key) => return Some(format!("limits.{key}")),
                ConfigError::BadAdvertise(_) => "advertise",
                ConfigError::BadTagHeader(_) => "tag-header",
                ConfigError::ReconnectRange => "reconnect-max",
                ConfigError::ProbeTimeout => "probe-timeout",
                ConfigError::TooLong(key) => key,
                ConfigError::Percent(key) | ConfigError::Zero(key) => key,
            },
        };
        Some((*key).to_string())
    }
}

/// Parses a command line (the first item is the program name) and the config file it names.
///
/// Without `--tag-key-file` this draws a fresh tag key from the OS, so two calls give different
/// keys.
pub fn parse<I, T>(args: I) -> Result<Settings, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args = Args::try_parse_from(args)?;
    let file = match &args.config {
        Some(path) => Some((read_file(path)?, path.clone())),
        None => None,
    };
    merge(args, file, None)
}

/// Reads a tag key file: one key per line as `ID:HEXSECRET`, blank lines and lines starting with
/// `#` skipped. The first key signs new tags; the others still verify (rotation).
pub fn read_tag_keys(path: &Path) -> Result<Vec<TagKey>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::invalid("tag-key-file", format!("{}: {e}", path.display())))?;
    parse_tag_keys(&text).map_err(|reason| {
        CliError::invalid("tag-key-file", format!("{}: {reason}", path.display()))
    })
}

/// The command line. Every value is taken as text and parsed by this module so that flags and
/// file keys share their error messages.
#[derive(Clone, Debug, Parser)]
#[command(name = "siplb", version, about = "A SIP load balancer over TCP")]
struct Args {
    /// TOML config file; flags override its keys
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to accept frontend connections on (repeatable)
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Log every message of this Call-ID with its route decision (repeatable)
    #[arg(long, value_name = "ID")]
    trace_call_id: Vec<String>,
    /// Address to accept TLS frontend connections on (repeatable); `,proxy-protocol`: its
    /// connections open with a PROXY v1/v2 header before the TLS ClientHello
    #[arg(long, value_name = "ADDR[,proxy-protocol]")]
    listen_tls: Vec<String>,
    /// PEM certificate chain for TLS listeners; repeat with --tls-key in pairs, chosen by SNI
    #[arg(long, value_name = "FILE")]
    tls_cert: Vec<PathBuf>,
    /// PEM private key of the --tls-cert at the same position
    #[arg(long, value_name = "FILE")]
    tls_key: Vec<PathBuf>,
    /// CA bundle client certificates must chain to [default: no client certificates]
    #[arg(long, value_name = "FILE")]
    tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: refuse clients without a certificate, or accept them [default: required]
    #[arg(long, value_name = "required|optional")]
    tls_client_auth: Option<String>,
    /// CA bundle TLS backends' certificates must chain to (needed with `--backend ADDR,tls`)
    #[arg(long, value_name = "FILE")]
    tls_backend_ca: Option<PathBuf>,
    /// Client certificate chain presented to TLS backends that ask for one
    #[arg(long, value_name = "FILE")]
    tls_backend_cert: Option<PathBuf>,
    /// Private key of --tls-backend-cert
    #[arg(long, value_name = "FILE")]
    tls_backend_key: Option<PathBuf>,
    /// host[:port] written into Record-Route and Via toward TLS frontends [default: the first
    /// --listen-tls address]
    #[arg(long, value_name = "HOST[:PORT]")]
    advertise_tls: Option<String>,
    /// A backend (repeatable)
    #[arg(
        long,
        value_name = "ADDR[,weight=N][,mode=plain|envelope][,backup=ADDR]"
    )]
    backend: Vec<String>,
    /// Mode of backends that do not name one [default: plain]
    #[arg(long, value_name = "plain|envelope")]
    backend_mode: Option<String>,
    /// How new calls pick a backend [default: round-robin]
    #[arg(long, value_name = "round-robin|weighted|least-loaded")]
    algorithm: Option<String>,
    /// New-call table window in seconds, fractions allowed [default: 32]
    #[arg(long, value_name = "SECS")]
    window: Option<String>,
    /// Longest ringing time in seconds that keeps a table entry [default: 180]
    #[arg(long, value_name = "SECS")]
    ringing_max: Option<String>,
    /// host[:port] written into Record-Route and Via [default: the first listen address]
    #[arg(long, value_name = "HOST[:PORT]")]
    advertise: Option<String>,
    /// host[:port] of the balancer as backends reach it, in the Record-Route they see
    /// [default: --advertise]
    #[arg(long, value_name = "HOST[:PORT]")]
    advertise_backend: Option<String>,
    /// Tag keys, one `ID:HEXSECRET` per line, the first signs [default: a random key]
    #[arg(long, value_name = "FILE")]
    tag_key_file: Option<PathBuf>,
    /// Also carry the tag in this extension header
    #[arg(long, value_name = "NAME")]
    tag_header: Option<String>,
    /// tracing filter directive, e.g. `info` or `lb_core=debug` [default: info]
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Validate the configuration, print "config ok" and exit
    #[arg(long)]
    check_config: bool,
    /// Forward initial requests without the edge checks (From tag, host, URI and header
    /// lengths) [default: checked, see the `[sanity]` table]
    #[arg(long)]
    no_sanity_checks: bool,
    /// Bytes queued for one connection at most: a frontend past it is closed, a message to a
    /// backend past it dropped [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    output_cap: Option<String>,
    /// Queued bytes past which a backend gets no new calls (its calls stay) and a frontend is
    /// not read and sent nothing [default: 262144]
    #[arg(long, value_name = "BYTES")]
    output_high_water: Option<String>,
    /// Queued bytes below which a held backend or paused frontend is released [default: 65536]
    #[arg(long, value_name = "BYTES")]
    output_low_water: Option<String>,
    /// Close a connection whose queue stays over the high-water mark for SECS (its peer stopped
    /// reading) [default: 32]
    #[arg(long, value_name = "SECS")]
    stall_timeout: Option<String>,
    /// Probe each backend with SIP OPTIONS every SECS (enables probes) [default: no probes]
    #[arg(long, value_name = "SECS")]
    probe_interval: Option<String>,
    /// A probe unanswered this long fails [default: 2, at most the interval]
    #[arg(long, value_name = "SECS")]
    probe_timeout: Option<String>,
    /// Consecutive failed probes that take a backend down [default: 3]
    #[arg(long, value_name = "N")]
    probe_failures: Option<String>,
    /// Consecutive passed probes that bring a probed-down backend back [default: 2]
    #[arg(long, value_name = "N")]
    probe_successes: Option<String>,
    /// Close a frontend connection that sends nothing for SECS [default: 900]
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<String>,
    /// Close a frontend connection holding part of a message for SECS [default: 10]
    #[arg(long, value_name = "SECS")]
    partial_timeout: Option<String>,
    /// No new calls for SECS to a backend that answered one with 503 without Retry-After
    /// [default: 5]
    #[arg(long, value_name = "SECS")]
    overload_hold: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics and readiness at /health
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Under load, wake at most once per SECS and handle all that arrived meanwhile: fewer
    /// syscalls per call, at most SECS of added delay; 0 wakes for every message [default: 0.002]
    #[arg(long, value_name = "SECS")]
    batch_window: Option<String>,
    /// Log line format: `text` for people, `json` (one object per line) for collectors
    /// [default: text]
    #[arg(long, value_name = "text|json")]
    log_format: Option<String>,
    /// Serve the admin API (JSON over HTTP) at ADDR; loopback only unless --admin-token-file
    #[arg(long, value_name = "ADDR")]
    admin: Option<String>,
    /// A bearer token (the file's first line) every admin request must present
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Balancer cores, one per thread, sharing the listen ports (SO_REUSEPORT) [default: one
    /// per available core]
    #[arg(long, value_name = "N")]
    workers: Option<String>,
    /// Frontend connections open with a PROXY protocol v1/v2 header (HAProxy, AWS NLB); its
    /// client address stands for the peer's, and a connection without one is closed
    #[arg(long)]
    proxy_protocol: bool,
    /// Seconds between two resolutions of the backends given by DNS name [default: 30]
    #[arg(long, value_name = "SECS")]
    resolve_interval: Option<String>,
}

/// The TOML file; keys mirror the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    listen: Vec<String>,
    trace_call_id: Vec<String>,
    listen_tls: Vec<String>,
    advertise_tls: Option<String>,
    tls: FileTls,
    backend: Vec<FileBackend>,
    backend_mode: Option<String>,
    algorithm: Option<String>,
    window: Option<f64>,
    ringing_max: Option<f64>,
    retry_after: Option<f64>,
    reconnect_min: Option<f64>,
    reconnect_max: Option<f64>,
    advertise: Option<String>,
    advertise_backend: Option<String>,
    tag_key_file: Option<PathBuf>,
    tag_header: Option<String>,
    log_level: Option<String>,
    output_cap: Option<u64>,
    output_high_water: Option<u64>,
    output_low_water: Option<u64>,
    stall_timeout: Option<f64>,
    probe_interval: Option<f64>,
    probe_timeout: Option<f64>,
    probe_failures: Option<u32>,
    probe_successes: Option<u32>,
    idle_timeout: Option<f64>,
    partial_timeout: Option<f64>,
    overload_hold: Option<f64>,
    overload_hold_max: Option<f64>,
    metrics: Option<String>,
    batch_window: Option<f64>,
    log_format: Option<String>,
    admin: Option<String>,
    admin_token_file: Option<PathBuf>,
    workers: Option<u32>,
    proxy_protocol: Option<bool>,
    resolve_interval: Option<f64>,
    limits: FileLimits,
    sanity: FileSanity,
    unanswered_timeout: Option<f64>,
    unanswered_to_down: Option<u32>,
    unanswered_hold: Option<f64>,
}

/// The `[sanity]` table: the core's [`lb_core::SanityLimits`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct FileSanity {
    enabled: Option<bool>,
    host_bytes_max: Option<usize>,
    uri_bytes_max: Option<usize>,
    field_bytes_max: Option<usize>,
}

/// One `[[backend]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileBackend {
    addr: String,
    weight: Option<u32>,
    mode: Option<String>,
    backup: Option<String>,
    #[serde(default)]
    draining: bool,
    tls: Option<toml::Value>,
}

/// The `[tls]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct FileTls {
    /// `[[tls.cert]]` tables.
    cert: Vec<FileCert>,
    client_ca: Option<PathBuf>,
    client_auth: Option<String>,
    backend_ca: Option<PathBuf>,
    backend_cert: Option<PathBuf>,
    backend_key: Option<PathBuf>,
}

/// One `[[tls.cert]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileCert {
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    names: Vec<String>,
}

/// The `[limits]` table: the core's [`lb_core::Limits`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
struct FileLimits {
    message_bytes_max: Option<usize>,
    headers_max: Option<usize>,
    buffered_bytes_max: Option<usize>,
    frontends_max: Option<usize>,
    table_capacity: Option<usize>,
    dial_outs_max: Option<usize>,
    dial_queue_max: Option<usize>,
    table_share_percent: Option<u32>,
    table_share_per_ip_percent: Option<u32>,
    frontends_per_ip_max: Option<usize>,
    frontends_reserve_percent: Option<u32>,
    frontend_evict_idle: Option<f64>,
}

/// A backend whose mode may still come from the `backend-mode` default.
struct PartialBackend {
    config: BackendConfig,
    mode: Option<BackendMode>,
    /// Given by DNS name; `config.addr` is a placeholder then.
    name: Option<DnsName>,
}

/// A backend's host name: (as written, host, port).
type DnsName = (String, String, Option<u16>);

/// A backend's `addr`: `IP:PORT`, or a DNS name (`lb_runtime::named`) with a placeholder address.
fn backend_addr(text: &str) -> Result<(SocketAddr, Option<DnsName>), CliError> {
    match (
        parse_addr("backend", text),
        lb_runtime::named::parse_name(text),
    ) {
        (Ok(addr), _) => Ok((addr, None)),
        (Err(_), Some((host, port))) => Ok((
            SocketAddr::from(([0, 0, 0, 0], 0)),
            Some((text.trim().to_string(), host, port)),
        )),
        (Err(e), None) => Err(CliError::invalid(
            "backend",
            format!(
                "{}, nor a host name",
                e.to_string().trim_start_matches("backend: ")
            ),
        )),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::invalid("config", format!("{}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| {
        let line = e.span().map(|s| {
            text.as_bytes()[..s.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1
        });
        let message = e.message().replace('\n', " ");
        let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
        CliError::invalid("config", format!("{}{at}: {message}", path.display()))
    })
}

/// `previous_keys`: on a reload without a key file, the key made at start (kept, not redrawn).
fn merge(
    args: Args,
    file: Option<(FileConfig, PathBuf)>,
    previous_keys: Option<&[TagKey]>,
) -> Result<Settings, CliError> {
    let kept = args.clone();
    let (file, file_path) = match file {
        Some((f, p)) => (f, Some(p)),
        None => (FileConfig::default(), None),
    };
    let mut core = Config::default();

    let listen = if args.listen.is_empty() {
        &file.listen
    } else {
        &args.listen
    };
    core.listeners = listen
        .iter()
        .map(|a| parse_addr("listen", a))
        .collect::<Result<_, _>>()?;
    let listen_tls = if args.listen_tls.is_empty() {
        &file.listen_tls
    } else {
        &args.listen_tls
    };
    let listen_tls = listen_tls
        .iter()
        .map(|a| parse_tls_listener(a))
        .collect::<Result<Vec<_>, _>>()?;
    core.tls_listeners = listen_tls.iter().map(|(addr, _)| *addr).collect();
    let proxy_protocol_tls = listen_tls
        .iter()
        .filter(|(_, proxied)| *proxied)
        .map(|(addr, _)| *addr)
        .collect();
    core.advertise_tls = args.advertise_tls.clone().or(file.advertise_tls.clone());
    core.trace_call_ids = if args.trace_call_id.is_empty() {
        file.trace_call_id.clone()
    } else {
        args.trace_call_id.clone()
    };
    let tls = merge_tls(
        &args,
        &file,
        file_path.as_deref(),
        !core.tls_listeners.is_empty(),
    )?;

    let default_mode = match args
        .backend_mode
        .as_deref()
        .or(file.backend_mode.as_deref())
    {
        Some(m) => parse_mode("backend-mode", m)?,
        None => BackendMode::Plain,
    };
    let backends: Vec<PartialBackend> = if args.backend.is_empty() {
        file.backend
            .iter()
            .map(file_backend)
            .collect::<Result<_, _>>()?
    } else {
        args.backend
            .iter()
            .map(|s| parse_backend(s))
            .collect::<Result<_, _>>()?
    };
    let mut named = Vec::new();
    core.backends = Vec::new();
    for b in backends {
        let config = BackendConfig {
            mode: b.mode.unwrap_or(default_mode),
            ..b.config
        };
        match b.name {
            Some((name, host, port)) => {
                if named
                    .iter()
                    .any(|n: &lb_runtime::named::NamedBackend| n.name == name)
                {
                    return Err(CliError::invalid(
                        "backend",
                        format!("{name} is given twice"),
                    ));
                }
                named.push(lb_runtime::named::NamedBackend::new(
                    name, host, port, config,
                ));
            }
            None => core.backends.push(config),
        }
    }
    if !named.is_empty() {
        let resolver = lb_runtime::named::SystemResolver::new()
            .map_err(|e| CliError::invalid("backend", format!("no resolver: {e}")))?;
        for b in lb_runtime::named::resolve_all(&mut named, &resolver) {
            // An address given both ways is one backend, configured as its address says.
            if !core.backends.iter().any(|c| c.addr == b.addr) {
                core.backends.push(b);
            }
        }
    }
    let resolve_interval = pick_secs(
        "resolve-interval",
        args.resolve_interval.as_deref(),
        file.resolve_interval,
    )?
    .unwrap_or(lb_runtime::named::RESOLVE_INTERVAL);
    if resolve_interval < Duration::from_millis(100) {
        return Err(CliError::invalid(
            "resolve-interval",
            "at least 0.1 seconds",
        ));
    }

    let backend_tls = merge_backend_tls(
        &args,
        &file,
        file_path.as_deref(),
        core.backends.iter().any(|b| b.tls.is_some()),
    )?;

    if let Some(a) = args.algorithm.as_deref().or(file.algorithm.as_deref()) {
        core.algorithm = parse_algorithm(a)?;
    }
    if let Some(d) = pick_secs("window", args.window.as_deref(), file.window)? {
        core.window = d;
    }
    if let Some(d) = pick_secs("ringing-max", args.ringing_max.as_deref(), file.ringing_max)? {
        core.ringing_max = d;
    }
    for (key, flag, value, slot) in [
        ("retry-after", None, file.retry_after, &mut core.retry_after),
        (
            "reconnect-min",
            None,
            file.reconnect_min,
            &mut core.reconnect_min,
        ),
        (
            "reconnect-max",
            None,
            file.reconnect_max,
            &mut core.reconnect_max,
        ),
        (
            "idle-timeout",
            args.idle_timeout.as_deref(),
            file.idle_timeout,
            &mut core.idle_timeout,
        ),
        (
            "partial-timeout",
            args.partial_timeout.as_deref(),
            file.partial_timeout,
            &mut core.partial_timeout,
        ),
        (
            "overload-hold",
            args.overload_hold.as_deref(),
            file.overload_hold,
            &mut core.overload_hold,
        ),
        (
            "overload-hold-max",
            None,
            file.overload_hold_max,
            &mut core.overload_hold_max,
        ),
        (
            "stall-timeout",
            args.stall_timeout.as_deref(),
            file.stall_timeout,
            &mut core.stall_timeout,
        ),
    ] {
        if let Some(d) = pick_secs(key, flag, value)? {
            *slot = d;
        }
    }
    core.probe = merge_probe(&args, &file)?;
    core.advertise = args.advertise.or(file.advertise);
    core.advertise_backend = args.advertise_backend.or(file.advertise_backend);
    core.tag_header = args.tag_header.or(file.tag_header);

    let l = &mut core.limits;
    let fl = &file.limits;
    for (value, slot) in [
        (fl.message_bytes_max, &mut l.message_bytes_max),
        (fl.headers_max, &mut l.headers_max),
        (fl.buffered_bytes_max, &mut l.buffered_bytes_max),
        (fl.frontends_max, &mut l.frontends_max),
        (fl.table_capacity, &mut l.table_capacity),
        (fl.dial_outs_max, &mut l.dial_outs_max),
        (fl.dial_queue_max, &mut l.dial_queue_max),
    ] {
        if let Some(v) = value {
            *slot = v;
        }
    }
    if let Some(v) = fl.table_share_percent {
        l.table_share_percent = v;
    }
    if let Some(v) = fl.table_share_per_ip_percent {
        l.table_share_per_ip_percent = v;
    }
    if let Some(v) = fl.frontends_per_ip_max {
        l.frontends_per_ip_max = v;
    }
    if let Some(v) = fl.frontends_reserve_percent {
        l.frontends_reserve_percent = v;
    }
    if let Some(d) = pick_secs("limits.frontend-evict-idle", None, fl.frontend_evict_idle)? {
        l.frontend_evict_idle = d;
    }
    let passive = &mut core.passive;
    if let Some(d) = pick_secs("unanswered-timeout", None, file.unanswered_timeout)? {
        passive.unanswered_timeout = d;
    }
    if let Some(d) = pick_secs("unanswered-hold", None, file.unanswered_hold)? {
        passive.hold = d;
    }
    if let Some(n) = file.unanswered_to_down {
        passive.unanswered_to_down = n;
    }
    let (sanity, fs) = (&mut core.sanity, &file.sanity);
    sanity.enabled = fs.enabled.unwrap_or(true) && !args.no_sanity_checks;
    for (value, slot) in [
        (fs.host_bytes_max, &mut sanity.host_bytes_max),
        (fs.uri_bytes_max, &mut sanity.uri_bytes_max),
        (fs.field_bytes_max, &mut sanity.field_bytes_max),
    ] {
        if let Some(v) = value {
            *slot = v;
        }
    }

    // A key file named in the config file is relative to that file, so a config directory can
    // be moved as a whole.
    let key_file = match (args.tag_key_file, file.tag_key_file) {
        (Some(p), _) => Some(p),
        (None, Some(p)) => Some(match file_path.as_deref().and_then(Path::parent) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        }),
        (None, None) => None,
    };
    let tag_key_generated = key_file.is_none();
    core.tag_keys = match (key_file, previous_keys) {
        (Some(path), _) => read_tag_keys(&path)?,
        (None, Some(keys)) => keys.to_vec(),
        (None, None) => vec![random_tag_key()?],
    };

    let log_level = args
        .log_level
        .or(file.log_level)
        .unwrap_or_else(|| "info".to_string());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log_level) {
        return Err(CliError::invalid(
            "log-level",
            format!("{log_level:?}: {e}"),
        ));
    }

    let output_cap_bytes = match (args.output_cap, file.output_cap) {
        (Some(s), _) => parse_bytes("output-cap", &s)?,
        (None, Some(n)) => usize::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| CliError::invalid("output-cap", format!("{n} is out of range")))?,
        (None, None) => OUTPUT_CAP_DEFAULT,
    };
    let (output_high_water_bytes, output_low_water_bytes) = merge_watermarks(
        (args.output_high_water.as_ref(), file.output_high_water),
        (args.output_low_water.as_ref(), file.output_low_water),
        output_cap_bytes,
    )?;

    let metrics = match args.metrics.as_deref().or(file.metrics.as_deref()) {
        Some(a) => Some(parse_addr("metrics", a)?),
        None => None,
    };

    let batch_window = pick_secs(
        "batch-window",
        args.batch_window.as_deref(),
        file.batch_window,
    )?
    .unwrap_or(BATCH_WINDOW_DEFAULT);
    if batch_window > BATCH_WINDOW_MAX {
        return Err(CliError::invalid(
            "batch-window",
            format!(
                "{} s is more than the {} s a SIP hop should add",
                batch_window.as_secs_f64(),
                BATCH_WINDOW_MAX.as_secs_f64()
            ),
        ));
    }

    let log_format = match args.log_format.as_deref().or(file.log_format.as_deref()) {
        Some(text) => crate::LogFormat::parse(text).ok_or_else(|| {
            CliError::invalid("log-format", format!("{text:?} is not text or json"))
        })?,
        None => crate::LogFormat::Text,
    };
    let admin = match args.admin.as_deref().or(file.admin.as_deref()) {
        Some(a) => Some(parse_addr("admin", a)?),
        None => None,
    };
    let token_file = relative_to(
        args.admin_token_file,
        file.admin_token_file,
        file_path.as_deref(),
    );
    let admin = crate::admin::AdminSettings::new(admin, token_file.as_deref())?;
    let workers = match pick_count("workers", args.workers.as_deref(), file.workers)? {
        Some(n) => n as usize,
        None => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
    };
    if workers > WORKERS_MAX {
        return Err(CliError::invalid(
            "workers",
            format!("{workers} is more than {WORKERS_MAX}"),
        ));
    }
    // The plain listeners'; each TLS listener says for itself (`ADDR,proxy-protocol`).
    let proxy_protocol = args.proxy_protocol || file.proxy_protocol.unwrap_or(false);
    // A frontend connection alone from its IP in one worker is not alone in the process.
    core.hop_by_unique_ip = workers == 1;

    Ok(Settings {
        core: core.validate()?,
        log_level,
        check_config: args.check_config,
        output_cap_bytes,
        output_high_water_bytes,
        output_low_water_bytes,
        tag_key_generated,
        metrics,
        batch_window,
        tls,
        backend_tls,
        log_format,
        admin,
        workers,
        proxy_protocol,
        named,
        resolve_interval,
        proxy_protocol_tls,
        args: kept,
    })
}

/// What TLS backends are verified with: a CA is required once a backend asks for TLS (a
/// connection to a backend nobody can verify is no better than TCP), a client certificate is
/// optional. Loaded once here so a bad file fails the start with its name.
fn merge_backend_tls(
    args: &Args,
    file: &FileConfig,
    file_path: Option<&Path>,
    wanted: bool,
) -> Result<Option<lb_runtime::tls::BackendTlsSettings>, CliError> {
    let relative = |p: &PathBuf| match file_path.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.clone(),
    };
    let ca = args
        .tls_backend_ca
        .clone()
        .or_else(|| file.tls.backend_ca.as_ref().map(relative));
    let cert = args
        .tls_backend_cert
        .clone()
        .or_else(|| file.tls.backend_cert.as_ref().map(relative));
    let key = args
        .tls_backend_key
        .clone()
        .or_else(|| file.tls.backend_key.as_ref().map(relative));
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(CliError::invalid(
                "tls-backend-key",
                "tls-backend-cert and tls-backend-key go together",
            ))
        }
    };
    if !wanted {
        return Ok(None);
    }
    let Some(ca) = ca else {
        return Err(CliError::invalid(
            "tls-backend-ca",
            "a backend with tls needs a CA to verify it against",
        ));
    };
    let settings = lb_runtime::tls::BackendTlsSettings { ca, client_cert };
    lb_runtime::tls::backend_client_config(&settings)?;
    Ok(Some(settings))
}

/// The TLS settings of `--listen-tls` listeners: flags' pairs replace the file's `[[tls.cert]]`
/// list; paths in the file are relative to it. Every file is loaded once here, so a bad one
/// fails `--check-config` and the start with its name.
fn merge_tls(
    args: &Args,
    file: &FileConfig,
    file_path: Option<&Path>,
    listening: bool,
) -> Result<Option<lb_runtime::tls::TlsSettings>, CliError> {
    use lb_runtime::tls::{CertPair, ClientAuth, TlsSettings};
    let relative = |p: &PathBuf| match file_path.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.clone(),
    };
    if args.tls_cert.len() != args.tls_key.len() {
        return Err(CliError::invalid(
            "tls-key",
            format!(
                "{} --tls-cert but {} --tls-key: give them in pairs",
                args.tls_cert.len(),
                args.tls_key.len()
            ),
        ));
    }
    let certs: Vec<CertPair> = if args.tls_cert.is_empty() {
        file.tls
            .cert
            .iter()
            .map(|c| CertPair {
                cert: relative(&c.cert),
                key: relative(&c.key),
                names: c.names.clone(),
            })
            .collect()
    } else {
        args.tls_cert
            .iter()
            .zip(&args.tls_key)
            .map(|(cert, key)| CertPair {
                cert: cert.clone(),
                key: key.clone(),
                names: Vec::new(),
            })
            .collect()
    };
    let client_ca = args
        .tls_client_ca
        .clone()
        .or_else(|| file.tls.client_ca.as_ref().map(relative));
    let client_auth = match args
        .tls_client_auth
        .as_deref()
        .or(file.tls.client_auth.as_deref())
    {
        None | Some("required") => ClientAuth::Required,
        Some("optional") => ClientAuth::Optional,
        Some(other) => {
            return Err(CliError::invalid(
                "tls-client-auth",
                format!("{other:?} is not required or optional"),
            ))
        }
    };
    if !listening {
        if !certs.is_empty() || client_ca.is_some() {
            return Err(CliError::invalid(
                "tls-cert",
                "certificates given but no --listen-tls address",
            ));
        }
        return Ok(None);
    }
    let settings = TlsSettings {
        certs,
        client_ca,
        client_auth,
    };
    lb_runtime::tls::Tls::load(&settings)?;
    Ok(Some(settings))
}

/// The flag's path, else the file's, which is relative to the config file.
fn relative_to(
    flag: Option<PathBuf>,
    file: Option<PathBuf>,
    config: Option<&Path>,
) -> Option<PathBuf> {
    match (flag, file) {
        (Some(p), _) => Some(p),
        (None, Some(p)) => Some(match config.and_then(Path::parent) {
            Some(dir) if p.is_relative() => dir.join(p),
            _ => p,
        }),
        (None, None) => None,
    }
}

/// Probes are on when an interval is given; the other probe keys refine them and are refused
/// without it, since they would silently do nothing.
fn merge_probe(args: &Args, file: &FileConfig) -> Result<Option<ProbeConfig>, CliError> {
    let interval = pick_secs(
        "probe-interval",
        args.probe_interval.as_deref(),
        file.probe_interval,
    )?;
    let timeout = pick_secs(
        "probe-timeout",
        args.probe_timeout.as_deref(),
        file.probe_timeout,
    )?;
    let failures = pick_count(
        "probe-failures",
        args.probe_failures.as_deref(),
        file.probe_failures,
    )?;
    let successes = pick_count(
        "probe-successes",
        args.probe_successes.as_deref(),
        file.probe_successes,
    )?;
    let Some(interval) = interval else {
        let given = [
            ("probe-timeout", timeout.is_some()),
            ("probe-failures", failures.is_some()),
            ("probe-successes", successes.is_some()),
        ];
        return match given.iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(CliError::invalid(
                key,
                "probes are off without probe-interval",
            )),
            None => Ok(None),
        };
    };
    let default = ProbeConfig::default();
    Ok(Some(ProbeConfig {
        interval,
        // The default timeout must not exceed a short interval the operator chose.
        timeout: timeout.unwrap_or(default.timeout.min(interval)),
        failures_to_down: failures.unwrap_or(default.failures_to_down),
        successes_to_up: successes.unwrap_or(default.successes_to_up),
    }))
}

/// The flag's text if given, else the file's number; a positive count.
fn pick_count(
    key: &'static str,
    flag: Option<&str>,
    file: Option<u32>,
) -> Result<Option<u32>, CliError> {
    let n = match (flag, file) {
        (Some(text), _) => text.trim().parse::<u32>().map_err(|_| {
            CliError::invalid(key, format!("{text:?} is not a positive whole number"))
        })?,
        (None, Some(n)) => n,
        (None, None) => return Ok(None),
    };
    if n == 0 {
        return Err(CliError::invalid(key, "must be at least 1"));
    }
    Ok(Some(n))
}

fn file_backend(b: &FileBackend) -> Result<PartialBackend, CliError> {
    let (addr, name) = backend_addr(&b.addr)?;
    let mut config = BackendConfig::plain(addr);
    if let Some(w) = b.weight {
        config.weight = w;
    }
    if let Some(backup) = &b.backup {
        config.backup = Some(parse_addr("backend", backup)?);
    }
    config.draining = b.draining;
    // `tls = true` checks the certificate for the address, `tls = "NAME"` for that name.
    config.tls = match &b.tls {
        None | Some(toml::Value::Boolean(false)) => None,
        Some(toml::Value::Boolean(true)) => Some(match &name {
            Some((_, host, _)) => host.clone(),
            None => config.addr.ip().to_string(),
        }),
        Some(toml::Value::String(name)) => Some(name.clone()),
        Some(other) => {
            return Err(CliError::invalid(
                "backend",
                format!("tls = {other}: true, false or a name"),
            ))
        }
    };
    let mode = b
        .mode
        .as_deref()
        .map(|m| parse_mode("backend", m))
        .transpose()?;
    Ok(PartialBackend { config, mode, name })
}

/// `ADDR[,weight=N][,mode=plain|envelope][,backup=ADDR][,draining]`.
fn parse_backend(spec: &str) -> Result<PartialBackend, CliError> {
    let mut parts = spec.split(',');
    let (addr, dns_name) = backend_addr(parts.next().unwrap_or_default())?;
    let mut config = BackendConfig::plain(addr);
    let mut mode = None;
    for part in parts {
        let part = part.trim();
        let (name, value) = part.split_once('=').unwrap_or((part, ""));
        match name {
            "weight" => {
                config.weight = value.parse().map_err(|_| {
                    CliError::invalid(
                        "backend",
                        format!("{spec:?}: weight {value:?} is not a number"),
                    )
                })?;
            }
            "mode" => mode = Some(parse_mode("backend", value)?),
            "backup" => config.backup = Some(parse_addr("backend", value)?),
            "draining" if value.is_empty() => config.draining = true,
            // TLS to the backend, its certificate checked for `tls=NAME`, else its address.
            "tls" if value.is_empty() => {
                config.tls = Some(match &dns_name {
                    Some((_, host, _)) => host.clone(),
                    None => config.addr.ip().to_string(),
                })
            }
            "tls" => config.tls = Some(value.to_string()),
            _ => {
                return Err(CliError::invalid(
                    "backend",
                    format!(
                        "{spec:?}: unknown option {part:?} (weight=, mode=, backup=, draining, tls[=NAME])"
                    ),
                ))
            }
        }
    }
    Ok(PartialBackend {
        config,
        mode,
        name: dns_name,
    })
}

/// `ADDR[,proxy-protocol]` of `--listen-tls` (and the file's `listen-tls` list).
fn parse_tls_listener(text: &str) -> Result<(SocketAddr, bool), CliError> {
    let mut parts = text.split(',');
    let addr = parse_addr("listen-tls", parts.next().unwrap_or_default())?;
    let mut proxied = false;
    for option in parts {
        match option.trim() {
            "proxy-protocol" => proxied = true,
            other => {
                return Err(CliError::invalid(
                    "listen-tls",
                    format!("unknown option {other:?} (known: proxy-protocol)"),
                ))
            }
        }
    }
    Ok((addr, proxied))
}

fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, CliError> {
    text.trim()
        .parse()
        .map_err(|_| CliError::invalid(key, format!("{text:?} is not IP:PORT")))
}

fn parse_mode(key: &'static str, text: &str) -> Result<BackendMode, CliError> {
    match text.trim() {
        "plain" => Ok(BackendMode::Plain),
        "envelope" => Ok(BackendMode::Envelope),
        _ => Err(CliError::invalid(
            key,
            format!("mode {text:?} is not plain or envelope"),
        )),
    }
}

fn parse_algorithm(text: &str) -> Result<Algorithm, CliError> {
    match text.trim() {
        "round-robin" => Ok(Algorithm::RoundRobin),
        "weighted" => Ok(Algorithm::Weighted),
        "least-loaded" => Ok(Algorithm::LeastLoaded),
        _ => Err(CliError::invalid(
            "algorithm",
            format!("{text:?} is not round-robin, weighted or least-loaded"),
        )),
    }
}

/// The flag's text if given, else the file's number.
fn pick_secs(
    key: &'static str,
    flag: Option<&str>,
    file: Option<f64>,
) -> Result<Option<Duration>, CliError> {
    let secs = match (flag, file) {
        (Some(text), _) => text
            .trim()
            .parse::<f64>()
            .map_err(|_| CliError::invalid(key, format!("{text:?} is not a number of seconds")))?,
        (None, Some(n)) => n,
        (None, None) => return Ok(None),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(CliError::invalid(key, format!("{secs} is not a duration")));
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| CliError::invalid(key, format!("{secs} seconds is out of range")))
}

fn parse_bytes(key: &'static str, text: &str) -> Result<usize, CliError> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            CliError::invalid(key, format!("{text:?} is not a positive number of bytes"))
        })
}

fn parse_tag_keys(text: &str) -> Result<Vec<TagKey>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = i + 1;
        let (id, hex) = line
            .split_once(':')
            .ok_or_else(|| format!("line {at}: expected ID:HEXSECRET"))?;
        let id: u8 = id
            .trim()
            .parse()
            .map_err(|_| format!("line {at}: key id {id:?} is not 0..=255"))?;
        let secret = decode_hex(hex.trim())
            .ok_or_else(|| format!("line {at}: the secret is not an even number of hex digits"))?;
        if secret.len() < TAG_KEY_BYTES_MIN {
            return Err(format!(
                "line {at}: key {id} is shorter than {TAG_KEY_BYTES_MIN} bytes"
            ));
        }
        keys.push(TagKey { id, secret });
    }
    if keys.is_empty() {
        return Err("no key in the file".to_string());
    }
    Ok(keys)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

fn random_tag_key() -> Result<TagKey, CliError> {
    let mut secret = vec![0; GENERATED_KEY_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut secret).map_err(|e| {
        CliError::invalid(
            "tag-key-file",
            format!("no key file and no OS randomness: {e}"),
        )
    })?;
    Ok(TagKey { id: 1, secret })
}

/// `--output-cap` when not given: 4 MiB, a few thousand queued messages.
const OUTPUT_CAP_DEFAULT: usize = 4 * 1024 * 1024;

/// `--output-high-water` when not given: 256 KiB, some 400 call-setup messages, or a fraction
/// of a second of a busy backend's work. Past it the queue only adds delay to the calls behind
/// it, so new calls are better sent to a backend with room (or refused with Retry-After).
const OUTPUT_HIGH_WATER_DEFAULT: usize = 256 * 1024;

/// `--output-low-water` when not given: a quarter of the high mark, so a backend released
/// from its hold takes a burst of new calls before it is held again.
const OUTPUT_LOW_WATER_DEFAULT: usize = 64 * 1024;

/// The high- and low-water marks of the output queues: the low below the high, the high at
/// most the cap (`output-cap`), which stays the hard ceiling.
fn merge_watermarks(
    (high_flag, high_file): (Option<&String>, Option<u64>),
    (low_flag, low_file): (Option<&String>, Option<u64>),
    cap: usize,
) -> Result<(usize, usize), CliError> {
    let pick = |key: &'static str, flag: Option<&String>, value: Option<u64>| match (flag, value) {
        (Some(s), _) => parse_bytes(key, s).map(Some),
        (None, Some(n)) => usize::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| CliError::invalid(key, format!("{n} is out of range"))),
        (None, None) => Ok(None),
    };
    let high = pick("output-high-water", high_flag, high_file)?;
    let low = pick("output-low-water", low_flag, low_file)?;
    // A cap set below the default marks scales them down with it, so an old configuration with
    // a small cap still starts.
    let high = high.unwrap_or(OUTPUT_HIGH_WATER_DEFAULT.min(cap / 2).max(1));
    let low = low.unwrap_or(OUTPUT_LOW_WATER_DEFAULT.min(high / 4));
    if high > cap {
        return Err(CliError::invalid(
            "output-high-water",
            format!("{high} is more than output-cap ({cap})"),
        ));
    }
    if low >= high {
        return Err(CliError::invalid(
            "output-low-water",
            format!("{low} is not below output-high-water ({high})"),
        ));
    }
    Ok((high, low))
}

/// Measured at 1,000 calls/s: 2 ms cuts the balancer's CPU per call by about half, and adds at
/// most 2 ms to a hop whose timers count in hundreds of milliseconds (docs/performance.md).
const BATCH_WINDOW_DEFAULT: Duration = Duration::from_millis(2);

/// Beyond this the delay starts to show in call setup times measured by carriers (tens of ms
/// per call through several hops), for no further saving.
const BATCH_WINDOW_MAX: Duration = Duration::from_millis(50);

/// More threads than this is a typo, not a machine.
const WORKERS_MAX: usize = 1024;

/// The core refuses shorter secrets; checking here names the line of the file.
const TAG_KEY_BYTES_MIN: usize = 16;

/// Size of the key made at start when no key file is given (the HMAC-SHA256 block-safe size).
const GENERATED_KEY_BYTES: usize = 32;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use super::*;

    const MIN: [&str; 5] = [
        "siplb",
        "--listen",
        "127.0.0.1:5060",
        "--backend",
        "127.0.0.1:5070",
    ];

    fn args(extra: &[&str]) -> Vec<String> {
        MIN.iter().chain(extra).map(|s| s.to_string()).collect()
    }

    fn temp_file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lb-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::File::create(&path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        path
    }

    #[test]
    fn tls_listeners_say_whether_a_proxy_header_comes_first() {
        let addr: SocketAddr = "127.0.0.1:5061".parse().unwrap();
        assert_eq!(parse_tls_listener("127.0.0.1:5061").unwrap(), (addr, false));
        assert_eq!(
            parse_tls_listener("127.0.0.1:5061, proxy-protocol").unwrap(),
            (addr, true)
        );
        let e = parse_tls_listener("127.0.0.1:5061,proxy").unwrap_err();
        assert_eq!(e.key().as_deref(), Some("listen-tls"));
        assert!(parse_tls_listener("proxy-protocol").is_err());
    }

    #[test]
    fn workers_and_proxy_protocol() {
        let s = parse(args(&[])).unwrap();
        assert!(s.workers >= 1);
        assert!(!s.proxy_protocol);
        let s = parse(args(&["--workers", "1"])).unwrap();
        assert_eq!(s.workers, 1);
        assert!(s.core.config().hop_by_unique_ip);
        let s = parse(args(&["--workers", "3", "--proxy-protocol"])).unwrap();
        assert_eq!(s.workers, 3);
        assert!(s.proxy_protocol);
        assert!(!s.core.config().hop_by_unique_ip);
        let e = parse(args(&["--workers", "0"])).unwrap_err();
        assert_eq!(e.key().as_deref(), Some("workers"));
        let file = temp_file("workers.toml", "workers = 2\nproxy-protocol = true\n");
        let s = parse(args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!((s.workers, s.proxy_protocol), (2, true));
    }

    #[test]
    fn minimal_flags_give_defaults_and_a_random_key() {
        let s = parse(args(&[])).unwrap();
        let c = s.core.config();
        assert_eq!(
            c.listeners,
            vec!["127.0.0.1:5060".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.backends,
            vec![BackendConfig::plain("127.0.0.1:5070".parse().unwrap())]
        );
        assert_eq!(c.window, Duration::from_secs(32));
        assert_eq!(c.algorithm, Algorithm::RoundRobin);
        assert_eq!(s.output_cap_bytes, 4 * 1024 * 1024);
        assert_eq!(s.log_level, "info");
        assert!(!s.check_config);
        assert!(s.tag_key_generated);
        assert_eq!(c.tag_keys.len(), 1);
        assert_eq!(c.tag_keys[0].id, 1);
        assert_eq!(c.tag_keys[0].secret.len(), 32);
        let other = parse(args(&[])).unwrap();
        assert_ne!(other.core.config().tag_keys[0].secret, c.tag_keys[0].secret);
    }

    #[test]
    fn backend_spec_options_and_default_mode() {
        let s = parse(args(&[
            "--backend",
            "127.0.0.1:5071,weight=3,mode=plain,backup=127.0.0.1:5070",
            "--backend",
            "[::1]:5072,draining",
            "--backend-mode",
            "envelope",
            "--algorithm",
            "weighted",
            "--window",
            "0.5",
            "--ringing-max",
            "2",
            "--output-cap",
            "1000",
            "--check-config",
        ]))
        .unwrap();
        let c = s.core.config();
        assert_eq!(c.backends.len(), 3);
        assert_eq!(c.backends[0].mode, BackendMode::Envelope);
        assert_eq!(c.backends[1].weight, 3);
        assert_eq!(c.backends[1].mode, BackendMode::Plain);
        assert_eq!(
            c.backends[1].backup,
            Some("127.0.0.1:5070".parse().unwrap())
        );
        assert!(c.backends[2].draining);
        assert_eq!(c.backends[2].mode, BackendMode::Envelope);
        assert_eq!(c.algorithm, Algorithm::Weighted);
        assert_eq!(c.window, Duration::from_millis(500));
        assert_eq!(c.ringing_max, Duration::from_secs(2));
        assert_eq!(s.output_cap_bytes, 1000);
        assert!(s.check_config);
    }

    #[test]
    fn flags_override_the_file() {
        let keys = temp_file(
            "override.keys",
            "# rotation\n\n2:00112233445566778899aabbccddeeff\n",
        );
        let conf = temp_file(
            "override.toml",
            &format!(
                r#"
listen = ["127.0.0.1:7000"]
algorithm = "least-loaded"
window = 10
ringing-max = 1.5
advertise = "lb.example.com"
tag-key-file = "{}"
tag-header = "X-LB-Tag"
log-level = "debug"
output-cap = 4096
backend-mode = "envelope"

[[backend]]
addr = "127.0.0.1:7001"
weight = 2

[[backend]]
addr = "127.0.0.1:7002"
mode = "plain"
backup = "127.0.0.1:7001"

[limits]
table-capacity = 99
"#,
                keys.display()
            ),
        );
        let from_file = parse(["siplb", "--config", conf.to_str().unwrap()]).unwrap();
        let c = from_file.core.config();
        assert_eq!(
            c.listeners,
            vec!["127.0.0.1:7000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[0].weight, 2);
        assert_eq!(c.backends[0].mode, BackendMode::Envelope);
        assert_eq!(c.backends[1].mode, BackendMode::Plain);
        assert_eq!(c.algorithm, Algorithm::LeastLoaded);
        assert_eq!(c.window, Duration::from_secs(10));
        assert_eq!(c.ringing_max, Duration::from_millis(1500));
        assert_eq!(c.limits.table_capacity, 99);
        assert_eq!(from_file.core.advertise(), "lb.example.com");
        assert_eq!(c.tag_header.as_deref(), Some("X-LB-Tag"));
        assert_eq!(c.tag_keys.len(), 1);
        assert_eq!(c.tag_keys[0].id, 2);
        assert!(!from_file.tag_key_generated);
        assert_eq!(from_file.log_level, "debug");
        assert_eq!(from_file.output_cap_bytes, 4096);

        let overridden = parse([
            "siplb",
            "--config",
            conf.to_str().unwrap(),
            "--listen",
            "127.0.0.1:8000",
            "--backend",
            "127.0.0.1:8001",
            "--algorithm",
            "round-robin",
            "--window",
            "3",
            "--log-level",
            "warn",
            "--backend-mode",
            "plain",
        ])
        .unwrap();
        let c = overridden.core.config();
        assert_eq!(
            c.listeners,
            vec!["127.0.0.1:8000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            c.backends,
            vec![BackendConfig::plain("127.0.0.1:8001".parse().unwrap())]
        );
        assert_eq!(c.algorithm, Algorithm::RoundRobin);
        assert_eq!(c.window, Duration::from_secs(3));
        assert_eq!(overridden.log_level, "warn");
        // Keys the flags leave alone still come from the file.
        assert_eq!(c.limits.table_capacity, 99);
        assert_eq!(overridden.output_cap_bytes, 4096);
    }

    #[test]
    fn relative_key_file_is_relative_to_the_config_file() {
        temp_file("relative.keys", "7:000102030405060708090a0b0c0d0e0f10\n");
        let conf = temp_file(
            "relative.toml",
            "listen = [\"127.0.0.1:1\"]\ntag-key-file = \"relative.keys\"\n\
             [[backend]]\naddr = \"127.0.0.1:2\"\n",
        );
        let s = parse(["siplb", "--config", conf.to_str().unwrap()]).unwrap();
        assert_eq!(s.core.config().tag_keys[0].id, 7);
        assert_eq!(s.core.config().tag_keys[0].secret.len(), 17);
    }

    #[test]
    fn a_backend_by_name_resolves_at_start() {
        let s = parse(args(&[
            "--backend",
            "localhost:5072,weight=3",
            "--backend",
            "127.0.0.1:5071",
            "--resolve-interval",
            "2.5",
        ]))
        .unwrap();
        let backends = &s.core.config().backends;
        assert!(backends
            .iter()
            .any(|b| b.addr == "127.0.0.1:5071".parse().unwrap()));
        let named: Vec<_> = backends.iter().filter(|b| b.weight == 3).collect();
        assert!(
            named
                .iter()
                .any(|b| b.addr == "127.0.0.1:5072".parse().unwrap()),
            "{backends:?}"
        );
        assert_eq!(s.named.len(), 1);
        assert_eq!(s.named[0].name, "localhost:5072");
        assert!(s.named[0].has("127.0.0.1:5072".parse().unwrap()));
        assert_eq!(s.resolve_interval, Duration::from_millis(2500));
        let e = parse(args(&[
            "--backend",
            "localhost:5070",
            "--resolve-interval",
            "0",
        ]))
        .unwrap_err();
        assert_eq!(e.key().as_deref(), Some("resolve-interval"), "{e}");
    }

    #[test]
    fn bad_backend_spec_names_the_key() {
        for spec in [
            "127.0.0.1",
            "no host:1",
            "127.0.0.1:5070,weight=x",
            "127.0.0.1:5070,mode=udp",
            "127.0.0.1:5070,colour=red",
            "127.0.0.1:5070,backup=nowhere",
        ] {
            let e = parse(["siplb", "--listen", "127.0.0.1:5060", "--backend", spec]).unwrap_err();
            assert_eq!(e.key().as_deref(), Some("backend"), "{spec}: {e}");
            assert!(e.to_string().starts_with("backend: "), "{e}");
            assert!(!e.to_string().contains('\n'));
        }
        // A backup that is not a backend is the core's refusal, still under `backend`.
        let e = parse(args(&["--backend", "127.0.0.1:5071,backup=127.0.0.1:9"])).unwrap_err();
        assert!(
            matches!(e, CliError::Config(ConfigError::UnknownBackup { .. })),
            "{e}"
        );
        assert_eq!(e.key().as_deref(), Some("backend"));
    }

    #[test]
    fn bad_values_name_their_keys() {
        for (flag, value, key) in [
            ("--window", "soon", "window"),
            ("--window=-1", "", "window"),
            ("--window", "0", "window"),
            ("--ringing-max", "inf", "ringing-max"),
            ("--algorithm", "random", "algorithm"),
            ("--backend-mode", "udp", "backend-mode"),
            ("--output-cap", "0", "output-cap"),
            ("--log-level", "info,[", "log-level"),
            ("--advertise", "a b", "advertise"),
            ("--tag-header", "X LB", "tag-header"),
            ("--listen", "5060", "listen"),
            ("--tag-key-file", "/nonexistent/keys", "tag-key-file"),
            ("--config", "/nonexistent/siplb.toml", "config"),
        ] {
            let extra: &[&str] = if value.is_empty() {
                &[flag]
            } else {
                &[flag, value]
            };
            let e = parse(args(extra)).unwrap_err();
            assert_eq!(e.key().as_deref(), Some(key), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn core_requires_a_listener_and_a_backend() {
        let e = parse(["siplb", "--backend", "127.0.0.1:5070"]).unwrap_err();
        assert_eq!(e.to_string(), "listen: at least one address is needed");
        let e = parse(["siplb", "--listen", "127.0.0.1:5060"]).unwrap_err();
        assert_eq!(e.to_string(), "backend: at least one backend is needed");
    }

    #[test]
    fn bad_key_files_are_refused_with_the_line() {
        for (name, text, needle) in [
            ("empty.keys", "# nothing\n\n", "no key"),
            (
                "nocolon.keys",
                "00112233445566778899aabbccddeeff\n",
                "line 1",
            ),
            (
                "badid.keys",
                "300:00112233445566778899aabbccddeeff\n",
                "line 1",
            ),
            ("odd.keys", "1:0011223\n", "line 1"),
            (
                "nothex.keys",
                "\n1:zz112233445566778899aabbccddeeff\n",
                "line 2",
            ),
            ("short.keys", "1:00112233\n", "shorter than 16"),
        ] {
            let path = temp_file(name, text);
            let e = parse(args(&["--tag-key-file", path.to_str().unwrap()])).unwrap_err();
            assert_eq!(e.key().as_deref(), Some("tag-key-file"), "{name}: {e}");
            assert!(e.to_string().contains(needle), "{name}: {e}");
        }
        let dup = temp_file(
            "dup.keys",
            "1:00112233445566778899aabbccddeeff\n1:ffeeddccbbaa99887766554433221100\n",
        );
        let e = parse(args(&["--tag-key-file", dup.to_str().unwrap()])).unwrap_err();
        assert_eq!(e.to_string(), "tag-keys: key id 1 is used twice");
    }

    #[test]
    fn key_file_order_is_kept_first_signs() {
        let path = temp_file(
            "two.keys",
            "# new key first\n3:00112233445566778899AABBCCDDEEFF\n  2 : ffeeddccbbaa99887766554433221100  \n",
        );
        let s = parse(args(&["--tag-key-file", path.to_str().unwrap()])).unwrap();
        let keys = &s.core.config().tag_keys;
        assert_eq!(keys.iter().map(|k| k.id).collect::<Vec<_>>(), vec![3, 2]);
        assert_eq!(keys[0].secret[..3], [0x00, 0x11, 0x22]);
        assert_eq!(keys[0].secret[15], 0xff);
    }

    #[test]
    fn bad_toml_is_one_line_with_the_file_and_line() {
        let conf = temp_file("bad.toml", "listen = [\"127.0.0.1:1\"]\nwindw = 3\n");
        let e = parse(["siplb", "--config", conf.to_str().unwrap()]).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.key().as_deref(), Some("config"));
        assert!(text.contains("line 2") && text.contains("windw"), "{text}");
        assert!(!text.contains('\n'), "{text}");
    }

    #[test]
    fn the_crate_docs_example_is_a_valid_file() {
        let docs = include_str!("lib.rs");
        let start = docs.find("//! ```toml\n").unwrap() + "//! ```toml\n".len();
        let end = start + docs[start..].find("//! ```\n").unwrap();
        let text: String = docs[start..end]
            .lines()
            .map(|l| {
                l.strip_prefix("//!")
                    .unwrap()
                    .strip_prefix(' ')
                    .unwrap_or("")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        temp_file("tag.keys", "1:00112233445566778899aabbccddeeff\n");
        let conf = temp_file("docs.toml", &text);
        let s = parse(["siplb", "--config", conf.to_str().unwrap()]).unwrap();
        let c = s.core.config();
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[1].mode, BackendMode::Envelope);
        assert_eq!(c.reconnect_min, Duration::from_millis(100));
        assert_eq!(c.limits.headers_max, 128);
        assert_eq!(s.core.advertise(), "lb.example.com:5060");
    }

    #[test]
    fn probe_flags_enable_probes_with_defaults_that_fit_the_interval() {
        let s = parse(args(&[])).unwrap();
        assert_eq!(s.core.config().probe, None);
        let s = parse(args(&[
            "--probe-interval",
            "0.2",
            "--probe-timeout",
            "0.1",
            "--probe-failures",
            "2",
            "--probe-successes",
            "1",
        ]))
        .unwrap();
        assert_eq!(
            s.core.config().probe,
            Some(ProbeConfig {
                interval: Duration::from_millis(200),
                timeout: Duration::from_millis(100),
                failures_to_down: 2,
                successes_to_up: 1,
            })
        );
        // A short interval alone: the default timeout is cut down to it.
        let s = parse(args(&["--probe-interval", "1"])).unwrap();
        let p = s.core.config().probe.clone().unwrap();
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!(
            (p.failures_to_down, p.successes_to_up),
            (
                ProbeConfig::default().failures_to_down,
                ProbeConfig::default().successes_to_up
            )
        );
    }

    #[test]
    fn bad_probe_and_timeout_values_name_their_keys() {
        for (extra, key) in [
            (&["--probe-timeout", "1"][..], "probe-timeout"),
            (&["--probe-successes", "2"][..], "probe-successes"),
            (
                &["--probe-interval", "1", "--probe-failures", "0"][..],
                "probe-failures",
            ),
            (
                &["--probe-interval", "1", "--probe-successes", "x"][..],
                "probe-successes",
            ),
            (
                &["--probe-interval", "1", "--probe-timeout", "2"][..],
                "probe-timeout",
            ),
            (&["--probe-interval", "0"][..], "probe-interval"),
            (&["--idle-timeout", "0"][..], "idle-timeout"),
            (&["--partial-timeout", "soon"][..], "partial-timeout"),
            (&["--overload-hold=-1"][..], "overload-hold"),
            (&["--metrics", "9090"][..], "metrics"),
        ] {
            let e = parse(args(extra)).unwrap_err();
            assert_eq!(e.key().as_deref(), Some(key), "{extra:?}: {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn batch_window_defaults_to_two_ms_and_zero_turns_it_off() {
        assert_eq!(
            parse(args(&[])).unwrap().batch_window,
            Duration::from_millis(2)
        );
        let off = parse(args(&["--batch-window", "0"])).unwrap();
        assert_eq!(off.batch_window, Duration::ZERO);
        let conf = temp_file(
            "batch.toml",
            "listen = [\"127.0.0.1:7100\"]\nbatch-window = 0.0005\n[[backend]]\naddr = \"127.0.0.1:7101\"\n",
        );
        let s = parse(["siplb", "--config", conf.to_str().unwrap()]).unwrap();
        assert_eq!(s.batch_window, Duration::from_micros(500));
        for bad in ["0.2", "-0.001", "soon"] {
            let flag = format!("--batch-window={bad}");
            let e = parse(args(&[flag.as_str()])).unwrap_err();
            assert_eq!(e.key().as_deref(), Some("batch-window"), "{bad}: {e}");
        }
    }

    #[test]
    fn hardening_keys_from_the_file_and_flags() {
        let conf = temp_file(
            "hardening.toml",
            r#"
listen = ["127.0.0.1:7100"]
idle-timeout = 60
partial-timeout = 2.5
overload-hold = 7
overload-hold-max = 30
probe-interval = 3
probe-failures = 4
metrics = "127.0.0.1:9100"

[[backend]]
addr = "127.0.0.1:7101"
"#,
        );
        let path = conf.to_str().unwrap();
        let s = parse(["siplb", "--config", path]).unwrap();
        let c = s.core.config();
        assert_eq!(c.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.partial_timeout, Duration::from_millis(2500));
        assert_eq!(c.overload_hold, Duration::from_secs(7));
        assert_eq!(c.overload_hold_max, Duration::from_secs(30));
        let p = c.probe.clone().unwrap();
        assert_eq!(p.interval, Duration::from_secs(3));
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert_eq!(p.failures_to_down, 4);
        assert_eq!(s.metrics, Some("127.0.0.1:9100".parse().unwrap()));

        let s = parse([
            "siplb",
            "--config",
            path,
            "--idle-timeout",
            "5",
            "--partial-timeout",
            "1",
            "--overload-hold",
            "0.5",
            "--probe-interval",
            "0.5",
            "--metrics",
            "127.0.0.1:9200",
        ])
        .unwrap();
        let c = s.core.config();
        assert_eq!(c.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.partial_timeout, Duration::from_secs(1));
        assert_eq!(c.overload_hold, Duration::from_millis(500));
        let p = c.probe.clone().unwrap();
        assert_eq!(p.interval, Duration::from_millis(500));
        assert_eq!(p.timeout, Duration::from_millis(500));
        assert_eq!(p.failures_to_down, 4, "the file still refines the probes");
        assert_eq!(s.metrics, Some("127.0.0.1:9200".parse().unwrap()));
    }

    #[test]
    fn reload_rereads_the_file_keeps_the_flags_and_the_generated_key() {
        let write = |text: &str| temp_file("reload.toml", text);
        let conf = write(
            "listen = [\"127.0.0.1:7200\"]\nwindow = 10\n\
             [[backend]]\naddr = \"127.0.0.1:7201\"\n\
             [[backend]]\naddr = \"127.0.0.1:7202\"\n",
        );
        let path = conf.to_str().unwrap().to_string();
        let s = parse(["siplb", "--config", &path, "--window", "3"]).unwrap();
        assert_eq!(s.config_file(), Some(conf.as_path()));
        assert!(s.tag_key_generated);

        write(
            "listen = [\"127.0.0.1:7200\"]\nwindow = 20\nalgorithm = \"weighted\"\n\
             [[backend]]\naddr = \"127.0.0.1:7201\"\ndraining = true\n\
             [[backend]]\naddr = \"127.0.0.1:7203\"\nweight = 5\n",
        );
        let r = s.reload().unwrap();
        let c = r.core.config();
        assert!(c.backends[0].draining);
        assert_eq!(c.backends[1].addr, "127.0.0.1:7203".parse().unwrap());
        assert_eq!(c.backends[1].weight, 5);
        assert_eq!(c.algorithm, Algorithm::Weighted);
        assert_eq!(c.window, Duration::from_secs(3), "the flag still wins");
        assert_eq!(
            c.tag_keys,
            s.core.config().tag_keys,
            "the key made at start survives a reload"
        );
        // A reload of the reloaded settings works the same way.
        assert!(r.reload().is_ok());

        write(
            "listen = [\"127.0.0.1:7200\"]\n[[backend]]\naddr = \"127.0.0.1:7201\"\nweight = -1\n",
        );
        let e = s.reload().unwrap_err();
        assert_eq!(e.key().as_deref(), Some("config"), "{e}");
        write("listen = [\"127.0.0.1:7200\"]\nidle-timeout = 0\n[[backend]]\naddr = \"127.0.0.1:7201\"\n");
        let e = s.reload().unwrap_err();
        assert_eq!(e.key().as_deref(), Some("idle-timeout"), "{e}");
    }

    #[test]
    fn usage_errors_are_claps() {
        let e = parse(["siplb", "--no-such-flag"]).unwrap_err();
        match e {
            CliError::Usage(e) => assert_eq!(e.exit_code(), 2),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn sanity_table_table_share_and_the_flag_that_turns_the_checks_off() {
        let conf = temp_file(
            "sanity.toml",
            r#"
listen = ["127.0.0.1:7100"]
[[backend]]
addr = "127.0.0.1:7101"
[limits]
table-capacity = 200
table-share-percent = 25
[sanity]
host-bytes-max = 100
field-bytes-max = 4096
"#,
        );
        let path = conf.to_str().unwrap();
        let c = parse(["siplb", "--config", path])
            .unwrap()
            .core
            .config()
            .clone();
        assert_eq!(c.limits.table_share_percent, 25);
        assert_eq!(c.limits.table_share(), 50);
        let defaults = lb_core::SanityLimits::default();
        assert_eq!(
            c.sanity,
            lb_core::SanityLimits {
                host_bytes_max: 100,
                field_bytes_max: 4096,
                ..defaults.clone()
            }
        );
        assert!(c.sanity.enabled);
        let off = parse(["siplb", "--config", path, "--no-sanity-checks"]).unwrap();
        assert!(!off.core.config().sanity.enabled);
        let minimal = parse(args(&[])).unwrap();
        assert_eq!(minimal.core.config().sanity, defaults);
        let bad = temp_file(
            "sanity-bad.toml",
            "listen = [\"127.0.0.1:7100\"]\n[[backend]]\naddr = \"127.0.0.1:7101\"\n\
             [limits]\ntable-share-percent = 150\n",
        );
        let e = parse(["siplb", "--config", bad.to_str().unwrap()]).unwrap_err();
        assert_eq!(
            e.key().as_deref(),
            Some("limits.table-share-percent"),
            "{e}"
        );
        let bad = temp_file(
            "sanity-zero.toml",
            "listen = [\"127.0.0.1:7100\"]\n[[backend]]\naddr = \"127.0.0.1:7101\"\n\
             [sanity]\nuri-bytes-max = 0\n",
        );
        let e = parse(["siplb", "--config", bad.to_str().unwrap()]).unwrap_err();
        assert_eq!(e.key().as_deref(), Some("sanity.uri-bytes-max"), "{e}");
    }

    #[test]
    fn output_water_marks_and_the_stall_timeout() {
        let s = parse(args(&[])).unwrap();
        let marks = (s.output_high_water_bytes, s.output_low_water_bytes);
        assert_eq!(marks, (256 * 1024, 64 * 1024));
        assert_eq!(s.core.config().stall_timeout, Duration::from_secs(32));
        let s = parse(args(&[
            "--output-high-water",
            "20000",
            "--output-low-water",
            "5000",
            "--stall-timeout",
            "7.5",
        ]))
        .unwrap();
        let marks = (s.output_high_water_bytes, s.output_low_water_bytes);
        assert_eq!(marks, (20000, 5000));
        assert_eq!(s.core.config().stall_timeout, Duration::from_millis(7500));
        // A small cap scales the default marks down with it.
        let s = parse(args(&["--output-cap", "1000"])).unwrap();
        assert_eq!(
            (s.output_high_water_bytes, s.output_low_water_bytes),
            (500, 125)
        );
        let file = temp_file(
            "marks.toml",
            "output-high-water = 30000\noutput-low-water = 3000\nstall-timeout = 2\n",
        );
        let s = parse(args(&["--config", file.to_str().unwrap()])).unwrap();
        let marks = (s.output_high_water_bytes, s.output_low_water_bytes);
        assert_eq!(marks, (30000, 3000));
        assert_eq!(s.core.config().stall_timeout, Duration::from_secs(2));
        for (flags, key) in [
            (&["--output-high-water", "5000000"][..], "output-high-water"),
            (&["--output-low-water", "300000"][..], "output-low-water"),
            (&["--output-high-water", "0"][..], "output-high-water"),
            (&["--stall-timeout", "0"][..], "stall-timeout"),
        ] {
            let e = parse(args(flags)).unwrap_err();
            assert_eq!(e.key().as_deref(), Some(key), "{flags:?}: {e}");
        }
    }
}
