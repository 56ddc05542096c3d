//! What an operator configures, validated once into a [`ValidConfig`] the core trusts.
//!
//! Parsing files and flags is the binaries' job (crate `lb-cli`); this module holds plain values
//! and the rules that make them consistent.

use std::net::SocketAddr;
use std::time::Duration;

use crate::failover;
use crate::ids::BackendId;

/// RFC 3261 §17.1.1.1: the round-trip time estimate every SIP timer is a multiple of.
pub const T1: Duration = Duration::from_millis(500);

/// RFC 3261 §17.1.1.2 Timer B / §17.1.2.2 Timer F: how long a client transaction retransmits
/// (64×T1 = 32 s). The new-call table's default window.
pub const WINDOW_DEFAULT: Duration = Duration::from_secs(32);

/// `stall_timeout` when not set: 64×T1, RFC 3261's transaction timeout (Timers B, F, H). A
/// message queued longer than that belongs to a transaction its sender has already given up,
/// so a peer that has read nothing for it is not coming back for the queue.
pub const STALL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(32);

/// `connect_timeout` when not set: long enough for a loopback or LAN connect and TLS handshake
/// under load, short enough that calls waiting on a dead backend's or frontend's address are
/// failed over or answered 503 within a few seconds.
pub const CONNECT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);

/// `close_linger` when not set: a peer that has read nothing for five seconds after the
/// balancer decided to close it is not coming back for the rest of its queue.
pub const CLOSE_LINGER_DEFAULT: Duration = Duration::from_secs(5);

/// RFC 3261 §16.6 Timer C: a proxy gives up on an INVITE that rang this long (> 3 min).
pub const TIMER_C: Duration = Duration::from_secs(180);

/// Longest timeout or hold accepted: a year, so `now + duration` never overflows.
const DURATION_MAX: Duration = Duration::from_secs(365 * 24 * 3600);

/// Longest new-call table entry lifetime (window + ringing cap) accepted: 20 days.
const TABLE_LIFETIME_MAX: Duration = Duration::from_secs(20 * 24 * 3600);

/// Backends beyond this many are refused by validation; a [`BackendId`] is 16 bits.
pub const BACKENDS_MAX: usize = 1024;

/// How a backend connection frames SIP messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendMode {
    /// Unmodified SIP over TCP: the return path is derived from Via / Route.
    #[default]
    Plain,
    /// Each message wrapped in the binary envelope of `docs/envelope.md`.
    Envelope,
}

/// How a new call picks its backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// Each backend in turn.
    #[default]
    RoundRobin,
    /// Smooth weighted round robin: backend `b` gets `weight(b) / Σ weight` of the calls.
    Weighted,
    /// The backend reporting the least load (envelope mode), else the fewest calls assigned
    /// within the window.
    LeastLoaded,
}

/// One backend as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Where the balancer connects.
    pub addr: SocketAddr,
    /// Share of new calls under [`Algorithm::Weighted`]; 0 takes no new calls (under every
    /// algorithm).
    pub weight: u32,
    /// Which backends new calls go to first, lowest first, as SRV priorities order targets
    /// (RFC 2782): only those of the lowest priority among the backends that take new calls get
    /// them, so one of a higher priority is a standby until every backend of each lower
    /// priority is down, draining, held or of weight 0. Calls already set up keep their backend
    /// (or its backup) whatever the priorities. 0 for a backend given by address; a backend
    /// given by an SRV name has the rank of its record's priority in the answer
    /// (`lb_runtime::named`).
    pub priority: u16,
    /// Wire framing.
    pub mode: BackendMode,
    /// Where its tagged traffic goes while it is down; `None` picks one by rendezvous hashing.
    pub backup: Option<SocketAddr>,
    /// Takes no new calls, but tagged and table traffic still flows to it.
    pub draining: bool,
    /// Reach it over TLS, verifying its certificate for this name (a DNS name or an IP
    /// literal); `None`: plain TCP. The driver does the TLS; the core only carries the setting.
    pub tls: Option<String>,
}

impl BackendConfig {
    /// A plain-mode backend of weight 1 with no fixed backup.
    pub fn plain(addr: SocketAddr) -> BackendConfig {
        BackendConfig {
            addr,
            weight: 1,
            priority: 0,
            mode: BackendMode::Plain,
            backup: None,
            draining: false,
            tls: None,
        }
    }
}

