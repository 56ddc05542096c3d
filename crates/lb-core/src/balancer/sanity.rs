//! The edge checks of initial requests from frontends (`message/sanity.rs`), as the balancer
//! applies them: a request that fails is answered `400 <fault>`, counted, and goes nowhere.

use super::*;

impl Balancer {
    /// Whether `message`, a request from a frontend, may go on. An initial request (no To tag)
    /// must pass the sanity checks when they are on; in-dialog requests always may.
    pub(super) fn passes_sanity(&mut self, source: Source, message: &SipMessage) -> bool {
        let limits = &self.config.config.sanity;
        if message.to_tag || !limits.enabled {
            return true;
        }
        let Err(fault) = crate::message::sanity::check(message, limits) else {
            return true;
        };
        self.stats.sanity_refused += 1;
        tracing::debug!(conn = %source.conn, fault = fault.as_str(), "initial request fails the sanity checks");
        self.outputs.push_back(Output::Event(Event::Malformed {
            conn: source.conn,
            fault,
        }));
        // An ACK is never answered (RFC 3261 §17.1.1.3).
        let answered = message.method() != Some(Method::Ack)
            && self.reply(
                source,
                &message.bytes,
                Reply::Malformed {
                    status: 400,
                    reason: fault.as_str(),
                },
            );
        if answered {
            self.stats.replies_400 += 1;
        } else {
            self.drop_message(source.conn, DropCause::SanityUnanswerable);
        }
        false
    }
}
