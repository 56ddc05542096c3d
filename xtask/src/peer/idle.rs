//! `cargo xtask bench memory --idle` and `bench memory --burst`: what an idle connection
//! costs each balancer, and whether its memory comes back after a burst of new calls.
//!
//! `--idle [--connections N] [--only LIST] [--no-build]`: the `bench peer` farm (three SIPp
//! UAS, the balancer) with a TLS listener and a TCP one. After a second's rest the balancer's
//! memory is read; this process opens N plain TCP connections to the TCP listener and leaves
//! them idle, the memory is read again once it has settled, then N TLS connections (handshakes
//! done with rustls here, then idle) to the TLS listener, and the memory read a third time.
//! Printed per balancer, the deltas over N:
//!
//! `lb=NAME connections=N plain_bytes_per_conn=P plain_pss_bytes_per_conn=… \
//! tls_bytes_per_conn=T tls_pss_bytes_per_conn=…`
//!
//! P and T are from `VmRSS` summed over the balancer's processes; the `pss` figures from
//! `Pss`, which counts Kamailio's shared memory (where it keeps its connections and OpenSSL
//! sessions) once instead of once per process that touched it. For siplb (one process) they
//! agree.
//!
//! `--burst [--entries N] [--wait SECS] [--only tokio,mio] [--no-build]`: the envelope farm of
//! `bench memory`; 4 connections each write N/4 OPTIONS (new calls, one new-call entry each)
//! at once, then wait for every answer, and stay open. The balancer's `VmRSS` is printed before
//! the burst, at its end, and `--wait` seconds later (64 by default: twice the new-call
//! window, so every entry of the burst has expired):
//!
//! `runtime=R entries=N answered=A rss_kb_before=B rss_kb_after_burst=P rss_kb_after_wait=W \
//! back_within_10pct=yes|no`

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::held::resident_now;
use super::{number, parse_flags, tls, Farm, Lb, Tools, ALL};
use crate::procs::{rss_kb, TempDir};

const IDLE_USAGE: &str = "usage: cargo xtask bench memory --idle [--connections N] \
                          [--only kamailio,tokio,mio] [--no-build]";
const BURST_USAGE: &str = "usage: cargo xtask bench memory --burst [--entries N] \
                           [--wait SECS] [--only tokio,mio] [--no-build]";

/// Per-connection memory, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Idle {
    pub(crate) plain_rss_bytes: f64,
    pub(crate) plain_pss_bytes: f64,
    pub(crate) tls_rss_bytes: f64,
    pub(crate) tls_pss_bytes: f64,
}

