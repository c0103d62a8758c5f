//! Sends an app's events to its webhook, in outbox order, signed as Standard Webhooks
//! prescribe: headers `webhook-id`, `webhook-timestamp` and `webhook-signature: v1,<base64 of
//! HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`. The body is
//! `{"type": "mailveil.events", "data": [event, ...]}` (up to 100 events, 1 MiB), in the order
//! they were written (so within a message, its events keep their order). `webhook-id` names
//! the batch (its first event's id and count); each event's own `id` is what a receiver
//! de-duplicates by.
//!
//! A `2xx` moves the cursor (written and fsynced before the next batch); anything else is
//! retried with backoff (1 s doubling up to `webhook_retry_max`). The only duplicate this
//! allows: a kill between the receiver's `2xx` and the cursor's write sends that batch again,
//! with the same event ids. A backlog past `max_backlog_bytes` gives up its oldest file (the
//! events stay in the file until pruned; counted in `mailveil_events_dropped_total`).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::AppEvents;
use super::outbox::Cursor;

/// Events per POST at most, and their bytes.
const BATCH: usize = 100;
const BATCH_BYTES: u64 = 1 << 20;
/// After a batch smaller than [`BATCH`], how long events gather before the next POST: one
/// request per event at thousands of messages a second would cost the relay more CPU than the
/// mail (measured: bench/apps.sh), for a fifth of a second of latency.
const LINGER: Duration = Duration::from_millis(200);

/// The HMAC key of a secret: the bytes after `whsec_` base64-decoded, else the text itself.
pub fn key_bytes(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// The `webhook-signature` value for `id`, `timestamp` (Unix s) and `body`.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

/// Runs until `app.stop` is cancelled.
pub async fn run(app: Arc<AppEvents>) {
    let mut cursor = app
        .outbox
        .load_cursor()
        .unwrap_or(Cursor { seq: 1, offset: 0 });
    if let Some(first) = app.outbox.files().ok().and_then(|f| f.first().copied())
        && cursor.seq < first
    {
        cursor = Cursor {
            seq: first,
            offset: 0,
        };
    }
    app.set_backlog(app.outbox.count_from(cursor));
    let mut delay = Duration::from_secs(1);
    loop {
        if app.stop.is_cancelled() {
            return;
        }
        let config = app.config();
        let outbox = app.outbox.clone();
        let read =
            tokio::task::spawn_blocking(move || outbox.read(cursor, BATCH, BATCH_BYTES)).await;
        let (lines, next) = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(app = %app.name, error = %e, "cannot read the event outbox");
                (Vec::new(), cursor)
            }
            Err(_) => return,
        };
        if lines.is_empty() {
            tokio::select! {
                _ = app.appended.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = app.stop.cancelled() => return,
            }
            linger(&app).await;
            continue;
        }
        let full = lines.len() == BATCH;
        let (Some(url), Some(secret)) = (config.webhook_url.clone(), config.webhook_secret.clone())
        else {
            return;
        };
        let first_id = serde_json::from_str::<serde_json::Value>(&lines[0])
            .ok()
            .and_then(|v| v["id"].as_str().map(String::from))
            .unwrap_or_default();
        let id = format!("{first_id}+{}", lines.len());
        let body = format!(
            "{{\"type\":\"mailveil.events\",\"data\":[{}]}}",
            lines.join(",")
        );
        let timestamp = crate::spool::unix_now();
        let signed = signature(&key_bytes(secret.expose()), &id, timestamp, &body);
        let timeout = config.webhook_timeout;
        let sent = tokio::task::spawn_blocking(move || {
            post(&url, &id, timestamp, &signed, &body, timeout)
        })
        .await;
        let outcome = sent.unwrap_or_else(|e| Err(e.to_string()));
        match outcome {
            Ok(()) => {
                cursor = next;
                let outbox = app.outbox.clone();
                let stored = tokio::task::spawn_blocking(move || outbox.store_cursor(next)).await;
                if let Ok(Err(e)) = stored {
                    tracing::warn!(app = %app.name, error = %e, "cannot record the webhook's position; events may be sent again after a restart");
                }
                app.delivered(lines.len() as u64);
                app.outbox.prune_before(cursor.seq, config.keep_files);
                delay = Duration::from_secs(1);
                if !full {
                    linger(&app).await;
                }
            }
            Err(error) => {
                app.failed(&error);
                cursor = app.bound_backlog(cursor, config.max_backlog_bytes);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = app.stop.cancelled() => return,
                }
                delay = (delay * 2).min(config.webhook_retry_max.max(Duration::from_secs(1)));
            }
        }
    }
}

async fn linger(app: &AppEvents) {
    tokio::select! {
        _ = tokio::time::sleep(LINGER) => {}
        _ = app.stop.cancelled() => {}
    }
}

/// One signed POST; `Err` with what went wrong unless the receiver answered `2xx`.
fn post(
    url: &str,
    id: &str,
    timestamp: u64,
    signature: &str,
    body: &str,
    timeout: Duration,
) -> Result<(), String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(timeout))
        .build()
        .into();
    let response = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", &timestamp.to_string())
        .header("webhook-signature", signature)
        .send(body)
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("the webhook answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification (spec/standard-webhooks.md).
        let key = key_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
