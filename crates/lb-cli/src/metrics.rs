//! `--metrics ADDR`: the core's counters in the Prometheus / OpenMetrics text format at
//! `/metrics`, and readiness at `/health`, served by `tiny_http` on a thread of its own.
//!
//! The balancer is never shared: each worker's driver copies `lb.stats()` and
//! `lb.backend_status()` into its own [`Snapshot`] slot behind a mutex (see [`crate::Ops`]), at
//! most every [`PUBLISH_EVERY`], and the HTTP thread renders the sum of whatever snapshots are
//! there ([`Snapshot::merge`]), plus a few series per worker (`siplb_worker_*{worker="i"}`). A
//! scrape therefore sees figures at most [`PUBLISH_EVERY`] old and never slows a loop down
//! beyond one short lock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lb_core::{BackendStatus, Figures, Histogram, Kind, Stats, METHODS, REQUEST_SOURCES};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::RunError;
use lb_runtime::ProxyReject;

/// Longest a published snapshot lags behind the balancer while it is busy.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What the metrics thread serves: a copy of the balancer's figures at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The core's counters.
    pub stats: Stats,
    /// The core's labelled figures: requests by method, per-backend responses and times.
    pub figures: Figures,
    /// Every backend, in id order.
    pub backends: Vec<BackendStatus>,
    /// The new-call table's capacity (fixed until a restart).
    pub table_capacity: u64,
    /// The TLS handshake counters, when TLS listeners exist (read live, not copied).
    pub tls: Option<Arc<lb_runtime::tls::TlsCounters>>,
    /// Connections the driver closed before they reached the core, by [`ProxyReject`] cause
    /// (`--proxy-protocol`), in [`ProxyReject::ALL`] order.
    pub proxy_rejected: [u64; 3],
    /// Messages to backends the driver dropped at the output cap (the connection stays).
    pub output_cap_drops: u64,
}

impl Snapshot {
    /// The figures of one process from those of its workers. Counters, levels of per-worker
    /// things (open connections, table entries, table capacity) and rejections add up; a
    /// backend is up only when it is up on every worker (any worker may be handed the next
    /// connection), draining, removed or overloaded when it is on any, `assigned` adds up and
    /// `load` is the highest; `backends_up` counts the backends up so defined, and
    /// `table_len_max` is the sum of the workers' high-water marks (an upper bound).
    pub fn merge(workers: &[Snapshot]) -> Snapshot {
        let mut merged = Snapshot::default();
        for (i, w) in workers.iter().enumerate() {
            merged.stats.accumulate(&w.stats);
            merged.figures.accumulate(&w.figures);
            merged.table_capacity += w.table_capacity;
            // One set of TLS counters for the process: any worker's handle reads it.
            if merged.tls.is_none() {
                merged.tls.clone_from(&w.tls);
            }
            merged.output_cap_drops += w.output_cap_drops;
            for (sum, n) in merged.proxy_rejected.iter_mut().zip(w.proxy_rejected) {
                *sum += n;
            }
            if i == 0 {
                merged.backends.clone_from(&w.backends);
                continue;
            }
            for (m, b) in merged.backends.iter_mut().zip(&w.backends) {
                m.up &= b.up;
                m.draining |= b.draining;
                m.removed |= b.removed;
                m.overloaded |= b.overloaded;
                m.queue_held |= b.queue_held;
                m.assigned = m.assigned.saturating_add(b.assigned);
                m.load = m.load.max(b.load);
            }
            // A worker that has not published yet knows no backend: none is up everywhere.
            if w.backends.len() < merged.backends.len() {
                merged.backends.iter_mut().for_each(|m| m.up = false);
            }
        }
        if workers.len() > 1 {
            merged.stats.backends_up = merged.backends.iter().filter(|b| b.up).count() as u64;
        }
        merged
    }

    /// Ready for traffic: at least one backend is up.
    pub fn ready(&self) -> bool {
        self.backends.iter().any(|b| b.up)
    }

