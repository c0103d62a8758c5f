//! `[spool] bounce = true`: a permanent failure sends one RFC 3464 report to the envelope sender,
//! naming only the failed copy's recipient; the null sender never gets one.

use crate::support;
use crate::support::scripted_smtp;

use std::time::{Duration, Instant};

use scripted_smtp::{Script, ScriptedSmtp};
use support::*;

async fn relay_for(upstream: &ScriptedSmtp, bounce: bool) -> InProcessRelay {
    InProcessRelay::start(&format!(
        r#"
[spool]
dir = "{{dir}}/spool"
bounce = {bounce}
{scripted}"#,
        scripted = scripted_upstream("scripted", upstream.port(), "none", "5s"),
    ))
    .await
}

async fn wait_messages(upstream: &ScriptedSmtp, n: usize) -> Vec<scripted_smtp::Received> {
    let end = Instant::now() + PATIENCE;
    loop {
        let got = upstream.record().messages;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < end,
            "only {} of {n} messages reached the upstream",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn script() -> Script {
    let mut script = Script::default();
    script
        .rcpt_replies
        .insert("bad@x.test".into(), "550 5.1.1 no such user".into());
    script
}

#[tokio::test]
async fn a_permanent_failure_bounces_to_the_sender_naming_only_that_copy() {
    let upstream = ScriptedSmtp::start(script()).await;
    let relay = relay_for(&upstream, true).await;
    let msg = message(
        &[
            "From: app@src.test",
            "To: bad@x.test, good@y.test",
            "Subject: s",
        ],
        "hi\r\n",
    );
    lettre_send(
        relay.smtp,
        Some("app@src.test"),
        &["bad@x.test", "good@y.test"],
        &msg,
    )
    .await
    .unwrap();
    let got = wait_messages(&upstream, 2).await;
    let bounce = got
        .iter()
        .find(|m| m.mail_from.is_empty())
        .expect("a bounce from the null sender");
    assert_eq!(bounce.rcpt_to, vec!["app@src.test".to_string()]);
    let text = String::from_utf8_lossy(&bounce.data);
    assert!(
        text.contains("report-type=delivery-status")
            && text.contains("Final-Recipient: rfc822; bad@x.test"),
        "{text}"
    );
    assert!(
        text.contains("550"),
        "diagnostic carries the upstream's reply"
    );
    assert!(
        !text.contains("good@y.test"),
        "the other copy's recipient is never named"
    );
    assert!(
        got.iter()
            .any(|m| m.rcpt_to == vec!["good@y.test".to_string()])
    );
    let rcpt_attempts = upstream
        .record()
        .commands
        .iter()
        .filter(|c| c.contains("bad@x.test"))
        .count();
    assert_eq!(rcpt_attempts, 1, "a 5xx is never retried");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn no_bounce_when_off_or_for_the_null_sender() {
    let upstream = ScriptedSmtp::start(script()).await;
    let relay = relay_for(&upstream, true).await;
    let msg = message(
        &["From: daemon@src.test", "To: bad@x.test", "Subject: s"],
        "hi\r\n",
    );
    lettre_send(relay.smtp, None, &["bad@x.test"], &msg)
        .await
        .unwrap();
    let off = relay_for(&upstream, false).await;
    lettre_send(off.smtp, Some("app@src.test"), &["bad@x.test"], &msg)
        .await
        .unwrap();
    // Both failures happen at once; give a possible bounce time to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(upstream.record().messages.is_empty(), "no bounce was sent");
    let failed = std::fs::read_dir(off.spool().join("failed"))
        .unwrap()
        .count();
    assert_eq!(failed, 1, "the failure is recorded in the spool");
    relay.stop().await.unwrap();
    off.stop().await.unwrap();
}
