//! `cargo xtask fuzz TARGET [--seconds N]`: runs one cargo-fuzz target of `fuzz/` for N seconds.
//!
//! It runs `cargo fuzz run TARGET -s none -- -max_total_time=N` from the workspace root, so the
//! corpus is `fuzz/corpus/TARGET` and crashes land in `fuzz/artifacts/TARGET`. `-s none` builds
//! without sanitizers: they need a nightly compiler, libFuzzer itself does not, so this works
//! on the stable toolchain. The targets' harnesses and invariants are in `lb-testkit`
//! (`crates/lb-testkit/src/fuzz/`, the output contract in `contract.rs`), with the few readers of
//! private items in lb-core's `fuzzing` module (feature `fuzzing`).

use anyhow::{bail, Context, Result};

/// The targets of `fuzz/Cargo.toml`.
pub(crate) const TARGETS: [&str; 3] = ["stream_demux", "envelope_decoder", "core_sequence"];

const SECONDS_DEFAULT: u64 = 60;

/// A parsed `fuzz` task.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct FuzzTask<'a> {
    pub(crate) target: &'a str,
    pub(crate) seconds: u64,
}

impl<'a> FuzzTask<'a> {
    pub(crate) fn parse(words: &[&'a str]) -> Result<FuzzTask<'a>> {
        let Some((&target, mut rest)) = words.split_first() else {
            bail!("fuzz: which target? one of {}", TARGETS.join(", "));
        };
        if !TARGETS.contains(&target) {
            bail!(
                "fuzz: no target {target:?}; the targets are {}",
                TARGETS.join(", ")
            );
        }
        let mut seconds = SECONDS_DEFAULT;
        while let Some((&flag, tail)) = rest.split_first() {
            match (flag, tail.first()) {
                ("--seconds", Some(value)) => {
                    seconds = value
                        .parse()
                        .ok()
                        .filter(|s| *s > 0)
                        .with_context(|| format!("--seconds: bad value {value:?}"))?;
                }
                _ => bail!("fuzz: unknown option {flag} (or a missing value)"),
            }
            rest = &tail[1..];
        }
        Ok(FuzzTask { target, seconds })
    }

    /// The libFuzzer flags: the time budget, and for the core's sequences room for long
    /// programs from the start (libFuzzer grows its inputs slowly otherwise, and a run of the
    /// core needs many steps to reach failover and expiry).
    pub(crate) fn fuzzer_args(&self) -> Vec<String> {
        let mut args = vec![format!("-max_total_time={}", self.seconds)];
        if self.target == "core_sequence" {
            args.extend(["-max_len=4096".to_owned(), "-len_control=0".to_owned()]);
        }
        args
    }
}

pub(crate) fn fuzz(words: &[&str]) -> Result<()> {
    let task = FuzzTask::parse(words)?;
    let installed = super::cargo()
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !installed {
        bail!(
            "cargo-fuzz is not installed: run `cargo install cargo-fuzz` (stable is enough; it \
             also needs a C++ compiler to build libFuzzer). Without it, `cargo test -p lb-testkit \
             --test fuzz` runs the targets on their seeds and the regressions, and \
             SIPLB_FUZZ_NOISE_SEEDS=N runs core_sequence on N noise inputs"
        );
    }
    eprintln!(
        "xtask fuzz: cargo fuzz run {} -s none -- {}",
        task.target,
        task.fuzzer_args().join(" ")
    );
    let status = super::cargo()
        .args(["fuzz", "run", task.target, "-s", "none", "--"])
        .args(task.fuzzer_args())
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!(
            "{} failed ({status}): a crash is saved under fuzz/artifacts/{0}/; minimise it with \
             `cargo fuzz tmin -s none {0} FILE`, keep it as fuzz/regressions/{0}-NAME and replay \
             it in `mod regressions` of crates/lb-testkit/tests/fuzz.rs",
            task.target
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn targets_and_seconds() {
        let t = FuzzTask::parse(&["core_sequence", "--seconds", "600"]).unwrap();
        assert_eq!(t.seconds, 600);
        assert_eq!(
            t.fuzzer_args(),
            ["-max_total_time=600", "-max_len=4096", "-len_control=0"]
        );
        let t = FuzzTask::parse(&["stream_demux"]).unwrap();
        assert_eq!(
            t.fuzzer_args(),
            [format!("-max_total_time={SECONDS_DEFAULT}")]
        );
        assert!(FuzzTask::parse(&[]).is_err());
        assert!(FuzzTask::parse(&["nope"]).is_err());
        assert!(FuzzTask::parse(&["envelope_decoder", "--seconds"]).is_err());
        assert!(FuzzTask::parse(&["envelope_decoder", "--seconds", "0"]).is_err());
        assert!(FuzzTask::parse(&["envelope_decoder", "--minutes", "3"]).is_err());
    }

    #[test]
    fn the_targets_are_the_fuzz_crates_bins() {
        let manifest =
            std::fs::read_to_string(super::super::workspace_root().join("fuzz/Cargo.toml"))
                .unwrap();
        for target in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{target}\"")),
                "{target} missing from fuzz/Cargo.toml"
            );
        }
    }
}
