//! `--trace-call-id` against the real binaries (`lb-tokio`, `lb-mio`): every message of the
//! named call, and only of it, is logged with where it went (issue 14, "logs").

#![allow(clippy::unwrap_used)]

use siplb_e2e::lb::Runtime;
use siplb_e2e::ops::{backend_series, backend_tables, OpsLb, SipBackend, SipClient};
use siplb_e2e::RunDir;

fn traced_call_is_logged_with_its_decisions(rt: Runtime) {
    let dir = RunDir::new(&format!("call-trace-{}", rt.name()));
    let backend = SipBackend::start();
    let mut lb = OpsLb::start(
        &dir,
        rt,
        &backend_tables(&[&backend]),
        &["--trace-call-id", "traced-1@test"],
    );
    lb.wait_metric(&backend_series("backend_up", 0, backend.addr), 1.0);
    let mut client = SipClient::connect(lb.addr());
    let traced = client.call("traced-1@test");
    assert_eq!(traced.status, 200);
    assert_eq!(client.bye(&traced), 200);
    let other = client.call("other-1@test");
    assert_eq!(other.status, 200);
    lb.stop();
    let log = lb.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("traced call")).collect();
    assert!(
        lines.iter().all(|l| l.contains("traced-1@test")),
        "only the named call is traced:\n{}",
        lines.join("\n")
    );
    // The INVITE to the backend, its 200 to the caller, the BYE and its 200 (this client
    // sends no ACK for a 2xx): each with the side it came from and the one it went to.
    let expect = [
        ("INVITE sip:", "frontend", "backend b0"),
        ("SIP/2.0 200 OK", "backend b0", "frontend"),
        ("BYE sip:", "frontend", "backend b0"),
    ];
    for (message, from, to) in expect {
        assert!(
            lines.iter().any(|l| l.contains(&format!("sip={message}"))
                && l.contains(&format!("from={from}"))
                && l.contains(&format!("decision={to}"))),
            "no trace of {message} from {from} to {to}:\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(
        lines.len(),
        4,
        "one line per message of the call (INVITE, 200, BYE, 200):\n{}",
        lines.join("\n")
    );
}

siplb_e2e::for_both_runtimes!(traced_call_is_logged_with_its_decisions);
