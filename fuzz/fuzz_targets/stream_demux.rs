//! The stream framer and the message analyser: any bytes, any read sizes.
//! Invariants: see `lb_core::fuzzing::stream`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lb_core::fuzzing::stream(data));
