//! Fleet-wide shaping state through the real binary: two relay processes share a real
//! `redis-server` (started here on a free port, killed by PID). Replica A's scripted upstream
//! answers Yahoo's `421 4.7.0 [TSS04]`, a configured rule suspends provider `yahoo` on A, and
//! within a second replica B stops delivering to Yahoo too (other providers keep flowing on B)
//! until the suspension ends; B's `/status` shows it with its rule, remaining time, origin and
//! the reply (addresses redacted). An operator's `ctl shaping clear` on B lifts it on A as well.
//! With Redis down, A's suspension still holds locally.
//!
//! Without `redis-server` on the PATH the tests are skipped with a printed reason, unless
//! `MAILVEIL_REQUIRE_REDIS=1` (CI), where that is a failure.

use crate::support;
use crate::support::scripted_smtp;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp, Step};
use serde_json::Value;
use support::redis_server::{Redis, redis_available};
use support::*;

const TOKEN: &str = "shaping-fleet-token-Qz";

/// Yahoo's "stop for a while", naming the recipient (the reply must reach `/status` redacted).
const TSS04: &str =
    "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred for kim@yahoo.com";

/// The relay's part of every config here: SMTP, fast retries, metrics, admin, the rule.
fn config(upstream: &str, redis_port: u16, suspend_for: &str) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
{upstream}{metrics}{admin}
[[shaping.rule]]
contains = "[TSS04]"
action = "suspend"
duration = "{suspend_for}"
[cluster]
redis_url = "redis://127.0.0.1:{redis_port}/"
replicas = 2
"#,
        metrics = metrics_listener!(),
        admin = admin_listener!(),
    )
}

/// Replica A: its upstream answers the first MAIL with [`TSS04`], then accepts.
async fn tss04_upstream() -> ScriptedSmtp {
    let mut script = Script::default();
    script.first_replies.insert(Step::Mail, vec![TSS04.into()]);
    ScriptedSmtp::start(script).await
}

fn outbox_upstream() -> &'static str {
    "[[upstream]]\nname = \"outbox\"\ndir = \"{dir}/outbox\"\n"
}

async fn start(template: &str, replica: &str) -> RelayProc {
    RelayProc::start(
        template,
        &[("TEST_ADMIN_TOKEN", TOKEN), ("HOSTNAME", replica)],
    )
    .await
}

async fn status(admin: SocketAddr) -> Value {
    admin_status(admin, TOKEN).await
}

/// `providers[name].shaping` of a status answer (`Null` when none is in force).
fn shaping_of(status: &Value, name: &str) -> Value {
    status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("provider {name} missing from {status}"))["shaping"]
        .clone()
}

/// Waits until `check` holds for the replica's status (bounded).
async fn wait_status(r: &RelayProc, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_admin_status(r, TOKEN, what, check).await
}

async fn send(smtp: SocketAddr, to: &[&str], subject: &str) {
    send_simple(smtp, "news@example.com", to, subject).await
}

/// Recipients captured in `r`'s outbox whose address ends with `domain`.
fn captured(r: &RelayProc, domain: &str) -> usize {
    mailveil::capture::read_all(&r.outbox())
        .unwrap_or_default()
        .iter()
        .filter(|c| c.rcpt_to.iter().any(|a| a.ends_with(domain)))
        .count()
}

