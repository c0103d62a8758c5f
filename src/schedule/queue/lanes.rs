//! Lanes by provider: created with their dispatcher on first use, with the concurrency and
//! rate the catalog gives the provider (re-read after a reload by `apply_config`).

use std::sync::Arc;

use super::Inner;
use crate::schedule::lane::Lane;
use crate::schedule::provider::{BUILT_IN_NAMES, DEFAULT_PROVIDER};
use crate::schedule::throttle::{Rate, Throttle, ThrottleMetrics};

impl Inner {
    pub(super) fn is_known_provider(&self, name: &str) -> bool {
        name == DEFAULT_PROVIDER
            || BUILT_IN_NAMES.contains(&name)
            || self
                .settings
                .read()
                .expect("not poisoned")
                .routing
                .catalog
                .names()
                .iter()
                .any(|p| p == name)
            || self.lanes.read().expect("not poisoned").contains_key(name)
    }

    /// In-flight limit of a provider's lane: its `max_connections` (catalog or config) but never
    /// more than all upstream connections but one, else all but one for `default` and at most
    /// half of them (and at most 4) for a named provider. Why not all: the upstream's connection cap is shared by every lane, and a
    /// lane whose deliveries hang holds its connections until the upstream `timeout`; it must
    /// leave some for the other providers.
    pub(super) fn lane_concurrency(&self, provider: &str) -> usize {
        let settings = self.settings.read().expect("not poisoned");
        let total = settings.upstream_connections;
        // Every lane leaves at least one upstream connection for the others, even when its
        // provider's own limit (built-in catalog or config) is higher.
        let all_but_one = total.saturating_sub(1).max(1);
        match settings.routing.catalog.limits(provider).max_connections {
            Some(n) => n.min(all_but_one),
            None if provider == DEFAULT_PROVIDER => all_but_one,
            None => (total / 2).clamp(1, 4),
        }
    }

    /// The configured message rate of a provider (`None`: unthrottled).
    pub(super) fn lane_rate(&self, provider: &str) -> Option<Rate> {
        let settings = self.settings.read().expect("not poisoned");
        let limits = settings.routing.catalog.limits(provider);
        limits.messages_per_second.map(|per_second| Rate {
            per_second: per_second.get(),
            burst: limits.burst,
        })
    }

    /// Logs a warning for each provider that requires TLS while no upstream has TLS on: its
    /// copies will wait (deferred) until one is configured. At start and after a reload.
    pub(super) fn warn_if_tls_missing(&self) {
        if self.upstreams().iter().any(|s| s.upstream.is_encrypted()) {
            return;
        }
        let settings = self.settings.read().expect("not poisoned");
        let catalog = &settings.routing.catalog;
        for name in catalog.names() {
            if catalog.limits(name).require_tls {
                tracing::warn!(provider = %name,
                    "provider requires TLS (require_tls) but no upstream has TLS on: its copies will be deferred, never sent in plaintext");
            }
        }
    }

    /// The lane of `provider`, created with its dispatcher on first use.
    pub(super) fn lane(self: &Arc<Self>, provider: &str) -> Arc<Lane> {
        if let Some(lane) = self.lanes.read().expect("not poisoned").get(provider) {
            return lane.clone();
        }
        let mut lanes = self.lanes.write().expect("not poisoned");
        if let Some(lane) = lanes.get(provider) {
            return lane.clone();
        }
        let throttle = Throttle::new(
            provider,
            self.lane_rate(provider),
            ThrottleMetrics {
                delays: self.metrics.throttle_delays.with_label_values(&[provider]),
                slowed: self.metrics.provider_slowed.with_label_values(&[provider]),
            },
            self.cluster.clone(),
        );
        let lane = Arc::new(Lane::new(
            provider,
            self.lane_concurrency(provider),
            throttle,
        ));
        lanes.insert(provider.to_string(), lane.clone());
        let (inner, dispatched) = (self.clone(), lane.clone());
        self.tracker
            .spawn(async move { inner.dispatch(dispatched).await });
        lane
    }
}
