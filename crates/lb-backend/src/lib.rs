//! # lb-backend: the backend's side of siplb's envelope mode
//!
//! A backend in envelope mode is reached by the balancer over a TCP connection that the balancer
//! opens. Every SIP message on it travels inside an envelope (`docs/envelope.md`): balancer →
//! backend envelopes name the frontend the message came from, backend → balancer envelopes name
//! the next hop (or none, to let the balancer read Via / Route) and may report the backend's
//! load. [`BackendConn`] turns that stream into [`Inbound`] items and back, with the one codec
//! in [`lb_core::envelope`]; there is no second implementation of the layout here.
//!
//! The API is blocking std I/O: a backend usually runs one thread per balancer connection, and a
//! balancer keeps very few connections to each backend.
//!
//! ```no_run
//! use std::net::TcpListener;
//! use lb_backend::BackendConn;
//!
//! let listener = TcpListener::bind("127.0.0.1:5070")?;
//! let mut conn = BackendConn::accept(&listener)?;
//! while let Some(inbound) = conn.recv()? {
//!     // ... handle inbound.sip, answer towards the frontend it came from ...
//!     conn.send(inbound.source, Some(0), b"SIP/2.0 200 OK\r\n...")?;
//! }
//! # Ok::<(), lb_backend::BackendError>(())
//! ```
//!
//! [`sip`] holds a small SIP reader and writer for test peers (the example backend and the load
//! generator): enough to answer like a simple UAS, not a general parser.

#![warn(missing_docs)]
#![warn(clippy::wildcard_enum_match_arm, clippy::print_stdout)]

mod conn;
pub mod sip;

pub use conn::{BackendConn, BackendError, Inbound, Received, PAYLOAD_MAX_DEFAULT};
pub use lb_core::envelope::{Envelope, EnvelopeError, Transport};
