//! The reloadable part of the scheduler's configuration, swapped in one step on reload, and the
//! config sections it is built from.

use std::sync::Arc;

use crate::config::{
    DkimConfig, HoldConfig, PrivacyConfig, ShapingConfig, ShapingRule, SpoolConfig, UpstreamConfig,
    UpstreamKind,
};
use crate::schedule::routing::Routing;
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
