//! Accepting frontends: one task per listener, the PROXY header an accepted socket may owe
//! first (`--proxy-protocol`), and a TLS listener's handshakes; only a connection ready for
//! SIP reaches the owner. lb-mio's `accept.rs` does the same on its loop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use lb_cli::{Ops, Settings};
use lb_core::{Balancer, ListenerId};
use lb_runtime::{
    ProxyHeaderReader, ProxyRead, ProxyReject, RunError, PROXY_HEADER_TIMEOUT, PROXY_PENDING_MAX,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::conn_io::Prefixed;
use crate::Note;

/// Starts one accept task per listener socket (in the core's listener order); returns their
/// handles, aborted at shutdown.
pub(crate) fn spawn_acceptors(
    lb: &Balancer,
    ops: &Ops,
    settings: &Settings,
    listeners: Vec<std::net::TcpListener>,
    notes_tx: &mpsc::Sender<Note>,
) -> Result<Vec<AbortHandle>, RunError> {
    let ids: Vec<(ListenerId, SocketAddr)> = lb.listeners().collect();
    let mut acceptors = Vec::with_capacity(ids.len());
    for ((id, addr), socket) in ids.into_iter().zip(listeners) {
        let socket =
            TcpListener::from_std(socket).map_err(|source| RunError::Bind { addr, source })?;
        let task = match ops.tls().filter(|_| lb.is_tls_listener(id)) {
            Some(tls) => {
                let proxied = settings.proxy_protocol_tls.contains(&addr);
                if proxied {
                    tracing::info!(listener = %id, %addr, "listening (PROXY header, then TLS)");
                } else {
                    tracing::info!(listener = %id, %addr, "listening (TLS)");
                }
                let accept = tls_accept_loop(id, socket, proxied, tls.clone(), notes_tx.clone());
                tokio::spawn(accept)
            }
            None => {
                tracing::info!(listener = %id, %addr, "listening");
                let accept = accept_loop(id, socket, settings.proxy_protocol, notes_tx.clone());
                tokio::spawn(accept)
            }
        };
        acceptors.push(task.abort_handle());
    }
    Ok(acceptors)
}

/// Accepts plain frontends on `socket`; with `proxy_protocol` each first reads its PROXY
/// header in a task of its own (at most [`PROXY_PENDING_MAX`] at once).
async fn accept_loop(
    listener: ListenerId,
    socket: TcpListener,
    proxy_protocol: bool,
    notes: mpsc::Sender<Note>,
) {
    // Connections still reading their PROXY header.
    let pending = Arc::new(AtomicUsize::new(0));
    loop {
        match socket.accept().await {
            Ok((stream, peer)) if proxy_protocol => {
                if pending.load(Ordering::Relaxed) >= PROXY_PENDING_MAX {
                    drop(stream);
                    let cause = ProxyReject::TooMany;
                    let _ = notes.try_send(Note::ProxyRejected { peer, cause });
                    continue;
                }
                pending.fetch_add(1, Ordering::Relaxed);
                let (pending, notes) = (Arc::clone(&pending), notes.clone());
                tokio::spawn(async move {
                    let note = match proxy_header(stream).await {
                        Ok((stream, client, first)) => Note::Accepted {
                            listener,
                            stream,
                            peer: client.unwrap_or(peer),
                            proxy: Some(peer),
                            first,
                        },
                        Err(cause) => Note::ProxyRejected { peer, cause },
                    };
                    pending.fetch_sub(1, Ordering::Relaxed);
                    let _ = notes.send(note).await;
                });
            }
            Ok((stream, peer)) => {
                let first = BytesMut::new();
                let note = Note::Accepted {
                    listener,
                    stream,
                    peer,
                    proxy: None,
                    first,
                };
                if notes.send(note).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Usually out of file descriptors: retrying at once would spin.
                tracing::warn!(listener = %listener, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
            }
        }
    }
}

/// Accepts TLS frontends: each socket gets a handshake task, within the cap on handshakes in
/// progress and the handshake timeout; only a finished handshake reaches the owner. Failures
/// close that socket alone and are counted by reason. With `proxied` (`--listen-tls
/// ADDR,proxy-protocol`) the task first reads the PROXY header (within its own timeout, under
/// the same cap); the bytes after it go to rustls, and the client it names is the peer.
async fn tls_accept_loop(
    listener: ListenerId,
    socket: TcpListener,
    proxied: bool,
    tls: Arc<lb_runtime::tls::Tls>,
    notes: mpsc::Sender<Note>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(lb_runtime::tls::HANDSHAKES_MAX));
    loop {
        let (stream, peer) = match socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(listener = %listener, error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tls.counters
                .refused_busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let (counters, notes) = (tls.counters.clone(), notes.clone());
        tokio::spawn(async move {
            let (stream, client, proxy) = if proxied {
                match proxy_header(stream).await {
                    Ok((stream, client, rest)) => (
                        Prefixed::new(rest, stream),
                        client.unwrap_or(peer),
                        Some(peer),
                    ),
                    Err(cause) => {
                        let _ = notes.send(Note::ProxyRejected { peer, cause }).await;
                        return;
                    }
                }
            } else {
                (Prefixed::new(BytesMut::new(), stream), peer, None)
            };
            let handshake =
                tokio::time::timeout(lb_runtime::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            let stream = match handshake.await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %client, error = %e, "TLS handshake failed");
                    return counters.handshake_failed(&e);
                }
                Err(_) => {
                    tracing::debug!(peer = %client, "TLS handshake timed out");
                    counters
                        .failed_timeout
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
            };
            drop(permit);
            counters.handshake_done(stream.get_ref().1.protocol_version());
            let stream = Box::new(stream);
            let _ = notes
                .send(Note::AcceptedTls {
                    listener,
                    stream,
                    peer: client,
                    proxy,
                })
                .await;
        });
    }
}

/// Reads an accepted connection's PROXY header: the stream, the client it announces (`None`:
/// the proxy's own connection) and the bytes after it. A fault closes the stream.
async fn proxy_header(
    mut stream: TcpStream,
) -> Result<(TcpStream, Option<SocketAddr>, BytesMut), ProxyReject> {
    let mut reader = ProxyHeaderReader::new();
    let mut buf = [0u8; 512];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return Err(ProxyReject::TimedOut),
                Ok(n) => match reader.push(&buf[..n]) {
                    ProxyRead::Incomplete => {}
                    ProxyRead::Header { client, rest } => return Ok((client, rest)),
                    ProxyRead::Rejected(cause) => return Err(cause),
                },
            }
        }
    };
    match tokio::time::timeout(PROXY_HEADER_TIMEOUT, read).await {
        Ok(Ok((client, rest))) => Ok((stream, client, rest)),
        Ok(Err(cause)) => Err(cause),
        Err(_) => Err(ProxyReject::TimedOut),
    }
}

/// Pause after a failed accept (typically EMFILE) before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
