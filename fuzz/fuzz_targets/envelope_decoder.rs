//! The envelope decoder and `decode_header`: errors, never panics; any split, same envelopes.
//! Invariants: see `lb_core::fuzzing::envelope`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lb_core::fuzzing::envelope(data));
