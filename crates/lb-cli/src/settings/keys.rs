//! Tag keys: the key file's `ID:HEXSECRET` lines, or a random key when there is none.

use super::*;

pub(super) fn parse_tag_keys(text: &str) -> Result<Vec<TagKey>, String> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = i + 1;
        let (id, hex) = line
            .split_once(':')
            .ok_or_else(|| format!("line {at}: expected ID:HEXSECRET"))?;
        let id: u8 = id
            .trim()
            .parse()
            .map_err(|_| format!("line {at}: key id {id:?} is not 0..=255"))?;
        let secret = decode_hex(hex.trim())
            .ok_or_else(|| format!("line {at}: the secret is not an even number of hex digits"))?;
        if secret.len() < TAG_KEY_BYTES_MIN {
            return Err(format!(
                "line {at}: key {id} is shorter than {TAG_KEY_BYTES_MIN} bytes"
            ));
        }
        keys.push(TagKey { id, secret });
    }
    if keys.is_empty() {
        return Err("no key in the file".to_string());
    }
    Ok(keys)
}

pub(super) fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let hi = char::from(pair[0]).to_digit(16)?;
            let lo = char::from(pair[1]).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

pub(super) fn random_tag_key() -> Result<TagKey, CliError> {
    let mut secret = vec![0; GENERATED_KEY_BYTES];
    rand::rngs::OsRng.try_fill_bytes(&mut secret).map_err(|e| {
        CliError::invalid(
            "tag-key-file",
            format!("no key file and no OS randomness: {e}"),
        )
    })?;
    Ok(TagKey { id: 1, secret })
}

/// The core refuses shorter secrets; checking here names the line of the file.
pub(super) const TAG_KEY_BYTES_MIN: usize = 16;

/// Size of the key made at start when no key file is given (the HMAC-SHA256 block-safe size).
pub(super) const GENERATED_KEY_BYTES: usize = 32;
