//! One upstream's own limits, across every provider's deliveries through it: its message rate
//! (`messages_per_second` + `burst`, GCRA: the provider lanes' [`Throttle`], shared through
//! Redis with `[cluster]` under a key of its own, `mailveil:throttle:upstream:<name>`), the
//! deliveries in flight through it (its `max_connections`, lowered while slowed), its daily
//! quota ([`DailyQuota`]) and the slowdown or suspension an ESP's "too fast" reply asks for.
//!
//! Why apart from the provider lanes: behind an ESP the account's limits hold whatever the
//! recipients' providers are, and a wait for one upstream must hold nothing of another. A copy
//! waits for its upstream's rate after its lane let it go, in its own task, holding no
//! connection; copies bound for other upstreams or providers do not queue behind it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::cluster::SharedLimits;
use super::quota::{DailyQuota, QuotaOwner, QuotaStatus};
use super::shaping::{Cause, Origin, ShapingView};
use super::throttle::{Rate, SlowdownChange, Throttle, ThrottleMetrics};
use crate::config::{ShapingAction, UpstreamLimitsConfig};
use crate::observe::Metrics;

/// What every upstream's limits share: the metrics, the cluster's Redis and the spool (which
/// keeps the quota counts without a cluster).
#[derive(Clone)]
pub struct LimitsContext {
    pub metrics: Metrics,
    pub cluster: Option<Arc<SharedLimits>>,
    pub spool_root: Option<PathBuf>,
}

/// One upstream's limits. Kept across reloads (a slowdown and the day's count go on).
pub struct UpstreamLimits {
    name: String,
    pacing: Throttle,
    /// Deliveries in flight through this upstream: its connections, times a slowdown's factor.
    slots: Arc<Semaphore>,
    in_force: AtomicUsize,
    configured: AtomicUsize,
    /// Why the slowdown in force is: its rule, the reply, this replica's or another's.
    cause: Mutex<Option<Cause>>,
    pub quota: Arc<DailyQuota>,
}

fn rate(config: &UpstreamLimitsConfig) -> Option<Rate> {
    config.messages_per_second.map(|r| Rate {
        per_second: r.get(),
        burst: config.burst.max(1),
    })
}

impl UpstreamLimits {
    /// The limits of upstream `name`, which opens at most `connections` connections.
    pub fn new(
        name: &str,
        config: &UpstreamLimitsConfig,
        connections: usize,
        ctx: &LimitsContext,
    ) -> Arc<UpstreamLimits> {
        let metrics = ThrottleMetrics {
            delays: ctx
                .metrics
                .upstream_throttle_delays
                .with_label_values(&[name]),
            slowed: ctx.metrics.upstream_slowed.with_label_values(&[name]),
        };
        // The Redis key's name: provider names never contain ':'.
        let pacing = Throttle::new(
            &format!("upstream:{name}"),
            rate(config),
            metrics,
            ctx.cluster.clone(),
        );
        let connections = connections.max(1);
        let quota = DailyQuota::new(
            QuotaOwner::Upstream(name.to_string()),
            config.daily.clone(),
            config.quota_reset,
            ctx.cluster.clone(),
            ctx.spool_root.as_deref(),
            ctx.metrics.clone(),
        );
        Arc::new(UpstreamLimits {
            name: name.to_string(),
            pacing,
            slots: Arc::new(Semaphore::new(connections)),
            in_force: AtomicUsize::new(connections),
            configured: AtomicUsize::new(connections),
            cause: Mutex::new(None),
            quota,
        })
    }

    /// New configured limits (reload); a slowdown in force and the day's count stay.
    pub fn reconfigure(&self, config: &UpstreamLimitsConfig, connections: usize) {
        self.pacing.set_rate(rate(config));
        self.quota
            .reconfigure(config.daily.clone(), config.quota_reset);
        self.configured.store(connections.max(1), Ordering::Relaxed);
        self.apply_concurrency();
    }

    /// Waits for a delivery slot, then for this upstream's rate (in that order, so a copy
    /// that got its turn at the rate is sent at once). The permit is held while the copy is sent.
    pub async fn pace(&self) -> Option<OwnedSemaphorePermit> {
        let permit = self.slots.clone().acquire_owned().await.ok();
        self.pacing.acquire().await;
        permit
    }

