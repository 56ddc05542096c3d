//! Next-hop names for dial-out, resolved as RFC 3263 §4 has a client do for TCP: a URI with a
//! port takes its host's A/AAAA records; one without takes the SRV records of `_sip._tcp.HOST`
//! (lowest priority first, heavier weight first within one), each target's addresses with the
//! record's port, and falls back to A/AAAA with 5060 when there are none. The core asks with
//! `Output::Resolve` and hears back through `Input::Resolved`; it never touches DNS itself.
//!
//! hickory-resolver does the work, with the system's `/etc/resolv.conf` and `/etc/hosts`. A
//! machine without a resolver configuration still resolves what its hosts file names.
//! lb-tokio resolves on its own runtime ([`Dns::resolve`]); lb-mio and the std loop have none,
//! so [`DnsThread`] runs one on a thread of its own.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;
use lb_core::ConnId;

/// How long one name may take: a dial waits on it, with its queued messages.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);

/// A resolver for next-hop names. Build it inside a tokio runtime.
#[derive(Clone)]
pub struct Dns {
    resolver: Option<TokioResolver>,
}

impl Dns {
    /// The system's resolver configuration; a warning and hosts-file-only lookups without one.
    pub fn from_system() -> Dns {
        let resolver = TokioResolver::builder_tokio().and_then(|mut builder| {
            let options = builder.options_mut();
            options.timeout = Duration::from_secs(1);
            options.attempts = 2;
            builder.build()
        });
        match resolver {
            Ok(r) => Dns { resolver: Some(r) },
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver configuration: dial-out to host names fails");
                Dns { resolver: None }
            }
        }
    }

    /// The addresses of next hop `host` (`port`, or SRV when absent), best first; empty when
    /// the name does not resolve in [`RESOLVE_TIMEOUT`].
    pub async fn resolve(&self, host: &str, port: Option<u16>) -> Vec<SocketAddr> {
        self.resolve_targets(host, port)
            .await
            .into_iter()
            .map(|t| t.addr)
            .collect()
    }

    /// [`Dns::resolve`] with what the SRV records said of each address (backends by name,
    /// `crate::named`): best first.
    pub async fn resolve_targets(&self, host: &str, port: Option<u16>) -> Vec<Target> {
        let Some(resolver) = &self.resolver else {
            return Vec::new();
        };
        let plain = |addrs: Vec<SocketAddr>| {
            addrs
                .into_iter()
                .map(|addr| Target { addr, srv: None })
                .collect::<Vec<_>>()
        };
        let lookup = async {
            if let Some(port) = port {
                return plain(addresses(resolver, host, port).await);
            }
            let mut records = Vec::new();
            if let Ok(srv) = resolver.srv_lookup(format!("_sip._tcp.{host}.")).await {
                for record in srv.answers() {
                    if let RData::SRV(srv) = &record.data {
                        records.push((
                            srv.priority,
                            std::cmp::Reverse(srv.weight),
                            srv.port,
                            srv.target.to_ascii(),
                        ));
                    }
                }
            }
            if records.is_empty() {
                return plain(addresses(resolver, host, 5060).await);
            }
            records.sort();
            let mut out = Vec::new();
            for (priority, std::cmp::Reverse(weight), port, target) in records {
                for addr in addresses(resolver, &target, port).await {
                    out.push(Target {
                        addr,
                        srv: Some((priority, weight)),
                    });
                }
            }
            out
        };
        tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
            .await
            .unwrap_or_default()
    }
}

/// One address a name resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// The address, with the SRV record's port (or the one asked for).
    pub addr: SocketAddr,
    /// `(priority, weight)` of the SRV record it came from; `None` from A/AAAA alone.
    pub srv: Option<(u16, u16)>,
}

async fn addresses(resolver: &TokioResolver, host: &str, port: u16) -> Vec<SocketAddr> {
    match resolver.lookup_ip(host).await {
        Ok(ips) => ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
        Err(e) => {
            tracing::debug!(%host, error = %e, "name did not resolve");
            Vec::new()
        }
    }
}

/// A [`Dns`] on a thread with its own runtime, for event loops without one. Answers come back
/// through [`DnsThread::answers`]; `wake` is called after each, to wake the loop.
/// `K` names what each answer is for (the drivers use the core's `ConnId`).
pub struct DnsThread<K = ConnId> {
    /// A tokio channel: its sender needs no runtime, so the loop sends straight to the thread.
    requests: tokio::sync::mpsc::UnboundedSender<(K, String, Option<u16>)>,
    answers: mpsc::Receiver<(K, Vec<SocketAddr>)>,
}

impl<K: Send + 'static> DnsThread<K> {
    /// Starts the thread.
    pub fn start(wake: impl Fn() + Send + Sync + 'static) -> std::io::Result<DnsThread<K>> {
        let wake = std::sync::Arc::new(wake);
        let (requests, mut incoming) =
            tokio::sync::mpsc::unbounded_channel::<(K, String, Option<u16>)>();
        let (answer, answers) = mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("siplb-dns".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let dns = Dns::from_system();
                    // One task per name: a slow one holds up no other dial.
                    while let Some((conn, host, port)) = incoming.recv().await {
                        let (dns, answer, wake) = (dns.clone(), answer.clone(), wake.clone());
                        tokio::spawn(async move {
                            let addrs = dns.resolve(&host, port).await;
                            if answer.send((conn, addrs)).is_ok() {
                                wake();
                            }
                        });
                    }
                });
            })?;
        Ok(DnsThread { requests, answers })
    }

    /// Asks for `host` (see [`Dns::resolve`]) on behalf of dial `conn`.
    pub fn resolve(&self, conn: K, host: String, port: Option<u16>) {
        let _ = self.requests.send((conn, host, port));
    }

    /// The answers that have arrived.
    pub fn answers(&self) -> impl Iterator<Item = (K, Vec<SocketAddr>)> + '_ {
        self.answers.try_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `localhost` comes from /etc/hosts, so this needs no name server (none is reachable here).
    #[test]
    fn localhost_with_a_port_resolves_from_the_hosts_file() {
        let (tx, rx) = mpsc::channel();
        let dns = DnsThread::start(move || {
            let _ = tx.send(());
        })
        .expect("resolver thread");
        let conn = 3u32;
        dns.resolve(conn, "localhost".into(), Some(5070));
        rx.recv_timeout(RESOLVE_TIMEOUT * 2).expect("an answer");
        let answers: Vec<_> = dns.answers().collect();
        assert_eq!(answers.len(), 1);
        let (id, addrs) = &answers[0];
        assert_eq!(*id, conn);
        assert!(
            addrs.contains(&"127.0.0.1:5070".parse().expect("addr")),
            "{addrs:?}"
        );
        assert!(addrs
            .iter()
            .all(|a| a.port() == 5070 && a.ip().is_loopback()));
    }
}
