//! Upstreams in configured order, with failover: an upstream that cannot be reached, fails TLS,
//! times out or answers `421` is skipped for a cool-off period and the next one is tried; after
//! the cool-off it is probed again by the next delivery. An upstream whose daily quota is spent
//! or which is suspended ([`super::upstream_limits`]) is skipped too; when every one is, the
//! copy is held until the earliest reset.
//!
//! Why in the scheduler rather than `upstream/`: choosing the upstream for a copy reads the
//! scheduler's limits (rates, quotas shared through the cluster's Redis); `upstream/` only
//! sends.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{UpstreamConfig, UpstreamKind};
use crate::observe::Metrics;
use crate::upstream::PoolLimits;

use super::esp_rules;
use super::pause::rfc3339;
use super::quota::Reservation;
use super::upstream_limits::{LimitsContext, UpstreamLimits};
use crate::upstream::{Delivered, Outbound, Reuse, Upstream, UpstreamError};

fn unix_now() -> i64 {
    crate::spool::unix_now() as i64
}

pub struct UpstreamSlot {
    pub upstream: Upstream,
    /// Its rate, daily quota and slowdowns; carried over to the slot that replaces it.
    pub limits: Arc<UpstreamLimits>,
    /// While set and in the future, the upstream is skipped.
    down_until: Mutex<Option<Instant>>,
}

impl UpstreamSlot {
    pub fn new(upstream: Upstream, limits: Arc<UpstreamLimits>) -> UpstreamSlot {
        UpstreamSlot {
            upstream,
            limits,
            down_until: Mutex::new(None),
        }
    }

    /// A slot for a reloaded upstream that keeps the health state of the one it replaces.
    pub fn replacing(
        upstream: Upstream,
        old: Option<&UpstreamSlot>,
        limits: Arc<UpstreamLimits>,
    ) -> UpstreamSlot {
        let down = old.and_then(|o| *o.down_until.lock().expect("not poisoned"));
        UpstreamSlot {
            upstream,
            limits,
            down_until: Mutex::new(down),
        }
    }

    /// The slots for `upstreams`, with the limits `configs` give them; an upstream that keeps
    /// its name keeps its health, slowdown and day's count from `old` (a reload).
    pub fn build_all(
        upstreams: Vec<Upstream>,
        configs: &[UpstreamConfig],
        old: &[Arc<UpstreamSlot>],
        ctx: &LimitsContext,
    ) -> Vec<Arc<UpstreamSlot>> {
        upstreams
            .into_iter()
            .map(|u| {
                let config = configs.iter().find(|c| c.name == u.name);
                let limits = config.map(|c| c.limits.clone()).unwrap_or_default();
                let connections = match config.map(|c| &c.kind) {
                    Some(UpstreamKind::Smtp(s)) => s.max_connections,
                    Some(UpstreamKind::Mx(m)) => m.max_connections,
                    _ => PoolLimits::DEFAULT_MAX_CONNECTIONS,
                };
                let previous = old.iter().find(|s| s.name() == u.name).map(Arc::as_ref);
                let shared = match previous {
                    Some(p) => {
                        p.limits.reconfigure(&limits, connections);
                        p.limits.clone()
                    }
                    None => UpstreamLimits::new(&u.name, &limits, connections, ctx),
                };
                Arc::new(UpstreamSlot::replacing(u, previous, shared))
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.upstream.name
    }

    /// Until when (Unix s) no copy may go through it: its quota is spent or it is suspended.
    fn held_until(&self) -> Option<i64> {
        let spent = self.limits.quota.spent_until();
        let suspended = self.limits.suspended_until().map(|t| {
            let left = t.saturating_duration_since(tokio::time::Instant::now());
            unix_now() + left.as_secs() as i64 + 1
        });
        spent.into_iter().chain(suspended).max()
    }

    pub fn is_up(&self) -> bool {
        !self.is_cooling_off(Instant::now())
    }

    fn is_cooling_off(&self, now: Instant) -> bool {
        matches!(*self.down_until.lock().expect("not poisoned"), Some(t) if t > now)
    }

    fn mark_up(&self, metrics: &Metrics) {
        if self
            .down_until
            .lock()
            .expect("not poisoned")
            .take()
            .is_some()
        {
            tracing::info!(upstream = %self.name(), "upstream is back");
        }
        metrics.upstream_up.with_label_values(&[self.name()]).set(1);
    }

    fn mark_down(&self, metrics: &Metrics, error: &UpstreamError, cool_off: Duration) {
        let mut down = self.down_until.lock().expect("not poisoned");
        if down.is_none_or(|t| t <= Instant::now()) {
            let error = self.upstream.log_redactor().text(error);
            tracing::warn!(upstream = %self.name(), %error, cool_off_secs = cool_off.as_secs(), "upstream failing; skipping it for a while");
        }
        *down = Some(Instant::now() + cool_off);
        metrics.upstream_up.with_label_values(&[self.name()]).set(0);
    }
}

/// How a copy is sent through the upstreams.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How long an upstream that failed is skipped.
    pub cool_off: Duration,
    /// Wait for each upstream's rate (not during the hand-off at shutdown).
    pub paced: bool,
}

/// What became of a copy at one upstream.
enum Tried {
    /// Delivered, or an answer about this message or recipient: the upstream works.
    Answer(Result<Delivered, UpstreamError>),
    /// The upstream itself failed (see [`is_upstream_fault`]): the next one is tried.
    Fault(UpstreamError),
    /// Its quota is spent (counted, or its reply said so) until then (Unix s).
    Spent(i64),
}

/// Tries `slots` in order and returns the name of the upstream that answered last with its
/// result. Skipped: upstreams cooling off (unless all are), and those whose daily quota is
/// spent or which are suspended; when every upstream is spent or suspended, the copy is held
/// (a temporary [`UpstreamError::Held`] until the earliest reset, never a bounce). Each
/// upstream's rate is awaited before its attempt. `reuse` keeps the provider's connections
/// apart (see [`Reuse`]).
pub async fn send<'a>(
    slots: &'a [Arc<UpstreamSlot>],
    outbound: Outbound<'_>,
    reuse: Reuse<'_>,
    metrics: &Metrics,
    policy: Policy,
) -> (&'a str, Result<Delivered, UpstreamError>) {
    let now = Instant::now();
    let mut holds: Vec<i64> = Vec::new();
    let mut usable: Vec<&Arc<UpstreamSlot>> = Vec::new();
    for slot in slots {
        match slot.held_until() {
            Some(until) => holds.push(until),
            None => usable.push(slot),
        }
    }
    let (healthy, cooling): (Vec<_>, Vec<_>) =
        usable.into_iter().partition(|s| !s.is_cooling_off(now));
    // Cooling-off upstreams are tried when no other is left: all cool off, or every healthy
    // one turned out spent.
    let passes = if healthy.is_empty() {
        [cooling, Vec::new()]
    } else {
        [healthy, cooling]
    };
    let mut last = None;
    for pass in passes {
        for slot in pass {
            match attempt(slot, outbound, reuse, metrics, policy).await {
                Tried::Answer(result) => return (slot.name(), result),
                Tried::Fault(e) => last = Some((slot.name(), Err(e))),
                Tried::Spent(until) => holds.push(until),
            }
        }
        if let Some(last) = last {
            return last;
        }
    }
    let until = holds
        .into_iter()
        .min()
        .unwrap_or_else(|| unix_now() + 60)
        .max(unix_now() + 1);
    metrics
        .upstream_quota_holds
        .with_label_values(&[reuse.provider])
        .inc();
    let first = slots.first().expect("at least one upstream is configured");
    let reason = format!(
        "not sent: every upstream's daily quota is spent or the upstream suspended until {}",
        rfc3339(until as u64 * 1000)
    );
    (
        first.name(),
        Err(UpstreamError::Held {
            until: until as u64,
            reason,
        }),
    )
}

