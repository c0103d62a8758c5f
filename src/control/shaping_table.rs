//! The shaping part of `ctl status --table`: each provider's limits in force, the slowdowns and
//! suspensions with their remaining time, rule, origin and the reply that caused them, and how
//! the shaping state is shared with `[cluster]`; and the answer of `ctl shaping clear`.

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
            let origin = match (s["origin"].as_str(), s["by"].as_str()) {
                (Some("fleet"), Some(by)) => format!("fleet ({by})"),
                (Some(o), _) => o.to_string(),
                (None, _) => "-".into(),
            };
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

/// The answer of `POST /shaping/clear`: which providers were lifted here.
pub fn cleared(v: &Value) -> String {
    let names: Vec<String> = v["shaping_cleared"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(text)
        .collect();
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
}
