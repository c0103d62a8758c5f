//! The delivery queue. Every pending delivery of a spooled message waits in its provider's
//! [`Lane`]; each lane's dispatcher takes ready deliveries in priority order while it has free
//! slots, and an attempt hands the copy to `schedule/deliver.rs` (render its header, sign,
//! check, send to the first healthy upstream) and records the outcome in the spool.
//!
//! Layout: this file holds the dispatchers, the retry timers and the attempts; `lanes.rs` a
//! provider's lane with its limits; `outcome.rs` the outcome records (spool lines, metrics,
//! logs, bounces); `control.rs` pause, resume and status; `manage.rs` the operator's queue
//! commands (list, show, retry, delete, bounce) and `view.rs` what they show; `hold.rs` the
//! bulk hold; `drain.rs` the drain and hand-off at shutdown; `settings.rs` the reloadable
//! settings.
//!
//! Outcomes: `2xx` delivered; a temporary failure waits (a timer, not a slot) and is retried
//! with backoff until `spool.max_queue_time`, then failed; `5xx` failed at once, never retried.
//! A message leaves the spool when all its deliveries are final.
//!
//! Shaping: each lane paces its provider ([`Throttle`](super::throttle::Throttle), shared across replicas through
//! [`SharedLimits`] with `[cluster]`), caps its concurrency and its deliveries per connection
//! from the provider catalog, and a deferral matching a shaping rule ([`rules`](super::rules))
//! slows the lane down for a while; with `[cluster]` that decision is shared with every replica
//! (`shaping.rs`, [`shaping`](super::shaping)).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::observe::{Metrics, Redactor};
use crate::privacy::Exposure;
use crate::schedule::suppress::Suppressions;
use crate::spool::{AttemptRecord, LogEntry, MessageMeta, Recovered, Spool, unix_now};
use crate::upstream::{Reuse, Upstream};

use super::app_limits::AppLimitsRegistry;
use super::cluster::SharedLimits;
use super::deliver::{self, Copy, Route};
use super::failover::{Policy, UpstreamSlot};
use super::lane::{Lane, Ready};
use super::message::{QueuedMessage, Waiting};
use super::pause::switch::Switch;
use super::routing::Routing;
use super::shaping::fleet::Fleet;
use super::tracking;
use super::upstream_limits::LimitsContext;

mod control;
mod drain;
mod events;
mod hold;
mod lanes;
mod manage;
mod outcome;
mod shaping;
mod suppressed;
pub use control::{
    EffectiveLimits, PauseError, PauseSync, PauseView, ProviderStatus, QueueStatus,
    UnknownProvider, UpstreamStatus,
};
pub use drain::{DrainReport, in_flight_allowance};
pub use shaping::{ClearError, ClearTarget, Cleared};
mod settings;
pub use settings::SchedulerConfig;
pub mod view;
pub use hold::{HeldMessage, HoldError, choose_canaries};
pub use manage::{ManageError, Removal, RetryTarget};
use settings::Settings;

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
    /// All deliveries paused now: the global pause, or waiting for the cluster's pause state
    /// at start (what the dispatchers read; see `control.rs`).
    paused: AtomicBool,
    /// The kill switch: pauses recorded in the spool and shared through `[cluster]`.
    pauses: Switch,
    /// The pause state last applied to the lanes, by key, to see what a change resumed.
    applied_pauses: std::sync::Mutex<std::collections::BTreeMap<String, bool>>,
    seq: AtomicU64,
    metrics: Metrics,
    redactor: Redactor,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    /// The shared Redis of `[cluster]` (fixed for the process' life).
    cluster: Option<Arc<SharedLimits>>,
    /// With `[cluster]`: shaping decisions shared with the other replicas (`shaping.rs`).
    fleet: Option<Arc<Fleet>>,
    /// What each upstream's own limits are built with (`upstream/limits.rs`).
    limits: LimitsContext,
    /// Each app's rate and daily quota (asked by the listener at MAIL and RCPT).
    app_limits: Arc<AppLimitsRegistry>,
    suppressions: Arc<Suppressions>,
    events: Arc<crate::events::Events>,
    /// Messages under a bulk hold ([`hold`]).
    holds: hold::Holds,
    /// Cancelled when the hand-off to `spool.handoff_upstream` starts ([`drain`]): throttles
    /// are no longer awaited and copies waiting for a retry are due at once.
    handoff: CancellationToken,
    /// The upstream every attempt goes to once the hand-off started.
    handoff_slot: RwLock<Option<Arc<UpstreamSlot>>>,
    /// Every message with deliveries not yet final, by queue id (for `queue list/show`,
    /// `retry`, `delete`, `bounce`: [`manage`]).
    messages: Mutex<HashMap<String, Arc<QueuedMessage>>>,
    /// Recent matches of shaping rules with a threshold, per rule and lane (or upstream); with
    /// `[cluster]` also counted across the fleet.
    thresholds: crate::schedule::rules::Thresholds,
}

