//! Built-in rules for the upstream ESPs' own limits (scope: the upstream that answered, not
//! the recipient's provider): an account's sending rate, its connections, its daily quota.
//!
//! One compact table ([`TABLE`]); each row names the ESP, the wording it matches and what it
//! means. Sources are in docs/shaping.md ("ESP replies"). Two kinds of rows:
//! - pacing rows ([`EspEffect::Slow`], [`EspEffect::Connections`], [`EspEffect::Suspend`]) become upstream-scoped
//!   [`ShapingRule`]s ([`built_in`]), applied by the queue to the upstream that answered
//!   (`UpstreamSlot::slow_down`);
//! - quota rows ([`EspEffect::QuotaSpent`]) are read by the failover itself ([`quota_spent`]):
//!   the copy goes on to the next upstream at once, or waits for the quota's reset. They apply
//!   even with `shaping.default_rules = false`: the alternative is bouncing mail (a 5xx quota
//!   reply) or retrying it into a spent quota.

use std::time::Duration;

use crate::config::{ReplyClass, ReplyPattern, RuleScope, SetLimits, ShapingAction, ShapingRule};

/// What a matching reply means for the upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EspEffect {
    /// Too fast: multiply the upstream's rate and connections by the factor for a while.
    Slow(f64),
    /// Too many connections: at most this many to the upstream for a while.
    Connections(usize),
    /// Stop using the upstream for a while (copies go to the next one, or wait).
    Suspend,
    /// The account's daily quota is used up: spent until the upstream's `quota_reset`.
    QuotaSpent,
}

/// One row: the ESP, a case-insensitive text the reply contains, the effect and its length
/// (minutes; unused for a spent quota, which lasts until the reset).
pub struct EspRule {
    pub esp: &'static str,
    pub contains: &'static str,
    pub effect: EspEffect,
    pub minutes: u64,
}

const fn row(
    esp: &'static str,
    contains: &'static str,
    effect: EspEffect,
    minutes: u64,
) -> EspRule {
    EspRule {
        esp,
        contains,
        effect,
        minutes,
    }
}

/// The built-in ESP rules, most specific first. Texts are lower-case.
pub const TABLE: &[EspRule] = &[
    // Amazon SES SMTP: "454 Throttling failure: Maximum sending rate exceeded." / "... Daily
    // message quota exceeded." (AWS wait up to 10 minutes after a throttle.)
    row(
        "ses",
        "maximum sending rate exceeded",
        EspEffect::Slow(0.5),
        10,
    ),
    row(
        "ses",
        "daily message quota exceeded",
        EspEffect::QuotaSpent,
        0,
    ),
    // Microsoft 365 SMTP AUTH: "432 4.3.2 Concurrent connections limit exceeded" (3 per
    // mailbox), "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException"
    // (recipients per day), "550 5.2.25x Sender throttled due to continuous ... errors".
    row(
        "m365",
        "concurrent connections limit exceeded",
        EspEffect::Connections(3),
        60,
    ),
    row(
        "m365",
        "sender thread limit exceeded",
        EspEffect::Connections(3),
        60,
    ),
    row("m365", "submissionquotaexceeded", EspEffect::QuotaSpent, 0),
    row(
        "m365",
        "sender throttled due to continuous",
        EspEffect::Suspend,
        60,
    ),
    // SendGrid: "451 Authentication failed: Maximum credits exceeded" (the plan's credits; the
    // free plan's reset the next day, UTC).
    row(
        "sendgrid",
        "maximum credits exceeded",
        EspEffect::QuotaSpent,
        0,
    ),
    // Gmail / Google Workspace SMTP relay: "550 5.4.5 Daily sending quota exceeded" /
    // "Daily user sending quota exceeded" / "Daily user sending limit exceeded".
    row(
        "gmail",
        "daily sending quota exceeded",
        EspEffect::QuotaSpent,
        0,
    ),
    row(
        "gmail",
        "daily user sending quota exceeded",
        EspEffect::QuotaSpent,
        0,
    ),
    row(
        "gmail",
        "daily user sending limit exceeded",
        EspEffect::QuotaSpent,
        0,
    ),
];

