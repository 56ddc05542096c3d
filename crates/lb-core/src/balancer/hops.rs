//! Hop policy: which frontend connection a next hop names (the hop table and the aliases it
//! learns), the `received`/`rport` stamp on a frontend's Via, and the addresses a Via or a
//! literal next hop names for dial-out.
//!
//! A next hop arrives as an address (an envelope's, a Via's `received`/`rport`) or as the
//! `host:port` a Via sent-by, Route or Request-URI names. Each frontend connection is known by
//! its peer socket address and by the Via sent-by values of the requests it carried (the
//! RFC 5923 alias idea: a proxy's Via names its listening port, not the ephemeral source port of
//! its connection). Lookup order: exact `ip:port`, alias, then the IP alone when exactly one
//! connection comes from it.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use smallvec::SmallVec;

use super::{Balancer, Conn, Side};
use crate::ids::ConnId;
use crate::keyed_hash::Keyed;
use crate::message::{HostPort, Rport, SipMessage, Via};
use crate::rewrite::{Edit, Edits, Insertion};

/// The aliases one connection may register; older ones are forgotten first. A proxy uses one
/// sent-by; the bound keeps a peer that varies its Via from growing the table.
pub(crate) const ALIASES_PER_CONN_MAX: usize = 4;

/// A name an alias is registered under: an address for IP literals, else the lower-cased host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HopName {
    Addr(SocketAddr),
    Host(Box<[u8]>, u16),
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct HopTable {
    by_addr: HashMap<SocketAddr, ConnId, Keyed>,
    /// Keyed by [`host_key`]: the lower-cased host then the port, so a lookup borrows a
    /// stack buffer instead of allocating a key.
    by_host: HashMap<Box<[u8]>, ConnId, Keyed>,
    by_ip: HashMap<IpAddr, SmallVec<[ConnId; 2]>, Keyed>,
    /// `Config::hop_by_unique_ip`: the last step of the lookup is on.
    unique_ip: bool,
}

impl HopTable {
    pub(crate) fn new(key: [u8; 16], unique_ip: bool) -> HopTable {
        HopTable {
            by_addr: HashMap::with_hasher(Keyed(key)),
            by_host: HashMap::with_hasher(Keyed(key)),
            by_ip: HashMap::with_hasher(Keyed(key)),
            unique_ip,
        }
    }

    /// A frontend connection from `peer` opened.
    pub(crate) fn add_peer(&mut self, conn: ConnId, peer: SocketAddr) {
        self.by_addr.insert(peer, conn);
        self.by_ip.entry(peer.ip()).or_default().push(conn);
    }

    /// Registers `name` for `conn` unless a live connection holds it already: the first
    /// claim stands until its connection closes, so no peer can take over another's name by
    /// writing it in a Via (a hostile-peer finding; entries leave with their connection).
    pub(crate) fn add_alias(&mut self, conn: ConnId, name: &HopName) {
        match name {
            HopName::Addr(addr) => {
                self.by_addr.entry(*addr).or_insert(conn);
            }
            HopName::Host(host, port) => {
                self.by_host
                    .entry(Box::from(&host_key(host, *port)[..]))
                    .or_insert(conn);
            }
        }
    }

    /// Forgets an alias, unless another connection took it over since.
    pub(crate) fn remove_alias(&mut self, conn: ConnId, name: &HopName) {
        match name {
            HopName::Addr(addr) => {
                if self.by_addr.get(addr) == Some(&conn) {
                    self.by_addr.remove(addr);
                }
            }
            HopName::Host(host, port) => {
                let key = host_key(host, *port);
                if self.by_host.get(&key[..]) == Some(&conn) {
                    self.by_host.remove(&key[..]);
                }
            }
        }
    }

    /// The connection from `peer` closed.
    pub(crate) fn remove_peer(&mut self, conn: ConnId, peer: SocketAddr) {
        if self.by_addr.get(&peer) == Some(&conn) {
            self.by_addr.remove(&peer);
        }
        if let Some(conns) = self.by_ip.get_mut(&peer.ip()) {
            conns.retain(|c| *c != conn);
            if conns.is_empty() {
                self.by_ip.remove(&peer.ip());
            }
        }
    }

    /// The connection whose peer (or alias) is exactly `addr`.
    pub(crate) fn lookup_exact(&self, addr: SocketAddr) -> Option<ConnId> {
        self.by_addr.get(&addr).copied()
    }

    /// The connection an address names: exact, then by IP when unique.
    pub(crate) fn lookup_addr(&self, addr: SocketAddr) -> Option<ConnId> {
        self.by_addr
            .get(&addr)
            .copied()
            .or_else(|| self.lookup_ip(addr.ip()))
    }

