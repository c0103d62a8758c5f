//! The delivery queue. Every pending delivery of a spooled message waits in its provider's
//! [`Lane`]; each lane's dispatcher takes ready deliveries in priority order while it has free
//! slots, and an attempt renders the copy's header, hands it to the first healthy upstream
//! ([`failover`](super::failover)) and records the outcome in the spool.
//!
//! Outcomes: `2xx` delivered; a temporary failure waits (a timer, not a slot) and is retried
//! with backoff until `spool.max_queue_time`, then failed; `5xx` failed at once, never retried.
//! A message leaves the spool when all its deliveries are final.
//!
//! Shaping: each lane paces its provider ([`Throttle`], shared across replicas through
//! [`SharedLimits`] with `[cluster]`), caps its concurrency and its deliveries per connection
//! from the provider catalog, and a deferral matching a shaping rule ([`rules`](super::rules))
//! slows the lane down for a while.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ShapingRule, SpoolConfig, UpstreamKind};
use crate::observe::{Metrics, Redactor};
use crate::privacy::Exposure;
use crate::spool::{LogEntry, MessageMeta, Spool, unix_now};
use crate::upstream::{Reuse, Upstream, UpstreamError};

use super::bounce::{self, Failure};
use super::cluster::SharedLimits;
use super::deliver::{self, Copy, NO_UPSTREAM, Outcome, Route, Sent, Stopped};
use super::failover::UpstreamSlot;
use super::lane::{Lane, Ready};
use super::message::QueuedMessage;
use super::provider::DEFAULT_PROVIDER;
use super::provider::ProviderCatalog;
use super::retry::{backoff, random_jitter};
use super::rules;
use super::throttle::{Rate, Throttle, ThrottleMetrics};

mod hold;
pub use hold::{HeldMessage, HoldError};

/// Hands spooled deliveries to upstreams. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Arc<Spool>,
    upstreams: RwLock<Arc<Vec<Arc<UpstreamSlot>>>>,
    settings: RwLock<Settings>,
    lanes: RwLock<HashMap<String, Arc<Lane>>>,
    paused: AtomicBool,
    seq: AtomicU64,
    metrics: Metrics,
    redactor: Redactor,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// The shared Redis of `[cluster]` (fixed for the process' life).
    cluster: Option<Arc<SharedLimits>>,
    /// Messages under a bulk hold ([`hold`]).
    holds: hold::Holds,
}

/// The reloadable part of the scheduler's configuration.
struct Settings {
    retry: SpoolConfig,
    /// The most connections any one upstream may open: what the `default` lane may use.
    upstream_connections: usize,
    /// For bounces: our name and the lane of the sender they go back to.
    hostname: String,
    catalog: ProviderCatalog,
    /// Shaping rules in matching order.
    rules: Arc<Vec<ShapingRule>>,
    /// DKIM keys (parsed when the config was validated); swapped with the rest on reload.
    dkim: Arc<crate::dkim::Signer>,
    /// For the check before sending a message spooled without its own privacy settings.
    privacy: crate::config::PrivacyConfig,
}

impl Settings {
    fn from_config(config: &Config) -> Settings {
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
            hostname: config.server.hostname.clone(),
            catalog: ProviderCatalog::new(&config.providers),
            rules: Arc::new(rules::for_config(&config.shaping)),
            dkim: Arc::new(crate::dkim::Signer::from_config(&config.dkim)),
            privacy: config.privacy.clone(),
        }
    }
}

