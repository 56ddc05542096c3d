//! `cargo xtask …`: siplb's developer tasks.
//!
//! - `demo [--runtime tokio|mio] [--rate N] [--duration SECS] [--connections N]`: three
//!   envelope backends, the balancer and the load generator on 127.0.0.1; prints a table and
//!   fails on any affinity violation or failed call.
//! - `bench e2e --runtime tokio|mio [--rate N] [--duration SECS]`: the same at a higher rate;
//!   prints `runtime=R calls_per_sec=N failed=F lb_cpu_us_per_call=C lb_rss_kb=M`.
//! - `bench overload [--runtime tokio|mio] [--rate N] [--duration SECS]`: backends throttled to
//!   N INVITEs/s each, offered twice what they carry; prints goodput, 503s, affinity violations
//!   and connections lost for each binary (see [`overload`]).
//! - `bench memory --runtime tokio|mio [--rate N] [--window SECS]`: calls held open; prints
//!   `rss_kb_at_1x=A rss_kb_at_10x=B` (established calls = 1× and 10× rate × window).
//! - `bench memory --peer [--rate CPS] [--window SECS] [--only LIST]`: the same held calls
//!   made by SIPp through Kamailio and both siplb binaries, their resident memory side by side
//!   (see [`peer`]).
//! - `bench memory --idle [--connections N]`, `bench memory --burst [--entries N]`: memory per
//!   idle connection (plain and TLS) for each balancer, and the memory after a burst of new
//!   calls (see `peer::idle`).
//! - `bench peer [--rate CPS] [--calls N]`: siplb against Kamailio's dispatcher with SIPp
//!   (see [`peer`]); prints one line per balancer, then `ratio_tokio=X ratio_mio=Y`. With
//!   `--tls` the callers' leg is TLS (SIPp through stunnel), and the memory per idle TLS
//!   connection is printed too.
//! - `bench scale [--workers 1,2] [--only LIST] [--step SECS]`: the highest call rate with no
//!   failed call for each worker count, siplb and Kamailio's dispatcher through `lb-loadgen` with
//!   plain backends, and the CPU per call there (see [`peer`]'s `scale` module).
//! - `bench core`, `bench sim`: run the core's and the simulator's benchmarks, pass their line;
//!   `bench sim --scale`: the simulator's scale run (an instance dies mid-storm, calls lost by
//!   phase).
//! - `dist`: man pages and shell completions from the clap definitions into `target/dist`
//!   (see [`dist`]).
//! - `check-core`: fails if lb-core's normal dependencies include a runtime.
//! - `test [ARGS…]`: the README's test command: installs the Debian packages of the test peers
//!   when missing (as root; else names the command), then `cargo test --workspace --release`
//!   (see [`test`]).
//! - `ci`: rustfmt check, clippy with warnings denied, the tests (as `test`).
//!
//! Every process a task starts is killed when the task ends, however it ends ([`procs::Proc`]).

mod dist;
mod fuzz;
mod overload;
mod peer;
mod procs;
mod test;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{cpu_time, free_port, num, pairs, rss_kb, wait_listening, Proc, TempDir};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["demo", rest @ ..] => demo(&Opts::parse(rest)?),
        ["bench", "e2e", rest @ ..] => bench_e2e(&Opts::parse(rest)?),
        ["bench", "overload", rest @ ..] => overload::bench_overload(&Opts::parse(rest)?),
        ["bench", "peer", rest @ ..] => peer::bench_peer(rest),
        ["bench", "memory", "--peer", rest @ ..] => peer::bench_held(rest),
        ["bench", "scale", rest @ ..] => peer::bench_scale(rest),
        ["bench", "memory", "--idle", rest @ ..] => peer::bench_idle(rest),
        ["bench", "memory", "--burst", rest @ ..] => peer::bench_burst(rest),
        ["bench", "memory", rest @ ..] => bench_memory(&Opts::parse(rest)?),
        ["bench", "core"] => pass_through(
            cargo().args(["bench", "-p", "lb-core", "--bench", "core"]),
            "core_msgs_per_sec=",
        ),
        ["bench", "sim"] => pass_through(
            cargo().args([
                "run",
                "--release",
                "-p",
                "lb-sim",
                "--",
                "storm",
                "--calls",
                "1000000",
                "--bench",
                // The output contract costs about a fifth of the storm's speed: the tests check
                // it, the speed figure leaves it out (docs/performance.md).
                "--no-contract",
            ]),
            "sim_events_per_sec=",
        ),
        // Issue 13: three instances of two workers, one dies mid-storm; the result line
        // reports the calls lost by phase.
        ["bench", "sim", "--scale"] => pass_through(
            cargo().args([
                "run",
                "--release",
                "-p",
                "lb-sim",
                "--",
                "scale",
                "--calls",
                "200000",
                "--bench",
            ]),
            "instance_died=",
        ),
        ["fuzz", rest @ ..] => fuzz::fuzz(rest),
        ["check-core"] => check_core(),
        ["dist"] => dist::dist(),
        ["test", rest @ ..] => test::test(rest),
        ["ci"] => ci(),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown task {:?}", words.join(" "))
        }
    }
}

