//! The lexer under both the framer and the parser: header field lines (`next_field`), CRLF
//! search, the byte classes of RFC 3261 §25.1 and the number readers. It knows no header by
//! name; `framing` and `message` build on it and never on each other's internals.

use std::ops::Range;

/// One header field: `name` trimmed, `value` from after the colon to before the final CRLF
/// (untrimmed, continuation lines included), `line_end` just after the final CRLF.
pub(crate) struct Field {
    pub(crate) name: Range<usize>,
    pub(crate) value: Range<usize>,
    pub(crate) line_end: usize,
}

/// What starts at a line boundary of a head.
pub(crate) enum Step {
    Field(Field),
    /// The empty line: the offset given is the header end.
    End,
    /// A line that is no header field (no colon, bad name, or a continuation line with nothing
    /// to continue); `line_end` lets a lenient reader skip it.
    Malformed {
        line_end: usize,
    },
    /// No CRLF ends the line.
    Truncated,
}

/// Reads the header field starting at `pos`, which must be at the start of a line. Continuation
/// lines (CRLF then SP or HTAB, RFC 3261 §7.3.1) belong to the field, so a name is only ever
/// recognised at the start of a line.
pub(crate) fn next_field(b: &[u8], pos: usize) -> Step {
    let Some(rest) = b.get(pos..) else {
        return Step::Truncated;
    };
    if rest.starts_with(b"\r\n") {
        return Step::End;
    }
    let mut from = pos;
    let crlf = loop {
        let Some(crlf) = find_crlf(b, from) else {
            return Step::Truncated;
        };
        match b.get(crlf + 2) {
            Some(b' ' | b'\t') => from = crlf + 2,
            _ => break crlf,
        }
    };
    let line_end = crlf + 2;
    // `token *WSP ":"`: one pass over the name finds the colon and validates the name. Neither
    // a token character nor WSP is a colon, so this is the line's first colon.
    let name_end = token_end(b, pos, crlf);
    let mut colon = name_end;
    while colon < crlf && is_wsp(b[colon]) {
        colon += 1;
    }
    if name_end == pos || colon >= crlf || b[colon] != b':' {
        return Step::Malformed { line_end };
    }
    Step::Field(Field {
        name: pos..name_end,
        value: colon + 1..crlf,
        line_end,
    })
}

/// Offset of the first CRLF at or after `from`. A CR alone is ordinary data.
///
/// Looks for the LF (at `from + 1` or later) and checks the byte before it: the first LF
/// preceded by a CR is the first CRLF.
pub(crate) fn find_crlf(b: &[u8], from: usize) -> Option<usize> {
    let mut at = from.checked_add(1)?;
    loop {
        let lf = find_lf(b, at)?;
        if b[lf - 1] == b'\r' {
            return Some(lf - 1);
        }
        at = lf + 1;
    }
}

/// Offset of the first LF at or after `from`, eight bytes per step.
///
/// Header lines are mostly 20–80 bytes: at that length the setup of a vectorised `memchr`
/// costs more than this loop, which inlines into the line walkers.
#[inline]
pub(crate) fn find_lf(b: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LFS: u64 = ONES * b'\n' as u64;
    let mut i = from;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word) ^ LFS;
        // The lowest byte flagged here is the first zero byte of `x`, i.e. the first LF; a
        // borrow can only flag bytes above a real zero, never below it.
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(|&c| c == b'\n')
        .map(|at| i + at)
}

/// `token` characters of RFC 3261 §25.1.
pub(crate) const TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        table[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    table
};

pub(crate) fn is_token(c: u8) -> bool {
    TOKEN[c as usize]
}

pub(crate) fn is_wsp(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Inside a field value CR and LF occur only as part of a fold, so all four are LWS.
pub(crate) fn is_lws(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}

pub(crate) fn skip_lws(b: &[u8], i: usize, e: usize) -> usize {
    run_end(b, i, e, is_lws)
}

/// The end of the run of bytes satisfying `keep` in `b[i..e]` (`i` when `i >= e`). Iterating
/// the subslice lets the compiler drop the per-byte bounds check of an indexed loop.
#[inline(always)]
pub(crate) fn run_end(b: &[u8], i: usize, e: usize, keep: impl Fn(u8) -> bool) -> usize {
    match b.get(i..e.min(b.len())) {
        Some(run) => i + run.iter().position(|&c| !keep(c)).unwrap_or(run.len()),
        None => i,
    }
}

pub(crate) fn skip_sp(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    i
}

pub(crate) fn trim_lws(b: &[u8], s: usize, e: usize) -> (usize, usize) {
    let s = skip_lws(b, s, e);
    let mut e = e;
    while e > s && is_lws(b[e - 1]) {
        e -= 1;
    }
    (s, e)
}

pub(crate) fn token_end(b: &[u8], i: usize, e: usize) -> usize {
    run_end(b, i, e, is_token)
}

pub(crate) fn digits_end(b: &[u8], i: usize, e: usize) -> usize {
    run_end(b, i, e, |c| c.is_ascii_digit())
}

/// The offset after the closing quote of the quoted string opening at `open` (backslash
/// escapes honoured), `None` if unterminated.
pub(crate) fn quoted_end(b: &[u8], open: usize, e: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < e {
        match b[i] {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// Decimal digits only, at least one, overflow checked.
pub(crate) fn parse_u32(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        } else {
            None
        }
    })
}

pub(crate) fn parse_port(digits: &[u8]) -> Option<u16> {
    parse_u32(digits).and_then(|n| u16::try_from(n).ok())
}

/// Why the stream cannot be framed any more: the connection must close. Its public face (and
/// text) is [`crate::FramingFault`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FramingError {
    /// No Content-Length header (mandatory on streams, RFC 3261 §18.3).
    MissingContentLength,
    /// A Content-Length that is not a number, or two that disagree.
    BadContentLength,
    /// The header block did not end within `message_bytes_max`.
    HeaderTooLarge,
    /// Headers plus the announced body exceed `message_bytes_max`.
    MessageTooLarge,
}

/// `LWS 1*DIGIT LWS` as a `usize`; signs, other characters and overflow are errors.
pub(crate) fn decimal(value: &[u8]) -> Result<usize, FramingError> {
    let lws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let start = value.iter().position(|c| !lws(c)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|c| !lws(c))
        .map_or(start, |last| last + 1);
    let digits = &value[start..end];
    if digits.is_empty() {
        return Err(FramingError::BadContentLength);
    }
    digits.iter().try_fold(0usize, |n, &d| {
        if d.is_ascii_digit() {
            n.checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(d - b'0')))
                .ok_or(FramingError::BadContentLength)
        } else {
            Err(FramingError::BadContentLength)
        }
    })
}
