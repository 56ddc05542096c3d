//! The end of a run: the checks that need the whole run (nothing lost inside a balancer, the
//! table back to its model, the table's size against DESIGN.md's figure), and the [`Report`].

use crate::caller::outcome;
use crate::invariants::{table_max_plausible, ViolationKind};
use crate::world::World;
use crate::{InstanceLoss, Report};

/// Checks what only the end of a run shows and builds the report.
pub(crate) fn finish(mut w: World) -> Report {
    let mut lost_total = 0u64;
    for i in 0..w.workers.len() {
        if !w.workers[i].alive {
            // A dead worker's books stop mid-run: what it held is what the instance lost.
            continue;
        }
        let stats = w.workers[i].stats().clone();
        let lost = w.workers[i].acct.lost(&stats);
        if lost != 0 {
            let acct = w.workers[i].acct.clone();
            w.violate(
                ViolationKind::Lost,
                format!("lb{i}: {lost} messages unaccounted for ({acct:?}, {stats})"),
            );
        }
        lost_total += lost.unsigned_abs();
        for m in w.workers[i].acct.counter_mismatches(&stats) {
            w.violate(ViolationKind::Counter, format!("lb{i}: {m}"));
        }
    }
    if w.callers.active() != 0 {
        let active = w.callers.active();
        w.violate(
            ViolationKind::StepLimit,
            format!("{active} calls still active at the end"),
        );
    }
    let stats: Vec<lb_core::Stats> = w.workers.iter().map(|l| l.stats().clone()).collect();
    let messages = w.workers.iter().map(|l| l.acct.fed).sum();
    let max_table = stats.iter().map(|s| s.table_len_max).max().unwrap_or(0);
    if max_table > w.k.table_capacity as u64 {
        let cap = w.k.table_capacity;
        w.violate(
            ViolationKind::Table,
            format!("table_len_max {max_table} exceeds capacity {cap}"),
        );
    }
    for (i, s) in stats.iter().enumerate() {
        let m = w.workers[i].model.len();
        if w.workers[i].alive && s.table_len != m {
            w.violate(
                ViolationKind::Table,
                format!(
                    "lb{i}: {} entries left at the end, the model has {m}",
                    s.table_len
                ),
            );
        }
    }
    let model_max = w.workers.iter().map(|l| l.model.max()).max().unwrap_or(0);
    let table_dev_max = w.workers.iter().map(|l| l.table_dev_max).max().unwrap_or(0);
    let mean_ringing_s = w
        .workers
        .iter()
        .map(|l| l.model.mean_ringing_us())
        .fold(0.0, f64::max)
        / 1e6;
    let mean_lifetime_s = w
        .workers
        .iter()
        .map(|l| l.model.mean_lifetime_us())
        .fold(0.0, f64::max)
        / 1e6;
    let cores = (w.k.instances * w.k.workers) as f64;
    let per_core_rate = w.k.rate / cores;
    let expected_table = (per_core_rate * mean_lifetime_s).min(w.k.calls as f64 / cores);
    // Only a run that reached a steady state can be held to the figure, and only while every
    // core took its share of the calls.
    let arrivals_s = w.k.calls as f64 / w.k.rate;
    if w.death.is_none()
        && arrivals_s > 3.0 * mean_lifetime_s
        && !table_max_plausible(max_table, expected_table)
    {
        w.violate(
            ViolationKind::Table,
            format!(
                "table_len_max {max_table} but setup rate x lifetime gives {expected_table:.0}"
            ),
        );
    }
    let instance_loss = w.death.as_ref().map(|d| instance_loss(&w, d));
    let trace_error = w.trace.finish().err().map(|e| e.to_string());
    Report {
        scenario: w.k.scenario,
        seed: w.k.seed,
        calls: w.callers.placed(),
        messages,
        retransmissions: w.retransmissions(),
        affinity_violations: w.affinity.violations(),
        lost: lost_total,
        max_table,
        model_max_table: model_max,
        table_deviation_max: table_dev_max,
        expected_table,
        mean_ringing_s,
        digest: w.trace.digest(),
        violations: w.violations,
        violation_count: w.violation_count,
        outcomes: w.callers.outcomes(),
        udp_lost: w.n.udp_lost,
        cancel_elsewhere: w.n.cancel_elsewhere,
        tcp_lost: w.n.tcp_lost,
        events: w.steps,
        trace_events: w.trace.events(),
        virtual_s: w.now as f64 / 1e9,
        stats,
        samples: w.samples,
        trace_error,
        instance_loss,
    }
}

/// Sorts the calls that were going on when the instance died by their phase then, and counts
/// the ones that did not end well (timed out, abandoned or rejected).
fn instance_loss(w: &World, d: &crate::event::Death) -> InstanceLoss {
    let mut loss = InstanceLoss {
        instance: usize::from(d.instance),
        at_s: d.at as f64 / 1e9,
        ..InstanceLoss::default()
    };
    for (c, &phase) in d.phase.iter().enumerate() {
        let failed = matches!(
            w.callers.outcome(c as u32),
            outcome::TIMED_OUT | outcome::ABANDONED | outcome::REJECTED
        );
        let breached = w.breached.contains(&(c as u32));
        match phase {
            1 | 3 => {
                loss.in_setup += 1;
                loss.in_setup_on_dead += u64::from(phase == 3);
                loss.lost_in_setup += u64::from(failed);
                loss.lost_in_setup_elsewhere += u64::from(failed && phase == 1);
            }
            2 => {
                loss.established += 1;
                loss.lost_established += u64::from(failed);
            }
            _ => continue,
        }
        if !failed && breached {
            loss.survivor_affinity_violations += 1;
        }
    }
    loss.edge_resends = w.n.edge_resends;
    loss.dial_outs = w.workers.iter().map(|l| l.stats().dial_outs).sum();
    loss
}