const USAGE: &str = "usage: cargo xtask <task>
  demo [--runtime tokio|mio] [--rate N] [--duration SECS] [--connections N]
  bench e2e --runtime tokio|mio [--rate N] [--duration SECS] [--connections N]
  bench overload [--runtime tokio|mio] [--rate N] [--duration SECS]
  bench memory --runtime tokio|mio [--rate N] [--window SECS]
  bench memory --peer [--rate CPS] [--window SECS] [--only kamailio,tokio,mio] [--no-build]
  bench memory --idle [--connections N] [--only kamailio,tokio,mio] [--no-build]
  bench memory --burst [--entries N] [--wait SECS] [--only tokio,mio] [--no-build]
  bench peer [--rate CPS] [--calls N] [--runs N] [--only kamailio,tokio,mio] [--tls]
             [--idle-connections N] [--no-build]
  bench scale [--workers 1,2] [--only kamailio,tokio,mio] [--step SECS] [--start CPS]
              [--bisect N] [--connections N] [--no-build]
  bench core | bench sim [--scale]
  check-core
  dist
  test [CARGO TEST ARGS…]
  fuzz stream_demux|envelope_decoder|core_sequence [--seconds N]
  ci";

/// Options shared by the tasks that run the farm; each task has its own defaults.
#[derive(Default)]
struct Opts {
    runtime: Option<String>,
    rate: Option<f64>,
    duration: Option<f64>,
    connections: Option<usize>,
    window: Option<f64>,
}

impl Opts {
    fn parse(words: &[&str]) -> Result<Opts> {
        let mut opts = Opts::default();
        let mut it = words.iter();
        while let Some(flag) = it.next() {
            let value = it
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
            let bad = || format!("{flag}: bad value {value:?}");
            match *flag {
                "--runtime" => match *value {
                    "tokio" | "mio" => opts.runtime = Some((*value).to_owned()),
                    _ => bail!("--runtime is tokio or mio, not {value:?}"),
                },
                "--rate" => opts.rate = Some(value.parse().with_context(bad)?),
                "--duration" => opts.duration = Some(value.parse().with_context(bad)?),
                "--connections" => opts.connections = Some(value.parse().with_context(bad)?),
                "--window" => opts.window = Some(value.parse().with_context(bad)?),
                _ => bail!("unknown option {flag}\n{USAGE}"),
            }
        }
        Ok(opts)
    }

    fn runtime(&self) -> &str {
        self.runtime.as_deref().unwrap_or("tokio")
    }
}

/// The three backends and the balancer, up and connected.
struct Farm {
    balancer: Proc,
    backends: Vec<Proc>,
    listen: SocketAddr,
    bin: PathBuf,
    // Last, so the processes are gone before their log directory is removed.
    dir: TempDir,
}

const BACKENDS: [&str; 3] = ["b1", "b2", "b3"];

impl Farm {
    fn start(runtime: &str, window: f64) -> Result<Farm> {
        Farm::start_with(runtime, window, &[])
    }

