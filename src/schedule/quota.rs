//! A daily quota (`recipients_per_day`, `messages_per_day`, reset at `quota_reset`): an
//! upstream's (an ESP account's), or an app's (`[app.limits]`, counted at RCPT: see
//! `schedule/app_limits.rs`). Below, "copy" and "upstream" read "recipient" and "app" for an app.
//!
//! A copy *reserves* its count before it is sent through the upstream and gives it back when the
//! upstream did not take it, so concurrent copies never overshoot the quota. A quota is spent
//! when the count is reached, or when the upstream said so (an ESP quota reply, see
//! `schedule/esp_rules.rs`): then it is skipped until the next reset, logged once.
//!
//! Where the count lives:
//! - with `[cluster]`, in Redis: one key per upstream, unit and quota day
//!   (`mailveil:quota:<upstream>:<unit>:<day start>`, or `mailveil:quota:app:<app>:<unit>:<day
//!   start>`, expiring after the reset), checked and
//!   raised by one Lua script, so every replica shares one quota. While Redis does not answer,
//!   each replica counts locally against `quota / replicas`, including what it sent this day;
//! - without, in memory and in `<spool>/upstream-quota-<upstream>.json` (`app-quota-<app>.json`), written (renamed into
//!   place) after every change, so a restart does not start the day again. Not fsynced: a crash
//!   may lose the last few counts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cluster::{CALL_TIMEOUT, SharedLimits};
use super::pause::rfc3339;
use crate::config::{DailyLimit, QuotaReset, QuotaUnit};
use crate::observe::Metrics;

mod scripts;
use scripts::Scripts;

/// One quota day's state, as kept in the file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Day {
    /// Start of the quota day (Unix s).
    window: i64,
    /// Counted by this relay this day: recipients, messages.
    mine: [u64; 2],
    /// The cluster's count when last seen (without a cluster: `mine`).
    #[serde(skip)]
    seen: [u64; 2],
    /// Spent (no copy goes through) until this reset.
    spent_until: Option<i64>,
    /// Spent because the upstream said so: giving a reservation back does not undo it.
    by_reply: bool,
}

/// The outcome of [`DailyQuota::reserve`].
#[derive(Debug)]
pub enum Reservation {
    /// Counted; give it back with [`DailyQuota::release`] if the upstream does not take the copy.
    Granted(Ticket),
    /// This copy does not fit before `until` (Unix s, the next reset).
    Spent { until: i64 },
}

/// A reservation's counts, for [`DailyQuota::release`].
#[derive(Debug)]
pub struct Ticket {
    window: i64,
    counts: [u64; 2],
    shared: bool,
}

/// What `/status` shows of one quota.
#[derive(Debug, Clone, Serialize)]
pub struct QuotaStatus {
    /// `recipients` or `messages`.
    pub unit: &'static str,
    pub limit: u64,
    /// Counted this quota day (the cluster's count with `[cluster]`).
    pub used: u64,
}

/// Whose quota it is: names its Redis keys, its file and its metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaOwner {
    Upstream(String),
    App(String),
}

impl QuotaOwner {
    fn name(&self) -> &str {
        match self {
            QuotaOwner::Upstream(n) | QuotaOwner::App(n) => n,
        }
    }
}

impl std::fmt::Display for QuotaOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuotaOwner::Upstream(n) => write!(f, "upstream {n}"),
            QuotaOwner::App(n) => write!(f, "app {n}"),
        }
    }
}

/// One daily quota. Shared by its upstream's slot (or its app's limits) and kept across reloads.
pub struct DailyQuota {
    owner: QuotaOwner,
    setting: Mutex<(Vec<DailyLimit>, QuotaReset)>,
    day: Mutex<Day>,
    cluster: Option<Arc<SharedLimits>>,
    file: Option<PathBuf>,
    /// Serialises file writes; each writes the state current when it runs.
    writing: Mutex<()>,
    metrics: Metrics,
    scripts: Scripts,
}

fn unix_now() -> i64 {
    crate::spool::unix_now() as i64
}

