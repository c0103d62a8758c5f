//! What the admin API asks of the queue: pause and resume (all deliveries or one provider's)
//! and the status it shows (`GET /status`).

use std::sync::atomic::Ordering;

use crate::config::PerSecond;

use super::Scheduler;

impl Scheduler {
    /// Stops starting deliveries (all, or one provider's); copies in flight finish. Inbound keeps
    /// accepting and spooling.
    pub fn pause(&self, provider: Option<&str>) -> Result<(), UnknownProvider> {
        self.set_paused(provider, true)
    }

    /// Undoes [`pause`](Self::pause).
    pub fn resume(&self, provider: Option<&str>) -> Result<(), UnknownProvider> {
        self.set_paused(provider, false)
    }

    fn set_paused(&self, provider: Option<&str>, paused: bool) -> Result<(), UnknownProvider> {
        match provider {
            None => {
                self.inner.paused.store(paused, Ordering::Relaxed);
                for lane in self.inner.lanes.read().expect("not poisoned").values() {
                    lane.nudge();
                }
            }
            Some(name) => {
                if !self.inner.is_known_provider(name) {
                    return Err(UnknownProvider(name.to_string()));
                }
                self.inner.lane(name).set_paused(paused);
            }
        }
        tracing::info!(
            provider = provider.unwrap_or("*"),
            "deliveries {}",
            if paused { "paused" } else { "resumed" }
        );
        Ok(())
    }

    /// Whether the queue or any lane is paused, what each provider has queued (every provider
    /// of the catalog is listed, idle ones too) and which upstreams are up.
    pub fn status(&self) -> QueueStatus {
        let lanes = self.inner.lanes.read().expect("not poisoned");
        let mut providers: Vec<ProviderStatus> = lanes
            .values()
            .map(|l| ProviderStatus {
                name: l.name.clone(),
                paused: l.is_paused(),
                queued: l.queued.load(Ordering::Relaxed),
                slowed: l.throttle.slowdown().is_some(),
                messages_per_second: l.throttle.effective_rate().map(|r| r.per_second),
                concurrency: l.concurrency(),
            })
            .collect();
        drop(lanes);
        // Every provider of the catalog, idle ones (no lane yet) with nothing queued.
        let routing = self.routing();
        for name in routing.catalog.names() {
            if !providers.iter().any(|p| &p.name == name) {
                let limits = routing.catalog.limits(name);
                providers.push(ProviderStatus {
                    name: name.clone(),
                    paused: false,
                    queued: 0,
                    slowed: false,
                    messages_per_second: limits.messages_per_second.map(PerSecond::get),
                    // No lane yet: its cap once one opens (0 = what the upstreams allow).
                    concurrency: limits.max_connections.unwrap_or(0),
                });
            }
        }
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        let upstreams = self
            .inner
            .upstreams()
            .iter()
            .map(|s| UpstreamStatus {
                name: s.name().to_string(),
                up: s.is_up(),
            })
            .collect();
        QueueStatus {
            paused: self.inner.paused.load(Ordering::Relaxed),
            providers,
            upstreams,
        }
    }
}

/// What `GET /status` shows about the queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStatus {
    /// All deliveries paused.
    pub paused: bool,
    pub providers: Vec<ProviderStatus>,
    pub upstreams: Vec<UpstreamStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ProviderStatus {
    pub name: String,
    pub paused: bool,
    /// Deliveries waiting or in flight in this provider's lane.
    pub queued: u64,
    /// A "too fast" deferral has slowed (or suspended) this provider for a while.
    pub slowed: bool,
    /// The rate in force (configured, times any slowdown); `None`: unthrottled.
    pub messages_per_second: Option<f64>,
    /// Deliveries in flight allowed now.
    pub concurrency: usize,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub up: bool,
}

/// A pause/resume request named a provider the catalog does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {0:?}")]
pub struct UnknownProvider(pub String);