    /// The exposition text of this snapshot, as `/metrics` serves it.
    pub fn render(&self) -> String {
        render(&registry(Arc::new([Mutex::new(self.clone())])))
    }
}

/// The snapshot slots of a process, one per worker.
type Slots = Arc<[Mutex<Snapshot>]>;

/// The running HTTP server; stops (and frees its port) when dropped.
pub(crate) struct MetricsServer {
    server: Arc<tiny_http::Server>,
    pub(crate) shared: Slots,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` now, so a busy port fails the start-up, and serves from a new thread the
    /// sum of `workers` slots, each starting as `first`.
    pub(crate) fn start(
        addr: SocketAddr,
        first: Snapshot,
        workers: usize,
    ) -> Result<MetricsServer, RunError> {
        let server = tiny_http::Server::http(addr).map_err(|e| RunError::Metrics {
            addr,
            reason: e.to_string(),
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let shared: Slots = (0..workers.max(1))
            .map(|_| Mutex::new(first.clone()))
            .collect();
        let (thread_server, thread_shared) = (Arc::clone(&server), Arc::clone(&shared));
        std::thread::Builder::new()
            .name("siplb-metrics".to_string())
            .spawn(move || serve(&thread_server, thread_shared))
            .map_err(RunError::Runtime)?;
        tracing::info!(%addr, "metrics at /metrics, readiness at /health");
        Ok(MetricsServer {
            server,
            shared,
            addr,
        })
    }

    /// The bound address (the real port when `addr` asked for port 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        // Ends `incoming_requests` on the thread, which then drops the last handle.
        self.server.unblock();
    }
}

/// Locks the snapshot; a panic elsewhere while holding it leaves plain data, still usable.
pub(crate) fn lock(shared: &Mutex<Snapshot>) -> MutexGuard<'_, Snapshot> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The sum of every worker's snapshot, and the snapshots themselves.
fn collect(shared: &Slots) -> (Snapshot, Vec<Snapshot>) {
    let workers: Vec<Snapshot> = shared.iter().map(|slot| lock(slot).clone()).collect();
    (Snapshot::merge(&workers), workers)
}

fn serve(server: &tiny_http::Server, shared: Slots) {
    let registry = registry(Arc::clone(&shared));
    for request in server.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or_default();
        let readable = matches!(
            request.method(),
            tiny_http::Method::Get | tiny_http::Method::Head
        );
        let response = match (readable, path) {
            (true, "/metrics") => text(200, render(&registry), OPENMETRICS_TYPE),
            (true, "/health") => {
                if collect(&shared).0.ready() {
                    text(200, "ready\n".to_string(), PLAIN_TYPE)
                } else {
                    text(503, "not ready: no backend is up\n".to_string(), PLAIN_TYPE)
                }
            }
            (false, "/metrics" | "/health") => text(405, "GET only\n".to_string(), PLAIN_TYPE),
            _ => text(404, "try /metrics or /health\n".to_string(), PLAIN_TYPE),
        };
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "metrics: writing a response failed");
        }
    }
}

fn text(
    status: u16,
    body: String,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let response = tiny_http::Response::from_string(body).with_status_code(status);
    match tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type.as_bytes()) {
        Ok(header) => response.with_header(header),
        Err(()) => response,
    }
}

const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PLAIN_TYPE: &str = "text/plain; charset=utf-8";

fn registry(shared: Slots) -> Registry {
    let mut registry = Registry::with_prefix("siplb");
    registry.register_collector(Box::new(SnapshotCollector(shared)));
    registry
}

fn render(registry: &Registry) -> String {
    let mut body = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut body, registry) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
    body
}

/// Encodes the shared snapshot on each scrape.
#[derive(Debug)]
struct SnapshotCollector(Slots);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (snapshot, workers) = collect(&self.0);
        for (series, (_, value)) in Stats::SERIES.iter().zip(snapshot.stats.pairs()) {
            let (name, help) = (series.name, series.help);
            match series.kind {
                Kind::Gauge => {
                    let gauge = ConstGauge::new(value);
                    let metric =
                        encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                    gauge.encode(metric)?;
                }
                Kind::Counter => {
                    let counter = ConstCounter::new(value);
                    let metric =
                        encoder.encode_descriptor(name, help, None, counter.metric_type())?;
                    counter.encode(metric)?;
                }
            }
        }
        if let Some(tls) = &snapshot.tls {
            for (name, help, value) in tls.series() {
                let counter = ConstCounter::new(value);
                let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
                counter.encode(metric)?;
            }
        }
        let capacity = ConstGauge::new(snapshot.table_capacity);
        let metric = encoder.encode_descriptor(
            "table_capacity",
            "New-call table entries the balancer can hold",
            None,
            capacity.metric_type(),
        )?;
        capacity.encode(metric)?;

        let labels: Vec<[(&str, String); 2]> = snapshot
            .backends
            .iter()
            .map(|b| {
                [
                    ("backend", b.id.index().to_string()),
                    ("addr", b.addr.to_string()),
                ]
            })
            .collect();
        type Field = fn(&BackendStatus) -> Option<u64>;
        let fields: [(&str, &str, Field); 8] = [
            (
                "backend_up",
                "1 when the backend takes its calls' traffic",
                |b| Some(u64::from(b.up)),
            ),
            (
                "backend_draining",
                "1 when the backend takes no new calls by the operator's choice",
                |b| Some(u64::from(b.draining)),
            ),
            (
                "backend_removed",
                "1 when a reload removed the backend",
                |b| Some(u64::from(b.removed)),
            ),
            (
                "backend_overloaded",
                "1 while the backend is held after answering a new call with 503",
                |b| Some(u64::from(b.overloaded)),
            ),
            (
                "backend_queue_held",
                "1 while the backend is held because its connection queue is over the high-water mark",
                |b| Some(u64::from(b.queue_held)),
            ),
            (
                "backend_assigned",
                "New calls assigned to the backend within the window",
                |b| Some(u64::from(b.assigned)),
            ),
            ("backend_weight", "The backend's configured weight", |b| {
                Some(u64::from(b.weight))
            }),
            (
                "backend_load",
                "The load the backend last reported in an envelope",
                |b| b.load.map(u64::from),
            ),
        ];
        for (name, help, field) in fields {
            let mut metric = encoder.encode_descriptor(name, help, None, capacity.metric_type())?;
            for (b, labels) in snapshot.backends.iter().zip(&labels) {
                if let Some(value) = field(b) {
                    ConstGauge::new(value).encode(metric.encode_family(labels)?)?;
                }
            }
        }

        encode_figures(&mut encoder, &snapshot, &labels)?;

        let count = ConstGauge::new(workers.len() as u64);
        let metric = encoder.encode_descriptor(
            "workers",
            "Balancer cores (threads) of this process",
            None,
            count.metric_type(),
        )?;
        count.encode(metric)?;
        type WorkerField = fn(&Stats) -> u64;
        let per_worker: [(&str, &str, Kind, WorkerField); 3] = [
            (
                "worker_frontends_accepted",
                "Frontend connections accepted by this worker",
                Kind::Counter,
                |s| s.frontends_accepted,
            ),
            (
                "worker_frontends_open",
                "Frontend connections this worker holds now",
                Kind::Gauge,
                |s| s.frontends_open,
            ),
            (
                "worker_new_calls",
                "New calls this worker assigned",
                Kind::Counter,
                |s| s.new_calls,
            ),
        ];
        for (name, help, kind, field) in per_worker {
            let metric_type = match kind {
                Kind::Counter => ConstCounter::new(0u64).metric_type(),
                Kind::Gauge => count.metric_type(),
            };
            let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
            for (i, w) in workers.iter().enumerate() {
                let labels = [("worker", i.to_string())];
                let value = field(&w.stats);
                match kind {
                    Kind::Counter => {
                        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?
                    }
                    Kind::Gauge => ConstGauge::new(value).encode(metric.encode_family(&labels)?)?,
                }
            }
        }

        let mut metric = encoder.encode_descriptor(
            "proxy_header_rejected",
            "Connections closed before reaching the balancer: no valid PROXY header \
             (--proxy-protocol)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        for cause in ProxyReject::ALL {
            let labels = [("cause", cause.name())];
            ConstCounter::new(snapshot.proxy_rejected[cause.index()])
                .encode(metric.encode_family(&labels)?)?;
        }
        let metric = encoder.encode_descriptor(
            "output_cap_drops",
            "Messages to backends dropped because the connection's queue was at the output cap \
             (the backend keeps its connection and calls)",
            None,
            ConstCounter::new(0u64).metric_type(),
        )?;
        ConstCounter::new(snapshot.output_cap_drops).encode(metric)?;
        Ok(())
    }
}

/// The labels of a class of statuses, `[0]` for 1xx.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

/// The core's labelled figures ([`Figures`]) and the table fill ratio.
fn encode_figures(
    encoder: &mut DescriptorEncoder,
    snapshot: &Snapshot,
    backend_labels: &[[(&str, String); 2]],
) -> Result<(), std::fmt::Error> {
    let fill = if snapshot.table_capacity == 0 {
        0.0
    } else {
        snapshot.stats.table_len as f64 / snapshot.table_capacity as f64
    };
    let gauge = ConstGauge::new(fill);
    let metric = encoder.encode_descriptor(
        "table_fill_ratio",
        "New-call table entries now over the entries it can hold (0 to 1)",
        None,
        gauge.metric_type(),
    )?;
    gauge.encode(metric)?;

    let mut metric = encoder.encode_descriptor(
        "requests",
        "SIP requests received, by method (other: any method not listed) and source",
        None,
        MetricType::Counter,
    )?;
    for (source, counts) in REQUEST_SOURCES.iter().zip(&snapshot.figures.requests) {
        for (method, &value) in METHODS.iter().zip(counts) {
            let labels = [("method", *method), ("from", *source)];
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
    }

    // Every backend has every series from the start (zeros until it answers), so rates and
    // quantiles need no special case for a backend that has not answered yet.
    let none = lb_core::BackendFigures::default();
    let backends = || {
        backend_labels
            .iter()
            .enumerate()
            .map(|(i, labels)| (snapshot.figures.backends.get(i).unwrap_or(&none), labels))
    };
    let mut metric = encoder.encode_descriptor(
        "backend_responses",
        "SIP responses from the backend (probe answers aside), by status class",
        None,
        MetricType::Counter,
    )?;
    for (figures, labels) in backends() {
        for (class, &value) in STATUS_CLASSES.iter().zip(&figures.responses) {
            let [backend, addr] = labels;
            let labels = [
                (backend.0, backend.1.as_str()),
                (addr.0, addr.1.as_str()),
                ("class", class),
            ];
            ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
        }
    }
    type Times = fn(&lb_core::BackendFigures) -> &Histogram;
    let histograms: [(&str, &str, Times); 2] = [
        (
            "backend_first_response_seconds",
            "Time from forwarding a request to the backend to its first response",
            |f| &f.first_response,
        ),
        (
            "backend_final_response_seconds",
            "Time from forwarding a request to the backend to its final response",
            |f| &f.final_response,
        ),
    ];
    for (name, help, field) in histograms {
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (figures, labels) in backends() {
            encode_histogram(metric.encode_family(labels)?, field(figures))?;
        }
    }
    Ok(())
}

/// One histogram in Prometheus form: per-bucket counts by upper bound in seconds, `+Inf` last.
fn encode_histogram(
    mut metric: prometheus_client::encoding::MetricEncoder<'_>,
    histogram: &Histogram,
) -> Result<(), std::fmt::Error> {
    let mut buckets = [(0.0, 0); lb_core::RESPONSE_BUCKETS_US.len() + 1];
    for (i, slot) in buckets.iter_mut().enumerate() {
        let bound = lb_core::RESPONSE_BUCKETS_US
            .get(i)
            .map_or(f64::MAX, |&us| us as f64 / 1e6);
        *slot = (bound, histogram.buckets[i]);
    }
    metric.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
        histogram.sum_us as f64 / 1e6,
        histogram.count,
        &buckets,
        None,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    fn snapshot() -> Snapshot {
        // Ids are minted by the core only: take real statuses and set their fields.
        let config = lb_core::Config {
            listeners: vec!["127.0.0.1:5060".parse().unwrap()],
            backends: vec![
                lb_core::BackendConfig::plain("127.0.0.1:5070".parse().unwrap()),
                lb_core::BackendConfig::plain("127.0.0.1:5071".parse().unwrap()),
            ],
            tag_keys: vec![lb_core::TagKey {
                id: 1,
                secret: vec![7; 32],
            }],
            ..lb_core::Config::default()
        };
        let lb = lb_core::Balancer::new(config.validate().unwrap(), 1, std::time::Instant::now());
        let mut backends: Vec<BackendStatus> = lb.backend_status().collect();
        backends[0].up = true;
        backends[0].load = Some(42);
        backends[0].assigned = 3;
        backends[1].draining = true;
        backends[1].overloaded = true;
        backends[1].queue_held = true;
        backends[1].weight = 2;
        let stats = Stats {
            new_calls: 7,
            bytes_in: 1234,
            backends_up: 1,
            table_len: 3,
            ..Stats::default()
        };
        let mut figures = Figures::default();
        figures.requests[0][0] = 5; // INVITE from frontends
        figures.requests[1][3] = 2; // BYE from backends
                                    // Backend 1 has answered nothing: its figures are not even allocated yet.
        figures.backends = vec![lb_core::BackendFigures::default(); 1];
        figures.backends[0].responses = [4, 3, 0, 1, 0, 0];
        for us in [400, 1_500, 40_000_000] {
            figures.backends[0].final_response.observe(us);
        }
        Snapshot {
            stats,
            figures,
            backends,
            table_capacity: 1000,
            tls: None,
            proxy_rejected: [0; 3],
            output_cap_drops: 2,
        }
    }

    #[test]
    fn renders_counters_gauges_and_backend_families() {
        let text = snapshot().render();
        for line in [
            "# TYPE siplb_new_calls counter",
            "siplb_new_calls_total 7",
            "siplb_bytes_in_total 1234",
            "# TYPE siplb_table_len gauge",
            "siplb_table_len 3",
            "siplb_backends_up 1",
            "siplb_table_capacity 1000",
            "siplb_backend_up{backend=\"0\",addr=\"127.0.0.1:5070\"} 1",
            "siplb_backend_up{backend=\"1\",addr=\"127.0.0.1:5071\"} 0",
            "siplb_backend_draining{backend=\"1\",addr=\"127.0.0.1:5071\"} 1",
            "siplb_backend_overloaded{backend=\"1\",addr=\"127.0.0.1:5071\"} 1",
            "siplb_backend_queue_held{backend=\"1\",addr=\"127.0.0.1:5071\"} 1",
            "siplb_output_cap_drops_total 2",
            "siplb_backend_assigned{backend=\"0\",addr=\"127.0.0.1:5070\"} 3",
            "siplb_backend_weight{backend=\"1\",addr=\"127.0.0.1:5071\"} 2",
            "siplb_backend_load{backend=\"0\",addr=\"127.0.0.1:5070\"} 42",
            "siplb_table_fill_ratio 0.003",
            "# TYPE siplb_requests counter",
            "siplb_requests_total{method=\"INVITE\",from=\"frontend\"} 5",
            "siplb_requests_total{method=\"BYE\",from=\"backend\"} 2",
            "siplb_requests_total{method=\"other\",from=\"frontend\"} 0",
            "siplb_backend_responses_total{backend=\"0\",addr=\"127.0.0.1:5070\",class=\"1xx\"} 4",
            "siplb_backend_responses_total{backend=\"0\",addr=\"127.0.0.1:5070\",class=\"4xx\"} 1",
            "siplb_backend_responses_total{backend=\"1\",addr=\"127.0.0.1:5071\",class=\"6xx\"} 0",
            "# TYPE siplb_backend_final_response_seconds histogram",
            "siplb_backend_final_response_seconds_count{backend=\"0\",addr=\"127.0.0.1:5070\"} 3",
            "siplb_backend_final_response_seconds_sum{backend=\"0\",addr=\"127.0.0.1:5070\"} 40.0019",
            "siplb_backend_final_response_seconds_bucket{le=\"0.0005\",backend=\"0\",addr=\"127.0.0.1:5070\"} 1",
            "siplb_backend_final_response_seconds_bucket{le=\"0.0025\",backend=\"0\",addr=\"127.0.0.1:5070\"} 2",
            "siplb_backend_final_response_seconds_bucket{le=\"30.0\",backend=\"0\",addr=\"127.0.0.1:5070\"} 2",
            "siplb_backend_final_response_seconds_bucket{le=\"+Inf\",backend=\"0\",addr=\"127.0.0.1:5070\"} 3",
            "siplb_backend_first_response_seconds_count{backend=\"1\",addr=\"127.0.0.1:5071\"} 0",
            "siplb_backend_final_response_seconds_bucket{le=\"+Inf\",backend=\"1\",addr=\"127.0.0.1:5071\"} 0",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // A backend that never reported a load has no load sample.
        assert!(!text.contains("siplb_backend_load{backend=\"1\""), "{text}");
        // Every Stats pair is there.
        for (name, _) in Stats::default().pairs() {
            assert!(text.contains(&format!("siplb_{name}")), "{name}");
        }
    }

    #[test]
    fn workers_add_up_and_show_one_by_one() {
        let one = snapshot();
        let mut two = snapshot();
        two.stats.frontends_accepted = 5;
        two.proxy_rejected = [1, 2, 0];
        two.backends[0].load = Some(50);
        let merged = Snapshot::merge(&[one.clone(), two.clone()]);
        assert_eq!(merged.stats.new_calls, 14);
        assert_eq!(merged.figures.requests[0][0], 10);
        assert_eq!(merged.figures.backends[0].final_response.count, 6);
        assert_eq!(merged.stats.frontends_accepted, 5);
        assert_eq!(merged.stats.backends_up, 1);
        assert_eq!(merged.table_capacity, 2000);
        assert_eq!(merged.backends[0].assigned, 6);
        assert_eq!(merged.backends[0].load, Some(50));
        assert!(merged.ready());
        // A backend down on one worker is down for the process.
        two.backends[0].up = false;
        let merged = Snapshot::merge(&[one.clone(), two.clone()]);
        assert_eq!(merged.stats.backends_up, 0);
        assert!(!merged.ready());

        let shared: Slots = Arc::new([Mutex::new(one), Mutex::new(two)]);
        let text = render(&registry(shared));
        for line in [
            "siplb_new_calls_total 14",
            "siplb_workers 2",
            "siplb_worker_frontends_accepted_total{worker=\"0\"} 0",
            "siplb_worker_frontends_accepted_total{worker=\"1\"} 5",
            "siplb_worker_new_calls_total{worker=\"1\"} 7",
            "siplb_proxy_header_rejected_total{cause=\"invalid\"} 1",
            "siplb_proxy_header_rejected_total{cause=\"timeout\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn serves_metrics_and_health_over_http() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), snapshot(), 1).unwrap();
        let addr = server.addr();
        let metrics = get(addr, "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("application/openmetrics-text"),
            "{metrics}"
        );
        assert!(metrics.contains("siplb_new_calls_total 7"), "{metrics}");
        let health = get(addr, "/health");
        assert!(health.starts_with("HTTP/1.1 200"), "{health}");
        assert!(health.ends_with("ready\n"), "{health}");
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));

        lock(&server.shared[0]).backends[0].up = false;
        let health = get(addr, "/health");
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        drop(server);
    }
}