fn index(unit: QuotaUnit) -> usize {
    match unit {
        QuotaUnit::Recipients => 0,
        QuotaUnit::Messages => 1,
    }
}

impl DailyQuota {
    /// The quota of `owner`; `spool_root` (without `[cluster]`) keeps the day's count.
    pub fn new(
        owner: QuotaOwner,
        daily: Vec<DailyLimit>,
        reset: QuotaReset,
        cluster: Option<Arc<SharedLimits>>,
        spool_root: Option<&Path>,
        metrics: Metrics,
    ) -> Arc<DailyQuota> {
        let file = spool_root.filter(|_| cluster.is_none()).map(|root| {
            root.join(match &owner {
                QuotaOwner::Upstream(n) => format!("upstream-quota-{n}.json"),
                QuotaOwner::App(n) => format!("app-quota-{n}.json"),
            })
        });
        let window = reset.window_start(unix_now());
        let mut day = file
            .as_deref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|text| serde_json::from_slice::<Day>(&text).ok())
            .filter(|d| d.window == window)
            .unwrap_or(Day {
                window,
                ..Day::default()
            });
        day.seen = day.mine;
        let quota = Arc::new(DailyQuota {
            owner,
            setting: Mutex::new((daily, reset)),
            day: Mutex::new(day),
            cluster,
            file,
            writing: Mutex::new(()),
            metrics,
            scripts: Scripts::new(),
        });
        quota.publish(&quota.current(unix_now()));
        quota
    }

    /// New limits or reset time (config reload); the day's count stays.
    pub fn reconfigure(&self, daily: Vec<DailyLimit>, reset: QuotaReset) {
        *self.setting.lock().expect("not poisoned") = (daily, reset);
        self.publish(&self.current(unix_now()));
    }

    fn setting(&self) -> (Vec<DailyLimit>, QuotaReset) {
        self.setting.lock().expect("not poisoned").clone()
    }

    /// The day's state at `now`, started afresh when a reset has passed.
    fn current(&self, now: i64) -> MutexGuard<'_, Day> {
        let reset = self.setting().1;
        let window = reset.window_start(now);
        let mut day = self.day.lock().expect("not poisoned");
        if day.window != window {
            if day.spent_until.is_some() {
                tracing::info!(quota = %self.owner, "daily quota reset; counting starts again");
            }
            *day = Day {
                window,
                ..Day::default()
            };
        }
        day
    }

    /// Until when (Unix s) the quota is known to be spent, if it is.
    pub fn spent_until(&self) -> Option<i64> {
        self.current(unix_now()).spent_until
    }

    /// Until when (Unix s) the quota is spent because the upstream said so (not by counting:
    /// a copy that holds a reservation may still go).
    pub fn spent_by_reply(&self) -> Option<i64> {
        let day = self.current(unix_now());
        day.spent_until.filter(|_| day.by_reply)
    }

    /// Counts a copy of `recipients` recipients, or says it does not fit before the reset.
    pub async fn reserve(&self, recipients: usize) -> Reservation {
        let now = unix_now();
        let (daily, reset) = self.setting();
        let next = reset.next_after(now);
        let window = {
            let day = self.current(now);
            if let Some(until) = day.spent_until {
                return Reservation::Spent { until };
            }
            day.window
        };
        let mut counts = [0u64; 2];
        for l in &daily {
            let count = match l.unit {
                QuotaUnit::Recipients => recipients.max(1) as u64,
                QuotaUnit::Messages => 1,
            };
            // A copy larger than the whole quota goes on a fresh day rather than never.
            counts[index(l.unit)] = count.min(l.limit);
        }
        if daily.is_empty() {
            return Reservation::Granted(Ticket {
                window,
                counts,
                shared: false,
            });
        }
        if let Some(cluster) = self.cluster.as_ref().filter(|c| c.is_up())
            && let Some((granted, used)) = self
                .reserve_shared(cluster, window, &daily, counts, next)
                .await
        {
            let mut day = self.current(now);
            for (l, u) in daily.iter().zip(&used) {
                day.seen[index(l.unit)] = *u;
            }
            if granted {
                if day.window == window {
                    for (m, c) in day.mine.iter_mut().zip(counts) {
                        *m += c;
                    }
                }
                self.publish(&day);
                return Reservation::Granted(Ticket {
                    window,
                    counts,
                    shared: true,
                });
            }
            let full = daily.iter().zip(&used).any(|(l, u)| *u >= l.limit);
            return self.refuse(day, next, full, "daily quota reached (shared count)");
        }
        let share = self
            .cluster
            .as_ref()
            .map_or(1, |c| u64::from(c.replicas().max(1)));
        let mut day = self.current(now);
        let over = |day: &Day, l: &DailyLimit| {
            day.mine[index(l.unit)] + counts[index(l.unit)] > l.limit / share
        };
        if daily.iter().any(|l| over(&day, l)) {
            let full = daily
                .iter()
                .any(|l| day.mine[index(l.unit)] >= l.limit / share);
            return self.refuse(day, next, full, "daily quota reached");
        }
        for (m, c) in day.mine.iter_mut().zip(counts) {
            *m += c;
        }
        // While Redis is down the cluster's count is unknown: at least this relay's is shown.
        let mine = day.mine;
        for (seen, m) in day.seen.iter_mut().zip(mine) {
            *seen = if self.cluster.is_none() {
                m
            } else {
                (*seen).max(m)
            };
        }
        self.publish(&day);
        drop(day);
        self.persist();
        Reservation::Granted(Ticket {
            window,
            counts,
            shared: false,
        })
    }

    /// This copy does not fit; when nothing is left (`full`) the quota is spent until `next`.
    fn refuse(
        &self,
        mut day: MutexGuard<'_, Day>,
        next: i64,
        full: bool,
        why: &str,
    ) -> Reservation {
        if full {
            self.spend(&mut day, next, false, why);
            self.publish(&day);
        }
        Reservation::Spent { until: next }
    }

    fn spend(&self, day: &mut Day, until: i64, by_reply: bool, why: &str) {
        if day.spent_until.is_none() {
            tracing::warn!(quota = %self.owner, until = %rfc3339(until as u64 * 1000), reason = why,
                "quota spent until the reset (an upstream's copies go to the next upstream or wait; an app's recipients get 452)");
        }
        day.spent_until = Some(until);
        day.by_reply |= by_reply;
    }

    /// Gives back a reservation whose copy the upstream did not take.
    pub async fn release(&self, ticket: Ticket) {
        if ticket.counts == [0, 0] {
            return;
        }
        {
            let mut day = self.current(unix_now());
            if day.window != ticket.window {
                return;
            }
            for (m, c) in day.mine.iter_mut().zip(ticket.counts) {
                *m = m.saturating_sub(c);
            }
            if self.cluster.is_none() {
                day.seen = day.mine;
            }
            if !day.by_reply {
                day.spent_until = None;
            }
            self.publish(&day);
        }
        if ticket.shared
            && let Some(cluster) = &self.cluster
        {
            let daily = self.setting().0;
            let mut script = self.scripts.release.prepare_invoke();
            for l in &daily {
                script.key(self.key(l.unit, ticket.window));
                script.arg(ticket.counts[index(l.unit)]);
            }
            if let Some(mut conn) = cluster.connection() {
                let call = script.invoke_async::<i64>(&mut conn);
                let _ = tokio::time::timeout(CALL_TIMEOUT, call).await;
            }
        } else {
            self.persist();
        }
    }

    /// The upstream said its quota is spent: skipped until the next reset (on every replica
    /// when the quota is counted in Redis).
    pub async fn mark_spent(&self, esp: &str) {
        let now = unix_now();
        let (daily, reset) = self.setting();
        let next = reset.next_after(now);
        let window = {
            let mut day = self.current(now);
            self.spend(
                &mut day,
                next,
                true,
                &format!("the upstream said so ({esp} quota reply)"),
            );
            for l in &daily {
                day.seen[index(l.unit)] = day.seen[index(l.unit)].max(l.limit);
            }
            self.publish(&day);
            day.window
        };
        match &self.cluster {
            Some(cluster) if !daily.is_empty() => {
                let mut script = self.scripts.spend.prepare_invoke();
                script.arg(next + 3600);
                for l in &daily {
                    script.key(self.key(l.unit, window));
                    script.arg(l.limit);
                }
                if let Some(mut conn) = cluster.connection() {
                    let call = script.invoke_async::<i64>(&mut conn);
                    let _ = tokio::time::timeout(CALL_TIMEOUT, call).await;
                }
            }
            Some(_) => {}
            None => self.persist(),
        }
    }

    /// Each configured quota with its count this day.
    pub fn status(&self) -> Vec<QuotaStatus> {
        let daily = self.setting().0;
        let day = self.current(unix_now());
        daily
            .iter()
            .map(|l| QuotaStatus {
                unit: l.unit.as_str(),
                limit: l.limit,
                used: day.seen[index(l.unit)],
            })
            .collect()
    }

    /// The next reset (Unix s).
    pub fn next_reset(&self) -> i64 {
        self.setting().1.next_after(unix_now())
    }

    fn key(&self, unit: QuotaUnit, window: i64) -> String {
        match &self.owner {
            QuotaOwner::Upstream(n) => format!("mailveil:quota:{n}:{}:{window}", unit.as_str()),
            QuotaOwner::App(n) => format!("mailveil:quota:app:{n}:{}:{window}", unit.as_str()),
        }
    }

    /// `Some((granted, used per quota))`, or `None` when Redis did not answer.
    async fn reserve_shared(
        &self,
        cluster: &SharedLimits,
        window: i64,
        daily: &[DailyLimit],
        counts: [u64; 2],
        next: i64,
    ) -> Option<(bool, Vec<u64>)> {
        let mut conn = cluster.connection()?;
        let mut script = self.scripts.reserve.prepare_invoke();
        script.arg(next + 3600);
        for l in daily {
            script.key(self.key(l.unit, window));
            script.arg(counts[index(l.unit)]).arg(l.limit);
        }
        let call = script.invoke_async::<Vec<u64>>(&mut conn);
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(answer)) if answer.len() == daily.len() + 1 => {
                Some((answer[0] == 1, answer[1..].to_vec()))
            }
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::debug!(quota = %self.owner, error = %e, "quota not counted in Redis; counting locally");
                None
            }
            Err(_) => None,
        }
    }

    /// The gauges of this quota.
    fn publish(&self, day: &Day) {
        let (daily, reset) = self.setting();
        let name = self.owner.name();
        let m = &self.metrics;
        let (used, limit, reset_gauge) = match self.owner {
            QuotaOwner::Upstream(_) => (
                &m.upstream_quota_used,
                &m.upstream_quota_limit,
                &m.upstream_quota_reset,
            ),
            QuotaOwner::App(_) => (&m.app_quota_used, &m.app_quota_limit, &m.app_quota_reset),
        };
        for l in &daily {
            let unit = l.unit.as_str();
            used.with_label_values(&[name, unit])
                .set(day.seen[index(l.unit)] as i64);
            limit.with_label_values(&[name, unit]).set(l.limit as i64);
        }
        if !daily.is_empty() || day.spent_until.is_some() {
            let reset_at = day
                .spent_until
                .unwrap_or_else(|| reset.next_after(unix_now()));
            reset_gauge.with_label_values(&[name]).set(reset_at);
        }
    }

    /// Writes the day's state to the spool (without `[cluster]`). On the calling thread: the file
    /// is a few dozen bytes, written without fsync and renamed into place (page-cache work, no
    /// disk wait), and writing it here keeps the order of the counts it records.
    fn persist(&self) {
        let Some(file) = self.file.clone() else {
            return;
        };
        let day = self.day.lock().expect("not poisoned").clone();
        let write = move |writing: &Mutex<()>| {
            let _one = writing.lock().expect("not poisoned");
            let tmp = file.with_extension("json.tmp");
            let text = serde_json::to_vec(&day).map_err(std::io::Error::other)?;
            {
                use std::io::Write;
                let mut f = crate::private_files::create_options().open(&tmp)?;
                f.write_all(&text)?;
            }
            std::fs::rename(&tmp, &file)
        };
        if let Err(e) = write(&self.writing) {
            tracing::warn!(quota = %self.owner, error = %e, "cannot record the quota count; a restart would forget it");
        }
    }
}

