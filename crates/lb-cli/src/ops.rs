//! What a driver does for the operator besides moving bytes: log lines (the noisy ones rate
//! limited), the metrics snapshot, and SIGHUP reloads. One [`Ops`] per driver, owned next to
//! the balancer; it never holds the balancer, it is shown it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::{BackendId, Balancer, ConnId, Event, ValidConfig};

use crate::heap_trim::HeapTrim;
use crate::metrics::{self, MetricsServer, Snapshot, PUBLISH_EVERY};
use crate::{RunError, Settings};
use lb_runtime::ProxyReject;

/// Lines of one [`Noise`] kind logged per [`NOISE_WINDOW`]; the rest are counted and summed up
/// in one line when the window ends.
pub const NOISE_LINES_MAX: u32 = 10;

/// The rate limiter's window.
pub const NOISE_WINDOW: Duration = Duration::from_secs(1);

/// Kinds of log lines a peer can provoke at will, each rate limited on its own so that a flood
/// of one kind does not hide the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noise {
    /// Malformed messages and lost framing.
    BadInput,
    /// Messages dropped for lack of any possible response.
    Dropped,
    /// Connections refused at the frontend limit.
    Refused,
    /// Connections closed by the idle or partial-message timeout.
    TimedOut,
    /// Connections closed at the output cap (a reader too slow).
    OutputCap,
    /// Backends answering new calls with 503.
    Overload,
    /// `accept` failures (typically out of file descriptors).
    AcceptFailed,
    /// Connections without a valid PROXY header (`--proxy-protocol`).
    ProxyHeader,
}

const NOISE_KINDS: usize = 8;

impl Noise {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            Noise::BadInput => "bad input",
            Noise::Dropped => "dropped message",
            Noise::Refused => "refused connection",
            Noise::TimedOut => "timed-out connection",
            Noise::OutputCap => "output cap",
            Noise::Overload => "backend overload",
            Noise::AcceptFailed => "accept failure",
            Noise::ProxyHeader => "PROXY header",
        }
    }

    const ALL: [Noise; NOISE_KINDS] = [
        Noise::BadInput,
        Noise::Dropped,
        Noise::Refused,
        Noise::TimedOut,
        Noise::OutputCap,
        Noise::Overload,
        Noise::AcceptFailed,
        Noise::ProxyHeader,
    ];
}

/// A fixed window per kind: the first [`NOISE_LINES_MAX`] lines of a window pass, the others
/// are counted; when the window has passed, one line says how many were suppressed.
#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: [Window; NOISE_KINDS],
}

#[derive(Clone, Copy, Debug, Default)]
struct Window {
    start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

impl RateLimiter {
    /// Whether a line of `kind` may be logged at `now`; if not, it is counted for the summary.
    pub fn allow(&mut self, kind: Noise, now: Instant) -> bool {
        self.flush_one(kind, now);
        let w = &mut self.windows[kind.index()];
        let start = *w.start.get_or_insert(now);
        if now >= start + NOISE_WINDOW {
            *w = Window {
                start: Some(now),
                ..Window::default()
            };
        }
        if w.logged < NOISE_LINES_MAX {
            w.logged += 1;
            true
        } else {
            w.suppressed += 1;
            false
        }
    }

    /// Logs the summary of every window that has ended with lines suppressed.
    pub fn flush(&mut self, now: Instant) {
        for kind in Noise::ALL {
            self.flush_one(kind, now);
        }
    }

    /// When the next summary is due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.windows
            .iter()
            .filter(|w| w.suppressed > 0)
            .filter_map(|w| w.start.map(|s| s + NOISE_WINDOW))
            .min()
    }

    /// Lines of `kind` suppressed in the current window so far.
    pub fn suppressed(&self, kind: Noise) -> u64 {
        self.windows[kind.index()].suppressed
    }

