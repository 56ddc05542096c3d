//! Writes a forwarded message once, with the balancer's insertions and removals spliced in,
//! straight into the target connection's output buffer (STYLE.md §8): no intermediate copy.
//!
//! A rewrite is a short list of [`Edit`]s, each cutting a span of the received message and/or
//! inserting one of the balancer's own pieces there. Everything else is copied verbatim, so the
//! body and every header the balancer does not own stay byte for byte as received.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, BytesMut};
use smallvec::SmallVec;

use crate::conn_token::ConnTokens;
use crate::ids::{BackendId, ConnId};
use crate::message::Span;
use crate::tag::{Facing, TagSigner};

/// One splice: at `at`, drop `cut` bytes, then write `insert`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Edit {
    pub(crate) at: u32,
    pub(crate) cut: u32,
    pub(crate) insert: Insertion,
}

/// What the balancer writes into a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Insertion {
    /// Nothing: a pure cut.
    Nothing,
    /// `Record-Route: <sip:ADVERTISE_BACKEND;transport=tcp;lr;lb=bTAG>` line (RFC 3261 §16.6
    /// step 4) on an initial request passed to a backend: the entry backends see, with the
    /// backend-facing tag.
    RecordRoute,
    /// `sip:ADVERTISE;transport=tcp;lr;lb=TAG`: the URI of the balancer's Record-Route entry as
    /// frontends see it, replacing the backend-facing one in a response going upstream
    /// (RFC 3261 §16.7 step 4).
    FrontendRouteUri { tls: bool },
    /// `Max-Forwards: 70` line for a request that had none (RFC 3261 §16.6 step 3).
    MaxForwards,
    /// A decimal number: the decremented Max-Forwards value.
    Decimal(u32),
    /// The configured extension header carrying the tag.
    TagHeader,
    /// The balancer's own `Via` line with the tag, for requests a backend originates; `branch` is
    /// derived from the received branch so retransmissions and CANCEL keep a stable one
    /// (RFC 3261 §16.11).
    /// `came_on` names the connection the request came on (`lbc`, see `conn_token`) when it is
    /// not the backend's own connection, so that the response goes back there.
    OwnVia {
        branch: u64,
        came_on: Option<ConnId>,
        tls: bool,
        /// The `sent` field of the token (`ConnTokens::stamp`).
        sent_us: u64,
    },
    /// The balancer's own Via on a request passed to a backend (RFC 3261 §16.6 step 8):
    /// `Via: SIP/2.0/TCP ADVERTISE_BACKEND;branch=z9hG4bK…;lbc=TOKEN`. Its `lbc` token names the
    /// frontend connection the request came on, so the response goes back on exactly that one,
    /// and carries the send time `sent_us` the response-time histograms read back.
    ProxyVia {
        branch: u64,
        came_on: ConnId,
        sent_us: u64,
    },
    /// `;received=IP` on the top Via (RFC 3261 §18.2.1).
    Received(IpAddr),
    /// `=PORT` after a bare `rport` (RFC 3581 §4).
    RportValue(u16),
    /// Fixed text, such as a replacement status line.
    Raw(&'static [u8]),
    /// Bytes of the message itself, from elsewhere in it (a Route URI moved into the
    /// Request-URI).
    Copy(Span),
}

/// The edits of one message; a handful at most, kept inline.
pub(crate) type Edits = SmallVec<[Edit; 6]>;

/// What insertions need to know.
pub(crate) struct Context<'a> {
    /// `host[:port]` of the balancer.
    pub(crate) advertise: &'a str,
    /// `host[:port]` of the balancer as backends reach it.
    pub(crate) advertise_backend: &'a str,
    /// `host[:port]` of the balancer as TLS frontends reach it.
    pub(crate) advertise_tls: &'a str,
    /// The backend the message goes to (or is tagged for) is reached over TLS.
    pub(crate) backend_tls: bool,
    pub(crate) signer: &'a TagSigner,
    pub(crate) tokens: &'a ConnTokens,
    /// The backend the tag names.
    pub(crate) backend: BackendId,
    pub(crate) call_id: &'a [u8],
    pub(crate) tag_header: Option<&'a str>,
}

impl Edit {
    pub(crate) fn insert(at: u32, insert: Insertion) -> Edit {
        Edit { at, cut: 0, insert }
    }

    pub(crate) fn cut(span: Span) -> Edit {
        Edit {
            at: span.start,
            cut: span.end - span.start,
            insert: Insertion::Nothing,
        }
    }
}

