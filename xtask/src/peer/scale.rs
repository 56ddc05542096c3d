//! `cargo xtask bench scale [--workers 1,2] [--only kamailio,tokio,mio] [--step SECS]
//! [--start CPS] [--bisect N] [--connections N] [--no-build]`: the highest call rate each
//! balancer carries with no failed call, at each worker count, and the CPU per call there.
//!
//! Every balancer gets the same farm: three `envelope-backend --plain` (ordinary SIP UASes over
//! TCP), the balancer with plain backends (siplb `--workers N`; Kamailio's dispatcher as in
//! `bench peer`, TLSF, with N SIP and N TCP workers), and `lb-loadgen` with `--connections`
//! TCP connections (8 by default, so that SO_REUSEPORT hands both siplb workers some). A step
//! runs the load generator at one rate for `--step` seconds (3 by default). It is clean when no
//! call failed, no call was answered by two backends, no connection was lost, and the load
//! generator started at least 97 % of the calls due (else it, not the balancer, was the limit).
//! The search doubles the rate from `--start` (2,000 by default) until a step is not clean, then
//! bisects `--bisect` times (2 by default) between the last clean rate and the first failed one.
//! A step that is not clean is run once more on a fresh farm, and the second result stands:
//! with other work on the two cores a step can stall for reasons that are not the balancer's.
//!
//! Each step measures CPU time over the load generator's run, in three scopes, each divided by
//! the calls completed: the balancer's process tree (`lb_cpu_us_per_call`, every thread, from
//! /proc), the whole farm (`farm_cpu_us_per_call`: balancer, backends and load generator, the
//! last two also shown apart) and
//! the whole machine (`system_cpu_us_per_call`, /proc/stat, other work on it included). On two
//! cores the load generator and the backends compete with the balancer, so the balancer's own
//! figure is the one that shows how it scales. For siplb, `worker_share` is each worker thread's
//! part of the balancer's CPU.
//!
//! Then come the comparison steps, `2 × --step` seconds each, on fresh farms: each siplb binary
//! with the most workers at N times the highest clean rate of one worker (`flat`: the same load
//! per worker; CPU per call should not grow with workers), and at the highest rate that both it and Kamailio carried
//! cleanly with the same workers, the one of the two with room to spare (`vs_kamailio`); the
//! other's figures there are its search step's. Lines on stdout:
//!
//! `scale lb=NAME workers=N max_clean_rate=R first_failed=R2 (CAUSE) <the step's figures>`,
//! CAUSE being `calls` (calls failed) or `loadgen` (none did, but the load generator, on the same
//! two cores, could not start 97 % of the calls due),
//! `scale flat lb=NAME lb_cpu_us_per_call_w1=A (rate R1) lb_cpu_us_per_call_wN=B (rate RN)
//! ratio=B/A lb_cpu_us_per_call_wN_same_load=C (rate R) ratio_same_load=C/A`,
//! `scale vs_kamailio workers=N rate=R lb=NAME lb_cpu_us_per_call=C kamailio_lb_cpu_us_per_call=K
//! ratio=C/K max_clean_rate=R1 kamailio_max_clean_rate=R2`.
//!
//! Every step's line goes to stderr as it ends. The load generator sends no INVITE copies
//! here (`--retransmit-every 0`): Kamailio's stateless round robin would send each copy to the
//! next backend, an affinity violation that siplb's new-call table prevents.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{
    listening, loadavg, number, parse_flags, start_kamailio, wait_until, Lb, Tools, Tree, ALL,
};
use crate::procs::{clock_ticks, free_port, pairs, parse_stat, TempDir};

const USAGE: &str = "usage: cargo xtask bench scale [--workers 1,2] [--only kamailio,tokio,mio] \
                     [--step SECS] [--start CPS] [--bisect N] [--connections N] [--no-build]";

/// The plain backends every balancer gets.
const BACKENDS: usize = 3;
/// A step's load generator must start this share of the calls due, or it was the limit.
const STARTED_MIN: f64 = 0.97;
/// Rates are searched in steps of this many calls/s.
const GRAIN: u32 = 100;
/// No search goes beyond this rate (far above what one load generator thread makes).
const RATE_MAX: u32 = 256_000;

struct ScaleOpts {
    workers: Vec<usize>,
    only: Vec<Lb>,
    step: f64,
    start: u32,
    bisect: u32,
    connections: usize,
    no_build: bool,
}

