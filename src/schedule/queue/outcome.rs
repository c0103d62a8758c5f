//! The queue's outcome records: what becomes of each attempt ([`Outcome`]) is counted
//! (`mailveil_deliveries_total`), logged once, written to the spool, and turns into a retry
//! (temporary failure), a bounce (permanent failure, when configured) or the message's
//! completion (its last delivery final).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::config::{RuleScope, ShapingAction, ShapingRule};
use crate::spool::{AttemptRecord, FailureRecord, LogEntry, MessageMeta, unix_now};
use crate::upstream::UpstreamError;

use crate::schedule::bounce::{self, Failure};
use crate::schedule::deliver::{NO_UPSTREAM, Outcome, Sent, Stopped};
use crate::schedule::lane::{Lane, Ready};
use crate::schedule::message::QueuedMessage;
use crate::schedule::retry::{backoff, random_jitter};
use crate::schedule::rules;

use super::manage::{BOUNCE_CODE, BOUNCE_TEXT};
use super::{Inner, Scheduler};
use crate::schedule::tracking::CopyState;

impl Inner {
    /// Records what became of an attempt: counted, logged and written to the spool; a
    /// temporary failure waits for its retry ([`defer`](Self::defer)). `handoff`: the attempt
    /// went to `spool.handoff_upstream` at shutdown; taken, the copy is recorded handed off.
    pub(super) fn conclude(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        item: Ready,
        sent: Sent<'_>,
        started: Instant,
        handoff: bool,
    ) {
        let message = item.message.clone();
        let (meta, index, attempts) = (&message.meta, item.index, item.attempts);
        let header = &sent.header;
        let rcpts = self.redactor.list(&meta.deliveries[index].planned.rcpt_to);
        let provider = lane.name.as_str();
        let final_of = |upstream| Final {
            message: &message,
            meta,
            index,
            provider,
            upstream,
            rcpts: &rcpts,
            header,
            duration_ms: started.elapsed().as_millis() as u64,
            attempts,
        };
        let (entry, failed_code) = match sent.outcome {
            Outcome::Stopped(stopped) => {
                message.note_reply(index, NO_UPSTREAM, None, stopped.to_string());
                let f = Final {
                    duration_ms: 0,
                    ..final_of(NO_UPSTREAM)
                };
                return self.stop(lane, &message, f, stopped);
            }
            Outcome::Delivered {
                upstream,
                code,
                reply,
                tls,
            } => {
                let elapsed = started.elapsed();
                self.metrics
                    .deliveries
                    .with_label_values(&[provider, upstream, "delivered"])
                    .inc();
                self.metrics
                    .delivered_tls
                    .with_label_values(&[upstream, tls])
                    .inc();
                self.metrics
                    .delivery_duration
                    .with_label_values(&[provider])
                    .observe(elapsed.as_secs_f64());
                let at = unix_now();
                let entry = if handoff {
                    self.metrics.handed_off.with_label_values(&[provider]).inc();
                    tracing::info!(queue_id = %meta.id, delivery = index, %provider, %upstream, rcpt = %rcpts,
                        code, reply = %self.redactor.text(&reply), duration_ms = elapsed.as_millis() as u64, attempts, "handed off");
                    LogEntry::HandedOff { index, at }
                } else {
                    tracing::info!(queue_id = %meta.id, delivery = index, %provider, %upstream, rcpt = %rcpts,
                        code, reply = %self.redactor.text(&reply), tls, duration_ms = elapsed.as_millis() as u64, attempts, "delivered");
                    LogEntry::Delivered { index, at }
                };
                self.copy_event(&final_of(upstream), "delivered", Some(code), &reply, None);
                message.note_reply(index, upstream, Some(code), reply);
                message.set_final(index, code, at, None);
                (entry, None)
            }
            Outcome::Failed {
                upstream,
                error,
                rule,
            } => {
                let code = error.code().unwrap_or(554);
                message.note_reply(index, upstream, error.code(), error.to_string());
                self.note_hard_bounce(meta, index, &error);
                if let Some(rule) = rule {
                    tracing::info!(queue_id = %meta.id, delivery = index, %provider, %upstream,
                        rule = %rule.name, "reply matched a fail rule");
                }
                self.fail(final_of(upstream), code, &error, false)
            }
            Outcome::Deferred {
                upstream,
                error,
                rule,
            } => {
                message.note_reply(index, upstream, error.code(), error.to_string());
                if let Some(rule) = rule {
                    self.shape(lane, upstream, rule, &error);
                }
                // Deleted or bounced by an operator while it was in flight: not tried again.
                match message.with_tracks(|t| t[index].cancelled) {
                    Some(CopyState::Deleted) => {
                        return self.drop_deleted_copy(lane, &message, index);
                    }
                    Some(_) => {
                        let (entry, code) =
                            self.fail(final_of(upstream), BOUNCE_CODE, &BOUNCE_TEXT, false);
                        message.set_final(index, BOUNCE_CODE, unix_now(), Some("bounced"));
                        message.active.fetch_sub(1, Ordering::Relaxed);
                        message.release_if_idle();
                        return self.record(lane, &message, index, entry, code);
                    }
                    None => {}
                }
                match self.defer(lane, item, final_of(upstream), &error, rule) {
                    Some(failed) => failed,
                    None => return,
                }
            }
        };
        message.active.fetch_sub(1, Ordering::Relaxed);
        message.release_if_idle();
        self.record(lane, &message, index, entry, failed_code);
    }

