//! The std-loop example between a TCP client and a tiny TCP backend on 127.0.0.1.

#[path = "../../../crates/lb-tokio/tests/support/mod.rs"]
mod support;

#[test]
fn invite_is_tagged_answered_and_sigterm_prints_stats() {
    support::invite_ok_and_sigterm(env!("CARGO_BIN_EXE_example-std-loop"));
}

#[test]
fn slow_reader_is_closed_at_the_output_cap() {
    support::slow_reader_hits_the_output_cap(env!("CARGO_BIN_EXE_example-std-loop"));
}

#[test]
fn refused_frontend_is_closed() {
    support::refused_frontend_is_closed(env!("CARGO_BIN_EXE_example-std-loop"));
}
