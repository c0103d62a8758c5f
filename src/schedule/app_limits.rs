//! Each app's own limits (`[app.limits]`): its message rate, checked at MAIL, and its daily
//! recipient quota, reserved at each RCPT. Both are the relay's existing counters: the rate is
//! a [`Throttle`] (GCRA, shared through Redis with `[cluster]` under
//! `mailveil:throttle:app:<name>`), the quota a [`DailyQuota`] (Redis with `[cluster]`, else a
//! file in the spool).
//!
//! Why at MAIL and RCPT, not at delivery: an app over its share is told at once with a `452`
//! and keeps its message (nothing accepted then held for a day, nothing lost); and another app
//! is never slowed by it. A recipient's reservation is a [`Reserved`] held by the open
//! transaction: it is given back unless the message is accepted (`250` after DATA), whatever
//! ends the transaction otherwise (RSET, QUIT, a dropped connection, a rejected message).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use super::quota::{DailyQuota, QuotaOwner, Reservation, Ticket};
use super::throttle::{Rate, Throttle, ThrottleMetrics};
use super::upstream_limits::LimitsContext;
use crate::config::{AppLimitsConfig, AppsConfig, DailyLimit, QuotaReset, QuotaUnit};
use crate::reply::Reply;

/// With `[cluster]` the rate is asked of Redis: MAIL waits at least this long for its answer
/// even when `max_wait` is 0 (the local share decides when Redis is slower).
const SHARED_ANSWER: Duration = Duration::from_millis(300);

/// One app's limits. Kept across reloads (the day's count goes on).
pub struct AppLimits {
    name: String,
    config: Mutex<AppLimitsConfig>,
    pacing: Throttle,
    quota: Arc<DailyQuota>,
    clustered: bool,
    ctx: LimitsContext,
}

fn rate(config: &AppLimitsConfig) -> Option<Rate> {
    config.messages_per_second.map(|r| Rate {
        per_second: r.get(),
        burst: config.burst.max(1),
    })
}

fn daily(config: &AppLimitsConfig) -> Vec<DailyLimit> {
    config
        .recipients_per_day
        .map(|limit| DailyLimit {
            unit: QuotaUnit::Recipients,
            limit,
        })
        .into_iter()
        .collect()
}

/// A recipient counted against its app's quota: given back when dropped, unless [`kept`].
///
/// [`kept`]: Reserved::keep
pub struct Reserved {
    quota: Arc<DailyQuota>,
    ticket: Option<Ticket>,
}

impl std::fmt::Debug for Reserved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reserved")
            .field("held", &self.ticket.is_some())
            .finish()
    }
}

impl std::fmt::Debug for AppLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppLimits")
            .field("app", &self.name)
            .finish()
    }
}

impl Reserved {
    /// The message was accepted: the recipient stays counted.
    pub fn keep(mut self) {
        self.ticket = None;
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let quota = self.quota.clone();
        // Dropped by a session task (RSET, QUIT, a rejected message, a closed connection):
        // the release may ask Redis, so it runs on its own task.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { quota.release(ticket).await });
        }
    }
}

/// What `/status` shows of one app's limits.
#[derive(Debug, Clone, Serialize)]
pub struct AppLimitsStatus {
    pub app: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages_per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients_per_day: Option<u64>,
    /// Recipients counted this quota day (the cluster's count with `[cluster]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients_used: Option<u64>,
    /// The next reset, RFC 3339 in the reset's own offset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_reset_at: Option<String>,
    /// The quota is spent until the reset.
    pub quota_spent: bool,
}

impl AppLimits {
    fn new(name: &str, config: &AppLimitsConfig, ctx: &LimitsContext) -> Arc<AppLimits> {
        let metrics = ThrottleMetrics {
            delays: ctx.metrics.app_rate_waits.with_label_values(&[name]),
            // Apps are never slowed down by a reply: a gauge of its own, not exported.
            slowed: prometheus::IntGauge::new("mailveil_app_slowed", "unused").expect("valid"),
        };
        // The Redis key's name: app names are [a-z0-9_-], never ':'.
        let pacing = Throttle::new(
            &format!("app:{name}"),
            rate(config),
            metrics,
            ctx.cluster.clone(),
        );
        let quota = DailyQuota::new(
            QuotaOwner::App(name.to_string()),
            daily(config),
            config.quota_reset,
            ctx.cluster.clone(),
            ctx.spool_root.as_deref(),
            ctx.metrics.clone(),
        );
        Arc::new(AppLimits {
            name: name.to_string(),
            config: Mutex::new(config.clone()),
            pacing,
            quota,
            clustered: ctx.cluster.is_some(),
            ctx: ctx.clone(),
        })
    }

