//! SIPp message traces (`-trace_msg`) and the per-call checks built on them.
//!
//! Each SIPp instance writes its own trace, so the file a message is in says which peer sent
//! or received it: for the three plain-mode backends, that is which backend saw the call.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

/// Whether the traced peer sent or received the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Dir {
    /// The peer sent it.
    Sent,
    /// The peer received it.
    Received,
}

impl fmt::Display for Dir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dir::Sent => "sent",
            Dir::Received => "recv",
        })
    }
}

/// One SIP message from a trace.
#[derive(Debug, Clone)]
pub struct SipMsg {
    /// Sent or received by the traced peer.
    pub dir: Dir,
    /// The trace's timestamp line, kept for failure messages.
    pub stamp: String,
    /// Request-Line or Status-Line.
    pub start_line: String,
    /// Header fields in order, names as written.
    pub headers: Vec<(String, String)>,
    /// The whole message text as logged.
    pub raw: String,
}

/// Full names of the compact header forms SIPp or the balancer might use (RFC 3261 7.3.3).
fn full_name(name: &str) -> &str {
    match name.to_ascii_lowercase().as_str() {
        "i" => "call-id",
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        _ => name,
    }
}

impl SipMsg {
    /// The method of a request, `None` for a response.
    pub fn method(&self) -> Option<&str> {
        if self.start_line.starts_with("SIP/2.0") {
            None
        } else {
            self.start_line.split_whitespace().next()
        }
    }

    /// The status code of a response, `None` for a request.
    pub fn status(&self) -> Option<u16> {
        let rest = self.start_line.strip_prefix("SIP/2.0 ")?;
        rest.split_whitespace().next()?.parse().ok()
    }

    /// The Request-URI of a request.
    pub fn request_uri(&self) -> Option<&str> {
        self.method()?;
        self.start_line.split_whitespace().nth(1)
    }

    /// All values of header `name` (case-insensitive, compact forms understood), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let want = full_name(name).to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| full_name(n).eq_ignore_ascii_case(&want))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }

    /// The Call-ID (empty if missing).
    pub fn call_id(&self) -> &str {
        self.header("Call-ID").unwrap_or("")
    }

    /// The method named in CSeq (empty if missing).
    pub fn cseq_method(&self) -> &str {
        self.header("CSeq")
            .and_then(|v| v.split_whitespace().nth(1))
            .unwrap_or("")
    }

    /// A short label: `INVITE` for a request, `200/INVITE` for a response.
    pub fn label(&self) -> String {
        match (self.method(), self.status()) {
            (Some(m), _) => m.to_string(),
            (None, Some(code)) => format!("{code}/{}", self.cseq_method()),
            (None, None) => self.start_line.clone(),
        }
    }

    /// `recv INVITE`, `sent 200/INVITE`, …
    pub fn dir_label(&self) -> String {
        format!("{} {}", self.dir, self.label())
    }
}

/// All messages one SIPp instance logged.
#[derive(Debug, Clone, Default)]
pub struct Trace {
    /// Which peer this is (e.g. `backend-0`, `uac`).
    pub name: String,
    /// Messages in log order.
    pub msgs: Vec<SipMsg>,
}

const SEPARATOR: &str = "-----------------------------------------------";

impl Trace {
    /// Reads and parses a trace file; a missing file is an empty trace (a peer that saw
    /// nothing may not have created one).
    pub fn load(name: &str, path: &Path) -> Trace {
        let text = std::fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Trace::parse(name, &text)
    }

    /// Parses the text of a SIPp `-trace_msg` log.
    ///
    /// Entries look like a dashed separator line with a timestamp, then
    /// `TCP message sent (N bytes):` or `TCP message received [N] bytes :`, a blank line and
    /// the message. Anything else SIPp writes into the log (socket warnings) is skipped.
    pub fn parse(name: &str, text: &str) -> Trace {
        let mut msgs = Vec::new();
        for entry in text.split(SEPARATOR).skip(1) {
            let mut lines = entry.splitn(3, '\n');
            let stamp = lines.next().unwrap_or("").trim().to_string();
            let kind = lines.next().unwrap_or("");
            let body = lines.next().unwrap_or("");
            let dir = if kind.contains("message sent") {
                Dir::Sent
            } else if kind.contains("message received") {
                Dir::Received
            } else {
                continue;
            };
            let raw = body.trim_start_matches(['\r', '\n']).to_string();
            let mut start_line = String::new();
            let mut headers: Vec<(String, String)> = Vec::new();
            for line in raw.split('\n').map(|l| l.trim_end_matches('\r')) {
                if start_line.is_empty() {
                    start_line = line.to_string();
                    continue;
                }
                if line.is_empty() {
                    break;
                }
                if line.starts_with([' ', '\t']) {
                    // Folded continuation of the previous header.
                    if let Some(last) = headers.last_mut() {
                        last.1.push(' ');
                        last.1.push_str(line.trim());
                    }
                    continue;
                }
                if let Some((n, v)) = line.split_once(':') {
                    headers.push((n.trim().to_string(), v.trim().to_string()));
                }
            }
            msgs.push(SipMsg {
                dir,
                stamp,
                start_line,
                headers,
                raw,
            });
        }
        Trace {
            name: name.to_string(),
            msgs,
        }
    }

