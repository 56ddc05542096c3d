//! The TOML file: its keys, which mirror the flags, and reading it with the line of a fault.

use super::*;

/// The TOML file; keys mirror the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileConfig {
    pub(super) listen: Vec<String>,
    pub(super) trace_call_id: Vec<String>,
    pub(super) listen_tls: Vec<String>,
    pub(super) advertise_tls: Option<String>,
    pub(super) tls: FileTls,
    pub(super) backend: Vec<FileBackend>,
    pub(super) backend_mode: Option<String>,
    pub(super) algorithm: Option<String>,
    pub(super) window: Option<f64>,
    pub(super) ringing_max: Option<f64>,
    pub(super) retry_after: Option<f64>,
    pub(super) reconnect_min: Option<f64>,
    pub(super) reconnect_max: Option<f64>,
    pub(super) advertise: Option<String>,
    pub(super) advertise_backend: Option<String>,
    pub(super) tag_key_file: Option<PathBuf>,
    pub(super) tag_header: Option<String>,
    pub(super) log_level: Option<String>,
    pub(super) output_cap: Option<u64>,
    pub(super) output_high_water: Option<u64>,
    pub(super) output_low_water: Option<u64>,
    pub(super) stall_timeout: Option<f64>,
    pub(super) probe_interval: Option<f64>,
    pub(super) probe_timeout: Option<f64>,
    pub(super) probe_failures: Option<u32>,
    pub(super) probe_successes: Option<u32>,
    pub(super) idle_timeout: Option<f64>,
    pub(super) partial_timeout: Option<f64>,
    pub(super) overload_hold: Option<f64>,
    pub(super) overload_hold_max: Option<f64>,
    pub(super) metrics: Option<String>,
    pub(super) batch_window: Option<f64>,
    pub(super) log_format: Option<String>,
    pub(super) admin: Option<String>,
    pub(super) admin_token_file: Option<PathBuf>,
    pub(super) workers: Option<u32>,
    pub(super) proxy_protocol: Option<bool>,
    pub(super) resolve_interval: Option<f64>,
    pub(super) limits: FileLimits,
    pub(super) sanity: FileSanity,
    pub(super) unanswered_timeout: Option<f64>,
    pub(super) unanswered_to_down: Option<u32>,
    pub(super) unanswered_hold: Option<f64>,
}

/// The `[sanity]` table: the core's [`lb_core::SanityLimits`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileSanity {
    pub(super) enabled: Option<bool>,
    pub(super) host_bytes_max: Option<usize>,
    pub(super) uri_bytes_max: Option<usize>,
    pub(super) field_bytes_max: Option<usize>,
}

/// One `[[backend]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileBackend {
    pub(super) addr: String,
    pub(super) weight: Option<u32>,
    pub(super) mode: Option<String>,
    pub(super) backup: Option<String>,
    #[serde(default)]
    pub(super) draining: bool,
    pub(super) tls: Option<toml::Value>,
}

/// The `[tls]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileTls {
    /// `[[tls.cert]]` tables.
    pub(super) cert: Vec<FileCert>,
    pub(super) client_ca: Option<PathBuf>,
    pub(super) client_auth: Option<String>,
    pub(super) backend_ca: Option<PathBuf>,
    pub(super) backend_cert: Option<PathBuf>,
    pub(super) backend_key: Option<PathBuf>,
}

/// One `[[tls.cert]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileCert {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    #[serde(default)]
    pub(super) names: Vec<String>,
}

/// The `[limits]` table: the core's [`lb_core::Limits`].
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct FileLimits {
    pub(super) message_bytes_max: Option<usize>,
    pub(super) headers_max: Option<usize>,
    pub(super) buffered_bytes_max: Option<usize>,
    pub(super) frontends_max: Option<usize>,
    pub(super) table_capacity: Option<usize>,
    pub(super) dial_outs_max: Option<usize>,
    pub(super) dial_queue_max: Option<usize>,
    pub(super) table_share_percent: Option<u32>,
    pub(super) table_share_per_ip_percent: Option<u32>,
    pub(super) frontends_per_ip_max: Option<usize>,
    pub(super) frontends_reserve_percent: Option<u32>,
    pub(super) frontend_evict_idle: Option<f64>,
}

pub(super) fn read_file(path: &Path) -> Result<FileConfig, CliError> {
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