    fn flush_one(&mut self, kind: Noise, now: Instant) {
        let w = &mut self.windows[kind.index()];
        let Some(start) = w.start else { return };
        if w.suppressed > 0 && now >= start + NOISE_WINDOW {
            tracing::warn!(
                kind = kind.name(),
                suppressed = w.suppressed,
                "suppressed {} {} log lines in the last {:?}",
                w.suppressed,
                kind.name(),
                now.saturating_duration_since(start),
            );
            *w = Window::default();
        }
    }
}

/// The driver's operator side: logging, metrics, reload.
#[derive(Debug)]
pub struct Ops {
    settings: Settings,
    limiter: RateLimiter,
    /// The process's metrics server and this worker's slot in it.
    metrics: Option<(Arc<MetricsServer>, usize)>,
    /// `--admin`: the process's API server and the hub of its workers (`admin_hub`), and
    /// this worker's index there.
    admin: Option<(Arc<AdminShared>, usize)>,
    /// Made by [`Ops::new`] (a process of one balancer): [`Ops::start_admin`] starts the API.
    admin_standalone: bool,
    /// The TLS configuration of the TLS listeners, reloaded with the settings.
    tls: Option<Arc<lb_runtime::tls::Tls>>,
    /// The client configuration toward TLS backends (read at start).
    backend_tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections closed before they reached the core, by [`ProxyReject`] cause.
    proxy_rejected: [u64; 3],
    /// Messages to backends dropped at the output cap ([`lb_runtime::backpressure`]).
    output_cap_drops: u64,
    /// When the snapshot was last published.
    published: Option<Instant>,
    /// A loop turn happened since the last publish: publish when [`PUBLISH_EVERY`] has passed.
    publish_pending: bool,
    /// Gives a burst's freed heap back once the new-call table shrinks (`heap_trim`).
    heap_trim: HeapTrim,
}

impl Ops {
    /// The operator side of a process with one balancer: starts the metrics server if
    /// `--metrics` was given (binding its address now). The binaries, which may run several
    /// workers, get theirs from [`crate::run_workers`] instead.
    pub fn new(settings: &Settings) -> Result<Ops, RunError> {
        let metrics = start_metrics(settings, 1)?;
        let mut ops = Ops::for_worker(settings, metrics.map(|m| (m, 0)), None);
        ops.admin_standalone = true;
        Ok(ops)
    }

    /// Worker `slot` of a process whose metrics server (if any) is `metrics` and whose admin
    /// API (if any) is `admin`.
    pub(crate) fn for_worker(
        settings: &Settings,
        metrics: Option<(Arc<MetricsServer>, usize)>,
        admin: Option<(Arc<AdminShared>, usize)>,
    ) -> Ops {
        // Checked when the settings were parsed; a file that broke since is logged and its
        // listeners refuse TLS (the settings' own check fails the start in the common case).
        let tls = settings
            .tls
            .as_ref()
            .and_then(|t| match lb_runtime::tls::Tls::load(t) {
                Ok(tls) => Some(Arc::new(tls)),
                Err(e) => {
                    tracing::error!("TLS certificates: {e}");
                    None
                }
            });
        let backend_tls = settings.backend_tls.as_ref().and_then(|t| {
            lb_runtime::tls::backend_client_config(t)
                .inspect_err(|e| tracing::error!("TLS toward backends: {e}"))
                .ok()
        });
        Ops {
            admin,
            admin_standalone: false,
            tls,
            backend_tls,
            settings: settings.clone(),
            limiter: RateLimiter::default(),
            metrics,
            proxy_rejected: [0; 3],
            output_cap_drops: 0,
            published: None,
            publish_pending: false,
            heap_trim: HeapTrim::default(),
        }
    }

    /// The settings in force (those of the last successful reload).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A configuration the admin API fed to the core: what [`Ops::settings`] shows until the
    /// next reload.
    pub(crate) fn set_running_config(&mut self, core: ValidConfig) {
        self.settings.core = core;
    }

