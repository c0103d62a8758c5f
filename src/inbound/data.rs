//! DATA: receives the message through the sans-IO [`DotDecoder`] and hands it to the
//! [`Acceptor`]; its [`Verdict`] becomes the reply.
//!
//! An oversized message is read to its end and discarded (never buffered past the limit), then
//! answered `552 5.3.4`; a message holding a NUL byte likewise, answered `550 5.6.0` (no reader
//! agrees on what a NUL means, so such a message is refused rather than guessed at). The
//! connection stays usable. Whatever the outcome, the transaction is over afterwards, so the
//! client can start the next one.

use std::io::Write;
use std::time::{Duration, Instant as WallClock};

use tokio::time::Instant;

use super::dot::{DotDecoder, Feed};
use super::replies;
use super::session::{Flow, Rejection, Session, Stream};
use super::{Acceptor, InboundError, Transaction, Verdict};
use crate::envelope::{ClientInfo, Envelope};

/// Initial message buffer when the client gave no `SIZE=`; it grows by doubling.
const INITIAL_MESSAGE_CAPACITY: usize = 16 * 1024;

/// Slowest average rate a message may arrive at, once `command_timeout` of credit is spent.
const MIN_DATA_RATE: u64 = 1024; // bytes per second

/// The DATA deadline after `received` more bytes: each byte earns `1 / MIN_DATA_RATE` seconds,
/// but the deadline never lies more than `limit` ahead. So a stall still ends after
/// `command_timeout`, and a client trickling bytes (slowloris inside DATA, where every read
/// would otherwise reset the clock) is cut off once it falls below `MIN_DATA_RATE` on average.
fn extend(deadline: Instant, received: usize, limit: Duration) -> Instant {
    let credit = Duration::from_millis(received as u64 * 1000 / MIN_DATA_RATE);
    (deadline + credit).min(Instant::now() + limit)
}

impl<S: Stream, A: Acceptor> Session<S, A> {
    pub(super) async fn data(&mut self) -> Result<Flow, InboundError> {
        let Some(declared) = self.st.tx.as_ref().map(|tx| tx.declared_size) else {
            return Ok(self.reject(Rejection::BadSequence, &replies::NEED_MAIL_DATA));
        };
        if self.st.tx.as_ref().is_some_and(|tx| tx.rcpt_to.is_empty()) {
            return Ok(self.reject(Rejection::BadSequence, &replies::NO_RECIPIENTS));
        }
        let limit =
            usize::try_from(self.ctx.settings.server.max_message_size).unwrap_or(usize::MAX);
        // Trust SIZE= for one allocation up front, within the limit (it was checked at MAIL).
        let capacity = if declared > 0 {
            declared.saturating_add(1024).min(limit)
        } else {
            INITIAL_MESSAGE_CAPACITY.min(limit)
        };
        let mut message = Vec::with_capacity(capacity);
        let mut decoder = DotDecoder::new(limit);

        self.reply(&replies::START_DATA);
        self.flush().await?;
        let limit = self.ctx.settings.server.command_timeout;
        let mut deadline = Instant::now() + limit;
        loop {
            match decoder.feed(self.st.unread(), &mut message) {
                Feed::End { consumed } => {
                    self.st.consume(consumed);
                    break;
                }
                Feed::NeedMore => {
                    let all = self.st.unread().len();
                    self.st.consume(all);
                }
            }
            // A transaction is open: shutdown does not interrupt it.
            if let Some(end) = self.fill(false, deadline).await? {
                self.st.tx = None;
                return Ok(self.end(end));
            }
            deadline = extend(deadline, self.st.unread().len(), limit);
        }

        let Some(draft) = self.st.tx.take() else {
            return Ok(self.reject(Rejection::BadSequence, &replies::NEED_MAIL_DATA));
        };
        let metrics = &self.ctx.metrics;
        if decoder.overflowed() {
            metrics
                .messages_received
                .with_label_values(&["rejected"])
                .inc();
            tracing::info!(
                peer = %self.st.peer,
                size = decoder.decoded_size(),
                "message over the size limit discarded"
            );
            return Ok(self.reject(Rejection::Size, &replies::MESSAGE_TOO_BIG));
        }
        if decoder.saw_nul() {
            metrics
                .messages_received
                .with_label_values(&["rejected"])
                .inc();
            metrics
                .privacy_blocked
                .with_label_values(&["malformed"])
                .inc();
            tracing::info!(
                peer = %self.st.peer,
                size = decoder.decoded_size(),
                "message with NUL characters refused"
            );
            return Ok(self.reject(Rejection::Malformed, &replies::MESSAGE_HAS_NUL));
        }

        let recipients = draft.rcpt_to.len();
        let size = message.len();
        let tx = Transaction {
            envelope: Envelope {
                mail_from: draft.mail_from,
                rcpt_to: draft.rcpt_to,
            },
            message,
            client: ClientInfo {
                peer: self.st.peer,
                helo: self.st.helo.clone().unwrap_or_default(),
                tls: self.st.tls,
                user: self.st.user.clone(),
            },
        };
        let started = WallClock::now();
        let verdict = self.ctx.acceptor.accept(tx).await;
        let metrics = &self.ctx.metrics;
        match verdict {
            Verdict::Accepted { queue_id } => {
                metrics
                    .accept_duration
                    .observe(started.elapsed().as_secs_f64());
                metrics
                    .messages_received
                    .with_label_values(&["accepted"])
                    .inc();
                tracing::debug!(peer = %self.st.peer, %queue_id, recipients, size, "message accepted");
                let _ = write!(self.st.wbuf, "250 2.0.0 queued as {queue_id}\r\n");
                self.st.messages += 1;
            }
            Verdict::Rejected(reply) => {
                metrics
                    .messages_received
                    .with_label_values(&["rejected"])
                    .inc();
                tracing::info!(peer = %self.st.peer, code = reply.code, status = reply.status, recipients, size, "message rejected");
                self.reply_dyn(&reply);
            }
        }
        Ok(Flow::Continue)
    }
}
