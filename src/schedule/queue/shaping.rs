//! Shaping decisions in the queue: a provider-scoped rule that matched here slows the lane,
//! is counted (`mailveil_shaping_actions_total`) and, with `[cluster]`, published for every
//! replica; an upstream-scoped rule slows the upstream (seen in `mailveil_upstream_slowed`,
//! not counted in the provider-labelled counter) and is published the same way under
//! `upstream:<name>`. The decisions of other replicas read from the cluster are applied to the
//! lanes and upstreams here; an operator's clear lifts shaping here and in the cluster.

use std::sync::Arc;
use std::time::Duration;

use crate::config::ShapingAction;
use crate::schedule::failover::UpstreamSlot;
use crate::schedule::lane::Lane;
use crate::schedule::shaping::fleet::{Fleet, FleetSync, Remote};
use crate::schedule::shaping::shared::POLL_INTERVAL;
use crate::schedule::shaping::{self, Cause, Decision, Origin, Target};

use super::{Inner, Scheduler};

/// What an operator's clear lifts (`POST /shaping/clear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearTarget<'a> {
    /// Every provider's and every upstream's shaping.
    All,
    Provider(&'a str),
    Upstream(&'a str),
}

/// What a clear lifted on this replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleared {
    pub providers: Vec<String>,
    pub upstreams: Vec<String>,
}

/// A clear named a provider or upstream this relay does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClearError {
    #[error("unknown provider {0:?}")]
    UnknownProvider(String),
    #[error("unknown upstream {0:?}")]
    UnknownUpstream(String),
}

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
        let cause = local_cause(action, rule, reply.clone());
        lane.slow_down(action, duration, &cause);
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        let decision = Decision::new(action, rule, reply, fleet.replica());
        let field = lane.name.clone();
        let lane = lane.clone();
        publish(
            fleet,
            field,
            decision,
            duration,
            move |action, left, cause| {
                lane.slow_down(action, left, cause);
            },
        );
    }

    /// An upstream-scoped rule matched `reply` from `slot` on this replica: the upstream slows
    /// down (or is suspended) for `duration` and, with `[cluster]`, the decision is published
    /// under `upstream:<name>` so every replica applies it to its upstream of that name.
    pub(super) fn upstream_shaped(
        &self,
        slot: &Arc<UpstreamSlot>,
        action: ShapingAction,
        duration: Duration,
        rule: &str,
        reply: &str,
    ) {
        let reply = self.redactor.text(reply).to_string();
        let cause = local_cause(action, rule, reply.clone());
        if slot.limits.slow_down(action, duration, &cause).is_none() {
            return;
        }
        let Some(fleet) = self.fleet.clone() else {
            return;
        };
        let field = Target::Upstream(slot.name()).field();
        if Target::of(&field).is_none() {
            // A name longer than the shared state accepts (64): kept to this replica.
            return;
        }
        let decision = Decision::new(action, rule, reply, fleet.replica());
        let limits = slot.limits.clone();
        publish(
            fleet,
            field,
            decision,
            duration,
            move |action, left, cause| {
                limits.slow_down(action, left, cause);
            },
        );
    }

    /// An upstream's shaping was lifted: copies held because every upstream was suspended
    /// wait for a time that no longer holds. Which deferred copies those are is not recorded,
    /// so every lane's deferred copies become due (each still goes at its provider's pace; one
    /// retried early for another reason is merely tried again).
    fn release_held(&self) {
        for lane in self.lanes.read().expect("not poisoned").values() {
            lane.make_deferred_due();
        }
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
                    field,
                    decision,
                    remaining,
                } => {
                    if remaining.is_zero() {
                        continue;
                    }
                    let action = shaping::action_of(decision.factor, &decision.limits);
                    let cause = cause_of(&decision);
                    match Target::of(&field) {
                        Some(Target::Provider(provider)) => {
                            if !self.is_known_provider(provider) {
                                tracing::warn!(%provider, "ignoring the cluster's shaping decision for a provider this replica does not know");
                                continue;
                            }
                            // A lane is created if need be, so copies queued later find it slowed.
                            self.lane(provider).slow_down(action, remaining, &cause);
                        }
                        Some(Target::Upstream(upstream)) => match self.upstream_slot(upstream) {
                            Some(slot) => {
                                slot.limits.slow_down(action, remaining, &cause);
                            }
                            None => {
                                tracing::info!(%upstream, "ignoring the cluster's shaping decision for an upstream this replica does not have")
                            }
                        },
                        None => {}
                    }
                }
                Remote::Clear { field, by } => {
                    let by = Some(by.as_deref().unwrap_or("another replica"));
                    match Target::of(&field) {
                        Some(Target::Provider(provider)) => {
                            let lane = self
                                .lanes
                                .read()
                                .expect("not poisoned")
                                .get(provider)
                                .cloned();
                            if let Some(lane) = lane {
                                lane.clear_shaping(by);
                            }
                        }
                        Some(Target::Upstream(upstream)) => {
                            if let Some(slot) = self.upstream_slot(upstream)
                                && slot.limits.clear_shaping(by)
                            {
                                self.release_held();
                            }
                        }
                        None => {}
                    }
                }
            }
        }
    }
}