/// The pacing rows as upstream-scoped shaping rules, tried after the providers' ones.
pub fn built_in() -> Vec<ShapingRule> {
    TABLE
        .iter()
        .filter_map(|r| {
            let action = match r.effect {
                EspEffect::Slow(factor) => ShapingAction::Slow { factor },
                EspEffect::Connections(n) => ShapingAction::Set(SetLimits {
                    max_connections: Some(n),
                    ..SetLimits::default()
                }),
                EspEffect::Suspend => ShapingAction::Suspend,
                EspEffect::QuotaSpent => return None,
            };
            let name = format!("{}-{}", r.esp, r.contains.replace(' ', "-"));
            Some(
                ShapingRule::new(
                    &name,
                    ReplyPattern::contains(r.contains),
                    action,
                    Duration::from_secs(60 * r.minutes),
                )
                // SES says it with a 454, Microsoft with 432 or 550.
                .with_class(ReplyClass::Any)
                .with_scope(RuleScope::Upstream),
            )
        })
        .collect()
}

/// The quota row `reply` matches (any reply code: SES says it with a 454, Microsoft with a
/// 554, SendGrid at AUTH), if any.
pub fn quota_spent(reply: &str) -> Option<&'static EspRule> {
    let reply = reply.to_ascii_lowercase();
    TABLE
        .iter()
        .filter(|r| r.effect == EspEffect::QuotaSpent)
        .find(|r| reply.contains(r.contains))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::rules;

    #[test]
    fn esp_throttles_pace_the_upstream_and_quotas_are_not_pacing_rules() {
        let rules = built_in();
        let found = |reply: &str| {
            let (code, text) = reply.split_once(' ').unwrap();
            let error = crate::upstream::UpstreamError::Rejected {
                stage: crate::upstream::Stage::MailFrom,
                code: code.parse().unwrap(),
                text: text.into(),
            };
            rules::find(&rules, &error).map(|r| (r.action, r.scope))
        };
        let three = ShapingAction::Set(SetLimits {
            max_connections: Some(3),
            ..SetLimits::default()
        });
        assert_eq!(
            found("454 Throttling failure: Maximum sending rate exceeded."),
            Some((ShapingAction::Slow { factor: 0.5 }, RuleScope::Upstream))
        );
        assert_eq!(
            found("432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/x"),
            Some((three, RuleScope::Upstream))
        );
        assert_eq!(
            found(
                "550 5.2.252 SendAsDenied; Sender throttled due to continuous send as denied errors"
            ),
            Some((ShapingAction::Suspend, RuleScope::Upstream))
        );
        assert_eq!(
            found("454 Throttling failure: Daily message quota exceeded."),
            None
        );
        assert_eq!(
            found("451 4.3.0 Mail server temporarily rejected message."),
            None
        );
    }

    #[test]
    fn quota_replies_are_recognised_whatever_the_code() {
        let esp = |reply: &str| quota_spent(reply).map(|r| r.esp);
        assert_eq!(
            esp("454 Throttling failure: Daily message quota exceeded."),
            Some("ses")
        );
        assert_eq!(
            esp(
                "554 5.2.0 STOREDRV.Submission.Exception:SubmissionQuotaExceededException; Failed to process message"
            ),
            Some("m365")
        );
        assert_eq!(
            esp("451 Authentication failed: Maximum credits exceeded"),
            Some("sendgrid")
        );
        assert_eq!(
            esp("550 5.4.5 Daily sending quota exceeded. Learn more"),
            Some("gmail")
        );
        assert_eq!(
            esp("454 Throttling failure: Maximum sending rate exceeded."),
            None
        );
        assert_eq!(esp("552 5.2.2 mailbox full"), None);
    }
}