    /// [`Farm::start`] with `backend_args` added to every backend's command line.
    fn start_with(runtime: &str, window: f64, backend_args: &[String]) -> Result<Farm> {
        let bin = release_dir();
        let dir = TempDir::new("xtask")?;
        let mut backends = Vec::new();
        let mut addrs = Vec::new();
        for name in BACKENDS {
            let mut proc = Proc::spawn(
                name,
                Command::new(bin.join("envelope-backend"))
                    .args(["--listen", "127.0.0.1:0", "--name", name])
                    .args(backend_args),
                &dir.path(&format!("{name}.log")),
            )?;
            // First line: `envelope-backend name=NAME listening=ADDR`.
            let line = proc.read_line()?;
            let addr: SocketAddr = pairs(&line)
                .get("listening")
                .with_context(|| format!("{name} printed {line:?}"))?
                .parse()?;
            addrs.push(addr);
            backends.push(proc);
        }
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let config = dir.path("siplb.toml");
        std::fs::write(&config, default_config(listen, &addrs, window))?;
        let log = dir.path("balancer.log");
        let mut balancer = Proc::spawn(
            &format!("lb-{runtime}"),
            Command::new(bin.join(format!("lb-{runtime}")))
                .arg("--config")
                .arg(&config),
            &log,
        )?;
        wait_listening(listen, &mut balancer, Duration::from_secs(10))?;
        // Calls before the backend connections are up would be answered 503.
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("backend up").count() >= BACKENDS.len() {
                break;
            }
            balancer.check_running()?;
            if start.elapsed() > Duration::from_secs(10) {
                bail!(
                    "the balancer did not connect to its backends; log: {}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Farm {
            balancer,
            backends,
            listen,
            bin,
            dir,
        })
    }