impl Scheduler {
    /// Where copies go and in whose name, as configured now (see [`Routing`]). The relay reads
    /// it when a message's DATA ends; a reload replaces it with the rest of the settings.
    pub fn routing(&self) -> Arc<Routing> {
        self.inner
            .settings
            .read()
            .expect("not poisoned")
            .routing
            .clone()
    }

    pub fn new(
        spool: Arc<Spool>,
        upstreams: Vec<Upstream>,
        config: SchedulerConfig<'_>,
        cluster: Option<&ClusterConfig>,
        metrics: Metrics,
        redactor: Redactor,
        suppressions: Arc<Suppressions>,
    ) -> Scheduler {
        for u in &upstreams {
            metrics.upstream_up.with_label_values(&[&u.name]).set(1);
        }
        let shutdown = CancellationToken::new();
        let cluster = cluster
            .map(|c| SharedLimits::start(c, metrics.enable_cluster(), shutdown.child_token()));
        let limits = LimitsContext {
            metrics: metrics.clone(),
            cluster: cluster.clone(),
            spool_root: Some(spool.root().to_path_buf()),
        };
        let slots = UpstreamSlot::build_all(upstreams, config.upstreams, &[], &limits);
        let holds = hold::Holds::new(config.hold);
        suppressions.set_hard_bounces(config.apps.suppress_hard_bounces);
        let key = spool.redaction_key().unwrap_or_else(|_| rand::random());
        let events =
            crate::events::Events::new(spool.root(), key, metrics.clone(), shutdown.child_token());
        events.configure(config.apps);
        if let Some(c) = &cluster {
            suppressions
                .clone()
                .attach(c.clone(), shutdown.child_token());
        }
        let app_limits = Arc::new(AppLimitsRegistry::new(limits.clone(), config.apps));
        let settings = Settings::new(config);
        // Before anything is queued: a pause in force when the relay stopped holds from the
        // first recovered copy on.
        let pauses = Switch::restore(spool.root(), cluster.clone());
        let fleet = cluster
            .clone()
            .map(|c| Arc::new(Fleet::new(c, super::pause::replica_name())));
        let scheduler = Scheduler {
            inner: Arc::new(Inner {
                spool,
                upstreams: RwLock::new(Arc::new(slots)),
                settings: RwLock::new(settings),
                lanes: RwLock::new(HashMap::new()),
                paused: AtomicBool::new(false),
                pauses,
                applied_pauses: Default::default(),
                seq: AtomicU64::new(0),
                metrics,
                redactor,
                tracker: TaskTracker::new(),
                shutdown,
                cluster: cluster.clone(),
                fleet,
                limits,
                app_limits,
                suppressions,
                events,
                holds,
                handoff: CancellationToken::new(),
                handoff_slot: RwLock::new(None),
                messages: Mutex::new(HashMap::new()),
                thresholds: crate::schedule::rules::Thresholds::new(cluster),
            }),
        };
        scheduler.inner.warn_if_tls_missing();
        scheduler.inner.apply_pauses();
        scheduler.inner.clone().spawn_pause_sync();
        scheduler.inner.clone().spawn_shaping_sync();
        scheduler
    }

    /// Queues a message the relay just accepted, with the privacy facts it was planned with.
    pub fn enqueue_checked(&self, meta: MessageMeta, bytes: Arc<Vec<u8>>, exposure: Arc<Exposure>) {
        self.enqueue_message(meta, Some(bytes), Some(exposure), &[], &[]);
    }