/// How long until `until` (Unix s), at least one second.
pub fn wait_until(until: i64) -> Duration {
    Duration::from_secs((until - unix_now()).max(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(limit: u64, root: Option<&Path>) -> Arc<DailyQuota> {
        let daily = vec![DailyLimit {
            unit: QuotaUnit::Recipients,
            limit,
        }];
        DailyQuota::new(
            QuotaOwner::Upstream("ses".into()),
            daily,
            QuotaReset::default(),
            None,
            root,
            Metrics::new(),
        )
    }

    #[tokio::test]
    async fn exactly_the_limit_goes_through_and_a_release_gives_it_back() {
        let q = quota(3, None);
        let Reservation::Granted(a) = q.reserve(2).await else {
            panic!("fits")
        };
        assert!(
            matches!(q.reserve(2).await, Reservation::Spent { .. }),
            "2 + 2 > 3"
        );
        assert_eq!(q.spent_until(), None, "one recipient is still left");
        assert!(matches!(q.reserve(1).await, Reservation::Granted(_)));
        assert!(matches!(q.reserve(1).await, Reservation::Spent { .. }));
        assert_eq!(
            q.spent_until(),
            Some(QuotaReset::default().next_after(unix_now()))
        );
        q.release(a).await;
        assert_eq!(
            q.spent_until(),
            None,
            "the copy was not taken: its count is free again"
        );
        assert_eq!(q.status()[0].used, 1);
        assert!(matches!(q.reserve(2).await, Reservation::Granted(_)));
    }

    #[tokio::test]
    async fn while_redis_is_down_a_replica_counts_its_share_locally() {
        let config = crate::config::ClusterConfig {
            // Nothing listens on port 1: Redis is down from the start.
            redis_url: "redis://127.0.0.1:1/".into(),
            replicas: 2,
            password: None,
        };
        let token = tokio_util::sync::CancellationToken::new();
        let gauge = prometheus::IntGauge::new("up", "up").unwrap();
        let cluster = SharedLimits::start(&config, gauge, token.clone());
        let daily = vec![DailyLimit {
            unit: QuotaUnit::Messages,
            limit: 5,
        }];
        let dir = tempfile::tempdir().unwrap();
        let q = DailyQuota::new(
            QuotaOwner::Upstream("ses".into()),
            daily,
            QuotaReset::default(),
            Some(cluster),
            Some(dir.path()),
            Metrics::new(),
        );
        assert!(matches!(q.reserve(3).await, Reservation::Granted(_)));
        assert!(matches!(q.reserve(3).await, Reservation::Granted(_)));
        assert!(
            matches!(q.reserve(1).await, Reservation::Spent { .. }),
            "5 / 2 replicas: 2 messages here"
        );
        assert_eq!(
            q.status()[0].used,
            2,
            "at least this relay's count is shown"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "with [cluster] no file is kept"
        );
        token.cancel();
    }

    #[tokio::test]
    async fn the_days_count_survives_a_restart_and_an_esp_reply_spends_it() {
        let dir = tempfile::tempdir().unwrap();
        let q = quota(10, Some(dir.path()));
        for _ in 0..4 {
            assert!(matches!(q.reserve(1).await, Reservation::Granted(_)));
        }
        drop(q);
        let again = quota(10, Some(dir.path()));
        assert_eq!(again.status()[0].used, 4);
        again.mark_spent("ses").await;
        let until = again.spent_until().expect("spent");
        drop(again);
        let third = quota(10, Some(dir.path()));
        assert_eq!(
            third.spent_until(),
            Some(until),
            "spent by a reply, also after a restart"
        );
        assert!(matches!(third.reserve(1).await, Reservation::Spent { .. }));
    }
}
