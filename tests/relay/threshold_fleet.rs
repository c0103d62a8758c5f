//! Threshold rules counted across the fleet, through the real binary: two relay processes share a
//! real `redis-server` (started here on a free port, killed by PID), each with a scripted
//! upstream answering a test provider's RCPT with a "too busy" 5xx. A rule with
//! `threshold = "4/1h"` suspends the provider: two matches on A and one on B suspend nothing
//! anywhere; the fourth (on B, which saw only two itself) suspends it on B, and within a second
//! on A through the fleet-wide shaping state. With Redis down, a replica's own count still acts.
//! The counting script itself is checked against a real Redis too (window, cap, expiry, keys).
//!
//! Without `redis-server` on the PATH the Redis tests are skipped with a printed reason, unless
//! `MAILVEIL_REQUIRE_REDIS=1` (CI), where that is a failure.

use crate::support;
use crate::support::scripted_smtp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp};
use serde_json::Value;
use support::redis_server::{Redis, redis_available};
use support::*;

const TOKEN: &str = "threshold-fleet-token-Xw";

/// The test provider's answer to every RCPT: matched by the rule, a deferral (never a bounce).
const BUSY: &str = "550 4.7.1 Too busy for you, come back later";

/// The rule's window in Redis for provider `busy`.
const KEY: &str = "mailveil:threshold:busy:busy-4";

/// A relay behind `upstream`, with the threshold rule and `[cluster]` on `redis_port`.
/// Retries an hour away: only new copies make matches.
fn config(upstream: &ScriptedSmtp, redis_port: u16) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1h"
retry_max = "1h"
{scripted}{metrics}{admin}
[[provider]]
name = "busy"
domains = ["busy.test"]
[[shaping.rule]]
name = "busy-4"
class = "5xx"
contains = "too busy"
action = "suspend"
duration = "1h"
threshold = "4/1h"
[cluster]
redis_url = "redis://127.0.0.1:{redis_port}/"
replicas = 2
"#,
        scripted = scripted_upstream("scripted", upstream.port(), "none", "10s"),
        metrics = metrics_listener!(),
        admin = admin_listener!(),
    )
}

async fn busy_upstream() -> ScriptedSmtp {
    ScriptedSmtp::start(Script::default().rcpt_domain_replies("busy.test", &[BUSY; 8])).await
}

async fn start(template: &str, replica: &str) -> RelayProc {
    RelayProc::start(
        template,
        &[("TEST_ADMIN_TOKEN", TOKEN), ("HOSTNAME", replica)],
    )
    .await
}

async fn send(r: &RelayProc, rcpt: &str) {
    send_simple(r.smtp, "app@src.test", &[rcpt], "threshold").await
}

async fn metric_value(r: &RelayProc, series: &str) -> Option<f64> {
    metric_at(r.metrics, series).await
}

