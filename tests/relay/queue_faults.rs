//! The delivery queue against a fault-injecting upstream (the scripted server): temporary
//! replies, dropped connections, slow replies and TLS failures are retried until the copy is
//! delivered once; a `5xx` is never retried; a down upstream fails over to the next one and
//! gets mail again after its cool-off. Replies whose text is not UTF-8 are classified by their
//! code like any other.

use crate::support;
use crate::support::scripted_smtp;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use scripted_smtp::{DROP, Script, ScriptedSmtp, Step};
use support::pki::TestCa;
use support::*;

/// Short retry timing so each fault costs about a second.
fn relay_config(upstreams: &str, extra_spool: &str) -> String {
    format!(
        r#"
[spool]
dir = "{{dir}}/spool"
retry_initial = "1s"
retry_max = "1s"
{extra_spool}
{upstreams}
"#
    )
}

/// Waits until `server` has accepted at least `n` messages.
async fn wait_messages(server: &ScriptedSmtp, n: usize) -> Vec<scripted_smtp::Received> {
    let end = Instant::now() + PATIENCE;
    loop {
        let got = server.record().messages;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < end,
            "only {} of {n} messages reached the upstream; commands: {:?}",
            got.len(),
            server.record().commands
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sum of the samples of `name` whose label set contains every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// Waits until exactly one copy has failed; returns the metrics text.
async fn one_failed_copy(relay: &InProcessRelay) -> String {
    wait_metrics(relay, "one failed copy", |t| {
        sample(t, "mailveil_deliveries_total", &["outcome=\"failed\""]) == 1.0
    })
    .await
}

/// Waits until the relay's metrics satisfy `ok`; returns the text.
async fn wait_metrics(relay: &InProcessRelay, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + PATIENCE;
    loop {
        let (_, text) = relay.http_get("/metrics").await;
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < end, "metrics never showed {what}:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count_commands(server: &ScriptedSmtp, prefix: &str) -> usize {
    server
        .record()
        .commands
        .iter()
        .filter(|c| c.to_ascii_uppercase().starts_with(prefix))
        .count()
}

async fn send_one(relay: &InProcessRelay, to: &[&str], mid: &str) {
    let visible = to.join(", ");
    let m = message(
        &[
            "From: app@src.test",
            &format!("To: {visible}"),
            &format!("Message-ID: <{mid}@src.test>"),
            "Subject: fault test",
        ],
        "body\r\n",
    );
    let reply = lettre_send(relay.smtp, Some("app@src.test"), to, &m)
        .await
        .expect("relay accepts");
    assert!(reply.starts_with("250"), "{reply}");
}

#[tokio::test]
async fn replies_421_and_451_are_retried_then_delivered_once() {
    let upstream = ScriptedSmtp::start(Script {
        first_replies: HashMap::from([
            (Step::Mail, vec!["421 4.3.2 busy, come back later".into()]),
            (Step::DataEnd, vec!["451 4.3.0 try again".into()]),
        ]),
        ..Script::default()
    })
    .await;
    let relay = InProcessRelay::start(&relay_config(
        &scripted_upstream("scripted", upstream.port(), "none", "5s"),
        "",
    ))
    .await;
    send_one(&relay, &["r1@x.test"], "retry").await;
    let got = wait_messages(&upstream, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["r1@x.test".to_string()]);
    let text = wait_metrics(&relay, "one delivered copy", |t| {
        sample(t, "mailveil_deliveries_total", &["outcome=\"delivered\""]) == 1.0
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "mailveil_deliveries_total",
            &["outcome=\"deferred\""]
        ),
        2.0,
        "421 then 451: two deferrals\n{text}"
    );
    assert!(count_commands(&upstream, "MAIL") >= 3, "three attempts");
    // Nothing more arrives: the copy is final once delivered.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        upstream.record().messages.len(),
        1,
        "delivered exactly once"
    );
    assert_eq!(
        count_commands(&upstream, "MAIL"),
        3,
        "no attempt after success"
    );
}

#[tokio::test]
async fn a_550_recipient_is_never_retried_while_the_other_copy_is_delivered() {
    let mut script = Script::default();
    script
        .rcpt_replies
        .insert("gone@x.test".into(), "550 5.1.1 no such user".into());
    let upstream = ScriptedSmtp::start(script).await;
    let relay = InProcessRelay::start(&relay_config(
        &scripted_upstream("scripted", upstream.port(), "none", "5s"),
        "",
    ))
    .await;
    send_one(&relay, &["gone@x.test", "here@x.test"], "perm").await;
    let got = wait_messages(&upstream, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["here@x.test".to_string()]);
    one_failed_copy(&relay).await;
    // Retries run every ~1 s here: three seconds would show any.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rcpts_for_gone = upstream
        .record()
        .commands
        .iter()
        .filter(|c| c.contains("gone@x.test"))
        .count();
    assert_eq!(rcpts_for_gone, 1, "a 5xx recipient is tried once");
    let (_, text) = relay.http_get("/metrics").await;
    assert_eq!(
        sample(
            &text,
            "mailveil_deliveries_total",
            &["outcome=\"deferred\""]
        ),
        0.0
    );
    // The permanent failure is recorded in the spool's failed/ directory.
    let failed: Vec<_> = std::fs::read_dir(relay.spool().join("failed"))
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    assert_eq!(failed.len(), 1, "one failure record");
    let record = std::fs::read_to_string(failed[0].path()).unwrap();
    assert!(
        record.contains("gone@x.test") && record.contains("550"),
        "{record}"
    );
    assert!(!record.contains("here@x.test"), "{record}");
}

#[tokio::test]
async fn a_connection_dropped_during_data_is_retried_then_delivered() {
    let upstream = ScriptedSmtp::start(Script {
        first_replies: HashMap::from([(Step::DataEnd, vec![DROP.to_string()])]),
        ..Script::default()
    })
    .await;
    let relay = InProcessRelay::start(&relay_config(
        &scripted_upstream("scripted", upstream.port(), "none", "5s"),
        "",
    ))
    .await;
    send_one(&relay, &["r@x.test"], "dropped").await;
    let got = wait_messages(&upstream, 1).await;
    assert!(String::from_utf8_lossy(&got[0].data).contains("Message-ID: <dropped@src.test>"));
    assert!(count_commands(&upstream, "DATA") >= 2, "sent again");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(upstream.record().messages.len(), 1, "delivered once");
}

#[tokio::test]
async fn a_reply_slower_than_the_timeout_is_temporary_and_retried() {
    // The first server answers MAIL after 3 s; the relay's timeout is 1 s.
    let slow = ScriptedSmtp::start(Script {
        delays: HashMap::from([(Step::Mail, Duration::from_secs(3))]),
        ..Script::default()
    })
    .await;
    let port = slow.port();
    let relay = InProcessRelay::start(&relay_config(
        &scripted_upstream("scripted", port, "none", "1s"),
        "",
    ))
    .await;
    send_one(&relay, &["r@x.test"], "slow").await;
    wait_metrics(&relay, "a deferral after the timeout", |t| {
        sample(t, "mailveil_deliveries_total", &["outcome=\"deferred\""]) >= 1.0
    })
    .await;
    assert_eq!(
        sample(
            &relay.http_get("/metrics").await.1,
            "mailveil_deliveries_total",
            &["outcome=\"failed\""]
        ),
        0.0,
        "a timeout is not a permanent failure"
    );
    drop(slow);
    // The upstream recovers on the same port: the deferred copy goes out.
    let fast = ScriptedSmtp::start_at(port, Script::default()).await;
    let got = wait_messages(&fast, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["r@x.test".to_string()]);
}

#[tokio::test]
async fn an_untrusted_upstream_certificate_defers_and_nothing_goes_in_plaintext() {
    let work = tempfile::tempdir().unwrap();
    let trusted = TestCa::new("trusted CA");
    let stranger = TestCa::new("unknown CA");
    let ca_file = trusted.write(work.path(), "ca.pem");
    let untrusted = ScriptedSmtp::start(Script {
        starttls: Some(stranger.server_cert(&["127.0.0.1"]).server_config()),
        ..Script::default()
    })
    .await;
    let port = untrusted.port();
    let upstream = format!(
        "{}ca_file = \"{}\"\n",
        scripted_upstream("tls", port, "starttls", "5s"),
        ca_file.display()
    );
    let relay = InProcessRelay::start(&relay_config(&upstream, "")).await;
    send_one(&relay, &["r@x.test"], "tls").await;
    let text = wait_metrics(&relay, "a deferral after the TLS failure", |t| {
        sample(t, "mailveil_deliveries_total", &["outcome=\"deferred\""]) >= 1.0
    })
    .await;
    assert_eq!(
        metric(&text, "mailveil_upstream_up{upstream=\"tls\"}"),
        Some(0.0)
    );
    let record = untrusted.record();
    assert!(record.saw("STARTTLS"), "{:?}", record.commands);
    assert!(
        !record.saw("MAIL"),
        "no plaintext fallback: {:?}",
        record.commands
    );
    assert!(record.messages.is_empty());
    drop(untrusted);

    // Same port, a certificate from the trusted CA: the deferred copy goes out over TLS.
    let good = ScriptedSmtp::start_at(
        port,
        Script {
            starttls: Some(trusted.server_cert(&["127.0.0.1"]).server_config()),
            ..Script::default()
        },
    )
    .await;
    let got = wait_messages(&good, 1).await;
    assert!(got[0].tls, "delivered over TLS");
}

#[tokio::test]
async fn no_starttls_offered_defers_and_nothing_goes_in_plaintext() {
    let upstream = ScriptedSmtp::start(Script::default()).await;
    // The spool outlives the relay here, to be read back after it stops.
    let work = tempfile::tempdir().unwrap();
    let spool_dir = work.path().join("spool");
    let config = relay_config(
        &scripted_upstream("plain", upstream.port(), "starttls", "5s"),
        "",
    )
    .replace("{dir}/spool", &spool_dir.display().to_string());
    let relay = InProcessRelay::start(&config).await;
    send_one(&relay, &["r@x.test"], "nostarttls").await;
    wait_metrics(&relay, "two deferrals", |t| {
        sample(t, "mailveil_deliveries_total", &["outcome=\"deferred\""]) >= 2.0
    })
    .await;
    let record = upstream.record();
    assert!(record.saw("EHLO"));
    assert!(
        !record.saw("MAIL"),
        "no plaintext fallback: {:?}",
        record.commands
    );
    assert!(record.messages.is_empty());
    // The message stays spooled for a later attempt.
    relay.stop().await.expect("clean stop");
    let spool = mailveil::spool::Spool::open(&spool_dir).unwrap();
    let recovered = spool.recover().unwrap();
    assert_eq!(recovered.len(), 1, "the message stays spooled");
    assert!(
        recovered[0].log.iter().all(|e| !e.is_final()),
        "{:?}",
        recovered[0].log
    );
}

#[tokio::test]
async fn failover_to_the_second_upstream_and_back_after_the_cool_off() {
    let first_port = free_port(); // nothing listens here yet: "first" is down
    let second = ScriptedSmtp::start(Script::default()).await;
    let upstreams = format!(
        "{}{}",
        scripted_upstream("first", first_port, "none", "5s"),
        scripted_upstream("second", second.port(), "none", "5s")
    );
    let relay =
        InProcessRelay::start(&relay_config(&upstreams, "upstream_cool_off = \"2s\"")).await;
    send_one(&relay, &["a@x.test"], "f1").await;
    let got = wait_messages(&second, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["a@x.test".to_string()]);
    let (_, text) = relay.http_get("/metrics").await;
    assert_eq!(
        metric(&text, "mailveil_upstream_up{upstream=\"first\"}"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "mailveil_upstream_up{upstream=\"second\"}"),
        Some(1.0)
    );

    // "first" comes back. Once its cool-off has passed, new mail goes to it again: send one
    // message at a time until one arrives there (bounded).
    let first = ScriptedSmtp::start_at(first_port, Script::default()).await;
    let end = Instant::now() + PATIENCE;
    let mut sent = 1;
    while first.record().messages.is_empty() {
        assert!(
            Instant::now() < end,
            "mail never went back to the first upstream"
        );
        sent += 1;
        let before = second.record().messages.len() + first.record().messages.len();
        send_one(&relay, &["a@x.test"], &format!("f{sent}")).await;
        let wait_end = Instant::now() + PATIENCE;
        while second.record().messages.len() + first.record().messages.len() == before {
            assert!(Instant::now() < wait_end, "message {sent} not delivered");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if first.record().messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let (_, text) = relay.http_get("/metrics").await;
    assert_eq!(
        metric(&text, "mailveil_upstream_up{upstream=\"first\"}"),
        Some(1.0),
        "{text}"
    );
    // Every message went out exactly once, through one upstream or the other.
    let total = first.record().messages.len() + second.record().messages.len();
    assert_eq!(total, sent, "each message delivered once");
}

/// A relay delivering through one scripted upstream that sends its replies as Latin-1, so
/// they can carry bytes that are not UTF-8; over STARTTLS when `tls` is set.
async fn latin1_upstream(
    script: Script,
    tls: bool,
) -> (ScriptedSmtp, InProcessRelay, tempfile::TempDir) {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCa::new("replies CA");
    let script = Script {
        replies_latin1: true,
        starttls: tls.then(|| ca.server_cert(&["127.0.0.1"]).server_config()),
        ..script
    };
    let upstream = ScriptedSmtp::start(script).await;
    let mut config = scripted_upstream(
        "scripted",
        upstream.port(),
        if tls { "starttls" } else { "none" },
        "5s",
    );
    if tls {
        let ca_file = ca.write(work.path(), "ca.pem");
        config.push_str(&format!("ca_file = \"{}\"\n", ca_file.display()));
    }
    let relay = InProcessRelay::start(&relay_config(&config, "")).await;
    (upstream, relay, work)
}

/// A `550` whose text is not UTF-8 is a permanent failure like any other: counted failed once,
/// never deferred or tried again, and the upstream stays up (it answered, about this message).
async fn a_550_not_utf8_fails_once(step: Step, tls: bool) {
    let reply = "550 5.1.1 <bytes \u{ff}\u{fe}> unknown".to_string();
    let (upstream, relay, _work) = latin1_upstream(
        Script {
            replies: HashMap::from([(step, reply)]),
            ..Script::default()
        },
        tls,
    )
    .await;
    send_one(&relay, &["gone@x.test"], "latin1").await;
    let text = one_failed_copy(&relay).await;
    assert_eq!(
        metric(&text, "mailveil_upstream_up{upstream=\"scripted\"}"),
        Some(1.0),
        "{text}"
    );
    // Retries run every ~1 s here: three seconds would show any.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, text) = relay.http_get("/metrics").await;
    assert_eq!(
        sample(
            &text,
            "mailveil_deliveries_total",
            &["outcome=\"deferred\""]
        ),
        0.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "mailveil_deliveries_total", &["outcome=\"failed\""]),
        1.0
    );
    assert_eq!(
        metric(&text, "mailveil_upstream_up{upstream=\"scripted\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(count_commands(&upstream, "MAIL"), 1, "tried once");
    // The failure record keeps the upstream's code.
    let failed: Vec<_> = std::fs::read_dir(relay.spool().join("failed"))
        .unwrap()
        .filter_map(Result::ok)
        .collect();
    let record = std::fs::read_to_string(failed[0].path()).unwrap();
    assert!(record.contains("\"code\":550"), "{record}");
}

#[tokio::test]
async fn a_550_to_rcpt_whose_text_is_not_utf8_fails_once_and_the_upstream_stays_up() {
    a_550_not_utf8_fails_once(Step::Rcpt, false).await;
}

#[tokio::test]
async fn a_550_after_data_whose_text_is_not_utf8_fails_once_and_the_upstream_stays_up() {
    a_550_not_utf8_fails_once(Step::DataEnd, false).await;
}

#[tokio::test]
async fn a_550_not_utf8_over_starttls_fails_once_and_the_upstream_stays_up() {
    a_550_not_utf8_fails_once(Step::DataEnd, true).await;
}

/// A `451` whose text is not UTF-8 is deferred and retried on the same upstream: it is an
/// answer about this message, so the upstream is not marked down and the backup gets nothing.
#[tokio::test]
async fn a_451_whose_text_is_not_utf8_is_retried_without_failing_over() {
    let primary = ScriptedSmtp::start(Script {
        replies_latin1: true,
        first_replies: HashMap::from([(
            Step::DataEnd,
            vec!["451 4.3.0 sp\u{e4}ter \u{ff}".into()],
        )]),
        ..Script::default()
    })
    .await;
    let backup = ScriptedSmtp::start(Script::default()).await;
    let upstreams = format!(
        "{}{}",
        scripted_upstream("primary", primary.port(), "none", "5s"),
        scripted_upstream("backup", backup.port(), "none", "5s")
    );
    let relay = InProcessRelay::start(&relay_config(&upstreams, "")).await;
    send_one(&relay, &["r@x.test"], "latin1-451").await;
    let got = wait_messages(&primary, 1).await;
    assert_eq!(got[0].rcpt_to, vec!["r@x.test".to_string()]);
    let text = wait_metrics(&relay, "one delivered copy", |t| {
        sample(t, "mailveil_deliveries_total", &["outcome=\"delivered\""]) == 1.0
    })
    .await;
    assert_eq!(
        sample(
            &text,
            "mailveil_deliveries_total",
            &["upstream=\"primary\"", "outcome=\"deferred\""]
        ),
        1.0,
        "{text}"
    );
    assert!(backup.record().messages.is_empty(), "no failover");
    assert_eq!(backup.record().connections, 0, "no failover");
    assert_eq!(
        metric(&text, "mailveil_upstream_up{upstream=\"primary\"}"),
        Some(1.0)
    );
}

/// A `250` after DATA whose text is not UTF-8 is a delivery: the copy is never sent again.
#[tokio::test]
async fn a_250_whose_text_is_not_utf8_is_delivered_once() {
    let (upstream, relay, _work) = latin1_upstream(
        Script {
            replies: HashMap::from([(Step::DataEnd, "250 2.0.0 queued as \u{e9}\u{ff}".into())]),
            ..Script::default()
        },
        false,
    )
    .await;
    send_one(&relay, &["r@x.test"], "latin1-250").await;
    wait_metrics(&relay, "one delivered copy", |t| {
        sample(t, "mailveil_deliveries_total", &["outcome=\"delivered\""]) == 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(upstream.record().messages.len(), 1, "delivered once");
    assert_eq!(count_commands(&upstream, "DATA"), 1, "sent once");
}

/// STARTTLS response injection (the CVE-2011-0411 class): a reply sent in plaintext right after
/// the `220` must not be read as if it came over TLS. Read as the answer to our EHLO, the
/// injected `250` would shift every later reply by one: the `354` to DATA would pass for the
/// verdict on the message, and a refused message would count as delivered.
#[tokio::test]
async fn a_reply_injected_after_the_starttls_220_is_discarded() {
    let (_upstream, relay, _work) = latin1_upstream(
        Script {
            replies: HashMap::from([
                (Step::StartTls, "220 2.0.0 go ahead\r\n250 injected".into()),
                (Step::DataEnd, "550 5.7.1 refused".into()),
            ]),
            ..Script::default()
        },
        true,
    )
    .await;
    send_one(&relay, &["r@x.test"], "injected").await;
    let text = one_failed_copy(&relay).await;
    assert_eq!(
        sample(
            &text,
            "mailveil_deliveries_total",
            &["outcome=\"delivered\""]
        ),
        0.0,
        "{text}"
    );
}
