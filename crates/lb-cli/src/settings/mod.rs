//! Flags and the TOML file, merged into one [`Settings`].
//!
//! Every value arrives as text (or a TOML number) and is parsed here, so a flag and the same key
//! in the file fail with the same one-line message naming the key. Flags override the file;
//! a repeatable flag (`--listen`, `--backend`) given at all replaces the file's whole list,
//! because merging two lists of backends has no obvious meaning.
//!
//! The parts: `flags` (the clap command line), `file` (the TOML file), `merge` (flags over the
//! file, into [`Settings`]), `backends`, `tls`, `limits` (numbers, durations, the output marks)
//! and `keys` (the tag key file).

mod backends;
mod file;
mod flags;
mod keys;
mod limits;
mod merge;
mod tls;

// The parts see this module's imports and each other's items through these globs, as one
// file did before the split.
use backends::*;
use file::*;
use flags::*;
use keys::*;
use limits::*;
use merge::*;
use tls::*;

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
        let docs = include_str!("../lib.rs");
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
            other @ (CliError::Invalid { .. } | CliError::Config(_)) => panic!("{other}"),
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