impl ScaleOpts {
    fn parse(words: &[&str]) -> Result<ScaleOpts> {
        let mut opts = ScaleOpts {
            workers: vec![1, 2],
            only: ALL.to_vec(),
            step: 3.0,
            start: 2000,
            bisect: 2,
            connections: 8,
            no_build: false,
        };
        opts.no_build = parse_flags(words, USAGE, |flag, value| {
            match flag {
                "--workers" => {
                    opts.workers = value
                        .split(',')
                        .map(|w| number(flag, w))
                        .collect::<Result<_>>()?;
                    opts.workers.sort_unstable();
                    opts.workers.dedup();
                }
                "--only" => opts.only = Lb::parse_list(value)?,
                "--step" => opts.step = number(flag, value)?,
                "--start" => opts.start = number(flag, value)?,
                "--bisect" => opts.bisect = number(flag, value)?,
                "--connections" => opts.connections = number(flag, value)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if opts.workers.is_empty() || opts.workers.contains(&0) {
            bail!("--workers takes counts above 0");
        }
        if !opts.step.is_finite() || opts.step <= 0.0 || opts.start < GRAIN || opts.connections == 0
        {
            bail!("--step and --connections must be above 0, --start at least {GRAIN}");
        }
        Ok(opts)
    }
}

/// What one step measured.
#[derive(Clone, Debug)]
struct Step {
    rate: u32,
    ok: u64,
    failed: u64,
    violations: u64,
    lost: u64,
    /// Of the failed calls: no final response within the load generator's 2 s.
    timeouts: u64,
    /// Of the failed calls: `CODE:COUNT,…` as the load generator prints it.
    non_2xx: String,
    /// Calls started over calls due.
    started: f64,
    lb_us: f64,
    farm_us: f64,
    /// Of the farm: the three backends, and the load generator.
    backends_us: f64,
    loadgen_us: f64,
    system_us: f64,
    /// Each siplb worker thread's share of the balancer's CPU (empty for Kamailio).
    worker_share: Vec<f64>,
    load: String,
}

impl Step {
    fn clean(&self) -> bool {
        self.failed == 0 && self.violations == 0 && self.lost == 0 && self.started >= STARTED_MIN
    }

    /// Why a step is not clean: `loadgen` when every call it started completed but it could
    /// not start enough of them (the machine, not the balancer, was the limit), else `calls`.
    fn cause(&self) -> &'static str {
        if self.failed == 0 && self.violations == 0 && self.lost == 0 {
            "loadgen"
        } else {
            "calls"
        }
    }

    /// The step's figures as `key=value` pairs.
    fn figures(&self) -> String {
        let shares: Vec<String> = self
            .worker_share
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect();
        let mut line =
            format!(
            "rate={} calls_ok={} calls_failed={} affinity_violations={} timeouts={} non_2xx={} \
             started={:.3} lb_cpu_us_per_call={:.1} farm_cpu_us_per_call={:.1} \
             (backends {:.1}, loadgen {:.1}) system_cpu_us_per_call={:.1}",
            self.rate,
            self.ok,
            self.failed,
            self.violations,
            self.timeouts,
            if self.non_2xx.is_empty() { "-" } else { &self.non_2xx },
            self.started,
            self.lb_us,
            self.farm_us,
            self.backends_us,
            self.loadgen_us,
            self.system_us
        );
        if !shares.is_empty() {
            let _ = write!(line, " worker_share={}", shares.join(","));
        }
        let _ = write!(line, " loadavg={}", self.load);
        line
    }
}

/// The entry point of `bench scale`.
pub(crate) fn bench_scale(words: &[&str]) -> Result<()> {
    let opts = ScaleOpts::parse(words)?;
    let tools = Tools::find(&opts.only)?;
    if !opts.no_build {
        build()?;
    }
    let bench = Bench {
        opts: &opts,
        tools: &tools,
        bin: crate::release_dir(),
        ticks: clock_ticks() as f64,
    };
    let mut best: BTreeMap<(Lb, usize), Step> = BTreeMap::new();
    for &workers in &opts.workers {
        for &lb in &opts.only {
            let found = bench
                .search(lb, workers)
                .with_context(|| format!("{} --workers {workers}", lb.name()))?;
            let above = found
                .bad
                .as_ref()
                .map_or("none".to_owned(), |b| format!("{} ({})", b.rate, b.cause()));
            match found.good {
                Some(step) => {
                    println!(
                        "scale lb={} workers={workers} max_clean_rate={} first_failed={above} {}",
                        lb.name(),
                        step.rate,
                        step.figures()
                    );
                    best.insert((lb, workers), step);
                }
                None => println!(
                    "scale lb={} workers={workers} max_clean_rate=0 first_failed={above}",
                    lb.name()
                ),
            }
        }
    }
    bench.flat(&best)?;
    bench.versus_kamailio(&best)
}

struct Bench<'a> {
    opts: &'a ScaleOpts,
    tools: &'a Tools,
    bin: PathBuf,
    ticks: f64,
}

impl Bench<'_> {
    /// Doubling, then bisection: the highest clean step (`None` if not even the lowest is) and
    /// the lowest step that was not.
    fn search(&self, lb: Lb, workers: usize) -> Result<Search> {
        let mut farm = None;
        let mut good: Option<Step> = None;
        let mut bad: Option<Step> = None;
        let mut rate = self.opts.start;
        let mut bisections = 0;
        loop {
            let step = self.confirmed_step(&mut farm, lb, workers, rate, self.opts.step)?;
            if step.clean() {
                good = Some(step);
            } else {
                bad = Some(step);
                // A balancer that failed may hold a backlog or have lost connections.
                farm = None;
            }
            let low = good.as_ref().map_or(0, |s| s.rate);
            rate = match &bad {
                None if rate >= RATE_MAX => break,
                None => rate.saturating_mul(2).min(RATE_MAX),
                Some(high) => {
                    let mid = (low + high.rate) / 2 / GRAIN * GRAIN;
                    if bisections >= self.opts.bisect || mid <= low || mid >= high.rate {
                        break;
                    }
                    bisections += 1;
                    mid
                }
            };
        }
        Ok(Search { good, bad })
    }

