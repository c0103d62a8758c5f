//! The built-in provider rules: what the big mailbox providers say when a sender goes too fast,
//! and what mailveil does about it. Every rule names its source (also listed in
//! `docs/shaping.md`); most numbers come from KumoMTA's published shaping data
//! (`assets/policy-extras/shaping.toml` and `assets/community/shaping.toml`), the rest from the
//! providers' own pages or copies of them (docs/research/provider-replies.md, §2 and §6).
//!
//! Order matters (the first match wins): provider-specific rules first, per-recipient replies
//! (which only defer their copy) before the generic wording at the end.

use std::time::Duration;

use crate::config::{
    PerSecond, ReplyClass, ReplyPattern, RuleDuration, SetLimits, ShapingAction, ShapingRule,
    WallClock,
};

const MINUTE: u64 = 60;
const HOUR: u64 = 3600;
/// The window of KumoMTA's `Threshold = "N/hr"`.
const AN_HOUR: Duration = Duration::from_secs(HOUR);

fn contains(text: &str) -> ReplyPattern {
    ReplyPattern::contains(text)
}

fn regex(pattern: &str) -> ReplyPattern {
    ReplyPattern::regex(pattern).expect("built-in rule compiles")
}

fn rule(name: &str, pattern: ReplyPattern, action: ShapingAction, secs: u64) -> ShapingRule {
    ShapingRule::new(name, pattern, action, Duration::from_secs(secs))
}

fn suspend(name: &str, pattern: ReplyPattern, secs: u64) -> ShapingRule {
    rule(name, pattern, ShapingAction::Suspend, secs)
}

fn slow(name: &str, pattern: ReplyPattern, factor: f64, secs: u64) -> ShapingRule {
    rule(name, pattern, ShapingAction::Slow { factor }, secs)
}

fn set(name: &str, pattern: ReplyPattern, limits: SetLimits, secs: u64) -> ShapingRule {
    rule(name, pattern, ShapingAction::Set(limits), secs)
}

/// A rule that only defers its copy: a per-recipient reply that says nothing about the pace
/// of the whole provider.
fn defer(name: &str, pattern: ReplyPattern) -> ShapingRule {
    rule(name, pattern, ShapingAction::Defer, 0)
}

fn connections(n: usize) -> SetLimits {
    SetLimits {
        max_connections: Some(n),
        ..SetLimits::default()
    }
}

fn per_connection(n: u32) -> SetLimits {
    SetLimits {
        max_deliveries_per_connection: Some(n),
        ..SetLimits::default()
    }
}

fn per_minute(n: f64) -> SetLimits {
    SetLimits {
        messages_per_second: PerSecond::new(n / 60.0),
        ..SetLimits::default()
    }
}

