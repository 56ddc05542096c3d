//! The `lb-mio` binary between a TCP client and a tiny TCP backend on 127.0.0.1.

#[path = "../../lb-tokio/tests/support/mod.rs"]
mod support;

#[test]
fn invite_is_tagged_answered_and_sigterm_prints_stats() {
    support::invite_ok_and_sigterm(env!("CARGO_BIN_EXE_lb-mio"));
}

#[test]
fn command_line_checks_and_errors() {
    support::command_line(env!("CARGO_BIN_EXE_lb-mio"));
}

#[test]
fn slow_reader_is_paused_then_closed_for_not_reading() {
    support::slow_reader_is_paused_then_closed(env!("CARGO_BIN_EXE_lb-mio"));
}

#[test]
fn refused_frontend_is_closed() {
    support::refused_frontend_is_closed(env!("CARGO_BIN_EXE_lb-mio"));
}
