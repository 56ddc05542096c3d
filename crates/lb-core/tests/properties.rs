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
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use lb_core::envelope::{self, Envelope, EnvelopeDecoder, Transport};
use lb_core::{
    Algorithm, BackendChange, BackendConfig, BackendId, BackendMode, Balancer, CloseReason, Config,
    ConnId, Event, Input, Limits, Output, Stats, TagKey, TIMER_C, WINDOW_DEFAULT,
};
use lb_testkit::Contract;
use quickcheck::{Arbitrary, Gen, TestResult};
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

// ----- the script -----

/// One thing that happens. `call` picks (modulo) among the calls the step applies to when it
/// runs, in the order they were made; `backend`, `fe` and `who` are reduced modulo what exists.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    /// The caller behind frontend `fe` sends an INVITE for a new call (numbered in order).
    Invite { fe: u8 },
    /// The INVITE again, byte for byte (before the final response, within Timer B).
    Retransmit { call: u8 },
    /// CANCEL of the INVITE; `answer`: the backend it reached answers it with 200.
    Cancel { call: u8, answer: bool },
    /// A backend that received a copy of the INVITE (`who`-th) answers it.
    Answer { call: u8, who: u8, status: u16 },
    /// The caller's ACK of a non-2xx final response.
    AckNon2xx { call: u8 },
    /// An in-dialog request from the caller, routed by the Record-Route it got in the 200;
    /// `answer`: the backend answers it with 200. `route`: how the route set is written (0 the
    /// balancer alone, 1 and a second proxy in one header, 2 in two headers, 3 only the
    /// extension tag header when configured).
    InDialog {
        call: u8,
        method: DialogMethod,
        answer: bool,
        route: u8,
    },
    /// The backend serving the dialog sends BYE to the caller; `by_route`: the caller's proxy
    /// is named by a second Route entry instead of the Request-URI.
    BackendBye { call: u8, by_route: bool },
    /// The caller answers that BYE with 200.
    CallerOk { call: u8 },
    /// Virtual time passes.
    Advance { ms: u32 },
    /// The backend's connection (established or being attempted) drops.
    Kill { backend: u8 },
    /// The backend's reconnection succeeds (waiting for the core's backoff first).
    Reconnect { backend: u8 },
    /// The operator drains or resumes a backend.
    Drain { backend: u8, on: bool },
    /// Something outside any call: garbage, unknown calls, pings, stale connections.
    Stray { kind: u8 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DialogMethod {
    Invite,
    Info,
    Bye,
    Ack,
}

impl DialogMethod {
    fn name(self) -> &'static str {
        match self {
            DialogMethod::Invite => "INVITE",
            DialogMethod::Info => "INFO",
            DialogMethod::Bye => "BYE",
            DialogMethod::Ack => "ACK",
        }
    }
}

/// Relative weights of the step kinds.
#[derive(Clone, Copy)]
struct Mix {
    /// Invite, Retransmit, Cancel, Answer, AckNon2xx, InDialog, BackendBye, CallerOk, Advance,
    /// Kill, Reconnect, Drain, Stray.
    weights: [u32; 13],
}

const CALLS: Mix = Mix {
    weights: [14, 7, 5, 16, 5, 14, 4, 4, 10, 5, 6, 2, 2],
};
const CROWDED: Mix = Mix {
    weights: [30, 4, 4, 10, 3, 4, 1, 1, 8, 2, 3, 1, 3],
};
const CLOCKS: Mix = Mix {
    weights: [10, 5, 5, 8, 5, 4, 2, 2, 30, 8, 8, 2, 2],
};
const NOISY: Mix = Mix {
    weights: [10, 4, 4, 8, 3, 8, 3, 3, 6, 3, 4, 1, 25],
};

fn pick(g: &mut Gen, n: u32) -> u32 {
    u32::arbitrary(g) % n.max(1)
}

fn gen_step(g: &mut Gen, mix: &Mix) -> Step {
    let total: u32 = mix.weights.iter().sum();
    let mut roll = pick(g, total);
    let mut kind = 0;
    for (i, w) in mix.weights.iter().enumerate() {
        if roll < *w {
            kind = i;
            break;
        }
        roll -= w;
    }
    let call = u8::arbitrary(g);
    let backend = pick(g, 4) as u8;
    match kind {
        0 => Step::Invite {
            fe: pick(g, FRONTENDS as u32) as u8,
        },
        1 => Step::Retransmit { call },
        2 => Step::Cancel {
            call,
            answer: bool::arbitrary(g),
        },
        3 => Step::Answer {
            call,
            who: pick(g, 3) as u8,
            status: *g.choose(&[180, 200, 200, 486]).unwrap(),
        },
        4 => Step::AckNon2xx { call },
        5 => Step::InDialog {
            call,
            method: *g
                .choose(&[
                    DialogMethod::Invite,
                    DialogMethod::Info,
                    DialogMethod::Bye,
                    DialogMethod::Ack,
                ])
                .unwrap(),
            answer: bool::arbitrary(g),
            route: pick(g, 4) as u8,
        },
        6 => Step::BackendBye {
            call,
            by_route: bool::arbitrary(g),
        },
        7 => Step::CallerOk { call },
        8 => {
            let w = WINDOW.as_millis() as u32;
            let r = RINGING_MAX.as_millis() as u32;
            let ms = match pick(g, 7) {
                0 => 1 + pick(g, 999),
                1 => 1_000 + pick(g, 9_000),
                // Around the new-call window: 32 s ± 1.5 s.
                2 => w - 1_500 + pick(g, 3_000),
                3 => 1_000 + pick(g, 25_000),
                4 => 60_000 + pick(g, 140_000),
                // Days: the table's millisecond clock rebases past 2^31 ms (~24.9 days).
                5 if pick(g, 4) == 0 => 86_400_000 * (1 + pick(g, 25)),
                // Around the ringing cap: Timer C + window ± 2 s.
                _ => r + w - 2_000 + pick(g, 4_000),
            };
            Step::Advance { ms }
        }
        9 => Step::Kill { backend },
        10 => Step::Reconnect { backend },
        11 => Step::Drain {
            backend,
            on: bool::arbitrary(g),
        },
        _ => Step::Stray {
            kind: pick(g, STRAY_KINDS) as u8,
        },
    }
}

impl Arbitrary for Step {
    fn arbitrary(g: &mut Gen) -> Step {
        gen_step(g, &CALLS)
    }

    /// Towards smaller selectors, shorter waits, fewer answers: each a simpler script that may
    /// still fail.
    fn shrink(&self) -> Box<dyn Iterator<Item = Step>> {
        let mut out = Vec::new();
        let smaller = |x: u8| -> Vec<u8> { (0..x.min(4)).collect() };
        match self.clone() {
            Step::Advance { ms } => {
                return Box::new(
                    ms.shrink()
                        .filter(|m| *m > 0)
                        .map(|ms| Step::Advance { ms }),
                )
            }
            Step::Invite { fe } => {
                out.extend(smaller(fe).into_iter().map(|fe| Step::Invite { fe }))
            }
            Step::Retransmit { call } => out.extend(
                smaller(call)
                    .into_iter()
                    .map(|call| Step::Retransmit { call }),
            ),
            Step::Cancel { call, answer } => {
                if answer {
                    out.push(Step::Cancel {
                        call,
                        answer: false,
                    });
                }
                out.extend(
                    smaller(call)
                        .into_iter()
                        .map(|call| Step::Cancel { call, answer }),
                );
            }
            Step::Answer { call, who, status } => {
                out.extend(
                    smaller(who)
                        .into_iter()
                        .map(|who| Step::Answer { call, who, status }),
                );
                out.extend(smaller(call).into_iter().map(|call| Step::Answer {
                    call,
                    who,
                    status,
                }));
            }
            Step::AckNon2xx { call } => out.extend(
                smaller(call)
                    .into_iter()
                    .map(|call| Step::AckNon2xx { call }),
            ),
            Step::InDialog {
                call,
                method,
                answer,
                route,
            } => {
                if answer {
                    out.push(Step::InDialog {
                        call,
                        method,
                        answer: false,
                        route,
                    });
                }
                if route > 0 {
                    out.push(Step::InDialog {
                        call,
                        method,
                        answer,
                        route: 0,
                    });
                }
                out.extend(smaller(call).into_iter().map(|call| Step::InDialog {
                    call,
                    method,
                    answer,
                    route,
                }));
            }
            Step::BackendBye { call, by_route } => {
                if by_route {
                    out.push(Step::BackendBye {
                        call,
                        by_route: false,
                    });
                }
                out.extend(
                    smaller(call)
                        .into_iter()
                        .map(|call| Step::BackendBye { call, by_route }),
                );
            }
            Step::CallerOk { call } => out.extend(
                smaller(call)
                    .into_iter()
                    .map(|call| Step::CallerOk { call }),
            ),
            Step::Kill { backend } => out.extend(
                smaller(backend)
                    .into_iter()
                    .map(|backend| Step::Kill { backend }),
            ),
            Step::Reconnect { backend } => out.extend(
                smaller(backend)
                    .into_iter()
                    .map(|backend| Step::Reconnect { backend }),
            ),
            Step::Drain { .. } | Step::Stray { .. } => {}
        }
        Box::new(out.into_iter())
    }
}

