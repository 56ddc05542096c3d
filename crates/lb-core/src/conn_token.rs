//! The connection token: names the connection a request came on, in the `lbc` parameter of the
//! balancer's own Via, so that its response goes back on that very connection. RFC 3261 §18.2.2
//! has a server answer on the connection the request arrived on; a backend that sent its request
//! over a connection of its own waits for the answer there, not on the balancer's connection.
//!
//! Text form: `{slot}.{generation}.{sent}.{mac}`, `sent` the time the request was forwarded
//! (microseconds since the balancer started, from the core's `now`), the mac 16 lowercase hex
//! digits of a SipHash-1-3 keyed with a secret of this balancer over slot, generation, sent time
//! and Call-ID. A peer can neither name another connection, nor move a token to another call,
//! nor change the time (which the response-time histograms read back, `stats::Telemetry`); a
//! token minted before a restart fails to verify, and the response then takes the backend's own
//! connection.

use std::hash::Hasher;
use std::time::Instant;

use bytes::{BufMut, BytesMut};
use siphasher::sip::SipHasher13;

use crate::ids::ConnId;

/// Mints and checks connection tokens with this balancer's secret.
#[derive(Debug)]
pub(crate) struct ConnTokens {
    key: [u8; 16],
    /// The time origin of the `sent` field.
    epoch: Instant,
}

/// A verified token: the connection it names, and what the response-time figures need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) conn: ConnId,
    /// Microseconds since the epoch when the request was forwarded.
    pub(crate) sent_us: u64,
    /// Names this forwarded request (the MAC covers connection, time and Call-ID).
    pub(crate) mac: u64,
}

impl ConnTokens {
    pub(crate) fn new(key: [u8; 16], epoch: Instant) -> ConnTokens {
        ConnTokens { key, epoch }
    }

    /// `now` as the `sent` field of a token.
    pub(crate) fn stamp(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_micros()).unwrap_or(u64::MAX)
    }

    /// Microseconds from a token's send time to `now`; `None` for a time in the future.
    pub(crate) fn elapsed_us(&self, token: &Token, now: Instant) -> Option<u64> {
        self.stamp(now).checked_sub(token.sent_us)
    }

    fn mac(&self, slot: u32, generation: u32, sent_us: u64, call_id: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write_u32(slot);
        h.write_u32(generation);
        h.write_u64(sent_us);
        h.write(call_id);
        h.finish()
    }

    /// Appends the token for `conn`, sent at `sent_us` ([`ConnTokens::stamp`]), and this
    /// Call-ID.
    pub(crate) fn write(&self, out: &mut BytesMut, conn: ConnId, sent_us: u64, call_id: &[u8]) {
        let (slot, generation) = conn.parts();
        let mac = self.mac(slot, generation, sent_us, call_id);
        let mut w = crate::rewrite::BufWriter(out);
        let _ = std::fmt::Write::write_fmt(&mut w, format_args!("{slot}.{generation}.{sent_us}."));
        for shift in (0..16).rev() {
            out.put_u8(b"0123456789abcdef"[((mac >> (shift * 4)) & 0xf) as usize]);
        }
    }

    /// The token `text` is, if this balancer minted it for this Call-ID.
    pub(crate) fn verify(&self, text: &[u8], call_id: &[u8]) -> Option<Token> {
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.splitn(4, '.');
        let slot: u32 = parts.next()?.parse().ok()?;
        let generation: u32 = parts.next()?.parse().ok()?;
        let sent_us: u64 = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        if mac.len() != 16 || !mac.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mac = u64::from_str_radix(mac, 16).ok()?;
        // Not constant-time: a forger learns nothing from timing that helps against a 64-bit
        // keyed hash it must guess whole, one request per guess.
        (mac == self.mac(slot, generation, sent_us, call_id)).then(|| Token {
            conn: ConnId::from_parts(slot, generation),
            sent_us,
            mac,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Tests need some instant; the balancer itself only ever gets one from its inputs.
    #[allow(clippy::disallowed_methods)]
    fn origin() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_token_names_its_connection_for_its_call_only() {
        let epoch = origin();
        let tokens = ConnTokens::new([7; 16], epoch);
        let conn = ConnId::new(12, 34);
        let mut out = BytesMut::new();
        tokens.write(&mut out, conn, 5, b"call-a");
        assert!(out.starts_with(b"12.34.5."), "{out:?}");
        let token = tokens.verify(&out, b"call-a").unwrap();
        assert_eq!((token.conn, token.sent_us), (conn, 5));
        assert_eq!(tokens.verify(&out, b"call-b"), None);
        assert_eq!(
            ConnTokens::new([8; 16], epoch).verify(&out, b"call-a"),
            None
        );
        let rest = std::str::from_utf8(&out[6..]).unwrap();
        let other = format!("13.34.{rest}");
        assert_eq!(tokens.verify(other.as_bytes(), b"call-a"), None);
        // The send time is covered by the MAC: a backend cannot make a response look faster.
        let earlier = format!("12.34.6.{}", &rest[2..]);
        assert_eq!(tokens.verify(earlier.as_bytes(), b"call-a"), None);
        for junk in [
            &b""[..],
            b"1.2",
            b"1.2.3",
            b"1.2.3.xyz",
            b"1.2.x.0000000000000000",
            b"1.2.3.00000000000000000",
            b"\xff",
        ] {
            assert_eq!(tokens.verify(junk, b"call-a"), None);
        }
    }

    #[test]
    fn elapsed_time_is_read_back_from_the_stamp() {
        let epoch = origin();
        let tokens = ConnTokens::new([7; 16], epoch);
        let sent = epoch + std::time::Duration::from_millis(3);
        let mut out = BytesMut::new();
        tokens.write(&mut out, ConnId::new(1, 1), tokens.stamp(sent), b"c");
        let token = tokens.verify(&out, b"c").unwrap();
        let later = sent + std::time::Duration::from_micros(1_500);
        assert_eq!(tokens.elapsed_us(&token, later), Some(1_500));
        assert_eq!(tokens.elapsed_us(&token, epoch), None);
    }
}
