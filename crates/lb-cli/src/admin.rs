//! `--admin ADDR`: the admin API, JSON over HTTP/1.1, served by `tiny_http` on a thread of its
//! own (the HTTP crate that already serves `/metrics`; siplb writes no HTTP parser).
//!
//! | request | what it does |
//! | --- | --- |
//! | `GET /backends` | every configured backend: `addr`, `state` (`up`, `down`, `draining`, `held`), `weight`, `mode`, `backup`, `load`, `selections`, `connections` |
//! | `POST /backends/ADDR/drain` | no new calls to it; its established calls go on |
//! | `POST /backends/ADDR/resume` | new calls again |
//! | `PUT /backends/ADDR/weight` | the body is the new weight, a whole number |
//! | `POST /backends` | adds one: `{"addr": "IP:PORT", "weight": N, "mode": "plain", "backup": "IP:PORT"}` (only `addr` is required) |
//! | `DELETE /backends/ADDR` | removes one; its tagged calls go to its backup, if any |
//! | `POST /reload` | what SIGHUP does: reread the config file |
//! | `GET /config` | the running configuration, without secrets (tag key ids, not keys) |
//! | `GET /trace` | the Call-IDs traced now |
//! | `POST /trace/CALLID` | trace every message of that Call-ID (as `--trace-call-id`), at most [`TRACED_MAX`] |
//! | `DELETE /trace/CALLID` | stop tracing it |
//!
//! `ADDR` is the backend's address as configured, `IP:PORT`, IPv6 in brackets; percent-encoded
//! characters are decoded (`%5B%3A%3A1%5D%3A5060` is `[::1]:5060`).
//!
//! **A change made here lasts until an explicit reload** (SIGHUP or `POST /reload`), which
//! rebuilds the configuration from the file and the flags: every answer to a change says so
//! with `"until": "reload"`. Weight, add and remove build a new `lb_core::Config` from the
//! running one and feed it as `Input::Reload`: the core matches backends by address, so ids,
//! connections and calls stay. Drain and resume are `Input::Backends`.
//!
//! **The HTTP thread never touches a balancer.** It parses and checks a request, hands an
//! [`AdminCommand`] to every worker's driver through a bounded channel each, wakes them (the
//! waker each gave [`crate::Ops::start_admin`]) and waits at most [`REPLY_MAX`] for all the
//! answers, which it merges into one (`admin_hub`); each driver applies commands between
//! events with [`crate::Ops::handle_admin`] and drains the core's outputs as after any input.
//!
//! **Access.** Without `--admin-token-file` the address must be a loopback address (refused at
//! start otherwise). With it, every request needs `Authorization: Bearer TOKEN`, TOKEN being
//! the file's first non-empty line; a wrong or missing token gets 401.
//!
//! Errors are JSON too: `{"error": "…"}` with 400 (bad path value or body), 401, 404 (no such
//! path or backend), 405, 409 (the core's validation refused the change, e.g. removing the
//! last backend), 413 (body over 64 KiB) or 503 (the driver did not answer in time).

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::{Algorithm, BackendConfig, BackendMode, BackendStatus, Balancer, Config, Input};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{CliError, Ops, RunError};

/// How long the HTTP thread waits for the driver's answer before it answers 503.
pub const REPLY_MAX: Duration = Duration::from_secs(5);

/// Largest request body read; a larger one gets 413.
const BODY_BYTES_MAX: u64 = 64 * 1024;

/// Call-IDs traced at once by `POST /trace/CALLID` (each costs a comparison per message).
pub const TRACED_MAX: usize = 64;

/// Longest Call-ID `POST /trace/CALLID` takes.
const TRACE_CALL_ID_BYTES_MAX: usize = 256;

