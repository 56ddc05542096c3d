//! Locating (and building once) the binaries under test.
//!
//! Cargo only builds binaries of the package under test for integration tests, so the balancer
//! binaries are built here with a nested `cargo build` of the same profile into the same target
//! directory: when they are already up to date this costs a fraction of a second, and a test
//! run never uses a stale binary. `SIPLB_E2E_BIN_DIR=DIR` skips the build and takes the binaries
//! from `DIR` instead (e.g. release builds made by CI).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Results of the builds done so far in this process, by package name.
static BUILT: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();

/// The workspace root (the parent of this package's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

/// The profile directory the running test executable was built into (`target/debug` for
/// `target/debug/deps/e2e-HASH`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe.parent().expect("test executable has a directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps has a parent")
    } else {
        deps
    };
    dir.to_path_buf()
}

/// Path to binary `bin` of workspace package `package`, built first (once per process).
///
/// Panics with cargo's output when the build fails, so a broken binary fails the test loudly.
pub fn binary(package: &str, bin: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("SIPLB_E2E_BIN_DIR") {
        let path = PathBuf::from(dir).join(bin);
        assert!(
            path.is_file(),
            "SIPLB_E2E_BIN_DIR is set but {} does not exist",
            path.display()
        );
        return path;
    }
    build(package);
    let path = profile_dir().join(bin);
    assert!(
        path.is_file(),
        "cargo built package {package} but {} does not exist",
        path.display()
    );
    path
}

/// Runs `cargo build -p package` once per process, in the profile of the running tests.
fn build(package: &str) {
    let built = BUILT.get_or_init(|| Mutex::new(HashMap::new()));
    // Holding the lock while cargo runs serialises the builds, which cargo's own target-dir
    // lock would do anyway.
    let mut built = built
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let result = built
        .entry(package.to_string())
        .or_insert_with(|| run_cargo_build(package));
    if let Err(e) = result {
        panic!("building {package} for the end-to-end tests failed:\n{e}");
    }
}

fn run_cargo_build(package: &str) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "--quiet", "-p", package]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{:?} exited with {}\n{}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
