//! What a peer running one of `scenarios/` logs of each call, as [`crate::trace::Trace::signature`]
//! compares it (sorted `dir label` items), for the flows that are the same in every topology:
//! whatever stands in front (SIPp alone, or Kamailio and the balancer), a backend running
//! `uas_basic.xml` sees the same six messages. Flows that differ by topology (a stateful proxy
//! answers 100 itself, absorbs retransmissions) stay in the test that expects them.

/// `uas_basic.xml`: a call the caller ends with BYE.
pub const UAS_BASIC: &[&str] = &[
    "recv INVITE",
    "sent 180/INVITE",
    "sent 200/INVITE",
    "recv ACK",
    "recv BYE",
    "sent 200/BYE",
];

/// `uas_486.xml`: a call rejected busy, and the ACK of the 486.
pub const UAS_486: &[&str] = &[
    "recv INVITE",
    "sent 100/INVITE",
    "sent 486/INVITE",
    "recv ACK",
];

/// `uac_486.xml`: the caller's side of it.
pub const UAC_486: &[&str] = &[
    "sent INVITE",
    "recv 100/INVITE",
    "recv 486/INVITE",
    "sent ACK",
];

/// `uas_bye.xml`: a call the backend hangs up.
pub const UAS_BYE: &[&str] = &[
    "recv INVITE",
    "sent 180/INVITE",
    "sent 200/INVITE",
    "recv ACK",
    "sent BYE",
    "recv 200/BYE",
];

/// `uac_recv_bye.xml`: the caller's side of a call the backend hangs up (100 Trying, optional
/// in the scenario, comes only from peers that send it).
pub const UAC_RECV_BYE: &[&str] = &[
    "sent INVITE",
    "recv 180/INVITE",
    "recv 200/INVITE",
    "sent ACK",
    "recv BYE",
    "sent 200/BYE",
];

/// `uac_cancel.xml`: the caller retransmits its INVITE once, then cancels it while it rings.
pub const UAC_CANCEL: &[&str] = &[
    "sent INVITE",
    "recv 100/INVITE",
    "recv 180/INVITE",
    "sent INVITE",
    "recv 180/INVITE",
    "sent CANCEL",
    "recv 200/CANCEL",
    "recv 487/INVITE",
    "sent ACK",
];
