//! Upstreams in configured order, with failover: an upstream that cannot be reached, fails TLS,
//! times out or answers `421` is skipped for a cool-off period and the next one is tried; after
//! the cool-off it is probed again by the next delivery.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::ShapingAction;
use crate::observe::Metrics;
use crate::upstream::{Delivered, Outbound, Reuse, Upstream, UpstreamError};

pub struct UpstreamSlot {
    pub upstream: Upstream,
    /// While set and in the future, the upstream is skipped.
    down_until: Mutex<Option<Instant>>,
}

impl UpstreamSlot {
    pub fn new(upstream: Upstream) -> UpstreamSlot {
        UpstreamSlot {
            upstream,
            down_until: Mutex::new(None),
        }
    }

    /// A slot for a reloaded upstream that keeps the health state of the one it replaces.
    pub fn replacing(upstream: Upstream, old: Option<&UpstreamSlot>) -> UpstreamSlot {
        let down = old.and_then(|o| *o.down_until.lock().expect("not poisoned"));
        UpstreamSlot {
            upstream,
            down_until: Mutex::new(down),
        }
    }

    pub fn name(&self) -> &str {
        &self.upstream.name
    }

    /// Applies an upstream-scoped shaping rule's action (an ESP's "too fast" or quota reply)
    /// to this upstream for `duration`. `rule` names the rule for logs.
    pub fn slow_down(&self, action: ShapingAction, duration: Duration, rule: &str) {
        // Upstream pacing is not built yet (issue 13): the rule is only reported.
        tracing::warn!(upstream = %self.name(), ?action, for_secs = duration.as_secs(), %rule,
            "upstream asked to slow down");
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

/// Tries `slots` in order, skipping those cooling off (unless all are), and returns the name of
/// the upstream that answered last with its result. `reuse` keeps the provider's connections
/// apart (see [`Reuse`]).
pub async fn send<'a>(
    slots: &'a [std::sync::Arc<UpstreamSlot>],
    outbound: Outbound<'_>,
    reuse: Reuse<'_>,
    metrics: &Metrics,
    cool_off: Duration,
) -> (&'a str, Result<Delivered, UpstreamError>) {
    let now = Instant::now();
    let healthy: Vec<&std::sync::Arc<UpstreamSlot>> =
        slots.iter().filter(|s| !s.is_cooling_off(now)).collect();
    let candidates: Vec<&std::sync::Arc<UpstreamSlot>> = if healthy.is_empty() {
        slots.iter().collect()
    } else {
        healthy
    };
    let mut last = None;
    for slot in candidates {
        let result = slot.upstream.send_reusing(outbound, reuse).await;
        match &result {
            Err(e) if is_upstream_fault(e) => {
                slot.mark_down(metrics, e, cool_off);
                last = Some((slot.name(), result));
            }
            // Delivered, or an answer about this message or recipient: the upstream works.
            _ => {
                slot.mark_up(metrics);
                return (slot.name(), result);
            }
        }
    }
    last.expect("at least one upstream is configured")
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
        UpstreamError::Envelope(_) => false,
    }
}
