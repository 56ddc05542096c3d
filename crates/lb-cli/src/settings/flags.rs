//! The command line (clap): every value taken as text, parsed with the file's keys.

use super::*;

/// The command line. Every value is taken as text and parsed by this module so that flags and
/// file keys share their error messages.
#[derive(Clone, Debug, Parser)]
#[command(name = "siplb", version, about = "A SIP load balancer over TCP")]
pub(super) struct Args {
    /// TOML config file; flags override its keys
    #[arg(long, value_name = "FILE")]
    pub(super) config: Option<PathBuf>,
    /// Address to accept frontend connections on (repeatable)
    #[arg(long, value_name = "ADDR")]
    pub(super) listen: Vec<String>,
    /// Log every message of this Call-ID with its route decision (repeatable)
    #[arg(long, value_name = "ID")]
    pub(super) trace_call_id: Vec<String>,
    /// Address to accept TLS frontend connections on (repeatable); `,proxy-protocol`: its
    /// connections open with a PROXY v1/v2 header before the TLS ClientHello
    #[arg(long, value_name = "ADDR[,proxy-protocol]")]
    pub(super) listen_tls: Vec<String>,
    /// PEM certificate chain for TLS listeners; repeat with --tls-key in pairs, chosen by SNI
    #[arg(long, value_name = "FILE")]
    pub(super) tls_cert: Vec<PathBuf>,
    /// PEM private key of the --tls-cert at the same position
    #[arg(long, value_name = "FILE")]
    pub(super) tls_key: Vec<PathBuf>,
    /// CA bundle client certificates must chain to [default: no client certificates]
    #[arg(long, value_name = "FILE")]
    pub(super) tls_client_ca: Option<PathBuf>,
    /// With --tls-client-ca: refuse clients without a certificate, or accept them [default: required]
    #[arg(long, value_name = "required|optional")]
    pub(super) tls_client_auth: Option<String>,
    /// CA bundle TLS backends' certificates must chain to (needed with `--backend ADDR,tls`)
    #[arg(long, value_name = "FILE")]
    pub(super) tls_backend_ca: Option<PathBuf>,
    /// Client certificate chain presented to TLS backends that ask for one
    #[arg(long, value_name = "FILE")]
    pub(super) tls_backend_cert: Option<PathBuf>,
    /// Private key of --tls-backend-cert
    #[arg(long, value_name = "FILE")]
    pub(super) tls_backend_key: Option<PathBuf>,
    /// host[:port] written into Record-Route and Via toward TLS frontends [default: the first
    /// --listen-tls address]
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(super) advertise_tls: Option<String>,
    /// A backend (repeatable)
    #[arg(
        long,
        value_name = "ADDR[,weight=N][,mode=plain|envelope][,backup=ADDR]"
    )]
    pub(super) backend: Vec<String>,
    /// Mode of backends that do not name one [default: plain]
    #[arg(long, value_name = "plain|envelope")]
    pub(super) backend_mode: Option<String>,
    /// How new calls pick a backend [default: round-robin]
    #[arg(long, value_name = "round-robin|weighted|least-loaded")]
    pub(super) algorithm: Option<String>,
    /// New-call table window in seconds, fractions allowed [default: 32]
    #[arg(long, value_name = "SECS")]
    pub(super) window: Option<String>,
    /// Longest ringing time in seconds that keeps a table entry [default: 180]
    #[arg(long, value_name = "SECS")]
    pub(super) ringing_max: Option<String>,
    /// host[:port] written into Record-Route and Via [default: the first listen address]
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(super) advertise: Option<String>,
    /// host[:port] of the balancer as backends reach it, in the Record-Route they see
    /// [default: --advertise]
    #[arg(long, value_name = "HOST[:PORT]")]
    pub(super) advertise_backend: Option<String>,
    /// Tag keys, one `ID:HEXSECRET` per line, the first signs [default: a random key]
    #[arg(long, value_name = "FILE")]
    pub(super) tag_key_file: Option<PathBuf>,
    /// Also carry the tag in this extension header
    #[arg(long, value_name = "NAME")]
    pub(super) tag_header: Option<String>,
    /// tracing filter directive, e.g. `info` or `lb_core=debug` [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub(super) log_level: Option<String>,
    /// Validate the configuration, print "config ok" and exit
    #[arg(long)]
    pub(super) check_config: bool,
    /// Forward initial requests without the edge checks (From tag, host, URI and header
    /// lengths) [default: checked, see the `[sanity]` table]
    #[arg(long)]
    pub(super) no_sanity_checks: bool,
    /// Bytes queued for one connection at most: a frontend past it is closed, a message to a
    /// backend past it dropped [default: 4194304]
    #[arg(long, value_name = "BYTES")]
    pub(super) output_cap: Option<String>,
    /// Queued bytes past which a backend gets no new calls (its calls stay) and a frontend is
    /// not read and sent nothing [default: 262144]
    #[arg(long, value_name = "BYTES")]
    pub(super) output_high_water: Option<String>,
    /// Queued bytes below which a held backend or paused frontend is released [default: 65536]
    #[arg(long, value_name = "BYTES")]
    pub(super) output_low_water: Option<String>,
    /// Close a connection whose queue stays over the high-water mark for SECS (its peer stopped
    /// reading) [default: 32]
    #[arg(long, value_name = "SECS")]
    pub(super) stall_timeout: Option<String>,
    /// Probe each backend with SIP OPTIONS every SECS (enables probes) [default: no probes]
    #[arg(long, value_name = "SECS")]
    pub(super) probe_interval: Option<String>,
    /// A probe unanswered this long fails [default: 2, at most the interval]
    #[arg(long, value_name = "SECS")]
    pub(super) probe_timeout: Option<String>,
    /// Consecutive failed probes that take a backend down [default: 3]
    #[arg(long, value_name = "N")]
    pub(super) probe_failures: Option<String>,
    /// Consecutive passed probes that bring a probed-down backend back [default: 2]
    #[arg(long, value_name = "N")]
    pub(super) probe_successes: Option<String>,
    /// Close a frontend connection that sends nothing for SECS [default: 900]
    #[arg(long, value_name = "SECS")]
    pub(super) idle_timeout: Option<String>,
    /// Close a frontend connection holding part of a message for SECS [default: 10]
    #[arg(long, value_name = "SECS")]
    pub(super) partial_timeout: Option<String>,
    /// No new calls for SECS to a backend that answered one with 503 without Retry-After
    /// [default: 5]
    #[arg(long, value_name = "SECS")]
    pub(super) overload_hold: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics and readiness at /health
    #[arg(long, value_name = "ADDR")]
    pub(super) metrics: Option<String>,
    /// Under load, wake at most once per SECS and handle all that arrived meanwhile: fewer
    /// syscalls per call, at most SECS of added delay; 0 wakes for every message [default: 0.002]
    #[arg(long, value_name = "SECS")]
    pub(super) batch_window: Option<String>,
    /// Log line format: `text` for people, `json` (one object per line) for collectors
    /// [default: text]
    #[arg(long, value_name = "text|json")]
    pub(super) log_format: Option<String>,
    /// Serve the admin API (JSON over HTTP) at ADDR; loopback only unless --admin-token-file
    #[arg(long, value_name = "ADDR")]
    pub(super) admin: Option<String>,
    /// A bearer token (the file's first line) every admin request must present
    #[arg(long, value_name = "FILE")]
    pub(super) admin_token_file: Option<PathBuf>,
    /// Balancer cores, one per thread, sharing the listen ports (SO_REUSEPORT) [default: one
    /// per available core]
    #[arg(long, value_name = "N")]
    pub(super) workers: Option<String>,
    /// Frontend connections open with a PROXY protocol v1/v2 header (HAProxy, AWS NLB); its
    /// client address stands for the peer's, and a connection without one is closed
    #[arg(long)]
    pub(super) proxy_protocol: bool,
    /// Seconds between two resolutions of the backends given by DNS name [default: 30]
    #[arg(long, value_name = "SECS")]
    pub(super) resolve_interval: Option<String>,
}
