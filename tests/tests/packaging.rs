//! `packaging/siplb.service` passes `systemd-analyze verify` once its binary paths point at
//! the built `lb-tokio`, and that binary accepts the sample config the unit names
//! (`--check-config`). `systemd-analyze` comes with Debian's `systemd` package, which
//! `cargo xtask test` installs when it is missing.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use siplb_e2e::lb::Runtime;
use siplb_e2e::process::find_program;
use siplb_e2e::{bins, RunDir};

const UNIT: &str = include_str!("../../packaging/siplb.service");
const INSTALLED: &str = "/usr/local/bin/lb-tokio";
const CONFIG: &str = "/etc/siplb/siplb.toml";

#[test]
fn the_systemd_unit_verifies() {
    let analyze = find_program("systemd-analyze", "SYSTEMD_ANALYZE").expect(
        "systemd-analyze is not installed (Debian package systemd): run `cargo xtask test`",
    );
    let dir = RunDir::new("packaging-unit");
    let binary = Runtime::Tokio.binary();
    assert!(UNIT.contains(INSTALLED) && UNIT.contains(CONFIG));
    let config = dir.file("siplb.toml");
    let sample =
        std::fs::read_to_string(bins::workspace_root().join("packaging/siplb.toml")).unwrap();
    std::fs::write(&config, sample).unwrap();
    std::fs::write(dir.file("tag.keys"), "1:00112233445566778899aabbccddeeff\n").unwrap();
    let unit = UNIT
        .replace(INSTALLED, binary.to_str().unwrap())
        .replace(CONFIG, config.to_str().unwrap());
    let path = dir.file("siplb.service");
    std::fs::write(&path, unit).unwrap();

    // `--man=no`: the unit's Documentation= names the man page `cargo xtask dist` makes,
    // which is not installed here.
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

    // What ExecStartPre runs.
    let out = Command::new(&binary)
        .args(["--config", config.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "config ok");
}
