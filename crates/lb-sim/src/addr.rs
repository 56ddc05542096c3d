//! The simulated network's addresses: proxies on 10.0.0.0/16, callers on 10.1.0.0/16, backends
//! on 10.2.0.0/16, the balancers' shared address on 10.9.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The port every simulated proxy listens on (and writes in its Via and Record-Route).
pub(crate) const PROXY_PORT: u16 = 5060;

/// Backend `b`'s address (what the balancers are configured with).
pub(crate) fn backend_addr(b: usize) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 2, (b / 250) as u8, (b % 250 + 1) as u8)),
        5070,
    )
}

/// Backend `b`'s IPv4 octets, for the headers it writes.
pub(crate) fn backend_ip4(b: u16) -> [u8; 4] {
    match backend_addr(usize::from(b)).ip() {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => [10, 2, 0, 1],
    }
}

/// Proxy `p`'s IP address.
pub(crate) fn proxy_ip(p: u16) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, (p / 250) as u8, (p % 250 + 1) as u8)
}

/// The proxy a dial-out toward `to` reaches: one of the simulated proxies' listening address.
pub(crate) fn proxy_at(to: SocketAddr, proxies: usize) -> Option<u16> {
    let IpAddr::V4(v4) = to.ip() else { return None };
    let [a, b, c, d] = v4.octets();
    if (a, b) != (10, 0) || to.port() != PROXY_PORT || d == 0 {
        return None;
    }
    let p = usize::from(c) * 250 + usize::from(d) - 1;
    (usize::from(d) <= 250 && p < proxies).then_some(p as u16)
}

/// The one address every balancer instance and worker listens on and advertises: a VIP (or a
/// shared name) that reaches a live instance, so a Record-Route entry written by an instance
/// that later dies still leads to one that lives (docs/design.md, "Workers").
pub(crate) fn balancer_vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1)), 5060)
}
