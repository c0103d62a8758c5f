//! `[app.limits]` through the real binary: two apps recognised by client network (the test
//! connects from 127.0.0.2 and 127.0.0.3), each with its own daily recipient quota and rate.
//! One app spends its quota (`452 4.7.1` at RCPT naming the reset time; the refused recipient is
//! never queued, what was accepted is delivered) while the other goes on; an abandoned
//! transaction gives its reservations back; a burst past the rate is refused at MAIL; and two
//! relay processes sharing a real Redis count one quota between them.

use crate::support;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::raw_smtp::RawSmtp;
use support::redis_server::{Redis, redis_available};
use support::*;

const TOKEN: &str = "app-limits-token-Qw";
const BILLING: &str = "127.0.0.2";
const NEWS: &str = "127.0.0.3";

fn config(billing_limits: &str, news_limits: &str, cluster: &str) -> String {
    format!(
        r#"
[server]
listen = "{{smtp}}"
hostname = "relay.test"
[access]
networks = ["127.0.0.0/8"]
[metrics]
listen = "{{metrics}}"
[admin]
listen = "{{admin}}"
token_env = "TEST_ADMIN_TOKEN"
[spool]
dir = "{{dir}}/spool"
[[upstream]]
name = "outbox"
dir = "{{dir}}/outbox"
{cluster}
[[app]]
name = "billing"
networks = ["{BILLING}/32"]
senders = ["@billing.test"]
[app.limits]
{billing_limits}

[[app]]
name = "news"
networks = ["{NEWS}/32"]
senders = ["@news.test"]
[app.limits]
{news_limits}
"#
    )
}

/// One SMTP session from `source`: MAIL, each RCPT, then DATA if any recipient was taken.
/// Returns every reply after the greeting (`"-"` for DATA not sent).
async fn session(relay: SocketAddr, source: &str, from: &str, rcpts: &[&str]) -> Vec<String> {
    let (mut s, greeting) = RawSmtp::connect_from(relay, source.parse::<IpAddr>().unwrap()).await;
    assert!(greeting.starts_with("220"), "{greeting}");
    let mut replies = vec![s.cmd("EHLO app.test").await];
    replies.push(s.cmd(&format!("MAIL FROM:<{from}>")).await);
    let mut taken = 0;
    for r in rcpts {
        let reply = s.cmd(&format!("RCPT TO:<{r}>")).await;
        taken += usize::from(reply.starts_with("250"));
        replies.push(reply);
    }
    if taken > 0 && replies[1].starts_with("250") {
        let data = s.cmd("DATA").await;
        assert!(data.starts_with("354"), "{data}");
        let message = format!(
            "From: <{from}>\r\nTo: undisclosed-recipients:;\r\nSubject: limits\r\n\r\nhello\r\n.\r\n"
        );
        s.send(message.as_bytes()).await;
        replies.push(s.reply().await);
    } else {
        replies.push("-".into());
    }
    let _ = s.cmd("QUIT").await;
    replies
}

/// Every recipient delivered to the outbox so far.
fn delivered(relay: &RelayProc) -> BTreeSet<String> {
    mailveil::capture::read_all(&relay.outbox())
        .unwrap_or_default()
        .into_iter()
        .flat_map(|c| c.rcpt_to)
        .collect()
}