    fn reconfigure(&self, config: &AppLimitsConfig) {
        self.pacing.set_rate(rate(config));
        self.quota.reconfigure(daily(config), config.quota_reset);
        *self.config.lock().expect("not poisoned") = config.clone();
    }

    fn config(&self) -> AppLimitsConfig {
        self.config.lock().expect("not poisoned").clone()
    }

    /// A new message of this app (at MAIL): waits up to `max_wait` for its rate, else the
    /// `452 4.7.1` to answer.
    pub async fn admit_message(&self) -> Result<(), Reply> {
        let config = self.config();
        let Some(rate) = config.messages_per_second else {
            return Ok(());
        };
        let wait = if self.clustered {
            config.max_wait.max(SHARED_ANSWER)
        } else {
            config.max_wait
        };
        if tokio::time::timeout(wait, self.pacing.acquire())
            .await
            .is_ok()
        {
            return Ok(());
        }
        self.count_limited("rate");
        tracing::info!(app = %self.name, rate = rate.get(), "MAIL refused with 452: the app is over its message rate");
        Err(Reply::new(
            452,
            "4.7.1",
            format!(
                "app {} is over its message rate ({}/s); try again later",
                self.name,
                rate.get()
            ),
        ))
    }

    /// One recipient of this app (at RCPT): counted against its daily quota, or the
    /// `452 4.7.1` naming when the quota starts again. `None` when the app has no quota.
    pub async fn reserve_recipient(&self) -> Result<Option<Reserved>, Reply> {
        let config = self.config();
        let Some(limit) = config.recipients_per_day else {
            return Ok(None);
        };
        match self.quota.reserve(1).await {
            Reservation::Granted(ticket) => Ok(Some(Reserved {
                quota: self.quota.clone(),
                ticket: Some(ticket),
            })),
            Reservation::Spent { until } => {
                self.count_limited("quota");
                let at = local_time(until, config.quota_reset);
                tracing::info!(app = %self.name, limit, resets = %at, "RCPT refused with 452: the app's daily recipient quota is spent");
                Err(Reply::new(
                    452,
                    "4.7.1",
                    format!(
                        "daily recipient quota of app {} ({limit}) reached; resets at {at}",
                        self.name
                    ),
                ))
            }
        }
    }

    fn count_limited(&self, reason: &str) {
        self.ctx
            .metrics
            .app_limited
            .with_label_values(&[&self.name, reason])
            .inc();
    }

    fn status(&self) -> AppLimitsStatus {
        let config = self.config();
        let used = self.quota.status().first().map(|q| q.used);
        let quota = config.recipients_per_day.is_some();
        AppLimitsStatus {
            app: self.name.clone(),
            messages_per_second: config.messages_per_second.map(|r| r.get()),
            burst: config.messages_per_second.map(|_| config.burst),
            recipients_per_day: config.recipients_per_day,
            recipients_used: used.filter(|_| quota),
            quota_reset_at: quota.then(|| local_time(self.quota.next_reset(), config.quota_reset)),
            quota_spent: quota && self.quota.spent_until().is_some(),
        }
    }
}

/// `until` (Unix s) in RFC 3339, at the reset's own UTC offset (what the operator configured).
fn local_time(until: i64, reset: QuotaReset) -> String {
    let offset =
        time::UtcOffset::from_whole_seconds(reset.offset_seconds).unwrap_or(time::UtcOffset::UTC);
    time::OffsetDateTime::from_unix_timestamp(until)
        .map(|t| t.to_offset(offset))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| until.to_string())
}

/// Every configured app's limits, by name. Built at start, updated on reload.
pub struct AppLimitsRegistry {
    ctx: LimitsContext,
    apps: Mutex<HashMap<String, Arc<AppLimits>>>,
}

impl AppLimitsRegistry {
    pub fn new(ctx: LimitsContext, apps: &AppsConfig) -> AppLimitsRegistry {
        let registry = AppLimitsRegistry {
            ctx,
            apps: Mutex::new(HashMap::new()),
        };
        registry.configure(apps);
        registry
    }

    /// The apps of a (reloaded) config: new ones start counting, changed ones take the new
    /// numbers and keep the day's count, removed ones stop.
    pub fn configure(&self, apps: &AppsConfig) {
        let mut map = self.apps.lock().expect("not poisoned");
        let mut next = HashMap::new();
        for app in &apps.apps {
            let limits = match map.remove(&app.name) {
                Some(existing) => {
                    existing.reconfigure(&app.limits);
                    existing
                }
                None => AppLimits::new(&app.name, &app.limits, &self.ctx),
            };
            next.insert(app.name.clone(), limits);
        }
        *map = next;
    }

