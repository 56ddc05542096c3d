//! Cuts SIP messages out of a TCP byte stream (RFC 3261 §7.5, §18.3) and recognises CRLF
//! keep-alives (RFC 5626 §4.4.1).
//!
//! INTERFACE STUB: the framer is being written; the types below are the contract.

use bytes::{Bytes, BytesMut};

/// One unit cut from the stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole message: start line, headers, empty line, body of Content-Length bytes.
    Message(Bytes),
    /// A double-CRLF keep-alive ping; answer with a single CRLF.
    Ping,
}

/// Why the stream cannot be framed any more: the connection must close.
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

impl FramingError {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FramingError::MissingContentLength => "missing Content-Length",
            FramingError::BadContentLength => "bad Content-Length",
            FramingError::HeaderTooLarge => "header block too large",
            FramingError::MessageTooLarge => "message too large",
        }
    }
}

/// Per-connection reassembly state.
#[derive(Debug, Default)]
pub(crate) struct StreamFramer {
    buf: BytesMut,
}

impl StreamFramer {
    /// Appends received bytes. When nothing is pending the buffer is taken as is (no copy).
    pub(crate) fn push(&mut self, bytes: BytesMut) {
        if self.buf.is_empty() {
            self.buf = bytes;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// The next frame, `None` when more bytes are needed. After an `Err` the stream is lost.
    pub(crate) fn next_frame(
        &mut self,
        message_bytes_max: usize,
    ) -> Option<Result<Frame, FramingError>> {
        let _ = message_bytes_max;
        todo!("framer")
    }

    /// Bytes held waiting for the rest of a message.
    pub(crate) fn buffered_len(&self) -> usize {
        self.buf.len()
    }
}
