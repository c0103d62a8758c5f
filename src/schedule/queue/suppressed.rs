//! The suppression list at the queue (`src/suppress.rs`): every copy is screened right before
//! each attempt, so an entry added while it waited still stops it. A copy whose recipients are
//! all suppressed ends `suppressed` (recorded in the spool, never sent, no bounce); a
//! multi-recipient delivery goes to the others only. And with `apps.suppress_hard_bounces`, a
//! copy failed for good with "no such mailbox" puts its recipient on the list.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::schedule::lane::Lane;
use crate::schedule::message::QueuedMessage;
use crate::schedule::suppress::{Entry, Reason};
use crate::schedule::tracking::CopyState;
use crate::spool::{LogEntry, MessageMeta, unix_now};
use crate::upstream::UpstreamError;

use super::Inner;

/// The enhanced status codes that say the mailbox does not exist (RFC 3463 "bad destination
/// mailbox address", RFC 3886 "recipient address has null MX"): only these are hard bounces.
/// `5.1.2` (bad destination system) is left out: a whole domain's trouble, often temporary.
const HARD_BOUNCE: [&str; 2] = ["5.1.1", "5.1.10"];

/// What the screen before an attempt says.
pub(super) enum Screen {
    /// Send, to these recipients only when some of the delivery's are suppressed.
    Send(Option<Vec<String>>),
    /// Every recipient is suppressed: recorded, nothing to send.
    Suppressed,
}

impl Inner {
    /// Screens delivery `index` of `message` (still queued) against the suppression list.
    pub(super) fn screen(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        message: &Arc<QueuedMessage>,
        index: usize,
    ) -> Screen {
        let rcpts = &message.meta.deliveries[index].planned.rcpt_to;
        let (suppressed, rest): (Vec<&String>, Vec<&String>) = rcpts
            .iter()
            .partition(|r| self.suppressions.check(r).is_some());
        if suppressed.is_empty() {
            return Screen::Send(None);
        }
        let provider = lane.name.as_str();
        let shown: Vec<String> = suppressed.iter().map(|r| r.to_string()).collect();
        let redacted = self.redactor.list(&shown);
        if !rest.is_empty() {
            tracing::info!(queue_id = %message.meta.id, delivery = index, %provider, rcpt = %redacted,
                "suppressed recipients left out of this delivery; sending to the others");
            return Screen::Send(Some(rest.into_iter().cloned().collect()));
        }
        let at = unix_now();
        let mine = message.with_tracks(|t| {
            let t = &mut t[index];
            if t.state != CopyState::Queued {
                return false;
            }
            t.state = CopyState::Suppressed;
            t.final_at = Some(at);
            t.next_at = None;
            true
        });
        message.active.fetch_sub(1, Ordering::Relaxed);
        message.release_if_idle();
        if !mine {
            // Deleted or bounced by an operator meanwhile: that decision stands.
            return Screen::Suppressed;
        }
        self.metrics.suppressed.with_label_values(&[provider]).inc();
        self.count_app_copy(&message.meta, "suppressed");
        let facts = crate::events::Facts {
            delivery: Some(index),
            provider: Some(provider),
            recipients: rcpts,
            ..Default::default()
        };
        self.events.emit(
            message.meta.app.as_deref(),
            &message.meta.id,
            "suppressed",
            facts,
        );
        tracing::info!(queue_id = %message.meta.id, delivery = index, %provider, rcpt = %redacted,
            "suppressed: the recipient is on the suppression list; copy not sent");
        self.record(
            lane,
            message,
            index,
            LogEntry::Suppressed { index, at },
            None,
        );
        Screen::Suppressed
    }

    /// A copy failed for good: with `apps.suppress_hard_bounces` and a "no such mailbox" reply
    /// (`5.1.1`, `5.1.10`) its one recipient goes on the list (a delivery of several recipients
    /// failed as a whole says nothing about which one).
    pub(super) fn note_hard_bounce(&self, meta: &MessageMeta, index: usize, error: &UpstreamError) {
        if !self.suppressions.hard_bounces() {
            return;
        }
        let [rcpt] = meta.deliveries[index].planned.rcpt_to.as_slice() else {
            return;
        };
        let enhanced = error.reply_text().and_then(crate::config::enhanced_code);
        if !enhanced.is_some_and(|e| HARD_BOUNCE.contains(&e)) {
            return;
        }
        let entry = Entry {
            reason: Reason::HardBounce,
            added_at: unix_now(),
            app: meta.app.clone(),
            note: None,
            expires_at: None,
        };
        let (list, rcpt, id) = (self.suppressions.clone(), rcpt.clone(), meta.id.clone());
        let shown = self.redactor.addr(&rcpt).to_string();
        tokio::spawn(async move {
            match list.add(&rcpt, entry).await {
                Ok(_) => {
                    tracing::info!(queue_id = %id, rcpt = %shown, "hard bounce: recipient put on the suppression list")
                }
                Err(e) => {
                    tracing::warn!(queue_id = %id, rcpt = %shown, error = %e, "hard bounce not put on the suppression list")
                }
            }
        });
    }
}