async fn wait_delivered(relay: &RelayProc, want: &[&str]) -> BTreeSet<String> {
    let end = Instant::now() + PATIENCE;
    loop {
        let got = delivered(relay);
        if want.iter().all(|w| got.contains(*w)) {
            return got;
        }
        assert!(
            Instant::now() < end,
            "delivered only {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn app<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("app {name} not in {status}"))
}

/// Waits until the app's quota count in `/status` is `used` (a release runs on its own task).
async fn wait_used(relay: &RelayProc, name: &str, used: u64) -> Value {
    let end = Instant::now() + PATIENCE;
    loop {
        let status = admin_status(relay.admin, TOKEN).await;
        if app(&status, name)["recipients_used"] == used {
            return status;
        }
        assert!(
            Instant::now() < end,
            "{name} never counted {used}: {}",
            app(&status, name)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn one_app_spends_its_quota_and_the_other_goes_on() {
    let relay = RelayProc::start(
        &config(
            "recipients_per_day = 3\nquota_reset = \"00:00+08:00\"",
            "recipients_per_day = 100",
            "",
        ),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let first = session(
        relay.smtp,
        BILLING,
        "inv@billing.test",
        &["a1@x.test", "a2@x.test"],
    )
    .await;
    assert!(first[2..].iter().all(|r| r.starts_with("250")), "{first:?}");
    let second = session(
        relay.smtp,
        BILLING,
        "inv@billing.test",
        &["a3@x.test", "a4@x.test"],
    )
    .await;
    assert!(second[2].starts_with("250"), "{second:?}");
    let refused = &second[3];
    assert!(refused.starts_with("452 4.7.1"), "{refused}");
    assert!(
        refused.contains("daily recipient quota of app billing (3) reached; resets at ")
            && refused.contains("T00:00:00+08:00"),
        "{refused}"
    );
    assert!(
        second[4].starts_with("250"),
        "the message goes to a3: {second:?}"
    );
    let third = session(relay.smtp, BILLING, "inv@billing.test", &["a5@x.test"]).await;
    assert!(third[2].starts_with("452 4.7.1"), "{third:?}");
    assert_eq!(third[3], "-", "no recipient: no DATA");

    // The other app is unaffected.
    let news = [
        "n1@y.test",
        "n2@y.test",
        "n3@y.test",
        "n4@y.test",
        "n5@y.test",
    ];
    let replies = session(relay.smtp, NEWS, "bulletin@news.test", &news).await;
    assert!(
        replies[1..].iter().all(|r| r.starts_with("250")),
        "{replies:?}"
    );

    // What was accepted is delivered; the refused recipients never are.
    let mut want = vec!["a1@x.test", "a2@x.test", "a3@x.test"];
    want.extend(news);
    let got = wait_delivered(&relay, &want).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got_later = delivered(&relay);
    assert_eq!(got, got_later);
    assert!(
        !got.contains("a4@x.test") && !got.contains("a5@x.test"),
        "{got:?}"
    );

    let status = admin_status(relay.admin, TOKEN).await;
    let billing = app(&status, "billing");
    assert_eq!(billing["recipients_used"], 3, "{billing}");
    assert_eq!(billing["quota_spent"], true, "{billing}");
    assert_eq!(billing["refused_for_quota"], 2, "{billing}");
    assert_eq!(app(&status, "news")["recipients_used"], 5);
    assert_eq!(
        metric_at(
            relay.metrics,
            r#"mailveil_app_quota_used{app="billing",unit="recipients"}"#
        )
        .await,
        Some(3.0)
    );
    assert_eq!(
        metric_at(
            relay.metrics,
            r#"mailveil_app_limited_total{app="billing",reason="quota"}"#
        )
        .await,
        Some(2.0)
    );
    assert_eq!(
        metric_at(
            relay.metrics,
            r#"mailveil_app_limited_total{app="news",reason="quota"}"#
        )
        .await,
        Some(0.0)
    );
    let table = ctl_ok(relay.admin, TOKEN, &["status", "--table"]);
    assert!(
        table.contains("RECIPIENTS TODAY") && table.contains("3/3 SPENT until"),
        "{table}"
    );
}

#[tokio::test]
async fn an_abandoned_transaction_gives_its_recipients_back() {
    let relay = RelayProc::start(
        &config("recipients_per_day = 2", "recipients_per_day = 2", ""),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let source = BILLING.parse::<IpAddr>().unwrap();
    let (mut s, _) = RawSmtp::connect_from(relay.smtp, source).await;
    s.cmd("EHLO app.test").await;
    assert!(
        s.cmd("MAIL FROM:<inv@billing.test>")
            .await
            .starts_with("250")
    );
    assert!(s.cmd("RCPT TO:<r1@x.test>").await.starts_with("250"));
    assert!(s.cmd("RCPT TO:<r2@x.test>").await.starts_with("250"));
    assert!(s.cmd("RCPT TO:<r3@x.test>").await.starts_with("452 4.7.1"));
    assert!(s.cmd("RSET").await.starts_with("250"));
    wait_used(&relay, "billing", 0).await;
    assert!(
        s.cmd("MAIL FROM:<inv@billing.test>")
            .await
            .starts_with("250")
    );
    assert!(s.cmd("RCPT TO:<r4@x.test>").await.starts_with("250"));
    // A connection that goes away mid-transaction gives its reservation back too.
    drop(s);
    wait_used(&relay, "billing", 0).await;
    // A message refused at end of DATA (its From: is not the app's) keeps nothing counted.
    let (mut s, _) = RawSmtp::connect_from(relay.smtp, source).await;
    s.cmd("EHLO app.test").await;
    s.cmd("MAIL FROM:<inv@billing.test>").await;
    assert!(s.cmd("RCPT TO:<r5@x.test>").await.starts_with("250"));
    assert!(s.cmd("DATA").await.starts_with("354"));
    s.send(b"From: <ceo@elsewhere.test>\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
        .await;
    assert!(s.reply().await.starts_with("550 5.7.1"));
    wait_used(&relay, "billing", 0).await;
    let replies = session(
        relay.smtp,
        BILLING,
        "inv@billing.test",
        &["r6@x.test", "r7@x.test"],
    )
    .await;
    assert!(
        replies[1..].iter().all(|r| r.starts_with("250")),
        "{replies:?}"
    );
    wait_used(&relay, "billing", 2).await;
    wait_delivered(&relay, &["r6@x.test", "r7@x.test"]).await;
    assert!(!delivered(&relay).contains("r4@x.test"));
}

#[tokio::test]
async fn a_burst_past_the_rate_is_refused_at_mail_and_the_other_app_is_not() {
    let relay = RelayProc::start(
        &config(
            "",
            "messages_per_second = 0.1\nburst = 2\nmax_wait = \"0s\"",
            "",
        ),
        &[("TEST_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    let (mut s, _) = RawSmtp::connect_from(relay.smtp, NEWS.parse().unwrap()).await;
    s.cmd("EHLO app.test").await;
    for _ in 0..2 {
        assert!(s.cmd("MAIL FROM:<b@news.test>").await.starts_with("250"));
        assert!(s.cmd("RSET").await.starts_with("250"));
    }
    let refused = s.cmd("MAIL FROM:<b@news.test>").await;
    assert!(refused.starts_with("452 4.7.1"), "{refused}");
    assert!(
        refused.contains("app news is over its message rate (0.1/s)"),
        "{refused}"
    );
    for _ in 0..5 {
        let replies = session(relay.smtp, BILLING, "inv@billing.test", &["q@x.test"]).await;
        assert!(
            replies[1..].iter().all(|r| r.starts_with("250")),
            "{replies:?}"
        );
    }
    assert_eq!(
        metric_at(
            relay.metrics,
            r#"mailveil_app_limited_total{app="news",reason="rate"}"#
        )
        .await,
        Some(1.0)
    );
    assert_eq!(
        metric_at(
            relay.metrics,
            r#"mailveil_inbound_rejections_total{reason="app_limit"}"#
        )
        .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn two_relays_sharing_redis_count_one_quota() {
    if !redis_available() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let redis_port = free_port();
    let _redis = Redis::start(redis_port, work.path());
    let cluster =
        format!("[cluster]\nredis_url = \"redis://127.0.0.1:{redis_port}/\"\nreplicas = 2\n");
    let toml = config(
        "recipients_per_day = 4",
        "recipients_per_day = 50",
        &cluster,
    );
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
    // Both replicas must have Redis up before counting (else each counts its half locally).
    for r in [&a, &b] {
        let end = Instant::now() + PATIENCE;
        while metric_at(r.metrics, "mailveil_cluster_up").await != Some(1.0) {
            assert!(Instant::now() < end, "cluster not up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let on_a = session(
        a.smtp,
        BILLING,
        "inv@billing.test",
        &["c1@x.test", "c2@x.test"],
    )
    .await;
    let on_b = session(
        b.smtp,
        BILLING,
        "inv@billing.test",
        &["c3@x.test", "c4@x.test"],
    )
    .await;
    assert!(
        on_a[2..]
            .iter()
            .chain(&on_b[2..])
            .all(|r| r.starts_with("250")),
        "{on_a:?} {on_b:?}"
    );
    for relay in [&a, &b] {
        let over = session(relay.smtp, BILLING, "inv@billing.test", &["c5@x.test"]).await;
        assert!(
            over[2].starts_with("452 4.7.1"),
            "the fleet's quota of 4 is spent: {over:?}"
        );
    }
    let news = session(b.smtp, NEWS, "bulletin@news.test", &["m1@y.test"]).await;
    assert!(news[2].starts_with("250"), "{news:?}");
    let status = admin_status(b.admin, TOKEN).await;
    assert_eq!(app(&status, "billing")["recipients_used"], 4, "{status}");
    wait_delivered(&a, &["c1@x.test", "c2@x.test"]).await;
    wait_delivered(&b, &["c3@x.test", "c4@x.test", "m1@y.test"]).await;
}