    /// Where metrics are served, if they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(server, _)| server.addr())
    }

    /// Call once per loop turn, after the inputs of the turn: publishes the metrics snapshot
    /// if the last one is [`PUBLISH_EVERY`] old (else later, see [`Ops::poll_timeout`]) and
    /// logs due rate-limit summaries, and trims the heap once the new-call table has shrunk.
    pub fn turn(&mut self, lb: &Balancer, now: Instant) {
        self.limiter.flush(now);
        self.heap_trim.turn(lb.table_bytes(), now);
        let Some((server, slot)) = &self.metrics else {
            return;
        };
        if self.published.is_some_and(|t| now < t + PUBLISH_EVERY) {
            self.publish_pending = true;
            return;
        }
        let Some(shared) = server.shared.get(*slot) else {
            return;
        };
        let mut snapshot = metrics::lock(shared);
        snapshot.stats.clone_from(lb.stats());
        snapshot.figures.clone_from(lb.figures());
        snapshot.backends.clear();
        snapshot.backends.extend(lb.backend_status());
        snapshot.proxy_rejected = self.proxy_rejected;
        snapshot.output_cap_drops = self.output_cap_drops;
        drop(snapshot);
        self.published = Some(now);
        self.publish_pending = false;
    }

    /// When [`Ops::turn`] must run again even if nothing happens: a snapshot, a log summary
    /// or a heap trim is pending. Wait no longer than this.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let publish = self
            .published
            .filter(|_| self.publish_pending)
            .map(|t| t + PUBLISH_EVERY);
        [
            publish,
            self.limiter.next_deadline(),
            self.heap_trim.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Logs an [`Event`] of the core: backend state changes always, faults a peer can provoke
    /// rate limited per kind.
    pub fn event(&mut self, lb: &Balancer, event: &Event, now: Instant) {
        let addr = |b: BackendId| {
            lb.backends()
                .nth(b.index())
                .map_or_else(|| "?".to_string(), |(_, c)| c.addr.to_string())
        };
        match event {
            Event::BackendUp(b) => {
                tracing::info!(backend = %b, addr = %addr(*b), "backend up");
            }
            Event::BackendDown(b) => {
                tracing::warn!(backend = %b, addr = %addr(*b), "backend down");
            }
            Event::BackendDraining { backend, draining } => {
                tracing::info!(backend = %backend, addr = %addr(*backend), draining, "backend draining");
            }
            Event::Reloaded { added, removed } => {
                tracing::info!(added, removed, "configuration reloaded");
            }
            Event::FrontendRefused(conn) => {
                if self.limiter.allow(Noise::Refused, now) {
                    tracing::warn!(conn = %conn, "frontend connection refused: limits.frontends-max");
                }
            }
            Event::FramingLost { conn, fault } => {
                if self.limiter.allow(Noise::BadInput, now) {
                    tracing::warn!(conn = %conn, fault = fault.as_str(), "framing lost, closing");
                }
            }
            Event::Malformed { conn, fault } => {
                if self.limiter.allow(Noise::BadInput, now) {
                    tracing::warn!(conn = %conn, fault = fault.as_str(), "malformed message");
                }
            }
            Event::Dropped { conn, cause } => {
                if self.limiter.allow(Noise::Dropped, now) {
                    tracing::warn!(conn = %conn, cause = cause.as_str(), "message dropped");
                }
            }
            Event::BackendOverloaded { backend, hold } => {
                if self.limiter.allow(Noise::Overload, now) {
                    tracing::warn!(backend = %backend, addr = %addr(*backend), ?hold, "backend overloaded (503): no new calls");
                }
            }
            Event::TimedOut { conn, cause } => {
                if self.limiter.allow(Noise::TimedOut, now) {
                    tracing::info!(conn = %conn, cause = cause.as_str(), "connection timed out");
                }
            }
            Event::BackendQueueHeld { backend, held } => {
                if self.limiter.allow(Noise::Overload, now) {
                    if *held {
                        tracing::warn!(backend = %backend, addr = %addr(*backend), "backend queue over the high-water mark: no new calls, its calls stay");
                    } else {
                        tracing::info!(backend = %backend, addr = %addr(*backend), "backend queue below the low-water mark: takes new calls again");
                    }
                }
            }
        }
    }

    /// A connection exceeded the output cap and is closed (rate limited).
    pub fn output_overflow(&mut self, conn: ConnId, cap: usize, now: Instant) {
        if self.limiter.allow(Noise::OutputCap, now) {
            tracing::warn!(conn = %conn, cap, "output cap exceeded, closing");
        }
    }

    /// A message to a backend was dropped because its connection's queue is at the output cap
    /// (counted; logged rate limited). The connection and its calls stay.
    pub fn output_cap_drop(&mut self, conn: ConnId, cap: usize, now: Instant) {
        self.output_cap_drops += 1;
        if self.limiter.allow(Noise::OutputCap, now) {
            tracing::warn!(conn = %conn, cap, "output cap reached toward a backend, message dropped");
        }
    }

    /// Messages to backends dropped at the output cap so far.
    pub fn output_cap_drops(&self) -> u64 {
        self.output_cap_drops
    }

    /// `accept` failed (rate limited).
    pub fn accept_failed(&mut self, error: &std::io::Error, now: Instant) {
        if self.limiter.allow(Noise::AcceptFailed, now) {
            tracing::warn!(error = %error, "accept failed");
        }
    }

    /// A connection was closed before it reached the core (`--proxy-protocol`): counted for
    /// metrics, logged (rate limited).
    pub fn proxy_rejected(&mut self, peer: SocketAddr, cause: ProxyReject, now: Instant) {
        self.proxy_rejected[cause.index()] += 1;
        self.publish_pending = true;
        if self.limiter.allow(Noise::ProxyHeader, now) {
            tracing::info!(%peer, cause = cause.name(), "no valid PROXY header, closing");
        }
    }

    /// Connections closed for want of a valid PROXY header so far, by cause.
    pub fn proxy_rejections(&self) -> [u64; 3] {
        self.proxy_rejected
    }

    /// SIGHUP: rereads the config file (and the key file) and merges them with the original
    /// flags. On success returns the configuration to feed as `Input::Reload`; on failure logs
    /// one warning naming the key and returns `None`: the running configuration stays.
    /// Without a config file or key file there is nothing to reread, which is logged.
    pub fn reload(&mut self) -> Option<ValidConfig> {
        reload(&self.settings).map(|new| self.adopt(new))
    }

    /// [`Ops::reload`], for `why` (`SIGHUP`, the admin API); `Err` says why nothing changes.
    pub(crate) fn try_reload(&mut self, why: &str) -> Result<ValidConfig, String> {
        match reload(&self.settings) {
            Some(new) => Ok(self.adopt(new)),
            None => Err(format!(
                "{why}: the configuration was refused or there is nothing to reread (see the log)"
            )),
        }
    }

    /// Takes settings reread elsewhere (by the process, once for all its workers, with
    /// [`reload`]) as the ones in force; returns the configuration to feed as
    /// `Input::Reload`. The TLS certificates are reread too: new handshakes use the new ones,
    /// established connections keep theirs, and a bad file keeps the running ones.
    pub fn adopt(&mut self, mut settings: Settings) -> ValidConfig {
        if let (Some(tls), Some(wanted)) = (&self.tls, &settings.tls) {
            match tls.reload(wanted) {
                Ok(()) => tracing::info!(
                    certs = wanted.certs.len(),
                    "reload: TLS certificates reread"
                ),
                Err(e) => {
                    tracing::warn!(
                        "reload: TLS certificates refused, keeping the running ones: {e}"
                    )
                }
            }
        }
        // The admin token stays the one read at start, like the address.
        settings.admin = std::mem::take(&mut self.settings.admin);
        let core = settings.core.clone();
        self.settings = settings;
        core
    }

    /// The TLS configuration for new handshakes on TLS listeners, if there are any.
    pub fn tls(&self) -> Option<&Arc<lb_runtime::tls::Tls>> {
        self.tls.as_ref()
    }

    /// The TLS client configuration and server name for connecting to `backend`, when it is
    /// a TLS backend.
    pub fn backend_tls(&self, lb: &Balancer, backend: BackendId) -> Option<lb_runtime::BackendTls> {
        let (_, config) = lb.backends().nth(backend.index())?;
        let name = config.tls.as_deref()?;
        let Some(name) = lb_runtime::tls::backend_server_name(name) else {
            tracing::warn!(backend = %backend, name, "not a name a certificate can be checked for");
            return None;
        };
        Some((self.backend_tls.clone()?, name))
    }

    /// Joins the admin API if `--admin` was given and returns the driver's end of its command
    /// channel; `wake` is called from the API's thread after each command is queued (a
    /// readiness loop's waker; an async loop awaits [`crate::admin::AdminQueue::next`] and
    /// needs none). Apply each command with [`Ops::handle_admin`]. One server serves the
    /// process (bound by [`crate::run_workers`] before the workers start, or here for a
    /// process of one balancer) and hands every request to every worker (`admin_hub`).
    pub fn start_admin(
        &mut self,
        wake: impl Fn() + Send + 'static,
    ) -> Result<crate::admin::AdminQueue, RunError> {
        if self.admin.is_none() && self.admin_standalone {
            self.admin = start_admin(&self.settings, 1)?.map(|a| (a, 0));
        }
        match &self.admin {
            Some((shared, index)) => Ok(shared.hub.register(*index, Box::new(wake))),
            None => Ok(crate::admin::AdminQueue::none()),
        }
    }

    /// Where the admin API is served, if it is.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|(shared, _)| shared.server.as_ref())
            .map(crate::admin::AdminServer::addr)
    }

    /// Backends by DNS name: this worker's view of them (`lb_runtime::named`).
    pub(crate) fn set_named(&mut self, named: Vec<lb_runtime::named::NamedBackend>) {
        self.settings.named = named;
    }
}

