//! What the admin API asks of the queue: pause and resume (all deliveries or one provider's,
//! through the kill switch of `schedule/pause/`), the pause state applied to the lanes, and the
//! status it shows (`GET /status`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::PerSecond;
use crate::schedule::pause::record::RecordError;
use crate::schedule::pause::shared::POLL_INTERVAL;
use crate::schedule::pause::switch::label;
use crate::schedule::pause::{ALL, Source, rfc3339};
use crate::schedule::shaping::ShapingView;
use crate::schedule::shaping::fleet::FleetSync;

use super::{Inner, Scheduler};

impl Scheduler {
    /// Stops starting deliveries (all, or one provider's); copies in flight finish. Inbound keeps
    /// accepting and spooling. Recorded in the spool before it returns, and shared with the
    /// other replicas of a `[cluster]`.
    pub async fn pause(&self, provider: Option<&str>) -> Result<(), PauseError> {
        self.set_paused(provider, true).await
    }

    /// Undoes [`pause`](Self::pause); the copies of the resumed provider (or of all) that wait
    /// for a retry become due at once.
    pub async fn resume(&self, provider: Option<&str>) -> Result<(), PauseError> {
        self.set_paused(provider, false).await
    }

    async fn set_paused(&self, provider: Option<&str>, paused: bool) -> Result<(), PauseError> {
        if let Some(name) = provider
            && !self.inner.is_known_provider(name)
        {
            return Err(PauseError::UnknownProvider(UnknownProvider(
                name.to_string(),
            )));
        }
        let key = provider.unwrap_or(ALL);
        let recorded = self.inner.pauses.command(key, paused).await;
        self.inner.apply_pauses();
        tracing::info!(
            provider = label(key),
            "deliveries {}",
            if paused { "paused" } else { "resumed" }
        );
        recorded.map_err(PauseError::NotRecorded)
    }

