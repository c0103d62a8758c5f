//! The shaping part of `ctl status --table`: each provider's limits in force, the slowdowns and
//! suspensions with their remaining time, rule, origin and the reply that caused them, each
//! upstream's limits (rate, concurrency, slowdown, daily quotas), and how the shaping state is
//! shared with `[cluster]`; and the answer of `ctl shaping clear`.

use std::fmt::Write as _;

use serde_json::Value;

use super::table::{table, text};

/// `-` for an absent number, else the number.
fn number(v: &Value) -> String {
    match v {
        Value::Null => "unlimited".into(),
        other => text(other),
    }
}

/// The "LIMITS IN FORCE" and "SHAPING" tables of `GET /status` (empty when the answer has no
/// `limits` per provider, e.g. an older relay).
pub fn shaping(v: &Value) -> String {
    let providers = v["providers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut out = String::new();
    let limits: Vec<Vec<String>> = providers
        .iter()
        .filter(|p| p["limits"].is_object())
        .map(|p| {
            let l = &p["limits"];
            vec![
                text(&p["name"]),
                number(&l["messages_per_second"]),
                text(&l["burst"]),
                match l["max_connections"].as_u64() {
                    Some(0) | None => "upstreams'".into(),
                    Some(n) => n.to_string(),
                },
                match &l["max_deliveries_per_connection"] {
                    Value::Null => "upstream's".into(),
                    n => text(n),
                },
            ]
        })
        .collect();
    if !limits.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "LIMITS IN FORCE",
                "RATE/S",
                "BURST",
                "CONNECTIONS",
                "PER CONNECTION",
            ],
            &limits,
        ));
    }
    let active: Vec<Vec<String>> = providers
        .iter()
        .filter(|p| p["shaping"].is_object())
        .map(|p| {
            let s = &p["shaping"];
            let origin = origin(s);
            let reply: String = text(&s["reply"]).chars().take(80).collect();
            vec![
                text(&p["name"]),
                text(&s["action"]).to_uppercase(),
                text(&s["factor"]),
                format!("{}s", text(&s["remaining_secs"])),
                text(&s["rule"]),
                origin,
                reply,
            ]
        })
        .collect();
    if !active.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "SHAPED",
                "ACTION",
                "FACTOR",
                "REMAINING",
                "RULE",
                "ORIGIN",
                "REPLY",
            ],
            &active,
        ));
    }
    out.push_str(&upstream_limits(v));
    if let Some(sync) = v.get("shaping_sync").filter(|s| s.is_object()) {
        let state = if sync["redis_reachable"].as_bool().unwrap_or(false) {
            "Redis reachable".to_string()
        } else {
            "REDIS UNREACHABLE: shaping decisions stay local".to_string()
        };
        let unshared = sync["unshared"].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "\nshaping sharing: {state}, last read {}{}",
            text(&sync["last_sync"]),
            if unshared > 0 {
                format!(", {unshared} decision(s) not yet shared")
            } else {
                String::new()
            }
        );
    }
    out
}

/// Where a slowdown comes from: `local`, or `fleet (replica)`.
fn origin(s: &Value) -> String {
    match (s["origin"].as_str(), s["by"].as_str()) {
        (Some("fleet"), Some(by)) => format!("fleet ({by})"),
        (Some(o), _) => o.to_string(),
        (None, _) => "-".into(),
    }
}

