//! `cargo xtask bench peer [--rate CPS] [--calls N] [--runs N] [--only LIST]`: siplb against
//! Kamailio's `dispatcher`, side by side, on 127.0.0.1.
//!
//! For each balancer in turn (Kamailio, `lb-tokio`, `lb-mio`) a run starts three SIPp UAS
//! backends over TCP, the balancer, and one SIPp UAC on a single shared TCP connection, which
//! makes `--calls` calls at `--rate` calls/s. The balancer's user+system CPU time (every process
//! of its tree, all threads, from /proc) is read before and after the UAC's run and divided by the
//! completed calls; its peak RSS is `VmHWM` summed over its processes. The runs are interleaved
//! (Kamailio, tokio, mio, Kamailio, …) so that load from other work on the machine falls on all
//! three alike. Printed per balancer, over `--runs` runs (3 by default):
//!
//! `lb=NAME rate=R calls_ok=N calls_failed=F lb_cpu_us_per_call=C lb_peak_rss_kb=M`
//!
//! and on stderr, just before, `peer setup lb=NAME setup_ms=S`: S is the median of SIPp's mean
//! time from sending the INVITE to receiving the 200 (its response time `ResponseTime1`,
//! millisecond resolution). The INVITE and the 200 each cross the balancer once, so S shows
//! what the balancer adds to call setup, `--batch-window` included. `--batch-window SECS`
//! passes that flag to siplb, to compare pacing settings.
//!
//! C and M are medians, N is the smallest and F the largest count of any run; F counts every
//! call of `--calls` that did not complete, also those SIPp never made because it stopped early
//! (it does when its connection breaks). The last line is
//! `ratio_tokio=X ratio_mio=Y`, siplb's CPU per call over Kamailio's. Each run's detail (elapsed
//! time, SIPp's own CPU, load average) goes to stderr.
//!
//! `--tls`: the callers' leg is TLS and the backend leg stays TCP. Debian's SIPp has no TLS, so
//! the UAC talks plain TCP to stunnel (client mode, verifying the balancer's chain and name) and
//! stunnel TLS to the balancer: siplb's `--listen-tls`, Kamailio's `tls` module (OpenSSL,
//! TLS 1.2+) with a TCP listener for the backend leg. Only the balancer's process tree is
//! counted, never stunnel's. After the CPU runs, each balancer is started once more and
//! `--idle-connections` (1,000) idle TLS connections are opened to it (see `idle`), printed as
//! `lb=NAME idle_tls_connections=N idle_tls_bytes_per_conn=B (pss P)`.
//!
//! Nothing is installed: without `sipp` or `kamailio` the task names the Debian packages and
//! fails. Every process it starts is killed when the run ends, however it ends ([`Tree`]). With `--tls` it also needs `openssl`, `stunnel4` and Kamailio's `tls.so`
//! (`kamailio-tls-modules`), and names those packages when one is missing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{clock_ticks, free_port, TempDir};

mod held;
mod idle;
mod scale;
mod tls;
mod tree;
pub(crate) use held::bench_held;
pub(crate) use idle::{bench_burst, bench_idle};
pub(crate) use scale::bench_scale;
use tree::Tree;

/// Kamailio's configuration: a stateless round-robin dispatcher (see the file's comments).
const KAMAILIO_CFG: &str = include_str!("../kamailio/dispatcher.cfg");

const USAGE: &str = "usage: cargo xtask bench peer [--rate CPS] [--calls N] [--runs N] \
                     [--only kamailio,tokio,mio] [--batch-window SECS] [--tls] \
                     [--idle-connections N] [--no-build]";

/// The balancers, in the order they run.
const ALL: [Lb; 3] = [Lb::Kamailio, Lb::Tokio, Lb::Mio];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Lb {
    Kamailio,
    Tokio,
    Mio,
}

impl Lb {
    fn name(self) -> &'static str {
        match self {
            Lb::Kamailio => "kamailio",
            Lb::Tokio => "lb-tokio",
            Lb::Mio => "lb-mio",
        }
    }

    fn parse(word: &str) -> Result<Lb> {
        Ok(match word {
            "kamailio" => Lb::Kamailio,
            "tokio" | "lb-tokio" => Lb::Tokio,
            "mio" | "lb-mio" => Lb::Mio,
            _ => bail!("--only takes kamailio, tokio, mio; not {word:?}"),
        })
    }

    /// A comma-separated `--only` list, in the order the balancers run.
    fn parse_list(words: &str) -> Result<Vec<Lb>> {
        let picked: Vec<Lb> = words.split(',').map(Lb::parse).collect::<Result<_>>()?;
        Ok(ALL.into_iter().filter(|l| picked.contains(l)).collect())
    }
}