/// The entry point of `bench memory --idle`.
pub(crate) fn bench_idle(words: &[&str]) -> Result<()> {
    let mut connections = 2000usize;
    let mut only = ALL.to_vec();
    let no_build = parse_flags(words, IDLE_USAGE, |flag, value| {
        match flag {
            "--connections" => connections = number(flag, value)?,
            "--only" => only = Lb::parse_list(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    ensure!(connections > 0, "--connections must be above 0");
    let (mut tools, _bin_copy) = Tools::prepare(&only, no_build)?;
    tools.enable_tls()?;
    for lb in only {
        let idle = measure(lb, &tools, connections, connections)
            .with_context(|| format!("{} idle connections", lb.name()))?;
        println!(
            "lb={} connections={connections} plain_bytes_per_conn={:.0} \
             plain_pss_bytes_per_conn={:.0} tls_bytes_per_conn={:.0} tls_pss_bytes_per_conn={:.0}",
            lb.name(),
            idle.plain_rss_bytes,
            idle.plain_pss_bytes,
            idle.tls_rss_bytes,
            idle.tls_pss_bytes
        );
    }
    Ok(())
}

/// Starts `lb`'s farm (the tools must have certificates), opens `plain` idle TCP connections,
/// then `tls` idle TLS ones, and returns each kind's memory per connection (0 for a count of 0).
pub(crate) fn measure(lb: Lb, tools: &Tools, plain: usize, tls_count: usize) -> Result<Idle> {
    let pki = tools.pki.as_ref().context("idle TLS needs certificates")?;
    let config = pki.client_config()?;
    let dir = TempDir::new(&format!("idle-{}", lb.name()))?;
    // Every idle connection comes from 127.0.0.1: lift the per-address connection limit (1,000
    // by default, docs/operations.md), or the balancer evicts the silent ones at the limit.
    let limits = dir.path("idle.toml");
    std::fs::write(
        &limits,
        format!(
            "[limits]\nfrontends-per-ip-max = {}\n",
            2 * (plain + tls_count) + 100
        ),
    )?;
    let args = ["--config".to_string(), limits.display().to_string()];
    let mut farm = Farm::start(
        lb,
        tools,
        &dir,
        if lb == Lb::Kamailio { &[] } else { &args },
    )?;
    thread::sleep(Duration::from_secs(1));
    let before = settled(&farm)?;
    let plain_conns = tls::open_plain(farm.plain, plain)?;
    let after_plain = settled(&farm)?;
    let tls_conns = tls::open_tls(farm.listen, tls_count, &config)?;
    let after_tls = settled(&farm)?;
    farm.balancer.check_running()?;
    let per = |a: u64, b: u64, n: usize| {
        if n == 0 {
            0.0
        } else {
            (b as f64 - a as f64) * 1024.0 / n as f64
        }
    };
    let idle = Idle {
        plain_rss_bytes: per(before.rss_kb, after_plain.rss_kb, plain),
        plain_pss_bytes: per(before.pss_kb, after_plain.pss_kb, plain),
        tls_rss_bytes: per(after_plain.rss_kb, after_tls.rss_kb, tls_count),
        tls_pss_bytes: per(after_plain.pss_kb, after_tls.pss_kb, tls_count),
    };
    eprintln!(
        "idle lb={} rss_kb={}->{}->{} pss_kb={}->{}->{} processes={}",
        lb.name(),
        before.rss_kb,
        after_plain.rss_kb,
        after_tls.rss_kb,
        before.pss_kb,
        after_plain.pss_kb,
        after_tls.pss_kb,
        farm.balancer.tree().len()
    );
    drop(tls_conns);
    drop(plain_conns);
    drop(farm);
    Ok(idle)
}

/// The balancer's memory once it has stopped moving: read every 250 ms until two readings
/// agree within 1 % (the balancer may still be taking connections in), at most 5 s.
fn settled(farm: &Farm) -> Result<super::held::Resident> {
    let start = Instant::now();
    let mut last = resident_now(&farm.balancer);
    loop {
        thread::sleep(Duration::from_millis(250));
        let now = resident_now(&farm.balancer);
        let close = now.pss_kb.abs_diff(last.pss_kb) * 100 <= now.pss_kb.max(1);
        if close || start.elapsed() > Duration::from_secs(5) {
            return Ok(now);
        }
        last = now;
    }
}

/// The entry point of `bench memory --burst`.
pub(crate) fn bench_burst(words: &[&str]) -> Result<()> {
    let mut entries = 20_000usize;
    let mut wait = 64.0f64;
    let mut only = vec![Lb::Tokio, Lb::Mio];
    let no_build = parse_flags(words, BURST_USAGE, |flag, value| {
        match flag {
            "--entries" => entries = number(flag, value)?,
            "--wait" => wait = number(flag, value)?,
            "--only" => only = Lb::parse_list(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    ensure!(
        entries >= 4 && wait >= 0.0,
        "--entries at least 4, --wait at least 0"
    );
    only.retain(|l| *l != Lb::Kamailio);
    for lb in only {
        let runtime = match lb {
            Lb::Tokio => "tokio",
            _ => "mio",
        };
        if !no_build {
            crate::build(runtime)?;
        }
        burst(runtime, entries, wait).with_context(|| format!("{} burst", lb.name()))?;
    }
    Ok(())
}

fn burst(runtime: &str, entries: usize, wait: f64) -> Result<()> {
    const SENDERS: usize = 4;
    // The default window (32 s): entries of the burst are gone 32 s after it.
    let mut farm = crate::Farm::start(runtime, 32.0)?;
    thread::sleep(Duration::from_secs(1));
    let pid = farm.balancer.pid();
    let before = rss_kb(pid)?;
    let per = entries / SENDERS;
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let to = farm.listen;
            thread::spawn(move || send_options(to, s, per))
        })
        .collect();
    let mut answered = 0;
    let mut conns = Vec::new();
    for s in senders {
        let (conn, n) = s
            .join()
            .map_err(|_| anyhow::anyhow!("a sender panicked"))??;
        answered += n;
        conns.push(conn);
    }
    let after_burst = rss_kb(pid)?;
    thread::sleep(Duration::from_secs_f64(wait));
    farm.balancer.check_running()?;
    let after_wait = rss_kb(pid)?;
    drop(conns);
    let stats = farm.stop_balancer()?;
    farm.stop_backends()?;
    let back = after_wait * 10 <= before * 11;
    println!(
        "runtime={runtime} entries={} answered={answered} rss_kb_before={before} \
         rss_kb_after_burst={after_burst} rss_kb_after_wait={after_wait} wait_s={wait} \
         table_len_max={} back_within_10pct={}",
        per * SENDERS,
        crate::procs::num(&stats, "table_len_max"),
        if back { "yes" } else { "no" }
    );
    Ok(())
}

/// One connection's share of the burst: `count` OPTIONS in one write, then every answer read.
/// Returns the connection (kept open, idle) and how many 200s came back.
fn send_options(to: SocketAddr, sender: usize, count: usize) -> Result<(TcpStream, usize)> {
    let mut sock = TcpStream::connect(to)?;
    let mut text = String::with_capacity(count * 320);
    for i in 0..count {
        text.push_str(&format!(
            "OPTIONS sip:burst@{to} SIP/2.0\r\n\
             Via: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bK-b{sender}-{i}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:burst@siplb.test>;tag=b{sender}-{i}\r\n\
             To: <sip:burst@{to}>\r\n\
             Call-ID: burst-{sender}-{i}@siplb.test\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n"
        ));
    }
    let mut reader = sock.try_clone()?;
    reader.set_read_timeout(Some(Duration::from_secs(30)))?;
    let counter = thread::spawn(move || -> usize {
        let mut got = 0;
        let mut tail = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while got < count {
            let n = match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tail.extend_from_slice(&buf[..n]);
            let s = String::from_utf8_lossy(&tail);
            got += s.matches("SIP/2.0 200").count();
            // Ten bytes cannot hold a whole status line (never counted twice) but can hold
            // the start of one split across two reads.
            let keep = tail.len().saturating_sub(10);
            tail.drain(..keep);
        }
        got
    });
    sock.write_all(text.as_bytes())?;
    let got = counter.join().unwrap_or(0);
    Ok((sock, got))
}
