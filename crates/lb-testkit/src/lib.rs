//! # lb-testkit: lb-core's output contract, checked in one place
//!
//! Every harness that drives a `lb_core::Balancer` plays its driver, and every driver relies on
//! the same promises about the outputs (`crates/lb-core/src/io.rs`). This crate checks them
//! once, in [`Contract`], for all of them:
//!
//! - [`scenario`]: the harness of lb-core's scenario tests (`crates/lb-core/tests/*.rs`), which
//!   asserts the *whole* output of each input;
//! - the properties model (`crates/lb-core/tests/properties/`) drains through a [`Contract`];
//! - [`fuzz`]: the fuzz harnesses behind the targets of `fuzz/` (the core-sequence run, the
//!   envelope decoder), and the replays of `fuzz/regressions` (`tests/fuzz.rs`).
//! - every worker of lb-sim (`crates/lb-sim/src/instance.rs`) feeds and drains its core through
//!   a [`Contract`] that keeps no sent bytes ([`Contract::forget_sent`]).
//!
//! It is a crate rather than a feature of lb-core so that the core carries no harness in any
//! build, and so that lb-core's integration tests, the fuzz crate and lb-sim link one
//! copy of it. It needs lb-core's `fuzzing` feature, which adds only pure functions (framer,
//! parser, header walk) to the core.

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]
#![allow(
    clippy::unwrap_used,
    reason = "a test kit: a failed unwrap is a failed test, with its location"
)]

pub mod contract;
pub mod fuzz;
pub mod scenario;

pub use contract::{Contract, Link, Role, State, Unframed, Violation};
