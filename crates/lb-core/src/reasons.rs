//! Why the core closed, refused, answered or dropped something: the reasons an [`crate::Event`]
//! carries, as enums that tests and drivers match on. Each prints (`Display`, [`as_str`]) the
//! text it replaced, so logs read as before; a [`MalformedFault`] and the 503 causes of
//! [`DropCause`] are also the reason phrases of the balancer's answers on the wire.
//!
//! [`as_str`]: MalformedFault::as_str

use std::fmt;

use crate::lexer::FramingError;

/// One enum of reasons: each variant with its fixed text, `as_str` and `Display` printing it.
macro_rules! reasons {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$doc:meta])* $variant:ident => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$doc])* $variant,)+
        }

        impl $name {
            /// The text logs print (and, where the reason is answered, the reason phrase).
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

reasons! {
    /// Why a connection's stream could not be framed any more ([`crate::Event::FramingLost`]).
    pub enum FramingFault {
        /// No Content-Length header (mandatory on streams, RFC 3261 §18.3).
        MissingContentLength => "missing Content-Length",
        /// A Content-Length that is not a number, or two that disagree.
        BadContentLength => "bad Content-Length",
        /// The header block did not end within `limits.message_bytes_max`.
        HeaderTooLarge => "header block too large",
        /// Headers plus the announced body exceed `limits.message_bytes_max`.
        MessageTooLarge => "message too large",
        /// An envelope backend sent bytes that are not an envelope.
        BadEnvelope => "bad envelope",
        /// More bytes held for one connection than `limits.buffered_bytes_max`.
        BufferedBytesOverLimit => "buffered bytes over the limit",
    }
}

impl From<FramingError> for FramingFault {
    fn from(error: FramingError) -> FramingFault {
        match error {
            FramingError::MissingContentLength => FramingFault::MissingContentLength,
            FramingError::BadContentLength => FramingFault::BadContentLength,
            FramingError::HeaderTooLarge => FramingFault::HeaderTooLarge,
            FramingError::MessageTooLarge => FramingFault::MessageTooLarge,
        }
    }
}

reasons! {
    /// What was wrong with a framed message ([`crate::Event::Malformed`]); a request is
    /// answered with this reason phrase (400, or 505 for [`MalformedFault::VersionNotSupported`]).
    pub enum MalformedFault {
        /// An enveloped message whose own Content-Length disagrees with the envelope's framing.
        ContentLengthMismatch => "Content-Length Mismatch",
        /// The request line is not `Method SP Request-URI SP SIP-Version`.
        BadRequestLine => "Bad Request Line",
        /// The status line is not `SIP-Version SP Status-Code SP Reason-Phrase`.
        BadStatusLine => "Bad Status Line",
        /// A SIP version other than 2.0 (RFC 3261 §21.5.7).
        VersionNotSupported => "Version Not Supported",
        /// The Request-URI does not parse.
        BadRequestUri => "Bad Request-URI",
        /// A header line without a name and colon.
        MalformedHeader => "Malformed Header",
        /// More header fields than `limits.headers_max`.
        TooManyHeaders => "Too Many Headers",
        /// The header block does not end.
        IncompleteHeaderBlock => "Incomplete Header Block",
        /// Larger than `limits.message_bytes_max`.
        MessageTooLarge => "Message Too Large",
        /// The top Via is missing or does not parse.
        BadVia => "Bad Via",
        /// The CSeq is missing or does not parse.
        BadCseq => "Bad CSeq",
        /// The Call-ID is missing or empty.
        BadCallId => "Bad Call-ID",
        /// The To header is missing or does not parse.
        BadTo => "Bad To",
        /// The top Route does not parse.
        BadRoute => "Bad Route",
        /// A request whose CSeq names another method.
        CseqMethodMismatch => "CSeq Method Mismatch",
        /// A Max-Forwards that is not a number.
        BadMaxForwards => "Bad Max-Forwards",
        /// A second Call-ID header.
        DuplicateCallId => "Duplicate Call-ID",
        /// A second CSeq header.
        DuplicateCseq => "Duplicate CSeq",
        /// A second From header.
        DuplicateFrom => "Duplicate From",
        /// A second To header.
        DuplicateTo => "Duplicate To",
        /// No Via header.
        MissingVia => "Missing Via",
        /// No Call-ID header.
        MissingCallId => "Missing Call-ID",
        /// No CSeq header.
        MissingCseq => "Missing CSeq",
        /// No From header.
        MissingFrom => "Missing From",
        /// No To header.
        MissingTo => "Missing To",
        /// Sanity (initial requests): the From header does not parse.
        BadFrom => "Bad From",
        /// Sanity: the From header has no tag (RFC 3261 §8.1.1.3).
        MissingFromTag => "Missing From Tag",
        /// Sanity: the From tag is empty.
        EmptyFromTag => "Empty From Tag",
        /// Sanity: a host longer than `sanity.host_bytes_max`.
        HostTooLong => "Host Too Long",
        /// Sanity: a URI longer than `sanity.uri_bytes_max`.
        UriTooLong => "URI Too Long",
        /// Sanity: a header field longer than `sanity.field_bytes_max`.
        HeaderTooLong => "Header Too Long",
    }
}

reasons! {
    /// Why a message went nowhere ([`crate::Event::Dropped`]). The capitalised ones are also
    /// the reason phrases of the 503 a request gets for the same cause; an ACK, or a request
    /// with nothing a response could be built from, is dropped with them instead.
    pub enum DropCause {
        /// No backend is up (or all are draining or held).
        NoBackendAvailable => "No Backend Available",
        /// Every backend that is up is held by its queue or its own 503 (RFC 6357 push-back).
        BackendsOverloaded => "Backends Overloaded",
        /// The new-call table is full.
        TooManyCallsBeingSetUp => "Too Many Calls Being Set Up",
        /// The connection holds its whole share of the new-call table.
        TooManyCallsOnThisConnection => "Too Many Calls Being Set Up On This Connection",
        /// The source address holds its whole share of the new-call table.
        TooManyCallsFromThisAddress => "Too Many Calls Being Set Up From This Address",
        /// A backend's request names a frontend the balancer has no connection to.
        NoRouteToFrontend => "No Route To Frontend",
        /// A backend's request names a next hop the balancer cannot reach.
        CannotReachNextHop => "Cannot Reach Next Hop",
        /// A backend's request waits for a dial-out whose queue is full.
        NextHopStillConnecting => "Next Hop Still Connecting",
        /// An initial request failing the sanity checks, with nothing to answer from.
        SanityUnanswerable => "fails the sanity checks, unanswerable",
        /// A malformed message with nothing to answer from, or a malformed response.
        MalformedUnanswerable => "malformed and unanswerable",
        /// An ACK that matches no call.
        AckOfUnknownCall => "ACK of an unknown call",
        /// An ACK for a backend that is down, with no backup.
        AckForDownBackend => "ACK for a backend that is down",
        /// An ACK whose Max-Forwards reached 0.
        AckMaxForwardsZero => "ACK with Max-Forwards 0",
        /// An ACK that would go back where it came from.
        AckWouldLoop => "ACK that would loop",
        /// A backend's ACK with no way to its frontend.
        AckNoRouteToFrontend => "ACK with no route to a frontend",
        /// A response whose top Via is not the balancer's.
        ResponseWithoutOwnVia => "response without the balancer's Via",
        /// A response whose tag does not verify.
        ResponseWithBadTag => "response with a bad tag",
        /// A response for a backend that is down.
        ResponseForDownBackend => "response for a backend that is down",
        /// A response whose next hop has no connection.
        NoConnectionToNextHop => "no connection to the response's next hop",
        /// A response waiting for a dial-out whose queue is full.
        NextHopQueueFull => "next hop still connecting, queue full",
        /// A dial-out failed: what was queued for it that cannot be answered.
        NextHopUnreachable => "next hop unreachable",
        /// A dial-out failed and the request's sender is gone too.
        NextHopUnreachableSenderGone => "next hop unreachable, sender gone",
    }
}

reasons! {
    /// Which timer closed a frontend connection ([`crate::Event::TimedOut`]).
    pub enum TimeoutCause {
        /// Nothing arrived for `idle_timeout`.
        Idle => "idle",
        /// A message stayed incomplete for `partial_timeout`.
        PartialMessage => "partial message",
        /// The connection's queue stayed over the high-water mark for `stall_timeout`.
        PeerNotReading => "peer not reading",
        /// Closed at the connection limit to make room (`admission`).
        EvictedAtConnectionLimit => "evicted at the connection limit",
    }
}