/// The admin API of a process (its server, with `--admin`) and the hub of its workers, which
/// the re-resolution of backend names uses too.
#[derive(Debug)]
pub(crate) struct AdminShared {
    server: Option<crate::admin::AdminServer>,
    pub(crate) hub: Arc<crate::admin_hub::AdminHub>,
}

/// Starts the admin API of a process with `workers` workers if `--admin` was given; the hub
/// exists either way when names are to be re-resolved.
pub(crate) fn start_admin(
    settings: &Settings,
    workers: usize,
) -> Result<Option<Arc<AdminShared>>, RunError> {
    if settings.admin.addr.is_none() && settings.named.is_empty() {
        return Ok(None);
    }
    let hub = crate::admin_hub::AdminHub::new(workers);
    let server = crate::admin::AdminServer::start(&settings.admin, Arc::clone(&hub))?;
    Ok(Some(Arc::new(AdminShared { server, hub })))
}

/// Starts the metrics server of a process with `workers` workers if `--metrics` was given.
pub(crate) fn start_metrics(
    settings: &Settings,
    workers: usize,
) -> Result<Option<Arc<MetricsServer>>, RunError> {
    let Some(addr) = settings.metrics else {
        return Ok(None);
    };
    let first = Snapshot {
        table_capacity: settings.core.config().limits.table_capacity as u64,
        tls: settings.tls.as_ref().map(|_| lb_runtime::tls::counters()),
        ..Snapshot::default()
    };
    Ok(Some(Arc::new(MetricsServer::start(addr, first, workers)?)))
}

