//! `[[shaping.rule]]`: reply classification as data. A rule matches a reply by its code class,
//! its enhanced status code and its text, and says what the reply means: slow the provider down,
//! suspend it, lower its limits for a while, only defer this copy, or fail it for good.
//!
//! Rules are parsed into typed values here (a compiled regex, a checked factor, a wall-clock
//! end), so a bad rule stops the relay at start or is refused on reload, never at the first
//! deferral. The built-in rules (`schedule::rules`) are values of the same types.

use std::time::Duration;

use super::values::PerSecond;

/// A reply pattern and what a reply matching it means for the copy and for the provider (or
/// upstream) that sent it.
#[derive(Debug, Clone)]
pub struct ShapingRule {
    /// What logs, status and metrics call the rule (`qq-frequency`, `shaping.rule[0]`).
    pub name: String,
    /// Which reply codes the rule looks at.
    pub class: ReplyClass,
    /// Enhanced status code prefix, component-wise (`5.7.1`, `4.7`; a trailing dot is allowed).
    pub enhanced: Option<String>,
    /// The text to find; `None` only when `enhanced` is given.
    pub pattern: Option<ReplyPattern>,
    pub action: ShapingAction,
    /// How long the action lasts.
    pub duration: RuleDuration,
    /// Act only when this many matching replies came within the window (per rule and lane);
    /// below it the copy is still classified by the rule (a matched 5xx is deferred).
    pub threshold: Option<Threshold>,
    /// What the action applies to: the recipient's provider (its lane) or the upstream that
    /// answered (an ESP's own account limits).
    pub scope: RuleScope,
}

impl ShapingRule {
    /// A provider rule on 4xx replies containing `pattern`, acting at once: the shape of most
    /// built-in rules, refined with the `with_*` methods.
    pub fn new(
        name: &str,
        pattern: ReplyPattern,
        action: ShapingAction,
        duration: Duration,
    ) -> ShapingRule {
        ShapingRule {
            name: name.to_string(),
            class: ReplyClass::Temporary,
            enhanced: None,
            pattern: Some(pattern),
            action,
            duration: RuleDuration::For(duration),
            threshold: None,
            scope: RuleScope::Provider,
        }
    }

    pub fn with_class(mut self, class: ReplyClass) -> ShapingRule {
        self.class = class;
        self
    }

    pub fn with_enhanced(mut self, prefix: &str) -> ShapingRule {
        self.enhanced = Some(prefix.trim_end_matches('.').to_string());
        self
    }

    pub fn with_threshold(mut self, count: u32, window: Duration) -> ShapingRule {
        self.threshold = Some(Threshold { count, window });
        self
    }

    pub fn with_duration(mut self, duration: RuleDuration) -> ShapingRule {
        self.duration = duration;
        self
    }

    pub fn with_scope(mut self, scope: RuleScope) -> ShapingRule {
        self.scope = scope;
        self
    }

    /// Whether a reply with `code` and `text` (what follows the code, e.g.
    /// `5.7.1 [TS01] Messages ...`) matches: class, enhanced code and text all agree.
    pub fn matches(&self, code: u16, text: &str) -> bool {
        let class_ok = match self.class {
            ReplyClass::Temporary => (400..500).contains(&code),
            ReplyClass::Permanent => (500..600).contains(&code),
            ReplyClass::Any => (400..600).contains(&code),
        };
        if !class_ok {
            return false;
        }
        if let Some(prefix) = &self.enhanced {
            let Some(enhanced) = enhanced_code(text) else {
                return false;
            };
            let follows = enhanced
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
            if !follows {
                return false;
            }
        }
        match &self.pattern {
            Some(pattern) => pattern.matches(&format!("{code} {text}")),
            None => true,
        }
    }
}

/// The enhanced status code (RFC 3463) that starts a reply's text, e.g. `4.7.0`.
pub fn enhanced_code(text: &str) -> Option<&str> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?;
    let ok = matches!(class, "2" | "4" | "5")
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(first)
}

