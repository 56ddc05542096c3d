//! Scenario 8: envelope mode with the example backend, the same call flows.

use std::collections::{BTreeMap, BTreeSet};

use siplb_e2e::envelope::EnvBackend;
use siplb_e2e::flows::UAC_CANCEL;
use siplb_e2e::lb::{BackendArg, Balancer, LbSpec, Runtime, CLEAN};
use siplb_e2e::sipp::{Uac, UacOutcome};
use siplb_e2e::trace::{assert_signatures, per_backend, Dir};
use siplb_e2e::RunDir;

use super::uac_spec;

// ---------------------------------------------------------------------------------------------
// 8. envelope mode with the example backend: the same call flows

/// Groups the responses the client received by Call-ID and asserts each call's responses all
/// carry one and the same `X-Backend`; returns Call-ID → backend name.
fn envelope_owner(uac: &UacOutcome) -> BTreeMap<String, String> {
    let mut owner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for m in uac.trace.msgs.iter().filter(|m| m.dir == Dir::Received) {
        let name = m
            .header("X-Backend")
            .map(str::to_string)
            .unwrap_or_else(|| panic!("{}: message without X-Backend:\n{}", uac.name, m.raw));
        owner
            .entry(m.call_id().to_string())
            .or_default()
            .insert(name);
    }
    owner
        .into_iter()
        .map(|(id, names)| {
            assert_eq!(
                names.len(),
                1,
                "call {id} answered by several backends {names:?}:\n{}",
                uac.trace.dump_call(&id)
            );
            let name = names.into_iter().next().unwrap();
            (id, name)
        })
        .collect()
}

/// One envelope-mode case: three example backends, one SIPp client run.
struct EnvCase<'a> {
    test: &'a str,
    scenario: &'a str,
    /// The backends' `--answer-delay-ms`.
    answer_delay_ms: u64,
    /// The balancer's `--window`.
    window: Option<f64>,
    /// The client's `-d`.
    pause_ms: u64,
    calls: u32,
    /// What the client must see of every call.
    uac_flow: &'a [&'a str],
    /// Balancer counters beyond the clean-run ones.
    lb_expect: &'a [(&'a str, u64)],
}

fn envelope_calls(rt: Runtime, case: &EnvCase<'_>) -> Vec<BTreeMap<String, u64>> {
    let EnvCase {
        test,
        scenario,
        answer_delay_ms,
        window,
        pause_ms,
        calls,
        uac_flow,
        lb_expect,
    } = *case;
    let dir = RunDir::new(&format!("{test}-{}", rt.name()));
    let backends: Vec<EnvBackend> = (0..3)
        .map(|i| EnvBackend::start(&dir, &format!("env-{i}"), answer_delay_ms))
        .collect();
    let mut spec = LbSpec::new(
        rt,
        backends
            .iter()
            .map(|b| BackendArg::envelope(b.addr()))
            .collect(),
    );
    spec.window_secs = window;
    let mut lb = Balancer::start(&dir, spec);
    let mut uspec = uac_spec("uac", scenario, &lb, calls, 30);
    uspec.pause_ms = pause_ms;
    let uac = Uac::run(&dir, uspec);
    let stats = lb.stop();
    let names: Vec<String> = backends.iter().map(|b| b.name().to_string()).collect();
    let counters: Vec<BTreeMap<String, u64>> =
        backends.into_iter().map(EnvBackend::finish).collect();
    uac.assert_all_ok(calls.into());

    let owner = envelope_owner(&uac);
    assert_eq!(owner.len(), calls as usize);
    assert_signatures(&uac.trace, owner.keys(), uac_flow);
    let counts = per_backend(&owner);
    for (name, c) in names.iter().zip(&counters) {
        let n = counts.get(name).copied().unwrap_or(0) as u64;
        assert!(n >= 1, "{name} got no call: {counts:?}");
        // The backend's own count of new calls agrees with the X-Backend attribution, and it
        // never saw an in-dialog request for a call it does not have.
        assert_eq!(c.get("calls").copied(), Some(n), "{name}: counters {c:?}");
        assert_eq!(
            c.get("no_dialog").copied(),
            Some(0),
            "{name}: counters {c:?}"
        );
    }
    stats.expect(CLEAN);
    stats.expect(&[("new_calls", calls.into())]);
    stats.expect(lb_expect);
    eprintln!("{test}: calls per backend {counts:?}; {}", stats.line);
    counters
}

pub(super) fn s8_envelope_basic(rt: Runtime) {
    let counters = envelope_calls(
        rt,
        &EnvCase {
            test: "s8-env-basic",
            scenario: "uac_basic.xml",
            answer_delay_ms: 0,
            window: None,
            pause_ms: 50,
            calls: 30,
            uac_flow: &[
                "sent INVITE",
                "recv 100/INVITE",
                "recv 180/INVITE",
                "recv 200/INVITE",
                "sent ACK",
                "sent BYE",
                "recv 200/BYE",
            ],
            lb_expect: &[("tagged", 60), ("table_hits", 0)],
        },
    );
    let completed: u64 = counters.iter().filter_map(|c| c.get("completed")).sum();
    assert_eq!(completed, 30, "{counters:?}");
}

pub(super) fn s8_envelope_long_calls(rt: Runtime) {
    let counters = envelope_calls(
        rt,
        &EnvCase {
            test: "s8-env-long",
            scenario: "uac_long.xml",
            answer_delay_ms: 0,
            window: Some(2.0),
            pause_ms: 5000,
            calls: 10,
            uac_flow: &[
                "sent INVITE",
                "recv 100/INVITE",
                "recv 180/INVITE",
                "recv 200/INVITE",
                "sent ACK",
                "sent INVITE",
                "recv 200/INVITE",
                "sent ACK",
                "sent BYE",
                "recv 200/BYE",
            ],
            lb_expect: &[("tagged", 40), ("table_hits", 0), ("table_len", 0)],
        },
    );
    let completed: u64 = counters.iter().filter_map(|c| c.get("completed")).sum();
    assert_eq!(completed, 10, "{counters:?}");
}

pub(super) fn s8_envelope_retransmission_and_cancel(rt: Runtime) {
    // The backends answer only after 10 s, so every call is still ringing when it is cancelled.
    let counters = envelope_calls(
        rt,
        &EnvCase {
            test: "s8-env-cancel",
            scenario: "uac_cancel.xml",
            answer_delay_ms: 10_000,
            window: None,
            pause_ms: 0,
            calls: 9,
            uac_flow: UAC_CANCEL,
            lb_expect: &[("tagged", 0), ("table_hits", 27)],
        },
    );
    let sum = |k: &str| counters.iter().filter_map(|c| c.get(k)).sum::<u64>();
    assert_eq!(sum("cancelled"), 9, "{counters:?}");
    assert_eq!(sum("retransmissions"), 9, "{counters:?}");
    assert_eq!(sum("ack"), 9, "{counters:?}");
}