    /// A free slot without waiting for the rate (the hand-off at shutdown: the receiving relay
    /// paces the copies).
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().acquire_owned().await.ok()
    }

    /// When a suspension in force ends.
    pub fn suspended_until(&self) -> Option<Instant> {
        self.pacing
            .slowdown()
            .filter(|s| s.factor == 0.0 && s.until > Instant::now())
            .map(|s| s.until)
    }

    /// Applies an upstream-scoped rule's action for `duration`, then restores the configured
    /// limits: a reply this replica received ([`Origin::Local`]) or another replica's decision
    /// for the time it has left ([`Origin::Fleet`]). One log line when it gets slower and one
    /// when it recovers (naming the rule). `defer` and `fail` are about one copy: nothing
    /// happens here (`None`).
    pub fn slow_down(
        self: &Arc<Self>,
        action: ShapingAction,
        duration: Duration,
        cause: &Cause,
    ) -> Option<SlowdownChange> {
        if matches!(action, ShapingAction::Defer | ShapingAction::Fail) {
            return None;
        }
        let change = self.pacing.slow_down(action, duration);
        self.apply_concurrency();
        {
            let mut held = self.cause.lock().expect("not poisoned");
            if change.slower || held.is_none() {
                *held = Some(cause.clone());
            }
        }
        let rule = cause.rule.as_str();
        let fleet = cause.origin == Origin::Fleet;
        let by = fleet.then(|| cause.by.as_deref().unwrap_or("unknown"));
        let for_secs = change
            .slowdown
            .until
            .saturating_duration_since(Instant::now())
            .as_secs();
        if change.slower {
            match action {
                ShapingAction::Suspend => tracing::warn!(
                    upstream = %self.name, for_secs, %rule, by,
                    "{}", if fleet {
                        "upstream suspended by another replica's decision; copies go to the next upstream or wait"
                    } else {
                        "upstream suspended after its reply; copies go to the next upstream or wait"
                    }
                ),
                ShapingAction::Slow { .. } => tracing::warn!(
                    upstream = %self.name, factor = change.slowdown.factor,
                    messages_per_second = self.pacing.effective_rate().map(|r| r.per_second),
                    concurrency = self.in_force.load(Ordering::Relaxed),
                    for_secs, %rule, by,
                    "{}", if fleet {
                        "upstream slowed down by another replica's decision"
                    } else {
                        "upstream slowed down after its reply"
                    }
                ),
                _ => tracing::warn!(
                    upstream = %self.name,
                    messages_per_second = self.pacing.effective_rate().map(|r| r.per_second),
                    concurrency = self.in_force.load(Ordering::Relaxed),
                    for_secs, %rule, by,
                    "{}", if fleet {
                        "upstream limits lowered by another replica's decision"
                    } else {
                        "upstream limits lowered after its reply"
                    }
                ),
            }
        }
        let limits = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(change.slowdown.until).await;
            if limits.pacing.recover(change.slowdown.generation) {
                limits.apply_concurrency();
                *limits.cause.lock().expect("not poisoned") = None;
                tracing::info!(
                    upstream = %limits.name,
                    messages_per_second = limits.pacing.effective_rate().map(|r| r.per_second),
                    "upstream recovered; configured limits restored"
                );
            }
        });
        Some(change)
    }

    /// Lifts the slowdown or suspension in force (an operator's `ctl shaping clear`, made here
    /// or, `by`, on another replica). True when there was one.
    pub fn clear_shaping(&self, by: Option<&str>) -> bool {
        if !self.pacing.clear() {
            return false;
        }
        *self.cause.lock().expect("not poisoned") = None;
        self.apply_concurrency();
        tracing::warn!(
            upstream = %self.name, by = by.unwrap_or("this replica"),
            "upstream shaping cleared by an operator; configured limits restored"
        );
        true
    }

    /// The shaping in force, as `/status` shows it (`upstreams[].shaping`, the shape of a
    /// provider's).
    pub fn shaping_view(&self) -> Option<ShapingView> {
        let slowdown = self.pacing.slowdown()?;
        let cause = self.cause.lock().expect("not poisoned").clone();
        Some(ShapingView::of(&slowdown, cause))
    }

    /// What `/status` shows of this upstream's limits.
    pub fn status(&self) -> LimitsStatus {
        let slowdown = self.pacing.slowdown();
        let now = Instant::now();
        let quotas = self.quota.status();
        let spent = self.quota.spent_until();
        LimitsStatus {
            messages_per_second: self.pacing.effective_rate().map(|r| r.per_second),
            concurrency: self.in_force.load(Ordering::Relaxed),
            slowed: slowdown.is_some(),
            suspended: slowdown.is_some_and(|s| s.factor == 0.0),
            slowed_for_secs: slowdown.map(|s| s.until.saturating_duration_since(now).as_secs()),
            slowed_by: slowdown.and(
                self.cause
                    .lock()
                    .expect("not poisoned")
                    .as_ref()
                    .map(|c| c.rule.clone()),
            ),
            quota_reset: (!quotas.is_empty() || spent.is_some())
                .then(|| rfc3339_s(spent.unwrap_or_else(|| self.quota.next_reset()))),
            quota_spent: spent.is_some(),
            quotas,
        }
    }

    fn apply_concurrency(&self) {
        let factor = self.pacing.concurrency_factor();
        let target = ((self.configured.load(Ordering::Relaxed) as f64) * factor).floor() as usize;
        let target = match self.pacing.set_limits().max_connections {
            Some(cap) => target.min(cap),
            None => target,
        };
        let target = target.max(1);
        let old = self.in_force.swap(target, Ordering::Relaxed);
        if target > old {
            self.slots.add_permits(target - old);
        } else if target < old {
            let mut missing = old - target;
            missing -= self.slots.forget_permits(missing);
            if missing > 0 {
                // The rest as deliveries in flight give their slots back.
                let slots = self.slots.clone();
                tokio::spawn(async move {
                    if let Ok(p) = slots.acquire_many_owned(missing as u32).await {
                        p.forget();
                    }
                });
            }
        }
    }
}

fn rfc3339_s(unix: i64) -> String {
    super::pause::rfc3339(unix.max(0) as u64 * 1000)
}

/// One upstream's limits as `GET /status` shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimitsStatus {
    /// The rate in force (configured, times any slowdown); `None`: not paced.
    pub messages_per_second: Option<f64>,
    /// Deliveries in flight allowed now.
    pub concurrency: usize,
    /// An ESP's "too fast" reply has slowed (or suspended) the upstream for a while.
    pub slowed: bool,
    pub suspended: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowed_for_secs: Option<u64>,
    /// The rule that slowed it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slowed_by: Option<String>,
    /// Daily quotas with the day's count.
    pub quotas: Vec<QuotaStatus>,
    /// No copy goes through it until `quota_reset`.
    pub quota_spent: bool,
    /// The next reset (RFC 3339), with a quota.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_reset: Option<String>,
}