/// A seed, the farm, and the steps.
#[derive(Clone)]
struct Script {
    seed: u64,
    /// 2..=4 backends.
    backends: u8,
    /// Bit `i`: backend `i` speaks the envelope.
    envelope: u8,
    /// 0 round robin, 1 weighted, 2 least loaded.
    algorithm: u8,
    /// Backend 0 has the last backend as its configured backup.
    backup: bool,
    /// The tag also travels in an `X-LB-Tag` header.
    tag_header: bool,
    steps: Vec<Step>,
}

impl fmt::Debug for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Script {{ seed: {}, backends: {}, envelope: {:#06b}, algorithm: {}, backup: {}, \
             tag_header: {}, steps: [",
            self.seed, self.backends, self.envelope, self.algorithm, self.backup, self.tag_header
        )?;
        for (i, s) in self.steps.iter().enumerate() {
            writeln!(f, "  {i:3}: {s:?}")?;
        }
        write!(f, "] }}")
    }
}

fn gen_script(g: &mut Gen, mix: &Mix) -> Script {
    let len = pick(g, (g.size() as u32) * 3 / 2 + 1) as usize;
    Script {
        seed: u64::arbitrary(g),
        backends: 2 + pick(g, 3) as u8,
        envelope: if bool::arbitrary(g) {
            0
        } else {
            u8::arbitrary(g) & 0xf
        },
        algorithm: pick(g, 3) as u8,
        backup: pick(g, 4) == 0,
        tag_header: pick(g, 4) == 0,
        steps: (0..len).map(|_| gen_step(g, mix)).collect(),
    }
}

impl Arbitrary for Script {
    fn arbitrary(g: &mut Gen) -> Script {
        gen_script(g, &CALLS)
    }

    fn shrink(&self) -> Box<dyn Iterator<Item = Script>> {
        let mut simpler = Vec::new();
        if self.envelope != 0 {
            simpler.push(Script {
                envelope: 0,
                ..self.clone()
            });
        }
        if self.algorithm != 0 {
            simpler.push(Script {
                algorithm: 0,
                ..self.clone()
            });
        }
        if self.backup {
            simpler.push(Script {
                backup: false,
                ..self.clone()
            });
        }
        if self.tag_header {
            simpler.push(Script {
                tag_header: false,
                ..self.clone()
            });
        }
        if self.backends > 2 {
            simpler.push(Script {
                backends: self.backends - 1,
                ..self.clone()
            });
        }
        if self.seed != 0 {
            simpler.push(Script {
                seed: 0,
                ..self.clone()
            });
        }
        let base = self.clone();
        let steps = self.steps.shrink().map(move |steps| Script {
            steps,
            ..base.clone()
        });
        Box::new(simpler.into_iter().chain(steps))
    }
}

/// Scripts with many new calls, for a table of capacity 8.
#[derive(Clone, Debug)]
struct Crowded(Script);
/// Scripts heavy on time and backend failures.
#[derive(Clone, Debug)]
struct Clocks(Script);
/// Scripts with many messages outside any call.
#[derive(Clone, Debug)]
struct Noisy(Script);

macro_rules! script_newtype {
    ($name:ident, $mix:expr) => {
        impl Arbitrary for $name {
            fn arbitrary(g: &mut Gen) -> $name {
                $name(gen_script(g, &$mix))
            }

            fn shrink(&self) -> Box<dyn Iterator<Item = $name>> {
                Box::new(self.0.shrink().map($name))
            }
        }
    };
}
script_newtype!(Crowded, CROWDED);
script_newtype!(Clocks, CLOCKS);
script_newtype!(Noisy, NOISY);

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

// ----- the world around the balancer -----

/// A small deterministic generator for the driver's own choices (how bytes are split into
/// reads, whether an envelope names the hop), seeded by the script.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct BackendSlot {
    /// The connection the core asked for last (established or being attempted).
    conn: Option<ConnId>,
    up: bool,
    draining: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Calling,
    Final { at: Instant, ok: bool },
}

#[derive(Clone, Debug)]
struct Call {
    fe: usize,
    call_id: String,
    /// The backend the new-call table names: the one that took the call, or the backup that
    /// took it over while that one was down.
    home: usize,
    /// The INVITE as the caller sends it, for retransmissions.
    invite: String,
    started: Instant,
    /// The INVITE copies backends received (a retransmission may reach a backup).
    copies: Vec<(usize, String)>,
    phase: Phase,
    /// The Record-Route the caller got in the 200 and the backend its tag names.
    dialog: Option<(String, usize)>,
    cseq: u32,
    /// A backend's BYE as the caller received it, and the backend that sent it.
    bye: Option<(String, usize)>,
}

/// What the balancer did with one message.
enum Fate {
    Backend(usize, String),
    Frontend(ConnId, String),
    Nothing,
}

struct World {
    lb: Balancer,
    /// The driver's view of every connection, checking each output.
    contract: Contract,
    now: Instant,
    rng: SplitMix,
    options: Options,
    tag_header: bool,
    addrs: Vec<SocketAddr>,
    modes: Vec<BackendMode>,
    backup_of: Vec<Option<usize>>,
    be: Vec<BackendSlot>,
    fes: Vec<ConnId>,
    stray: ConnId,
    /// `None`: never invited; `Some(None)`: refused with 503.
    calls: Vec<Option<Option<Call>>>,
    /// Per call: the backups chosen so far, with the set of backends up at the time.
    backups: Vec<Vec<(u32, usize)>>,
    /// Connections that have ended, for stale inputs.
    dead: Vec<ConnId>,
    strays: u32,
    sends: u64,
}

fn fe_peer(f: usize) -> SocketAddr {
    format!("203.0.113.{}:{}", f + 1, 40_000 + f)
        .parse()
        .unwrap()
}

/// The frontends write their Via three ways: a host name with `rport` (the balancer stamps
/// `received` and the port), their IP and listening port (nothing stamped: found by alias),
/// their IP and source port with `rport` in the middle.
fn fe_via(f: usize, branch: &str) -> String {
    let peer = fe_peer(f);
    match f % 3 {
        0 => format!("Via: SIP/2.0/TCP fe{f}.example.net:5060;branch={branch};rport"),
        1 => format!("Via: SIP/2.0/TCP {}:5060;branch={branch}", peer.ip()),
        _ => format!(
            "Via: SIP/2.0/TCP {}:{};rport;branch={branch}",
            peer.ip(),
            peer.port()
        ),
    }
}

/// Frontend 0 writes the compact header forms (RFC 3261 §7.3.3), the others the long ones.
fn dialect(f: usize, message: String) -> String {
    if !f.is_multiple_of(3) {
        return message;
    }
    let mut out = message;
    for (long, short) in [
        ("\r\nVia: ", "\r\nv: "),
        ("\r\nFrom: ", "\r\nf: "),
        ("\r\nTo: ", "\r\nt: "),
        ("\r\nCall-ID: ", "\r\ni: "),
        ("\r\nContent-Length: ", "\r\nl: "),
    ] {
        out = out.replace(long, short);
    }
    out
}