    /// Starts the load generator with its progress on our stderr.
    fn loadgen(&self, args: &[String]) -> Result<std::process::Child> {
        Command::new(self.bin.join("lb-loadgen"))
            .arg("--target")
            .arg(self.listen.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting lb-loadgen")
    }

    /// Stops the balancer with SIGTERM and returns its `siplb-stats` pairs.
    fn stop_balancer(&mut self) -> Result<BTreeMap<String, String>> {
        self.balancer.terminate()?;
        let out = self
            .balancer
            .wait_output(Duration::from_secs(15))
            .with_context(|| format!("stopping the balancer (logs in {})", self.dir.0.display()))?;
        let line = out
            .lines()
            .find(|l| l.starts_with("siplb-stats"))
            .with_context(|| format!("no siplb-stats line in {out:?}"))?;
        Ok(pairs(line))
    }

    /// Stops the backends and returns each one's counters.
    fn stop_backends(&mut self) -> Result<Vec<(String, BTreeMap<String, String>)>> {
        let mut all = Vec::new();
        for b in &mut self.backends {
            b.terminate()?;
        }
        for b in &mut self.backends {
            let out = b.wait_output(Duration::from_secs(5))?;
            let line = out.lines().last().unwrap_or_default();
            all.push((b.name.clone(), pairs(line)));
        }
        Ok(all)
    }
}

/// The balancer's configuration for the demo and the benchmarks: envelope mode, three
/// backends, round robin. It is the file an operator would write (see `lb-tokio --help`).
fn default_config(listen: SocketAddr, backends: &[SocketAddr], window: f64) -> String {
    let mut text = format!(
        "# siplb demo: written by `cargo xtask`\n\
         listen = [\"{listen}\"]\n\
         backend-mode = \"envelope\"\n\
         algorithm = \"round-robin\"\n\
         window = {window}\n\
         log-level = \"info\"\n"
    );
    for addr in backends {
        text.push_str(&format!("\n[[backend]]\naddr = \"{addr}\"\n"));
    }
    text
}

fn build(runtime: &str) -> Result<()> {
    eprintln!("xtask: building (release) lb-{runtime}, example-envelope-backend, lb-loadgen");
    let status = cargo()
        .args(["build", "--release", "--quiet", "-p"])
        .arg(format!("lb-{runtime}"))
        .args(["-p", "example-envelope-backend", "-p", "lb-loadgen"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed");
    }
    Ok(())
}

/// Load generator summary line, parsed.
fn loadgen_result(child: std::process::Child) -> Result<BTreeMap<String, String>> {
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("lb-loadgen failed ({}): {stdout}", out.status);
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("calls_ok="))
        .with_context(|| format!("no summary from lb-loadgen: {stdout:?}"))?;
    println!("loadgen: {line}");
    Ok(pairs(line))
}

/// `b1:3,b2:4` → map (the count after the last colon: keys may be `user@host:port`).
fn per_backend(list: Option<&String>) -> BTreeMap<String, u64> {
    list.map(|s| {
        s.split(',')
            .filter_map(|e| e.rsplit_once(':'))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    })
    .unwrap_or_default()
}

/// The count of backend `name` in a load generator list, whose keys are the backends' Contacts
/// (`name@host:port`).
fn named(map: &BTreeMap<String, u64>, name: &str) -> u64 {
    map.iter()
        .filter(|(key, _)| key.split_once('@').map_or(key.as_str(), |(user, _)| user) == name)
        .map(|(_, v)| v)
        .sum()
}

fn demo(opts: &Opts) -> Result<()> {
    let runtime = opts.runtime();
    let rate = opts.rate.unwrap_or(300.0);
    let duration = opts.duration.unwrap_or(10.0);
    let connections = opts.connections.unwrap_or(4);
    build(runtime)?;
    let mut farm = Farm::start(runtime, 32.0)?;
    println!(
        "siplb demo: lb-{runtime} on {} (envelope mode, window 32 s), backends {}, \
         {rate} calls/s for {duration} s over {connections} connections",
        farm.listen,
        BACKENDS.join(", ")
    );
    let child = farm.loadgen(&[
        "--connections".into(),
        connections.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--duration".into(),
        format!("{duration}s"),
        "--hold".into(),
        "1s".into(),
        "--progress".into(),
    ])?;
    let lg = loadgen_result(child)?;
    let cpu = cpu_time(farm.balancer.pid())?;
    let rss = rss_kb(farm.balancer.pid())?;
    let stats = farm.stop_balancer()?;
    let backend_stats = farm.stop_backends()?;

    let calls = per_backend(lg.get("per_backend"));
    let msgs = per_backend(lg.get("msgs_per_backend"));
    let ok = num(&lg, "calls_ok");
    let failed = num(&lg, "calls_failed");
    let violations = num(&lg, "affinity_violations");
    let mut out = std::io::stdout().lock();
    writeln!(out)?;
    writeln!(
        out,
        "{:<8} {:>8} {:>14} {:>14} {:>14}",
        "backend", "calls", "msgs to lg", "msgs in", "msgs out"
    )?;
    for (name, b) in &backend_stats {
        let inbound: u64 = [
            "invite",
            "ack",
            "bye",
            "cancel",
            "options",
            "other",
            "responses",
        ]
        .iter()
        .map(|k| num(b, k))
        .sum();
        writeln!(
            out,
            "{:<8} {:>8} {:>14} {:>14} {:>14}",
            name,
            named(&calls, name),
            named(&msgs, name),
            inbound,
            num(b, "sent")
        )?;
    }
    let per_call_us = if ok > 0 {
        cpu.as_secs_f64() * 1e6 / ok as f64
    } else {
        0.0
    };
    writeln!(out)?;
    writeln!(
        out,
        "calls ok / failed                           {ok} / {failed}"
    )?;
    writeln!(
        out,
        "INVITEs retransmitted by the load generator {}",
        num(&lg, "retransmitted")
    )?;
    writeln!(
        out,
        "retransmissions matched via new-call table  {}",
        num(&stats, "table_hits")
    )?;
    writeln!(
        out,
        "affinity violations                         {violations}"
    )?;
    writeln!(
        out,
        "balancer CPU time per call                  {per_call_us:.1} µs ({:.3} s user+system)",
        cpu.as_secs_f64()
    )?;
    writeln!(out, "balancer RSS at the end                     {rss} kB")?;
    writeln!(
        out,
        "balancer new calls / 503s / tag failures    {} / {} / {}",
        num(&stats, "new_calls"),
        num(&stats, "replies_503"),
        num(&stats, "tag_failures")
    )?;
    drop(out);
    if violations > 0 {
        bail!("{violations} affinity violations");
    }
    if failed > 0 || ok == 0 {
        bail!("{failed} calls failed, {ok} succeeded");
    }
    Ok(())
}

fn bench_e2e(opts: &Opts) -> Result<()> {
    let runtime = opts.runtime();
    let rate = opts.rate.unwrap_or(2000.0);
    let duration = opts.duration.unwrap_or(10.0);
    let connections = opts.connections.unwrap_or(4);
    build(runtime)?;
    let mut farm = Farm::start(runtime, 32.0)?;
    let child = farm.loadgen(&[
        "--connections".into(),
        connections.to_string(),
        "--rate".into(),
        rate.to_string(),
        "--duration".into(),
        format!("{duration}s"),
        "--hold".into(),
        "100ms".into(),
        "--progress".into(),
    ])?;
    let cpu_before = cpu_time(farm.balancer.pid())?;
    let lg = loadgen_result(child)?;
    let cpu = cpu_time(farm.balancer.pid())?.saturating_sub(cpu_before);
    let rss = rss_kb(farm.balancer.pid())?;
    farm.stop_balancer()?;
    farm.stop_backends()?;
    let ok = num(&lg, "calls_ok");
    let per_call_us = if ok > 0 {
        cpu.as_secs_f64() * 1e6 / ok as f64
    } else {
        0.0
    };
    println!(
        "runtime={runtime} calls_per_sec={} failed={} lb_cpu_us_per_call={per_call_us:.1} \
         lb_rss_kb={rss}",
        lg.get("calls_per_sec").map_or("0", String::as_str),
        num(&lg, "calls_failed")
    );
    Ok(())
}

fn bench_memory(opts: &Opts) -> Result<()> {
    let runtime = opts.runtime();
    let rate = opts.rate.unwrap_or(500.0);
    let window = opts.window.unwrap_or(2.0);
    build(runtime)?;
    let mut farm = Farm::start(runtime, window)?;
    let at_1x = window;
    let at_10x = 10.0 * window;
    // Calls are set up for a little longer than 10× the window and held past the second
    // measurement, so established calls only grow while the table stays at rate × window.
    let child = farm.loadgen(&[
        "--connections".into(),
        "4".into(),
        "--rate".into(),
        rate.to_string(),
        "--duration".into(),
        format!("{}s", at_10x + 1.0),
        "--hold".into(),
        format!("{}s", at_10x + 3.0),
        "--timeout".into(),
        "10s".into(),
        "--progress".into(),
    ])?;
    let start = Instant::now();
    // A quarter second after each mark: the calls started by then are established.
    let mut rss = Vec::new();
    for mark in [at_1x, at_10x] {
        let when = start + Duration::from_secs_f64(mark + 0.25);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
        farm.balancer.check_running()?;
        rss.push(rss_kb(farm.balancer.pid())?);
    }
    let lg = loadgen_result(child)?;
    let stats = farm.stop_balancer()?;
    farm.stop_backends()?;
    println!(
        "runtime={runtime} rate={rate} window_s={window} established_1x={:.0} \
         established_10x={:.0} calls_ok={} calls_failed={} table_len_max={}",
        rate * at_1x,
        rate * at_10x,
        num(&lg, "calls_ok"),
        num(&lg, "calls_failed"),
        num(&stats, "table_len_max")
    );
    println!("rss_kb_at_1x={} rss_kb_at_10x={}", rss[0], rss[1]);
    Ok(())
}

/// Runs a benchmark command and prints the lines of its output that carry `marker`, from
/// stdout or stderr (its stderr is echoed as it comes, so a long build shows progress).
fn pass_through(cmd: &mut Command, marker: &str) -> Result<()> {
    use std::io::BufRead as _;

    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let marker_owned = marker.to_owned();
    let echo = std::thread::spawn(move || {
        let mut found = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(&marker_owned) {
                found.push(line);
            } else {
                eprintln!("{line}");
            }
        }
        found
    });
    let out = child.wait_with_output()?;
    let mut lines = echo.join().unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        print!("{stdout}");
        bail!("{cmd:?} failed: {}", out.status);
    }
    lines.extend(
        stdout
            .lines()
            .filter(|l| l.contains(marker))
            .map(str::to_owned),
    );
    if lines.is_empty() {
        print!("{stdout}");
        bail!("no line with {marker} in the output of {cmd:?}");
    }
    for line in lines {
        println!("{}", line.trim());
    }
    Ok(())
}

