//! Delivery events per app (`[app.events]`, docs/apps.md "Delivery events"): what happened to
//! each of its messages, as JSON lines in its outbox (`outbox.rs`) and, with a webhook, POSTed
//! signed (`webhook.rs`).
//!
//! Events are emitted where the thing happens, *before* the spool records it: `queued` (and
//! `privacy` when the policy changed the message) before the `250`, `delivered`, `deferred`,
//! `failed`, `suppressed` before the outcome line, `bounced` when the DSN is queued, `held`,
//! `released`, `dropped` with the bulk hold's record. Each event has an id made from what it
//! reports (`<queue id>.<delivery>.<type>[.<attempt>]`), so an event sent twice (a webhook batch
//! resent after a crash, a copy sent again after a torn outcome line) has one id.
//!
//! Messages of apps without `[app.events]`, and of no app, emit nothing: the cost is one map
//! lookup.

pub mod outbox;
pub mod webhook;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{AppEventsConfig, AppsConfig, EventAddresses};
use crate::observe::{Metrics, Redactor};
use outbox::{Cursor, Outbox};

/// Every event type, in the order a message's events come.
pub const EVENT_TYPES: [&str; 10] = [
    "queued",
    "privacy",
    "held",
    "released",
    "dropped",
    "deferred",
    "delivered",
    "failed",
    "bounced",
    "suppressed",
];

/// How many recent events `/status` shows per app.
const RECENT: usize = 5;

/// One event as written (the `recipients` already in the app's address form).
#[derive(Debug, Clone, Serialize)]
pub struct Event<'a> {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub timestamp: String,
    pub app: &'a str,
    pub queue_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// `queued`/`privacy`: the policy's decision and the number of copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copies: Option<usize>,
}

/// What a caller knows about an event; [`Events::emit`] turns it into an [`Event`].
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub delivery: Option<usize>,
    pub provider: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub recipients: &'a [String],
    pub code: Option<u16>,
    pub reply: Option<&'a str>,
    pub next_attempt_at: Option<u64>,
    pub attempt: Option<u32>,
    pub decision: Option<&'a str>,
    pub copies: Option<usize>,
}

