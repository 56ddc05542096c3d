//! The operator's kit against the real binaries (`lb-tokio` and `lb-mio`) on 127.0.0.1: the
//! admin API (`--admin`) and its client `siplb-ctl`, the bearer token, and `--log-format json`.
//! Peers are plain Rust sockets (`siplb_e2e::ops`).
//!
//! No assertion depends on speed: waits poll for a state with a generous bound.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;
use siplb_e2e::lb::Runtime;
use siplb_e2e::net::{self, free_port, wait_until};
use siplb_e2e::ops::{backend_tables, http, OpsLb, SipBackend, SipClient, PATIENCE};
use siplb_e2e::{bins, RunDir};

/// The balancer with its admin API on a free loopback port.
struct Admin {
    lb: OpsLb,
    addr: SocketAddr,
    token: Option<String>,
}

impl Admin {
    fn start(dir: &RunDir, rt: Runtime, body: &str, flags: &[&str]) -> Admin {
        let port = free_port();
        let addr = net::local(port);
        let admin = addr.to_string();
        let mut all = vec!["--admin", admin.as_str()];
        all.extend_from_slice(flags);
        let lb = OpsLb::start(dir, rt, body, &all);
        wait_until("the admin API to listen", PATIENCE, || {
            net::is_listening(port)
        });
        Admin {
            lb,
            addr,
            token: None,
        }
    }

    /// A request with the token, if there is one: (status, JSON body).
    fn call(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}"));
        let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
        let (status, text) = http(self.addr, method, path, body, &headers);
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {text:?}"));
        (status, json)
    }

    /// A request that must succeed with `want`.
    fn ok(&self, method: &str, path: &str, body: &str, want: u16) -> Value {
        let (status, json) = self.call(method, path, body);
        assert_eq!(status, want, "{method} {path} {body:?}: {json}");
        json
    }

    fn backends(&self) -> Vec<Value> {
        match self.ok("GET", "/backends", "", 200) {
            Value::Array(list) => list,
            other => panic!("GET /backends is not an array: {other}"),
        }
    }

    /// The backend at `addr` in `GET /backends`.
    fn backend(&self, addr: SocketAddr) -> Option<Value> {
        self.backends()
            .into_iter()
            .find(|b| b["addr"] == addr.to_string())
    }

    /// Waits until every one of `addrs` is `state`.
    fn wait_state(&self, addrs: &[SocketAddr], state: &str) {
        wait_until(&format!("{addrs:?} to be {state}"), PATIENCE, || {
            addrs
                .iter()
                .all(|a| self.backend(*a).is_some_and(|b| b["state"] == state))
        });
    }

    /// `siplb-ctl --admin ADDR ARGS…`: (success, stdout).
    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(bins::binary("lb-cli", "siplb-ctl"))
            .arg("--admin")
            .arg(self.addr.to_string())
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty() || !out.status.success(), "{stderr}");
        (out.status.success(), stdout)
    }
}

fn calls_on(backend: &SipBackend) -> usize {
    backend.received("INVITE").len()
}

/// Path form of a backend address (`/backends/ADDR/...`).
fn path(addr: SocketAddr, action: &str) -> String {
    format!("/backends/{addr}{action}")
}

