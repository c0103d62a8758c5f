//! The APPS table of `mailveil ctl status` (a terminal or `--table`): each `[[app]]` with its
//! messages, its rate and daily recipient quota (`[app.limits]`), the `452`s they caused, and
//! its delivery events (the last one; what waits for the webhook).

use serde_json::Value;

use super::table::{table, text};

/// One row per `[[app]]`: messages, its rate, its daily recipient quota and the refusals.
pub(super) fn apps(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["apps"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|a| {
            let quota = match (
                a["recipients_used"].as_u64(),
                a["recipients_per_day"].as_u64(),
            ) {
                (Some(used), Some(limit)) if a["quota_spent"].as_bool() == Some(true) => {
                    format!("{used}/{limit} SPENT until {}", text(&a["quota_reset_at"]))
                }
                (Some(used), Some(limit)) => format!("{used}/{limit}"),
                _ => "unlimited".into(),
            };
            vec![
                text(&a["name"]),
                format!(
                    "{}/{}",
                    text(&a["messages_accepted"]),
                    text(&a["messages_rejected"])
                ),
                a["messages_per_second"]
                    .as_f64()
                    .map_or("unlimited".into(), |r| format!("{r}")),
                quota,
                format!(
                    "{}/{}",
                    text(&a["refused_for_rate"]),
                    text(&a["refused_for_quota"])
                ),
                events(&a["events"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n{}",
        table(
            &[
                "APP",
                "ACCEPTED/REJECTED",
                "RATE/S",
                "RECIPIENTS TODAY",
                "452 RATE/QUOTA",
                "EVENTS",
            ],
            &rows
        )
    )
}

/// An app's events in one cell: off, or the last event and (with a webhook) what waits.
fn events(e: &Value) -> String {
    if e.is_null() {
        return "off".into();
    }
    let last = e["recent"]
        .as_array()
        .and_then(|r| r.last())
        .map_or("none yet".into(), |l| {
            format!("last {} {}", text(&l["type"]), text(&l["timestamp"]))
        });
    match e["backlog"].as_u64() {
        Some(n) if e["webhook_last_error"].is_string() && n > 0 => {
            format!(
                "{last}; webhook: {n} waiting, {}",
                text(&e["webhook_last_error"])
            )
        }
        Some(n) => format!("{last}; webhook: {n} waiting"),
        None => last,
    }
}