    /// A step, and when it is not clean a second one on a fresh farm, which stands: other work
    /// on a shared machine can stall a step that the balancer would carry (see the doc).
    fn confirmed_step(
        &self,
        farm: &mut Option<ScaleFarm>,
        lb: Lb,
        workers: usize,
        rate: u32,
        secs: f64,
    ) -> Result<Step> {
        let mut step = self.step_on(farm, lb, workers, rate, secs)?;
        for attempt in 1..=2 {
            eprintln!(
                "scale step lb={} workers={workers} attempt={attempt} clean={} {}",
                lb.name(),
                step.clean(),
                step.figures()
            );
            if step.clean() || attempt == 2 {
                break;
            }
            *farm = None;
            step = self.step_on(farm, lb, workers, rate, secs)?;
        }
        Ok(step)
    }

    /// One step on `farm`, started first if there is none.
    fn step_on(
        &self,
        farm: &mut Option<ScaleFarm>,
        lb: Lb,
        workers: usize,
        rate: u32,
        secs: f64,
    ) -> Result<Step> {
        let running = match farm {
            Some(f) => f,
            None => farm.insert(ScaleFarm::start(self, lb, workers)?),
        };
        // Whatever the previous step left (expiring table entries, a closing connection) settles.
        std::thread::sleep(Duration::from_millis(300));
        self.step(running, rate, secs)
    }

