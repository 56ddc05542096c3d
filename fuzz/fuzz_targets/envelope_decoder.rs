//! The envelope decoder and `decode_header`: errors, never panics; any split, same envelopes.
//! Invariants: see `lb_testkit::fuzz::envelope`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lb_testkit::fuzz::envelope(data));
