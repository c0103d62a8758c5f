//! An upstream's own limits through the real binary, against scripted upstreams: an SES-style
//! `454 Throttling failure` slows the upstream down (log line, `/status`, gauge, a lower rate);
//! a `recipients_per_day` quota of N lets exactly N recipients through, then copies fail over to
//! the next upstream, or without one are held (deferred, never failed, not even past
//! `max_queue_time`) and delivered after the reset; an ESP's "daily quota exceeded" reply spends
//! the quota at once; two relay processes sharing a real `redis-server` send exactly N through
//! the quota together.
//!
//! Timing: the only time assertions are lower bounds a rate limit or a reset promises (CPU
//! contention can only make copies later). Without `redis-server` on the PATH the cluster test
//! is skipped with a printed reason, unless `MAILVEIL_REQUIRE_REDIS=1` (CI).

use crate::support;
use crate::support::scripted_smtp;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use scripted_smtp::{Received, Script, ScriptedSmtp, Step};
use serde_json::Value;
use support::redis_server::{Redis, redis_available};
use support::*;

const TOKEN: &str = "upstream-limits-token-Qz";

/// A relay process on fresh ports with `upstreams` (TOML) and `extra` sections.
async fn relay(upstreams: &str, extra: &str) -> RelayProc {
    let template = format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
max_queue_time = "2s"
{upstreams}
{extra}
{metrics}{admin}"#,
        metrics = metrics_listener!(),
        admin = admin_listener!(),
    );
    RelayProc::start(&template, &[("TEST_ADMIN_TOKEN", TOKEN)]).await
}

/// An `[[upstream]]` on a scripted server, with `limits` (TOML lines) added.
fn upstream(name: &str, server: &ScriptedSmtp, limits: &str) -> String {
    format!(
        "{}{limits}\n",
        scripted_upstream(name, server.port(), "none", "10s")
    )
}

/// One message whose `To:` shows every recipient: split into one copy each.
async fn send_split(smtp: SocketAddr, tag: &str, n: usize) {
    let rcpts: Vec<String> = (0..n).map(|i| format!("{tag}{i}@a.test")).collect();
    let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let msg = message(
        &[
            "From: app@src.test",
            &format!("To: {}", to.join(", ")),
            "Subject: upstream limits",
        ],
        "hello\r\n",
    );
    let reply = lettre_send(smtp, Some("app@src.test"), &to, &msg)
        .await
        .unwrap();
    assert!(reply.starts_with("250"), "{reply}");
}

