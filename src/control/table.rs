//! The human-readable form of the admin API's answers that `mailveil ctl` (and `mailveil
//! spool`) print by default; `--json` prints the answer itself, for scripts.
//!
//! Plain aligned columns, written here rather than with a table crate: a dozen lines, no
//! terminal handling needed (the output is often piped or read through `kubectl exec`).
//! Times are shown relative to `now` ("3m ago", "in 40s"); the JSON keeps Unix seconds.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::schedule::queue::view::{MessageDetail, MessageView};

/// Columns aligned on the widest cell, two spaces apart; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count() + 2;
                let _ = write!(out, "{cell}{}", " ".repeat(pad));
            }
        }
        out.push('\n');
    }
    out
}

/// `3m 20s`: whole seconds, at most two units.
fn span(secs: u64) -> String {
    let text = humantime::format_duration(Duration::from_secs(secs)).to_string();
    text.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

fn ago(at: Option<u64>, now: u64) -> String {
    match at {
        None => "-".into(),
        Some(t) if t + 1 >= now => "just now".into(),
        Some(t) => format!("{} ago", span(now - t)),
    }
}

fn until(at: Option<u64>, now: u64) -> String {
    match at {
        None => "-".into(),
        Some(t) if t <= now => "now".into(),
        Some(t) => format!("in {}", span(t - now)),
    }
}

fn yes(v: &Value) -> String {
    if v.as_bool().unwrap_or(false) {
        "yes".into()
    } else {
        "no".into()
    }
}

pub(super) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `GET /status`: what is paused, the queue per provider, upstreams, the spool. Fields other
/// sessions of the API add are shown as `key: value` lines under "other".
pub fn status(v: &Value) -> String {
    let mut out = String::new();
    let paused = v["paused"].as_bool().unwrap_or(false);
    let _ = writeln!(
        out,
        "deliveries: {}",
        if paused {
            "PAUSED (all providers)"
        } else {
            "running"
        }
    );
    if let Some(spool) = v.get("spool") {
        let bytes = spool["bytes"].as_u64().unwrap_or(0);
        let refusing = spool["refusing_for_space"].as_bool().unwrap_or(false);
        let _ = writeln!(
            out,
            "spool: {}, {}, damaged batches found at start: {}",
            bytesize::ByteSize::b(bytes),
            if refusing {
                "REFUSING MAIL (no space: 452 4.3.1)"
            } else {
                "accepting"
            },
            text(&spool["corrupt_batches_at_start"])
        );
    }
    let providers: Vec<Vec<String>> = v["providers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            vec![
                text(&p["name"]),
                if p["paused"].as_bool().unwrap_or(false) {
                    "PAUSED".into()
                } else {
                    "no".into()
                },
                text(&p["queued"]),
                yes(&p["slowed"]),
                match p["messages_per_second"].as_f64() {
                    Some(r) => format!("{r}"),
                    None => "unlimited".into(),
                },
                text(&p["concurrency"]),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "PROVIDER",
            "PAUSED",
            "QUEUED",
            "SLOWED",
            "RATE/S",
            "CONCURRENCY",
        ],
        &providers,
    ));
    let upstreams: Vec<Vec<String>> = v["upstreams"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|u| {
            vec![
                text(&u["name"]),
                if u["up"].as_bool().unwrap_or(false) {
                    "up".into()
                } else {
                    "DOWN (cooling off)".into()
                },
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["UPSTREAM", "STATE"], &upstreams));
    out.push_str(&pauses(v));
    if let Some(fields) = v.as_object() {
        let known = [
            "apps",
            "paused",
            "providers",
            "upstreams",
            "spool",
            "pauses",
            "pause_sync",
            "shaping_sync",
        ];
        let others: Vec<String> = fields
            .iter()
            .filter(|(k, _)| !known.contains(&k.as_str()))
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        if !others.is_empty() {
            let _ = write!(out, "\nother:\n  {}\n", others.join("\n  "));
        }
    }
    out
}