struct PeerOpts {
    rate: u32,
    calls: u64,
    runs: usize,
    only: Vec<Lb>,
    /// Use the release binaries already built (while the workspace is mid-edit, say).
    no_build: bool,
    /// Passed to siplb as `--batch-window`; its default when `None`.
    batch_window: Option<String>,
    /// `--tls`: the callers' leg on TLS (through stunnel), the backend leg TCP.
    tls: bool,
    /// With `--tls`: idle TLS connections opened for the memory figure.
    idle_connections: usize,
}

impl PeerOpts {
    fn parse(words: &[&str]) -> Result<PeerOpts> {
        let mut opts = PeerOpts {
            rate: 1000,
            calls: 10_000,
            runs: 3,
            only: ALL.to_vec(),
            no_build: false,
            batch_window: None,
            tls: words.contains(&"--tls"),
            idle_connections: 1000,
        };
        let words: Vec<&str> = words.iter().copied().filter(|w| *w != "--tls").collect();
        opts.no_build = parse_flags(&words, USAGE, |flag, value| {
            match flag {
                "--rate" => opts.rate = number(flag, value)?,
                "--calls" => opts.calls = number(flag, value)?,
                "--runs" => opts.runs = number(flag, value)?,
                "--batch-window" => opts.batch_window = Some(value.to_owned()),
                "--only" => opts.only = Lb::parse_list(value)?,
                "--idle-connections" => opts.idle_connections = number(flag, value)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        if opts.rate == 0 || opts.calls == 0 || opts.runs == 0 {
            bail!("--rate, --calls and --runs must be above 0");
        }
        Ok(opts)
    }
}

/// Walks a task's options: `--no-build` alone, every other flag with a value, handed to `set`,
/// which returns `Ok(false)` for a flag it does not know. Returns whether `--no-build` was given.
fn parse_flags(
    words: &[&str],
    usage: &str,
    mut set: impl FnMut(&str, &str) -> Result<bool>,
) -> Result<bool> {
    let mut no_build = false;
    let mut it = words.iter();
    while let Some(flag) = it.next() {
        if *flag == "--no-build" {
            no_build = true;
            continue;
        }
        let value = it
            .next()
            .with_context(|| format!("{flag} needs a value\n{usage}"))?;
        if !set(flag, value)? {
            bail!("unknown option {flag}\n{usage}");
        }
    }
    Ok(no_build)
}

/// A flag's numeric value.
fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T> {
    value
        .parse()
        .ok()
        .with_context(|| format!("{flag}: bad value {value:?}"))
}

/// What one run measured.
#[derive(Clone, Debug)]
struct RunResult {
    ok: u64,
    failed: u64,
    cpu_us_per_call: f64,
    peak_rss_kb: u64,
    /// SIPp's mean INVITE-to-200 time.
    setup_ms: f64,
}

/// The entry point of `bench peer`.
pub(crate) fn bench_peer(words: &[&str]) -> Result<()> {
    let opts = PeerOpts::parse(words)?;
    let (mut tools, _bin_copy) = Tools::prepare(&opts.only, opts.no_build)?;
    if opts.tls {
        tools.enable_tls()?;
    }
    let ticks = clock_ticks() as f64;
    let mut results: BTreeMap<&str, Vec<RunResult>> = BTreeMap::new();
    for run in 1..=opts.runs {
        for lb in &opts.only {
            let r = run_once(*lb, run, &opts, &tools, ticks)
                .with_context(|| format!("{} run {run}", lb.name()))?;
            results.entry(lb.name()).or_default().push(r);
        }
    }
    let mut per_call = BTreeMap::new();
    for lb in &opts.only {
        let runs = results
            .get(lb.name())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let cpu = median(runs.iter().map(|r| r.cpu_us_per_call).collect());
        let rss = median(runs.iter().map(|r| r.peak_rss_kb as f64).collect());
        let setup = median(runs.iter().map(|r| r.setup_ms).collect());
        per_call.insert(*lb, cpu);
        eprintln!("peer setup lb={} setup_ms={setup:.1}", lb.name());
        println!(
            "lb={} rate={} calls_ok={} calls_failed={} lb_cpu_us_per_call={cpu:.1} \
             lb_peak_rss_kb={rss:.0}",
            lb.name(),
            opts.rate,
            runs.iter().map(|r| r.ok).min().unwrap_or(0),
            runs.iter().map(|r| r.failed).max().unwrap_or(0),
        );
    }
    if let Some(k) = per_call.get(&Lb::Kamailio).filter(|k| **k > 0.0) {
        let ratio = |lb| {
            per_call
                .get(&lb)
                .map_or("n/a".to_owned(), |c| format!("{:.2}", c / k))
        };
        println!(
            "ratio_tokio={} ratio_mio={}",
            ratio(Lb::Tokio),
            ratio(Lb::Mio)
        );
    }
    if opts.tls {
        for lb in &opts.only {
            let idle = idle::measure(*lb, &tools, 0, opts.idle_connections)
                .with_context(|| format!("{} idle TLS connections", lb.name()))?;
            println!(
                "lb={} idle_tls_connections={} idle_tls_bytes_per_conn={:.0} \
                 (pss {:.0})",
                lb.name(),
                opts.idle_connections,
                idle.tls_rss_bytes,
                idle.tls_pss_bytes
            );
        }
    }
    Ok(())
}

/// The middle value (the mean of the two middle ones for an even count); 0 when empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// The external programs and files a run needs.
struct Tools {
    sipp: PathBuf,
    kamailio: Option<PathBuf>,
    /// Kamailio's module directory (`mpath`).
    kamailio_modules: Option<PathBuf>,
    scenarios: PathBuf,
    bin: PathBuf,
    /// With `--tls` (or for idle TLS connections): the certificates the balancers serve.
    pki: Option<tls::Pki>,
}

impl Tools {
    /// [`Tools::find`], then (unless only Kamailio runs) builds siplb's binaries, unless
    /// `no_build`, and copies them aside, so that a build elsewhere in the workspace cannot swap
    /// them between two runs. The copy lives as long as the returned folder.
    fn prepare(lbs: &[Lb], no_build: bool) -> Result<(Tools, TempDir)> {
        let mut tools = Tools::find(lbs)?;
        let bin_copy = TempDir::new("peer-bin")?;
        if lbs.iter().any(|l| *l != Lb::Kamailio) {
            if !no_build {
                build()?;
            }
            for lb in [Lb::Tokio, Lb::Mio] {
                let from = tools.bin.join(lb.name());
                std::fs::copy(&from, bin_copy.path(lb.name()))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
            tools.bin = bin_copy.0.clone();
        }
        Ok((tools, bin_copy))
    }

    /// Finds SIPp and (when it runs) Kamailio; names the Debian packages when one is missing.
    fn find(lbs: &[Lb]) -> Result<Tools> {
        let want_kamailio = lbs.contains(&Lb::Kamailio);
        let sipp = find_program("sipp");
        let kamailio = find_program("kamailio");
        let mut missing = Vec::new();
        if sipp.is_none() {
            missing.push(("sipp", "sip-tester"));
        }
        if want_kamailio && kamailio.is_none() {
            missing.push(("kamailio", "kamailio"));
        }
        if !missing.is_empty() {
            let programs: Vec<&str> = missing.iter().map(|m| m.0).collect();
            let packages: Vec<&str> = missing.iter().map(|m| m.1).collect();
            bail!(
                "bench peer needs {} and installs nothing itself; on Debian/Ubuntu: \
                 sudo apt-get install {}",
                programs.join(" and "),
                packages.join(" ")
            );
        }
        let kamailio_modules = if want_kamailio {
            Some(kamailio_modules().context(
                "Kamailio's modules (dispatcher.so) not found; set KAMAILIO_MPATH to their folder",
            )?)
        } else {
            None
        };
        Ok(Tools {
            sipp: sipp.context("sipp")?,
            kamailio,
            kamailio_modules,
            scenarios: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios"),
            bin: crate::release_dir(),
            pki: None,
        })
    }

    /// Makes the certificates and checks for Kamailio's tls module (when Kamailio runs):
    /// from now on every farm's callers' listener is TLS.
    fn enable_tls(&mut self) -> Result<()> {
        if let Some(mpath) = &self.kamailio_modules {
            tls::check_kamailio_tls(mpath)?;
        }
        self.pki = Some(tls::Pki::new()?);
        Ok(())
    }
}

/// `name` on `PATH`, or in the sbin folders a non-root `PATH` often lacks (Kamailio lives there).
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The folder holding Kamailio's `dispatcher.so`: `$KAMAILIO_MPATH`, or where distributions
/// install it (`/usr/lib/<multiarch>/kamailio/modules` on Debian).
fn kamailio_modules() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("KAMAILIO_MPATH") {
        return Some(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/local/lib64",
    ]
    .iter()
    .map(|d| Path::new(d).join("kamailio/modules"))
    .collect();
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        candidates.extend(entries.flatten().map(|e| e.path().join("kamailio/modules")));
    }
    candidates
        .into_iter()
        .find(|d| d.join("dispatcher.so").is_file())
}

fn build() -> Result<()> {
    eprintln!("xtask: building (release) lb-tokio, lb-mio");
    let status = crate::cargo()
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "lb-tokio",
            "-p",
            "lb-mio",
        ])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

/// One run: backends, balancer, the UAC's calls, the figures; everything stopped on return.
fn run_once(lb: Lb, run: usize, opts: &PeerOpts, tools: &Tools, ticks: f64) -> Result<RunResult> {
    let dir = TempDir::new(&format!("peer-{}-{run}", lb.name()))?;
    let siplb_args: Vec<String> = match &opts.batch_window {
        Some(w) => vec!["--batch-window".to_owned(), w.clone()],
        None => Vec::new(),
    };
    let Farm {
        mut balancer,
        backends,
        listen,
        ..
    } = Farm::start(lb, tools, &dir, &siplb_args)?;
    // With TLS, SIPp calls through stunnel; its CPU is its own, not the balancer's.
    let (_stunnel, uac_target) = match &tools.pki {
        Some(pki) => {
            let (proc, accept) = tls::start_stunnel(&dir, listen, pki)?;
            (Some(proc), accept)
        }
        None => (None, listen),
    };

    let load_before = loadavg();
    let cpu_before = balancer.cpu_ticks()?;
    let started = Instant::now();
    let csv = dir.path("uac_stats.csv");
    let mut cmd = uac_command(tools, &tools.scenarios.join("uac_rr.xml"), uac_target, &csv)?;
    cmd.args(["-m", &opts.calls.to_string()])
        .args(["-r", &opts.rate.to_string(), "-rp", "1000"])
        .args(["-l", &opts.calls.to_string()])
        // A call stuck for 5 s fails instead of holding the run.
        .args(["-recv_timeout", "5000"]);
    let expected = Duration::from_secs_f64(opts.calls as f64 / f64::from(opts.rate));
    let mut uac = Tree::spawn("uac", &mut cmd, &dir)?;
    // SIPp's own CPU, sampled while it runs (once it has exited /proc has nothing).
    let mut uac_ticks = 0;
    let uac_status;
    let limit = expected + Duration::from_secs(60);
    loop {
        if let Some(t) = uac.try_cpu_ticks() {
            uac_ticks = t;
        }
        if let Some(status) = uac.exit_status()? {
            uac_status = status;
            break;
        }
        if started.elapsed() > limit {
            bail!(
                "the SIPp client did not finish within {limit:?} (files in {})",
                dir.0.display()
            );
        }
        balancer.check_running()?;
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let cpu = balancer.cpu_ticks()?.saturating_sub(cpu_before);
    let peak_rss_kb = balancer.peak_rss_kb();
    let uas_ticks: u64 = backends.iter().filter_map(Tree::try_cpu_ticks).sum();
    balancer.check_running()?;
    let stats = SippStats::read(&csv)?;
    let (ok, sipp_failed) = (
        stats.count("SuccessfulCall(C)")?,
        stats.count("FailedCall(C)")?,
    );
    // SIPp stops early when its connection breaks: the calls it never made failed too.
    let failed = opts.calls.saturating_sub(ok).max(sipp_failed);
    let per_call = |t: u64| {
        if ok > 0 {
            t as f64 / ticks * 1e6 / ok as f64
        } else {
            0.0
        }
    };
    let result = RunResult {
        ok,
        failed,
        cpu_us_per_call: per_call(cpu),
        peak_rss_kb,
        setup_ms: stats.millis("ResponseTime1(C)")?,
    };
    eprintln!(
        "peer run={run} lb={} calls_ok={ok} calls_failed={failed} elapsed_s={:.2} \
         lb_cpu_us_per_call={:.1} lb_peak_rss_kb={peak_rss_kb} setup_ms={:.1} lb_processes={} \
         uac_cpu_us_per_call={:.1} uas_cpu_us_per_call={:.1} uac_exit={} loadavg={}->{}",
        lb.name(),
        elapsed.as_secs_f64(),
        result.cpu_us_per_call,
        result.setup_ms,
        balancer.tree().len(),
        per_call(uac_ticks),
        per_call(uas_ticks),
        uac_status
            .code()
            .map_or("signal".to_owned(), |c| c.to_string()),
        load_before,
        loadavg(),
    );
    // The balancer goes first, then the backends; `dir` (logs) last.
    drop(balancer);
    drop(backends);
    Ok(result)
}

/// The balancer under test in front of three SIPp UAS backends (`uas_rr.xml`, one TCP
/// connection each). Dropped in field order: the balancer stops before its backends.
struct Farm {
    balancer: Tree,
    backends: Vec<Tree>,
    /// The callers' listener: TLS when the tools have certificates, else TCP.
    listen: SocketAddr,
    /// A plain TCP listener of the balancer (`listen` itself without TLS).
    plain: SocketAddr,
}

impl Farm {
    /// `siplb_args` go to siplb's command line (Kamailio has nothing they could mean).
    fn start(lb: Lb, tools: &Tools, dir: &TempDir, siplb_args: &[String]) -> Result<Farm> {
        let mut backends = Vec::new();
        let mut ports = Vec::new();
        for i in 1..=3 {
            let port = free_port()?;
            let mut cmd = Command::new(&tools.sipp);
            cmd.arg("-sf")
                .arg(tools.scenarios.join("uas_rr.xml"))
                .args(["-t", "t1", "-i", "127.0.0.1", "-bind_local", "-nostdin"])
                .args(["-p", &port.to_string()]);
            let name = format!("uas{i}");
            let mut proc = Tree::spawn(&name, &mut cmd, dir)?;
            wait_until(&name, Duration::from_secs(10), &mut proc, || {
                listening(port)
            })?;
            backends.push(proc);
            ports.push(port);
        }
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let plain = match tools.pki {
            Some(_) => SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            None => listen,
        };
        let balancer = match lb {
            Lb::Kamailio => start_kamailio(listen, plain, &ports, 2, tools, dir)?,
            Lb::Tokio | Lb::Mio => start_siplb(lb, listen, plain, &ports, tools, dir, siplb_args)?,
        };
        Ok(Farm {
            balancer,
            backends,
            listen,
            plain,
        })
    }
}

/// A SIPp UAC running `scenario` towards `listen` on one shared TCP connection, its statistics
/// going to `csv`; the caller adds the call count and rate.
fn uac_command(tools: &Tools, scenario: &Path, listen: SocketAddr, csv: &Path) -> Result<Command> {
    let mut cmd = Command::new(&tools.sipp);
    cmd.arg("-sf")
        .arg(scenario)
        .arg(listen.to_string())
        .args(["-t", "t1", "-i", "127.0.0.1", "-bind_local", "-nostdin"])
        .args(["-p", &free_port()?.to_string()])
        .arg("-trace_stat")
        .arg("-stf")
        .arg(csv);
    Ok(cmd)
}

/// Kamailio with `children` SIP worker processes (and as many TCP workers) on `listen`; with
/// certificates, `listen` is TLS and `plain` its TCP listener.
fn start_kamailio(
    listen: SocketAddr,
    plain: SocketAddr,
    ports: &[u16],
    children: usize,
    tools: &Tools,
    dir: &TempDir,
) -> Result<Tree> {
    let (Some(kamailio), Some(mpath)) = (&tools.kamailio, &tools.kamailio_modules) else {
        bail!("kamailio not found");
    };
    let list = dir.path("dispatcher.list");
    let mut text = String::from("# set destination\n");
    for p in ports {
        text.push_str(&format!("1 sip:127.0.0.1:{p};transport=tcp\n"));
    }
    std::fs::write(&list, text)?;
    let cfg = dir.path("kamailio.cfg");
    let mut text = kamailio_cfg(listen.port(), mpath, &list, children);
    if let Some(pki) = &tools.pki {
        text = tls::kamailio_tls_cfg(&text, listen.port(), plain.port(), pki)?;
    }
    std::fs::write(&cfg, text)?;
    let mut cmd = Command::new(kamailio);
    if tools.pki.is_some() {
        // Shared memory for the TLS sessions (OpenSSL allocates them there); 64 MB, the
        // default, runs out at about a thousand idle TLS connections.
        cmd.args(["-m", "512"]);
    }
    // -DD: the creator stays in the foreground (our child) and forks the workers; -E: log to
    // stderr; -x tlsf: the TLSF shared-memory manager, Kamailio's fastest.
    cmd.arg("-f")
        .arg(&cfg)
        .args(["-DD", "-E", "-x", "tlsf", "-Y"])
        .arg(&dir.0)
        .arg("-w")
        .arg(&dir.0);
    let mut proc = Tree::spawn("kamailio", &mut cmd, dir)?;
    let port = listen.port();
    // Main, timers, TCP main and the two TCP workers: wait for the workers too, so no start-up
    // work falls inside the measurement.
    wait_until("kamailio", Duration::from_secs(10), &mut proc, || {
        listening(port)
    })?;
    std::thread::sleep(Duration::from_millis(500));
    Ok(proc)
}

/// The configuration template with its `@...@` fields filled in.
fn kamailio_cfg(port: u16, mpath: &Path, list: &Path, children: usize) -> String {
    let mut mpath = mpath.display().to_string();
    if !mpath.ends_with('/') {
        mpath.push('/');
    }
    KAMAILIO_CFG
        .replace("@PORT@", &port.to_string())
        .replace("@MPATH@", &mpath)
        .replace("@DSLIST@", &list.display().to_string())
        .replace("@CHILDREN@", &children.to_string())
}

/// siplb on `listen`; with certificates, `listen` is TLS and `plain` its TCP listener.
fn start_siplb(
    lb: Lb,
    listen: SocketAddr,
    plain: SocketAddr,
    ports: &[u16],
    tools: &Tools,
    dir: &TempDir,
    extra_args: &[String],
) -> Result<Tree> {
    let mut cmd = Command::new(tools.bin.join(lb.name()));
    cmd.args(extra_args)
        .args(["--listen", &plain.to_string()])
        .args(["--advertise", &plain.to_string()])
        .args(["--algorithm", "round-robin", "--log-level", "info"]);
    if let Some(pki) = &tools.pki {
        cmd.args(["--listen-tls", &listen.to_string()])
            .arg("--tls-cert")
            .arg(&pki.cert)
            .arg("--tls-key")
            .arg(&pki.key);
    }
    for p in ports {
        cmd.args(["--backend", &format!("127.0.0.1:{p},mode=plain")]);
    }
    let mut proc = Tree::spawn(lb.name(), &mut cmd, dir)?;
    let log = dir.path(&format!("{}.err", lb.name()));
    let port = listen.port();
    // Calls before the backend connections are up would be answered 503.
    wait_until(lb.name(), Duration::from_secs(10), &mut proc, || {
        listening(port)
            && std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("backend up")
                .count()
                >= ports.len()
    })?;
    Ok(proc)
}

/// Polls `ready` every 20 ms until it holds, failing when `proc` exits or `limit` passes.
fn wait_until(
    name: &str,
    limit: Duration,
    proc: &mut Tree,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        proc.check_running()?;
        if start.elapsed() > limit {
            bail!("{name} not ready after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Whether something listens on 127.0.0.1:`port` (from /proc/net/tcp, without connecting:
/// a probe connection would show up in SIPp's and the balancers' counters).
fn listening(port: u16) -> bool {
    let wanted = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .any(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.get(1) == Some(&wanted.as_str()) && f.get(3) == Some(&"0A")
        })
}

/// The last line of SIPp's statistics file (`-trace_stat`), by column name.
pub(crate) struct SippStats {
    header: Vec<String>,
    last: Vec<String>,
}

impl SippStats {
    pub(crate) fn read(csv: &Path) -> Result<SippStats> {
        let text =
            std::fs::read_to_string(csv).with_context(|| format!("reading {}", csv.display()))?;
        SippStats::parse(&text).with_context(|| format!("no statistics line in {}", csv.display()))
    }

    fn parse(text: &str) -> Option<SippStats> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let split = |line: &str| line.split(';').map(|f| f.trim().to_owned()).collect();
        let header = split(lines.next()?);
        let last = split(lines.next_back()?);
        Some(SippStats { header, last })
    }

    fn field(&self, name: &str) -> Option<&str> {
        let i = self.header.iter().position(|h| h == name)?;
        self.last.get(i).map(String::as_str)
    }

    /// A counter column such as `SuccessfulCall(C)`.
    pub(crate) fn count(&self, name: &str) -> Result<u64> {
        self.field(name)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no count {name} in SIPp's statistics"))
    }

    /// A time column such as `ResponseTime1(C)` (`HH:MM:SS:micros`), in milliseconds.
    pub(crate) fn millis(&self, name: &str) -> Result<f64> {
        self.field(name)
            .and_then(|v| {
                let f: Vec<f64> = v
                    .split(':')
                    .map(|p| p.parse().ok())
                    .collect::<Option<_>>()?;
                match f.as_slice() {
                    [h, m, s, us] => Some(((h * 60.0 + m) * 60.0 + s) * 1e3 + us / 1e3),
                    _ => None,
                }
            })
            .with_context(|| format!("no time {name} in SIPp's statistics"))
    }
}

/// `/proc/loadavg`'s 1-minute figure.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::tree::descendants;
    use super::*;
    use crate::procs::{parse_stat, proc_kb, stat};

    #[test]
    fn options() {
        let o = PeerOpts::parse(&[]).unwrap();
        assert_eq!((o.rate, o.calls, o.runs), (1000, 10_000, 3));
        assert_eq!(o.only, ALL);
        let o = PeerOpts::parse(&["--rate", "200", "--only", "mio,kamailio"]).unwrap();
        assert_eq!(o.rate, 200);
        assert_eq!(o.only, [Lb::Kamailio, Lb::Mio]);
        assert!(PeerOpts::parse(&["--rate", "0"]).is_err());
        assert!(PeerOpts::parse(&["--calls"]).is_err());
        assert!(PeerOpts::parse(&["--only", "opensips"]).is_err());
        assert!(
            PeerOpts::parse(&["--no-build", "--calls", "5"])
                .unwrap()
                .no_build
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }

    #[test]
    fn sipp_statistics() {
        let text = "StartTime;SuccessfulCall(C);FailedCall(C);ResponseTime1(C);\n\
                    a;0;0;00:00:00:000000;\n\
                    b;9990;7;00:00:01:002500;\n";
        let stats = SippStats::parse(text).unwrap();
        assert_eq!(stats.count("SuccessfulCall(C)").unwrap(), 9990);
        assert_eq!(stats.count("FailedCall(C)").unwrap(), 7);
        assert_eq!(stats.millis("ResponseTime1(C)").unwrap(), 1002.5);
        assert!(stats.count("CurrentCall").is_err());
        assert!(stats.millis("StartTime").is_err());
        assert!(SippStats::parse("StartTime;\n").is_none());
    }

    #[test]
    fn proc_stat_fields() {
        let line = "42 (a b) c) S 7 42 42 0 -1 4194560 1 0 0 0 15 4 0 0 20 0 1 0 9 1 1";
        assert_eq!(parse_stat(line), Some((7, 19)));
        let own = stat(std::process::id()).unwrap();
        assert!(own.0 > 0);
        assert!(descendants(std::process::id()).contains(&std::process::id()));
        assert!(proc_kb(std::process::id(), "status", "VmHWM:").unwrap() > 0);
    }

    #[test]
    fn kamailio_template_is_filled() {
        let cfg = kamailio_cfg(5070, Path::new("/m"), Path::new("/tmp/d.list"), 2);
        assert!(cfg.contains("listen=tcp:127.0.0.1:5070\n"));
        assert!(cfg.contains("mpath=\"/m/\""));
        assert!(cfg.contains("\"/tmp/d.list\""));
        assert!(!cfg.contains('@'));
        // Stateless: no transaction module.
        assert!(!cfg.contains("tm.so"));
        assert!(cfg.contains("children=2\n"));
    }
}
