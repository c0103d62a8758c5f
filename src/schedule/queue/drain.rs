//! Stopping: the drain at SIGTERM and the optional hand-off (docs/operations.md, "Stopping:
//! drain and hand-off").
//!
//! From SIGTERM the relay has `spool.drain_timeout` to exit. The SMTP listener stops at once;
//! the queue keeps delivering copies within their throttles until nothing it could still send
//! is left or the last moment to start an attempt comes ([`in_flight_allowance`] before the
//! deadline), then waits for the attempts in flight until the deadline. What is not final
//! stays in the spool for the next start, and is reported by provider: in
//! `mailveil_drain_remaining_copies{provider}` while the drain runs and in the last log line.
//!
//! With `spool.handoff_upstream`, the hand-off starts at SIGTERM, not near the deadline: every
//! copy not yet final is sent to that upstream (the central relay), rendered, signed and
//! checked exactly as it would be sent to the provider, without the provider throttles (the
//! receiving relay paces it) and without waiting for its retry time. A copy the hand-off
//! upstream takes is recorded `handedoff` in the spool, final like `delivered`: it is not sent
//! again after a restart. Why at once: the copies' pacing is the central relay's job, and every
//! second spent waiting is a second less to hand off before the pod (and an emptyDir spool with
//! it) is gone. Two kinds of copies are not handed off and stay spooled (reported as left): a
//! paused provider's (or all, under a global pause: the operator's pause holds) and the held
//! copies of a bulk hold, which wait for an operator's decision.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::Scheduler;

/// Longest a hand-off attempt that failed temporarily waits before it is tried again.
pub(super) const HANDOFF_RETRY: Duration = Duration::from_secs(1);

/// How often the drain looks whether anything is left to send (and updates its gauge).
const POLL: Duration = Duration::from_millis(100);

/// The part of the drain kept for attempts in flight: a fifth of it, at most 5 s.
pub fn in_flight_allowance(drain_timeout: Duration) -> Duration {
    (drain_timeout / 5).min(Duration::from_secs(5))
}

/// What the drain left in the spool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Copies not final (queued, waiting for a retry, paused, cut off in flight), by provider.
    pub remaining: BTreeMap<String, u64>,
    /// Copies of messages under a bulk hold, by provider (never sent before a decision).
    pub held: BTreeMap<String, u64>,
    /// The hand-off upstream, when the hand-off ran.
    pub handoff: Option<String>,
    /// Copies that upstream took.
    pub handed_off: u64,
}

impl DrainReport {
    /// Copies left in the spool, held ones included.
    pub fn total(&self) -> u64 {
        self.remaining.values().chain(self.held.values()).sum()
    }

    /// `provider=count` pairs, e.g. `163.com=8, default=1` (held copies as `provider=N held`).
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .remaining
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| format!("{p}={n}"))
            .collect();
        parts.extend(
            self.held
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(p, n)| format!("{p}={n} held")),
        );
        parts.join(", ")
    }
}

impl Scheduler {
    /// The first step at SIGTERM (the SMTP listener stops meanwhile): sets `mailveil_draining`
    /// and, with `spool.handoff_upstream`, starts the hand-off. Returns the drain's deadline
    /// and `spool.drain_timeout`.
    pub fn begin_drain(&self) -> (Instant, Duration) {
        let started = Instant::now();
        let (timeout, handoff) = {
            let settings = self.inner.settings.read().expect("not poisoned");
            (
                settings.retry.drain_timeout,
                settings.retry.handoff_upstream.clone(),
            )
        };
        self.inner.metrics.draining.set(1);
        let queued = self.remaining();
        tracing::info!(
            drain_timeout_secs = timeout.as_secs(),
            copies = queued.values().sum::<u64>(),
            handoff_upstream = handoff.as_deref().unwrap_or("(none)"),
            "draining: no new mail; delivering queued copies until the deadline"
        );
        if let Some(name) = handoff {
            let slot = self
                .inner
                .upstreams()
                .iter()
                .find(|s| s.name() == name)
                .cloned();
            match slot {
                Some(slot) => {
                    *self.inner.handoff_slot.write().expect("not poisoned") = Some(slot);
                    self.inner.handoff.cancel();
                    tracing::info!(upstream = %name, "handing off every remaining copy, unthrottled");
                }
                None => {
                    tracing::error!(upstream = %name, "spool.handoff_upstream names no upstream; no hand-off")
                }
            }
        }
        self.update_drain_gauge();
        (started + timeout, timeout)
    }

