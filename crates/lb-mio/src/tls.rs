//! TLS on a readiness loop: rustls' connection state driven by hand (rustls is sans-IO like
//! the core). Records are read from the socket into rustls and the plaintext taken out; queued
//! plaintext goes into rustls as far as its buffer takes it and the records out to the socket,
//! each until the socket would block. The handshake runs inside the same calls.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};

use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;
/// One TLS connection's state: a frontend's (server side) or a TLS backend's (client side).
pub(crate) struct TlsConn {
    conn: rustls::Connection,
    /// The handshake has not finished yet (counted once when it does).
    pub(crate) handshaking: bool,
    close_notify_sent: bool,
}

/// What a read found besides plaintext.
pub(crate) struct ReadOutcome {
    /// The peer closed (TCP end of stream or TLS close_notify).
    pub(crate) eof: bool,
    /// The handshake finished during this read.
    pub(crate) handshake_done: bool,
}

impl TlsConn {
    pub(crate) fn new(conn: impl Into<rustls::Connection>) -> TlsConn {
        TlsConn {
            conn: conn.into(),
            handshaking: true,
            close_notify_sent: false,
        }
    }

    /// The negotiated protocol version, once the handshake is done.
    pub(crate) fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.conn.protocol_version()
    }

    /// Records waiting for the socket (handshake messages, alerts, encrypted data).
    pub(crate) fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Reads every record the socket has, appending the plaintext to `out`. A TLS error
    /// (garbage, a plain SIP message, a refused version or certificate) is an `InvalidData`
    /// error wrapping the rustls error.
    pub(crate) fn read(
        &mut self,
        sock: &mut impl Read,
        out: &mut BytesMut,
    ) -> io::Result<ReadOutcome> {
        let mut eof = false;
        loop {
            let mut drained = false;
            match self.conn.read_tls(sock) {
                Ok(0) => eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => drained = true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let state = self
                .conn
                .process_new_packets()
                .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
            let mut plain = state.plaintext_bytes_to_read();
            while plain > 0 {
                let start = out.len();
                out.resize(start + plain, 0);
                let n = self.conn.reader().read(&mut out[start..])?;
                out.truncate(start + n);
                plain = if n == 0 { 0 } else { plain - n };
            }
            if state.peer_has_closed() {
                eof = true;
            }
            // rustls takes one buffer of records per call: read on until the socket would block
            // (readiness is edge-triggered) or the stream ends.
            if eof || drained {
                break;
            }
        }
        let handshake_done = self.handshaking && !self.conn.is_handshaking();
        if handshake_done {
            self.handshaking = false;
        }
        Ok(ReadOutcome {
            eof,
            handshake_done,
        })
    }

    /// Moves `queue` into rustls and records to `sock` until the queue is empty or the socket
    /// would block; returns the plaintext bytes taken from the queue. With `closing` and an
    /// empty queue, a close_notify follows the data.
    pub(crate) fn write(
        &mut self,
        queue: &mut VecDeque<Bytes>,
        sock: &mut TcpStream,
        closing: bool,
    ) -> io::Result<usize> {
        let mut taken = 0;
        loop {
            let before = taken;
            while let Some(front) = queue.front_mut() {
                let n = self.conn.writer().write(front)?;
                if n == 0 {
                    break;
                }
                taken += n;
                if n == front.len() {
                    queue.pop_front();
                } else {
                    front.advance(n);
                }
            }
            if closing && queue.is_empty() && !self.close_notify_sent {
                self.close_notify_sent = true;
                self.conn.send_close_notify();
            }
            let mut blocked = false;
            let mut sent = false;
            while self.conn.wants_write() {
                sent = true;
                match self.conn.write_tls(sock) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        blocked = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            // rustls' buffer took what it could; once the records are out it takes more. While
            // the handshake runs it only buffers: no progress, so wait for the next event.
            if blocked || queue.is_empty() || (taken == before && !sent) {
                lb_runtime::release_drained(queue);
                return Ok(taken);
            }
        }
    }
}
