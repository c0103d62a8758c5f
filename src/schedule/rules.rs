//! Which deferral replies mean "you are sending too fast", and what they do to the provider.
//!
//! Configured `[[shaping.rule]]` entries are tried first, then (unless `[shaping]
//! default_rules = false`) the built-in ones below; the first match wins. Only temporary (4xx)
//! replies are matched: a permanent failure says nothing about pace.

use std::time::Duration;

use crate::config::{ReplyPattern, RuleScope, ShapingAction, ShapingConfig, ShapingRule};
use crate::upstream::UpstreamError;

/// The built-in rules, most specific first.
pub fn built_in() -> Vec<ShapingRule> {
    let contains = |s: &str| ReplyPattern::Contains(s.to_ascii_lowercase());
    let regex = |s: &str| {
        ReplyPattern::Regex(
            regex::RegexBuilder::new(s)
                .case_insensitive(true)
                .build()
                .expect("built-in rule compiles"),
        )
    };
    let slow = |pattern, factor, minutes: u64| ShapingRule {
        pattern,
        action: ShapingAction::Slow { factor },
        duration: Duration::from_secs(60 * minutes),
        scope: RuleScope::Provider,
    };
    vec![
        // Yahoo/AOL: TSS04 means "stop for a while"; TS01-TS03 "slow down".
        ShapingRule {
            pattern: contains("[TSS04]"),
            action: ShapingAction::Suspend,
            duration: Duration::from_secs(15 * 60),
            scope: RuleScope::Provider,
        },
        slow(regex(r"\[TS0[1-3]\]"), 0.5, 10),
        // NetEase (163.com, 126.com, yeah.net): DT:SPM is its rate/spam deferral.
        slow(contains("DT:SPM"), 0.5, 10),
        // Many providers: too many simultaneous connections from us.
        slow(contains("too many connections"), 0.5, 5),
        // Generic wording for rate limits.
        slow(
            regex(
                r"rate[- ]limit|too many (messages|mails|emails)|sending too fast|try again later",
            ),
            0.5,
            5,
        ),
    ]
}

/// The rules in force for a configuration, in matching order.
pub fn for_config(config: &ShapingConfig) -> Vec<ShapingRule> {
    let mut rules = config.rules.clone();
    if config.default_rules {
        rules.extend(built_in());
        rules.extend(super::esp_rules::built_in());
    }
    rules
}

/// The reply of a temporary failure as rules see it (`"<code> <text>"`), or `None` when the
/// failure carries no 4xx reply from the upstream.
pub fn deferral_reply(error: &UpstreamError) -> Option<String> {
    let code = error.code()?;
    if !(400..500).contains(&code) || !error.is_temporary() {
        return None;
    }
    error.reply_text().map(|text| format!("{code} {text}"))
}

/// The first rule matching `reply`.
pub fn find<'a>(rules: &'a [ShapingRule], reply: &str) -> Option<&'a ShapingRule> {
    rules.iter().find(|r| r.pattern.matches(reply))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(reply: &str) -> Option<ShapingAction> {
        let rules = built_in();
        find(&rules, reply).map(|r| r.action)
    }

    #[test]
    fn built_in_rules_recognise_known_deferrals() {
        let slow = Some(ShapingAction::Slow { factor: 0.5 });
        assert_eq!(
            action("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred"),
            Some(ShapingAction::Suspend)
        );
        assert_eq!(
            action("421 4.7.0 [TS01] Messages from 192.0.2.1 deferred"),
            slow
        );
        assert_eq!(action("421 4.7.0 [TS03] All messages deferred"), slow);
        assert_eq!(action("451 DT:SPM 163 smtp1,C9GowAB"), slow);
        assert_eq!(action("421 4.7.0 Too many connections from your IP"), slow);
        assert_eq!(action("450 4.7.1 Rate limited, slow down"), slow);
        assert_eq!(action("451 4.3.0 Please try again later"), slow);
        assert_eq!(action("452 4.2.2 Mailbox full"), None);
        assert_eq!(action("450 4.1.1 [TS04] not a Yahoo code"), None);
    }

    #[test]
    fn configured_rules_come_first_and_defaults_can_be_off() {
        let mine = ShapingRule {
            pattern: ReplyPattern::Contains("[ts01]".into()),
            action: ShapingAction::Suspend,
            duration: Duration::from_secs(1),
            scope: RuleScope::Provider,
        };
        let config = ShapingConfig {
            default_rules: true,
            rules: vec![mine],
            mx: None,
        };
        let rules = for_config(&config);
        assert_eq!(
            rules.len(),
            built_in().len() + super::super::esp_rules::built_in().len() + 1
        );
        assert_eq!(
            find(&rules, "421 [TS01] x").map(|r| r.action),
            Some(ShapingAction::Suspend)
        );
        let only_mine = for_config(&ShapingConfig {
            default_rules: false,
            ..config
        });
        assert!(find(&only_mine, "451 DT:SPM").is_none());
    }

    #[test]
    fn only_4xx_replies_are_matched() {
        use crate::upstream::Stage;
        let rejected = |code: u16| UpstreamError::Rejected {
            stage: Stage::MailFrom,
            code,
            text: "[TS01] slow down".into(),
        };
        assert_eq!(
            deferral_reply(&rejected(421)).as_deref(),
            Some("421 [TS01] slow down")
        );
        assert_eq!(deferral_reply(&rejected(554)), None);
        let refused = UpstreamError::Refused {
            stage: Stage::Greeting,
            code: 421,
            text: "Too many connections".into(),
        };
        assert!(deferral_reply(&refused).is_some());
        assert_eq!(
            deferral_reply(&UpstreamError::NoStartTls),
            None,
            "no reply, no rule"
        );
    }
}