fn check_core() -> Result<()> {
    let out = cargo()
        .args([
            "tree", "-p", "lb-core", "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo tree")?;
    if !out.status.success() {
        bail!("cargo tree failed: {}", out.status);
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let banned = banned_in(&tree);
    if !banned.is_empty() {
        bail!(
            "lb-core must not depend on a runtime, but its tree has: {}",
            banned.join(", ")
        );
    }
    let unique: std::collections::BTreeSet<&str> = tree.lines().collect();
    println!(
        "check-core: lb-core's {} normal dependencies include none of {}",
        unique.len().saturating_sub(1),
        FORBIDDEN_IN_CORE.join(", ")
    );
    Ok(())
}

/// The packages of a `cargo tree --prefix none --format {p}` listing that are forbidden.
fn banned_in(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter(|line| {
            let name = line.split_whitespace().next().unwrap_or_default();
            FORBIDDEN_IN_CORE
                .iter()
                .any(|f| name == *f || name.starts_with(&format!("{f}-")))
        })
        .collect()
}

/// Crates that would tie the sans-IO core to a runtime or to sockets (`-…` variants included).
const FORBIDDEN_IN_CORE: [&str; 5] = ["tokio", "mio", "socket2", "async-std", "futures"];

fn ci() -> Result<()> {
    let steps: [(&str, &[&str]); 2] = [
        ("fmt", &["fmt", "--all", "--check"]),
        (
            "clippy",
            &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
        ),
    ];
    for (name, args) in steps {
        eprintln!("xtask ci: cargo {}", args.join(" "));
        let status = cargo()
            .args(args)
            .status()
            .with_context(|| format!("running cargo {name}"))?;
        if !status.success() {
            bail!("ci step {name} failed");
        }
    }
    check_core()?;
    // The README's test command.
    test::test(&[])
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map_or(manifest.clone(), PathBuf::from)
}

fn release_dir() -> PathBuf {
    target_dir().join("release")
}

/// The target directory: `CARGO_TARGET_DIR` (relative to the workspace) or `target`.
fn target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    if target.is_relative() {
        workspace_root().join(target)
    } else {
        target
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn options_and_lists() {
        let o = Opts::parse(&["--runtime", "mio", "--rate", "50"]).unwrap();
        assert_eq!(o.runtime(), "mio");
        assert_eq!(o.rate, Some(50.0));
        assert!(Opts::parse(&["--runtime", "uv"]).is_err());
        assert!(Opts::parse(&["--rate"]).is_err());
        let m = per_backend(Some(&"b1:3,b2:4".to_owned()));
        assert_eq!(m.get("b2"), Some(&4));
        let m = per_backend(Some(&"b1@127.0.0.1:5:3,b2@127.0.0.1:6:4".to_owned()));
        assert_eq!(
            (named(&m, "b1"), named(&m, "b2"), named(&m, "b3")),
            (3, 4, 0)
        );
    }

    #[test]
    fn forbidden_crates_are_found() {
        let tree =
            "lb-core v0.1.0 (/x)\nbytes v1.0.0\nfutures-core v0.3.0\nmio v1.0.0\nmiofake v1\n";
        assert_eq!(banned_in(tree), ["futures-core v0.3.0", "mio v1.0.0"]);
        assert!(banned_in("lb-core v0.1.0\nbytes v1\n").is_empty());
    }

    #[test]
    fn config_names_every_backend() {
        let listen: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let b: Vec<SocketAddr> = vec![
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        let text = default_config(listen, &b, 2.0);
        assert_eq!(text.matches("[[backend]]").count(), 2);
        assert!(text.contains("window = 2\n"));
        assert!(text.contains("backend-mode = \"envelope\""));
    }
}