    /// The Call-IDs present.
    pub fn call_ids(&self) -> BTreeSet<String> {
        self.msgs.iter().map(|m| m.call_id().to_string()).collect()
    }

    /// Call-IDs for which this peer logged a message matching `dir` and `label`.
    pub fn call_ids_with(&self, dir: Dir, label: &str) -> BTreeSet<String> {
        self.msgs
            .iter()
            .filter(|m| m.dir == dir && m.label() == label)
            .map(|m| m.call_id().to_string())
            .collect()
    }

    /// Messages grouped by Call-ID.
    pub fn calls(&self) -> BTreeMap<String, Vec<&SipMsg>> {
        let mut out: BTreeMap<String, Vec<&SipMsg>> = BTreeMap::new();
        for m in &self.msgs {
            out.entry(m.call_id().to_string()).or_default().push(m);
        }
        out
    }

    /// The sorted `dir label` list of one call's messages: what the peer saw of it, order
    /// aside (order across a TCP stream and SIPp's log is exact per peer, but comparing sorted
    /// lists keeps the expectation readable).
    pub fn signature(&self, call_id: &str) -> Vec<String> {
        let mut sig: Vec<String> = self
            .msgs
            .iter()
            .filter(|m| m.call_id() == call_id)
            .map(SipMsg::dir_label)
            .collect();
        sig.sort();
        sig
    }

    /// How many messages match `dir` and `label`.
    pub fn count(&self, dir: Dir, label: &str) -> usize {
        self.msgs
            .iter()
            .filter(|m| m.dir == dir && m.label() == label)
            .count()
    }

    /// The raw text of every message of `call_id`, for failure messages.
    pub fn dump_call(&self, call_id: &str) -> String {
        let mut out = String::new();
        for m in self.msgs.iter().filter(|m| m.call_id() == call_id) {
            out.push_str(&format!(
                "=== {} {} {}\n{}\n",
                self.name, m.dir, m.stamp, m.raw
            ));
        }
        out
    }
}

/// Builds the sorted expectation list for [`Trace::signature`] from `dir label` strings.
pub fn expect_sig(items: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| (*s).to_string()).collect();
    v.sort();
    v
}

/// Which backends' traces mention each Call-ID.
pub fn attribute(backends: &[&Trace]) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in backends {
        for id in t.call_ids() {
            out.entry(id).or_default().insert(t.name.clone());
        }
    }
    out
}

/// Asserts that every call the clients made was seen by exactly one backend and that the
/// backends saw no call the clients did not make; returns Call-ID → backend name.
///
/// On failure the message includes every trace excerpt of the offending call.
pub fn assert_affinity(clients: &[&Trace], backends: &[&Trace]) -> BTreeMap<String, String> {
    let client_calls: BTreeSet<String> = clients.iter().flat_map(|t| t.call_ids()).collect();
    let seen = attribute(backends);
    let dump = |id: &str| {
        clients
            .iter()
            .chain(backends.iter())
            .map(|t| t.dump_call(id))
            .collect::<String>()
    };
    let mut owner = BTreeMap::new();
    for id in &client_calls {
        match seen.get(id) {
            Some(names) if names.len() == 1 => {
                let name = names.iter().next().cloned().unwrap_or_default();
                owner.insert(id.clone(), name);
            }
            Some(names) => panic!(
                "call {id} was seen by several backends {names:?}:\n{}",
                dump(id)
            ),
            None => panic!("call {id} reached no backend:\n{}", dump(id)),
        }
    }
    for id in seen.keys() {
        assert!(
            client_calls.contains(id),
            "backends saw call {id} that no client made:\n{}",
            dump(id)
        );
    }
    owner
}