    /// The limits of app `name`, if it is configured.
    pub fn get(&self, name: &str) -> Option<Arc<AppLimits>> {
        self.apps.lock().expect("not poisoned").get(name).cloned()
    }

    /// Each app's limits and quota count, by name.
    pub fn status(&self) -> Vec<AppLimitsStatus> {
        let apps: Vec<Arc<AppLimits>> = self
            .apps
            .lock()
            .expect("not poisoned")
            .values()
            .cloned()
            .collect();
        let mut all: Vec<AppLimitsStatus> = apps.iter().map(|a| a.status()).collect();
        all.sort_by(|a, b| a.app.cmp(&b.app));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::observe::Metrics;

    fn registry(limits: &str, root: Option<&std::path::Path>) -> (AppLimitsRegistry, Metrics) {
        let c = Config::from_toml(&format!(
            "[[upstream]]\nname = \"o\"\ndir = \"/tmp/mailveil-app-limits\"\n[[app]]\nname = \"billing\"\nlogins = [\"b\"]\nsenders = [\"@example.com\"]\n[app.limits]\n{limits}\n[[app]]\nname = \"news\"\nlogins = [\"n\"]\nsenders = [\"@example.com\"]\n"
        ))
        .unwrap();
        let metrics = Metrics::new();
        let ctx = LimitsContext {
            metrics: metrics.clone(),
            cluster: None,
            spool_root: root.map(|r| r.to_path_buf()),
        };
        (AppLimitsRegistry::new(ctx, &c.apps), metrics)
    }

    #[tokio::test]
    async fn a_quota_counts_recipients_and_a_dropped_reservation_is_given_back() {
        let (r, metrics) = registry("recipients_per_day = 2", None);
        let billing = r.get("billing").unwrap();
        let a = billing.reserve_recipient().await.unwrap().unwrap();
        let b = billing.reserve_recipient().await.unwrap().unwrap();
        let refused = billing.reserve_recipient().await.err().unwrap();
        assert_eq!((refused.code, refused.status), (452, "4.7.1"));
        assert!(
            refused.text.contains("app billing (2) reached; resets at "),
            "{}",
            refused.text
        );
        a.keep();
        drop(b);
        // The release runs on its own task.
        for _ in 0..50 {
            if r.status()[0].recipients_used == Some(1) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(r.status()[0].recipients_used, Some(1));
        assert!(billing.reserve_recipient().await.unwrap().is_some());
        assert!(
            r.get("news")
                .unwrap()
                .reserve_recipient()
                .await
                .unwrap()
                .is_none(),
            "no quota: nothing counted"
        );
        let limited = metrics
            .app_limited
            .with_label_values(&["billing", "quota"])
            .get();
        assert_eq!(limited, 1);
    }

    #[tokio::test]
    async fn the_rate_refuses_past_the_burst_without_waiting_beyond_max_wait() {
        let (r, _) = registry(
            "messages_per_second = 0.5\nburst = 2\nmax_wait = \"0s\"",
            None,
        );
        let billing = r.get("billing").unwrap();
        assert!(billing.admit_message().await.is_ok());
        assert!(billing.admit_message().await.is_ok());
        let refused = billing.admit_message().await.err().unwrap();
        assert_eq!((refused.code, refused.status), (452, "4.7.1"));
        assert!(r.get("news").unwrap().admit_message().await.is_ok());
    }

    #[tokio::test]
    async fn the_days_count_survives_a_restart_and_a_reload_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (r, _) = registry("recipients_per_day = 5", Some(dir.path()));
            r.get("billing")
                .unwrap()
                .reserve_recipient()
                .await
                .unwrap()
                .unwrap()
                .keep();
        }
        assert!(dir.path().join("app-quota-billing.json").exists());
        let (r, _) = registry("recipients_per_day = 5", Some(dir.path()));
        assert_eq!(r.status()[0].recipients_used, Some(1));
        let c = Config::from_toml(
            "[[upstream]]\nname = \"o\"\ndir = \"/tmp/mailveil-app-limits\"\n[[app]]\nname = \"billing\"\nlogins = [\"b\"]\nsenders = [\"@example.com\"]\n[app.limits]\nrecipients_per_day = 9\n",
        )
        .unwrap();
        r.configure(&c.apps);
        let s = r.status();
        assert_eq!(s.len(), 1, "news was removed");
        assert_eq!(
            (s[0].recipients_per_day, s[0].recipients_used),
            (Some(9), Some(1))
        );
    }
}
