//! `lb-sim`: runs one scenario of the simulator and prints its result line.
//!
//! Exit code 0 when every invariant held, 1 when one broke, 2 on a usage or I/O error.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use lb_sim::{Knobs, Scenario, Trace};

/// Deterministic simulation of siplb under retransmission storms, expiry, failures and scale-out
/// (`scale`: instances of several workers, one of which dies mid-storm; its result line adds
/// the calls lost by phase).
#[derive(Debug, Parser)]
#[command(name = "lb-sim", version)]
struct Args {
    /// storm | expiry | failover | scale
    scenario: Scenario,
    /// Seeds every random draw; the same seed and arguments give the same digest.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Calls to place (default: the scenario's).
    #[arg(long)]
    calls: Option<u64>,
    /// New calls per second of virtual time (default: the scenario's).
    #[arg(long)]
    rate: Option<f64>,
    /// Backends in the farm (default: the scenario's).
    #[arg(long)]
    backends: Option<usize>,
    /// Balancer instances (default: the scenario's).
    #[arg(long)]
    instances: Option<usize>,
    /// Workers per instance (default: the scenario's).
    #[arg(long)]
    workers: Option<usize>,
    /// Write every trace event as a JSON line to this file.
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Draw table size, retransmissions and per-backend load as an SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also print `sim_events_per_sec=N wall_s=W` (to stderr).
    #[arg(long)]
    bench: bool,
    /// Do not check the balancers' outputs against the core's output contract (to measure
    /// what the check costs; the digest is the same either way).
    #[arg(long)]
    no_contract: bool,
    /// Print each violation and per-instance counters to stderr.
    #[arg(long, short)]
    verbose: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("lb-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let mut k = Knobs::preset(args.scenario, args.seed);
    if let Some(c) = args.calls {
        k.calls = c;
    }
    if let Some(r) = args.rate {
        k.rate = r;
    }
    if let Some(b) = args.backends {
        k.backends = b;
    }
    if let Some(i) = args.instances {
        k.instances = i;
    }
    if let Some(w) = args.workers {
        k.workers = w;
    }
    k.check_contract = !args.no_contract;
    let k = k.with_default_outage();
    let out: Option<Box<dyn Write>> = match &args.trace {
        Some(p) => Some(Box::new(std::io::BufWriter::new(std::fs::File::create(p)?))),
        None => None,
    };
    let started = Instant::now();
    let report = lb_sim::run(k, Trace::new(out))?;
    let wall = started.elapsed().as_secs_f64();
    for v in report
        .violations
        .iter()
        .take(if args.verbose { 50 } else { 10 })
    {
        eprintln!(
            "violation t={:.6}s {:?}: {}",
            v.t_us as f64 / 1e6,
            v.kind,
            v.detail
        );
    }
    let o = report.outcomes;
    eprintln!(
        "outcomes completed={} cancelled={} rejected={} timed_out={} abandoned={} udp_lost={} tcp_lost={} cancel_elsewhere={} \
         model_max_table={} table_deviation_max={} expected_table={:.0} mean_ringing_s={:.2} virtual_s={:.1} violations={}",
        o[0],
        o[1],
        o[2],
        o[3],
        o[4],
        report.udp_lost,
        report.tcp_lost,
        report.cancel_elsewhere,
        report.model_max_table,
        report.table_deviation_max,
        report.expected_table,
        report.mean_ringing_s,
        report.virtual_s,
        report.violation_count
    );
    if args.verbose {
        for (i, s) in report.stats.iter().enumerate() {
            eprintln!("lb{i} {s}");
        }
    }
    if let Some(p) = &args.plot {
        let title = format!(
            "lb-sim {} seed={} calls={}",
            report.scenario, report.seed, report.calls
        );
        lb_sim::plot::draw(p, &title, &report.samples)?;
    }
    if args.bench {
        eprintln!(
            "sim_events_per_sec={:.0} wall_s={:.2}",
            report.events as f64 / wall.max(1e-9),
            wall
        );
    }
    println!("{report}");
    Ok(report.is_ok())
}
