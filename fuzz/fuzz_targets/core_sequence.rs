//! The whole balancer through its public API, fed a sequence of driver inputs decoded from the
//! fuzz input. Invariants: see `lb_testkit::fuzz::core_sequence`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| lb_testkit::fuzz::core_sequence(data));
