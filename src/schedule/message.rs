//! A message with deliveries in the queue and its priority class: the types the lanes
//! ([`lane`](super::lane)) and the queue ([`queue`](super::queue)) share, kept apart from both
//! so neither imports the other's internals.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::Notify;

use crate::config::PrivacyConfig;
use crate::privacy::{self, Exposure};
use crate::spool::{AttemptRecord, MessageMeta, Spool, SpoolError};

use super::tracking::{CopyState, Track};

/// Messages with at most this many deliveries are transactional.
pub const TRANSACTIONAL_MAX_DELIVERIES: usize = 10;

/// Priority class of a delivery: lower goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    Transactional,
    Bulk,
}

impl Class {
    pub fn of(deliveries: usize) -> Class {
        if deliveries <= TRANSACTIONAL_MAX_DELIVERIES {
            Class::Transactional
        } else {
            Class::Bulk
        }
    }
}

/// A message with deliveries in the queue.
pub struct QueuedMessage {
    pub(super) meta: MessageMeta,
    pub(super) class: Class,
    /// The bytes while the message is active (deliveries ready or in flight), so a fan-out reads
    /// its file once; dropped while all its deliveries wait for retries, so a long queue does not
    /// sit in memory.
    hot: Mutex<Option<Arc<Vec<u8>>>>,
    weak: Mutex<Weak<Vec<u8>>>,
    pub(super) active: AtomicUsize,
    pub(super) progress: Mutex<Progress>,
    /// The private addresses each copy is checked against before it is sent: handed over by
    /// the relay, or assessed again from the spooled bytes on the first attempt after a restart.
    exposure: OnceLock<Arc<Exposure>>,
    /// Whether the message bytes hold only CRLF line ends and no NUL; checked once, not per copy.
    clean: OnceLock<bool>,
    /// Where each delivery stands (by delivery index): what `queue list/show` read, and what
    /// the timers and the dispatcher check before a copy goes (an operator may have deleted or
    /// bounced it meanwhile).
    tracks: Mutex<Vec<Track>>,
    /// Wakes the retry timers of this message: an operator's `queue retry`, `delete`, `bounce`.
    pub(super) wake: Notify,
}

/// What a retry timer finds when it looks at its copy.
pub(super) enum Waiting {
    /// Still deferred: keep waiting.
    Wait,
    /// An operator asked for the attempt now.
    Due,
    /// No longer deferred (deleted, bounced): the timer ends.
    Gone,
}

pub(super) struct Progress {
    pub(super) remaining: usize,
    pub(super) failed: Vec<(usize, u16)>,
}

impl QueuedMessage {
    /// A message with `remaining` deliveries not yet final, `failed` of them failed already
    /// (from recovery); `bytes` and `exposure` when the relay hands them over.
    pub(super) fn new(
        meta: MessageMeta,
        bytes: Option<Arc<Vec<u8>>>,
        exposure: Option<Arc<Exposure>>,
        remaining: usize,
        failed: Vec<(usize, u16)>,
        tracks: Vec<Track>,
    ) -> QueuedMessage {
        QueuedMessage {
            tracks: Mutex::new(tracks),
            wake: Notify::new(),
            class: Class::of(meta.deliveries.len()),
            weak: Mutex::new(bytes.as_ref().map(Arc::downgrade).unwrap_or_default()),
            hot: Mutex::new(bytes),
            active: AtomicUsize::new(0),
            progress: Mutex::new(Progress { remaining, failed }),
            exposure: exposure.map(OnceLock::from).unwrap_or_default(),
            clean: OnceLock::new(),
            meta,
        }
    }

    /// A copy of every track, for listings.
    pub(super) fn tracks(&self) -> Vec<Track> {
        self.tracks.lock().expect("not poisoned").clone()
    }

    /// Runs `f` on the tracks under their lock.
    pub(super) fn with_tracks<R>(&self, f: impl FnOnce(&mut [Track]) -> R) -> R {
        f(&mut self.tracks.lock().expect("not poisoned"))
    }

    /// Attempts made so far for delivery `index`.
    pub(super) fn attempts(&self, index: usize) -> u32 {
        self.with_tracks(|t| t[index].attempts.count)
    }

    /// Delivery `index` waits for its turn in its lane (`next_at`: for a retry at that time).
    /// `false` when it is no longer pending (an operator deleted or bounced it).
    pub(super) fn set_waiting(&self, index: usize, next_at: Option<u64>) -> bool {
        self.with_tracks(|t| {
            let t = &mut t[index];
            if !t.state.is_pending() {
                return false;
            }
            t.state = match next_at {
                Some(_) => CopyState::Deferred,
                None => CopyState::Queued,
            };
            t.next_at = next_at;
            true
        })
    }

    /// Delivery `index` waits for a bulk hold's decision.
    pub(super) fn set_held(&self, index: usize) {
        self.with_tracks(|t| t[index].state = CopyState::Held);
    }

    /// A deferred (or queued) copy's turn came: it goes into its lane unless an operator
    /// deleted or bounced it meanwhile (then `false`).
    pub(super) fn mark_ready(&self, index: usize) -> bool {
        self.with_tracks(|t| {
            let t = &mut t[index];
            let waiting = matches!(t.state, CopyState::Queued | CopyState::Deferred);
            if waiting {
                t.state = CopyState::Queued;
                t.retry_now = false;
            }
            waiting
        })
    }