    /// Queues a message's pending deliveries (`log`: its outcomes so far, from recovery).
    pub fn enqueue(&self, meta: MessageMeta, bytes: Option<Arc<Vec<u8>>>, log: &[LogEntry]) {
        self.enqueue_message(meta, bytes, None, log, &[]);
    }

    /// Queues a message found in the spool at start, with its outcomes and attempts so far
    /// (so the attempt count and the backoff go on where they were).
    pub fn enqueue_recovered(&self, recovered: Recovered) {
        let Recovered {
            meta,
            log,
            attempts,
        } = recovered;
        self.enqueue_message(meta, None, None, &log, &attempts);
    }

    /// Queues every delivery of `meta` that `log` does not show as final. `bytes` are the message
    /// bytes when the caller has them (just accepted), saving a read.
    fn enqueue_message(
        &self,
        meta: MessageMeta,
        bytes: Option<Arc<Vec<u8>>>,
        exposure: Option<Arc<Exposure>>,
        log: &[LogEntry],
        attempts: &[AttemptRecord],
    ) {
        let now = unix_now();
        let tracks = tracking::from_spool(&meta, log, attempts, now);
        let mut pending: Vec<(usize, u64)> = Vec::new();
        let mut failed = Vec::new();
        for index in 0..meta.deliveries.len() {
            let (mut due, mut done) = (now, false);
            for entry in log.iter().filter(|e| e.index() == index) {
                match *entry {
                    LogEntry::Delivered { .. }
                    | LogEntry::HandedOff { .. }
                    | LogEntry::Suppressed { .. } => done = true,
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
        let message = Arc::new(QueuedMessage::new(
            meta, bytes, exposure, remaining, failed, tracks,
        ));
        if remaining > 0 {
            self.inner
                .messages
                .lock()
                .expect("not poisoned")
                .insert(message.meta.id.clone(), message.clone());
        }
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
}

impl Inner {
    fn upstreams(&self) -> Arc<Vec<Arc<UpstreamSlot>>> {
        self.upstreams.read().expect("not poisoned").clone()
    }

    /// The configured upstream named `name` (also the hand-off one), if it is still configured.
    fn upstream_slot(&self, name: &str) -> Option<Arc<UpstreamSlot>> {
        let handoff = self.handoff_slot.read().expect("not poisoned").clone();
        self.upstreams()
            .iter()
            .chain(handoff.as_ref())
            .find(|s| s.name() == name)
            .cloned()
    }

    /// The upstreams a copy is sent to: during the hand-off only `spool.handoff_upstream`
    /// (`true`: the attempt is a hand-off); otherwise every upstream but that one, which is
    /// reserved for the hand-off (unless it is the only one).
    fn route_upstreams(&self) -> (Arc<Vec<Arc<UpstreamSlot>>>, bool) {
        if let Some(slot) = self.handoff_slot.read().expect("not poisoned").clone() {
            return (Arc::new(vec![slot]), true);
        }
        let all = self.upstreams();
        let reserved = self
            .settings
            .read()
            .expect("not poisoned")
            .retry
            .handoff_upstream
            .clone();
        match reserved {
            Some(name) if all.iter().any(|s| s.name() != name) => (
                Arc::new(all.iter().filter(|s| s.name() != name).cloned().collect()),
                false,
            ),
            _ => (all, false),
        }
    }

    /// A lane's dispatcher: takes ready deliveries while it has slots and is not paused.
    async fn dispatch(self: Arc<Self>, lane: Arc<Lane>) {
        loop {
            let next = tokio::select! {
                n = lane.next(&self.paused, &self.handoff) => n,
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
        if !message.set_waiting(index, (due > now).then_some(due)) {
            return;
        }
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
            attempts: message.attempts(index),
        };
        if due <= now {
            self.make_ready(&lane, item);
        } else {
            self.retry_later(lane, item, Duration::from_secs(due - now));
        }
    }

    /// Puts a due delivery into its lane, unless an operator deleted or bounced it meanwhile.
    fn make_ready(&self, lane: &Lane, mut item: Ready) {
        if !item.message.mark_ready(item.index) {
            return;
        }
        item.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        item.message.active.fetch_add(1, Ordering::Relaxed);
        lane.push(item);
    }

    /// Waits `delay` on a timer (holding no slot and no message bytes), then makes it ready;
    /// sooner when an operator asks for a retry now or resumes its provider, never when they
    /// deleted or bounced it. When the hand-off starts, it is ready at once; during the
    /// hand-off a failed attempt waits at most [`drain::HANDOFF_RETRY`].
    fn retry_later(self: &Arc<Self>, lane: Arc<Lane>, item: Ready, delay: Duration) {
        let inner = self.clone();
        let handing_off = self.handoff.is_cancelled();
        let delay = if handing_off {
            delay.min(drain::HANDOFF_RETRY)
        } else {
            delay
        };
        lane.waiting.fetch_add(1, Ordering::Relaxed);
        self.tracker.spawn(async move {
            let deadline = tokio::time::Instant::now() + delay;
            let message = item.message.clone();
            loop {
                // Registered before the look, so a wake between the two is not missed.
                let woken = message.wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                match message.waiting(item.index) {
                    Waiting::Wait => {}
                    Waiting::Due => break,
                    Waiting::Gone => {
                        lane.waiting.fetch_sub(1, Ordering::Relaxed);
                        return;
                    }
                }
                tokio::select! {
                    biased;
                    // Shutdown: the delivery stays spooled (and counted as waiting in the report).
                    _ = inner.shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => break,
                    // A resume of this provider or of all deliveries.
                    _ = lane.due_now_signal() => break,
                    _ = inner.handoff.cancelled(), if !handing_off => break,
                    _ = &mut woken => {}
                }
            }
            lane.waiting.fetch_sub(1, Ordering::Relaxed);
            inner.make_ready(&lane, item);
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
                let next = unix_now() + delay.as_secs();
                if message.set_waiting(item.index, Some(next)) {
                    self.retry_later(lane.clone(), item, delay);
                }
                return;
            }
        };
        let rcpt_to = match self.screen(lane, &message, item.index) {
            suppressed::Screen::Send(rcpt_to) => rcpt_to,
            suppressed::Screen::Suppressed => return,
        };
        if !message.begin_attempt(item.index, unix_now()) {
            // Deleted or bounced by an operator since it was queued: nothing goes out.
            message.active.fetch_sub(1, Ordering::Relaxed);
            message.release_if_idle();
            return;
        }
        item.attempts += 1;
        let started = Instant::now();
        let privacy = || self.settings.read().expect("not poisoned").privacy.clone();
        let exposure = message.exposure(privacy, &bytes).await;
        let copy = Copy {
            meta: &message.meta,
            index: item.index,
            clean: message.is_clean(&bytes),
            rcpt_to,
            bytes,
            exposure: &exposure,
        };
        let (slots, handoff) = self.route_upstreams();
        let (dkim, cool_off, limits, rules) = {
            let settings = self.settings.read().expect("not poisoned");
            (
                settings.dkim.clone(),
                settings.retry.upstream_cool_off,
                settings.routing.catalog.limits(&lane.name),
                settings.rules.clone(),
            )
        };
        // A provider that requires TLS: only upstreams with TLS on (none: the copy is deferred).
        let slots = if limits.require_tls && !slots.iter().all(|s| s.upstream.is_encrypted()) {
            let encrypted = slots.iter().filter(|s| s.upstream.is_encrypted());
            let encrypted: Vec<_> = encrypted.cloned().collect();
            if encrypted.is_empty() {
                tracing::warn!(queue_id = %message.meta.id, delivery = item.index, provider = %lane.name,
                    "provider requires TLS (require_tls) and no upstream has TLS on; copy deferred, not sent in plaintext");
            }
            Arc::new(encrypted)
        } else {
            slots
        };
        // A `set` rule in force may have lowered the deliveries per connection.
        let max_transactions = [
            limits.max_deliveries_per_connection,
            lane.throttle.set_limits().max_deliveries_per_connection,
        ]
        .into_iter()
        .flatten()
        .min();
        let route = Route {
            upstreams: &slots,
            reuse: Reuse {
                provider: &lane.name,
                max_transactions,
                require_tls: limits.require_tls,
            },
            policy: Policy {
                cool_off,
                paced: !handoff,
            },
            dkim: &dkim,
            metrics: &self.metrics,
            rules: &rules,
        };
        let sent = deliver::deliver(copy, route).await;
        self.conclude(lane, item, sent, started, handoff);
    }
}