    /// Runs the load generator once against `farm` and measures.
    fn step(&self, farm: &mut ScaleFarm, rate: u32, secs: f64) -> Result<Step> {
        let mut cmd = Command::new(self.bin.join("lb-loadgen"));
        cmd.args(["--target", &farm.listen.to_string()])
            .args(["--connections", &self.opts.connections.to_string()])
            .args(["--rate", &rate.to_string()])
            .args(["--duration", &format!("{secs}s")])
            .args(["--hold", "100ms", "--timeout", "2s"])
            // No INVITE copies: Kamailio's stateless round robin sends a copy to the next
            // backend (siplb's new-call table exists for that), and over TCP no UAC
            // retransmits, as in `bench peer`.
            .args(["--retransmit-every", "0"]);
        let name = format!("loadgen-{}", farm.steps);
        farm.steps += 1;
        let before = Sample::take(farm)?;
        let load = loadavg();
        let mut loadgen = Tree::spawn(&name, &mut cmd, &farm.dir)?;
        let started = Instant::now();
        let limit = Duration::from_secs_f64(secs) + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = loadgen.exit_status()? {
                break status;
            }
            if started.elapsed() > limit {
                bail!("lb-loadgen did not finish within {limit:?}");
            }
            farm.balancer.check_running()?;
            std::thread::sleep(Duration::from_millis(20));
        };
        let after = Sample::take(farm)?;
        let out = std::fs::read_to_string(farm.dir.path(&format!("{name}.out")))?;
        let summary = out.lines().find(|l| l.starts_with("calls_ok="));
        let Some(summary) = summary.filter(|_| status.success()) else {
            let err = std::fs::read_to_string(farm.dir.path(&format!("{name}.err")))?;
            bail!("lb-loadgen failed ({status}): {}{}", out.trim(), err.trim());
        };
        let lg = pairs(summary);
        let count = |k: &str| lg.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        let ok = count("calls_ok");
        let per_call = |ticks: u64| {
            if ok == 0 {
                0.0
            } else {
                ticks as f64 / self.ticks * 1e6 / ok as f64
            }
        };
        let lb_ticks = after.balancer.saturating_sub(before.balancer);
        let backend_ticks = after.backends.saturating_sub(before.backends);
        let loadgen_ticks = after.children.saturating_sub(before.children);
        let farm_ticks = lb_ticks + backend_ticks + loadgen_ticks;
        let worker_share = after
            .workers
            .iter()
            .map(|(tid, t)| {
                let was = before.workers.get(tid).copied().unwrap_or(0);
                t.saturating_sub(was) as f64 / lb_ticks.max(1) as f64
            })
            .collect();
        let due = f64::from(rate) * secs;
        Ok(Step {
            rate,
            ok,
            failed: count("calls_failed"),
            violations: count("affinity_violations"),
            lost: count("connections_lost"),
            timeouts: count("timeouts"),
            non_2xx: lg.get("non_2xx").cloned().unwrap_or_default(),
            started: (ok + count("calls_failed")) as f64 / due,
            lb_us: per_call(lb_ticks),
            farm_us: per_call(farm_ticks),
            backends_us: per_call(backend_ticks),
            loadgen_us: per_call(loadgen_ticks),
            system_us: per_call(after.system.saturating_sub(before.system)),
            worker_share,
            load,
        })
    }

    /// Each siplb binary's CPU per call with one worker and with the most, each at its highest
    /// clean rate (`ratio`), and with the most workers at the same load per worker as one
    /// worker at its highest (`ratio_same_load`, a step of its own; capped at the most workers'
    /// highest clean rate). Per-call CPU falls as each wake-up carries more messages, so the
    /// fair comparison gives each worker the same rate.
    fn flat(&self, best: &BTreeMap<(Lb, usize), Step>) -> Result<()> {
        let (Some(&one), Some(&most)) = (self.opts.workers.first(), self.opts.workers.last())
        else {
            return Ok(());
        };
        if one == most {
            return Ok(());
        }
        for &lb in self.opts.only.iter().filter(|l| **l != Lb::Kamailio) {
            let (Some(w1), Some(wn)) = (best.get(&(lb, one)), best.get(&(lb, most))) else {
                continue;
            };
            let same_load = (w1.rate as usize * most / one) as u32;
            let rate = same_load.min(wn.rate);
            let same = if rate == wn.rate {
                wn.clone()
            } else {
                self.fresh_step(lb, most, rate)?
            };
            let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
            println!(
                "scale flat lb={} lb_cpu_us_per_call_w{one}={:.1} (rate {}) \
                 lb_cpu_us_per_call_w{most}={:.1} (rate {}) ratio={:.2} \
                 lb_cpu_us_per_call_w{most}_same_load={:.1} (rate {rate}) ratio_same_load={:.2} \
                 clean={}",
                lb.name(),
                w1.lb_us,
                w1.rate,
                wn.lb_us,
                wn.rate,
                ratio(wn.lb_us, w1.lb_us),
                same.lb_us,
                ratio(same.lb_us, w1.lb_us),
                same.clean()
            );
        }
        Ok(())
    }

    /// Each siplb binary beside Kamailio at the highest rate both carried cleanly.
    fn versus_kamailio(&self, best: &BTreeMap<(Lb, usize), Step>) -> Result<()> {
        for &workers in &self.opts.workers {
            let Some(k_best) = best.get(&(Lb::Kamailio, workers)) else {
                continue;
            };
            for &lb in self.opts.only.iter().filter(|l| **l != Lb::Kamailio) {
                let Some(s_best) = best.get(&(lb, workers)) else {
                    continue;
                };
                // The one with the lower highest clean rate keeps its search figures (clean
                // there); the other gets a step of its own at that rate.
                let rate = k_best.rate.min(s_best.rate);
                let (k, s) = if k_best.rate <= s_best.rate {
                    (k_best.clone(), self.fresh_step(lb, workers, rate)?)
                } else {
                    (
                        self.fresh_step(Lb::Kamailio, workers, rate)?,
                        s_best.clone(),
                    )
                };
                println!(
                    "scale vs_kamailio workers={workers} rate={rate} lb={} lb_cpu_us_per_call={:.1} \
                     kamailio_lb_cpu_us_per_call={:.1} ratio={:.3} farm_cpu_us_per_call={:.1} \
                     kamailio_farm_cpu_us_per_call={:.1} max_clean_rate={} \
                     kamailio_max_clean_rate={} clean={}",
                    lb.name(),
                    s.lb_us,
                    k.lb_us,
                    s.lb_us / k.lb_us.max(f64::MIN_POSITIVE),
                    s.farm_us,
                    k.farm_us,
                    s_best.rate,
                    k_best.rate,
                    s.clean() && k.clean()
                );
            }
        }
        Ok(())
    }

    /// A comparison step, twice the search's length, on a farm of its own (confirmed as in the
    /// search).
    fn fresh_step(&self, lb: Lb, workers: usize, rate: u32) -> Result<Step> {
        eprintln!("scale compare:");
        self.confirmed_step(&mut None, lb, workers, rate, 2.0 * self.opts.step)
    }
}

