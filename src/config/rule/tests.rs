use std::time::Duration;

use super::super::Config;
use super::*;

const UPSTREAM: &str = "[[upstream]]\nname = \"outbox\"\ndir = \"./outbox\"\n";

fn problems(text: &str) -> Vec<String> {
    match Config::from_toml(&format!("{text}\n{UPSTREAM}")) {
        Ok(_) => vec![],
        Err(e) => e.problems.iter().map(|p| p.to_string()).collect(),
    }
}

fn rules(text: &str) -> Vec<ShapingRule> {
    Config::from_toml(&format!(
        "[shaping]\ndefault_rules = false\n{text}\n{UPSTREAM}"
    ))
    .unwrap()
    .shaping
    .rules
}

fn matches(rule: &ShapingRule, reply: &str) -> bool {
    let (code, text) = reply.split_once(' ').unwrap();
    rule.matches(code.parse().unwrap(), text)
}

#[test]
fn rules_parse_into_typed_values() {
    let r = rules(
        r#"
[[shaping.rule]]
contains = "[TS01]"
action = "slow"
factor = 0.25
duration = "2m"
[[shaping.rule]]
name = "many"
regex = '^421 .*too many'
action = "suspend"
duration = 30
"#,
    );
    assert_eq!(r.len(), 2);
    let r0 = &r[0];
    assert_eq!(
        r0.name, "shaping.rule[0]",
        "the default name is the key path"
    );
    assert_eq!(r0.class, ReplyClass::Temporary, "4xx unless told otherwise");
    assert_eq!(r0.action, ShapingAction::Slow { factor: 0.25 });
    assert_eq!(r0.duration, RuleDuration::For(Duration::from_secs(120)));
    assert!(matches(r0, "421 4.7.0 [ts01] Messages deferred"));
    assert!(!matches(r0, "421 4.7.0 TS01 without brackets"));
    assert!(!matches(r0, "550 5.7.1 [TS01] a 5xx is not a 4xx"));
    let r1 = &r[1];
    assert_eq!(r1.name, "many");
    assert_eq!(r1.action, ShapingAction::Suspend);
    assert!(matches(r1, "421 4.7.0 Too Many connections"));
    assert!(!matches(r1, "451 too many connections"));
}

#[test]
fn class_enhanced_code_set_until_threshold_defer_and_fail() {
    let r = rules(
        r#"
[[shaping.rule]]
name = "qq"
class = "5xx"
contains = "frequency limited"
action = "suspend"
until = "00:00+08:00"
threshold = "5/1h"
[[shaping.rule]]
class = "any"
enhanced = "4.7."
action = "set"
max_connections = 1
max_deliveries_per_connection = 2
messages_per_second = 0.5
duration = "1h"
[[shaping.rule]]
class = "any"
enhanced = "5.7.1"
contains = "blocked"
action = "fail"
[[shaping.rule]]
enhanced = "4.2.1"
action = "defer"
"#,
    );
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].class, ReplyClass::Permanent);
    assert!(matches(&r[0], "550 Ip frequency limited"));
    assert!(!matches(&r[0], "450 Ip frequency limited"));
    assert_eq!(
        r[0].duration,
        RuleDuration::Until(WallClock {
            minute_of_day: 0,
            offset_minutes: 480
        })
    );
    assert_eq!(
        r[0].threshold,
        Some(Threshold {
            count: 5,
            window: Duration::from_secs(3600)
        })
    );
    assert_eq!(
        r[1].action,
        ShapingAction::Set(SetLimits {
            max_connections: Some(1),
            max_deliveries_per_connection: Some(2),
            messages_per_second: PerSecond::new(0.5),
        })
    );
    assert!(matches(&r[1], "421 4.7.0 anything"));
    assert!(matches(&r[1], "421 4.7.28 anything"));
    assert!(!matches(&r[1], "421 4.70.0 not 4.7"));
    assert!(!matches(&r[1], "421 4.4.5 Server busy"));
    assert!(!matches(&r[1], "421 no enhanced code at all"));
    assert_eq!(r[2].action, ShapingAction::Fail);
    assert!(matches(&r[2], "550 5.7.1 blocked"));
    assert!(
        !matches(&r[2], "550 5.7.10 blocked"),
        "5.7.1 is not a prefix of 5.7.10"
    );
    assert!(!matches(&r[2], "550 5.7.1 refused"), "text and code both");
    assert_eq!(r[3].action, ShapingAction::Defer);
    assert!(r[3].pattern.is_none());
    assert!(matches(
        &r[3],
        "450 4.2.1 The user is receiving mail too quickly"
    ));
}

