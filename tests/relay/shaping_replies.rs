//! Reply classification through the real binary: a provider's "too fast" 5xx is a deferral
//! (retried, delivered once, never bounced) that suspends that provider while the others keep
//! flowing; a suspension may last until a wall-clock time; an unmatched 5xx still fails for
//! good; a threshold rule acts on the N-th match and not before; a provider that requires TLS
//! is never sent to in plaintext.
//!
//! The upstream is a scripted SMTP server answering RCPT per recipient domain, one reply per
//! attempt. Nothing here asserts that anything is fast; waits are bounded by `PATIENCE`.

use crate::support;
use crate::support::scripted_smtp;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scripted_smtp::{Script, ScriptedSmtp};
use support::relay_toml::scripted_upstream;
use support::*;

/// The relay's config: a scripted upstream (plaintext), metrics, short retries unless
/// `retry` says otherwise, and `extra` (rules, providers).
fn config(upstream: &ScriptedSmtp, retry: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
retry_initial = "{retry}"
retry_max = "{retry}"
bounce = true
[metrics]
listen = "{{metrics}}"
{scripted}
{extra}
"#,
        scripted = scripted_upstream("scripted", upstream.port(), "none", "10s"),
    )
}

async fn send(relay: &RelayProc, rcpt: &str) {
    send_simple(relay.smtp, "app@src.test", &[rcpt], "shaping replies").await
}

async fn metric_value(relay: &RelayProc, series: &str) -> Option<f64> {
    metric_at(relay.metrics, series).await
}

/// A counter's value, 0 when it has none yet.
async fn count(relay: &RelayProc, series: &str) -> f64 {
    metric_value(relay, series).await.unwrap_or(0.0)
}

/// Waits until `series` has `value`.
async fn wait_metric(relay: &RelayProc, series: &str, value: f64) {
    let end = Instant::now() + PATIENCE;
    loop {
        let got = metric_value(relay, series).await;
        if got == Some(value) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{series} is {got:?}, never {value}; log:\n{}",
            relay.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn deliveries(provider: &str, outcome: &str) -> String {
    format!(
        "mailveil_deliveries_total{{outcome=\"{outcome}\",provider=\"{provider}\",upstream=\"scripted\"}}"
    )
}

fn slowed(provider: &str) -> String {
    format!("mailveil_provider_slowed{{provider=\"{provider}\"}}")
}

/// Messages the upstream accepted for `rcpt`.
fn accepted(upstream: &ScriptedSmtp, rcpt: &str) -> usize {
    upstream
        .record()
        .messages
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r == rcpt))
        .count()
}

/// RCPT commands the upstream saw for `rcpt` (one per attempt).
fn rcpt_attempts(upstream: &ScriptedSmtp, rcpt: &str) -> usize {
    let needle = format!("<{rcpt}>").to_ascii_lowercase();
    upstream
        .record()
        .commands
        .iter()
        .filter(|c| {
            c.to_ascii_uppercase().starts_with("RCPT") && c.to_ascii_lowercase().contains(&needle)
        })
        .count()
}