/// Where each pause comes from (`ctl pause` here, this replica's spool record at start,
/// another replica through Redis) and how the sharing stands.
fn pauses(v: &Value) -> String {
    let mut out = String::new();
    let rows: Vec<Vec<String>> = v["pauses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let shared = match p["shared"].as_bool() {
                Some(true) => "yes",
                Some(false) => "NOT YET",
                None => "-",
            };
            vec![
                text(&p["provider"]),
                text(&p["source"]),
                text(&p["since"]),
                text(&p["by"]),
                shared.to_string(),
                text(&p["note"]),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["PAUSED", "SOURCE", "SINCE", "BY", "SHARED", "NOTE"],
            &rows,
        ));
    }
    if let Some(sync) = v.get("pause_sync").filter(|s| s.is_object()) {
        let state = if sync["waiting_for_first_sync"].as_bool().unwrap_or(false) {
            "waiting for the first read (nothing is sent meanwhile)"
        } else if sync["redis_reachable"].as_bool().unwrap_or(false) {
            "Redis reachable"
        } else {
            "REDIS UNREACHABLE: keeping the last known pauses"
        };
        let _ = writeln!(
            out,
            "\npause sharing: {state}, last read {}",
            text(&sync["last_sync"])
        );
    }
    out
}

/// `2 deferred, 1 held` for the copies still to go (then the final ones).
fn states(view: &MessageView) -> String {
    let order = [
        "active",
        "queued",
        "deferred",
        "held",
        "delivered",
        "failed",
        "deleted",
        "dropped",
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| view.states.get(*s).map(|n| format!("{n} {s}")))
        .collect();
    parts.join(", ")
}

