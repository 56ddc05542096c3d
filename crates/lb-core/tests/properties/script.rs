//! The generated scripts: steps, their mixes and how they shrink.

use std::fmt;

use quickcheck::{Arbitrary, Gen};

use crate::{FRONTENDS, RINGING_MAX, STRAY_KINDS, WINDOW};

// ----- the script -----

/// One thing that happens. `call` picks (modulo) among the calls the step applies to when it
/// runs, in the order they were made; `backend`, `fe` and `who` are reduced modulo what exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
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
pub(crate) enum DialogMethod {
    Invite,
    Info,
    Bye,
    Ack,
}

impl DialogMethod {
    pub(crate) fn name(self) -> &'static str {
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
pub(crate) struct Mix {
    /// Invite, Retransmit, Cancel, Answer, AckNon2xx, InDialog, BackendBye, CallerOk, Advance,
    /// Kill, Reconnect, Drain, Stray.
    weights: [u32; 13],
}

pub(crate) const CALLS: Mix = Mix {
    weights: [14, 7, 5, 16, 5, 14, 4, 4, 10, 5, 6, 2, 2],
};
pub(crate) const CROWDED: Mix = Mix {
    weights: [30, 4, 4, 10, 3, 4, 1, 1, 8, 2, 3, 1, 3],
};
pub(crate) const CLOCKS: Mix = Mix {
    weights: [10, 5, 5, 8, 5, 4, 2, 2, 30, 8, 8, 2, 2],
};
pub(crate) const NOISY: Mix = Mix {
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
pub(crate) struct Script {
    pub(crate) seed: u64,
    /// 2..=4 backends.
    pub(crate) backends: u8,
    /// Bit `i`: backend `i` speaks the envelope.
    pub(crate) envelope: u8,
    /// 0 round robin, 1 weighted, 2 least loaded.
    pub(crate) algorithm: u8,
    /// Backend 0 has the last backend as its configured backup.
    pub(crate) backup: bool,
    /// The tag also travels in an `X-LB-Tag` header.
    pub(crate) tag_header: bool,
    pub(crate) steps: Vec<Step>,
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

pub(crate) fn gen_script(g: &mut Gen, mix: &Mix) -> Script {
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
pub(crate) struct Crowded(pub(crate) Script);
/// Scripts heavy on time and backend failures.
#[derive(Clone, Debug)]
pub(crate) struct Clocks(pub(crate) Script);
/// Scripts with many messages outside any call.
#[derive(Clone, Debug)]
pub(crate) struct Noisy(pub(crate) Script);

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