/// Waits until `series` has `value` on `r`.
async fn wait_metric(r: &RelayProc, series: &str, value: f64) {
    let end = Instant::now() + PATIENCE;
    loop {
        let got = metric_value(r, series).await;
        if got == Some(value) {
            return;
        }
        assert!(
            Instant::now() < end,
            "{series} is {got:?}, never {value}; log:\n{}",
            r.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const DEFERRED: &str =
    "mailveil_deliveries_total{outcome=\"deferred\",provider=\"busy\",upstream=\"scripted\"}";
const FAILED: &str =
    "mailveil_deliveries_total{outcome=\"failed\",provider=\"busy\",upstream=\"scripted\"}";
const SUSPENDS: &str = "mailveil_shaping_actions_total{action=\"suspend\",provider=\"busy\"}";

/// One more copy to `busy` on `r`, which has had `before` matches: deferred, and its match
/// counted (the "below the threshold" line, or the action).
async fn one_match(r: &RelayProc, before: usize, n: &str) {
    send(r, &format!("{n}@busy.test")).await;
    wait_metric(r, DEFERRED, (before + 1) as f64).await;
}

/// `providers[busy].shaping` of `r`'s status (`Null` when none is in force).
async fn busy_shaping(admin: SocketAddr) -> Value {
    let status = admin_status(admin, TOKEN).await;
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "busy")
        .unwrap_or_else(|| panic!("provider busy missing from {status}"))["shaping"]
        .clone()
}

#[tokio::test]
async fn four_matches_across_two_replicas_suspend_the_provider_on_both_and_three_do_not() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let redis = Redis::start(redis_port, work.path());
    let (up_a, up_b) = (busy_upstream().await, busy_upstream().await);
    let mut a = start(&config(&up_a, redis_port), "replica-a").await;
    let mut b = start(&config(&up_b, redis_port), "replica-b").await;
    for r in [&a, &b] {
        wait_metric(r, "mailveil_cluster_up", 1.0).await;
    }

    // Two matches on A, one on B: three in the fleet, below four.
    one_match(&a, 0, "r0").await;
    a.wait_for_log("below the rule's threshold", 0).await;
    one_match(&a, 1, "r1").await;
    a.wait_for_log("below the rule's threshold", 1).await;
    one_match(&b, 0, "r2").await;
    let log_b = b.wait_for_log("below the rule's threshold", 0).await;
    assert_eq!(redis.cli(&["ZCARD", KEY]), "3", "counted in Redis");
    let line = log_b
        .lines()
        .find(|l| l.contains("below the rule's threshold"))
        .unwrap();
    assert!(
        line.contains("matches=3") && line.contains("counted=\"fleet\""),
        "B's first match is the fleet's third: {line}"
    );
    let ttl: u64 = redis.cli(&["PTTL", KEY]).parse().unwrap();
    assert!(
        (1..=3_600_000).contains(&ttl),
        "the window's key expires with it: {ttl}"
    );
    for r in [&a, &b] {
        assert!(busy_shaping(r.admin).await.is_null(), "nothing suspended");
        assert_eq!(
            metric_value(r, "mailveil_provider_slowed{provider=\"busy\"}").await,
            Some(0.0)
        );
        assert!(!r.proc_.log_text().contains("provider suspended"));
    }

    // The fourth, on B (its own second): B suspends the provider ...
    one_match(&b, 1, "r3").await;
    let log = b
        .wait_for_log("provider suspended after a throttling reply", 0)
        .await;
    assert!(
        log.lines()
            .any(|l| l.contains("provider suspended") && l.contains("busy-4")),
        "{log}"
    );
    let local = busy_shaping(b.admin).await;
    assert_eq!(local["action"], "suspend", "{local}");
    assert_eq!(local["origin"], "local", "{local}");
    // ... and within a second A holds it too, as B's decision.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let remote = busy_shaping(a.admin).await;
    assert_eq!(remote["action"], "suspend", "{remote}");
    assert_eq!(remote["origin"], "fleet", "{remote}");
    assert_eq!(remote["by"], "replica-b", "{remote}");
    assert_eq!(remote["rule"], "busy-4", "{remote}");
    // Decided once, where the fourth match came; every copy deferred, none failed.
    assert_eq!(metric_value(&b, SUSPENDS).await, Some(1.0));
    assert_eq!(metric_value(&a, SUSPENDS).await, Some(0.0));
    for r in [&a, &b] {
        assert_eq!(metric_value(r, FAILED).await.unwrap_or(0.0), 0.0);
    }
    a.proc_.terminate();
    b.proc_.terminate();
}

#[tokio::test]
async fn with_redis_down_a_replicas_own_count_still_acts() {
    // No Redis listens on this port: `[cluster]` is configured, the cluster is unreachable.
    let dead_port = free_port();
    let upstream = busy_upstream().await;
    let mut a = start(&config(&upstream, dead_port), "replica-a").await;
    for i in 0..3 {
        one_match(&a, i, &format!("r{i}")).await;
        a.wait_for_log("below the rule's threshold", i).await;
    }
    assert!(busy_shaping(a.admin).await.is_null());
    one_match(&a, 3, "r3").await;
    let log = a
        .wait_for_log("provider suspended after a throttling reply", 0)
        .await;
    let shaping = busy_shaping(a.admin).await;
    assert_eq!(shaping["action"], "suspend", "{shaping}");
    assert_eq!(shaping["origin"], "local", "{shaping}");
    assert_eq!(metric_value(&a, SUSPENDS).await, Some(1.0));
    assert_eq!(
        log.matches("threshold rules count matches on each replica alone")
            .count(),
        1,
        "logged once:\n{log}"
    );
    a.proc_.terminate();
}

/// The counting script against a real Redis: one window per rule and target, at most the
/// threshold's count kept, old matches leave the window, the key expires with it, and no
/// answer from Redis (slow or down) is `None` (the caller's local count decides).
#[tokio::test]
async fn the_fleet_count_slides_caps_and_expires_in_redis() {
    use mailveil::config::{ClusterConfig, RuleScope, Threshold};
    use mailveil::schedule::cluster::SharedLimits;
    use mailveil::schedule::rules::shared::{SharedCount, key};

    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut redis = Redis::start(port, work.path());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = ClusterConfig {
        redis_url: format!("redis://127.0.0.1:{port}/"),
        replicas: 2,
        password: None,
    };
    let gauge = prometheus::IntGauge::new("up", "up").unwrap();
    let cluster = SharedLimits::start(&config, gauge, shutdown.clone());
    let end = Instant::now() + PATIENCE;
    while !cluster.is_up() {
        assert!(Instant::now() < end, "Redis never answered the probe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Two replicas' counters on one Redis.
    let (one, two) = (SharedCount::new(cluster.clone()), SharedCount::new(cluster));
    let three = Threshold {
        count: 3,
        window: Duration::from_secs(60),
    };
    let p = RuleScope::Provider;
    assert_eq!(one.record("r", p, "qq", three).await, Some(1));
    assert_eq!(two.record("r", p, "qq", three).await, Some(2));
    assert_eq!(one.record("r", p, "qq", three).await, Some(3));
    assert_eq!(two.record("r", p, "qq", three).await, Some(3), "capped");
    let k = key("r", p, "qq");
    assert_eq!(k, "mailveil:threshold:qq:r");
    assert_eq!(redis.cli(&["ZCARD", &k]), "3", "at most the count kept");
    let ttl: u64 = redis.cli(&["PTTL", &k]).parse().unwrap();
    assert!((1..=60_000).contains(&ttl), "{ttl}");
    // Per target, per rule, per scope.
    assert_eq!(one.record("r", p, "netease", three).await, Some(1));
    assert_eq!(one.record("other", p, "qq", three).await, Some(1));
    assert_eq!(
        one.record("r", RuleScope::Upstream, "qq", three).await,
        Some(1)
    );
    // An odd rule name makes a plain key.
    assert_eq!(one.record("a b:c", p, "qq", three).await, Some(1));
    let odd = key("a b:c", p, "qq");
    assert!(odd.starts_with("mailveil:threshold:qq:~"), "{odd}");
    assert_eq!(redis.cli(&["ZCARD", &odd]), "1");

    // A short window: once it has passed the old matches are gone, and a key nobody adds to
    // expires.
    let short = Threshold {
        count: 3,
        window: Duration::from_millis(300),
    };
    assert_eq!(one.record("s", p, "qq", short).await, Some(1));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let s = key("s", p, "qq");
    assert_eq!(redis.cli(&["EXISTS", &s]), "0", "expired with its window");
    assert_eq!(two.record("s", p, "qq", short).await, Some(1));
    assert_eq!(
        one.record("r", p, "qq", three).await,
        Some(3),
        "the long window still holds its matches"
    );

    // Redis slow (its clients paused longer than the call may take): no count, and no wait
    // for the late answer; counted again once it answers.
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "2000", "WRITE"]), "OK");
    assert_eq!(one.record("r", p, "qq", three).await, None, "timed out");
    let end = Instant::now() + PATIENCE;
    while one.record("r", p, "qq", three).await.is_none() {
        assert!(Instant::now() < end, "never counted again after the pause");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Redis away: no count, within the call's time limit.
    redis.stop();
    let end = Instant::now() + PATIENCE;
    while one.record("r", p, "qq", three).await.is_some() {
        assert!(Instant::now() < end, "a stopped Redis still counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
}
