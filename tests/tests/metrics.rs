//! The metrics operators look at, against the real binaries (`lb-tokio` and `lb-mio`) on
//! 127.0.0.1 with SIPp on both sides: requests by method, responses by status class per
//! backend, the first/final response-time histograms, the table fill ratio, summed over
//! `--workers 2`; and the Grafana dashboard in `packaging/grafana/` queries only metrics the
//! binary serves.
//!
//! No assertion depends on speed: the figures are waited for with a generous bound.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::Value;
use siplb_e2e::lb::Runtime;
use siplb_e2e::net::wait_until;
use siplb_e2e::ops::{Metrics, OpsLb, PATIENCE};
use siplb_e2e::sipp::{Transport, Uac, UacSpec, Uas};
use siplb_e2e::RunDir;

const CALLS: u32 = 20;

fn backend_labels(index: usize, addr: SocketAddr) -> String {
    format!("backend=\"{index}\",addr=\"{addr}\"")
}

/// `siplb_backend_{first,final}_response_seconds` of one backend: (count, +Inf bucket, the
/// buckets in the order served).
fn histogram(m: &Metrics, which: &str, labels: &str) -> (f64, f64, Vec<f64>) {
    let name = format!("siplb_backend_{which}_response_seconds");
    let count = m.value(&format!("{name}_count{{{labels}}}"));
    let inf = m.value(&format!("{name}_bucket{{le=\"+Inf\",{labels}}}"));
    let buckets: Vec<f64> = m
        .samples
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}_bucket{{")) && k.ends_with(&format!(",{labels}}}"))
        })
        .map(|(_, v)| *v)
        .collect();
    (count, inf, buckets)
}

/// SIPp calls (INVITE, 180, 200, ACK, BYE, 200) through the balancer to two SIPp backends;
/// every figure is checked against the traffic sent.
fn figures_match_the_traffic(rt: Runtime, workers: &str) {
    let dir = RunDir::new(&format!("metrics-{workers}w-{}", rt.name()));
    let backends: Vec<Uas> = (0..2)
        .map(|i| Uas::start(&dir, &format!("backend-{i}"), "uas_basic.xml", &[]))
        .collect();
    let tables: String = backends
        .iter()
        .map(|b| format!("[[backend]]\naddr = \"{}\"\n", b.addr()))
        .collect();
    let mut lb = OpsLb::start(&dir, rt, &tables, &["--workers", workers]);
    for (i, b) in backends.iter().enumerate() {
        lb.wait_metric(
            &format!("siplb_backend_up{{{}}}", backend_labels(i, b.addr())),
            1.0,
        );
    }
    let mut spec = UacSpec::new("uac", "uac_basic.xml", lb.addr());
    spec.calls = CALLS;
    spec.rate = 40;
    // One connection per call, so that with two workers both get calls.
    spec.transport = Transport::PerCall;
    let uac = Uac::run(&dir, spec);
    uac.assert_all_ok(CALLS.into());

    // INVITE and BYE get answers (ACK none): the final histograms count 2 per call.
    let forwarded = f64::from(2 * CALLS);
    let finals = |m: &Metrics| -> f64 {
        backends
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let labels = backend_labels(i, b.addr());
                histogram(m, "final", &labels).0
            })
            .sum()
    };
    let mut m = lb.metrics();
    wait_until("every final response in the histograms", PATIENCE, || {
        m = lb.metrics();
        finals(&m) == forwarded
    });
    let calls = f64::from(CALLS);
    for method in ["INVITE", "ACK", "BYE"] {
        let series = format!("siplb_requests_total{{method=\"{method}\",from=\"frontend\"}}");
        assert_eq!(m.value(&series), calls, "{series}");
    }
    for (series, value) in &m.samples {
        if series.starts_with("siplb_requests_total{")
            && !["INVITE", "ACK", "BYE"]
                .iter()
                .any(|x| series.contains(&format!("\"{x}\"")))
        {
            assert_eq!(*value, 0.0, "{series}: no such request was sent");
        }
    }
    let mut invites = 0.0;
    for (i, b) in backends.iter().enumerate() {
        let labels = backend_labels(i, b.addr());
        let class = |c: &str| {
            m.value(&format!(
                "siplb_backend_responses_total{{{labels},class=\"{c}\"}}"
            ))
        };
        // Each call on this backend: one 180 (its INVITE's first response), and a 200 to
        // the INVITE and one to the BYE (the BYE's first response too).
        let ringing = class("1xx");
        invites += ringing;
        assert_eq!(class("2xx"), 2.0 * ringing, "backend {i}");
        for c in ["3xx", "4xx", "5xx", "6xx"] {
            assert_eq!(class(c), 0.0, "backend {i} {c}");
        }
        for which in ["first", "final"] {
            let (count, inf, buckets) = histogram(&m, which, &labels);
            assert_eq!(count, 2.0 * ringing, "backend {i}: {which} count");
            assert_eq!(inf, count, "backend {i}: {which} +Inf bucket");
            assert_eq!(buckets.len(), 16, "backend {i}: 15 bounds and +Inf");
            let sum = m.value(&format!(
                "siplb_backend_{which}_response_seconds_sum{{{labels}}}"
            ));
            assert!(
                sum > 0.0 && sum < 30.0 * count,
                "backend {i}: {which} sum {sum}"
            );
        }
    }
    assert_eq!(
        invites, calls,
        "every INVITE was answered with a 180 by some backend"
    );
    assert!(invites > 0.0);
    assert_eq!(m.value("siplb_workers"), workers.parse::<f64>().unwrap());
    let fill = m.value("siplb_table_fill_ratio");
    let (len, capacity) = (m.value("siplb_table_len"), m.value("siplb_table_capacity"));
    assert!(
        (fill - len / capacity).abs() < 1e-9,
        "fill {fill}, {len}/{capacity}"
    );

    check_dashboard(&lb.get("/metrics").1);
    lb.stop();
    for b in backends {
        b.finish();
    }
}

/// Every metric the Grafana dashboard names is served: a sample of it, or its family's
/// `# TYPE` line (a family with no sample yet, such as `siplb_backend_load` before any
/// envelope backend reported a load).
fn check_dashboard(exposition: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/grafana/siplb.json"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    collect_metric_names(&dashboard, &mut names);
    assert!(names.len() >= 20, "the dashboard names only {names:?}");
    for name in &names {
        let served = exposition.lines().any(|line| {
            let sample = line
                .strip_prefix(name.as_str())
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'));
            sample
                || line
                    .strip_prefix("# TYPE ")
                    .and_then(|t| t.split(' ').next())
                    == Some(name)
        });
        assert!(
            served,
            "the dashboard queries {name}, which /metrics does not serve"
        );
    }
    let panels = dashboard["panels"].as_array().unwrap();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            assert!(expr.contains("siplb_"), "{expr}");
        }
    }
}

/// Every `siplb_…` name in the strings of `value` (queries and variable definitions).
fn collect_metric_names(value: &Value, names: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(at) = rest.find("siplb_") {
                let tail = &rest[at..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_metric_names(v, names)),
        Value::Object(map) => map.values().for_each(|v| collect_metric_names(v, names)),
        _ => {}
    }
}

fn one_worker(rt: Runtime) {
    figures_match_the_traffic(rt, "1");
}

fn two_workers_are_summed(rt: Runtime) {
    figures_match_the_traffic(rt, "2");
}

siplb_e2e::for_both_runtimes!(one_worker, two_workers_are_summed);