#[test]
fn bad_rules_are_reported_with_key_paths() {
    let got = problems(
        r#"
[[shaping.rule]]
regex = "(unclosed"
action = "slow"
duration = "1m"
[[shaping.rule]]
contains = "x"
action = "halve"
duration = "1m"
[[shaping.rule]]
contains = "x"
action = "slow"
factor = 1.5
[[shaping.rule]]
action = "suspend"
duration = "1m"
bogus = 1
[[shaping.rule]]
contains = "x"
class = "3xx"
action = "set"
duration = "1m"
[[shaping.rule]]
enhanced = "4.x"
action = "suspend"
until = "25:00"
[[shaping.rule]]
contains = "x"
action = "suspend"
duration = "1m"
threshold = "five/1h"
[[shaping.rule]]
contains = "x"
action = "suspend"
duration = "1m"
until = "00:00"
[[shaping.rule]]
contains = "x"
action = "fail"
duration = "1m"
[[shaping.rule]]
contains = "x"
action = "set"
max_connections = 0
duration = "1m"
[[shaping.rule]]
contains = "x"
action = "suspend"
messages_per_second = 1.0
until = "00:00+99:00"
[[shaping.rule]]
name = "dup"
contains = "x"
action = "defer"
[[shaping.rule]]
name = "dup"
contains = "y"
action = "defer"
"#,
    );
    let has = |prefix: &str| got.iter().any(|g| g.starts_with(prefix));
    assert!(has("shaping.rule[0].regex: invalid regex"), "{got:?}");
    assert!(has("shaping.rule[1].action"), "{got:?}");
    assert!(has("shaping.rule[2].factor"), "{got:?}");
    assert!(has("shaping.rule[2].duration: is required"), "{got:?}");
    assert!(has("shaping.rule[3].bogus"), "{got:?}");
    assert!(has("shaping.rule[4].class"), "{got:?}");
    assert!(has("shaping.rule[4]: action = \"set\" needs"), "{got:?}");
    assert!(has("shaping.rule[5].enhanced"), "{got:?}");
    assert!(has("shaping.rule[6].threshold"), "{got:?}");
    assert!(
        has("shaping.rule[7]: give either duration or until"),
        "{got:?}"
    );
    assert!(
        has("shaping.rule[8]: duration and until only apply"),
        "{got:?}"
    );
    assert!(
        has("shaping.rule[9].max_connections: must be at least 1"),
        "{got:?}"
    );
    assert!(
        has("shaping.rule[10].messages_per_second: only applies"),
        "{got:?}"
    );
    assert!(has("shaping.rule[10].until"), "{got:?}");
    assert!(has("shaping.rule[12].name"), "{got:?}");
}

#[test]
fn until_is_the_next_such_wall_clock_time() {
    // 2025-12-02T12:00:00Z is 20:00 in Beijing: Beijing midnight is 4 h away.
    let noon_utc = 1_764_676_800;
    let beijing_midnight = WallClock::parse("00:00+08:00").unwrap();
    assert_eq!(beijing_midnight.seconds_until(noon_utc), 4 * 3600);
    assert_eq!(beijing_midnight.to_string(), "00:00+08:00");
    let utc = WallClock::parse("12:30").unwrap();
    assert_eq!(utc.seconds_until(noon_utc), 30 * 60);
    assert_eq!(
        WallClock::parse("12:00Z").unwrap().seconds_until(noon_utc),
        86_400,
        "now is not 'until': the next one is tomorrow"
    );
    let new_york = WallClock::parse("06:00-05:00").unwrap();
    assert_eq!(
        new_york.seconds_until(noon_utc),
        23 * 3600,
        "11:00 UTC tomorrow"
    );
    for bad in ["24:00", "7:00", "00:00+8", "00:00+15:00", "noon", ""] {
        assert!(WallClock::parse(bad).is_none(), "{bad}");
    }
}

#[test]
fn thresholds_parse() {
    let t = |s: &str| Threshold::parse(s).map(|t| (t.count, t.window.as_secs()));
    assert_eq!(t("5/1h"), Ok((5, 3600)));
    assert_eq!(t("5/hr"), Ok((5, 3600)));
    assert_eq!(t("2/30m"), Ok((2, 1800)));
    assert_eq!(t("10/day"), Ok((10, 86_400)));
    for bad in ["0/1h", "5", "5/0s", "x/1h", "5/fortnightish"] {
        assert!(Threshold::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn enhanced_codes_are_read_from_the_text() {
    assert_eq!(enhanced_code("4.7.0 [TS01] deferred"), Some("4.7.0"));
    assert_eq!(enhanced_code("5.7.28 blocked"), Some("5.7.28"));
    assert_eq!(enhanced_code("DT:SPM 163 smtp"), None);
    assert_eq!(enhanced_code("4.7 short"), None);
    assert_eq!(enhanced_code(""), None);
}