/// Which reply codes a rule looks at (`class = "4xx" | "5xx" | "any"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyClass {
    /// 4xx (the default, as before rules could match 5xx).
    Temporary,
    /// 5xx.
    Permanent,
    /// Both.
    Any,
}

/// What a matched rule acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuleScope {
    /// The recipient's provider: every upstream's deliveries to it (`[[provider]]` lane).
    #[default]
    Provider,
    /// The upstream that answered: every provider's deliveries through it.
    Upstream,
}

/// How a rule recognises a reply's text (seen as `"<code> <text>"`, e.g.
/// `421 4.7.0 [TS01] ...`).
#[derive(Debug, Clone)]
pub enum ReplyPattern {
    /// Case-insensitive substring (stored lower-case); brackets and dots are literal
    /// (`[TS01]`, `DT:SPM`).
    Contains(String),
    Regex(regex::Regex),
}

impl ReplyPattern {
    /// A substring pattern for `text` (any case).
    pub fn contains(text: &str) -> ReplyPattern {
        ReplyPattern::Contains(text.to_ascii_lowercase())
    }

    /// A case-insensitive regex, or the parser's one-line complaint.
    pub fn regex(pattern: &str) -> Result<ReplyPattern, String> {
        regex::RegexBuilder::new(pattern)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .map(ReplyPattern::Regex)
            .map_err(|e| {
                // The parser draws the pattern with a caret under the fault over several
                // lines; its last line says what is wrong.
                let text = e.to_string();
                let what = text.lines().last().unwrap_or_default();
                what.strip_prefix("error: ").unwrap_or(what).to_string()
            })
    }

    pub fn matches(&self, reply: &str) -> bool {
        match self {
            ReplyPattern::Contains(needle) => reply.to_ascii_lowercase().contains(needle),
            ReplyPattern::Regex(re) => re.is_match(reply),
        }
    }
}

impl std::fmt::Display for ReplyPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplyPattern::Contains(s) => write!(f, "contains {s:?}"),
            ReplyPattern::Regex(re) => write!(f, "regex {:?}", re.as_str()),
        }
    }
}

/// What a matched reply means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShapingAction {
    /// Multiply the provider's rate and concurrency by `factor` (0 < factor < 1).
    Slow { factor: f64 },
    /// Start no delivery to the provider at all (Yahoo's `TSS04`).
    Suspend,
    /// Lower these limits (never raise them) while the rule's duration lasts.
    Set(SetLimits),
    /// Only this copy is deferred (a per-recipient "too fast"); the provider is left alone.
    Defer,
    /// A real permanent failure: the copy fails at once, also on a 4xx; never retried.
    Fail,
}

impl ShapingAction {
    /// The action's name in config, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ShapingAction::Slow { .. } => "slow",
            ShapingAction::Suspend => "suspend",
            ShapingAction::Set(_) => "set",
            ShapingAction::Defer => "defer",
            ShapingAction::Fail => "fail",
        }
    }
}

/// The limits an `action = "set"` rule lowers (each `None`: left as it is).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SetLimits {
    pub max_connections: Option<usize>,
    pub max_deliveries_per_connection: Option<u32>,
    pub messages_per_second: Option<PerSecond>,
}

impl SetLimits {
    /// Each field the lower of the two (a field set in only one is kept).
    pub fn lowest(self, other: SetLimits) -> SetLimits {
        fn min<T: PartialOrd>(a: Option<T>, b: Option<T>) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(if b < a { b } else { a }),
                (a, b) => a.or(b),
            }
        }
        SetLimits {
            max_connections: min(self.max_connections, other.max_connections),
            max_deliveries_per_connection: min(
                self.max_deliveries_per_connection,
                other.max_deliveries_per_connection,
            ),
            messages_per_second: min(self.messages_per_second, other.messages_per_second),
        }
    }
}

/// How long a rule's action lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleDuration {
    /// `duration = "10m"`.
    For(Duration),
    /// `until = "00:00+08:00"`: until the next such wall-clock time.
    Until(WallClock),
}

