//! [`Tree`]: a benchmark's child process and everything it forks, killed together.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::procs::{proc_kb, stat, TempDir};

/// A started program and the processes it forks (Kamailio's workers). On drop, every process
/// of the tree gets SIGTERM, and SIGKILL if it is still there a few seconds later. Its stdout
/// and stderr go to `NAME.out` / `NAME.err` in the run's folder: SIPp redraws its screen on
/// stdout every second, which would fill a pipe nobody reads.
pub(crate) struct Tree {
    name: String,
    child: Child,
}

impl Tree {
    pub(crate) fn spawn(name: &str, cmd: &mut Command, dir: &TempDir) -> Result<Tree> {
        let out = File::create(dir.path(&format!("{name}.out")))?;
        let err = File::create(dir.path(&format!("{name}.err")))?;
        let child = cmd
            .current_dir(&dir.0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Tree {
            name: name.to_owned(),
            child,
        })
    }

    /// The process id of the tree's root.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    pub(crate) fn exit_status(&mut self) -> Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The root's pid and its descendants', from the parent links in /proc.
    pub(crate) fn tree(&self) -> Vec<u32> {
        descendants(self.child.id())
    }

    /// User+system clock ticks of the whole tree (every thread of every process).
    pub(crate) fn cpu_ticks(&self) -> Result<u64> {
        let mut total = 0;
        for pid in self.tree() {
            total += stat(pid)
                .with_context(|| format!("/proc/{pid}/stat of {}", self.name))?
                .1;
        }
        Ok(total)
    }

    pub(crate) fn try_cpu_ticks(&self) -> Option<u64> {
        self.cpu_ticks().ok()
    }

    /// `VmHWM` summed over the tree's processes (shared pages count once in each process that
    /// touched them, as in every per-process RSS figure).
    pub(crate) fn peak_rss_kb(&self) -> u64 {
        self.tree()
            .into_iter()
            .filter_map(|pid| proc_kb(pid, "status", "VmHWM:"))
            .sum()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let pids = self.tree();
        if self.child.try_wait().ok().flatten().is_some() && pids.len() <= 1 {
            return;
        }
        signal("-TERM", &pids);
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Whatever is left of the tree (a worker that ignored SIGTERM, or the root itself).
        let alive: Vec<u32> = pids
            .into_iter()
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if !alive.is_empty() {
            signal("-KILL", &alive);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a signal to these pids through kill(1) (the workspace forbids `unsafe`).
fn signal(sig: &str, pids: &[u32]) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(sig)
        .args(pids.iter().map(u32::to_string))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// `root` and every process below it.
pub(crate) fn descendants(root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some((ppid, _)) = stat(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if seen.insert(pid) {
            todo.extend(children.get(&pid).into_iter().flatten().copied());
        }
    }
    seen.into_iter().collect()
}
