//! Parsing `[[shaping.rule]]` entries into [`ShapingRule`] values, every problem reported with
//! its key path (`shaping.rule[2].until: ...`).

use std::time::Duration;

use super::super::raw::RawRule;
use super::super::values::{Problems, duration};
use super::{
    PerSecond, ReplyClass, ReplyPattern, RuleDuration, RuleScope, SetLimits, ShapingAction,
    ShapingRule, Threshold, WallClock,
};

/// Parses `[[shaping.rule]]` entries; every problem is reported with its key path.
pub(in crate::config) fn validate_rules(
    raw: Vec<toml::Value>,
    p: &mut Problems,
) -> Vec<ShapingRule> {
    let mut rules: Vec<ShapingRule> = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let path = format!("shaping.rule[{i}]");
        let Some(r) = super::super::read::deserialize_at::<RawRule>(value, &path, p) else {
            continue;
        };
        let Some(rule) = validate_rule(r, &path, p) else {
            continue;
        };
        if rules.iter().any(|other| other.name == rule.name) {
            p.push(
                &format!("{path}.name"),
                format!("{:?} names another rule too", rule.name),
            );
        }
        rules.push(rule);
    }
    rules
}

fn validate_rule(r: RawRule, path: &str, p: &mut Problems) -> Option<ShapingRule> {
    let key = |k: &str| format!("{path}.{k}");
    let name = match r.name {
        Some(n) if n.is_empty() || !n.chars().all(|c| c.is_ascii_graphic()) => {
            p.push(&key("name"), "must be printable ASCII without spaces");
            None
        }
        Some(n) => Some(n),
        None => Some(path.to_string()),
    };
    let class = match r.class.as_deref() {
        None | Some("4xx") => Some(ReplyClass::Temporary),
        Some("5xx") => Some(ReplyClass::Permanent),
        Some("any") => Some(ReplyClass::Any),
        Some(other) => {
            p.push(
                &key("class"),
                format!("{other:?} is not one of \"4xx\", \"5xx\", \"any\""),
            );
            None
        }
    };
    let enhanced = match r.enhanced {
        Some(e) => {
            let trimmed = e.trim_end_matches('.');
            let parts: Vec<&str> = trimmed.split('.').collect();
            let ok = matches!(parts[0], "4" | "5")
                && parts.len() <= 3
                && parts[1..].iter().all(|p| {
                    !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit())
                });
            if !ok {
                p.push(
                    &key("enhanced"),
                    format!("{e:?} is not an enhanced status code (prefix) such as \"5.7.1\" or \"4.7.\""),
                );
                return None;
            }
            Some(trimmed.to_string())
        }
        None => None,
    };
    let pattern = match (r.contains, r.regex) {
        (Some(s), None) if !s.is_empty() => Some(Some(ReplyPattern::contains(&s))),
        (Some(_), None) => {
            p.push(&key("contains"), "must not be empty");
            None
        }
        (None, Some(re)) => match ReplyPattern::regex(&re) {
            Ok(pattern) => Some(Some(pattern)),
            Err(what) => {
                p.push(&key("regex"), format!("invalid regex {re:?}: {what}"));
                None
            }
        },
        (Some(_), Some(_)) => {
            p.push(path, "give either contains or regex, not both");
            None
        }
        (None, None) if enhanced.is_some() => Some(None),
        (None, None) => {
            if !p.is_broken(&key("contains")) && !p.is_broken(&key("regex")) {
                p.push(
                    path,
                    "needs contains = \"text\", regex = \"pattern\" or enhanced = \"5.7.1\"",
                );
            }
            None
        }
    };
    let limits_given = r.max_connections.is_some()
        || r.max_deliveries_per_connection.is_some()
        || r.messages_per_second.is_some();
    let only_for = |p: &mut Problems, k: &str, given: bool, action: &str| {
        if given {
            p.push(&key(k), format!("only applies to action = \"{action}\""));
        }
    };
    let action = match r.action.as_deref() {
        Some("slow") => {
            let factor = r.factor.unwrap_or(0.5);
            only_for(p, "max_connections", r.max_connections.is_some(), "set");
            only_for(
                p,
                "max_deliveries_per_connection",
                r.max_deliveries_per_connection.is_some(),
                "set",
            );
            only_for(
                p,
                "messages_per_second",
                r.messages_per_second.is_some(),
                "set",
            );
            if factor > 0.0 && factor < 1.0 {
                Some(ShapingAction::Slow { factor })
            } else {
                p.push(&key("factor"), "must be greater than 0 and less than 1");
                None
            }
        }
        Some(other @ ("suspend" | "set" | "defer" | "fail")) => {
            only_for(p, "factor", r.factor.is_some(), "slow");
            if other != "set" {
                only_for(p, "max_connections", r.max_connections.is_some(), "set");
                only_for(
                    p,
                    "max_deliveries_per_connection",
                    r.max_deliveries_per_connection.is_some(),
                    "set",
                );
                only_for(
                    p,
                    "messages_per_second",
                    r.messages_per_second.is_some(),
                    "set",
                );
            }
            match other {
                "suspend" => Some(ShapingAction::Suspend),
                "defer" => Some(ShapingAction::Defer),
                "fail" => Some(ShapingAction::Fail),
                _ if !limits_given => {
                    p.push(
                        path,
                        "action = \"set\" needs max_connections, max_deliveries_per_connection or messages_per_second",
                    );
                    None
                }
                _ => set_limits(
                    (r.max_connections, r.max_deliveries_per_connection),
                    r.messages_per_second,
                    path,
                    p,
                )
                .map(ShapingAction::Set),
            }
        }
        Some(other) => {
            p.push(
                &key("action"),
                format!("{other:?} is not one of slow, suspend, set, defer, fail"),
            );
            None
        }
        None => {
            p.push(
                &key("action"),
                "is required (slow, suspend, set, defer or fail)",
            );
            None
        }
    };
    // defer and fail act on the copy only: no duration, no threshold.
    let lasting = !matches!(r.action.as_deref(), Some("defer") | Some("fail") | None);
    let dur = match (r.duration, r.until) {
        (Some(_), Some(_)) => {
            p.push(path, "give either duration or until, not both");
            None
        }
        (Some(_), None) | (None, Some(_)) if !lasting => {
            if r.action.is_some() {
                p.push(
                    path,
                    "duration and until only apply to actions slow, suspend and set",
                );
            }
            None
        }
        (Some(d), None) => match duration(&d, &key("duration"), p) {
            Some(Duration::ZERO) => {
                p.push(&key("duration"), "must be longer than 0");
                None
            }
            other => other.map(RuleDuration::For),
        },
        (None, Some(u)) => match WallClock::parse(&u) {
            Some(w) => Some(RuleDuration::Until(w)),
            None => {
                p.push(
                    &key("until"),
                    format!("{u:?} is not a time of day such as \"00:00\" or \"00:00+08:00\""),
                );
                None
            }
        },
        (None, None) if lasting => {
            p.push(
                &key("duration"),
                "is required, e.g. \"10m\" (or until = \"HH:MM\")",
            );
            None
        }
        (None, None) => Some(RuleDuration::For(Duration::ZERO)),
    };
    let threshold = match r.threshold {
        Some(_) if !lasting => {
            if r.action.is_some() {
                p.push(
                    &key("threshold"),
                    "only applies to actions slow, suspend and set",
                );
            }
            return None;
        }
        Some(t) => match Threshold::parse(&t) {
            Ok(t) => Some(Some(t)),
            Err(e) => {
                p.push(&key("threshold"), e);
                None
            }
        },
        None => Some(None),
    };
    Some(ShapingRule {
        name: name?,
        class: class?,
        enhanced,
        pattern: pattern?,
        action: action?,
        duration: dur?,
        threshold: threshold?,
        scope: RuleScope::Provider,
    })
}

/// The limits of an `action = "set"` rule: (`max_connections`,
/// `max_deliveries_per_connection`) and `messages_per_second`.
fn set_limits(
    (connections, per_connection): (Option<u64>, Option<u64>),
    rate: Option<f64>,
    path: &str,
    p: &mut Problems,
) -> Option<SetLimits> {
    let mut ok = true;
    let mut at_least_one = |k: &str, v: Option<u64>| match v {
        Some(0) => {
            p.push(&format!("{path}.{k}"), "must be at least 1");
            ok = false;
            None
        }
        other => other,
    };
    let max_connections = at_least_one("max_connections", connections);
    let per_connection = at_least_one("max_deliveries_per_connection", per_connection);
    let rate = match rate {
        Some(v) => match PerSecond::new(v) {
            Some(rate) => Some(rate),
            None => {
                p.push(
                    &format!("{path}.messages_per_second"),
                    "must be a positive number",
                );
                return None;
            }
        },
        None => None,
    };
    ok.then_some(SetLimits {
        max_connections: max_connections.map(|c| c.min(usize::MAX as u64) as usize),
        max_deliveries_per_connection: per_connection.map(|c| c.min(u64::from(u32::MAX)) as u32),
        messages_per_second: rate,
    })
}