/// The outcome of one search.
struct Search {
    /// The highest clean step.
    good: Option<Step>,
    /// The lowest step that was not clean.
    bad: Option<Step>,
}

/// Three plain backends and the balancer. Dropped in field order: the balancer stops before
/// its backends, and the folder with the logs goes last.
struct ScaleFarm {
    balancer: Tree,
    backends: Vec<Tree>,
    listen: SocketAddr,
    steps: usize,
    dir: TempDir,
}

impl ScaleFarm {
    fn start(bench: &Bench<'_>, lb: Lb, workers: usize) -> Result<ScaleFarm> {
        let dir = TempDir::new(&format!("scale-{}-w{workers}-{}", lb.name(), free_port()?))?;
        let mut backends = Vec::new();
        let mut ports = Vec::new();
        for i in 1..=BACKENDS {
            let port = free_port()?;
            let name = format!("b{i}");
            let mut cmd = Command::new(bench.bin.join("envelope-backend"));
            cmd.args(["--plain", "--name", &name])
                .args(["--listen", &format!("127.0.0.1:{port}")]);
            let mut proc = Tree::spawn(&name, &mut cmd, &dir)?;
            wait_until(&name, Duration::from_secs(10), &mut proc, || {
                listening(port)
            })?;
            backends.push(proc);
            ports.push(port);
        }
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let balancer = match lb {
            Lb::Kamailio => start_kamailio(listen, listen, &ports, workers, bench.tools, &dir)?,
            Lb::Tokio | Lb::Mio => start_siplb(&bench.bin, lb, listen, &ports, workers, &dir)?,
        };
        Ok(ScaleFarm {
            balancer,
            backends,
            listen,
            steps: 0,
            dir,
        })
    }
}

/// siplb with `workers` workers and plain backends, once every worker holds a connection to
/// every backend (a call before that would be answered 503).
fn start_siplb(
    bin: &Path,
    lb: Lb,
    listen: SocketAddr,
    ports: &[u16],
    workers: usize,
    dir: &TempDir,
) -> Result<Tree> {
    let mut cmd = Command::new(bin.join(lb.name()));
    cmd.args(["--listen", &listen.to_string()])
        .args(["--advertise", &listen.to_string()])
        .args(["--workers", &workers.to_string()])
        .args(["--algorithm", "round-robin", "--log-level", "info"]);
    for p in ports {
        cmd.args(["--backend", &format!("127.0.0.1:{p}")]);
    }
    let mut proc = Tree::spawn(lb.name(), &mut cmd, dir)?;
    let log = dir.path(&format!("{}.err", lb.name()));
    let port = listen.port();
    wait_until(lb.name(), Duration::from_secs(10), &mut proc, || {
        listening(port)
            && std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("backend up")
                .count()
                >= ports.len() * workers
    })?;
    Ok(proc)
}