/// `--admin` and `--admin-token-file`, checked.
#[derive(Clone, Default)]
pub struct AdminSettings {
    /// Where to serve the API; `None`: no API.
    pub addr: Option<SocketAddr>,
    token: Option<Arc<str>>,
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AdminSettings {
    /// Reads the token file; refuses a non-loopback address without one.
    pub(crate) fn new(
        addr: Option<SocketAddr>,
        token_file: Option<&Path>,
    ) -> Result<AdminSettings, CliError> {
        let token = match token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    CliError::invalid("admin-token-file", format!("{}: {e}", path.display()))
                })?;
                let token = text.lines().map(str::trim).find(|l| !l.is_empty());
                let token = token.ok_or_else(|| {
                    CliError::invalid("admin-token-file", format!("{}: no token", path.display()))
                })?;
                if token.len() < TOKEN_BYTES_MIN || token.chars().any(|c| c.is_whitespace()) {
                    return Err(CliError::invalid(
                        "admin-token-file",
                        format!(
                            "{}: the token must be at least {TOKEN_BYTES_MIN} characters \
                             without spaces",
                            path.display()
                        ),
                    ));
                }
                Some(Arc::from(token))
            }
            None => None,
        };
        if let Some(addr) = addr {
            if !addr.ip().is_loopback() && token.is_none() {
                return Err(CliError::invalid(
                    "admin",
                    format!(
                        "{addr} is not a loopback address: an admin API reachable from the \
                         network needs admin-token-file (bearer token), or bind it to \
                         127.0.0.1 / [::1]"
                    ),
                ));
            }
        } else if token.is_some() {
            return Err(CliError::invalid(
                "admin-token-file",
                "given without admin (the address to serve the API at)",
            ));
        }
        Ok(AdminSettings { addr, token })
    }

    /// Whether requests must carry the bearer token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }
}

/// One request for the driver, with the way back to the HTTP thread. Hand it to
/// [`crate::Ops::handle_admin`].
#[derive(Debug)]
pub struct AdminCommand {
    request: Request,
    reply: std::sync::mpsc::SyncSender<Reply>,
}

impl AdminCommand {
    pub(crate) fn new(request: Request, reply: std::sync::mpsc::SyncSender<Reply>) -> AdminCommand {
        AdminCommand { request, reply }
    }
}

/// The driver's end of the admin channel. Without `--admin` it never yields a command.
#[derive(Debug)]
pub struct AdminQueue {
    rx: Option<tokio::sync::mpsc::Receiver<AdminCommand>>,
}

impl AdminQueue {
    /// The next waiting command, if any (a readiness loop, after its waker fired).
    pub fn try_next(&mut self) -> Option<AdminCommand> {
        self.rx.as_mut()?.try_recv().ok()
    }

    /// The next command (an async loop); pending for ever without `--admin`.
    pub async fn next(&mut self) -> AdminCommand {
        if let Some(rx) = self.rx.as_mut() {
            if let Some(command) = rx.recv().await {
                return command;
            }
        }
        std::future::pending().await
    }
}

/// What a request asks for, parsed and checked on the HTTP thread.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Request {
    Backends,
    Drain(BackendRef),
    Resume(BackendRef),
    Weight(BackendRef, u32),
    Add(BackendConfig),
    Remove(BackendRef),
    /// Not from HTTP: a backend name resolved to new addresses (`lb_runtime::named`).
    Resolved {
        name: String,
        backends: Vec<BackendConfig>,
    },
    Reload,
    Config,
    /// `GET /trace`: the Call-IDs traced now.
    Traced,
    /// `POST /trace/CALLID`.
    Trace(String),
    /// `DELETE /trace/CALLID`.
    Untrace(String),
}

/// A backend as a path names it: by address, or by the DNS name it was configured with (all
/// the addresses that name has now).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum BackendRef {
    Addr(SocketAddr),
    Name(String),
}

impl std::fmt::Display for BackendRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendRef::Addr(a) => write!(f, "{a}"),
            BackendRef::Name(n) => f.write_str(n),
        }
    }
}

/// An answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) body: Value,
}

impl Reply {
    pub(crate) fn ok(body: Value) -> Reply {
        Reply { status: 200, body }
    }