/// The first Via line, in either form.
fn config(script: &Script, options: Options) -> Config {
    let n = usize::from(script.backends.clamp(2, 4));
    let mut backends: Vec<BackendConfig> = (0..n)
        .map(|i| BackendConfig {
            mode: if script.envelope & (1 << i) != 0 {
                BackendMode::Envelope
            } else {
                BackendMode::Plain
            },
            weight: [1, 2, 3, 1][i],
            ..BackendConfig::plain(format!("198.51.100.{}:5060", i + 1).parse().unwrap())
        })
        .collect();
    if script.backup {
        backends[0].backup = Some(backends[n - 1].addr);
    }
    Config {
        listeners: vec![LB.parse().unwrap()],
        backends,
        algorithm: match script.algorithm % 3 {
            0 => Algorithm::RoundRobin,
            1 => Algorithm::Weighted,
            _ => Algorithm::LeastLoaded,
        },
        window: WINDOW,
        ringing_max: RINGING_MAX,
        tag_header: script.tag_header.then(|| TAG_HEADER.to_string()),
        tag_keys: vec![TagKey {
            id: 1,
            secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        }],
        limits: Limits {
            table_capacity: options.table_capacity,
            ..Limits::default()
        },
        // The scripts model routing, not idle connections: frontends here may stay silent for
        // days of virtual time. Idle closing has its own scenario tests.
        idle_timeout: std::time::Duration::from_secs(365 * 24 * 3600),
        // The model's backends leave INVITEs unanswered at will, and it judges "up" by
        // connection and probes; passive health has its own tests.
        passive: lb_core::PassiveHealth {
            unanswered_timeout: std::time::Duration::ZERO,
            ..lb_core::PassiveHealth::default()
        },
        ..Config::default()
    }
}

/// Runs a script; returns the final counters and how many times a rendezvous backup was
/// chosen, for the coverage test.
fn run(script: &Script, options: Options) -> Result<(Stats, usize), String> {
    let mut w = World::new(script, options)?;
    for (i, step) in script.steps.iter().enumerate() {
        w.step(step)
            .and_then(|()| w.invariants())
            .map_err(|e| format!("step {i} {step:?}: {e}"))?;
        if options.early_timeouts {
            w.early_timeout()
                .map_err(|e| format!("early timeout after step {i} {step:?}: {e}"))?;
        }
    }
    if options.fill_table {
        w.fill_table()
            .map_err(|e| format!("filling the table: {e}"))?;
    }
    // Once every rule has run out, the table is empty.
    w.advance(RINGING_MAX + WINDOW + Duration::from_secs(1))
        .and_then(|()| w.invariants())
        .map_err(|e| format!("final advance: {e}"))?;
    let len = w.lb.stats().table_len;
    ensure!(
        len == 0,
        "{len} table entries left after every lifetime ran out"
    );
    Ok((w.lb.stats().clone(), w.backups.iter().map(Vec::len).sum()))
}

impl World {
    fn new(script: &Script, options: Options) -> Result<World, String> {
        let config = config(script, options);
        let n = config.backends.len();
        let addrs: Vec<SocketAddr> = config.backends.iter().map(|b| b.addr).collect();
        let modes = config.backends.iter().map(|b| b.mode).collect();
        let backup_of = config
            .backends
            .iter()
            .map(|b| b.backup.and_then(|a| addrs.iter().position(|x| *x == a)))
            .collect();
        let now = Instant::now();
        let valid = config.validate().map_err(|e| e.to_string())?;
        let mut contract = Contract::new(&valid);
        let mut lb = Balancer::new(valid, script.seed, now);
        let listener = lb.listeners().next().unwrap().0;
        let mut fes = Vec::new();
        for f in 0..FRONTENDS {
            let conn = lb.accept(now, listener, fe_peer(f));
            contract.accepted(conn, fe_peer(f))?;
            fes.push(conn);
        }
        let stray = lb.accept(now, listener, STRAY_PEER.parse().unwrap());
        contract.accepted(stray, STRAY_PEER.parse().unwrap())?;
        let mut w = World {
            lb,
            contract,
            now,
            rng: SplitMix(script.seed ^ 0x5EED),
            options,
            tag_header: script.tag_header,
            addrs,
            modes,
            backup_of,
            be: vec![BackendSlot::default(); n],
            fes,
            stray,
            calls: Vec::new(),
            backups: Vec::new(),
            dead: Vec::new(),
            strays: 0,
            sends: 0,
        };
        let outs = w.collect()?;
        ensure!(outs.sends.is_empty(), "sends at start: {:?}", outs.sends);
        for j in 0..n {
            ensure!(
                w.be[j].conn.is_some(),
                "no Connect for backend {j} at start"
            );
            w.connected(j)?;
        }
        w.invariants()?;
        Ok(w)
    }

    fn n(&self) -> usize {
        self.be.len()
    }

    fn up_mask(&self) -> u32 {
        (0..self.n())
            .filter(|j| self.be[*j].up)
            .fold(0, |m, j| m | 1 << j)
    }

    fn id(&self, j: usize) -> BackendId {
        self.lb.backends().nth(j).unwrap().0
    }

    fn backend_of(&self, conn: ConnId) -> Option<usize> {
        self.be.iter().position(|b| b.conn == Some(conn))
    }

    fn input(&mut self, input: Input) {
        self.contract.input(&input);
        self.lb.handle_input(self.now, input);
    }

    /// Drains the outputs like a driver: records Connects, performs Closes (reporting them
    /// back), counts Sends.
    fn collect(&mut self) -> Result<Outs, String> {
        let mut outs = Outs::default();
        let mut closes = Vec::new();
        let mut dials: Vec<ConnId> = Vec::new();
        while let Some(o) = self.lb.poll_output() {
            self.contract.output(&o)?;
            match o {
                Output::Send { conn, bytes } => {
                    self.sends += 1;
                    outs.sends.push((conn, bytes));
                }
                Output::Connect { conn, backend, to } => {
                    let j = backend.index();
                    ensure!(j < self.n(), "Connect for unknown backend {j}");
                    ensure!(to == self.addrs[j], "Connect for backend {j} to {to}");
                    ensure!(
                        self.be[j].conn.is_none(),
                        "Connect for backend {j} while {:?} is still open",
                        self.be[j].conn
                    );
                    self.be[j].conn = Some(conn);
                    self.be[j].up = false;
                }
                Output::Resolve { host, .. } => {
                    return Err(format!(
                        "resolving {host:?}: the model names hops by address"
                    ));
                }
                Output::Dial { conn, to } => {
                    ensure!(
                        to.ip().to_string() == "192.0.2.77",
                        "dialled {to}, which no message named as a next hop"
                    );
                    dials.push(conn);
                }
                Output::Close { conn } => closes.push(conn),
                Output::Event(e) => outs.events.push(e),
            }
        }
        // The model's network reaches no host but its own peers: every dial-out is refused.
        for conn in dials {
            self.input(Input::Closed {
                conn,
                reason: CloseReason::Error,
            });
            let more = self.collect()?;
            outs.sends.extend(more.sends);
            outs.events.extend(more.events);
        }
        for conn in closes {
            ensure!(
                conn == self.stray,
                "the core closed {conn:?}, which only ever carried valid SIP"
            );
            self.input(Input::Closed {
                conn,
                reason: CloseReason::Requested,
            });
            self.dead.push(conn);
            let listener = self.lb.listeners().next().unwrap().0;
            self.stray = self
                .lb
                .accept(self.now, listener, STRAY_PEER.parse().unwrap());
            self.contract
                .accepted(self.stray, STRAY_PEER.parse().unwrap())?;
            let more = self.collect()?;
            outs.sends.extend(more.sends);
            outs.events.extend(more.events);
        }
        Ok(outs)
    }

    fn connected(&mut self, j: usize) -> Result<(), String> {
        let conn = self.be[j].conn.unwrap();
        self.input(Input::Connected { conn });
        self.be[j].up = true;
        let outs = self.collect()?;
        ensure!(outs.sends.is_empty(), "sends on connect: {:?}", outs.sends);
        ensure!(
            outs.events.contains(&Event::BackendUp(self.id(j))),
            "no BackendUp({j}): {:?}",
            outs.events
        );
        Ok(())
    }

