//! The SIP text of the model: how the frontends write their messages, and what the checks read
//! from the balancer's.

use std::net::SocketAddr;

use crate::{CALLEE_TAG, TAG_HEADER};

pub(crate) fn fe_peer(f: usize) -> SocketAddr {
    format!("203.0.113.{}:{}", f + 1, 40_000 + f)
        .parse()
        .unwrap()
}

/// The frontends write their Via three ways: a host name with `rport` (the balancer stamps
/// `received` and the port), their IP and listening port (nothing stamped: found by alias),
/// their IP and source port with `rport` in the middle.
pub(crate) fn fe_via(f: usize, branch: &str) -> String {
    let peer = fe_peer(f);
    match f % 3 {
        0 => format!("Via: SIP/2.0/TCP fe{f}.example.net:5060;branch={branch};rport"),
        1 => format!("Via: SIP/2.0/TCP {}:5060;branch={branch}", peer.ip()),
        _ => format!(
            "Via: SIP/2.0/TCP {}:{};rport;branch={branch}",
            peer.ip(),
            peer.port()
        ),
    }
}

/// Frontend 0 writes the compact header forms (RFC 3261 §7.3.3), the others the long ones.
pub(crate) fn dialect(f: usize, message: String) -> String {
    if !f.is_multiple_of(3) {
        return message;
    }
    let mut out = message;
    for (long, short) in [
        ("\r\nVia: ", "\r\nv: "),
        ("\r\nFrom: ", "\r\nf: "),
        ("\r\nTo: ", "\r\nt: "),
        ("\r\nCall-ID: ", "\r\ni: "),
        ("\r\nContent-Length: ", "\r\nl: "),
    ] {
        out = out.replace(long, short);
    }
    out
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An INVITE copy at backend `j`: its Record-Route tag names `j`, its Call-ID is the call's.
pub(crate) fn check_copy(
    msg: &str,
    j: usize,
    call_id: &str,
    tag_header: bool,
) -> Result<(), String> {
    let rr = msg
        .lines()
        .find(|l| l.starts_with("Record-Route:"))
        .ok_or_else(|| format!("INVITE without Record-Route at backend {j}: {msg:?}"))?;
    let rr_tag = lb_tag(rr).unwrap_or_default();
    ensure!(
        rr_tag.starts_with('b'),
        "the Record-Route a backend sees carries a frontend-facing tag: {rr}"
    );
    let tagged = tag_backend(&rr_tag);
    ensure!(
        tagged == Some(j),
        "INVITE at backend {j} with a tag naming {tagged:?}: {rr}"
    );
    ensure!(
        msg.contains(&format!("\r\nCall-ID: {call_id}\r\n"))
            || msg.contains(&format!("\r\ni: {call_id}\r\n")),
        "backend {j} got another call: {msg:?}"
    );
    let header = msg.lines().find_map(|l| {
        l.strip_prefix(TAG_HEADER)
            .and_then(|v| v.strip_prefix(": "))
    });
    if tag_header {
        ensure!(
            header.is_some_and(|h| !h.starts_with('b')) && header.and_then(tag_backend) == tagged,
            "the {TAG_HEADER} header {header:?} does not carry the Record-Route's tag: {msg:?}"
        );
    } else {
        ensure!(header.is_none(), "a {TAG_HEADER} header nobody configured");
    }
    Ok(())
}

/// The `lb` parameter of a Record-Route, Route or Via line.
pub(crate) fn lb_tag(line: &str) -> Option<String> {
    let start = line.find(";lb=")? + 4;
    let end = line[start..]
        .find(['>', ';', ',', ' '])
        .map_or(line.len(), |e| start + e);
    Some(line[start..end].to_string())
}

/// The backend a tag names (its first field, after the `b` of a backend-facing tag).
pub(crate) fn tag_backend(tag: &str) -> Option<usize> {
    let tag = tag.strip_prefix('b').unwrap_or(tag);
    tag.split('.').next()?.parse().ok()
}

/// A response to `request`: Via, From, To (with the callee's tag), Call-ID, CSeq and
/// Record-Route copied.
pub(crate) fn response_to(request: &str, status: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for line in request.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line.split(':').next().unwrap_or("");
        match name {
            "Via" | "v" | "From" | "f" | "Call-ID" | "i" | "CSeq" | "Record-Route" => {
                out.push_str(line);
                out.push_str("\r\n");
            }
            "To" | "t" => {
                out.push_str(line);
                if !line.contains("tag=") {
                    out.push_str(";tag=");
                    out.push_str(CALLEE_TAG);
                }
                out.push_str("\r\n");
            }
            _ => {}
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}
