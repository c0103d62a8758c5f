//! Upstream-scoped shaping shared by the fleet, through the real binary: two relay processes
//! share a real `redis-server` (started here on a free port, killed by PID), each with an SMTP
//! upstream named `ses` (its own scripted server). Replica A's upstream answers SES'
//! `454 Throttling failure: Maximum sending rate exceeded` once; A slows `ses` down and within
//! a second B's `ses` is slowed too, shown in B's `/status` as another replica's decision
//! (origin `fleet`, by `replica-a`) and in `ctl status --table`. `ctl shaping clear --upstream
//! ses` on B lifts it on A; then B's upstream throttles, A follows, and a plain `ctl shaping
//! clear` on A lifts it on B.
//!
//! Without `redis-server` on the PATH the test is skipped with a printed reason, unless
//! `MAILVEIL_REQUIRE_REDIS=1` (CI), where that is a failure.

use crate::support;
use crate::support::scripted_smtp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp, Step};
use serde_json::Value;
use support::redis_server::{Redis, redis_available};
use support::*;

const TOKEN: &str = "upstream-fleet-token-Qz";

const SES_THROTTLE: &str = "454 Throttling failure: Maximum sending rate exceeded.";

/// The field of upstream `ses` in the cluster's shaping hash.
const FIELD: &str = "upstream:ses";

/// A replica whose upstream `ses` (10/s, burst 1) is the scripted server on `port`.
fn config(port: u16, redis_port: u16) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
{upstream}messages_per_second = 10.0
burst = 1
{metrics}{admin}
[cluster]
redis_url = "redis://127.0.0.1:{redis_port}/"
replicas = 2
"#,
        upstream = scripted_upstream("ses", port, "none", "10s"),
        metrics = metrics_listener!(),
        admin = admin_listener!(),
    )
}

/// A scripted SES: the first MAIL gets the throttling reply, everything after is accepted.
async fn throttling_once() -> ScriptedSmtp {
    let mut script = Script::default();
    script
        .first_replies
        .insert(Step::Mail, vec![SES_THROTTLE.into()]);
    ScriptedSmtp::start(script).await
}

async fn status(admin: SocketAddr) -> Value {
    admin_status(admin, TOKEN).await
}

/// `upstreams[ses]` of a status answer.
fn ses_of(status: &Value) -> Value {
    status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "ses")
        .unwrap_or_else(|| panic!("upstream ses missing from {status}"))
        .clone()
}

