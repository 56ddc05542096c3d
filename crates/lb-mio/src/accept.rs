//! Accepting frontends: listeners, the PROXY header an accepted socket may owe first
//! (`--proxy-protocol`), and the TLS session of a TLS listener's connection. lb-tokio's
//! `accept.rs` does the same with tasks.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::BytesMut;
use lb_core::{CloseReason, Input, ListenerId};
use lb_runtime::{
    ConnState, ProxyHeaderReader, ProxyRead, ProxyReject, PROXY_HEADER_TIMEOUT, PROXY_PENDING_MAX,
};
use mio::net::TcpStream;
use mio::{Interest, Token};

use crate::conns::Io;
use crate::{tls, Driver, PENDING_TOKEN_BASE};

/// An accepted connection waiting for its PROXY header (`--proxy-protocol`).
pub(crate) struct Pending {
    pub(crate) stream: TcpStream,
    listener: ListenerId,
    pub(crate) peer: SocketAddr,
    reader: ProxyHeaderReader,
    /// When it is given up (all have the same timeout: `Driver::pending_deadlines` is a FIFO).
    pub(crate) deadline: Instant,
}

impl Driver {
    /// Accepts every connection waiting on listener `index`.
    pub(crate) fn accept(&mut self, index: usize) {
        loop {
            let (listener, socket) = &self.listeners[index];
            let listener = *listener;
            match socket.accept() {
                Ok((stream, peer)) if self.proxied.get(index).copied().unwrap_or(false) => {
                    self.await_proxy_header(listener, stream, peer)
                }
                Ok((stream, peer)) => {
                    self.open_frontend(listener, stream, peer, None, BytesMut::new());
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // Usually out of file descriptors; the next connection's event retries.
                    self.ops.accept_failed(&e, Instant::now());
                    return;
                }
            }
        }
    }

    /// Hands an accepted connection to the core as `peer` and registers it under its slot;
    /// `proxy` is the socket's peer when it was waiting for its PROXY header (registered under
    /// a pending token), `first` what followed the header.
    fn open_frontend(
        &mut self,
        listener: ListenerId,
        mut stream: TcpStream,
        peer: SocketAddr,
        proxy: Option<SocketAddr>,
        first: BytesMut,
    ) {
        let tls = match self.tls_session(listener) {
            Ok(tls) => tls,
            // Refused before the core knew of it: dropping the socket closes it.
            Err(()) => return,
        };
        let conn = self.lb.accept(Instant::now(), listener, peer);
        lb_runtime::log_frontend_opened(conn, peer, proxy);
        let _ = stream.set_nodelay(true);
        let (registry, token) = (self.poll.registry(), Token(conn.slot()));
        let registered = match proxy {
            Some(_) => registry.reregister(&mut stream, token, Interest::READABLE),
            None => registry.register(&mut stream, token, Interest::READABLE),
        };
        match registered {
            Ok(()) => {
                let handshake = tls.is_some();
                let mut io = Io::new(stream, Interest::READABLE);
                io.tls = tls;
                self.conns.insert(conn, true, ConnState::Open, io);
                if handshake {
                    self.handshaking += 1;
                    let deadline = Instant::now() + lb_runtime::tls::HANDSHAKE_TIMEOUT;
                    self.handshakes.push_back((deadline, conn));
                    // What followed the PROXY header is the start of the ClientHello: rustls'
                    // to read, before the socket's own bytes.
                    if !first.is_empty() {
                        self.read_tls(conn, &first);
                    }
                } else if !first.is_empty() {
                    let bytes = first;
                    self.lb
                        .handle_input(Instant::now(), Input::Received { conn, bytes });
                }
            }
            Err(e) => {
                tracing::warn!(conn = %conn, error = %e, "register failed");
                lb_runtime::log_frontend_closed(conn, CloseReason::Error);
                let reason = CloseReason::Error;
                self.lb
                    .handle_input(Instant::now(), Input::Closed { conn, reason });
            }
        }
        self.drain();
    }

    /// `--proxy-protocol`: parks an accepted connection until its header is whole.
    fn await_proxy_header(
        &mut self,
        listener: ListenerId,
        mut stream: TcpStream,
        peer: SocketAddr,
    ) {
        let now = Instant::now();
        if self.pending.len() >= PROXY_PENDING_MAX {
            self.ops.proxy_rejected(peer, ProxyReject::TooMany, now);
            return;
        }
        let entry = self.pending.vacant_entry();
        let token = Token(PENDING_TOKEN_BASE + entry.key());
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            tracing::warn!(%peer, error = %e, "register failed");
            return;
        }
        let deadline = now + PROXY_HEADER_TIMEOUT;
        self.pending_deadlines.push_back((deadline, entry.key()));
        entry.insert(Pending {
            stream,
            listener,
            peer,
            reader: ProxyHeaderReader::new(),
            deadline,
        });
    }

    /// Reads a parked connection until its PROXY header is whole (then it goes to the core), a
    /// fault (then it is closed and counted), or `WouldBlock`.
    pub(crate) fn read_proxy_header(&mut self, key: usize) {
        let mut buf = [0u8; 512];
        let outcome = loop {
            let Some(p) = self.pending.get_mut(key) else {
                return;
            };
            match std::io::Read::read(&mut p.stream, &mut buf) {
                Ok(0) => break ProxyRead::Rejected(ProxyReject::TimedOut),
                Ok(n) => match p.reader.push(&buf[..n]) {
                    ProxyRead::Incomplete => {}
                    done @ (ProxyRead::Header { .. } | ProxyRead::Rejected(_)) => break done,
                },
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break ProxyRead::Rejected(ProxyReject::TimedOut),
            }
        };
        let mut p = self.pending.remove(key);
        match outcome {
            ProxyRead::Header { client, rest } => {
                let peer = client.unwrap_or(p.peer);
                self.open_frontend(p.listener, p.stream, peer, Some(p.peer), rest);
            }
            ProxyRead::Rejected(cause) => {
                let _ = self.poll.registry().deregister(&mut p.stream);
                self.ops.proxy_rejected(p.peer, cause, Instant::now());
            }
            ProxyRead::Incomplete => {}
        }
    }

    /// A new TLS session for a connection accepted on `listener`, `None` for a TCP listener;
    /// `Err` when the socket is refused (too many handshakes in progress).
    fn tls_session(&mut self, listener: ListenerId) -> Result<Option<Box<tls::TlsConn>>, ()> {
        let Some(config) = self
            .tls
            .as_ref()
            .filter(|_| self.lb.is_tls_listener(listener))
        else {
            return Ok(None);
        };
        let counters = &config.counters;
        if self.handshaking >= lb_runtime::tls::HANDSHAKES_MAX {
            counters
                .refused_busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(());
        }
        match rustls::ServerConnection::new(config.config()) {
            Ok(session) => Ok(Some(Box::new(tls::TlsConn::new(session)))),
            Err(e) => {
                tracing::warn!(error = %e, "TLS session refused");
                counters
                    .failed_other
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(())
            }
        }
    }
}
