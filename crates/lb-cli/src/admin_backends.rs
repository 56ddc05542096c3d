//! The admin API's changes to backends named by address or by DNS name (`lb_runtime::named`), and
//! the re-resolution of names, which arrives the same way (`Request::Resolved`).
//!
//! A name stands for every address it resolves to now. A drain, resume or weight given to a
//! name also becomes the name's own setting (until the next reload), so the addresses it
//! resolves to later come in drained or with that weight; removing a name removes its
//! addresses and stops following it.

use std::net::SocketAddr;
use std::time::Instant;

use lb_core::{BackendChange, BackendConfig, Balancer, Input};
use serde_json::{json, Value};

use crate::admin::{backend_json, changed, find, no_backend, rebuild, running, BackendRef, Reply};
use crate::Ops;

/// The addresses `which` stands for among the running backends, or the 404 to answer.
fn addrs(ops: &Ops, lb: &Balancer, which: &BackendRef) -> Result<Vec<SocketAddr>, Reply> {
    match which {
        BackendRef::Addr(addr) => match find(lb, *addr) {
            Some(_) => Ok(vec![*addr]),
            None => Err(no_backend(addr)),
        },
        BackendRef::Name(name) => {
            let Some(named) = ops.settings().named.iter().find(|n| n.name == *name) else {
                return Err(no_backend(name));
            };
            let addrs: Vec<SocketAddr> = named
                .addrs
                .iter()
                .copied()
                .filter(|a| find(lb, *a).is_some())
                .collect();
            if addrs.is_empty() {
                return Err(Reply::error(
                    404,
                    format!("backend {name} resolves to no address now"),
                ));
            }
            Ok(addrs)
        }
    }
}

/// Changes the name's own settings when `which` is a name.
fn for_name(ops: &mut Ops, which: &BackendRef, change: impl FnOnce(&mut BackendConfig)) {
    let BackendRef::Name(name) = which else {
        return;
    };
    let mut named = ops.settings().named.clone();
    if let Some(n) = named.iter_mut().find(|n| n.name == *name) {
        change(&mut n.template);
    }
    ops.set_named(named);
}

/// The answer to a change of `addrs`: one backend, or for a name all of its addresses.
fn answer(ops: &Ops, lb: &Balancer, which: &BackendRef, addrs: &[SocketAddr]) -> Reply {
    let first = changed(ops, lb, addrs[0], 200);
    match which {
        BackendRef::Addr(_) => first,
        BackendRef::Name(name) => {
            let mut reply = first;
            let all: Vec<Value> = running(lb)
                .iter()
                .filter(|(c, _)| addrs.contains(&c.addr))
                .map(|(c, s)| backend_json(ops, c, s))
                .collect();
            reply.body["name"] = Value::from(name.as_str());
            reply.body["backends"] = Value::Array(all);
            reply
        }
    }
}

/// `POST /backends/WHICH/drain` (`draining`) and `/resume`.
pub(crate) fn drain(
    ops: &mut Ops,
    lb: &mut Balancer,
    now: Instant,
    which: &BackendRef,
    draining: bool,
) -> Reply {
    let addrs = match addrs(ops, lb, which) {
        Ok(addrs) => addrs,
        Err(reply) => return reply,
    };
    for addr in &addrs {
        if let Some((_, status)) = find(lb, *addr) {
            let change = if draining {
                BackendChange::Drain(status.id)
            } else {
                BackendChange::Resume(status.id)
            };
            lb.handle_input(now, Input::Backends(change));
        }
    }
    for_name(ops, which, |t| t.draining = draining);
    tracing::info!(backend = %which, draining, "admin: backend drain set until the next reload");
    answer(ops, lb, which, &addrs)
}

/// `PUT /backends/WHICH/weight`.
pub(crate) fn weight(
    ops: &mut Ops,
    lb: &mut Balancer,
    now: Instant,
    which: &BackendRef,
    weight: u32,
) -> Reply {
    let addrs = match addrs(ops, lb, which) {
        Ok(addrs) => addrs,
        Err(reply) => return reply,
    };
    let result = rebuild(ops, lb, now, |backends| {
        for b in backends.iter_mut().filter(|b| addrs.contains(&b.addr)) {
            b.weight = weight;
        }
        Ok(())
    });
    if let Err(reply) = result {
        return reply;
    }
    for_name(ops, which, |t| t.weight = weight);
    tracing::info!(backend = %which, weight, "admin: backend weight set until the next reload");
    answer(ops, lb, which, &addrs)
}

/// `DELETE /backends/WHICH`.
pub(crate) fn remove(ops: &mut Ops, lb: &mut Balancer, now: Instant, which: &BackendRef) -> Reply {
    let addrs = match addrs(ops, lb, which) {
        Ok(addrs) => addrs,
        Err(reply) => return reply,
    };
    let result = rebuild(ops, lb, now, |backends| {
        backends.retain(|b| !addrs.contains(&b.addr));
        Ok(())
    });
    if let Err(reply) = result {
        return reply;
    }
    if let BackendRef::Name(name) = which {
        let mut named = ops.settings().named.clone();
        named.retain(|n| n.name != *name);
        ops.set_named(named);
    }
    tracing::info!(backend = %which, "admin: backend removed until the next reload");
    let removed: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    Reply::ok(json!({ "removed": which.to_string(), "addrs": removed, "until": "reload" }))
}

/// A backend name resolved to `fresh` (`lb_runtime::named::start_refresh`): applied to the running
/// backends of this worker, keeping runtime overrides (`lb_runtime::named::apply_resolution`).
pub(crate) fn resolved(
    ops: &mut Ops,
    lb: &mut Balancer,
    now: Instant,
    name: &str,
    fresh: &[BackendConfig],
) -> Reply {
    let mut all = ops.settings().named.clone();
    // Removed through the API, or gone from the file since: no longer followed.
    let Some(named) = all.iter_mut().find(|n| n.name == name) else {
        return Reply::ok(json!({ "ignored": name }));
    };
    let mut changed = false;
    let result = rebuild(ops, lb, now, |backends| {
        changed = lb_runtime::named::apply_resolution(backends, named, fresh);
        if changed {
            Ok(())
        } else {
            // Nothing to feed the core: a 200 that says so, not a reload.
            Err(Reply::ok(json!({ "unchanged": name })))
        }
    });
    match result {
        Ok(()) => {
            ops.set_named(all);
            tracing::info!(name, "backend name re-resolved: backends added or drained");
            Reply::ok(json!({ "resolved": name }))
        }
        Err(reply) => reply,
    }
}
