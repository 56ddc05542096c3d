//! The connection token: names the connection a request came on, in the `lbc` parameter of the
//! balancer's own Via, so that its response goes back on that very connection. RFC 3261 §18.2.2
//! has a server answer on the connection the request arrived on; a backend that sent its request
//! over a connection of its own waits for the answer there, not on the balancer's connection.
//!
//! Text form: `{slot}.{generation}.{mac}`, the mac 16 lowercase hex digits of a SipHash-1-3
//! keyed with a secret of this balancer over slot, generation and Call-ID. A peer can neither
//! name another connection nor move a token to another call; a token minted before a restart
//! fails to verify, and the response then takes the backend's own connection.

use std::hash::Hasher;

use bytes::{BufMut, BytesMut};
use siphasher::sip::SipHasher13;

use crate::ids::ConnId;

/// Mints and checks connection tokens with this balancer's secret.
#[derive(Debug)]
pub(crate) struct ConnTokens {
    key: [u8; 16],
}

impl ConnTokens {
    pub(crate) fn new(key: [u8; 16]) -> ConnTokens {
        ConnTokens { key }
    }

    fn mac(&self, slot: u32, generation: u32, call_id: &[u8]) -> u64 {
        let mut h = SipHasher13::new_with_key(&self.key);
        h.write_u32(slot);
        h.write_u32(generation);
        h.write(call_id);
        h.finish()
    }

    /// Appends the token for `conn` and this Call-ID.
    pub(crate) fn write(&self, out: &mut BytesMut, conn: ConnId, call_id: &[u8]) {
        let (slot, generation) = conn.parts();
        let mac = self.mac(slot, generation, call_id);
        let mut w = crate::rewrite::BufWriter(out);
        let _ = std::fmt::Write::write_fmt(&mut w, format_args!("{slot}.{generation}."));
        for shift in (0..16).rev() {
            out.put_u8(b"0123456789abcdef"[((mac >> (shift * 4)) & 0xf) as usize]);
        }
    }

    /// The connection `text` names, if it is a token this balancer minted for this Call-ID.
    pub(crate) fn verify(&self, text: &[u8], call_id: &[u8]) -> Option<ConnId> {
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.splitn(3, '.');
        let slot: u32 = parts.next()?.parse().ok()?;
        let generation: u32 = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        if mac.len() != 16 || !mac.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        let mac = u64::from_str_radix(mac, 16).ok()?;
        // Not constant-time: a forger learns nothing from timing that helps against a 64-bit
        // keyed hash it must guess whole, one request per guess.
        (mac == self.mac(slot, generation, call_id)).then(|| ConnId::from_parts(slot, generation))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_token_names_its_connection_for_its_call_only() {
        let tokens = ConnTokens::new([7; 16]);
        let conn = ConnId::new(12, 34);
        let mut out = BytesMut::new();
        tokens.write(&mut out, conn, b"call-a");
        assert!(out.starts_with(b"12.34."), "{out:?}");
        assert_eq!(tokens.verify(&out, b"call-a"), Some(conn));
        assert_eq!(tokens.verify(&out, b"call-b"), None);
        assert_eq!(ConnTokens::new([8; 16]).verify(&out, b"call-a"), None);
        let other = format!("13.34.{}", std::str::from_utf8(&out[6..]).unwrap());
        assert_eq!(tokens.verify(other.as_bytes(), b"call-a"), None);
        for junk in [
            &b""[..],
            b"1.2",
            b"1.2.xyz",
            b"1.2.00000000000000000",
            b"\xff",
        ] {
            assert_eq!(tokens.verify(junk, b"call-a"), None);
        }
    }
}