impl Scheduler {
    pub fn new(
        spool: Arc<Spool>,
        upstreams: Vec<Upstream>,
        config: &Config,
        metrics: Metrics,
        redactor: Redactor,
    ) -> Scheduler {
        for u in &upstreams {
            metrics.upstream_up.with_label_values(&[&u.name]).set(1);
        }
        let slots = upstreams
            .into_iter()
            .map(|u| Arc::new(UpstreamSlot::new(u)))
            .collect();
        let shutdown = CancellationToken::new();
        let cluster = config
            .cluster
            .as_ref()
            .map(|c| SharedLimits::start(c, metrics.cluster_up.clone(), shutdown.child_token()));
        Scheduler {
            inner: Arc::new(Inner {
                spool,
                upstreams: RwLock::new(Arc::new(slots)),
                settings: RwLock::new(Settings::from_config(config)),
                lanes: RwLock::new(HashMap::new()),
                paused: AtomicBool::new(false),
                seq: AtomicU64::new(0),
                metrics,
                redactor,
                tracker: TaskTracker::new(),
                shutdown,
                cluster,
                holds: hold::Holds::new(config.hold.as_ref()),
            }),
        }
    }

    /// Queues a message the relay just accepted, with the privacy facts it was planned with.
    pub fn enqueue_checked(&self, meta: MessageMeta, bytes: Arc<Vec<u8>>, exposure: Arc<Exposure>) {
        self.enqueue_message(meta, Some(bytes), Some(exposure), &[]);
    }

    /// Queues a message's pending deliveries (`log`: its outcomes so far, from recovery).
    pub fn enqueue(&self, meta: MessageMeta, bytes: Option<Arc<Vec<u8>>>, log: &[LogEntry]) {
        self.enqueue_message(meta, bytes, None, log);
    }

    /// Queues every delivery of `meta` that `log` does not show as final. `bytes` are the message
    /// bytes when the caller has them (just accepted), saving a read.
    fn enqueue_message(
        &self,
        meta: MessageMeta,
        bytes: Option<Arc<Vec<u8>>>,
        exposure: Option<Arc<Exposure>>,
        log: &[LogEntry],
    ) {
        let now = unix_now();
        let mut pending: Vec<(usize, u64)> = Vec::new();
        let mut failed = Vec::new();
        for index in 0..meta.deliveries.len() {
            let (mut due, mut done) = (now, false);
            for entry in log.iter().filter(|e| e.index() == index) {
                match *entry {
                    LogEntry::Delivered { .. } => done = true,
                    LogEntry::Failed { code, .. } => {
                        done = true;
                        failed.push((index, code));
                    }
                    LogEntry::Deferred { next_at, .. } => due = next_at,
                }
            }
            if !done {
                pending.push((index, due));
            }
        }
        // A held message queues only its canaries; the rest wait in `holds` (no lane, no slot).
        let (pending, held) = hold::divide(&meta, pending);
        let remaining = pending.len() + held.len();
        let message = Arc::new(QueuedMessage::new(meta, bytes, exposure, remaining, failed));
        if !held.is_empty() {
            self.inner.hold(&message, held);
        } else if pending.is_empty() {
            self.inner.finish(&message);
            return;
        }
        for (index, due) in pending {
            self.inner.queue_delivery(&message, index, due, now);
        }
        message.release_if_idle();
    }

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

    /// Paused flags, queue depth per provider, upstream health.
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

    /// Applies a reloaded configuration: retry timing, provider limits (rate, burst,
    /// concurrency, deliveries per connection), shaping rules, and the upstreams (new
    /// credentials or TLS files). A slowdown in force keeps running to its end. Deliveries in
    /// flight finish on the upstream they started with; health state carries over for
    /// upstreams with the same name. `[cluster]` changes need a restart.
    pub fn apply_config(&self, config: &Config, upstreams: Vec<Upstream>) {
        *self.inner.settings.write().expect("not poisoned") = Settings::from_config(config);
        let old = self.inner.upstreams();
        let slots: Vec<Arc<UpstreamSlot>> = upstreams
            .into_iter()
            .map(|u| {
                let previous = old.iter().find(|s| s.name() == u.name).map(Arc::as_ref);
                Arc::new(UpstreamSlot::replacing(u, previous))
            })
            .collect();
        for s in &slots {
            self.inner
                .metrics
                .upstream_up
                .with_label_values(&[s.name()])
                .set(i64::from(s.is_up()));
        }
        *self.inner.upstreams.write().expect("not poisoned") = Arc::new(slots);
        self.inner.holds.apply(config.hold.as_ref());
        for lane in self.inner.lanes.read().expect("not poisoned").values() {
            lane.set_concurrency(self.inner.lane_concurrency(&lane.name));
            lane.throttle.set_rate(self.inner.lane_rate(&lane.name));
        }
    }