    /// The connection a `host` (as written in a URI or Via) and port name.
    pub(crate) fn lookup_host(&self, host: &[u8], port: u16) -> Option<ConnId> {
        match parse_ip(host) {
            Some(ip) => self.lookup_addr(SocketAddr::new(ip, port)),
            None => self.by_host.get(&host_key(host, port)[..]).copied(),
        }
    }

    fn lookup_ip(&self, ip: IpAddr) -> Option<ConnId> {
        if !self.unique_ip {
            return None;
        }
        match self.by_ip.get(&ip).map(|c| c.as_slice()) {
            Some([only]) => Some(*only),
            _ => None,
        }
    }
}

impl HopName {
    /// The alias for a Via sent-by `host` and port (default 5060, RFC 3261 §18.1.1... for TCP).
    pub(crate) fn from_sent_by(host: &[u8], port: u16) -> HopName {
        match parse_ip(host) {
            Some(ip) => HopName::Addr(SocketAddr::new(ip, port)),
            None => HopName::Host(host.iter().map(u8::to_ascii_lowercase).collect(), port),
        }
    }
}

/// The `by_host` key of a host name and port: lower-cased (host names are case-insensitive),
/// then the port, big-endian.
fn host_key(host: &[u8], port: u16) -> SmallVec<[u8; 64]> {
    let mut key: SmallVec<[u8; 64]> = host.iter().map(u8::to_ascii_lowercase).collect();
    key.extend_from_slice(&port.to_be_bytes());
    key
}

/// Whether `host` and `port` (as written in a URI) name `advertised`, a validated
/// `host[:port]` (port 5060 when absent): host names case-insensitively, IP literals by value.
pub(crate) fn same_host_port(advertised: &str, host: &[u8], port: u16) -> bool {
    let (a_host, a_port) = match advertised.rsplit_once(':') {
        // `[v6]` alone has colons inside its brackets: a port follows only a `]` or no colon.
        Some((h, p)) if !h.contains(':') || h.ends_with(']') => (h, p.parse().unwrap_or(0)),
        _ => (advertised, 5060),
    };
    if a_port != port {
        return false;
    }
    match (parse_ip(a_host.as_bytes()), parse_ip(host)) {
        (Some(a), Some(b)) => a == b,
        (None, None) => a_host.as_bytes().eq_ignore_ascii_case(host),
        _ => false,
    }
}

/// An IP literal as written in SIP: dotted IPv4, or IPv6 in brackets (or bare).
pub(crate) fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = parse_ipv4_fast(host) {
        return Some(IpAddr::V4(v4));
    }
    let text = std::str::from_utf8(host).ok()?;
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