    pub(crate) fn error(status: u16, message: impl Into<String>) -> Reply {
        Reply {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

/// The running HTTP server; stops (and frees its port) when dropped.
pub(crate) struct AdminServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

impl AdminServer {
    /// Binds now (a busy port fails the start) and serves from a new thread, handing every
    /// request to every worker of `hub` (`admin_hub`). `None` without `--admin`.
    pub(crate) fn start(
        settings: &AdminSettings,
        hub: Arc<crate::admin_hub::AdminHub>,
    ) -> Result<Option<AdminServer>, RunError> {
        let Some(addr) = settings.addr else {
            return Ok(None);
        };
        let server = tiny_http::Server::http(addr).map_err(|e| RunError::Admin {
            addr,
            reason: e.to_string(),
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        let server = Arc::new(server);
        let thread_server = Arc::clone(&server);
        let token = settings.token.clone();
        std::thread::Builder::new()
            .name("siplb-admin".to_string())
            .spawn(move || serve(&thread_server, token.as_deref(), &hub))
            .map_err(RunError::Runtime)?;
        tracing::info!(%addr, token = settings.has_token(), "admin API listening");
        Ok(Some(AdminServer { server, addr }))
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl AdminQueue {
    /// A queue that never yields (no `--admin`).
    pub(crate) fn none() -> AdminQueue {
        AdminQueue { rx: None }
    }

    pub(crate) fn from_receiver(rx: tokio::sync::mpsc::Receiver<AdminCommand>) -> AdminQueue {
        AdminQueue { rx: Some(rx) }
    }
}

impl Ops {
    /// Applies one admin command to the balancer and answers it. Call between events, then
    /// drain the core's outputs as after any input; reread [`Ops::settings`] afterwards (a
    /// `POST /reload` may have changed the driver's knobs, e.g. the output cap).
    pub fn handle_admin(&mut self, lb: &mut Balancer, now: Instant, command: AdminCommand) {
        let reply = apply(self, lb, now, command.request);
        // The HTTP thread may have given up waiting (REPLY_MAX): nobody to tell, nothing lost.
        let _ = command.reply.try_send(reply);
    }
}

fn apply(ops: &mut Ops, lb: &mut Balancer, now: Instant, request: Request) -> Reply {
    match request {
        Request::Backends => Reply::ok(Value::Array(
            running(lb)
                .iter()
                .map(|(c, s)| backend_json(ops, c, s))
                .collect(),
        )),
        Request::Config => Reply::ok(config_json(ops, lb)),
        Request::Drain(which) => crate::admin_backends::drain(ops, lb, now, &which, true),
        Request::Resume(which) => crate::admin_backends::drain(ops, lb, now, &which, false),
        Request::Weight(which, weight) => {
            crate::admin_backends::weight(ops, lb, now, &which, weight)
        }
        Request::Resolved { name, backends } => {
            crate::admin_backends::resolved(ops, lb, now, &name, &backends)
        }
        Request::Add(backend) => {
            let addr = backend.addr;
            let result = rebuild(ops, lb, now, |backends| {
                if backends.iter().any(|b| b.addr == addr) {
                    return Err(Reply::error(409, format!("backend {addr} already exists")));
                }
                backends.push(backend);
                Ok(())
            });
            if let Err(reply) = result {
                return reply;
            }
            tracing::info!(%addr, "admin: backend added until the next reload");
            changed(ops, lb, addr, 201)
        }
        Request::Remove(which) => crate::admin_backends::remove(ops, lb, now, &which),
        Request::Traced => Reply::ok(json!({ "call-ids": traced(ops) })),
        Request::Trace(call_id) => trace(ops, lb, now, call_id, true),
        Request::Untrace(call_id) => trace(ops, lb, now, call_id, false),
        Request::Reload => match ops.try_reload("admin: POST /reload") {
            Ok(config) => {
                lb.handle_input(now, Input::Reload(Box::new(config)));
                let backends: Vec<Value> = running(lb)
                    .iter()
                    .map(|(c, s)| backend_json(ops, c, s))
                    .collect();
                Reply::ok(json!({ "reloaded": true, "backends": backends }))
            }
            Err(reason) => Reply::error(409, reason),
        },
    }
}

/// The configured backends (removed ones left out), with their status, in id order.
pub(crate) fn running(lb: &Balancer) -> Vec<(BackendConfig, BackendStatus)> {
    lb.backends()
        .zip(lb.backend_status())
        .filter(|(_, s)| !s.removed)
        .map(|((_, c), s)| (c.clone(), s))
        .collect()
}

pub(crate) fn find(lb: &Balancer, addr: SocketAddr) -> Option<(BackendConfig, BackendStatus)> {
    running(lb).into_iter().find(|(c, _)| c.addr == addr)
}

pub(crate) fn no_backend(addr: impl std::fmt::Display) -> Reply {
    Reply::error(404, format!("no backend {addr}"))
}

/// The answer to a change: the backend as it is now, and how long the change lasts.
pub(crate) fn changed(ops: &Ops, lb: &Balancer, addr: SocketAddr, status: u16) -> Reply {
    match find(lb, addr) {
        Some((c, s)) => Reply {
            status,
            body: json!({ "backend": backend_json(ops, &c, &s), "until": "reload" }),
        },
        None => no_backend(addr),
    }
}

/// `POST /trace/CALLID` (`on`) and `DELETE /trace/CALLID`.
fn trace(ops: &mut Ops, lb: &mut Balancer, now: Instant, call_id: String, on: bool) -> Reply {
    let result = rebuild_config(ops, lb, now, |config| {
        let ids = &mut config.trace_call_ids;
        let present = ids.contains(&call_id);
        if on && !present {
            if ids.len() >= TRACED_MAX {
                return Err(Reply::error(
                    409,
                    format!("{TRACED_MAX} Call-IDs are traced already"),
                ));
            }
            ids.push(call_id.clone());
        } else if !on {
            if !present {
                return Err(Reply::error(404, format!("{call_id:?} is not traced")));
            }
            ids.retain(|id| *id != call_id);
        }
        Ok(())
    });
    if let Err(reply) = result {
        return reply;
    }
    tracing::info!(call_id, on, "admin: call trace set until the next reload");
    Reply {
        status: if on { 201 } else { 200 },
        body: json!({ "call-ids": traced(ops), "until": "reload" }),
    }
}

/// The Call-IDs traced now (`--trace-call-id`, the file's `trace-call-id`, the API's).
fn traced(ops: &Ops) -> Vec<String> {
    ops.settings().core.config().trace_call_ids.clone()
}

/// Builds a new configuration from the running one (the backends as they are now, drain
/// state included, so a weight change does not undo a drain), lets `edit` change its
/// backends, and feeds it to the core.
pub(crate) fn rebuild(
    ops: &mut Ops,
    lb: &mut Balancer,
    now: Instant,
    edit: impl FnOnce(&mut Vec<BackendConfig>) -> Result<(), Reply>,
) -> Result<(), Reply> {
    rebuild_config(ops, lb, now, |config| edit(&mut config.backends))
}

/// [`rebuild`], with the whole configuration to edit; the result is also what
/// [`Ops::settings`] shows from now on (until a reload).
fn rebuild_config(
    ops: &mut Ops,
    lb: &mut Balancer,
    now: Instant,
    edit: impl FnOnce(&mut Config) -> Result<(), Reply>,
) -> Result<(), Reply> {
    let mut config: Config = ops.settings().core.config().clone();
    config.backends = running(lb)
        .into_iter()
        .map(|(c, s)| BackendConfig {
            draining: s.draining,
            ..c
        })
        .collect();
    edit(&mut config)?;
    let valid = config
        .validate()
        .map_err(|e| Reply::error(409, e.to_string()))?;
    ops.set_running_config(valid.clone());
    lb.handle_input(now, Input::Reload(Box::new(valid)));
    Ok(())
}

fn state(s: &BackendStatus) -> &'static str {
    if !s.up {
        "down"
    } else if s.draining {
        "draining"
    } else if s.overloaded || s.queue_held {
        "held"
    } else {
        "up"
    }
}

fn mode_name(mode: BackendMode) -> &'static str {
    match mode {
        BackendMode::Plain => "plain",
        BackendMode::Envelope => "envelope",
    }
}

pub(crate) fn backend_json(ops: &Ops, c: &BackendConfig, s: &BackendStatus) -> Value {
    let name = ops.settings().named.iter().find(|n| n.has(c.addr));
    json!({
        "id": s.id.index(),
        "addr": c.addr.to_string(),
        "name": name.map(|n| n.name.as_str()),
        "state": state(s),
        "weight": c.weight,
        "priority": c.priority,
        "mode": mode_name(c.mode),
        "backup": c.backup.map(|a| a.to_string()),
        "draining": s.draining,
        "held": s.overloaded || s.queue_held,
        "load": s.load,
        "selections": s.assigned,
        "connections": s.connections,
    })
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The running configuration with the file's key names; tag keys by id only.
fn config_json(ops: &Ops, lb: &Balancer) -> Value {
    let settings = ops.settings();
    let core = settings.core.config();
    let backends: Vec<Value> = running(lb)
        .iter()
        .map(|(c, s)| {
            json!({
                "addr": c.addr.to_string(),
                "weight": c.weight,
                "mode": mode_name(c.mode),
                "backup": c.backup.map(|a| a.to_string()),
                "draining": s.draining,
            })
        })
        .collect();
    let algorithm = match core.algorithm {
        Algorithm::RoundRobin => "round-robin",
        Algorithm::Weighted => "weighted",
        Algorithm::LeastLoaded => "least-loaded",
    };
    let l = &core.limits;
    json!({
        "listen": core.listeners.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "advertise": settings.core.advertise(),
        "advertise-backend": core.advertise_backend,
        "algorithm": algorithm,
        "window": secs(core.window),
        "ringing-max": secs(core.ringing_max),
        "retry-after": secs(core.retry_after),
        "reconnect-min": secs(core.reconnect_min),
        "reconnect-max": secs(core.reconnect_max),
        "tag-key-ids": core.tag_keys.iter().map(|k| k.id).collect::<Vec<_>>(),
        "tag-key-generated": settings.tag_key_generated,
        "tag-header": core.tag_header,
        "log-level": settings.log_level,
        "log-format": settings.log_format.name(),
        "output-cap": settings.output_cap_bytes,
        "probe-interval": core.probe.as_ref().map(|p| secs(p.interval)),
        "probe-timeout": core.probe.as_ref().map(|p| secs(p.timeout)),
        "probe-failures": core.probe.as_ref().map(|p| p.failures_to_down),
        "probe-successes": core.probe.as_ref().map(|p| p.successes_to_up),
        "idle-timeout": secs(core.idle_timeout),
        "partial-timeout": secs(core.partial_timeout),
        "overload-hold": secs(core.overload_hold),
        "overload-hold-max": secs(core.overload_hold_max),
        "metrics": settings.metrics.map(|a| a.to_string()),
        "admin": settings.admin.addr.map(|a| a.to_string()),
        "admin-token": settings.admin.has_token(),
        "batch-window": secs(settings.batch_window),
        "config-file": settings.config_file().map(|p| p.display().to_string()),
        "backend": backends,
        "limits": {
            "message-bytes-max": l.message_bytes_max,
            "headers-max": l.headers_max,
            "buffered-bytes-max": l.buffered_bytes_max,
            "frontends-max": l.frontends_max,
            "table-capacity": l.table_capacity,
            "dial-outs-max": l.dial_outs_max,
            "dial-queue-max": l.dial_queue_max,
        },
    })
}

fn serve(server: &tiny_http::Server, token: Option<&str>, hub: &crate::admin_hub::AdminHub) {
    for mut request in server.incoming_requests() {
        let reply = match authorize(&request, token) {
            Err(reply) => reply,
            Ok(()) => match read_body(&mut request)
                .and_then(|body| parse_request(request.method(), request.url(), &body))
            {
                Err(reply) => reply,
                Ok(parsed) => hub.ask_all(&parsed),
            },
        };
        let mut body = reply.body.to_string();
        body.push('\n');
        // Never chunked: a client may read the body to the end of the stream (`siplb-ctl`).
        let mut response = tiny_http::Response::from_string(body)
            .with_status_code(reply.status)
            .with_chunked_threshold(usize::MAX);
        if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
        {
            response = response.with_header(h);
        }
        if reply.status == 401 {
            if let Ok(h) = tiny_http::Header::from_bytes(&b"WWW-Authenticate"[..], &b"Bearer"[..]) {
                response = response.with_header(h);
            }
        }
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "admin: writing a response failed");
        }
    }
}

fn authorize(request: &tiny_http::Request, token: Option<&str>) -> Result<(), Reply> {
    use subtle::ConstantTimeEq as _;
    let Some(token) = token else { return Ok(()) };
    let given = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .and_then(|h| h.value.as_str().trim().strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if bool::from(given.as_bytes().ct_eq(token.as_bytes())) => Ok(()),
        Some(_) => Err(Reply::error(401, "wrong bearer token")),
        None => Err(Reply::error(
            401,
            "an Authorization: Bearer header is required",
        )),
    }
}

fn read_body(request: &mut tiny_http::Request) -> Result<String, Reply> {
    let mut body = Vec::new();
    if let Err(e) = request
        .as_reader()
        .take(BODY_BYTES_MAX + 1)
        .read_to_end(&mut body)
    {
        return Err(Reply::error(400, format!("reading the body: {e}")));
    }
    if body.len() as u64 > BODY_BYTES_MAX {
        return Err(Reply::error(413, "the body is over 64 KiB"));
    }
    String::from_utf8(body).map_err(|_| Reply::error(400, "the body is not UTF-8"))
}

/// The JSON body of `POST /backends`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBackend {
    addr: String,
    weight: Option<u32>,
    mode: Option<String>,
    backup: Option<String>,
    #[serde(default)]
    draining: bool,
}

fn parse_request(method: &tiny_http::Method, url: &str, body: &str) -> Result<Request, Reply> {
    use tiny_http::Method::{Delete, Get, Post, Put};
    let path = url.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Get, ["backends"]) => Ok(Request::Backends),
        (Get, ["config"]) => Ok(Request::Config),
        (Post, ["reload"]) => Ok(Request::Reload),
        (Post, ["backends"]) => parse_new_backend(body).map(Request::Add),
        (Post, ["backends", addr, "drain"]) => Ok(Request::Drain(path_backend(addr)?)),
        (Post, ["backends", addr, "resume"]) => Ok(Request::Resume(path_backend(addr)?)),
        (Put, ["backends", addr, "weight"]) => {
            let addr = path_backend(addr)?;
            let text = body.trim();
            let weight = text.parse::<u32>().map_err(|_| {
                Reply::error(
                    400,
                    format!("the body must be the weight, a whole number: {text:?}"),
                )
            })?;
            Ok(Request::Weight(addr, weight))
        }
        (Delete, ["backends", addr]) => Ok(Request::Remove(path_backend(addr)?)),
        (Get, ["trace"]) => Ok(Request::Traced),
        (Post, ["trace", call_id]) => Ok(Request::Trace(path_call_id(call_id)?)),
        (Delete, ["trace", call_id]) => Ok(Request::Untrace(path_call_id(call_id)?)),
        (_, ["backends"] | ["config"] | ["reload"])
        | (_, ["backends", _, "drain" | "resume" | "weight"])
        | (_, ["backends", _])
        | (_, ["trace"] | ["trace", _]) => {
            Err(Reply::error(405, format!("{method} is not allowed here")))
        }
        _ => Err(Reply::error(
            404,
            format!("no such path {path:?}: try GET /backends or GET /config"),
        )),
    }
}

fn parse_new_backend(body: &str) -> Result<BackendConfig, Reply> {
    let new: NewBackend =
        serde_json::from_str(body).map_err(|e| Reply::error(400, format!("body: {e}")))?;
    let addr = parse_addr("addr", &new.addr)?;
    let mut config = BackendConfig::plain(addr);
    if let Some(w) = new.weight {
        config.weight = w;
    }
    config.mode = match new.mode.as_deref().map(str::trim) {
        None | Some("plain") => BackendMode::Plain,
        Some("envelope") => BackendMode::Envelope,
        Some(other) => {
            return Err(Reply::error(
                400,
                format!("mode: {other:?} is not plain or envelope"),
            ))
        }
    };
    config.backup = new
        .backup
        .as_deref()
        .map(|b| parse_addr("backup", b))
        .transpose()?;
    config.draining = new.draining;
    Ok(config)
}

fn parse_addr(what: &str, text: &str) -> Result<SocketAddr, Reply> {
    text.trim()
        .parse()
        .map_err(|_| Reply::error(400, format!("{what}: {text:?} is not IP:PORT")))
}

/// A path segment naming a backend: percent-decoded, then `IP:PORT` or the DNS name it was
/// configured with (`host`, `host:port`).
fn path_backend(segment: &str) -> Result<BackendRef, Reply> {
    let decoded = percent_decode(segment)
        .ok_or_else(|| Reply::error(400, format!("bad percent-encoding in {segment:?}")))?;
    match parse_addr("backend address", &decoded) {
        Ok(addr) => Ok(BackendRef::Addr(addr)),
        Err(reply) => match lb_runtime::named::parse_name(&decoded) {
            Some(_) => Ok(BackendRef::Name(decoded.trim().to_ascii_lowercase())),
            None => Err(reply),
        },
    }
}

/// A path segment naming a Call-ID: percent-decoded (a Call-ID may hold `@`, `/` or `%`),
/// non-empty, printable, at most [`TRACE_CALL_ID_BYTES_MAX`] bytes.
fn path_call_id(segment: &str) -> Result<String, Reply> {
    let decoded = percent_decode(segment)
        .ok_or_else(|| Reply::error(400, format!("bad percent-encoding in {segment:?}")))?;
    if decoded.is_empty()
        || decoded.len() > TRACE_CALL_ID_BYTES_MAX
        || decoded.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Reply::error(
            400,
            format!(
                "a Call-ID is 1 to {TRACE_CALL_ID_BYTES_MAX} bytes without spaces: {decoded:?}"
            ),
        ));
    }
    Ok(decoded)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A shorter token is guessable; 16 characters of hex are 64 bits.
