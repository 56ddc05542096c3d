//! The fuzz targets on their seeds, on the RFC 4475 torture messages and on pseudo-random
//! inputs, and every crash the fuzzer found, replayed (inputs under `fuzz/regressions/`). These
//! run in `cargo test --workspace`; the fuzz crate itself is not a workspace member.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use lb_core::envelope::{self, Envelope, Transport};
use lb_testkit::fuzz::{self, core_sequence, envelope as envelope_target, noise};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rfc4475() -> Vec<Vec<u8>> {
    let dir = workspace().join("crates/lb-core/tests/data/rfc4475");
    let mut all: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "dat"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    all.sort();
    assert!(all.len() >= 40, "the RFC 4475 messages are missing");
    all
}

#[test]
fn stream_and_analyse_hold_on_the_torture_messages() {
    let messages = rfc4475();
    for (i, m) in messages.iter().enumerate() {
        for prefix in [[2u8, 0, 5, 7], [3, 3, i as u8, 1], [0, 1, 9, 9]] {
            lb_core::fuzzing::stream(&[&prefix[..], m].concat());
        }
        lb_core::fuzzing::analyse(&[&[1u8][..], m].concat());
    }
    let mut all = vec![3u8, 0, 1, 2, b'\r', b'\n'];
    for m in &messages {
        all.extend_from_slice(m);
        all.extend_from_slice(b"\r\n\r\n");
    }
    lb_core::fuzzing::stream(&all);
}

#[test]
fn envelopes_round_trip_in_pieces() {
    let mut input = vec![2u8, 77, 3];
    for (i, m) in rfc4475().iter().take(8).enumerate() {
        let e = Envelope {
            addr: (i % 2 == 0).then(|| SocketAddr::from(([10, 0, 0, i as u8], 5060))),
            transport: Transport::Tcp,
            load: (i % 3 == 0).then_some(i as u32),
        };
        let mut out = BytesMut::new();
        envelope::encode(&mut out, &e, &m[..m.len().min(1000)]);
        input.extend_from_slice(&out);
    }
    envelope_target(&input);
    for seed in 0..200 {
        envelope_target(&noise(seed, 100));
    }
}

/// 300 seeds by default; `SIPLB_FUZZ_NOISE_SEEDS=N` runs N (a soak without cargo-fuzz).
#[test]
fn core_sequence_holds_on_noise() {
    let seeds = std::env::var("SIPLB_FUZZ_NOISE_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    for seed in 0..seeds {
        if std::env::var_os("SIPLB_FUZZ_TRACE").is_some() {
            eprintln!("seed {seed}");
        }
        core_sequence(&noise(seed, 1200));
    }
}

#[test]
fn core_sequence_sets_up_a_call() {
    core_sequence(&seed_call());
}

/// A new call through the core: backends connect, a frontend sends an INVITE, the backend it
/// went to answers, the frontend sends ACK and BYE with the tag, time passes.
fn seed_call() -> Vec<u8> {
    let mut s = vec![0u8];
    s.extend_from_slice(&[7, 0, 7, 0, 7, 0]); // three Connected
    s.extend_from_slice(&[0, 1, 0]); // accept 10.1.0.1:5060
                                     // INVITE: link, request, method 0, call 0, flags 0, via 10.1.0.1, rport, branch, cseq, no
                                     // mutation, reads 0/0 then the rest.
    s.extend_from_slice(&[1, 0, 1, 0, 0, 0, 0, 1, 0, 7, 7, 0, 1, 0, 0, 0, 0]);
    // A backend answers 200 (answer to what it got), no mutation, envelope choices, reads.
    s.extend_from_slice(&[4, 0, 4, 0, 2, 1, 0, 0, 0, 0]);
    // ACK and BYE with the Route tag (flags 1|8).
    s.extend_from_slice(&[1, 0, 1, 1, 0, 9, 0, 1, 0, 8, 8, 0, 1, 0, 0, 0, 0]);
    s.extend_from_slice(&[1, 0, 1, 2, 0, 9, 0, 1, 0, 9, 9, 1, 1, 0, 0, 0, 0]);
    s.extend_from_slice(&[10, 1, 0xa0, 0x0f, 10, 2]);
    s
}

/// Replays one input to read what happened:
/// `SIPLB_FUZZ_REPLAY=fuzz/artifacts/core_sequence/crash-… SIPLB_FUZZ_TRACE=1 cargo test -p
/// lb-testkit --test fuzz replay_from_env -- --ignored --nocapture` (`SIPLB_FUZZ_TARGET` picks
/// the target, `core_sequence` by default).
#[test]
#[ignore = "a tool: replays the file named by SIPLB_FUZZ_REPLAY"]
fn replay_from_env() {
    let path = std::env::var("SIPLB_FUZZ_REPLAY").expect("set SIPLB_FUZZ_REPLAY=FILE");
    // Tests run in the package's directory; a relative path is the workspace's.
    let data = std::fs::read(workspace().join(path)).unwrap();
    let target = std::env::var("SIPLB_FUZZ_TARGET").unwrap_or_else(|_| "core_sequence".into());
    fuzz::run(&target, &data);
}

/// Crashes the fuzzer found, minimised (`cargo fuzz tmin`), replayed with every invariant
/// checked. A test for a fault not fixed yet is `#[ignore]`d with the reason; remove the
/// attribute with the fix.
mod regressions {
    use super::*;

    fn replay(name: &str) {
        let path = workspace().join("fuzz/regressions").join(name);
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let target = name.split('-').next().unwrap_or_default();
        fuzz::run(target, &data);
    }

    /// A plain backend's framing is lost (a response without Content-Length): the core asked to
    /// close its connection but left the backend up, so its next probe (or new call) was sent
    /// on the closing connection, `Send` after `Close` (fixed in b65bbc0: a backend is down
    /// once its connection is closing).
    #[test]
    fn send_after_close_to_a_backend() {
        replay("core_sequence-send-after-close");
    }

    /// An envelope backend sends a request whose header block ends before its Content-Length
    /// (the envelope frames it, so the core accepted it) and the core forwarded it to a
    /// frontend over a plain stream, where nothing frames it: that frontend's stream is lost; a
    /// wrong Content-Length would desynchronise it (fixed in b65bbc0: an envelope payload must
    /// frame alone).
    #[test]
    fn unframed_message_from_an_envelope_backend() {
        replay("core_sequence-unframed-from-envelope");
    }

    /// Every file under `fuzz/regressions/` has a test above: a crash kept without its replay
    /// would protect nothing.
    #[test]
    fn every_regression_file_is_replayed() {
        let source = include_str!("fuzz.rs");
        for entry in std::fs::read_dir(workspace().join("fuzz/regressions")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                source.contains(&format!("replay(\"{name}\")")),
                "fuzz/regressions/{name} has no replay test"
            );
        }
    }
}