/// One tag key. The first key of [`Config::tag_keys`] signs new tags; all of them verify, so a
/// key can be rotated without dropping established calls.
#[derive(Clone, PartialEq, Eq)]
pub struct TagKey {
    /// Carried inside every tag so the verifier picks the right secret.
    pub id: u8,
    /// The HMAC secret; at least 16 bytes.
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TagKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TagKey {{ id: {}, secret: <{} bytes> }}",
            self.id,
            self.secret.len()
        )
    }
}

/// Bounds on everything a peer can make the balancer hold. Every field has a safe default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest SIP message (headers and body) accepted on a stream.
    pub message_bytes_max: usize,
    /// Largest number of header lines in one message.
    pub headers_max: usize,
    /// Bytes a connection may hold waiting for the rest of a message.
    pub buffered_bytes_max: usize,
    /// Frontend connections open at once; more are closed at accept.
    pub frontends_max: usize,
    /// New-call table entries; when full, new calls get 503.
    pub table_capacity: usize,
    /// Connections the balancer may have open or opening toward frontends at once (dial-out);
    /// a request that needs one more gets 503.
    pub dial_outs_max: usize,
    /// Messages queued for one frontend connection while the balancer dials it; more get 503.
    pub dial_queue_max: usize,
    /// Once the new-call table is half full, a frontend connection holding this share of its
    /// capacity (in percent, at least [`TABLE_SHARE_MIN`] entries) gets 503 for new calls, so
    /// one flooding connection cannot take the room of every other (docs/design.md, "Fair
    /// shares"). 100 turns the share off. Follows a reload.
    pub table_share_percent: u32,
    /// The same rule per source address (an IPv4 address, an IPv6 /64; the PROXY-protocol
    /// source where there is one), counting the entries of all its connections, closed ones
    /// included until their entries expire: a flooder cannot escape its share by opening new
    /// connections. 100 turns it off. Follows a reload.
    pub table_share_per_ip_percent: u32,
    /// Frontend connections one source address may hold open at once; more are refused at
    /// accept. Counted by each worker's core on its own (docs/operations.md, "Fair shares").
    pub frontends_per_ip_max: usize,
    /// This share of `frontends_max` (in percent, rounded down) goes only to source addresses
    /// with no connection open, so new peers find room when the others are all busy.
    pub frontends_reserve_percent: u32,
    /// At the frontend limit, a connection that never sent a SIP message, or sent none for this
    /// long, is closed to make room for the new one.
    pub frontend_evict_idle: Duration,
}

/// The fewest new-call table entries a connection's share holds, however small the table: a
/// proxy must be able to set up a few calls at once.
pub const TABLE_SHARE_MIN: usize = 32;

impl Limits {
    /// The entries one frontend connection may hold once the table is half full:
    /// `table_share_percent` of the capacity, at least [`TABLE_SHARE_MIN`].
    pub fn table_share(&self) -> usize {
        let percent = self.table_share_percent as usize;
        // capacity × percent / 100, rounded down, without the product overflowing.
        let share = self.table_capacity / 100 * percent + self.table_capacity % 100 * percent / 100;
        share.max(TABLE_SHARE_MIN)
    }

    /// The frontend slots kept for source addresses with no connection open:
    /// `frontends_reserve_percent` of `frontends_max`, rounded down.
    pub fn frontends_reserve(&self) -> usize {
        let percent = self.frontends_reserve_percent as usize;
        self.frontends_max / 100 * percent + self.frontends_max % 100 * percent / 100
    }

    /// The entries one source address may hold once the table is half full:
    /// `table_share_per_ip_percent` of the capacity, at least [`TABLE_SHARE_MIN`].
    pub fn table_share_per_ip(&self) -> usize {
        let percent = self.table_share_per_ip_percent as usize;
        let share = self.table_capacity / 100 * percent + self.table_capacity % 100 * percent / 100;
        share.max(TABLE_SHARE_MIN)
    }
}

/// Passive health (docs/design.md, "Passive health"): INVITEs a backend leaves without any
/// response take it out of rotation faster than probes, as Envoy's outlier detection does with
/// consecutive gateway failures. Judged from the new-call table alone, no state per call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassiveHealth {
    /// An INVITE with no response from its backend, provisional or final, for this long is
    /// unanswered. Zero turns passive health off. Capped just below `window` (the table judges
    /// an INVITE while its entry lives).
    pub unanswered_timeout: Duration,
    /// Consecutive unanswered INVITEs that take a backend out; any response to an INVITE
    /// starts the count again.
    pub unanswered_to_down: u32,
    /// How long a backend taken out gets no traffic; doubles for each time it is taken out
    /// again without having answered an INVITE in between, up to `reconnect_max` × 30.
    pub hold: Duration,
}

