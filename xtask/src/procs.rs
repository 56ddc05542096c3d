//! Child processes that always die with the task, and what /proc says about them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// One started process; killed on drop unless it already exited.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
}

impl Proc {
    /// Starts `cmd` with stdout piped (read with [`Proc::read_line`] / [`Proc::wait_output`])
    /// and stderr into `log`.
    pub(crate) fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        let stdout = child.stdout.take().map(BufReader::new);
        Ok(Proc {
            name: name.to_owned(),
            child,
            stdout,
        })
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the process prints (blocking).
    pub(crate) fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let reader = self.stdout.as_mut().context("stdout already consumed")?;
        reader.read_line(&mut line)?;
        if line.is_empty() {
            bail!("{} exited before printing its address", self.name);
        }
        Ok(line.trim_end().to_owned())
    }

    /// Fails if the process has already exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early: {status}", self.name);
        }
        Ok(())
    }

    /// Sends SIGTERM (through kill(1): the workspace forbids `unsafe`, and this is not hot).
    pub(crate) fn terminate(&self) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid());
        }
        Ok(())
    }

    /// Waits up to `limit` for the process to exit, then returns what it printed on stdout
    /// since the last read.
    pub(crate) fn wait_output(&mut self, limit: Duration) -> Result<String> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                let mut out = String::new();
                if let Some(mut reader) = self.stdout.take() {
                    reader.read_to_string(&mut out)?;
                }
                if !status.success() {
                    bail!("{} exited with {status}; stdout: {out}", self.name);
                }
                return Ok(out);
            }
            if start.elapsed() > limit {
                bail!("{} did not exit within {limit:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A scratch directory removed on drop (logs are copied out first when a run fails).
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("siplb-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("SIPLB_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A 127.0.0.1 port nobody listens on right now.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on `addr`.
pub(crate) fn wait_listening(addr: SocketAddr, proc: &mut Proc, limit: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        proc.check_running()?;
        if start.elapsed() > limit {
            bail!("{} does not listen on {addr} after {limit:?}", proc.name);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// User + system CPU time of a running process (/proc/PID/stat fields 14 and 15).
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let (_, total) = stat(pid).context("no readable /proc stat")?;
    Ok(Duration::from_secs_f64(total as f64 / clock_ticks() as f64))
}

/// (parent pid, utime + stime in clock ticks) from /proc/PID/stat; `None` once it is gone.
pub(crate) fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

pub(crate) fn parse_stat(text: &str) -> Option<(u32, u64)> {
    // The command name (field 2) may hold spaces and parentheses; the fields after the last
    // ')' are fixed: state (3), ppid (4), …, utime (14), stime (15).
    let (_, rest) = text.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Resident set size of a running process in kB (/proc/PID/status VmRSS).
pub(crate) fn rss_kb(pid: u32) -> Result<u64> {
    proc_kb(pid, "status", "VmRSS:").context("no VmRSS")
}

/// The kB figure of line `name` in `/proc/PID/FILE`; `None` when the process or line is gone.
pub(crate) fn proc_kb(pid: u32, file: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    kb_field(&text, name)
}

/// The kB figure of a `/proc` line such as `VmRSS:   4120 kB`.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The kernel's clock ticks per second (`CLK_TCK`), the unit of /proc's CPU times.
pub(crate) fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The `key=value` pairs of a line (other words skipped).
pub(crate) fn pairs(line: &str) -> BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A number from [`pairs`], 0 when absent.
pub(crate) fn num(map: &BTreeMap<String, String>, key: &str) -> u64 {
    map.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_own_process_figures() {
        let pid = std::process::id();
        assert!(rss_kb(pid).unwrap() > 0);
        assert!(cpu_time(pid).is_ok());
    }

    #[test]
    fn proc_figures() {
        assert_eq!(
            kb_field("Name: x\nVmRSS:\t  4120 kB\n", "VmRSS:"),
            Some(4120)
        );
        assert_eq!(kb_field("Rss: 1 kB\nPss:  77 kB\n", "Pss:"), Some(77));
        assert_eq!(kb_field("Rss: 1 kB\n", "Pss:"), None);
    }

    #[test]
    fn parses_pairs() {
        let map = pairs("siplb-stats table_hits=12 new_calls=3 junk");
        assert_eq!(num(&map, "table_hits"), 12);
        assert_eq!(num(&map, "new_calls"), 3);
        assert_eq!(num(&map, "absent"), 0);
    }
}
