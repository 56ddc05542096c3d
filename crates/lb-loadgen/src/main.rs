//! `lb-loadgen`: calls through siplb over a few multiplexed TCP connections; prints one
//! machine-readable summary line on stdout (see `lb_loadgen::Report`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lb_loadgen::{Config, Limit};

/// A SIP load generator acting as a proxy in front of siplb.
#[derive(Parser, Debug)]
#[command(name = "lb-loadgen")]
struct Args {
    /// The balancer's listen address.
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: SocketAddr,
    /// TCP connections to the balancer; calls are spread over them.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// New calls per second (0: as fast as --max-active allows).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Number of calls to make.
    #[arg(long, conflicts_with = "duration")]
    calls: Option<u64>,
    /// How long to start calls, e.g. `10s`, `1500ms`, `2m` (default: 10s unless --calls).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Time between ACK and BYE, e.g. `500ms`.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    hold: Duration,
    /// Calls in progress at most (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_active: usize,
    /// Every n-th INVITE is sent twice, with the same branch (0: never).
    #[arg(long, default_value_t = 10)]
    retransmit_every: u64,
    /// How long each transaction may take before its call fails.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    timeout: Duration,
    /// A live one-line progress on stderr, refreshed each second.
    #[arg(long)]
    progress: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let limit = match (args.calls, args.duration) {
        (Some(n), _) => Limit::Calls(n),
        (None, Some(d)) => Limit::Duration(d),
        (None, None) => Limit::Duration(Duration::from_secs(10)),
    };
    let config = Config {
        target: args.target,
        connections: args.connections,
        rate: args.rate,
        limit,
        hold: args.hold,
        max_active: args.max_active,
        retransmit_every: args.retransmit_every,
        timeout: args.timeout,
        ..Config::default()
    };
    let show = args.progress;
    let mut progress = |p: &lb_loadgen::Progress| {
        if show {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r{p}   ");
            let _ = err.flush();
        }
    };
    let result = lb_loadgen::run(&config, &mut progress);
    if show {
        eprintln!();
    }
    match result {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("lb-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

/// `500ms`, `2s`, `1.5s`, `3m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 500ms, 2s or 1m"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{s}`: {e}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
