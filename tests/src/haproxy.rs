//! HAProxy (Debian package `haproxy`) as the tests' L4 balancer: in front of siplb with the
//! PROXY protocol (tests/tests/scale.rs), or as the shared entry of several instances
//! (tests/tests/instances.rs). Each test writes the configuration it needs; this starts it.

use std::process::Command;
use std::time::Duration;

use crate::net;
use crate::process::{find_program, Proc};
use crate::RunDir;

/// The message a test fails with when HAProxy is not installed: the tests never skip.
const HAPROXY_MISSING: &str =
    "HAProxy missing: run `cargo xtask test`, which installs it (Debian package haproxy)";

/// Starts HAProxy in the foreground (`-db`) with `config` (written to `NAME.cfg` in the run
/// dir) and waits until it listens on 127.0.0.1:`port`. Panics if it exits first.
pub fn start(dir: &RunDir, name: &str, port: u16, config: &str) -> Proc {
    let bin = find_program("haproxy", "HAPROXY").unwrap_or_else(|| panic!("{HAPROXY_MISSING}"));
    let cfg = dir.file(&format!("{name}.cfg"));
    std::fs::write(&cfg, config).unwrap_or_else(|e| panic!("{}: {e}", cfg.display()));
    let mut cmd = Command::new(bin);
    cmd.arg("-f").arg(&cfg).arg("-db").current_dir(dir.path());
    let mut proc = Proc::spawn(&format!("{name}-{port}"), cmd, dir.path());
    net::wait_until(
        &format!("{name} to listen"),
        Duration::from_secs(10),
        || {
            assert!(
                proc.is_running(),
                "haproxy exited at start\n{}",
                proc.output_tail(20)
            );
            net::is_listening(port)
        },
    );
    proc
}