impl Default for PassiveHealth {
    fn default() -> PassiveHealth {
        PassiveHealth {
            // A UAS sends 100 Trying within 200 ms (RFC 3261 §17.2.1); ten times that, so a
            // busy backend is not mistaken for a dead one.
            unanswered_timeout: Duration::from_secs(2),
            // Three in a row: one lost INVITE is no pattern, and at a few calls per second a
            // stalled backend is out in about `unanswered_timeout` plus a second.
            unanswered_to_down: 3,
            // Envoy's base ejection time is 30 s; a third of that, since a backend that
            // answers again is wanted back soon and a still-stalled one is held twice as long.
            hold: Duration::from_secs(10),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            message_bytes_max: 64 * 1024,
            headers_max: 128,
            buffered_bytes_max: 256 * 1024,
            frontends_max: 10_000,
            table_capacity: 1_000_000,
            // Dial-out serves callee hang-ups and calls placed by backends toward peers that
            // dropped their connection: a small share of the traffic, so a few hundred at once
            // is plenty, and a backend that names unreachable hops cannot take every socket.
            dial_outs_max: 256,
            // A dial takes one round trip; a hang-up burst queues a few messages meanwhile.
            dial_queue_max: 32,
            // About an eighth: eight proxies at their share fill the contended half.
            table_share_percent: 12,
            // A quarter: a host may run two connections at their share, and four hosts at
            // theirs fill the contended half.
            table_share_per_ip_percent: 25,
            // A tenth of the default limit: ten hosts are needed to fill it, and a proxy host
            // with many TCP workers still fits.
            frontends_per_ip_max: 1_000,
            // A hundred of the default limit's slots for peers not yet connected.
            frontends_reserve_percent: 1,
            // Longer than a keep-alive interval (RFC 5626 suggests 95-120 s for TCP with
            // CRLF pings, which a peer sends without SIP messages) is not the test: a SIP
            // message is. A proxy with calls sends one within a minute.
            frontend_evict_idle: Duration::from_secs(60),
        }
    }
}

/// The checks an initial request from a frontend (no To tag) must pass before it creates any
/// state (docs/design.md, "Sanity at the edge"): a From tag (RFC 3261 §8.1.1.3) and bounded
/// lengths. A request that fails gets `400` naming the fault and goes nowhere. Messages from
/// backends and in-dialog requests are not checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SanityLimits {
    /// Run the checks at all.
    pub enabled: bool,
    /// Longest host in the top Via's sent-by, the Request-URI, From, To and the top Route:
    /// 255, the longest DNS name (RFC 1035 §2.3.4).
    pub host_bytes_max: usize,
    /// Longest Request-URI, From, To or top Route URI.
    pub uri_bytes_max: usize,
    /// Longest header field value (all of a folded field).
    pub field_bytes_max: usize,
}

impl Default for SanityLimits {
    fn default() -> SanityLimits {
        SanityLimits {
            enabled: true,
            host_bytes_max: 255,
            // Real URIs are under 200 bytes; RFC 4475's long ones under 400 (longreq.dat).
            uri_bytes_max: 1024,
            // The longest real values (an Identity header, RFC 8224; digest credentials) are
            // under 1 KiB; RFC 4475's longreq.dat's longest is 591 bytes.
            field_bytes_max: 2048,
        }
    }
}

/// Health probes: SIP OPTIONS sent to each backend on its own connection (RFC 3261 §11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    /// Time between probes of one backend.
    pub interval: Duration,
    /// A probe unanswered this long counts as a failure.
    pub timeout: Duration,
    /// Consecutive failures that mark an up backend down.
    pub failures_to_down: u32,
    /// Consecutive successes that mark a probed-down backend up again.
    pub successes_to_up: u32,
}

impl Default for ProbeConfig {
    fn default() -> ProbeConfig {
        ProbeConfig {
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            failures_to_down: 3,
            successes_to_up: 2,
        }
    }
}