    /// Whether the queue or any lane is paused, what each provider has queued (every provider
    /// of the catalog is listed, idle ones too) and which upstreams are up.
    pub fn status(&self) -> QueueStatus {
        let routing = self.routing();
        let lanes = self.inner.lanes.read().expect("not poisoned");
        let mut providers: Vec<ProviderStatus> = lanes
            .values()
            .map(|l| {
                let rate = l.throttle.effective_rate();
                ProviderStatus {
                    name: l.name.clone(),
                    paused: l.is_paused(),
                    queued: l.queued.load(Ordering::Relaxed),
                    slowed: l.throttle.slowdown().is_some(),
                    messages_per_second: rate.map(|r| r.per_second),
                    concurrency: l.concurrency(),
                    limits: EffectiveLimits {
                        messages_per_second: rate.map(|r| r.per_second),
                        burst: rate.map(|r| r.burst),
                        max_connections: l.concurrency(),
                        max_deliveries_per_connection: routing
                            .catalog
                            .limits(&l.name)
                            .max_deliveries_per_connection,
                    },
                    shaping: l.shaping_view(),
                }
            })
            .collect();
        drop(lanes);
        // Every provider of the catalog, idle ones (no lane yet) with nothing queued.
        for name in routing.catalog.names() {
            if !providers.iter().any(|p| &p.name == name) {
                let limits = routing.catalog.limits(name);
                let rate = limits.messages_per_second.map(PerSecond::get);
                // No lane yet: its cap once one opens (0 = what the upstreams allow).
                let concurrency = limits.max_connections.unwrap_or(0);
                providers.push(ProviderStatus {
                    name: name.clone(),
                    paused: false,
                    queued: 0,
                    slowed: false,
                    messages_per_second: rate,
                    concurrency,
                    limits: EffectiveLimits {
                        messages_per_second: rate,
                        burst: rate.map(|_| limits.burst),
                        max_connections: concurrency,
                        max_deliveries_per_connection: limits.max_deliveries_per_connection,
                    },
                    shaping: None,
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
                limits: s.limits.status(),
                shaping: s.limits.shaping_view(),
            })
            .collect();
        QueueStatus {
            paused: self.inner.paused.load(Ordering::Relaxed),
            pauses: self.pause_views(),
            pause_sync: self.pause_sync(),
            shaping_sync: self.shaping_sync(),
            providers,
            upstreams,
        }
    }

    /// Every pause in force, with where it comes from.
    fn pause_views(&self) -> Vec<PauseView> {
        let switch = &self.inner.pauses;
        let shared = switch.is_shared();
        let mut views: Vec<PauseView> = switch
            .board()
            .targets
            .iter()
            .filter(|(_, e)| e.change.paused)
            .map(|(key, e)| PauseView {
                provider: label(key).to_string(),
                source: e.source,
                since: rfc3339(e.change.at_ms),
                by: e.change.by.clone(),
                shared: shared.then_some(!e.pending && e.seen.is_some()),
                note: (key == ALL)
                    .then(|| switch.unreadable_record())
                    .flatten()
                    .filter(|_| e.seen.is_none() && e.source == Source::Spool)
                    .map(|why| format!("the pause record could not be read ({why}); resume when the state is known")),
            })
            .collect();
        // Global first, then providers by name (the board's order, `*` sorting first).
        views.sort_by_key(|v| v.provider != "all");
        views
    }

    fn pause_sync(&self) -> Option<PauseSync> {
        let switch = &self.inner.pauses;
        switch.is_shared().then(|| PauseSync {
            redis_reachable: switch.cluster_reachable(),
            waiting_for_first_sync: switch.waiting_for_cluster(),
            last_sync: switch.last_sync_ms().map(rfc3339),
            interval_ms: POLL_INTERVAL.as_millis() as u64,
        })
    }
}

impl Inner {
    /// Applies the kill switch's state to the dispatchers: the global flag (also set while a
    /// cluster replica waits for its first sync), each provider's lane, the `mailveil_paused`
    /// gauges. A target that went from paused to resumed gets its deferred copies due now.
    pub(super) fn apply_pauses(self: &Arc<Self>) {
        // The board is read under the lock: two applies (a command's, a sync round's) never
        // interleave, and the later one sets the lanes from the later state.
        let mut applied = self.applied_pauses.lock().expect("not poisoned");
        let board = self.pauses.board();
        let resumed = |applied: &std::collections::BTreeMap<String, bool>, key: &str, now: bool| {
            applied.get(key).copied().unwrap_or(false) && !now
        };

        let all = board.is_paused(ALL);
        let all_resumed = resumed(&applied, ALL, all);
        self.paused
            .store(all || self.pauses.waiting_for_cluster(), Ordering::Relaxed);
        self.metrics
            .paused
            .with_label_values(&[label(ALL)])
            .set(i64::from(all));
        applied.insert(ALL.to_string(), all);
        let lanes: Vec<Arc<crate::schedule::lane::Lane>> = self
            .lanes
            .read()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        for lane in &lanes {
            lane.nudge();
            if all_resumed {
                lane.make_deferred_due();
            }
        }
        for (key, entry) in board.targets.iter().filter(|(k, _)| k.as_str() != ALL) {
            let paused = entry.change.paused;
            let was_resumed = resumed(&applied, key, paused);
            self.metrics
                .paused
                .with_label_values(&[key.as_str()])
                .set(i64::from(paused));
            applied.insert(key.clone(), paused);
            // A lane is created for a paused provider, so copies queued later find it paused.
            if !paused && !lanes.iter().any(|l| &l.name == key) {
                continue;
            }
            let lane = self.lane(key);
            lane.set_paused(paused);
            if was_resumed {
                lane.make_deferred_due();
            }
        }
    }

    /// With `[cluster]`, reads the cluster's pause state every [`POLL_INTERVAL`] until shutdown
    /// and applies what changed (the first round also ends the wait at start).
    pub(super) fn spawn_pause_sync(self: Arc<Self>) {
        if !self.pauses.is_shared() {
            return;
        }
        tokio::spawn(async move {
            let mut first = true;
            loop {
                if self.pauses.sync().await || first {
                    self.apply_pauses();
                }
                first = false;
                tokio::select! {
                    _ = tokio::time::sleep(POLL_INTERVAL) => {}
                    _ = self.shutdown.cancelled() => return,
                }
            }
        });
    }
}

/// Why a pause or resume was not done as asked.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error(transparent)]
    UnknownProvider(#[from] UnknownProvider),
    /// Applied here (deliveries stopped or restarted), but not written to the spool: a restart
    /// would forget it.
    #[error("applied, but not recorded (a restart would forget it): {0}")]
    NotRecorded(RecordError),
}

/// One pause in force, as `GET /status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PauseView {
    /// `all` or a provider.
    pub provider: String,
    /// How this replica learned it: `command` (an admin request to it), `spool` (its record,
    /// read at start), `cluster` (another replica's decision, read from Redis).
    pub source: Source,
    /// When the decision was made (RFC 3339, the deciding replica's clock).
    pub since: String,
    /// The replica that made it, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// With `[cluster]`: whether Redis holds it (false: made here while Redis was unreachable,
    /// or never shared).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// With `[cluster]`: how the pause state is shared.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PauseSync {
    pub redis_reachable: bool,
    /// True at start until Redis was first asked; nothing is sent meanwhile.
    pub waiting_for_first_sync: bool,
    /// When the cluster's state was last read (RFC 3339).
    pub last_sync: Option<String>,
    pub interval_ms: u64,
}

/// What `GET /status` shows about the queue.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStatus {
    /// All deliveries paused.
    pub paused: bool,
    /// Every pause in force and where it comes from.
    pub pauses: Vec<PauseView>,
    /// With `[cluster]`: how the pause state is shared (absent without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_sync: Option<PauseSync>,
    /// With `[cluster]`: how the shaping state is shared (absent without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shaping_sync: Option<FleetSync>,
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
    /// The limits in force now (configured, times any slowdown).
    pub limits: EffectiveLimits,
    /// The slowdown or suspension in force: its action, factor, remaining time, rule, the reply
    /// that caused it (redacted as the log is) and whether another replica decided it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shaping: Option<ShapingView>,
}

/// A provider's limits in force now, as `/status` shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EffectiveLimits {
    /// `None`: unthrottled.
    pub messages_per_second: Option<f64>,
    pub burst: Option<u32>,
    /// Deliveries in flight at once (0 for a provider without a lane yet and without a cap of
    /// its own: what the upstreams allow).
    pub max_connections: usize,
    /// `None`: the upstream's own limit.
    pub max_deliveries_per_connection: Option<u32>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamStatus {
    pub name: String,
    pub up: bool,
    /// Its own rate, slowdown and daily quota (`schedule/upstream_limits.rs`).
    pub limits: crate::schedule::upstream_limits::LimitsStatus,
    /// The slowdown or suspension in force, as a provider's `shaping`: action, factor,
    /// remaining time, rule, reply (redacted), origin (`local` or `fleet`) and the deciding
    /// replica.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shaping: Option<ShapingView>,
}

/// A pause/resume request named a provider the catalog does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider {0:?}")]
pub struct UnknownProvider(pub String);