/// SIGHUP: rereads the config file (and the key file) named by `current` and merges them with
/// the original flags; logs what a reload cannot change, applies a new log level, and returns
/// the new settings, or `None` (one warning naming the key) when they are refused. Done once
/// per process; every worker then adopts the result ([`Ops::adopt`]).
pub fn reload(current: &Settings) -> Option<Settings> {
    let file = current.config_file().map(|p| p.display().to_string());
    // TLS certificate files are always worth rereading.
    if file.is_none() && current.tag_key_generated && current.tls.is_none() {
        tracing::warn!("SIGHUP: no --config or --tag-key-file to reread; nothing changes");
        return None;
    }
    let file = file.unwrap_or_else(|| "(flags only)".to_string());
    match current.reload() {
        Ok(new) => {
            let old = current;
            if new.core.config().listeners != old.core.config().listeners {
                tracing::warn!(file, "reload: listen addresses change only at a restart");
            }
            if new.metrics != old.metrics {
                tracing::warn!(file, "reload: metrics address changes only at a restart");
            }
            if new.log_level != old.log_level {
                match crate::set_log_level(&new.log_level) {
                    Ok(true) => {
                        tracing::info!(file, level = %new.log_level, "reload: log level")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(file, error = %e, "reload: log level kept"),
                }
            }
            if new.batch_window != old.batch_window {
                tracing::warn!(file, "reload: batch-window changes only at a restart");
            }
            if new.admin.addr != old.admin.addr || new.log_format != old.log_format {
                tracing::warn!(
                    file,
                    "reload: admin, admin-token-file and log-format change only at a restart"
                );
            }
            if new.workers != old.workers || new.proxy_protocol != old.proxy_protocol {
                tracing::warn!(
                    file,
                    "reload: workers and proxy-protocol change only at a restart"
                );
            }
            tracing::info!(
                file,
                backends = new.core.config().backends.len(),
                "SIGHUP: configuration reread and valid, applying"
            );
            Some(new)
        }
        Err(e) => {
            // A certificate file that does not load refuses the whole reread (the settings are
            // checked as one); say so in the words an operator watching TLS looks for.
            let message = e.to_string();
            if message.starts_with("tls") {
                tracing::warn!(
                    file,
                    "SIGHUP: TLS certificates refused, keeping the running ones: {e}"
                );
            }
            tracing::warn!(
                file,
                "SIGHUP: configuration refused, keeping the running one: {e}"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_passes_a_burst_then_counts_until_the_window_ends() {
        let t0 = Instant::now();
        let mut r = RateLimiter::default();
        let passed = (0..100).filter(|_| r.allow(Noise::BadInput, t0)).count();
        assert_eq!(passed, NOISE_LINES_MAX as usize);
        assert_eq!(
            r.suppressed(Noise::BadInput),
            100 - u64::from(NOISE_LINES_MAX)
        );
        // Other kinds have their own budget.
        assert!(r.allow(Noise::Dropped, t0));
        assert_eq!(r.next_deadline(), Some(t0 + NOISE_WINDOW));
        // Still inside the window: still suppressed.
        assert!(!r.allow(Noise::BadInput, t0 + NOISE_WINDOW / 2));
        // The window ends: the summary is flushed and a new window passes lines again.
        r.flush(t0 + NOISE_WINDOW);
        assert_eq!(r.suppressed(Noise::BadInput), 0);
        assert_eq!(r.next_deadline(), None);
        assert!(r.allow(Noise::BadInput, t0 + NOISE_WINDOW));
    }

    #[test]
    fn a_quiet_kind_is_never_suppressed() {
        let t0 = Instant::now();
        let mut r = RateLimiter::default();
        for i in 0..50u32 {
            assert!(r.allow(Noise::Refused, t0 + NOISE_WINDOW * i));
        }
        assert_eq!(r.next_deadline(), None);
    }
}
