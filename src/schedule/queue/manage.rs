//! The operator's hold on the queue while the relay runs (`mailveil ctl queue ...` through the
//! admin API): list and show messages ([`view`](super::view)), make deferred copies due now,
//! delete a message or bounce it.
//!
//! Why deletes and bounces are synced before they are answered: an operator deletes a message
//! in an incident (a leak, a wrong list); once told "deleted", no crash or `kill -9` may bring
//! a copy of it back. So the copies are first taken from the queue in memory (nothing new
//! starts), then the decision is written and synced to the spool, then the API answers. A copy
//! already being handed to an upstream at that moment cannot be called back: it is reported as
//! `in_flight`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::schedule::bounce::Failure;
use crate::schedule::deliver::NO_UPSTREAM;
use crate::schedule::message::QueuedMessage;
use crate::schedule::tracking::CopyState;
use crate::spool::{AttemptRecord, LogEntry, SpoolError, unix_now};

use super::control::UnknownProvider;
use super::view::{self, MessageDetail, MessageView, QueueFilter};
use super::{Inner, Scheduler};

/// Which deferred copies `queue retry` makes due now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryTarget {
    All,
    Provider(String),
    Message(String),
}

/// Why a queue request was not carried out (or not made durable).
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("no message {0:?} with copies left in the queue")]
    NotFound(String),
    #[error(transparent)]
    UnknownProvider(#[from] UnknownProvider),
    #[error(
        "the copies are taken out of the queue, but recording that in the spool failed ({0}): \
         after a restart they may be sent"
    )]
    Spool(SpoolError),
}

/// What a delete or bounce did.
#[derive(Debug, Clone, Serialize)]
pub struct Removal {
    pub id: String,
    /// `deleted` or `bounced`.
    pub action: &'static str,
    /// Copies that will never go out.
    pub removed: usize,
    /// Copies being handed to an upstream right now: delivered if the upstream takes them,
    /// otherwise never tried again (bounced copies then fail and bounce).
    pub in_flight: usize,
    /// Bounces queued to the sender (`bounce` with `[spool] bounce = true`): one for all the
    /// copies removed at once; copies in flight that then fail bounce on their own.
    pub bounces: usize,
}