/// CPU clock ticks used so far, by scope.
struct Sample {
    balancer: u64,
    backends: u64,
    /// Our waited-for children (the load generator, reaped by the poll loop).
    children: u64,
    /// The machine's busy time: every CPU's ticks but idle and iowait.
    system: u64,
    /// siplb's worker threads, by thread id.
    workers: BTreeMap<u32, u64>,
}

impl Sample {
    fn take(farm: &ScaleFarm) -> Result<Sample> {
        let mut backends = 0;
        for b in &farm.backends {
            backends += b.cpu_ticks()?;
        }
        Ok(Sample {
            balancer: farm.balancer.cpu_ticks()?,
            backends,
            children: children_ticks().context("reading /proc/self/stat")?,
            system: system_busy_ticks().context("reading /proc/stat")?,
            workers: worker_threads(farm.balancer.pid()),
        })
    }
}

/// cutime + cstime of this process: the CPU of the children it has waited for.
fn children_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), …, cutime (16), cstime (17).
    let cutime: u64 = f.get(13)?.parse().ok()?;
    let cstime: u64 = f.get(14)?.parse().ok()?;
    Some(cutime + cstime)
}

/// The first line of /proc/stat, all CPUs: every field but idle (4th) and iowait (5th). Guest
/// time is already counted in user time, so it is left out.
fn system_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let busy = [0, 1, 2, 5, 6, 7];
    Some(busy.iter().filter_map(|i| f.get(*i)).sum())
}

/// The CPU ticks of each `siplb-worker-N` thread of `pid`.
fn worker_threads(pid: u32) -> BTreeMap<u32, u64> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return found;
    };
    for e in entries.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("siplb-worker") {
            continue;
        }
        let ticks = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|t| parse_stat(&t));
        if let Some((_, t)) = ticks {
            found.insert(tid, t);
        }
    }
    found
}

fn build() -> Result<()> {
    eprintln!("xtask: building (release) lb-tokio, lb-mio, example-envelope-backend, lb-loadgen");
    let status = crate::cargo()
        .args(["build", "--release", "--quiet"])
        .args(["-p", "lb-tokio", "-p", "lb-mio"])
        .args(["-p", "example-envelope-backend", "-p", "lb-loadgen"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn options() {
        let o = ScaleOpts::parse(&[]).unwrap();
        assert_eq!(o.workers, [1, 2]);
        assert_eq!(
            (o.step, o.start, o.bisect, o.connections),
            (3.0, 2000, 2, 8)
        );
        let o =
            ScaleOpts::parse(&["--workers", "2,1,2", "--only", "mio", "--step", "1.5"]).unwrap();
        assert_eq!(o.workers, [1, 2]);
        assert_eq!(o.only, [Lb::Mio]);
        assert_eq!(o.step, 1.5);
        assert!(ScaleOpts::parse(&["--workers", "0"]).is_err());
        assert!(ScaleOpts::parse(&["--start", "10"]).is_err());
        assert!(ScaleOpts::parse(&["--step", "0"]).is_err());
        assert!(ScaleOpts::parse(&["--rate", "5"]).is_err());
    }

    fn step(rate: u32, failed: u64, started: f64) -> Step {
        Step {
            rate,
            ok: 100,
            failed,
            violations: 0,
            lost: 0,
            timeouts: 0,
            non_2xx: String::new(),
            started,
            lb_us: 10.0,
            farm_us: 30.0,
            backends_us: 12.0,
            loadgen_us: 8.0,
            system_us: 40.0,
            worker_share: vec![0.5, 0.5],
            load: "1.0".into(),
        }
    }

    #[test]
    fn a_clean_step_completes_every_call_the_generator_could_start() {
        assert!(step(1000, 0, 0.99).clean());
        assert!(!step(1000, 1, 1.0).clean());
        assert!(!step(1000, 0, 0.5).clean(), "the generator was the limit");
        let line = step(1000, 0, 1.0).figures();
        assert!(
            line.starts_with("rate=1000 calls_ok=100 calls_failed=0 "),
            "{line}"
        );
        assert!(
            line.contains(" worker_share=0.50,0.50 loadavg=1.0"),
            "{line}"
        );
    }

    #[test]
    fn proc_figures_are_read() {
        assert!(children_ticks().is_some());
        assert!(system_busy_ticks().unwrap() > 0);
        // This test's own threads are not siplb workers.
        assert!(worker_threads(std::process::id()).is_empty());
    }
}
