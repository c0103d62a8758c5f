//! DATA: receives the message through the sans-IO [`DotDecoder`] and hands it to the
//! [`Acceptor`]; its [`Verdict`] becomes the reply.
//!
//! An oversized message is read to its end and discarded (never buffered past the limit), then
//! answered `552 5.3.4`; a message holding a NUL byte likewise, answered `550 5.6.0` (no reader
//! agrees on what a NUL means, so such a message is refused rather than guessed at). The
//! connection stays usable. Whatever the outcome, the transaction is over afterwards, so the
//! client can start the next one.
//!
//! Memory: the buffer grows only within a reservation in the listener's
//! [`DataBudget`](super::memory::DataBudget) (`server.max_data_memory`, shared by all sessions).
//! A message that finds no room (after a short wait) is read to its end and discarded too, and
//! answered `452 4.3.1`: the process does not grow past the cap, and nothing is half-accepted.

use std::io::Write;
use std::time::{Duration, Instant as WallClock};

use tokio::time::Instant;

use super::dot::{DotDecoder, Feed};
use super::memory::Reservation;
use super::replies;
use super::session::{Flow, Rejection, Session, Stream};
use super::{Acceptor, InboundError, Transaction, Verdict};
use crate::config::NO_APP;
use crate::envelope::{ClientInfo, Envelope};

/// Initial message buffer when the client gave no `SIZE=`; it grows by doubling.
const INITIAL_MESSAGE_CAPACITY: usize = 16 * 1024;

/// Room kept in the buffer for the relay's `Received:` field, prepended in place: the buffer
/// must not be reallocated (and briefly held twice) for it.
const TRACE_HEADROOM: usize = 1024;

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
        let message_limit = limit;
        let mut memory = Reservation::new(&self.ctx.data_budget);
        let mut over_budget = !memory.grow_to(capacity as u64).await;
        let mut message = if over_budget {
            Vec::new()
        } else {
            Vec::with_capacity(capacity + TRACE_HEADROOM)
        };
        // What a message over the memory budget is decoded into, and dropped.
        let mut discard = Vec::new();
        let mut decoder = DotDecoder::new(limit);

        self.reply(&replies::START_DATA);
        self.flush().await?;
        let limit = self.ctx.settings.server.command_timeout;
        let mut deadline = Instant::now() + limit;
        loop {
            if !over_budget && !decoder.overflowed() && !decoder.saw_nul() {
                // Worst case the decoded bytes are twice the input (bare LFs stored as CRLF).
                let need = message.len() + 2 * self.st.unread().len();
                if need + TRACE_HEADROOM > message.capacity() {
                    // Doubling, as a Vec grows; never past the size limit (the decoder empties
                    // the buffer rather than grow it past that).
                    let target = need
                        .max(message.capacity().saturating_mul(2))
                        .min(message_limit)
                        + TRACE_HEADROOM;
                    // The headroom is not counted: a message of `max_message_size` must fit a
                    // budget of that size (it is at most 1 KiB a session).
                    if memory.grow_to((target - TRACE_HEADROOM) as u64).await {
                        message.reserve_exact(target - message.len());
                    } else {
                        over_budget = true;
                        message = Vec::new();
                        memory.release();
                    }
                }
            }
            let out = if over_budget {
                &mut discard
            } else {
                &mut message
            };
            let fed = decoder.feed(self.st.unread(), out);
            discard.clear();
            match fed {
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

        let Some(mut draft) = self.st.tx.take() else {
            return Ok(self.reject(Rejection::BadSequence, &replies::NEED_MAIL_DATA));
        };
        // The app's quota reservations: kept if the message is accepted, else given back when
        // dropped (every early return below).
        let reserved = std::mem::take(&mut draft.reserved);
        let app = draft
            .app
            .as_ref()
            .map_or(NO_APP.to_string(), |a| a.name.clone());
        let metrics = &self.ctx.metrics;
        if decoder.overflowed() {
            metrics
                .messages_received
                .with_label_values(&["rejected"])
                .inc();
            self.count_app(&app, "rejected");
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
            self.count_app(&app, "rejected");
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
        if over_budget {
            metrics
                .messages_received
                .with_label_values(&["rejected"])
                .inc();
            self.count_app(&app, "rejected");
            tracing::warn!(
                peer = %self.st.peer,
                size = decoder.decoded_size(),
                max_data_memory = self.ctx.settings.server.max_data_memory,
                "message refused: DATA held in memory by all sessions is at server.max_data_memory"
            );
            return Ok(self.reject(Rejection::DataMemory, &replies::DATA_MEMORY_FULL));
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
            app: draft.app,
        };
        let started = WallClock::now();
        let verdict = self.ctx.acceptor.accept(tx).await;
        let metrics = &self.ctx.metrics;
        match verdict {
            Verdict::Accepted { queue_id } => {
                reserved.into_iter().for_each(|r| r.keep());
                metrics
                    .accept_duration
                    .observe(started.elapsed().as_secs_f64());
                metrics
                    .messages_received
                    .with_label_values(&["accepted"])
                    .inc();
                self.count_app(&app, "accepted");
                tracing::debug!(peer = %self.st.peer, %queue_id, recipients, size, "message accepted");
                let _ = write!(self.st.wbuf, "250 2.0.0 queued as {queue_id}\r\n");
                self.st.messages += 1;
            }
            Verdict::Rejected(reply) => {
                metrics
                    .messages_received
                    .with_label_values(&["rejected"])
                    .inc();
                self.count_app(&app, "rejected");
                tracing::info!(peer = %self.st.peer, code = reply.code, status = reply.status, recipients, size, "message rejected");
                self.reply_dyn(&reply);
            }
        }
        Ok(Flow::Continue)
    }
}

impl<S: Stream, A: Acceptor> Session<S, A> {
    /// `mailveil_app_messages_total{app,outcome}` for a message at end of DATA.
    fn count_app(&self, app: &str, outcome: &str) {
        self.ctx
            .metrics
            .app_messages
            .with_label_values(&[app, outcome])
            .inc();
    }
}