impl Scheduler {
    /// Messages with copies still to go that pass `filter`, oldest first. Blocking when the
    /// filter names a Message-ID (it is read from each message's bytes).
    pub fn queue_list(&self, filter: &QueueFilter, show_addresses: bool) -> Vec<MessageView> {
        let redactor = self.inner.view_redactor(show_addresses);
        let now = unix_now();
        let mut list: Vec<MessageView> = self
            .inner
            .queued()
            .into_iter()
            .filter_map(|m| {
                let tracks = m.tracks();
                let message_id = || self.inner.message_id_of(&m);
                filter.listed(&m.meta, &tracks, message_id, &redactor, now)
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        list
    }

    /// Everything about one queued message (blocking: reads its Message-ID).
    pub fn queue_show(&self, id: &str, show_addresses: bool) -> Option<MessageDetail> {
        let message = self.inner.find(id)?;
        let redactor = self.inner.view_redactor(show_addresses);
        let mid = self.inner.message_id_of(&message);
        Some(view::detail(
            &message.meta,
            &message.tracks(),
            mid,
            &redactor,
            unix_now(),
        ))
    }

    /// Makes the deferred copies of `target` due now (they still wait for their provider's
    /// throttle and for any pause); returns how many. For `queue retry`, and for `resume`
    /// (copies deferred while an upstream was down need not wait out their backoff).
    pub fn retry_now(&self, target: &RetryTarget) -> Result<usize, ManageError> {
        let messages = match target {
            RetryTarget::Message(id) => {
                vec![
                    self.inner
                        .find(id)
                        .ok_or_else(|| ManageError::NotFound(id.clone()))?,
                ]
            }
            RetryTarget::Provider(p) if !self.inner.is_known_provider(p) => {
                return Err(UnknownProvider(p.clone()).into());
            }
            RetryTarget::Provider(_) | RetryTarget::All => self.inner.queued(),
        };
        let now = unix_now();
        let mut total = 0;
        for m in messages {
            let due: Vec<usize> = m.with_tracks(|tracks| {
                let mut due = Vec::new();
                for (index, t) in tracks.iter_mut().enumerate() {
                    let provider = &m.meta.deliveries[index].provider;
                    let wanted = match target {
                        RetryTarget::Provider(p) => provider == p,
                        RetryTarget::All | RetryTarget::Message(_) => true,
                    };
                    if wanted && t.state == CopyState::Deferred {
                        t.retry_now = true;
                        t.next_at = Some(now);
                        due.push(index);
                    }
                }
                due
            });
            if due.is_empty() {
                continue;
            }
            total += due.len();
            // So that a restart does not put them back to their old time (synced in the
            // background: at worst they wait out the old backoff after a crash).
            let entries: Vec<LogEntry> = due
                .iter()
                .map(|&index| LogEntry::Deferred {
                    index,
                    next_at: now,
                })
                .collect();
            if let Err(e) = self.inner.spool.append(&m.meta.id, &entries) {
                tracing::error!(queue_id = %m.meta.id, error = %e, "cannot record the retry; a restart keeps the old retry time");
            }
            m.wake.notify_waiters();
        }
        tracing::info!(target = ?target, copies = total, "deferred copies made due now");
        Ok(total)
    }

    /// Deletes message `id`: none of its copies not yet sent goes out, no bounce; recorded and
    /// synced before it returns.
    pub async fn delete(&self, id: &str) -> Result<Removal, ManageError> {
        self.inner.remove(id, false).await
    }

    /// Fails every copy of message `id` not yet sent (`550`, reason `bounced`), with one bounce
    /// to the sender naming them all when `[spool] bounce` is on; recorded and synced before it
    /// returns. The `failed/<id>.json` record is written when its last copy is final.
    pub async fn bounce(&self, id: &str) -> Result<Removal, ManageError> {
        self.inner.remove(id, true).await
    }
}

/// The code and text a bounced copy fails with.
pub(super) const BOUNCE_CODE: u16 = 550;
pub(super) const BOUNCE_TEXT: &str = "5.0.0 bounced by the relay's operator";

impl Inner {
    /// Every message with copies still to go.
    fn queued(&self) -> Vec<Arc<QueuedMessage>> {
        let messages = self.messages.lock().expect("not poisoned");
        messages.values().cloned().collect()
    }

    fn find(&self, id: &str) -> Option<Arc<QueuedMessage>> {
        self.messages.lock().expect("not poisoned").get(id).cloned()
    }

    fn view_redactor(&self, show_addresses: bool) -> crate::observe::Redactor {
        if show_addresses {
            self.redactor.showing()
        } else {
            self.redactor.clone()
        }
    }

    /// The message's Message-ID, read from the spool (blocking).
    fn message_id_of(&self, message: &QueuedMessage) -> Option<String> {
        let bytes = self.spool.read_message(&message.meta.id).ok()?;
        let end = memchr::memmem::find(&bytes, b"\r\n\r\n").map_or(bytes.len(), |p| p + 4);
        view::message_id(&bytes[..end])
    }

    /// Takes every copy of `id` not in flight out of the queue, records that durably, and
    /// finishes the message when nothing of it is left (see the module documentation).
    async fn remove(self: &Arc<Self>, id: &str, bounce: bool) -> Result<Removal, ManageError> {
        let message = self
            .find(id)
            .ok_or_else(|| ManageError::NotFound(id.to_string()))?;
        let now = unix_now();
        let (claimed, in_flight) = message.with_tracks(|tracks| {
            let (mut claimed, mut in_flight) = (Vec::new(), 0);
            for (index, t) in tracks.iter_mut().enumerate() {
                match t.state {
                    CopyState::Queued | CopyState::Deferred | CopyState::Held => {
                        claimed.push((index, t.state));
                        t.next_at = None;
                        t.state = if bounce {
                            t.final_code = Some(BOUNCE_CODE);
                            t.final_at = Some(now);
                            t.reason = Some("bounced");
                            CopyState::Failed
                        } else {
                            CopyState::Deleted
                        };
                    }
                    CopyState::Active => {
                        in_flight += 1;
                        t.cancelled = Some(if bounce {
                            CopyState::Failed
                        } else {
                            CopyState::Deleted
                        });
                    }
                    CopyState::Delivered
                    | CopyState::Failed
                    | CopyState::Deleted
                    | CopyState::Dropped
                    | CopyState::Suppressed => {}
                }
            }
            (claimed, in_flight)
        });
        if claimed.is_empty() && in_flight == 0 {
            return Err(ManageError::NotFound(id.to_string()));
        }
        self.forget_hold(id);
        self.unqueue(&message, &claimed);
        let spool = self.spool.clone();
        let key = id.to_string();
        let entries: Vec<LogEntry> = claimed
            .iter()
            .map(|&(index, _)| LogEntry::Failed {
                index,
                code: BOUNCE_CODE,
                at: now,
            })
            .collect();
        let attempts: Vec<AttemptRecord> = message.with_tracks(|t| {
            claimed
                .iter()
                .map(|&(index, _)| AttemptRecord {
                    index,
                    reason: Some("bounced".into()),
                    ..t[index].attempts.clone()
                })
                .collect()
        });
        let recorded = tokio::task::spawn_blocking(move || {
            if bounce {
                spool.append_synced(&key, &attempts, &entries)
            } else {
                spool.record_deleted(&key)
            }
        })
        .await
        .expect("spool write does not panic");
        let bounces = if bounce {
            self.bounce_all(&message, &claimed).await
        } else {
            0
        };
        let last = {
            let mut progress = message.progress.lock().expect("not poisoned");
            if bounce {
                progress
                    .failed
                    .extend(claimed.iter().map(|&(k, _)| (k, BOUNCE_CODE)));
            }
            progress.remaining -= claimed.len();
            progress.remaining == 0
        };
        let action = if bounce { "bounced" } else { "deleted" };
        tracing::warn!(queue_id = %id, action, copies = claimed.len(), in_flight, bounces,
            durable = recorded.is_ok(), "message {action} by the operator");
        if last {
            self.finish(&message);
        }
        recorded.map_err(ManageError::Spool)?;
        Ok(Removal {
            id: id.to_string(),
            action,
            removed: claimed.len(),
            in_flight,
            bounces,
        })
    }

    /// A copy that was in flight when the operator deleted its message, and was not
    /// delivered: it is not tried again; the message finishes when it was its last copy.
    pub(super) fn drop_deleted_copy(
        &self,
        lane: &crate::schedule::lane::Lane,
        message: &Arc<QueuedMessage>,
        index: usize,
    ) {
        message.with_tracks(|t| {
            t[index].state = CopyState::Deleted;
            t[index].next_at = None;
        });
        message.active.fetch_sub(1, Ordering::Relaxed);
        message.release_if_idle();
        if self.leave_lane(lane, message, None) {
            self.finish(message);
        }
    }

    /// Takes the `claimed` copies of `message` out of their lanes and retry timers, and out
    /// of the queue depth counts (held copies were never counted there).
    fn unqueue(&self, message: &Arc<QueuedMessage>, claimed: &[(usize, CopyState)]) {
        let lanes = self.lanes.read().expect("not poisoned");
        for lane in lanes.values() {
            let removed = lane.remove_message(message);
            message.active.fetch_sub(removed, Ordering::Relaxed);
        }
        for &(index, state) in claimed {
            if state == CopyState::Held {
                continue;
            }
            let provider = &message.meta.deliveries[index].provider;
            if let Some(lane) = lanes.get(provider) {
                lane.queued.fetch_sub(1, Ordering::Relaxed);
            }
            self.metrics
                .queue_messages
                .with_label_values(&[provider])
                .dec();
        }
        drop(lanes);
        // The retry timers look again and end.
        message.wake.notify_waiters();
        message.release_if_idle();
    }

    /// Counts the bounced copies as failed deliveries and queues one bounce naming them all
    /// when `[spool] bounce` is on (never to the null sender). Returns how many were queued.
    async fn bounce_all(
        self: &Arc<Self>,
        message: &Arc<QueuedMessage>,
        claimed: &[(usize, CopyState)],
    ) -> usize {
        let meta = &message.meta;
        for &(index, _) in claimed {
            self.metrics
                .deliveries
                .with_label_values(&[&meta.deliveries[index].provider, NO_UPSTREAM, "failed"])
                .inc();
        }
        let enabled = self.settings.read().expect("not poisoned").retry.bounce;
        if !enabled || meta.envelope.mail_from.is_empty() {
            return 0;
        }
        let bytes = match message.bytes(&self.spool).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %meta.id, error = %e, "cannot read the message to bounce it; no bounce sent");
                return 0;
            }
        };
        let privacy = || self.settings.read().expect("not poisoned").privacy.clone();
        let exposure = message.exposure(privacy, &bytes).await;
        let indices: Vec<usize> = claimed.iter().map(|&(k, _)| k).collect();
        let Some(&first) = indices.first() else {
            return 0;
        };
        // One bounce names every bounced recipient and returns the first copy's own header,
        // which shows no other recipient.
        let rewrite = &meta.deliveries[first].planned.rewrite;
        let header = crate::privacy::render_header(&bytes, rewrite, &exposure);
        let failure = Failure {
            code: BOUNCE_CODE,
            diagnostic: BOUNCE_TEXT,
            expired: false,
        };
        self.bounce(meta, &indices, failure, &header);
        1
    }
}
