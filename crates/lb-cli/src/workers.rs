//! `--workers N`: one process, N balancer cores, each on a thread of its own with its own event
//! loop (docs/design.md, "Workers").
//!
//! [`run_workers`] is the process around a driver's per-worker `run`:
//! 1. SIGINT, SIGTERM and SIGHUP are caught by the process (before anything is bound, so a
//!    signal sent once the port answers is seen), never by a worker;
//! 2. the metrics server is started once, with one snapshot slot per worker, and so is the
//!    admin API, which hands every request to every worker (`admin_hub`);
//! 3. every worker's listeners are bound here, one socket per worker and listen address, with
//!    `SO_REUSEPORT` when there are several workers, so the kernel spreads new connections over
//!    the workers' sockets (a port-0 address takes the port the first worker's socket got);
//! 4. each worker thread runs the driver's loop on its [`Worker`]: its own `Balancer`, backend
//!    connections and new-call table; the settings (tag keys among them, read or drawn once
//!    by the process) are the only thing workers share;
//! 5. SIGHUP rereads the configuration once ([`crate::reload`]) and hands the same result to
//!    every worker ([`Command::Reload`]); SIGINT/SIGTERM send [`Command::Stop`], and the
//!    process returns the sum of the workers' final counters, as one balancer would.
//!
//! A worker that fails ends the process: the others are stopped and its error returned.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, PoisonError};

use lb_core::Stats;
use tokio::sync::mpsc;

use crate::{Ops, RunError, Settings};

/// What one worker thread is given.
#[derive(Debug)]
pub struct Worker {
    /// Its number, from 0 (the `worker` label of the per-worker metrics).
    pub index: usize,
    /// The settings at start, the same for every worker.
    pub settings: Settings,
    /// Its operator side, publishing into its own metrics slot.
    pub ops: Ops,
    /// Its listen sockets, non-blocking, in the order of the configuration's listeners
    /// (`Balancer::listeners`).
    pub listeners: Vec<TcpListener>,
    /// Commands from the process.
    pub control: Control,
}

/// What the process tells a worker.
#[derive(Debug)]
pub enum Command {
    /// SIGHUP: settings reread and valid; adopt them ([`Ops::adopt`]) and feed the core.
    Reload(Box<Settings>),
    /// SIGINT/SIGTERM: stop accepting, flush, return the final counters.
    Stop,
}

type Wake = Arc<Mutex<Option<Box<dyn Fn() + Send>>>>;

/// A worker's end of the process's command channel. Usable from any runtime: await
/// [`Control::recv`], or poll [`Control::try_recv`] after the hook of [`Control::on_command`]
/// woke the loop.
#[derive(Debug)]
pub struct Control {
    commands: mpsc::UnboundedReceiver<Command>,
    wake: WakeHook,
}

struct WakeHook(Wake);

impl std::fmt::Debug for WakeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WakeHook")
    }
}

impl Control {
    /// A control and its sending end, for a worker the caller runs itself.
    pub fn pair() -> (Control, Commander) {
        let (tx, commands) = mpsc::unbounded_channel();
        let wake: Wake = Arc::default();
        let commander = Commander {
            commands: tx,
            wake: WakeHook(Arc::clone(&wake)),
        };
        (
            Control {
                commands,
                wake: WakeHook(wake),
            },
            commander,
        )
    }

    /// Calls `wake` after each command is sent (a readiness loop's waker). Commands sent before
    /// are already queued: call [`Control::try_recv`] once after installing it.
    pub fn on_command(&self, wake: impl Fn() + Send + 'static) {
        *self.wake.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(wake));
    }

    /// The next command if one is queued. [`Command::Stop`] once the process is gone.
    pub fn try_recv(&mut self) -> Option<Command> {
        match self.commands.try_recv() {
            Ok(command) => Some(command),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(Command::Stop),
        }
    }

    /// Waits for the next command; [`Command::Stop`] once the process is gone.
    pub async fn recv(&mut self) -> Command {
        self.commands.recv().await.unwrap_or(Command::Stop)
    }
}

/// The process's end of one worker's [`Control`].
#[derive(Debug)]
pub struct Commander {
    commands: mpsc::UnboundedSender<Command>,
    wake: WakeHook,
}

impl Commander {
    /// Queues `command` and wakes the worker.
    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
        if let Some(wake) = &*self.wake.0.lock().unwrap_or_else(PoisonError::into_inner) {
            wake();
        }
    }
}

