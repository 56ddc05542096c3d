//! Numbers and durations with their bounds and defaults: probes, byte sizes, seconds, the
//! output marks, the batch window and the worker count.

use super::*;

/// Probes are on when an interval is given; the other probe keys refine them and are refused
/// without it, since they would silently do nothing.
pub(super) fn merge_probe(args: &Args, file: &FileConfig) -> Result<Option<ProbeConfig>, CliError> {
    let interval = pick_secs(
        "probe-interval",
        args.probe_interval.as_deref(),
        file.probe_interval,
    )?;
    let timeout = pick_secs(
        "probe-timeout",
        args.probe_timeout.as_deref(),
        file.probe_timeout,
    )?;
    let failures = pick_count(
        "probe-failures",
        args.probe_failures.as_deref(),
        file.probe_failures,
    )?;
    let successes = pick_count(
        "probe-successes",
        args.probe_successes.as_deref(),
        file.probe_successes,
    )?;
    let Some(interval) = interval else {
        let given = [
            ("probe-timeout", timeout.is_some()),
            ("probe-failures", failures.is_some()),
            ("probe-successes", successes.is_some()),
        ];
        return match given.iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(CliError::invalid(
                key,
                "probes are off without probe-interval",
            )),
            None => Ok(None),
        };
    };
    let default = ProbeConfig::default();
    Ok(Some(ProbeConfig {
        interval,
        // The default timeout must not exceed a short interval the operator chose.
        timeout: timeout.unwrap_or(default.timeout.min(interval)),
        failures_to_down: failures.unwrap_or(default.failures_to_down),
        successes_to_up: successes.unwrap_or(default.successes_to_up),
    }))
}

/// The flag's text if given, else the file's number; a positive count.
pub(super) fn pick_count(
    key: &'static str,
    flag: Option<&str>,
    file: Option<u32>,
) -> Result<Option<u32>, CliError> {
    let n = match (flag, file) {
        (Some(text), _) => text.trim().parse::<u32>().map_err(|_| {
            CliError::invalid(key, format!("{text:?} is not a positive whole number"))
        })?,
        (None, Some(n)) => n,
        (None, None) => return Ok(None),
    };
    if n == 0 {
        return Err(CliError::invalid(key, "must be at least 1"));
    }
    Ok(Some(n))
}

/// The flag's text if given, else the file's number.
pub(super) fn pick_secs(
    key: &'static str,
    flag: Option<&str>,
    file: Option<f64>,
) -> Result<Option<Duration>, CliError> {
    let secs = match (flag, file) {
        (Some(text), _) => text
            .trim()
            .parse::<f64>()
            .map_err(|_| CliError::invalid(key, format!("{text:?} is not a number of seconds")))?,
        (None, Some(n)) => n,
        (None, None) => return Ok(None),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(CliError::invalid(key, format!("{secs} is not a duration")));
    }
    Duration::try_from_secs_f64(secs)
        .map(Some)
        .map_err(|_| CliError::invalid(key, format!("{secs} seconds is out of range")))
}

pub(super) fn parse_bytes(key: &'static str, text: &str) -> Result<usize, CliError> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| {
            CliError::invalid(key, format!("{text:?} is not a positive number of bytes"))
        })
}

/// `--output-cap` when not given: 4 MiB, a few thousand queued messages.
pub(super) const OUTPUT_CAP_DEFAULT: usize = 4 * 1024 * 1024;

/// `--output-high-water` when not given: 256 KiB, some 400 call-setup messages, or a fraction
/// of a second of a busy backend's work. Past it the queue only adds delay to the calls behind
/// it, so new calls are better sent to a backend with room (or refused with Retry-After).
pub(super) const OUTPUT_HIGH_WATER_DEFAULT: usize = 256 * 1024;

/// `--output-low-water` when not given: a quarter of the high mark, so a backend released
/// from its hold takes a burst of new calls before it is held again.
pub(super) const OUTPUT_LOW_WATER_DEFAULT: usize = 64 * 1024;

/// The high- and low-water marks of the output queues: the low below the high, the high at
/// most the cap (`output-cap`), which stays the hard ceiling.
pub(super) fn merge_watermarks(
    (high_flag, high_file): (Option<&String>, Option<u64>),
    (low_flag, low_file): (Option<&String>, Option<u64>),
    cap: usize,
) -> Result<(usize, usize), CliError> {
    let pick = |key: &'static str, flag: Option<&String>, value: Option<u64>| match (flag, value) {
        (Some(s), _) => parse_bytes(key, s).map(Some),
        (None, Some(n)) => usize::try_from(n)
            .ok()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| CliError::invalid(key, format!("{n} is out of range"))),
        (None, None) => Ok(None),
    };
    let high = pick("output-high-water", high_flag, high_file)?;
    let low = pick("output-low-water", low_flag, low_file)?;
    // A cap set below the default marks scales them down with it, so an old configuration with
    // a small cap still starts.
    let high = high.unwrap_or(OUTPUT_HIGH_WATER_DEFAULT.min(cap / 2).max(1));
    let low = low.unwrap_or(OUTPUT_LOW_WATER_DEFAULT.min(high / 4));
    if high > cap {
        return Err(CliError::invalid(
            "output-high-water",
            format!("{high} is more than output-cap ({cap})"),
        ));
    }
    if low >= high {
        return Err(CliError::invalid(
            "output-low-water",
            format!("{low} is not below output-high-water ({high})"),
        ));
    }
    Ok((high, low))
}

/// Measured at 1,000 calls/s: 2 ms cuts the balancer's CPU per call by about half, and adds at
/// most 2 ms to a hop whose timers count in hundreds of milliseconds (docs/performance.md).
pub(super) const BATCH_WINDOW_DEFAULT: Duration = Duration::from_millis(2);

/// Beyond this the delay starts to show in call setup times measured by carriers (tens of ms
/// per call through several hops), for no further saving.
pub(super) const BATCH_WINDOW_MAX: Duration = Duration::from_millis(50);

/// More threads than this is a typo, not a machine.
pub(super) const WORKERS_MAX: usize = 1024;