/// `{"messages": [...]}` of `GET /queue` (or `mailveil spool list`).
pub fn queue_list(v: &Value, now: u64) -> String {
    let messages: Vec<MessageView> =
        serde_json::from_value(v["messages"].clone()).unwrap_or_default();
    if messages.is_empty() {
        return "no messages in the queue match\n".into();
    }
    let rows: Vec<Vec<String>> = messages
        .iter()
        .map(|m| {
            vec![
                m.id.clone(),
                span(m.age_secs),
                m.from.clone(),
                m.deliveries.to_string(),
                states(m),
                m.providers.join(","),
                m.attempts.to_string(),
                until(m.next_attempt_at, now),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "ID",
            "AGE",
            "FROM",
            "COPIES",
            "STATES",
            "PROVIDERS",
            "ATTEMPTS",
            "NEXT ATTEMPT",
        ],
        &rows,
    );
    let total = v["total"].as_u64().unwrap_or(messages.len() as u64);
    if total > messages.len() as u64 {
        let _ = writeln!(
            out,
            "{} of {total} message(s), the oldest (--limit N, 0 for all)",
            messages.len()
        );
    } else {
        let _ = writeln!(out, "{total} message(s)");
    }
    out
}

/// `{"message": {...}}` of `GET /queue/<id>` (or `mailveil spool show`).
pub fn queue_show(v: &Value, now: u64) -> String {
    let Ok(m) = serde_json::from_value::<MessageDetail>(v["message"].clone()) else {
        return format!("{v}\n");
    };
    let s = &m.summary;
    let mut out = String::new();
    let _ = writeln!(out, "id:          {}", s.id);
    let _ = writeln!(
        out,
        "message-id:  {}",
        s.message_id.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "received:    {} ({})",
        ago(Some(s.received_at), now),
        s.received_at
    );
    let _ = writeln!(out, "from:        {}", s.from);
    let _ = writeln!(
        out,
        "recipients:  {} in {} copies ({})",
        s.recipients,
        s.deliveries,
        states(s)
    );
    let _ = writeln!(
        out,
        "size:        {}, decision: {}{}",
        bytesize::ByteSize::b(m.size),
        m.decision,
        m.hold
            .as_ref()
            .map(|h| format!(", bulk hold: {h}"))
            .unwrap_or_default()
    );
    let rows: Vec<Vec<String>> = m
        .copies
        .iter()
        .map(|c| {
            let reply: String = c
                .last_reply
                .as_deref()
                .unwrap_or("-")
                .chars()
                .take(100)
                .collect();
            vec![
                c.index.to_string(),
                c.rcpt_to.join(","),
                c.provider.clone(),
                c.state.as_str().to_string(),
                c.attempts.to_string(),
                ago(c.first_attempt_at, now),
                ago(c.last_attempt_at, now),
                until(c.next_attempt_at, now),
                c.upstream.clone().unwrap_or_else(|| "-".into()),
                reply,
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(
        &[
            "#",
            "RECIPIENTS",
            "PROVIDER",
            "STATE",
            "ATTEMPTS",
            "FIRST",
            "LAST",
            "NEXT",
            "UPSTREAM",
            "LAST REPLY",
        ],
        &rows,
    ));
    out
}

/// `{"retried": N}`.
pub fn retried(v: &Value) -> String {
    format!(
        "{} deferred copies made due now (they still wait for their provider's throttle and any pause)\n",
        text(&v["retried"])
    )
}

/// The answer of a delete or bounce.
pub fn removal(v: &Value) -> String {
    let mut out = format!(
        "message {} {}: {} copies will not be sent",
        text(&v["id"]),
        text(&v["action"]),
        text(&v["removed"])
    );
    if v["in_flight"].as_u64().unwrap_or(0) > 0 {
        let _ = write!(
            out,
            "; {} copies were being handed over and may still be delivered",
            text(&v["in_flight"])
        );
    }
    if v["action"] == "bounced" {
        match v["bounces"].as_u64().unwrap_or(0) {
            0 => out.push_str(
                "; no bounce sent ([spool] bounce is off, or the sender is the null sender)",
            ),
            n => {
                let _ = write!(out, "; {n} bounces queued to the sender");
            }
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_status_reads() {
        let t = table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
        let v: Value = serde_json::from_str(
            r#"{"paused":true,"providers":[{"name":"yahoo","paused":false,"queued":3,"slowed":true,"messages_per_second":null,"concurrency":4}],"upstreams":[{"name":"outbox","up":true}],"spool":{"bytes":2048,"refusing_for_space":false,"corrupt_batches_at_start":0},"pause_sources":{"x":1}}"#,
        )
        .unwrap();
        let text = status(&v);
        assert!(text.contains("PAUSED (all providers)"), "{text}");
        assert!(
            text.contains("yahoo     no      3       yes     unlimited  4"),
            "{text}"
        );
        assert!(text.contains("outbox    up"), "{text}");
        assert!(text.contains("pause_sources"), "{text}");
        let v: Value = serde_json::from_str(
            r#"{"paused":true,"pauses":[{"provider":"all","source":"cluster","since":"2026-12-02T12:00:00Z","by":"relay-1","shared":true},{"provider":"yahoo","source":"spool","since":"2026-12-01T09:00:00Z","shared":false}],"pause_sync":{"redis_reachable":false,"waiting_for_first_sync":false,"last_sync":"2026-12-02T12:00:01Z","interval_ms":250},"providers":[],"upstreams":[]}"#,
        )
        .unwrap();
        let text = status(&v);
        assert!(
            text.contains("all     cluster  2026-12-02T12:00:00Z  relay-1  yes"),
            "{text}"
        );
        assert!(
            text.contains("yahoo   spool    2026-12-01T09:00:00Z  -        NOT YET"),
            "{text}"
        );
        assert!(text.contains("REDIS UNREACHABLE"), "{text}");
        assert!(!text.contains("other:"), "{text}");
        assert_eq!(until(Some(100), 40), "in 1m");
        assert_eq!(ago(Some(100), 3700), "1h ago");
    }
}