/// Waits until `check` holds for the replica's `ses` (bounded); returns it.
async fn wait_ses(r: &RelayProc, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + PATIENCE;
    loop {
        let ses = ses_of(&status(r.admin).await);
        if check(&ses) {
            return ses;
        }
        assert!(
            Instant::now() < end,
            "{what} never held: {ses}\nlog:\n{}",
            r.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(smtp: SocketAddr, rcpt: &str) {
    send_simple(smtp, "app@src.test", &[rcpt], "upstream fleet").await
}

/// Waits until `upstream` has accepted `n` messages.
async fn wait_accepted(upstream: &ScriptedSmtp, n: usize, r: &RelayProc) {
    let end = Instant::now() + PATIENCE;
    while upstream.record().messages.len() < n {
        assert!(
            Instant::now() < end,
            "only {} of {n} accepted; log:\n{}",
            upstream.record().messages.len(),
            r.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn ctl(admin: SocketAddr, args: &[&str]) -> String {
    ctl_ok(admin, TOKEN, args)
}

/// The shared entry of `ses` as Redis holds it.
fn shared_entry(redis: &Redis) -> Value {
    let raw = redis.cli(&["HGET", "mailveil:shaping", FIELD]);
    serde_json::from_str(raw.trim()).unwrap_or_else(|e| panic!("{e}: {raw:?}"))
}

async fn slowed_metric(r: &RelayProc) -> Option<f64> {
    let (_, text) = http_get(r.metrics, "/metrics").await;
    metric(&text, "mailveil_upstream_slowed{upstream=\"ses\"}")
}

#[tokio::test]
async fn an_ses_throttle_on_one_replica_slows_the_same_upstream_on_the_other() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let redis = Redis::start(redis_port, work.path());
    let (ses_a, ses_b) = (throttling_once().await, throttling_once().await);
    let env = |replica| [("TEST_ADMIN_TOKEN", TOKEN), ("HOSTNAME", replica)];
    let a = RelayProc::start(&config(ses_a.port(), redis_port), &env("replica-a")).await;
    let b = RelayProc::start(&config(ses_b.port(), redis_port), &env("replica-b")).await;
    for r in [&a, &b] {
        let end = Instant::now() + PATIENCE;
        while status(r.admin).await["shaping_sync"]["redis_reachable"] != true {
            assert!(Instant::now() < end, "shaping never shared through Redis");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(ses_of(&status(r.admin).await)["limits"]["slowed"], false);
    }

    // A's copy gets the throttling reply: A slows `ses` down (a local decision) and shares it.
    send(a.smtp, "kim@a.test").await;
    let local = wait_ses(&a, "ses slowed on A", |u| u["limits"]["slowed"] == true).await;
    assert_eq!(local["shaping"]["origin"], "local", "{local}");
    assert_eq!(local["limits"]["messages_per_second"], 5.0, "{local}");
    let entry = shared_entry(&redis);
    assert_eq!(entry["action"], "slow", "{entry}");
    assert_eq!(entry["by"], "replica-a", "{entry}");

    // Within a second B's `ses` is slowed too, as replica A's decision, for the time left.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let remote = ses_of(&status(b.admin).await);
    let shaping = &remote["shaping"];
    assert_eq!(shaping["action"], "slow", "{remote}");
    assert_eq!(shaping["factor"], 0.5, "{remote}");
    assert_eq!(shaping["origin"], "fleet", "{remote}");
    assert_eq!(shaping["by"], "replica-a", "{remote}");
    assert!(
        shaping["rule"]
            .as_str()
            .is_some_and(|r| r.contains("maximum-sending-rate-exceeded")),
        "{remote}"
    );
    assert!(
        shaping["reply"]
            .as_str()
            .is_some_and(|r| r.contains("Throttling failure")),
        "{remote}"
    );
    let left = shaping["remaining_secs"].as_u64().unwrap();
    assert!((1..=600).contains(&left), "never longer: {remote}");
    // The existing keys say the same.
    assert_eq!(remote["limits"]["slowed"], true, "{remote}");
    assert_eq!(remote["limits"]["messages_per_second"], 5.0, "{remote}");
    assert_eq!(slowed_metric(&b).await, Some(1.0));
    let table = ctl(b.admin, &["status", "--table"]);
    assert!(table.contains("UPSTREAM LIMITS"), "{table}");
    assert!(table.contains("fleet (replica-a)"), "{table}");
    // No ping-pong: B applied the entry and never wrote it back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(shared_entry(&redis)["id"], entry["id"]);

    // An operator's clear of the upstream on B lifts it on A too.
    let out = ctl(
        b.admin,
        &["shaping", "clear", "--upstream", "ses", "--json"],
    );
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["upstream_shaping_cleared"],
        serde_json::json!(["ses"]),
        "{answer}"
    );
    assert!(ses_of(&answer)["shaping"].is_null(), "{answer}");
    let lifted = wait_ses(&a, "ses lifted on A", |u| u["limits"]["slowed"] == false).await;
    assert_eq!(lifted["limits"]["messages_per_second"], 10.0, "{lifted}");
    assert!(lifted["shaping"].is_null(), "{lifted}");
    assert_eq!(slowed_metric(&a).await, Some(0.0));
    wait_accepted(&ses_a, 1, &a).await;

    // The other way: B's upstream throttles, A follows; a clear of everything on A lifts B.
    send(b.smtp, "lee@a.test").await;
    let remote = wait_ses(&a, "ses slowed on A by B", |u| {
        u["shaping"]["origin"] == "fleet"
    })
    .await;
    assert_eq!(remote["shaping"]["by"], "replica-b", "{remote}");
    let out = ctl(a.admin, &["shaping", "clear", "--json"]);
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["upstream_shaping_cleared"],
        serde_json::json!(["ses"]),
        "{answer}"
    );
    wait_ses(&b, "ses lifted on B", |u| u["limits"]["slowed"] == false).await;
    wait_accepted(&ses_b, 1, &b).await;
    // Provider-labelled actions are not counted for an upstream's decision.
    let (_, text) = http_get(a.metrics, "/metrics").await;
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("mailveil_shaping_actions_total") && !l.ends_with(" 0")),
        "{text}"
    );

    // An upstream this relay does not have is refused; naming both kinds is a bad request.
    let (code, _) = http_request(
        a.admin,
        "POST",
        "/shaping/clear?upstream=nosuch",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 404);
    let (code, _) = http_request(
        a.admin,
        "POST",
        "/shaping/clear?upstream=ses&provider=default",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 400);
}
