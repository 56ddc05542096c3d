//! What the core-sequence harness reads off the core: its monotone counters, the messages in a
//! `Send` (unframed by the connection's framing), and answers it writes to them.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Frontend { peer: SocketAddr },
    Backend { backend: BackendId, envelope: bool },
}

/// The figures of [`crate::Stats`] that only ever grow: the counters and the high-water mark.
pub(super) fn counters(s: &crate::Stats) -> Vec<u64> {
    crate::Stats::SERIES
        .iter()
        .zip(s.pairs())
        .filter(|(series, (name, _))| {
            series.kind == crate::stats::Kind::Counter || *name == "table_len_max"
        })
        .map(|(_, (_, value))| value)
        .collect()
}

/// The messages in one `Send`, or why it does not hold whole frames: SIP messages and CRLF
/// pongs on a stream, envelopes of exactly one message each to an envelope backend.
pub(super) fn unframe(role: Role, bytes: &Bytes) -> Result<Vec<(Option<Envelope>, Bytes)>, String> {
    let mut messages = Vec::new();
    if let Role::Backend { envelope: true, .. } = role {
        let mut decoder = EnvelopeDecoder::default();
        decoder.push(BytesMut::from(&bytes[..]));
        while let Some(next) = decoder.next_envelope(usize::MAX) {
            match next {
                Ok((e, payload)) => {
                    assert_single_frame(&payload);
                    messages.push((Some(e), payload));
                }
                Err(e) => return Err(format!("a bad envelope: {e:?}")),
            }
        }
        if decoder.buffered_len() != 0 {
            return Err("a Send ends inside an envelope".to_owned());
        }
        return Ok(messages);
    }
    let mut framer = StreamFramer::default();
    framer.push(BytesMut::from(&bytes[..]));
    while let Some(next) = framer.next_frame(usize::MAX) {
        match next {
            Ok(Frame::Message(m)) => messages.push((None, m)),
            Ok(Frame::Ping) => {
                if !matches!(role, Role::Frontend { .. }) {
                    return Err("CRLFCRLF sent to a backend".to_owned());
                }
            }
            Err(e) => return Err(format!("bytes that do not frame ({})", e.as_str())),
        }
    }
    // A trailing pong (a lone CRLF) waits in the framer; anything else is a cut message.
    let rest = framer.buffered_len();
    if rest == 0 || (rest == 2 && bytes.ends_with(b"\r\n")) {
        Ok(messages)
    } else {
        Err("a Send that ends inside a message".to_owned())
    }
}

/// A response to `request` as its recipient would send it: its Via, From, To (tagged), Call-ID,
/// CSeq and Record-Route lines copied; a status from the usual ones, 503 with or without
/// Retry-After. Requests only: a response yields a retransmission of itself.
pub(super) fn answer(c: &mut Choices<'_>, request: &Bytes) -> Vec<u8> {
    if !request.starts_with(b"SIP/2.0 ") {
        let status = [100, 180, 200, 200, 486, 503, 481, 408][c.below(8)];
        let mut out = format!("SIP/2.0 {status} Fuzz\r\n").into_bytes();
        for (name, span) in header_lines(request) {
            let line = &request[span.range()];
            let keep = match name {
                crate::message::HeaderName::Other => {
                    line.len() > 13 && line[..13].eq_ignore_ascii_case(b"record-route:")
                }
                crate::message::HeaderName::To => {
                    let body = line.strip_suffix(b"\r\n").unwrap_or(line);
                    out.extend_from_slice(body);
                    if status > 100 && memchr::memmem::find(body, b";tag=").is_none() {
                        out.extend_from_slice(b";tag=t1");
                    }
                    out.extend_from_slice(b"\r\n");
                    false
                }
                _ => true,
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
    } else {
        request.to_vec()
    }
}
