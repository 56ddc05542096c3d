//! `cargo xtask bench overload`: overload without collapse (issue 15, item 6).
//!
//! Three envelope backends, each throttled to `--rate` INVITEs per second (`envelope-backend
//! --max-rate`): past it a backend stops reading, so the overload sits in the backends' queues,
//! not in the two cores the balancer and the load generator share. For each binary the load
//! generator first offers the farm's clean rate (3 × `--rate`), then twice that. Passing means:
//! under twice the load the goodput (calls completed per second) stays at least 90 % of the
//! clean rate, no call changes backend, no connection is lost, and the excess is answered with
//! 503 (which the load generator counts as rejected, not failed).

use std::io::Write as _;

use anyhow::{bail, Result};

use crate::procs::num;
use crate::{build, loadgen_result, Farm, Opts, BACKENDS};

/// What one phase of the benchmark measured.
struct Phase {
    offered: f64,
    goodput: f64,
    ok: u64,
    rejected: u64,
    failed: u64,
    violations: u64,
    lost: u64,
    /// The balancer's counters at its exit.
    holds: u64,
    refused: u64,
    to_backup: u64,
}

pub(crate) fn bench_overload(opts: &Opts) -> Result<()> {
    let per_backend = opts.rate.unwrap_or(300.0);
    let duration = opts.duration.unwrap_or(10.0);
    let runtimes: Vec<&str> = match &opts.runtime {
        Some(r) => vec![r.as_str()],
        None => vec!["tokio", "mio"],
    };
    for runtime in &runtimes {
        build(runtime)?;
    }
    let clean = per_backend * BACKENDS.len() as f64;
    let mut failures = Vec::new();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "overload: {} backends at {per_backend} INVITEs/s each (clean rate {clean} calls/s), \
         {duration} s per phase",
        BACKENDS.len()
    )?;
    for runtime in runtimes {
        let base = run_phase(runtime, per_backend, clean, duration)?;
        let over = run_phase(runtime, per_backend, 2.0 * clean, duration)?;
        for (name, p) in [("1x", &base), ("2x", &over)] {
            writeln!(
                out,
                "runtime={runtime} load={name} offered={:.0} goodput={:.0} ok={} rejected_503={} \
                 failed={} affinity_violations={} connections_lost={} lb_queue_holds={} \
                 lb_overload_503={} lb_to_backup={}",
                p.offered,
                p.goodput,
                p.ok,
                p.rejected,
                p.failed,
                p.violations,
                p.lost,
                p.holds,
                p.refused,
                p.to_backup
            )?;
        }
        let ratio = over.goodput / clean;
        writeln!(
            out,
            "runtime={runtime} goodput_at_2x={:.0} calls/s = {:.0} % of the clean rate",
            over.goodput,
            ratio * 100.0
        )?;
        if ratio < 0.9 {
            failures.push(format!(
                "{runtime}: goodput {:.0} % of clean",
                ratio * 100.0
            ));
        }
        if over.violations + base.violations > 0 {
            failures.push(format!("{runtime}: affinity violations"));
        }
        if over.lost + base.lost > 0 {
            failures.push(format!("{runtime}: connections lost"));
        }
        if over.rejected == 0 {
            failures.push(format!("{runtime}: the excess got no 503"));
        }
    }
    drop(out);
    if !failures.is_empty() {
        bail!("overload targets missed: {}", failures.join("; "));
    }
    Ok(())
}

/// One farm, one load generator run at `offered` calls per second.
fn run_phase(runtime: &str, per_backend: f64, offered: f64, duration: f64) -> Result<Phase> {
    let throttle = ["--max-rate".to_owned(), per_backend.to_string()];
    let mut farm = Farm::start_with(runtime, 32.0, &throttle)?;
    let child = farm.loadgen(&[
        "--connections".into(),
        "4".into(),
        "--rate".into(),
        offered.to_string(),
        "--duration".into(),
        format!("{duration}s"),
        "--hold".into(),
        "100ms".into(),
        // Retransmitted INVITEs would each take a place in a backend's rate: the clean rate
        // would no longer be 3 × --rate calls.
        "--retransmit-every".into(),
        "0".into(),
        "--progress".into(),
    ])?;
    let lg = loadgen_result(child)?;
    let stats = farm.stop_balancer()?;
    farm.stop_backends()?;
    let ok = num(&lg, "calls_ok");
    // Over the whole run, the calls still finishing after the last one started included: the
    // load generator's own figure, a little below ok / duration.
    let goodput = lg
        .get("calls_per_sec")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    Ok(Phase {
        offered,
        goodput,
        ok,
        rejected: num(&lg, "calls_rejected"),
        failed: num(&lg, "calls_failed"),
        violations: num(&lg, "affinity_violations"),
        lost: num(&lg, "connections_lost"),
        holds: num(&stats, "backend_queue_holds"),
        refused: num(&stats, "overload_refused"),
        to_backup: num(&stats, "to_backup"),
    })
}
