//! RCPT TO: adds a recipient, after the relay check and the per-transaction limit.
//!
//! The relay check is made here, per recipient, because this is where a relay decides whose
//! mail it carries; MAIL alone commits to nothing.

use smtp_proto::RcptTo;

use super::Acceptor;
use super::access::{Relay, relay};
use super::replies;
use super::session::{Flow, Rejection, Session, Stream};

impl<S: Stream, A: Acceptor> Session<S, A> {
    pub(super) fn rcpt(&mut self, to: RcptTo<String>) -> Flow {
        let Some(count) = self.st.tx.as_ref().map(|tx| tx.rcpt_to.len()) else {
            return self.reject(Rejection::BadSequence, &replies::NEED_MAIL);
        };
        if to.address.is_empty() {
            // `<>` and the bare `<postmaster>` (which the parser folds into ""): a relay has
            // no local mailbox to give them to.
            return self.reject(Rejection::Syntax, &replies::BAD_RECIPIENT);
        }
        if has_control(&to.address) {
            // smtp-proto lets control characters (NUL, ESC, ...) through inside a quoted local
            // part. No mailbox needs them, and downstream they could only be stripped (turning
            // the address into someone else's) or smuggled into headers and logs.
            return self.reject(Rejection::Syntax, &replies::BAD_RECIPIENT);
        }
        let access = &self.ctx.settings.access;
        let auth_possible = !access.users.is_empty() && (self.st.tls || self.ctx.tls.is_some());
        let decision = relay(
            &access.networks,
            self.st.peer.ip(),
            self.st.user.is_some(),
            auth_possible,
        );
        let denied = match decision {
            Relay::Allowed => None,
            Relay::AuthRequired => Some(&replies::AUTH_REQUIRED),
            Relay::Denied => Some(&replies::RELAY_DENIED),
        };
        if let Some(reply) = denied {
            tracing::info!(
                peer = %self.st.peer,
                rcpt = %self.ctx.redactor.addr(&to.address),
                "relay denied"
            );
            return self.reject(Rejection::RelayDenied, reply);
        }
        if count >= self.ctx.settings.server.max_recipients {
            return self.reject(Rejection::TooManyRecipients, &replies::TOO_MANY_RECIPIENTS);
        }
        if let Some(tx) = &mut self.st.tx {
            tx.rcpt_to.push(to.address);
        }
        self.reply(&replies::RECIPIENT_OK);
        Flow::Continue
    }
}

/// True when an envelope address holds a control character (C0, DEL or C1).
pub(super) fn has_control(address: &str) -> bool {
    address.chars().any(char::is_control)
}
