//! `cargo xtask bench memory --peer [--rate CPS] [--window SECS] [--only LIST] [--no-build]`:
//! the memory of each balancer while SIPp holds calls open, Kamailio's beside siplb's.
//!
//! The same farm as `bench peer` (three SIPp UAS, the balancer, one SIPp UAC on one TCP
//! connection), but the UAC pauses between ACK and BYE for longer than the run, so established
//! calls only grow: `rate × window` of them at the first mark and ten times that at the second.
//! siplb runs with `--window` set to the same window, as in `bench memory`: its new-call table
//! (memory that follows the call setup rate) is then full at both marks.
//! At each mark (plus a quarter second, so the calls started by then are set up) the balancer's
//! resident memory is read, summed over its processes: `VmRSS` counts Kamailio's shared memory
//! in each of its seven processes, `Pss` shares it out once; for a single process (siplb) the two
//! differ only by shared library pages. Printed per balancer:
//!
//! `lb=NAME rate=R held_1x=A held_10x=B calls_failed=F rss_kb_at_1x=… rss_kb_at_10x=…
//! pss_kb_at_1x=… pss_kb_at_10x=…`
//!
//! F is SIPp's failed-call count at the second mark; the run fails if SIPp had not set up at
//! least 90 % of the calls due by then (`held_10x` is SIPp's own count of calls in progress,
//! from its statistics line about a second after the mark).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{number, parse_flags, uac_command, Farm, Lb, SippStats, Tools, Tree, ALL};
use crate::procs::{proc_kb, TempDir};

const USAGE: &str = "usage: cargo xtask bench memory --peer [--rate CPS] [--window SECS] \
                     [--only kamailio,tokio,mio] [--no-build]";

struct HeldOpts {
    rate: u32,
    window: f64,
    only: Vec<Lb>,
    no_build: bool,
}

