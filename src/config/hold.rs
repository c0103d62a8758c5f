//! `[privacy] hold_*` and `canary*`: the bulk hold (see `docs/bulk-hold.md`). A message that fans
//! out to more recipients than `hold_fanout_above` sends a few canary copies at once and waits
//! for an operator before the rest go out.

use std::time::Duration;

use super::raw::RawPrivacy;
use super::values::{Problems, duration};

/// How many canary copies go out at once when `canary` is not set.
pub const DEFAULT_CANARY: usize = 3;
/// How long a held message waits for an operator when `hold_timeout` is not set.
pub const DEFAULT_HOLD_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// The bulk hold, present only when `privacy.hold_fanout_above` is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldConfig {
    /// A message with more envelope recipients than this is held.
    pub fanout_above: usize,
    /// Canary copies to the first `canary` envelope recipients (unused when
    /// `canary_recipients` is set).
    pub canary: usize,
    /// Operator mailboxes that get the canary copies instead of real recipients.
    pub canary_recipients: Vec<String>,
    /// How long a message stays held without an operator's decision.
    pub timeout: Duration,
    pub timeout_action: HoldTimeoutAction,
}

/// What happens to a held message when `hold_timeout` passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldTimeoutAction {
    Release,
    Drop,
}

impl HoldTimeoutAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldTimeoutAction::Release => "release",
            HoldTimeoutAction::Drop => "drop",
        }
    }
}

/// Validates the hold keys of `[privacy]`; `None` when the hold is off.
pub(super) fn validate(raw: &RawPrivacy, p: &mut Problems) -> Option<HoldConfig> {
    let Some(fanout_above) = raw.hold_fanout_above else {
        let stray = [
            ("privacy.canary", raw.canary.is_some()),
            ("privacy.canary_recipients", raw.canary_recipients.is_some()),
            ("privacy.hold_timeout", raw.hold_timeout.is_some()),
            (
                "privacy.hold_timeout_action",
                raw.hold_timeout_action.is_some(),
            ),
        ];
        for (key, set) in stray {
            if set {
                p.push(
                    key,
                    "has no effect without privacy.hold_fanout_above (the bulk hold is off)",
                );
            }
        }
        return None;
    };
    if fanout_above == 0 {
        p.push(
            "privacy.hold_fanout_above",
            "must be at least 1; omit it to turn the bulk hold off",
        );
    }
    let fanout_above = fanout_above as usize;
    let canary = raw.canary.map_or(DEFAULT_CANARY, |c| c as usize);
    if fanout_above > 0 && canary > fanout_above {
        p.push(
            "privacy.canary",
            format!("must not exceed privacy.hold_fanout_above ({fanout_above})"),
        );
    }
    let canary_recipients: Vec<String> = raw
        .canary_recipients
        .clone()
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let a = a.trim().to_string();
            let ok = a
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty() && !d.contains('@'))
                && !a.contains(|c: char| c.is_whitespace() || "<>,;\"".contains(c));
            if ok {
                Some(a)
            } else {
                p.push(
                    &format!("privacy.canary_recipients[{i}]"),
                    "must be a mailbox such as ops@example.com",
                );
                None
            }
        })
        .collect();
    if raw.canary.is_some() && raw.canary_recipients.is_some() {
        p.push(
            "privacy.canary",
            "conflicts with privacy.canary_recipients: set one (canary copies go either to the first recipients or to the listed mailboxes)",
        );
    }
    if raw.canary_recipients.as_ref().is_some_and(Vec::is_empty) {
        p.push(
            "privacy.canary_recipients",
            "must name at least one mailbox; omit it to send canaries to the first recipients",
        );
    }
    let timeout = raw
        .hold_timeout
        .as_ref()
        .and_then(|d| duration(d, "privacy.hold_timeout", p))
        .unwrap_or(DEFAULT_HOLD_TIMEOUT);
    if timeout.is_zero() {
        p.push("privacy.hold_timeout", "must be longer than zero");
    }
    let timeout_action = match raw.hold_timeout_action.as_deref().unwrap_or("drop") {
        "release" => HoldTimeoutAction::Release,
        "drop" => HoldTimeoutAction::Drop,
        other => {
            p.push(
                "privacy.hold_timeout_action",
                format!("{other:?} is not one of release, drop"),
            );
            HoldTimeoutAction::Drop
        }
    };
    Some(HoldConfig {
        fanout_above,
        canary,
        canary_recipients,
        timeout,
        timeout_action,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    const UPSTREAM: &str = "[[upstream]]\nname = \"o\"\ndir = \"./o\"\n";

    fn problems(privacy: &str) -> Vec<String> {
        match Config::from_toml(&format!("[privacy]\n{privacy}\n{UPSTREAM}")) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(|p| p.path.clone()).collect(),
        }
    }

    #[test]
    fn hold_is_off_by_default_and_has_documented_defaults() {
        let c = Config::from_toml(UPSTREAM).unwrap();
        assert_eq!(c.hold, None);
        let c =
            Config::from_toml(&format!("[privacy]\nhold_fanout_above = 100\n{UPSTREAM}")).unwrap();
        let hold = c.hold.unwrap();
        assert_eq!(hold.fanout_above, 100);
        assert_eq!(hold.canary, DEFAULT_CANARY);
        assert!(hold.canary_recipients.is_empty());
        assert_eq!(hold.timeout, DEFAULT_HOLD_TIMEOUT);
        assert_eq!(hold.timeout_action, HoldTimeoutAction::Drop);
    }

    #[test]
    fn bad_hold_keys_are_named() {
        assert_eq!(problems("canary = 2"), ["privacy.canary"]);
        assert_eq!(
            problems("hold_fanout_above = 0"),
            ["privacy.hold_fanout_above"]
        );
        assert_eq!(
            problems("hold_fanout_above = 5\ncanary = 6"),
            ["privacy.canary"]
        );
        assert_eq!(
            problems("hold_fanout_above = 5\ncanary_recipients = [\"ops@x.test\", \"nope\"]"),
            ["privacy.canary_recipients[1]"]
        );
        assert_eq!(
            problems("hold_fanout_above = 5\nhold_timeout = \"soon\""),
            ["privacy.hold_timeout"]
        );
        assert_eq!(
            problems("hold_fanout_above = 5\nhold_timeout_action = \"bounce\""),
            ["privacy.hold_timeout_action"]
        );
        assert!(problems(
            "hold_fanout_above = 5\ncanary_recipients = [\"ops@x.test\"]\nhold_timeout = \"2s\"\nhold_timeout_action = \"release\""
        )
        .is_empty());
    }
}
