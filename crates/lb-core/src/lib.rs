//! # lb-core: siplb's balancing method as a sans-IO state machine
//!
//! The core decides; drivers carry out. It reads bytes and the current time given to it, and
//! answers with [`Output`]s: bytes to write to a connection, connections to open or close, and
//! events for logs and metrics. It never opens a socket, reads a clock, spawns a thread or reads
//! the OS's randomness, so the same inputs at the same instants give the same outputs, byte for
//! byte — which is what lets `lb-sim` replay a storm exactly.
//!
//! What it does, per message: frame it out of the TCP stream, read the few headers that matter,
//! and route it by the tag the balancer put into the dialog (a `Route` entry, the top `Via`, or an
//! extension header), by the new-call table for untagged messages of calls being set up, or by
//! choosing a backend for a new call and tagging it. Established calls cost no state at all.
//!
//! ## The driver loop
//!
//! ```no_run
//! # use std::time::Instant;
//! # use lb_core::{Balancer, Config, Input, Output};
//! # fn wait_for_socket_or(_: Option<Instant>) -> Option<Input> { None }
//! # fn perform(_: Output) {}
//! # let config: Config = unimplemented!();
//! let mut lb = Balancer::new(config.validate()?, 42, Instant::now());
//! loop {
//!     // 1. Wait for readiness or the deadline; 2. feed what happened with the current time.
//!     let input = wait_for_socket_or(lb.poll_timeout()).unwrap_or(Input::Timeout);
//!     lb.handle_input(Instant::now(), input);
//!     // 3. Drain the outputs, performing each in order; 4. re-arm the one timer (top of loop).
//!     while let Some(output) = lb.poll_output() {
//!         perform(output);
//!     }
//! }
//! # Ok::<(), lb_core::ConfigError>(())
//! ```
//!
//! Every [`ConnId`] ends with exactly one [`Input::Closed`]; the core reuses its slot after that.

#![warn(missing_docs)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod balancer;
mod config;
mod conn_token;
pub mod envelope;
mod failover;
mod framing;
// What the fuzz harnesses (in lb-testkit) need of private items: compiled only with the
// feature `fuzzing`, which lb-testkit turns on. It holds no harness, clock read, environment
// read or print: a build that unifies the feature in carries only these pure functions.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod ids;
mod io;
mod keyed_hash;
mod lexer;
mod message;
mod new_call_table;
mod reasons;
mod rewrite;
mod select;
mod source;
mod stats;
mod tag;

pub use balancer::{BackendStatus, Balancer};
pub use config::{
    Algorithm, BackendConfig, BackendMode, Config, ConfigError, Limits, PassiveHealth, ProbeConfig,
    SanityLimits, TagKey, ValidConfig, BACKENDS_MAX, CLOSE_LINGER_DEFAULT, CONNECT_TIMEOUT_DEFAULT,
    STALL_TIMEOUT_DEFAULT, T1, TABLE_SHARE_MIN, TIMER_C, WINDOW_DEFAULT,
};
pub use ids::{BackendId, ConnId, ListenerId};
pub use io::{BackendChange, CloseReason, Event, Input, Output, QueueLevel};
pub use reasons::{DropCause, FramingFault, MalformedFault, TimeoutCause};
pub use stats::{
    BackendFigures, Figures, Histogram, Kind, Series, Stats, FIRST_SEEN_SLOTS, METHODS,
    REQUEST_SOURCES, RESPONSE_BUCKETS_US,
};