/// The cause of a decision taken on this replica.
fn local_cause(action: ShapingAction, rule: &str, reply: String) -> Cause {
    Cause {
        rule: rule.to_string(),
        reply,
        origin: Origin::Local,
        by: None,
        limits: match action {
            ShapingAction::Set(limits) => limits.into(),
            _ => Default::default(),
        },
    }
}

/// Publishes a decision taken here under `field` for `duration`. The cluster may hold a
/// stronger entry this replica has not read yet (merged into the one written): `apply` puts it
/// in force here too.
fn publish(
    fleet: Arc<Fleet>,
    field: String,
    decision: Decision,
    duration: Duration,
    apply: impl FnOnce(ShapingAction, Duration, &Cause) + Send + 'static,
) {
    let factor = decision.factor;
    tokio::spawn(async move {
        if let Some((entry, left)) = fleet.publish(&field, decision, duration).await
            && (entry.factor < factor || left > duration)
        {
            let mut cause = cause_of(&entry);
            if entry.by.is_some() && entry.by == fleet.replica() {
                (cause.origin, cause.by) = (Origin::Local, None);
            }
            apply(
                shaping::action_of(entry.factor, &entry.limits),
                left,
                &cause,
            );
        }
    });
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
    /// Lifts the shaping in force (of one provider, of one upstream, or of all): the
    /// configured limits apply again at once, here and, with `[cluster]`, on every replica.
    /// Returns the providers and upstreams that were slowed down or suspended here.
    pub async fn clear_shaping(&self, target: ClearTarget<'_>) -> Result<Cleared, ClearError> {
        let inner = &self.inner;
        match target {
            ClearTarget::Provider(name) if !inner.is_known_provider(name) => {
                return Err(ClearError::UnknownProvider(name.to_string()));
            }
            ClearTarget::Upstream(name) if inner.upstream_slot(name).is_none() => {
                return Err(ClearError::UnknownUpstream(name.to_string()));
            }
            _ => {}
        }
        let lanes: Vec<Arc<Lane>> = match target {
            ClearTarget::Upstream(_) => Vec::new(),
            _ => inner
                .lanes
                .read()
                .expect("not poisoned")
                .values()
                .filter(|l| match target {
                    ClearTarget::Provider(p) => p == l.name,
                    _ => true,
                })
                .cloned()
                .collect(),
        };
        let slots: Vec<Arc<UpstreamSlot>> = match target {
            ClearTarget::Provider(_) => Vec::new(),
            ClearTarget::Upstream(name) => inner.upstream_slot(name).into_iter().collect(),
            ClearTarget::All => {
                let handoff = inner.handoff_slot.read().expect("not poisoned").clone();
                inner.upstreams().iter().cloned().chain(handoff).collect()
            }
        };
        let mut cleared = Cleared {
            providers: lanes
                .iter()
                .filter(|l| l.clear_shaping(None))
                .map(|l| l.name.clone())
                .collect(),
            upstreams: slots
                .iter()
                .filter(|s| s.limits.clear_shaping(None))
                .map(|s| s.name().to_string())
                .collect(),
        };
        cleared.providers.sort();
        cleared.upstreams.sort();
        cleared.upstreams.dedup();
        if !cleared.upstreams.is_empty() {
            inner.release_held();
        }
        if let Some(fleet) = &inner.fleet {
            let fields: Vec<String> = match target {
                ClearTarget::Provider(p) => vec![p.to_string()],
                ClearTarget::Upstream(u) => vec![Target::Upstream(u).field()],
                ClearTarget::All => lanes
                    .iter()
                    .map(|l| l.name.clone())
                    .chain(slots.iter().map(|s| Target::Upstream(s.name()).field()))
                    .collect(),
            };
            let shared = fleet.clear(&fields, target == ClearTarget::All).await;
            tracing::info!(
                cleared = %shared.join(","),
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
