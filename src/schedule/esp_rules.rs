//! Built-in rules for the upstream ESPs' own limits (scope: the upstream that answered, not
//! the recipient's provider): an account's sending rate or daily quota.

use std::time::Duration;

use crate::config::{ReplyPattern, RuleScope, ShapingAction, ShapingRule};

/// The built-in ESP rules, tried after the providers' ones.
pub fn built_in() -> Vec<ShapingRule> {
    vec![
        // Amazon SES SMTP: "454 Throttling failure: Maximum sending rate exceeded."
        ShapingRule::new(
            "ses-throttling",
            ReplyPattern::contains("throttling failure"),
            ShapingAction::Slow { factor: 0.5 },
            Duration::from_secs(5 * 60),
        )
        .with_scope(RuleScope::Upstream),
    ]
}