/// Appends `message` with `edits` applied to `out`. Edits must not overlap; they are applied in
/// position order (stable for equal positions, so insertions at one point keep their order).
pub(crate) fn write(out: &mut BytesMut, message: &[u8], edits: &mut Edits, cx: &Context<'_>) {
    edits.sort_by_key(|e| e.at);
    out.reserve(message.len() + 160 * edits.len());
    let mut copied = 0usize;
    for edit in edits.iter() {
        let at = (edit.at as usize).clamp(copied, message.len());
        out.put_slice(&message[copied..at]);
        write_insertion(out, message, edit.insert, cx);
        copied = (at + edit.cut as usize).min(message.len());
    }
    out.put_slice(&message[copied..]);
}

fn write_insertion(out: &mut BytesMut, message: &[u8], insert: Insertion, cx: &Context<'_>) {
    match insert {
        Insertion::Nothing => {}
        Insertion::RecordRoute => {
            out.put_slice(b"Record-Route: <sip:");
            out.put_slice(cx.advertise_backend.as_bytes());
            out.put_slice(if cx.backend_tls {
                b";transport=tls;lr;lb="
            } else {
                b";transport=tcp;lr;lb="
            });
            cx.signer
                .write_facing(out, cx.backend, cx.call_id, Facing::Backends);
            out.put_slice(b">\r\n");
        }
        Insertion::FrontendRouteUri { tls } => {
            out.put_slice(b"sip:");
            if tls {
                // RFC 5630 §3.1.3 deprecates `transport=tls` in favour of sips: for end-to-end
                // TLS; for one hop it is what peers (Kamailio among them) write and read.
                out.put_slice(cx.advertise_tls.as_bytes());
                out.put_slice(b";transport=tls;lr;lb=");
            } else {
                out.put_slice(cx.advertise.as_bytes());
                out.put_slice(b";transport=tcp;lr;lb=");
            }
            cx.signer.write(out, cx.backend, cx.call_id);
        }
        Insertion::MaxForwards => out.put_slice(b"Max-Forwards: 70\r\n"),
        Insertion::Decimal(n) => {
            let _ = write!(BufWriter(out), "{n}");
        }
        Insertion::TagHeader => {
            if let Some(name) = cx.tag_header {
                out.put_slice(name.as_bytes());
                out.put_slice(b": ");
                cx.signer.write(out, cx.backend, cx.call_id);
                out.put_slice(b"\r\n");
            }
        }
        Insertion::OwnVia {
            branch,
            came_on,
            tls,
            sent_us,
        } => {
            if tls {
                out.put_slice(b"Via: SIP/2.0/TLS ");
                out.put_slice(cx.advertise_tls.as_bytes());
            } else {
                out.put_slice(b"Via: SIP/2.0/TCP ");
                out.put_slice(cx.advertise.as_bytes());
            }
            out.put_slice(b";branch=z9hG4bK");
            put_hex(out, branch);
            out.put_slice(b";lb=");
            cx.signer.write(out, cx.backend, cx.call_id);
            if let Some(conn) = came_on {
                out.put_slice(b";lbc=");
                cx.tokens.write(out, conn, sent_us, cx.call_id);
            }
            out.put_slice(b"\r\n");
        }
        Insertion::ProxyVia {
            branch,
            came_on,
            sent_us,
        } => {
            out.put_slice(if cx.backend_tls {
                b"Via: SIP/2.0/TLS "
            } else {
                b"Via: SIP/2.0/TCP "
            });
            out.put_slice(cx.advertise_backend.as_bytes());
            out.put_slice(b";branch=z9hG4bK");
            put_hex(out, branch);
            out.put_slice(b";lbc=");
            cx.tokens.write(out, came_on, sent_us, cx.call_id);
            out.put_slice(b"\r\n");
        }
        Insertion::Received(ip) => {
            out.put_slice(b";received=");
            // Formatting an IpAddr writes into the buffer without allocating.
            let _ = write!(BufWriter(out), "{ip}");
        }
        Insertion::Raw(text) => out.put_slice(text),
        Insertion::Copy(span) => out.put_slice(&message[span.range()]),
        Insertion::RportValue(port) => {
            out.put_u8(b'=');
            let _ = write!(BufWriter(out), "{port}");
        }
    }
}

fn put_hex(out: &mut BytesMut, value: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for shift in (0..16).rev() {
        out.put_u8(HEX[((value >> (shift * 4)) & 0xf) as usize]);
    }
}

/// `fmt::Write` onto a `BytesMut`, so numbers and addresses format in place.
pub(crate) struct BufWriter<'a>(pub(crate) &'a mut BytesMut);

impl std::fmt::Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}
