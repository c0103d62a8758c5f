//! The suppression list through the real binary: an operator's entry stops a recipient (also one
//! copy of a split fan-out, while the other copies go), also for mail already queued; a hard
//! bounce (`550 5.1.1`) puts its recipient on the list with `apps.suppress_hard_bounces` and the
//! next message to it is never attempted; the list keeps no addresses, survives a restart and
//! `remove` lets mail through again; and with `[cluster]` an entry added through one relay stops
//! delivery through another sharing a real Redis.

use crate::support;
use crate::support::scripted_smtp;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp};
use support::redis_server::{Redis, redis_available};
use support::*;

const TOKEN: &str = "suppression-token-Qv";

fn config(upstream: &str, extra: &str) -> String {
    format!(
        r#"
{head}[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
{upstream}
{metrics}{admin}
{extra}
"#,
        head = split_relay!(),
        metrics = metrics_listener!(),
        admin = admin_listener!(),
    )
}

fn outbox_upstream() -> String {
    "[[upstream]]\nname = \"outbox\"\ndir = \"{dir}/outbox\"\n".into()
}

fn delivered(relay: &RelayProc) -> BTreeSet<String> {
    mailveil::capture::read_all(&relay.outbox())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|c| c.rcpt_to)
        .collect()
}

async fn wait_delivered(relay: &RelayProc, want: &[&str]) {
    let end = Instant::now() + PATIENCE;
    while !want.iter().all(|w| delivered(relay).contains(*w)) {
        assert!(
            Instant::now() < end,
            "delivered only {:?}, want {want:?}",
            delivered(relay)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn suppress(relay: &RelayProc, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["suppress"];
    all.extend_from_slice(args);
    serde_json::from_str(&ctl_ok(relay.admin, TOKEN, &all)).unwrap()
}

/// Copies recorded `suppressed` for provider `default`.
async fn suppressed_copies(relay: &RelayProc) -> f64 {
    metric_at(
        relay.metrics,
        r#"mailveil_suppressed_total{provider="default"}"#,
    )
    .await
    .unwrap_or(0.0)
}

async fn wait_suppressed_copies(relay: &RelayProc, n: f64) {
    let end = Instant::now() + PATIENCE;
    while suppressed_copies(relay).await < n {
        assert!(Instant::now() < end, "{n} copies never suppressed");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_suppressed_recipient_is_never_sent_a_copy_and_the_others_are() {
    let mut relay = RelayProc::start(
        &config(&outbox_upstream(), ""),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let added = suppress(
        &relay,
        &["add", "Blocked@Example.test", "--note", "asked us"],
    );
    assert_eq!(added["added"], true, "{added}");
    assert_eq!(
        suppress(&relay, &["check", "\"blocked\"@EXAMPLE.test"])["suppressed"],
        true,
        "the same mailbox in another spelling"
    );
    // A fan-out whose To: shows all three: split into one private copy each.
    let rcpts = [
        "one@example.test",
        "blocked@example.test",
        "three@example.test",
    ];
    let to = rcpts.join(", ");
    lettre_send(
        relay.smtp,
        Some("news@sender.test"),
        &rcpts,
        &message(&["From: news@sender.test", &format!("To: {to}")], "fan-out"),
    )
    .await
    .unwrap();
    wait_delivered(&relay, &["one@example.test", "three@example.test"]).await;
    wait_suppressed_copies(&relay, 1.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!delivered(&relay).contains("blocked@example.test"));
    assert!(
        relay.proc_.log_text().contains("copy not sent"),
        "the suppression is logged"
    );

    // Queued while paused, suppressed meanwhile, resumed: the entry still stops it.
    ctl_ok(relay.admin, TOKEN, &["pause"]);
    send_simple(
        relay.smtp,
        "a@sender.test",
        &["late@example.test"],
        "queued",
    )
    .await;
    suppress(&relay, &["add", "late@example.test"]);
    ctl_ok(relay.admin, TOKEN, &["resume"]);
    wait_suppressed_copies(&relay, 2.0).await;
    assert!(!delivered(&relay).contains("late@example.test"));

    // The list keeps no addresses, and it survives a restart.
    for file in ["suppression.json", "suppression.key"] {
        let text = std::fs::read_to_string(relay.dir.path().join("spool").join(file)).unwrap();
        assert!(
            !text.contains("blocked") && !text.contains("example.test"),
            "{file}: {text}"
        );
    }
    let listed = suppress(&relay, &["list"]);
    assert_eq!(listed["count"], 2, "{listed}");
    assert!(!listed.to_string().contains("example.test"), "{listed}");
    assert_eq!(relay.proc_.terminate(), Some(0));
    relay.restart(&[("TEST_ADMIN_TOKEN", TOKEN)]).await;
    assert_eq!(
        suppress(&relay, &["check", "blocked@example.test"])["suppressed"],
        true
    );

    // Off the list: mail goes again.
    assert_eq!(
        suppress(&relay, &["remove", "blocked@example.test"])["removed"],
        true
    );
    send_simple(
        relay.smtp,
        "a@sender.test",
        &["blocked@example.test"],
        "again",
    )
    .await;
    wait_delivered(&relay, &["blocked@example.test"]).await;
}

#[tokio::test]
async fn a_hard_bounce_puts_the_recipient_on_the_list_and_it_is_not_tried_again() {
    let mut script = Script::default();
    script.rcpt_replies.insert(
        "gone@bad.test".into(),
        "550 5.1.1 <gone@bad.test>: no such user".into(),
    );
    let upstream = ScriptedSmtp::start(script).await;
    let relay = RelayProc::start(
        &config(
            &scripted_upstream("mx", upstream.port(), "none", "10s"),
            "[apps]\nsuppress_hard_bounces = true\n",
        ),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    send_simple(relay.smtp, "a@sender.test", &["gone@bad.test"], "first").await;
    let end = Instant::now() + PATIENCE;
    let entry = loop {
        let answer = suppress(&relay, &["check", "gone@bad.test"]);
        if answer["suppressed"] == true {
            break answer["entry"].clone();
        }
        assert!(Instant::now() < end, "never suppressed: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(entry["reason"], "hard_bounce", "{entry}");
    let tried = |r: &scripted_smtp::Record| {
        r.commands
            .iter()
            .filter(|c| c.contains("gone@bad.test"))
            .count()
    };
    assert_eq!(tried(&upstream.record()), 1);
    send_simple(
        relay.smtp,
        "a@sender.test",
        &["gone@bad.test", "here@good.test"],
        "second",
    )
    .await;
    let end = Instant::now() + PATIENCE;
    while !upstream
        .record()
        .messages
        .iter()
        .any(|m| m.rcpt_to.iter().any(|r| r == "here@good.test"))
    {
        assert!(Instant::now() < end, "here@good.test never delivered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    wait_suppressed_copies(&relay, 1.0).await;
    assert_eq!(tried(&upstream.record()), 1, "not attempted again");
    assert_eq!(
        metric_at(
            relay.metrics,
            r#"mailveil_suppression_added_total{reason="hard_bounce"}"#
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn an_entry_added_through_one_replica_stops_delivery_through_the_other() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let redis = Redis::start(redis_port, work.path());
    let cluster =
        format!("[cluster]\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\nreplicas = 2\n");
    let toml = config(&outbox_upstream(), &cluster);
    let a = RelayProc::start(
        &toml,
        &[("TEST_ADMIN_TOKEN", TOKEN), ("HOSTNAME", "replica-a")],
    )
    .await;
    let b = RelayProc::start(
        &toml,
        &[("TEST_ADMIN_TOKEN", TOKEN), ("HOSTNAME", "replica-b")],
    )
    .await;
    // Both replicas agree on the hash key before the entry is added.
    let end = Instant::now() + PATIENCE;
    while redis.cli(&["GET", "mailveil:suppress:key"]).trim().len() != 64 {
        assert!(Instant::now() < end, "no fleet key in Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(suppress(&a, &["add", "fleet@example.test"])["added"], true);
    let end = Instant::now() + PATIENCE;
    while suppress(&b, &["check", "fleet@example.test"])["suppressed"] != true {
        assert!(Instant::now() < end, "replica b never saw the entry");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_simple(
        b.smtp,
        "a@sender.test",
        &["fleet@example.test", "other@example.test"],
        "fleet",
    )
    .await;
    wait_delivered(&b, &["other@example.test"]).await;
    wait_suppressed_copies(&b, 1.0).await;
    assert!(!delivered(&b).contains("fleet@example.test"));
    let listed = redis.cli(&["HLEN", "mailveil:suppress"]);
    assert_eq!(listed.trim(), "1", "{listed}");
}
