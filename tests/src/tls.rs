//! TLS peers for the balancer's `--listen-tls` listeners, all on loopback and made at run time
//! in the test's [`RunDir`] (nothing is committed, nothing leaves the machine):
//! - [`Pki`]: a test CA and the certificates it issues (servers with a DNS name and IP SAN
//!   127.0.0.1, clients), made with the `openssl` CLI;
//! - [`TlsLb`]: the balancer with a TLS listener and `--metrics`, its handshake counters;
//! - [`Stunnel`]: `stunnel4` in client mode, so SIPp (which has no TLS) talks plain TCP to
//!   stunnel on 127.0.0.1 and stunnel talks TLS to the balancer, verifying its chain and name;
//! - [`s_client`]: one `openssl s_client` connection with given options, which says whether the
//!   handshake succeeded (the balancer answered a SIP request over it), the version and which
//!   certificate the balancer presented.

mod balancer;
mod pki;
mod probes;
mod tunnel;

pub use balancer::{TlsLb, TLS_COUNTERS};
pub use pki::{cert_identity, file_identity, CertFiles, Pki, Usage};
pub use probes::{
    is_closed_within, plain_sip_attempt, probe_request, s_client, stalled_connection, Handshake,
    PlainAttempt,
};
pub use tunnel::{Stunnel, StunnelSpec};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::find_program;

/// The message a test fails with when `openssl` is not installed.
pub const OPENSSL_MISSING: &str =
    "openssl missing: run `cargo xtask test`, which installs it (Debian package openssl)";

/// The message a test fails with when stunnel is not installed.
pub const STUNNEL_MISSING: &str =
    "stunnel missing: run `cargo xtask test`, which installs it (Debian package stunnel4)";

/// Upper bound of every wait here; only a broken peer or balancer reaches it.
const PATIENCE: Duration = Duration::from_secs(10);

/// The `openssl` executable (or `$OPENSSL`); panics with [`OPENSSL_MISSING`] when absent.
pub fn openssl() -> PathBuf {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| find_program("openssl", "OPENSSL"))
        .clone()
        .unwrap_or_else(|| panic!("{OPENSSL_MISSING}"))
}

/// The `stunnel4` executable (or `stunnel`, or `$STUNNEL`); panics with [`STUNNEL_MISSING`].
pub fn stunnel() -> PathBuf {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            find_program("stunnel4", "STUNNEL").or_else(|| find_program("stunnel", "STUNNEL"))
        })
        .clone()
        .unwrap_or_else(|| panic!("{STUNNEL_MISSING}"))
}

/// Runs `openssl ARGS` in `dir` and panics with its output unless it exits 0.
fn run_openssl(dir: &Path, args: &[&str]) {
    let out = Command::new(openssl())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running openssl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("replacing {}: {e}", path.display()));
}
