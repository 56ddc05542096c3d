//! The admin API across workers: one HTTP server for the process, every request handed to
//! every worker, and one answer made of theirs.
//!
//! Each worker owns its `Balancer` (its backends' connections, its share of the calls), so a
//! drain, a weight or a new backend must reach all of them, or a worker the kernel hands the
//! next connection to would not know of it. The HTTP thread sends the same request to each
//! worker's queue, wakes it, and waits for all answers within [`REPLY_MAX`] in total. The
//! answer is the workers' answers merged ([`merge`]): a backend's `selections`, `connections`
//! and `load` add up; it is `down` when it is down on any worker (any may be handed the next
//! connection), `draining` or `held` when it is on any. A change refused by one worker (they
//! share one configuration, so one refuses what all refuse) answers with that refusal.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use serde_json::Value;

use crate::admin::{AdminCommand, AdminQueue, Reply, Request, REPLY_MAX};

/// Commands waiting for one worker; past this the API answers 503 at once.
const QUEUE_MAX: usize = 64;

/// One worker's way in: its queue and the hook that wakes its loop.
struct Link {
    queue: tokio::sync::mpsc::Sender<AdminCommand>,
    wake: Box<dyn Fn() + Send>,
}

/// The workers of a process as the admin API reaches them; slots fill as workers start.
pub(crate) struct AdminHub {
    links: Mutex<Vec<Option<Link>>>,
}

impl std::fmt::Debug for AdminHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let links = self.lock();
        f.debug_struct("AdminHub")
            .field("workers", &links.len())
            .field("registered", &links.iter().filter(|l| l.is_some()).count())
            .finish()
    }
}