    /// Stops starting new attempts; deliveries in flight get `grace` to finish. Whatever is not
    /// delivered stays spooled for the next start.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "deliveries still in flight after the grace period; they stay spooled"
            );
        }
    }
}

impl Inner {
    fn upstreams(&self) -> Arc<Vec<Arc<UpstreamSlot>>> {
        self.upstreams.read().expect("not poisoned").clone()
    }

    fn is_known_provider(&self, name: &str) -> bool {
        name == DEFAULT_PROVIDER
            || super::provider::BUILT_IN_NAMES.contains(&name)
            || self
                .settings
                .read()
                .expect("not poisoned")
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
    fn lane_concurrency(&self, provider: &str) -> usize {
        let settings = self.settings.read().expect("not poisoned");
        let total = settings.upstream_connections;
        // Every lane leaves at least one upstream connection for the others, even when its
        // provider's own limit (built-in catalog or config) is higher.
        let all_but_one = total.saturating_sub(1).max(1);
        match settings.catalog.limits(provider).max_connections {
            Some(n) => n.min(all_but_one),
            None if provider == DEFAULT_PROVIDER => all_but_one,
            None => (total / 2).clamp(1, 4),
        }
    }

    /// The configured message rate of a provider (`None`: unthrottled).
    fn lane_rate(&self, provider: &str) -> Option<Rate> {
        let settings = self.settings.read().expect("not poisoned");
        let limits = settings.catalog.limits(provider);
        limits.messages_per_second.map(|per_second| Rate {
            per_second,
            burst: limits.burst,
        })
    }

    /// The lane of `provider`, created with its dispatcher on first use.
    fn lane(self: &Arc<Self>, provider: &str) -> Arc<Lane> {
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

    /// A lane's dispatcher: takes ready deliveries while it has slots and is not paused.
    async fn dispatch(self: Arc<Self>, lane: Arc<Lane>) {
        loop {
            let next = tokio::select! {
                n = lane.next(&self.paused) => n,
                _ = self.shutdown.cancelled() => return,
            };
            let Some((item, permit)) = next else { return };
            let (inner, lane) = (self.clone(), lane.clone());
            self.tracker.spawn(async move {
                inner.attempt(&lane, item).await;
                drop(permit);
            });
        }
    }

    /// Puts delivery `index` of `message` into its provider's lane, ready at `due` (Unix s).
    fn queue_delivery(
        self: &Arc<Self>,
        message: &Arc<QueuedMessage>,
        index: usize,
        due: u64,
        now: u64,
    ) {
        let lane = self.lane(&message.meta.deliveries[index].provider);
        lane.queued.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .queue_messages
            .with_label_values(&[&lane.name])
            .inc();
        let item = Ready {
            class: message.class,
            seq: 0,
            message: message.clone(),
            index,
            attempts: 0,
        };
        if due <= now {
            self.make_ready(&lane, item);
        } else {
            self.retry_later(lane, item, Duration::from_secs(due - now));
        }
    }

    fn make_ready(&self, lane: &Lane, mut item: Ready) {
        item.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        item.message.active.fetch_add(1, Ordering::Relaxed);
        lane.push(item);
    }

    /// Waits `delay` on a timer (holding no slot and no message bytes), then makes it ready.
    fn retry_later(self: &Arc<Self>, lane: Arc<Lane>, item: Ready, delay: Duration) {
        let inner = self.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(delay) => inner.make_ready(&lane, item),
                _ = inner.shutdown.cancelled() => {}
            }
        });
    }

    /// One attempt of a ready delivery: its copy goes out through [`deliver`] and the outcome
    /// is recorded ([`conclude`](Self::conclude)).
    async fn attempt(self: &Arc<Self>, lane: &Arc<Lane>, mut item: Ready) {
        let message = item.message.clone();
        let bytes = match message.bytes(&self.spool).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(queue_id = %message.meta.id, error = %e, "cannot read spooled message; will retry");
                let delay = self
                    .settings
                    .read()
                    .expect("not poisoned")
                    .retry
                    .retry_initial;
                message.active.fetch_sub(1, Ordering::Relaxed);
                self.retry_later(lane.clone(), item, delay);
                return;
            }
        };
        item.attempts += 1;
        let started = Instant::now();
        let privacy = || self.settings.read().expect("not poisoned").privacy.clone();
        let exposure = message.exposure(privacy, &bytes).await;
        let copy = Copy {
            meta: &message.meta,
            index: item.index,
            clean: message.is_clean(&bytes),
            bytes,
            exposure: &exposure,
        };
        let slots = self.upstreams();
        let (dkim, cool_off, max_transactions) = {
            let settings = self.settings.read().expect("not poisoned");
            let limits = settings.catalog.limits(&lane.name);
            let cool_off = settings.retry.upstream_cool_off;
            (
                settings.dkim.clone(),
                cool_off,
                limits.max_deliveries_per_connection,
            )
        };
        let route = Route {
            upstreams: &slots,
            reuse: Reuse {
                provider: &lane.name,
                max_transactions,
            },
            cool_off,
            dkim: &dkim,
            metrics: &self.metrics,
        };
        let sent = deliver::deliver(copy, route).await;
        self.conclude(lane, item, sent, started);
    }

    /// Records what became of an attempt: counted, logged and written to the spool; a
    /// temporary failure waits for its retry ([`defer`](Self::defer)).
    fn conclude(self: &Arc<Self>, lane: &Arc<Lane>, item: Ready, sent: Sent<'_>, started: Instant) {
        let message = item.message.clone();
        let (meta, index, attempts) = (&message.meta, item.index, item.attempts);
        let header = &sent.header;
        let rcpts = self.redactor.list(&meta.deliveries[index].planned.rcpt_to);
        let provider = lane.name.as_str();
        let final_of = |upstream| Final {
            meta,
            index,
            provider,
            upstream,
            rcpts: &rcpts,
            header,
            duration_ms: started.elapsed().as_millis() as u64,
            attempts,
        };
        let (entry, failed_code) = match sent.outcome {
            Outcome::Stopped(stopped) => {
                return self.stop(lane, &message, index, attempts, header, stopped);
            }
            Outcome::Delivered {
                upstream,
                code,
                reply,
            } => {
                let elapsed = started.elapsed();
                self.metrics
                    .deliveries
                    .with_label_values(&[provider, upstream, "delivered"])
                    .inc();
                self.metrics
                    .delivery_duration
                    .with_label_values(&[provider])
                    .observe(elapsed.as_secs_f64());
                tracing::info!(queue_id = %meta.id, delivery = index, %provider, %upstream, rcpt = %rcpts,
                    code, reply = %self.redactor.text(&reply), duration_ms = elapsed.as_millis() as u64, attempts, "delivered");
                let at = unix_now();
                (LogEntry::Delivered { index, at }, None)
            }
            Outcome::Failed { upstream, error } => {
                let code = error.code().unwrap_or(554);
                self.fail(final_of(upstream), code, &error, false)
            }
            Outcome::Deferred { upstream, error } => {
                self.shape(lane, &error);
                match self.defer(lane, item, final_of(upstream), &error) {
                    Some(failed) => failed,
                    None => return,
                }
            }
        };
        message.active.fetch_sub(1, Ordering::Relaxed);
        message.release_if_idle();
        self.record(lane, &message, index, entry, failed_code);
    }

    /// A temporary failure: retried with backoff, or failed for good once the next try would
    /// fall after `spool.max_queue_time` (then its outcome record is returned).
    fn defer(
        self: &Arc<Self>,
        lane: &Arc<Lane>,
        item: Ready,
        f: Final<'_>,
        error: &UpstreamError,
    ) -> Option<(LogEntry, Option<u16>)> {
        let now = unix_now();
        let retry = self.settings.read().expect("not poisoned").retry.clone();
        let delay = backoff(
            item.attempts,
            retry.retry_initial,
            retry.retry_max,
            random_jitter(),
        );
        let next = now + delay.as_secs().max(1);
        if next.saturating_sub(f.meta.received_at) > retry.max_queue_time.as_secs() {
            let code = error.code().unwrap_or(451);
            return Some(self.fail(f, code, error, true));
        }
        let (meta, index, provider, upstream) = (f.meta, f.index, f.provider, f.upstream);
        let (rcpts, attempts) = (f.rcpts, f.attempts);
        self.metrics
            .deliveries
            .with_label_values(&[provider, upstream, "deferred"])
            .inc();
        tracing::info!(queue_id = %meta.id, delivery = index, %provider, %upstream, rcpt = %rcpts,
            code = error.code(), error = %self.redactor.text(error), duration_ms = f.duration_ms, attempts,
            retry_in_secs = delay.as_secs(), "deferred");
        if let Err(e) = self.spool.append(
            &meta.id,
            &[LogEntry::Deferred {
                index,
                next_at: next,
            }],
        ) {
            tracing::error!(queue_id = %meta.id, error = %e, "cannot record deferral; retry time is kept in memory");
        }
        item.message.active.fetch_sub(1, Ordering::Relaxed);
        item.message.release_if_idle();
        self.retry_later(lane.clone(), item, delay);
        None
    }

    /// A copy the check before sending refused. Never expected (the same check passed at end
    /// of DATA); whatever went wrong in between, the copy does not leave: it fails for good,
    /// with a record, an error log line and a count.
    fn stop(
        self: &Arc<Self>,
        lane: &Lane,
        message: &Arc<QueuedMessage>,
        index: usize,
        attempts: u32,
        header: &[u8],
        stopped: Stopped,
    ) {
        let meta = &message.meta;
        tracing::error!(queue_id = %meta.id, delivery = index, provider = %lane.name, error = %stopped,
            "copy stopped by the check before sending; it is failed, not delivered");
        self.metrics
            .privacy_blocked
            .with_label_values(&["field"])
            .inc();
        let rcpts = self.redactor.list(&meta.deliveries[index].planned.rcpt_to);
        let (entry, code) = self.fail(
            Final {
                meta,
                index,
                provider: &lane.name,
                upstream: NO_UPSTREAM,
                rcpts: &rcpts,
                header,
                duration_ms: 0,
                attempts,
            },
            554,
            &stopped,
            false,
        );
        message.active.fetch_sub(1, Ordering::Relaxed);
        message.release_if_idle();
        self.record(lane, message, index, entry, code);
    }

    /// A delivery failed for good (a permanent reply, or `max_queue_time` reached while
    /// deferred): counted, logged once, bounced when configured; returns its outcome record.
    fn fail(
        self: &Arc<Self>,
        f: Final<'_>,
        code: u16,
        error: &dyn std::fmt::Display,
        expired: bool,
    ) -> (LogEntry, Option<u16>) {
        let (meta, index, provider, upstream) = (f.meta, f.index, f.provider, f.upstream);
        self.metrics
            .deliveries
            .with_label_values(&[provider, upstream, "failed"])
            .inc();
        let (rcpt, duration_ms, attempts) = (f.rcpts, f.duration_ms, f.attempts);
        if expired {
            tracing::warn!(queue_id = %meta.id, delivery = index, %provider, %upstream, %rcpt,
                code, error = %self.redactor.text(error), duration_ms, attempts, "failed: max_queue_time reached");
        } else {
            tracing::warn!(queue_id = %meta.id, delivery = index, %provider, %upstream, %rcpt,
                code, error = %self.redactor.text(error), duration_ms, attempts, "failed permanently");
        }
        let diagnostic = error.to_string();
        let failure = Failure {
            code,
            diagnostic: &diagnostic,
            expired,
        };
        self.bounce(meta, index, failure, f.header);
        let entry = LogEntry::Failed {
            index,
            code,
            at: unix_now(),
        };
        (entry, Some(code))
    }

    /// Slows `lane` down when a temporary failure's reply matches a shaping rule.
    fn shape(&self, lane: &Arc<Lane>, error: &crate::upstream::UpstreamError) {
        let Some(reply) = rules::deferral_reply(error) else {
            return;
        };
        let rules = self.settings.read().expect("not poisoned").rules.clone();
        if let Some(rule) = rules::find(&rules, &reply) {
            lane.slow_down(rule.action, rule.duration, &rule.pattern.to_string());
        }
    }

    /// Queues an RFC 3464 bounce to the sender of a failed delivery when `[spool] bounce` is
    /// on; never for the null sender (no bounce loops).
    fn bounce(
        self: &Arc<Self>,
        meta: &MessageMeta,
        index: usize,
        failure: Failure<'_>,
        header: &[u8],
    ) {
        let sender = meta.envelope.mail_from.clone();
        let (hostname, provider) = {
            let settings = self.settings.read().expect("not poisoned");
            if !settings.retry.bounce || sender.is_empty() {
                return;
            }
            (
                settings.hostname.clone(),
                settings.catalog.classify(&sender).to_string(),
            )
        };
        let (dsn, bytes) = bounce::message(&hostname, provider, meta, index, &failure, header);
        let scheduler = Scheduler {
            inner: self.clone(),
        };
        let (spool, original) = (self.spool.clone(), meta.id.clone());
        self.tracker.spawn(async move {
            let bytes = Arc::new(bytes);
            let stored = spool.store_async(&dsn, bytes.clone()).await;
            match stored {
                Ok(()) => {
                    tracing::info!(queue_id = %dsn.id, %original, "bounce queued for the sender");
                    scheduler.enqueue(dsn, Some(bytes), &[]);
                }
                Err(e) => tracing::error!(%original, error = %e, "cannot spool bounce"),
            }
        });
    }

    /// Records a final outcome; completes the message when it was its last delivery.
    fn record(
        &self,
        lane: &Lane,
        message: &Arc<QueuedMessage>,
        index: usize,
        entry: LogEntry,
        failed_code: Option<u16>,
    ) {
        lane.queued.fetch_sub(1, Ordering::Relaxed);
        self.metrics
            .queue_messages
            .with_label_values(&[&lane.name])
            .dec();
        let last = {
            let mut progress = message.progress.lock().expect("not poisoned");
            if let Some(code) = failed_code {
                progress.failed.push((index, code));
            }
            progress.remaining -= 1;
            progress.remaining == 0
        };
        if last {
            self.finish(message);
        } else if let Err(e) = self.spool.append(&message.meta.id, &[entry]) {
            tracing::error!(queue_id = %message.meta.id, error = %e, "cannot record outcome; the copy may be sent again after a restart");
        }
    }

    fn finish(&self, message: &Arc<QueuedMessage>) {
        let failed = message
            .progress
            .lock()
            .expect("not poisoned")
            .failed
            .clone();
        match self.spool.complete(&message.meta, &failed) {
            Ok(()) => {
                self.metrics.spool_bytes.set(self.spool.bytes() as i64);
                tracing::debug!(queue_id = %message.meta.id, "message complete; removed from spool");
            }
            Err(e) => {
                tracing::error!(queue_id = %message.meta.id, error = %e, "cannot remove completed message from spool")
            }
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

/// What [`Inner::fail`] needs to know about the delivery that failed.
struct Final<'a> {
    meta: &'a MessageMeta,
    index: usize,
    provider: &'a str,
    upstream: &'a str,
    rcpts: &'a str,
    header: &'a [u8],
    duration_ms: u64,
    attempts: u32,
}