// Drain by the API (with siplb-ctl): no new call reaches the backend, its established call
// still does; resume and it takes new calls again.
fn drain_and_resume_by_the_api(rt: Runtime) {
    let dir = RunDir::new(&format!("admin-drain-{}", rt.name()));
    let (a, b) = (SipBackend::start(), SipBackend::start());
    let admin = Admin::start(&dir, rt, &backend_tables(&[&a, &b]), &[]);
    admin.wait_state(&[a.addr, b.addr], "up");
    let mut client = SipClient::connect(admin.lb.addr());
    let mut on_a = None;
    for i in 0..4 {
        let call = client.call(&format!("before-drain-{i}"));
        assert_eq!(call.status, 200);
        if a.received("INVITE").contains(&call.call_id) {
            on_a = Some(call);
            break;
        }
    }
    let on_a = on_a.expect("round robin gave backend 0 no call");

    let (ok, out) = admin.ctl(&["--json", "drain", &a.addr.to_string()]);
    assert!(ok, "{out}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["until"], "reload", "{answer}");
    assert_eq!(answer["backend"]["state"], "draining", "{answer}");
    let (ok, table) = admin.ctl(&["backends"]);
    assert!(ok && table.contains("draining"), "{table}");

    let a_before = calls_on(&a);
    for i in 0..6 {
        assert_eq!(client.call(&format!("while-drained-{i}")).status, 200);
    }
    assert_eq!(calls_on(&a), a_before, "a drained backend got a new call");
    assert_eq!(client.bye(&on_a), 200);
    assert!(
        a.received("BYE").contains(&on_a.call_id),
        "the established call's BYE did not reach its drained backend"
    );

    let answer = admin.ok("POST", &path(a.addr, "/resume"), "", 200);
    assert_eq!(answer["backend"]["state"], "up", "{answer}");
    for i in 0..4 {
        assert_eq!(client.call(&format!("after-resume-{i}")).status, 200);
    }
    assert!(
        calls_on(&a) > a_before,
        "the resumed backend got no new call"
    );
    // An unknown backend and a bad address: JSON errors, the balancer runs on.
    let (status, err) = admin.call("POST", "/backends/127.0.0.1:9/drain", "");
    assert_eq!(status, 404, "{err}");
    let (status, err) = admin.call("POST", "/backends/nohost/drain", "");
    assert_eq!(status, 404, "a name that names no backend: {err}");
    let (status, err) = admin.call("POST", "/backends/no%20host/drain", "");
    assert_eq!(status, 400, "{err}");
    assert!(err["error"].is_string());
    let (ok, _) = admin.ctl(&["drain", "127.0.0.1:9"]);
    assert!(!ok, "siplb-ctl succeeded on a 404");
    let mut lb = admin.lb;
    lb.assert_running();
    lb.stop();
}

// Add a backend, it takes calls; remove one, it takes none; the last one cannot go; bad
// bodies are 400; POST /reload puts the file's backends back.
fn add_and_remove_backends_until_the_next_reload(rt: Runtime) {
    let dir = RunDir::new(&format!("admin-add-{}", rt.name()));
    let (a, b) = (SipBackend::start(), SipBackend::start());
    let admin = Admin::start(&dir, rt, &backend_tables(&[&a]), &[]);
    admin.wait_state(&[a.addr], "up");

    let added = admin.ok(
        "POST",
        "/backends",
        &format!(r#"{{"addr": "{}", "weight": 1, "mode": "plain"}}"#, b.addr),
        201,
    );
    assert_eq!(added["until"], "reload", "{added}");
    let (status, dup) = admin.call("POST", "/backends", &format!(r#"{{"addr": "{}"}}"#, b.addr));
    assert_eq!(status, 409, "{dup}");
    for bad in [
        "",
        "{",
        "[1]",
        r#"{"addr": 5}"#,
        r#"{"addr": "127.0.0.1:1", "mode": "udp"}"#,
    ] {
        let (status, err) = admin.call("POST", "/backends", bad);
        assert_eq!(status, 400, "{bad:?}: {err}");
        assert!(err["error"].is_string(), "{err}");
    }
    admin.wait_state(&[a.addr, b.addr], "up");
    let mut client = SipClient::connect(admin.lb.addr());
    for i in 0..4 {
        assert_eq!(client.call(&format!("after-add-{i}")).status, 200);
    }
    assert!(
        calls_on(&a) > 0 && calls_on(&b) > 0,
        "the added backend got no call"
    );

    let removed = admin.ok("DELETE", &path(a.addr, ""), "", 200);
    assert_eq!(removed["until"], "reload", "{removed}");
    assert!(admin.backend(a.addr).is_none(), "{:?}", admin.backends());
    let a_before = calls_on(&a);
    for i in 0..4 {
        assert_eq!(client.call(&format!("after-remove-{i}")).status, 200);
    }
    assert_eq!(calls_on(&a), a_before, "a removed backend got a new call");
    let (status, err) = admin.call("DELETE", &path(b.addr, ""), "");
    assert_eq!(status, 409, "removing the last backend: {err}");
    let (status, _) = admin.call("DELETE", &path(a.addr, ""), "");
    assert_eq!(status, 404);

    // An explicit reload drops the runtime changes: the file has only `a`.
    let reloaded = admin.ok("POST", "/reload", "", 200);
    assert_eq!(reloaded["reloaded"], true, "{reloaded}");
    let addrs: Vec<Value> = admin
        .backends()
        .into_iter()
        .map(|b| b["addr"].clone())
        .collect();
    assert_eq!(addrs, [Value::from(a.addr.to_string())]);
    let config = admin.ok("GET", "/config", "", 200);
    assert_eq!(
        config["backend"].as_array().map(Vec::len),
        Some(1),
        "{config}"
    );
    assert!(config["tag-key-ids"].is_array(), "{config}");
    assert!(!config.to_string().contains("secret"), "{config}");
    admin.wait_state(&[a.addr], "up");
    let a_before = calls_on(&a);
    assert_eq!(client.call("after-reload").status, 200);
    assert_eq!(calls_on(&a), a_before + 1);
    let mut lb = admin.lb;
    lb.stop();
}

// With the weighted algorithm, a weight set by the API steers the split of new calls.
fn a_weight_set_by_the_api_steers_the_split(rt: Runtime) {
    const CALLS: usize = 40;
    let dir = RunDir::new(&format!("admin-weight-{}", rt.name()));
    let (a, b) = (SipBackend::start(), SipBackend::start());
    let body = format!("algorithm = \"weighted\"\n{}", backend_tables(&[&a, &b]));
    let admin = Admin::start(&dir, rt, &body, &[]);
    admin.wait_state(&[a.addr, b.addr], "up");
    let mut client = SipClient::connect(admin.lb.addr());
    for i in 0..CALLS / 4 {
        assert_eq!(client.call(&format!("even-{i}")).status, 200);
    }
    assert_eq!(calls_on(&a), calls_on(&b), "equal weights split evenly");

    let answer = admin.ok("PUT", &path(b.addr, "/weight"), "3", 200);
    assert_eq!(answer["backend"]["weight"], 3, "{answer}");
    assert_eq!(answer["until"], "reload", "{answer}");
    let (status, err) = admin.call("PUT", &path(b.addr, "/weight"), "heavy");
    assert_eq!(status, 400, "{err}");
    let (ok, out) = admin.ctl(&["weight", &a.addr.to_string(), "1"]);
    assert!(ok, "{out}");
    let (a0, b0) = (calls_on(&a), calls_on(&b));
    for i in 0..CALLS {
        assert_eq!(client.call(&format!("weighted-{i}")).status, 200);
    }
    let (da, db) = (calls_on(&a) - a0, calls_on(&b) - b0);
    eprintln!("{}: weights 1:3 split {CALLS} calls {da}:{db}", rt.name());
    assert_eq!(da + db, CALLS);
    // Smooth weighted round robin gives exactly 1:3; a margin keeps the test about the split.
    assert!((27..=33).contains(&db), "weights 1:3 split {da}:{db}");
    assert_eq!(admin.backend(b.addr).unwrap()["weight"], 3);
    let mut lb = admin.lb;
    lb.stop();
}

// With a token file every request needs the bearer token; an address off loopback without
// one is refused at start with a clear error.
fn a_token_guards_the_api(rt: Runtime) {
    let dir = RunDir::new(&format!("admin-token-{}", rt.name()));
    let a = SipBackend::start();
    let token = "5f2b7e0c9a1d4e6f8b3c2a1d0e9f8a7b";
    let token_file = dir.file("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let mut admin = Admin::start(
        &dir,
        rt,
        &backend_tables(&[&a]),
        &["--admin-token-file", token_file.to_str().unwrap()],
    );
    for headers in [
        &[][..],
        &["Authorization: Bearer wrong"][..],
        &["Authorization: Basic eA=="][..],
    ] {
        let (status, body) = http(admin.addr, "GET", "/backends", "", headers);
        assert_eq!(status, 401, "{headers:?}: {body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert!(err["error"].is_string(), "{err}");
    }
    admin.token = Some(token.to_string());
    assert_eq!(admin.backends().len(), 1);
    let out = Command::new(bins::binary("lb-cli", "siplb-ctl"))
        .args(["--admin", &admin.addr.to_string(), "--token-file"])
        .arg(&token_file)
        .arg("config")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let config = String::from_utf8_lossy(&out.stdout);
    assert!(!config.contains(token), "the token leaked into GET /config");
    assert!(
        !admin.lb.log().contains(token),
        "the token leaked into the log"
    );
    let mut lb = admin.lb;
    lb.stop();

    let out = Command::new(rt.binary())
        .args(["--listen", &net::local(free_port()).to_string()])
        .args(["--backend", &a.addr.to_string()])
        .args(["--admin", &format!("0.0.0.0:{}", free_port())])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("siplb: admin:") && stderr.contains("admin-token-file"),
        "{stderr}"
    );
}

// `--log-format json`: every line on stderr is one JSON object with the documented fields,
// the start-up "listening" line among them.
fn json_logs_are_one_object_per_line(rt: Runtime) {
    let dir = RunDir::new(&format!("admin-json-{}", rt.name()));
    let a = SipBackend::start();
    let mut lb = OpsLb::start(&dir, rt, &backend_tables(&[&a]), &["--log-format", "json"]);
    let mut client = SipClient::connect(lb.addr());
    assert_eq!(client.call("json-logs").status, 200);
    drop(client);
    lb.wait_log("frontend connection closed");
    lb.stop();
    let log = lb.log();
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect();
    assert!(lines.len() >= 3, "{log}");
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line[key].is_string(), "no {key}: {line}");
        }
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    let listening = lines
        .iter()
        .find(|l| l["fields"]["message"] == "listening")
        .unwrap_or_else(|| panic!("no listening line in {log}"));
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["fields"]["addr"], lb.addr().to_string());
}

// With `--workers 2` one API serves the process: a drain reaches both workers (no new call
// reaches the drained backend, whichever worker took the connection), and `GET /backends`
// adds up the workers' connections and selections.
fn admin_changes_reach_every_worker(rt: Runtime) {
    let dir = RunDir::new(&format!("admin-workers-{}", rt.name()));
    let (a, b) = (SipBackend::start(), SipBackend::start());
    let admin = Admin::start(&dir, rt, &backend_tables(&[&a, &b]), &["--workers", "2"]);
    admin.wait_state(&[a.addr, b.addr], "up");
    // Each worker holds its own connection to each backend.
    wait_until("both workers to connect to both backends", PATIENCE, || {
        admin.backends().iter().all(|b| b["connections"] == 2)
    });
    let answer = admin.ok("POST", &path(a.addr, "/drain"), "", 200);
    assert_eq!(answer["backend"]["state"], "draining", "{answer}");
    assert_eq!(answer["backend"]["connections"], 2, "{answer}");

    // New connections until both workers have taken calls (the kernel spreads connections
    // over the workers' sockets by a hash of their addresses).
    let worker_calls = |w: usize| {
        admin
            .lb
            .metrics()
            .value(&format!("siplb_worker_new_calls_total{{worker=\"{w}\"}}"))
    };
    let mut calls = 0;
    while calls < 8 || (calls < 200 && (worker_calls(0) == 0.0 || worker_calls(1) == 0.0)) {
        let mut client = SipClient::connect(admin.lb.addr());
        assert_eq!(client.call(&format!("workers-{calls}")).status, 200);
        calls += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    wait_until("the metrics to count every call", PATIENCE, || {
        worker_calls(0) + worker_calls(1) == calls as f64
    });
    assert!(
        worker_calls(0) > 0.0 && worker_calls(1) > 0.0,
        "after {calls} connections one worker had no call"
    );
    assert_eq!(
        calls_on(&a),
        0,
        "a backend drained on one worker only got a call"
    );
    assert_eq!(calls_on(&b), calls);
    let list = admin.backends();
    let selections: u64 = list.iter().map(|b| b["selections"].as_u64().unwrap()).sum();
    assert_eq!(selections, calls as u64, "{list:?}");
    assert_eq!(admin.backend(a.addr).unwrap()["state"], "draining");

    let answer = admin.ok("POST", &path(a.addr, "/resume"), "", 200);
    assert_eq!(answer["backend"]["state"], "up", "{answer}");
    let answer = admin.ok("PUT", &path(b.addr, "/weight"), "4", 200);
    assert_eq!(answer["backend"]["weight"], 4, "{answer}");
    let config = admin.ok("GET", "/config", "", 200);
    assert_eq!(config["backend"][1]["weight"], 4, "{config}");
    let mut lb = admin.lb;
    lb.stop();
}

// `POST /trace/CALLID` turns the per-call trace on (every worker), `DELETE` turns it off,
// `GET /trace` lists the Call-IDs; a reload forgets them.
fn calls_are_traced_by_the_api(rt: Runtime) {
    let dir = RunDir::new(&format!("admin-trace-{}", rt.name()));
    let a = SipBackend::start();
    let admin = Admin::start(&dir, rt, &backend_tables(&[&a]), &["--workers", "2"]);
    admin.wait_state(&[a.addr], "up");
    let listed = admin.ok("GET", "/trace", "", 200);
    assert_eq!(listed["call-ids"], serde_json::json!([]), "{listed}");
    let answer = admin.ok("POST", "/trace/traced-1%40host", "", 201);
    assert_eq!(answer["until"], "reload", "{answer}");
    assert_eq!(answer["call-ids"], serde_json::json!(["traced-1@host"]));
    admin.ok("POST", "/trace/traced-2", "", 201);
    let (status, err) = admin.call("POST", "/trace/a%20b", "");
    assert_eq!(status, 400, "{err}");
    let (status, err) = admin.call("DELETE", "/trace/never", "");
    assert_eq!(status, 404, "{err}");
    admin.ok("DELETE", "/trace/traced-2", "", 200);
    let (ok, out) = admin.ctl(&["trace", "by-ctl@host"]);
    assert!(ok && out.contains("by-ctl@host"), "{out}");
    let (ok, out) = admin.ctl(&["untrace", "by-ctl@host"]);
    assert!(ok && !out.contains("by-ctl@host"), "{out}");
    let listed = admin.ok("GET", "/trace", "", 200);
    assert_eq!(listed["call-ids"], serde_json::json!(["traced-1@host"]));

    // More traced calls, each on a connection of its own: the kernel spreads them over the
    // two workers, and every one is traced whichever worker took it.
    let mut wanted = vec!["traced-1@host".to_string()];
    for i in 3..9 {
        let id = format!("traced-{i}");
        admin.ok("POST", &format!("/trace/{id}"), "", 201);
        wanted.push(id);
    }
    for call_id in wanted
        .iter()
        .map(String::as_str)
        .chain(["traced-2", "other-1"])
    {
        let mut client = SipClient::connect(admin.lb.addr());
        assert_eq!(client.call(call_id).status, 200);
    }
    let mut lb = admin.lb;
    lb.stop();
    let log = lb.log();
    let traced: Vec<&str> = log.lines().filter(|l| l.contains("traced call")).collect();
    for id in &wanted {
        // The INVITE and its 200, each one line.
        let lines = traced
            .iter()
            .filter(|l| l.contains(&format!("call_id=\"{id}\"")))
            .count();
        assert_eq!(lines, 2, "{id}: {traced:#?}");
    }
    assert_eq!(
        traced.len(),
        2 * wanted.len(),
        "only traced calls: {traced:#?}"
    );
}

// A backend given as `localhost:PORT` (A/AAAA from the hosts file; no DNS server is reachable
// here) becomes one backend per address; the API addresses it by that name, and a drain by
// name survives the re-resolutions every 0.2 s (runtime overrides stay). Two workers, so the
// re-resolution goes through the same hub as the API.
fn a_backend_by_name_is_resolved_and_managed_by_its_name(rt: Runtime) {
    let dir = RunDir::new(&format!("admin-named-{}", rt.name()));
    let (a, b) = (SipBackend::start(), SipBackend::start());
    let name = format!("localhost:{}", a.addr.port());
    let body = format!(
        "resolve-interval = 0.2\n[[backend]]\naddr = \"{name}\"\n[[backend]]\naddr = \"{}\"\n",
        b.addr
    );
    let admin = Admin::start(&dir, rt, &body, &["--workers", "2"]);
    admin.wait_state(&[a.addr, b.addr], "up");
    let by_name: Vec<Value> = admin
        .backends()
        .into_iter()
        .filter(|x| x["name"] == name.as_str())
        .collect();
    assert!(
        by_name.iter().any(|x| x["addr"] == a.addr.to_string()),
        "{by_name:?}"
    );
    for x in &by_name {
        let addr: SocketAddr = x["addr"].as_str().unwrap().parse().unwrap();
        assert!(
            addr.ip().is_loopback() && addr.port() == a.addr.port(),
            "{x}"
        );
    }
    assert_eq!(admin.backend(b.addr).unwrap()["name"], Value::Null);

    let answer = admin.ok("POST", &format!("/backends/{name}/drain"), "", 200);
    assert_eq!(answer["name"], name.as_str(), "{answer}");
    assert_eq!(answer["until"], "reload", "{answer}");
    let drained = answer["backends"].as_array().unwrap();
    assert_eq!(drained.len(), by_name.len(), "{answer}");
    assert!(drained.iter().all(|x| x["draining"] == true), "{answer}");
    // Several re-resolutions later the operator's drain still stands.
    std::thread::sleep(std::time::Duration::from_secs(1));
    admin.wait_state(&[a.addr], "draining");
    for i in 0..4 {
        let mut client = SipClient::connect(admin.lb.addr());
        assert_eq!(client.call(&format!("named-drained-{i}")).status, 200);
    }
    assert_eq!(calls_on(&a), 0, "a backend drained by name got a call");

    admin.ok("POST", &format!("/backends/{name}/resume"), "", 200);
    admin.wait_state(&[a.addr], "up");
    let weight = admin.ok("PUT", &format!("/backends/{name}/weight"), "2", 200);
    assert_eq!(weight["backend"]["weight"], 2, "{weight}");
    for i in 0..6 {
        let mut client = SipClient::connect(admin.lb.addr());
        assert_eq!(client.call(&format!("named-resumed-{i}")).status, 200);
    }
    assert!(calls_on(&a) > 0, "the resumed backend got no call");
    let (status, err) = admin.call("POST", "/backends/elsewhere.example:5060/drain", "");
    assert_eq!(status, 404, "{err}");
    let mut lb = admin.lb;
    lb.assert_running();
    lb.stop();
}

siplb_e2e::for_both_runtimes!(
    a_backend_by_name_is_resolved_and_managed_by_its_name,
    admin_changes_reach_every_worker,
    calls_are_traced_by_the_api,
    drain_and_resume_by_the_api,
    add_and_remove_backends_until_the_next_reload,
    a_weight_set_by_the_api_steers_the_split,
    a_token_guards_the_api,
    json_logs_are_one_object_per_line,
);
