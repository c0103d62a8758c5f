//! The delivery queue: every pending delivery of a spooled message becomes a task that waits
//! until it is due, renders its copy's header, hands it to the first healthy upstream (failing
//! over to the next), and records the outcome in the spool.
//!
//! Outcomes: `2xx` delivered; a temporary failure is retried with backoff until
//! `spool.max_queue_time`, then failed; `5xx` failed at once, never retried. A message leaves
//! the spool when all its deliveries are final.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SpoolConfig;
use crate::observe::{Metrics, Redactor};
use crate::privacy;
use crate::spool::{LogEntry, MessageMeta, Spool, unix_now};
use crate::upstream::{Outbound, Upstream, UpstreamError};

use super::retry::{backoff, random_jitter};

/// How long an upstream that failed at connection level is skipped before it is probed again.
const UPSTREAM_COOL_OFF: Duration = Duration::from_secs(30);

/// Hands spooled deliveries to upstreams. Cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    spool: Arc<Spool>,
    upstreams: Vec<UpstreamSlot>,
    retry: SpoolConfig,
    metrics: Metrics,
    redactor: Redactor,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

struct UpstreamSlot {
    upstream: Upstream,
    /// While set and in the future, the upstream is skipped (it failed to connect, TLS, or 421).
    down_until: Mutex<Option<Instant>>,
}

/// A message with deliveries in the queue.
struct QueuedMessage {
    meta: MessageMeta,
    /// The message bytes while some delivery holds them; re-read from the spool otherwise, so a
    /// long queue does not keep every message in memory.
    bytes: Mutex<Weak<Vec<u8>>>,
    state: Mutex<Progress>,
}

struct Progress {
    remaining: usize,
    failed: Vec<(usize, u16)>,
}