async fn wait_accepted(upstream: &ScriptedSmtp, rcpt: &str, relay: &RelayProc) {
    let end = Instant::now() + PATIENCE;
    while accepted(upstream, rcpt) == 0 {
        assert!(
            Instant::now() < end,
            "{rcpt} never delivered; log:\n{}",
            relay.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn qq_frequency_limited_defers_the_copy_and_suspends_only_qq() {
    let upstream = ScriptedSmtp::start(Script::default().rcpt_domain_replies(
        "qq.com",
        &["550 Ip frequency limited. http://service.mail.qq.com/cgi-bin/help?subtype=1&&id=20022&&no=1000725"],
    ))
    .await;
    // The built-in qq-frequency rule suspends for an hour; this one (tried first) for 4 s.
    // The plaintext test upstream is allowed for qq here (built-in: TLS required).
    let extra = r#"
[[provider]]
name = "qq"
require_tls = false
[[shaping.rule]]
name = "qq-test"
class = "5xx"
regex = "(ip|sender|connection|domain) frequency limited"
action = "suspend"
duration = "4s"
"#;
    let mut relay = RelayProc::start(&config(&upstream, "1s", extra), &[]).await;
    send(&relay, "someone@qq.com").await;
    let log = relay
        .wait_for_log("provider suspended after a throttling reply", 0)
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("provider suspended"))
        .unwrap();
    assert!(line.contains("qq-test") && line.contains("qq"), "{line}");
    wait_metric(&relay, &deliveries("qq", "deferred"), 1.0).await;
    assert_eq!(metric_value(&relay, &slowed("qq")).await, Some(1.0));
    // Another provider keeps flowing while qq is suspended.
    send(&relay, "friend@example.org").await;
    wait_accepted(&upstream, "friend@example.org", &relay).await;
    assert_eq!(
        metric_value(&relay, &slowed("qq")).await,
        Some(1.0),
        "example.org was delivered while qq was still suspended"
    );
    assert_eq!(accepted(&upstream, "someone@qq.com"), 0);
    // After the suspension the copy goes again, and is delivered exactly once.
    wait_accepted(&upstream, "someone@qq.com", &relay).await;
    wait_metric(&relay, &slowed("qq"), 0.0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(accepted(&upstream, "someone@qq.com"), 1, "delivered once");
    assert_eq!(rcpt_attempts(&upstream, "someone@qq.com"), 2, "one retry");
    assert_eq!(count(&relay, &deliveries("qq", "failed")).await, 0.0);
    assert_eq!(
        metric_value(&relay, &deliveries("qq", "delivered")).await,
        Some(1.0)
    );
    // Never bounced: nothing went back to the sender.
    assert_eq!(accepted(&upstream, "app@src.test"), 0);
    let log = relay.proc_.log_text();
    assert!(!log.contains("failed permanently"), "{log}");
    relay.proc_.terminate();
}

#[tokio::test]
async fn netease_hl_itc_suspends_until_the_configured_wall_clock_time() {
    let upstream = ScriptedSmtp::start(Script::default().rcpt_domain_replies(
        "163.com",
        &["554 HL:ITC 163 smtp3,DdGowAB http://mail.163.com/help/help_spam_16.htm?ip=127.0.0.1"],
    ))
    .await;
    // Two hours from now (to the minute), written in Beijing time (+08:00).
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let end = (now / 60) * 60 + 2 * 3600;
    let beijing = (end + 8 * 3600) % 86_400;
    let until = format!("{:02}:{:02}+08:00", beijing / 3600, beijing % 3600 / 60);
    let extra = format!(
        r#"
[[shaping.rule]]
name = "itc-test"
class = "5xx"
contains = "HL:ITC"
action = "suspend"
until = "{until}"
"#
    );
    let mut relay = RelayProc::start(&config(&upstream, "1s", &extra), &[]).await;
    send(&relay, "someone@163.com").await;
    let log = relay
        .wait_for_log("provider suspended after a throttling reply", 0)
        .await;
    let line = log
        .lines()
        .find(|l| l.contains("provider suspended"))
        .unwrap();
    let expected = time::OffsetDateTime::from_unix_timestamp(end as i64)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(
        line.contains(&format!("until={expected}")) && line.contains("itc-test"),
        "suspension should end at {expected} ({until}): {line}"
    );
    assert!(line.contains("netease"), "{line}");
    // The copy is deferred (not failed) and waits for the suspension's end, not 1 s.
    wait_metric(&relay, &deliveries("netease", "deferred"), 1.0).await;
    let log = relay.wait_for_log("deferred", 0).await;
    let deferred = log
        .lines()
        .find(|l| l.contains("deferred") && l.contains("retry_in_secs"))
        .unwrap();
    let retry_in: u64 = deferred
        .split("retry_in_secs=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{deferred}"));
    assert!(
        retry_in >= 2 * 3600 - 120,
        "retried before the suspension ends: {deferred}"
    );
    assert!(deferred.contains("itc-test"), "{deferred}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        rcpt_attempts(&upstream, "someone@163.com"),
        1,
        "no retry yet"
    );
    assert_eq!(count(&relay, &deliveries("netease", "failed")).await, 0.0);
    relay.proc_.terminate();
}

#[tokio::test]
async fn an_unmatched_550_still_fails_permanently() {
    // Generic "too fast" words in a 5xx are no throttle: no rule matches a 550 user unknown.
    let upstream = ScriptedSmtp::start(Script::default().rcpt_domain_replies(
        "example.net",
        &["550 5.1.1 <gone@example.net>: user unknown; too many connections, try again later"],
    ))
    .await;
    let mut relay = RelayProc::start(&config(&upstream, "1s", ""), &[]).await;
    send(&relay, "gone@example.net").await;
    wait_metric(&relay, &deliveries("default", "failed"), 1.0).await;
    relay.wait_for_log("failed permanently", 0).await;
    // The sender gets a bounce; the copy is never tried again.
    wait_accepted(&upstream, "app@src.test", &relay).await;
    let bounce = upstream
        .record()
        .messages
        .into_iter()
        .find(|m| m.rcpt_to.iter().any(|r| r == "app@src.test"))
        .unwrap();
    let text = String::from_utf8_lossy(&bounce.data).to_string();
    assert!(text.contains("multipart/report"), "{text}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rcpt_attempts(&upstream, "gone@example.net"), 1);
    assert_eq!(count(&relay, &deliveries("default", "deferred")).await, 0.0);
    assert!(!relay.proc_.log_text().contains("provider suspended"));
    relay.proc_.terminate();
}

#[tokio::test]
async fn a_threshold_rule_acts_on_the_fifth_match_and_not_before() {
    let busy = "550 4.7.1 Too busy for you, come back later";
    let upstream =
        ScriptedSmtp::start(Script::default().rcpt_domain_replies("busy.test", &[busy; 5])).await;
    let extra = r#"
[[provider]]
name = "busy"
domains = ["busy.test"]
[[shaping.rule]]
name = "busy-5"
class = "5xx"
contains = "too busy"
action = "suspend"
duration = "1h"
threshold = "5/1h"
"#;
    // Retries an hour away: only new copies make matches.
    let mut relay = RelayProc::start(&config(&upstream, "1h", extra), &[]).await;
    for i in 0..4 {
        send(&relay, &format!("r{i}@busy.test")).await;
        wait_metric(&relay, &deliveries("busy", "deferred"), f64::from(i + 1)).await;
    }
    // Four matches: each copy deferred (a 5xx, yet not failed), the provider not suspended.
    relay.wait_for_log("below the rule's threshold", 3).await;
    assert_eq!(metric_value(&relay, &slowed("busy")).await, Some(0.0));
    assert!(!relay.proc_.log_text().contains("provider suspended"));
    assert_eq!(count(&relay, &deliveries("busy", "failed")).await, 0.0);
    // The fifth within the window suspends it.
    send(&relay, "r4@busy.test").await;
    let log = relay
        .wait_for_log("provider suspended after a throttling reply", 0)
        .await;
    assert!(
        log.lines()
            .any(|l| l.contains("provider suspended") && l.contains("busy-5")),
        "{log}"
    );
    wait_metric(&relay, &slowed("busy"), 1.0).await;
    wait_metric(&relay, &deliveries("busy", "deferred"), 5.0).await;
    assert_eq!(
        relay
            .proc_
            .log_text()
            .matches("below the rule's threshold")
            .count(),
        4
    );
    relay.proc_.terminate();
}

#[tokio::test]
async fn a_provider_requiring_tls_is_never_sent_to_in_plaintext() {
    // Built-in: qq requires TLS; the only upstream is plaintext and, by `local = false`, taken
    // for a smarthost on another host (a loopback one counts as local by default).
    let upstream = ScriptedSmtp::start(Script::default()).await;
    let mut relay = RelayProc::start(&config(&upstream, "1s", "local = false"), &[]).await;
    let started = relay.proc_.log_text();
    assert!(
        started.contains("provider requires TLS (require_tls) but no upstream has TLS on"),
        "{started}"
    );
    send(&relay, "someone@qq.com").await;
    send(&relay, "friend@example.org").await;
    wait_accepted(&upstream, "friend@example.org", &relay).await;
    relay
        .wait_for_log("no upstream has TLS on; copy deferred", 0)
        .await;
    wait_metric(
        &relay,
        "mailveil_deliveries_total{outcome=\"deferred\",provider=\"qq\",upstream=\"none\"}",
        1.0,
    )
    .await;
    assert_eq!(rcpt_attempts(&upstream, "someone@qq.com"), 0);
    relay.proc_.terminate();
}