/// Everything the core needs, before validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Addresses frontends connect to; the driver binds them, the core numbers them.
    pub listeners: Vec<SocketAddr>,
    /// Addresses frontends connect to over TLS; numbered after `listeners`. The driver does
    /// the TLS; the core sees plaintext and names the transport in what it writes.
    pub tls_listeners: Vec<SocketAddr>,
    /// `host[:port]` of the balancer in what it writes toward TLS frontends; defaults to the
    /// first TLS listener.
    pub advertise_tls: Option<String>,
    /// `host[:port]` put in the balancer's Record-Route and Via; defaults to the first listener.
    pub advertise: Option<String>,
    /// `host[:port]` of the balancer as backends reach it, in the Record-Route entry they see;
    /// defaults to `advertise`. For backends on an internal network.
    pub advertise_backend: Option<String>,
    /// The backend farm.
    pub backends: Vec<BackendConfig>,
    /// How new calls pick a backend.
    pub algorithm: Algorithm,
    /// New-call table lifetime after creation or after an INVITE's final response.
    pub window: Duration,
    /// Longest an INVITE may ring and keep its table entry before the window starts anyway.
    pub ringing_max: Duration,
    /// Tag keys; the first signs.
    pub tag_keys: Vec<TagKey>,
    /// Also carry the tag in this extension header on initial requests (e.g. `X-LB-Tag`).
    pub tag_header: Option<String>,
    /// Value of `Retry-After` on the balancer's own 503s.
    pub retry_after: Duration,
    /// First reconnect delay after a backend connection is lost; doubles per failure.
    pub reconnect_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
    /// Resource bounds.
    pub limits: Limits,
    /// Checks of initial requests from frontends; follows a reload.
    pub sanity: SanityLimits,
    /// Health probes; `None` relies on the connection state alone (a backend that does not
    /// answer OPTIONS, such as a bare SIPp scenario, must not be probed).
    pub probe: Option<ProbeConfig>,
    /// A frontend connection that sends nothing for this long is closed. Proxies keep their
    /// connections alive with CRLF pings (RFC 5626 §4.4.1), which count as traffic.
    pub idle_timeout: Duration,
    /// A frontend connection holding part of a message for this long is closed (slowloris).
    pub partial_timeout: Duration,
    /// How long a backend that answered a new call with 503 without Retry-After gets no new
    /// calls; with Retry-After, its value, capped at `overload_hold_max`.
    pub overload_hold: Duration,
    /// Cap on a backend's Retry-After.
    pub overload_hold_max: Duration,
    /// A connection whose output queue stays above the driver's high-water mark this long
    /// without falling below the low-water mark is closed: its peer has stopped reading
    /// ([`crate::Input::OutputQueue`]). A burst the peer reads in time never closes one.
    pub stall_timeout: Duration,
    /// How long a connect or dial may take, from [`crate::Output::Connect`] or
    /// [`crate::Output::Dial`] until [`crate::Input::Connected`] (a TLS handshake included),
    /// before the core gives up on it with [`crate::Output::Abort`]: a backend then reconnects
    /// with backoff, a dial answers what waited for it with 503. Kept across a reload (its
    /// deadline queue is ordered by it); takes effect at a restart.
    pub connect_timeout: Duration,
    /// How long a connection the core asked to close ([`crate::Output::Close`]) may take to
    /// flush its queued output before the core asks for [`crate::Output::Abort`]: a peer that
    /// stops reading cannot hold the socket, and up to the driver's output cap of memory, for
    /// longer. Kept across a reload, as `connect_timeout` is.
    pub close_linger: Duration,
    /// Call-IDs whose every message is logged with its route decision (`--trace-call-id`).
    pub trace_call_ids: Vec<String>,
    /// A next hop that names no connection exactly nor by alias may take the only frontend
    /// connection from its IP (`hops`). Off when several balancers share the frontends (the
    /// workers of a process, instances behind one L4 balancer): a connection alone from its IP
    /// in one balancer is not alone among them, and the request must be dialled instead.
    pub hop_by_unique_ip: bool,
    /// Unanswered INVITEs take a backend out (passive health); follows a reload.
    pub passive: PassiveHealth,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listeners: Vec::new(),
            tls_listeners: Vec::new(),
            advertise_tls: None,
            advertise: None,
            advertise_backend: None,
            backends: Vec::new(),
            algorithm: Algorithm::RoundRobin,
            window: WINDOW_DEFAULT,
            ringing_max: TIMER_C,
            tag_keys: Vec::new(),
            tag_header: None,
            retry_after: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            limits: Limits::default(),
            sanity: SanityLimits::default(),
            probe: None,
            hop_by_unique_ip: true,
            idle_timeout: Duration::from_secs(15 * 60),
            partial_timeout: Duration::from_secs(10),
            overload_hold: Duration::from_secs(5),
            overload_hold_max: Duration::from_secs(300),
            stall_timeout: STALL_TIMEOUT_DEFAULT,
            connect_timeout: CONNECT_TIMEOUT_DEFAULT,
            close_linger: CLOSE_LINGER_DEFAULT,
            trace_call_ids: Vec::new(),
            passive: PassiveHealth::default(),
        }
    }
}