impl AdminHub {
    /// A hub for `workers` workers, none registered yet.
    pub(crate) fn new(workers: usize) -> Arc<AdminHub> {
        Arc::new(AdminHub {
            links: Mutex::new((0..workers.max(1)).map(|_| None).collect()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<Link>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers worker `index`, woken by `wake`; returns the queue its driver drains.
    pub(crate) fn register(&self, index: usize, wake: Box<dyn Fn() + Send>) -> AdminQueue {
        let (queue, rx) = tokio::sync::mpsc::channel(QUEUE_MAX);
        if let Some(slot) = self.lock().get_mut(index) {
            *slot = Some(Link { queue, wake });
        }
        AdminQueue::from_receiver(rx)
    }

    /// Hands `request` to every worker and merges their answers.
    pub(crate) fn ask_all(&self, request: &Request) -> Reply {
        let mut answers = Vec::new();
        {
            let links = self.lock();
            if links.iter().any(Option::is_none) {
                return Reply::error(503, "the workers are still starting; try again");
            }
            for link in links.iter().flatten() {
                let (reply, answer) = std::sync::mpsc::sync_channel(1);
                let command = AdminCommand::new(request.clone(), reply);
                if link.queue.try_send(command).is_err() {
                    return Reply::error(503, "the balancer is busy with earlier admin requests");
                }
                (link.wake)();
                answers.push(answer);
            }
        }
        let deadline = Instant::now() + REPLY_MAX;
        let mut replies = Vec::with_capacity(answers.len());
        for (i, answer) in answers.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match answer.recv_timeout(left) {
                Ok(reply) => replies.push(reply),
                Err(_) => {
                    return Reply::error(
                        503,
                        format!(
                            "worker {i} did not answer in time; a change may have reached \
                             only some workers (GET /backends shows where things stand)"
                        ),
                    )
                }
            }
        }
        merge(request, replies)
    }
}

/// One answer from every worker's (module docs).
pub(crate) fn merge(request: &Request, mut replies: Vec<Reply>) -> Reply {
    if replies.len() <= 1 {
        return replies
            .pop()
            .unwrap_or_else(|| Reply::error(503, "no worker"));
    }
    if let Some((i, refused)) = replies
        .iter()
        .enumerate()
        .find(|(_, r)| !(200..300).contains(&r.status))
    {
        let mut refused = refused.clone();
        if replies.iter().any(|r| (200..300).contains(&r.status)) {
            // Should not happen (one configuration), but say so if it does.
            let message = refused.body["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            refused.body["error"] =
                Value::from(format!("worker {i}: {message} (other workers accepted it)"));
        }
        return refused;
    }
    let mut merged = replies.remove(0);
    match request {
        Request::Backends => {
            if let Value::Array(list) = &mut merged.body {
                for other in &replies {
                    merge_backend_lists(list, &other.body);
                }
            }
        }
        Request::Reload => {
            if let Value::Array(list) = &mut merged.body["backends"] {
                for other in &replies {
                    merge_backend_lists(list, &other.body["backends"]);
                }
            }
        }
        Request::Drain(_) | Request::Resume(_) | Request::Weight(..) | Request::Add(_) => {
            for other in &replies {
                merge_backend(&mut merged.body["backend"], &other.body["backend"]);
            }
        }
        // These answer with the configuration, the traced Call-IDs or the names and addresses
        // concerned, which every worker shares (one configuration): no per-worker figures to
        // add up, so the first worker's answer is the process's.
        Request::Remove(_)
        | Request::Resolved { .. }
        | Request::Config
        | Request::Traced
        | Request::Trace(_)
        | Request::Untrace(_) => {}
    }
    merged
}

/// Adds another worker's list of backends into `list`, matching by configured name.
fn merge_backend_lists(list: &mut [Value], other: &Value) {
    let Value::Array(other) = other else { return };
    for mine in list.iter_mut() {
        if let Some(theirs) = other.iter().find(|b| b["addr"] == mine["addr"]) {
            merge_backend(mine, theirs);
        } else {
            // A worker that does not know the backend yet: it takes no calls there.
            mine["state"] = Value::from("down");
        }
    }
}

/// One backend as the process sees it, from two workers' views.
fn merge_backend(mine: &mut Value, theirs: &Value) {
    if !mine.is_object() || !theirs.is_object() {
        return;
    }
    for key in ["selections", "connections"] {
        let sum = mine[key].as_u64().unwrap_or(0) + theirs[key].as_u64().unwrap_or(0);
        mine[key] = Value::from(sum);
    }
    mine["load"] = match (mine["load"].as_u64(), theirs["load"].as_u64()) {
        (None, None) => Value::Null,
        (a, b) => Value::from(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    for key in ["draining", "held"] {
        let any = mine[key].as_bool().unwrap_or(false) || theirs[key].as_bool().unwrap_or(false);
        mine[key] = Value::from(any);
    }
    let down = mine["state"] == "down" || theirs["state"] == "down";
    mine["state"] = Value::from(if down {
        "down"
    } else if mine["draining"] == true {
        "draining"
    } else if mine["held"] == true {
        "held"
    } else {
        "up"
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn backend(addr: &str, state: &str, selections: u64, load: Option<u64>) -> Value {
        json!({
            "addr": addr, "state": state, "selections": selections, "connections": 1,
            "load": load, "draining": state == "draining", "held": state == "held",
        })
    }

    #[test]
    fn backends_add_up_over_workers() {
        let one = Reply::ok(json!([
            backend("127.0.0.1:1", "up", 3, Some(10)),
            backend("127.0.0.1:2", "up", 1, None),
            backend("127.0.0.1:3", "up", 0, None),
        ]));
        let two = Reply::ok(json!([
            backend("127.0.0.1:1", "draining", 4, Some(5)),
            backend("127.0.0.1:2", "down", 2, None),
        ]));
        let merged = merge(&Request::Backends, vec![one, two]);
        assert_eq!(merged.status, 200);
        let list = merged.body.as_array().unwrap();
        assert_eq!(list[0]["selections"], 7);
        assert_eq!(list[0]["connections"], 2);
        assert_eq!(list[0]["load"], 15);
        assert_eq!(list[0]["state"], "draining");
        assert_eq!(list[1]["state"], "down");
        assert_eq!(list[1]["load"], Value::Null);
        assert_eq!(list[2]["state"], "down", "unknown to worker 1");
    }

    #[test]
    fn a_refusal_by_any_worker_is_the_answer() {
        let ok = Reply::ok(json!({"backend": backend("127.0.0.1:1", "up", 1, None)}));
        let refused = Reply::error(409, "no");
        let merged = merge(
            &Request::Drain(crate::admin::BackendRef::Addr(
                "127.0.0.1:1".parse().unwrap(),
            )),
            vec![ok.clone(), refused.clone()],
        );
        assert_eq!(merged.status, 409);
        assert!(merged.body["error"]
            .as_str()
            .unwrap()
            .starts_with("worker 1: no"));
        let both = merge(&Request::Reload, vec![refused.clone(), refused.clone()]);
        assert_eq!(both, refused);
        let changed = merge(
            &Request::Drain(crate::admin::BackendRef::Addr(
                "127.0.0.1:1".parse().unwrap(),
            )),
            vec![ok.clone(), ok],
        );
        assert_eq!(changed.body["backend"]["selections"], 2);
    }

    #[test]
    fn a_worker_not_registered_yet_gets_503() {
        let hub = AdminHub::new(2);
        let _queue = hub.register(0, Box::new(|| {}));
        assert_eq!(hub.ask_all(&Request::Backends).status, 503);
    }
}
