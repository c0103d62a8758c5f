//! `[app.limits]`: an app's own message rate and daily recipient quota.
//!
//! Why per app: one app's runaway loop (or a compromised login) must not spend the relay's
//! upstream quota for every other app, and an operator wants to promise each app a share. The
//! rate is checked at MAIL (`452 4.7.1` when no slot comes within `max_wait`), the quota at each
//! RCPT (`452 4.7.1` naming the reset time): the client keeps the message and tries later, so
//! nothing is lost. Counted by `schedule/app_limits.rs`.

use std::time::Duration;

use super::super::raw::RawAppLimits;
use super::super::upstream_limits::{QuotaReset, quota_reset, rate_and_burst};
use super::super::values::{PerSecond, Problems, duration};

/// How long MAIL waits for a slot of the app's rate by default before answering `452`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(1);

/// The limits of one app; all off by default.
#[derive(Debug, Clone, PartialEq)]
pub struct AppLimitsConfig {
    /// Sustained rate of messages (MAIL commands that open a transaction).
    pub messages_per_second: Option<PerSecond>,
    /// Messages that may go back to back before the rate applies (GCRA burst, at least 1).
    pub burst: u32,
    /// How long MAIL may wait for the rate before it is answered `452 4.7.1`.
    pub max_wait: Duration,
    /// Recipients the app may give per quota day (counted at RCPT, across the fleet with
    /// `[cluster]`).
    pub recipients_per_day: Option<u64>,
    /// When the daily count starts again.
    pub quota_reset: QuotaReset,
}

impl Default for AppLimitsConfig {
    fn default() -> AppLimitsConfig {
        AppLimitsConfig {
            messages_per_second: None,
            burst: 1,
            max_wait: DEFAULT_MAX_WAIT,
            recipients_per_day: None,
            quota_reset: QuotaReset::default(),
        }
    }
}

/// Reads `app[i].limits` (`path`), reporting each bad key at its path.
pub(super) fn validate(raw: Option<RawAppLimits>, path: &str, p: &mut Problems) -> AppLimitsConfig {
    let Some(raw) = raw else {
        return AppLimitsConfig::default();
    };
    let (messages_per_second, burst) = rate_and_burst(raw.messages_per_second, raw.burst, path, p);
    let max_wait = raw
        .max_wait
        .as_ref()
        .and_then(|d| duration(d, &format!("{path}.max_wait"), p))
        .unwrap_or(DEFAULT_MAX_WAIT);
    if max_wait > Duration::from_secs(60) {
        p.push(
            &format!("{path}.max_wait"),
            "must be at most 60s (the client's MAIL command waits this long)",
        );
    }
    if raw.max_wait.is_some() && messages_per_second.is_none() {
        p.push(
            &format!("{path}.max_wait"),
            "only applies with messages_per_second",
        );
    }
    let recipients_per_day = match raw.recipients_per_day {
        Some(0) => {
            p.push(&format!("{path}.recipients_per_day"), "must be at least 1");
            None
        }
        other => other,
    };
    let quota = raw.recipients_per_day.is_some();
    let quota_reset = quota_reset(
        raw.quota_reset.as_deref(),
        quota,
        "recipients_per_day",
        path,
        p,
    );
    AppLimitsConfig {
        messages_per_second,
        burst,
        max_wait,
        recipients_per_day,
        quota_reset,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::time::Duration;

    const BASE: &str = "[[upstream]]\nname = \"o\"\ndir = \"/tmp/mailveil-app-limits-tests\"\n[[app]]\nname = \"billing\"\nlogins = [\"b\"]\nsenders = [\"@example.com\"]\n";

    #[test]
    fn limits_parse_into_typed_values() {
        let c = Config::from_toml(&format!(
            "{BASE}[app.limits]\nmessages_per_second = 5.0\nburst = 10\nmax_wait = \"2s\"\nrecipients_per_day = 1000\nquota_reset = \"00:00+08:00\"\n"
        ))
        .unwrap();
        let l = &c.apps.apps[0].limits;
        assert_eq!(l.messages_per_second.map(|r| r.get()), Some(5.0));
        assert_eq!(l.burst, 10);
        assert_eq!(l.max_wait, Duration::from_secs(2));
        assert_eq!(l.recipients_per_day, Some(1000));
        assert_eq!(l.quota_reset.offset_seconds, 8 * 3600);
        let plain = Config::from_toml(BASE).unwrap();
        assert_eq!(plain.apps.apps[0].limits, super::AppLimitsConfig::default());
    }

    #[test]
    fn bad_limits_name_their_key_path() {
        let e = Config::from_toml(&format!(
            "{BASE}[app.limits]\nmessages_per_second = -1.0\nburst = 3\nmax_wait = \"soon\"\nrecipients_per_day = 0\nquota_reset = \"25:00\"\n"
        ))
        .unwrap_err();
        let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
        for path in [
            "app[0].limits.messages_per_second",
            "app[0].limits.burst",
            "app[0].limits.max_wait",
            "app[0].limits.recipients_per_day",
            "app[0].limits.quota_reset",
        ] {
            assert!(paths.contains(&path), "{path} missing in {paths:?}");
        }
        let e = Config::from_toml(&format!("{BASE}[app.limits]\nlimit = 3\n")).unwrap_err();
        let paths: Vec<&str> = e.problems.iter().map(|p| p.path.as_str()).collect();
        assert!(paths.iter().any(|p| p.contains("limit")), "{paths:?}");
    }
}