/// The "UPSTREAM LIMITS" table: each upstream's rate and concurrency in force, its slowdown or
/// suspension (remaining time, rule, origin) and its daily quotas with the next reset. Empty
/// when no upstream has `limits` (an older relay).
pub fn upstream_limits(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["upstreams"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|u| u["limits"].is_object())
        .map(|u| {
            let (l, s) = (&u["limits"], &u["shaping"]);
            let state = if s.is_object() {
                text(&s["action"]).to_uppercase()
            } else if l["suspended"] == true {
                "SUSPEND".into()
            } else if l["slowed"] == true {
                "SLOW".into()
            } else {
                "-".into()
            };
            let remaining = match (&s["remaining_secs"], &l["slowed_for_secs"]) {
                (Value::Number(n), _) | (Value::Null, Value::Number(n)) => format!("{n}s"),
                _ => "-".into(),
            };
            let rule = match (&s["rule"], &l["slowed_by"]) {
                (Value::String(r), _) | (Value::Null, Value::String(r)) if !r.is_empty() => {
                    r.clone()
                }
                _ => "-".into(),
            };
            let quotas: Vec<String> = l["quotas"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|q| {
                    format!(
                        "{}/{} {}/day",
                        text(&q["used"]),
                        text(&q["limit"]),
                        text(&q["unit"])
                    )
                })
                .collect();
            let mut quota = if quotas.is_empty() {
                "-".to_string()
            } else {
                quotas.join(", ")
            };
            if l["quota_spent"] == true {
                quota.push_str(" SPENT");
            }
            vec![
                text(&u["name"]),
                number(&l["messages_per_second"]),
                text(&l["concurrency"]),
                state,
                remaining,
                rule,
                if s.is_object() { origin(s) } else { "-".into() },
                quota,
                text(&l["quota_reset"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let headers = [
        "UPSTREAM LIMITS",
        "RATE/S",
        "CONCURRENCY",
        "SHAPING",
        "REMAINING",
        "RULE",
        "ORIGIN",
        "QUOTA",
        "RESET",
    ];
    format!("\n{}", table(&headers, &rows))
}

/// The answer of `POST /shaping/clear`: which providers and upstreams were lifted here.
pub fn cleared(v: &Value) -> String {
    let names: Vec<String> = v["shaping_cleared"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(text)
        .collect();
    let upstreams: Vec<String> = v["upstream_shaping_cleared"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|u| format!("upstream {}", text(u)))
        .collect();
    let names = [names, upstreams].concat();
    let mut out = if names.is_empty() {
        "no slowdown or suspension was in force here".to_string()
    } else {
        format!("shaping lifted here for: {}", names.join(", "))
    };
    if v.get("shaping_sync").is_some_and(Value::is_object) {
        out.push_str("; cleared in the cluster too (every replica within a second)");
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_active_shaping_are_tabled() {
        let v: Value = serde_json::from_str(
            r#"{"providers":[
              {"name":"yahoo","limits":{"messages_per_second":null,"burst":null,"max_connections":4,"max_deliveries_per_connection":20},
               "shaping":{"action":"suspend","factor":0.0,"remaining_secs":42,"rule":"contains \"[tss04]\"","reply":"421 4.7.0 [TSS04] x","origin":"fleet","by":"relay-1"}},
              {"name":"google","limits":{"messages_per_second":10.0,"burst":50,"max_connections":0,"max_deliveries_per_connection":null}}],
             "shaping_sync":{"redis_reachable":false,"last_sync":"2026-12-02T12:00:01Z","interval_ms":250,"unshared":1}}"#,
        )
        .unwrap();
        let t = shaping(&v);
        assert!(
            t.contains("yahoo            unlimited  -      4            20"),
            "{t}"
        );
        assert!(
            t.contains("google           10.0       50     upstreams'   upstream's"),
            "{t}"
        );
        assert!(t.contains("yahoo   SUSPEND  0.0     42s        contains \"[tss04]\"  fleet (relay-1)  421 4.7.0 [TSS04] x"), "{t}");
        assert!(
            t.contains("REDIS UNREACHABLE") && t.contains("1 decision(s) not yet shared"),
            "{t}"
        );
        let c = cleared(&serde_json::json!({"shaping_cleared": ["yahoo"], "shaping_sync": {}}));
        assert!(c.contains("yahoo") && c.contains("cluster"), "{c}");
    }

    #[test]
    fn upstream_limits_are_tabled_with_shaping_and_quotas() {
        let v: Value = serde_json::from_str(
            r#"{"providers":[],"upstreams":[
              {"name":"ses","up":true,"limits":{"messages_per_second":5.0,"concurrency":2,"slowed":true,"suspended":false,"slowed_for_secs":41,"slowed_by":"ses-maximum-sending-rate-exceeded","quotas":[{"unit":"recipients","limit":50000,"used":1234}],"quota_spent":false,"quota_reset":"2026-12-03T00:00:00Z"},
               "shaping":{"action":"slow","factor":0.5,"remaining_secs":42,"rule":"ses-maximum-sending-rate-exceeded","reply":"454 Throttling failure","origin":"fleet","by":"relay-1"}},
              {"name":"backup","up":true,"limits":{"messages_per_second":null,"concurrency":8,"slowed":false,"suspended":false,"quotas":[{"unit":"messages","limit":10,"used":10}],"quota_spent":true,"quota_reset":"2026-12-03T06:00:00Z"}},
              {"name":"old","up":true}]}"#,
        )
        .unwrap();
        let t = upstream_limits(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[1]
                .starts_with("UPSTREAM LIMITS  RATE/S     CONCURRENCY  SHAPING  REMAINING  RULE"),
            "{t}"
        );
        assert!(
            t.contains("ses              5.0        2            SLOW     42s        ses-maximum-sending-rate-exceeded  fleet (relay-1)  1234/50000 recipients/day  2026-12-03T00:00:00Z"),
            "{t}"
        );
        assert!(
            t.contains("backup           unlimited  8            -        -          -                                  -                10/10 messages/day SPENT   2026-12-03T06:00:00Z"),
            "{t}"
        );
        assert!(
            !t.contains("old"),
            "an upstream without limits is left out: {t}"
        );
        // Part of the status tables; none without limits (an older relay).
        assert!(shaping(&v).contains("UPSTREAM LIMITS"));
        let older = serde_json::json!({"upstreams": [{"name": "a", "up": true}]});
        assert_eq!(upstream_limits(&older), "");
        // A local suspension known only from `limits` (no `shaping`): still shown.
        let local = serde_json::json!({"upstreams": [{"name": "m", "limits": {"concurrency": 1, "slowed": true, "suspended": true, "slowed_for_secs": 9, "slowed_by": "r", "quotas": []}}]});
        let t = upstream_limits(&local);
        assert!(t.contains("SUSPEND") && t.contains("9s"), "{t}");
        let c = cleared(
            &serde_json::json!({"shaping_cleared": [], "upstream_shaping_cleared": ["ses"]}),
        );
        assert!(c.contains("upstream ses") && !c.contains("cluster"), "{c}");
    }
}
