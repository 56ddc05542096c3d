//! The tag: a short token naming a backend, authenticated by a truncated HMAC-SHA256 bound to
//! the Call-ID, with the key id inside so keys rotate without dropping calls.
//!
//! Text form: `{backend}.{key id}.{mac}`, e.g. `2.1.9f3a0c1d2e4b5a69`, where `backend` and
//! `key id` are decimal without leading zeros and `mac` is 16 lowercase hex digits: the first 8
//! bytes of HMAC-SHA256(secret, backend as big-endian u16 ‖ key id ‖ Call-ID). Digits, `.` and
//! lowercase letters are both RFC 3261 `token` and URI `paramchar` characters, so the tag goes
//! unescaped into a `lb=` URI parameter, a Via parameter or an extension header value.
//!
//! A tag faces one side. The Record-Route entry a backend sees carries a *backend-facing* tag,
//! `b{backend}.{key id}.{mac}`, whose MAC input starts with [`BACKEND_FACING`]; the balancer
//! rewrites it into the frontend-facing form in the responses it passes upstream (RFC 3261
//! §16.7 step 4 lets a proxy rewrite its own Record-Route there). So only a backend ever holds a
//! backend-facing tag, and a request carrying one comes from that backend, over whatever
//! connection it arrives: a frontend cannot pass itself off as a backend.
//!
//! Choices:
//! - 64 bits of MAC: a forger must guess among 2^64 values per Call-ID and gets one try per
//!   request, while the tag stays short enough for every Record-Route and Via of the dialog.
//! - The MAC covers the Call-ID, so a tag seen in one dialog cannot be replayed to steer another.
//! - Only the canonical text verifies (no leading zeros, lowercase hex): one (backend, key, MAC)
//!   has exactly one spelling, so a tag cannot be varied while staying valid.
//! - Each key is hashed into its HMAC state once at construction and that state is cloned per
//!   use: the per-message cost is the two compression passes over the Call-ID, not the key.

use std::fmt;

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::TagKey;
use crate::ids::BackendId;

/// Longest tag text [`TagSigner::write`] produces.
pub(crate) const TAG_LEN_MAX: usize = 32;

/// Why a tag was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagError {
    /// Not of the tag's shape.
    Malformed,
    /// The key id is not among the accepted keys.
    UnknownKey,
    /// The MAC does not match.
    BadMac,
}

/// Which side of the balancer a tag is written for (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Facing {
    /// Seen by frontends: Record-Route in responses upstream, the balancer's Via, the extension
    /// header. The original form, so tags minted by earlier versions still verify.
    Frontends,
    /// Seen only by backends: the Record-Route entry of requests passed to them.
    Backends,
}

/// Signs and verifies tags with the configured keys.
#[derive(Clone)]
pub(crate) struct TagSigner {
    /// `(key id, HMAC state already keyed)`, configuration order; the first signs.
    keys: Vec<(u8, HmacSha256)>,
    shared_hash_key: [u8; 16],
}

impl TagSigner {
    /// Keys in configuration order; the first signs. `keys` is non-empty (validated).
    pub(crate) fn new(keys: &[TagKey]) -> TagSigner {
        let keys: Vec<(u8, HmacSha256)> = keys
            .iter()
            .map(|k| {
                let mac =
                    HmacSha256::new_from_slice(&k.secret).expect("HMAC accepts keys of any length");
                (k.id, mac)
            })
            .collect();
        // Keyed by the first secret, so every instance sharing the key list agrees, and an
        // outsider who sees tags still cannot compute it.
        let mut shared_hash_key = [0u8; 16];
        if let Some((_, mac)) = keys.first() {
            let mut mac = mac.clone();
            mac.update(RENDEZVOUS_LABEL);
            shared_hash_key.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        }
        debug_assert!(!keys.is_empty(), "config validation requires a tag key");
        TagSigner {
            keys,
            shared_hash_key,
        }
    }