/// One upstream's turn: its quota is counted, its rate awaited, the copy sent; the count is
/// given back when the upstream did not take the copy.
async fn attempt(
    slot: &UpstreamSlot,
    outbound: Outbound<'_>,
    reuse: Reuse<'_>,
    metrics: &Metrics,
    policy: Policy,
) -> Tried {
    let limits = &slot.limits;
    let ticket = match limits.quota.reserve(outbound.rcpt_to.len()).await {
        Reservation::Spent { until } => return Tried::Spent(until),
        Reservation::Granted(ticket) => ticket,
    };
    let _permit = if policy.paced {
        limits.pace().await
    } else {
        limits.slot().await
    };
    // The upstream may have said its quota is spent while this copy waited for its turn.
    if let Some(until) = limits.quota.spent_by_reply() {
        limits.quota.release(ticket).await;
        return Tried::Spent(until);
    }
    let result = slot.upstream.send_reusing(outbound, reuse).await;
    let error = match result {
        Ok(delivered) => {
            slot.mark_up(metrics);
            return Tried::Answer(Ok(delivered));
        }
        Err(e) => e,
    };
    limits.quota.release(ticket).await;
    // Recognised before the turn is given up, so copies waiting for it do not follow.
    if let Some(rule) = error.reply_text().and_then(esp_rules::quota_spent) {
        limits.quota.mark_spent(rule.esp).await;
        return Tried::Spent(limits.quota.next_reset());
    }
    // Direct delivery: a host that cannot be reached is one domain's trouble, not the
    // upstream's, so it never sends other domains' copies to the next upstream.
    if is_upstream_fault(&error) && !slot.upstream.is_direct() {
        slot.mark_down(metrics, &error, policy.cool_off);
        Tried::Fault(error)
    } else {
        slot.mark_up(metrics);
        Tried::Answer(Err(error))
    }
}

/// A failure of the upstream itself rather than an answer about this message, so the next
/// upstream is tried: cannot connect, TLS, timeout, no STARTTLS, AUTH trouble, a refused session,
/// a broken conversation, a `421` (service closing).
fn is_upstream_fault(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Connect { .. }
        | UpstreamError::Timeout { .. }
        | UpstreamError::Tls(_)
        | UpstreamError::NoStartTls
        | UpstreamError::Auth { .. }
        | UpstreamError::Refused { .. }
        | UpstreamError::Protocol { .. }
        | UpstreamError::Io { .. }
        | UpstreamError::Config(_)
        | UpstreamError::Capture(_) => true,
        UpstreamError::Rejected { code, .. } => *code == 421,
        UpstreamError::Envelope(_) | UpstreamError::Held { .. } | UpstreamError::NoRoute { .. } => {
            false
        }
    }
}