/// The built-in provider rules, in matching order.
pub fn built_in() -> Vec<ShapingRule> {
    let beijing_midnight = RuleDuration::Until(WallClock {
        minute_of_day: 0,
        offset_minutes: 8 * 60,
    });
    let mut rules = vec![
        // --- Yahoo / AOL ---
        // Source: KumoMTA policy-extras/shaping.toml ("[TS?S04]" -> Suspend 2h); Yahoo's advice
        // to stop for two hours, quoted in https://github.com/KumoCorp/kumomta/issues/51.
        suspend("yahoo-tss04", contains("[TSS04]"), 2 * HOUR),
        // Source: KumoMTA community shaping.toml (TSS05/IPTS05: suspend 4h at 2/hr).
        suspend("yahoo-tss05", regex(r"\[(TSS05|IPTS05)\]"), 4 * HOUR).with_threshold(2, AN_HOUR),
        // Source: KumoMTA community shaping.toml (IPTS04: suspend 2h at 2/hr).
        suspend("yahoo-ipts04", contains("[IPTS04]"), 2 * HOUR).with_threshold(2, AN_HOUR),
        // Source: KumoMTA policy-extras/shaping.toml default automation (1/min, 1 connection, 90m).
        set(
            "yahoo-ts01",
            contains("[TS01]"),
            SetLimits {
                max_connections: Some(1),
                ..per_minute(1.0)
            },
            90 * MINUTE,
        ),
        // Source: KumoMTA community shaping.toml (TS02: 1/min for 30m at 3/hr).
        set(
            "yahoo-ts02",
            contains("[TS02]"),
            per_minute(1.0),
            30 * MINUTE,
        )
        .with_threshold(3, AN_HOUR),
        // Source: Yahoo help SLN3436 ("permanently deferred", do not retry until fixed); 4h is
        // mailveil's choice (research §6).
        suspend("yahoo-ts03", contains("[TS03]"), 4 * HOUR),
        // Source: KumoMTA community shaping.toml ("Max message per connection reached", 3/hr).
        set(
            "yahoo-per-connection",
            contains("Max message per connection reached"),
            per_connection(10),
            HOUR,
        )
        .with_threshold(3, AN_HOUR),
        // --- NetEase (163.com, 126.com, yeah.net) ---
        // Source: NetEase's code table (third-party copy, https://biecuoliao.com/pa/MBRrwEM.html:
        // retry after 2 minutes); KumoMTA community shaping.toml (451 DT:SPM: suspend 15m at 5/hr).
        suspend("netease-dt-spm", contains("DT:SPM"), 15 * MINUTE).with_threshold(5, AN_HOUR),
        // Source: KumoMTA community shaping.toml (554 DT:SPM: 1 connection for 1h at 2/hr).
        set(
            "netease-dt-spm-5xx",
            contains("DT:SPM"),
            connections(1),
            HOUR,
        )
        .with_class(ReplyClass::Permanent)
        .with_threshold(2, AN_HOUR),
        // Source: KumoMTA community shaping.toml (550 RP:ORQ "at daily limit": suspend 1h at 2/hr).
        suspend("netease-rp-orq", contains("RP:ORQ"), HOUR)
            .with_class(ReplyClass::Permanent)
            .with_threshold(2, AN_HOUR),
        // Source: KumoMTA community shaping.toml (554 HL:ITC "at daily limit"); held until the
        // next Beijing midnight, when a daily limit presumably resets (research §2.2).
        suspend("netease-hl-itc", contains("HL:ITC"), HOUR)
            .with_class(ReplyClass::Any)
            .with_duration(beijing_midnight),
        // Source: NetEase's code table (HL:ICC, too many connections); KumoMTA community
        // shaping.toml (421 Too many connections: 1 connection for 1h at 2/hr).
        set("netease-hl-icc", contains("HL:ICC"), connections(1), HOUR).with_threshold(2, AN_HOUR),
        // Source: NetEase's code table (HL:IFC, much mail in a short time); 30m is mailveil's choice.
        slow("netease-hl-ifc", contains("HL:IFC"), 0.5, 30 * MINUTE),
        // Source: NetEase's code table (MI:DMC / RP:DRC, too many messages or recipients on one
        // connection); 3 per connection is mailveil's choice.
        set(
            "netease-mi-dmc",
            regex(r"MI:DMC|RP:DRC"),
            per_connection(3),
            HOUR,
        ),
        // Source: NetEase's code table (MI:SFQ, over the sender's limit within 15 minutes).
        suspend("netease-mi-sfq", contains("MI:SFQ"), 15 * MINUTE),
        // --- QQ / Tencent (qq.com, foxmail.com) ---
        // Source: QQ Mail help text (copy at http://qiao.yimirj.com/article/detail/2261): the
        // IP, connection, sender or domain went over a per-minute/hour/day limit;
        // KumoMTA community shaping.toml (suspend 1h).
        suspend(
            "qq-frequency",
            regex(r"(sender|ip|connection|domain) frequency limited"),
            HOUR,
        )
        .with_class(ReplyClass::Any),
        // Source: KumoMTA community shaping.toml (550 Mail content denied: suspend 1h at 5/hr).
        suspend("qq-content-denied", contains("Mail content denied"), HOUR)
            .with_class(ReplyClass::Permanent)
            .with_threshold(5, AN_HOUR),
        // Source: QQ Mail help text (yimirj.com copy): the recipient got much mail in a short
        // time. Per recipient: only this copy waits.
        defer(
            "qq-recipient-busy",
            contains("Mailbox unavailable or access denied"),
        )
        .with_class(ReplyClass::Permanent),
        // --- Google / Gmail ---
        // Source: https://support.google.com/a/answer/3726730 (421 4.7.28 unusual rate);
        // KumoMTA community shaping.toml (10/min for 30m at 2/hr).
        set(
            "google-unusual-rate",
            contains("unusual rate of unsolicited mail"),
            per_minute(10.0),
            30 * MINUTE,
        )
        .with_threshold(2, AN_HOUR),
        // Source: KumoMTA community shaping.toml ("Our system has detected that this message":
        // suspend 1h at 5/hr).
        suspend(
            "google-suspicious",
            contains("Our system has detected that this message"),
            HOUR,
        )
        .with_threshold(5, AN_HOUR),
        // Source: https://support.google.com/a/answer/3726730 (450 4.2.1 the user is receiving
        // mail too quickly / at a rate that prevents additional messages). Per recipient.
        defer("google-recipient-rate", contains("receiving mail")).with_enhanced("4.2.1"),
        // --- Microsoft (Outlook.com, Hotmail, Microsoft 365) ---
        // Source: KumoMTA community shaping.toml ("exceeded the maximum number of connections",
        // "max concurrent connections. IB007": 1 connection for 1h at 2/hr).
        set(
            "microsoft-connections",
            regex(r"max(imum)? (number of )?(concurrent )?connections"),
            connections(1),
            HOUR,
        )
        .with_class(ReplyClass::Any)
        .with_threshold(2, AN_HOUR),
        // Source: KumoMTA community shaping.toml ("exceeded maximum number of messages per
        // connection": 2 per connection for 1h at 2/hr).
        set(
            "microsoft-per-connection",
            regex(r"max(imum)? (number of )?messages per connection"),
            per_connection(2),
            HOUR,
        )
        .with_class(ReplyClass::Any)
        .with_threshold(2, AN_HOUR),
        // Source: KumoMTA community shaping.toml (451 4.7.500 Server busy: 1/min for 15m at 3/hr).
        set(
            "microsoft-server-busy",
            contains("Server busy. Please try again later"),
            per_minute(1.0),
            15 * MINUTE,
        )
        .with_threshold(3, AN_HOUR),
        // Source: KumoMTA community shaping.toml (4.7.650/651 temporarily rate limited due to
        // IP reputation: suspend 30m at 3/hr).
        suspend(
            "microsoft-rate-limited",
            contains("temporarily rate limited"),
            30 * MINUTE,
        )
        .with_threshold(3, AN_HOUR),
        // --- Apple iCloud ---
        // Source: KumoMTA community shaping.toml (451 4.7.1 Service unavailable: suspend 15m at
        // 5/hr); https://smtp.codes/icloud.
        suspend(
            "apple-service-unavailable",
            contains("Service unavailable - try again later"),
            15 * MINUTE,
        )
        .with_enhanced("4.7.1")
        .with_threshold(5, AN_HOUR),
        // Source: KumoMTA community shaping.toml ([BS02] Temporary server error, [HCM1] deferred:
        // suspend 15m at 5/hr and 3/hr; one rule at 3/hr here).
        suspend("apple-bs02-hcm1", regex(r"\[(BS02|HCM1)\]"), 15 * MINUTE)
            .with_threshold(3, AN_HOUR),
        // Source: https://smtp.codes/icloud (421 4.7.1 Messages to <rcpt> deferred due to
        // excessive volume). Per recipient.
        defer(
            "apple-recipient-volume",
            contains("deferred due to excessive volume"),
        ),
    ];
    rules.extend(generic());
    rules
}

/// Wording many servers use, tried last (4xx only: a 5xx with these words is a real refusal
/// unless a provider rule above says otherwise). Source: mailveil's rules before issue 13.
fn generic() -> Vec<ShapingRule> {
    vec![
        slow(
            "too-many-connections",
            contains("too many connections"),
            0.5,
            5 * MINUTE,
        ),
        slow(
            "rate-limit-wording",
            regex(
                r"rate[- ]limit|too many (messages|mails|emails)|sending too fast|try again later",
            ),
            0.5,
            5 * MINUTE,
        ),
    ]
}