    /// A temporary failure (or a 5xx a shaping rule calls throttling): retried with backoff,
    /// not before a suspension of its provider ends, or failed for good once the next try
    /// would fall after `spool.max_queue_time` (then its outcome record is returned).
    fn defer(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        item: Ready,
        f: Final<'_>,
        error: &UpstreamError,
        rule: Option<&ShapingRule>,
    ) -> Option<(LogEntry, Option<u16>)> {
        let now = unix_now();
        let retry = self.settings.read().expect("not poisoned").retry.clone();
        let mut delay = backoff(
            item.attempts,
            retry.retry_initial,
            retry.retry_max,
            random_jitter(),
        );
        // Held for a spent quota: due at the reset, and never expired for that reason.
        let held = error.held_until();
        let (next, delay) = match held {
            Some(until) => {
                let next = until.max(now + 1);
                (next, std::time::Duration::from_secs(next - now))
            }
            None => {
                // No point in trying before a suspended provider reopens (its lane would hold
                // the start anyway); the spool then shows when the copy really goes next.
                if let Some(until) = lane.suspended_until() {
                    let left = until.saturating_duration_since(tokio::time::Instant::now());
                    delay = delay.max(Duration::from_secs(left.as_secs_f64().ceil() as u64));
                }
                (now + delay.as_secs().max(1), delay)
            }
        };
        if held.is_none()
            && next.saturating_sub(f.meta.received_at) > retry.max_queue_time.as_secs()
        {
            let code = error.code().unwrap_or(451);
            return Some(self.fail(f, code, error, true));
        }
        self.copy_event(&f, "deferred", error.code(), &error.to_string(), Some(next));
        let (meta, index, provider, upstream) = (f.meta, f.index, f.provider, f.upstream);
        let (rcpts, attempts) = (f.rcpts, f.attempts);
        self.metrics
            .deliveries
            .with_label_values(&[provider, upstream, "deferred"])
            .inc();
        let rule = rule.map(|r| r.name.as_str());
        tracing::info!(queue_id = %meta.id, delivery = index, %provider, %upstream, rcpt = %rcpts,
            code = error.code(), error = %self.redactor.text(error), rule, duration_ms = f.duration_ms, attempts,
            retry_in_secs = delay.as_secs(), "deferred");
        let message = &item.message;
        message.set_waiting(index, Some(next));
        let record = message.with_tracks(|t| t[index].attempts.clone());
        let entry = LogEntry::Deferred {
            index,
            next_at: next,
        };
        if let Err(e) = self.spool.record_attempt(&meta.id, &record, Some(&entry)) {
            tracing::error!(queue_id = %meta.id, error = %e, "cannot record deferral; retry time is kept in memory");
        }
        item.message.active.fetch_sub(1, Ordering::Relaxed);
        item.message.release_if_idle();
        self.retry_later(lane.clone(), item, delay);
        None
    }

