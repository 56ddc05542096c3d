//! What the core-sequence harness reads off the core and writes back: its monotone counters,
//! and the answers a peer sends to what the core sent it.

use bytes::Bytes;
use lb_core::fuzzing::CopiedHeader;
use lb_core::{Kind, Stats};

use super::Choices;

/// The figures of [`Stats`] that only ever grow: the counters and the high-water mark.
pub(super) fn counters(s: &Stats) -> Vec<u64> {
    Stats::SERIES
        .iter()
        .zip(s.pairs())
        .filter(|(series, (name, _))| series.kind == Kind::Counter || *name == "table_len_max")
        .map(|(_, (_, value))| value)
        .collect()
}

/// A response to `request` as its recipient would send it: its Via, From, To (tagged), Call-ID,
/// CSeq and Record-Route lines copied; a status from the usual ones, 503 with or without
/// Retry-After. Requests only: a response yields a retransmission of itself.
pub(super) fn answer(c: &mut Choices<'_>, request: &Bytes) -> Vec<u8> {
    if request.starts_with(b"SIP/2.0 ") {
        return request.to_vec();
    }
    let status = [100, 180, 200, 200, 486, 503, 481, 408][c.below(8)];
    let mut out = format!("SIP/2.0 {status} Fuzz\r\n").into_bytes();
    for (name, range) in lb_core::fuzzing::header_lines(request) {
        let line = &request[range];
        let keep = match name {
            CopiedHeader::Other => {
                line.len() > 13 && line[..13].eq_ignore_ascii_case(b"record-route:")
            }
            CopiedHeader::To => {
                let body = line.strip_suffix(b"\r\n").unwrap_or(line);
                out.extend_from_slice(body);
                if status > 100 && memchr::memmem::find(body, b";tag=").is_none() {
                    out.extend_from_slice(b";tag=t1");
                }
                out.extend_from_slice(b"\r\n");
                false
            }
            CopiedHeader::Via | CopiedHeader::From | CopiedHeader::CallId | CopiedHeader::CSeq => {
                true
            }
        };
        if keep {
            out.extend_from_slice(line);
        }
    }
    if status == 503 && c.byte() & 1 == 0 {
        out.extend_from_slice(format!("Retry-After: {}\r\n", c.byte() % 8).as_bytes());
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    out
}