impl HeldOpts {
    fn parse(words: &[&str]) -> Result<HeldOpts> {
        let mut opts = HeldOpts {
            rate: 500,
            window: 2.0,
            only: ALL.to_vec(),
            no_build: false,
        };
        opts.no_build = parse_flags(words, USAGE, |flag, value| {
            match flag {
                "--rate" => opts.rate = number(flag, value)?,
                "--window" => opts.window = number(flag, value)?,
                "--only" => opts.only = Lb::parse_list(value)?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        ensure!(
            opts.rate > 0 && opts.window.is_finite() && opts.window > 0.0,
            "--rate and --window must be above 0"
        );
        Ok(opts)
    }
}

/// The entry point of `bench memory --peer`.
pub(crate) fn bench_held(words: &[&str]) -> Result<()> {
    let opts = HeldOpts::parse(words)?;
    let (tools, _bin_copy) = Tools::prepare(&opts.only, opts.no_build)?;
    for lb in &opts.only {
        held_run(*lb, &opts, &tools).with_context(|| format!("{} held calls", lb.name()))?;
    }
    Ok(())
}

/// The resident memory of the balancer's processes at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Resident {
    pub(super) rss_kb: u64,
    pub(super) pss_kb: u64,
}

fn held_run(lb: Lb, opts: &HeldOpts, tools: &Tools) -> Result<()> {
    let dir = TempDir::new(&format!("held-{}", lb.name()))?;
    // siplb's new-call table holds each call for its window (32 s by default) whether or not the
    // call is still up. With the window set to the first mark the table is full (rate × window)
    // at both marks, so any growth between them would come from the held calls themselves.
    let window = ["--window".to_owned(), opts.window.to_string()];
    let mut farm = Farm::start(lb, tools, &dir, &window)?;
    let scenario = dir.path("uac_rr_hold.xml");
    std::fs::write(
        &scenario,
        hold_scenario(&tools.scenarios.join("uac_rr.xml"))?,
    )?;
    let marks = [opts.window, 10.0 * opts.window];
    // Calls keep starting a little past the second mark and are held past the end of the run.
    let calls = (f64::from(opts.rate) * (marks[1] + 1.0)).ceil() as u64;
    let hold_ms = ((marks[1] + 30.0) * 1000.0) as u64;
    let csv = dir.path("uac_stats.csv");
    let mut cmd = uac_command(tools, &scenario, farm.listen, &csv)?;
    cmd.args(["-m", &calls.to_string()])
        .args(["-r", &opts.rate.to_string(), "-rp", "1000"])
        .args(["-l", &calls.to_string()])
        .args(["-d", &hold_ms.to_string()])
        // Statistics every second, so the count of calls in progress is fresh at each mark.
        .args(["-fd", "1"]);
    let mut uac = Tree::spawn("uac", &mut cmd, &dir)?;
    let start = Instant::now();
    let mut resident = Vec::new();
    for mark in marks {
        let when = start + Duration::from_secs_f64(mark + 0.25);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
        farm.balancer.check_running()?;
        uac.check_running()?;
        resident.push(resident_now(&farm.balancer));
    }
    // The statistics line written after the second mark.
    std::thread::sleep(Duration::from_millis(1100));
    let stats = SippStats::read(&csv)?;
    let (current, failed) = (stats.count("CurrentCall")?, stats.count("FailedCall(C)")?);
    let due = (f64::from(opts.rate) * marks[1]) as u64;
    ensure!(
        current * 10 >= due * 9,
        "SIPp held {current} calls, {due} were due (files in {})",
        dir.0.display()
    );
    println!(
        "lb={} rate={} held_1x={:.0} held_10x={current} calls_failed={failed} \
         rss_kb_at_1x={} rss_kb_at_10x={} pss_kb_at_1x={} pss_kb_at_10x={}",
        lb.name(),
        opts.rate,
        f64::from(opts.rate) * marks[0],
        resident[0].rss_kb,
        resident[1].rss_kb,
        resident[0].pss_kb,
        resident[1].pss_kb,
    );
    drop(uac);
    drop(farm);
    Ok(())
}

/// `uac_rr.xml` with a `<pause/>` (as long as SIPp's `-d`) between the ACK and the BYE.
fn hold_scenario(base: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(base).with_context(|| format!("reading {}", base.display()))?;
    let bye = "  <send>\n    <![CDATA[\n      BYE";
    ensure!(
        text.contains(bye),
        "{} has no BYE where the pause goes",
        base.display()
    );
    Ok(text.replacen(bye, &format!("  <pause/>\n{bye}"), 1))
}

pub(super) fn resident_now(tree: &Tree) -> Resident {
    let mut total = Resident::default();
    for pid in tree.tree() {
        total.rss_kb += proc_kb(pid, "status", "VmRSS:").unwrap_or(0);
        total.pss_kb += proc_kb(pid, "smaps_rollup", "Pss:").unwrap_or(0);
    }
    total
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn options() {
        let o = HeldOpts::parse(&[]).unwrap();
        assert_eq!((o.rate, o.window), (500, 2.0));
        let o = HeldOpts::parse(&["--window", "0.5", "--only", "kamailio"]).unwrap();
        assert_eq!((o.window, o.only.as_slice()), (0.5, &[Lb::Kamailio][..]));
        assert!(HeldOpts::parse(&["--window", "0"]).is_err());
        assert!(HeldOpts::parse(&["--calls", "5"]).is_err());
    }

    #[test]
    fn the_hold_goes_between_ack_and_bye() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/uac_rr.xml");
        let text = hold_scenario(&base).unwrap();
        let (ack, pause, bye) = (
            text.find("ACK [next_url]").unwrap(),
            text.find("<pause/>").unwrap(),
            text.find("BYE [next_url]").unwrap(),
        );
        assert!(ack < pause && pause < bye);
        assert_eq!(text.matches("<pause/>").count(), 1);
    }
}
