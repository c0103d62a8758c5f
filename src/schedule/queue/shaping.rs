//! Shaping decisions in the queue: a provider-scoped rule that matched here slows the lane,
//! is counted (`mailveil_shaping_actions_total`) and, with `[cluster]`, published for every
//! replica; the decisions of other replicas read from the cluster are applied to the lanes
//! here; an operator's clear lifts a provider's shaping here and in the cluster.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ShapingAction;
use crate::schedule::lane::Lane;
use crate::schedule::shaping::fleet::{FleetSync, Remote};
use crate::schedule::shaping::shared::POLL_INTERVAL;
use crate::schedule::shaping::{self, Cause, Decision, Origin};

use super::control::UnknownProvider;
use super::{Inner, Scheduler};

impl Inner {
    /// A rule for the recipient's provider matched `reply` on this replica: the lane slows down
    /// (or is suspended) for `duration`, the action is counted, and with `[cluster]` the
    /// decision is published so every replica applies it.
    pub(super) fn provider_shaped(
        &self,
        lane: &Arc<Lane>,
        action: ShapingAction,
        duration: Duration,
        rule: &str,
        reply: &str,
    ) {
        self.metrics
            .shaping_actions
            .with_label_values(&[&lane.name, shaping::action_label(action)])
            .inc();
        let reply = self.redactor.text(reply).to_string();
        let cause = Cause {
            rule: rule.to_string(),
            reply: reply.clone(),
            origin: Origin::Local,
            by: None,
            limits: match action {
                ShapingAction::Set(limits) => limits.into(),
                _ => Default::default(),
            },
        };
        lane.slow_down(action, duration, &cause);
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        let decision = Decision::new(action, rule, reply, fleet.replica());
        let lane = lane.clone();
        let factor = shaping::action_factor(action);
        tokio::spawn(async move {
            // The cluster may hold a stronger entry this replica has not read yet (merged into
            // the one written): it applies here too.
            if let Some((entry, left)) = fleet.publish(&lane.name, decision, duration).await
                && (entry.factor < factor || left > duration)
            {
                let mut cause = cause_of(&entry);
                if entry.by.is_some() && entry.by == fleet.replica() {
                    (cause.origin, cause.by) = (Origin::Local, None);
                }
                lane.slow_down(
                    shaping::action_of(entry.factor, &entry.limits),
                    left,
                    &cause,
                );
            }
        });
    }

    /// With `[cluster]`, reads the cluster's shaping state every [`POLL_INTERVAL`] until
    /// shutdown and applies what other replicas decided.
    pub(super) fn spawn_shaping_sync(self: Arc<Self>) {
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        tokio::spawn(async move {
            loop {
                let remote = fleet.poll().await;
                self.apply_remote(remote);
                tokio::select! {
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    _ = self.shutdown.cancelled() => return,
                }
            }
        });
    }

    fn apply_remote(self: &Arc<Self>, remote: Vec<Remote>) {
        for r in remote {
            match r {
                Remote::Apply {
                    provider,
                    decision,
                    remaining,
                } => {
                    if remaining.is_zero() {
                        continue;
                    }
                    if !self.is_known_provider(&provider) {
                        tracing::warn!(%provider, "ignoring the cluster's shaping decision for a provider this replica does not know");
                        continue;
                    }
                    // A lane is created if need be, so copies queued later find it slowed.
                    let lane = self.lane(&provider);
                    let cause = cause_of(&decision);
                    lane.slow_down(
                        shaping::action_of(decision.factor, &decision.limits),
                        remaining,
                        &cause,
                    );
                }
                Remote::Clear { provider, by } => {
                    let lane = self
                        .lanes
                        .read()
                        .expect("not poisoned")
                        .get(&provider)
                        .cloned();
                    if let Some(lane) = lane {
                        lane.clear_shaping(Some(by.as_deref().unwrap_or("another replica")));
                    }
                }
            }
        }
    }
}

/// The cause of a shared decision, as another replica's.
fn cause_of(decision: &Decision) -> Cause {
    Cause {
        rule: decision.rule.clone(),
        reply: decision.reply.clone(),
        origin: Origin::Fleet,
        by: decision.by.clone(),
        limits: decision.limits.clone(),
    }
}

impl Scheduler {
    /// Lifts the shaping in force (of one provider, or of all): the configured limits apply
    /// again at once, here and, with `[cluster]`, on every replica. Returns the providers
    /// whose lanes here were slowed down or suspended.
    pub async fn clear_shaping(
        &self,
        provider: Option<&str>,
    ) -> Result<Vec<String>, UnknownProvider> {
        let inner = &self.inner;
        if let Some(name) = provider
            && !inner.is_known_provider(name)
        {
            return Err(UnknownProvider(name.to_string()));
        }
        let lanes: Vec<Arc<Lane>> = inner
            .lanes
            .read()
            .expect("not poisoned")
            .values()
            .filter(|l| provider.is_none_or(|p| p == l.name))
            .cloned()
            .collect();
        let mut cleared: Vec<String> = lanes
            .iter()
            .filter(|l| l.clear_shaping(None))
            .map(|l| l.name.clone())
            .collect();
        cleared.sort();
        if let Some(fleet) = &inner.fleet {
            let names: Vec<String> = match provider {
                Some(p) => vec![p.to_string()],
                None => lanes.iter().map(|l| l.name.clone()).collect(),
            };
            let shared = fleet.clear(&names, provider.is_none()).await;
            tracing::info!(
                providers = %shared.join(","),
                "shaping cleared in the cluster; every replica lifts it within a second"
            );
        }
        Ok(cleared)
    }

    /// With `[cluster]`: how the shaping state is shared (for `/status`).
    pub(super) fn shaping_sync(&self) -> Option<FleetSync> {
        self.inner.fleet.as_ref().map(|f| f.sync_status())
    }
}