    /// Appends the frontend-facing tag for `backend` and this Call-ID to `out`.
    pub(crate) fn write(&self, out: &mut BytesMut, backend: BackendId, call_id: &[u8]) {
        self.write_facing(out, backend, call_id, Facing::Frontends);
    }

    /// Appends the tag for `backend` and this Call-ID, facing `facing`, to `out` (URI-parameter
    /// and token safe).
    pub(crate) fn write_facing(
        &self,
        out: &mut BytesMut,
        backend: BackendId,
        call_id: &[u8],
        facing: Facing,
    ) {
        let Some((key_id, mac)) = self.keys.first() else {
            // Unreachable with a validated config; writing nothing yields a tag that never
            // verifies, which is the safe failure.
            return;
        };
        let index = backend_index(backend);
        let digest = compute_mac(mac, facing, index, *key_id, call_id);
        let mut text = [0u8; TAG_LEN_MAX];
        let mut len = 0;
        if facing == Facing::Backends {
            text[0] = b'b';
            len = 1;
        }
        len = write_decimal(&mut text, len, u32::from(index));
        text[len] = b'.';
        len += 1;
        len = write_decimal(&mut text, len, u32::from(*key_id));
        text[len] = b'.';
        len += 1;
        for byte in digest {
            text[len] = HEX[usize::from(byte >> 4)];
            text[len + 1] = HEX[usize::from(byte & 0x0f)];
            len += 2;
        }
        out.extend_from_slice(&text[..len]);
    }

    /// The backend named by `tag`, if its MAC verifies for this Call-ID, whichever side it
    /// faces.
    // Only the tests and the fuzz targets use this.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn verify(&self, tag: &[u8], call_id: &[u8]) -> Result<BackendId, TagError> {
        self.verify_facing(tag, call_id).map(|(backend, _)| backend)
    }

    /// The backend named by `tag` and the side it faces, if its MAC verifies for this Call-ID
    /// (constant-time compare).
    pub(crate) fn verify_facing(
        &self,
        tag: &[u8],
        call_id: &[u8],
    ) -> Result<(BackendId, Facing), TagError> {
        let (facing, tag) = match tag.strip_prefix(b"b") {
            Some(rest) => (Facing::Backends, rest),
            None => (Facing::Frontends, tag),
        };
        let parsed = parse(tag).ok_or(TagError::Malformed)?;
        let (_, mac) = self
            .keys
            .iter()
            .find(|(id, _)| *id == parsed.key_id)
            .ok_or(TagError::UnknownKey)?;
        let mut mac = mac.clone();
        feed(&mut mac, facing, parsed.backend, parsed.key_id, call_id);
        mac.verify_truncated_left(&parsed.mac)
            .map_err(|_| TagError::BadMac)?;
        Ok((BackendId::new(usize::from(parsed.backend)), facing))
    }

    /// 16 bytes derived from the signing key, the same on every balancer instance sharing the
    /// key list: keys the rendezvous hash so all instances pick the same backup for a call.
    pub(crate) fn shared_hash_key(&self) -> [u8; 16] {
        self.shared_hash_key
    }
}