impl Scheduler {
    pub fn new(
        spool: Arc<Spool>,
        upstreams: Vec<Upstream>,
        retry: SpoolConfig,
        metrics: Metrics,
        redactor: Redactor,
    ) -> Scheduler {
        for u in &upstreams {
            metrics.upstream_up.with_label_values(&[&u.name]).set(1);
        }
        let upstreams = upstreams
            .into_iter()
            .map(|upstream| UpstreamSlot {
                upstream,
                down_until: Mutex::new(None),
            })
            .collect();
        Scheduler {
            inner: Arc::new(Inner {
                spool,
                upstreams,
                retry,
                metrics,
                redactor,
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Queues every delivery of `meta` that `log` does not show as final. `bytes` are the message
    /// bytes when the caller has them (just accepted), saving a read.
    pub fn enqueue(&self, meta: MessageMeta, bytes: Option<Arc<Vec<u8>>>, log: &[LogEntry]) {
        let now = unix_now();
        let mut pending: Vec<(usize, u64)> = Vec::new();
        let mut failed = Vec::new();
        for index in 0..meta.deliveries.len() {
            let mut due = now;
            let mut done = false;
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
        let message = Arc::new(QueuedMessage {
            bytes: Mutex::new(bytes.as_ref().map(Arc::downgrade).unwrap_or_default()),
            state: Mutex::new(Progress {
                remaining: pending.len(),
                failed,
            }),
            meta,
        });
        if pending.is_empty() {
            self.inner.finish(&message);
            return;
        }
        for (index, due) in pending {
            let provider = &message.meta.deliveries[index].provider;
            self.inner
                .metrics
                .queue_messages
                .with_label_values(&[provider])
                .inc();
            let inner = self.inner.clone();
            let message = message.clone();
            let hot = bytes.clone();
            self.inner
                .tracker
                .spawn(async move { inner.run_delivery(message, index, due, hot).await });
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
    async fn run_delivery(
        self: Arc<Self>,
        message: Arc<QueuedMessage>,
        index: usize,
        due_unix: u64,
        mut hot: Option<Arc<Vec<u8>>>,
    ) {
        let meta = &message.meta;
        let record = &meta.deliveries[index];
        let mut due_unix = due_unix;
        let mut attempts: u32 = 0;
        loop {
            let wait = Duration::from_secs(due_unix.saturating_sub(unix_now()));
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.shutdown.cancelled() => return,
                }
            }
            if self.shutdown.is_cancelled() {
                return;
            }
            let bytes = match hot.take() {
                Some(b) => b,
                None => match self.message_bytes(&message).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(queue_id = %meta.id, error = %e, "cannot read spooled message; will retry");
                        due_unix = unix_now() + self.retry.retry_initial.as_secs().max(1);
                        continue;
                    }
                },
            };
            attempts += 1;
            let started = Instant::now();
            let header = privacy::render_header(&bytes, &record.planned.rewrite);
            let body = &bytes[privacy::body_offset(&bytes)..];
            let outbound = Outbound {
                mail_from: &meta.envelope.mail_from,
                rcpt_to: &record.planned.rcpt_to,
                header: &header,
                body,
            };
            let (upstream, result) = self.send_with_failover(outbound).await;
            drop(bytes);
            let rcpts = self.redactor.list(&record.planned.rcpt_to);
            let provider = record.provider.as_str();
            match result {
                Ok(delivered) => {
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
                        reply = %delivered.reply, duration_ms = elapsed.as_millis() as u64, attempts, "delivered");
                    self.record(
                        &message,
                        index,
                        LogEntry::Delivered {
                            index,
                            at: unix_now(),
                        },
                        None,
                    );
                    return;
                }
                Err(error) if !error.is_temporary() => {
                    let code = error.code().unwrap_or(554);
                    self.metrics
                        .deliveries
                        .with_label_values(&[provider, upstream, "failed"])
                        .inc();
                    tracing::warn!(queue_id = %meta.id, delivery = index, %provider, %upstream, rcpt = %rcpts,
                        code, %error, attempts, "failed permanently");
                    self.record(
                        &message,
                        index,
                        LogEntry::Failed {
                            index,
                            code,
                            at: unix_now(),
                        },
                        Some(code),
                    );
                    return;
                }
                Err(error) => {
                    let now = unix_now();
                    let delay = backoff(
                        attempts,
                        self.retry.retry_initial,
                        self.retry.retry_max,
                        random_jitter(),
                    );
                    let next = now + delay.as_secs().max(1);
                    if next.saturating_sub(meta.received_at) > self.retry.max_queue_time.as_secs() {
                        let code = error.code().unwrap_or(451);
                        self.metrics
                            .deliveries
                            .with_label_values(&[provider, upstream, "failed"])
                            .inc();
                        tracing::warn!(queue_id = %meta.id, delivery = index, %provider, %upstream, rcpt = %rcpts,
                            code, %error, attempts, "failed: max_queue_time reached");
                        self.record(
                            &message,
                            index,
                            LogEntry::Failed {
                                index,
                                code,
                                at: now,
                            },
                            Some(code),
                        );
                        return;
                    }
                    self.metrics
                        .deliveries
                        .with_label_values(&[provider, upstream, "deferred"])
                        .inc();
                    tracing::info!(queue_id = %meta.id, delivery = index, %provider, %upstream, rcpt = %rcpts,
                        %error, attempts, retry_in_secs = delay.as_secs(), "deferred");
                    if let Err(e) = self.spool.append(
                        &meta.id,
                        &[LogEntry::Deferred {
                            index,
                            next_at: next,
                        }],
                    ) {
                        tracing::error!(queue_id = %meta.id, error = %e, "cannot record deferral; retry time is kept in memory");
                    }
                    due_unix = next;
                }
            }
        }
    }

    /// Tries upstreams in order, skipping those cooling off (unless all are), and returns the
    /// name of the one that answered last with its result.
    async fn send_with_failover(
        &self,
        outbound: Outbound<'_>,
    ) -> (&str, Result<crate::upstream::Delivered, UpstreamError>) {
        let now = Instant::now();
        let healthy: Vec<&UpstreamSlot> = self
            .upstreams
            .iter()
            .filter(|s| !s.is_cooling_off(now))
            .collect();
        let candidates: Vec<&UpstreamSlot> = if healthy.is_empty() {
            self.upstreams.iter().collect()
        } else {
            healthy
        };
        let mut last = None;
        for slot in candidates {
            let result = slot.upstream.send(outbound).await;
            let name = slot.upstream.name.as_str();
            match &result {
                Ok(_) => {
                    slot.mark_up(&self.metrics);
                    return (name, result);
                }
                Err(e) if is_upstream_fault(e) => {
                    slot.mark_down(&self.metrics, e);
                    last = Some((name, result));
                }
                Err(_) => {
                    // The upstream works; the reply is about this message or recipient.
                    slot.mark_up(&self.metrics);
                    return (name, result);
                }
            }
        }
        last.expect("at least one upstream is configured")
    }

    async fn message_bytes(
        &self,
        message: &Arc<QueuedMessage>,
    ) -> Result<Arc<Vec<u8>>, crate::spool::SpoolError> {
        if let Some(bytes) = message.bytes.lock().expect("not poisoned").upgrade() {
            return Ok(bytes);
        }
        let spool = self.spool.clone();
        let id = message.meta.id.clone();
        let bytes = Arc::new(
            tokio::task::spawn_blocking(move || spool.read_message(&id))
                .await
                .expect("spool read task does not panic")?,
        );
        *message.bytes.lock().expect("not poisoned") = Arc::downgrade(&bytes);
        Ok(bytes)
    }

    /// Records a final outcome; completes the message when it was the last delivery.
    fn record(
        &self,
        message: &Arc<QueuedMessage>,
        index: usize,
        entry: LogEntry,
        failed_code: Option<u16>,
    ) {
        let provider = &message.meta.deliveries[index].provider;
        self.metrics
            .queue_messages
            .with_label_values(&[provider])
            .dec();
        let last = {
            let mut state = message.state.lock().expect("not poisoned");
            if let Some(code) = failed_code {
                state.failed.push((index, code));
            }
            state.remaining -= 1;
            state.remaining == 0
        };
        if last {
            self.finish(message);
        } else if let Err(e) = self.spool.append(&message.meta.id, &[entry]) {
            tracing::error!(queue_id = %message.meta.id, error = %e, "cannot record outcome; the copy may be sent again after a restart");
        }
    }

    fn finish(&self, message: &Arc<QueuedMessage>) {
        let failed = message.state.lock().expect("not poisoned").failed.clone();
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

impl UpstreamSlot {
    fn is_cooling_off(&self, now: Instant) -> bool {
        matches!(*self.down_until.lock().expect("not poisoned"), Some(t) if t > now)
    }

    fn mark_up(&self, metrics: &Metrics) {
        let mut down = self.down_until.lock().expect("not poisoned");
        if down.take().is_some() {
            tracing::info!(upstream = %self.upstream.name, "upstream is back");
        }
        metrics
            .upstream_up
            .with_label_values(&[&self.upstream.name])
            .set(1);
    }

    fn mark_down(&self, metrics: &Metrics, error: &UpstreamError) {
        let mut down = self.down_until.lock().expect("not poisoned");
        if down.is_none() {
            tracing::warn!(upstream = %self.upstream.name, %error, cool_off_secs = UPSTREAM_COOL_OFF.as_secs(), "upstream failing; skipping it for a while");
        }
        *down = Some(Instant::now() + UPSTREAM_COOL_OFF);
        metrics
            .upstream_up
            .with_label_values(&[&self.upstream.name])
            .set(0);
    }
}

/// A failure of the upstream itself (cannot connect, TLS, timeout, `421` service closing) rather
/// than an answer about this message: the next upstream is tried.
fn is_upstream_fault(e: &UpstreamError) -> bool {
    match e.code() {
        None => e.is_temporary(),
        Some(code) => code == 421,
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

impl Scheduler {
    /// Stops starting deliveries (all, or one provider's); copies in flight finish. Inbound keeps
    /// accepting and spooling.
    pub fn pause(&self, provider: Option<&str>) -> Result<(), UnknownProvider> {
        let _ = provider;
        unimplemented!("lanes")
    }

    /// Undoes [`pause`](Self::pause).
    pub fn resume(&self, provider: Option<&str>) -> Result<(), UnknownProvider> {
        let _ = provider;
        unimplemented!("lanes")
    }

    /// Paused flags, queue depth per provider, upstream health.
    pub fn status(&self) -> QueueStatus {
        unimplemented!("lanes")
    }
}