    /// A copy the check before sending refused. Never expected (the same check passed at end
    /// of DATA); whatever went wrong in between, the copy does not leave: it fails for good,
    /// with a record, an error log line and a count.
    fn stop(
        self: &Arc<Self>,
        lane: &Lane,
        message: &Arc<QueuedMessage>,
        f: Final<'_>,
        stopped: Stopped,
    ) {
        let (meta, index) = (f.meta, f.index);
        tracing::error!(queue_id = %meta.id, delivery = index, provider = %lane.name, error = %stopped,
            "copy stopped by the check before sending; it is failed, not delivered");
        self.metrics
            .privacy_blocked
            .with_label_values(&["field"])
            .inc();
        let (entry, code) = self.fail(f, 554, &stopped, false);
        message.set_final(index, 554, unix_now(), Some("stopped"));
        message.active.fetch_sub(1, Ordering::Relaxed);
        message.release_if_idle();
        self.record(lane, message, index, entry, code);
    }

    /// A delivery failed for good (a permanent reply, or `max_queue_time` reached while
    /// deferred): counted, logged once, bounced when configured; returns its outcome record.
    fn fail(
        self: &Arc<Self>,
        f: Final<'_>,
        code: u16,
        error: &dyn std::fmt::Display,
        expired: bool,
    ) -> (LogEntry, Option<u16>) {
        self.copy_event(&f, "failed", Some(code), &error.to_string(), None);
        let (meta, index, provider, upstream) = (f.meta, f.index, f.provider, f.upstream);
        self.metrics
            .deliveries
            .with_label_values(&[provider, upstream, "failed"])
            .inc();
        let (rcpt, duration_ms, attempts) = (f.rcpts, f.duration_ms, f.attempts);
        if expired {
            tracing::warn!(queue_id = %meta.id, delivery = index, %provider, %upstream, %rcpt,
                code, error = %self.redactor.text(error), duration_ms, attempts, "failed: max_queue_time reached");
        } else {
            tracing::warn!(queue_id = %meta.id, delivery = index, %provider, %upstream, %rcpt,
                code, error = %self.redactor.text(error), duration_ms, attempts, "failed permanently");
        }
        let diagnostic = error.to_string();
        let failure = Failure {
            code,
            diagnostic: &diagnostic,
            expired,
        };
        self.bounce(meta, &[index], failure, f.header);
        let at = unix_now();
        let reason = if expired { "expired" } else { "permanent" };
        f.message.set_final(index, code, at, Some(reason));
        (LogEntry::Failed { index, code, at }, Some(code))
    }