/// A configuration the core has checked; the only kind [`crate::Balancer::new`] takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidConfig {
    pub(crate) config: Config,
    /// `host[:port]` of the balancer as written into Record-Route and Via.
    pub(crate) advertise: String,
    /// `host[:port]` of the balancer in the Record-Route entry backends see.
    pub(crate) advertise_backend: String,
    /// `host[:port]` of the balancer toward TLS frontends.
    pub(crate) advertise_tls: String,
    /// Backup of each backend, resolved to ids.
    pub(crate) backups: Vec<Option<BackendId>>,
}

impl ValidConfig {
    /// The configuration as given.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The address written into Record-Route and Via.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }
}

/// Why a configuration was refused. Each names the key at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// No listen address.
    #[error("listen: at least one address is needed")]
    NoListener,
    /// No backend.
    #[error("backend: at least one backend is needed")]
    NoBackend,
    /// Too many backends or listeners for a 16-bit id.
    #[error("{key}: at most {max} entries")]
    TooMany {
        /// Config key.
        key: &'static str,
        /// The bound.
        max: usize,
    },
    /// The same backend address twice.
    #[error("backend: {0} is listed twice")]
    DuplicateBackend(SocketAddr),
    /// A backup address that is not a configured backend.
    #[error("backend {backend}: backup {backup} is not a configured backend")]
    UnknownBackup {
        /// The backend whose backup is wrong.
        backend: SocketAddr,
        /// The unknown address.
        backup: SocketAddr,
    },
    /// No tag key.
    #[error("tag-keys: at least one key is needed")]
    NoTagKey,
    /// A tag key too short to be a secret.
    #[error("tag-keys: key {0} is shorter than 16 bytes")]
    ShortTagKey(u8),
    /// Two tag keys with one id.
    #[error("tag-keys: key id {0} is used twice")]
    DuplicateTagKey(u8),
    /// A duration that must be positive.
    #[error("{0}: must be greater than zero")]
    ZeroDuration(&'static str),
    /// A limit that must be positive.
    #[error("limits.{0}: must be greater than zero")]
    ZeroLimit(&'static str),
    /// The advertise address is not `host[:port]`.
    #[error("advertise: {0:?} is not host[:port]")]
    BadAdvertise(String),
    /// The extension header name is not a SIP token.
    #[error("tag-header: {0:?} is not a header name")]
    BadTagHeader(String),
    /// A duration beyond what the balancer supports.
    #[error("{0}: too long")]
    TooLong(&'static str),
    /// The probe timeout is zero or longer than the probe interval.
    #[error("probe-timeout: must be greater than zero and at most probe-interval")]
    ProbeTimeout,
    /// The reconnect cap is below the first delay.
    #[error("reconnect-max: must not be below reconnect-min")]
    ReconnectRange,
    /// A percentage above 100.
    #[error("{0}: must be a percentage, 1 to 100")]
    Percent(&'static str),
    /// A value that must be positive (the key is given whole).
    #[error("{0}: must be greater than zero")]
    Zero(&'static str),
}

impl Config {
    /// Checks the configuration once; the core then relies on what was checked.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.listeners.is_empty() && self.tls_listeners.is_empty() {
            return Err(ConfigError::NoListener);
        }
        if self.listeners.len() + self.tls_listeners.len() > usize::from(u16::MAX) {
            return Err(ConfigError::TooMany {
                key: "listen",
                max: usize::from(u16::MAX),
            });
        }
        if self.backends.is_empty() {
            return Err(ConfigError::NoBackend);
        }
        if self.backends.len() > BACKENDS_MAX {
            return Err(ConfigError::TooMany {
                key: "backend",
                max: BACKENDS_MAX,
            });
        }
        for (i, b) in self.backends.iter().enumerate() {
            if self.backends[..i].iter().any(|o| o.addr == b.addr) {
                return Err(ConfigError::DuplicateBackend(b.addr));
            }
        }
        let mut backups = Vec::with_capacity(self.backends.len());
        for b in &self.backends {
            let addrs = self.backends.iter().map(|o| o.addr);
            let backup = failover::resolve_backup(addrs, b.backup).map_err(|backup| {
                ConfigError::UnknownBackup {
                    backend: b.addr,
                    backup,
                }
            })?;
            backups.push(backup);
        }
        if self.tag_keys.is_empty() {
            return Err(ConfigError::NoTagKey);
        }
        for (i, k) in self.tag_keys.iter().enumerate() {
            if k.secret.len() < 16 {
                return Err(ConfigError::ShortTagKey(k.id));
            }
            if self.tag_keys[..i].iter().any(|o| o.id == k.id) {
                return Err(ConfigError::DuplicateTagKey(k.id));
            }
        }
        for (name, d) in [
            ("window", self.window),
            ("ringing-max", self.ringing_max),
            ("retry-after", self.retry_after),
            ("reconnect-min", self.reconnect_min),
            ("idle-timeout", self.idle_timeout),
            ("partial-timeout", self.partial_timeout),
            ("overload-hold", self.overload_hold),
            ("stall-timeout", self.stall_timeout),
            ("connect-timeout", self.connect_timeout),
            ("close-linger", self.close_linger),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroDuration(name));
            }
        }
        for (name, d) in [
            ("idle-timeout", self.idle_timeout),
            ("partial-timeout", self.partial_timeout),
            ("overload-hold-max", self.overload_hold_max),
            ("reconnect-max", self.reconnect_max),
            ("stall-timeout", self.stall_timeout),
            ("connect-timeout", self.connect_timeout),
            ("close-linger", self.close_linger),
        ] {
            if d > DURATION_MAX {
                return Err(ConfigError::TooLong(name));
            }
        }
        // The new-call table keeps deadlines in compact 31-bit millisecond offsets.
        if self.window.saturating_add(self.ringing_max) > TABLE_LIFETIME_MAX {
            return Err(ConfigError::TooLong("window + ringing-max"));
        }
        if let Some(p) = &self.probe {
            if p.interval.is_zero() {
                return Err(ConfigError::ZeroDuration("probe-interval"));
            }
            if p.timeout.is_zero() || p.timeout > p.interval {
                return Err(ConfigError::ProbeTimeout);
            }
            if p.failures_to_down == 0 || p.successes_to_up == 0 {
                return Err(ConfigError::ZeroLimit("probe counts"));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(ConfigError::ReconnectRange);
        }
        let l = &self.limits;
        for (name, v) in [
            ("message-bytes-max", l.message_bytes_max),
            ("headers-max", l.headers_max),
            ("buffered-bytes-max", l.buffered_bytes_max),
            ("frontends-max", l.frontends_max),
            ("table-capacity", l.table_capacity),
            ("dial-outs-max", l.dial_outs_max),
            ("dial-queue-max", l.dial_queue_max),
            ("table-share-percent", l.table_share_percent as usize),
            (
                "table-share-per-ip-percent",
                l.table_share_per_ip_percent as usize,
            ),
            ("frontends-per-ip-max", l.frontends_per_ip_max),
            (
                "frontend-evict-idle",
                l.frontend_evict_idle.as_millis() as usize,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if l.table_share_percent > 100 {
            return Err(ConfigError::Percent("limits.table-share-percent"));
        }
        if l.table_share_per_ip_percent > 100 {
            return Err(ConfigError::Percent("limits.table-share-per-ip-percent"));
        }
        if l.frontends_reserve_percent > 100 {
            return Err(ConfigError::Percent("limits.frontends-reserve-percent"));
        }
        let p = &self.passive;
        if p.unanswered_to_down == 0 {
            return Err(ConfigError::Zero("unanswered-to-down"));
        }
        if p.hold.is_zero() {
            return Err(ConfigError::ZeroDuration("unanswered-hold"));
        }
        if p.hold > DURATION_MAX {
            return Err(ConfigError::TooLong("unanswered-hold"));
        }
        let s = &self.sanity;
        for (name, v) in [
            ("sanity.host-bytes-max", s.host_bytes_max),
            ("sanity.uri-bytes-max", s.uri_bytes_max),
            ("sanity.field-bytes-max", s.field_bytes_max),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        let advertise = match &self.advertise {
            Some(a) => {
                if !is_host_port(a) {
                    return Err(ConfigError::BadAdvertise(a.clone()));
                }
                a.clone()
            }
            None => match (self.listeners.first(), self.tls_listeners.first()) {
                (Some(first), _) | (None, Some(first)) => first.to_string(),
                (None, None) => return Err(ConfigError::NoListener),
            },
        };
        let advertise_tls = match (&self.advertise_tls, self.tls_listeners.first()) {
            (Some(a), _) if !is_host_port(a) => return Err(ConfigError::BadAdvertise(a.clone())),
            (Some(a), _) => a.clone(),
            (None, Some(first)) => first.to_string(),
            (None, None) => advertise.clone(),
        };
        let advertise_backend = match &self.advertise_backend {
            Some(a) if !is_host_port(a) => return Err(ConfigError::BadAdvertise(a.clone())),
            Some(a) => a.clone(),
            None => advertise.clone(),
        };
        if let Some(h) = &self.tag_header {
            if h.is_empty() || !h.bytes().all(is_token_char) {
                return Err(ConfigError::BadTagHeader(h.clone()));
            }
        }
        Ok(ValidConfig {
            config: self,
            advertise,
            advertise_backend,
            advertise_tls,
            backups,
        })
    }
}

/// `host[:port]` as it may appear in a SIP URI: a name, an IPv4 address or a bracketed IPv6
/// reference, then an optional decimal port.
fn is_host_port(s: &str) -> bool {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((v6, tail)) => {
                if v6.parse::<std::net::Ipv6Addr>().is_err() {
                    return false;
                }
                (v6, tail.strip_prefix(':'))
            }
            None => return false,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && (s.starts_with('[')
            || host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-'));
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0));
    host_ok && port_ok
}

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Config {
        Config {
            listeners: vec!["127.0.0.1:5060".parse().unwrap()],
            backends: vec![BackendConfig::plain("127.0.0.1:5070".parse().unwrap())],
            tag_keys: vec![TagKey {
                id: 1,
                secret: vec![7; 32],
            }],
            ..Config::default()
        }
    }

    #[test]
    fn minimal_config_is_valid_and_advertises_the_listener() {
        let v = minimal().validate().unwrap();
        assert_eq!(v.advertise(), "127.0.0.1:5060");
    }

    #[test]
    fn refusals_name_the_key() {
        let mut c = minimal();
        c.backends[0].backup = Some("127.0.0.1:9".parse().unwrap());
        assert!(matches!(
            c.validate(),
            Err(ConfigError::UnknownBackup { .. })
        ));
        let mut c = minimal();
        c.tag_keys[0].secret = vec![1; 4];
        assert_eq!(c.validate().unwrap_err(), ConfigError::ShortTagKey(1));
        let mut c = minimal();
        c.advertise = Some("lb.example.com:99999".into());
        assert!(matches!(c.validate(), Err(ConfigError::BadAdvertise(_))));
        let mut c = minimal();
        c.advertise = Some("[::1]:5060".into());
        assert!(c.validate().is_ok());
        // The core's deadlines on the driver: never zero, never past a year.
        let mut c = minimal();
        c.connect_timeout = Duration::ZERO;
        let zero = ConfigError::ZeroDuration("connect-timeout");
        assert_eq!(c.validate().unwrap_err(), zero);
        let mut c = minimal();
        c.close_linger = DURATION_MAX + Duration::from_secs(1);
        let long = ConfigError::TooLong("close-linger");
        assert_eq!(c.validate().unwrap_err(), long);
    }

    #[test]
    fn table_share_and_sanity_limits() {
        let mut l = Limits::default();
        assert_eq!(l.table_share(), 120_000);
        l.table_capacity = 200;
        assert_eq!(l.table_share(), TABLE_SHARE_MIN, "the floor");
        l.table_capacity = 10_000;
        l.table_share_percent = 100;
        assert_eq!(l.table_share(), 10_000);
        let mut c = minimal();
        c.limits.table_share_percent = 101;
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::Percent("limits.table-share-percent")
        );
        let mut c = minimal();
        c.limits.table_share_percent = 0;
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::ZeroLimit("table-share-percent")
        );
        let mut c = minimal();
        c.sanity.host_bytes_max = 0;
        assert_eq!(
            c.validate().unwrap_err(),
            ConfigError::Zero("sanity.host-bytes-max")
        );
        assert!(minimal().sanity.enabled, "on by default");
    }
}
