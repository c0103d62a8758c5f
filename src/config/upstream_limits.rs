//! An `[[upstream]]`'s own sending limits: its message rate (`messages_per_second`, `burst`)
//! and its daily quota (`recipients_per_day`, `messages_per_day`, reset at `quota_reset`).
//!
//! Why typed here: an ESP account's limits are facts about the account (SES counts recipients
//! per day, Microsoft 365 allows 30 messages a minute), checked once when the config loads so the
//! pacing and the quota counter never see a zero rate or a reset time they cannot place.

use std::fmt;
use std::str::FromStr;

use super::raw::RawUpstream;
use super::shaping::PerSecond;
use super::values::Problems;

/// The limits of one upstream; all off by default (no pacing, no quota).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamLimitsConfig {
    /// Sustained rate across every provider's deliveries through this upstream.
    pub messages_per_second: Option<PerSecond>,
    /// Deliveries that may go back to back before the rate applies (GCRA burst, at least 1).
    pub burst: u32,
    /// Daily quotas; each is counted on its own and the upstream is spent when any one is.
    pub daily: Vec<DailyLimit>,
    /// When the daily counts start again.
    pub quota_reset: QuotaReset,
}

impl Default for UpstreamLimitsConfig {
    fn default() -> UpstreamLimitsConfig {
        UpstreamLimitsConfig {
            messages_per_second: None,
            burst: 1,
            daily: Vec::new(),
            quota_reset: QuotaReset::default(),
        }
    }
}

/// One daily quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyLimit {
    pub unit: QuotaUnit,
    pub limit: u64,
}

/// What a daily quota counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaUnit {
    /// Every recipient of a copy (what Amazon SES and Microsoft 365 count).
    Recipients,
    /// One per copy, whatever its recipients.
    Messages,
}

impl QuotaUnit {
    /// The key's name, also a label value and a Redis key part.
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaUnit::Recipients => "recipients",
            QuotaUnit::Messages => "messages",
        }
    }
}

/// A wall-clock time of day at a fixed UTC offset, such as `"00:00"` (UTC), `"07:30:00+08:00"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaReset {
    /// Seconds after midnight, in the offset's wall clock.
    pub second_of_day: u32,
    /// Offset east of UTC, in seconds.
    pub offset_seconds: i32,
}

const DAY: i64 = 86_400;

impl QuotaReset {
    /// The first reset strictly after `now` (Unix seconds).
    pub fn next_after(&self, now: i64) -> i64 {
        let offset = i64::from(self.offset_seconds);
        let local = now + offset;
        let mut reset = local.div_euclid(DAY) * DAY + i64::from(self.second_of_day);
        if reset <= local {
            reset += DAY;
        }
        reset - offset
    }

    /// The start of the quota day `now` is in (the last reset at or before it).
    pub fn window_start(&self, now: i64) -> i64 {
        self.next_after(now) - DAY
    }
}

impl FromStr for QuotaReset {
    type Err = String;

    fn from_str(s: &str) -> Result<QuotaReset, String> {
        let bad = || {
            format!("{s:?} is not a time of day such as \"00:00\", \"23:30:00\" or \"00:00+08:00\"")
        };
        let (time, offset) = match s.find(['+', '-', 'Z']) {
            Some(i) => s.split_at(i),
            None => (s, ""),
        };
        let number = |part: &str, max: u32| -> Result<u32, String> {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse::<u32>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(bad)
        };
        let parts: Vec<&str> = time.split(':').collect();
        let second_of_day = match parts.as_slice() {
            [h, m] => number(h, 23)? * 3600 + number(m, 59)? * 60,
            [h, m, sec] => number(h, 23)? * 3600 + number(m, 59)? * 60 + number(sec, 59)?,
            _ => return Err(bad()),
        };
        let offset_seconds = match offset {
            "" | "Z" => 0,
            o => {
                let sign = if o.starts_with('-') { -1 } else { 1 };
                let Some((h, m)) = o[1..].split_once(':') else {
                    return Err(bad());
                };
                sign * (number(h, 14)? * 3600 + number(m, 59)? * 60) as i32
            }
        };
        Ok(QuotaReset {
            second_of_day,
            offset_seconds,
        })
    }
}

impl fmt::Display for QuotaReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.second_of_day;
        write!(f, "{:02}:{:02}", s / 3600, s / 60 % 60)?;
        if !s.is_multiple_of(60) {
            write!(f, ":{:02}", s % 60)?;
        }
        if self.offset_seconds != 0 {
            let o = self.offset_seconds.unsigned_abs();
            let sign = if self.offset_seconds < 0 { '-' } else { '+' };
            write!(f, "{sign}{:02}:{:02}", o / 3600, o / 60 % 60)?;
        }
        Ok(())
    }
}

/// `<path>.messages_per_second` and `<path>.burst` (an upstream's, an app's), each problem at
/// its key path.
pub(super) fn rate_and_burst(
    rate: Option<f64>,
    burst: Option<u64>,
    path: &str,
    p: &mut Problems,
) -> (Option<PerSecond>, u32) {
    let messages_per_second = rate.and_then(|rate| {
        let typed = PerSecond::new(rate);
        if typed.is_none() {
            p.push(
                &format!("{path}.messages_per_second"),
                "must be a positive number",
            );
        }
        typed
    });
    let typed_burst = p
        .positive(&format!("{path}.burst"), burst, 1)
        .min(u32::MAX as usize) as u32;
    if burst.is_some() && messages_per_second.is_none() {
        p.push(
            &format!("{path}.burst"),
            "only applies with messages_per_second",
        );
    }
    (messages_per_second, typed_burst)
}