    /// Feeds bytes as the driver would read them: in one to three pieces. Nothing may come out
    /// before the last piece completes the message.
    fn feed(&mut self, conn: ConnId, bytes: &[u8]) -> Result<Outs, String> {
        let mut cuts = Vec::new();
        if bytes.len() > 2 {
            for _ in 0..self.rng.below(3) {
                cuts.push(1 + self.rng.below(bytes.len() as u64 - 1) as usize);
            }
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut start = 0;
        for cut in cuts {
            self.input(Input::Received {
                conn,
                bytes: BytesMut::from(&bytes[start..cut]),
            });
            start = cut;
            let early = self.collect()?;
            ensure!(
                early.sends.is_empty(),
                "output before the message was complete: {:?}",
                early.sends
            );
        }
        self.input(Input::Received {
            conn,
            bytes: BytesMut::from(&bytes[start..]),
        });
        self.collect()
    }

    /// A backend sends `message`; an envelope backend names the hop `hop` or, at random,
    /// leaves it to the balancer.
    fn backend_sends(
        &mut self,
        j: usize,
        message: &str,
        hop: Option<SocketAddr>,
    ) -> Result<Outs, String> {
        let conn = self.be[j].conn.unwrap();
        match self.modes[j] {
            BackendMode::Plain => self.feed(conn, message.as_bytes()),
            BackendMode::Envelope => {
                let addr = hop.filter(|_| self.rng.below(2) == 0);
                let load = u32::try_from(self.rng.below(20)).ok();
                let mut out = BytesMut::new();
                let env = Envelope {
                    addr,
                    transport: Transport::Tcp,
                    load,
                };
                envelope::encode(&mut out, &env, message.as_bytes());
                self.feed(conn, &out)
            }
        }
    }

    /// Where the one message went: a backend (unwrapped; an envelope must carry `source`), a
    /// frontend, or nowhere.
    fn fate(&self, outs: &Outs, source: Option<SocketAddr>) -> Result<Fate, String> {
        ensure!(
            outs.sends.len() <= 1,
            "one message in, {} out: {:?}",
            outs.sends.len(),
            outs.sends
        );
        let Some((conn, bytes)) = outs.sends.first() else {
            return Ok(Fate::Nothing);
        };
        let Some(j) = self.backend_of(*conn) else {
            return Ok(Fate::Frontend(*conn, text(bytes)));
        };
        ensure!(self.be[j].up, "sent to backend {j}, which is not up");
        match self.modes[j] {
            BackendMode::Plain => Ok(Fate::Backend(j, text(bytes))),
            BackendMode::Envelope => {
                let mut d = EnvelopeDecoder::default();
                d.push(BytesMut::from(&bytes[..]));
                let (env, payload) = match d.next_envelope(1 << 20) {
                    Some(Ok(x)) => x,
                    other => return Err(format!("not an envelope: {other:?}")),
                };
                ensure!(
                    d.next_envelope(1 << 20).is_none(),
                    "more than one envelope in one send"
                );
                if let Some(peer) = source {
                    ensure!(
                        env.addr == Some(peer),
                        "envelope names {:?}, not the frontend {peer}",
                        env.addr
                    );
                }
                Ok(Fate::Backend(j, text(&payload)))
            }
        }
    }

    /// The routing rule: `got` is where a message naming backend `named` went.
    fn check_route(
        &mut self,
        k: usize,
        named: usize,
        got: Option<usize>,
        what: &str,
    ) -> Result<(), String> {
        let up = self.up_mask();
        if self.be[named].up {
            ensure!(
                got == Some(named),
                "{what} of call {k} names backend {named}, which is up, but went to {got:?}"
            );
            return Ok(());
        }
        if let Some(b) = self.backup_of[named].filter(|b| self.be[*b].up) {
            ensure!(
                got == Some(b),
                "{what} of call {k}: backend {named} is down, its configured backup {b} is up, \
                 but it went to {got:?}"
            );
            return Ok(());
        }
        if up == 0 {
            ensure!(
                got.is_none(),
                "{what} of call {k} went to {got:?} with no backend up"
            );
            return Ok(());
        }
        let Some(g) = got else {
            return Err(format!(
                "{what} of call {k} (backend {named} down) went nowhere though backends \
                 {up:#b} are up"
            ));
        };
        ensure!(
            g != named,
            "{what} of call {k} went to down backend {named}"
        );
        for &(before, chosen) in &self.backups[k] {
            // One preference order per Call-ID: if either choice was available to the other,
            // they agree.
            ensure!(
                !(up & (1 << chosen) != 0 && before & (1 << g) != 0 && chosen != g),
                "{what} of call {k}: backup {g} with backends {up:#b} up, but backup {chosen} \
                 with {before:#b} up before"
            );
        }
        self.backups[k].push((up, g));
        Ok(())
    }

    /// Everything a backend sends for call `k` reaches the call's frontend connection, once.
    fn expect_at_caller(&self, k: usize, outs: &Outs, starts: &str) -> Result<String, String> {
        let call = self.live(k).unwrap();
        match self.fate(outs, None)? {
            Fate::Frontend(conn, msg) => {
                ensure!(
                    conn == self.fes[call.fe],
                    "message for call {k} went to {conn:?}, not its frontend {:?}",
                    self.fes[call.fe]
                );
                ensure!(
                    msg.starts_with(starts),
                    "expected {starts:?} at the caller, got {msg:?}"
                );
                Ok(msg)
            }
            Fate::Backend(j, msg) => Err(format!(
                "message for the caller of call {k} went to backend {j}: {msg:?}"
            )),
            Fate::Nothing => Err(format!(
                "message for the caller of call {k} went nowhere: {:?}",
                outs.events
            )),
        }
    }

    fn live(&self, k: usize) -> Option<&Call> {
        self.calls
            .get(k)
            .and_then(|c| c.as_ref())
            .and_then(|c| c.as_ref())
    }

    fn live_mut(&mut self, k: usize) -> Option<&mut Call> {
        self.calls
            .get_mut(k)
            .and_then(|c| c.as_mut())
            .and_then(|c| c.as_mut())
    }

    /// The `sel`-th (modulo) of the calls a step applies to now.
    fn select(&self, sel: u8, applies: Applies) -> Option<usize> {
        let now = self.now;
        let fits: Vec<usize> = (0..self.calls.len())
            .filter(|k| {
                let Some(c) = self.live(*k) else { return false };
                match applies {
                    Applies::Retransmit => c.phase == Phase::Calling && now - c.started < WINDOW,
                    Applies::Cancel => c.phase == Phase::Calling && now - c.started < RINGING_MAX,
                    Applies::Answer => {
                        c.phase == Phase::Calling && c.copies.iter().any(|(j, _)| self.be[*j].up)
                    }
                    Applies::AckNon2xx => match c.phase {
                        Phase::Final { at, ok: false } => {
                            now - at < WINDOW && now - c.started < RINGING_MAX + WINDOW
                        }
                        _ => false,
                    },
                    Applies::InDialog => c.dialog.is_some(),
                    Applies::BackendBye => {
                        c.bye.is_none()
                            && c.dialog
                                .as_ref()
                                .is_some_and(|(_, t)| self.serving(*k, *t).is_some())
                    }
                    Applies::CallerOk => c.bye.is_some(),
                }
            })
            .collect();
        if fits.is_empty() {
            return None;
        }
        Some(fits[usize::from(sel) % fits.len()])
    }

    // ----- steps -----

    fn step(&mut self, step: &Step) -> Result<(), String> {
        match *step {
            Step::Invite { fe } => self.invite(self.calls.len(), usize::from(fe) % FRONTENDS),
            Step::Retransmit { call } => match self.select(call, Applies::Retransmit) {
                Some(k) => self.retransmit(k),
                None => Ok(()),
            },
            Step::Cancel { call, answer } => match self.select(call, Applies::Cancel) {
                Some(k) => self.cancel(k, answer),
                None => Ok(()),
            },
            Step::Answer { call, who, status } => match self.select(call, Applies::Answer) {
                Some(k) => self.answer(k, usize::from(who), status),
                None => Ok(()),
            },
            Step::AckNon2xx { call } => match self.select(call, Applies::AckNon2xx) {
                Some(k) => self.ack_non_2xx(k),
                None => Ok(()),
            },
            Step::InDialog {
                call,
                method,
                answer,
                route,
            } => match self.select(call, Applies::InDialog) {
                Some(k) => self.in_dialog(k, method, answer, route),
                None => Ok(()),
            },
            Step::BackendBye { call, by_route } => match self.select(call, Applies::BackendBye) {
                Some(k) => self.backend_bye(k, by_route),
                None => Ok(()),
            },
            Step::CallerOk { call } => match self.select(call, Applies::CallerOk) {
                Some(k) => self.caller_ok(k),
                None => Ok(()),
            },
            Step::Advance { ms } => self.advance(Duration::from_millis(u64::from(ms))),
            Step::Kill { backend } => self.kill(usize::from(backend) % self.n()),
            Step::Reconnect { backend } => self.reconnect(usize::from(backend) % self.n()),
            Step::Drain { backend, on } => self.drain(usize::from(backend) % self.n(), on),
            Step::Stray { kind } => self.stray(kind),
        }
    }

    fn invite(&mut self, k: usize, f: usize) -> Result<(), String> {
        if self.calls.len() <= k {
            self.calls.resize(k + 1, None);
            self.backups.resize(k + 1, Vec::new());
        }
        let call_id = format!("call-{k}@siplb.test");
        let peer = fe_peer(f);
        let invite = dialect(
            f,
            format!(
                "INVITE sip:bob@example.com SIP/2.0\r\n\
             {}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=a{k}\r\n\
             To: <sip:bob@example.com>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:alice@{}:5060;transport=tcp>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: 4\r\n\r\nv=0\n",
                fe_via(f, &format!("z9hG4bKi{k}")),
                peer.ip()
            ),
        );
        let available = (0..self.n()).any(|j| self.be[j].up && !self.be[j].draining);
        let full = self.lb.stats().table_len >= self.options.table_capacity as u64;
        let outs = self.feed(self.fes[f], invite.as_bytes())?;
        match self.fate(&outs, Some(peer))? {
            Fate::Backend(j, msg) => {
                ensure!(
                    available && !full,
                    "new call {k} forwarded to {j} (available: {available}, table full: {full})"
                );
                ensure!(
                    !self.be[j].draining,
                    "new call {k} given to draining backend {j}"
                );
                check_copy(&msg, j, &call_id, self.tag_header)?;
                let mut vias = msg
                    .lines()
                    .filter(|l| l.starts_with("Via:") || l.starts_with("v:"));
                let own = vias.next().unwrap_or_default();
                ensure!(
                    own.starts_with(&format!("Via: SIP/2.0/TCP {LB};branch=z9hG4bK"))
                        && own.contains(";lbc="),
                    "the balancer's own Via is not on top: {own}"
                );
                let via = vias.next().unwrap_or_default();
                let (received, rport) = match f % 3 {
                    0 => (true, true),
                    1 => (false, false),
                    _ => (false, true),
                };
                ensure!(
                    via.contains(";received=") == received
                        && via.contains(&format!(";rport={}", peer.port())) == rport,
                    "Via from {peer} stamped wrongly: {via}"
                );
                self.calls[k] = Some(Some(Call {
                    fe: f,
                    call_id,
                    home: j,
                    invite,
                    started: self.now,
                    copies: vec![(j, msg)],
                    phase: Phase::Calling,
                    dialog: None,
                    cseq: 1,
                    bye: None,
                }));
            }
            Fate::Frontend(conn, msg) => {
                ensure!(
                    conn == self.fes[f],
                    "503 went to {conn:?}, not {:?}",
                    self.fes[f]
                );
                let reason = if available {
                    "Too Many Calls Being Set Up"
                } else {
                    "No Backend Available"
                };
                ensure!(
                    !available || full,
                    "new call {k} refused with a backend available and room: {msg:?}"
                );
                ensure!(
                    msg.starts_with(&format!("SIP/2.0 503 {reason}\r\n")),
                    "expected 503 {reason}, got {msg:?}"
                );
                self.calls[k] = Some(None);
            }
            Fate::Nothing => {
                return Err(format!("new call {k} got nothing: {:?}", outs.events));
            }
        }
        Ok(())
    }

    fn retransmit(&mut self, k: usize) -> Result<(), String> {
        let call = self.live(k).unwrap();
        let (f, home, invite, call_id) = (
            call.fe,
            call.home,
            call.invite.clone(),
            call.call_id.clone(),
        );
        // Sometimes two copies arrive in one read: both are handled, alike.
        let outs = if self.rng.below(4) == 0 {
            self.input(Input::Received {
                conn: self.fes[f],
                bytes: BytesMut::from(invite.repeat(2).as_bytes()),
            });
            let mut outs = self.collect()?;
            ensure!(
                outs.sends.len() == 2 && outs.sends[0] == outs.sends[1],
                "two identical INVITEs in one read gave {:?}",
                outs.sends
            );
            outs.sends.pop();
            outs
        } else {
            self.feed(self.fes[f], invite.as_bytes())?
        };
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, msg) => {
                self.check_route(k, home, Some(j), "retransmitted INVITE")?;
                // The new-call table follows a call set up on a backup.
                self.live_mut(k).unwrap().home = j;
                check_copy(&msg, j, &call_id, self.tag_header)?;
                self.live_mut(k).unwrap().copies.push((j, msg));
            }
            Fate::Frontend(conn, msg) => {
                self.check_refusal(k, conn, &msg)?;
                self.check_route(k, home, None, "retransmitted INVITE")?;
            }
            Fate::Nothing => return Err("retransmitted INVITE got nothing".into()),
        }
        Ok(())
    }

    /// A 503 for call `k` goes back to the caller.
    fn check_refusal(&self, k: usize, conn: ConnId, msg: &str) -> Result<(), String> {
        let fe = self.fes[self.live(k).unwrap().fe];
        ensure!(
            conn == fe,
            "reply for call {k} went to {conn:?}, not {fe:?}"
        );
        ensure!(
            msg.starts_with("SIP/2.0 503 No Backend Available\r\n"),
            "expected 503 No Backend Available, got {msg:?}"
        );
        Ok(())
    }

    fn cancel(&mut self, k: usize, answer: bool) -> Result<(), String> {
        let call = self.live(k).unwrap();
        let (f, home) = (call.fe, call.home);
        let cancel = format!(
            "CANCEL sip:bob@example.com SIP/2.0\r\n\
             {}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=a{k}\r\n\
             To: <sip:bob@example.com>\r\n\
             Call-ID: {}\r\n\
             CSeq: 1 CANCEL\r\n\
             Content-Length: 0\r\n\r\n",
            fe_via(f, &format!("z9hG4bKi{k}")),
            call.call_id
        );
        let outs = self.feed(self.fes[f], dialect(f, cancel).as_bytes())?;
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, msg) => {
                self.check_route(k, home, Some(j), "CANCEL")?;
                // The new-call table follows a call set up on a backup.
                self.live_mut(k).unwrap().home = j;
                if answer {
                    let outs =
                        self.backend_sends(j, &response_to(&msg, "200 OK"), Some(fe_peer(f)))?;
                    self.expect_at_caller(k, &outs, "SIP/2.0 200 OK")?;
                }
            }
            Fate::Frontend(conn, msg) => {
                self.check_refusal(k, conn, &msg)?;
                self.check_route(k, home, None, "CANCEL")?;
            }
            Fate::Nothing => return Err("CANCEL got nothing".into()),
        }
        Ok(())
    }

    fn answer(&mut self, k: usize, who: usize, status: u16) -> Result<(), String> {
        let call = self.live(k).unwrap();
        let up: Vec<&(usize, String)> =
            call.copies.iter().filter(|(j, _)| self.be[*j].up).collect();
        let (j, copy) = up[who % up.len()].clone();
        let f = call.fe;
        let reason = match status {
            180 => "180 Ringing",
            200 => "200 OK",
            _ => "486 Busy Here",
        };
        let outs = self.backend_sends(j, &response_to(&copy, reason), Some(fe_peer(f)))?;
        let msg = self.expect_at_caller(k, &outs, &format!("SIP/2.0 {reason}\r\n"))?;
        let now = self.now;
        let call = self.live_mut(k).unwrap();
        if status >= 200 {
            call.phase = Phase::Final {
                at: now,
                ok: status < 300,
            };
        }
        if status == 200 {
            let rr = msg
                .lines()
                .find(|l| l.starts_with("Record-Route:"))
                .ok_or_else(|| format!("200 without Record-Route at the caller: {msg:?}"))?;
            let tagged = lb_tag(rr).and_then(|t| tag_backend(&t));
            ensure!(
                tagged == Some(j),
                "the 200 from backend {j} carries a tag naming {tagged:?}"
            );
            call.dialog = Some((rr.to_string(), j));
        }
        Ok(())
    }

    fn ack_non_2xx(&mut self, k: usize) -> Result<(), String> {
        let call = self.live(k).unwrap();
        let (f, home) = (call.fe, call.home);
        let ack = format!(
            "ACK sip:bob@example.com SIP/2.0\r\n\
             {}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=a{k}\r\n\
             To: <sip:bob@example.com>;tag={CALLEE_TAG}\r\n\
             Call-ID: {}\r\n\
             CSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            fe_via(f, &format!("z9hG4bKi{k}")),
            call.call_id
        );
        let dropped = self.lb.stats().dropped;
        let outs = self.feed(self.fes[f], dialect(f, ack).as_bytes())?;
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, _) => {
                self.check_route(k, home, Some(j), "ACK of a non-2xx")?;
                self.live_mut(k).unwrap().home = j;
                Ok(())
            }
            Fate::Frontend(conn, msg) => Err(format!("an ACK was answered on {conn:?}: {msg:?}")),
            Fate::Nothing => {
                ensure!(
                    self.lb.stats().dropped == dropped + 1,
                    "ACK vanished uncounted"
                );
                self.check_route(k, home, None, "ACK of a non-2xx")
            }
        }
    }

    fn in_dialog(
        &mut self,
        k: usize,
        method: DialogMethod,
        answer: bool,
        route: u8,
    ) -> Result<(), String> {
        let Some(call) = self.live_mut(k) else {
            return Ok(());
        };
        let Some((rr, tagged)) = call.dialog.clone() else {
            return Ok(());
        };
        call.cseq += 1;
        let (f, cseq, call_id) = (call.fe, call.cseq, call.call_id.clone());
        let variant = if self.tag_header {
            route % 4
        } else {
            route % 3
        };
        let route = rr.replacen("Record-Route:", "Route:", 1);
        // The route set as the caller may write it: the balancer alone, the balancer then a
        // second proxy (one header or two), or (with the extension header) the tag alone.
        let routing = match variant {
            0 => route,
            1 => format!("{route}, <sip:proxy2.example.net;lr>"),
            2 => format!("{route}\r\nRoute: <sip:proxy2.example.net;lr>"),
            _ => format!("{TAG_HEADER}: {}", lb_tag(&rr).unwrap_or_default()),
        };
        let name = method.name();
        let request = format!(
            "{name} sip:bob@198.51.100.1:5060;transport=tcp SIP/2.0\r\n\
             {}\r\n\
             {routing}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:alice@example.com>;tag=a{k}\r\n\
             To: <sip:bob@example.com>;tag={CALLEE_TAG}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} {name}\r\n\
             Content-Length: 0\r\n\r\n",
            fe_via(f, &format!("z9hG4bKd{k}.{cseq}")),
            call_id
        );
        let outs = self.feed(self.fes[f], dialect(f, request).as_bytes())?;
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, msg) => {
                self.check_route(k, tagged, Some(j), name)?;
                let routes: Vec<&str> = msg.lines().filter(|l| l.starts_with("Route:")).collect();
                let rest: &[&str] = match variant {
                    1 | 2 => &["Route: <sip:proxy2.example.net;lr>"],
                    _ => &[],
                };
                ensure!(
                    routes == rest,
                    "the balancer's Route entry was not popped cleanly: {routes:?} left of \
                     {msg:?}"
                );
                if answer && method != DialogMethod::Ack {
                    let outs =
                        self.backend_sends(j, &response_to(&msg, "200 OK"), Some(fe_peer(f)))?;
                    self.expect_at_caller(k, &outs, "SIP/2.0 200 OK")?;
                }
                Ok(())
            }
            Fate::Frontend(conn, msg) => {
                ensure!(method != DialogMethod::Ack, "an ACK was answered: {msg:?}");
                self.check_refusal(k, conn, &msg)?;
                self.check_route(k, tagged, None, name)
            }
            Fate::Nothing => {
                ensure!(
                    method == DialogMethod::Ack,
                    "{name} got nothing: {:?}",
                    outs.events
                );
                self.check_route(k, tagged, None, name)
            }
        }
    }

    /// The backend serving a dialog named `tagged`: the one the routing rule gives, if known.
    fn serving(&self, k: usize, tagged: usize) -> Option<usize> {
        if self.be[tagged].up {
            return Some(tagged);
        }
        if let Some(b) = self.backup_of[tagged].filter(|b| self.be[*b].up) {
            return Some(b);
        }
        let up = self.up_mask();
        self.backups[k]
            .iter()
            .rev()
            .find(|(m, _)| *m == up)
            .map(|(_, b)| *b)
    }

    fn backend_bye(&mut self, k: usize, by_route: bool) -> Result<(), String> {
        let Some(call) = self.live(k).filter(|c| c.bye.is_none()) else {
            return Ok(());
        };
        let Some((rr, tagged)) = call.dialog.clone() else {
            return Ok(());
        };
        let Some(j) = self.serving(k, tagged) else {
            return Ok(());
        };
        let (f, cseq, call_id) = (call.fe, call.cseq + 100, call.call_id.clone());
        let route = rr.replacen("Record-Route:", "Route:", 1);
        // The next hop by the Request-URI (the caller's Contact), or by a second Route entry
        // naming the caller's proxy while the Request-URI names a host beyond it.
        let (target, routing) = if by_route {
            (
                "10.9.9.9".to_string(),
                format!("{route}, <sip:{}:5060;transport=tcp;lr>", fe_peer(f).ip()),
            )
        } else {
            (fe_peer(f).ip().to_string(), route)
        };
        let bye = format!(
            "BYE sip:alice@{target}:5060;transport=tcp SIP/2.0\r\n\
             Via: SIP/2.0/TCP 198.51.100.{}:5060;branch=z9hG4bKb{k}.{cseq}\r\n\
             {routing}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:bob@example.com>;tag={CALLEE_TAG}\r\n\
             To: <sip:alice@example.com>;tag=a{k}\r\n\
             Call-ID: {}\r\n\
             CSeq: {cseq} BYE\r\n\
             Content-Length: 0\r\n\r\n",
            j + 1,
            call_id
        );
        let outs = self.backend_sends(j, &bye, Some(fe_peer(f)))?;
        let msg = self.expect_at_caller(k, &outs, "BYE sip:alice@")?;
        let routes: Vec<&str> = msg.lines().filter(|l| l.starts_with("Route:")).collect();
        let rest = format!("Route: <sip:{}:5060;transport=tcp;lr>", fe_peer(f).ip());
        ensure!(
            routes
                == if by_route {
                    vec![rest.as_str()]
                } else {
                    vec![]
                },
            "the balancer's Route entry was not popped cleanly: {routes:?} left of {msg:?}"
        );
        let top = msg.lines().find(|l| l.starts_with("Via:")).unwrap_or("");
        let named = lb_tag(top).and_then(|t| tag_backend(&t));
        ensure!(
            named == Some(j),
            "the balancer's Via on a BYE from backend {j} names {named:?}: {top}"
        );
        ensure!(
            msg.matches("\r\nVia:").count() == 2,
            "expected the balancer's Via on top of the backend's: {msg:?}"
        );
        self.live_mut(k).unwrap().bye = Some((msg, j));
        Ok(())
    }

    fn caller_ok(&mut self, k: usize) -> Result<(), String> {
        let Some(call) = self.live_mut(k) else {
            return Ok(());
        };
        let Some((bye, sender)) = call.bye.take() else {
            return Ok(());
        };
        let f = call.fe;
        let dropped = self.lb.stats().dropped;
        let outs = self.feed(
            self.fes[f],
            dialect(f, response_to(&bye, "200 OK")).as_bytes(),
        )?;
        match self.fate(&outs, Some(fe_peer(f)))? {
            Fate::Backend(j, msg) => {
                self.check_route(k, sender, Some(j), "the caller's 200 to a BYE")?;
                ensure!(
                    msg.lines()
                        .filter(|l| l.starts_with("Via:") || l.starts_with("v:"))
                        .count()
                        == 1
                        && !msg.contains(";lb="),
                    "the balancer's Via was not stripped: {msg:?}"
                );
                Ok(())
            }
            Fate::Frontend(conn, msg) => {
                Err(format!("a response was answered on {conn:?}: {msg:?}"))
            }
            Fate::Nothing => {
                ensure!(
                    self.lb.stats().dropped == dropped + 1,
                    "a response vanished uncounted"
                );
                self.check_route(k, sender, None, "the caller's 200 to a BYE")
            }
        }
    }

    /// Moves time forward by `by`, feeding `Timeout` at every deadline on the way (sometimes a
    /// little late, as a real timer fires).
    fn advance(&mut self, by: Duration) -> Result<(), String> {
        self.advance_to(self.now + by)
    }

    fn advance_to(&mut self, target: Instant) -> Result<(), String> {
        let mut rounds = 0;
        while let Some(deadline) = self.lb.poll_timeout() {
            if deadline > target {
                break;
            }
            ensure!(deadline > self.now, "an overdue deadline was left behind");
            let late = Duration::from_micros(self.rng.below(4) * self.rng.below(3_000));
            self.now = (deadline + late).min(target);
            self.input(Input::Timeout);
            let outs = self.collect()?;
            ensure!(outs.sends.is_empty(), "a timeout sent {:?}", outs.sends);
            Contract::timed_out(self.now, self.lb.poll_timeout())?;
            rounds += 1;
            ensure!(rounds < 100_000, "deadlines without end");
        }
        self.now = self.now.max(target);
        self.input(Input::Timeout);
        Contract::timed_out(self.now, self.lb.poll_timeout())?;
        let outs = self.collect()?;
        ensure!(outs.sends.is_empty(), "a timeout sent {:?}", outs.sends);
        Ok(())
    }

    fn kill(&mut self, j: usize) -> Result<(), String> {
        let Some(conn) = self.be[j].conn.take() else {
            return Ok(());
        };
        let was_up = std::mem::replace(&mut self.be[j].up, false);
        self.input(Input::Closed {
            conn,
            reason: if was_up {
                CloseReason::PeerClosed
            } else {
                CloseReason::Error
            },
        });
        self.dead.push(conn);
        let outs = self.collect()?;
        ensure!(
            outs.sends.is_empty(),
            "a closed backend caused {:?}",
            outs.sends
        );
        ensure!(
            outs.events.contains(&Event::BackendDown(self.id(j))) == was_up,
            "BackendDown({j}) when it was up: {was_up}; events {:?}",
            outs.events
        );
        Ok(())
    }

    fn reconnect(&mut self, j: usize) -> Result<(), String> {
        if self.be[j].up {
            return Ok(());
        }
        let mut rounds = 0;
        while self.be[j].conn.is_none() {
            let Some(deadline) = self.lb.poll_timeout() else {
                return Err(format!("backend {j} is down and no reconnection is due"));
            };
            self.advance_to(deadline)?;
            rounds += 1;
            ensure!(rounds < 64, "backend {j} never got a Connect");
        }
        self.connected(j)
    }

    fn drain(&mut self, j: usize, on: bool) -> Result<(), String> {
        let id = self.id(j);
        self.input(Input::Backends(if on {
            BackendChange::Drain(id)
        } else {
            BackendChange::Resume(id)
        }));
        let changed = self.be[j].draining != on;
        self.be[j].draining = on;
        let outs = self.collect()?;
        ensure!(outs.sends.is_empty(), "draining sent {:?}", outs.sends);
        let event = Event::BackendDraining {
            backend: id,
            draining: on,
        };
        ensure!(
            outs.events.contains(&event) == changed,
            "draining {j} {on}: events {:?}",
            outs.events
        );
        Ok(())
    }

    fn stray(&mut self, kind: u8) -> Result<(), String> {
        self.strays += 1;
        let n = self.strays;
        let call_id = format!("stray-{n}@siplb.test");
        let peer: SocketAddr = STRAY_PEER.parse().unwrap();
        let via = format!("Via: SIP/2.0/TCP {peer};branch=z9hG4bKs{n}");
        let request = |method: &str, to_tag: &str, extra: &str| {
            format!(
                "{method} sip:bob@example.com SIP/2.0\r\n\
                 {via}\r\n\
                 {extra}\
                 Max-Forwards: 70\r\n\
                 From: <sip:carol@example.com>;tag=c{n}\r\n\
                 To: <sip:bob@example.com>{to_tag}\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: 1 {method}\r\n\
                 Content-Length: 0\r\n\r\n"
            )
        };
        let before = self.lb.stats().clone();
        let up = (0..self.n()).find(|j| self.be[*j].up);
        let stray = self.stray;
        match u32::from(kind) % STRAY_KINDS {
            0 => {
                let outs = self.feed(stray, request("CANCEL", "", "").as_bytes())?;
                self.expect_reply(&outs, stray, "SIP/2.0 481 ")
            }
            1 => {
                let outs = self.feed(stray, request("ACK", ";tag=x", "").as_bytes())?;
                self.expect_dropped(&outs, &before)
            }
            2 => {
                // A tag from another call does not verify: an in-dialog request with no valid
                // tag belongs to no backend, so it gets 481 and never a table entry.
                let tag = (0..self.calls.len())
                    .find_map(|k| self.live(k).and_then(|c| c.dialog.clone()))
                    .and_then(|(rr, _)| lb_tag(&rr))
                    .unwrap_or_else(|| "0.1.0123456789abcdef".into());
                let route = format!("Route: <sip:{LB};transport=tcp;lr;lb={tag}>\r\n");
                let outs = self.feed(stray, request("BYE", ";tag=x", &route).as_bytes())?;
                ensure!(
                    self.lb.stats().tag_failures == before.tag_failures + 1,
                    "a forged tag was not counted"
                );
                ensure!(
                    self.lb.stats().table_len <= before.table_len,
                    "a forged in-dialog request made a table entry"
                );
                self.expect_reply(&outs, stray, "SIP/2.0 481 ")
            }
            3 => {
                let bad =
                    request("OPTIONS", "", "").replace("CSeq: 1 OPTIONS", "CSeq: one OPTIONS");
                let outs = self.feed(stray, bad.as_bytes())?;
                self.expect_reply(&outs, stray, "SIP/2.0 400 ")?;
                ensure!(
                    self.lb.stats().malformed == before.malformed + 1,
                    "400 not counted as malformed"
                );
                Ok(())
            }
            4 => {
                let response = response_to(&request("OPTIONS", "", ""), "200 OK");
                let outs = self.feed(stray, response.as_bytes())?;
                self.expect_dropped(&outs, &before)
            }
            5 => {
                let outs = self.feed(
                    stray,
                    b"OPTIONS sip:x SIP/2.0\r\nContent-Length: banana\r\n\r\n",
                )?;
                ensure!(
                    outs.sends.is_empty(),
                    "lost framing answered: {:?}",
                    outs.sends
                );
                ensure!(
                    self.stray != stray,
                    "lost framing did not close the connection"
                );
                ensure!(
                    self.lb.stats().framing_errors == before.framing_errors + 1,
                    "framing error not counted"
                );
                Ok(())
            }
            6 => {
                let outs = self.feed(stray, b"\r\n\r\n")?;
                ensure!(
                    outs.sends.len() == 1
                        && outs.sends[0].0 == stray
                        && &outs.sends[0].1[..] == b"\r\n",
                    "ping not ponged: {:?}",
                    outs.sends
                );
                Ok(())
            }
            7 => {
                let Some(j) = up else { return Ok(()) };
                let response = response_to(
                    &request("OPTIONS", "", "")
                        .replace(&via, "Via: SIP/2.0/TCP 192.0.2.77:5060;branch=z9hG4bKu"),
                    "200 OK",
                );
                let outs = self.backend_sends(j, &response, None)?;
                self.expect_dropped(&outs, &before)
            }
            8 => {
                let Some(j) = up else { return Ok(()) };
                let outs =
                    self.backend_sends(j, "SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", None)?;
                self.expect_dropped(&outs, &before)?;
                ensure!(
                    self.lb.stats().malformed == before.malformed + 1,
                    "not counted as malformed"
                );
                Ok(())
            }
            9 => {
                // A backend's request for a frontend the balancer has no connection to: it dials
                // the Request-URI's address, the model's network refuses, and a 503 goes back.
                let Some(j) = up else { return Ok(()) };
                let bye = request("BYE", ";tag=x", "").replace(
                    "sip:bob@example.com SIP/2.0",
                    "sip:dave@192.0.2.77:5060 SIP/2.0",
                );
                let outs = self.backend_sends(j, &bye, None)?;
                match self.fate(&outs, None)? {
                    Fate::Backend(to, msg) => {
                        ensure!(to == j, "the 503 went to backend {to}, not {j}");
                        ensure!(msg.starts_with("SIP/2.0 503 "), "expected 503, got {msg:?}");
                        Ok(())
                    }
                    _ => Err("a backend's request with no route got no 503".into()),
                }
            }
            _ => {
                // Input naming a connection that has ended: counted, ignored.
                let Some(&dead) = self.dead.last() else {
                    return Ok(());
                };
                self.input(Input::Received {
                    conn: dead,
                    bytes: BytesMut::from(&b"OPTIONS"[..]),
                });
                self.input(Input::Connected { conn: dead });
                let outs = self.collect()?;
                ensure!(
                    outs.sends.is_empty(),
                    "a stale input caused {:?}",
                    outs.sends
                );
                ensure!(
                    self.lb.stats().stale_inputs == before.stale_inputs + 2,
                    "stale inputs not counted"
                );
                Ok(())
            }
        }
    }

    fn expect_reply(&self, outs: &Outs, conn: ConnId, starts: &str) -> Result<(), String> {
        match self.fate(outs, None)? {
            Fate::Frontend(to, msg) => {
                ensure!(to == conn, "reply went to {to:?}, not {conn:?}");
                ensure!(msg.starts_with(starts), "expected {starts:?}, got {msg:?}");
                Ok(())
            }
            Fate::Backend(j, msg) => Err(format!("expected {starts:?}, backend {j} got {msg:?}")),
            Fate::Nothing => Err(format!("expected {starts:?}, got nothing")),
        }
    }

    fn expect_dropped(&self, outs: &Outs, before: &Stats) -> Result<(), String> {
        ensure!(
            outs.sends.is_empty(),
            "expected a drop, got {:?}",
            outs.sends
        );
        ensure!(
            self.lb.stats().dropped == before.dropped + 1,
            "dropped {} → {}",
            before.dropped,
            self.lb.stats().dropped
        );
        ensure!(
            outs.events
                .iter()
                .any(|e| matches!(e, Event::Dropped { .. })),
            "no Dropped event: {:?}",
            outs.events
        );
        Ok(())
    }

    /// Fills the table to its capacity with new calls, then requires one more to get 503.
    fn fill_table(&mut self) -> Result<(), String> {
        for j in 0..self.n() {
            if self.be[j].draining {
                self.drain(j, false)?;
            }
        }
        if self.up_mask() == 0 {
            self.reconnect(0)?;
        }
        let capacity = self.options.table_capacity as u64;
        let mut k = self.calls.len().max(usize::from(u8::MAX) + 1);
        while self.lb.stats().table_len < capacity {
            let len = self.lb.stats().table_len;
            self.invite(k, k % FRONTENDS)?;
            ensure!(
                matches!(self.calls[k], Some(Some(_))),
                "call {k} refused at {len} of {capacity} entries"
            );
            ensure!(
                self.lb.stats().table_len == len + 1,
                "a new call made no entry"
            );
            k += 1;
        }
        self.invite(k, 0)?;
        ensure!(
            matches!(self.calls[k], Some(None)),
            "a new call was accepted into a full table"
        );
        ensure!(
            self.lb.stats().table_len == capacity,
            "table holds {} of {capacity}",
            self.lb.stats().table_len
        );
        self.invariants()
    }

    fn early_timeout(&mut self) -> Result<(), String> {
        let before = self.lb.stats().clone();
        let deadline = self.lb.poll_timeout();
        self.input(Input::Timeout);
        let outs = self.collect()?;
        ensure!(
            outs.sends.is_empty() && outs.events.is_empty(),
            "an early timeout did {outs:?}"
        );
        ensure!(
            *self.lb.stats() == before,
            "an early timeout changed the counters: {before} → {}",
            self.lb.stats()
        );
        ensure!(
            self.lb.poll_timeout() == deadline,
            "an early timeout moved the deadline"
        );
        Ok(())
    }

    /// What holds after every step.
    fn invariants(&self) -> Result<(), String> {
        let s = self.lb.stats();
        let messages_in = s.frontend_requests_in
            + s.frontend_responses_in
            + s.backend_requests_in
            + s.backend_responses_in
            + s.malformed;
        let outcomes = s.to_backend + s.to_frontend + s.replies() + s.dropped;
        ensure!(
            messages_in == outcomes,
            "{messages_in} messages in (malformed included), {outcomes} forwarded, answered or \
             dropped: {s}"
        );
        let counted = s.to_backend + s.to_frontend + s.replies() + s.keepalives;
        ensure!(
            self.sends == counted,
            "{} sends, {counted} counted: {s}",
            self.sends
        );
        ensure!(
            s.table_len <= self.options.table_capacity as u64
                && s.table_len_max <= self.options.table_capacity as u64,
            "table holds {} (max {}) of {}",
            s.table_len,
            s.table_len_max,
            self.options.table_capacity
        );
        ensure!(
            s.frontends_open == FRONTENDS as u64 + 1,
            "{} frontends open, {} expected",
            s.frontends_open,
            FRONTENDS + 1
        );
        for j in 0..self.n() {
            ensure!(
                self.lb.is_backend_up(self.id(j)) == self.be[j].up,
                "the core says backend {j} up: {}, the driver: {}",
                self.lb.is_backend_up(self.id(j)),
                self.be[j].up
            );
        }
        if let Some(d) = self.lb.poll_timeout() {
            ensure!(
                d > self.now,
                "a deadline is overdue without a Timeout being due"
            );
        }
        Ok(())
    }
}

