//! `cargo xtask test [ARGS…]`: the README's test command.
//!
//! The end-to-end tests run real peers that come from Debian packages ([`PEERS`]). This task
//! makes sure they are there, then runs `cargo test --workspace --release ARGS…`:
//! - all present: straight to the tests;
//! - some missing, as root: `apt-get update`, then
//!   `DEBIAN_FRONTEND=noninteractive apt-get install -y PACKAGES`, then the tests;
//! - some missing, not root: fails, printing the one `sudo apt-get install` line that installs
//!   them and `sudo cargo xtask test`. Never a silent skip: the tests themselves also fail
//!   (naming this task) when a peer is missing.
//!
//! A `-p`/`--package` among ARGS (before any `--`) selects those packages instead of
//! `--workspace`, so `cargo xtask test -p siplb-e2e --test edge_proxy` runs one test file with
//! its peers installed.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::peer::find_program;

/// How to tell that a peer is installed.
#[derive(Clone, Copy)]
enum Probe {
    /// An executable on `PATH` (or in the sbin folders).
    Program(&'static str),
    /// A Perl module that `perl -MMODULE -e1` loads.
    PerlModule(&'static str),
    /// A module Debian's own Python (`/usr/bin/python3`, not a pyenv or venv one) imports.
    DebianPythonModule(&'static str),
}

/// One peer the tests need: what it is, how to find it, the Debian package that has it.
struct Peer {
    name: &'static str,
    probe: Probe,
    package: &'static str,
}

/// Every peer of the test suite, one line each; a new peer (stunnel4) is one more line.
const PEERS: &[Peer] = &[
    Peer {
        name: "SIPp",
        probe: Probe::Program("sipp"),
        package: "sip-tester",
    },
    Peer {
        name: "Kamailio",
        probe: Probe::Program("kamailio"),
        package: "kamailio",
    },
    Peer {
        name: "Net::SIP",
        probe: Probe::PerlModule("Net::SIP"),
        package: "libnet-sip-perl",
    },
    // `systemd-analyze verify` of packaging/siplb.service (tests/tests/packaging.rs).
    Peer {
        name: "systemd-analyze",
        probe: Probe::Program("systemd-analyze"),
        package: "systemd",
    },
    Peer {
        name: "HAProxy",
        probe: Probe::Program("haproxy"),
        package: "haproxy",
    },
    Peer {
        name: "stunnel",
        probe: Probe::Program("stunnel4"),
        package: "stunnel4",
    },
    Peer {
        name: "OpenSSL",
        probe: Probe::Program("openssl"),
        package: "openssl",
    },
    // A virtual environment for kubernetes-validate (tests/tests/deploy.rs); Debian strips
    // ensurepip from python3 and ships it in python3-venv.
    Peer {
        name: "python3-venv",
        probe: Probe::DebianPythonModule("ensurepip"),
        package: "python3-venv",
    },
];

/// The entry point of `test`.
pub(crate) fn test(args: &[&str]) -> Result<()> {
    let missing = missing_peers();
    if !missing.is_empty() {
        let packages: Vec<&str> = missing.iter().map(|p| p.package).collect();
        let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
        if !is_root()? {
            bail!(
                "the tests need {} (not installed). Install with\n    sudo apt-get install -y {}\n\
                 or let this task install them and run the tests:\n    sudo cargo xtask test",
                names.join(", "),
                packages.join(" ")
            );
        }
        install(&packages)?;
        let still: Vec<&str> = missing_peers().iter().map(|p| p.name).collect();
        if !still.is_empty() {
            bail!(
                "installed {} but still missing: {}",
                packages.join(" "),
                still.join(", ")
            );
        }
    }
    let mut cmd = crate::cargo();
    cmd.args(["test", "--release"]);
    if !selects_packages(args) {
        cmd.arg("--workspace");
    }
    cmd.args(args);
    eprintln!("xtask test: {cmd:?}");
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

/// The peers not found on this machine, in table order.
fn missing_peers() -> Vec<&'static Peer> {
    PEERS.iter().filter(|p| !is_installed(p.probe)).collect()
}

fn is_installed(probe: Probe) -> bool {
    match probe {
        Probe::Program(name) => find_program(name).is_some(),
        Probe::PerlModule(module) => Command::new(find_program("perl").unwrap_or("perl".into()))
            .arg(format!("-M{module}"))
            .arg("-e1")
            .output()
            .is_ok_and(|o| o.status.success()),
        Probe::DebianPythonModule(module) => Command::new("/usr/bin/python3")
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success()),
    }
}

/// `apt-get update`, then a non-interactive install of `packages`.
fn install(packages: &[&str]) -> Result<()> {
    let steps: [Vec<&str>; 2] = [vec!["update"], [&["install", "-y"][..], packages].concat()];
    for args in steps {
        eprintln!("xtask test: apt-get {}", args.join(" "));
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (is this Debian or Ubuntu?)")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
    }
    Ok(())
}

/// Whether the effective user is root, from `/proc/self/status` (`Uid: real effective …`);
/// the workspace forbids the `unsafe` a `geteuid` call would need.
fn is_root() -> Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1))
        .context("no Uid line in /proc/self/status")?;
    Ok(euid == "0")
}

/// Whether `args` name packages (`-p X`, `-pX`, `--package X`, `--package=X`) before any `--`.
fn selects_packages(args: &[&str]) -> bool {
    args.iter().take_while(|a| **a != "--").any(|a| {
        *a == "-p"
            || *a == "--package"
            || a.starts_with("--package=")
            || (a.starts_with("-p") && a.len() > 2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_replace_the_workspace_only_before_the_separator() {
        assert!(selects_packages(&[
            "-p",
            "siplb-e2e",
            "--test",
            "edge_proxy"
        ]));
        assert!(selects_packages(&["--package=lb-core"]));
        assert!(!selects_packages(&["--", "-p"]));
        assert!(!selects_packages(&["--test-threads", "2"]));
    }

    #[test]
    fn every_peer_has_one_package() {
        let mut packages: Vec<&str> = PEERS.iter().map(|p| p.package).collect();
        packages.sort_unstable();
        packages.dedup();
        assert_eq!(packages.len(), PEERS.len());
    }
}