/// The common case of [`parse_ip`] without UTF-8 validation or `str` parsing: exactly four
/// decimal octets of 1–3 digits, no leading zero, each at most 255. Everything it accepts the
/// standard parser accepts with the same value; anything else returns `None` and takes the
/// standard path, so the two never disagree.
fn parse_ipv4_fast(host: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = host.split(|&c| c == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut value = 0u16;
        for &d in part {
            if !d.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u16::from(d - b'0');
        }
        *octet = u8::try_from(value).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

impl Balancer {
    /// Remembers the top Via sent-by as a name of this frontend connection.
    pub(super) fn learn_alias(&mut self, conn: ConnId, message: &SipMessage) {
        let sent_by = message.top_via.sent_by;
        let host = message.slice(sent_by.host);
        let name = HopName::from_sent_by(host, sent_by.port.unwrap_or(5060));
        let Some(Conn {
            side: Side::Frontend { aliases, .. },
            ..
        }) = self.conn_mut(conn)
        else {
            return;
        };
        if aliases.contains(&name) {
            return;
        }
        if aliases.len() >= ALIASES_PER_CONN_MAX {
            let oldest = aliases.remove(0);
            self.hops.remove_alias(conn, &oldest);
        }
        let Some(Conn {
            side: Side::Frontend { aliases, .. },
            ..
        }) = self.conn_mut(conn)
        else {
            return;
        };
        aliases.push(name.clone());
        self.hops.add_alias(conn, &name);
    }
}

/// RFC 3261 §18.2.1: `received` when the sent-by host is not the source address; RFC 3581: the
/// source port into a bare `rport`.
pub(super) fn stamp_via(message: &SipMessage, peer: SocketAddr, edits: &mut Edits) {
    let via = message.top_via;
    // Pushed first: when `rport` is the last parameter both insertions share one position, and
    // its value must come before `;received`.
    if let Rport::Empty { name_end } = via.rport {
        edits.push(Edit::insert(name_end, Insertion::RportValue(peer.port())));
    }
    if via.received.is_none() {
        let host = message.slice(via.sent_by.host);
        if parse_ip(host) != Some(peer.ip()) {
            edits.push(Edit::insert(via.value.end, Insertion::Received(peer.ip())));
        }
    }
}

/// Where a Via says a response goes over a new connection (RFC 3261 §18.2.2, RFC 3581): the
/// `received` address (else the sent-by host, if an IP literal) and the `rport` port (else the
/// sent-by port, else 5060).
pub(super) fn via_addr(message: &SipMessage, via: &Via) -> Option<SocketAddr> {
    let host = via.received.unwrap_or(via.sent_by.host);
    let ip = parse_ip(message.slice(host))?;
    let port = match via.rport {
        Rport::Value(p) => Some(p),
        Rport::Absent | Rport::Empty { .. } => None,
    };
    Some(SocketAddr::new(
        ip,
        port.or(via.sent_by.port).unwrap_or(5060),
    ))
}

/// The socket address of a next hop written as an IP literal: what dial-out can reach without
/// a resolver (RFC 3263 §4.2: a numeric host needs no lookup; the port defaults to 5060).
pub(super) fn literal_addr(message: &SipMessage, hp: HostPort) -> Option<SocketAddr> {
    let ip = parse_ip(message.slice(hp.host))?;
    Some(SocketAddr::new(ip, hp.port.unwrap_or(5060)))
}

#[cfg(test)]
mod same_host_port_tests {
    use super::same_host_port;

    #[test]
    fn advertised_addresses_match_as_written_or_by_value() {
        assert!(same_host_port("127.0.0.1:5070", b"127.0.0.1", 5070));
        assert!(!same_host_port("127.0.0.1:5070", b"127.0.0.1", 5060));
        assert!(same_host_port("LB.example.com", b"lb.EXAMPLE.com", 5060));
        assert!(same_host_port("[::1]:5070", b"[0:0::1]", 5070));
        assert!(same_host_port("[::1]", b"[::1]", 5060));
        assert!(!same_host_port("lb.example.com:5060", b"127.0.0.1", 5060));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(n: usize) -> ConnId {
        ConnId::new(n, 1)
    }

    #[test]
    fn without_unique_ip_only_exact_and_alias_names_match() {
        let mut hops = HopTable::new([1; 16], false);
        let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        hops.add_peer(conn(1), peer);
        assert_eq!(hops.lookup_addr(peer), Some(conn(1)));
        assert_eq!(hops.lookup_host(b"192.0.2.1", 5060), None);
    }

    #[test]
    fn lookup_order_exact_alias_then_unique_ip() {
        let mut hops = HopTable::new([1; 16], true);
        let peer: SocketAddr = "192.0.2.1:40000".parse().unwrap();
        hops.add_peer(conn(1), peer);
        hops.add_alias(conn(1), &HopName::from_sent_by(b"proxy.example.com", 5060));
        assert_eq!(hops.lookup_addr(peer), Some(conn(1)));
        assert_eq!(hops.lookup_host(b"PROXY.example.com", 5060), Some(conn(1)));
        assert_eq!(
            hops.lookup_host(b"192.0.2.1", 5060),
            Some(conn(1)),
            "unique IP"
        );
        hops.add_peer(conn(2), "192.0.2.1:40001".parse().unwrap());
        assert_eq!(
            hops.lookup_host(b"192.0.2.1", 5060),
            None,
            "IP no longer unique"
        );
        hops.add_alias(conn(2), &HopName::from_sent_by(b"192.0.2.1", 5060));
        assert_eq!(hops.lookup_host(b"192.0.2.1", 5060), Some(conn(2)));
        // A name a live connection holds is not handed to another.
        hops.add_alias(conn(2), &HopName::from_sent_by(b"proxy.example.com", 5060));
        assert_eq!(hops.lookup_host(b"proxy.example.com", 5060), Some(conn(1)));
        hops.remove_peer(conn(1), peer);
        hops.remove_alias(conn(1), &HopName::from_sent_by(b"proxy.example.com", 5060));
        assert_eq!(hops.lookup_host(b"proxy.example.com", 5060), None);
        assert_eq!(
            hops.lookup_host(b"192.0.2.1", 7),
            Some(conn(2)),
            "unique IP again"
        );
    }

    #[test]
    fn fast_ipv4_agrees_with_the_standard_parser() {
        for text in [
            "0.0.0.0",
            "192.0.2.1",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "1.2.3.4.",
            "+1.2.3.4",
            "1234.1.1.1",
            "a.b.c.d",
            "",
        ] {
            assert_eq!(
                parse_ip(text.as_bytes()),
                text.parse::<IpAddr>().ok(),
                "{text:?}"
            );
            if let Some(fast) = parse_ipv4_fast(text.as_bytes()) {
                assert_eq!(text.parse::<Ipv4Addr>().ok(), Some(fast), "{text:?}");
            }
        }
        assert!(parse_ipv4_fast(b"192.0.2.1").is_some());
    }

    #[test]
    fn ipv6_hosts_are_literals() {
        assert_eq!(parse_ip(b"[2001:db8::1]"), "2001:db8::1".parse().ok());
        assert_eq!(parse_ip(b"example.com"), None);
    }
}
