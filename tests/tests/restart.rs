//! A restart loses no established call (issue 15 item 7): calls are set up through the real
//! binary to two example envelope backends, the balancer is stopped and started again with the
//! same tag key file, and then:
//! - for half the calls the caller, on a new connection, sends a re-INVITE and a BYE: the tags
//!   in their Route headers still verify, so each reaches the backend that answered the call,
//!   over the restarted balancer's new connection to it;
//! - for the other half the backend hangs up (asked by an in-dialog INFO with `X-Hang-Up`
//!   from another connection): its BYE goes to the caller's Contact, to which the restarted
//!   balancer has no connection, so it dials out (RFC 3261 §18.1.1), and the caller's 200
//!   goes back to the backend.
//!
//! The backends keep their dialogs across the lost connection
//! (`examples/envelope-backend/src/uas/keep.rs`).

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use siplb_e2e::envelope::EnvBackend;
use siplb_e2e::lb::Runtime;
use siplb_e2e::net::{free_port, local};
use siplb_e2e::ops::{
    accept_within, backend_series, header, method, response, status, OpsLb, SipClient, SipReader,
};
use siplb_e2e::RunDir;

fn backend_name(message: &str) -> String {
    header(message, "X-Backend").unwrap_or_default().to_string()
}

fn restart_keeps_established_calls(rt: Runtime) {
    const CALLS: usize = 6;
    let dir = RunDir::new(&format!("restart-{}", rt.name()));
    let keys = dir.file("tag.keys");
    std::fs::write(
        &keys,
        "1:000102030405060708090a0b0c0d0e0f1011121314151617\n",
    )
    .unwrap();
    let (b1, b2) = (
        EnvBackend::start(&dir, "b1", 0),
        EnvBackend::start(&dir, "b2", 0),
    );
    let body = format!(
        "tag-key-file = \"{}\"\nbackend-mode = \"envelope\"\n\
         [[backend]]\naddr = \"{}\"\n[[backend]]\naddr = \"{}\"\n",
        keys.display(),
        b1.addr(),
        b2.addr()
    );
    let mut lb = OpsLb::start(&dir, rt, &body, &[]);
    let wait_up = |lb: &mut OpsLb| {
        for (i, b) in [&b1, &b2].into_iter().enumerate() {
            lb.wait_metric(&backend_series("backend_up", i, b.addr()), 1.0);
        }
    };
    wait_up(&mut lb);
    // The caller listens where its Contact points, as a proxy does: the backends' BYEs after
    // the restart come there.
    let listener = TcpListener::bind(local(free_port())).unwrap();
    let mut caller = SipClient::connect(lb.addr()).advertising(listener.local_addr().unwrap());
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let call = caller.call(&format!("kept-{i}"));
            assert_eq!(call.status, 200, "{}", call.response);
            caller.ack(&call);
            call
        })
        .collect();
    let answered_by: Vec<String> = calls.iter().map(|c| backend_name(&c.response)).collect();
    assert!(
        answered_by.contains(&"b1".to_string()) && answered_by.contains(&"b2".to_string()),
        "round robin over both: {answered_by:?}"
    );

    lb.restart(&dir, rt, &[]);
    wait_up(&mut lb);
    // The old connection went with the old process; the caller comes back on a new one.
    assert!(caller
        .read_within(std::time::Duration::from_secs(2))
        .is_none());
    let mut caller = SipClient::connect(lb.addr());
    let half = CALLS / 2;
    for (call, backend) in calls[..half].iter().zip(&answered_by) {
        let reinvite = caller.in_dialog("INVITE", call, 3, "reinvite");
        caller.send_raw(reinvite.as_bytes());
        let answer = caller.final_response(&call.call_id);
        assert_eq!(
            status(&answer),
            Some(200),
            "re-INVITE after the restart: {answer}"
        );
        assert_eq!(
            &backend_name(&answer),
            backend,
            "the same backend: {answer}"
        );
        let ack = caller.in_dialog("ACK", call, 3, "reinvite-ack");
        caller.send_raw(ack.as_bytes());
        let bye = caller.in_dialog("BYE", call, 4, "bye");
        caller.send_raw(bye.as_bytes());
        let answer = caller.final_response(&call.call_id);
        assert_eq!(
            status(&answer),
            Some(200),
            "BYE after the restart: {answer}"
        );
        assert_eq!(
            &backend_name(&answer),
            backend,
            "the same backend: {answer}"
        );
    }
    // The backends hang up the others: each BYE comes on a connection the balancer dials.
    let mut controller = SipClient::connect(lb.addr());
    for (call, backend) in calls[half..].iter().zip(&answered_by[half..]) {
        let info = controller.in_dialog("INFO", call, 5, "hang-up").replace(
            "Content-Length: 0\r\n",
            "X-Hang-Up: now\r\nContent-Length: 0\r\n",
        );
        controller.send_raw(info.as_bytes());
        let answer = controller.final_response(&call.call_id);
        assert_eq!(status(&answer), Some(200), "INFO: {answer}");
        let dialled = accept_within(&listener, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the balancer dialled no connection for {}", call.call_id));
        let mut out = dialled.try_clone().unwrap();
        let bye = SipReader::new(dialled).next_message().unwrap().unwrap();
        assert_eq!(method(&bye), "BYE", "{bye}");
        assert_eq!(
            header(&bye, "Call-ID"),
            Some(call.call_id.as_str()),
            "{bye}"
        );
        assert_eq!(&backend_name(&bye), backend, "{bye}");
        // In the caller's dialog: its tag in To, the callee's in From.
        assert!(header(&bye, "To")
            .unwrap()
            .contains(&format!("tag=c-{}", call.call_id)));
        out.write_all(response(&bye, 200, "").as_bytes()).unwrap();
    }
    // A new call goes through too.
    assert_eq!(caller.call("after-restart").status, 200);
    let stats = lb.stop();
    assert!(stats.contains("to_backup=0 "), "{stats}");
    let (c1, c2) = (b1.finish(), b2.finish());
    for c in [&c1, &c2] {
        assert_eq!(c.get("no_dialog"), Some(&0), "{c:?}");
    }
    let sum = |key: &str| c1.get(key).unwrap() + c2.get(key).unwrap();
    // The callers' BYEs ended half the calls; the callers' 200s to the backends' BYEs, the
    // only responses a backend receives here, came back for the other half.
    assert_eq!(
        sum("completed"),
        (CALLS - CALLS / 2) as u64,
        "{c1:?} {c2:?}"
    );
    assert_eq!(sum("responses"), (CALLS / 2) as u64, "{c1:?} {c2:?}");
}

siplb_e2e::for_both_runtimes!(restart_keeps_established_calls);