/// Waits until the servers together have accepted `n` copies; returns each one's messages.
async fn wait_total(servers: &[&ScriptedSmtp], n: usize, log: &RelayProc) -> Vec<Vec<Received>> {
    let end = Instant::now() + 2 * PATIENCE;
    loop {
        let got: Vec<Vec<Received>> = servers.iter().map(|s| s.record().messages).collect();
        let total: usize = got.iter().map(Vec::len).sum();
        if total >= n {
            return got;
        }
        assert!(
            Instant::now() < end,
            "only {total} of {n} copies arrived; log:\n{}",
            log.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn metric_of(relay: &RelayProc, series: &str) -> Option<f64> {
    metric_at(relay.metrics, series).await
}

async fn wait_metric(relay: &RelayProc, series: &str, at_least: f64) {
    let end = Instant::now() + PATIENCE;
    while metric_of(relay, series).await.unwrap_or(0.0) < at_least {
        assert!(
            Instant::now() < end,
            "{series} never reached {at_least}; log:\n{}",
            relay.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `/status`'s entry for upstream `name`.
async fn upstream_status(relay: &RelayProc, name: &str) -> Value {
    let (code, body) = http_request(relay.admin, "GET", "/status", Some(TOKEN)).await;
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    status["upstreams"]
        .as_array()
        .expect("upstreams listed")
        .iter()
        .find(|u| u["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no upstream {name} in {body}"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `quota_reset` for the wall-clock second `at` (Unix s), in UTC.
fn reset_at(at: u64) -> String {
    let s = at % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[tokio::test]
async fn an_ses_throttling_reply_slows_the_upstream_down() {
    let mut script = Script::default();
    script.first_replies.insert(
        Step::Mail,
        vec!["454 Throttling failure: Maximum sending rate exceeded.".into()],
    );
    let ses = ScriptedSmtp::start(script).await;
    let r = relay(
        &upstream("ses", &ses, "messages_per_second = 10.0\nburst = 1"),
        "",
    )
    .await;
    let before = upstream_status(&r, "ses").await;
    assert_eq!(before["limits"]["messages_per_second"], 10.0);
    assert_eq!(before["limits"]["slowed"], false);

    send_split(r.smtp, "s", 12).await;
    let got = wait_total(&[&ses], 12, &r).await;
    r.wait_for_log("upstream slowed down after its reply", 0)
        .await;
    let after = upstream_status(&r, "ses").await;
    assert_eq!(after["limits"]["slowed"], true, "{after}");
    assert_eq!(after["limits"]["messages_per_second"], 5.0, "{after}");
    assert!(
        after["limits"]["slowed_by"]
            .as_str()
            .is_some_and(|s| s.contains("maximum-sending-rate-exceeded")),
        "{after}"
    );
    assert_eq!(
        metric_of(&r, "mailveil_upstream_slowed{upstream=\"ses\"}").await,
        Some(1.0)
    );
    // Every copy arrived once (the throttled one after its retry), never failed.
    assert_eq!(got[0].len(), 12);
    assert_eq!(
        metric_of(
            &r,
            "mailveil_deliveries_total{outcome=\"failed\",provider=\"default\",upstream=\"ses\"}"
        )
        .await
        .unwrap_or(0.0),
        0.0
    );
    // Slowed to 5/s with a burst of 1: the 11 copies after the first are at least ~200 ms
    // apart, 2.2 s in all (at the configured 10/s they would take 1.1 s).
    let mut at = ses.record().arrivals;
    at.sort();
    assert!(
        *at.last().unwrap() - at[0] >= Duration::from_millis(1800),
        "12 copies within {:?}",
        *at.last().unwrap() - at[0]
    );
}

#[tokio::test]
async fn a_recipient_quota_lets_exactly_n_through_then_copies_fail_over() {
    let (primary, secondary) = (
        ScriptedSmtp::start(Script::default()).await,
        ScriptedSmtp::start(Script::default()).await,
    );
    let upstreams = upstream("primary", &primary, "recipients_per_day = 3")
        + &upstream("secondary", &secondary, "");
    let r = relay(&upstreams, "").await;
    send_split(r.smtp, "f", 7).await;
    let got = wait_total(&[&primary, &secondary], 7, &r).await;
    assert_eq!(
        got[0].len(),
        3,
        "exactly the quota through the primary; log:\n{}",
        r.proc_.log_text()
    );
    assert_eq!(got[1].len(), 4, "the rest through the secondary");
    r.wait_for_log("quota spent until the reset", 0).await;
    let used = "mailveil_upstream_quota_used{unit=\"recipients\",upstream=\"primary\"}";
    assert_eq!(metric_of(&r, used).await, Some(3.0));
    let limit = "mailveil_upstream_quota_limit{unit=\"recipients\",upstream=\"primary\"}";
    assert_eq!(metric_of(&r, limit).await, Some(3.0));
    let status = upstream_status(&r, "primary").await;
    assert_eq!(status["limits"]["quota_spent"], true, "{status}");
    assert_eq!(status["limits"]["quotas"][0]["used"], 3, "{status}");
    assert!(status["limits"]["quota_reset"].is_string(), "{status}");
    // A later message goes straight to the secondary.
    send_split(r.smtp, "g", 2).await;
    let got = wait_total(&[&primary, &secondary], 9, &r).await;
    assert_eq!((got[0].len(), got[1].len()), (3, 6));
}

#[tokio::test]
async fn an_esp_quota_reply_spends_the_quota_and_the_copy_fails_over() {
    let mut script = Script::default();
    script.first_replies.insert(
        Step::Mail,
        vec!["454 Throttling failure: Daily message quota exceeded.".into()],
    );
    let (primary, secondary) = (
        ScriptedSmtp::start(script).await,
        ScriptedSmtp::start(Script::default()).await,
    );
    // One connection: the copies behind the first wait for its turn and see its answer.
    let upstreams = upstream("primary", &primary, "max_connections = 1")
        + &upstream("secondary", &secondary, "");
    let r = relay(&upstreams, "").await;
    send_split(r.smtp, "e", 4).await;
    let got = wait_total(&[&primary, &secondary], 4, &r).await;
    assert_eq!(got[0].len(), 0, "the primary said its quota is spent");
    assert_eq!(got[1].len(), 4);
    assert_eq!(
        primary.record().step_counts[&Step::Mail],
        1,
        "asked once, then skipped until the reset"
    );
    let status = upstream_status(&r, "primary").await;
    assert_eq!(status["limits"]["quota_spent"], true, "{status}");
    assert_eq!(
        metric_of(
            &r,
            "mailveil_deliveries_total{outcome=\"deferred\",provider=\"default\",upstream=\"primary\"}"
        )
        .await
        .unwrap_or(0.0),
        0.0,
        "the copy went on to the secondary in the same attempt"
    );
}

#[tokio::test]
async fn without_a_secondary_copies_are_held_until_the_reset_then_delivered() {
    let only = ScriptedSmtp::start(Script::default()).await;
    // The quota day ends a few seconds from now; max_queue_time (2 s) is shorter than that.
    let reset = unix_now() + 12;
    let limits = format!(
        "recipients_per_day = 3\nquota_reset = \"{}\"",
        reset_at(reset)
    );
    let r = relay(&upstream("only", &only, &limits), "").await;
    let reset_instant = Instant::now() + Duration::from_secs(reset.saturating_sub(unix_now()));
    send_split(r.smtp, "h", 5).await;
    wait_total(&[&only], 3, &r).await;
    wait_metric(
        &r,
        "mailveil_upstream_quota_holds_total{provider=\"default\"}",
        2.0,
    )
    .await;
    if Instant::now() + Duration::from_secs(1) < reset_instant {
        assert_eq!(
            only.record().messages.len(),
            3,
            "held, not sent, before the reset"
        );
        assert_eq!(
            metric_of(&r, "mailveil_queue_messages{provider=\"default\"}").await,
            Some(2.0),
            "the held copies are still queued"
        );
    }
    let got = wait_total(&[&only], 5, &r).await;
    assert_eq!(got[0].len(), 5);
    let mut at = only.record().arrivals;
    at.sort();
    assert!(
        at[3] >= reset_instant - Duration::from_secs(1),
        "a held copy left {:?} before the reset",
        reset_instant - at[3]
    );
    let failed =
        "mailveil_deliveries_total{outcome=\"failed\",provider=\"default\",upstream=\"only\"}";
    assert_eq!(
        metric_of(&r, failed).await.unwrap_or(0.0),
        0.0,
        "never failed"
    );
    assert!(
        !r.proc_.log_text().contains("max_queue_time reached"),
        "a held copy expired"
    );
    // The new quota day counts the two copies sent after the reset.
    let used = "mailveil_upstream_quota_used{unit=\"recipients\",upstream=\"only\"}";
    assert_eq!(metric_of(&r, used).await, Some(2.0));
}

/// A relay process of the cluster test: `[cluster]` on `redis`, both upstreams.
async fn cluster_relay(primary: &ScriptedSmtp, secondary: &ScriptedSmtp, redis: u16) -> RelayProc {
    let upstreams = upstream("primary", primary, "recipients_per_day = 5")
        + &upstream("secondary", secondary, "");
    let cluster = format!("[cluster]\nredis_url = \"redis://127.0.0.1:{redis}/\"\nreplicas = 2\n");
    relay(&upstreams, &cluster).await
}

#[tokio::test]
async fn two_relays_sharing_redis_send_exactly_n_through_the_quota() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(free_port(), work.path());
    let (primary, secondary) = (
        ScriptedSmtp::start(Script::default()).await,
        ScriptedSmtp::start(Script::default()).await,
    );
    let a = cluster_relay(&primary, &secondary, redis.port).await;
    let b = cluster_relay(&primary, &secondary, redis.port).await;
    for r in [&a, &b] {
        wait_metric(r, "mailveil_cluster_up", 1.0).await;
    }
    tokio::join!(send_split(a.smtp, "a", 6), send_split(b.smtp, "b", 6));
    let got = wait_total(&[&primary, &secondary], 12, &a).await;
    assert_eq!(
        got[0].len(),
        5,
        "exactly the shared quota through the primary"
    );
    assert_eq!(got[1].len(), 7);
    let keys = redis.cli(&["--scan", "--pattern", "mailveil:quota:primary:recipients:*"]);
    let key = keys.lines().next().expect("the quota is counted in Redis");
    assert_eq!(redis.cli(&["GET", key]).trim(), "5");
    redis.stop();
}

#[tokio::test]
async fn a_suspended_upstream_holds_its_copies_until_an_operator_lifts_it() {
    // Microsoft 365's "Sender throttled" 550 suspends the upstream for an hour (built-in ESP
    // rule); the copy is deferred, not failed, and held while its only upstream is suspended.
    let mut script = Script::default();
    script.first_replies.insert(
        Step::Mail,
        vec![
            "550 5.2.252 SendAsDenied; Sender throttled due to continuous send as denied errors"
                .into(),
        ],
    );
    let m365 = ScriptedSmtp::start(script).await;
    let mut r = relay(&upstream("m365", &m365, ""), "").await;
    send_split(r.smtp, "h", 1).await;
    r.wait_for_log("upstream suspended after its reply", 0)
        .await;
    let status = upstream_status(&r, "m365").await;
    assert_eq!(status["limits"]["suspended"], true, "{status}");
    // Held, not failed, well past max_queue_time (2 s): nothing reaches the upstream.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(m365.record().messages.is_empty());
    assert_eq!(
        metric_of(
            &r,
            "mailveil_deliveries_total{outcome=\"failed\",provider=\"default\",upstream=\"m365\"}"
        )
        .await
        .unwrap_or(0.0),
        0.0
    );

    let out = ctl_ok(r.admin, TOKEN, &["shaping", "clear", "--upstream", "m365"]);
    assert!(out.contains("m365"), "{out}");
    // Lifted: the held copy goes now, not in an hour.
    let got = wait_total(&[&m365], 1, &r).await;
    assert_eq!(got[0].len(), 1);
    r.proc_.terminate();
}
