//! The reloadable part of the scheduler's configuration, swapped in one step on reload, and the
//! config sections it is built from.

use std::sync::Arc;

use crate::config::{
    DkimConfig, HoldConfig, PrivacyConfig, ShapingConfig, ShapingRule, SpoolConfig, UpstreamConfig,
    UpstreamKind,
};
use crate::schedule::failover::UpstreamSlot;
use crate::schedule::routing::Routing;
use crate::upstream::Upstream;

use super::Scheduler;
use crate::schedule::rules;

/// The sections of the configuration the scheduler reads, not the whole file: given at start
/// and on every reload (`control::reload::scheduler_config` maps a `Config` onto it for both).
pub struct SchedulerConfig<'a> {
    pub spool: &'a SpoolConfig,
    pub upstreams: &'a [UpstreamConfig],
    /// Built once from the catalog, MX and host-name settings; the relay reads it from here.
    pub routing: Routing,
    pub shaping: &'a ShapingConfig,
    pub dkim: &'a DkimConfig,
    pub privacy: &'a PrivacyConfig,
    pub hold: Option<&'a HoldConfig>,
    /// Each app's rate and daily quota (`[app.limits]`), counted by the scheduler's registry
    /// (it holds the cluster's Redis and the spool) and asked by the listener.
    pub apps: &'a crate::config::AppsConfig,
}

/// The reloadable part of the scheduler's configuration.
pub(super) struct Settings {
    pub(super) retry: SpoolConfig,
    /// The most connections any one upstream may open: what the `default` lane may use.
    pub(super) upstream_connections: usize,
    /// Lanes and their limits, our name for bounces (shared with the relay: [`Scheduler::routing`]).
    pub(super) routing: Arc<Routing>,
    /// Shaping rules in matching order.
    pub(super) rules: Arc<Vec<ShapingRule>>,
    /// DKIM keys (parsed when the config was validated); swapped with the rest on reload.
    pub(super) dkim: Arc<crate::dkim::Signer>,
    /// For the check before sending a message spooled without its own privacy settings.
    pub(super) privacy: PrivacyConfig,
}

impl Settings {
    pub(super) fn new(config: SchedulerConfig<'_>) -> Settings {
        let upstream_connections = config
            .upstreams
            .iter()
            .map(|u| match &u.kind {
                UpstreamKind::Smtp(s) => s.max_connections,
                UpstreamKind::Mx(m) => m.max_connections,
                UpstreamKind::Dir { .. } => 16,
            })
            .max()
            .unwrap_or(16);
        Settings {
            retry: config.spool.clone(),
            upstream_connections,
            routing: Arc::new(config.routing),
            rules: Arc::new(rules::for_config(config.shaping)),
            dkim: Arc::new(crate::dkim::Signer::from_config(config.dkim)),
            privacy: config.privacy.clone(),
        }
    }
}

impl Scheduler {
    /// Each app's rate and daily quota (`[app.limits]`), asked by the listener.
    pub fn app_limits(&self) -> Arc<crate::schedule::app_limits::AppLimitsRegistry> {
        self.inner.app_limits.clone()
    }

    /// Each app's delivery events (`[app.events]`).
    pub fn events(&self) -> Arc<crate::events::Events> {
        self.inner.events.clone()
    }

    /// Recipients never sent to (checked before each attempt: `suppressed.rs`).
    pub fn suppressions(&self) -> Arc<crate::schedule::suppress::Suppressions> {
        self.inner.suppressions.clone()
    }

    /// Applies a reloaded configuration: retry timing, provider limits (rate, burst,
    /// concurrency, deliveries per connection), shaping rules, and the upstreams (new
    /// credentials or TLS files). A slowdown in force keeps running to its end. Deliveries in
    /// flight finish on the upstream they started with; health state carries over for
    /// upstreams with the same name. `[cluster]` changes need a restart.
    pub fn apply_config(&self, config: SchedulerConfig<'_>, upstreams: Vec<Upstream>) {
        let hold = config.hold;
        self.inner.app_limits.configure(config.apps);
        self.inner
            .suppressions
            .set_hard_bounces(config.apps.suppress_hard_bounces);
        self.inner.events.configure(config.apps);
        let old = self.inner.upstreams();
        let slots = UpstreamSlot::build_all(upstreams, config.upstreams, &old, &self.inner.limits);
        let settings = Settings::new(config);
        *self.inner.settings.write().expect("not poisoned") = settings;
        for s in &slots {
            self.inner
                .metrics
                .upstream_up
                .with_label_values(&[s.name()])
                .set(i64::from(s.is_up()));
        }
        *self.inner.upstreams.write().expect("not poisoned") = Arc::new(slots);
        self.inner.warn_if_tls_missing();
        self.inner.holds.apply(hold);
        for lane in self.inner.lanes.read().expect("not poisoned").values() {
            lane.set_concurrency(self.inner.lane_concurrency(&lane.name));
            lane.throttle.set_rate(self.inner.lane_rate(&lane.name));
        }
    }
}
