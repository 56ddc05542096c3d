//! Properties over the whole `Balancer`, driven through its public API by generated scripts.
//!
//! A script is a seed plus a list of steps: calls set up, retransmitted, cancelled, answered,
//! acknowledged, in-dialog requests both ways, virtual time, backends killed and reconnected.
//! A step that does not apply to the state reached (an answer to a call never made, a CANCEL
//! after the final response) is a no-op, so every sub-list of a script is a script: quickcheck
//! shrinks a failure by dropping steps.
//!
//! The model only sends what a SIP peer may send (a retransmission within Timer B, a CANCEL
//! before the final response and within Timer C, the ACK of a non-2xx within the window after
//! it); within that, each message is checked against one routing rule:
//!
//! - a message names a backend: the new-call table's (the backend that took the call) for an
//!   untagged one, the tag's for an in-dialog request or for the response to a backend's
//!   request;
//! - it goes to that backend while it is up; when it is down, to its configured backup if that
//!   is up, else to one backend chosen among those up that is the same for every message of the
//!   Call-ID: asserted as the choice of one fixed preference order per Call-ID (whatever
//!   backends are up, the best-ranked of them), which is what rendezvous hashing is;
//! - nothing up: a 503 to the connection the request came from (an ACK or a response: counted
//!   as dropped);
//! - whatever a backend sends for a call reaches the frontend connection the call came from.
//!
//! Every output goes through the output contract of lb-testkit ([`Contract`]): `Send` only on
//! open connections and in whole frames, fresh ids, one `Close`, deadlines past `now` after a
//! `Timeout`.
//!
//! After every step: the counters balance (every message in is forwarded, answered or counted
//! as dropped; every `Send` is counted), the table stays within its capacity, the core's view
//! of which backends are up matches the driver's, and no deadline is overdue. Time moves only by
//! feeding `Input::Timeout` at each `poll_timeout()` on the way, after which the deadline must
//! have moved past `now`.
//!
//! The properties are here; [`script`] generates the scripts, [`world`] runs them against the
//! balancer and checks every output, [`wire`] writes and reads the SIP text.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::time::Duration;

use lb_core::{Stats, TIMER_C, WINDOW_DEFAULT};
use quickcheck::{Gen, TestResult};
use quickcheck_macros::quickcheck;

const LB: &str = "192.0.2.10:5060";
const FRONTENDS: usize = 3;
const STRAY_PEER: &str = "203.0.113.99:45000";
const WINDOW: Duration = WINDOW_DEFAULT;
const RINGING_MAX: Duration = TIMER_C;
/// The callee's To tag, as every backend answers.
const CALLEE_TAG: &str = "bt";
const TAG_HEADER: &str = "X-LB-Tag";

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

// After `ensure!`: a `macro_rules!` macro is in scope only in the modules declared after it.
mod script;
mod wire;
mod world;

use script::{gen_script, Clocks, Crowded, Noisy, Script, CALLS, CLOCKS, CROWDED, NOISY};
use world::run;

/// How many kinds of `Step::Stray` there are: the generator picks one, the world sends it.
const STRAY_KINDS: u32 = 11;

/// What a run checks beyond the common invariants.
#[derive(Clone, Copy)]
struct Options {
    table_capacity: usize,
    /// After every step, also feed an early `Timeout` and require it to change nothing.
    early_timeouts: bool,
    /// At the end, fill the table to capacity and require the next new call to get 503.
    fill_table: bool,
}

const DEFAULT: Options = Options {
    table_capacity: 1_000_000,
    early_timeouts: false,
    fill_table: false,
};

fn outcome(script: &Script, options: Options) -> TestResult {
    match run(script, options) {
        Ok(_) => TestResult::passed(),
        Err(e) => TestResult::error(e),
    }
}

// ----- the properties -----

/// Every message of a Call-ID reaches one backend while it is up, one backup after it fails,
/// and everything for the caller reaches the caller's connection.
#[quickcheck]
fn every_message_of_a_call_reaches_its_backend(script: Script) -> TestResult {
    outcome(&script, DEFAULT)
}

/// A table of 8: new calls beyond it get 503 "Too Many Calls", and it never holds more.
#[quickcheck]
fn a_full_table_answers_503_and_never_grows_past_capacity(script: Crowded) -> TestResult {
    outcome(
        &script.0,
        Options {
            table_capacity: 8,
            early_timeouts: false,
            fill_table: true,
        },
    )
}

/// After a Timeout at `poll_timeout()` the deadline has moved past now; early Timeouts do
/// nothing; the table empties once every rule has run out.
#[quickcheck]
fn deadlines_move_past_now_and_early_timeouts_do_nothing(script: Clocks) -> TestResult {
    outcome(
        &script.0,
        Options {
            early_timeouts: true,
            ..DEFAULT
        },
    )
}

/// Garbage, unknown calls, stray responses and stale connections: every message in is still
/// forwarded, answered or counted, and the calls around them are unaffected.
#[quickcheck]
fn every_input_is_forwarded_or_counted(script: Noisy) -> TestResult {
    outcome(&script.0, DEFAULT)
}

/// The generators reach the paths the properties are about: a property over scripts that never
/// fail over or never fill the table would pass without checking anything.
#[test]
fn the_scripts_exercise_every_path() {
    let mut total = Stats::default();
    let mut backups = 0;
    let mut g = Gen::from_size_and_seed(100, 7);
    for (mix, options) in [
        (CALLS, DEFAULT),
        (
            CROWDED,
            Options {
                table_capacity: 8,
                early_timeouts: false,
                fill_table: true,
            },
        ),
        (CLOCKS, DEFAULT),
        (NOISY, DEFAULT),
    ] {
        for _ in 0..25 {
            let (s, b) = run(&gen_script(&mut g, &mix), options).unwrap();
            backups += b;
            total.tagged += s.tagged;
            total.table_hits += s.table_hits;
            total.to_backup += s.to_backup;
            total.replies_503 += s.replies_503;
            total.replies_481 += s.replies_481;
            total.replies_400 += s.replies_400;
            total.dropped += s.dropped;
            total.backend_requests_in += s.backend_requests_in;
            total.frontend_responses_in += s.frontend_responses_in;
            total.keepalives += s.keepalives;
            total.framing_errors += s.framing_errors;
            total.stale_inputs += s.stale_inputs;
            if options.fill_table {
                total.table_len_max = total.table_len_max.max(s.table_len_max);
            }
        }
    }
    assert!(backups > 20, "rendezvous backups chosen: {backups}");
    for (name, value) in [
        ("tagged", total.tagged),
        ("table_hits", total.table_hits),
        ("to_backup", total.to_backup),
        ("replies_503", total.replies_503),
        ("replies_481", total.replies_481),
        ("replies_400", total.replies_400),
        ("dropped", total.dropped),
        ("backend_requests_in", total.backend_requests_in),
        ("frontend_responses_in", total.frontend_responses_in),
        ("keepalives", total.keepalives),
        ("framing_errors", total.framing_errors),
        ("stale_inputs", total.stale_inputs),
    ] {
        assert!(value > 0, "no script reached {name}: {total}");
    }
    assert_eq!(total.table_len_max, 8, "the small table was filled");
}