/// `<path>.quota_reset`, which only applies with a daily quota (`quota`, named `needs`).
pub(super) fn quota_reset(
    raw: Option<&str>,
    quota: bool,
    needs: &str,
    path: &str,
    p: &mut Problems,
) -> QuotaReset {
    match raw.map(str::parse::<QuotaReset>) {
        None => QuotaReset::default(),
        Some(Ok(reset)) => {
            if !quota {
                p.push(
                    &format!("{path}.quota_reset"),
                    format!("only applies with {needs}"),
                );
            }
            reset
        }
        Some(Err(message)) => {
            p.push(&format!("{path}.quota_reset"), message);
            QuotaReset::default()
        }
    }
}

/// Reads the limit keys of `upstream[i]` (`path`), reporting each bad one at its key path.
pub(super) fn validate_limits(
    u: &RawUpstream,
    path: &str,
    p: &mut Problems,
) -> UpstreamLimitsConfig {
    let (messages_per_second, burst) = rate_and_burst(u.messages_per_second, u.burst, path, p);
    let mut daily = Vec::new();
    for (unit, value) in [
        (QuotaUnit::Recipients, u.recipients_per_day),
        (QuotaUnit::Messages, u.messages_per_day),
    ] {
        match value {
            Some(0) => p.push(
                &format!("{path}.{}_per_day", unit.as_str()),
                "must be at least 1",
            ),
            Some(limit) => daily.push(DailyLimit { unit, limit }),
            None => {}
        }
    }
    let quota = u.recipients_per_day.is_some() || u.messages_per_day.is_some();
    let quota_reset = quota_reset(
        u.quota_reset.as_deref(),
        quota,
        "recipients_per_day or messages_per_day",
        path,
        p,
    );
    UpstreamLimitsConfig {
        messages_per_second,
        burst,
        daily,
        quota_reset,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn limits_parse_into_typed_values() {
        let text = r#"
[[upstream]]
name = "ses"
host = "email-smtp.eu-west-1.amazonaws.com"
messages_per_second = 14.0
burst = 5
recipients_per_day = 50000
messages_per_day = 40000
quota_reset = "00:00+08:00"
[[upstream]]
name = "plain"
dir = "/tmp"
"#;
        let c = Config::from_toml(text).unwrap();
        let l = &c.upstreams[0].limits;
        assert_eq!(l.messages_per_second.map(PerSecond::get), Some(14.0));
        assert_eq!(l.burst, 5);
        assert_eq!(
            l.daily,
            vec![
                DailyLimit {
                    unit: QuotaUnit::Recipients,
                    limit: 50000
                },
                DailyLimit {
                    unit: QuotaUnit::Messages,
                    limit: 40000
                }
            ]
        );
        assert_eq!(l.quota_reset.offset_seconds, 8 * 3600);
        assert_eq!(c.upstreams[1].limits, UpstreamLimitsConfig::default());
    }

    #[test]
    fn bad_limits_are_reported_with_key_paths() {
        let text = r#"
[[upstream]]
name = "ses"
host = "smtp.example.net"
messages_per_second = 0.0
burst = 0
recipients_per_day = 0
messages_per_day = 10
quota_reset = "25:00"
[[upstream]]
name = "other"
host = "smtp.example.net"
burst = 3
quota_reset = "01:00"
"#;
        let err = Config::from_toml(text).unwrap_err();
        let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
        for expected in [
            "upstream[0].messages_per_second",
            "upstream[0].burst",
            "upstream[0].recipients_per_day",
            "upstream[0].quota_reset",
            "upstream[1].burst",
            "upstream[1].quota_reset",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {paths:?}");
        }
    }

    #[test]
    fn reset_parses_prints_and_parses_again() {
        for (text, sod, offset) in [
            ("00:00", 0, 0),
            ("23:59:30", 23 * 3600 + 59 * 60 + 30, 0),
            ("07:30+08:00", 7 * 3600 + 1800, 8 * 3600),
            ("00:00-05:30", 0, -(5 * 3600 + 1800)),
        ] {
            let r: QuotaReset = text.parse().unwrap();
            assert_eq!((r.second_of_day, r.offset_seconds), (sod, offset), "{text}");
            assert_eq!(r.to_string().parse::<QuotaReset>().unwrap(), r);
        }
        assert_eq!("12:00Z".parse::<QuotaReset>().unwrap().to_string(), "12:00");
        for bad in [
            "24:00",
            "7:30",
            "00:60",
            "00:00+8",
            "noon",
            "00:00:00:00",
            "",
        ] {
            assert!(bad.parse::<QuotaReset>().is_err(), "{bad}");
        }
    }

    #[test]
    fn next_reset_is_strictly_after_now_at_the_wall_clock_time() {
        let midnight_utc: QuotaReset = "00:00".parse().unwrap();
        // 2026-12-02T15:00:00Z
        let now = 1_796_223_600;
        assert_eq!(midnight_utc.next_after(now), 1_796_256_000);
        assert_eq!(midnight_utc.next_after(1_796_256_000), 1_796_256_000 + DAY);
        assert_eq!(midnight_utc.window_start(now), 1_796_256_000 - DAY);
        // Midnight in UTC+8 is 16:00Z the day before.
        let beijing: QuotaReset = "00:00+08:00".parse().unwrap();
        assert_eq!(beijing.next_after(now), 1_796_256_000 - 8 * 3600);
        let west: QuotaReset = "00:00-05:00".parse().unwrap();
        assert_eq!(west.next_after(now), 1_796_256_000 + 5 * 3600);
    }
}