    /// What a retry timer of delivery `index` should do now.
    pub(super) fn waiting(&self, index: usize) -> Waiting {
        self.with_tracks(|t| {
            let t = &mut t[index];
            match t.state {
                CopyState::Deferred if t.retry_now => {
                    t.retry_now = false;
                    Waiting::Due
                }
                CopyState::Deferred => Waiting::Wait,
                _ => Waiting::Gone,
            }
        })
    }

    /// The dispatcher took delivery `index`: it is sent now unless it is no longer queued
    /// (deleted or bounced by an operator: `false`, nothing is sent). Counts the attempt.
    pub(super) fn begin_attempt(&self, index: usize, now: u64) -> bool {
        self.with_tracks(|t| {
            let t = &mut t[index];
            if t.state != CopyState::Queued {
                return false;
            }
            t.state = CopyState::Active;
            t.next_at = None;
            let a = &mut t.attempts;
            a.count += 1;
            if a.first == 0 {
                a.first = now;
            }
            a.last = now;
            true
        })
    }

    /// What the upstream answered to the attempt of delivery `index`; returns the attempts
    /// record to keep in the spool.
    pub(super) fn note_reply(
        &self,
        index: usize,
        upstream: &str,
        code: Option<u16>,
        reply: String,
    ) -> AttemptRecord {
        self.with_tracks(|t| {
            let a = &mut t[index].attempts;
            a.index = index;
            a.upstream = upstream.to_string();
            a.code = code;
            a.reply = reply;
            a.clone()
        })
    }

    /// Delivery `index` is final: delivered (`reason` `None`) or failed.
    pub(super) fn set_final(&self, index: usize, code: u16, at: u64, reason: Option<&'static str>) {
        self.with_tracks(|t| {
            let t = &mut t[index];
            t.state = match reason {
                None => CopyState::Delivered,
                Some(_) => CopyState::Failed,
            };
            t.final_code = Some(code);
            t.final_at = Some(at);
            t.next_at = None;
            t.reason = reason;
        });
    }

    /// Drops the strong hold on the bytes when no delivery is ready or in flight.
    pub(super) fn release_if_idle(&self) {
        if self.active.load(Ordering::Relaxed) == 0 {
            self.hot.lock().expect("not poisoned").take();
        }
    }

    /// The message bytes, in the one view the checks read: kept while the message is active,
    /// else read from the spool again.
    pub(super) async fn bytes(&self, spool: &Arc<Spool>) -> Result<Arc<Vec<u8>>, SpoolError> {
        if let Some(bytes) = self.hot.lock().expect("not poisoned").clone() {
            return Ok(bytes);
        }
        if let Some(bytes) = self.weak.lock().expect("not poisoned").upgrade() {
            return Ok(bytes);
        }
        let spool = spool.clone();
        let id = self.meta.id.clone();
        let bytes = Arc::new(
            tokio::task::spawn_blocking(move || spool.read_message(&id).map(one_view))
                .await
                .expect("spool read does not panic")?,
        );
        *self.weak.lock().expect("not poisoned") = Arc::downgrade(&bytes);
        if self.active.load(Ordering::Relaxed) > 1 {
            *self.hot.lock().expect("not poisoned") = Some(bytes.clone());
        }
        Ok(bytes)
    }

    /// The message's private-address facts: kept from the relay, or assessed again from the
    /// spooled bytes (on a blocking thread: it costs as much as planning did) with the
    /// settings the message was planned with (`current`: the privacy settings in force, for
    /// a message spooled without its own).
    pub(super) async fn exposure(
        &self,
        current: impl FnOnce() -> PrivacyConfig,
        bytes: &Arc<Vec<u8>>,
    ) -> Arc<Exposure> {
        if let Some(e) = self.exposure.get() {
            return e.clone();
        }
        let current = current();
        let config = match &self.meta.privacy {
            Some(settings) => settings.apply(&current),
            None => current,
        };
        let (meta_envelope, bytes) = (self.meta.envelope.clone(), bytes.clone());
        let assessed =
            tokio::task::spawn_blocking(move || Exposure::assess(&config, &meta_envelope, &bytes))
                .await
                .expect("assessing does not panic");
        self.exposure.get_or_init(|| Arc::new(assessed)).clone()
    }

    /// Whether the message bytes hold only CRLF line ends and no NUL (found on first use).
    pub(super) fn is_clean(&self, bytes: &[u8]) -> bool {
        *self.clean.get_or_init(|| privacy::bytes::is_clean(bytes))
    }
}

/// Spooled bytes in the one view the checks read (CRLF only): a message spooled by mailveil
/// 0.1 may hold bare CRs; it is sent with them turned into line ends, and checked that way.
/// A NUL is left for the check to refuse.
fn one_view(bytes: Vec<u8>) -> Vec<u8> {
    match privacy::bytes::crlf_only(&bytes) {
        Ok(std::borrow::Cow::Owned(clean)) => clean,
        Ok(std::borrow::Cow::Borrowed(_)) | Err(_) => bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_order_before_arrival() {
        assert!(Class::Transactional < Class::Bulk);
        assert_eq!(Class::of(1), Class::Transactional);
        assert_eq!(Class::of(TRANSACTIONAL_MAX_DELIVERIES + 1), Class::Bulk);
    }
}