    /// Takes the action of the shaping rule a deferred copy's reply matched: on `lane` (the
    /// recipient's provider) or on the upstream that answered, as the rule's scope says; with a
    /// threshold, only once enough matches came within its window. With `[cluster]` the
    /// matches are counted across the fleet: the Redis round runs on its own task (at most
    /// `CALL_TIMEOUT`) and the action follows its answer, so the copy's deferral never waits
    /// for it; without an answer this replica's own count decides.
    fn shape(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        upstream: &str,
        rule: &ShapingRule,
        error: &UpstreamError,
    ) {
        if matches!(rule.action, ShapingAction::Defer | ShapingAction::Fail) {
            return;
        }
        let reply = rules::reply_of(error)
            .map(|(code, text)| format!("{code} {text}"))
            .unwrap_or_default();
        let Some(threshold) = rule.threshold else {
            return self.act(lane, upstream, rule, &reply);
        };
        let target = match rule.scope {
            RuleScope::Provider => lane.name.as_str(),
            RuleScope::Upstream => upstream,
        };
        // Always counted here too: the count to decide on while Redis does not answer.
        let reached = self.thresholds.reached(&rule.name, target, threshold);
        let local = (reached, self.thresholds.count(&rule.name, target) as u32);
        let Some(shared) = self.thresholds.shared() else {
            return self.at_threshold(lane, upstream, rule, &reply, local, "local");
        };
        let (inner, lane, rule) = (self.clone(), lane.clone(), rule.clone());
        let (upstream, target) = (upstream.to_string(), target.to_string());
        tokio::spawn(async move {
            let counted = shared
                .record(&rule.name, rule.scope, &target, threshold)
                .await;
            let (verdict, counted) = match counted {
                Some(n) => ((n >= threshold.count, n), "fleet"),
                None => (local, "local"),
            };
            inner.at_threshold(&lane, &upstream, &rule, &reply, verdict, counted);
        });
    }

    /// A threshold rule's match, counted (`(reached, matches)`, by this replica alone or by
    /// the fleet as `counted` says): the action when the threshold is reached, else a log line.
    fn at_threshold(
        &self,
        lane: &Arc<Lane>,
        upstream: &str,
        rule: &ShapingRule,
        reply: &str,
        (reached, matches): (bool, u32),
        counted: &'static str,
    ) {
        if reached {
            return self.act(lane, upstream, rule, reply);
        }
        tracing::info!(provider = %lane.name, %upstream, rule = %rule.name, matches, counted,
            threshold = %rule.threshold.map(|t| t.to_string()).unwrap_or_default(),
            "throttling reply below the rule's threshold; no action yet");
    }

    /// Puts a matched rule's action in force, for the rule's duration from now.
    fn act(&self, lane: &Arc<Lane>, upstream: &str, rule: &ShapingRule, reply: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let duration = rule.duration.from(now);
        match rule.scope {
            RuleScope::Provider => {
                self.provider_shaped(lane, rule.action, duration, &rule.name, reply)
            }
            RuleScope::Upstream => {
                if let Some(slot) = self.upstream_slot(upstream) {
                    self.upstream_shaped(&slot, rule.action, duration, &rule.name, reply);
                }
            }
        }
    }

    /// Queues an RFC 3464 bounce to the sender of a failed delivery when `[spool] bounce` is
    /// on; never for the null sender (no bounce loops).
    pub(super) fn bounce(
        self: &Arc<Self>,
        meta: &MessageMeta,
        indices: &[usize],
        failure: Failure<'_>,
        header: &[u8],
    ) {
        let sender = meta.envelope.mail_from.clone();
        let (hostname, provider) = {
            let settings = self.settings.read().expect("not poisoned");
            if !settings.retry.bounce || sender.is_empty() {
                return;
            }
            (
                settings.routing.hostname.clone(),
                settings.routing.catalog.classify(&sender).to_string(),
            )
        };
        let (dsn, bytes) = bounce::message(&hostname, provider, meta, indices, &failure, header);
        let copies = Some(indices.len());
        let facts = crate::events::Facts {
            copies,
            ..Default::default()
        };
        self.events
            .emit(meta.app.as_deref(), &meta.id, "bounced", facts);
        let scheduler = Scheduler {
            inner: self.clone(),
        };
        let (spool, original) = (self.spool.clone(), meta.id.clone());
        self.tracker.spawn(async move {
            let bytes = Arc::new(bytes);
            let stored = spool.store_async(&dsn, bytes.clone()).await;
            match stored {
                Ok(()) => {
                    tracing::info!(queue_id = %dsn.id, %original, "bounce queued for the sender");
                    scheduler.enqueue(dsn, Some(bytes), &[]);
                }
                Err(e) => tracing::error!(%original, error = %e, "cannot spool bounce"),
            }
        });
    }