const STRAY_KINDS: u32 = 11;

/// The step kinds that act on a call, for [`World::select`].
#[derive(Clone, Copy)]
enum Applies {
    Retransmit,
    Cancel,
    Answer,
    AckNon2xx,
    InDialog,
    BackendBye,
    CallerOk,
}

#[derive(Debug, Default)]
struct Outs {
    sends: Vec<(ConnId, Bytes)>,
    events: Vec<Event>,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An INVITE copy at backend `j`: its Record-Route tag names `j`, its Call-ID is the call's.
fn check_copy(msg: &str, j: usize, call_id: &str, tag_header: bool) -> Result<(), String> {
    let rr = msg
        .lines()
        .find(|l| l.starts_with("Record-Route:"))
        .ok_or_else(|| format!("INVITE without Record-Route at backend {j}: {msg:?}"))?;
    let rr_tag = lb_tag(rr).unwrap_or_default();
    ensure!(
        rr_tag.starts_with('b'),
        "the Record-Route a backend sees carries a frontend-facing tag: {rr}"
    );
    let tagged = tag_backend(&rr_tag);
    ensure!(
        tagged == Some(j),
        "INVITE at backend {j} with a tag naming {tagged:?}: {rr}"
    );
    ensure!(
        msg.contains(&format!("\r\nCall-ID: {call_id}\r\n"))
            || msg.contains(&format!("\r\ni: {call_id}\r\n")),
        "backend {j} got another call: {msg:?}"
    );
    let header = msg.lines().find_map(|l| {
        l.strip_prefix(TAG_HEADER)
            .and_then(|v| v.strip_prefix(": "))
    });
    if tag_header {
        ensure!(
            header.is_some_and(|h| !h.starts_with('b')) && header.and_then(tag_backend) == tagged,
            "the {TAG_HEADER} header {header:?} does not carry the Record-Route's tag: {msg:?}"
        );
    } else {
        ensure!(header.is_none(), "a {TAG_HEADER} header nobody configured");
    }
    Ok(())
}

/// The `lb` parameter of a Record-Route, Route or Via line.
fn lb_tag(line: &str) -> Option<String> {
    let start = line.find(";lb=")? + 4;
    let end = line[start..]
        .find(['>', ';', ',', ' '])
        .map_or(line.len(), |e| start + e);
    Some(line[start..end].to_string())
}

/// The backend a tag names (its first field, after the `b` of a backend-facing tag).
fn tag_backend(tag: &str) -> Option<usize> {
    let tag = tag.strip_prefix('b').unwrap_or(tag);
    tag.split('.').next()?.parse().ok()
}

/// A response to `request`: Via, From, To (with the callee's tag), Call-ID, CSeq and
/// Record-Route copied.
fn response_to(request: &str, status: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line.split(':').next().unwrap_or("");
        match name {
            "Via" | "v" | "From" | "f" | "Call-ID" | "i" | "CSeq" | "Record-Route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "To" | "t" => {
                out.push_str(line);
                if !line.contains("tag=") {
                    out.push_str(";tag=");
                    out.push_str(CALLEE_TAG);
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}
