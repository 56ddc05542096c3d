//! Harness for the end-to-end tests of the siplb binaries (`lb-tokio`, `lb-mio`) with real
//! peers on loopback: SIPp as the proxy-side client and as plain-mode backends, Kamailio as the
//! edge proxy, the example envelope backend, and raw Rust sockets for what SIPp cannot express
//! (garbage input).
//!
//! The tests themselves live in `tests/tests/`. This library gives them:
//! - [`bins`]: the balancer and example binaries, built once per test process;
//! - [`net`]: free ports and readiness checks read from `/proc/net/tcp`, so that probing a
//!   peer never opens a connection the peer would have to make sense of;
//! - [`process`]: child processes that are killed when their guard drops, so a failing test
//!   leaves nothing running;
//! - [`sipp`]: SIPp client and server runs with their message traces and statistics;
//! - [`trace`]: a parser for SIPp's `-trace_msg` log and the per-call attribution checks;
//! - [`flows`]: what each scenario's peer logs of a call, where every topology agrees;
//! - [`lb`]: the balancer process, its readiness and its `siplb-stats` line on SIGTERM;
//! - [`envelope`]: the example envelope-mode backend and the counters it prints on SIGTERM;
//! - [`kamailio`]: Kamailio as the edge proxy, started as a [`process::Proc`] with a config
//!   generated from `peers/kamailio-edge.cfg`, waited for until it listens;
//! - [`netsip`]: a backend on an independent SIP stack (Perl's Net::SIP), which sends its own
//!   requests over connections it opens itself, with its message log and trace;
//! - [`ops`]: raw-socket SIP clients and backends for what SIPp cannot express;
//! - [`tls`]: a test CA and certificates made with `openssl`, the balancer with a TLS listener,
//!   stunnel in client mode in front of SIPp, and `openssl s_client` probes;
//! - [`RunDir`]: a scratch directory per test, kept when the test fails.

#![warn(missing_docs)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]
#![allow(clippy::unwrap_used)]

pub mod bins;
pub mod envelope;
pub mod flows;
pub mod haproxy;
pub mod kamailio;
pub mod lb;
pub mod net;
pub mod netsip;
pub mod ops;
pub mod process;
pub mod sipp;
pub mod tls;
pub mod trace;

use std::path::{Path, PathBuf};

/// One `#[test]` per (scenario, runtime): `tokio::NAME` and `mio::NAME`, each calling the
/// test file's `fn NAME(rt: Runtime)`. Every scenario runs against both binaries.
#[macro_export]
macro_rules! for_both_runtimes {
    ($($name:ident),* $(,)?) => {
        mod tokio {
            $( #[test] fn $name() { super::$name($crate::lb::Runtime::Tokio) } )*
        }
        mod mio {
            $( #[test] fn $name() { super::$name($crate::lb::Runtime::Mio) } )*
        }
    };
}

/// A scratch directory for one test's logs and traces.
///
/// Removed when the test passes; kept (and its path printed) when the test panics, because the
/// SIPp traces and balancer logs inside are what explains a failure.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates (emptying first) `$TMPDIR/siplb-e2e/<name>-<pid>`.
    pub fn new(name: &str) -> RunDir {
        let path = std::env::temp_dir()
            .join("siplb-e2e")
            .join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating run dir {}: {e}", path.display()));
        RunDir { path }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("SIPLB_E2E_KEEP").is_some() {
            eprintln!("e2e: logs and traces kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