    /// A copy is final (or dropped): out of its lane's queue depth and the message's remaining
    /// count (a failure noted for the bounce); true when it was the message's last copy.
    pub(super) fn leave_lane(
        &self,
        lane: &Lane,
        message: &QueuedMessage,
        failed: Option<(usize, u16)>,
    ) -> bool {
        lane.queued.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .queue_messages
            .with_label_values(&[&lane.name])
            .dec();
        let mut progress = message.progress.lock().expect("not poisoned");
        progress.failed.extend(failed);
        progress.remaining -= 1;
        progress.remaining == 0
    }

    /// Records a final outcome; completes the message when it was its last delivery.
    pub(super) fn record(
        &self,
        lane: &Lane,
        message: &Arc<QueuedMessage>,
        index: usize,
        entry: LogEntry,
        failed_code: Option<u16>,
    ) {
        let last = self.leave_lane(lane, message, failed_code.map(|code| (index, code)));
        // A failed copy keeps its attempts for the failure record written when the message
        // completes, also after a restart; a delivered one needs only its outcome line.
        let record = failed_code.map(|_| {
            message.with_tracks(|t| AttemptRecord {
                reason: t[index].reason.map(String::from),
                ..t[index].attempts.clone()
            })
        });
        let written = match &record {
            _ if last => Ok(()),
            Some(record) => self
                .spool
                .record_attempt(&message.meta.id, record, Some(&entry)),
            None => self.spool.append(&message.meta.id, &[entry]),
        };
        if last {
            self.finish(message);
        } else if let Err(e) = written {
            tracing::error!(queue_id = %message.meta.id, error = %e, "cannot record outcome; the copy may be sent again after a restart");
        }
    }

    pub(super) fn finish(&self, message: &Arc<QueuedMessage>) {
        self.messages
            .lock()
            .expect("not poisoned")
            .remove(&message.meta.id);
        let failed = message
            .progress
            .lock()
            .expect("not poisoned")
            .failed
            .clone();
        let tracks = message.tracks();
        let records: Vec<FailureRecord> = failed
            .iter()
            .map(|&(k, code)| {
                let (t, a) = (&tracks[k], &tracks[k].attempts);
                let tried = a.count > 0;
                FailureRecord {
                    rcpt_to: message.meta.deliveries[k].planned.rcpt_to.clone(),
                    code,
                    delivery: k,
                    // A failure recovered from the spool: a 4xx code means time ran out.
                    reason: t
                        .reason
                        .unwrap_or(if code < 500 { "expired" } else { "permanent" })
                        .to_string(),
                    reply: a.reply.clone(),
                    upstream: a.upstream.clone(),
                    attempts: a.count,
                    first_attempt_at: tried.then_some(a.first),
                    last_attempt_at: tried.then_some(a.last),
                    failed_at: t.final_at.unwrap_or_else(unix_now),
                }
            })
            .collect();
        match self.spool.complete(&message.meta, &records) {
            Ok(()) => {
                self.metrics.spool_bytes.set(self.spool.bytes() as i64);
                tracing::debug!(queue_id = %message.meta.id, "message complete; removed from spool");
            }
            Err(e) => {
                tracing::error!(queue_id = %message.meta.id, error = %e, "cannot remove completed message from spool")
            }
        }
    }
}

/// What [`Inner::fail`] needs to know about the delivery that failed.
pub(super) struct Final<'a> {
    message: &'a QueuedMessage,
    pub(super) meta: &'a MessageMeta,
    pub(super) index: usize,
    pub(super) provider: &'a str,
    pub(super) upstream: &'a str,
    rcpts: &'a str,
    header: &'a [u8],
    duration_ms: u64,
    pub(super) attempts: u32,
}
