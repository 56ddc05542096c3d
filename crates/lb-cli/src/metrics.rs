//! `--metrics ADDR`: the core's counters in the Prometheus / OpenMetrics text format at
//! `/metrics`, and readiness at `/health`, served by `tiny_http` on a thread of its own.
//!
//! The balancer is never shared: the driver copies `lb.stats()` and `lb.backend_status()` into
//! a [`Snapshot`] behind a mutex (see [`crate::Ops`]), at most every [`PUBLISH_EVERY`], and the
//! HTTP thread renders whatever snapshot is there. A scrape therefore sees figures at most
//! [`PUBLISH_EVERY`] old and never slows the loop down beyond one short lock.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use lb_core::{BackendStatus, Kind, Stats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::RunError;

/// Longest a published snapshot lags behind the balancer while it is busy.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What the metrics thread serves: a copy of the balancer's figures at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The core's counters.
    pub stats: Stats,
    /// Every backend, in id order.
    pub backends: Vec<BackendStatus>,
    /// The new-call table's capacity (fixed until a restart).
    pub table_capacity: u64,
    /// The TLS handshake counters, when TLS listeners exist (read live, not copied).
    pub tls: Option<Arc<crate::tls::TlsCounters>>,
}

impl Snapshot {
    /// Ready for traffic: at least one backend is up.
    pub fn ready(&self) -> bool {
        self.backends.iter().any(|b| b.up)
    }

    /// The exposition text of this snapshot, as `/metrics` serves it.
    pub fn render(&self) -> String {
        render(&registry(Arc::new(Mutex::new(self.clone()))))
    }
}

/// The running HTTP server; stops (and frees its port) when dropped.
pub(crate) struct MetricsServer {
    server: Arc<tiny_http::Server>,
    pub(crate) shared: Arc<Mutex<Snapshot>>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `addr` now, so a busy port fails the start-up, and serves from a new thread.
    pub(crate) fn start(addr: SocketAddr, first: Snapshot) -> Result<MetricsServer, RunError> {
        let server = tiny_http::Server::http(addr).map_err(|e| RunError::Metrics {
            addr,
            reason: e.to_string(),
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let shared = Arc::new(Mutex::new(first));
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

fn serve(server: &tiny_http::Server, shared: Arc<Mutex<Snapshot>>) {
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
                if lock(&shared).ready() {
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

fn registry(shared: Arc<Mutex<Snapshot>>) -> Registry {
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
struct SnapshotCollector(Arc<Mutex<Snapshot>>);

impl Collector for SnapshotCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = lock(&self.0).clone();
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
        let fields: [(&str, &str, Field); 7] = [
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
        Ok(())
    }
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
        backends[1].weight = 2;
        let stats = Stats {
            new_calls: 7,
            bytes_in: 1234,
            backends_up: 1,
            table_len: 3,
            ..Stats::default()
        };
        Snapshot {
            stats,
            backends,
            table_capacity: 1000,
            tls: None,
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
            "siplb_backend_assigned{backend=\"0\",addr=\"127.0.0.1:5070\"} 3",
            "siplb_backend_weight{backend=\"1\",addr=\"127.0.0.1:5071\"} 2",
            "siplb_backend_load{backend=\"0\",addr=\"127.0.0.1:5070\"} 42",
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
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), snapshot()).unwrap();
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

        lock(&server.shared).backends[0].up = false;
        let health = get(addr, "/health");
        assert!(health.starts_with("HTTP/1.1 503"), "{health}");
        drop(server);
    }
}