/// Runs `settings.workers` workers of a driver, each calling `run` on its own thread, until
/// SIGINT or SIGTERM (module docs); returns the sum of their final counters (`backends_up`:
/// the fewest any worker had up).
pub fn run_workers(
    settings: Settings,
    run: fn(Worker) -> Result<Stats, RunError>,
) -> Result<Stats, RunError> {
    let count = settings.workers.max(1);
    #[cfg(unix)]
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(RunError::Runtime)?;
    let metrics = crate::ops::start_metrics(&settings, count)?;
    let admin = crate::ops::start_admin(&settings, count)?;
    if let Some(shared) = admin.as_ref().filter(|_| !settings.named.is_empty()) {
        let resolver = lb_runtime::named::SystemResolver::new().map_err(RunError::Runtime)?;
        lb_runtime::named::start_refresh(
            settings.named.clone(),
            settings.resolve_interval,
            Arc::new(resolver),
            Arc::downgrade(shared),
            |shared: &crate::ops::AdminShared, name, backends| {
                let request = crate::admin::Request::Resolved {
                    name: name.to_string(),
                    backends,
                };
                let reply = shared.hub.ask_all(&request);
                if reply.status != 200 {
                    tracing::warn!(name, answer = %reply.body, "backend name: workers refused the new addresses");
                }
            },
        )
        .map_err(RunError::Runtime)?;
    }
    let listeners = bind_all(&settings, count)?;

    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut commanders = Vec::with_capacity(count);
    let mut threads = Vec::with_capacity(count);
    for (index, listeners) in listeners.into_iter().enumerate() {
        let (control, commander) = Control::pair();
        let worker = Worker {
            index,
            settings: settings.clone(),
            ops: Ops::for_worker(
                &settings,
                metrics.clone().map(|m| (m, index)),
                admin.clone().map(|a| (a, index)),
            ),
            listeners,
            control,
        };
        let done = done_tx.clone();
        #[cfg(unix)]
        let signals_handle = signals.handle();
        let thread = std::thread::Builder::new()
            .name(format!("siplb-worker-{index}"))
            .spawn(move || {
                let span = (count > 1).then(|| tracing::info_span!("worker", id = index));
                let _entered = span.as_ref().map(tracing::Span::enter);
                let result = run(worker);
                let _ = done.send(());
                // A worker ending on its own (an error) ends the wait for signals.
                #[cfg(unix)]
                signals_handle.close();
                result
            })
            .map_err(RunError::Runtime)?;
        commanders.push(commander);
        threads.push(thread);
    }
    drop(done_tx);

    #[cfg(unix)]
    wait_for_stop(&mut signals, settings, &commanders);
    #[cfg(not(unix))]
    {
        // No signals to wait for: the process runs until a worker ends.
        drop(settings);
        let _ = done_rx.recv();
    }
    drop(done_rx);
    for commander in &commanders {
        commander.send(Command::Stop);
    }

    let mut first_error = None;
    let mut finals = Vec::with_capacity(count);
    for thread in threads {
        match thread.join() {
            Ok(Ok(stats)) => finals.push(stats),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert(RunError::Runtime(std::io::Error::other(
                    "a worker thread panicked",
                )));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(sum(&finals))
}

/// Handles signals until SIGINT or SIGTERM, or until a worker ended (which closes `signals`):
/// each SIGHUP rereads the configuration once and hands it to every worker.
#[cfg(unix)]
fn wait_for_stop(
    signals: &mut signal_hook::iterator::Signals,
    settings: Settings,
    commanders: &[Commander],
) {
    let mut current = settings;
    for signal in signals.forever() {
        if signal != signal_hook::consts::SIGHUP {
            return;
        }
        if let Some(new) = crate::reload(&current) {
            for commander in commanders {
                commander.send(Command::Reload(Box::new(new.clone())));
            }
            current = new;
        }
    }
}

/// The counters of a process from its workers' (as [`crate::Snapshot::merge`] sums them).
pub fn sum(workers: &[Stats]) -> Stats {
    let mut total = Stats::default();
    for w in workers {
        total.accumulate(w);
    }
    if let Some(fewest) = workers.iter().map(|w| w.backends_up).min() {
        total.backends_up = fewest;
    }
    total
}

/// One set of listen sockets per worker.
fn bind_all(settings: &Settings, count: usize) -> Result<Vec<Vec<TcpListener>>, RunError> {
    // In `Balancer::listeners` order: the TCP listeners, then the TLS ones.
    let config = settings.core.config();
    let mut addrs: Vec<SocketAddr> = config
        .listeners
        .iter()
        .chain(&config.tls_listeners)
        .copied()
        .collect();
    let mut all = Vec::with_capacity(count);
    for _ in 0..count {
        let mut sockets = Vec::with_capacity(addrs.len());
        for addr in &mut addrs {
            let socket = bind_listener(*addr, count > 1).map_err(|source| RunError::Bind {
                addr: *addr,
                source,
            })?;
            if addr.port() == 0 {
                // The other workers must share the port the kernel chose for the first.
                if let Ok(bound) = socket.local_addr() {
                    *addr = bound;
                }
            }
            sockets.push(socket);
        }
        all.push(sockets);
    }
    Ok(all)
}

/// A non-blocking listen socket on `addr`; with `reuse_port`, one of several sockets on the
/// same address among which the kernel spreads new connections (Linux `SO_REUSEPORT`).
pub fn bind_listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // As std's `TcpListener::bind` does: a restart binds while old connections linger.
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
    let _ = reuse_port;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Pending connections per listen socket (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 1024;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reuse_port_sockets_share_an_address() {
        let first = bind_listener("127.0.0.1:0".parse().unwrap(), true).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_listener(addr, true).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        // Without it the port is taken.
        let only = bind_listener("127.0.0.1:0".parse().unwrap(), false).unwrap();
        assert!(bind_listener(only.local_addr().unwrap(), false).is_err());
    }

    #[test]
    fn sum_adds_counters_and_keeps_the_fewest_backends_up() {
        let a = Stats {
            new_calls: 3,
            backends_up: 2,
            ..Stats::default()
        };
        let b = Stats {
            new_calls: 4,
            backends_up: 1,
            ..Stats::default()
        };
        let total = sum(&[a, b]);
        assert_eq!(total.new_calls, 7);
        assert_eq!(total.backends_up, 1);
        assert_eq!(sum(&[]), Stats::default());
    }

    #[test]
    fn commands_reach_a_worker_and_wake_it() {
        let (mut control, commander) = Control::pair();
        let woke = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&woke);
        control.on_command(move || {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        assert!(control.try_recv().is_none());
        commander.send(Command::Stop);
        assert!(matches!(control.try_recv(), Some(Command::Stop)));
        assert_eq!(woke.load(std::sync::atomic::Ordering::Relaxed), 1);
        drop(commander);
        assert!(matches!(control.try_recv(), Some(Command::Stop)));
    }
}
