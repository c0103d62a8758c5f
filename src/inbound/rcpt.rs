//! RCPT TO: adds a recipient, after the relay check and the per-transaction limit.
//!
//! The relay check is made here, per recipient, because this is where a relay decides whose
//! mail it carries; MAIL alone commits to nothing.
//!
//! The recipient is stored in RFC 5321 form (`path.rs`): `<"b@y, x"@z>` stays that one
//! mailbox, never the de-quoted `b@y, x@z`. A recipient given twice (compared with
//! [`key`]: `Bob@Y.test` = `"bob"@y.test`) is answered `250`, as RFC 5321 allows, but added
//! once, so it gets one copy; `max_recipients` counts distinct recipients.

use std::ops::Range;

use smtp_proto::RcptTo;

use super::Acceptor;
use super::access::{Relay, relay};
use super::path::envelope_address;
use super::replies;
use super::session::{Flow, Rejection, Session, Stream};
use crate::privacy::address::key;

impl<S: Stream, A: Acceptor> Session<S, A> {
    /// `line` is where the command sits in the read buffer (the raw path is checked too).
    pub(super) async fn rcpt(&mut self, to: RcptTo<String>, line: Range<usize>) -> Flow {
        let Some(count) = self.st.tx.as_ref().map(|tx| tx.rcpt_to.len()) else {
            return self.reject(Rejection::BadSequence, &replies::NEED_MAIL);
        };
        if to.address.is_empty() {
            // `<>` and the bare `<postmaster>` (which the parser folds into ""): a relay has
            // no local mailbox to give them to.
            return self.reject(Rejection::Syntax, &replies::BAD_RECIPIENT);
        }
        let address = match envelope_address(&to.address, self.line(line)) {
            Ok(address) => address,
            Err(e) => {
                tracing::debug!(peer = %self.st.peer, reason = %e, "RCPT address refused");
                return self.reject(Rejection::Syntax, &replies::BAD_RECIPIENT);
            }
        };
        let access = &self.ctx.settings.access;
        let auth_possible = access.auth_enabled() && (self.st.tls || self.ctx.tls.is_some());
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
                rcpt = %self.ctx.redactor.addr(&address),
                "relay denied"
            );
            return self.reject(Rejection::RelayDenied, reply);
        }
        let mailbox = key(&address);
        if self
            .st
            .tx
            .as_ref()
            .is_some_and(|tx| tx.rcpt_keys.contains(&mailbox))
        {
            tracing::debug!(
                peer = %self.st.peer,
                rcpt = %self.ctx.redactor.addr(&address),
                "duplicate recipient accepted once"
            );
            self.reply(&replies::RECIPIENT_OK);
            return Flow::Continue;
        }
        if count >= self.ctx.settings.server.max_recipients {
            return self.reject(Rejection::TooManyRecipients, &replies::TOO_MANY_RECIPIENTS);
        }
        // The app's daily quota: one recipient reserved, given back if the message is not taken.
        let limits = self.st.tx.as_ref().and_then(|tx| tx.limits.clone());
        let reserved = match &limits {
            Some(limits) => match limits.reserve_recipient().await {
                Ok(reserved) => reserved,
                Err(reply) => return self.reject_dyn(Rejection::AppLimit, &reply),
            },
            None => None,
        };
        if let Some(tx) = &mut self.st.tx {
            tx.reserved.extend(reserved);
            tx.rcpt_to.push(address);
            tx.rcpt_keys.insert(mailbox);
        }
        self.reply(&replies::RECIPIENT_OK);
        Flow::Continue
    }
}