async fn wait_captured(r: &RelayProc, domain: &str, n: usize) {
    let end = Instant::now() + PATIENCE;
    while captured(r, domain) < n {
        assert!(
            Instant::now() < end,
            "{domain}: only {} of {n} copies delivered; log:\n{}",
            captured(r, domain),
            r.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Copies to `domain` the scripted upstream accepted.
fn accepted(upstream: &ScriptedSmtp, domain: &str) -> usize {
    upstream
        .record()
        .messages
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|a| a.ends_with(domain)))
        .count()
}

async fn actions_metric(r: &RelayProc, action: &str) -> Option<f64> {
    let (_, text) = http_get(r.metrics, "/metrics").await;
    metric(
        &text,
        &format!("mailveil_shaping_actions_total{{action=\"{action}\",provider=\"yahoo\"}}"),
    )
}

fn ctl(admin: SocketAddr, args: &[&str]) -> String {
    ctl_ok(admin, TOKEN, args)
}

/// A suspended on a Yahoo `TSS04`; replicas A and B both reachable through Redis.
struct Fleet {
    _redis: Redis,
    upstream: ScriptedSmtp,
    a: RelayProc,
    b: RelayProc,
    _work: tempfile::TempDir,
}

/// Starts Redis and both replicas; B delivers to Yahoo once (it works before); A's Yahoo copy
/// gets `TSS04` and A suspends Yahoo for `suspend_for`.
async fn suspended_fleet(suspend_for: &str) -> Fleet {
    let work = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let redis = Redis::start(redis_port, work.path());
    let upstream = tss04_upstream().await;
    let scripted = scripted_upstream("scripted", upstream.port(), "none", "10s");
    let a = start(&config(&scripted, redis_port, suspend_for), "replica-a").await;
    let b = start(
        &config(outbox_upstream(), redis_port, suspend_for),
        "replica-b",
    )
    .await;
    for r in [&a, &b] {
        wait_status(r, "shaping shared through Redis", |s| {
            s["shaping_sync"]["redis_reachable"] == true
        })
        .await;
    }
    send(b.smtp, &["ann@yahoo.com"], "before").await;
    wait_captured(&b, "@yahoo.com", 1).await;

    send(a.smtp, &["kim@yahoo.com"], "tss04").await;
    let s = wait_status(&a, "yahoo suspended on A", |s| {
        shaping_of(s, "yahoo")["action"] == "suspend"
    })
    .await;
    let local = shaping_of(&s, "yahoo");
    assert_eq!(local["origin"], "local", "{s}");
    assert_eq!(local["factor"], 0.0, "{s}");
    Fleet {
        _redis: redis,
        upstream,
        a,
        b,
        _work: work,
    }
}

#[tokio::test]
async fn a_suspension_on_one_replica_stops_the_other_within_a_second_until_it_ends() {
    if !redis_available() {
        return;
    }
    let Fleet {
        _redis: redis,
        upstream,
        a,
        b,
        _work,
    } = suspended_fleet("8s").await;
    let shared = redis.cli(&["HGET", "mailveil:shaping", "yahoo"]);
    assert!(shared.contains("\"suspend\""), "{shared}");

    // Within a second B holds the same suspension, as another replica's decision.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = status(b.admin).await;
    let remote = shaping_of(&s, "yahoo");
    assert_eq!(remote["action"], "suspend", "{s}");
    assert_eq!(remote["origin"], "fleet", "{s}");
    assert_eq!(remote["by"], "replica-a", "{s}");
    assert!(remote["rule"] == "shaping.rule[0]", "{remote}");
    let left = remote["remaining_secs"].as_u64().unwrap();
    assert!(
        (1..=8).contains(&left),
        "never longer than published: {remote}"
    );
    let reply = remote["reply"].as_str().unwrap();
    assert!(reply.contains("[TSS04]"), "{remote}");
    assert!(!reply.contains("kim@"), "the address is redacted: {remote}");
    let yahoo = s["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "yahoo")
        .unwrap();
    assert_eq!(yahoo["slowed"], true, "existing keys stay: {yahoo}");
    assert!(
        yahoo["limits"]["max_connections"].as_u64().is_some(),
        "{yahoo}"
    );
    let table = ctl(b.admin, &["status", "--table"]);
    assert!(table.contains("SUSPEND"), "{table}");
    assert!(table.contains("fleet (replica-a)"), "{table}");

    // B's copies: the other provider flows, Yahoo waits while B shows the suspension.
    send(b.smtp, &["lee@yahoo.com", "max@example.org"], "during").await;
    wait_captured(&b, "@example.org", 1).await;
    let mut held_while_suspended = 0;
    loop {
        // Captures first, then the status: a suspension shown afterwards covered the read.
        let yahoo_copies = captured(&b, "@yahoo.com");
        let s = status(b.admin).await;
        if shaping_of(&s, "yahoo").is_null() {
            break;
        }
        assert_eq!(yahoo_copies, 1, "B delivered to Yahoo while suspended: {s}");
        held_while_suspended += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        held_while_suspended > 0,
        "the suspension ended before B was checked"
    );

    // After the suspension both deliver to Yahoo again.
    wait_captured(&b, "@yahoo.com", 2).await;
    let end = Instant::now() + PATIENCE;
    while accepted(&upstream, "@yahoo.com") < 1 {
        assert!(Instant::now() < end, "A never delivered its Yahoo copy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Counted where it was decided, not where it was applied.
    assert_eq!(actions_metric(&a, "suspend").await, Some(1.0));
    assert_eq!(actions_metric(&b, "suspend").await, Some(0.0));
}

#[tokio::test]
async fn ctl_shaping_clear_on_one_replica_lifts_the_suspension_on_every_replica() {
    if !redis_available() {
        return;
    }
    let fleet = suspended_fleet("10m").await;
    let (a, b, upstream) = (&fleet.a, &fleet.b, &fleet.upstream);
    wait_status(b, "yahoo suspended on B", |s| {
        shaping_of(s, "yahoo")["origin"] == "fleet"
    })
    .await;
    // A's Yahoo copy waits (its retry is due in a second, the suspension lasts ten minutes).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(accepted(upstream, "@yahoo.com"), 0);

    let out = ctl(
        b.admin,
        &["shaping", "clear", "--provider", "yahoo", "--json"],
    );
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        answer["shaping_cleared"],
        serde_json::json!(["yahoo"]),
        "{answer}"
    );
    assert!(shaping_of(&answer, "yahoo").is_null(), "{answer}");

    wait_status(a, "yahoo lifted on A", |s| shaping_of(s, "yahoo").is_null()).await;
    let end = Instant::now() + PATIENCE;
    while accepted(upstream, "@yahoo.com") < 1 {
        assert!(
            Instant::now() < end,
            "A's Yahoo copy still waits after the clear; log:\n{}",
            a.proc_.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An unknown provider is refused.
    let (code, _) = http_request(
        b.admin,
        "POST",
        "/shaping/clear?provider=nosuch",
        Some(TOKEN),
    )
    .await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn with_redis_down_a_suspension_still_holds_locally() {
    // No Redis listens on this port: `[cluster]` is configured, the cluster is unreachable.
    let dead_port = free_port();
    let upstream = tss04_upstream().await;
    let scripted = scripted_upstream("scripted", upstream.port(), "none", "10s");
    let a = start(&config(&scripted, dead_port, "6s"), "replica-a").await;

    send(a.smtp, &["kim@yahoo.com"], "tss04").await;
    let s = wait_status(&a, "yahoo suspended locally", |s| {
        shaping_of(s, "yahoo")["action"] == "suspend"
    })
    .await;
    assert_eq!(shaping_of(&s, "yahoo")["origin"], "local", "{s}");
    assert_eq!(s["shaping_sync"]["redis_reachable"], false, "{s}");

    send(a.smtp, &["lou@yahoo.com", "max@example.org"], "during").await;
    let end = Instant::now() + PATIENCE;
    while accepted(&upstream, "@example.org") < 1 {
        assert!(Instant::now() < end, "the other provider did not flow");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut checked = 0;
    loop {
        let yahoo_copies = accepted(&upstream, "@yahoo.com");
        if shaping_of(&status(a.admin).await, "yahoo").is_null() {
            break;
        }
        assert_eq!(yahoo_copies, 0, "A delivered to Yahoo while suspended");
        checked += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(checked > 0, "the suspension ended before it was checked");
    let end = Instant::now() + PATIENCE;
    while accepted(&upstream, "@yahoo.com") < 2 {
        assert!(
            Instant::now() < end,
            "Yahoo copies never left after the suspension"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(actions_metric(&a, "suspend").await, Some(1.0));
    let log = a.proc_.log_text();
    assert_eq!(
        log.matches("shaping decisions stay local").count(),
        1,
        "logged once:\n{log}"
    );
}

/// The protocol of the shared state, two replicas' [`Fleet`]s driven round by round against a
/// real Redis: a decision reaches the other replica once and never longer than published, the
/// entry merges as a lane does (slowest factor, latest end), ended entries leave the hash and the
/// hash expires with its last entry, a clear reaches the other replica, and a decision taken
/// while Redis was away is shared when it answers again.
#[tokio::test]
async fn the_shared_entry_merges_expires_and_waits_for_redis_when_it_is_away() {
    use mailveil::config::{ClusterConfig, ShapingAction};
    use mailveil::schedule::cluster::SharedLimits;
    use mailveil::schedule::shaping::Decision;
    use mailveil::schedule::shaping::fleet::{Fleet, Remote};

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
    let one = Fleet::new(cluster.clone(), Some("one".into()));
    let two = Fleet::new(cluster, Some("two".into()));
    async fn poll_until_reachable(fleet: &Fleet, reachable: bool) -> Vec<Remote> {
        let end = Instant::now() + PATIENCE;
        loop {
            let got = fleet.poll().await;
            if fleet.sync_status().redis_reachable == reachable {
                return got;
            }
            assert!(Instant::now() < end, "Redis never reachable={reachable}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let decision =
        |action, by: &str| Decision::new(action, "rule", "421 x".into(), Some(by.into()));
    poll_until_reachable(&one, true).await;
    poll_until_reachable(&two, true).await;

    // One slows yahoo down for a minute: two hears it once, for no longer than published.
    let slow = ShapingAction::Slow { factor: 0.5 };
    let (written, left) = one
        .publish("yahoo", decision(slow, "one"), Duration::from_secs(60))
        .await
        .expect("written");
    assert!(left <= Duration::from_secs(60) && written.factor == 0.5);
    assert!(one.poll().await.is_empty(), "its own entry is not remote");
    let got = two.poll().await;
    let [
        Remote::Apply {
            field,
            decision: d,
            remaining,
        },
    ] = got.as_slice()
    else {
        panic!("{got:?}")
    };
    assert_eq!(
        (field.as_str(), d.factor, d.by.as_deref()),
        ("yahoo", 0.5, Some("one"))
    );
    assert!(*remaining <= Duration::from_secs(60) && *remaining > Duration::from_secs(50));
    assert!(two.poll().await.is_empty(), "once");

    // Two suspends it for five seconds: the slowest factor and the latest end win.
    let (merged, left) = two
        .publish(
            "yahoo",
            decision(ShapingAction::Suspend, "two"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(merged.factor, 0.0);
    assert!(
        left > Duration::from_secs(50),
        "the later end is kept: {left:?}"
    );
    let got = one.poll().await;
    assert!(
        matches!(got.as_slice(), [Remote::Apply { decision, .. }] if decision.factor == 0.0),
        "{got:?}"
    );
    let ttl: u64 = redis.cli(&["PTTL", "mailveil:shaping"]).parse().unwrap();
    assert!(
        (50_000..=62_000).contains(&ttl),
        "the hash ends with its last entry: {ttl}"
    );

    // An ended entry leaves the hash at the next write.
    one.publish("google", decision(slow, "one"), Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    one.publish("qq", decision(slow, "one"), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(redis.cli(&["HEXISTS", "mailveil:shaping", "google"]), "0");
    assert_eq!(redis.cli(&["HEXISTS", "mailveil:shaping", "qq"]), "1");

    // A clear on one reaches two.
    two.poll().await;
    assert_eq!(
        one.clear(&["yahoo".to_string()], false).await,
        vec!["yahoo"]
    );
    assert_eq!(
        two.poll().await,
        vec![Remote::Clear {
            field: "yahoo".into(),
            by: Some("one".into())
        }]
    );

    // Redis away: the decision holds locally (not written), and is shared when Redis answers.
    redis.stop();
    poll_until_reachable(&one, false).await;
    let sent = one
        .publish(
            "apple",
            decision(ShapingAction::Suspend, "one"),
            Duration::from_secs(30),
        )
        .await;
    assert!(sent.is_none());
    assert_eq!(one.sync_status().unshared, 1);
    let redis = Redis::start(port, work.path());
    poll_until_reachable(&one, true).await;
    assert_eq!(one.sync_status().unshared, 0);
    let stored = redis.cli(&["HGET", "mailveil:shaping", "apple"]);
    assert!(stored.contains("\"suspend\""), "{stored}");
    let got = poll_until_reachable(&two, true).await;
    let got = if got.is_empty() {
        two.poll().await
    } else {
        got
    };
    assert!(
        got.iter()
            .any(|r| matches!(r, Remote::Apply { field, remaining, .. }
            if field == "apple" && *remaining <= Duration::from_secs(30))),
        "{got:?}"
    );
    shutdown.cancel();
}