impl fmt::Debug for TagSigner {
    /// Key ids only: secrets never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

type HmacSha256 = Hmac<Sha256>;

/// A tag's fields, parsed from its canonical text.
struct ParsedTag {
    backend: u16,
    key_id: u8,
    mac: [u8; MAC_LEN],
}

fn backend_index(backend: BackendId) -> u16 {
    // `BackendId` is a u16 inside; config validation caps the list far below that.
    u16::try_from(backend.index()).unwrap_or(u16::MAX)
}

fn feed(mac: &mut HmacSha256, facing: Facing, backend: u16, key_id: u8, call_id: &[u8]) {
    if facing == Facing::Backends {
        mac.update(BACKEND_FACING);
    }
    mac.update(&backend.to_be_bytes());
    mac.update(&[key_id]);
    mac.update(call_id);
}

fn compute_mac(
    keyed: &HmacSha256,
    facing: Facing,
    backend: u16,
    key_id: u8,
    call_id: &[u8],
) -> [u8; MAC_LEN] {
    let mut mac = keyed.clone();
    feed(&mut mac, facing, backend, key_id, call_id);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

/// Writes `value` in decimal at `buf[at..]`, returning the end; `buf` has room (callers pass
/// at most 5 digits into a [`TAG_LEN_MAX`] array).
fn write_decimal(buf: &mut [u8; TAG_LEN_MAX], at: usize, value: u32) -> usize {
    let mut digits = [0u8; 10];
    let mut n = 0;
    let mut v = value;
    loop {
        // `v % 10` is below 10, so the cast cannot truncate.
        digits[n] = b'0' + (v % 10) as u8;
        n += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for (i, d) in digits[..n].iter().rev().enumerate() {
        buf[at + i] = *d;
    }
    at + n
}

/// Strict parse of the canonical form; `None` for anything else.
fn parse(tag: &[u8]) -> Option<ParsedTag> {
    if tag.len() > TAG_LEN_MAX {
        return None;
    }
    let mut parts = tag.splitn(3, |b| *b == b'.');
    let backend = parse_decimal(parts.next()?, 5)?;
    let key_id = parse_decimal(parts.next()?, 3)?;
    let mac_hex = parts.next()?;
    let backend = u16::try_from(backend).ok()?;
    let key_id = u8::try_from(key_id).ok()?;
    if mac_hex.len() != MAC_LEN * 2 {
        return None;
    }
    let mut mac = [0u8; MAC_LEN];
    for (byte, pair) in mac.iter_mut().zip(mac_hex.chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(ParsedTag {
        backend,
        key_id,
        mac,
    })
}

/// Decimal of 1..=`digits_max` digits without a leading zero (except `0` itself).
fn parse_decimal(text: &[u8], digits_max: usize) -> Option<u32> {
    if text.is_empty() || text.len() > digits_max || (text.len() > 1 && text[0] == b'0') {
        return None;
    }
    let mut value = 0u32;
    for &c in text {
        if !c.is_ascii_digit() {
            return None;
        }
        value = value * 10 + u32::from(c - b'0');
    }
    Some(value)
}

/// Lowercase hex only: the canonical spelling.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Bytes of HMAC output kept in the tag.
const MAC_LEN: usize = 8;
const HEX: &[u8; 16] = b"0123456789abcdef";
/// Domain separation: the rendezvous key is an HMAC of this label, never of tag input (which
/// starts with a 2-byte backend index, so it cannot collide with a label this long).
const RENDEZVOUS_LABEL: &[u8] = b"siplb rendezvous";
/// Domain separation of backend-facing tags: the frontend-facing MAC input starts with the
/// backend index, whose high byte is never 0xff (validation caps the backend list far below).
const BACKEND_FACING: &[u8] = &[0xff, b'b'];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use quickcheck_macros::quickcheck;

    use super::*;

    fn key(id: u8, fill: u8) -> TagKey {
        TagKey {
            id,
            secret: vec![fill; 32],
        }
    }

    fn tag_text(signer: &TagSigner, backend: u16, call_id: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        signer.write(&mut out, BackendId::for_test(backend), call_id);
        out.to_vec()
    }

    #[test]
    fn roundtrip() {
        let signer = TagSigner::new(&[key(1, 7)]);
        for backend in [0u16, 2, 9, 10, 99, 1023, u16::MAX] {
            let tag = tag_text(&signer, backend, b"a84b4c76e66710@pc33.atlanta.com");
            assert!(tag.len() <= TAG_LEN_MAX);
            assert_eq!(
                signer.verify(&tag, b"a84b4c76e66710@pc33.atlanta.com"),
                Ok(BackendId::for_test(backend))
            );
        }
    }

    #[test]
    fn text_shape() {
        let signer = TagSigner::new(&[key(1, 7)]);
        let tag = tag_text(&signer, 2, b"call");
        let text = std::str::from_utf8(&tag).unwrap();
        let (head, mac) = text.split_at(4);
        assert_eq!(head, "2.1.");
        assert_eq!(mac.len(), 16);
        assert!(mac
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
        // The longest form still fits.
        let signer = TagSigner::new(&[key(255, 7)]);
        let tag = tag_text(&signer, u16::MAX, b"call");
        assert_eq!(tag.len(), 5 + 1 + 3 + 1 + 16);
        assert!(tag.len() <= TAG_LEN_MAX);
    }

    #[test]
    fn known_answer_is_stable() {
        // Pins the wire form: instances of different versions must agree on tags.
        let signer = TagSigner::new(&[TagKey {
            id: 1,
            secret: b"0123456789abcdef".to_vec(),
        }]);
        let tag = tag_text(&signer, 2, b"call-1@example.com");
        let mut mac = HmacSha256::new_from_slice(b"0123456789abcdef").unwrap();
        mac.update(&[0, 2, 1]);
        mac.update(b"call-1@example.com");
        let full = mac.finalize().into_bytes();
        let hex: String = full[..8].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(std::str::from_utf8(&tag).unwrap(), format!("2.1.{hex}"));
    }

    #[test]
    fn write_appends() {
        let signer = TagSigner::new(&[key(1, 7)]);
        let mut out = BytesMut::from(&b"lb="[..]);
        signer.write(&mut out, BackendId::for_test(3), b"c");
        assert!(out.starts_with(b"lb=3.1."));
        assert_eq!(signer.verify(&out[3..], b"c"), Ok(BackendId::for_test(3)));
    }

    #[test]
    fn facing_sides_are_distinct() {
        let signer = TagSigner::new(&[key(1, 7)]);
        let mut out = BytesMut::new();
        signer.write_facing(&mut out, BackendId::for_test(3), b"c", Facing::Backends);
        assert!(out.starts_with(b"b3.1."));
        assert_eq!(
            signer.verify_facing(&out, b"c"),
            Ok((BackendId::for_test(3), Facing::Backends))
        );
        let front = tag_text(&signer, 3, b"c");
        assert_eq!(
            signer.verify_facing(&front, b"c"),
            Ok((BackendId::for_test(3), Facing::Frontends))
        );
        // A frontend that prefixes `b` to the tag it saw does not get a backend-facing one.
        let mut forged = b"b".to_vec();
        forged.extend_from_slice(&front);
        assert_eq!(signer.verify_facing(&forged, b"c"), Err(TagError::BadMac));
        assert_eq!(signer.verify_facing(&out[1..], b"c"), Err(TagError::BadMac));
    }

    #[test]
    fn rotation() {
        let old = TagSigner::new(&[key(1, 7)]);
        let tag = tag_text(&old, 4, b"call");
        let rotated = TagSigner::new(&[key(2, 9), key(1, 7)]);
        assert_eq!(rotated.verify(&tag, b"call"), Ok(BackendId::for_test(4)));
        // New tags are signed with the first key.
        assert!(tag_text(&rotated, 4, b"call").starts_with(b"4.2."));
        let retired = TagSigner::new(&[key(2, 9)]);
        assert_eq!(retired.verify(&tag, b"call"), Err(TagError::UnknownKey));
    }

    #[test]
    fn same_id_other_secret_is_bad_mac() {
        let a = TagSigner::new(&[key(1, 7)]);
        let b = TagSigner::new(&[key(1, 8)]);
        let tag = tag_text(&a, 0, b"call");
        assert_eq!(b.verify(&tag, b"call"), Err(TagError::BadMac));
    }

    #[test]
    fn other_call_id_is_bad_mac() {
        let signer = TagSigner::new(&[key(1, 7)]);
        let tag = tag_text(&signer, 1, b"call-a");
        assert_eq!(signer.verify(&tag, b"call-b"), Err(TagError::BadMac));
        assert_eq!(signer.verify(&tag, b""), Err(TagError::BadMac));
    }

    #[test]
    fn malformed() {
        let signer = TagSigner::new(&[key(1, 7)]);
        let good = tag_text(&signer, 12, b"c");
        let good = std::str::from_utf8(&good).unwrap().to_owned();
        let mac = &good[5..];
        let cases = [
            String::new(),
            ".".into(),
            "..".into(),
            format!("12.1.{}", mac.to_uppercase()),
            format!("012.1.{mac}"),
            format!("12.01.{mac}"),
            format!("12.1.{mac}0"),
            format!("12.1.{}", &mac[1..]),
            format!("12.1.{mac}."),
            format!("12.256.{mac}"),
            format!("65536.1.{mac}"),
            format!("+12.1.{mac}"),
            format!("12..{mac}"),
            format!(".1.{mac}"),
            "12.1".into(),
            "x".repeat(100),
        ];
        assert_eq!(
            signer.verify(good.as_bytes(), b"c"),
            Ok(BackendId::for_test(12))
        );
        for case in cases {
            assert_eq!(
                signer.verify(case.as_bytes(), b"c"),
                Err(TagError::Malformed),
                "{case}"
            );
        }
        assert_eq!(
            signer.verify(format!("12.3.{mac}").as_bytes(), b"c"),
            Err(TagError::UnknownKey)
        );
    }

    #[test]
    fn shared_hash_key_follows_first_key() {
        let a = TagSigner::new(&[key(1, 7), key(2, 9)]);
        let b = TagSigner::new(&[key(1, 7)]);
        let c = TagSigner::new(&[key(2, 9), key(1, 7)]);
        assert_eq!(a.shared_hash_key(), b.shared_hash_key());
        assert_ne!(a.shared_hash_key(), c.shared_hash_key());
        assert_ne!(a.shared_hash_key(), [0u8; 16]);
    }

    #[test]
    fn debug_hides_secrets() {
        let signer = TagSigner::new(&[key(1, 7), key(2, 9)]);
        assert_eq!(format!("{signer:?}"), "[1, 2]");
    }

    #[quickcheck]
    fn any_single_bit_flip_fails(backend: u16, call_id: Vec<u8>, position: usize, bit: u8) -> bool {
        let signer = TagSigner::new(&[key(1, 7), key(3, 5)]);
        let mut tag = tag_text(&signer, backend, &call_id);
        let i = position % tag.len();
        tag[i] ^= 1 << (bit % 8);
        signer.verify(&tag, &call_id).is_err()
    }

    #[quickcheck]
    fn another_call_id_fails(backend: u16, a: Vec<u8>, b: Vec<u8>) -> bool {
        let signer = TagSigner::new(&[key(1, 7)]);
        let tag = tag_text(&signer, backend, &a);
        a == b || signer.verify(&tag, &b) == Err(TagError::BadMac)
    }

    #[quickcheck]
    fn arbitrary_bytes_never_panic(tag: Vec<u8>, call_id: Vec<u8>) -> bool {
        let signer = TagSigner::new(&[key(1, 7)]);
        // Random bytes forging a 64-bit MAC would be a broken MAC.
        signer.verify(&tag, &call_id).is_err()
    }

    #[quickcheck]
    fn arbitrary_tag_shaped_text_never_panics(
        backend: u32,
        key_id: u16,
        mac: u64,
        call_id: Vec<u8>,
    ) {
        let signer = TagSigner::new(&[key(1, 7)]);
        let text = format!("{backend}.{key_id}.{mac:016x}");
        let _ = signer.verify(text.as_bytes(), &call_id);
    }
}