/// One app's outbox, webhook state and figures.
pub struct AppEvents {
    pub name: String,
    config: RwLock<AppEventsConfig>,
    pub outbox: Arc<Outbox>,
    appended: Notify,
    stop: CancellationToken,
    metrics: Metrics,
    backlog: AtomicU64,
    recent: Mutex<VecDeque<(&'static str, String)>>,
    webhook: Mutex<WebhookState>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct WebhookState {
    last_ok_at: Option<String>,
    last_error_at: Option<String>,
    last_error: Option<String>,
}

impl AppEvents {
    fn config(&self) -> AppEventsConfig {
        self.config.read().expect("not poisoned").clone()
    }

    fn set_backlog(&self, n: u64) {
        self.backlog.store(n, Ordering::Relaxed);
        self.metrics
            .event_backlog
            .with_label_values(&[&self.name])
            .set(n as i64);
    }

    fn delivered(&self, n: u64) {
        let left = self.backlog.load(Ordering::Relaxed).saturating_sub(n);
        self.set_backlog(left);
        self.metrics
            .event_webhook_deliveries
            .with_label_values(&[&self.name, "ok"])
            .inc();
        self.webhook.lock().expect("not poisoned").last_ok_at = Some(now_text());
    }

    fn failed(&self, error: &str) {
        self.metrics
            .event_webhook_deliveries
            .with_label_values(&[&self.name, "failed"])
            .inc();
        let mut w = self.webhook.lock().expect("not poisoned");
        if w.last_error.as_deref() != Some(error) {
            tracing::warn!(app = %self.name, %error, "event webhook failed; retrying with backoff (events wait in the outbox)");
        }
        w.last_error_at = Some(now_text());
        w.last_error = Some(error.to_string());
    }

    /// Over `max` bytes waiting: skips the oldest whole files until under it.
    fn bound_backlog(&self, mut cursor: Cursor, max: u64) -> Cursor {
        while self.outbox.backlog_bytes(cursor) > max && cursor.seq < self.outbox.head().0 {
            let next = Cursor {
                seq: cursor.seq + 1,
                offset: 0,
            };
            let dropped = self.outbox.count_from(cursor) - self.outbox.count_from(next);
            self.metrics
                .events_dropped
                .with_label_values(&[&self.name])
                .inc_by(dropped);
            tracing::warn!(app = %self.name, dropped, max_backlog_bytes = max,
                "event backlog over max_backlog_bytes: the oldest events are not sent to the webhook");
            let left = self.backlog.load(Ordering::Relaxed).saturating_sub(dropped);
            self.set_backlog(left);
            cursor = next;
            let _ = self.outbox.store_cursor(cursor);
        }
        cursor
    }

    /// What `/status` shows of this app's events.
    pub fn status(&self) -> serde_json::Value {
        let webhook = self.webhook.lock().expect("not poisoned").clone();
        let recent: Vec<serde_json::Value> = self
            .recent
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(t, at)| serde_json::json!({"type": t, "timestamp": at}))
            .collect();
        let config = self.config();
        serde_json::json!({
            "webhook": config.webhook_url.is_some(),
            "backlog": config.webhook_url.as_ref().map(|_| self.backlog.load(Ordering::Relaxed)),
            "webhook_last_ok_at": webhook.last_ok_at,
            "webhook_last_error_at": webhook.last_error_at,
            "webhook_last_error": webhook.last_error,
            "recent": recent,
        })
    }
}

fn now_text() -> String {
    rfc3339(crate::spool::unix_now())
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// Every app's events: built at start, updated on reload.
pub struct Events {
    root: PathBuf,
    metrics: Metrics,
    /// Redacts addresses for `addresses = "redacted"` (never shows them, whatever the logs do).
    redactor: Redactor,
    key: [u8; 32],
    apps: RwLock<HashMap<String, Arc<AppEvents>>>,
    /// Every configured app's name.
    configured: RwLock<std::collections::HashSet<String>>,
    shutdown: CancellationToken,
}

impl Events {
    /// Outboxes under `spool_root/events`; `key` is the spool's redaction key.
    pub fn new(
        spool_root: &std::path::Path,
        key: [u8; 32],
        metrics: Metrics,
        shutdown: CancellationToken,
    ) -> Arc<Events> {
        let events = Arc::new(Events {
            root: spool_root.join("events"),
            metrics,
            redactor: Redactor::new(false, key),
            key,
            apps: RwLock::new(HashMap::new()),
            configured: RwLock::new(Default::default()),
            shutdown,
        });
        events.clone().spawn_sync();
        events
    }

    /// The apps of a (reloaded) config: outboxes opened, webhooks started or stopped.
    pub fn configure(&self, apps: &AppsConfig) {
        *self.configured.write().expect("not poisoned") =
            apps.apps.iter().map(|a| a.name.clone()).collect();
        let mut map = self.apps.write().expect("not poisoned");
        let mut next = HashMap::new();
        for app in &apps.apps {
            let Some(config) = &app.events else { continue };
            let existing = map.remove(&app.name);
            let entry = match existing {
                Some(e) => {
                    let had_webhook = e.config().webhook_url.is_some();
                    *e.config.write().expect("not poisoned") = config.clone();
                    e.outbox.set_max_file_bytes(config.max_file_bytes);
                    if config.webhook_url.is_some() && !had_webhook {
                        tokio::spawn(webhook::run(e.clone()));
                    }
                    e
                }
                None => match Outbox::open(self.root.join(&app.name), config.max_file_bytes) {
                    Ok(outbox) => {
                        let e = Arc::new(AppEvents {
                            name: app.name.clone(),
                            config: RwLock::new(config.clone()),
                            outbox: Arc::new(outbox),
                            appended: Notify::new(),
                            stop: self.shutdown.child_token(),
                            metrics: self.metrics.clone(),
                            backlog: AtomicU64::new(0),
                            recent: Mutex::new(VecDeque::new()),
                            webhook: Mutex::new(WebhookState::default()),
                        });
                        for t in EVENT_TYPES {
                            self.metrics.events.with_label_values(&[&app.name, t]);
                        }
                        if config.webhook_url.is_some() {
                            tokio::spawn(webhook::run(e.clone()));
                        }
                        e
                    }
                    Err(err) => {
                        tracing::error!(app = %app.name, error = %err, "cannot open the app's event outbox; its events are not recorded");
                        continue;
                    }
                },
            };
            next.insert(app.name.clone(), entry);
        }
        for (_, gone) in map.drain() {
            gone.stop.cancel();
        }
        *map = next;
    }

    /// Whether `app` is a configured app (with or without events).
    pub fn knows(&self, app: &str) -> bool {
        self.configured.read().expect("not poisoned").contains(app)
    }

    /// The app's events, if it records any.
    pub fn app(&self, name: &str) -> Option<Arc<AppEvents>> {
        self.apps.read().expect("not poisoned").get(name).cloned()
    }

    /// Writes one event of `app` about message `queue_id` (nothing when the app records none).
    pub fn emit(&self, app: Option<&str>, queue_id: &str, kind: &'static str, facts: Facts<'_>) {
        let Some(app) = app.and_then(|a| self.app(a)) else {
            return;
        };
        let config = app.config();
        let at = crate::spool::unix_now();
        let mut id = queue_id.to_string();
        if let Some(k) = facts.delivery {
            id.push_str(&format!(".{k}"));
        }
        id.push('.');
        id.push_str(kind);
        if let Some(n) = facts.attempt.filter(|_| kind == "deferred") {
            id.push_str(&format!(".{n}"));
        }
        let recipients = facts
            .recipients
            .iter()
            .map(|r| match config.addresses {
                EventAddresses::Full => r.clone(),
                EventAddresses::Redacted => self.redactor.addr(r).to_string(),
                EventAddresses::Hashed => {
                    blake3::keyed_hash(&self.key, crate::privacy::address::key(r).as_bytes())
                        .to_hex()[..32]
                        .to_string()
                }
            })
            .collect();
        let reply = facts.reply.map(|r| match config.addresses {
            EventAddresses::Full => r.to_string(),
            _ => self.redactor.text(r).to_string(),
        });
        let event = Event {
            id,
            kind,
            timestamp: rfc3339(at),
            app: &app.name,
            queue_id,
            delivery: facts.delivery,
            provider: facts.provider,
            upstream: facts.upstream,
            recipients,
            code: facts.code,
            reply,
            next_attempt_at: facts.next_attempt_at.map(rfc3339),
            attempt: facts.attempt,
            decision: facts.decision,
            copies: facts.copies,
        };
        let mut line = serde_json::to_vec(&event).expect("serialisable");
        line.push(b'\n');
        if let Err(e) = app.outbox.append(&line) {
            tracing::error!(app = %app.name, %queue_id, error = %e, "cannot write a delivery event");
            return;
        }
        self.metrics
            .events
            .with_label_values(&[&app.name, kind])
            .inc();
        if config.webhook_url.is_some() {
            let n = app.backlog.fetch_add(1, Ordering::Relaxed) + 1;
            self.metrics
                .event_backlog
                .with_label_values(&[&app.name])
                .set(n as i64);
            app.appended.notify_one();
        }
        let mut recent = app.recent.lock().expect("not poisoned");
        if recent.len() == RECENT {
            recent.pop_front();
        }
        recent.push_back((kind, event.timestamp));
    }

    /// The events of a message just stored, before its `250`: `queued` (with the policy's
    /// decision and the number of copies), `privacy` when the policy changed the message
    /// (split, bcc, monitor), `held` when a bulk hold keeps its copies.
    pub fn accepted(&self, meta: &crate::spool::MessageMeta) {
        let app = meta.app.as_deref();
        if app.and_then(|a| self.app(a)).is_none() {
            return;
        }
        let decision = Some(meta.decision.as_str());
        let copies = Some(meta.deliveries.len());
        let facts = |recipients| Facts {
            decision,
            copies,
            recipients,
            ..Facts::default()
        };
        self.emit(app, &meta.id, "queued", facts(&meta.envelope.rcpt_to));
        if meta.decision != crate::privacy::Decision::Pass {
            self.emit(app, &meta.id, "privacy", facts(&[]));
        }
        if let Some(hold) = &meta.hold {
            let held = Facts {
                copies: Some(meta.deliveries.len() - hold.canaries.len()),
                ..Facts::default()
            };
            self.emit(app, &meta.id, "held", held);
        }
    }

    /// Each app's outbox fdatasynced once a second (see `outbox.rs`), until shutdown.
    fn spawn_sync(self: Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = self.shutdown.cancelled() => {}
                }
                let apps: Vec<Arc<AppEvents>> =
                    self.apps.read().expect("not poisoned").values().cloned().collect();
                let synced = tokio::task::spawn_blocking(move || {
                    for app in apps {
                        if let Err(e) = app.outbox.sync() {
                            tracing::warn!(app = %app.name, error = %e, "cannot sync the event outbox");
                        }
                    }
                })
                .await;
                if synced.is_err() || self.shutdown.is_cancelled() {
                    return;
                }
            }
        });
    }
}