const TOKEN_BYTES_MIN: usize = 16;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use tiny_http::Method;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn paths_parse_into_requests() {
        let a = addr("127.0.0.1:5070");
        let v6 = addr("[::1]:5070");
        for (method, url, body, want) in [
            (Method::Get, "/backends", "", Request::Backends),
            (Method::Get, "/backends/", "", Request::Backends),
            (Method::Get, "/config?x=1", "", Request::Config),
            (Method::Post, "/reload", "", Request::Reload),
            (
                Method::Post,
                "/backends/127.0.0.1:5070/drain",
                "",
                Request::Drain(BackendRef::Addr(a)),
            ),
            (
                Method::Post,
                "/backends/127.0.0.1%3A5070/resume",
                "",
                Request::Resume(BackendRef::Addr(a)),
            ),
            (
                Method::Post,
                "/backends/[::1]:5070/drain",
                "",
                Request::Drain(BackendRef::Addr(v6)),
            ),
            (
                Method::Post,
                "/backends/%5B%3A%3A1%5D%3A5070/drain",
                "",
                Request::Drain(BackendRef::Addr(v6)),
            ),
            (
                Method::Put,
                "/backends/127.0.0.1:5070/weight",
                " 7\n",
                Request::Weight(BackendRef::Addr(a), 7),
            ),
            (
                Method::Delete,
                "/backends/127.0.0.1:5070",
                "",
                Request::Remove(BackendRef::Addr(a)),
            ),
            (
                Method::Post,
                "/backends/localhost:5070/drain",
                "",
                Request::Drain(BackendRef::Name("localhost:5070".into())),
            ),
            (
                Method::Post,
                "/trace/abc%40host",
                "",
                Request::Trace("abc@host".into()),
            ),
            (
                Method::Post,
                "/backends",
                r#"{"addr": "127.0.0.1:5070", "weight": 3, "mode": "envelope"}"#,
                Request::Add(BackendConfig {
                    weight: 3,
                    mode: BackendMode::Envelope,
                    ..BackendConfig::plain(a)
                }),
            ),
        ] {
            assert_eq!(
                parse_request(&method, url, body),
                Ok(want),
                "{method} {url}"
            );
        }
    }

    #[test]
    fn bad_requests_get_json_errors_not_panics() {
        for (method, url, body, status) in [
            (Method::Get, "/nowhere", "", 404),
            (Method::Delete, "/config", "", 405),
            (Method::Get, "/backends/127.0.0.1:5070/drain", "", 405),
            (Method::Post, "/backends/no%20host/drain", "", 400),
            (Method::Post, "/backends/127.0.0.1:99999/drain", "", 400),
            (Method::Post, "/trace/a%20b", "", 400),
            (Method::Put, "/trace/x", "", 405),
            (Method::Post, "/backends/%zz/drain", "", 400),
            (Method::Post, "/backends/%/drain", "", 400),
            (Method::Post, "/backends/%C3/drain", "", 400),
            (Method::Put, "/backends/127.0.0.1:5070/weight", "heavy", 400),
            (Method::Put, "/backends/127.0.0.1:5070/weight", "-1", 400),
            (
                Method::Put,
                "/backends/127.0.0.1:5070/weight",
                "99999999999",
                400,
            ),
            (Method::Post, "/backends", "", 400),
            (Method::Post, "/backends", "{", 400),
            (Method::Post, "/backends", "[]", 400),
            (Method::Post, "/backends", r#"{"weight": 1}"#, 400),
            (Method::Post, "/backends", r#"{"addr": "x"}"#, 400),
            (
                Method::Post,
                "/backends",
                r#"{"addr": "127.0.0.1:1", "mode": "udp"}"#,
                400,
            ),
            (
                Method::Post,
                "/backends",
                r#"{"addr": "127.0.0.1:1", "colour": 1}"#,
                400,
            ),
            (
                Method::Post,
                "/backends",
                r#"{"addr": "127.0.0.1:1", "weight": -2}"#,
                400,
            ),
        ] {
            let reply = parse_request(&method, url, body).unwrap_err();
            assert_eq!(reply.status, status, "{method} {url} {body:?}: {reply:?}");
            assert!(reply.body["error"].is_string(), "{reply:?}");
        }
    }

    #[test]
    fn a_non_loopback_address_needs_a_token() {
        let e = AdminSettings::new(Some(addr("0.0.0.0:9091")), None).unwrap_err();
        assert_eq!(e.key().as_deref(), Some("admin"));
        assert!(e.to_string().contains("admin-token-file"), "{e}");
        assert!(AdminSettings::new(Some(addr("127.0.0.1:9091")), None).is_ok());
        assert!(AdminSettings::new(Some(addr("[::1]:9091")), None).is_ok());

        let dir = std::env::temp_dir().join(format!("lb-cli-admin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("token");
        std::fs::write(&good, "\n  0123456789abcdef0123  \n").unwrap();
        let s = AdminSettings::new(Some(addr("0.0.0.0:9091")), Some(&good)).unwrap();
        assert_eq!(s.token.as_deref(), Some("0123456789abcdef0123"));
        assert!(!format!("{s:?}").contains("0123456789abcdef"), "{s:?}");
        let short = dir.join("short");
        std::fs::write(&short, "abc\n").unwrap();
        let e = AdminSettings::new(Some(addr("0.0.0.0:9091")), Some(&short)).unwrap_err();
        assert_eq!(e.key().as_deref(), Some("admin-token-file"));
        let e = AdminSettings::new(None, Some(&good)).unwrap_err();
        assert_eq!(e.key().as_deref(), Some("admin-token-file"));
    }
}
