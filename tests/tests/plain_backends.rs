//! The farm of `cargo xtask bench scale`, small: both binaries with `--workers 2` in plain mode
//! (`--backend ADDR`, no envelope) in front of three `envelope-backend --plain`, driven by
//! `lb-loadgen` with its INVITE copies on (the new-call table's path). Every call completes,
//! none is answered by two backends (the load generator checks the To tag and Contact every
//! UAS sends), the calls are spread over the three backends, and each backend's own counters
//! agree with what the load generator saw.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::Command;

use siplb_e2e::bins;
use siplb_e2e::envelope::EnvBackend;
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, Runtime};
use siplb_e2e::RunDir;

const CALLS: u64 = 600;

/// `key=value` pairs of a summary line.
fn pairs(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn plain_backends_through(runtime: Runtime) {
    let dir = RunDir::new(&format!("plain_backends_{}", runtime.name()));
    let backends: Vec<EnvBackend> = ["p1", "p2", "p3"]
        .iter()
        .map(|n| EnvBackend::start_plain(&dir, n))
        .collect();
    let spec = LbSpec::new(
        runtime,
        backends
            .iter()
            .map(|b| BackendArg::plain(b.addr()))
            .collect(),
    )
    .with_workers(2);
    let mut lb = Balancer::start(&dir, spec);
    let out = Command::new(bins::binary("lb-loadgen", "lb-loadgen"))
        .args(["--target", &lb.addr().to_string()])
        .args(["--connections", "8", "--rate", "300"])
        .args(["--calls", &CALLS.to_string()])
        .args(["--hold", "100ms", "--retransmit-every", "5"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "lb-loadgen: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = pairs(stdout.lines().last().unwrap_or_default());
    let get = |k: &str| report.get(k).map(String::as_str).unwrap_or_default();
    assert_eq!(get("calls_ok"), CALLS.to_string(), "{stdout}");
    assert_eq!(get("calls_failed"), "0", "{stdout}");
    assert_eq!(get("affinity_violations"), "0", "{stdout}");
    assert_eq!(get("retransmitted"), (CALLS / 5).to_string(), "{stdout}");
    assert_eq!(get("connections_lost"), "0", "{stdout}");
    lb.assert_running();
    lb.stop();

    // Calls per backend, named by Contact (`p1@127.0.0.1:PORT`): round robin per worker, so
    // every backend has some, and the three add up.
    let per_backend: BTreeMap<String, u64> = get("per_backend")
        .split(',')
        .filter_map(|e| e.rsplit_once(':'))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap()))
        .collect();
    assert_eq!(per_backend.len(), 3, "{stdout}");
    assert_eq!(per_backend.values().sum::<u64>(), CALLS);
    for b in backends {
        let key = format!("{}@{}", b.name(), b.addr());
        let calls = *per_backend.get(&key).unwrap_or(&0);
        assert!(calls >= CALLS / 6, "{key} had {calls}: {stdout}");
        let counters = b.finish();
        // Each copy of an INVITE reached the backend that has the call.
        assert_eq!(counters["calls"], calls, "{key}: {counters:?}");
        assert_eq!(counters["completed"], calls, "{key}: {counters:?}");
        assert_eq!(counters["no_dialog"], 0, "{key}: {counters:?}");
    }
}

#[test]
fn tokio_plain_backends() {
    plain_backends_through(Runtime::Tokio);
}

#[test]
fn mio_plain_backends() {
    plain_backends_through(Runtime::Mio);
}