impl RuleDuration {
    /// The time from `now` (since the Unix epoch) until the action ends: a `WallClock` end
    /// falls on its exact second.
    pub fn from(&self, now: Duration) -> Duration {
        match self {
            RuleDuration::For(d) => *d,
            RuleDuration::Until(w) => Duration::from_secs(w.seconds_until(now.as_secs()))
                .saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos()))),
        }
    }
}

/// A time of day at a fixed UTC offset (`HH:MM`, `HH:MM+08:00`, `HH:MM-05:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// Minutes after local midnight.
    pub minute_of_day: u32,
    /// The local time's offset from UTC, in minutes (Beijing: +480).
    pub offset_minutes: i32,
}

impl WallClock {
    /// Parses `HH:MM` with an optional `Z`, `+HH:MM` or `-HH:MM` (UTC when none).
    pub fn parse(text: &str) -> Option<WallClock> {
        let text = text.trim();
        let (time, offset) = match text.find(['+', '-']) {
            Some(i) => (&text[..i], Some(&text[i..])),
            None => (text.strip_suffix('Z').unwrap_or(text), None),
        };
        let hm = |s: &str| -> Option<(u32, u32)> {
            let (h, m) = s.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m) = (h.parse::<u32>().ok()?, m.parse::<u32>().ok()?);
            (h < 24 && m < 60).then_some((h, m))
        };
        let (h, m) = hm(time)?;
        let offset_minutes = match offset {
            None => 0,
            Some(o) => {
                let (oh, om) = hm(&o[1..])?;
                let minutes = (oh * 60 + om) as i32;
                if oh > 14 {
                    return None;
                }
                if o.starts_with('-') {
                    -minutes
                } else {
                    minutes
                }
            }
        };
        Some(WallClock {
            minute_of_day: h * 60 + m,
            offset_minutes,
        })
    }

    /// Seconds from `now_unix` until the next time the local clock shows this time (a full
    /// day when it shows it now).
    pub fn seconds_until(&self, now_unix: u64) -> u64 {
        const DAY: i64 = 86_400;
        let local = (now_unix as i64 + i64::from(self.offset_minutes) * 60).rem_euclid(DAY);
        let target = i64::from(self.minute_of_day) * 60;
        match (target - local).rem_euclid(DAY) {
            0 => DAY as u64,
            d => d as u64,
        }
    }
}

impl std::fmt::Display for WallClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (h, m) = (self.minute_of_day / 60, self.minute_of_day % 60);
        let o = self.offset_minutes.unsigned_abs();
        let sign = if self.offset_minutes < 0 { '-' } else { '+' };
        write!(f, "{h:02}:{m:02}{sign}{:02}:{:02}", o / 60, o % 60)
    }
}

/// `threshold = "5/1h"`: act only on the `count`-th match within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    pub count: u32,
    pub window: Duration,
}

impl Threshold {
    /// Parses `COUNT/WINDOW`: `5/1h`, `5/hr`, `2/30m`, `10/day`.
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let (count, window) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not COUNT/WINDOW such as \"5/1h\""))?;
        let count: u32 = count
            .trim()
            .parse()
            .ok()
            .filter(|c| *c >= 1)
            .ok_or_else(|| format!("{text:?}: the count must be a whole number of at least 1"))?;
        let window = match window.trim() {
            "hr" | "hour" | "h" => Duration::from_secs(3600),
            "min" | "minute" | "m" => Duration::from_secs(60),
            "day" | "d" => Duration::from_secs(86_400),
            other => humantime::parse_duration(other)
                .map_err(|e| format!("{text:?}: the window is not a duration such as 1h: {e}"))?,
        };
        if window.is_zero() {
            return Err(format!("{text:?}: the window must be longer than 0"));
        }
        Ok(Threshold { count, window })
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.window)
        )
    }
}

mod parse;
pub(super) use parse::validate_rules;

#[cfg(test)]
mod tests;