    /// Delivers until nothing that could still go is left or the last moment to start an
    /// attempt, then stops starting attempts and waits for those in flight until `deadline`.
    /// Returns what is left (it stays spooled for the next start).
    pub async fn drain(&self, deadline: Instant, drain_timeout: Duration) -> DrainReport {
        let last_start = deadline
            .checked_sub(in_flight_allowance(drain_timeout))
            .unwrap_or(deadline);
        loop {
            self.update_drain_gauge();
            if self.movable() == 0 || Instant::now() >= last_start {
                break;
            }
            tokio::time::sleep_until((Instant::now() + POLL).min(last_start)).await;
        }
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout_at(deadline, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "deliveries still in flight at the drain deadline; their copies stay spooled \
                 (a copy the upstream took meanwhile may be sent again after a restart)"
            );
        }
        self.update_drain_gauge();
        let handed_off = {
            let lanes = self.inner.lanes.read().expect("not poisoned");
            lanes
                .keys()
                .map(|p| self.inner.metrics.handed_off.with_label_values(&[p]).get())
                .sum()
        };
        DrainReport {
            handed_off,
            remaining: self.remaining(),
            held: self.inner.held_by_provider(),
            handoff: self
                .inner
                .handoff_slot
                .read()
                .expect("not poisoned")
                .as_ref()
                .map(|s| s.name().to_string()),
        }
    }

    /// Copies not final in each lane (held copies are not in any lane).
    fn remaining(&self) -> BTreeMap<String, u64> {
        self.inner
            .lanes
            .read()
            .expect("not poisoned")
            .values()
            .map(|l| (l.name.clone(), l.queued.load(Ordering::Relaxed)))
            .collect()
    }

    /// Copies the drain could still send: ready or in flight in a lane that is not paused,
    /// and, during the hand-off, those waiting for a retry too (due within a second).
    fn movable(&self) -> u64 {
        let globally_paused = self.inner.paused.load(Ordering::Relaxed);
        let handing_off = self.inner.handoff.is_cancelled();
        self.inner
            .lanes
            .read()
            .expect("not poisoned")
            .values()
            .filter(|l| !globally_paused && !l.is_paused())
            .map(|l| {
                let queued = l.queued.load(Ordering::Relaxed);
                if handing_off {
                    queued
                } else {
                    queued.saturating_sub(l.waiting.load(Ordering::Relaxed))
                }
            })
            .sum()
    }

    fn update_drain_gauge(&self) {
        let mut by = self.remaining();
        for (provider, n) in self.inner.held_by_provider() {
            *by.entry(provider).or_insert(0) += n;
        }
        for (provider, n) in by {
            self.inner
                .metrics
                .drain_remaining
                .with_label_values(&[&provider])
                .set(n as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_every_provider_with_copies_left() {
        let report = DrainReport {
            remaining: [("163.com".to_string(), 8), ("default".to_string(), 0)].into(),
            held: [("gmail".to_string(), 3)].into(),
            handoff: None,
            handed_off: 0,
        };
        assert_eq!(report.total(), 11);
        assert_eq!(report.summary(), "163.com=8, gmail=3 held");
        assert_eq!(DrainReport::default().total(), 0);
    }

    #[test]
    fn attempts_in_flight_get_a_fifth_of_the_drain_at_most_five_seconds() {
        assert_eq!(
            in_flight_allowance(Duration::from_secs(25)),
            Duration::from_secs(5)
        );
        assert_eq!(
            in_flight_allowance(Duration::from_secs(5)),
            Duration::from_secs(1)
        );
    }
}