/// Asserts that each call in `calls` has exactly the signature `expected` in `trace`.
pub fn assert_signatures<'a>(
    trace: &Trace,
    calls: impl IntoIterator<Item = &'a String>,
    expected: &[&str],
) {
    let want = expect_sig(expected);
    for id in calls {
        let got = trace.signature(id);
        assert_eq!(
            got,
            want,
            "{}: messages of call {id} differ from the expected flow:\n{}",
            trace.name,
            trace.dump_call(id)
        );
    }
}

/// Counts calls per backend name.
pub fn per_backend(owner: &BTreeMap<String, String>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for name in owner.values() {
        *out.entry(name.clone()).or_insert(0) += 1;
    }
    out
}

/// Asserts every backend in `traces` owns at least one call, that each saw exactly the calls
/// it owns, and that the per-backend counts add up to `calls`.
pub fn assert_spread(owner: &BTreeMap<String, String>, traces: &[Trace], calls: usize) {
    let counts = per_backend(owner);
    for t in traces {
        assert!(
            counts.get(&t.name).copied().unwrap_or(0) >= 1,
            "backend {} got no call; calls per backend: {counts:?}",
            t.name
        );
        // Attribution and the backend's own view agree: it saw exactly the calls it owns.
        let own: BTreeSet<String> = owner
            .iter()
            .filter(|(_, b)| **b == t.name)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(own, t.call_ids(), "{}: calls owned vs calls seen", t.name);
    }
    assert_eq!(counts.values().sum::<usize>(), calls, "{counts:?}");
}

/// The Call-IDs a backend owns.
pub fn owned_by<'a>(owner: &'a BTreeMap<String, String>, name: &'a str) -> Vec<&'a String> {
    owner
        .iter()
        .filter(|(_, b)| b.as_str() == name)
        .map(|(id, _)| id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Problem EAGAIN on socket  6 and poll_idx  is 1 \n\
----------------------------------------------- 2026-11-27 12:04:02.872306\n\
TCP message sent (369 bytes):\n\
\n\
INVITE sip:service@127.0.0.1:25061 SIP/2.0\r\n\
Via: SIP/2.0/TCP 127.0.0.1:25071;branch=z9hG4bK-7733-1-0\r\n\
i: 1-7733@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\
\r\n\
\n\
----------------------------------------------- 2026-11-27 12:04:02.872347\n\
TCP message received [342] bytes :\n\
\n\
SIP/2.0 200 OK\r\n\
Via: SIP/2.0/TCP 127.0.0.1:25071;branch=z9hG4bK-7733-1-0\r\n\
Call-ID: 1-7733@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Record-Route: <sip:127.0.0.1:5060;transport=tcp;lr;lb=0.1.00ff>\r\n\
Content-Length: 0\r\n\
\r\n\
\n";

    #[test]
    fn parses_sent_and_received_messages() {
        let t = Trace::parse("uac", SAMPLE);
        assert_eq!(t.msgs.len(), 2);
        assert_eq!(t.msgs[0].dir, Dir::Sent);
        assert_eq!(t.msgs[0].label(), "INVITE");
        assert_eq!(t.msgs[0].call_id(), "1-7733@127.0.0.1");
        assert_eq!(t.msgs[1].dir, Dir::Received);
        assert_eq!(t.msgs[1].label(), "200/INVITE");
        assert_eq!(
            t.msgs[1].header("record-route"),
            Some("<sip:127.0.0.1:5060;transport=tcp;lr;lb=0.1.00ff>")
        );
        assert_eq!(
            t.signature("1-7733@127.0.0.1"),
            expect_sig(&["sent INVITE", "recv 200/INVITE"])
        );
    }

    #[test]
    fn affinity_detects_a_split_call() {
        let uac = Trace::parse("uac", SAMPLE);
        let mut b0 = Trace::parse("b0", SAMPLE);
        b0.name = "b0".into();
        let b1 = Trace::parse("b1", SAMPLE);
        let ok = std::panic::catch_unwind(|| assert_affinity(&[&uac], &[&b0, &b1]));
        assert!(ok.is_err(), "a call seen by two backends must fail");
        let owner = assert_affinity(&[&uac], &[&b0]);
        assert_eq!(
            owner.get("1-7733@127.0.0.1").map(String::as_str),
            Some("b0")
        );
    }
}
