//! `[app.events]`: an app's delivery events (`src/events/`): a JSON-lines outbox in the spool,
//! and optionally a webhook that receives them signed (Standard Webhooks).

use std::time::Duration;

use super::super::raw::RawAppEvents;
use super::super::values::{Problems, Secret, duration, size};

/// How recipients appear in an app's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventAddresses {
    /// As in the logs with `show_addresses = false`: a keyed hash of the local part, the domain.
    Redacted,
    /// Only the keyed hash of the whole address (no domain either).
    Hashed,
    /// The address itself (the app asked for it: its own recipients).
    Full,
}

/// One app's events; `None` in [`super::AppConfig::events`] when it has no `[app.events]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppEventsConfig {
    pub addresses: EventAddresses,
    /// Where events are POSTed; `None`: the outbox files only.
    pub webhook_url: Option<String>,
    /// The HMAC key (`whsec_<base64>` as Standard Webhooks gives it, or any other text).
    pub webhook_secret: Option<Secret>,
    pub webhook_timeout: Duration,
    /// The longest wait between two tries while the webhook fails.
    pub webhook_retry_max: Duration,
    /// An outbox file is closed and a new one started past this size.
    pub max_file_bytes: u64,
    /// Files kept once written (and, with a webhook, acknowledged).
    pub keep_files: usize,
    /// Events not yet acknowledged by the webhook kept at most: past it the oldest file of
    /// them is given up (counted, logged); mail never waits for the webhook.
    pub max_backlog_bytes: u64,
}

pub(super) fn validate(
    raw: Option<RawAppEvents>,
    path: &str,
    p: &mut Problems,
) -> Option<AppEventsConfig> {
    let raw = raw?;
    let addresses = match raw.addresses.as_deref() {
        None | Some("redacted") => EventAddresses::Redacted,
        Some("hashed") => EventAddresses::Hashed,
        Some("full") => EventAddresses::Full,
        Some(other) => {
            p.push(
                &format!("{path}.addresses"),
                format!("{other:?} must be \"redacted\", \"hashed\" or \"full\""),
            );
            EventAddresses::Redacted
        }
    };
    let webhook_url = raw.webhook_url.filter(|url| {
        let ok = url.starts_with("https://") || url.starts_with("http://");
        if !ok {
            p.push(
                &format!("{path}.webhook_url"),
                format!("{url:?} must be an http:// or https:// URL"),
            );
        }
        ok
    });
    let webhook_secret = p.secret(
        path,
        "webhook_secret",
        raw.webhook_secret_env,
        raw.webhook_secret_file,
        false,
    );
    if webhook_url.is_some()
        && webhook_secret.is_none()
        && !p.has_error_at(&format!("{path}.webhook_secret_env"))
    {
        p.push(
            &format!("{path}.webhook_secret_env"),
            "a webhook needs a secret to sign with (webhook_secret_env or webhook_secret_file)",
        );
    }
    let time =
        |p: &mut Problems, key: &str, raw: &Option<super::super::raw::RawDuration>, default| {
            raw.as_ref()
                .and_then(|d| duration(d, &format!("{path}.{key}"), p))
                .unwrap_or(default)
        };
    let webhook_timeout = time(
        p,
        "webhook_timeout",
        &raw.webhook_timeout,
        Duration::from_secs(10),
    );
    let webhook_retry_max = time(
        p,
        "webhook_retry_max",
        &raw.webhook_retry_max,
        Duration::from_secs(300),
    );
    let bytes = |p: &mut Problems, key: &str, raw: &Option<super::super::raw::RawSize>, default| {
        raw.as_ref()
            .and_then(|s| size(s, &format!("{path}.{key}"), p))
            .unwrap_or(default)
    };
    let max_file_bytes = bytes(p, "max_file_bytes", &raw.max_file_bytes, 16 << 20);
    let max_backlog_bytes = bytes(p, "max_backlog_bytes", &raw.max_backlog_bytes, 1 << 30);
    if max_file_bytes < 4096 {
        p.push(&format!("{path}.max_file_bytes"), "must be at least 4KiB");
    }
    if max_backlog_bytes < max_file_bytes {
        p.push(
            &format!("{path}.max_backlog_bytes"),
            "must be at least max_file_bytes",
        );
    }
    let keep_files = p.positive(&format!("{path}.keep_files"), raw.keep_files, 8);
    Some(AppEventsConfig {
        addresses,
        webhook_url,
        webhook_secret,
        webhook_timeout,
        webhook_retry_max,
        max_file_bytes,
        keep_files,
        max_backlog_bytes,
    })
}
